"""A weighted denoising loss as a mixture of ELBOs of noise-augmented data (Kingma & Gao 2023;
densityformula.study.noisy_elbo, augmentation_identity; docs/math.md I32): the noisy-data ELBO
against the x_0 ELBO and the library's Monte Carlo ELBO, the identity's constant across models,
and the mixture weights' sign against implied_weight's monotonicity."""
from __future__ import annotations

import math
from typing import List

import pytest
import torch

from densityformula import elbo, schedules, targets
from densityformula.models import DiffusionModel
from densityformula.reverse import ddpm_kernels
from densityformula.study import (
    MixtureDenoiser,
    augmentation_identity,
    augmentation_weights,
    elbo_objective,
    implied_weight,
    mixture_family,
    mlp_family,
    noisy_elbo,
    per_step_family,
)
from densityformula.training import DenoisingLoss

Q3 = targets.GaussianMixture([0.3, 0.3, 0.4], [[-2.0], [0.0], [1.5]], [0.1, 0.2, 0.15])
R = targets.GaussianMixture([0.5, 0.5], [[-0.8], [1.2]], [0.3, 0.2])
SCHED = schedules.Discrete.ddpm_cosine(12)


def _perturb(params: List[torch.Tensor], seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p))


def _models(sched: schedules.Discrete) -> List[DiffusionModel]:
    """Two random MLPs, two mixture denoisers, a random per-step model: five different models."""
    out: List[DiffusionModel] = []
    for seed in (1, 2):
        f = mlp_family(sched, width=8, seed=seed)
        _perturb(f.parameters, seed, 0.3)
        out.append(f.model)
    out.append(MixtureDenoiser.from_mixture(R, sched))
    f = mixture_family(2, sched, seed=4)
    out.append(f.model)
    f = per_step_family(sched)
    _perturb(f.parameters, 5, 0.2)
    out.append(f.model)
    return out


def test_noisy_elbo_at_level_zero_is_the_elbo_objective() -> None:
    """j = 0 of the sub-chain computation (per-step KLs given x_j) equals the x_0 ELBO objective of I27
    (weighted denoising errors), for both sampler variances."""
    for model in _models(SCHED):
        for variance in ("beta", "beta_tilde"):
            a = noisy_elbo(model, Q3, variance=variance)
            b = elbo_objective(model, Q3, variance=variance)
            assert abs(float(a.value[0].detach()) - float(b)) <= 1e-10 * abs(float(b)) + a.error[0] + b.error
        # negative control: the other variance's objective is far
        other = float(elbo_objective(model, Q3, variance="beta_tilde"))
        assert abs(float(noisy_elbo(model, Q3).value[0].detach()) - other) > 1e-3


class _Shifted(DiffusionModel):
    """The model's steps ``j+1..T`` as a model of their own on the schedule ``beta_{j+1..T}``: its denoiser
    ``D'_{k'}`` is chosen so that its DDPM kernel mean is the original kernel's at step ``j + k'``."""

    def __init__(self, model: DiffusionModel, sched: schedules.Discrete, j: int) -> None:
        self.inner = ddpm_kernels(model, sched, "beta")
        self.j = j
        self.schedule = schedules.Discrete(sched.betas[j:])
        ab = self.schedule.alpha_bars
        b = self.schedule.betas
        # the shifted chain's posterior-mean coefficients (I15): a'_1 = 0, c'_1 = 1
        self.c = torch.sqrt(ab[:-1]) * b / (1.0 - ab[1:])
        self.a = torch.sqrt(1.0 - b) * (1.0 - ab[:-1]) / (1.0 - ab[1:])

    def denoise(self, x_t: torch.Tensor, t: object) -> torch.Tensor:
        tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x_t.shape[0])
        out = torch.empty_like(x_t)
        for kp in torch.unique(torch.round(tt)).long().tolist():
            sel = torch.round(tt).long() == kp
            k = self.j + kp
            mean = self.inner.mean(x_t[sel], k)
            out[sel] = (mean - float(self.a[kp - 1]) * x_t[sel]) / float(self.c[kp - 1])
        return out


def _mild_mlp() -> DiffusionModel:
    f = mlp_family(SCHED, width=8, seed=1)
    _perturb(f.parameters, 1, 0.05)
    return f.model


@pytest.mark.parametrize("j", [3, 7])
@pytest.mark.parametrize("kind", ["mlp", "mixture"])
def test_noisy_elbo_matches_the_libraries_monte_carlo_elbo_of_diffused_data(j: int, kind: str) -> None:
    """E_{q_j}[-ELBO_j] against elbo.ddpm of the shifted-schedule model on samples of q_j, within 4.5
    standard errors; the negative control (the value shifted by 10 standard errors) is detected."""
    model = _mild_mlp() if kind == "mlp" else MixtureDenoiser.from_mixture(R, SCHED)
    exact = noisy_elbo(model, Q3)
    value = exact.value.detach()
    qj = Q3.marginal(SCHED, float(j))
    n = 20000
    x = qj.sample(n, generator=torch.Generator().manual_seed(10 + j))
    with torch.no_grad():
        est = elbo.ddpm(_Shifted(model, SCHED, j), x, n_samples=2, generator=torch.Generator().manual_seed(j))
    mc = -float(est.value.mean())
    se = float(est.value.std()) / math.sqrt(n)
    tol = 4.5 * se + float(exact.error[j])
    assert abs(float(value[j]) - mc) <= tol
    assert abs(float(value[j]) + 10 * se - mc) > tol  # negative control
    if kind == "mixture":  # (the MLP's decoder error, ~500 nats, swamps the differences between levels)
        assert abs(float(value[j - 2]) - mc) > tol  # another noise level is told apart


def test_step_term_differences_are_model_independent() -> None:
    """l_k(j) - l_k(0) (the step-k terms of -ELBO_j and -ELBO_0) is the same for every model (I32)."""
    nes = [noisy_elbo(m, Q3) for m in _models(SCHED)]
    T = SCHED.T
    diffs = []
    for ne in nes:
        d = ne.terms - ne.terms[0:1]
        mask = torch.arange(1, T + 1)[None, :] > torch.arange(T)[:, None]  # k > j
        diffs.append(torch.where(mask, d, torch.zeros_like(d)))
        assert torch.all(ne.terms[~mask] == 0)
    stack = torch.stack(diffs)
    spread = float((stack.max(0).values - stack.min(0).values).max())
    assert spread <= 1e-9
    # negative control: the terms themselves (without the j = 0 subtraction) depend on the model
    raw = torch.stack([ne.terms[1:, 2:] for ne in nes])
    assert float((raw.max(0).values - raw.min(0).values).max()) > 1e-2


LOSSES = [(w, ts) for w in ("eps", "elbo", "sigma2", "uniform") for ts in ("uniform", "importance", "truncated")]


@pytest.mark.parametrize("weighting,time_sampling", LOSSES)
def test_identity_constant_is_the_same_for_every_model(weighting: str, time_sampling: str) -> None:
    """E_q[loss] - sum_j p_j E_{q_j}[-ELBO_j] is the same constant for five different models; with p
    shifted by one step (a wrong mixture) the difference depends on the model."""
    loss = DenoisingLoss(SCHED, weighting, time_sampling)
    models = _models(SCHED)
    ids = [augmentation_identity(m, Q3, loss) for m in models]
    consts = torch.tensor([i.constant for i in ids])
    tol = 1e-9 * float(consts.abs().max() + 1.0) + sum(i.error for i in ids)
    assert float(consts.max() - consts.min()) <= tol
    # negative control: p_j -> p_{j-1} (w shifted by one step)
    wrong = []
    for m, i in zip(models, ids):
        ne = noisy_elbo(m, Q3)
        p = torch.cat([torch.zeros(1, dtype=i.p.dtype), i.p[:-1]])
        wrong.append(i.loss - float((p * ne.value.detach()).sum()))
    w = torch.tensor(wrong)
    assert float(w.max() - w.min()) > 1e3 * tol


@pytest.mark.parametrize("sched", [schedules.Discrete.ddpm_cosine(20), schedules.Discrete.ddpm_linear(50)],
                         ids=["cosine20", "linear50"])
def test_proper_mixture_iff_monotone(sched: schedules.Discrete) -> None:
    """p_j >= 0 exactly when implied_weight says w is monotone, for the losses over all steps (uniform
    and importance time sampling), and the weights are implied_weight's; the "truncated" losses drop
    step T (w_T = 0), so p_{T-1} = -w_{T-1} < 0, and implied_weight, counting the dropped step as 0, agrees."""
    model = MixtureDenoiser.from_mixture(R, sched)
    seen = set()
    for weighting in ("eps", "elbo", "sigma2", "uniform"):
        for ts in ("uniform", "importance"):
            loss = DenoisingLoss(sched, weighting, ts)
            iw = implied_weight(loss)
            w = augmentation_weights(loss, model)
            assert torch.allclose(w, iw.weight, rtol=1e-12, atol=0.0)
            ident = augmentation_identity(model, Q3, loss)
            assert ident.proper == iw.monotone
            seen.add(ident.proper)
        tr = DenoisingLoss(sched, weighting, "truncated")
        ident = augmentation_identity(model, Q3, tr)
        assert not ident.proper and float(ident.p[-1]) < 0.0
        assert float(ident.weight[-1]) == 0.0
        assert not implied_weight(tr).monotone  # the dropped step counts as w_T = 0
    assert seen == {True, False}  # both cases occur (eps is not monotone, elbo and uniform are)


def test_bad_inputs() -> None:
    model = MixtureDenoiser.from_mixture(R, SCHED)
    with pytest.raises(TypeError, match="model"):
        noisy_elbo(object(), Q3)
    with pytest.raises(TypeError, match="target"):
        noisy_elbo(model, object())
    q2 = targets.GaussianMixture([1.0], [[0.0, 0.0]], [1.0])
    with pytest.raises(ValueError, match="d = 2"):
        noisy_elbo(model, q2)
    with pytest.raises(ValueError, match="variance"):
        noisy_elbo(model, Q3, variance="sigma")
    with pytest.raises(ValueError, match="n_nodes"):
        noisy_elbo(model, Q3, n_nodes=1)
    with pytest.raises(TypeError, match="schedule"):
        noisy_elbo(model, Q3, schedule=schedules.VPLinear())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loss"):
        augmentation_identity(model, Q3, object())


def test_noisy_elbo_gradient_matches_finite_differences() -> None:
    """d/dtheta of E_{q_j}[-ELBO_j] by autograd against central differences (j = 4), for the means of a
    mixture denoiser; the negative control (the gradient of another level) is told apart."""
    model = MixtureDenoiser.from_mixture(R, SCHED)
    p = model.means
    j = 4
    v = noisy_elbo(model, Q3).value
    g = torch.autograd.grad(v[j], p)[0].reshape(-1)
    g_other = torch.autograd.grad(noisy_elbo(model, Q3).value[0], p)[0].reshape(-1)
    h = 1e-6
    fd = torch.zeros_like(g)
    for i in range(g.numel()):
        with torch.no_grad():
            p.view(-1)[i] += h
            up = float(noisy_elbo(model, Q3).value[j].detach())
            p.view(-1)[i] -= 2 * h
            dn = float(noisy_elbo(model, Q3).value[j].detach())
            p.view(-1)[i] += h
        fd[i] = (up - dn) / (2 * h)
    assert torch.allclose(g, fd, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(g_other, fd, rtol=1e-3, atol=1e-5)
