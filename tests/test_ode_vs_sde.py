"""The ODE-vs-SDE experiment's parts: grid KLs, the discrete Girsanov bound (I41), the controlled score
error, and the grid laws against Monte Carlo of the actual samplers."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

import densityformula as df
from densityformula.likelihood import (
    GirsanovBound1D,
    gaussian_kl,
    gaussian_sampler,
    girsanov_1d,
    grid_kl,
    probability_flow,
    sampler_density_1d,
)
from densityformula.models import DiffusionModel
from experiments import _common as C
from experiments.ode_vs_sde import PerturbedScore

F64 = torch.float64
T50 = df.schedules.Discrete.ddpm_cosine(50)
GRID = torch.linspace(-5, 5, 401, dtype=F64)


def _normal_logpdf(x, m, s):
    return -0.5 * math.log(2 * math.pi * s**2) - 0.5 * (x - m) ** 2 / s**2


def test_grid_kl_matches_the_gaussian_closed_form():
    grid = torch.linspace(-12, 12, 1201, dtype=F64)
    lp, lq = _normal_logpdf(grid, 0.3, 0.8), _normal_logpdf(grid, -0.2, 1.1)
    kl, err = grid_kl(lp, lq, grid)
    exact = math.log(1.1 / 0.8) + (0.8**2 + 0.5**2) / (2 * 1.1**2) - 0.5
    assert abs(kl - exact) < 1e-10
    assert err < 1e-8
    # a coarse grid: the error estimate is of the size of the actual error
    coarse = torch.linspace(-12, 12, 25, dtype=F64)
    kl_c, err_c = grid_kl(_normal_logpdf(coarse, 0.3, 0.8), _normal_logpdf(coarse, -0.2, 1.1), coarse)
    assert abs(kl_c - exact) <= err_c


def test_grid_kl_rejects_bad_input():
    lp = _normal_logpdf(GRID, 0.0, 1.0)
    with pytest.raises(ValueError, match="shape"):
        grid_kl(lp[:-1], lp, GRID)
    with pytest.raises(ValueError, match="NaN"):
        grid_kl(lp, torch.full_like(lp, math.nan), GRID)
    with pytest.raises(ValueError, match="infinite"):
        grid_kl(lp, torch.where(GRID > 0, -math.inf, lp), GRID)
    with pytest.raises(ValueError, match="uniform"):
        grid_kl(lp, lp, GRID**3)
    with pytest.raises(TypeError):
        grid_kl(lp, lp, torch.arange(401))


def test_perturbed_score_is_a_consistent_model():
    """Tweedie (I1): the derived score of its denoiser is its score; its divergence is autograd's (I4);
    eta = 0 is the exact model."""
    m = PerturbedScore(C.Q3, T50, 0.3, 8.0, 0.7)
    x = torch.linspace(-3, 3, 41, dtype=F64)[:, None]
    for t in (1.0, 7.5, 30.0, 49.0):
        assert torch.allclose(DiffusionModel.score(m, x, t), m.score(x, t), rtol=1e-9, atol=1e-9)
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(m.score(xr, t).sum(), xr)
        assert torch.allclose(g[:, 0], m.score_divergence(x, t), rtol=1e-8, atol=1e-8)
        ex = df.models.AnalyticModel(C.Q3, T50)
        z = PerturbedScore(C.Q3, T50, 0.0, 8.0, 0.7)
        assert torch.allclose(z.denoise(x, t), ex.denoise(x, t), rtol=0, atol=1e-14)
        a = float(T50.alpha(torch.tensor(t, dtype=F64)))
        assert torch.allclose(m.error(x, t), 0.3 * a * torch.sin(8.0 * x + 0.7))
    with pytest.raises(ValueError, match="eta"):
        PerturbedScore(C.Q3, T50, math.nan, 1.0)
    with pytest.raises(TypeError, match="target"):
        PerturbedScore("q", T50, 0.1, 1.0)


def test_girsanov_bound_equals_its_closed_form_for_a_constant_score_error():
    """A constant score error on a Gaussian target keeps every denoiser affine: the path KL is
    sum_k c_k^2 (sigma_k^2 eta)^2 / (2 v_k) whatever p*_k is, and both outputs are Gaussian (I14)."""
    g = df.targets.Gaussian(torch.tensor([0.4]), torch.tensor([[0.5]]))
    ref = df.models.AnalyticModel(g, T50)
    eta = 0.2
    m = PerturbedScore(g, T50, eta, 0.0, math.pi / 2)  # s = s* + eta alpha_t
    out = girsanov_1d(m, ref, grid=torch.linspace(-6, 6, 601, dtype=F64), target=g)
    assert isinstance(out, GirsanovBound1D)
    kern = df.reverse.ddpm_kernels(ref, T50, "beta")
    s2 = T50.sigma2(kern.model_t)
    closed = float((kern.c**2 * (s2 * eta) ** 2 / (2 * kern.var)).sum())
    # the expectations are rectangle rules of densities whose grid mass is 1 to ~1e-8 (box and rule)
    assert abs(out.bound - closed) < 1e-7 * closed
    assert out.score_error is not None and abs(out.score_error - closed) < 1e-7 * closed
    assert abs(closed - eta**2 / 2) < 1e-3 * closed  # 1/2 int sigma^2 alpha^2 eta^2 dlambda = eta^2 / 2
    lm, lr = gaussian_sampler(m, variance="beta", d=1), gaussian_sampler(ref, variance="beta", d=1)
    kl_exact = float(gaussian_kl(lr.mean, lr.cov, lm.mean, lm.cov))
    assert abs(out.kl - kl_exact) < 1e-8
    assert out.kl <= out.bound  # data processing: marginal KL <= path KL


def test_girsanov_bound_for_a_rough_error_holds_and_vanishes_for_the_reference():
    ref = df.models.AnalyticModel(C.Q3, T50)
    same = girsanov_1d(ref, ref, grid=GRID, target=C.Q3)
    assert same.bound == 0.0 and abs(same.kl) < 1e-15
    for omega in (1.0, 8.0):
        m = PerturbedScore(C.Q3, T50, 0.3, omega, 0.4)
        out = girsanov_1d(m, ref, grid=GRID, target=C.Q3, reuse=same)
        fresh = girsanov_1d(m, ref, grid=GRID, target=C.Q3)
        assert out.bound == pytest.approx(fresh.bound, rel=1e-12) and out.kl == pytest.approx(fresh.kl, rel=1e-12)
        assert 0.0 < out.kl <= out.bound
        # the q-weighted score error: a weighted mean of eta^2 alpha^2 sin^2 / 2 weights, close to the bound
        assert out.score_error is not None and abs(out.score_error - out.bound) < 0.05 * out.bound
        assert out.terms.shape == (50,) and bool((out.terms >= 0).all())


def test_girsanov_rejects_samplers_with_different_steps():
    ref = df.models.AnalyticModel(C.Q3, T50)
    other = df.models.AnalyticModel(C.Q3, df.schedules.Discrete.ddpm_cosine(40))
    with pytest.raises(ValueError, match="same steps"):
        girsanov_1d(other, ref, grid=GRID)
    first = girsanov_1d(ref, ref, grid=GRID)
    with pytest.raises(ValueError, match="another grid"):
        girsanov_1d(ref, ref, grid=torch.linspace(-5, 5, 301, dtype=F64), reuse=first)
    with pytest.raises(ValueError, match="different target"):
        girsanov_1d(ref, ref, grid=GRID, target=C.Q3, reuse=first)
    with pytest.raises(TypeError, match="target"):
        girsanov_1d(ref, ref, grid=GRID, target="q")


def _ks_p(samples, grid, log_density):
    """One-sample KS p-value of ``samples`` against the CDF of a grid density (trapezoid)."""
    g, p = C.as_np(grid), np.exp(C.as_np(log_density))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(g))])
    cdf /= cdf[-1]
    return float(stats.kstest(C.as_np(samples).ravel(), lambda x: np.interp(x, g, cdf)).pvalue)


def test_grid_laws_match_monte_carlo_of_the_actual_samplers():
    """The grid laws of the experiment (I12 on the grid for the ODE, I13 for DDPM) against 20000 draws of
    sampling.probability_flow and sampling.ddpm (+ decoder noise) for a rough score error, where the two
    laws differ: each sample passes the KS test against its own law and fails it against the other's."""
    m = PerturbedScore(C.Q3, T50, 0.4, 8.0, 1.1)
    T = 50
    ode = probability_flow(m, GRID[:, None], rtol=1e-6, atol=1e-6, t_min=1.0, t_max=float(T)).value
    sde = sampler_density_1d(m, grid=GRID).log_density
    n = 20000
    gen = torch.Generator().manual_seed(3)
    s_T = float(T50.sigma(torch.tensor(float(T), dtype=F64)))
    z = s_T * torch.randn(n, 1, generator=gen, dtype=F64)
    with torch.no_grad():
        xo = df.sampling.probability_flow(m, z.clone(), rtol=1e-6, atol=1e-6, t_min=1.0, t_max=float(T))
        xs = df.sampling.ddpm(m, z.clone(), variance="beta", generator=gen, t_max=T, t_min=0)
    xs = xs + math.sqrt(float(T50.betas[0])) * torch.randn(xs.shape, generator=gen, dtype=F64)
    assert _ks_p(xo, GRID, ode) > 1e-3
    assert _ks_p(xs, GRID, sde) > 1e-3
    assert _ks_p(xo, GRID, sde) < 1e-6
    assert _ks_p(xs, GRID, ode) < 1e-6
