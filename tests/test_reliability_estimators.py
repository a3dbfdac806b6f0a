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


def test_probability_flow_zero_length_interval_is_refused():
    """First: t_min == t_max ended in torchdiffeq's bare AssertionError; then it returned the prior's
    log-density at x, which is no likelihood of the model (issue 9: a clear error naming both ends)."""
    m = _gauss(1)
    x = torch.tensor([[0.5]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"t_min and t_max are equal"):
        probability_flow(m, x, t_min=0.5, t_max=0.5)
    with pytest.raises(ValueError, match=r"t_start and t_end are equal"):  # the old names, named as given
        probability_flow(m, x, t_start=0.5, t_end=0.5)
    with pytest.raises(ValueError, match=r"are equal"):  # one point of a per-point interval
        probability_flow(m, torch.tensor([[0.5], [0.1]], dtype=torch.float64),
                         t_min=torch.tensor([0.5, 0.2], dtype=torch.float64), t_max=0.5)
    assert torch.isfinite(probability_flow(m, x, t_min=0.5, t_max=0.6).value).all()


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
    # issue 9: integer queries are refused like everywhere else (they were converted), and so are
    # an empty batch (an empty result before) and a meta tensor (a RuntimeError from .item() before)
    with pytest.raises(TypeError, match=r"x must be a real floating tensor, got dtype torch.int64"):
        sd.log_prob(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="x is an empty batch"):
        sd.log_prob(torch.zeros(0, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="x is a meta tensor"):
        sd.log_prob(torch.zeros(2, 1, dtype=torch.float64, device="meta"))
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


# ---------------------------------------------------------------------------------- issue 9, round 2
def test_density_formula_reports_its_quadrature_error():
    """Before: n_nodes=8 gave a value 0.25 nats (18 stderr) off with no error reported (the
    fuzz suite's case: exact model of random_gmm(1, 2, seed=0) under LiYan).  Now the coarser
    companion rule's difference is in extras["quadrature_error"] (and in error_bound) and covers
    the error; fewer than 8 nodes are refused; np.int64 n_nodes is n_nodes."""
    g = df.targets.random_gmm(1, 2, seed=0)
    m = AnalyticModel(g, LiYan())
    x = torch.randn(1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.7
    truth = g.log_prob(x)
    kw = {"n_replicates": 4, "n_pilot": 4, "seed": 1}
    est = df.density_formula(m, x, n_nodes=8, **kw)
    err = (est.value - truth).abs()
    quad, trunc = est.extras["quadrature_error"], est.extras["truncation_bound"]
    assert bool((err > 5 * est.stderr).all())  # the stderr alone misses it (as before)
    assert bool((err <= 5 * est.stderr + quad + trunc).all())
    assert torch.equal(est.extras["error_bound"], trunc + quad + 3 * est.stderr)
    same = df.density_formula(m, x, n_nodes=np.int64(8), **kw)
    assert torch.equal(same.value, est.value) and torch.equal(same.extras["quadrature_error"], quad)
    # with the default rule the estimate is at the noise level, far below the coarse rule's
    fine = df.density_formula(m, x, **kw)
    assert float(fine.extras["quadrature_error"].max()) < 0.1 * float(quad.max())
    assert bool(((fine.value - truth).abs() <= 5 * fine.stderr + fine.extras["error_bound"]).all())
    with pytest.raises(ValueError, match=r"n_nodes must be >= 8, got 7"):
        df.density_formula(m, x, n_nodes=7, **kw)


def test_probability_flow_trajectory_keeps_the_accuracy():
    """Before: return_trajectory forced a solver step onto every trajectory time, which changed the
    steps and made the log-density up to 13x less accurate (6.3e-5 nats against 4.9e-6 at
    rtol = atol = 1e-6); now the steps are the same and the value is bit-for-bit the one without
    it, and the inner trajectory points (dense output) agree with a solve that ends there."""
    g = df.targets.random_gmm(1, 2, seed=0)
    m = AnalyticModel(g, LiYan())
    x = torch.tensor([[0.4], [-0.9]], dtype=torch.float64)
    ref = probability_flow(m, x, rtol=1e-6, atol=1e-6)
    for nt in (2, 5, np.int64(3)):
        est = probability_flow(m, x, rtol=1e-6, atol=1e-6, return_trajectory=True, n_trajectory=nt)
        assert torch.equal(est.value, ref.value) and est.nfe == ref.nfe
        lams, path = est.extras["trajectory"]
        assert path.shape == (int(nt), 2, 1) and torch.equal(path[0], x)
        assert torch.equal(path[-1], ref.extras["x_end"])
    est = probability_flow(m, x, rtol=1e-6, atol=1e-6, return_trajectory=True, n_trajectory=5)
    lams = est.extras["trajectory"][0]
    k = 2  # the middle of 5 points
    lam_k = float(lams[k]) if lams.ndim == 1 else float(lams[k, 0])
    t_k = float(m.schedule.t_from_log_snr(torch.tensor(lam_k, dtype=torch.float64)))
    part = probability_flow(m, x, rtol=1e-6, atol=1e-6, t_max=t_k)
    assert torch.allclose(est.extras["trajectory"][1][k], part.extras["x_end"], atol=1e-4, rtol=0)


def test_kl_de_bruijn_wrong_dimension_names_p():
    """Before: "x must have shape (n, 2), got (64, 1)" from inside p, not naming p."""
    q = df.targets.random_gmm(1, 2, seed=0)
    with pytest.raises(ValueError, match=r"p has dimension d = 2 but q has d = 1"):
        df.elbo.kl_de_bruijn(q, df.targets.random_gmm(2, 2, seed=1), n_samples=8, n_nodes=4)
    with pytest.raises(ValueError, match=r"p has dimension d = 2 but q has d = 1"):
        df.elbo.kl_de_bruijn(q, _gauss(2), n_samples=8, n_nodes=4)
    est = df.elbo.kl_de_bruijn(q, df.targets.random_gmm(1, 2, seed=1), n_samples=8, n_nodes=4)
    assert bool(torch.isfinite(est.value).all())


def test_gaussian_sampler_affine_rtol_and_d():
    """Before: affine_rtol=nan was accepted (every affinity check then passes: NaN compares
    False), a negative one failed as "not affine" without naming it, and a d that differs from
    the model's failed inside the model ("x_t must have shape (n, 1)")."""
    sched = Discrete.ddpm_linear(30)
    m = _gauss(2, sched)
    for bad in (float("nan"), -1.0, 0.0, "1e-7"):
        with pytest.raises((ValueError, TypeError), match="affine_rtol"):
            gaussian_sampler(m, sched, affine_rtol=bad)
    with pytest.raises(ValueError, match=r"d = 3 does not match the model's dimension 2"):
        gaussian_sampler(m, sched, d=3)
    law = gaussian_sampler(m, sched, d=np.int64(2))
    assert torch.equal(law.mean, gaussian_sampler(m, sched).mean)


def test_bits_per_dim_negative_data_scale_is_refused():
    """Before: a negative data_scale was taken by its absolute value without a word."""
    logp = torch.tensor([-3.0, -4.0], dtype=torch.float64)
    for bad in (-1.0, torch.tensor([1.0, -0.5], dtype=torch.float64)):
        with pytest.raises(ValueError, match="data_scale must be positive"):
            df.bits_per_dim(logp, 2, data_scale=bad)
    with pytest.raises(ValueError, match="data_scale"):
        df.bits_per_dim(logp, 2, data_scale=float("nan"))
    assert torch.allclose(df.bits_per_dim(logp, 2, data_scale=0.5), (-(logp + 2 * math.log(0.5))) / (2 * math.log(2)))


def test_denoising_loss_and_trainer_name_x0_and_data():
    """Before: a float16 x0 was accepted; a wrong-d or extra-axis x0 failed inside the network as
    "x_t must have shape (n, 1)"; a meta x0 raised torch's RuntimeError; the Trainer's wrong-d
    data failed inside the network too, naming x_t."""
    from densityformula.models import MLPDenoiser
    from densityformula.schedules import VPCosine
    from densityformula.training import Trainer

    sch = VPCosine()
    net = MLPDenoiser(1, sch, width=4, depth=1, dtype=torch.float64)
    loss = DenoisingLoss(sch)
    x0 = torch.zeros(4, 1, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(TypeError, match=r"x0 has dtype torch\.float16; half precision"):
        loss(net, x0.half(), generator=gen)
    with pytest.raises(ValueError, match=r"x0 must have shape \(n, 1\) for this model \(its d = 1\), got \(4, 2\)"):
        loss(net, torch.zeros(4, 2, dtype=torch.float64), generator=gen)
    with pytest.raises(ValueError, match=r"x0 must have shape \(n, 1\).*got \(4, 1, 1\)"):
        loss(net, x0[:, :, None], generator=gen)
    with pytest.raises(ValueError, match=r"x0 is a meta tensor"):
        loss(net, x0.to("meta"), generator=gen)
    assert loss(net, x0, generator=gen).shape == (4,)
    with pytest.raises(ValueError, match=r"data must have shape \(N, 1\) for this model \(its d = 1\), got \(32, 2\)"):
        Trainer(net, torch.zeros(32, 2, dtype=torch.float64), steps=1, batch_size=8, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"data must have shape \(N, 1\).*got \(32, 1, 1\)"):
        Trainer(net, torch.zeros(32, 1, 1, dtype=torch.float64), steps=1, batch_size=8, device="cpu", progress=False)
