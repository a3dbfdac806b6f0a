"""DDPM ELBO <= importance-weighted bound <= exact sampler log-density (docs/math.md I9, I10, I13).

In 1-D the output density of a model's DDPM ancestral sampler can be propagated on a grid
(:func:`densityformula.likelihood.sampler_density_1d`, I13), so the bounds can be checked
against the density they bound, point by point.  Target: a 1-D mixture ``q``; model: the
exact denoiser of ``q'`` (``q`` with shifted means) on ``Discrete.ddpm_linear(T)``, sampler
variance ``beta``.  Grid error: the difference between the grid and a grid twice as fine.

Claims (each with a negative control of a few hundredths of a nat or less):

* the grid density has mass 1 and is grid-converged (exact comparisons);
* I9: ``elbo.ddpm <= log p_sampler`` and I10: ``IW_64 <= log p_sampler``, one-sided at every
  point and in the mean over points (Student-t with the degrees of freedom of each standard
  error: ``n_samples - 1`` for the ELBO, ``n_replicates - 1`` groups for ``IW_64``);
* ``IW_1`` (Monte Carlo log-weights of forward chains) agrees with ``elbo.ddpm`` (exact Gaussian
  KLs), two-sided: the two estimators share no code past the kernels;
* I10, unbiasedness: the plain importance-sampling estimate ``mean_j w_j`` agrees with the grid
  density ``p_sampler(x)`` (two-sided): a test of the grid density by an independent estimator.

``IW_k`` non-decreasing in ``k`` and ``IW_64`` closer to ``log p`` than ``IW_1`` hold for every
draw by construction (Jensen's inequality on the nested groups of one pool of chains): they are
unit tests (``tests/test_claims_ddpm_bounds.py``), not claims.  Every statistical claim here is
tested at level ``ALPHA / 4``, so that the experiment's family-wise level is ``ALPHA``.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run alone: python experiments/ddpm_bounds.py
    import densityformula.experiment as _x

    __package__ = _x.script_package(__file__)

import math
from typing import Any, Dict, Iterable

import numpy as np
import torch

from densityformula import models, schedules, targets
from densityformula.elbo import ddpm, importance_weighted, importance_weights
from densityformula.experiment import Claim, Context, Control, Experiment, Outcome, Timer, checks, subplots
from densityformula.likelihood import sampler_density_1d

from . import _common as C

KS = [1, 2, 4, 8, 16, 32, 64]
#: the statistical claims share the experiment's family-wise level
N_STATISTICAL = 4
LEVEL = checks.ALPHA / N_STATISTICAL
#: tolerances of the exact grid claims: far below the Monte Carlo standard errors (~1e-3 nats)
MASS_TOL = 1e-6
GRID_TOL = 1e-4


def _budgets(quick: bool) -> Dict[str, int]:
    if quick:
        # grid: 641 points on [-10, 10] (spacing 0.031 <= sqrt(beta_1) = 0.045); the check grid has 2G - 1
        return {"T": 50, "n_points": 64, "n_rep": 16, "n_samples": 512, "n_is": 1024, "G": 641}
    return {"T": 250, "n_points": 128, "n_rep": 32, "n_samples": 4096, "n_is": 4096, "G": 1201}


class DDPMBounds(Experiment):
    name = "ddpm_bounds"
    title = "DDPM ELBO <= IW_k <= exact log-density of the sampler (I9, I10)"
    claim = (
        "For an imperfect model in 1-D, the DDPM ELBO and the importance-weighted bound IW_64 lie below the exact "
        "log-density of the model's DDPM sampler at every point and on average, IW_1 agrees with the ELBO, and the "
        "importance weights average to the exact density: biases of a few hundredths of a nat fail these checks."
    )

    def compute(self, ctx: Context) -> Dict[str, Any]:
        b = _budgets(ctx.quick)
        T, n_points, G = b["T"], b["n_points"], b["G"]
        q = targets.random_gmm(1, 3, seed=ctx.seed)
        q_model = targets.GaussianMixture(q.weights, q.means + 0.3, q.covs)
        model = models.AnalyticModel(q_model, schedules.Discrete.ddpm_linear(T))
        x = q.sample(n_points, generator=ctx.generator(1))
        with Timer() as t_elbo:
            # all T steps per point (steps=None): every point has its own draws, so the points are independent
            elbo = ddpm(model, x, variance="beta", n_samples=b["n_samples"], generator=ctx.generator(2))
        with Timer() as t_iw:
            iw = importance_weighted(model, x, k=KS, n_replicates=b["n_rep"], generator=ctx.generator(3))
            logw = importance_weights(model, x, b["n_is"], generator=ctx.generator(4))  # (n_is, n)
        with Timer() as t_grid:
            dens = sampler_density_1d(model, variance="beta", grid=torch.linspace(-10, 10, G, dtype=torch.float64))
            lp = dens.log_prob(x)
            fine = sampler_density_1d(model, variance="beta",
                                      grid=torch.linspace(-10, 10, 2 * G - 1, dtype=torch.float64))
            lp_fine = fine.log_prob(x)
        # plain importance sampling: mean_j w_j / p_grid(x) is unbiased for 1 (I10: E[w] = p_sampler)
        ratio = torch.exp(logw - lp[None, :])
        return {
            "budgets": b, "q": q, "q_model": q_model, "x": x, "dens": dens, "lp": lp, "lp_fine": lp_fine,
            "grid_err": (lp_fine - lp).abs(), "elbo": elbo, "iw": iw,
            "ratio": ratio.mean(0), "ratio_se": ratio.std(0, unbiased=True) / math.sqrt(ratio.shape[0]),
            "seconds": {"elbo": t_elbo.seconds, "iw": t_iw.seconds, "grid": t_grid.seconds},
        }

    def claims(self, r: Dict[str, Any], ctx: Context) -> Iterable[Claim]:
        b, dens, lp, ge, elbo, iw = r["budgets"], r["dens"], r["lp"], r["grid_err"], r["elbo"], r["iw"]
        n = lp.numel()
        log_mass = math.log(dens.mass)

        def grid_mass(s: float) -> Outcome:  # defect: the grid density off by a factor e^s
            err = abs(log_mass + s)
            return Outcome(err <= MASS_TOL, {"|log mass|": (err, "nats"), "tolerance": (MASS_TOL, "nats")})

        yield Claim(
            "I13: grid density has mass 1",
            f"|log mass| <= {MASS_TOL:g} (the grid rule's normalization; no renormalization is done)",
            grid_mass,
            Control("wrong normalization of the grid density", 3 * MASS_TOL, "nats"),
        )
        yield Claim(
            "I13: grid density is grid-converged",
            f"|log p(G) - log p(2G-1)| <= {GRID_TOL:g} nats at all {n} points",
            checks.within(lp, r["lp_fine"], atol=GRID_TOL, unit="nats"),
            Control("error added to the coarse grid's log-density", 2 * GRID_TOL, "nats"),
        )
        dof_elbo = b["n_samples"] - 1  # each step's variance from n_samples draws; Welch-Satterthwaite >= this
        yield Claim(
            "I9: DDPM ELBO <= log p_sampler",
            f"one-sided, at every point and in the mean: ELBO - log p <= c stderr + grid error (t, {dof_elbo} dof, "
            f"level {LEVEL:.2g})",
            checks.at_most(elbo.value, elbo.stderr, lp, dof=dof_elbo, bound=ge, alpha=LEVEL),
            Control("bias added to every ELBO", 0.06, "nats"),
        )
        top = iw[max(KS)]
        dof_iw = int(top.extras["n_groups"]) - 1
        yield Claim(
            f"I10: IW_{max(KS)} <= log p_sampler",
            f"one-sided, at every point and in the mean: IW - log p <= c stderr + grid error (t, {dof_iw} dof from "
            f"{dof_iw + 1} groups, level {LEVEL:.2g})",
            checks.at_most(top.value, top.stderr, lp, dof=dof_iw, bound=ge, alpha=LEVEL),
            Control(f"bias added to every IW_{max(KS)}", 0.008, "nats"),
        )
        # two independent estimators of the same ELBO; the points have independent draws
        one = iw[1]
        dof_1 = min(dof_elbo, int(one.extras["n_groups"]) - 1)
        yield Claim(
            "IW_1 (Monte Carlo log-weights) = elbo.ddpm (exact Gaussian KLs)",
            f"two-sided, at every point and in the mean: |ELBO - IW_1| <= c joint stderr (t, {dof_1} dof, "
            f"level {LEVEL:.2g})",
            checks.agreement(elbo.value, torch.sqrt(elbo.stderr**2 + one.stderr**2), one.value, dof=dof_1,
                             alpha=LEVEL),
            Control("bias added to every ELBO", 0.02, "nats"),
        )
        n_is = b["n_is"]
        yield Claim(
            "I10: importance weights average to the grid density (E[w] = p_sampler)",
            f"two-sided, at every point and in the mean: |mean of {n_is} weights / p_grid - 1| <= c stderr + grid "
            f"error (t, {n_is - 1} dof, level {LEVEL:.2g})",
            checks.agreement(r["ratio"], r["ratio_se"], 1.0, dof=n_is - 1, bound=ge, alpha=LEVEL,
                             unit="(relative)"),
            Control("relative error of the grid density", 0.01, "(relative, ~nats)"),
        )

    def tables(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        x, q, lp, ge, elbo, iw = r["x"], r["q"], r["lp"], r["grid_err"], r["elbo"], r["iw"]
        rows = []
        for i in range(x.shape[0]):
            row = {"x": float(x[i, 0]), "log_q0": float(q.log_prob(x[i:i + 1])[0]), "log_p_sampler": float(lp[i]),
                   "grid_error": float(ge[i]), "elbo": float(elbo.value[i]), "elbo_stderr": float(elbo.stderr[i]),
                   "is_ratio": float(r["ratio"][i]), "is_ratio_stderr": float(r["ratio_se"][i])}
            for k in KS:
                row[f"iw_{k}"] = float(iw[k].value[i])
                row[f"iw_{k}_stderr"] = float(iw[k].stderr[i])
            rows.append(row)
        return {"bounds.csv": rows}

    def notes(self, r: Dict[str, Any], ctx: Context) -> list[str]:
        b, s, dens = r["budgets"], r["seconds"], r["dens"]
        return [
            f"T={b['T']}, {b['n_points']} points, elbo.ddpm n_samples={b['n_samples']} (all steps), IW pool "
            f"{b['n_rep']} x {max(KS)} chains, {b['n_is']} more chains for the plain importance-sampling estimate, "
            f"grid {b['G']} points on [-10, 10] (mass {dens.mass:.15f}, box truncation {dens.truncation:.1e}). "
            f"Seconds: ELBO {s['elbo']:.1f}, IW {s['iw']:.1f}, grid {s['grid']:.1f}.",
            "The ELBO is a bound on the sampler's density log p, not on log q_0: see log_q0 vs log_p_sampler "
            "in bounds.csv.",
            "IW_k is non-decreasing in k, and so closer to log p than IW_1, for every draw by construction (nested "
            "groups of one pool of chains, Jensen): that is a unit test, not a claim.",
        ]

    def figures(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        q, q_model, dens, x, lp, elbo, iw = r["q"], r["q_model"], r["dens"], r["x"], r["lp"], r["elbo"], r["iw"]
        n = lp.numel()
        fig, axes = subplots(1, 3, figsize=(16, 4.4))
        ax = axes[0]
        gr = C.as_np(dens.grid)
        xs = torch.as_tensor(gr)[:, None]
        pq = np.exp(C.as_np(q.log_prob(xs)))
        ax.plot(gr, pq, label="target q")
        ax.plot(gr, np.exp(C.as_np(q_model.log_prob(xs))), "--", label="q' (the model's denoiser)")
        ax.plot(gr, C.as_np(dens.density), ":", lw=2, label=f"p: DDPM sampler output, T={r['budgets']['T']} (grid)")
        ax.plot(C.as_np(x[:, 0]), np.zeros(n), "k|", ms=12, label="evaluation points")
        ax.set_xlim(gr[pq > 1e-4][[0, -1]] + np.array([-1, 1]))
        ax.set_xlabel("x")
        ax.set_title("Densities")
        ax.legend(fontsize=8)

        ax = axes[1]
        gaps = np.array([C.as_np(lp - iw[k].value) for k in KS])  # (k, n)
        se = np.array([float(iw[k].stderr.pow(2).sum().sqrt()) / n for k in KS])
        ax.errorbar(KS, gaps.mean(1), yerr=2 * se, fmt="o-", capsize=3,
                    label="mean (log p - IW_k) over points, ±2 s.e.")
        eg = float((lp - elbo.value).mean())
        ese = float(elbo.stderr.pow(2).sum().sqrt()) / n
        ax.axhspan(eg - 2 * ese, eg + 2 * ese, color="C1", alpha=0.3, label="mean (log p - ELBO), ±2 s.e.")
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (chains per importance-weighted bound)")
        ax.set_ylabel("log p_sampler - bound (nats)")
        ax.set_title("Bounds below the exact sampler log-density")
        ax.legend(fontsize=8)

        ax = axes[2]
        xo = C.as_np(x[:, 0])
        order = np.argsort(xo)
        top = iw[max(KS)]
        for lab, val, s, fmt, off in [
            ("ELBO - log p", elbo.value - lp, elbo.stderr, "o", -0.02),
            (f"IW_{max(KS)} - log p", top.value - lp, top.stderr, "s", 0.0),
            ("log(mean w) - log p (unbiased for p)", torch.log(r["ratio"]), r["ratio_se"] / r["ratio"], "^", 0.02),
        ]:
            ax.errorbar(xo[order] + off, C.as_np(val)[order], yerr=2 * C.as_np(s)[order], fmt=fmt, ms=3, capsize=1.5,
                        alpha=0.8, label=f"{lab}, ±2 s.e.")
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xlabel("x")
        ax.set_ylabel("estimate - log p_sampler (nats)")
        ax.set_title("Per point")
        ax.legend(fontsize=8)
        return {"ddpm_bounds": fig}


EXPERIMENT = DDPMBounds()

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
