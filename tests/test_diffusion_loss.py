"""The per-token diffusion loss against the conditional NLL (densityformula.implications.diffusion_loss;
docs/math.md I37): the conditional target against scipy, the log-SNR weights against finite differences
of the schedule, the exact eps errors against closed forms and Monte Carlo with the library's mixture
denoiser, the per-z losses against H(z) (I37a), against a 1-D scipy integral (MAR, Gaussian) and
against the library's Monte-Carlo training loss of a conditional network, and the affine fit."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from densityformula import models, schedules
from densityformula.implications.diffusion_loss import (
    ConditionalMixture,
    affine_fit,
    elbo_loss_constant,
    eps_error_curves,
    expectation_nodes,
    log_snr_weight,
    per_z_losses,
)
from densityformula.neural import ConditionalMLPDenoiser
from densityformula.training import DenoisingLoss, Trainer
from densityformula.training.data import SampledData

FAM = ConditionalMixture(
    [0.0, 0.0], [[-1.2], [1.2]], [math.log(0.45)] * 2,
    logit_slopes=[[0.0], [1.5]], mean_slopes=[[[0.4]], [[0.4]]], log_scale_slopes=[[-0.8], [-0.8]],
)
SCHED = schedules.VPCosine()


def _scipy_params(z: object) -> tuple:
    """Weights, means and the scale of FAM at z (numbers or arrays), written out from the definition."""
    z = np.asarray(z, dtype=float)
    w2 = 1.0 / (1.0 + np.exp(-1.5 * z))
    s = 0.45 * np.exp(-0.8 * z)
    return np.array([1.0 - w2, w2]), np.array([-1.2 + 0.4 * z, 1.2 + 0.4 * z]), s


def _scipy_cdf(x: np.ndarray, z: np.ndarray) -> np.ndarray:
    w, m, s = _scipy_params(z)
    return sum(w[k] * stats.norm.cdf(x, m[k], s) for k in range(2))


def _scipy_pdf(x: np.ndarray, z: float) -> np.ndarray:
    w, m, s = _scipy_params(z)
    return sum(w[k] * stats.norm.pdf(x, m[k], s) for k in range(2))


def test_log_prob_and_at_match_scipy() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 1, generator=g, dtype=torch.float64) * 2
    z = torch.rand(50, 1, generator=g, dtype=torch.float64) * 2 - 1
    got = FAM.log_prob(x, z).numpy()
    want = np.array([math.log(_scipy_pdf(np.array(float(x[i, 0])), float(z[i, 0]))) for i in range(50)])
    assert np.allclose(got, want, atol=1e-12, rtol=0)
    # at(z) is the same law as a library GaussianMixture
    gm = FAM.at(0.3)
    assert torch.allclose(gm.log_prob(x), FAM.log_prob(x, 0.3), atol=1e-12)
    assert not torch.allclose(gm.log_prob(x), FAM.log_prob(x, 0.4), atol=1e-3)  # z matters


def test_sample_is_the_conditional_law() -> None:
    """z ~ U[-1, 1]; the probability integral transform of x through the exact conditional CDF is U(0, 1)."""
    x, z = FAM.sample(20000, generator=torch.Generator().manual_seed(1))
    assert z.shape == (20000, 1) and x.shape == (20000, 1)
    assert stats.kstest(z[:, 0].numpy(), stats.uniform(-1, 2).cdf).pvalue > 1e-3
    xs, zs = x[:, 0].numpy(), z[:, 0].numpy()
    assert stats.kstest(_scipy_cdf(xs, zs), "uniform").pvalue > 1e-3
    # negative control: the same draws against the law of a shifted condition
    assert stats.kstest(_scipy_cdf(xs, zs + 0.2), "uniform").pvalue < 1e-6


def test_entropy_matches_scipy_quad() -> None:
    zs = [-1.0, 0.0, 0.7]
    H, err = FAM.entropy(torch.tensor(zs), 64)
    for i, z in enumerate(zs):
        def f(x: float, z: float = z) -> float:
            p = float(_scipy_pdf(np.array(x), z))
            return -p * math.log(p) if p > 0 else 0.0
        want, _ = integrate.quad(f, -12, 12, limit=400, epsabs=1e-12)
        assert abs(float(H[i]) - want) <= max(float(err[i]), 1e-9) + 1e-9
        assert abs(float(H[i]) - want) < 1e-6
    assert float(err.max()) < 1e-4


def test_expectation_nodes_integrate_moments() -> None:
    x, w = expectation_nodes(FAM, 0.2, 8)
    wk, m, s = _scipy_params(0.2)
    assert abs(float(w.sum()) - 1) < 1e-14
    assert abs(float((w * x[:, 0]).sum()) - float((wk * m).sum())) < 1e-12
    assert abs(float((w * x[:, 0] ** 2).sum()) - float((wk * (m**2 + s**2)).sum())) < 1e-12
    t = 0.4
    xt, wt = expectation_nodes(FAM, 0.2, 8, t=t, schedule=SCHED)
    tt = torch.tensor(t, dtype=torch.float64)
    a2, s2 = float(SCHED.alpha2(tt)), float(SCHED.sigma2(tt))
    assert abs(float((wt * xt[:, 0] ** 2).sum()) - (a2 * float((wk * (m**2 + s**2)).sum()) + s2)) < 1e-12
    with pytest.raises(ValueError, match="both t and a Schedule"):
        expectation_nodes(FAM, 0.2, 8, t=0.3)


def test_log_snr_weights_against_finite_differences_of_the_schedule() -> None:
    lam = torch.linspace(-12, 12, 25, dtype=torch.float64)
    elbo = log_snr_weight(DenoisingLoss(SCHED, "elbo", "importance"), lam)
    assert torch.allclose(elbo, torch.full_like(lam, 0.5), atol=1e-10)
    mar = log_snr_weight(DenoisingLoss(SCHED, "eps", "uniform"), lam)
    h = 1e-5
    dt = (SCHED.t_from_log_snr(lam - h) - SCHED.t_from_log_snr(lam + h)) / (2 * h)  # |dt/dlambda|, t in [0, 1]
    assert torch.allclose(mar, dt, rtol=1e-6)
    # s -> 0 limit of the cosine schedule: sech(lambda/2) / (2 pi) near lambda = 0
    assert abs(float(mar[12]) - 1 / (2 * math.pi)) < 0.01
    x0 = log_snr_weight(DenoisingLoss(SCHED, "uniform", "uniform"), lam)
    assert torch.allclose(x0, mar * torch.exp(-lam), rtol=1e-12)
    with pytest.raises(ValueError, match="continuous-time"):
        log_snr_weight(DenoisingLoss(schedules.Discrete.ddpm_cosine(10), "eps"), lam)
    with pytest.raises(TypeError, match="WeightedLoss"):
        log_snr_weight("elbo", lam)  # type: ignore[arg-type]


def test_gaussian_mmse_closed_form_and_model_errors() -> None:
    """One component N(m, s^2): MMSE = d sigmoid(lambda + 2 log s); eps_theta = 0 gives d; eps_theta(x) = x gives
    (1 - sigma)^2 d + alpha^2 E x^2; and model error = MMSE + excess."""
    fam = ConditionalMixture([0.0], [[0.3]], [math.log(0.6)], log_scale_slopes=[[0.5]])
    lam = torch.linspace(-10, 10, 21, dtype=torch.float64)
    z = 0.4
    s = 0.6 * math.exp(0.5 * z)
    zero = eps_error_curves(fam, z, SCHED, lam, model=lambda zz: _Fn(lambda x, t: torch.zeros_like(x)))
    assert torch.allclose(zero.mmse, torch.sigmoid(lam + 2 * math.log(s)), atol=1e-12)
    assert torch.allclose(zero.model, torch.ones_like(lam), atol=1e-12)
    assert torch.allclose(zero.model, zero.mmse + zero.excess, atol=1e-12)
    assert torch.allclose(zero.remainder, zero.mmse - torch.sigmoid(lam), atol=1e-12)
    ident = eps_error_curves(fam, z, SCHED, lam, model=_Fn(lambda x, t: x))
    t = SCHED.t_from_log_snr(lam)
    a2, s2 = SCHED.alpha2(t), SCHED.sigma2(t)
    want = (1 - torch.sqrt(s2)) ** 2 + a2 * (0.3**2 + s**2)
    assert torch.allclose(ident.model, want, atol=1e-12)
    assert torch.allclose(ident.model, ident.mmse + ident.excess, atol=1e-10)


class _Fn:
    """A model given by its eps function (float64, CPU)."""

    dtype = torch.float64
    device = torch.device("cpu")

    def __init__(self, fn):  # type: ignore[no-untyped-def]
        self.fn = fn

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.fn(x, t)


def test_mixture_mmse_against_monte_carlo_with_the_library_denoiser() -> None:
    """E||eps - eps_hat||^2 with eps_hat from AnalyticModel (I3), by Monte Carlo: an independent posterior mean."""
    z = 0.6
    lam = torch.tensor([-3.0, 0.0, 2.0, 5.0], dtype=torch.float64)
    quad = eps_error_curves(FAM, z, SCHED, lam, n_nodes=64)
    exact = models.AnalyticModel(FAM.at(z), SCHED)
    n = 200000
    g = torch.Generator().manual_seed(3)
    x0 = FAM.at(z).sample(n, generator=g)
    for j, lj in enumerate(lam):
        t = SCHED.t_from_log_snr(lj)
        eps = torch.randn(n, 1, generator=g, dtype=torch.float64)
        xt = SCHED.alpha(t) * x0 + SCHED.sigma(t) * eps
        err = ((eps - exact.eps(xt, t)) ** 2).sum(1)
        se = float(err.std()) / math.sqrt(n)
        assert abs(float(err.mean()) - float(quad.mmse[j])) < 4.5 * se
        assert abs(float(err.mean()) - float(quad.mmse[j]) - 10 * se) > 4.5 * se  # control


def test_i37a_exact_elbo_loss_is_the_entropy_plus_the_constant() -> None:
    losses = {"elbo": DenoisingLoss(SCHED, "elbo", "uniform", include_constant=True),
              "raw": DenoisingLoss(SCHED, "elbo", "uniform"), "mar": DenoisingLoss(SCHED, "eps", "uniform")}
    rng = (-30.0, 30.0)
    r = per_z_losses(FAM, torch.linspace(-1, 1, 5), losses, lambda_range=rng, n_lambda=128, n_nodes=64,
                     entropy_nodes=64)
    bound = r.bayes_error["elbo"] + r.entropy_error + r.tail["elbo"].abs()
    assert bool(((r.bayes["elbo"] - r.entropy).abs() <= bound).all())
    assert float(bound.max()) < 1e-4
    c = elbo_loss_constant(1, rng)
    assert bool(((r.bayes["raw"] - r.entropy - c).abs() <= bound).all())
    assert not bool(((r.bayes["raw"] - r.entropy - c - 1e-3).abs() <= bound).all())  # control: wrong constant
    # the MAR loss is not affine in H here (I37b): its residual exceeds the bound by far
    f = affine_fit(r.bayes["mar"], r.entropy)
    assert float(np.abs(f.nats).max()) > 100 * float(bound.max())
    g = affine_fit(r.bayes["elbo"], r.entropy)
    assert abs(g.slope - 1) < 1e-4 and float(np.abs(g.nats).max()) < float(bound.max())


def test_elbo_loss_constant_is_the_integral_of_the_sigmoid() -> None:
    lo, hi = -7.0, 11.0
    val, _ = integrate.quad(lambda v: 1 / (1 + math.exp(-v)), lo, hi, epsabs=1e-13)
    want = -(math.log(2 * math.pi) + 1) + val  # d = 2
    assert abs(elbo_loss_constant(2, (lo, hi)) - want) < 1e-10
    with pytest.raises(ValueError, match="lambda_range"):
        elbo_loss_constant(1, (1.0, -1.0))


def test_mar_loss_of_a_gaussian_against_a_scipy_integral() -> None:
    """p(x|z) = N(0, s(z)^2): L_MAR(z) = int_0^1 sigmoid(lambda(t) + 2 log s) dt, a 1-D integral in t."""
    fam = ConditionalMixture([0.0], [[0.0]], [math.log(0.5)], log_scale_slopes=[[1.0]])
    loss = DenoisingLoss(SCHED, "eps", "uniform")
    r = per_z_losses(fam, torch.tensor([-1.0, 0.0, 1.0]), {"mar": loss}, lambda_range=(-40.0, 40.0), n_lambda=192,
                     n_nodes=8)
    for i, z in enumerate([-1.0, 0.0, 1.0]):
        s = 0.5 * math.exp(z)

        def f(t: float, s: float = s) -> float:
            lam = float(SCHED.log_snr(torch.tensor(t, dtype=torch.float64)))
            return 1 / (1 + math.exp(-(lam + 2 * math.log(s))))
        want, _ = integrate.quad(f, 0, 1, limit=200, epsabs=1e-12)
        assert abs(float(r.bayes["mar"][i]) - want) < 1e-6 + float(r.bayes_error["mar"][i])
    # H is affine in log s; the MAR loss is not (the Gaussian case of I37b)
    f_fit = affine_fit(r.bayes["mar"], r.entropy)
    assert abs(float(r.entropy[2] - r.entropy[0]) - 2.0) < 1e-9
    assert float(np.abs(f_fit.nats).max()) > 0.05


@pytest.mark.parametrize("weighting,sampling", [("eps", "uniform"), ("elbo", "importance")])
def test_model_loss_is_the_libraries_monte_carlo_training_loss(weighting: str, sampling: str) -> None:
    """The per-z quadrature of a (random) conditional network's loss = the mean of DenoisingLoss with y = z."""
    net = ConditionalMLPDenoiser(1, SCHED, cond_dim=1, width=16, depth=2, dtype=torch.float64, seed=4,
                                 zero_init_output=False)
    loss = DenoisingLoss(SCHED, weighting, sampling, include_constant=weighting == "elbo")
    z = 0.5
    r = per_z_losses(FAM, torch.tensor([z]), {"l": loss}, model=net.given, lambda_range=(-30.0, 30.0), n_lambda=96,
                     n_nodes=32)
    n = 60000
    x0 = FAM.at(z).sample(n, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        mc = loss(net, x0, generator=torch.Generator().manual_seed(6), y=torch.full((n, 1), z, dtype=torch.float64))
    se = float(mc.std()) / math.sqrt(n)
    est = float(r.model["l"][0])
    tol = 4.5 * se + float(r.model_error["l"][0])
    assert abs(float(mc.mean()) - est) < tol
    assert abs(float(mc.mean()) - est - 10 * se) > tol  # control
    # and the excess is model - bayes (the tower rule)
    assert abs(float(r.model["l"][0] - r.bayes["l"][0] - r.excess["l"][0])) < 1e-3 + float(r.model_error["l"][0])
    assert float(r.excess["l"][0]) > 0.01  # a random network is far from the Bayes denoiser


def test_trainer_takes_a_continuous_condition() -> None:
    """SampledData(family.sample, labelled=True) feeds (x, z) pairs; the trained network uses z."""
    net = ConditionalMLPDenoiser(1, SCHED, cond_dim=1, width=16, depth=2, seed=0)
    tr = Trainer(net, SampledData(FAM.sample, labelled=True, seed=0), steps=30, batch_size=64, device="cpu",
                 progress=False, ema_decay=None)
    tr.train()
    x = torch.randn(8, 1)
    t = torch.full((8,), 0.5)
    with torch.no_grad():
        a, b = net.eps(x, t, y=torch.full((8, 1), -1.0)), net.eps(x, t, y=torch.full((8, 1), 1.0))
    assert not torch.allclose(a, b)


@settings(max_examples=8, deadline=None)
@given(
    s0=st.floats(-1.5, 0.0), slope=st.floats(-1.0, 1.0), sep=st.floats(0.0, 3.0), w=st.floats(-2.0, 2.0),
)
def test_property_i37a_on_random_two_component_families(s0: float, slope: float, sep: float, w: float) -> None:
    fam = ConditionalMixture([0.0, w], [[-sep / 2], [sep / 2]], [s0, s0 + 0.3], log_scale_slopes=[[slope], [slope]])
    loss = DenoisingLoss(SCHED, "elbo", "uniform", include_constant=True)
    r = per_z_losses(fam, torch.tensor([-1.0, 1.0]), {"e": loss}, lambda_range=(-30.0, 30.0), n_lambda=128,
                     n_nodes=64, entropy_nodes=64)
    bound = r.bayes_error["e"] + r.entropy_error + r.tail["e"].abs() + 1e-9
    assert bool(((r.bayes["e"] - r.entropy).abs() <= bound).all())


def test_affine_fit_and_errors() -> None:
    x = np.array([0.0, 1.0, 2.0, 3.0])
    f = affine_fit(2.0 + 3.0 * x, x)
    assert abs(f.intercept - 2) < 1e-12 and abs(f.slope - 3) < 1e-12 and f.max_abs < 1e-12
    bump = np.array([1.0, -1.0, -1.0, 1.0])
    g = affine_fit(2.0 + 3.0 * x + 0.1 * bump, x)
    assert np.allclose(g.residuals, 0.1 * bump) and np.allclose(g.nats, 0.1 * bump / 3)
    with pytest.raises(ValueError, match="at least 3"):
        affine_fit([1.0, 2.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="constant"):
        affine_fit([1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        affine_fit([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0])


def test_bad_inputs_raise_naming_the_argument() -> None:
    with pytest.raises(ValueError, match="means"):
        ConditionalMixture([0.0, 0.0], [[0.0]], [0.0, 0.0])
    with pytest.raises(ValueError, match="log_scales"):
        ConditionalMixture([0.0], [[0.0]], [0.0, 0.0])
    with pytest.raises(ValueError, match="mean_slopes"):
        ConditionalMixture([0.0], [[0.0]], [0.0], mean_slopes=[[0.0]])
    with pytest.raises(ValueError, match="z_low"):
        ConditionalMixture([0.0], [[0.0]], [0.0], z_low=1.0, z_high=0.0)
    with pytest.raises(ValueError, match="NaN"):
        ConditionalMixture([float("nan")], [[0.0]], [0.0])
    with pytest.raises(ValueError, match="z"):
        FAM.log_prob(torch.zeros(3, 1), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="x must have shape"):
        FAM.log_prob(torch.zeros(3, 2), 0.0)
    with pytest.raises(ValueError, match="one condition"):
        FAM.at(torch.zeros(2, 1))
    with pytest.raises(ValueError, match="lambda_range"):
        per_z_losses(FAM, 0.0, {"e": DenoisingLoss(SCHED, "elbo")}, lambda_range=(1.0, float("inf")))
    with pytest.raises(ValueError, match="losses"):
        per_z_losses(FAM, 0.0, {})
    with pytest.raises(TypeError, match="objective"):
        from densityformula.training import ELBOWeight, UniformTime, WeightedLoss
        from densityformula.training.losses import Objective

        class Odd(Objective):
            def __call__(self, model, batch):  # type: ignore[no-untyped-def]
                return batch.x0.sum(1)

        log_snr_weight(WeightedLoss(Odd(), ELBOWeight(), UniformTime(SCHED)), torch.zeros(1))


def test_mar_loss_sees_structure_the_nll_does_not() -> None:
    """Two modes at a fixed scale moving apart: H(z) is flat (log 2 + a Gaussian's entropy) once they
    separate, while the MAR loss still changes -- it is not a function of H (I37b)."""
    fam = ConditionalMixture([0.0, 0.0], [[-1.0], [1.0]], [math.log(0.3)] * 2, mean_slopes=[[[-0.9]], [[0.9]]])
    z = torch.tensor([0.5, 0.75, 1.0])
    r = per_z_losses(fam, z, {"mar": DenoisingLoss(SCHED, "eps", "uniform")}, lambda_range=(-30.0, 30.0),
                     n_lambda=96, n_nodes=48, entropy_nodes=64)
    assert float(r.entropy.max() - r.entropy.min()) < 1e-3
    assert abs(float(r.entropy[-1]) - (math.log(2) + 0.5 * math.log(2 * math.pi * math.e * 0.09))) < 1e-4
    assert float(r.bayes["mar"].max() - r.bayes["mar"].min()) > 0.01
