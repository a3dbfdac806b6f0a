"""Probability-flow ODE likelihood with the exact score reproduces log q (docs/math.md I12).

:func:`densityformula.likelihood.probability_flow` with the exact denoiser of a 2-D mixture,
the exact trace (closed-form score divergence, I4) and the exact prior ``log q_{t_max}`` (I2)
must reproduce the closed-form ``log q_{t_min}(x)`` to solver tolerance, and the error must fall
with the tolerance (one claim per distinct ODE: LiYan and VPCosine are both variance preserving
and reach the same log-SNR range, so in the log-SNR clock they solve the same ODE and share a
claim).  Control: a tolerance-independent bias of a few ten-thousandths of a nat (an error floor,
as a wrong constant or prior would leave) must fail.  The usual ``N(0, sigma_T^2 I)`` prior is
not ``q_T`` unless the process reaches pure noise: the mismatch it causes is measured per schedule
and claimed measurable where ``alpha(t_max) > 0`` (VPLinear, VE).  That LiYan's Gaussian prior is
exact (``alpha`` is exactly 0 at its ``t_max``) holds by construction and is a unit test
(tests/test_likelihood_pf.py::test_gaussian_prior_close_to_exact_prior_for_liyan).
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run alone: python experiments/probability_flow.py
    import densityformula.experiment as _x

    __package__ = _x.script_package(__file__)

from typing import Any, Dict, Iterable, List

import numpy as np
import torch

from densityformula import models, targets
from densityformula.experiment import Claim, Context, Control, Experiment, Outcome, Timer, checks, subplots
from densityformula.likelihood import probability_flow

from . import _common as C

SCHEDULES = C.SCHEDULES
#: schedules solving the same ODE in the log-SNR clock (variance preserving, same log-SNR range): one claim
GROUPS = {"LiYan = VPCosine": ("LiYan", "VPCosine"), "VPLinear": ("VPLinear",), "SubVP": ("SubVP",), "VE": ("VE",)}
BOUND_FACTOR = 1000.0  # stated: global error <= 1000 x tolerance (local control, a few hundred steps)
DECAY = 100.0  # stated: the error at the tightest tolerance is at least 100 x below the error at the loosest
#: error floor (nats) added to every likelihood for the convergence claims' control, quick and full mode (about
#: twice their power, which is at most BOUND_FACTOR x the tightest tolerance)
CONTROL_FLOOR = {True: 2e-4, False: 3e-5}
#: schedules whose N(0, sigma_T^2 I) prior is claimed measurably wrong, with the control's reduction (nats) of
#: the mismatch (about twice the largest power measured over seeds 0-5)
MISMATCH_CLAIMS = {"VPLinear": 0.02, "VE": 0.06}


class ProbabilityFlow(Experiment):
    name = "probability_flow"
    title = "Probability-flow ODE likelihood is exact with the exact score (I12)"
    claim = (
        "With exact score, trace and prior, the PF-ODE log-likelihood equals log q to solver tolerance for every "
        "schedule, and its error falls with the tolerance (an error floor of 2e-4 nats fails); the N(0, sigma^2 I) "
        "prior adds a measurable error where the process does not reach pure noise."
    )

    def compute(self, ctx: Context) -> Dict[str, Any]:
        d = 2
        n_points = 16 if ctx.quick else 128
        tols = [1e-3, 1e-5, 1e-7] if ctx.quick else [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8]
        gmm = targets.random_gmm(d, 3, seed=ctx.seed)
        x = gmm.sample(n_points, generator=ctx.generator(1))
        rows: List[Dict[str, Any]] = []
        signed: Dict[str, List[np.ndarray]] = {}
        mismatch: Dict[str, Dict[str, float]] = {}
        for sname, S in ctx.progress(SCHEDULES.items(), "schedules"):
            sched = S()
            model = models.AnalyticModel(gmm, sched)

            def prior(x_end: torch.Tensor, t_max: torch.Tensor, sched: Any = sched) -> torch.Tensor:
                return gmm.log_prob(x_end, t=t_max, schedule=sched)

            signed[sname] = []
            for tol in tols:
                with Timer() as tm:
                    e = probability_flow(model, x, rtol=tol, atol=tol, trace="exact", prior=prior)
                truth = gmm.log_prob(x, t=e.extras["t_min"], schedule=sched)  # log q at the data end
                err = C.as_np(e.value - truth)
                signed[sname].append(err)
                rows.append({"schedule": sname, "tol": tol, "max_abs_error": float(np.abs(err).max()), "nfe": e.nfe,
                             "seconds": tm.seconds, "t_min": float(e.extras["t_min"][0]),
                             "t_max": float(e.extras["t_max"][0]),
                             "log_q0_minus_log_q_tmin": float((gmm.log_prob(x) - truth).abs().max())})
            # the N(0, sigma_T^2 I) prior vs the exact q_T at the end point of the same path
            s2 = float(sched.sigma2(e.extras["t_max"][:1]))
            gauss = targets.Gaussian(torch.zeros(d, dtype=torch.float64), s2 * torch.eye(d, dtype=torch.float64))
            mm = (gauss.log_prob(e.extras["x_end"]) - e.extras["prior_logp"]).abs()
            mismatch[sname] = {"mean": float(mm.mean()), "max": float(mm.max()),
                               "alpha": float(sched.alpha(e.extras["t_max"][:1]))}
            rows[-1]["gaussian_prior_mismatch_mean"] = mismatch[sname]["mean"]
        solver_err = max(r["max_abs_error"] for r in rows if r["tol"] == tols[-1])
        return {"d": d, "n_points": n_points, "tols": tols, "rows": rows, "signed": signed, "mismatch": mismatch,
                "solver_err": solver_err}

    def claims(self, r: Dict[str, Any], ctx: Context) -> Iterable[Claim]:
        tight, loose = r["tols"][-1], r["tols"][0]
        limit = BOUND_FACTOR * tight
        for group, members in GROUPS.items():
            e_tight = np.concatenate([r["signed"][m][-1] for m in members])
            e_loose = np.concatenate([r["signed"][m][0] for m in members])

            def check(s: float, e_tight: np.ndarray = e_tight, e_loose: np.ndarray = e_loose) -> Outcome:
                tight_err, loose_err = float(np.abs(e_tight + s).max()), float(np.abs(e_loose + s).max())
                return Outcome(tight_err <= limit and tight_err <= loose_err / DECAY, {
                    f"max |error| at tol {tight:g}": (tight_err, "nats"), "limit": (limit, "nats"),
                    f"max |error| at tol {loose:g}": (loose_err, "nats"),
                    "error ratio (loose / tight)": loose_err / tight_err if tight_err > 0 else float("inf"),
                })

            yield Claim(
                f"{group}: PF log-likelihood converges to log q with the tolerance",
                f"max |error| at tol {tight:g} <= {BOUND_FACTOR:g} x tol = {limit:g} nats and <= max |error| at tol "
                f"{loose:g} / {DECAY:g}" + (f" (points of {', '.join(members)} together)" if len(members) > 1 else ""),
                check,
                Control("tolerance-independent bias (an error floor) added to every likelihood",
                        CONTROL_FLOOR[ctx.quick], "nats"),
            )
        floor = 10.0 * r["solver_err"]
        for sname, size in MISMATCH_CLAIMS.items():
            mm = r["mismatch"][sname]
            yield Claim(
                f"{sname}: the N(0, sigma_T^2 I) prior biases the likelihood measurably (alpha(t_max) = "
                f"{mm['alpha']:.3g})",
                f"mean |log N(x_T; 0, sigma_T^2 I) - log q_T(x_T)| > 10 x largest solver error at tol {tight:g} "
                f"({floor:.2g} nats)",
                checks.above(mm["mean"], floor, unit="nats", label="mean |mismatch|"),
                Control("mismatch reduced (a process nearer pure noise)", size, "nats"),
            )

    def tables(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        return {"pf_errors.csv": r["rows"]}

    def notes(self, r: Dict[str, Any], ctx: Context) -> List[str]:
        rows, tols = r["rows"], r["tols"]
        ve_shift = max(x["log_q0_minus_log_q_tmin"] for x in rows if x["schedule"] == "VE")
        same = float(np.abs(r["signed"]["LiYan"][-1] - r["signed"]["VPCosine"][-1]).max())
        liyan = r["mismatch"]["LiYan"]["max"]
        return [
            "The ground truth is log q at the data end t_min, where the solver starts (for VE, the schedule's t_min "
            f"has sigma = 0.01, so log q_{{t_min}} differs from log q_0 by up to {ve_shift:.2g} nats; see "
            "pf_errors.csv).",
            f"LiYan and VPCosine solve the same ODE in the log-SNR clock: their likelihoods at tol {tols[-1]:g} differ "
            f"by at most {same:.2g} nats (solver rounding), so they share one claim.",
            f"LiYan's Gaussian prior mismatch is {liyan:.1e} nats: alpha is exactly 0 at its t_max, so the N(0, I) "
            "prior is exact by construction (a unit test, not a claim).",
        ]

    def figures(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        rows, tols, mismatch, solver_err = r["rows"], r["tols"], r["mismatch"], r["solver_err"]
        fig, axes = subplots(1, 2, figsize=(11, 4.3))
        ax = axes[0]
        for sname in SCHEDULES:
            rr = [x for x in rows if x["schedule"] == sname]
            ax.loglog([x["tol"] for x in rr], [max(x["max_abs_error"], 1e-16) for x in rr], "o-", label=sname)
        tt = np.array(tols)
        ax.loglog(tt, BOUND_FACTOR * tt, "k--", lw=1, label=f"{BOUND_FACTOR:g} x tol")
        ax.set_xlabel("rtol = atol")
        ax.set_ylabel("max |log p_ODE - log q| over points (nats)")
        ax.set_title(f"PF-ODE with exact score, trace and prior (d={r['d']}, {r['n_points']} points)")
        ax.legend(fontsize=8)
        ax = axes[1]
        names = list(mismatch)
        ax.bar(names, [max(mismatch[n]["mean"], 1e-16) for n in names], color="C1")
        ax.axhline(solver_err, color="k", ls="--", lw=1, label=f"solver error at tol {tols[-1]:g}")
        ax.set_yscale("log")
        ax.set_ylabel("mean |log N(x_T; 0, sigma_T^2 I) - log q_T(x_T)| (nats)")
        ax.set_title("Error of the Gaussian prior, per schedule")
        ax.legend(fontsize=8)
        return {"probability_flow": fig}


EXPERIMENT = ProbabilityFlow()

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
