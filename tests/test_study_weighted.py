"""Weighted denoising losses as study objectives (densityformula.study.denoising_objective,
implied_weight; docs/math.md I22, I31): exact expectations against the library's Monte Carlo loss,
the ELBO weighting against the ELBO objective, and Kingma & Gao's weights."""
from __future__ import annotations

import math

import pytest
import torch

from densityformula import schedules, targets
from densityformula.study import (
    DenoisingObjective,
    MixtureDenoiser,
    denoising_objective,
    elbo_objective,
    implied_weight,
    minimize,
    mixture_family,
    true_kl,
)
from densityformula.training import DenoisingLoss

Q = targets.GaussianMixture([0.3, 0.7], [[-1.0], [1.0]], [0.2, 0.3])
R = targets.GaussianMixture([0.5, 0.5], [[-0.8], [1.2]], [0.3, 0.2])


@pytest.mark.parametrize("weighting", ["eps", "sigma2", "uniform", "elbo"])
@pytest.mark.parametrize("time_sampling", ["uniform", "importance"])
def test_exact_expectation_matches_the_libraries_monte_carlo_loss(weighting: str, time_sampling: str) -> None:
    sched = schedules.Discrete.ddpm_cosine(20)
    model = MixtureDenoiser.from_mixture(R, sched)
    loss = DenoisingLoss(sched, weighting, time_sampling)
    exact = denoising_objective(model, Q, loss)
    n = 40000
    x = Q.sample(n, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mc = loss(model, x, generator=torch.Generator().manual_seed(1))
    se = float(mc.std()) / math.sqrt(n)
    assert abs(float(exact) - float(mc.mean())) <= 4.5 * se + exact.error
    assert abs(float(exact) + 10 * se - float(mc.mean())) > 4.5 * se + exact.error  # negative control


def test_elbo_weighting_is_the_elbo_objective() -> None:
    """The discrete "elbo" weighting (I7) is the theta-dependent part of -E_q[ELBO] (I9, variance beta)."""
    sched = schedules.Discrete.ddpm_cosine(15)
    model = MixtureDenoiser.from_mixture(R, sched)
    a = float(denoising_objective(model, Q, DenoisingLoss(sched, "elbo")))
    b = float(elbo_objective(model, Q).objective.detach())
    assert abs(a - b) <= 1e-12 * abs(b)
    assert abs(a - float(elbo_objective(model, Q, variance="beta_tilde").objective.detach())) > 1e-3


def test_implied_weights() -> None:
    """w = 1 for the ELBO; the x0 ("uniform") weighting is monotone (w grows with the noise); the eps
    weighting on the cosine schedule is not (it rises and falls, the sech shape of Kingma & Gao)."""
    sched = schedules.Discrete.ddpm_cosine(30)
    e = implied_weight(DenoisingLoss(sched, "elbo"))
    assert torch.allclose(e.weight, torch.ones_like(e.weight), rtol=1e-12) and e.monotone
    u = implied_weight(DenoisingLoss(sched, "uniform"))
    assert u.monotone and float(u.weight[-1]) > 100 * float(u.weight[0])
    eps = implied_weight(DenoisingLoss(sched, "eps"))
    assert not eps.monotone
    peak = int(eps.weight.argmax())
    assert 0 < peak < sched.T - 1


def test_every_weighting_recovers_a_target_its_family_contains() -> None:
    """Family = 2-component mixtures (contains Q): every weighting's minimiser is Q, so its true KL is
    the sampler's discretization KL of the exact model, the same for all.  Negative control: for a
    3-component target outside the family the weightings' minimisers, and their KLs, differ.  (A
    1-component family would not do: it contains the per-step optimum of every weighting among
    affine denoisers, the exact denoiser of the moment match, I30.)"""
    sched = schedules.Discrete.ddpm_cosine(10)
    kls, kls3 = [], []
    exact = float(true_kl(MixtureDenoiser.from_mixture(Q, sched), Q))
    q3 = targets.GaussianMixture([0.3, 0.3, 0.4], [[-2.0], [0.0], [1.5]], [0.1, 0.2, 0.15])
    for weighting in ("eps", "uniform", "elbo"):
        loss = DenoisingLoss(sched, weighting)
        fam = mixture_family(2, sched, init=R)
        res = minimize(DenoisingObjective(Q, loss), fam)
        assert res.converged, res.message
        kls.append(float(true_kl(fam, Q)))
        fam2 = mixture_family(2, sched, init=q3)
        minimize(DenoisingObjective(q3, loss), fam2)
        kls3.append(float(true_kl(fam2, q3)))
    assert max(abs(k - exact) for k in kls) < 1e-5, (kls, exact)
    assert max(kls3) - min(kls3) > 1e-3, kls3
