"""A small trained MLP on a 2-D mixture: ELBOs, PF-ODE likelihood and log q_0, point by point.

A :class:`~densityformula.neural.MLPDenoiser` is trained on a 2-D Gaussian mixture (VPCosine
schedule, eps loss).  For held-out points ``x ~ q`` it reports

* the density formula with the trained denoiser = its continuous-time ELBO (I8),
* the discrete DDPM ELBO of its T = 1000 ancestral sampler (I9),
* the log-likelihood of its probability-flow ODE (exact trace by autograd, I12),
* the closed-form ``log q_0``,

and checks only what theory guarantees for an arbitrary denoiser:

* I8: ``E_q[log q_0 - ELBO_theta] = 1/2 int E_q||eps_theta - eps||^2 dlambda`` (the right side by
  :func:`elbo.kl_de_bruijn` with the network as ``p``), on a common log-SNR range;
* hence ``E_q[ELBO_theta] <= E_q[log q_0]``;
* Gibbs: ``E_q[log p_ODE] <= E_q[log q]`` (the ODE defines a normalized density), for three
  places the ODE may start, and the density's mass on a grid is 1;
* ``probability_flow`` warns when asked to start beyond the network's trained range.

Not claimed, because docs/math.md section 5 says they are false in general: ELBO <= log q_0 pointwise,
and ELBO <= log p_ODE (the ELBO bounds the SDE sampler's density, not the ODE's).
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run alone: python experiments/trained_model.py
    import densityformula.experiment as _x

    __package__ = _x.script_package(__file__)

import math
import warnings
from typing import Any, Dict, Iterable, List

import numpy as np
import torch

from densityformula import models, schedules, targets
from densityformula.elbo import ddpm, kl_de_bruijn
from densityformula.experiment import Claim, Context, Control, Experiment, Outcome, Timer, checks, subplots
from densityformula.formula import density_formula
from densityformula.likelihood import probability_flow
from densityformula.neural import MLPDenoiser
from densityformula.sampling import default_t_start
from densityformula.training import Trainer

from . import _common as C

LAM_RANGE = (-15.0, 15.0)  # the density formula's float32 default; the network is compared on this range
LAM_FAR = -40.0  # an ODE start far below anything the network saw in training
MASS_TOL = 0.01  # grid and box truncation of the mass of a density on the grid (q's own mass there: 1.0000)


def _mean_se(v: torch.Tensor) -> tuple[float, float]:
    """Mean over the points and its standard error (the points are i.i.d.: x ~ q, independent noise)."""
    v = v.double()
    return float(v.mean()), float(v.std() / math.sqrt(v.numel()))


def _warns(model: Any, x: torch.Tensor, t_min: float, lam_start: float, sched: Any) -> bool:
    """Whether ``probability_flow`` warns (RuntimeWarning, 'beyond the range') for an ODE from ``lam_start``."""
    t_max = float(sched.t_from_log_snr(torch.tensor(lam_start, dtype=torch.float64)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probability_flow(model, x, rtol=1e-2, atol=1e-2, trace="exact", t_min=t_min, t_max=t_max)
    return any(issubclass(w.category, RuntimeWarning) and "beyond the range" in str(w.message) for w in caught)


class TrainedModel(Experiment):
    name = "trained_model"
    title = "Trained MLP: continuous ELBO, DDPM ELBO, PF-ODE likelihood and log q_0"
    claim = (
        "For a trained network, the ELBO gap equals its weighted denoising error on average (I8) and both the ELBO "
        "and the PF-ODE likelihood lie below log q_0 on average; pointwise orderings are reported, not claimed."
    )

    def compute(self, ctx: Context) -> Dict[str, Any]:
        d = 2
        train_steps = 2000 if ctx.quick else 20000
        # points for the density formula (the I8 and ELBO claims): their spread over x ~ q, not the Monte Carlo
        # error of each point, sets the standard error of the means, so quick mode takes more points with fewer
        # replicates each
        n_df = 1024 if ctx.quick else 2048
        n_points = 256 if ctx.quick else 2048  # the first n_points of them for the ODE and the DDPM ELBO
        seed = ctx.seed
        gmm = targets.random_gmm(d, 3, seed=seed, separation=4.0)
        sched = schedules.VPCosine()
        data_std = float(torch.sqrt(torch.diagonal(gmm.covariance()).mean()))
        net = MLPDenoiser(d, sched, width=64 if ctx.quick else 128, depth=3, data_std=data_std, seed=seed)
        with Timer() as t_train:
            trainer = Trainer(net, gmm, steps=train_steps, batch_size=512, lr=3e-3, device="cpu", progress=False,
                              seed=seed)
            history = trainer.train()
        model = trainer.eval_model.eval()

        x_df = gmm.sample(n_df, generator=ctx.generator(1))
        x = x_df[:n_points]
        x32 = x.float()
        logq_df = gmm.log_prob(x_df)
        q = ctx.quick
        est_kw = dict(n_nodes=24 if q else 48, n_noise=4 if q else 16, n_replicates=8 if q else 16,
                      n_pilot=8 if q else 16, lambda_range=LAM_RANGE, tails=False)
        with torch.no_grad(), Timer() as t_df:
            cont = density_formula(model, x_df.float(), seed=seed + 2, **est_kw)
            # the same truncated formula with the exact denoiser: its (tiny) truncation bias
            exact = density_formula(models.AnalyticModel(gmm, sched), x_df, seed=seed + 2, **est_kw)
        with torch.no_grad(), Timer() as t_ddpm:
            # all T steps (a sampled subset of steps would be shared by all points, so its error would
            # not average out over points)
            disc = ddpm(model, x32, n_samples=2 if ctx.quick else 8, generator=ctx.generator(3))
        # the data end of every likelihood: log-SNR LAM_RANGE[1]; three noise ends, prior N(0, sigma^2 I) at each:
        # the default (the noisy end of the network's trained range, model.valid_log_snr), the samplers' start
        # time (log-SNR -10), and log-SNR -40 (the old default, far below anything the network saw in training)
        t_min = float(sched.t_from_log_snr(torch.tensor(LAM_RANGE[1], dtype=torch.float64)))
        t_max_sampler = float(default_t_start(sched))
        t_max_far = float(sched.t_from_log_snr(torch.tensor(LAM_FAR, dtype=torch.float64)))
        pf_kw: Dict[str, Any] = dict(trace="exact", t_min=t_min)
        with Timer() as t_pf, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*beyond the range", category=RuntimeWarning)
            pf_default = probability_flow(model, x32, rtol=1e-5, atol=1e-5, **pf_kw)
            pf = probability_flow(model, x32, rtol=1e-5, atol=1e-5, t_max=t_max_sampler, **pf_kw)
            pf_full = probability_flow(model, x32, rtol=1e-5, atol=1e-5, t_max=t_max_far, **pf_kw)
            # normalization of the ODE densities on a grid over a box that holds q's mass
            gx = torch.linspace(-11.0, 9.0, 41 if ctx.quick else 161)
            gy = torch.linspace(-11.0, 8.0, 39 if ctx.quick else 153)
            GX, GY = torch.meshgrid(gx, gy, indexing="ij")
            grid = torch.stack([GX.flatten(), GY.flatten()], 1)
            cell = float((gx[1] - gx[0]) * (gy[1] - gy[0]))
            mass_q = float(torch.exp(gmm.log_prob(grid.double())).sum()) * cell
            mass = {}
            for key, kw in (("sampler", {"t_max": t_max_sampler}), ("default", {})):
                g = probability_flow(model, grid, rtol=1e-4, atol=1e-4, **pf_kw, **kw)
                mass[key] = float(torch.exp(g.value.double()).sum()) * cell
        logq_start = gmm.log_prob(x, t=pf.extras["t_min"].double(), schedule=sched)
        with torch.no_grad(), Timer() as t_kl:
            gap = kl_de_bruijn(gmm, model, n_samples=2048 if ctx.quick else 32768, n_nodes=48, lambda_range=LAM_RANGE,
                               generator=ctx.generator(4))
            gap_full = kl_de_bruijn(gmm, model, n_samples=2048 if ctx.quick else 32768, n_nodes=96,
                                    lambda_range=(-30.0, 30.0), generator=ctx.generator(5))
        return {
            "model": model, "sched": sched, "x": x, "x32": x32, "t_min": t_min, "n_df": n_df, "n_points": n_points,
            "train_steps": train_steps, "history": history, "cont_df": cont.value.double(),
            "cont_se_df": cont.stderr.double(), "exact_df": exact.value.double(), "logq_df": logq_df,
            "logq": logq_df[:n_points], "disc": disc.value.double(), "disc_se": disc.stderr.double(),
            "pf": pf.value.double(), "pf_default": pf_default.value.double(), "pf_full": pf_full.value.double(),
            "logq_start": logq_start, "lam_end_default": float(pf_default.extras["lambda_end"][0]),
            "lam_end_sampler": float(pf.extras["lambda_end"][0]),
            "lam_end_full": float(pf_full.extras["lambda_end"][0]),
            "mass": mass, "mass_q": mass_q, "gap": float(gap.value[0]), "gap_se": float(gap.stderr[0]),
            "gap_full": float(gap_full.value[0]),
            "seconds": {"train": t_train.seconds, "df": t_df.seconds, "ddpm": t_ddpm.seconds, "pf": t_pf.seconds,
                        "kl": t_kl.seconds},
        }

    def claims(self, r: Dict[str, Any], ctx: Context) -> Iterable[Claim]:
        n_df, n = r["n_df"], r["n_points"]
        # I8 on the common range: E[ELBO_theta - ELBO_exact] = -1/2 int E||eps_theta - eps||^2 dlambda.  The
        # difference is paired on the same points and noise; its standard error over the n_df points has n_df - 1
        # degrees of freedom (the de Bruijn integral's error, from 48 x 2048 draws, only adds to them).
        m, se = _mean_se(r["cont_df"] - r["exact_df"])
        yield Claim(
            f"I8: E_q[ELBO_theta - ELBO_exact] = -1/2 int E||eps_theta - eps||^2 dlambda on lambda in {LAM_RANGE}",
            f"|mean difference over {n_df} points + de Bruijn integral| <= c se (both errors; Student t, "
            f"{n_df - 1} dof)",
            checks.agreement(m, math.hypot(se, r["gap_se"]), -r["gap"], dof=n_df - 1),
            Control("bias added to the continuous ELBO", 0.06, "nats"),
        )
        mm, mse = _mean_se(r["cont_df"] - r["logq_df"])
        yield Claim(
            "E_q[ELBO_theta] <= E_q[log q_0]",
            f"mean over {n_df} points of ELBO - log q_0 <= c se (one-sided, Student t, {n_df - 1} dof)",
            checks.at_most(mm, mse, 0.0, dof=n_df - 1),
            Control("bias added to the continuous ELBO", 0.2, "nats"),
        )
        diffs = [r[k] - r["logq_start"] for k in ("pf", "pf_default", "pf_full")]
        stats = [_mean_se(v) for v in diffs]
        _, se_avg = _mean_se(sum(diffs) / 3.0)  # the three share the points: the mean's error from their average
        starts = f"{r['lam_end_sampler']:.0f}, {r['lam_end_default']:.1f} (default) and {r['lam_end_full']:.0f}"
        yield Claim(
            f"Gibbs: E_q[log p_ODE] <= E_q[log q] for the ODE from log-SNR {starts}",
            f"mean over {n} points of log p_ODE - log q <= c se for each start and their mean (one-sided, Student t, "
            f"{n - 1} dof)",
            checks.at_most([s[0] for s in stats], [s[1] for s in stats], 0.0, dof=n - 1, mean_stderr=se_avg),
            Control("bias added to every log p_ODE", 0.25, "nats"),
        )
        masses = np.array([r["mass"]["sampler"], r["mass"]["default"]])

        def mass_check(s: float) -> Outcome:  # defect: s nats added to log p_ODE multiplies the mass by e^s
            out = checks.within(masses * math.exp(s), 1.0, atol=MASS_TOL)(0.0)
            return Outcome(out.passed, {**out.values, "mass of q on the same grid": r["mass_q"]})

        yield Claim(
            f"PF-ODE densities (from log-SNR {r['lam_end_sampler']:.0f} and {r['lam_end_default']:.1f}) integrate to 1 "
            "on a grid",
            f"|mass - 1| <= {MASS_TOL} for both (grid and box truncation)",
            mass_check,
            Control("constant added to log p_ODE", 0.03, "nats"),
        )
        model, sched, x1, t_min = r["model"], r["sched"], r["x32"][:1], r["t_min"]
        lo = float(model.valid_log_snr[0])

        def warn_check(s: float) -> Outcome:  # defect: the start moved s log-SNR units towards the data
            lam = LAM_FAR + s
            warned = _warns(model, x1, t_min, lam, sched)
            return Outcome(warned, {"asked from log-SNR": lam, "trained range starts at": lo, "warned": float(warned)})

        yield Claim(
            f"probability_flow warns when asked to start at log-SNR {LAM_FAR:.0f}, beyond the network's trained range",
            "a RuntimeWarning ('beyond the range')",
            warn_check,
            Control(f"ODE start moved from log-SNR {LAM_FAR:.0f} towards the data (at this size: to the samplers' "
                    "start, inside the trained range)", 30.0, "log-SNR"),
        )

    def tables(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        n = r["n_points"]
        x, logq = r["x"], r["logq"]
        cv, dv = r["cont_df"][:n], r["disc"]
        frac = lambda v: float((v > 0).double().mean())  # noqa: E731
        mm, mse = _mean_se(r["cont_df"] - r["logq_df"])
        dm, dse = _mean_se(dv - logq)
        pf_rows = []
        for key, label in (("pf", f"{r['lam_end_sampler']:.0f}"),
                           ("pf_default", f"{r['lam_end_default']:.1f} (default)"),
                           ("pf_full", f"{r['lam_end_full']:.0f}")):
            pm, pse = _mean_se(r[key] - r["logq_start"])
            pf_rows.append({"quantity": f"PF-ODE log-likelihood (exact trace), log-SNR {LAM_RANGE[1]:.0f} to {label}",
                            "mean_minus_log_q0": pm, "stderr": pse, "frac_points_above_log_q0":
                            frac(r[key] - r["logq_start"]), "mean_point_stderr": 0.0})
        summary_rows = [
            {"quantity": f"continuous ELBO (density formula, trained D; {r['n_df']} points)", "mean_minus_log_q0": mm,
             "stderr": mse, "frac_points_above_log_q0": frac(r["cont_df"] - r["logq_df"]),
             "mean_point_stderr": float(r["cont_se_df"].mean())},
            {"quantity": "DDPM ELBO (T=1000, variance beta)", "mean_minus_log_q0": dm, "stderr": dse,
             "frac_points_above_log_q0": frac(dv - logq), "mean_point_stderr": float(r["disc_se"].mean())},
            *pf_rows,
        ]
        rows = [{"x0": float(x[i, 0]), "x1": float(x[i, 1]), "log_q0": float(logq[i]), "elbo_continuous": float(cv[i]),
                 "elbo_continuous_stderr": float(r["cont_se_df"][i]), "elbo_ddpm": float(dv[i]),
                 "elbo_ddpm_stderr": float(r["disc_se"][i]), "log_p_ode": float(r["pf"][i]),
                 "log_p_ode_default_range": float(r["pf_default"][i]), "log_p_ode_from_-40": float(r["pf_full"][i])}
                for i in range(n)]
        return {"summary.csv": summary_rows, "points.csv": rows}

    def notes(self, r: Dict[str, Any], ctx: Context) -> List[str]:
        n, model, sec, mass = r["n_points"], r["model"], r["seconds"], r["mass"]
        cv = r["cont_df"][:n]
        frac = lambda v: float((v > 0).double().mean())  # noqa: E731
        (pmm, pse), (pdm, pdse), (pfm, pfse) = (_mean_se(r[k] - r["logq_start"])
                                                for k in ("pf", "pf_default", "pf_full"))
        lo = model.valid_log_snr[0]
        return [
            f"Training: {r['train_steps']} steps, batch 512, {sec['train']:.1f} s; final loss "
            f"{r['history'][-1][1]:.4f}. Seconds: density formula {sec['df']:.1f} ({r['n_df']} points), DDPM ELBO "
            f"{sec['ddpm']:.1f}, PF-ODE {sec['pf']:.1f} ({n} points and the grids), de Bruijn {sec['kl']:.1f}.",
            f"Pointwise: the continuous ELBO exceeds log q_0 at {100 * frac(r['cont_df'] - r['logq_df']):.0f}% of the "
            f"points and the PF-ODE log-likelihood at {100 * frac(r['pf'] - r['logq_start']):.0f}%; the continuous "
            f"ELBO exceeds the PF-ODE likelihood at {100 * frac(cv - r['pf']):.0f}% -- neither ordering is a theorem.",
            f"The PF-ODE likelihood depends on where the ODE starts. By default probability_flow starts at the noisy "
            f"end of the network's trained range, model.valid_log_snr = ({lo:.1f}, {model.valid_log_snr[1]}) (the "
            f"trainer records it: below {lo:.1f} lie 0.1% of its training draws): mean minus log q {pdm:.3f} ± "
            f"{pdse:.3f} nats, grid mass {mass['default']:.3f}. From log-SNR {r['lam_end_sampler']:.0f} (where the "
            f"samplers start): {pmm:.3f} ± {pse:.3f}. From log-SNR {r['lam_end_full']:.0f} (asked explicitly; the "
            f"library warns): {pfm:.3f} ± {pfse:.3f}: the network is hardly trained there, and the ODE spreads the "
            "prior's mass. All are normalized densities of different models.",
            f"The network's eps error is concentrated at extreme log-SNR: 1/2 int E||eps_theta - eps||^2 is "
            f"{r['gap']:.3f} on {LAM_RANGE} but {r['gap_full']:.3f} on (-30, 30). The density formula's default range "
            "for float32 is (-15, 15) with analytic tails, which assume the exact asymptotics, so the ELBO reported "
            "there omits the network's errors beyond that range.",
        ]

    def figures(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        n = r["n_points"]
        fig, axes = subplots(1, 3, figsize=(15, 4.4))
        ax = axes[0]
        h = np.array(r["history"])
        ax.plot(h[:, 0], h[:, 1], lw=0.6, alpha=0.5)
        k = max(1, len(h) // 30)
        ax.plot(h[k - 1:, 0], np.convolve(h[:, 1], np.ones(k) / k, mode="valid"), lw=1.5)
        ax.set_xlabel("training step")
        ax.set_ylabel("eps loss")
        ax.set_title("Training")
        ax = axes[1]
        lq = C.as_np(r["logq"])
        cv, dv, pm_ = C.as_np(r["cont_df"][:n]) - lq, C.as_np(r["disc"]) - lq, C.as_np(r["pf"] - r["logq_start"])
        ax.scatter(lq, cv, s=6, label="continuous ELBO - log q_0")
        ax.scatter(lq, dv, s=6, label="DDPM ELBO - log q_0")
        ax.scatter(lq, pm_, s=6, label=f"log p_ODE - log q (ODE from log-SNR {r['lam_end_sampler']:.0f})")
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_ylim(np.percentile(np.concatenate([dv, cv, pm_]), [1, 99]) * 1.3)
        ax.set_xlabel("log q_0(x)")
        ax.set_ylabel("nats")
        ax.set_title("Per point, relative to the truth")
        ax.legend(fontsize=8, markerscale=2)
        ax = axes[2]
        rows = self.tables(r, ctx)["summary.csv"]
        labels = ["cont. ELBO", "DDPM ELBO", f"PF-ODE\n(from {r['lam_end_sampler']:.0f})",
                  f"PF-ODE\n(from {r['lam_end_default']:.1f}, default)", f"PF-ODE\n(from {r['lam_end_full']:.0f})"]
        ax.bar(labels, [x["mean_minus_log_q0"] for x in rows], yerr=[2 * x["stderr"] for x in rows], capsize=4,
               color=["C0", "C1", "C2", "C3", "C4"])
        ax.axhline(-r["gap"], color="k", ls="--", lw=1, label="-1/2 int E||eps_theta - eps||^2 (I8)")
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_ylabel("mean over x ~ q of (estimate - log q_0), ±2 s.e.")
        ax.set_title("Averages")
        ax.legend(fontsize=8)
        return {"trained_model": fig}


EXPERIMENT = TrainedModel()

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
