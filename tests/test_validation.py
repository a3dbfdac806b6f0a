"""The shared argument checks of ``densityformula._validation`` (issue 9).

Each test names the behaviour it pins; the ones marked "new" failed on the code before issue 9
(``check_int`` refused numpy integers, ``check_seed`` / ``check_positive_float`` did not exist,
``resolve_device`` let ``"cuda"`` / ``"meta"`` through to a later ``AssertionError``, and
``check_points`` accepted an empty batch).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from densityformula import parameterization as P
from densityformula._validation import (
    ZeroScaleError,
    check_batch_shape,
    check_full_precision,
    check_int,
    check_points,
    check_positive_float,
    check_real_tensor,
    check_scale,
    check_seed,
    model_dimension,
    resolve_device,
)

CPU = torch.device("cpu")


# ---------------------------------------------------------------------------------- check_int
@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3), np.uint8(3)])
def test_check_int_accepts_python_and_numpy_integers(value: object) -> None:  # new: numpy ints
    out = check_int(value, "k", 1)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize("value", [True, np.bool_(True), 3.0, np.float64(3.0), "3", None, torch.tensor(3)])
def test_check_int_rejects_non_integers_with_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="k"):
        check_int(value, "k", 1)


@pytest.mark.parametrize("value", [0, np.int64(0), -5])
def test_check_int_minimum_names_argument(value: object) -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        check_int(value, "k", 1)


# --------------------------------------------------------------------------------- check_seed
@pytest.mark.parametrize("seed", [0, 1, 2**63 - 1, np.int64(7), np.uint64(2**63 - 1)])
def test_check_seed_accepts_64_bit_seeds(seed: object) -> None:
    out = check_seed(seed)
    assert out == int(seed) and type(out) is int
    torch.Generator().manual_seed(out)  # torch takes every seed the check lets through


@pytest.mark.parametrize("seed", [2**63, 2**70, -1])
def test_check_seed_out_of_range_is_value_error_naming_seed(seed: int) -> None:
    with pytest.raises(ValueError, match="noise_seed"):
        check_seed(seed, "noise_seed")


@pytest.mark.parametrize("seed", [1.0, True, "1", None])
def test_check_seed_non_integer_is_type_error(seed: object) -> None:
    with pytest.raises(TypeError, match="seed"):
        check_seed(seed)


# ---------------------------------------------------------------------- check_positive_float
@pytest.mark.parametrize("value", [1, 0.5, np.float32(0.5), np.float64(2.0), np.int64(2), 1e-300, torch.tensor(0.5)])
def test_check_positive_float_accepts_positive_reals(value: object) -> None:
    out = check_positive_float(value, "rtol")
    assert type(out) is float and out > 0 and out == pytest.approx(float(value))  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf, -math.inf, np.float64("nan"), 10**400])
def test_check_positive_float_rejects_bad_values_naming_argument(value: object) -> None:
    with pytest.raises(ValueError, match="rtol"):
        check_positive_float(value, "rtol")


def test_check_positive_float_allow_zero() -> None:
    assert check_positive_float(0.0, "atol", allow_zero=True) == 0.0
    with pytest.raises(ValueError, match="atol must be >= 0"):
        check_positive_float(-1e-9, "atol", allow_zero=True)


@pytest.mark.parametrize("value", ["1", None, True, 1 + 2j, [1.0], torch.ones(2)])
def test_check_positive_float_non_numbers_are_type_errors(value: object) -> None:
    with pytest.raises(TypeError, match="rtol"):
        check_positive_float(value, "rtol")


# ----------------------------------------------------------------------------- resolve_device
def test_resolve_device_cpu_none_auto() -> None:
    assert resolve_device(None) == CPU
    assert resolve_device("cpu") == CPU
    assert resolve_device(torch.device("cpu")) == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_resolve_device_unavailable_cuda_is_value_error(device: object) -> None:  # new: was accepted
    with pytest.raises(ValueError, match="device.*CUDA is not available"):
        resolve_device(device)


def test_resolve_device_cuda_index_beyond_count_is_value_error() -> None:  # new
    with pytest.raises(ValueError, match="device"):
        resolve_device(f"cuda:{torch.cuda.device_count() + 3}")


@pytest.mark.skipif(
    getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    reason="needs a machine without MPS",
)
def test_resolve_device_unavailable_mps_is_value_error() -> None:  # new
    with pytest.raises(ValueError, match="device.*MPS is not available"):
        resolve_device("mps")


@pytest.mark.parametrize("device", ["meta", torch.device("meta")])
def test_resolve_device_meta_is_value_error(device: object) -> None:  # new
    with pytest.raises(ValueError, match="device.*meta"):
        resolve_device(device)


@pytest.mark.parametrize("device", ["gpu!", 1.5, True, object()])
def test_resolve_device_garbage_is_value_error(device: object) -> None:
    with pytest.raises(ValueError, match="my_device"):
        resolve_device(device, "my_device")


# ------------------------------------------------------------------------------- check_points
def test_check_points_accepts_good_batch() -> None:
    x = torch.zeros(4, 2, dtype=torch.float64)
    assert check_points(x, 2, torch.float64, CPU) is x


def test_check_points_empty_batch_is_value_error_unless_allowed() -> None:  # new: was accepted
    x = torch.zeros(0, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="x_query is an empty batch"):
        check_points(x, 2, torch.float64, CPU, "x_query")
    assert check_points(x, 2, torch.float64, CPU, allow_empty=True) is x


@pytest.mark.parametrize(
    "x",
    [
        torch.zeros(3, 2, dtype=torch.complex128),
        torch.zeros(3, 2, dtype=torch.bool),
        torch.zeros(3, 2, dtype=torch.int64),
        torch.zeros(3, 2, dtype=torch.float32),
        np.zeros((3, 2)),
    ],
)
def test_check_points_bad_types_are_type_errors(x: object) -> None:
    with pytest.raises(TypeError, match="pts"):
        check_points(x, 2, torch.float64, CPU, "pts")


@pytest.mark.parametrize("x", [torch.zeros(3), torch.zeros(3, 3), torch.full((3, 2), math.nan)])
def test_check_points_bad_values_are_value_errors(x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="pts"):
        check_points(x.double(), 2, torch.float64, CPU, "pts")


# ------------------------------------------------------------- the one integer rule (issue 9)
def test_one_integer_rule_for_schedules_and_the_trainer() -> None:
    """Before: ``schedules._positive_int`` and ``training.trainer._check_int`` were private copies of
    ``check_int`` with their own messages, raising ``ValueError`` for a wrong type; now every integer
    argument goes through ``check_int`` (``TypeError`` for a non-integer, ``ValueError`` below the
    minimum, numpy integers accepted) and seeds through ``check_seed``."""
    import densityformula.schedules as S
    import densityformula.training.trainer as trainer_module

    assert not hasattr(S, "_positive_int") and not hasattr(trainer_module, "_check_int")
    with pytest.raises(TypeError, match=r"T must be an int, got float"):
        S.Discrete.ddpm_linear(2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"T must be >= 1, got 0"):
        S.Discrete.ddpm_cosine(0)
    assert S.Discrete.ddpm_linear(np.int64(30)).T == 30
    from densityformula import models, training

    net = models.MLPDenoiser(1, S.VPCosine(), width=4, depth=1, dtype=torch.float64)
    x = torch.zeros(8, 1, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"steps must be an int, got str"):
        training.Trainer(net, x, steps="2", batch_size=4, device="cpu", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"warmup must be >= 0, got -1"):
        training.Trainer(net, x, steps=2, batch_size=4, warmup=-1, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"seed must be < 2\*\*63"):
        training.Trainer(net, x, steps=2, batch_size=4, seed=2**63, device="cpu", progress=False)
    # the largest seed is accepted: the noise seed seed + 1 wraps instead of overflowing
    tr = training.Trainer(net, x, steps=1, batch_size=4, seed=2**63 - 1, device="cpu", progress=False)
    assert tr.noise_generator.initial_seed() == 0


# ----------------------------------------------------- tensors, scales, precision (issue 9)
@pytest.mark.parametrize("x", [torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.bool),
                               torch.zeros(2, dtype=torch.complex128), [0.0, 1.0]])
def test_check_real_tensor_refuses_non_real_floating(x: object) -> None:
    with pytest.raises(TypeError, match="out"):
        check_real_tensor(x, "out")


def test_check_real_tensor_meta_is_value_error() -> None:
    with pytest.raises(ValueError, match="out is a meta tensor"):
        check_real_tensor(torch.zeros(2, device="meta"), "out")


@pytest.mark.parametrize("value, err, pattern", [
    ("0.5", TypeError, "sigma must be a real number"), (True, TypeError, "sigma"), (0.5j, TypeError, "sigma"),
    (math.nan, ValueError, "sigma must be finite"), (math.inf, ValueError, "sigma must be finite"),
    (-0.1, ValueError, "sigma must be > 0"), (0.0, ZeroScaleError, "sigma must be > 0"),
    (torch.tensor([0.5, math.nan]), ValueError, "sigma contains NaN"),
    (torch.tensor([0.5, 0.0]), ZeroScaleError, "sigma must be > 0"),
    (torch.tensor([0.5, 0.5, 0.5]), ValueError, r"sigma has shape \(3,\)"),
    (torch.ones(2, 3), ValueError, "does not broadcast"),
])
def test_check_scale_names_the_scale(value: object, err: type, pattern: str) -> None:
    with pytest.raises(err, match=pattern):
        check_scale(value, "sigma", torch.zeros(2, 2), "x_t", positive=True)


def test_check_scale_accepts_floats_and_broadcastable_tensors() -> None:
    like = torch.zeros(2, 3)
    assert check_scale(np.float64(0.5), "alpha", like) == 0.5 and check_scale(0, "alpha", like) == 0.0
    for v in (torch.tensor(0.5), torch.tensor([0.5, 0.6]), torch.tensor([0.5]), torch.full((2, 1), 0.5)):
        assert check_scale(v, "alpha", like, positive=True) is v


def test_check_full_precision() -> None:
    for dt in (torch.float32, torch.float64):
        check_full_precision(torch.zeros(1, dtype=dt), "x_T")
    for dt in (torch.float16, torch.bfloat16):
        with pytest.raises(TypeError, match=r"x_T has dtype torch\.(b?float16); half precision"):
            check_full_precision(torch.zeros(1, dtype=dt), "x_T")


def test_model_dimension_and_batch_shape() -> None:
    from densityformula import models, schedules, targets

    gmm = targets.random_gmm(2, 2, seed=0)
    analytic = models.AnalyticModel(gmm, schedules.LiYan())
    assert model_dimension(analytic) == 2 and model_dimension(models.checked(analytic)) == 2
    assert model_dimension(object()) is None
    check_batch_shape(torch.zeros(3, 2), "x0", analytic)
    with pytest.raises(ValueError, match=r"x0 must have shape \(n, 2\) for this model \(its d = 2\), got \(3, 3\)"):
        check_batch_shape(torch.zeros(3, 3), "x0", analytic)
    with pytest.raises(ValueError, match="x0"):
        check_batch_shape(torch.zeros(3, 2, 1), "x0", analytic)
    with pytest.raises(ValueError, match="n >= 1"):
        check_batch_shape(torch.zeros(0, 4), "x0", object())


# ------------------------------------------------------------ parameterization (issue 9)
X = torch.tensor([[0.3, -0.2], [1.0, 0.5]], dtype=torch.float64)


@pytest.mark.parametrize("call, err, pattern", [
    # before: "can't multiply sequence by non-int" (not naming out), complex / int accepted
    (lambda: P.convert("x0", "eps", "x0", X, 0.6, 0.8), TypeError, r"\bout must be a torch.Tensor"),
    (lambda: P.convert("x0", "eps", X, X.to(torch.complex128), 0.6, 0.8), TypeError, r"x_t must be a real floating"),
    (lambda: P.convert("x0", "eps", X, X.to(torch.int64), 0.6, 0.8), TypeError, r"x_t must be a real floating"),
    (lambda: P.x0_to_eps(X, "x0", 0.6, 0.8), TypeError, r"\bx0 must be a torch.Tensor"),
    # before: a wrong-shaped prediction broadcast silently (or raised torch's RuntimeError)
    (lambda: P.convert("x0", "eps", torch.cat([X, X], 1), X, 0.6, 0.8), ValueError, r"out has shape \(2, 4\)"),
    (lambda: P.eps_x0_to_v(X, X[:, :1], 0.6, 0.8), ValueError, r"x0 has shape \(2, 1\)"),
    # before: NaN / inf scales gave NaN / inf, sigma = 0 gave NaN, negative sigma was accepted
    (lambda: P.convert("x0", "eps", X, X, 0.6, "0.8"), TypeError, r"\bsigma must be a real number"),
    (lambda: P.convert("x0", "eps", X, X, 0.6, math.nan), ValueError, r"\bsigma must be finite"),
    (lambda: P.convert("x0", "eps", X, X, math.inf, 0.8), ValueError, r"\balpha must be finite"),
    (lambda: P.convert("x0", "eps", X, X, 0.6, 0.0), ZeroScaleError, r"sigma must be > 0 \(the conversion divides"),
    (lambda: P.convert("x0", "eps", X, X, 0.6, -0.8), ValueError, r"\bsigma must be > 0"),
    (lambda: P.score_to_eps(X, -0.8), ValueError, r"\bsigma must be >= 0"),
    (lambda: P.eps_to_x0(X, X, torch.tensor([0.5, 0.0], dtype=torch.float64), 0.8), ZeroScaleError, r"\balpha"),
    (lambda: P.to_x0("score", X, X, 0.0, 1.0), ZeroScaleError, r"\balpha must be > 0"),
    (lambda: P.from_x0("v", X, X, 1.0, 0.0), ZeroScaleError, r"\bsigma must be > 0"),
    (lambda: P.v_to_x0(X, X, 0.0, 0.0), ValueError, r"alpha and sigma are both zero"),
])
def test_parameterization_refuses_bad_arguments_naming_them(call, err, pattern) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(err, match=pattern):
        call()


def test_parameterization_zero_scales_where_nothing_divides_are_fine() -> None:
    """``alpha = 0`` in eps -> score and ``sigma = 0`` in score -> eps and eps, x0 -> v divide by
    neither: exact, finite (docs/math.md section 2)."""
    a = torch.tensor([0.0, 0.6], dtype=torch.float64)
    s = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert torch.equal(P.convert("eps", "score", X, X, a, torch.ones(2, dtype=torch.float64)), -X)
    assert torch.equal(P.convert("score", "eps", X, X, a, s), -s[:, None] * X)
    assert torch.isfinite(P.eps_x0_to_v(X, X, a, s)).all()
    assert P.convert("v", "v", X, X, 0.0, 0.0) is X
