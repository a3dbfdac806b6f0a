"""-E_q[ELBO] = H(q) + KL(q || p) + E_q[log p - ELBO] (densityformula.study.decomposition; docs/math.md I28),
each term computed on its own, and the pointwise ELBO from its definition (I9) against elbo.ddpm."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from densityformula import elbo, schedules, targets
from densityformula.likelihood import gaussian_sampler
from densityformula.models import AffineDenoiser
from densityformula.study import MixtureDenoiser, decomposition, per_step_family, pointwise_elbo_1d

F64 = torch.float64
Q = targets.GaussianMixture([0.3, 0.7], [[-1.0], [1.0]], [0.2, 0.3])
R = targets.GaussianMixture([0.5, 0.5], [[-0.8], [1.2]], [0.3, 0.2])


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_identity_holds_for_a_nonlinear_model(variance: str) -> None:
    sched = schedules.Discrete.ddpm_cosine(15)
    dec = decomposition(MixtureDenoiser.from_mixture(R, sched), Q, variance=variance)
    assert dec.method == "quadrature"
    assert dec.holds(), (dec.residual, dec.tolerance)
    assert abs(dec.residual) < 1e-4
    assert dec.kl > 0 and dec.gap > 0  # KL >= 0 and the ELBO bounds log p pointwise (I9)
    # negative controls: a wrong constant in any one term breaks the identity
    for field in ("entropy", "kl", "gap"):
        wrong = dataclasses.replace(dec, **{field: getattr(dec, field) + 10 * dec.tolerance + 1e-6})
        assert not wrong.holds()


def test_identity_holds_for_a_per_step_model_and_fails_across_samplers() -> None:
    """A perturbed per-step model; the KL of the beta sampler with the gap of the beta_tilde sampler
    (terms of two different models) does not satisfy the identity."""
    sched = schedules.Discrete.ddpm_cosine(12)
    fam = per_step_family(sched, data_var=float(Q.covariance()[0, 0]))
    with torch.no_grad():
        fam.vector()
        fam.model.theta[3:9, 2] = 0.2  # type: ignore[index]
    beta = decomposition(fam, Q, variance="beta")
    tilde = decomposition(fam, Q, variance="beta_tilde")
    assert beta.holds() and tilde.holds()
    mixed = dataclasses.replace(beta, kl=tilde.kl)
    assert not mixed.holds()


def test_identity_in_two_dimensions_for_an_affine_model() -> None:
    sched = schedules.Discrete.ddpm_cosine(10)
    q = targets.random_gmm(2, 3, seed=2)
    model = AffineDenoiser.from_gaussian([0.1, -0.1], [[0.8, 0.1], [0.1, 0.5]], sched)
    dec = decomposition(model, q, n_samples=1 << 15, generator=torch.Generator().manual_seed(0))
    assert dec.method == "closed_form" and dec.holds(), (dec.residual, dec.tolerance)
    assert not dataclasses.replace(dec, gap=dec.gap + 2 * dec.tolerance).holds()


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_pointwise_elbo_from_its_definition_matches_elbo_ddpm(variance: str) -> None:
    """The tensor-product rule of the definition vs the library's Monte Carlo ELBO (z <= 4.5 per point
    and in the mean) and vs the closed form for an affine model (1e-10)."""
    sched = schedules.Discrete.ddpm_cosine(20)
    model = MixtureDenoiser.from_mixture(R, sched)
    x = torch.linspace(-2.5, 2.5, 11, dtype=F64)[:, None]
    pe = pointwise_elbo_1d(model, x, variance=variance).detach()
    est = elbo.ddpm(model, x, variance=variance, n_samples=4000, generator=torch.Generator().manual_seed(3))
    z = (pe - est.value) / est.stderr
    assert float(z.abs().max()) < 4.5, z
    mean_z = float((pe - est.value).mean()) / (float(torch.sqrt((est.stderr**2).sum())) / 11)
    assert abs(mean_z) < 4.5
    shifted = (pe + 0.05 - est.value).mean() / (torch.sqrt((est.stderr**2).sum()) / 11)
    assert abs(float(shifted)) > 4.5  # negative control: a wrong constant of 0.05 nats is seen
    aff = AffineDenoiser.from_gaussian([0.3], [[0.7]], sched)
    law = gaussian_sampler(aff, variance=variance, d=1)
    assert torch.allclose(pointwise_elbo_1d(aff, x, variance=variance).detach(), law.elbo(x), atol=1e-10, rtol=0)
    assert math.isfinite(float(pe.sum()))
