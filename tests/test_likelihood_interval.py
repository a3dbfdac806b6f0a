"""Validity ranges (docs/math.md section 10, I24): ``probability_flow`` integrates over the model's
valid log-SNR range by default, reports the interval it used, and warns only when asked explicitly
to go beyond it.  The interval ends are ``t_min`` (data end) and ``t_max`` (prior end);
``t_start`` / ``t_end`` stay as their old names."""
import math
import warnings

import pytest
import torch

import densityformula as df
from densityformula.likelihood import probability_flow

F64 = torch.float64
LAM_TRAINED = (-8.0, 8.0)


def _train_tiny_net(steps: int = 300):
    """A small MLPDenoiser trained for a few hundred steps (fixed seed) on a 2-D mixture, with
    log-SNRs drawn uniformly from LAM_TRAINED; ``valid_log_snr`` is set to that range."""
    g = df.targets.random_gmm(2, 3, seed=0, separation=4.0)
    S = df.schedules.VPCosine()
    net = df.models.MLPDenoiser(2, S, width=32, depth=2, dtype=F64, seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    lo, hi = LAM_TRAINED
    for _ in range(steps):
        x0 = g.sample(256, generator=gen)
        t = S.t_from_log_snr(lo + (hi - lo) * torch.rand(256, generator=gen, dtype=F64))
        eps = torch.randn(x0.shape, generator=gen, dtype=F64)
        xt = S.alpha(t)[:, None] * x0 + S.sigma(t)[:, None] * eps
        loss = ((net.eps(xt, t) - eps) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.valid_log_snr = LAM_TRAINED
    return g, net.eval()


@pytest.fixture(scope="module")
def trained():
    return _train_tiny_net()


def test_default_interval_of_a_trained_network_is_its_trained_range(trained):
    """The issue's acceptance test: with defaults, a trained network's probability-flow likelihood
    equals the one computed explicitly over its trained range (to solver tolerance) with no
    warning; asking for log-SNR -40 explicitly warns (and gives a different likelihood)."""
    g, net = trained
    S = net.schedule
    x = g.sample(16, generator=torch.Generator().manual_seed(1))
    t_min = float(S.t_from_log_snr(torch.tensor(LAM_TRAINED[1], dtype=F64)))
    t_max = float(S.t_from_log_snr(torch.tensor(LAM_TRAINED[0], dtype=F64)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        default = probability_flow(net, x, rtol=1e-7, atol=1e-7)
        explicit = probability_flow(net, x, rtol=1e-7, atol=1e-7, t_min=t_min, t_max=t_max)
        old_names = probability_flow(net, x, rtol=1e-7, atol=1e-7, t_start=t_min, t_end=t_max)
    assert default.extras["log_snr_interval"] == LAM_TRAINED
    lo, hi = explicit.extras["log_snr_interval"]
    assert abs(lo - LAM_TRAINED[0]) < 1e-9 and abs(hi - LAM_TRAINED[1]) < 1e-9
    assert float((default.value - explicit.value).abs().max()) < 1e-5
    assert torch.equal(explicit.value, old_names.value)
    assert torch.allclose(default.extras["t_min"], torch.full((16,), t_min, dtype=F64), rtol=0, atol=1e-12)
    assert torch.allclose(default.extras["t_max"], torch.full((16,), t_max, dtype=F64), rtol=0, atol=1e-12)
    t40 = float(S.t_from_log_snr(torch.tensor(-40.0, dtype=F64)))
    with pytest.warns(RuntimeWarning, match=r"beyond the range \[-8, 8\]"):
        far = probability_flow(net, x, rtol=1e-6, atol=1e-6, t_max=t40)
    assert far.extras["log_snr_interval"][0] == pytest.approx(-40.0, abs=1e-6)
    assert float((far.value - default.value).abs().mean()) > 1e-3


def test_explicit_interval_inside_the_valid_range_is_silent(trained):
    g, net = trained
    x = g.sample(4, generator=torch.Generator().manual_seed(2))
    S = net.schedule
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t5 = S.t_from_log_snr(torch.tensor([5.0, -5.0], dtype=F64))
        est = probability_flow(net, x, rtol=1e-5, atol=1e-5, t_min=float(t5[0]), t_max=float(t5[1]))
    lo, hi = est.extras["log_snr_interval"]
    assert abs(lo + 5.0) < 1e-9 and abs(hi - 5.0) < 1e-9
    with pytest.warns(RuntimeWarning, match="lambda_clip"):
        probability_flow(net, x, rtol=1e-4, atol=1e-4, t_min=0.0, lambda_clip=(-8.0, 12.0))


def test_analytic_model_defaults_are_unchanged_and_aliases_are_checked():
    """An analytic model is valid on the whole line: the default interval is the schedule's finite
    log-SNR range (LiYan: (-40, 25)), as before; t_start/t_end mean t_min/t_max; giving a name and
    its alias is an error; an analytic model never warns."""
    g = df.targets.random_gmm(2, 3, seed=3)
    m = df.models.AnalyticModel(g, df.schedules.LiYan())
    x = g.sample(5, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = probability_flow(m, x, rtol=1e-6, atol=1e-6)
        a = probability_flow(m, x, rtol=1e-6, atol=1e-6, t_min=0.05, t_max=0.9)
        b = probability_flow(m, x, rtol=1e-6, atol=1e-6, t_start=0.05, t_end=0.9)
    assert est.extras["log_snr_interval"] == (-40.0, 25.0)
    assert torch.equal(a.value, b.value)
    for key in ("t_min", "t_max", "t_start", "t_end", "lambda_start", "lambda_end"):
        assert est.extras[key].shape == (5,), key
    assert torch.equal(est.extras["t_min"], est.extras["t_start"])
    assert torch.equal(est.extras["t_max"], est.extras["t_end"])
    assert float(a.extras["t_min"][0]) == pytest.approx(0.05, abs=1e-12)
    lam = m.schedule.log_snr(torch.tensor([0.9, 0.05], dtype=F64))
    assert a.extras["log_snr_interval"] == pytest.approx((float(lam[0]), float(lam[1])), abs=1e-9)
    with pytest.raises(ValueError, match="t_min or its old name t_start"):
        probability_flow(m, x, t_min=0.1, t_start=0.1)
    with pytest.raises(ValueError, match="t_max or its old name t_end"):
        probability_flow(m, x, t_max=0.9, t_end=0.9)
    with pytest.raises(ValueError, match="t_max must not be earlier"):
        probability_flow(m, x, t_min=0.5, t_max=0.2)
    with pytest.raises(ValueError, match="t_min"):
        probability_flow(m, x, t_min=2.0)


def test_elbos_report_their_interval():
    g = df.targets.random_gmm(1, 2, seed=0)
    T50 = df.schedules.Discrete.ddpm_linear(T=50)
    m = df.models.AnalyticModel(g, T50)
    x = g.sample(3, generator=torch.Generator().manual_seed(0))
    lam = T50.log_snrs
    for est in (
        df.elbo.ddpm(m, x, generator=torch.Generator().manual_seed(1)),
        df.elbo.ddpm_objective(m, x, generator=torch.Generator().manual_seed(1)),
        df.elbo.importance_weighted(m, x, 2, n_replicates=2, generator=torch.Generator().manual_seed(1)),
    ):
        assert est.extras["log_snr_interval"] == (float(lam[-1]), float(lam[1]))
        assert est.extras["t_min"] == 1.0 and est.extras["t_max"] == 50.0
    kl = df.elbo.kl_de_bruijn(g, m, n_samples=64, n_nodes=16, generator=torch.Generator().manual_seed(2))
    assert kl.extras["log_snr_interval"] == (float(T50.log_snr_range[0]), 30.0)
    net = df.models.MLPDenoiser(1, df.schedules.LiYan(), width=8, depth=1, seed=0)
    net.valid_log_snr = (-6.0, 7.0)
    kl = df.elbo.kl_de_bruijn(g, net, n_samples=64, n_nodes=16, generator=torch.Generator().manual_seed(2))
    assert kl.extras["log_snr_interval"] == (-6.0, 7.0)
    assert math.isfinite(float(kl.value[0]))
