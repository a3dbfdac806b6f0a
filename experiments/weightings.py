"""Weighted denoising losses as ELBOs of noise-augmented data (issue 11, part d; Kingma & Gao 2023).

For every weighting x time sampling pair of :class:`~densityformula.training.DenoisingLoss` on a
discrete cosine schedule and the 1-D three-component target of ``experiments/elbo_vs_kl.py``:

- the implied weight ``w(lambda)`` relative to the ELBO (I31) and whether it is monotone;
- the identity of I32, ``E_q[loss] = sum_j p_j E_{q_j}[-ELBO_j] + constant`` with
  ``p_j = w_{j+1} - w_j``, checked numerically: the constant is the same for several different
  models (random MLPs, mixture denoisers, a per-step model), while a wrong mixture (``p`` shifted
  by one step) gives a model-dependent difference;
- the true KL (exact grid, I13) of the loss's minimiser over the per-step family (closed form, I30)
  and over the two-component mixture family (L-BFGS, convergence reported), against the ELBO's
  minimiser and the best KL found (L-BFGS on the grid KL, warm-started at the ELBO's minimiser).

On a discrete schedule ``"importance"`` time sampling (logistic step probabilities) only changes the
Monte Carlo noise: its expected loss is that of ``"uniform"`` (I23), which the experiment measures.
``"truncated"`` keeps steps ``1..T-1`` (it cuts ``1e-3 T`` at each end, so step ``T`` goes): its
weight drops to 0 at the noisiest step, so ``p_{T-1} = -w_{T-1} < 0`` and it is not an ELBO mixture
(:func:`~densityformula.study.implied_weight` counts the dropped step as ``w_T = 0`` and agrees).
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run alone: python experiments/weightings.py
    import densityformula.experiment as _x

    __package__ = _x.script_package(__file__)

from typing import Any, Dict, Iterable, List

import numpy as np
import torch

from densityformula import schedules, study
from densityformula.experiment import Claim, Context, Control, Experiment, Outcome, subplots
from densityformula.training import DenoisingLoss

from . import _common as C

#: the target of experiments/elbo_vs_kl.py part (b)
Q3 = C.Q3
WEIGHTINGS = ("eps", "elbo", "sigma2", "uniform")
SAMPLINGS = ("uniform", "importance", "truncated")
#: tolerance of the identity's constant across models (nats), on top of the quadrature error estimates
ID_TOL = 1e-8


def _models(sched: schedules.Discrete) -> List[Any]:
    """Four different models: two random MLPs, a mixture denoiser of a wrong mixture, a random per-step model."""
    out = []
    for seed in (1, 2):
        f = study.mlp_family(sched, width=8, seed=seed)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in f.parameters:
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p))
        out.append(f.model)
    out.append(study.mixture_family(2, sched, seed=4).model)
    f = study.per_step_family(sched)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in f.parameters:
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p))
    out.append(f.model)
    return out


def _identity(sched: schedules.Discrete, loss: DenoisingLoss, models: List[Any],
              noisy: List[Any]) -> Dict[str, Any]:
    ids = [study.augmentation_identity(m, Q3, loss) for m in models]
    consts = np.array([i.constant for i in ids])
    wrong = []
    for i, ne in zip(ids, noisy):
        p = torch.cat([torch.zeros(1, dtype=i.p.dtype), i.p[:-1]])  # the control: p shifted by one step
        wrong.append(i.loss - float((p * ne.value.detach()).sum()))
    return {"constants": consts.tolist(), "wrong_constants": wrong, "errors": [i.error for i in ids],
            "p": ids[0].p.tolist(), "w": ids[0].weight.tolist(), "proper": ids[0].proper,
            "losses": [i.loss for i in ids]}


def _kl(fam: study.Family) -> float:
    return float(study.true_kl(fam, Q3))


class Weightings(Experiment):
    name = "weightings"
    title = "Weighted denoising losses as ELBOs of noise-augmented data (Kingma & Gao), 1-D mixture"
    claim = (
        "A weighted denoising loss equals, up to a model-independent constant, the mixture sum_j p_j E[-ELBO_j] of "
        "the ELBOs of the diffused data with p_j = w_{j+1} - w_j, a proper mixture exactly when w is monotone; on "
        "a misspecified family the weighting changes the minimiser's true KL."
    )

    def compute(self, ctx: Context) -> Dict[str, Any]:
        with C.one_thread():  # thousands of small tensor operations
            return self._compute(ctx)

    def _compute(self, ctx: Context) -> Dict[str, Any]:
        T = 20 if ctx.quick else 50
        kl_iter = 40 if ctx.quick else 300
        sched = schedules.Discrete.ddpm_cosine(T)
        var = float(Q3.covariance()[0, 0])
        models = _models(sched)
        noisy = [study.noisy_elbo(m, Q3) for m in models]
        # the reference minimisers: ELBO and best KL, per family
        ref: Dict[str, Dict[str, Any]] = {}
        for fname in ("per-step", "mixture"):
            fam = self._family(fname, sched, var)
            e = study.minimize(study.ELBOObjective(Q3), fam, max_iter=2000)
            kl_e = _kl(fam)
            k = study.minimize(study.KLObjective(Q3), fam, method="L-BFGS-B", max_iter=kl_iter)
            ref[fname] = {"kl_elbo_min": kl_e, "elbo_converged": e.converged, "best_kl": _kl(fam),
                          "kl_converged": k.converged, "kl_iterations": k.iterations}
        rows: List[Dict[str, Any]] = []
        weights: Dict[str, Any] = {}
        for w in WEIGHTINGS:
            for ts in SAMPLINGS:
                loss = DenoisingLoss(sched, w, ts)
                iw = study.implied_weight(loss)
                ident = _identity(sched, loss, models, noisy)
                key = f"{w}/{ts}"
                weights[key] = {"log_snr": iw.log_snr.tolist(), "w": iw.weight.tolist()}
                row: Dict[str, Any] = {
                    "weighting": w, "time_sampling": ts, "T": T, "steps": f"{int(loss.lo)}..{int(loss.hi)}",
                    "implied_monotone": iw.monotone, "p_nonnegative": ident["proper"],
                    "min_p": min(ident["p"]), "sum_p": sum(ident["p"]),
                    "identity_constant": float(np.mean(ident["constants"])),
                    "constant_spread": float(np.ptp(ident["constants"])),
                    "quadrature_error": float(sum(ident["errors"])),
                    "shifted_p_spread": float(np.ptp(ident["wrong_constants"])),
                    "loss_at_model0": ident["losses"][0],
                }
                for fname in ("per-step", "mixture"):
                    fam = self._family(fname, sched, var)
                    res = study.minimize(study.DenoisingObjective(Q3, loss), fam, max_iter=2000)
                    kl = _kl(fam)
                    r = ref[fname]
                    row[f"{fname}_method"] = res.method
                    row[f"{fname}_converged"] = res.converged
                    row[f"{fname}_kl"] = kl
                    row[f"{fname}_kl_minus_elbo_min"] = kl - r["kl_elbo_min"]
                    row[f"{fname}_kl_minus_best"] = kl - r["best_kl"]
                rows.append(row)
        return {"T": T, "rows": rows, "ref": ref, "weights": weights}

    @staticmethod
    def _family(fname: str, sched: schedules.Discrete, var: float) -> study.Family:
        if fname == "per-step":
            return study.per_step_family(sched, n_basis=6, data_var=var)
        return study.mixture_family(2, sched, init=Q3)

    def claims(self, r: Dict[str, Any], ctx: Context) -> Iterable[Claim]:
        rows = r["rows"]

        def identity(s: float) -> Outcome:
            # s = 1: the mixture with p shifted by one step (interpolated for the power search)
            spreads = [(1.0 - s) * x["constant_spread"] + s * x["shifted_p_spread"] for x in rows]
            return Outcome(max(spreads) <= ID_TOL, {
                "max spread of the constant over models": (max(spreads), "nats"), "limit": (ID_TOL, "nats"),
                "max quadrature error estimate |Q_n - Q_n/2|": (max(x["quadrature_error"] for x in rows), "nats")})

        yield Claim(
            "I32: E_q[loss] - sum_j p_j E_{q_j}[-ELBO_j] is the same for four different models, every weighting "
            "and time sampling",
            f"spread of the constant across models <= {ID_TOL} nats",
            identity,
            Control("fraction of the way to the one-step-shifted mixture p_{j-1}", 1.0, ""),
        )
        full = rows

        def proper(s: float) -> Outcome:
            agree = [x["p_nonnegative"] == (x["implied_monotone"] != (s >= 0.5)) for x in full]
            return Outcome(all(agree), {"pairs where p >= 0 agrees with monotone w": sum(agree),
                                        "pairs": len(full)})

        yield Claim(
            "p_j >= 0 exactly when implied_weight says w is monotone",
            "agreement on every weighting with every time sampling (a step a loss never draws weighs 0)",
            proper,
            Control("monotone flags negated (1 = negated)", 1.0, "", search=False),
        )
        for fname in ("per-step", "mixture"):
            def diff(s: float, fname: str = fname) -> Outcome:
                d = [abs(x[f"{fname}_kl_minus_elbo_min"]) + s for x in rows]
                return Outcome(max(d) <= 1e-8, {"max |KL - KL(ELBO min)|": (max(d), "nats")})

            def spread(s: float, fname: str = fname) -> Outcome:
                d = [abs(x[f"{fname}_kl_minus_elbo_min"]) * (1.0 - s) for x in rows]
                return Outcome(max(d) >= 1e-3, {"max |KL - KL(ELBO min)|": (max(d), "nats"), "limit": (1e-3, "nats")})

            if fname == "per-step":
                yield Claim(
                    "per-step family: every weighting's minimiser is the ELBO's (I30), so the KL does not depend on "
                    "the weighting",
                    "|KL(minimiser) - KL(ELBO minimiser)| <= 1e-8 nats for every pair",
                    diff,
                    Control("offset added to the KL differences", 1e-6, "nats"),
                )
            else:
                yield Claim(
                    "two-component mixture family (misspecified, time-consistent): the weighting moves the minimiser, "
                    "some weighting's KL differs from the ELBO minimiser's by at least 1e-3 nats",
                    "max over pairs of |KL(minimiser) - KL(ELBO minimiser)| >= 1e-3 nats",
                    spread,
                    Control("differences scaled down by the factor 1 -", 0.99, ""),
                )

        others = [x for x in full if x["weighting"] != "elbo"]
        elbo_kl = r["ref"]["mixture"]["kl_elbo_min"]

        def elbo_best(s: float) -> Outcome:
            d = [x["mixture_kl"] - s - elbo_kl for x in others]
            return Outcome(min(d) > 0.0, {"min KL(weighting minimiser) - KL(ELBO minimiser)": (min(d), "nats")})

        yield Claim(
            "mixture family: the ELBO's minimiser has a smaller true KL than the minimiser of every other weighting "
            "(eps, sigma2, uniform) over all steps",
            "KL(minimiser of the weighting) - KL(ELBO minimiser) > 0 for each",
            elbo_best,
            Control("KL of the other weightings' minimisers lowered by", 2e-4, "nats"),
        )

        def above_best(s: float) -> Outcome:
            d = [x["mixture_kl_minus_best"] - s for x in rows]
            return Outcome(min(d) > 0.0 and bool(r["ref"]["mixture"]["kl_converged"]),
                           {"min KL(minimiser) - best KL": (min(d), "nats"),
                            "best-KL search converged": float(r["ref"]["mixture"]["kl_converged"])})

        yield Claim(
            "mixture family: no weighting's minimiser reaches the best KL (each is misspecified differently)",
            "KL(minimiser) - best KL > 0 for every pair, the best-KL L-BFGS converged",
            above_best,
            Control("KL of every minimiser lowered by", 1e-2, "nats"),
        )

        def importance(s: float) -> Outcome:
            worst = 0.0
            for w in WEIGHTINGS:
                a = next(x for x in rows if x["weighting"] == w and x["time_sampling"] == "uniform")
                b = next(x for x in rows if x["weighting"] == w and x["time_sampling"] == "importance")
                worst = max(worst, abs(a["loss_at_model0"] - b["loss_at_model0"] * (1.0 + s))
                            / abs(a["loss_at_model0"]))
            return Outcome(worst <= 1e-12, {"max relative difference": worst, "limit": 1e-12})

        yield Claim(
            "importance time sampling on a discrete schedule has the expected loss of uniform sampling (I23)",
            "relative difference of E_q[loss] <= 1e-12 for every weighting",
            importance,
            Control("relative bias of the importance-sampled loss", 1e-9, ""),
        )

    def tables(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        wt = []
        for key, v in r["weights"].items():
            for lam, w in zip(v["log_snr"], v["w"]):
                wt.append({"loss": key, "log_snr": lam, "w": w})
        refs = [{"family": f, **v} for f, v in r["ref"].items()]
        return {"weightings.csv": r["rows"], "implied_weights.csv": wt, "reference_minimizers.csv": refs}

    def notes(self, r: Dict[str, Any], ctx: Context) -> List[str]:
        rows = r["rows"]
        out = [f"Cosine schedule, T = {r['T']}; target Q3 (weights 0.3, 0.3, 0.4, means -2, 0, 1.5)."]
        for x in rows:
            out.append(
                f"{x['weighting']}/{x['time_sampling']} (steps {x['steps']}): monotone {x['implied_monotone']}, "
                f"p >= 0 {x['p_nonnegative']} (min p {x['min_p']:.3g}); constant {x['identity_constant']:.6g} nats, "
                f"spread over 4 models {x['constant_spread']:.2e} (shifted-p control {x['shifted_p_spread']:.3g}); "
                f"KL of minimiser: per-step {x['per-step_kl']:.5f}, mixture {x['mixture_kl']:.5f} "
                f"(converged {x['mixture_converged']}, excess over best {x['mixture_kl_minus_best']:.2e})."
            )
        for f, v in r["ref"].items():
            out.append(f"{f}: KL of the ELBO minimiser {v['kl_elbo_min']:.5f}, best KL found {v['best_kl']:.5f} "
                       f"(L-BFGS on the grid KL, {v['kl_iterations']} iterations, converged {v['kl_converged']}; "
                       "where it stopped early the best KL is an upper bound).")
        out.append("eps and sigma2 have the same expectation on a discrete schedule (both are eps errors up to the "
                   "step's constant); importance time sampling changes only the Monte Carlo noise. 'truncated' drops "
                   "step T, so p_{T-1} = -w_{T-1} < 0 and it is not an ELBO mixture (implied_weight, counting the "
                   "dropped step as w_T = 0, agrees).")
        return out

    def figures(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        fig, axes = subplots(1, 2, figsize=(11.5, 4.4))
        ax = axes[0]
        for i, w in enumerate(WEIGHTINGS):
            for ls, ts in zip(("-", ":"), ("uniform", "truncated")):
                v = r["weights"][f"{w}/{ts}"]
                ax.semilogy(v["log_snr"], np.maximum(v["w"], 1e-12), ls, marker=".", color=f"C{i}", label=f"{w}/{ts}")
        ax.set_xlabel("log-SNR lambda_k")
        ax.set_ylabel("w(lambda) relative to the ELBO")
        ax.set_title(f"implied weights, cosine T={r['T']}")
        ax.legend(fontsize=7)
        ax = axes[1]
        labels = [f"{x['weighting']}/{x['time_sampling']}" for x in r["rows"]]
        xs = np.arange(len(labels))
        ax.bar(xs - 0.2, [x["per-step_kl"] for x in r["rows"]], 0.4, label="per-step (closed form)")
        ax.bar(xs + 0.2, [x["mixture_kl"] for x in r["rows"]], 0.4, label="mixture M=2 (L-BFGS)")
        for f, ls in (("per-step", "--"), ("mixture", ":")):
            ax.axhline(r["ref"][f]["best_kl"], ls=ls, color="k", lw=1, label=f"best KL, {f}")
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=70, fontsize=7)
        ax.set_ylabel("KL(q || p_sampler) of the minimiser (nats)")
        ax.legend(fontsize=7)
        return {"weightings": fig}


EXPERIMENT = Weightings()

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
