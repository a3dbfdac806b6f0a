"""Garbage in, explained errors out.

Hypothesis throws random objects (None, strings, huge ints, NaN/inf, ragged lists, numpy arrays and
torch tensors of random shapes and dtypes, near-miss shapes and values) at the constructors and
methods of the foundation.  Every call must either return without a NaN anywhere in its output or
raise ``ValueError`` / ``TypeError`` whose message names one of the call's arguments.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Dict, Sequence

import numpy as np
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from densityformula import Estimate
from densityformula import schedules as S
from densityformula.models import AnalyticModel
from densityformula.targets import Gaussian, GaussianMixture, random_gmm

F64 = torch.float64
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    report_multiple_bugs=False,
)

# ----------------------------------------------------------------------------------------------
# garbage
# ----------------------------------------------------------------------------------------------
finite_or_not = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 1e-300, -1e-300, 1e300, -1e300, 1e-8, 1 - 1e-12, 5e-324]),
)
dtypes = st.sampled_from([torch.float64, torch.float32, torch.float16, torch.int64, torch.bool, torch.complex64])
np_dtypes = st.sampled_from([np.float64, np.float32, np.int64, np.bool_, np.complex128, object])


@st.composite
def tensors(draw, shape=None) -> torch.Tensor:
    if shape is None:
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    n = int(np.prod(shape)) if shape else 1
    vals = draw(st.lists(finite_or_not, min_size=n, max_size=n))
    dt = draw(dtypes)
    t = torch.tensor(vals, dtype=F64).reshape(shape)
    if dt in (torch.int64,):
        t = torch.nan_to_num(t, nan=0.0, posinf=1e18, neginf=-1e18).clamp(-1e18, 1e18)
    return t.to(dt)


@st.composite
def arrays(draw) -> np.ndarray:
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    n = int(np.prod(shape)) if shape else 1
    vals = draw(st.lists(finite_or_not, min_size=n, max_size=n))
    dt = draw(np_dtypes)
    arr = np.array(vals, dtype=np.float64).reshape(shape)
    with np.errstate(all="ignore"):
        if dt is np.int64:
            arr = np.nan_to_num(arr).clip(-1e18, 1e18)
        return arr.astype(dt)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.sampled_from([10**400, -(10**400), 2**63]),
    finite_or_not,
    st.text(max_size=3),
    st.just(object()),
    st.just({"a": 1}),
)
ragged = st.recursive(st.one_of(finite_or_not, st.text(max_size=1)), lambda c: st.lists(c, max_size=3), max_leaves=6)
garbage = st.one_of(scalars, ragged, tensors(), arrays())
# for size arguments (d, K, n, T) a huge int is a legitimate request for a huge allocation, not garbage
small_garbage = garbage.filter(lambda v: not (isinstance(v, int) and abs(v) > 64))


def near(draw, shape: Sequence[int], lo: float = -3.0, hi: float = 3.0) -> torch.Tensor:
    """A float64 tensor of a plausible shape with plausible values, sometimes spoiled."""
    size = int(np.prod(shape))
    vals = draw(st.lists(st.floats(lo, hi), min_size=size, max_size=size))
    t = torch.tensor(np.asarray(vals), dtype=F64).reshape(shape)
    how = draw(st.sampled_from(["ok", "ok", "ok", "nan", "inf", "big", "tiny", "f32", "shape"]))
    if t.numel() and how == "nan":
        t.view(-1)[0] = math.nan
    elif t.numel() and how == "inf":
        t.view(-1)[0] = -math.inf
    elif how == "big":
        t = t * 1e200
    elif how == "tiny":
        t = t * 1e-200
    elif how == "f32":
        t = t.float()
    elif how == "shape":
        t = t.reshape(-1)[: max(0, t.numel() - 1)]
    return t


def arg(draw, plausible: st.SearchStrategy, size: bool = False) -> Any:
    return draw(st.one_of(plausible, plausible, small_garbage if size else garbage))


# ----------------------------------------------------------------------------------------------
# the contract
# ----------------------------------------------------------------------------------------------
def has_nan(out: Any) -> bool:
    if isinstance(out, torch.Tensor):
        return bool(torch.isnan(out.detach()).any()) if (out.dtype.is_floating_point or out.is_complex()) else False
    if isinstance(out, (tuple, list)):
        return any(has_nan(o) for o in out)
    if isinstance(out, GaussianMixture):
        return any(has_nan(v) for v in (out.weights, out.means, out.eigvals))
    if isinstance(out, float):
        return math.isnan(out)
    return False


def check(fn: Callable[..., Any], names: Sequence[str], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn``; allow only ValueError/TypeError naming one of ``names``; forbid NaN in the output."""
    try:
        out = fn(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        assert any(re.search(rf"(?<![A-Za-z_]){re.escape(n)}(?![A-Za-z_])", msg) for n in names), (
            f"{type(exc).__name__} does not name any of {list(names)}: {msg!r}"
        )
        return None
    assert not has_nan(out), (fn, out)
    return out


# ----------------------------------------------------------------------------------------------
# constructors
# ----------------------------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_gaussian_mixture_constructor(data):
    K = data.draw(st.integers(1, 3))
    d = data.draw(st.integers(1, 3))
    w = arg(data.draw, st.builds(lambda: None).map(lambda _: torch.full((K,), 1.0 / K, dtype=F64))
            | st.just([1.0 / K] * K))
    mu = arg(data.draw, st.just(None).map(lambda _: near(data.draw, (K, d))))
    cov_shape = data.draw(st.sampled_from([(K, d, d), (K, d), (K,), ()]))
    covs = arg(data.draw, st.just(None).map(lambda _: near(data.draw, cov_shape, 0.01, 3.0)))
    if isinstance(covs, torch.Tensor) and covs.ndim == 3 and covs.dtype == F64 and data.draw(st.booleans()):
        covs = covs @ covs.transpose(1, 2) + 1e-3 * torch.eye(covs.shape[-1], dtype=F64)  # often PD
    dtype = data.draw(st.one_of(st.just(F64), st.just(torch.float32), st.just(torch.int32), garbage))
    device = data.draw(st.one_of(st.none(), st.just("cpu"), st.just("auto"), st.text(max_size=4)))
    g = check(GaussianMixture, ["weights", "means", "covs", "dtype", "device"], w, mu, covs, dtype=dtype, device=device)
    if g is not None:
        exercise_mixture(data, g)


@FUZZ
@given(data=st.data())
def test_gaussian_constructor(data):
    d = data.draw(st.integers(1, 3))
    mean = arg(data.draw, st.just(None).map(lambda _: near(data.draw, (d,))))
    cov_shape = data.draw(st.sampled_from([(d, d), (d,), ()]))
    cov = arg(data.draw, st.just(None).map(lambda _: near(data.draw, cov_shape, 0.01, 3.0)))
    g = check(Gaussian, ["mean", "cov", "covs"], mean, cov)
    if g is not None:
        exercise_mixture(data, g)


@FUZZ
@given(data=st.data())
def test_random_gmm_constructor(data):
    d = arg(data.draw, st.integers(-2, 6), size=True)
    K = arg(data.draw, st.integers(-2, 4), size=True)
    seed = arg(data.draw, st.integers(0, 2**31))
    sep = arg(data.draw, st.floats(0, 10))
    cond = arg(data.draw, st.sampled_from([1.0, 10.0, 1e8, 0.5]))
    g = check(random_gmm, ["d", "K", "seed", "separation", "condition_number"], d, K, seed, sep, cond)
    if g is not None:
        exercise_mixture(data, g)


SCHEDULE_MAKERS: Dict[str, Any] = {
    "VPLinear": (S.VPLinear, ["beta_min", "beta_max"]),
    "SubVP": (S.SubVP, ["beta_min", "beta_max"]),
    "VPCosine": (S.VPCosine, ["s"]),
    "VE": (S.VE, ["sigma_min", "sigma_max"]),
    "Discrete": (S.Discrete, ["betas"]),
    "ddpm_linear": (S.Discrete.ddpm_linear, ["T", "beta_start", "beta_end"]),
    "ddpm_cosine": (S.Discrete.ddpm_cosine, ["T", "s", "max_beta"]),
}


@FUZZ
@given(data=st.data())
def test_schedule_constructors_and_methods(data):
    name = data.draw(st.sampled_from(sorted(SCHEDULE_MAKERS) + ["LiYan"]))
    if name == "LiYan":
        sch = S.LiYan()
    else:
        make, names = SCHEDULE_MAKERS[name]
        plaus = {
            "beta_min": st.floats(1e-3, 50), "beta_max": st.floats(1e-3, 50), "s": st.floats(1e-4, 0.5),
            "sigma_min": st.floats(1e-4, 1), "sigma_max": st.floats(1, 1e3), "max_beta": st.floats(0.5, 1.0),
            "beta_start": st.floats(1e-5, 1e-3), "beta_end": st.floats(1e-3, 0.05),
            "T": st.integers(-3, 300), "betas": st.lists(st.floats(0, 1), min_size=0, max_size=6),
        }
        args = [arg(data.draw, plaus[n], size=n == "T") for n in names]
        sch = check(make, names, *args)
        if sch is None:
            return
    lo, hi = sch.t_min, sch.t_max
    t64 = st.lists(st.floats(lo, hi), max_size=4).map(lambda v: torch.tensor(v, dtype=F64))
    t32 = st.lists(st.floats(lo, hi), max_size=4).map(lambda v: torch.tensor(v, dtype=torch.float32).clamp(lo, hi))
    t = arg(data.draw, st.one_of(st.floats(lo, hi), t64, t32))
    for meth in ("alpha", "sigma", "alpha2", "sigma2", "log_snr", "snr", "drift", "g2"):
        check(getattr(sch, meth), ["t"], t)
    lam = arg(data.draw, st.one_of(st.floats(-50, 50), st.sampled_from([math.inf, -math.inf])))
    check(sch.t_from_log_snr, ["lam"], lam)


# ----------------------------------------------------------------------------------------------
# methods of a mixture (valid or random) and of an AnalyticModel
# ----------------------------------------------------------------------------------------------
SCHEDS = [S.LiYan(), S.VPLinear(), S.VPCosine(), S.SubVP(), S.VE(), S.Discrete.ddpm_cosine(20)]


def exercise_mixture(data, g: GaussianMixture) -> None:
    d = g.d
    n = data.draw(st.integers(0, 3))
    x = arg(data.draw, st.just(None).map(lambda _: near(data.draw, (n, d)).to(g.dtype)))
    sch = data.draw(st.one_of(st.sampled_from(SCHEDS), garbage))
    t_n = st.lists(st.floats(0, 1), min_size=n, max_size=n).map(lambda v: torch.tensor(v, dtype=F64))
    t = arg(data.draw, st.one_of(st.floats(0, 1), t_n))
    check(g.log_prob, ["x"], x)
    check(g.responsibilities, ["x"], x)
    for meth in ("log_prob", "score", "denoise", "score_divergence", "responsibilities"):
        check(getattr(g, meth), ["x", "t", "schedule"], x, t, sch)
    check(g.marginal, ["schedule", "t"], sch, t)
    nn = arg(data.draw, st.integers(-2, 5), size=True)
    gen = data.draw(st.one_of(st.none(), st.just(torch.Generator().manual_seed(0)), garbage))
    check(g.sample, ["n", "generator"], nn, generator=gen)
    mask = arg(data.draw, st.lists(st.booleans(), min_size=d, max_size=d).map(torch.tensor))
    values = arg(data.draw, st.just(None).map(lambda _: near(data.draw, (data.draw(st.integers(0, d)),)).to(g.dtype)))
    check(g.condition, ["mask", "values"], mask, values)
    check(g.to, ["device", "dtype"], device=data.draw(st.one_of(st.none(), st.just("cpu"), garbage)),
          dtype=data.draw(st.one_of(st.none(), st.just(torch.float32), garbage)))
    if isinstance(sch, S.Schedule):
        m = AnalyticModel(g, sch)
        for meth in ("denoise", "eps", "score", "v", "score_divergence", "log_prob"):
            check(getattr(m, meth), ["x", "x_t", "t"], x, t)


@FUZZ
@given(data=st.data())
def test_methods_of_a_valid_mixture(data):
    g = random_gmm(data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)), seed=data.draw(st.integers(0, 50)),
                   condition_number=data.draw(st.sampled_from([1.0, 10.0, 1e8])))
    exercise_mixture(data, g)


@FUZZ
@given(data=st.data())
def test_analytic_model_and_estimate_constructors(data):
    target = data.draw(st.one_of(st.just(random_gmm(2, 2, seed=0)), garbage))
    sch = data.draw(st.one_of(st.sampled_from(SCHEDS), garbage))
    check(AnalyticModel, ["target", "schedule"], target, sch)
    value = arg(data.draw, st.just(torch.zeros(3, dtype=F64)))
    stderr = arg(data.draw, st.just(torch.ones(3, dtype=F64)))
    e = check(Estimate, ["value", "stderr", "nfe", "seconds"], value, stderr, 1, 0.0)
    if e is not None:
        check(e.ci, ["level"], arg(data.draw, st.floats(0.01, 0.99)))


# ----------------------------------------------------------------------------------------------
# density arguments (prior=)
# ----------------------------------------------------------------------------------------------
def _density_candidates() -> st.SearchStrategy:
    g = random_gmm(2, 2, seed=0)
    sch = S.VPLinear()
    outs = [
        lambda x: g.log_prob(x),
        lambda x: x,  # (n, d): wrong shape
        lambda x: 1.0,  # not a tensor
        lambda x: torch.zeros(x.shape[0] + 1, dtype=F64),
    ]
    callables = st.sampled_from(
        outs
        + [lambda x, t: g.log_prob(x, t, sch), lambda x, t, s: x, lambda: 0, lambda *a: g.log_prob(a[0]),
           lambda x, *, k: x, g.log_prob, g.marginal(sch, 0.5).log_prob, g, AnalyticModel(g, sch)]
    )
    return st.one_of(callables, garbage, st.sampled_from(["gaussian", "uniform", ""]))


@FUZZ
@given(data=st.data())
def test_density_arguments(data):
    """Every density argument is a known form or a TypeError/ValueError naming ``prior``; a known
    form either returns an ``(n,)`` log-density or a ValueError naming ``prior``."""
    from densityformula._validation import LogDensity, as_log_density

    density = data.draw(_density_candidates())
    ld = check(as_log_density, ["prior"], density, "prior", strings=("gaussian",))
    if isinstance(ld, LogDensity):
        x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
        t = torch.full((3,), 0.5, dtype=F64)
        try:
            out = ld(x, t)
        except ValueError as exc:
            assert "prior" in str(exc)
        else:
            assert out.shape == (3,)
