"""The moment reduction (docs/math.md I26): for affine denoisers the ELBO objective and KL(q || p_sampler)
see the target only through its mean and covariance; a non-Gaussian target adds its entropy
difference to the KL and nothing to the ELBO objective."""
from __future__ import annotations

import math

import pytest
import torch

from densityformula import elbo, schedules, targets
from densityformula.likelihood import gaussian_sampler
from densityformula.models import AffineDenoiser
from densityformula.study import MixtureDenoiser, elbo_objective, target_entropy, true_kl

F64 = torch.float64
Q = targets.GaussianMixture([0.25, 0.45, 0.3], [[-1.5], [0.2], [1.4]], [0.15, 0.3, 0.2])
G = targets.Gaussian(Q.mean(), Q.covariance())


def _affine(sched: schedules.Discrete, seed: int) -> AffineDenoiser:
    g = torch.Generator().manual_seed(seed)
    m = AffineDenoiser(1, sched)
    with torch.no_grad():
        m.A.copy_(0.5 + 0.4 * torch.rand(m.A.shape, generator=g, dtype=F64))
        m.b.copy_(0.3 * torch.randn(m.b.shape, generator=g, dtype=F64))
    return m


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_mixture_and_its_moment_matched_gaussian_differ_by_constants(variance: str) -> None:
    """Four affine models: ELBO objectives equal (constant 0) and KLs differ by H(G) - H(Q), both by the
    1-D quadrature and the grid (computed from the mixture's components, not its moments)."""
    sched = schedules.Discrete.ddpm_cosine(12)
    dH = target_entropy(G).value - target_entropy(Q, n_nodes=160).value
    assert dH > 0.01  # the mixture is far from Gaussian
    for seed in range(4):
        model = _affine(sched, seed)
        e_q, e_g = (elbo_objective(model, t, variance=variance, method="quadrature") for t in (Q, G))
        assert abs(float(e_q) - float(e_g)) < 1e-10 + e_q.error + e_g.error
        k_q, k_g = (true_kl(model, t, variance=variance, method="grid") for t in (Q, G))
        assert abs((float(k_q) - float(k_g)) - dH) < 1e-7 + k_q.error + k_g.error, (float(k_q) - float(k_g), dH)


def test_nonlinear_models_break_the_reduction() -> None:
    """Negative control: for a mixture denoiser the differences are not constants."""
    sched = schedules.Discrete.ddpm_cosine(12)
    diffs = []
    for shift in (0.0, 0.5):
        r = targets.GaussianMixture([0.5, 0.5], [[-1.0 + shift], [1.0]], [0.2, 0.2])
        model = MixtureDenoiser.from_mixture(r, sched)
        diffs.append(float(elbo_objective(model, Q)) - float(elbo_objective(model, G)))
    assert abs(diffs[0]) > 1e-3 and abs(diffs[0] - diffs[1]) > 1e-3
    # and a Gaussian with a 5% wrong variance is not the moment match
    wrong = targets.Gaussian(Q.mean(), 1.05 * Q.covariance())
    model = _affine(sched, 0)
    assert abs(float(elbo_objective(model, Q)) - float(elbo_objective(model, wrong))) > 1e-3


def test_reduction_in_two_dimensions_by_monte_carlo() -> None:
    """d = 2: the library's Monte Carlo ELBO over draws of a 2-D mixture equals the closed form computed
    from the mixture's mean and covariance alone (within 4.5 standard errors)."""
    sched = schedules.Discrete.ddpm_cosine(10)
    q = targets.random_gmm(2, 3, seed=7)
    model = AffineDenoiser.from_gaussian([0.2, -0.1], [[0.9, 0.2], [0.2, 0.6]], sched)
    closed = -float(gaussian_sampler(model, d=2).expected_elbo(q.mean(), q.covariance()))
    assert abs(closed - float(elbo_objective(model, q))) < 1e-10 * abs(closed)
    n = 20000
    x = q.sample(n, generator=torch.Generator().manual_seed(1))
    est = elbo.ddpm(model, x, n_samples=2, generator=torch.Generator().manual_seed(2))
    mc, se = float(-est.value.mean()), float(est.value.std()) / math.sqrt(n)
    assert abs(mc - closed) < 4.5 * se, (mc, closed, se)
    assert abs(mc - (closed + 10 * se)) > 4.5 * se  # negative control
