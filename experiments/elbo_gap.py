"""The continuous-time ELBO of an imperfect denoiser (docs/math.md I8): gap on average, not pointwise.

``ELBO_theta(x)`` is the density formula with ``D_theta`` in place of the true denoiser
(:func:`densityformula.elbo.continuous`).  I8 says
``E_q[ELBO_theta] = E_q[log q_0] - 1/2 int E_q||D_theta - D||^2 dsnr`` -- a lower bound on
average -- while pointwise the ELBO can exceed ``log q_0``.  Two imperfect models of a 2-D
mixture ``q``, each with an independent ground truth for the gap:

* ``shifted``: the exact denoiser of ``q'`` = ``q`` with every mean shifted.  Theorem 1 applied to
  ``q'`` gives ``ELBO_theta(x) = log q'(x)`` pointwise (closed form), and the gap is
  ``KL(q || q')`` (Monte Carlo of exact log-densities; also by :func:`elbo.kl_de_bruijn`, I11).
* ``biased``: ``D_theta = D + delta sigma_t^2`` (a non-conservative perturbation, not the denoiser
  of any law).  The gap is ``1/2 ||delta||^2 int sigmoid(l) sigmoid(-l) dl = ||delta||^2 / 2``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict

import torch

from densityformula import models, schedules, targets
from densityformula.elbo import continuous, kl_de_bruijn

from . import _common as C  # the driver loads experiments/ as a package

NAME = "elbo_gap"
TITLE = "ELBO gap of an imperfect denoiser (I8): below log q_0 on average, not pointwise"
CLAIM = (
    "For imperfect denoisers, E_q[ELBO] = E_q[log q_0] - 1/2 int E||D_theta - D||^2 dsnr (I8), "
    "while the ELBO exceeds log q_0 at some points."
)


class BiasedDenoiser(models.DiffusionModel):
    """``D_theta(x_t, t) = D(x_t, t) + delta sigma_t^2``: the exact denoiser plus a smooth bias.

    Its I8 gap is ``1/2 ||delta||^2 int alpha^2 sigma^2 dlambda = ||delta||^2 / 2`` for any VP schedule.
    """

    def __init__(self, base: models.AnalyticModel, delta: torch.Tensor) -> None:
        self.base = base
        self.schedule = base.schedule
        self.delta = delta

    def denoise(self, x_t: torch.Tensor, t: Any) -> torch.Tensor:
        tt = torch.as_tensor(t, dtype=torch.float64)
        s2 = self.schedule.sigma2(tt).to(x_t.dtype)
        s2 = s2[:, None] if s2.ndim == 1 else s2
        return self.base.denoise(x_t, t) + s2 * self.delta.to(x_t.dtype)


def run(out_dir: Path, *, quick: bool, seed: int) -> Dict[str, Any]:
    d = 2
    # the x ~ q spread of ELBO - log q_0 (about 1 nat) dominates the standard error of the mean, so
    # many points with a cheap per-point estimate beat few points with a precise one
    n_points = 512 if quick else 2048
    est_kw = dict(n_nodes=24, n_noise=4, n_replicates=16) if quick else dict(n_nodes=48, n_noise=16, n_replicates=16)
    dof = est_kw["n_replicates"] - 1
    sched = schedules.LiYan()
    q = targets.random_gmm(d, 3, seed=seed)
    shift = torch.tensor([0.6, -0.4], dtype=torch.float64)
    q_shift = targets.GaussianMixture(q.weights, q.means + shift, q.covs)
    delta = torch.tensor([1.0, 0.5], dtype=torch.float64)
    exact = models.AnalyticModel(q, sched)
    cases = {
        "shifted": models.AnalyticModel(q_shift, sched),
        "biased": BiasedDenoiser(exact, delta),
    }
    # ground-truth gaps
    big = q.sample(200_000 if quick else 2_000_000, generator=C.generator(seed + 10))
    lr = q.log_prob(big) - q_shift.log_prob(big)
    kl_mc, kl_mc_se = float(lr.mean()), float(lr.std() / math.sqrt(lr.numel()))
    truth_gap = {"shifted": (kl_mc, kl_mc_se), "biased": (0.5 * float((delta**2).sum()), 0.0)}
    dbj = kl_de_bruijn(q, cases["shifted"], n_samples=4096 if quick else 32768, generator=C.generator(seed + 11))

    x = q.sample(n_points, generator=C.generator(seed + 1))
    logq = q.log_prob(x)
    claims, rows, notes = [], [], []
    results = {}
    for name, model in cases.items():
        with C.Timer() as tm:
            e = continuous(model, x, seed=seed + 2, **est_kw)
        diff = e.value - logq  # ELBO - log q_0, per point
        m = float(diff.mean())
        se_m = float(diff.std() / math.sqrt(n_points))  # x ~ q sampling and MC noise together
        gap, gap_se = truth_gap[name]
        se = math.sqrt(se_m**2 + gap_se**2)
        crit = C.t_crit(len(cases), n_points - 1)
        claims.append(C.claim(
            f"{name}: E_q[ELBO - log q_0] = -(1/2) int E||D_theta - D||^2 dsnr",
            {"measured": m, "theory": -gap, "stderr": se},
            f"|measured - theory| <= {crit:.2f} stderr", abs(m + gap) <= crit * se,
        ))
        claims.append(C.claim(f"{name}: ELBO below log q_0 on average", {"mean": m, "stderr": se_m},
                              f"mean + {crit:.2f} stderr < 0", m + crit * se_m < 0))
        z = diff / e.stderr
        c_pt = C.t_crit(n_points, dof)
        n_above = int((z > c_pt).sum())
        claims.append(C.claim(f"{name}: ELBO exceeds log q_0 at some points (not a pointwise bound)",
                              {"points significantly above": n_above, "of": n_points, "max excess": float(diff.max())},
                              f">= 1 point with (ELBO - log q_0)/stderr > {c_pt:.2f}", n_above >= 1))
        if name == "shifted":
            claims.append(C.agreement("shifted: ELBO_theta(x) = log q'(x) pointwise (Theorem 1 for q')",
                                      e.value, e.stderr, q_shift.log_prob(x), dof=dof,
                                      bound=e.extras["truncation_bound"]))
        results[name] = (C.as_np(logq), C.as_np(diff), C.as_np(e.stderr), m, se_m, gap)
        rows.append({"model": name, "mean_elbo_minus_logq": m, "stderr": se_m, "theory_gap": gap,
                     "theory_gap_stderr": gap_se, "points_above_log_q0": n_above, "n_points": n_points,
                     "seconds": tm.seconds})
    g, gse = float(dbj.value[0]), float(dbj.stderr[0])
    se = math.sqrt(gse**2 + kl_mc_se**2)
    crit = C.t_crit(1, None)
    claims.append(C.claim("de Bruijn (I11): kl_de_bruijn(q, shifted model) = KL(q || q') by Monte Carlo",
                          {"de Bruijn": g, "Monte Carlo": kl_mc, "stderr": se},
                          f"|difference| <= {crit:.2f} stderr", abs(g - kl_mc) <= crit * se))
    tables = [C.save_table(rows, out_dir, "gaps.csv")]

    fig, axes = C.plt.subplots(1, 2, figsize=(11, 4.3), sharey=True)
    for ax, (name, (lq, diff, se, m, se_m, gap)) in zip(axes, results.items()):
        ax.errorbar(lq, diff, yerr=2 * se, fmt="o", ms=3, capsize=1.5, alpha=0.8, label="ELBO(x) - log q_0(x), ±2 s.e.")
        ax.axhline(0.0, color="k", lw=0.8)
        ax.axhline(-gap, color="C3", ls="--", label=f"theory mean: -gap = {-gap:.3f}")
        ax.axhline(m, color="C2", ls=":", label=f"measured mean {m:.3f} ± {se_m:.3f}")
        ax.set_xlabel("log q_0(x)")
        ax.set_title({"shifted": "exact denoiser of a shifted mixture q'", "biased": "D + delta sigma_t^2"}[name])
        ax.legend(fontsize=8)
    axes[0].set_ylabel("continuous ELBO - log q_0  (nats)")
    figures = [C.save_fig(fig, out_dir, "elbo_gap.png")]
    notes.append(f"Gap ground truths: shifted: KL(q||q') = {kl_mc:.4f} ± {kl_mc_se:.1g} (Monte Carlo of exact "
                 f"log-densities, {big.shape[0]} samples); biased: ||delta||^2/2 = {truth_gap['biased'][0]:.4f} "
                 "(closed form). "
                 f"kl_de_bruijn gives {g:.4f} ± {gse:.1g}.")
    return {"claims": claims, "figures": figures, "tables": tables, "notes": notes}
