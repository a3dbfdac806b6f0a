"""The study's ELBO objective -E_q[ELBO] (densityformula.study.elbo_objective; docs/math.md I9, I27)
against independent ground truths: the library's Monte Carlo ELBO (elbo.ddpm), the closed-form
expected ELBO of the linear-Gaussian law (GaussianSamplerLaw, I14) and finite differences."""
from __future__ import annotations

import math

import pytest
import torch

from densityformula import elbo, schedules, targets
from densityformula.likelihood import gaussian_sampler
from densityformula.models import AffineDenoiser
from densityformula.study import ELBOObjective, MixtureDenoiser, elbo_objective

F64 = torch.float64
Q = targets.GaussianMixture([0.3, 0.7], [[-1.0], [1.0]], [0.2, 0.3])
R = targets.GaussianMixture([0.5, 0.5], [[-0.8], [1.2]], [0.3, 0.2])  # the model's own (wrong) mixture
Z = 4.5  # |z| limit of the Monte Carlo comparisons (two-sided p ~ 7e-6 each)


def _random_affine(d: int, sched: schedules.Discrete, seed: int) -> AffineDenoiser:
    g = torch.Generator().manual_seed(seed)
    m = AffineDenoiser(d, sched)
    with torch.no_grad():
        m.A.copy_(0.3 * torch.randn(m.A.shape, generator=g, dtype=F64) + 0.6 * torch.eye(d, dtype=F64))
        m.b.copy_(0.2 * torch.randn(m.b.shape, generator=g, dtype=F64))
    return m


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_quadrature_matches_the_libraries_monte_carlo_elbo(variance: str) -> None:
    """-E_q[ELBO] by quadrature = mean of -elbo.ddpm over x ~ q, within Z standard errors; the same
    comparison with 0.1 nats added to the quadrature value fails (negative control)."""
    sched = schedules.Discrete.ddpm_cosine(20)
    model = MixtureDenoiser.from_mixture(R, sched)
    quad = elbo_objective(model, Q, variance=variance)
    assert quad.method == "quadrature" and quad.error < 1e-3
    n = 8000
    x = Q.sample(n, generator=torch.Generator().manual_seed(1))
    est = elbo.ddpm(model, x, variance=variance, n_samples=4, generator=torch.Generator().manual_seed(2))
    neg = -est.value
    mc, se = float(neg.mean()), float(neg.std()) / math.sqrt(n)
    assert abs(float(quad) - mc) <= Z * se + quad.error, (float(quad), mc, se)
    assert abs(float(quad) + 0.1 - mc) > Z * se + quad.error  # negative control: a wrong constant


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_quadrature_equals_the_closed_form_for_affine_models(variance: str) -> None:
    """For affine denoisers the quadrature is exact up to round-off: it equals
    GaussianSamplerLaw.expected_elbo at the mixture's mean and covariance (I14, I26), and so does the
    study's own differentiable closed form; a parameter perturbed at one step breaks the equality."""
    sched = schedules.Discrete.ddpm_cosine(15)
    model = _random_affine(1, sched, 0)
    law = gaussian_sampler(model, variance=variance, d=1)
    ref = -float(law.expected_elbo(Q.mean(), Q.covariance()))
    quad = elbo_objective(model, Q, variance=variance, method="quadrature")
    closed = elbo_objective(model, Q, variance=variance, method="closed_form")
    assert abs(float(quad) - ref) <= 1e-10 * abs(ref)
    assert abs(float(closed) - ref) <= 1e-10 * abs(ref)
    assert quad.error < 1e-10
    assert torch.allclose(quad.per_step, closed.per_step, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        model.b[7] += 0.05
    assert abs(float(elbo_objective(model, Q, variance=variance)) - ref) > 1e-4


def test_closed_form_in_two_dimensions_and_monte_carlo_method() -> None:
    """d = 2: the closed form equals the library's, and the study's Monte Carlo method agrees with it."""
    sched = schedules.Discrete.ddpm_cosine(10)
    q = targets.random_gmm(2, 3, seed=4)
    model = _random_affine(2, sched, 1)
    ref = -float(gaussian_sampler(model, d=2).expected_elbo(q.mean(), q.covariance()))
    closed = elbo_objective(model, q)  # auto: an AffineDenoiser in d = 2
    assert closed.method == "closed_form" and abs(float(closed) - ref) <= 1e-10 * abs(ref)
    mc = elbo_objective(model, q, method="monte_carlo", n_samples=40000, generator=torch.Generator().manual_seed(0))
    assert mc.error_kind == "stderr" and abs(float(mc) - ref) <= Z * mc.error, (float(mc), ref, mc.error)
    assert abs(float(mc) + 10 * mc.error - ref) > Z * mc.error  # negative control


def test_quadrature_error_estimate_covers_the_error() -> None:
    """|Q_n - Q_{n/2}| bounds |Q_n - Q_256| (a far higher order as the truth) for a nonlinear model."""
    sched = schedules.Discrete.ddpm_cosine(20)
    model = MixtureDenoiser.from_mixture(R, sched)
    with torch.no_grad():
        truth = float(elbo_objective(model, Q, n_nodes=256))
        for n in (16, 32, 64):
            v = elbo_objective(model, Q, n_nodes=n)
            assert abs(float(v) - truth) <= v.error


def test_gradient_matches_finite_differences() -> None:
    sched = schedules.Discrete.ddpm_cosine(10)
    model = MixtureDenoiser.from_mixture(R, sched)
    v = elbo_objective(model, Q)
    grads = torch.cat([gp.reshape(-1) for gp in torch.autograd.grad(v.value, list(model.parameters()))])
    params = list(model.parameters())
    h = 1e-5
    fd = []
    with torch.no_grad():
        for p in params:
            for i in range(p.numel()):
                p.view(-1)[i] += h
                up = float(elbo_objective(model, Q))
                p.view(-1)[i] -= 2 * h
                down = float(elbo_objective(model, Q))
                p.view(-1)[i] += h
                fd.append((up - down) / (2 * h))
    assert torch.allclose(grads, torch.tensor(fd, dtype=F64), rtol=1e-6, atol=1e-8)


def test_objective_uses_common_random_numbers_and_checks_arguments() -> None:
    sched = schedules.Discrete.ddpm_cosine(8)
    q = targets.random_gmm(2, 2, seed=0)
    model = _random_affine(2, sched, 2)
    obj = ELBOObjective(q, method="monte_carlo", n_samples=256, seed=5)
    assert float(obj(model).detach()) == float(obj(model).detach())
    with pytest.raises(ValueError, match="method"):
        elbo_objective(model, q, method="exact")
    with pytest.raises(ValueError, match="1-D"):
        elbo_objective(model, q, method="quadrature")
    with pytest.raises(TypeError, match="GaussianMixture"):
        elbo_objective(model, object())
    with pytest.raises(ValueError, match="dimension"):
        elbo_objective(model, Q)
