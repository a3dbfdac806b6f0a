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

from densityformula._validation import (
    check_int,
    check_points,
    check_positive_float,
    check_seed,
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
