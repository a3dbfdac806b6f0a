"""The exact 1-D density of the predictor-corrector sampler on a grid (docs/math.md I39, I40).

Ground truths: closed-form Gaussian push-forwards (one step), an independent moment recursion of the
whole PC chain for a Gaussian target (affine score, folded-normal mean for the batch step size),
the unadjusted-Langevin fixed point ``v (1 + alpha snr^2)``, large Monte-Carlo runs of the actual
samplers (KS), the total mass and the convergence in the grid spacing.  Negative controls: a shifted
sample fails the same KS test; a wrong step size misses the moment recursion.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import ndtr
from scipy.stats import kstest

from densityformula import models, reverse, sampling, schedules, targets
from densityformula.likelihood import chain_density as CD

F64 = torch.float64
Q3 = targets.GaussianMixture([0.3, 0.3, 0.4], [[-2.0], [0.0], [1.5]], [0.1, 0.2, 0.15])
GRID = torch.linspace(-6.5, 6.5, 1301, dtype=F64)


def _normal(x: torch.Tensor, m: float, v: float) -> torch.Tensor:
    return torch.exp(-0.5 * (x - m) ** 2 / v) / math.sqrt(2 * math.pi * v)


@given(a=st.floats(0.7, 1.3), b=st.floats(-1.0, 1.0), v=st.floats(2e-4, 0.5), m=st.floats(-1.0, 1.0),
       P=st.floats(0.05, 1.0))
def test_one_affine_step_of_a_gaussian_is_the_closed_form_gaussian(a, b, v, m, P) -> None:
    grid = torch.linspace(-10.0, 10.0, 2001, dtype=F64)  # the input's mass outside it is below 1e-17
    p = _normal(grid, m, P)
    out = CD.gaussian_step_1d(grid, p, a * grid + b, v)
    exact = _normal(grid, a * m + b, a * a * P + v)
    assert float((out - exact).abs().max()) <= 1e-9 * float(exact.max())


def test_a_mixture_of_maps_is_the_mixture_of_their_push_forwards() -> None:
    p = _normal(GRID, 0.2, 0.3)
    means = torch.stack([0.9 * GRID + 0.5, 1.1 * GRID - 0.4])
    w = torch.tensor([0.3, 0.7], dtype=F64)
    out = CD.gaussian_step_1d(GRID, p, means, 0.02, w)
    exact = (0.3 * _normal(GRID, 0.9 * 0.2 + 0.5, 0.81 * 0.3 + 0.02)
             + 0.7 * _normal(GRID, 1.1 * 0.2 - 0.4, 1.21 * 0.3 + 0.02))
    assert float((out - exact).abs().max()) <= 1e-9


def test_gaussian_step_rejects_bad_input() -> None:
    p = _normal(GRID, 0.0, 1.0)
    with pytest.raises(ValueError, match="below the grid step"):
        CD.gaussian_step_1d(GRID, p, GRID, 1e-6)
    with pytest.raises(ValueError, match="weights"):
        CD.gaussian_step_1d(GRID, p, torch.stack([GRID, GRID]), 0.1)
    with pytest.raises(ValueError, match="sum to 1"):
        CD.gaussian_step_1d(GRID, p, torch.stack([GRID, GRID]), 0.1, torch.tensor([0.5, 0.6], dtype=F64))
    with pytest.raises(ValueError, match="uniform"):
        CD.gaussian_step_1d(GRID**3, p, GRID, 0.1)
    with pytest.raises(ValueError, match="NaN"):
        CD.gaussian_step_1d(GRID, p, GRID * float("nan"), 0.1)
    with pytest.raises(ValueError, match="density"):
        CD.gaussian_step_1d(GRID, p[:-1], GRID, 0.1)
    model = models.AnalyticModel(Q3, schedules.VPLinear())
    times = sampling.time_grid(model, 10)
    with pytest.raises(ValueError, match="predictor"):
        CD.pc_density_1d(model, times, grid=GRID, predictor="ddim")
    with pytest.raises(ValueError, match="decreasing"):
        CD.pc_density_1d(model, times.flip(0), grid=GRID)
    with pytest.raises(ValueError, match="snr"):
        CD.pc_density_1d(model, times, grid=GRID, snr=-1.0)


def _folded_mean(mu: float, var: float) -> float:
    """``E|X|`` for ``X ~ N(mu, var)``."""
    s = math.sqrt(var)
    return s * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * var)) + mu * (1 - 2 * float(ndtr(-mu / s)))


def _gaussian_pc_moments(mu0: float, v0: float, sched: schedules.Schedule, times: torch.Tensor, snr: float,
                         corrector_steps: int, eps_scale: float = 1.0) -> tuple[float, float]:
    """The PC chain on the Gaussian target N(mu0, v0), by its moments: every step is affine in the state."""
    levels = reverse.step_levels(sched, times[:-1], times[1:])
    co = reverse.reverse_diffusion_step(levels)
    t0 = times[0]
    m, P = 0.0, float(sched.alpha2(t0) + sched.sigma2(t0))
    for i in range(times.numel() - 1):
        t = times[i]
        a_t, v_t = float(sched.alpha(t)), float(sched.alpha2(t) * v0 + sched.sigma2(t))
        for _ in range(corrector_steps):
            gn = _folded_mean(m - a_t * mu0, P) / v_t  # E|s| with s = -(x - a mu0) / v_t
            eps = eps_scale * 2 * float(levels.alpha_ts[i]) ** 2 * (snr * math.sqrt(2 / math.pi) / gn) ** 2
            k = 1 - eps / v_t
            m, P = k * m + eps * a_t * mu0 / v_t, k * k * P + 2 * eps
        a, c, v = float(co.a[i]), float(co.c[i]), float(co.var[i])
        k = a - c / v_t
        m, P = k * m + c * a_t * mu0 / v_t, k * k * P + v
    return m, P


@pytest.mark.parametrize("steps,snr,cs", [(30, 0.16, 1), (60, 0.3, 2)])
def test_pc_grid_density_of_a_gaussian_matches_its_moment_recursion(steps: int, snr: float, cs: int) -> None:
    g = targets.GaussianMixture([1.0], [[0.5]], [0.25])
    sched = schedules.VPLinear()
    model = models.AnalyticModel(g, sched)
    times = sampling.time_grid(model, steps)
    grid = torch.linspace(-8.0, 8.0, 1601, dtype=F64)
    r = CD.pc_density_1d(model, times, grid=grid, snr=snr, corrector_steps=cs)
    m, P = _gaussian_pc_moments(0.5, 0.25, sched, times, snr, cs)
    gm, gP = r.moments()
    assert abs(r.mass - 1.0) <= 1e-10
    # the step size's E_p|s| is a rectangle rule over the kink of |s| (O(h^2)): 1e-6 relative
    assert abs(gm - m) <= 1e-6 and abs(gP - P) <= 1e-6 * P
    # the output is Gaussian: the density itself, not only its moments
    assert float((r.density - _normal(grid, m, P)).abs().max()) <= 1e-6
    # negative control: a step size 1% off moves the variance far beyond that tolerance
    _, P_wrong = _gaussian_pc_moments(0.5, 0.25, sched, times, snr, cs, eps_scale=1.01)
    assert abs(gP - P_wrong) > 1e-4 * P


def test_langevin_fixed_point_of_a_gaussian_has_variance_v_times_one_plus_snr_squared() -> None:
    """I40: with eps set from E|s| under the law itself, the fixed point solves V = v / (1 - eps/(2v)),
    eps = 2 alpha snr^2 v^2 / V, so V = v (1 + alpha snr^2)."""
    g = targets.GaussianMixture([1.0], [[0.5]], [0.25])
    model = models.AnalyticModel(g, schedules.VPLinear())
    for snr, alpha in ((0.16, 1.0), (0.3, 0.9)):
        p, it = CD.langevin_stationary_1d(model, 0.0, grid=GRID, snr=snr, alpha=alpha, tol=1e-13)
        _, V = p.moments()
        assert abs(V / (0.25 * (1 + alpha * snr**2)) - 1) <= 2e-5, (snr, V)
        # the naive v / (1 - snr^2) (step size from v instead of V) is a different number
        assert abs(V / (0.25 / (1 - alpha * snr**2)) - 1) > 1e-4


@pytest.mark.parametrize("predictor,cs,steps", [("reverse_diffusion", 1, 40), ("reverse_diffusion", 0, 60),
                                                ("euler_maruyama", 1, 40), ("none", 1, 40)])
def test_pc_grid_density_is_the_law_of_the_actual_sampler(predictor: str, cs: int, steps: int) -> None:
    model = models.AnalyticModel(Q3, schedules.VPLinear())
    times = sampling.time_grid(model, steps)
    if predictor == "none":
        times = sampling.time_grid(model, steps, t_min=0.002)  # Langevin at t = 0 needs a finer grid
    r = CD.pc_density_1d(model, times, grid=GRID, snr=0.16, corrector_steps=cs, predictor=predictor)
    with torch.no_grad():
        x = sampling.predictor_corrector(model, n=40000, times=times, snr=0.16, corrector_steps=cs,
                                         predictor=predictor, generator=torch.Generator().manual_seed(3))
    x = x[:, 0].numpy()

    def cdf(u: np.ndarray) -> np.ndarray:
        return r.cdf(torch.as_tensor(u, dtype=F64)).numpy()

    assert kstest(x, cdf).pvalue >= 1e-3
    # negative control: the same draws shifted by 3% of the target's sd fail the same test
    sd = math.sqrt(float(Q3.covariance()[0, 0]))
    assert kstest(x + 0.03 * sd, cdf).pvalue < 1e-3


def test_pc_grid_density_converges_in_the_grid_spacing_and_keeps_its_mass() -> None:
    """Every kernel is integrated spectrally; the one algebraic error is the step size's E_p|s| (the
    kink of |s| at the score's zeros makes the rectangle rule O(h^2)): the KL converges at order ~2."""
    model = models.AnalyticModel(Q3, schedules.VPLinear())
    times = sampling.time_grid(model, 50)
    kls, masses = [], []
    for G in (801, 1601, 3201):
        grid = torch.linspace(-8.0, 8.0, G, dtype=F64)
        r = CD.pc_density_1d(model, times, grid=grid, snr=0.16)
        kls.append(r.kl_from(Q3.log_prob(grid[:, None])))
        masses.append(r.mass)
    assert all(abs(m - 1) <= 1e-10 for m in masses), masses
    d1, d2 = abs(kls[0] - kls[1]), abs(kls[1] - kls[2])
    assert d2 <= 1e-5 * kls[2]
    assert d1 / d2 >= 2.8  # order >= 1.5
    # on the narrower box [-6.5, 6.5] the early, over-dispersed steps leak mass through the edges
    narrow = CD.pc_density_1d(model, times, grid=GRID, snr=0.16)
    assert 1e-9 < 1 - narrow.mass < 1e-6


def test_kl_from_of_two_gaussians_is_the_closed_form() -> None:
    lq = torch.log(_normal(GRID, 0.1, 0.3))
    p = _normal(GRID, -0.2, 0.5)
    chain = CD.ChainDensity1D(GRID, p, float((p * (GRID[1] - GRID[0])).sum()), 0, torch.tensor([1.0]))
    exact = 0.5 * (math.log(0.5 / 0.3) + (0.3 + 0.3**2) / 0.5 - 1)
    assert abs(chain.kl_from(lq) - exact) <= 1e-10


def test_cdf_of_a_grid_gaussian_is_the_normal_cdf() -> None:
    g = targets.GaussianMixture([1.0], [[0.5]], [0.25])
    model = models.AnalyticModel(g, schedules.VPLinear())
    r = CD.pc_density_1d(model, sampling.time_grid(model, 20), grid=GRID, snr=0.16)
    m, P = r.moments()
    u = torch.linspace(-1.5, 2.5, 41, dtype=F64)
    exact = torch.as_tensor(ndtr(((u - m) / math.sqrt(P)).numpy()))
    assert float((r.cdf(u) - exact).abs().max()) <= 1e-4  # linear interpolation of the cumulative rule
