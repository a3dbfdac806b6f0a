"""The central study, part (c): trained networks -- their ELBO against the true NLL of their own sampler.

Parts (a) and (b) (``elbo_vs_kl``) minimize the two objectives exactly over a family.  Here MLPs are
*trained* (Adam, the library's :class:`~densityformula.training.Trainer`) with each weighting of
:class:`~densityformula.training.DenoisingLoss` -- ``eps``, ``elbo``, ``sigma2`` (its value equals the
eps loss: ``sigma^2 ||s - s_hat||^2 = ||eps - eps_hat||^2``, I22), ``uniform`` (x0 errors, MAR-style) --
on a T-step cosine schedule, over several seeds, with checkpoints along training.  For every
checkpoint:

* 1-D (the three-component target of part (b)): ``-E_q[ELBO]`` exactly by quadrature (I27), the
  true NLL ``E_q[-log p_theta]`` of the model's T-step DDPM sampler exactly on the grid (I13), and
  the excess of its training loss over the exact Bayes-optimal loss (the loss of the target's own
  denoiser, exact by quadrature, I31);
* 2-D (a three-component mixture): ``-ELBO`` (Monte Carlo, I9), the importance-weighted bound
  ``-IW_k`` of the sampler's NLL (I10, an upper bound) and at the last checkpoint the NLL of the
  network's probability-flow ODE (I12, a different model: the ODE's law), on the same held-out
  points, and the excess loss over the Bayes-optimal loss with common random numbers.

Then: does the ELBO rank the models like the true NLL (Spearman's rho, bootstrap over training runs,
I33), which pairs invert, and does training on the ELBO give the sampler with the best true NLL?
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run alone: python experiments/elbo_vs_nll.py
    import densityformula.experiment as _x

    __package__ = _x.script_package(__file__)

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import numpy as np
import torch

from densityformula import elbo, models, schedules, study, targets
from densityformula.experiment import Claim, Context, Control, Experiment, Outcome, Timer, checks, subplots
from densityformula.likelihood import probability_flow
from densityformula.neural import MLPDenoiser
from densityformula.training import DenoisingLoss, Trainer

from . import _common as C

F64 = torch.float64
#: the 1-D target (part (b)'s): outside every family of two components
Q1 = C.Q3
#: the 2-D target: three separated, anisotropic components
Q2 = targets.random_gmm(2, 3, seed=0, separation=4.0)
#: the trainings compared: (label, weighting, time sampling)
TRAININGS: Tuple[Tuple[str, str, str], ...] = (
    ("eps", "eps", "uniform"), ("elbo", "elbo", "uniform"), ("sigma2", "sigma2", "uniform"),
    ("uniform (x0)", "uniform", "uniform"),
)
#: the two weightings whose samplers the claims compare, training seed by training seed
PAIRED = ("eps", "elbo")


@dataclass(frozen=True)
class Budget:
    T: int
    width: int
    steps: int
    checkpoints: Tuple[int, ...]
    seeds: int
    n_points: int = 0  # 2-D: held-out points
    k: int = 16  # 2-D: chains of the importance-weighted bound
    lr: float = 3e-3
    batch: int = 256
    #: training seeds of the two weightings the claims compare seed by seed (eps and elbo; 0: ``seeds``)
    paired_seeds: int = 0

    def seeds_of(self, weighting: str) -> int:
        """The number of training seeds of a weighting: ``paired_seeds`` for eps and elbo, else ``seeds``."""
        return max(self.seeds, self.paired_seeds) if weighting in PAIRED else self.seeds


def budgets(quick: bool) -> Dict[int, Budget]:
    """The 1-D and 2-D budgets of a mode.

    Quick 1-D trains eps and elbo at 8 seeds (the others at 5): the claim that the eps-trained sampler is
    better is a one-sided t-test over training seeds at alpha 1e-3, whose limit is 7.17 at 5 seeds (4 dof)
    and 4.79 at 8; with the measured effect (mean / sd over seeds 4.9, 40 training pairs) 5 seeds pass it
    with probability about 0.95 (0.73 at 3.7, the lower end seen at 5 seeds), 8 with probability above
    0.999 at 3.8 (docs/experiments.md)."""
    if quick:
        return {1: Budget(T=50, width=32, steps=800, checkpoints=(50, 200, 800), seeds=5, paired_seeds=8),
                2: Budget(T=50, width=64, steps=600, checkpoints=(150, 600), seeds=3, n_points=384, k=16)}
    return {1: Budget(T=50, width=64, steps=4000, checkpoints=(100, 400, 1000, 4000), seeds=8),
            2: Budget(T=50, width=128, steps=3000, checkpoints=(300, 1000, 3000), seeds=5, n_points=1024, k=32)}


def trainings(quick: bool) -> Tuple[Tuple[str, str, str], ...]:
    """The trainings of a mode: sigma2's loss equals the eps loss in value (I22), so quick mode leaves it out
    and full mode trains it to show that it gives the same networks."""
    return tuple(t for t in TRAININGS if not (quick and t[1] == "sigma2"))


def _data_std(q: targets.GaussianMixture) -> float:
    return float(torch.sqrt(torch.diagonal(q.covariance()).mean()))


def _train(q: targets.GaussianMixture, b: Budget, weighting: str, sampling: str, seed: int,
           device: torch.device) -> Tuple[List[Tuple[int, Any]], float]:
    """Train one MLP; its EMA model (on the CPU) at each checkpoint, and the training seconds."""
    sched = schedules.Discrete.ddpm_cosine(b.T)
    net = MLPDenoiser(q.d, sched, width=b.width, depth=2, data_std=_data_std(q), seed=seed)
    loss = DenoisingLoss(sched, weighting, sampling)
    trainer = Trainer(net, q, steps=b.steps, batch_size=b.batch, lr=b.lr, loss=loss, device=device, progress=False,
                      seed=seed)
    snaps = []
    with Timer() as t:
        for until in b.checkpoints:
            trainer.train(until)
            snaps.append((until, copy.deepcopy(trainer.eval_model).to("cpu").eval()))
    return snaps, t.seconds


def _run_1d(b: Budget, label: str, weighting: str, sampling: str, seed: int,
            device: torch.device) -> List[Dict[str, Any]]:
    snaps, seconds = _train(Q1, b, weighting, sampling, seed, device)
    sched = schedules.Discrete.ddpm_cosine(b.T)
    loss = DenoisingLoss(sched, weighting, sampling)
    bayes = study.denoising_objective(models.AnalyticModel(Q1, sched), Q1, loss, dtype=F64)
    rows = []
    for step, m in snaps:
        with torch.no_grad():
            e = study.elbo_objective(m, Q1, method="quadrature", dtype=F64)
            kl = study.true_kl(m, Q1, dtype=F64, grid_error=step == b.checkpoints[-1])
            lv = study.denoising_objective(m, Q1, loss, dtype=F64)
        rows.append({
            "training": label, "seed": seed, "step": step, "neg_elbo": float(e), "neg_elbo_error": e.error,
            "nll": kl.neg_log_lik, "nll_error": kl.error, "kl": float(kl), "entropy": kl.entropy,
            "gap": float(e) - kl.neg_log_lik, "loss": float(lv), "bayes_loss": float(bayes),
            "loss_excess": float(lv) - float(bayes), "loss_error": lv.error + bayes.error,
            "train_seconds": seconds,
        })
    return rows


def _excess_2d(m: Any, bayes: Any, loss: DenoisingLoss, x0: torch.Tensor, seed: int) -> Tuple[float, float, float]:
    """``E[loss(m)] - E[loss(bayes)]`` with the same draws of ``t`` and noise for both, its standard error,
    and ``E[loss(bayes)]``."""
    with torch.no_grad():
        a = loss(m, x0, generator=torch.Generator(device=x0.device).manual_seed(seed)).double()
        c = loss(bayes, x0, generator=torch.Generator(device=x0.device).manual_seed(seed)).double()
    d = a - c
    return float(d.mean()), float(d.std() / math.sqrt(d.numel())), float(c.mean())


def _run_2d(b: Budget, label: str, weighting: str, sampling: str, seed: int, device: torch.device,
            x: torch.Tensor, ctx_seed: int) -> List[Dict[str, Any]]:
    snaps, seconds = _train(Q2, b, weighting, sampling, seed, device)
    sched = schedules.Discrete.ddpm_cosine(b.T)
    loss = DenoisingLoss(sched, weighting, sampling)
    bayes = models.AnalyticModel(Q2.to(device, torch.float32), sched)
    xd = x.to(device)
    x0 = Q2.sample(8192, generator=torch.Generator().manual_seed(ctx_seed + 11)).float().to(device)
    rows = []
    for step, m in snaps:
        m = m.to(device)
        with torch.no_grad():
            e = elbo.ddpm(m, xd, n_samples=2, generator=torch.Generator(device=device).manual_seed(ctx_seed + 12))
            iw = elbo.importance_weighted(m, xd, b.k, n_replicates=1,
                                          generator=torch.Generator(device=device).manual_seed(ctx_seed + 13))
        assert not isinstance(iw, dict)
        pf = None
        if step == b.checkpoints[-1]:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*beyond the range", category=RuntimeWarning)
                pf = probability_flow(m, xd, rtol=1e-4, atol=1e-4, trace="exact").value.double().cpu()
        ex, ex_se, bayes_loss = _excess_2d(m, bayes, loss, x0, ctx_seed + 14)
        rows.append({"training": label, "seed": seed, "step": step, "elbo": e.value.double().cpu(),
                     "iw": iw.value.double().cpu(), "pf": pf, "loss_excess": ex, "loss_excess_se": ex_se,
                     "bayes_loss": bayes_loss, "train_seconds": seconds})
    return rows


def _mean_se(v: torch.Tensor) -> Tuple[float, float]:
    v = v.double()
    return float(v.mean()), float(v.std() / math.sqrt(v.numel()))


def _seed_level(f: np.ndarray) -> Dict[str, Any]:
    """The mean of a paired difference over training seeds *and* held-out points, with the standard error
    of a claim about the training procedure, not about the networks at hand.

    ``f[s, i]``: the difference at training seed ``s`` and held-out point ``i`` (the same points at every
    seed).  Its mean ``m`` varies with the seeds (``sigma_a^2 / n``) and with the points (``sigma_b^2 / N``,
    shared by the seeds); ``se^2 = var_s(mean_i f) / n + var_i(mean_s f) / N`` estimates the sum (plus
    ``sigma_e^2 / (n N)``, conservative), with Welch-Satterthwaite degrees of freedom.  Per seed: the mean
    over points and its standard error over points (the network fixed)."""
    n, N = f.shape
    d, d_se = f.mean(1), f.std(1, ddof=1) / math.sqrt(N)
    a = float(d.var(ddof=1)) / n if n > 1 else math.inf
    b = float(f.mean(0).var(ddof=1)) / N
    dof = (a + b) ** 2 / (a**2 / (n - 1) + b**2 / (N - 1)) if n > 1 else math.nan
    return {"mean": float(f.mean()), "se": math.sqrt(a + b), "dof": dof, "per_seed": d, "per_seed_se": d_se,
            "n_seeds": n, "n_points": N}


def _significant(f: np.ndarray, what: str) -> Any:
    """A check that the paired difference ``f[seed, point]`` is positive for the training procedure: the
    mean over seeds and points significantly > 0 with :func:`_seed_level`'s standard error (one-sided
    Student-t, level ``alpha / 2``), and no seed's mean over points significantly < 0 (Bonferroni over the
    seeds at ``alpha / 2``, I25); defect: every difference lowered by ``s``."""
    st = _seed_level(f)
    d, se = st["per_seed"], st["per_seed_se"]
    c_pts = checks.t_crit(st["n_seeds"], st["n_points"] - 1, checks.ALPHA / 2, sided=1)
    c_mean = checks.t_crit(1, st["dof"], checks.ALPHA / 2, sided=1)

    def check(s: float) -> Outcome:
        z = (d - s) / se
        zm = (st["mean"] - s) / st["se"]
        return Outcome(bool(z.min() > -c_pts) and zm > c_mean, {
            f"min over seeds of {what}": (float(d.min() - s), "nats"), f"mean {what}": (st["mean"] - s, "nats"),
            "se (seeds and points)": (st["se"], "nats"), "min z (seeds)": float(z.min()), "limit z (seeds)": -c_pts,
            "t (mean)": zm, "limit t (mean)": c_mean})

    return check


def _eps_minus_elbo_2d(rows2: Sequence[Dict[str, Any]]) -> np.ndarray:
    """``IW_k(eps-trained) - IW_k(elbo-trained)`` per held-out point at the final checkpoint, one row per seed."""
    eps, elb = _final(rows2, "eps"), _final(rows2, "elbo")
    by_seed = {x["seed"]: x for x in eps}
    return np.stack([(by_seed[b["seed"]]["iw"] - b["iw"]).double().numpy() for b in elb if b["seed"] in by_seed])


def _final(rows: Sequence[Dict[str, Any]], label: str) -> List[Dict[str, Any]]:
    last = max(r["step"] for r in rows)
    return sorted((r for r in rows if r["training"] == label and r["step"] == last), key=lambda r: r["seed"])


class ElboVsNll(Experiment):
    name = "elbo_vs_nll"
    title = "Trained networks: the ELBO against the true NLL of their own sampler, per loss weighting (part c)"
    claim = (
        "For MLPs trained with each denoising-loss weighting the ELBO bounds the true NLL of the model's own sampler "
        "and ranks checkpoints like it (Spearman's rho), but the networks trained on the ELBO do not have the best "
        "true NLL: at equal training the eps-weighted ones do."
    )

    def compute(self, ctx: Context) -> Dict[str, Any]:
        bud = budgets(ctx.quick)
        base = 1000 * ctx.seed
        rows1: List[Dict[str, Any]] = []
        runs1 = [(lab, w, s, base + i) for lab, w, s in trainings(ctx.quick) for i in range(bud[1].seeds_of(w))]
        for lab, w, s, seed in ctx.progress(runs1, "1-D trainings"):
            rows1 += ctx.cached(f"d1-{w}-{s}-seed{seed}",
                                lambda lab=lab, w=w, s=s, seed=seed: _run_1d(bud[1], lab, w, s, seed, ctx.device))
        x2 = Q2.sample(bud[2].n_points, generator=ctx.generator(7)).float()
        rows2: List[Dict[str, Any]] = []
        runs2 = [(lab, w, s, base + i) for lab, w, s in trainings(ctx.quick) for i in range(bud[2].seeds_of(w))]
        for lab, w, s, seed in ctx.progress(runs2, "2-D trainings"):
            rows2 += ctx.cached(
                f"d2-{w}-{s}-seed{seed}",
                lambda lab=lab, w=w, s=s, seed=seed: _run_2d(bud[2], lab, w, s, seed, ctx.device, x2, ctx.seed))
        logq2 = Q2.log_prob(x2.double())
        eps_iw = {(x["seed"], x["step"]): x["iw"] for x in rows2 if x["training"] == "eps"}
        for r in rows2:
            r["iw_minus_eps_iw"], r["iw_minus_eps_iw_se"] = _mean_se(eps_iw[r["seed"], r["step"]] - r["iw"])
            r["neg_elbo"], r["neg_elbo_se"] = _mean_se(-r["elbo"])
            r["nll_iw"], r["nll_iw_se"] = _mean_se(-r["iw"])
            r["kl_iw"], r["kl_iw_se"] = _mean_se(logq2 - r["iw"])  # upper bound of KL(q || p_sampler)
            r["iw_minus_elbo"], r["iw_minus_elbo_se"] = _mean_se(r["iw"] - r["elbo"])
            if r["pf"] is not None:
                r["nll_pf"], r["nll_pf_se"] = _mean_se(-r["pf"])
                r["kl_pf"], r["kl_pf_se"] = _mean_se(logq2 - r["pf"])
        rank1 = study.rank_agreement([r["neg_elbo"] for r in rows1], [r["nll"] for r in rows1],
                                     groups=[(r["training"], r["seed"]) for r in rows1],
                                     x_error=[r["neg_elbo_error"] for r in rows1],
                                     y_error=[r["nll_error"] for r in rows1], seed=ctx.seed)
        last1 = [r for r in rows1 if r["step"] == bud[1].checkpoints[-1]]
        rank1_final = study.rank_agreement([r["neg_elbo"] for r in last1], [r["nll"] for r in last1],
                                           x_error=[r["neg_elbo_error"] for r in last1],
                                           y_error=[r["nll_error"] for r in last1], seed=ctx.seed)
        rank2 = study.rank_agreement([r["neg_elbo"] for r in rows2], [r["nll_iw"] for r in rows2],
                                     groups=[(r["training"], r["seed"]) for r in rows2],
                                     x_error=[2 * r["neg_elbo_se"] for r in rows2],
                                     y_error=[2 * r["nll_iw_se"] for r in rows2], seed=ctx.seed)
        within = {}
        for lab in dict.fromkeys(x["training"] for x in rows1):
            xs = [x for x in rows1 if x["training"] == lab]
            within[lab] = study.rank_agreement([x["neg_elbo"] for x in xs], [x["nll"] for x in xs],
                                               groups=[x["seed"] for x in xs], seed=ctx.seed)
        bayes1 = study.true_kl(models.AnalyticModel(Q1, schedules.Discrete.ddpm_cosine(bud[1].T)), Q1)
        return {"budgets": {d: b.__dict__ for d, b in bud.items()}, "rows1": rows1, "rows2": rows2,
                "H2": -float(logq2.mean()), "rank1": rank1, "within1": within, "rank1_final": rank1_final,
                "rank2": rank2, "last1": last1, "bayes_nll1": bayes1.neg_log_lik, "bayes_kl1": float(bayes1)}

    # ---- claims -------------------------------------------------------------------------------------------
    def claims(self, r: Dict[str, Any], ctx: Context) -> Iterable[Claim]:
        rows1, rows2 = r["rows1"], r["rows2"]
        gap = np.array([x["gap"] for x in rows1])
        gap_err = np.array([x["neg_elbo_error"] + x["nll_error"] for x in rows1])
        yield Claim(
            "(c, 1-D) -E_q[ELBO] >= E_q[-log p_sampler] at every checkpoint of every training (I9, exact)",
            f"gap + its quadrature/grid error >= 0 at all {len(rows1)} checkpoints",
            checks.above(gap + gap_err, 0.0, unit="nats", label="min gap + error"),
            Control("ELBO raised by", 0.1, "nats"),
        )
        rel = np.array([x["loss_excess"] / x["bayes_loss"] for x in rows1])
        rel_err = np.array([x["loss_error"] / x["bayes_loss"] for x in rows1])
        yield Claim(
            "(c, 1-D) no checkpoint's loss is below the Bayes-optimal loss of its weighting (exact, I31)",
            "(loss - Bayes loss) / Bayes loss + error >= 0 at every checkpoint",
            checks.above(rel + rel_err, 0.0, label="min relative excess"),
            Control("Bayes-optimal loss overstated by the fraction", 0.05, ""),
        )
        x_all = np.array([x["neg_elbo"] for x in rows1])
        y_all = np.array([x["nll"] for x in rows1])
        groups = [(x["training"], x["seed"]) for x in rows1]

        rx, ry = np.argsort(np.argsort(x_all)), np.argsort(np.argsort(y_all))

        def ranks(s: float) -> Outcome:
            # defect: the NLL's ranks pulled towards the ELBO's, (1 - s) rank(y) + s rank(x) (s = 1: the same order)
            t = min(s, 1.0)
            ra = r["rank1"] if s == 0 else study.rank_agreement(
                x_all, (1.0 - t) * ry + t * rx, groups=groups, n_boot=500, seed=ctx.seed)
            return Outcome(ra.hi < 0.9, {"Spearman rho": ra.rho, "95% bootstrap interval upper end": ra.hi,
                                         "limit": 0.9})

        yield Claim(
            "(c, 1-D) the ELBO does not rank models like the true NLL across weightings: Spearman's rho over all "
            "checkpoints of all trainings is well below 1",
            "the upper end of the 95% bootstrap interval of rho (resampling training runs) is below 0.9",
            ranks,
            Control("NLL's ranks pulled towards the ELBO's by the fraction", 1.0, ""),
        )
        eps = _final(rows1, "eps")
        elb = _final(rows1, "elbo")
        diff = np.array([b["nll"] - a["nll"] for a, b in zip(eps, elb)])
        yield self._positive(
            "(c, 1-D) training on the ELBO does not give the best sampler: at equal training the eps-trained networks' "
            "true NLL is lower than the ELBO-trained ones'", diff, "NLL(elbo-trained) - NLL(eps-trained)", 0.3)
        if any(x["training"] == "sigma2" for x in rows1):
            s2 = _final(rows1, "sigma2")
            eps_s2 = [x for x in eps if x["seed"] in {y["seed"] for y in s2}]
            yield Claim(
                "(c, 1-D) the sigma2 and eps weightings train the same networks (their losses are equal in value, I22)",
                "final true NLLs of the same seed agree to 1e-3 nats",
                checks.within([x["nll"] for x in s2], [x["nll"] for x in eps_s2], atol=1e-3, unit="nats"),
                Control("NLL of the sigma2-trained networks shifted by", 0.01, "nats"),
            )
        fin2 = [x for x in rows2 if x["step"] == r["budgets"][2]["checkpoints"][-1]]
        kl_iw = np.array([x["kl_iw"] for x in fin2])
        kl_iw_se = np.array([x["kl_iw_se"] for x in fin2])
        yield Claim(
            "(c, 2-D) the importance-weighted NLL of every final model's sampler is at least the entropy H(q) "
            "(Gibbs: it bounds the sampler's NLL from above, which is >= H(q))",
            "mean over held-out points of log q - IW_k >= 0 for every model and in the mean (one-sided, alpha 1e-3)",
            checks.at_least(kl_iw, kl_iw_se, 0.0, dof=r["budgets"][2]["n_points"] - 1),
            Control("IW_k raised by", 0.5, "nats"),
        )
        if not ctx.quick:
            # Claimed in full mode only.  Quick mode (600 steps, 3 seeds) does not resolve it: there the eps-trained
            # networks' IW NLL varies from seed to seed by more than the difference (docs/experiments.md), so it is
            # reported in the notes and in eps_vs_elbo.csv.
            yield Claim(
                "(c, 2-D) the ELBO-trained networks' samplers have a higher NLL (IW_k bound) than the eps-trained "
                "ones'",
                "paired over training seeds and held-out points: the mean of IW_k(eps-trained) - IW_k(elbo-trained) "
                "is significantly > 0 with a standard error over both (seeds and points), and no seed's is "
                "significantly < 0 (one-sided, alpha 1e-3 split as in I25)",
                _significant(_eps_minus_elbo_2d(rows2), "IW_k(eps) - IW_k(elbo)"),
                Control("difference lowered by", 0.3, "nats"),
            )
        d_iw = np.array([x["iw_minus_elbo"] for x in fin2])
        d_iw_se = np.array([x["iw_minus_elbo_se"] for x in fin2])
        yield Claim(
            "(c, 2-D) IW_k >= ELBO in expectation for every final model (I10)",
            "mean over held-out points of IW_k - ELBO >= 0 for every model and in the mean (one-sided, alpha 1e-3)",
            checks.at_least(d_iw, d_iw_se, 0.0, dof=r["budgets"][2]["n_points"] - 1),
            Control("IW_k lowered by", 0.2, "nats"),
        )

    @staticmethod
    def _positive(name: str, diff: np.ndarray, what: str, control: float) -> Claim:
        """Every seed's paired difference > 0 and the mean over seeds > 0 (one-sided t, alpha 1e-3)."""
        n = diff.size
        c = checks.t_crit(1, n - 1, sided=1)

        def check(s: float) -> Outcome:
            d = diff - s
            se = float(d.std(ddof=1) / math.sqrt(n))
            z = float(d.mean()) / se if se > 0 else math.inf * np.sign(d.mean())
            return Outcome(bool(d.min() > 0) and z > c, {f"min over seeds of {what}": (float(d.min()), "nats"),
                                                        "mean over seeds": (float(d.mean()), "nats"),
                                                        "t (mean)": z, "limit t": c})

        return Claim(name, f"{what} > 0 for each of the {n} seeds and in the mean (one-sided t, alpha 1e-3)", check,
                     Control(f"{what} lowered by", control, "nats"))

    # ---- report ---------------------------------------------------------------------------------------------
    def _by_training(self, r: Dict[str, Any]) -> List[Dict[str, Any]]:
        out = []
        for d, rows, keys in ((1, r["rows1"], ("neg_elbo", "nll", "kl", "gap", "loss_excess")),
                              (2, r["rows2"], ("neg_elbo", "nll_iw", "kl_iw", "nll_pf", "kl_pf", "loss_excess"))):
            for lab in dict.fromkeys(x["training"] for x in rows):
                fin = _final(rows, lab)
                row: Dict[str, Any] = {"d": d, "training": lab, "seeds": len(fin), "step": fin[0]["step"]}
                for k in keys:
                    v = np.array([x[k] for x in fin], float)
                    row[k] = float(v.mean())
                    row[f"{k}_se_seeds"] = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan
                out.append(row)
        return out

    def tables(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        rows2 = [{k: v for k, v in x.items() if not isinstance(v, torch.Tensor) and k != "pf"} for x in r["rows2"]]
        ranks = []
        for key, label in (("rank1", "1-D, all checkpoints"), ("rank1_final", "1-D, final checkpoints"),
                           ("rank2", "2-D, all checkpoints (IW_k NLL)")):
            ra = r[key]
            ranks.append({"set": label, "models": ra.n, "runs": ra.n_groups, "rho": ra.rho, "lo": ra.lo, "hi": ra.hi,
                          "inversions": len(ra.inversions), "resolved_pairs": ra.n_pairs})
        for lab, ra in r["within1"].items():
            ranks.append({"set": f"1-D, {lab} checkpoints only", "models": ra.n, "runs": ra.n_groups, "rho": ra.rho,
                          "lo": ra.lo, "hi": ra.hi, "inversions": len(ra.inversions), "resolved_pairs": ra.n_pairs})
        last = r["last1"]
        inv = [{"better ELBO": f"{last[i]['training']} seed {last[i]['seed']}",
                "better NLL": f"{last[j]['training']} seed {last[j]['seed']}",
                "neg_elbo difference": last[j]["neg_elbo"] - last[i]["neg_elbo"],
                "nll difference": last[i]["nll"] - last[j]["nll"]} for i, j in r["rank1_final"].inversions]
        return {"checkpoints_1d.csv": r["rows1"], "checkpoints_2d.csv": rows2, "by_training.csv": self._by_training(r),
                "rank_agreement.csv": ranks, "inversions_1d_final.csv": inv, "eps_vs_elbo.csv": self._eps_vs_elbo(r)}

    @staticmethod
    def _eps_vs_elbo(r: Dict[str, Any]) -> List[Dict[str, Any]]:
        """Per training seed, the final elbo-trained sampler's NLL minus the eps-trained one's (1-D: exact;
        2-D: the IW_k bound, mean over held-out points and its standard error over them)."""
        eps = {x["seed"]: x for x in _final(r["rows1"], "eps")}
        out = [{"d": 1, "seed": b["seed"], "nll_eps": eps[b["seed"]]["nll"], "nll_elbo": b["nll"],
                "difference": b["nll"] - eps[b["seed"]]["nll"], "difference_se_points": 0.0}
               for b in _final(r["rows1"], "elbo") if b["seed"] in eps]
        eps2 = {x["seed"]: x for x in _final(r["rows2"], "eps")}
        out += [{"d": 2, "seed": b["seed"], "nll_eps": eps2[b["seed"]]["nll_iw"], "nll_elbo": b["nll_iw"],
                 "difference": b["iw_minus_eps_iw"], "difference_se_points": b["iw_minus_eps_iw_se"]}
                for b in _final(r["rows2"], "elbo") if b["seed"] in eps2]
        return out

    def notes(self, r: Dict[str, Any], ctx: Context) -> List[str]:
        b1, b2 = r["budgets"][1], r["budgets"][2]
        by = self._by_training(r)
        one = "; ".join(f"{x['training']}: NLL {x['nll']:.4f} +- {x['nll_se_seeds']:.4f}, -ELBO {x['neg_elbo']:.4f} "
                        f"+- {x['neg_elbo_se_seeds']:.4f}" for x in by if x["d"] == 1)
        two = "; ".join(f"{x['training']}: IW NLL {x['nll_iw']:.3f} +- {x['nll_iw_se_seeds']:.3f}, PF NLL "
                        f"{x['nll_pf']:.3f}, -ELBO {x['neg_elbo']:.3f}" for x in by if x["d"] == 2)
        ra, rf, r2 = r["rank1"], r["rank1_final"], r["rank2"]
        eps, elb = _final(r["rows1"], "eps"), _final(r["rows1"], "elbo")
        better_elbo = sum(b["neg_elbo"] < a["neg_elbo"] for a, b in zip(eps, elb))
        better_nll = sum(b["nll"] < a["nll"] for a, b in zip(eps, elb))
        within = "; ".join(f"{lab} {ra.rho:.2f} [{ra.lo:.2f}, {ra.hi:.2f}]" for lab, ra in r["within1"].items())
        secs = sum({(x["training"], x["seed"]): x["train_seconds"] for x in r["rows1"] + r["rows2"]}.values())
        return [
            f"1-D: T = {b1['T']} cosine, MLP width {b1['width']}, {b1['steps']} Adam steps, {b1['seeds']} seeds "
            f"({max(b1['seeds'], b1['paired_seeds'])} for eps and elbo), "
            f"checkpoints {list(b1['checkpoints'])}; 2-D: width {b2['width']}, {b2['steps']} steps, {b2['seeds']} "
            f"seeds, {b2['n_points']} held-out points, IW with k = {b2['k']}. Training took {secs:.0f} s in all.",
            f"1-D, final checkpoints (mean +- se over seeds, exact per model): {one}. The exact denoiser's "
            f"{b1['T']}-step sampler: NLL {r['bayes_nll1']:.4f} (KL {r['bayes_kl1']:.4f}).",
            f"2-D, final checkpoints: {two}; H(q) on the same points {r['H2']:.3f}.",
            f"Spearman's rho (-ELBO vs true NLL): 1-D all checkpoints {ra.rho:.3f} [{ra.lo:.3f}, {ra.hi:.3f}], "
            f"{len(ra.inversions)} of {ra.n_pairs} resolved pairs inverted; 1-D final checkpoints only {rf.rho:.3f} "
            f"[{rf.lo:.3f}, {rf.hi:.3f}], {len(rf.inversions)} of {rf.n_pairs} inverted (inversions_1d_final.csv); "
            f"2-D (IW NLL) {r2.rho:.3f} [{r2.lo:.3f}, {r2.hi:.3f}], {len(r2.inversions)} of {r2.n_pairs} inverted.",
            f"1-D, ELBO-trained against eps-trained at the same seed: the ELBO-trained network has the better ELBO in "
            f"{better_elbo} of {len(eps)} seeds and the better true NLL in {better_nll}. Spearman's rho within one "
            f"training's checkpoints: {within}.",
            "sigma2 and eps are the same loss in value (I22); quick mode leaves sigma2 out.",
            self._note_2d(r, ctx),
        ]

    @staticmethod
    def _note_2d(r: Dict[str, Any], ctx: Context) -> str:
        """The 2-D eps-vs-elbo sampler comparison with the seed-level standard error (claimed in full mode only)."""
        f = _eps_minus_elbo_2d(r["rows2"])
        st = _seed_level(f)
        c = checks.t_crit(1, st["dof"], checks.ALPHA / 2, sided=1)
        per = ", ".join(f"{v:+.3f} +- {e:.3f}" for v, e in zip(st["per_seed"], st["per_seed_se"]))
        head = ("Reported, not claimed in quick mode (claimed in full mode)" if ctx.quick else "Claimed")
        return (f"{head}: 2-D, IW_k(eps-trained) - IW_k(elbo-trained) at the final checkpoint (> 0: the eps-trained "
                f"sampler is better), per seed (mean +- se over held-out points) {per}; mean {st['mean']:.3f} +- "
                f"{st['se']:.3f} (se over seeds and points), t {st['mean'] / st['se']:.2f} against the claim's limit "
                f"{c:.2f} ({st['dof']:.1f} dof). In quick mode the eps-trained networks' IW NLL varies from seed "
                "to seed by more than the difference, which `make validate` found failing at seeds 2 and 3.")

    def figures(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        fig, axes = subplots(1, 3, figsize=(15.5, 4.6))
        labels = [t[0] for t in TRAININGS]
        # sigma2 trains the same networks as eps: hollow squares, so the eps points stay visible inside them
        hollow: Dict[str, Any] = {"marker": "s", "mfc": "none", "ms": 6}
        mk = {lab: (hollow if lab == "sigma2" else {"marker": "o", "ms": 3}) for lab in labels}
        ax = axes[0]
        for i, lab in enumerate(labels):
            for s in sorted({x["seed"] for x in r["rows1"] if x["training"] == lab}):
                xs = [x for x in r["rows1"] if x["training"] == lab and x["seed"] == s]
                ax.plot([x["neg_elbo"] for x in xs], [x["nll"] for x in xs], "-", color=f"C{i}", alpha=0.7,
                        label=lab if s == min(x["seed"] for x in r["rows1"]) else None, **mk[lab])
        lo = min(x["nll"] for x in r["rows1"])
        hi = max(x["neg_elbo"] for x in r["rows1"])
        ax.plot([lo, hi], [lo, hi], "k:", lw=1, label="NLL = -ELBO")
        ax.axhline(r["bayes_nll1"], color="gray", lw=1, ls="--", label="exact denoiser's sampler")
        ax.set_xscale("log")
        ax.set_xlabel("-E_q[ELBO] (nats, exact; log scale)")
        ax.set_ylabel("E_q[-log p_sampler] (nats, exact grid)")
        ax.set_title("1-D: ELBO vs true NLL along training")
        ax.legend(fontsize=7)
        ax = axes[1]
        for i, lab in enumerate(labels):
            for d, ls, rows in ((1, "-", r["rows1"]), (2, "--", r["rows2"])):
                runs = sorted({x["seed"] for x in rows if x["training"] == lab})
                if not runs:
                    continue
                steps = sorted({x["step"] for x in rows if x["training"] == lab})
                rel = np.array([[next(x["loss_excess"] / x["bayes_loss"] for x in rows if x["training"] == lab
                                      and x["seed"] == s and x["step"] == st) for st in steps] for s in runs])
                ax.plot(steps, np.median(rel, 0), ls, color=f"C{i}", label=f"{lab}, {d}-D",
                        **(hollow if lab == "sigma2" else {"marker": "o"}))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("(loss - Bayes-optimal loss) / Bayes-optimal loss")
        ax.set_title("excess over the exact Bayes-optimal loss (median over seeds)")
        ax.legend(fontsize=7)
        ax = axes[2]
        fin2 = [x for x in r["rows2"] if x["step"] == r["budgets"][2]["checkpoints"][-1]]
        for i, lab in enumerate(labels):
            xs = [x for x in fin2 if x["training"] == lab]
            if xs:
                ax.errorbar([x["neg_elbo"] for x in xs], [x["nll_iw"] for x in xs], xerr=[x["neg_elbo_se"] for x in xs],
                            yerr=[x["nll_iw_se"] for x in xs], fmt="s" if lab == "sigma2" else "o", color=f"C{i}",
                            mfc="none" if lab == "sigma2" else None, label=f"{lab}: IW_k")
                ax.plot([x["neg_elbo"] for x in xs], [x["nll_pf"] for x in xs], "+" if lab == "sigma2" else "x",
                        color=f"C{i}", label=f"{lab}: ODE")
        ax.axhline(r["H2"], color="gray", lw=1, ls="--", label="H(q)")
        ax.set_xlabel("-ELBO (nats, held-out mean)")
        ax.set_ylabel("NLL (nats)")
        ax.set_title("2-D, final models: sampler NLL (IW_k) and ODE NLL")
        ax.legend(fontsize=6, ncol=2)
        return {"elbo_vs_nll": fig}


EXPERIMENT = ElboVsNll()

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
