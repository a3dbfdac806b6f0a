"""Minimisers over a family (densityformula.study.minimize; docs/math.md I26, I30): L-BFGS against the
closed forms of the affine family, convergence reporting, derivative-free search."""
from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate

from densityformula import schedules, targets
from densityformula.models import AffineDenoiser
from densityformula.study import AffineFamily, ELBOObjective, KLObjective, minimize, mixture_family

F64 = torch.float64
Q = targets.GaussianMixture([0.3, 0.7], [[-1.0], [1.0]], [0.2, 0.3])


def _entropy_by_scipy(q: targets.GaussianMixture) -> float:
    """H(q) of a 1-D mixture by adaptive quadrature (scipy), independent of the study's rules."""
    def f(x: float) -> float:
        lp = float(q.log_prob(torch.tensor([[x]], dtype=F64))[0])
        return -math.exp(lp) * lp
    return float(integrate.quad(f, -12, 12, limit=200, epsabs=1e-13)[0])


@pytest.mark.parametrize("d", [1, 2])
def test_lbfgs_on_the_affine_elbo_reaches_the_closed_form(d: int) -> None:
    """The ELBO minimiser of the affine family is the exact denoiser of N(mean, cov) of the target (I30):
    L-BFGS from the identity start finds its value and parameters; the gradient vanishes there."""
    sched = schedules.Discrete.ddpm_cosine(8)
    q = Q if d == 1 else targets.random_gmm(2, 3, seed=1)
    obj = ELBOObjective(q, method="quadrature" if d == 1 else "closed_form")
    fam = AffineFamily(d, sched)
    closed = minimize(obj, fam)
    assert closed.method == "closed_form" and closed.converged and closed.grad_norm < 1e-10
    ref = AffineDenoiser.from_gaussian(q.mean(), q.covariance(), sched)
    assert torch.allclose(fam.model.A[1:].detach(), ref.A[1:].detach(), atol=1e-12)
    search = minimize(obj, AffineFamily(d, sched), method="L-BFGS-B", max_iter=3000)
    assert search.converged, search.message
    assert abs(search.value - closed.value) <= 1e-10 * abs(closed.value)
    assert float((search.params - closed.params).abs().max()) < 1e-4
    # negative control: a perturbed closed form is not a minimum (the value rises)
    fam.set_vector(closed.params + 1e-3 * torch.ones(fam.n_params, dtype=F64))
    assert float(obj(fam.model).detach()) > closed.value + 1e-7


def test_kl_minimiser_of_the_affine_family_is_the_moment_match() -> None:
    """min KL over the affine family = KL(q || N(mean, cov)) = H(N(mean, cov)) - H(q) (I30), with H(q)
    by scipy's adaptive quadrature; L-BFGS on the closed-form KL reaches the same value."""
    sched = schedules.Discrete.ddpm_cosine(10)
    obj = KLObjective(Q, method="closed_form")
    fam = AffineFamily(1, sched)
    closed = minimize(obj, fam)
    var = float(Q.covariance()[0, 0])
    truth = 0.5 * math.log(2 * math.pi * math.e * var) - _entropy_by_scipy(Q)
    assert closed.method == "closed_form" and abs(closed.value - truth) < 1e-7, (closed.value, truth)
    assert closed.grad_norm < 1e-8
    search = minimize(obj, AffineFamily(1, sched), method="L-BFGS-B", max_iter=2000)
    assert search.converged and abs(search.value - closed.value) < 1e-9
    # the grid KL (another method) agrees at the closed-form minimiser
    fam.set_vector(closed.params)
    grid = KLObjective(Q, method="grid").evaluate(fam.model, grid_error=True)
    assert abs(float(grid) - truth) <= grid.error + 1e-7
    # negative control: the ELBO's minimiser is not the KL's (it pays an excess KL)
    elbo_min = minimize(ELBOObjective(Q), AffineFamily(1, sched))
    fam.set_vector(elbo_min.params)
    assert float(obj(fam.model).detach()) > closed.value + 1e-5  # 4.0e-5 nats at T = 10


def test_convergence_is_reported() -> None:
    sched = schedules.Discrete.ddpm_cosine(6)
    short = minimize(ELBOObjective(Q), AffineFamily(1, sched), method="L-BFGS-B", max_iter=2)
    assert not short.converged and short.iterations <= 2 and short.grad_norm > 1e-3
    assert "ITERATIONS" in short.message.upper() or "LIMIT" in short.message.upper()


def test_derivative_free_search_for_an_objective_without_gradient() -> None:
    """An objective that declares no gradient gets Powell; on a one-component mixture family (3
    parameters) it finds the L-BFGS minimum of the ELBO."""
    sched = schedules.Discrete.ddpm_cosine(6)
    base = ELBOObjective(Q)

    class NoGrad:
        differentiable = False

        def __call__(self, model: object) -> torch.Tensor:
            return base(model).detach()

    lb = minimize(base, mixture_family(1, sched, init=Q))
    pw = minimize(NoGrad(), mixture_family(1, sched, init=Q))
    assert pw.method == "Powell" and math.isnan(pw.grad_norm)
    assert abs(pw.value - lb.value) < 1e-8 and lb.converged
    with pytest.raises(ValueError, match="no gradient"):
        minimize(NoGrad(), mixture_family(1, sched), method="L-BFGS-B")
    with pytest.raises(ValueError, match="closed-form"):
        minimize(base, mixture_family(1, sched), method="closed_form")


def test_per_step_family_has_a_closed_form_denoising_minimiser() -> None:
    """Each step's term is a least-squares fit (the same for every positive step weight): the closed
    form has zero gradient, beats a long L-BFGS run, and is the same for the eps-weighted loss."""
    from densityformula.study import DenoisingObjective, per_step_family
    from densityformula.training import DenoisingLoss

    sched = schedules.Discrete.ddpm_cosine(8)
    fam = per_step_family(sched, n_basis=5, data_var=0.7)
    cf = minimize(ELBOObjective(Q), fam)
    assert cf.method == "closed_form" and cf.grad_norm < 1e-8 * max(1.0, abs(cf.value))
    lb = minimize(ELBOObjective(Q), per_step_family(sched, n_basis=5, data_var=0.7), method="L-BFGS-B", max_iter=300)
    assert lb.value >= cf.value - 1e-10
    eps = minimize(DenoisingObjective(Q, DenoisingLoss(sched, "eps")), per_step_family(sched, n_basis=5, data_var=0.7))
    assert torch.allclose(eps.params, cf.params, atol=1e-8)
    # negative control: another target gives another minimiser
    other = targets.GaussianMixture([0.5, 0.5], [[-0.8], [1.2]], [0.3, 0.2])
    assert float((minimize(ELBOObjective(other), fam).params - cf.params).abs().max()) > 1e-2
