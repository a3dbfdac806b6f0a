"""A trained model's bits/dim on the 8x8 digits by every estimator, side by side (issue 14, experiment 1).

A small-scale counterpart of Song et al.'s likelihood table.  Two MLP denoisers are trained on the
packaged digits (:mod:`densityformula.data`: 1797 images of 64 pixel counts ``v in {0..16}``,
uniformly dequantized afresh at every step, ``x = -1 + 2 (v + u) / 17``), one with the eps weighting
(Ho et al.) and one with the likelihood (ELBO) weighting, on the same VPCosine schedule.  On the same
held-out points (the test part of ``digits_split(0.2, seed)``, dequantized once) every estimator of
the toolkit is run:

* the probability-flow ODE likelihood (I12) with the exact trace, with Hutchinson's estimator and with
  Hutch++ (I34): the exact log-density of the ODE model;
* the continuous-time ELBO (I8) by the density formula (``df.elbo.continuous`` =
  ``df.density_formula`` with the network's denoiser, quadrature in log-SNR) and, independently, by
  Monte Carlo of the ELBO-weighted training loss with its constant (I22; log-SNR stratified):
  a lower bound on the model's reverse-SDE output density;
* the DDPM ELBO (I9) of the model's ``T``-step ancestral sampler (exact Gaussian KLs) and the
  importance-weighted bounds ``IW_k`` (I10) of the same sampler.

Every estimator works on one common log-SNR interval ``LAMBDA = (-12, 9)``, the one the networks
are trained on: the PF ODE runs from ``t(9)`` to ``t(-12)`` (prior ``N(0, sigma^2 I)``), the
density formula integrates over it without tail extrapolation, the training-loss ELBO samples it and
the DDPM grid is uniform in log-SNR on it.  So every number is the log-density (or a bound on the
log-density) of a proper model on R^64 at the clean data; at ``lambda = 9`` the noise
``sigma = 0.011`` is a third of the dequantization's within-bin standard deviation
``(2/17)/sqrt(12) = 0.034``.

Bits/dim: ``bpd = -(log p_X(x) + 64 log(2/17)) / (64 log 2)`` (``df.bits_per_dim`` with
``data_scale = 2/17``; ``64 log(2/17) = -136.96`` nats is ``log|det dx/dc|`` of the map from
dequantized counts ``c = v + u`` to ``x``).  With ``u ~ U[0, 1)^64``, ``E_u log p_C(v + u) <= log P(v)``
(Jensen), so the dequantized bits/dim bounds the discrete model's code length from above; the
``J``-sample bound ``log (1/J) sum_j p_C(v + u_j)`` (importance sampling over the dequantization,
exact PF densities) tightens it.

Which bounds which (each checked below, with a negative control): the DDPM ELBO and ``IW_k`` are
lower bounds on the log-likelihood of the DDPM sampler (``ELBO = IW_1 <= IW_k``), the continuous
ELBO on that of the reverse SDE; none of them bounds the PF model's likelihood, a different model.
The density formula with the network's denoiser IS the continuous ELBO (I8): its quadrature and the
training loss's Monte Carlo agree in expectation.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run alone: python experiments/digits_likelihood.py
    import densityformula.experiment as _x

    __package__ = _x.script_package(__file__)

import math
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Callable, Dict, Iterable, List, Tuple

import numpy as np
import torch

import densityformula as df
from densityformula import elbo, sampling, schedules
from densityformula.data import DIGITS_LEVELS, Digits, digits_log_det_jacobian, digits_split, load_digits
from densityformula.estimate import Estimate
from densityformula.experiment import Claim, Context, Control, Experiment, Outcome, Timer, checks, subplots
from densityformula.likelihood import probability_flow
from densityformula.models import DiffusionModel
from densityformula.neural import MLPDenoiser
from densityformula.training import (
    DenoisingLoss,
    ELBOLoss,
    ELBOWeight,
    Trainer,
    UniformLogSNR,
    WeightedLoss,
)

from . import _common as C

D = 64
#: the common log-SNR interval: training range, PF ODE ends, density-formula range, DDPM grid
LAMBDA = (-12.0, 9.0)
#: the scaled digits' standard deviation (MLPDenoiser's input scaling)
DATA_STD = 0.71
#: x = -1 + 2 c / 17: dx/dc
DATA_SCALE = 2.0 / DIGITS_LEVELS
#: the trainings compared: (label, weighting, time sampling)
TRAININGS: Tuple[Tuple[str, str, str], ...] = (("eps", "eps", "uniform"), ("elbo", "elbo", "importance"))
#: the estimators of the table, in its order: (key, label, what it is)
ESTIMATORS: Tuple[Tuple[str, str, str], ...] = (
    ("pf_exact", "PF ODE, exact trace", "log-density of the PF model (I12)"),
    ("pf_hutch", "PF ODE, Hutchinson", "unbiased for the PF log-density (I12, I34)"),
    ("pf_hpp", "PF ODE, Hutch++", "unbiased for the PF log-density (I12, I34)"),
    ("cont_df", "continuous ELBO, density formula", "lower bound, reverse-SDE model (I8)"),
    ("cont_mc", "continuous ELBO, training loss (MC)", "lower bound, reverse-SDE model (I8, I22)"),
    ("ddpm", "DDPM ELBO", "lower bound, T-step DDPM sampler (I9)"),
    ("iw4", "IW_4", "lower bound, T-step DDPM sampler (I10)"),
    ("iw16", "IW_16", "lower bound, T-step DDPM sampler (I10)"),
)


@dataclass(frozen=True)
class Budget:
    width: int
    depth: int
    steps: int
    batch: int
    lr: float
    n_test: int  # held-out points of every estimator
    T: int  # steps of the DDPM sampler (ELBO, IW_k)
    iw_reps: int  # groups of 16 chains per point
    df_nodes: int
    df_noise: int
    df_reps: int
    mc_strata: int  # training-loss ELBO: stratified log-SNR draws per replicate
    mc_reps: int
    pf_tol: float
    n_deq: int  # images of the discrete (dequantization) bound
    J: int  # dequantizations per image there
    n_samples: int  # samples shown


def budget(quick: bool) -> Budget:
    if quick:
        return Budget(width=128, depth=2, steps=800, batch=256, lr=3e-3, n_test=64, T=100, iw_reps=2,
                      df_nodes=16, df_noise=8, df_reps=4, mc_strata=64, mc_reps=4, pf_tol=1e-4, n_deq=16, J=4,
                      n_samples=32)
    return Budget(width=512, depth=4, steps=20000, batch=512, lr=1e-3, n_test=359, T=1000, iw_reps=4,
                  df_nodes=64, df_noise=16, df_reps=8, mc_strata=256, mc_reps=4, pf_tol=1e-5, n_deq=64, J=16,
                  n_samples=64)


def t_range(schedule: schedules.Schedule) -> Tuple[float, float]:
    """Model times ``(t(lambda_hi), t(lambda_lo))`` of :data:`LAMBDA`."""
    t = schedule.t_from_log_snr(torch.tensor([LAMBDA[1], LAMBDA[0]], dtype=torch.float64))
    return float(t[0]), float(t[1])


def ddpm_grid(T: int) -> schedules.Discrete:
    """A ``T``-step DDPM schedule with log-SNRs uniform on :data:`LAMBDA`: ``lambda_k = hi - (hi - lo)(k - 1)/(T - 1)``
    (``abar_k = sigmoid(lambda_k)``, ``beta_k = 1 - abar_k / abar_{k-1}``, ``abar_0 = 1``)."""
    lo, hi = LAMBDA
    ab = torch.sigmoid(torch.linspace(hi, lo, T, dtype=torch.float64))
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    return schedules.Discrete(1.0 - ab / prev)


def _bpd(logp: torch.Tensor) -> torch.Tensor:
    """Bits/dim of the dequantized counts from ``log p_X`` (nats): ``df.bits_per_dim`` with ``data_scale = 2/17``."""
    out = df.bits_per_dim(logp.double(), D, data_scale=DATA_SCALE)
    assert isinstance(out, torch.Tensor)
    return out


def _mean_se(v: torch.Tensor) -> Tuple[float, float]:
    v = v.double()
    return float(v.mean()), float(v.std() / math.sqrt(v.numel()))


def _train(label: str, weighting: str, time_sampling: str, b: Budget, seed: int,
           device: torch.device) -> Dict[str, Any]:
    """Train one MLP on the digits' training split; its EMA weights (CPU), seconds and loss history."""
    sched = schedules.VPCosine()
    net = MLPDenoiser(D, sched, width=b.width, depth=b.depth, data_std=DATA_STD, seed=seed)
    loss = DenoisingLoss(sched, weighting, time_sampling, t_range=t_range(sched))
    trainer = Trainer(net, Digits(split="train", split_seed=seed), steps=b.steps, batch_size=b.batch, lr=b.lr,
                      loss=loss, warmup=min(100, b.steps // 10), device=device, progress=False, seed=seed)
    with Timer() as tm:
        trainer.train()
    m = trainer.eval_model
    assert isinstance(m, MLPDenoiser)
    state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in m.state_dict().items()}
    return {"state": state, "seconds": tm.seconds,
            "history": [float(v) for _, v in trainer.history], "valid_log_snr": tuple(m.valid_log_snr),
            "device": str(device)}


def _model(b: Budget, trained: Dict[str, Any], device: torch.device) -> MLPDenoiser:
    m = MLPDenoiser(D, schedules.VPCosine(), width=b.width, depth=b.depth, data_std=DATA_STD)
    m.load_state_dict(trained["state"])
    m.valid_log_snr = trained["valid_log_snr"]
    return m.to(device).eval()


def _timed(fn: Callable[[], Estimate]) -> Tuple[Estimate, float]:
    with Timer() as tm:
        est = fn()
    return est, tm.seconds


def _elbo_loss_mc(model: DiffusionModel, x: torch.Tensor, strata: int, reps: int, gen: torch.Generator) -> Estimate:
    """``ELBO_theta(x)`` (I8) by Monte Carlo of the ELBO-weighted training loss with its constant (I22):
    ``-E[loss]`` with log-SNR uniform on :data:`LAMBDA`, stratified (``strata`` strata, one draw each,
    per replicate; ``reps`` independent replicates give the standard error)."""
    sched = model.schedule
    loss = WeightedLoss(ELBOLoss(sched), ELBOWeight(), UniformLogSNR(sched, t_range(sched)))
    n = x.shape[0]
    lo, hi = LAMBDA
    vals = []
    with Timer() as tm, torch.no_grad():
        for _ in range(reps):
            u = (torch.arange(strata, dtype=torch.float64)[:, None]
                 + torch.rand(strata, n, generator=gen, dtype=torch.float64)) / strata
            t = sched.t_from_log_snr((lo + (hi - lo) * u).reshape(-1)).to(x.device)
            xr = x[None].expand(strata, n, D).reshape(-1, D)
            noise = torch.randn(xr.shape, generator=gen, dtype=torch.float64).to(x.device, x.dtype)
            v = -loss(model, xr, t=t, noise=noise).double().reshape(strata, n).mean(0)
            vals.append(v.cpu())
    r = torch.stack(vals)
    return Estimate(r.mean(0), r.std(0) / math.sqrt(reps), strata * reps, tm.seconds, {"replicates": r})


def _estimates(m: MLPDenoiser, x: torch.Tensor, b: Budget, ctx: Context, offset: int) -> Dict[str, Any]:
    """Every estimator on the same points ``x``; per-point values and standard errors (CPU float64), cost."""
    dev = x.device
    grid = ddpm_grid(b.T)
    t_lo, t_hi = t_range(m.schedule)
    out: Dict[str, Any] = {}

    def put(key: str, est: Estimate, seconds: float) -> None:
        se = est.stderr if isinstance(est.stderr, torch.Tensor) else torch.full_like(est.value, math.inf)
        out[key] = {"value": est.value.detach().double().cpu(), "se": se.detach().double().cpu(),
                    "nfe": int(est.nfe), "seconds": seconds}

    pf_kw: Dict[str, Any] = {"rtol": b.pf_tol, "atol": b.pf_tol, "t_min": t_lo, "t_max": t_hi}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*beyond the range", category=RuntimeWarning)
        put("pf_exact", *_timed(lambda: probability_flow(m, x, trace="exact", **pf_kw)))
        put("pf_hutch", *_timed(lambda: probability_flow(m, x, trace="hutchinson", n_probes=4,
                                                         seed=1000 * ctx.seed + offset, **pf_kw)))
        put("pf_hpp", *_timed(lambda: probability_flow(m, x, trace="hutchpp", n_probes=2, sketch_size=2,
                                                       seed=1000 * ctx.seed + offset + 100, **pf_kw)))
    put("cont_df", *_timed(lambda: elbo.continuous(m, x, lambda_range=LAMBDA, tails=False, n_nodes=b.df_nodes,
                                                   n_noise=b.df_noise, n_replicates=b.df_reps,
                                                   seed=1000 * ctx.seed + offset + 200)))
    mc = _elbo_loss_mc(m, x, b.mc_strata, b.mc_reps, ctx.generator(offset + 300))
    put("cont_mc", mc, mc.seconds)
    put("ddpm", *_timed(lambda: elbo.ddpm(m, x, schedule=grid, n_samples=2, cv_data_var=DATA_STD**2,
                                          generator=ctx.generator(offset + 400, device=dev))))
    with Timer() as tm:
        iw = elbo.importance_weighted(m, x, [1, 4, 16], n_replicates=b.iw_reps, schedule=grid,
                                      generator=ctx.generator(offset + 500, device=dev))
    assert isinstance(iw, dict)
    for k in (1, 4, 16):
        put(f"iw{k}", iw[k], tm.seconds)
    return out


def _discrete_bound(m: MLPDenoiser, counts: torch.Tensor, b: Budget, gen: torch.Generator,
                    device: torch.device) -> Dict[str, Any]:
    """``log (1/J) sum_j p_X(x(v + u_j))``, ``u_j ~ U[0, 1)^64`` iid (exact PF densities), per image: its
    expectation lies between ``E_u log p_X(x(v + u))`` and ``log P(v) - log_det`` (Jensen, I10's argument
    applied to the dequantization)."""
    t_lo, t_hi = t_range(m.schedule)
    n = counts.shape[0]
    u = torch.rand(b.J, n, D, generator=gen, dtype=torch.float64)
    x = (-1.0 + DATA_SCALE * (counts[None] + u)).reshape(-1, D).to(device, torch.float32)
    with warnings.catch_warnings(), Timer() as tm:
        warnings.filterwarnings("ignore", message=".*beyond the range", category=RuntimeWarning)
        lp = probability_flow(m, x, trace="exact", rtol=b.pf_tol, atol=b.pf_tol, t_min=t_lo, t_max=t_hi)
    logp = lp.value.double().cpu().reshape(b.J, n)
    return {"logp": logp, "lme": torch.logsumexp(logp, 0) - math.log(b.J), "seconds": tm.seconds,
            "nfe": int(lp.nfe) * b.J}


def _gaussian_baseline(train_counts: torch.Tensor, test_counts: torch.Tensor, gen: torch.Generator) -> Dict[str, Any]:
    """A full-covariance Gaussian fitted to dequantized training counts, in count units and in [-1, 1] units
    (the same fit up to the affine map), scored on the dequantized test counts: two bits/dim that must agree."""
    c_tr = train_counts + torch.rand(train_counts.shape, generator=gen, dtype=torch.float64)
    c_te = test_counts + torch.rand(test_counts.shape, generator=gen, dtype=torch.float64)
    out = {}
    for name, scale, shift in (("counts", 1.0, 0.0), ("symmetric", DATA_SCALE, -1.0)):
        y_tr, y_te = shift + scale * c_tr, shift + scale * c_te
        mu = y_tr.mean(0)
        cov = torch.cov(y_tr.T) + 1e-9 * scale**2 * torch.eye(D, dtype=torch.float64)
        logp = torch.distributions.MultivariateNormal(mu, covariance_matrix=cov).log_prob(y_te)  # type: ignore[no-untyped-call]
        bpd = df.bits_per_dim(logp, D, data_scale=scale)
        assert isinstance(bpd, torch.Tensor)
        out[name] = bpd
    return out


def _significant(diff: np.ndarray, se: np.ndarray, dof: int, what: str, unit: str) -> Callable[[float], Outcome]:
    """Each entry of ``diff`` (one per model) significantly > 0 (one-sided t, Bonferroni over the entries at
    ``alpha / 2``) and their mean too (``alpha / 2``); defect: every difference lowered by ``s``."""
    n = diff.size
    c_pts = checks.t_crit(n, dof, checks.ALPHA / 2, sided=1)
    c_mean = checks.t_crit(1, dof, checks.ALPHA / 2, sided=1)
    se_mean = float(np.sqrt((se**2).sum()) / n)

    def check(s: float) -> Outcome:
        d = diff - s
        z = d / se
        zm = float(d.mean()) / se_mean
        return Outcome(bool(z.min() > c_pts) and zm > c_mean, {
            f"min {what}": (float(d.min()), unit), f"mean {what}": (float(d.mean()), unit),
            "min z": float(z.min()), "limit z": c_pts, "z (mean)": zm, "limit z (mean)": c_mean})

    return check


class DigitsLikelihood(Experiment):
    name = "digits_likelihood"
    title = "Bits/dim of trained models on the 8x8 digits by every estimator (a small likelihood table)"
    claim = (
        "On held-out dequantized digits each estimator measures what it should: Hutchinson and Hutch++ agree with "
        "the exact-trace PF likelihood, the density formula with the network's denoiser equals its continuous ELBO, "
        "IW_1 equals the DDPM ELBO and IW_16 exceeds it (all bounds of the DDPM sampler, not of the PF model), and "
        "the ELBO-weighted network has the better ELBO."
    )

    def compute(self, ctx: Context) -> Dict[str, Any]:
        b = budget(ctx.quick)
        with C.one_thread() if ctx.device.type == "cpu" else _nullcontext():
            return self._compute(ctx, b)

    def _compute(self, ctx: Context, b: Budget) -> Dict[str, Any]:
        train_idx, test_idx = digits_split(0.2, seed=ctx.seed)
        counts = Digits(split="all").counts  # (1797, 64) float64 pixel counts
        pick = test_idx[torch.randperm(test_idx.numel(), generator=ctx.generator(1))[: b.n_test]]
        x = load_digits(generator=ctx.generator(2))[pick]  # the held-out points, dequantized once
        assert isinstance(x, torch.Tensor)
        trained: Dict[str, Any] = {}
        rows: Dict[str, Any] = {}
        deq: Dict[str, Any] = {}
        samples: Dict[str, torch.Tensor] = {}
        for i, (label, w, ts) in enumerate(ctx.progress(TRAININGS, "trainings")):
            trained[label] = ctx.cached(f"train-{label}-seed{ctx.seed}",
                                        partial(_train, label, w, ts, b, ctx.seed, ctx.device))
            m = _model(b, trained[label], ctx.device)
            rows[label] = ctx.cached(f"estimates-{label}-seed{ctx.seed}",
                                     partial(_estimates, m, x.to(ctx.device), b, ctx, 10 * i))
            deq[label] = ctx.cached(f"discrete-{label}-seed{ctx.seed}",
                                    partial(_discrete_bound, m, counts[pick[: b.n_deq]], b, ctx.generator(600 + i),
                                            ctx.device))
            samples[label] = _sample(m, b, ctx, 700 + i)
        gauss = _gaussian_baseline(counts[train_idx], counts[pick], ctx.generator(3))
        return {"budget": asdict(b), "trained": {k: {kk: vv for kk, vv in v.items() if kk != "state"}
                                                  for k, v in trained.items()},
                "rows": rows, "deq": deq, "samples": samples, "gauss": gauss, "n": b.n_test,
                "test_images": counts[pick[:8]]}

    # ---- claims -------------------------------------------------------------------------------------------
    def claims(self, r: Dict[str, Any], ctx: Context) -> Iterable[Claim]:
        n = r["n"]
        rows = r["rows"]
        labels = [lab for lab, _, _ in TRAININGS]

        def paired(a: str, c: str) -> Tuple[np.ndarray, np.ndarray]:
            """Per model: mean over the points of ``a - c`` and its standard error, in nats/dim."""
            ms, ses = [], []
            for lab in labels:
                m, se = _mean_se(rows[lab][a]["value"] - rows[lab][c]["value"])
                ms.append(m / D)
                ses.append(se / D)
            return np.array(ms), np.array(ses)

        for key, name in (("pf_hutch", "Hutchinson (4 Rademacher probes)"), ("pf_hpp", "Hutch++ (2 + 2 vectors)")):
            dm, dse = paired(key, "pf_exact")
            yield Claim(
                f"PF ODE likelihood: {name} agrees with the exact trace on the same points, both models (I12, I34)",
                "mean over the held-out points of (stochastic - exact) within its standard error, per model and in "
                "the mean (two-sided, alpha 1e-3)",
                checks.agreement(dm, dse, 0.0, dof=n - 1, unit="nats/dim"),
                Control(f"{name} estimate biased by", 0.1, "nats/dim"),
            )
        dm, dse = paired("cont_df", "cont_mc")
        yield Claim(
            "the density formula with the network's denoiser equals its continuous ELBO (I8): quadrature vs the "
            "ELBO-weighted training loss's Monte Carlo, both models",
            "mean over the held-out points of (density formula - training-loss ELBO) within its standard error "
            "(two-sided, alpha 1e-3)",
            checks.agreement(dm, dse, 0.0, dof=n - 1, unit="nats/dim"),
            Control("density formula shifted by", 0.03, "nats/dim"),
        )
        dm, dse = paired("iw1", "ddpm")
        yield Claim(
            "IW_1 (Monte Carlo over forward chains) equals the DDPM ELBO (exact Gaussian KLs), both models (I9, I10)",
            "mean over the held-out points of (IW_1 - DDPM ELBO) within its standard error (two-sided, alpha 1e-3)",
            checks.agreement(dm, dse, 0.0, dof=n - 1, unit="nats/dim"),
            Control("IW_1 shifted by", 0.03, "nats/dim"),
        )
        dm, dse = paired("iw16", "ddpm")
        yield Claim(
            "the DDPM ELBO is a strict lower bound on the DDPM sampler's log-likelihood: IW_16 exceeds it, both "
            "models (I10)",
            "mean over the held-out points of (IW_16 - DDPM ELBO) significantly > 0, per model and in the mean "
            "(one-sided, alpha 1e-3)",
            _significant(dm, dse, n - 1, "IW_16 - DDPM ELBO", "nats/dim"),
            Control("IW_16 - DDPM ELBO lowered by", 0.3, "nats/dim"),
        )
        diffs, ses = [], []
        for key in ("cont_df", "ddpm"):
            m, se = _mean_se(rows["elbo"][key]["value"] - rows["eps"][key]["value"])
            diffs.append(m / D)
            ses.append(se / D)
        yield Claim(
            "training on the ELBO weighting gives the better ELBO: continuous and DDPM ELBO of the ELBO-weighted "
            "network above the eps-weighted one's on the same points",
            "paired over the held-out points: ELBO(elbo-trained) - ELBO(eps-trained) significantly > 0 for both ELBOs "
            "and in the mean (one-sided, alpha 1e-3)",
            _significant(np.array(diffs), np.array(ses), n - 1, "ELBO(elbo) - ELBO(eps)", "nats/dim"),
            Control("the difference lowered by", 0.3, "nats/dim"),
        )
        g = r["gauss"]
        yield Claim(
            "the data-scaling Jacobian is right: a Gaussian fitted in count units and in [-1, 1] units has the same "
            "bits/dim (df.bits_per_dim with data_scale 1 and 2/17)",
            "bits/dim of the two fits agree to 1e-6 at every held-out point",
            checks.within(g["symmetric"], g["counts"], atol=1e-6, unit="bits/dim"),
            Control("Jacobian with 16 instead of 17 levels: bits/dim shifted by log2(17/16) =", math.log2(17 / 16),
                    "bits/dim"),
        )
        gaps, gse = [], []
        for lab in labels:
            dq = r["deq"][lab]
            nd = dq["lme"].numel()
            m, se = _mean_se(rows[lab]["pf_exact"]["value"][:nd] - dq["lme"])
            gaps.append(m / D)
            gse.append(se / D)
        yield Claim(
            "the dequantized bits/dim is an upper bound on the discrete data's: the log-likelihood at one uniform "
            "dequantization is not above the J-sample bound on log P(v) (exact PF densities), both models",
            "mean over images of (log p at the table's dequantization - log-mean-exp over J fresh dequantizations) "
            "<= 0 within its standard error, per model and in the mean (one-sided, alpha 1e-3)",
            checks.at_most(np.array(gaps), np.array(gse), 0.0, dof=r["budget"]["n_deq"] - 1, unit="nats/dim"),
            Control("dequantized log-likelihood raised by", 0.1, "nats/dim"),
        )

    # ---- report -------------------------------------------------------------------------------------------
    def _table(self, r: Dict[str, Any]) -> List[Dict[str, Any]]:
        out = []
        for lab, _, _ in TRAININGS:
            rr = r["rows"][lab]
            for key, name, what in ESTIMATORS:
                e = rr[key]
                bpd = _bpd(e["value"])
                m, se = _mean_se(bpd)
                out.append({"training": lab, "estimator": name, "what": what, "bits_per_dim": m,
                            "se_points": se, "mc_se_per_point": float(e["se"].mean() / (D * math.log(2))),
                            "nats": float(e["value"].mean()), "nfe_per_point": e["nfe"], "seconds": e["seconds"]})
            dq = r["deq"][lab]
            m, se = _mean_se(_bpd(dq["lme"]))
            out.append({"training": lab, "estimator": f"PF ODE exact, {dq['logp'].shape[0]}-sample discrete bound",
                        "what": "upper bound on the discrete code length (I10 over u)", "bits_per_dim": m,
                        "se_points": se, "mc_se_per_point": math.nan, "nats": float(dq["lme"].mean()),
                        "nfe_per_point": dq["nfe"], "seconds": dq["seconds"]})
        for name in ("symmetric",):
            m, se = _mean_se(r["gauss"][name])
            out.append({"training": "-", "estimator": "full-covariance Gaussian (fit on the training split)",
                        "what": "exact (closed form)", "bits_per_dim": m, "se_points": se, "mc_se_per_point": 0.0,
                        "nats": math.nan, "nfe_per_point": 0, "seconds": 0.0})
        out.append({"training": "-", "estimator": "uniform on the 17 levels", "what": "exact",
                    "bits_per_dim": math.log2(DIGITS_LEVELS), "se_points": 0.0, "mc_se_per_point": 0.0,
                    "nats": math.nan, "nfe_per_point": 0, "seconds": 0.0})
        return out

    def tables(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        per_point = []
        for lab, _, _ in TRAININGS:
            rr = r["rows"][lab]
            for i in range(r["n"]):
                per_point.append({"training": lab, "point": i,
                                  **{key: float(rr[key]["value"][i]) for key, _, _ in ESTIMATORS},
                                  **{f"{key}_se": float(rr[key]["se"][i]) for key, _, _ in ESTIMATORS}})
        train = [{"training": lab, **{k: v for k, v in t.items() if k != "history"},
                  "final_loss_mean_last_100": float(np.mean(t["history"][-100:]))}
                 for lab, t in r["trained"].items()]
        return {"bits_per_dim.csv": self._table(r), "per_point_nats.csv": per_point, "training.csv": train}

    def notes(self, r: Dict[str, Any], ctx: Context) -> List[str]:
        b = r["budget"]
        tab = self._table(r)
        lines = [
            f"MLPDenoiser width {b['width']}, depth {b['depth']}, VPCosine, {b['steps']} Adam steps of batch "
            f"{b['batch']} (lr {b['lr']}), trained on log-SNR {LAMBDA}; {r['n']} held-out dequantized test points "
            f"(split seed {ctx.seed}); DDPM sampler with T = {b['T']} steps uniform in log-SNR on {LAMBDA}; "
            f"density formula {b['df_nodes']} nodes x {b['df_noise']} draws x {b['df_reps']} replicates; "
            f"training-loss ELBO {b['mc_strata']} strata x {b['mc_reps']} replicates; PF tolerance {b['pf_tol']:g}.",
            "Bits/dim = -(log p_X + 64 log(2/17)) / (64 log 2) (df.bits_per_dim, data_scale 2/17): the dequantized "
            f"counts' density; 64 log(2/17) = {digits_log_det_jacobian():.2f} nats.",
        ]
        for t in r["trained"].values():
            lines.append(f"training on {t['device']}: {t['seconds']:.1f} s")
        for lab, _, _ in TRAININGS:
            lines.append(f"{lab}-trained: " + "; ".join(
                f"{x['estimator']} {x['bits_per_dim']:.3f} +- {x['se_points']:.3f}" for x in tab
                if x["training"] == lab))
        return lines

    def figures(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        tab = self._table(r)
        fig, axes = subplots(1, 2, figsize=(12.5, 4.6))
        ax = axes[0]
        names = [name for _, name, _ in ESTIMATORS] + [x["estimator"] for x in tab if "discrete" in x["estimator"]][:1]
        ypos = np.arange(len(names))
        for j, (lab, _, _) in enumerate(TRAININGS):
            rows = [x for x in tab if x["training"] == lab]
            ax.errorbar([x["bits_per_dim"] for x in rows], ypos + 0.15 * (2 * j - 1),
                        xerr=[2 * x["se_points"] for x in rows], fmt="o", capsize=3, label=f"{lab}-weighted")
        for x in tab:
            if x["training"] == "-":
                ax.axvline(x["bits_per_dim"], ls="--", lw=1, color="0.5")
                ax.text(x["bits_per_dim"], len(names) - 0.5, x["estimator"].split(" (")[0], fontsize=7,
                        rotation=90, va="top", ha="right")
        ax.set_yticks(ypos, ["PF ODE discrete bound" if "discrete" in s else s for s in names], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("bits/dim (dequantized; +- 2 se over points)")
        ax.set_title("Held-out bits/dim by estimator")
        ax.legend(fontsize=8)
        ax = axes[1]
        for j, (lab, _, _) in enumerate(TRAININGS):
            rows = [x for x in tab if x["training"] == lab and x["mc_se_per_point"] == x["mc_se_per_point"]
                    and x["nfe_per_point"] > 0 and "discrete" not in x["estimator"]]
            se = [x["mc_se_per_point"] if math.isfinite(x["mc_se_per_point"]) else np.nan for x in rows]
            ax.loglog([x["nfe_per_point"] for x in rows], [max(s, 1e-4) for s in se], "os"[j], label=f"{lab}-weighted")
            for x, s in zip(rows, se):
                if j == 0 and s == s:
                    ax.annotate(x["estimator"].replace("continuous ELBO, ", "cont. ").replace("PF ODE, ", "PF "),
                                (x["nfe_per_point"], max(s, 1e-4)), fontsize=7)
        ax.set_xlabel("model evaluations per point")
        ax.set_ylabel("Monte Carlo se per point (bits/dim)")
        ax.set_title("Cost and per-point noise (exact trace: no MC noise)")
        ax.legend(fontsize=8)
        figs = {"bits_per_dim": fig}
        fig2, axes2 = subplots(3, 8, figsize=(10, 4.2))
        rows_img = [("test", r["test_images"])] + [(lab, r["samples"][lab]) for lab, _, _ in TRAININGS]
        for i, (lab, imgs) in enumerate(rows_img):
            for j in range(8):
                ax = axes2[i][j]
                im = C.as_np(imgs[j]).reshape(8, 8)
                if lab != "test":
                    im = (im + 1.0) * DIGITS_LEVELS / 2.0
                ax.imshow(np.clip(im, 0, DIGITS_LEVELS), cmap="gray_r", vmin=0, vmax=DIGITS_LEVELS)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
                if j == 0:
                    ax.set_ylabel("held-out" if lab == "test" else f"{lab}-weighted", fontsize=8)
        figs["samples"] = fig2
        return figs


def _sample(m: MLPDenoiser, b: Budget, ctx: Context, offset: int) -> torch.Tensor:
    """``n_samples`` draws of the model's DDPM sampler on the common interval (decoder mean at the end)."""
    t_lo, t_hi = t_range(m.schedule)
    with torch.no_grad():
        out = sampling.ddpm(m, n=b.n_samples, steps=b.T, t_max=t_hi, t_min=t_lo,
                            generator=ctx.generator(offset, device=ctx.device), device=ctx.device)
    xs = out if isinstance(out, torch.Tensor) else out[0]
    return xs.detach().cpu()


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


EXPERIMENT = DigitsLikelihood()

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
