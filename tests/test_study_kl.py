"""The true objective KL(q || p_sampler) (densityformula.study.true_kl; docs/math.md I13, I14, I28)
against independent ground truths: the library's grid density (sampler_density_1d), the
closed-form Gaussian law and KL (gaussian_sampler, gaussian_kl) and finite differences."""
from __future__ import annotations

import math

import pytest
import torch

from densityformula import schedules, targets
from densityformula.likelihood import gaussian_kl, gaussian_sampler, sampler_density_1d
from densityformula.models import AffineDenoiser, AnalyticModel
from densityformula.study import MixtureDenoiser, grid_law, true_kl
from densityformula.study._steps import sampler_kernels

F64 = torch.float64
Q = targets.GaussianMixture([0.3, 0.7], [[-1.0], [1.0]], [0.2, 0.3])
R = targets.GaussianMixture([0.5, 0.5], [[-0.8], [1.2]], [0.3, 0.2])


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_grid_law_is_the_libraries_grid_density(variance: str) -> None:
    """The differentiable recursion reproduces sampler_density_1d (I13) on its grid and at points."""
    sched = schedules.Discrete.ddpm_cosine(15)
    model = AnalyticModel(R, sched)
    g = torch.linspace(-8, 8, 801, dtype=F64)
    ref = sampler_density_1d(model, variance=variance, grid=g)
    law = grid_law(sampler_kernels(model, None, variance, None), g)
    bulk = ref.log_density > -30
    assert float((law.log_density - ref.log_density)[bulk].abs().max()) < 1e-10
    x = torch.linspace(-3, 3, 13, dtype=F64)
    assert float((law.log_prob(x) - ref.log_prob(x)).abs().max()) < 1e-10
    assert abs(law.mass - ref.mass) < 1e-12 and law.truncation < 1e-12


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_grid_kl_equals_the_closed_form_gaussian_kl(variance: str) -> None:
    """Affine model, Gaussian target: the grid KL equals gaussian_kl(target, N(m_0, P_0)) of the
    library's law; the law of the other variance is far from it (negative control)."""
    sched = schedules.Discrete.ddpm_cosine(20)
    q = targets.Gaussian([0.4], [[0.5]])
    model = AffineDenoiser.from_gaussian([0.5], [[0.6]], sched)
    law = gaussian_sampler(model, variance=variance, d=1)
    ref = float(gaussian_kl(q.mean(), q.covariance(), law.mean, law.cov))
    kl = true_kl(model, q, variance=variance, method="grid")
    assert kl.method == "grid" and kl.error < 1e-8
    assert abs(float(kl) - ref) <= 1e-9 + kl.error, (float(kl), ref)
    assert abs(float(true_kl(model, q, variance=variance, method="closed_form")) - ref) < 1e-12
    other = gaussian_sampler(model, variance="beta_tilde" if variance == "beta" else "beta", d=1)
    wrong = float(gaussian_kl(q.mean(), q.covariance(), other.mean, other.cov))
    assert abs(float(kl) - wrong) > 100 * (1e-9 + kl.error)


def test_grid_kl_of_a_mixture_target_equals_the_closed_form_up_to_the_entropy_quadrature() -> None:
    sched = schedules.Discrete.ddpm_cosine(20)
    model = AffineDenoiser.from_gaussian([0.2], [[1.3]], sched)
    grid = true_kl(model, Q, method="grid")
    closed = true_kl(model, Q, method="closed_form")
    assert abs(float(grid) - float(closed)) <= grid.error + closed.error
    assert grid.extras["grid_error"] < 1e-8 and grid.extras["truncation"] < 1e-10


def test_closed_form_kl_in_two_dimensions_is_the_libraries() -> None:
    sched = schedules.Discrete.ddpm_cosine(10)
    q = targets.Gaussian([0.3, -0.2], [[0.5, 0.1], [0.1, 0.3]])
    model = AffineDenoiser.from_gaussian([0.0, 0.0], [[0.6, 0.0], [0.0, 0.4]], sched)
    law = gaussian_sampler(model, d=2)
    ref = float(gaussian_kl(q.mean(), q.covariance(), law.mean, law.cov))
    kl = true_kl(model, q)
    assert kl.method == "closed_form" and abs(float(kl) - ref) < 1e-12


def test_grid_kl_gradient_matches_finite_differences() -> None:
    sched = schedules.Discrete.ddpm_cosine(8)
    model = MixtureDenoiser.from_mixture(R, sched)
    g = torch.linspace(-7, 7, 401, dtype=F64)
    kl = true_kl(model, Q, grid=g, grid_error=False)
    assert kl.differentiable
    grads = torch.cat([gp.reshape(-1) for gp in torch.autograd.grad(kl.value, list(model.parameters()))])
    h = 1e-5
    fd = []
    with torch.no_grad():
        for p in model.parameters():
            for i in range(p.numel()):
                p.view(-1)[i] += h
                up = float(true_kl(model, Q, grid=g, grid_error=False))
                p.view(-1)[i] -= 2 * h
                down = float(true_kl(model, Q, grid=g, grid_error=False))
                p.view(-1)[i] += h
                fd.append((up - down) / (2 * h))
    assert torch.allclose(grads, torch.tensor(fd, dtype=F64), rtol=1e-5, atol=1e-8)


def test_importance_weighted_kl_is_an_upper_bound() -> None:
    """E_q log q - E_q IW_K >= KL (I10): the grid KL lies below the bound within its standard error,
    and the bound shrinks towards it as K grows."""
    sched = schedules.Discrete.ddpm_cosine(10)
    model = AnalyticModel(R, sched)
    exact = float(true_kl(model, Q))
    b1 = true_kl(model, Q, method="importance_weighted", k=1, n_samples=2048,
                 generator=torch.Generator().manual_seed(0))
    b64 = true_kl(model, Q, method="importance_weighted", k=64, n_samples=2048,
                  generator=torch.Generator().manual_seed(0))
    assert not b64.differentiable and b64.extras["upper_bound"]
    assert float(b64) >= exact - 4.5 * b64.error
    assert float(b64) <= float(b1) + 4.5 * math.hypot(b1.error, b64.error)
    assert abs(float(b64) - exact) < 0.02


def test_kl_checks_its_arguments() -> None:
    sched = schedules.Discrete.ddpm_cosine(5)
    q2 = targets.random_gmm(2, 2, seed=0)
    with pytest.raises(ValueError, match="1-D"):
        true_kl(AffineDenoiser(2, sched), q2, method="grid")
    with pytest.raises(ValueError, match="method"):
        true_kl(AffineDenoiser(1, sched), Q, method="exact")
    with pytest.raises(ValueError, match="not affine"):
        true_kl(MixtureDenoiser.from_mixture(R, sched), Q, method="closed_form")
