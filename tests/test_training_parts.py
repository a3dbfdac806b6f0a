"""The parts of densityformula.training: time samplers (I23), weightings (I22), objectives, the
DenoisingLoss facade against a straightforward re-derivation, data sources, EMA, checkpoints,
the trained log-SNR range (I24) and exact kill-and-resume for every time sampler."""
from __future__ import annotations

import math
import os

import pytest
import torch

from densityformula import schedules, targets
from densityformula.models import AnalyticModel
from densityformula.neural import AffineDenoiser, MLPDenoiser
from densityformula.training import (
    EMA,
    Checkpointer,
    DenoiserLoss,
    DenoisingLoss,
    ELBOLoss,
    ELBOWeight,
    EpsLoss,
    LogisticLogSNR,
    LogisticSteps,
    NoisyBatch,
    SampledData,
    ScoreLoss,
    TensorData,
    TimeAverage,
    Trainer,
    UniformLogSNR,
    UniformSteps,
    UniformTime,
    WeightedLoss,
    load_checkpoint,
    log_snr_speed,
    time_sampler,
    truncated_range,
)

F64 = torch.float64
LOG_2PI_E = math.log(2 * math.pi) + 1.0
VP = schedules.VPLinear()
LY = schedules.LiYan()
DD = schedules.Discrete.ddpm_linear(50)


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


GMM = targets.random_gmm(2, 3, seed=1)


# -- the facade against a straightforward re-derivation -------------------------------------------


def _reference(sch, weighting, time_sampling, model, x0, g, t_range=None, include_constant=False):
    """The loss of the module docstring's table written out directly (same order of draws)."""
    n = x0.shape[0]
    if t_range is None:
        cut = 1e-3 * (sch.t_max - sch.t_min) if time_sampling == "truncated" else 0.0
        lo, hi = sch.t_min + cut, sch.t_max - cut
    else:
        lo, hi = t_range
    if isinstance(sch, schedules.Discrete):
        ks = torch.arange(max(1, math.ceil(lo)), min(sch.T, math.floor(hi)) + 1)
        if time_sampling == "importance":
            F = torch.sigmoid(sch.log_snrs / 2.0)  # loc 0, scale 2
            p = F[ks - 1] - F[ks]
            p = p / p.sum()
        else:
            p = torch.full((ks.numel(),), 1.0 / ks.numel(), dtype=F64)
        i = torch.multinomial(p, n, replacement=True, generator=g)
        t = ks[i].to(F64)
        beta, abar = sch.betas[ks[i] - 1], sch.alpha_bars[ks[i]]
        flat = torch.full((n,), 1.0 / ks.numel(), dtype=F64)
        rho = beta / (2 * (1 - beta) * (1 - abar)) if weighting == "elbo" else flat
        fac = rho / p[i]
    else:
        u = torch.rand(n, generator=g, dtype=F64).clamp(1e-12, 1 - 1e-12)
        speed = lambda tt: sch.g2(tt) / sch.sigma2(tt)  # -dlambda/dt  # noqa: E731
        if time_sampling == "importance":
            Fa, Fb = (float(torch.sigmoid(sch.log_snr(v) / 2.0)) for v in (hi, lo))
            v = Fa + (Fb - Fa) * u
            lam = (2.0 * torch.logit(v)).clamp(float(sch.log_snr(hi)), float(sch.log_snr(lo)))
            t = sch.t_from_log_snr(lam).clamp(lo, hi)
            z = sch.log_snr(t) / 2.0
            p = torch.sigmoid(z) * torch.sigmoid(-z) / 2.0 * speed(t) / (Fb - Fa)
        else:
            t = lo + (hi - lo) * u
            p = torch.full((n,), 1.0 / (hi - lo), dtype=F64)
        rho = 0.5 * speed(t) if weighting == "elbo" else torch.full((n,), 1.0 / (hi - lo), dtype=F64)
        fac = rho / p
    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    a, s = sch.alpha(t)[:, None], sch.sigma(t)[:, None]
    x_t = a * x0 + s * eps
    if weighting in ("eps", "elbo"):
        err = ((eps - model.eps(x_t, t)) ** 2).sum(1)
    elif weighting == "sigma2":
        err = (s[:, 0] ** 2) * ((model.score(x_t, t) + eps / s) ** 2).sum(1)
    else:
        err = ((x0 - model.denoise(x_t, t)) ** 2).sum(1)
    if include_constant:
        sig = sch.alpha2(t) / (sch.alpha2(t) + sch.sigma2(t))
        return x0.shape[1] / 2 * LOG_2PI_E + fac * (err - sig * (eps**2).sum(1))
    return fac * err


@pytest.mark.parametrize("weighting", ["eps", "elbo", "sigma2", "uniform"])
@pytest.mark.parametrize("time_sampling", ["uniform", "importance", "truncated"])
@pytest.mark.parametrize("sch", [VP, schedules.VE(), LY, DD], ids=["vp", "ve", "liyan", "ddpm"])
def test_denoising_loss_equals_the_rederived_loss(weighting, time_sampling, sch):
    t_range = (0.001, 0.999) if isinstance(sch, schedules.LiYan) else None
    model = AnalyticModel(GMM, sch)
    x0 = GMM.sample(300, generator=_gen(0))
    for include_constant in (False, True) if weighting == "elbo" else (False,):
        loss = DenoisingLoss(sch, weighting, time_sampling, t_range=t_range, include_constant=include_constant)
        ours = loss(model, x0, generator=_gen(1))
        ref = _reference(sch, weighting, time_sampling, model, x0, _gen(1), t_range, include_constant)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_parts_compose_to_the_facade_bitwise():
    model = AnalyticModel(GMM, VP)
    x0 = GMM.sample(200, generator=_gen(0))
    pairs = [
        (DenoisingLoss(VP, "elbo", "importance"), WeightedLoss(EpsLoss(), ELBOWeight(), LogisticLogSNR(VP))),
        (DenoisingLoss(VP, "sigma2"), WeightedLoss(ScoreLoss(), TimeAverage(), UniformTime(VP))),
        (DenoisingLoss(VP, "uniform", "truncated"), WeightedLoss(DenoiserLoss(), TimeAverage(),
                                                                 UniformTime(VP, truncated_range(VP)))),
        (DenoisingLoss(VP, "elbo", include_constant=True), WeightedLoss(ELBOLoss(VP), ELBOWeight(), UniformTime(VP))),
        (DenoisingLoss(DD, "elbo", "importance"), WeightedLoss(EpsLoss(), ELBOWeight(), LogisticSteps(DD))),
    ]
    for facade, parts in pairs:
        m = model if facade.schedule is VP else AnalyticModel(GMM, facade.schedule)
        assert torch.equal(facade(m, x0, generator=_gen(2)), parts(m, x0, generator=_gen(2)))
        assert facade.config() == parts.config()


def test_dsm_is_explicit_score_matching_plus_a_constant():
    """I22 (Vincent 2011): for every score model ``E||s - grad log q(x_t|x_0)||^2 - E||s - grad log q_t||^2
    = d / sigma^2 - E||grad log q_t||^2``, the same constant; ``ScoreLoss`` is sigma^2 times the first term."""
    t, n = 0.3, 200_000
    g = _gen(8)
    x0 = GMM.sample(n, generator=g)
    tt = torch.full((n,), t, dtype=F64)
    batch = NoisyBatch.make(VP, x0, tt, torch.randn(x0.shape, generator=g, dtype=F64))
    s_true = AnalyticModel(GMM, VP).score(batch.x_t, tt)
    s2 = float(VP.sigma2(t))
    const = 2 / s2 - float((s_true**2).sum(1).mean())
    for model in (AnalyticModel(GMM, VP), AnalyticModel(targets.random_gmm(2, 3, seed=7), VP)):
        dsm = ScoreLoss()(model, batch) / s2
        esm = ((model.score(batch.x_t, tt) - s_true) ** 2).sum(1)
        diff = dsm - esm
        se = float(diff.std()) / math.sqrt(n)
        assert abs(float(diff.mean()) - const) < 4.5 * se, (float(diff.mean()), const, se)
        assert float(esm.mean()) > 0.1 or model.target is GMM  # the second model's score is wrong


# -- time samplers ---------------------------------------------------------------------------------


CONTINUOUS = {
    "uniform": lambda: UniformTime(VP, (0.05, 0.9)),
    "importance": lambda: LogisticLogSNR(VP, 1.0, 1.5, (0.02, 1.0)),
    "uniform_log_snr": lambda: UniformLogSNR(schedules.VE()),
    "importance_liyan": lambda: LogisticLogSNR(LY),
}


@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_continuous_samplers_draw_from_their_density(name):
    """p(t) integrates to 1 over [lo, hi] and the draws follow it (Kolmogorov-Smirnov distance)."""
    s = CONTINUOUS[name]()
    # a grid fine both in t and in log-SNR (the density may be singular like t^(-1/2) at an end)
    lam_lo, lam_hi = (max(-60.0, min(60.0, v)) for v in s.log_snr_support)
    grid = torch.cat([torch.linspace(s.lo, s.hi, 100_001, dtype=F64),
                      s.schedule.t_from_log_snr(torch.linspace(lam_lo, lam_hi, 100_001, dtype=F64))])
    grid = grid.clamp(s.lo, s.hi).unique()
    grid = grid[(grid > s.schedule.t_min) & (grid < s.schedule.t_max)]
    p = s.density(grid)
    cdf = torch.cat([torch.zeros(1, dtype=F64), torch.cumulative_trapezoid(p, grid)])
    assert abs(float(cdf[-1]) - 1.0) < 1e-4, float(cdf[-1])
    t = s.sample(20_000, _gen(3)).sort().values
    assert float(t.min()) >= s.lo and float(t.max()) <= s.hi
    ecdf = torch.arange(1, t.numel() + 1, dtype=F64) / t.numel()
    model_cdf = torch.from_numpy(__import__("numpy").interp(t.numpy(), grid.numpy(), cdf.numpy()))
    assert float((ecdf - model_cdf).abs().max()) < 1.63 / math.sqrt(t.numel())  # KS at 1%


def test_log_snr_speed_is_minus_dlambda_dt():
    for sch in (VP, LY, schedules.VE(), schedules.VPCosine(), schedules.SubVP()):
        t = torch.linspace(0.05, 0.95, 19, dtype=F64)
        h = 1e-6
        fd = -(sch.log_snr(t + h) - sch.log_snr(t - h)) / (2 * h)
        torch.testing.assert_close(log_snr_speed(sch, t), fd, rtol=1e-6, atol=0)


def test_step_samplers():
    uni = UniformSteps(DD, (2.5, 40.0))
    assert (uni.lo, uni.hi) == (3.0, 40.0) and torch.equal(uni.steps, torch.arange(3, 41))
    imp = LogisticSteps(DD, 1.0, 3.0)
    for s in (uni, imp):
        assert abs(float(s.probs.sum()) - 1.0) < 1e-14
        k = s.sample(30_000, _gen(4))
        assert torch.equal(k, k.round()) and float(k.min()) >= s.lo and float(k.max()) <= s.hi
        freq = torch.bincount(k.long() - int(s.lo), minlength=s.steps.numel()).double() / k.numel()
        assert float((freq - s.probs).abs().max()) < 0.01
        torch.testing.assert_close(s.density(s.steps.double()), s.probs, rtol=0, atol=0)
    # p_k is the logistic mass of (lambda_k, lambda_{k-1}]
    lam = DD.log_snrs
    k = 10
    mass = torch.sigmoid((lam[k - 1] - 1.0) / 3.0) - torch.sigmoid((lam[k] - 1.0) / 3.0)
    total = torch.sigmoid((lam[0] - 1.0) / 3.0) - torch.sigmoid((lam[DD.T] - 1.0) / 3.0)
    torch.testing.assert_close(imp.probs[k - 1], mass / total, rtol=1e-12, atol=0)


def test_log_snr_support_of_every_sampler():
    assert UniformTime(VP, (0.1, 0.9)).log_snr_support == (float(VP.log_snr(0.9)), float(VP.log_snr(0.1)))
    assert UniformTime(VP).log_snr_support == (VP.log_snr_range[0], math.inf)
    assert LogisticLogSNR(LY).log_snr_support == (-math.inf, math.inf)
    assert UniformLogSNR(VP, (0.01, 1.0)).log_snr_support == (float(VP.log_snr(1.0)), float(VP.log_snr(0.01)))
    lam = DD.log_snrs
    assert UniformSteps(DD).log_snr_support == (float(lam[DD.T]), float(lam[1]))  # steps 1..T
    assert LogisticSteps(DD, t_range=(5, 20)).log_snr_support == (float(lam[20]), float(lam[5]))
    assert DenoisingLoss(VP, "eps", "truncated").log_snr_support == UniformTime(VP, truncated_range(VP)).log_snr_support


def test_time_sampler_by_name_and_bad_arguments():
    assert isinstance(time_sampler(VP, "importance"), LogisticLogSNR)
    assert isinstance(time_sampler(DD, "importance"), LogisticSteps)
    assert isinstance(time_sampler(DD, "truncated"), UniformSteps)
    assert isinstance(time_sampler(schedules.VE(), "uniform_log_snr"), UniformLogSNR)
    with pytest.raises(ValueError, match="finite log-SNR"):
        UniformLogSNR(LY)
    with pytest.raises(ValueError, match="time_sampling"):
        time_sampler(VP, "sobol")
    with pytest.raises(TypeError, match="Discrete"):
        UniformTime(DD)
    with pytest.raises(TypeError, match="schedule"):
        UniformSteps(VP)
    with pytest.raises(ValueError, match="proposal_scale"):
        LogisticLogSNR(VP, scale=-1.0)
    with pytest.raises(ValueError, match="n must"):
        UniformTime(VP).sample(-1)
    with pytest.raises(TypeError, match="objective"):
        WeightedLoss("eps", TimeAverage(), UniformTime(VP))  # type: ignore[arg-type]


def test_uniform_log_snr_estimates_the_same_objective_as_uniform_time():
    sch = schedules.VE()
    model = AnalyticModel(GMM, sch)
    n = 40_000
    res = []
    for sampler, seed in ((UniformTime(sch), 5), (UniformLogSNR(sch), 6)):
        loss = WeightedLoss(EpsLoss(), ELBOWeight(), sampler)
        x0 = GMM.sample(n, generator=_gen(seed))
        with torch.no_grad():
            v = loss(model, x0, generator=_gen(seed + 10))
        res.append((float(v.mean()), float(v.std()) / math.sqrt(n)))
    (m1, s1), (m2, s2) = res
    assert abs(m1 - m2) < 4.5 * math.hypot(s1, s2), res


# -- data sources, EMA, checkpointer ---------------------------------------------------------------


def test_tensor_data_resumes_mid_epoch():
    x = torch.randn(10, 2, generator=_gen(0))
    a = TensorData(x, seed=3)
    batches = [a.next_batch(4)[0] for _ in range(3)]
    b = TensorData(x, seed=3)
    b.next_batch(4)
    state = b.state_dict()
    c = TensorData(x, seed=99)
    c.load_state_dict(state)
    assert torch.equal(c.next_batch(4)[0], batches[1]) and torch.equal(c.next_batch(4)[0], batches[2])
    with pytest.raises(ValueError, match="batch_size"):
        a.next_batch(11)


def test_sampled_data_from_a_callable_and_from_a_target():
    def draw(n, generator):
        return torch.randn(n, 2, generator=generator, dtype=F64), torch.zeros(n, dtype=torch.long)

    src = SampledData(draw, labelled=True, seed=1, dtype=torch.float32)
    x, y = src.next_batch(5)
    assert x.dtype == torch.float32 and y.shape == (5,)
    tgt = SampledData.from_target(GMM, seed=1)
    state = tgt.state_dict()
    first = tgt.next_batch(7)[0]
    tgt.load_state_dict(state)
    assert torch.equal(tgt.next_batch(7)[0], first)
    assert torch.equal(first, GMM.sample(7, generator=_gen(1)))
    with pytest.raises(TypeError, match="pair"):
        SampledData(lambda n, generator: torch.zeros(n, 2), labelled=True).next_batch(3)
    with pytest.raises(TypeError, match="sample"):
        SampledData.from_target(object())


def test_ema_update_and_state():
    net = MLPDenoiser(2, VP, width=8, depth=1, zero_init_output=False)
    ema = EMA(net, 0.9)
    assert ema.module.schedule is net.schedule and not any(p.requires_grad for p in ema.module.parameters())
    before = [p.detach().clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net, step=1)
    d = min(0.9, 2.0 / 11.0)
    for pe, p0, p in zip(ema.module.parameters(), before, net.parameters()):
        torch.testing.assert_close(pe, d * p0 + (1 - d) * p, rtol=1e-6, atol=1e-6)
    other = EMA(MLPDenoiser(2, VP, width=8, depth=1, seed=5), 0.9)
    other.load_state_dict(ema.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(other.module.parameters(), ema.module.parameters()))
    with pytest.raises(ValueError, match="ema_decay"):
        EMA(net, 1.0)


def test_checkpointer_writes_atomically_and_refuses_to_overwrite(tmp_path):
    ck = Checkpointer(tmp_path / "a.pt", every=3)
    assert [ck.due(k) for k in range(1, 7)] == [False, False, True, False, False, True]
    ck.save({"format": "densityformula.trainer/2", "x": 1})
    assert os.listdir(tmp_path) == ["a.pt"] and load_checkpoint(tmp_path / "a.pt")["x"] == 1
    with pytest.raises(FileExistsError):
        ck.check_fresh_start(None)
    ck.check_fresh_start(tmp_path / "a.pt")  # resuming it is fine
    with pytest.raises(FileExistsError):
        Checkpointer(tmp_path / "b.pt").save({}, tmp_path / "a.pt")
    torch.save({"format": "other"}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="not a densityformula"):
        load_checkpoint(tmp_path / "c.pt")
    with pytest.raises(ValueError, match="checkpoint_every"):
        Checkpointer(tmp_path / "d.pt", every=-1)


# -- the trainer over parts: recorded log-SNR range, kill-and-resume --------------------------------

X100 = GMM.sample(100, generator=_gen(0)).float()  # 3 batches of 32 per epoch: resumes land mid-epoch

SAMPLERS = {
    "uniform": lambda: UniformTime(VP),
    "truncated": lambda: UniformTime(VP, truncated_range(VP, 0.01)),
    "importance": lambda: LogisticLogSNR(VP, 0.5, 1.5),
    "uniform_log_snr": lambda: UniformLogSNR(VP, (0.01, 1.0)),
    "steps": lambda: UniformSteps(DD),
    "logistic_steps": lambda: LogisticSteps(DD, 0.0, 3.0, (5, 40)),
}


def _parts_trainer(sampler, path, *, model_seed=0, resume_from=None, steps=12):
    sch = sampler.schedule
    model = MLPDenoiser(2, sch, width=16, depth=2, seed=model_seed)
    weighting = ELBOWeight() if sampler.kind == "importance" else TimeAverage()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    lr = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1.0 + 0.1 * k))
    return Trainer.from_parts(
        model, TensorData(X100, seed=3), WeightedLoss(EpsLoss(), weighting, sampler), steps=steps, batch_size=32,
        optimizer=opt, lr_scheduler=lr, ema=0.9, checkpointer=Checkpointer(path, every=4), grad_clip=1.0,
        noise_seed=11, device="cpu", resume_from=resume_from,
    )


def _same(a: Trainer, b: Trainer) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert (torch.equal(sa[k], sb[k]) if isinstance(sa[k], torch.Tensor) else sa[k] == sb[k]), k
    assert all(torch.equal(p, q) for p, q in zip(a.ema.parameters(), b.ema.parameters()))
    assert a.history == b.history and a.step == b.step
    assert torch.equal(a.noise_generator.get_state(), b.noise_generator.get_state())
    assert torch.equal(a.data_generator.get_state(), b.data_generator.get_state())


def _interrupt_at(trainer: Trainer, step: int) -> None:
    """Run ``trainer.train()`` and kill it (KeyboardInterrupt, no final checkpoint) before ``step``."""
    original = trainer.train_step

    def train_step() -> float:
        if trainer.step == step:
            raise KeyboardInterrupt
        return original()

    trainer.train_step = train_step  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        trainer.train()


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_kill_and_resume_is_bitwise_identical_for_every_time_sampler(tmp_path, name):
    full = _parts_trainer(SAMPLERS[name](), tmp_path / "full.pt")
    full.train()
    killed = _parts_trainer(SAMPLERS[name](), tmp_path / "run.pt")
    _interrupt_at(killed, 7)  # the checkpoint on disk is the one of step 4
    resumed = _parts_trainer(SAMPLERS[name](), tmp_path / "run.pt", model_seed=99, resume_from=tmp_path / "run.pt")
    assert resumed.step == 4
    resumed.train()
    _same(full, resumed)
    assert sorted(os.listdir(tmp_path)) == ["full.pt", "run.pt"]


@pytest.mark.parametrize("name", ["truncated", "logistic_steps"])
def test_trained_log_snr_range_is_recorded_and_survives_save_and_load(tmp_path, name):
    sampler = SAMPLERS[name]()
    tr = _parts_trainer(sampler, tmp_path / "ck.pt", steps=3)
    tr.train()
    support = sampler.log_snr_support
    assert math.isfinite(support[0]) and math.isfinite(support[1])
    assert tr.model.valid_log_snr == support and tr.ema.valid_log_snr == support and tr.valid_log_snr == support
    state = torch.load(tmp_path / "ck.pt", map_location="cpu", weights_only=True)
    assert tuple(state["valid_log_snr"]) == support
    for key in ("model", "ema"):
        fresh = MLPDenoiser(2, sampler.schedule, width=16, depth=2, seed=5)
        assert fresh.valid_log_snr == (-math.inf, math.inf)
        fresh.load_state_dict(state[key])
        assert fresh.valid_log_snr == support
    # resuming restores it on a fresh model
    resumed = _parts_trainer(SAMPLERS[name](), tmp_path / "ck.pt", model_seed=7, resume_from=tmp_path / "ck.pt")
    assert resumed.model.valid_log_snr == support
    # an analytic-range model (no settable property) is left alone
    dd_tr = Trainer(AffineDenoiser(2, DD, init="zero"), targets.Gaussian(torch.zeros(2, dtype=F64),
                    torch.eye(2, dtype=F64)), steps=1, batch_size=8, device="cpu", progress=False)
    assert dd_tr.model.valid_log_snr == (-math.inf, math.inf)
    assert dd_tr.valid_log_snr == UniformSteps(DD).log_snr_support


def test_keyword_trainer_records_the_range_of_its_loss():
    tr = Trainer(MLPDenoiser(2, VP, width=8, depth=1), GMM, steps=1, device="cpu", progress=False,
                 time_sampling="truncated")
    assert tr.model.valid_log_snr == DenoisingLoss(VP, "eps", "truncated").log_snr_support
    assert tr.state_dict()["config"]["valid_log_snr"] == tr.model.valid_log_snr


def test_from_parts_equals_the_keyword_constructor_bitwise():
    kw = dict(steps=8, batch_size=32, lr=3e-3, ema_decay=0.9, lr_schedule="constant", grad_clip=1.0, seed=4,
              device="cpu", progress=False, time_sampling="importance", weighting="elbo")
    a = Trainer(MLPDenoiser(2, VP, width=16, depth=2), X100, **kw)
    model = MLPDenoiser(2, VP, width=16, depth=2)
    b = Trainer.from_parts(
        model, TensorData(X100, seed=4), WeightedLoss(EpsLoss(), ELBOWeight(), LogisticLogSNR(VP)), steps=8,
        batch_size=32, optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0), ema=EMA(model, 0.9),
        grad_clip=1.0, noise_seed=5, device="cpu",
    )
    a.train()
    b.train()
    _same(a, b)


def test_format_1_checkpoints_still_resume(tmp_path):
    """A checkpoint of the single-module trainer (format /1: data state in three keys, no recorded
    range) resumes exactly, and the range comes from the loss."""
    kw = dict(steps=10, batch_size=32, lr=3e-3, ema_decay=0.9, device="cpu", seed=2, progress=False)
    full = Trainer(MLPDenoiser(2, VP, width=16, depth=2), X100, **kw)
    full.train()
    part = Trainer(MLPDenoiser(2, VP, width=16, depth=2), X100, **kw)
    part.train(until=5)
    state = part.state_dict()
    data = state.pop("data")
    state.update(format="densityformula.trainer/1", data_generator=data["generator"], data_perm=data["perm"],
                 data_pos=data["pos"])
    del state["valid_log_snr"]
    for key in ("model", "ema"):
        del state[key]["_extra_state"]
    state["config"] = {k: v for k, v in state["config"].items() if k not in ("loss", "valid_log_snr")}
    torch.save(state, tmp_path / "old.pt")
    resumed = Trainer(MLPDenoiser(2, VP, width=16, depth=2, seed=9), X100, resume_from=tmp_path / "old.pt", **kw)
    assert resumed.model.valid_log_snr == full.model.valid_log_snr
    resumed.train()
    _same(full, resumed)


def test_from_parts_bad_arguments():
    model = MLPDenoiser(2, VP, width=8, depth=1)
    loss = DenoisingLoss(VP)
    with pytest.raises(TypeError, match="data"):
        Trainer.from_parts(model, X100, loss, steps=2, batch_size=8, device="cpu")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loss"):
        Trainer.from_parts(model, TensorData(X100), "eps", steps=2, batch_size=8, device="cpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="schedule"):
        Trainer.from_parts(model, TensorData(X100), DenoisingLoss(LY), steps=2, batch_size=8, device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        Trainer.from_parts(model, TensorData(X100), loss, steps=2, batch_size=101, device="cpu")
    with pytest.raises(ValueError, match="steps"):
        Trainer.from_parts(model, TensorData(X100), loss, steps=0, batch_size=8, device="cpu")


@pytest.mark.parametrize("make", [lambda s: UniformTime(s), lambda s: LogisticLogSNR(s)], ids=["uniform", "logistic"])
@pytest.mark.parametrize("sched", [LY, schedules.VPCosine()], ids=["liyan", "cosine"])
def test_trained_range_cuts_an_infinite_noisy_end_at_the_draws_quantile(make, sched):
    """I24: below the recorded noisy end lies NOISY_TAIL of the training draws (checked by simulation,
    tolerance 5 binomial standard errors); the clean end stays the support's."""
    from densityformula.training.time_sampling import NOISY_TAIL

    s = make(sched)
    lo, hi = s.trained_log_snr_range
    assert math.isfinite(lo) and hi == s.log_snr_support[1]
    n = 400_000
    lam = sched.log_snr(s.sample(n, torch.Generator().manual_seed(3)))
    frac = float((lam < lo).double().mean())
    se = math.sqrt(NOISY_TAIL * (1 - NOISY_TAIL) / n)
    assert abs(frac - NOISY_TAIL) < 5 * se
    # negative control: a range cut 1 nat lower would hold visibly fewer draws below it
    assert float((lam < lo - 1.0).double().mean()) < NOISY_TAIL - 5 * se


def test_trained_range_keeps_a_finite_noisy_end():
    assert UniformTime(VP).trained_log_snr_range == UniformTime(VP).log_snr_support
