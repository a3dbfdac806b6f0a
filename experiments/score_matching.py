"""Score matching on q_t: DSM, implicit (exact and Hutchinson) and sliced score matching (docs/math.md I43).

All four objectives of ``densityformula.training.score_matching`` are explicit score matching plus
model-independent constants, so their parameter gradients have one expectation; they differ in the
variance of that gradient and in its cost.  Random mixtures in ``d`` dimensions, VPLinear, small
MLPs.  Part 1: at a network trained with DSM (near the optimum, where the comparison matters) and at
the random initialisation, replicate mini-batches on common random numbers give each estimator's
mean gradient and its per-sample variance (trace of the covariance over all parameters), at several
noise levels.  Cost is counted in model passes per sample: DSM 1 (one forward), exact ISM ``1 + d``
(``d`` vector-Jacobian products for the divergence), Hutchinson ISM and SSM ``1 + m`` with ``m = 1``
probe; "variance at equal cost" is variance x cost.  Part 2: one MLP trained with each objective by
the library's Trainer, scored by the exact score error ``sigma^2 E_{q_t}||s_theta - s*||^2``.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run alone: python experiments/score_matching.py
    import densityformula.experiment as _x

    __package__ = _x.script_package(__file__)

import contextlib
import math
from typing import Any, Dict, Iterable, List, Tuple

import numpy as np
import torch

from densityformula import schedules, targets
from densityformula.experiment import Claim, Context, Control, Experiment, Outcome, checks, subplots
from densityformula.neural import MLPDenoiser
from densityformula.training import (
    DenoisingScoreMatching,
    ExplicitScoreMatching,
    ImplicitScoreMatching,
    NoisyBatch,
    Objective,
    SlicedScoreMatching,
    TimeAverage,
    Trainer,
    UniformTime,
    WeightedLoss,
    draw_probes,
    score_and_divergence,
)

from . import _common as C

OBJECTIVES = ("dsm", "ism", "ism_hutchinson", "ssm")
T_RANGE = (0.02, 1.0)
WIDTH, DEPTH = 32, 2


def _cost(name: str, d: int) -> int:
    """Model passes per sample: a forward, plus one vector-Jacobian product per divergence direction / probe."""
    return {"dsm": 1, "esm": 1, "ism": 1 + d, "ism_hutchinson": 2, "ssm": 2}[name]


def _objective(name: str, gmm: targets.GaussianMixture, seed: int) -> Objective:
    if name == "dsm":
        return DenoisingScoreMatching()
    if name == "esm":
        return ExplicitScoreMatching(gmm)
    if name == "ism":
        return ImplicitScoreMatching()
    if name == "ism_hutchinson":
        return ImplicitScoreMatching("hutchinson", seed=seed)
    return SlicedScoreMatching(seed=seed)


def _net(d: int, seed: int, device: torch.device) -> MLPDenoiser:
    return MLPDenoiser(d, schedules.VPLinear(), width=WIDTH, depth=DEPTH, embed_dim=8, seed=seed,
                       zero_init_output=False, device=device)


def _flat_grad(net: MLPDenoiser, loss: torch.Tensor, retain: bool = False) -> torch.Tensor:
    params = [p for p in net.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=retain)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def _gradients(net: MLPDenoiser, gmm: targets.GaussianMixture, t: float, R: int, B: int,
               gen: torch.Generator, device: torch.device) -> Dict[str, np.ndarray]:
    """``R`` replicate mini-batch gradients (float64 numpy ``(R, P)``) of each objective on common draws;
    ISM's is split into its ``||s||^2`` and ``2 div s`` parts (``ism_sq``, ``ism_div``) for the control."""
    sched = net.schedule
    out: Dict[str, List[np.ndarray]] = {k: [] for k in ("dsm", "ism_sq", "ism_div", "ism_hutchinson", "ssm")}
    s2 = float(sched.sigma2(t))
    for _ in range(R):
        x0 = gmm.sample(B, generator=gen).to(device=device, dtype=torch.float32)
        noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64).to(device=device, dtype=torch.float32)
        probes = draw_probes(1, tuple(x0.shape), generator=gen, dtype=torch.float32).to(device)
        batch = NoisyBatch.make(sched, x0, torch.full((B,), t, dtype=torch.float64, device=device), noise)
        out["dsm"].append(_flat_grad(net, DenoisingScoreMatching()(net, batch).mean()).double().cpu().numpy())
        s, div = score_and_divergence(net, batch)
        out["ism_sq"].append(_flat_grad(net, s2 * (s**2).sum(1).mean(), retain=True).double().cpu().numpy())
        out["ism_div"].append(_flat_grad(net, s2 * 2.0 * div.mean()).double().cpu().numpy())
        hut = ImplicitScoreMatching("hutchinson")(net, batch, probes).mean()
        out["ism_hutchinson"].append(_flat_grad(net, hut).double().cpu().numpy())
        ssm = SlicedScoreMatching()(net, batch, probes).mean()
        out["ssm"].append(_flat_grad(net, ssm).double().cpu().numpy())
    return {k: np.stack(v) for k, v in out.items()}


def _variance(g: np.ndarray, B: int) -> Tuple[float, float]:
    """Per-sample gradient variance ``B tr Cov(g_r)`` and its standard error (from the replicates' spread)."""
    R = g.shape[0]
    a = B * ((g - g.mean(0)) ** 2).sum(1) * R / (R - 1)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(R))


def _score_error(net: MLPDenoiser, gmm: targets.GaussianMixture, t: float, n: int, gen: torch.Generator,
                 device: torch.device) -> Tuple[float, float]:
    """``sigma^2 E_{q_t} ||s_theta - s*||^2`` and its standard error on ``n`` fresh draws of ``q_t``."""
    sched = net.schedule
    x = gmm.marginal(sched, t).sample(n, generator=gen)
    tt = torch.full((n,), t, dtype=torch.float64)
    with torch.no_grad():
        s = net.score(x.to(device=device, dtype=torch.float32), tt.to(device)).double().cpu()
    e = float(sched.sigma2(t)) * ((s - gmm.score(x, tt, sched)) ** 2).sum(1)
    return float(e.mean()), float(e.std() / math.sqrt(n))


class ScoreMatching(Experiment):
    name = "score_matching"
    title = "Denoising, implicit and sliced score matching: one expected gradient, different variances"
    claim = (
        "DSM, exact and Hutchinson implicit score matching and sliced score matching on q_t have parameter gradients "
        "with the same expectation (they are explicit score matching plus constants); near the optimum at low noise "
        "DSM's gradient variance exceeds implicit score matching's even at equal model passes, SSM's exceeds its "
        "variance-reduced form's, and exact or Hutchinson ISM trains scores about as accurate as DSM's."
    )

    def compute(self, ctx: Context) -> Dict[str, Any]:
        quick = ctx.quick
        dims = [1, 2, 8] if quick else [1, 2, 4, 8, 16]
        times = [0.02, 0.1, 0.5] if quick else [0.02, 0.05, 0.1, 0.25, 0.5, 0.9]
        steps = 200 if quick else 2000
        R, B = (32, 16) if quick else (128, 32)
        n_eval = 4000 if quick else 20000
        dev = ctx.device
        grad_rows: List[Dict[str, Any]] = []
        grads: Dict[Tuple[int, float, str], Dict[str, np.ndarray]] = {}
        train_rows: List[Dict[str, Any]] = []
        one = C.one_thread() if dev.type == "cpu" else contextlib.nullcontext()
        with one:
            for d in ctx.progress(dims, "dimensions"):
                gmm = targets.random_gmm(d, 3, seed=ctx.seed + 100 * d, separation=3.0, condition_number=4.0)
                trained: Dict[str, MLPDenoiser] = {}
                for name in OBJECTIVES:
                    net = _net(d, ctx.seed + 7, dev)
                    loss = WeightedLoss(_objective(name, gmm, ctx.seed + 11), TimeAverage(),
                                        UniformTime(net.schedule, T_RANGE))
                    Trainer(net, gmm, steps=steps, loss=loss, batch_size=128, lr=3e-3, device=dev, progress=False,
                            ema_decay=None, seed=ctx.seed + 13, warmup=20).train()
                    trained[name] = net
                init = _net(d, ctx.seed + 7, dev)
                for t in times:
                    row: Dict[str, Any] = {"d": d, "t": t, "sigma": math.sqrt(float(init.schedule.sigma2(t))),
                                           "steps": steps}
                    for name, net in [("init", init)] + list(trained.items()):
                        e, se = _score_error(net, gmm, t, n_eval, ctx.generator(1000 + d), dev)
                        row[f"err_{name}"], row[f"se_{name}"] = e, se
                    train_rows.append(row)
                for state, net in (("trained_dsm", trained["dsm"]), ("init", init)):
                    for t in times:
                        g = _gradients(net, gmm, t, R, B, ctx.generator(2000 + 10 * d + times.index(t)), dev)
                        grads[(d, t, state)] = g
                        g_ism = g["ism_sq"] + g["ism_div"]
                        row = {"state": state, "d": d, "t": t, "sigma": math.sqrt(float(net.schedule.sigma2(t))),
                               "R": R, "B": B}
                        for name, gg in (("dsm", g["dsm"]), ("ism", g_ism), ("ism_hutchinson", g["ism_hutchinson"]),
                                         ("ssm", g["ssm"])):
                            v, se = _variance(gg, B)
                            row[f"var_{name}"], row[f"se_var_{name}"] = v, se
                            row[f"cost_{name}"] = _cost(name, d)
                            row[f"var_x_cost_{name}"] = v * _cost(name, d)
                        row["mean_grad_norm"] = float(np.linalg.norm(g_ism.mean(0)))
                        grad_rows.append(row)
        return {"grad_rows": grad_rows, "train_rows": train_rows, "grads": grads, "dims": dims, "times": times,
                "R": R, "B": B, "steps": steps, "n_eval": n_eval}

    # ------------------------------------------------------------------------------------------
    def claims(self, r: Dict[str, Any], ctx: Context) -> Iterable[Claim]:
        R = r["R"]
        # fixed random unit directions in parameter space: the gradients' projections are near-normal averages
        n_dir = 8

        def projections(div_scale: float) -> Tuple[np.ndarray, np.ndarray]:
            est, se = [], []
            for (d, _t, _state), g in sorted(r["grads"].items()):
                P = g["dsm"].shape[1]
                rng = np.random.default_rng(10_000 + d)
                U = rng.standard_normal((P, n_dir))
                U /= np.linalg.norm(U, axis=0)
                ism = g["ism_sq"] + (1.0 - div_scale) * g["ism_div"]
                for other in (ism, g["ism_hutchinson"], g["ssm"]):
                    diff = (g["dsm"] - other) @ U  # (R, n_dir), common random numbers
                    scale = np.sqrt(((g["dsm"] @ U) ** 2).mean(0)) + 1e-30  # in units of the DSM gradient's rms
                    est.append(diff.mean(0) / scale)
                    se.append(diff.std(0, ddof=1) / math.sqrt(R) / scale)
            return np.concatenate(est), np.concatenate(se)

        def same_mean(s: float) -> Outcome:
            est, se = projections(s)
            return checks.agreement(est, se, 0.0, dof=R - 1, unit="x rms DSM gradient")(0.0)

        yield Claim(
            "the four gradient estimators have one expectation",
            f"E[grad DSM] = E[grad ISM] = E[grad Hutchinson ISM] = E[grad SSM]: differences on common draws, projected "
            f"on {n_dir} random directions, zero within Student-t bounds (R = {R} replicates, every d, t, and both "
            "the trained and the initial network)",
            same_mean,
            Control("divergence term of ISM scaled by (1 - size)", 0.5, "relative"),
        )

        # 2. low noise, near the optimum: DSM's gradient variance exceeds ISM's even at equal model passes
        t_low = min(r["times"])
        low = [x for x in r["grad_rows"] if x["state"] == "trained_dsm" and x["t"] == t_low]

        def variance_check(s: float) -> Outcome:
            # control (s > 0): ISM's variance multiplied by exp(s)
            vals, ses = [], []
            for x in low:
                a, sa = x["var_dsm"], x["se_var_dsm"]
                b, sb = x["var_ism"] * x["cost_ism"], x["se_var_ism"] * x["cost_ism"]
                vals.append(math.log(a / b) - s)
                ses.append(math.sqrt((sa / a) ** 2 + (sb / b) ** 2))
            return checks.at_least(vals, ses, 0.0, dof=R - 1, unit="log ratio")(0.0)

        yield Claim(
            f"at low noise (t = {t_low}) DSM's gradient variance exceeds exact ISM's at equal model passes",
            "log(Var_DSM / ((1 + d) Var_ISM)) >= 0 at the DSM-trained network for every d (one-sided, delta-method "
            "standard errors from the replicates)",
            variance_check,
            Control("ISM's variance multiplied by exp(size)", 3.0, "log factor"),
        )

        # 3. SSM's (v^T s)^2 adds variance that SSM-VR (Hutchinson ISM) removes: visible in the largest d
        d_max = max(r["dims"])
        big = [x for x in r["grad_rows"] if x["d"] == d_max and x["state"] == "trained_dsm"]

        def sliced_check(s: float) -> Outcome:
            # control (s > 0): Hutchinson ISM's variance multiplied by exp(s)
            vals, ses = [], []
            for x in big:
                a, sa = x["var_ssm"], x["se_var_ssm"]
                b, sb = x["var_ism_hutchinson"], x["se_var_ism_hutchinson"]
                vals.append(math.log(a / b) - s)
                ses.append(math.sqrt((sa / a) ** 2 + (sb / b) ** 2))
            return checks.at_least(vals, ses, 0.0, dof=R - 1, unit="log ratio")(0.0)

        yield Claim(
            f"in d = {d_max} SSM's gradient variance exceeds the variance-reduced form's (Hutchinson ISM)",
            "log(Var_SSM / Var_SSM-VR) >= 0 at every t at the DSM-trained network, one probe each (equal cost)",
            sliced_check,
            Control("Hutchinson ISM's variance multiplied by exp(size)", 3.0, "log factor"),
        )

        # 4. ISM (exact and Hutchinson) trains scores as accurate as DSM's: within a factor 4 (+ a floor)
        rows = r["train_rows"]

        def trained_check(s: float) -> Outcome:
            # the defect: every trained error multiplied by exp(s)
            vals, ses, lims = [], [], []
            for x in rows:
                for name in ("ism", "ism_hutchinson"):
                    vals.append(x[f"err_{name}"] * math.exp(s))
                    ses.append(x[f"se_{name}"] * math.exp(s))
                    lims.append(4.0 * x["err_dsm"] + 0.02)
            return checks.at_most(vals, ses, lims, dof=None, unit="sigma^2 squared score error")(0.0)

        yield Claim(
            "exact and Hutchinson ISM train scores as accurate as DSM's",
            "sigma^2 E||s_theta - s*||^2 of the ISM- and Hutchinson-ISM-trained networks <= 4 x DSM's + 0.02 at "
            f"every d and t ({r['steps']} Trainer steps each, {r['n_eval']} exact-score draws per point)",
            trained_check,
            Control("trained errors multiplied by exp(size)", 3.0, "log factor"),
        )

        # 5. training helps: the time-averaged error of every objective is at most half the initial network's
        def improves(s: float) -> Outcome:
            vals, ses, lims = [], [], []
            for d in r["dims"]:
                xs = [x for x in rows if x["d"] == d]
                k = len(xs)
                init = sum(x["err_init"] for x in xs) / k
                for name in OBJECTIVES:
                    vals.append(sum(x[f"err_{name}"] for x in xs) / k * math.exp(s))
                    ses.append(math.sqrt(sum(x[f"se_{name}"] ** 2 * math.exp(2 * s) + 0.25 * x["se_init"] ** 2
                                             for x in xs)) / k)
                    lims.append(0.5 * init)
            return checks.at_most(vals, ses, lims, dof=None, unit="sigma^2 squared score error")(0.0)

        yield Claim(
            "training with every objective at least halves the score error (averaged over t)",
            "mean over t of sigma^2 E||s_theta - s*||^2 after training <= 1/2 of the untrained network's, for DSM, "
            "ISM, Hutchinson ISM and SSM at every d",
            improves,
            Control("trained errors multiplied by exp(size)", 3.0, "log factor"),
        )

    def tables(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        return {"gradient_variance.csv": r["grad_rows"], "trained_score_error.csv": r["train_rows"]}

    def notes(self, r: Dict[str, Any], ctx: Context) -> list[str]:
        out = [
            f"Targets: random_gmm(d, 3, seed = seed + 100 d, condition number 4); VPLinear; MLP width {WIDTH}, depth "
            f"{DEPTH}; training on t ~ U{list(T_RANGE)} with the sigma^2-scaled objectives, {r['steps']} steps, batch "
            f"128; gradients from R = {r['R']} replicate batches of B = {r['B']}.",
            "Cost in model passes per sample: DSM 1, ISM 1 + d, Hutchinson ISM and SSM 2 (one probe); the parameter "
            "backward pass through the divergence graph grows with the same count.",
        ]
        for x in r["grad_rows"]:
            if x["state"] == "trained_dsm":
                out.append(
                    f"d={x['d']}, t={x['t']} (sigma {x['sigma']:.3f}), DSM-trained net: Var DSM {x['var_dsm']:.3g}, "
                    f"ISM {x['var_ism']:.3g} (x{x['cost_ism']} passes), Hutchinson {x['var_ism_hutchinson']:.3g}, "
                    f"SSM {x['var_ssm']:.3g}")
        return out

    def figures(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        fig, axes = subplots(1, 3, figsize=(15.5, 4.4))
        for ax, state in zip(axes[:2], ("trained_dsm", "init")):
            for i, d in enumerate(r["dims"]):
                rows = [x for x in r["grad_rows"] if x["state"] == state and x["d"] == d]
                sig = [x["sigma"] for x in rows]
                for name, style in (("dsm", "o-"), ("ism", "s--"), ("ism_hutchinson", "^:"), ("ssm", "v-.")):
                    ax.loglog(sig, [x[f"var_x_cost_{name}"] for x in rows], style, color=f"C{i}",
                              label=f"{name}, d={d}" if i == 0 or name == "dsm" else None)
            ax.set_xlabel("sigma_t")
            ax.set_ylabel("per-sample gradient variance x passes")
            ax.set_title(f"Gradient variance at equal cost ({'DSM-trained' if state != 'init' else 'initial'} net)")
            ax.legend(fontsize=7, title="colour: d; line style: objective", title_fontsize=7)
        ax = axes[2]
        for i, d in enumerate(r["dims"]):
            rows = [x for x in r["train_rows"] if x["d"] == d]
            sig = [x["sigma"] for x in rows]
            for name, style in (("dsm", "o-"), ("ism", "s--"), ("ism_hutchinson", "^:"), ("ssm", "v-.")):
                ax.loglog(sig, [x[f"err_{name}"] for x in rows], style, color=f"C{i}",
                          label=f"{name}, d={d}" if i == 0 or name == "dsm" else None)
            ax.loglog(sig, [x["err_init"] for x in rows], "x", color=f"C{i}", label=f"untrained, d={d}")
        ax.set_xlabel("sigma_t")
        ax.set_ylabel("sigma^2 E||s_theta - s*||^2")
        ax.set_title("Exact score error of the trained networks")
        ax.legend(fontsize=7, title="colour: d; line style: objective", title_fontsize=7)
        return {"score_matching": fig}


EXPERIMENT = ScoreMatching()

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
