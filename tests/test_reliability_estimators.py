"""Reliability of the estimators, likelihoods and losses (issue 9): the model-call boundary,
bad arguments as clear errors, and the grid density's support and error report.

Each test fails on the code before the fix; the reason is in its docstring."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import densityformula as df
from densityformula.likelihood import gaussian_sampler, probability_flow, sampler_density_1d
from densityformula.models import AnalyticModel, DiffusionModel, ModelOutputError
from densityformula.schedules import Discrete, LiYan
from densityformula.targets import Gaussian
from densityformula.training import DenoisingLoss


class _Bad(DiffusionModel):
    """A model wrapping an exact one whose ``denoise`` is broken on purpose."""

    def __init__(self, inner: AnalyticModel, mode: str) -> None:
        self.inner_model, self.mode, self.schedule = inner, mode, inner.schedule

    def denoise(self, x_t, t):  # type: ignore[no-untyped-def]
        D = self.inner_model.denoise(x_t, t)
        if self.mode == "shape":  # (n, 1) for d = 2: broadcasts silently downstream
            return D[:, :1]
        return D * float("nan")


def _gauss(d: int, schedule=None) -> AnalyticModel:  # type: ignore[no-untyped-def]
    g = Gaussian(torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64))
    return AnalyticModel(g, schedule if schedule is not None else LiYan())


X2 = torch.tensor([[0.3, -0.2], [1.0, 0.5]], dtype=torch.float64)


def test_wrong_shape_model_is_a_model_output_error_everywhere():
    """Before: (n, 1) broadcast against (n, 2) and gave finite garbage (about -8e11)."""
    sched = Discrete.ddpm_linear(30)
    bad_c = _Bad(_gauss(2), "shape")
    bad_d = _Bad(_gauss(2, sched), "shape")
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ModelOutputError, match="denoise"):
        df.elbo.continuous(bad_c, X2)
    with pytest.raises(ModelOutputError, match="denoise"):
        df.elbo.importance_weighted(bad_d, X2, 2, n_replicates=2, generator=gen)
    with pytest.raises(ModelOutputError, match="denoise"):
        probability_flow(bad_c, X2)
    with pytest.raises(ModelOutputError, match="eps|denoise"):
        DenoisingLoss(LiYan())(bad_c, X2, generator=gen)


def test_nan_model_is_a_model_output_error():
    """Before: elbo.ddpm, elbo.importance_weighted and DenoisingLoss returned NaN silently."""
    sched = Discrete.ddpm_linear(30)
    bad = _Bad(_gauss(2, sched), "nan")
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ModelOutputError, match="non-finite"):
        df.elbo.ddpm(bad, X2, generator=gen)
    with pytest.raises(ModelOutputError, match="non-finite"):
        df.elbo.ddpm(bad, X2, steps=3, generator=gen)
    with pytest.raises(ModelOutputError, match="non-finite"):
        df.elbo.importance_weighted(bad, X2, 2, n_replicates=2, generator=gen)
    with pytest.raises(ModelOutputError, match="non-finite"):
        DenoisingLoss(sched)(bad, X2, generator=gen)


def test_checked_loss_keeps_gradients_and_conditioning():
    """The loss's boundary wraps only the call path: the network still gets its gradients."""
    net = df.models.MLPDenoiser(2, LiYan(), width=8, depth=1, seed=0)
    loss = DenoisingLoss(net.schedule)(net, X2.float(), generator=torch.Generator().manual_seed(0))
    loss.mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)


def test_probability_flow_trajectory_needs_both_ends():
    """Before: n_trajectory=1 returned the un-integrated start (value = prior at x itself)."""
    m = _gauss(1)
    x = torch.tensor([[0.5]], dtype=torch.float64)
    with pytest.raises(ValueError, match="n_trajectory"):
        probability_flow(m, x, return_trajectory=True, n_trajectory=1)
    ref = probability_flow(m, x)
    est = probability_flow(m, x, return_trajectory=True, n_trajectory=2)
    assert abs(float(est.value[0] - ref.value[0])) < 1e-4
    assert est.extras["trajectory"][1].shape[0] == 2


def test_probability_flow_zero_length_interval_is_the_prior():
    """Before: t_min == t_max ended in torchdiffeq's bare AssertionError."""
    m = _gauss(1)
    x = torch.tensor([[0.5]], dtype=torch.float64)
    est = probability_flow(m, x, t_min=0.5, t_max=0.5)
    s2 = float(m.schedule.sigma2(torch.tensor(0.5, dtype=torch.float64)))
    want = -0.5 * (math.log(2 * math.pi * s2) + 0.25 / s2)
    assert abs(float(est.value[0]) - want) < 1e-12


def test_sampler_density_support_tail_and_error_report():
    """Before: log_prob beyond the grid was finite and wrong (-1040 nats instead of -41 at x = 9
    here), integer input was truncated to integers, complex and bool input were accepted, and no
    truncation or grid error was reported.  The reported box truncation is checked against the
    closed-form output law of the same sampler (I13 vs I14): it bounds the law's mass outside the
    box from above (mass that left and came back counts too) and is of its order."""
    sched = Discrete.ddpm_linear(30)
    m = _gauss(1, sched)
    law = gaussian_sampler(m, sched)
    sd = sampler_density_1d(m, sched, grid=torch.linspace(-3.0, 3.0, 241, dtype=torch.float64))
    with pytest.raises(ValueError, match="x has 1 point"):
        sd.log_prob(torch.tensor([0.0, 9.0], dtype=torch.float64))
    with pytest.raises(TypeError, match="x must be a real"):
        sd.log_prob(torch.tensor([0.5 + 0j]))
    with pytest.raises(TypeError, match="x must be a real"):
        sd.log_prob(torch.tensor([True]))
    ints = sd.log_prob(torch.tensor([0, 1]))
    assert ints.dtype == torch.float64
    assert torch.equal(ints, sd.log_prob(torch.tensor([0.0, 1.0], dtype=torch.float64)))
    h = float(sd.grid[1] - sd.grid[0])
    s = math.sqrt(float(law.cov[0, 0]))
    outside = math.erfc((3.0 + h / 2) / (s * math.sqrt(2.0)))  # mean 0: both tails
    assert outside <= sd.truncation < 0.1
    assert sd.grid_error < 1e-4
    assert abs(sd.mass + sd.truncation - 1.0) == pytest.approx(sd.grid_error)
    # p_grid <= p (the box only loses mass), and the deficit integrates to at most truncation
    exact = torch.exp(law.log_prob(sd.grid[:, None]))
    assert bool((sd.density <= exact * (1 + 1e-3)).all())
    assert h * float((exact - sd.density).sum()) <= sd.truncation + sd.grid_error
    # on a box holding the mass, truncation is negligible and the grid density is the closed form
    wide = sampler_density_1d(m, sched, grid=torch.linspace(-8.0, 8.0, 401, dtype=torch.float64))
    assert wide.truncation < 1e-12 and wide.grid_error < 1e-4
    pts = torch.tensor([0.0, 0.7, -1.2, 3.0], dtype=torch.float64)
    assert torch.allclose(wide.log_prob(pts), law.log_prob(pts[:, None]), atol=1e-4)


def test_bad_arguments_are_clear_errors():
    """Before: NaN step_probs passed the check and hit torch.multinomial's RuntimeError; a numpy
    integer k was refused; an empty batch and an Estimate holding NaN went through."""
    sched = Discrete.ddpm_linear(30)
    m = _gauss(2, sched)
    gen = torch.Generator().manual_seed(0)
    probs = torch.full((29,), 1.0 / 29, dtype=torch.float64)
    probs[1] = float("nan")
    with pytest.raises(ValueError, match="step_probs"):
        df.elbo.ddpm(m, X2, steps=2, step_probs=probs, generator=gen)
    with pytest.raises(ValueError, match="step_probs"):
        df.elbo.ddpm(m, X2, steps=2, step_probs=-probs.nan_to_num(1.0 / 29), generator=gen)
    est = df.elbo.importance_weighted(m, X2, np.int64(2), n_replicates=2, generator=gen)
    assert est.value.shape == (2,)
    with pytest.raises(ValueError, match="x is an empty batch"):
        df.elbo.ddpm(m, X2[:0], generator=gen)
    with pytest.raises(ValueError, match="x is an empty batch"):
        probability_flow(m, X2[:0])
    with pytest.raises(TypeError, match="generator"):
        df.elbo.ddpm(m, X2, generator=0)  # type: ignore[arg-type]
    bad = df.Estimate(torch.tensor([float("nan")]), torch.tensor([0.1]), 1, 0.0, {})
    with pytest.raises(ValueError, match="logp.value"):
        df.bits_per_dim(bad, 2)
