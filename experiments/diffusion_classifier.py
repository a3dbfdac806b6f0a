"""Diffusion classifiers: ELBO, the diffusion-classifier heuristic and the density formula against Bayes (Li & Yan 4.3).

Two 2-D settings, two classes with equal priors, each class a Gaussian mixture, VPLinear schedule:

* ``bumps``: class 0 is one broad Gaussian ``N(0, 0.6 I)``, class 1 sixteen narrow bumps
  (variance 0.01) on a unit grid over ``[-1.5, 1.5]^2`` -- the classes differ at fine scales
  (high log-SNR) in one direction and at coarse scales in the other;
* ``smooth``: two classes of two unit-spaced components of variance 0.5 each, shifted along ``e_1``
  -- the classes differ at every scale in the same direction.

For test points ``(x, y)`` drawn from the joint law, the Bayes classifier uses the exact
``log q(x | c)`` (I2).  It is compared with (a) the continuous ELBO of each class model (I8,
log-SNR drawn uniformly: the correct weights; I36 eq. 1), (b) the diffusion-classifier recipe:
minus the unweighted mean ``||eps - eps_c||^2`` at uniformly drawn times with the same noise for
every class (I36 eq. 2), also with independent noise per class, and with the ELBO's weights on the
recipe's own draws, (c) the density formula (I5/I6, Gauss-Legendre in log-SNR, control variate),
and (d) the same with a class-conditional MLP trained on the ``smooth`` setting (``--full``: on both).
Accuracy and agreement with Bayes (Wilson intervals) are tabulated against the number of time nodes
``M`` and noise draws per node ``K``.

Claims, each with a negative control:

* (a), (c) with the exact scores: their class contrasts agree with the exact log-likelihood ratios
  (density formula: every point and the mean; ELBO: the mean, its per-point terms being heavy tailed)
  and they disagree with Bayes exactly as often as their own Monte Carlo noise explains (an exact
  Poisson-binomial tail); control: a class-dependent bias of a fraction of a nat;
* (b) in ``bumps``: the heuristic's accuracy is below Bayes' by more than its paired interval, and
  at some points its margin is on the wrong side of Bayes' at family-wise level alpha; control: the
  same draws with their weights moved to the ELBO's (fraction 1: the correct weights);
* (b) in ``smooth``: the heuristic is as accurate as Bayes within its interval and nowhere
  significantly on the wrong side; control: a class bias added to its margins;
* (d) the trained network's ELBO by Monte Carlo and by the density formula agree (the same integral
  on a common log-SNR range, I8); control: a class bias.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run alone: python experiments/diffusion_classifier.py
    import densityformula.experiment as _x

    __package__ = _x.script_package(__file__)

import itertools
import math
from typing import Any, Dict, Iterable, List, Tuple

import numpy as np
import torch

from densityformula import models, schedules, targets
from densityformula.experiment import Claim, Context, Control, Experiment, Outcome, checks, subplots
from densityformula.implications import classifier as K
from densityformula.neural import ConditionalMLPDenoiser
from densityformula.training import Trainer

from . import _common as C

PRIOR = (0.5, 0.5)
_GRID = torch.tensor(list(itertools.product([-1.5, -0.5, 0.5, 1.5], repeat=2)), dtype=torch.float64)
SETTINGS: Dict[str, List[targets.GaussianMixture]] = {
    "bumps": [targets.GaussianMixture([1.0], [[0.0, 0.0]], [0.6]),
              targets.GaussianMixture(torch.full((16,), 1 / 16), _GRID, torch.full((16,), 0.01))],
    "smooth": [targets.GaussianMixture([0.5, 0.5], [[-1.5, 0.0], [-1.5, 2.0]], [0.5, 0.5]),
               targets.GaussianMixture([0.5, 0.5], [[1.0, 0.0], [1.0, 2.0]], [0.5, 0.5])],
}
#: the density formula's budget in the claims: nodes, noise draws per node and replicate, replicates, pilot
FORMULA = dict(n_nodes=32, n_noise=2, n_replicates=16, n_pilot=4)
#: the same for the trained network (float32, tails=False on NET_RANGE)
NET_FORMULA = dict(n_nodes=32, n_noise=1, n_replicates=16, n_pilot=4)
#: the network's ELBO is compared on this log-SNR range (intersected with its trained range), float32
NET_RANGE = (-15.0, 15.0)
Z95 = 1.959963984540054


def _budget(quick: bool) -> Dict[str, Any]:
    return {
        "n": 1000 if quick else 4000,
        "Ms": [16, 64, 256, 1024] if quick else [16, 64, 256, 1024, 4096],
        "M_ind": 64 if quick else 4096,  # time nodes of the heuristic with independent noise per class
        "MK": (64, 4) if quick else (1024, 4),  # the (time nodes, noise draws) pair of the K sweep
        "formulas": [(16, 1), (32, 2)] if quick else [(8, 1), (16, 1), (32, 2), (64, 4)],
        "train_steps": 500 if quick else 8000,
        "batch": 256 if quick else 512,
        "width": 64 if quick else 128,
        "n_net": 300 if quick else 2000,
        "M_net": 1024 if quick else 4096,  # ELBO draws of the network (the heuristic's: a quarter)
        "net_settings": ["smooth"] if quick else ["smooth", "bumps"],
    }


def _sub(draws: K.Draws, errors: torch.Tensor, M: int) -> Tuple[K.Draws, torch.Tensor]:
    """The first ``M`` time nodes of shared draws and of their errors (nested budgets from one set of draws)."""
    d = K.Draws(draws.lam[:, :M], draws.t[:, :M], draws.weight[:, :M], draws.z[:, :M], draws.proposal,
                draws.lambda_range)
    return d, errors[:, :, :M]


def _rate(hits: torch.Tensor) -> Dict[str, float]:
    k, n = int(hits.sum()), int(hits.numel())
    lo, hi = K.wilson_interval(k, n, Z95)
    return {"value": k / n, "lo": lo, "hi": hi}


def _row(setting: str, model: str, method: str, M: int, Kn: int, evals: int, dec: torch.Tensor, y: torch.Tensor,
         bayes: torch.Tensor) -> Dict[str, Any]:
    acc, agr = _rate(dec.cpu() == y), _rate(dec.cpu() == bayes)
    return {"setting": setting, "model": model, "method": method, "n_times": M, "n_noise": Kn,
            "evals_per_class": evals, "accuracy": acc["value"], "accuracy_lo": acc["lo"], "accuracy_hi": acc["hi"],
            "agreement": agr["value"], "agreement_lo": agr["lo"], "agreement_hi": agr["hi"]}


def _contrast_terms(errors: torch.Tensor, draws: K.Draws, a: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per-node contrasts in favour of class ``a`` ((n, M)): unweighted (the heuristic's) and ELBO-weighted
    (normalised to mean weight 1 over the proposal, so that the two are on one scale)."""
    n = errors.shape[0]
    idx = torch.arange(n)
    per_node = errors.mean(-1).double().cpu()  # (n, C, M)
    h = per_node[idx, 1 - a] - per_node[idx, a]
    lo, hi = draws.lambda_range
    w = draws.weight.double().cpu() / (hi - lo)
    return {"heuristic": h, "elbo": w * h}


def _exact_part(name: str, classes: List[targets.GaussianMixture], b: Dict[str, Any], ctx: Context,
                offset: int) -> Dict[str, Any]:
    sched = schedules.VPLinear()
    ms = [models.AnalyticModel(c, sched) for c in classes]
    n = b["n"]
    x, y = K.sample_classes(classes, PRIOR, n, generator=ctx.generator(offset))
    exact = K.exact_scores(classes, x)
    bayes = K.classify(exact, PRIOR)
    m_true = exact[:, 0] - exact[:, 1]
    zero, one = torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)
    M_max = b["Ms"][-1]
    draws, errors = {}, {}
    for key, prop, M, Kn, off in (("time", "time", M_max, 1, 1), ("time_ind", "time", b["M_ind"], 1, 2),
                                  ("log_snr", "log_snr", M_max, 1, 3), ("time_K", "time", *b["MK"], 4),
                                  ("log_snr_K", "log_snr", *b["MK"], 5)):
        draws[key] = K.shared_draws(ms, n, n_times=M, n_noise=Kn, proposal=prop, generator=ctx.generator(offset + off))
        errors[key] = K.noise_errors(ms, x, draws[key])
    rows: List[Dict[str, Any]] = [_row(name, "exact", "bayes", 0, 0, 0, bayes, y, bayes)]
    for M in b["Ms"]:
        dl, el = _sub(draws["log_snr"], errors["log_snr"], M)
        dt, et = _sub(draws["time"], errors["time"], M)
        if M <= b["M_ind"]:
            _, ei = _sub(draws["time_ind"], errors["time_ind"], M)
            indep = torch.stack([et[:, 0], ei[:, 1]], 1)  # class 0 and class 1 on independent draws
            rows.append(_row(name, "exact", "heuristic, independent noise", M, 1, M,
                             K.classify(K.heuristic_scores(indep)), y, bayes))
        rows.append(_row(name, "exact", "elbo", M, 1, M, K.classify(K.elbo_scores(el, dl), PRIOR), y, bayes))
        rows.append(_row(name, "exact", "elbo (recipe's draws)", M, 1, M,
                         K.classify(K.elbo_scores(et, dt), PRIOR), y, bayes))
        rows.append(_row(name, "exact", "heuristic", M, 1, M, K.classify(K.heuristic_scores(et)), y, bayes))
    Mk, Kk = b["MK"]
    rows.append(_row(name, "exact", "elbo", Mk, Kk, Mk * Kk,
                     K.classify(K.elbo_scores(errors["log_snr_K"], draws["log_snr_K"]), PRIOR), y, bayes))
    rows.append(_row(name, "exact", "heuristic", Mk, Kk, Mk * Kk,
                     K.classify(K.heuristic_scores(errors["time_K"])), y, bayes))
    formula = None
    for nodes, nn in b["formulas"]:
        kw = dict(FORMULA, n_nodes=nodes, n_noise=nn)
        f = K.formula_scores(ms, x, seed=ctx.seed + offset + 6, **kw)
        evals = nodes * (nn * kw["n_replicates"] + kw["n_pilot"]) + 2 * (nn * kw["n_replicates"] + kw["n_pilot"])
        rows.append(_row(name, "exact", "density formula", nodes, nn, evals, K.classify(f, PRIOR), y, bayes))
        if (nodes, nn) == (FORMULA["n_nodes"], FORMULA["n_noise"]):
            formula = f
    assert formula is not None
    elbo = K.elbo_scores(errors["log_snr"], draws["log_snr"])
    heur = K.heuristic_scores(errors["time"])
    out: Dict[str, Any] = {"rows": rows, "x": x, "y": y, "bayes": bayes, "m_true": m_true}
    for key, sc in (("formula", formula), ("elbo", elbo)):
        mv, se = K.margins(sc, zero, one)
        out[key] = {"margin": mv, "se": se, "dof": sc.dof}
    out["contrast"] = _contrast_terms(errors["time"], draws["time"], bayes)
    out["heuristic_decision"] = K.classify(heur)
    # why: per-node contrast in favour of Bayes' class against log-SNR, at the points the heuristic gets wrong
    ct = _contrast_terms(errors["log_snr"], draws["log_snr"], bayes)["heuristic"]
    out["why"] = _why(draws["log_snr"].lam.cpu(), ct, out["heuristic_decision"] != bayes, draws["time"], sched)
    return out


def _why(lam: torch.Tensor, contrast: torch.Tensor, wrong: torch.Tensor, time_draws: K.Draws,
         sched: schedules.Schedule) -> Dict[str, Any]:
    """The contrast's mean per log-SNR bin at the heuristic's wrong points, and each classifier's weight per unit
    log-SNR (ELBO: 1/2; the recipe: the density of lambda under uniform t, ``sigma^2 / g^2``, normalised)."""
    edges = np.linspace(*time_draws.lambda_range, 41)
    mid = 0.5 * (edges[1:] + edges[:-1])
    lam_w, c_w = lam[wrong].numpy().ravel(), contrast[wrong].numpy().ravel()
    which = np.clip(np.digitize(lam_w, edges) - 1, 0, mid.size - 1)
    mean = np.array([c_w[which == j].mean() if np.any(which == j) else np.nan for j in range(mid.size)])
    t = sched.t_from_log_snr(torch.tensor(mid))
    dens = (sched.sigma2(t) / sched.g2(t)).numpy()
    ends = torch.tensor(list(time_draws.lambda_range[::-1]), dtype=torch.float64)
    t_lo, t_hi = (float(v) for v in sched.t_from_log_snr(ends))
    dens = dens / (t_hi - t_lo)  # the density of lambda under uniform t: integrates to 1 over the range
    # the share of the ELBO's integral of the contrast that lies above lambda = 2, and of the recipe's
    ok = np.isfinite(mean)
    elbo_part = 0.5 * mean * (edges[1] - edges[0])
    heur_part = dens * mean * (edges[1] - edges[0])
    return {"lam": mid, "mean": mean, "heuristic_density": dens, "n_wrong": int(wrong.sum()),
            "elbo_total": float(np.nansum(elbo_part)), "elbo_above_2": float(np.nansum(elbo_part[ok & (mid > 2)])),
            "heur_total": float(np.nansum(heur_part)), "heur_above_2": float(np.nansum(heur_part[ok & (mid > 2)]))}


class _Labelled:
    """Fresh labelled draws ``(x, y)`` of the joint law of the classes (for the trainer)."""

    def __init__(self, classes: List[targets.GaussianMixture]) -> None:
        self.classes = classes

    def sample(self, n: int, generator: Any = None, return_labels: bool = False) -> Any:
        x, y = K.sample_classes(self.classes, PRIOR, n, generator=generator)
        return (x.float(), y) if return_labels else x.float()


def _net_part(name: str, classes: List[targets.GaussianMixture], b: Dict[str, Any], ctx: Context,
              offset: int) -> Dict[str, Any]:
    sched = schedules.VPLinear()
    net = ConditionalMLPDenoiser(2, sched, num_classes=len(classes), width=b["width"], depth=3, data_std=1.0,
                                 seed=ctx.seed + offset)
    trainer = Trainer(net, _Labelled(classes), steps=b["train_steps"], batch_size=b["batch"], lr=3e-3,
                      device=ctx.device, progress=False, seed=ctx.seed + offset)
    trainer.train()
    model = trainer.eval_model.eval()
    ms = [model.given(c) for c in range(len(classes))]
    n = b["n_net"]
    x, y = K.sample_classes(classes, PRIOR, n, generator=ctx.generator(offset + 1))
    bayes = K.classify(K.exact_scores(classes, x), PRIOR)
    x32 = x.float().to(ctx.device)
    lam_range = K.common_log_snr_range(ms, NET_RANGE)
    M = b["M_net"]
    dl = K.shared_draws(ms, n, n_times=M, proposal="log_snr", lambda_range=lam_range,
                        generator=ctx.generator(offset + 2), dtype=torch.float32, device=ctx.device)
    dt = K.shared_draws(ms, n, n_times=M // 4, proposal="time", lambda_range=lam_range,
                        generator=ctx.generator(offset + 3), dtype=torch.float32, device=ctx.device)
    el, et = K.noise_errors(ms, x32, dl).double(), K.noise_errors(ms, x32, dt).double()
    dl64 = K.Draws(dl.lam, dl.t, dl.weight, dl.z.double(), dl.proposal, dl.lambda_range)
    elbo = K.elbo_scores(el, dl64)
    heur = K.heuristic_scores(et)
    f = K.formula_scores(ms, x32, seed=ctx.seed + offset + 4, lambda_range=lam_range, tails=False, **NET_FORMULA)
    zero, one = torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)
    em, es = K.margins(elbo, zero, one)
    fm, fs = K.margins(f, zero, one)
    nf = NET_FORMULA
    evals_f = (nf["n_nodes"] + 2) * (nf["n_noise"] * nf["n_replicates"] + nf["n_pilot"])
    rows = [_row(name, "trained", "elbo", M, 1, M, K.classify(elbo, PRIOR), y, bayes),
            _row(name, "trained", "heuristic", M // 4, 1, M // 4, K.classify(heur), y, bayes),
            _row(name, "trained", "density formula", nf["n_nodes"], nf["n_noise"], evals_f,
                 K.classify(f, PRIOR), y, bayes)]
    return {"rows": rows, "elbo_margin": em.cpu(), "elbo_se": es.cpu(), "formula_margin": fm.cpu(),
            "formula_se": fs.cpu(), "lambda_range": lam_range, "dof_formula": f.dof}


class DiffusionClassifier(Experiment):
    name = "diffusion_classifier"
    title = "Diffusion classifiers: ELBO, the unweighted-error heuristic and the density formula against Bayes"
    claim = (
        "With exact scores the ELBO and density-formula classifiers estimate log q(x|c) without bias and disagree "
        "with Bayes only as often as their noise explains; the diffusion-classifier heuristic (unweighted errors at "
        "uniform times, shared noise) is as good as Bayes when the classes differ at every scale but loses accuracy "
        "when they differ at fine scales, because its implicit weight in log-SNR vanishes there."
    )

    def compute(self, ctx: Context) -> Dict[str, Any]:
        b = _budget(ctx.quick)
        with C.one_thread():
            exact = {}
            for i, (name, classes) in enumerate(ctx.progress(SETTINGS.items(), "settings")):
                exact[name] = ctx.cached(f"exact-{name}", lambda name=name, classes=classes, i=i: _exact_part(
                    name, classes, b, ctx, 100 * (i + 1)))
            nets = {}
            for i, name in enumerate(b["net_settings"]):
                nets[name] = ctx.cached(f"net-{name}", lambda name=name, i=i: _net_part(
                    name, SETTINGS[name], b, ctx, 1000 + 100 * i))
        rows = [r for e in exact.values() for r in e["rows"]] + [r for v in nets.values() for r in v["rows"]]
        return {"budget": b, "exact": exact, "nets": nets, "rows": rows}

    # -- claims ---------------------------------------------------------------------------------------------
    def claims(self, r: Dict[str, Any], ctx: Context) -> Iterable[Claim]:
        for name, e in r["exact"].items():
            yield from self._unbiased(name, e)
        yield from self._heuristic_breaks("bumps", r["exact"]["bumps"])
        yield from self._heuristic_fine("smooth", r["exact"]["smooth"])
        for name, v in r["nets"].items():
            diff = (v["elbo_margin"] - v["formula_margin"]).numpy()
            se = np.sqrt(v["elbo_se"].numpy() ** 2 + v["formula_se"].numpy() ** 2)
            mean_se = float(np.sqrt((se**2).sum()) / diff.size)
            yield Claim(
                f"(d) {name}, trained network: its ELBO contrast by Monte Carlo equals the density formula's (I8)",
                f"mean over {diff.size} points of (Monte Carlo - formula) contrast agrees with 0 (two-sided, level "
                f"{checks.ALPHA:g}) on log-SNR {tuple(round(v, 2) for v in v['lambda_range'])}",
                checks.agreement([float(diff.mean())], [mean_se], [0.0], dof=None),
                Control("class-dependent bias added to the Monte Carlo contrast", 0.3, "nats"),
            )

    def _unbiased(self, name: str, e: Dict[str, Any]) -> Iterable[Claim]:
        m_true = e["m_true"].numpy()
        bayes = e["bayes"]
        f = e["formula"]
        yield Claim(
            f"(c) {name}: density-formula contrasts log q(x|0) - log q(x|1) agree with the exact ones",
            f"every point and the mean within their Student-t intervals (dof {f['dof']}, level {checks.ALPHA:g})",
            checks.agreement(f["margin"], f["se"], m_true, dof=f["dof"]),
            Control("class-dependent bias added to the formula's contrast", 0.1, "nats"),
        )
        el = e["elbo"]
        err = (el["margin"].numpy() - m_true)
        mean_se = float(np.sqrt((el["se"].numpy() ** 2).sum()) / err.size)
        yield Claim(
            f"(a) {name}: ELBO contrasts (log-SNR uniform, shared noise) are unbiased for the exact ones",
            f"mean error over {err.size} points agrees with 0 (two-sided, level {checks.ALPHA:g}; per-point terms "
            "are heavy tailed, so no per-point test)",
            checks.agreement([float(err.mean())], [mean_se], [0.0], dof=None),
            Control("class-dependent bias added to the ELBO contrast", 0.15, "nats"),
        )
        for key, label, size in (("formula", "(c) density formula", 1.0), ("elbo", "(a) ELBO", 1.0)):
            sc = e[key]

            def p_of(s: float, sc: Dict[str, Any] = sc) -> float:
                dec = (sc["margin"] + s < 0).long()
                dis = int((dec != bayes).sum())
                return K.disagreement_p_value(e["m_true"], sc["se"], dis)

            D = int(((sc["margin"] < 0).long() != bayes).sum())
            E, S = K.predicted_disagreements(e["m_true"], sc["se"])
            yield Claim(
                f"{label} classifier, {name}: disagrees with Bayes only as often as its noise explains "
                f"({D} of {m_true.size}; expected {E:.1f} +- {S:.1f})",
                f"exact Poisson-binomial P(D >= observed) >= {checks.ALPHA:g}",
                checks.p_value(p_of, checks.ALPHA, label="P(D >= observed)"),
                Control("class-dependent bias added to the contrast", size, "nats"),
            )

    @staticmethod
    def _mixed(e: Dict[str, Any], s: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """Contrast in favour of Bayes' class and its standard error with weights ``(1 - s) 1 + s w_ELBO``."""
        s = min(max(s, 0.0), 1.0)
        terms = (1.0 - s) * e["contrast"]["heuristic"] + s * e["contrast"]["elbo"]
        return terms.mean(1), terms.std(1) / math.sqrt(terms.shape[1])

    def _heuristic_breaks(self, name: str, e: Dict[str, Any]) -> Iterable[Claim]:
        bayes, y = e["bayes"], e["y"]
        n = y.numel()
        c1 = checks.t_crit(1, None, checks.ALPHA, sided=1)
        c_pts = checks.t_crit(n, None, checks.ALPHA, sided=1)
        bayes_right = (bayes == y).double()

        def gap(s: float) -> Outcome:
            m, _ = self._mixed(e, s)
            dec = torch.where(m >= 0, bayes, 1 - bayes)
            d = bayes_right - (dec == y).double()
            g, se = float(d.mean()), float(d.std() / math.sqrt(n))
            return Outcome(g > c1 * se, {"accuracy(Bayes) - accuracy(heuristic)": g, "stderr": se,
                                         "z": g / se if se > 0 else 0.0, "limit z": c1})

        M = e["contrast"]["heuristic"].shape[1]
        yield Claim(
            f"(b) {name}: the heuristic ({M} uniform times, shared noise) is less accurate than Bayes",
            f"paired accuracy difference above {c1:.2f} standard errors (one-sided, level {checks.ALPHA:g})",
            gap,
            Control("weights moved towards the ELBO's by the fraction", 1.0, ""),
        )

        def wrong_side(s: float) -> Outcome:
            m, se = self._mixed(e, s)
            k = int((m / se < -c_pts).sum())
            return Outcome(k >= 1, {"points significantly on the wrong side": k, "limit z": c_pts})

        yield Claim(
            f"(b) {name}: the heuristic's limit contradicts Bayes at some points",
            f"at least one of {n} points has its contrast on the wrong side of Bayes' decision by more than "
            f"{c_pts:.2f} standard errors (Bonferroni, level {checks.ALPHA:g})",
            wrong_side,
            Control("weights moved towards the ELBO's by the fraction", 1.0, ""),
        )

    def _heuristic_fine(self, name: str, e: Dict[str, Any]) -> Iterable[Claim]:
        bayes, y = e["bayes"], e["y"]
        n = y.numel()
        c1 = checks.t_crit(1, None, checks.ALPHA, sided=1)
        c_pts = checks.t_crit(n, None, checks.ALPHA, sided=1)
        m0, se0 = self._mixed(e, 0.0)
        scale = float(m0.abs().median())
        bayes_right = (bayes == y).double()
        sign = torch.where(bayes == 0, 1.0, -1.0).double()  # the defect favours class 1 everywhere

        def biased(s: float) -> torch.Tensor:
            return m0 - s * scale * sign

        def not_worse(s: float) -> Outcome:
            m = biased(s)
            dec = torch.where(m >= 0, bayes, 1 - bayes)
            d = bayes_right - (dec == y).double()
            g, se = float(d.mean()), float(d.std() / math.sqrt(n))
            return Outcome(g <= c1 * se, {"accuracy(Bayes) - accuracy(heuristic)": g, "stderr": se, "limit": c1 * se})

        yield Claim(
            f"(b) {name}: the heuristic is as accurate as Bayes",
            f"paired accuracy difference at most {c1:.2f} standard errors (one-sided, level {checks.ALPHA:g})",
            not_worse,
            Control("class bias added to the heuristic's contrast, in units of its median |contrast|, of", 0.5, ""),
        )

        def nowhere_wrong(s: float) -> Outcome:
            k = int((biased(s) / se0 < -c_pts).sum())
            return Outcome(k == 0, {"points significantly on the wrong side": k, "limit z": c_pts})

        yield Claim(
            f"(b) {name}: the heuristic's limit nowhere contradicts Bayes",
            f"no point's contrast is on the wrong side by more than {c_pts:.2f} standard errors (Bonferroni)",
            nowhere_wrong,
            Control("class bias added to the heuristic's contrast, in units of its median |contrast|, of", 0.5, ""),
        )

    # -- report ---------------------------------------------------------------------------------------------
    def tables(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        why = [{"setting": k, **{f: e["why"][f] for f in ("n_wrong", "elbo_total", "elbo_above_2", "heur_total",
                                                           "heur_above_2")}} for k, e in r["exact"].items()]
        return {"classifiers.csv": r["rows"], "why.csv": why}

    def notes(self, r: Dict[str, Any], ctx: Context) -> List[str]:
        b = r["budget"]
        out = [f"{b['n']} test points per setting (x, y from the joint law, equal priors), VPLinear schedule; "
               f"trained: ConditionalMLPDenoiser width {b['width']}, depth 3, {b['train_steps']} steps, "
               f"{b['n_net']} test points."]
        for row in r["rows"]:
            shown = row["method"] == "bayes" or row["model"] == "trained"
            if shown or row["n_times"] in (b["Ms"][-1], FORMULA["n_nodes"]):
                out.append(f"{row['setting']} / {row['model']} / {row['method']} (M={row['n_times']}, "
                           f"K={row['n_noise']}): accuracy {row['accuracy']:.3f} [{row['accuracy_lo']:.3f}, "
                           f"{row['accuracy_hi']:.3f}], agreement with Bayes {row['agreement']:.3f} "
                           f"[{row['agreement_lo']:.3f}, {row['agreement_hi']:.3f}]")
        for k, e in r["exact"].items():
            w = e["why"]
            if w["n_wrong"] and w["elbo_total"]:
                out.append(f"{k}: at the {w['n_wrong']} points the heuristic gets wrong, the contrast for Bayes' "
                           f"class integrates to {w['elbo_total']:.3f} nats (ELBO weight), "
                           f"{w['elbo_above_2']:.3f} of it from log-SNR > 2; with the recipe's weight: "
                           f"{w['heur_total']:.4f} ({w['heur_above_2']:.4f} above 2; a negative total is the wrong "
                           "decision)")
        return out

    def figures(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        rows = r["rows"]
        fig, axes = subplots(1, 3, figsize=(15.5, 4.4))
        styles = {"elbo": "o-", "elbo (recipe's draws)": "s--", "heuristic": "^-", "heuristic, independent noise": "v:",
                  "density formula": "D-"}
        for ax, setting in zip(axes[:2], SETTINGS):
            for method, st in styles.items():
                rr = sorted((x for x in rows if x["setting"] == setting and x["model"] == "exact" and
                             x["method"] == method and (x["n_noise"] == 1 or method == "density formula")),
                            key=lambda x: x["evals_per_class"])
                if not rr:
                    continue
                ev = [x["evals_per_class"] for x in rr]
                ax.semilogx(ev, [x["agreement"] for x in rr], st, label=method)
                ax.fill_between(ev, [x["agreement_lo"] for x in rr], [x["agreement_hi"] for x in rr], alpha=0.15)
            ax.set_xlabel("model evaluations per point and class")
            ax.set_ylabel("agreement with Bayes (95% Wilson)")
            ax.set_title(f"{setting}: exact class scores")
            ax.legend(fontsize=7)
        ax = axes[2]
        for setting, e in r["exact"].items():
            w = e["why"]
            if not w["n_wrong"]:
                continue
            span = float(w["lam"][-1] - w["lam"][0]) * len(w["lam"]) / (len(w["lam"]) - 1)
            ax.plot(w["lam"], w["mean"] / span, "-", label=f"{setting}: ELBO weight x contrast")
            ax.plot(w["lam"], w["heuristic_density"] * w["mean"], "--", label=f"{setting}: recipe's weight x contrast")
        ax.axhline(0.0, color="0.5", lw=0.8)
        ax.set_xlabel("log-SNR lambda")
        ax.set_ylabel("weight x contrast for Bayes' class (weights of total 1)")
        ax.set_title("At the points the heuristic gets wrong")
        ax.legend(fontsize=7)
        return {"diffusion_classifier": fig}


EXPERIMENT = DiffusionClassifier()

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
