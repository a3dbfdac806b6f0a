"""Study families (densityformula.study, docs/math.md section 12): parameters as one vector, and each
family's denoiser against an independent definition."""
from __future__ import annotations

import pytest
import torch

from densityformula import schedules, targets
from densityformula.models import AffineDenoiser, AnalyticModel, MLPDenoiser
from densityformula.study import (
    AffineFamily,
    Family,
    MixtureDenoiser,
    PerStepDenoiser,
    mixture_family,
    mlp_family,
    per_step_family,
)

F64 = torch.float64


def test_vector_round_trip_and_gradient_layout() -> None:
    sched = schedules.Discrete.ddpm_cosine(6)
    fam = mixture_family(3, sched, seed=1)
    theta = fam.vector()
    assert theta.shape == (fam.n_params,) == (9,)
    new = torch.arange(9, dtype=F64) / 10
    fam.set_vector(new)
    assert torch.equal(fam.vector(), new)
    model = fam.model
    assert isinstance(model, MixtureDenoiser)
    assert torch.equal(model.means.detach().reshape(-1), new[3:6])  # logits, means, log_vars in order
    x = torch.linspace(-1, 1, 5, dtype=F64)[:, None]
    for p, gp in zip(fam.parameters, torch.autograd.grad(model.denoise(x, 3.0).sum(), fam.parameters)):
        p.grad = gp
    g = fam.gradient()
    assert g.shape == (9,) and bool((g != 0).any())
    with pytest.raises(ValueError, match="vector of 9"):
        fam.set_vector(torch.zeros(8))
    with pytest.raises(ValueError, match="NaN"):
        fam.set_vector(torch.full((9,), float("nan")))
    cp = fam.copy()
    cp.set_vector(torch.zeros(9))
    assert torch.equal(fam.vector(), new)  # the copy is independent


def test_family_needs_a_module_on_a_discrete_schedule() -> None:
    with pytest.raises(TypeError, match="Discrete"):
        Family(MLPDenoiser(1, schedules.VPCosine()))
    with pytest.raises(TypeError, match="nn.Module"):
        Family(AnalyticModel(targets.Gaussian([0.0], [[1.0]]), schedules.Discrete.ddpm_cosine(5)))
    fam = AffineFamily(2, schedules.Discrete.ddpm_cosine(5))
    assert fam.n_params == 6 * (4 + 2)
    assert Family(fam.model).closed_form(object()) is None


def test_mixture_denoiser_is_the_exact_posterior_mean_of_its_mixture() -> None:
    """Against AnalyticModel (I3), per-point times, d = 2."""
    sched = schedules.Discrete.ddpm_cosine(20)
    mix = targets.GaussianMixture([0.2, 0.5, 0.3], [[-1.0, 0.5], [0.3, 0.0], [1.5, -1.0]],
                                  [[0.2, 0.4], [0.3, 0.1], [0.5, 0.5]])
    model = MixtureDenoiser.from_mixture(mix, sched)
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(64, 2, generator=g, dtype=F64)
    t = torch.randint(0, 21, (64,), generator=g).to(F64)
    exact = AnalyticModel(mix, sched).denoise(x, t)
    assert torch.allclose(model.denoise(x, t), exact, atol=1e-12, rtol=0)
    assert torch.allclose(model.mixture().means, mix.means)
    # negative control: a perturbed mean is not the same denoiser
    with torch.no_grad():
        model.means[0, 0] += 0.01
    assert float((model.denoise(x, t).detach() - exact).abs().max()) > 1e-4


def test_per_step_denoiser_starts_at_the_gaussian_denoiser_and_steps_are_independent() -> None:
    sched = schedules.Discrete.ddpm_linear(30)
    fam = per_step_family(sched, n_basis=5, data_var=0.7)
    model = fam.model
    assert isinstance(model, PerStepDenoiser)
    ref = AffineDenoiser.from_gaussian([0.0], [[0.7]], sched)
    x = torch.linspace(-3, 3, 11, dtype=F64)[:, None]
    for k in (1, 10, 30):
        assert torch.allclose(fam.model.denoise(x, float(k)), ref.denoise(x, float(k)), atol=1e-13)
    with torch.no_grad():
        model.theta[10, 2] = 0.3
    assert torch.allclose(fam.model.denoise(x, 9.0), ref.denoise(x, 9.0), atol=1e-13)
    assert float((fam.model.denoise(x, 10.0) - ref.denoise(x, 10.0)).detach().abs().max()) > 0.1
    with pytest.raises(ValueError, match="integer"):
        fam.model.denoise(x, 2.5)


def test_mlp_family_runs_on_a_discrete_schedule_with_per_point_steps() -> None:
    sched = schedules.Discrete.ddpm_cosine(10)
    fam = mlp_family(sched, width=8, depth=2, seed=3)
    x = torch.randn(7, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.arange(1, 8, dtype=F64)
    D = fam.model.denoise(x, t)
    assert D.shape == (7, 1) and D.dtype == F64 and bool(torch.isfinite(D).all())
    # zero last layer: eps_hat = 0, so D = x / alpha_k
    assert torch.allclose(D, x / sched.alpha(t)[:, None], atol=1e-12)
