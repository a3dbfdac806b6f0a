"""Schedules (docs/math.md section 1) against independent references.

References: the closed forms of the docs/math.md table evaluated in mpmath at 50 digits (the
float64 input ``t`` taken exactly), mpmath's numerical differentiation for ``drift`` and ``g2``,
and the DDPM definitions (products of ``1 - beta``) for the discrete schedules.
"""
from __future__ import annotations

import math
from typing import Callable, List, Tuple

import mpmath as mp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from densityformula import schedules as S

EPS = float(np.finfo(np.float64).eps)
mp.mp.dps = 50


def all_schedules() -> List[S.Schedule]:
    return [
        S.LiYan(),
        S.VPLinear(),
        S.VPLinear(beta_min=0.5, beta_max=5.0),
        S.VPCosine(),
        S.SubVP(),
        S.VE(),
        S.VE(sigma_min=0.002, sigma_max=80.0),
        S.Discrete.ddpm_linear(1000),
        S.Discrete.ddpm_linear(50),
        S.Discrete.ddpm_cosine(1000),
        S.Discrete(torch.tensor([0.1, 0.3, 0.05, 0.5], dtype=torch.float64)),
    ]


VP = (S.LiYan, S.VPLinear, S.VPCosine, S.Discrete)
IDS = [repr(s) for s in all_schedules()]


# ----------------------------------------------------------------------------------------------
# mpmath reference: (alpha^2, sigma^2) straight from the docs/math.md table
# ----------------------------------------------------------------------------------------------
def ref_fn(sch: S.Schedule) -> Callable[[mp.mpf], Tuple[mp.mpf, mp.mpf]]:
    if isinstance(sch, S.LiYan):
        return lambda t: (1 - t, t)
    if isinstance(sch, (S.VPLinear, S.SubVP)):
        bmin, bmax = mp.mpf(sch.beta_min), mp.mpf(sch.beta_max)

        def vp(t):
            B = bmin * t + (bmax - bmin) * t * t / 2
            a2 = mp.exp(-B)
            s = -mp.expm1(-B)
            return (a2, s * s) if isinstance(sch, S.SubVP) else (a2, s)

        return vp
    if isinstance(sch, S.VPCosine):
        s = mp.mpf(sch.s)

        def cos(t):
            # exact trig identities keep 50 digits near both ends (checked against the naive
            # formula in test_cosine_reference_identities): cos((t+s)/(1+s) pi/2) = sin((1-t)/(1+s) pi/2)
            # and cos^2(th0) - cos^2(th) = sin(th - th0) sin(th + th0)
            th, th0 = (t + s) / (1 + s) * mp.pi / 2, s / (1 + s) * mp.pi / 2
            a2 = mp.sin((1 - t) / (1 + s) * mp.pi / 2) ** 2 / mp.cos(th0) ** 2
            s2 = mp.sin(t / (1 + s) * mp.pi / 2) * mp.sin(th + th0) / mp.cos(th0) ** 2
            return a2, s2

        return cos
    if isinstance(sch, S.VE):
        lo, hi = mp.mpf(sch.sigma_min), mp.mpf(sch.sigma_max)
        return lambda t: (mp.mpf(1), (lo * (hi / lo) ** t) ** 2)
    if isinstance(sch, S.Discrete):
        betas = [mp.mpf(float(b)) for b in sch.betas]
        log_ab = [mp.mpf(0)]
        for b in betas:
            log_ab.append(log_ab[-1] + mp.log(1 - b))
        T = len(betas)

        def disc(t):
            k0 = min(int(mp.floor(t)), T - 1)
            la = log_ab[k0] + (t - k0) * (log_ab[k0 + 1] - log_ab[k0])
            return mp.exp(la), -mp.expm1(la)

        return disc
    raise AssertionError(sch)


def probe_times(sch: S.Schedule) -> List[float]:
    """Interior points plus points within 1e-12 (relative to the range) of either end, and the ends."""
    lo, hi = sch.t_min, sch.t_max
    span = hi - lo
    fr = [0.0, 1e-300, 1e-15, 1e-12, 1e-8, 1e-4, 0.013, 0.1, 0.37, 0.5, 0.77, 0.9, 0.999]
    ts = [lo + f * span for f in fr] + [hi - f * span for f in [1e-4, 1e-8, 1e-12]] + [hi]
    if isinstance(sch, S.Discrete):
        ts += [1.0, 2.0, 2.5, float(sch.T - 1), hi - 0.5]
    return sorted(set(t for t in ts if lo <= t <= hi))


def test_cosine_reference_identities():
    s = mp.mpf(0.008)
    ref = ref_fn(S.VPCosine())
    for t in (mp.mpf("0.01"), mp.mpf("0.5"), mp.mpf("0.99")):
        a2 = mp.cos((t + s) / (1 + s) * mp.pi / 2) ** 2 / mp.cos(s / (1 + s) * mp.pi / 2) ** 2
        ra2, rs2 = ref(t)
        assert abs(ra2 - a2) < mp.mpf(10) ** -45 and abs(rs2 - (1 - a2)) < mp.mpf(10) ** -45


def rel_err(x: float, ref) -> float:
    if mp.isinf(ref) or math.isinf(x):
        return 0.0 if x == float(ref) else math.inf
    if abs(ref) < np.finfo(np.float64).tiny:  # below float64's normal range: only absolute accuracy
        return 0.0 if abs(x - float(ref)) <= np.finfo(np.float64).tiny else math.inf
    if ref == 0:
        return abs(x)
    return float(abs((mp.mpf(x) - ref) / ref))


# ----------------------------------------------------------------------------------------------
# values against mpmath, float64-exact up to and within 1e-12 of either end
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sch", all_schedules(), ids=IDS)
def test_alpha_sigma_log_snr_match_mpmath(sch):
    ref = ref_fn(sch)
    ts = probe_times(sch)
    t = torch.tensor(ts, dtype=torch.float64)
    a2, s2, a, s, lam = sch.alpha2(t), sch.sigma2(t), sch.alpha(t), sch.sigma(t), sch.log_snr(t)
    # error budget: a handful of roundings in the closed form, amplified by |log alpha_bar| for exp()
    # of a computed exponent (|B| <= ~16 here); the Discrete cumulative sum adds one rounding per step.
    budget = 64 * EPS * (1 + (sch.T if isinstance(sch, S.Discrete) else 0) ** 0.5 * 16)
    for i, ti in enumerate(ts):
        ra2, rs2 = ref(mp.mpf(ti))
        assert rel_err(float(a2[i]), ra2) <= budget, (ti, "alpha2", float(a2[i]), ra2)
        assert rel_err(float(s2[i]), rs2) <= budget, (ti, "sigma2", float(s2[i]), rs2)
        assert rel_err(float(a[i]), mp.sqrt(ra2)) <= budget, (ti, "alpha")
        assert rel_err(float(s[i]), mp.sqrt(rs2)) <= budget, (ti, "sigma")
        if ra2 == 0:
            rlam = mp.mpf("-inf")
        elif rs2 == 0:
            rlam = mp.mpf("inf")
        else:
            rlam = mp.log(ra2) - mp.log(rs2)
        if mp.isinf(rlam):
            assert float(lam[i]) == float(rlam), (ti, float(lam[i]))
        else:
            # log is well conditioned in absolute terms: |d lam| <= |d a2|/a2 + |d s2|/s2 (+ final rounding)
            assert abs(float(lam[i]) - float(rlam)) <= 2 * budget + EPS * abs(float(rlam)), (
                ti,
                float(lam[i]),
                rlam,
            )
    assert not torch.isnan(torch.stack([a2, s2, a, s, lam])).any()


@pytest.mark.parametrize("sch", [s for s in all_schedules() if isinstance(s, VP)], ids=lambda s: repr(s))
def test_vp_schedules_preserve_variance(sch):
    t = torch.linspace(sch.t_min, sch.t_max, 2001, dtype=torch.float64)
    total = sch.alpha2(t) + sch.sigma2(t)
    assert torch.allclose(total, torch.ones_like(total), rtol=0, atol=4 * EPS)
    assert torch.allclose(sch.alpha(t) ** 2 + sch.sigma(t) ** 2, torch.ones_like(total), rtol=0, atol=8 * EPS)


def test_subvp_sigma_is_one_minus_alpha_squared():
    sch = S.SubVP()
    t = torch.linspace(0, 1, 501, dtype=torch.float64)
    assert torch.allclose(sch.sigma(t), 1 - sch.alpha2(t), rtol=0, atol=4 * EPS)
    # strictly less total variance than VP (hence "sub"-VP) away from t = 0
    assert bool((sch.alpha2(t[1:]) + sch.sigma2(t[1:]) < 1).all())


def test_ve_alpha_is_one_and_sigma_geometric():
    sch = S.VE(sigma_min=0.01, sigma_max=50.0)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert bool((sch.alpha(t) == 1).all())
    np.testing.assert_allclose(sch.sigma(t).numpy(), 0.01 * 5000.0 ** t.numpy(), rtol=1e-14)
    assert float(sch.sigma(0.0)) == pytest.approx(0.01, rel=1e-15)
    assert float(sch.sigma(1.0)) == pytest.approx(50.0, rel=1e-15)


@pytest.mark.parametrize("sch", all_schedules(), ids=IDS)
def test_log_snr_is_decreasing_and_snr_consistent(sch):
    t = torch.linspace(sch.t_min, sch.t_max, 1001, dtype=torch.float64)
    lam = sch.log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all())
    snr = sch.snr(t)
    finite = torch.isfinite(lam)
    np.testing.assert_allclose(snr[finite].numpy(), (sch.alpha2(t) / sch.sigma2(t))[finite].numpy(), rtol=1e-13)
    lo, hi = sch.log_snr_range
    assert lo == float(sch.log_snr(sch.t_max)) and hi == float(sch.log_snr(sch.t_min))


# ----------------------------------------------------------------------------------------------
# drift and g^2 against mpmath derivatives of the table's formulas
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sch", all_schedules(), ids=IDS)
def test_drift_and_g2_match_mpmath_derivatives(sch):
    ref = ref_fn(sch)
    lo, hi = sch.t_min, sch.t_max
    fr = [1e-6, 0.013, 0.1, 0.37, 0.5, 0.77, 0.9, 0.99]
    ts = [lo + f * (hi - lo) for f in fr]
    if isinstance(sch, S.Discrete):  # piecewise-constant beta: compare inside steps
        ts = [math.floor(t) + 0.3 for t in ts]
    t = torch.tensor(ts, dtype=torch.float64)
    f, g2 = sch.drift(t), sch.g2(t)
    for i, ti in enumerate(ts):
        x = mp.mpf(ti)
        rf = mp.diff(lambda u: mp.log(ref(u)[0]) / 2, x)
        rg2 = mp.diff(lambda u: ref(u)[1], x) - 2 * rf * ref(x)[1]
        # a few roundings of closed forms whose terms are O(|value|) (VPCosine: tan near pi/2 adds a factor)
        tol = 1e-13 * max(1.0, abs(float(rf)))
        assert abs(float(f[i]) - float(rf)) <= tol, (ti, float(f[i]), rf)
        assert abs(float(g2[i]) - float(rg2)) <= 1e-13 * max(1.0, abs(float(rg2))), (ti, float(g2[i]), rg2)


@pytest.mark.parametrize("sch", all_schedules(), ids=IDS)
def test_drift_and_g2_match_float64_finite_differences(sch):
    """A second, float64-only check: central differences of the schedule's own alpha^2 and sigma^2."""
    lo, hi = sch.t_min, sch.t_max
    ts = torch.tensor([lo + f * (hi - lo) for f in (0.05, 0.2, 0.5, 0.8, 0.95)], dtype=torch.float64)
    if isinstance(sch, S.Discrete):
        ts = torch.floor(ts) + 0.5
    h = 1e-5 * (hi - lo) if not isinstance(sch, S.Discrete) else 1e-3
    f_fd = (torch.log(sch.alpha2(ts + h)) - torch.log(sch.alpha2(ts - h))) / (4 * h)
    s2_fd = (sch.sigma2(ts + h) - sch.sigma2(ts - h)) / (2 * h)
    f = sch.drift(ts)
    g2 = sch.g2(ts)
    # central-difference truncation O(h^2 f''') plus rounding O(eps |value| / h)
    tol = 1e-6
    np.testing.assert_allclose(f_fd.numpy(), f.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose((s2_fd - 2 * f * sch.sigma2(ts)).numpy(), g2.numpy(), rtol=tol, atol=tol)


def test_log_snr_derivative_identity():
    """d lambda / dt = -g^2 / sigma^2 for every linear Gaussian process (follows from the definitions)."""
    for sch in all_schedules():
        lo, hi = sch.t_min, sch.t_max
        ts = torch.tensor([lo + f * (hi - lo) for f in (0.1, 0.4, 0.6, 0.9)], dtype=torch.float64)
        if isinstance(sch, S.Discrete):
            ts = torch.floor(ts) + 0.5
        h = 1e-6 * (hi - lo)
        fd = (sch.log_snr(ts + h) - sch.log_snr(ts - h)) / (2 * h)
        np.testing.assert_allclose(fd.numpy(), (-sch.g2(ts) / sch.sigma2(ts)).numpy(), rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# t_from_log_snr
# ----------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None, derandomize=True)
@given(idx=st.integers(0, len(IDS) - 1), u=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8))
def test_t_from_log_snr_round_trip(idx, u):
    sch = all_schedules()[idx]
    t = torch.tensor(u, dtype=torch.float64) * (sch.t_max - sch.t_min) + sch.t_min
    lam = sch.log_snr(t)
    back = sch.t_from_log_snr(lam)
    # conditioning: an O(eps |lam|) error in lam moves t by that over |d lam/dt| = g^2/sigma^2
    with torch.no_grad():
        slope = (sch.g2(t) / sch.sigma2(t)).abs()
        tol = 64 * EPS * (t.abs() + (1 + lam.abs()) / slope)
    inf = ~torch.isfinite(lam)
    tol = torch.where(inf | ~torch.isfinite(tol), torch.zeros_like(tol), tol)
    tol = tol + np.finfo(np.float64).tiny  # subnormal t cannot round-trip through lam beyond this
    assert bool(((back - t).abs() <= tol).all()), (t, back, tol)


@pytest.mark.parametrize("sch", all_schedules(), ids=IDS)
def test_log_snr_of_t_from_log_snr(sch):
    lo, hi = sch.log_snr_range
    lo_f = max(lo, -40.0)
    hi_f = min(hi, 40.0)
    lam = torch.linspace(lo_f, hi_f, 301, dtype=torch.float64)
    t = sch.t_from_log_snr(lam)
    assert bool(((t >= sch.t_min) & (t <= sch.t_max)).all())
    back = sch.log_snr(t)
    slope = (sch.g2(t) / sch.sigma2(t)).abs()
    # t carries a relative rounding eps|t|, which moves lambda by slope * eps |t|
    tol = 64 * EPS * (1 + lam.abs() + slope * t.abs())
    assert bool(((back - lam).abs() <= tol).all()), float((back - lam).abs().max())


def test_liyan_infinite_ends():
    sch = S.LiYan()
    assert float(sch.log_snr(0.0)) == math.inf
    assert float(sch.log_snr(1.0)) == -math.inf
    assert float(sch.t_from_log_snr(math.inf)) == 0.0
    assert float(sch.t_from_log_snr(-math.inf)) == 1.0
    assert sch.log_snr_range == (-math.inf, math.inf)
    t = torch.tensor([0.0, 1e-300, 1e-12, 1 - 1e-12, 1.0], dtype=torch.float64)
    for name in ("alpha", "sigma", "alpha2", "sigma2", "log_snr", "snr", "drift", "g2"):
        assert not torch.isnan(getattr(sch, name)(t)).any(), name
    # t within 1e-12 of either end: log-SNR exactly log((1-t)/t) (mpmath)
    for ti in (1e-12, 1 - 1e-12):
        ref = mp.log(1 - mp.mpf(ti)) - mp.log(mp.mpf(ti))
        assert abs(float(sch.log_snr(ti)) - float(ref)) <= 4 * EPS * abs(float(ref))


def test_other_infinite_ends_are_signed_not_nan():
    assert float(S.VPLinear().log_snr(0.0)) == math.inf
    assert float(S.SubVP().log_snr(0.0)) == math.inf
    assert float(S.VPCosine().log_snr(0.0)) == math.inf
    assert float(S.VPCosine().log_snr(1.0)) == -math.inf
    assert float(S.Discrete.ddpm_linear(100).log_snr(0.0)) == math.inf
    assert float(S.VPCosine().t_from_log_snr(-math.inf)) == pytest.approx(1.0, abs=1e-15)
    assert float(S.VPCosine().t_from_log_snr(math.inf)) == 0.0


# ----------------------------------------------------------------------------------------------
# float32 never NaN, dtype and device conventions, vectorisation
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sch", all_schedules(), ids=IDS)
def test_float32_inputs_never_nan_and_match_float64(sch):
    lo, hi = sch.t_min, sch.t_max
    u = torch.cat(
        [
            torch.linspace(0, 1, 4001, dtype=torch.float32),
            1 - torch.arange(0, 64, dtype=torch.float32) * 2.0**-24,  # the last float32 values below 1
            torch.arange(0, 64, dtype=torch.float32) * 2.0**-30,
        ]
    ).clamp(0, 1)
    t32 = (lo + u.double() * (hi - lo)).float().clamp(lo, hi)
    for name in ("alpha", "sigma", "alpha2", "sigma2", "log_snr", "drift", "g2"):
        out = getattr(sch, name)(t32)
        assert out.dtype == torch.float32, name
        assert not torch.isnan(out).any(), (name, t32[torch.isnan(out)])
        ref = getattr(sch, name)(t32.double()).float()
        assert torch.equal(out, ref), name
    a2 = sch.alpha2(t32)
    assert bool((a2 >= 0).all()) and bool((sch.sigma2(t32) >= 0).all())


def test_cosine_float32_near_alpha_bar_zero():
    sch = S.VPCosine()
    t = 1 - torch.arange(0, 200, dtype=torch.float32) * 2.0**-24
    for name in ("alpha", "sigma", "log_snr", "drift", "g2", "snr"):
        assert not torch.isnan(getattr(sch, name)(t)).any(), name
    lam = sch.log_snr(t)
    assert float(lam[0]) == -math.inf and bool(torch.isfinite(lam[1:]).all())
    assert bool((lam[1:] < lam[2:].max() + 1).all())
    back = sch.t_from_log_snr(lam)
    assert not torch.isnan(back).any()


def test_dtype_device_and_shapes():
    for sch in all_schedules():
        mid = 0.5 * (sch.t_min + sch.t_max)
        out = sch.alpha(mid)
        assert out.dtype == torch.float64 and out.ndim == 0 and out.device.type == "cpu"
        out = sch.sigma(torch.tensor(mid, dtype=torch.float32))
        assert out.dtype == torch.float32 and out.ndim == 0
        t = torch.linspace(sch.t_min, sch.t_max, 17, dtype=torch.float64)
        vec = sch.log_snr(t)
        assert vec.shape == (17,)
        loop = torch.stack([sch.log_snr(float(ti)) for ti in t])
        assert torch.equal(vec, loop)
        assert sch.alpha(torch.tensor([sch.t_min, sch.t_max], dtype=torch.int64) if isinstance(sch, S.Discrete)
                         else torch.tensor([0, 1])).dtype == torch.float64


# ----------------------------------------------------------------------------------------------
# Discrete
# ----------------------------------------------------------------------------------------------
def test_discrete_alpha_bars_are_products():
    betas = np.random.default_rng(0).uniform(1e-4, 0.3, size=37)
    sch = S.Discrete(torch.tensor(betas))
    ref = [mp.mpf(1)]
    for b in betas:
        ref.append(ref[-1] * (1 - mp.mpf(float(b))))
    ab = sch.alpha_bars
    assert ab.shape == (38,) and float(ab[0]) == 1.0
    for k in range(38):
        assert rel_err(float(ab[k]), ref[k]) <= 64 * EPS * (k + 1)
    assert torch.equal(sch.alphas, 1 - sch.betas)
    k = torch.arange(0, 38, dtype=torch.float64)
    np.testing.assert_allclose(sch.alpha2(k).numpy(), ab.numpy(), rtol=4 * EPS, atol=0)
    np.testing.assert_allclose(sch.tau.numpy(), [float(1 - r) for r in ref], rtol=1e-13, atol=0)
    assert sch.T == 37 and sch.t_min == 0.0 and sch.t_max == 37.0


def test_discrete_tau_is_liyan_time():
    """Step k and LiYan time tau_k have the same SNR, hence the same law of X given X_0."""
    for sch in (S.Discrete.ddpm_linear(1000), S.Discrete.ddpm_cosine(200)):
        k = torch.arange(0, sch.T + 1, dtype=torch.float64)
        lam_d = sch.log_snr(k)
        lam_l = S.LiYan().log_snr(sch.tau)
        fin = torch.isfinite(lam_d)
        assert torch.equal(fin, torch.isfinite(lam_l))
        # 1 - tau_k = alpha_bar_k is known to absolute (not relative) eps once tau is formed
        tol = 8 * EPS * (1 + lam_d.abs() + 1 / sch.alpha_bars)
        assert bool(((lam_l - lam_d).abs()[fin] <= tol[fin]).all())
        tau = sch.tau
        assert float(tau[0]) == 0.0 and bool((tau[1:] > tau[:-1]).all()) and float(tau[-1]) < 1


def test_ddpm_linear_matches_ho_et_al_and_scales_with_T():
    sch = S.Discrete.ddpm_linear(1000)
    np.testing.assert_allclose(sch.betas.numpy(), np.linspace(1e-4, 0.02, 1000), rtol=4 * EPS, atol=0)
    # sum of betas is T * mean = 1000 * (1e-4 + 0.02) / 2 for every T
    for T in (50, 100, 1000, 4000):
        assert float(S.Discrete.ddpm_linear(T).betas.sum()) == pytest.approx(10.05, rel=1e-12)
    # the continuous limit is VPLinear(0.1, 20): error in alpha_bar shrinks like 1/T
    cont = S.VPLinear(0.1, 20.0)
    errs = []
    for T in (100, 1000, 10000):
        d = S.Discrete.ddpm_linear(T)
        k = torch.arange(0, T + 1, dtype=torch.float64)
        errs.append(float((torch.log(d.alpha2(k)) - torch.log(cont.alpha2(k / T))).abs().max()))
    for e1, e2 in zip(errs, errs[1:]):
        assert 0.05 < e2 / e1 < 0.2, errs  # ~10x smaller per 10x more steps
    unscaled = S.Discrete.ddpm_linear(100, scale_with_T=False)
    np.testing.assert_allclose(unscaled.betas.numpy(), np.linspace(1e-4, 0.02, 100), rtol=4 * EPS, atol=0)


def test_ddpm_cosine_clipping_and_values():
    T = 1000
    sch = S.Discrete.ddpm_cosine(T)
    s = 0.008
    f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
    raw = 1 - f[1:] / f[:-1]
    raw[-1] = 1.0  # f(T) = 0 exactly in exact arithmetic
    betas = sch.betas.numpy()
    assert betas.max() <= 0.999
    assert betas[-1] == 0.999  # alpha_bar(1) = 0 forces the clip at the last step
    clipped = raw >= 0.999
    assert clipped.sum() >= 1
    np.testing.assert_array_equal(betas[clipped], 0.999)
    # unclipped steps: relative accuracy limited by cancellation in the numpy reference near k = T
    np.testing.assert_allclose(betas[~clipped], raw[~clipped], rtol=1e-9)
    ab = sch.alpha_bars.numpy()
    np.testing.assert_allclose(ab[: T - 5], (f / f[0])[: T - 5], rtol=1e-11)
    assert not np.isnan(ab).any() and ab[-1] > 0
    sch2 = S.Discrete.ddpm_cosine(50, max_beta=0.5)
    assert float(sch2.betas.max()) == 0.5


def test_discrete_interpolation_is_log_linear():
    sch = S.Discrete(torch.tensor([0.1, 0.3, 0.05], dtype=torch.float64))
    t = torch.tensor([0.25, 1.5, 2.75], dtype=torch.float64)
    la = torch.log(sch.alpha_bars)
    expect = torch.stack(
        [la[0] + 0.25 * (la[1] - la[0]), la[1] + 0.5 * (la[2] - la[1]), la[2] + 0.75 * (la[3] - la[2])]
    )
    np.testing.assert_allclose(torch.log(sch.alpha2(t)).numpy(), expect.numpy(), rtol=1e-14)
    # piecewise-constant beta(t) = -log(1 - beta_k) on (k-1, k]
    np.testing.assert_allclose(sch.g2(t).numpy(), -np.log1p(-np.array([0.1, 0.3, 0.05])), rtol=1e-14)


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sch", all_schedules(), ids=IDS)
def test_bad_times_raise_naming_t(sch):
    span = sch.t_max - sch.t_min
    for bad in (sch.t_min - 1e-9 * span - 1e-300, sch.t_max + 1e-6 * span, math.nan, math.inf, -math.inf):
        for meth in ("alpha", "sigma", "log_snr", "drift", "g2", "alpha2", "sigma2"):
            with pytest.raises(ValueError, match=r"\bt\b"):
                getattr(sch, meth)(bad)
    with pytest.raises(ValueError, match=r"\bt\b"):
        sch.alpha(torch.tensor([0.5 * span, math.nan], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\bt\b"):
        sch.alpha(torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"\bt\b"):
        sch.alpha("0.5")
    with pytest.raises(TypeError, match=r"\bt\b"):
        sch.alpha(True)
    with pytest.raises(TypeError, match=r"\bt\b"):
        sch.alpha(torch.tensor([True]))
    with pytest.raises(ValueError, match=r"\blam\b"):
        sch.t_from_log_snr(math.nan)


def test_bad_lam_raises_naming_lam():
    for sch in (S.VE(), S.VPLinear(), S.Discrete.ddpm_linear(100)):
        lo, hi = sch.log_snr_range
        with pytest.raises(ValueError, match=r"\blam\b"):
            sch.t_from_log_snr(lo - 1.0)
        if math.isfinite(hi):
            with pytest.raises(ValueError, match=r"\blam\b"):
                sch.t_from_log_snr(hi + 1.0)


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: S.VPLinear(beta_min=-1.0), "beta_min"),
        (lambda: S.VPLinear(beta_min=2.0, beta_max=1.0), "beta_max"),
        (lambda: S.VPLinear(beta_min=math.nan), "beta_min"),
        (lambda: S.SubVP(beta_max="20"), "beta_max"),
        (lambda: S.VPCosine(s=-0.1), r"\bs\b"),
        (lambda: S.VPCosine(s=math.inf), r"\bs\b"),
        (lambda: S.VE(sigma_min=1.0, sigma_max=0.5), "sigma_min"),
        (lambda: S.VE(sigma_min=0.0), "sigma_min"),
        (lambda: S.VE(sigma_max=math.inf), "sigma_max"),
        (lambda: S.Discrete([0.1, 1.5]), "betas"),
        (lambda: S.Discrete([0.1, 0.0]), "betas"),
        (lambda: S.Discrete([]), "betas"),
        (lambda: S.Discrete([[0.1, 0.2]]), "betas"),
        (lambda: S.Discrete([0.1, math.nan]), "betas"),
        (lambda: S.Discrete("abc"), "betas"),
        (lambda: S.Discrete.ddpm_linear(0), r"\bT\b"),
        (lambda: S.Discrete.ddpm_linear(2.5), r"\bT\b"),
        (lambda: S.Discrete.ddpm_linear(5), r"\bT\b"),
        (lambda: S.Discrete.ddpm_cosine(-3), r"\bT\b"),
        (lambda: S.Discrete.ddpm_cosine(10, max_beta=1.0), "max_beta"),
    ],
)
def test_bad_constructor_arguments(make, name):
    with pytest.raises((ValueError, TypeError), match=name):
        make()
