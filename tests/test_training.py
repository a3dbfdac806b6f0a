"""Denoising losses (weightings I7/I8, time sampling) and the Trainer (exact resume, checkpoints)."""
from __future__ import annotations

import math
import os

import pytest
import torch

from densityformula import schedules, targets
from densityformula.models import AnalyticModel
from densityformula.neural import AffineDenoiser, ConditionalMLPDenoiser, MLPDenoiser
from densityformula.training import DenoisingLoss, Trainer, denoising_loss

F64 = torch.float64
LOG_2PI_E = math.log(2 * math.pi) + 1.0


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _gmm(d: int = 2, K: int = 3, seed: int = 1):
    return targets.random_gmm(d, K, seed=seed)


# -- weightings against independent formulas ------------------------------------------------------


def test_elbo_weighting_is_the_ddpm_elbo_of_i7():
    """Per step k, the "elbo" loss with uniform k equals T times the I7 term written in score form
    ``(1 - alpha_k)/(2 alpha_k) ||s_k(X_k) + (X_k - sqrt(abar_k) x)/(1 - abar_k)||^2``; with the
    constant, the mean over all k is -I7 (noise of norm sqrt(d) makes the control variate vanish)."""
    T, d = 60, 2
    sch = schedules.Discrete.ddpm_linear(T=T)
    gmm = _gmm(d)
    model = AnalyticModel(gmm, sch)
    g = _gen(0)
    x = gmm.sample(3, generator=g)
    xx = x.repeat_interleave(T, 0)
    k = torch.arange(1, T + 1, dtype=F64).repeat(3)
    z = torch.randn(xx.shape, generator=g, dtype=F64)
    z = z / z.norm(dim=1, keepdim=True) * math.sqrt(d)  # ||z||^2 = d exactly
    ours = DenoisingLoss(sch, "elbo")(model, xx, t=k, noise=z)
    # independent: I7 from the schedule's betas and the model's score
    betas = sch.betas
    ab = torch.cumprod(1 - betas, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=F64), ab[:-1]])
    ki = k.long() - 1
    a_k, abar, abar_prev = (1 - betas)[ki], ab[ki], ab_prev[ki]
    x_k = abar.sqrt()[:, None] * xx + (1 - abar).sqrt()[:, None] * z
    s = model.score(x_k, k)
    term = (1 - a_k) / (2 * a_k) * ((s + (x_k - abar.sqrt()[:, None] * xx) / (1 - abar)[:, None]) ** 2).sum(1)
    torch.testing.assert_close(ours, T * term, rtol=1e-9, atol=1e-12)
    with_const = DenoisingLoss(sch, "elbo", include_constant=True)(model, xx, t=k, noise=z).reshape(3, T).mean(1)
    minus_i7 = d / 2 * LOG_2PI_E + (term - d / 2 * (abar_prev - abar) / (1 - abar)).reshape(3, T).sum(1)
    torch.testing.assert_close(with_const, minus_i7, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sch", [schedules.LiYan(), schedules.VPLinear(), schedules.VE(), schedules.VPCosine()])
def test_elbo_weighting_is_the_continuous_denoiser_form_i8(sch):
    """Continuous "elbo" weight on the x0 error is ``-1/2 dsnr/dt`` (I8); dsnr/dt by central
    differences, independent of the schedule's g2.  For LiYan it is ``1/(2 t^2)`` (I6 denoiser form)."""
    gmm = _gmm()
    model = AnalyticModel(gmm, sch)
    g = _gen(1)
    n = 64
    x = gmm.sample(n, generator=g)
    lo, hi = sch.t_min, sch.t_max
    t = lo + (hi - lo) * (0.02 + 0.96 * torch.rand(n, generator=g, dtype=F64))
    z = torch.randn(n, 2, generator=g, dtype=F64)
    ours = DenoisingLoss(sch, "elbo")(model, x, t=t, noise=z)
    x_t = sch.alpha(t)[:, None] * x + sch.sigma(t)[:, None] * z
    err_x0 = ((x - model.denoise(x_t, t)) ** 2).sum(1)
    h = 1e-6 * (hi - lo)
    dsnr = (sch.snr(t + h) - sch.snr(t - h)) / (2 * h)
    torch.testing.assert_close(ours, (hi - lo) * (-0.5 * dsnr) * err_x0, rtol=1e-6, atol=1e-12)
    if isinstance(sch, schedules.LiYan):
        torch.testing.assert_close(ours, err_x0 / (2 * t**2), rtol=1e-9, atol=1e-12)


def test_other_weightings_against_their_definitions():
    sch = schedules.VPLinear()
    gmm = _gmm()
    model = AnalyticModel(gmm, sch)
    g = _gen(2)
    x = gmm.sample(50, generator=g)
    t = 0.01 + 0.98 * torch.rand(50, generator=g, dtype=F64)
    z = torch.randn(50, 2, generator=g, dtype=F64)
    a, s = sch.alpha(t)[:, None], sch.sigma(t)[:, None]
    x_t = a * x + s * z
    D = model.denoise(x_t, t)
    eps_loss = denoising_loss(model, x, "eps", t=t, noise=z)
    torch.testing.assert_close(eps_loss, ((z - (x_t - a * D) / s) ** 2).sum(1), rtol=1e-9, atol=1e-12)
    # sigma^2 ||s_theta - grad log q(x_t|x_0)||^2 equals the eps loss (I1)
    torch.testing.assert_close(denoising_loss(model, x, "sigma2", t=t, noise=z), eps_loss, rtol=1e-9, atol=1e-12)
    x0_loss = denoising_loss(model, x, "uniform", t=t, noise=z)
    torch.testing.assert_close(x0_loss, ((x - D) ** 2).sum(1), rtol=1e-12, atol=0)


@pytest.mark.parametrize("weighting", ["eps", "elbo", "uniform"])
@pytest.mark.parametrize(
    "sch", [schedules.VPLinear(), schedules.LiYan(), schedules.Discrete.ddpm_cosine(200)], ids=["vp", "liyan", "ddpm"]
)
def test_importance_sampling_estimates_the_same_objective(weighting, sch):
    """Uniform and importance-sampled times give the same expected loss (within 4.5 standard errors)."""
    gmm = _gmm()
    model = AnalyticModel(gmm, sch)
    n = 40_000
    res = []
    for ts, seed in (("uniform", 3), ("importance", 4)):
        g = _gen(seed)
        x = gmm.sample(n, generator=g)
        # LiYan: cut both ends (the elbo objective without its constant diverges at t -> 0)
        kw = {"t_range": (0.001, 0.999)} if isinstance(sch, schedules.LiYan) else {}
        loss = DenoisingLoss(sch, weighting, ts, **kw)
        t = loss.sample_t(n, g)
        assert float(t.min()) >= loss.lo and float(t.max()) <= loss.hi
        with torch.no_grad():
            v = loss(model, x, t=t, noise=torch.randn(n, 2, generator=g, dtype=F64))
        res.append((float(v.mean()), float(v.std()) / math.sqrt(n)))
    (m1, s1), (m2, s2) = res
    assert abs(m1 - m2) < 4.5 * math.hypot(s1, s2), res


@pytest.mark.parametrize("sch", [schedules.LiYan(), schedules.VPCosine()], ids=["liyan", "cosine"])
def test_elbo_with_constant_is_minus_log_density_for_the_exact_model(sch):
    """I5/I6: with the exact denoiser the "elbo" loss with its constant has mean -log q_0(x)."""
    gmm = _gmm()
    model = AnalyticModel(gmm, sch)
    g = _gen(5)
    x = gmm.sample(3, generator=g)
    M = 30_000
    loss = DenoisingLoss(sch, "elbo", "importance", include_constant=True)
    with torch.no_grad():
        v = loss(model, x.repeat_interleave(M, 0), generator=g).reshape(3, M)
    mean, se = v.mean(1), v.std(1) / math.sqrt(M)
    z = (mean + gmm.log_prob(x)) / se
    assert bool((z.abs() < 4.5).all()), (mean, se, -gmm.log_prob(x))
    assert bool((se < 0.05).all())


def test_time_sampling_ranges():
    sch = schedules.LiYan()
    g = _gen(6)
    t = DenoisingLoss(sch, "eps", "truncated", truncation=0.01).sample_t(10_000, g)
    assert float(t.min()) >= 0.01 and float(t.max()) <= 0.99 and float(t.min()) < 0.012
    t = DenoisingLoss(sch, "eps", "uniform", t_range=(0.2, 0.3)).sample_t(1000, g)
    assert float(t.min()) >= 0.2 and float(t.max()) <= 0.3
    dsch = schedules.Discrete.ddpm_linear(100)
    k = DenoisingLoss(dsch, "eps").sample_t(20_000, g)
    assert torch.equal(k, k.round()) and int(k.min()) == 1 and int(k.max()) == 100
    counts = torch.bincount(k.long(), minlength=101)[1:].double()
    chi2 = float(((counts - 200.0) ** 2 / 200.0).sum())
    assert chi2 < 99 + 5 * math.sqrt(2 * 99)  # uniform over 100 steps


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"weighting": "mse"}, ValueError),
        ({"time_sampling": "sobol"}, ValueError),
        ({"weighting": "eps", "include_constant": True}, ValueError),
        ({"t_range": (0.5, 0.2)}, ValueError),
        ({"t_range": (0.0, 2.0)}, ValueError),
        ({"t_range": "all"}, TypeError),
        ({"truncation": 0.7}, ValueError),
        ({"proposal_scale": 0.0}, ValueError),
    ],
)
def test_loss_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        DenoisingLoss(schedules.LiYan(), **kwargs)


def test_loss_bad_call_arguments():
    sch = schedules.LiYan()
    m = AnalyticModel(_gmm(), sch)
    loss = DenoisingLoss(sch)
    x = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="x0"):
        loss(m, torch.full((4, 2), float("nan"), dtype=F64))
    with pytest.raises(ValueError, match="noise"):
        loss(m, x, noise=torch.zeros(3, 2, dtype=F64))
    with pytest.raises(ValueError, match="t"):
        loss(m, x, t=torch.full((4,), 1.5, dtype=F64))
    with pytest.raises(ValueError, match="schedule"):
        loss(AnalyticModel(_gmm(), schedules.VPLinear()), x)
    with pytest.raises(TypeError, match="model"):
        loss("model", x)
    with pytest.raises(ValueError, match="integer"):
        DenoisingLoss(schedules.Discrete.ddpm_linear(50)).factor(torch.tensor([1.5], dtype=F64))


# -- trainer ------------------------------------------------------------------------------------


def _tiny(sch, **kw):
    return MLPDenoiser(2, sch, width=16, depth=2, seed=kw.pop("seed", 0), **kw)


def _trainer(model, data, path=None, **kw):
    opts = dict(steps=20, batch_size=32, lr=3e-3, device="cpu", seed=7, progress=False, ema_decay=0.9,
                time_sampling="importance", checkpoint_path=path)
    opts.update(kw)
    return Trainer(model, data, **opts)


def _assert_same_state(a: Trainer, b: Trainer):
    for (na, pa), (nb, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        # ``_extra_state`` (the recorded valid_log_snr) is a dict, the rest tensors
        assert na == nb and (torch.equal(pa, pb) if isinstance(pa, torch.Tensor) else pa == pb), na
    for pa, pb in zip(a.ema.parameters(), b.ema.parameters()):
        assert torch.equal(pa, pb)
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    for k in sa:
        for key in sa[k]:
            assert torch.equal(torch.as_tensor(sa[k][key]), torch.as_tensor(sb[k][key]))
    assert a.history == b.history and a.step == b.step
    assert torch.equal(a.noise_generator.get_state(), b.noise_generator.get_state())


@pytest.mark.parametrize("source", ["target", "tensor"])
def test_resume_is_bitwise_identical(tmp_path, source):
    sch = schedules.VPLinear()
    gmm = _gmm()
    # 100 rows = 3 batches per epoch: the resume lands mid-epoch
    data = gmm if source == "target" else gmm.sample(100, generator=_gen(0)).float()
    full = _trainer(_tiny(sch), data)
    full.train()
    part = _trainer(_tiny(sch), data, tmp_path / "ck.pt")
    part.train(until=11)
    assert (tmp_path / "ck.pt").is_file()
    assert not [p for p in os.listdir(tmp_path) if p != "ck.pt"]  # the temporary file was replaced
    # a fresh process would build a fresh model (another init seed proves the weights are loaded)
    resumed = _trainer(_tiny(sch, seed=99), data, tmp_path / "ck.pt", resume_from=tmp_path / "ck.pt")
    assert resumed.step == 11
    resumed.train()
    _assert_same_state(full, resumed)
    # and the checkpoint written at the end reloads to the same state
    again = _trainer(_tiny(sch, seed=5), data, tmp_path / "ck.pt", resume_from=tmp_path / "ck.pt")
    _assert_same_state(full, again)


def test_training_changes_parameters_and_lowers_the_loss():
    sch = schedules.VPLinear()
    gmm = _gmm()
    tr = _trainer(_tiny(sch), gmm, steps=150, batch_size=128, ema_decay=None, time_sampling="uniform")
    hist = tr.train()
    first = sum(v for _, v in hist[:20]) / 20
    last = sum(v for _, v in hist[-20:]) / 20
    assert last < 0.8 * first, (first, last)


def test_checkpoints_are_never_overwritten_unless_asked(tmp_path):
    sch = schedules.LiYan()
    gmm = _gmm()
    path = tmp_path / "run.pt"
    _trainer(_tiny(sch), gmm, path, steps=2).train()
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        _trainer(_tiny(sch), gmm, path, steps=2)
    assert path.read_bytes() == before
    tr = _trainer(_tiny(sch), gmm, tmp_path / "other.pt", steps=2)
    with pytest.raises(FileExistsError):
        tr.save_checkpoint(path)
    tr.save_checkpoint(path, overwrite=True)
    _trainer(_tiny(sch), gmm, path, steps=2, overwrite=True)  # allowed when asked
    with pytest.raises(ValueError, match="configuration"):
        _trainer(_tiny(sch), gmm, tmp_path / "x.pt", steps=2, lr=1e-2, resume_from=path)
    with pytest.raises(FileNotFoundError):
        _trainer(_tiny(sch), gmm, steps=2, resume_from=tmp_path / "missing.pt")


def test_conditional_training_with_label_dropout_and_labelled_tensors():
    sch = schedules.LiYan()
    gmm = _gmm(K=3)
    model = ConditionalMLPDenoiser(2, sch, num_classes=3, width=16, depth=2)
    tr = Trainer(model, gmm, steps=5, batch_size=16, device="cpu", progress=False, label_dropout=0.2)
    tr.train()
    x, y = gmm.sample(64, generator=_gen(0), return_labels=True)
    tr2 = Trainer(ConditionalMLPDenoiser(2, sch, num_classes=3, width=16, depth=2), (x.float(), y), steps=3,
                  batch_size=16, device="cpu", progress=False)
    tr2.train()
    assert tr2.step == 3


def test_affine_denoiser_trained_on_gaussian_data_recovers_the_exact_posterior_mean():
    """Each step's affine map minimises its own quadratic loss, whose minimiser is the exact
    Gaussian posterior mean (I3 with K = 1) whatever the weighting."""
    sch = schedules.Discrete(torch.linspace(0.05, 0.5, 10, dtype=F64))
    mu = torch.tensor([0.5, -0.3], dtype=F64)
    S = torch.tensor([[1.0, 0.4], [0.4, 0.6]], dtype=F64)
    exact = AffineDenoiser.from_gaussian(mu, S, sch)
    tr = Trainer(AffineDenoiser(2, sch, init="zero"), targets.Gaussian(mu, S), steps=400, batch_size=1024, lr=3e-2,
                 ema_decay=None, grad_clip=None, device="cpu", progress=False, weighting="elbo", seed=0)
    tr.train()
    assert tr.model.A.dtype == F64
    with torch.no_grad():
        err_A = float((tr.model.A - exact.A)[1:].abs().max())
        err_b = float((tr.model.b - exact.b)[1:].abs().max())
    assert float(exact.A.detach()[1:].abs().max()) > 0.9  # far from the zero start
    assert err_A < 0.05 and err_b < 0.05, (err_A, err_b)  # observed 0.014: SGD noise of ~40k draws per step


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"steps": 0}, ValueError),
        ({"batch_size": 0}, ValueError),
        ({"lr": -1.0}, ValueError),
        ({"lr_schedule": "step"}, ValueError),
        ({"ema_decay": 1.0}, ValueError),
        ({"mixed_precision": "fp8"}, ValueError),
        ({"grad_clip": 0.0}, ValueError),
        ({"label_dropout": 0.5}, ValueError),  # needs labels and a conditional model
        ({"device": "tpu:9"}, ValueError),
    ],
)
def test_trainer_bad_arguments(kwargs, exc):
    opts = dict(steps=2, device="cpu", progress=False)
    opts.update(kwargs)
    with pytest.raises(exc):
        Trainer(_tiny(schedules.LiYan()), _gmm(), **opts)


def test_trainer_bad_data_and_models():
    sch = schedules.LiYan()
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(_tiny(sch), torch.zeros(10, 2), steps=2, batch_size=32, device="cpu")
    with pytest.raises(ValueError, match="NaN"):
        Trainer(_tiny(sch), torch.full((64, 2), float("nan")), steps=2, batch_size=32, device="cpu")
    with pytest.raises(TypeError, match="data"):
        Trainer(_tiny(sch), [[0.0, 1.0]] * 64, steps=2, device="cpu")
    with pytest.raises(TypeError, match="model"):
        Trainer(AnalyticModel(_gmm(), sch), _gmm(), steps=2, device="cpu")
    with pytest.raises(ValueError, match="schedule"):
        Trainer(_tiny(sch), _gmm(), steps=2, device="cpu", loss=DenoisingLoss(schedules.VPLinear()))
    with pytest.warns(UserWarning, match="mixed_precision"):
        Trainer(_tiny(sch), _gmm(), steps=2, device="cpu", mixed_precision=True)
    with pytest.raises(ValueError, match="until"):
        Trainer(_tiny(sch), _gmm(), steps=2, device="cpu", progress=False).train(until=3)


def test_device_auto_resolves():
    tr = Trainer(_tiny(schedules.LiYan()), _gmm(), steps=1, device="auto", progress=False)
    assert tr.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
