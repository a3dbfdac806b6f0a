"""DDPM ELBO <= importance-weighted bound <= exact sampler log-density (docs/math.md I9, I10, I13).

In 1-D the output density of a model's DDPM ancestral sampler can be propagated on a grid
(:func:`densityformula.likelihood.sampler_density_1d`, I13), so the bounds can be checked
against the density they bound, point by point.  Target: a 1-D mixture ``q``; model: the
exact denoiser of ``q'`` (``q`` with shifted means) on ``Discrete.ddpm_linear(T)``, sampler
variance ``beta``.  Grid error: the difference between the grid and a grid twice as fine.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from densityformula import models, schedules, targets
from densityformula.elbo import ddpm, importance_weighted
from densityformula.likelihood import sampler_density_1d

from . import _common as C  # the driver loads experiments/ as a package

NAME = "ddpm_bounds"
TITLE = "DDPM ELBO <= IW_k <= exact log-density of the sampler (I9, I10)"
CLAIM = (
    "For an imperfect model in 1-D, the DDPM ELBO and the importance-weighted bounds IW_k (non-decreasing in k) "
    "lie below the exact log-density of the model's DDPM sampler at every point, and IW_k approaches it."
)


def run(out_dir: Path, *, quick: bool, seed: int) -> Dict[str, Any]:
    T = 50 if quick else 250
    n_points = 16 if quick else 64
    ks = [1, 2, 4, 8, 16, 32, 64]
    n_rep = 8 if quick else 32
    n_samples = 512 if quick else 4096
    G = 641 if quick else 1201  # grid points on [-10, 10] (spacing <= sqrt(beta_1)); the check grid has 2G - 1
    q = targets.random_gmm(1, 3, seed=seed)
    q_model = targets.GaussianMixture(q.weights, q.means + 0.3, q.covs)
    model = models.AnalyticModel(q_model, schedules.Discrete.ddpm_linear(T))
    x = q.sample(n_points, generator=C.generator(seed + 1))
    g = C.generator(seed + 2)
    claims, notes = [], []
    with C.Timer() as t_elbo:
        elbo = ddpm(model, x, variance="beta", n_samples=n_samples, generator=g)
    with C.Timer() as t_iw:
        iw = importance_weighted(model, x, k=ks, n_replicates=n_rep, generator=g)
    with C.Timer() as t_grid:
        dens = sampler_density_1d(model, variance="beta", grid=torch.linspace(-10, 10, G, dtype=torch.float64))
        lp = dens.log_prob(x)
        fine = sampler_density_1d(model, variance="beta", grid=torch.linspace(-10, 10, 2 * G - 1, dtype=torch.float64))
        grid_err = (fine.log_prob(x) - lp).abs()
    grid_bound = float(grid_err.max())
    claims.append(C.claim("I13: grid density has mass 1 and is grid-converged",
                          {"mass": dens.mass, "max |log p(G) - log p(2G-1)|": grid_bound},
                          "|mass - 1| <= 1e-6 and grid difference <= 1e-4 nats",
                          abs(dens.mass - 1) <= 1e-6 and grid_bound <= 1e-4))
    # one-sided bounds: value - log p <= c stderr + grid error (family-wise over points)
    c1 = C.t_crit(n_points, None, alpha=2 * C.ALPHA)  # one-sided level ALPHA
    exc = (elbo.value - lp - grid_err) / elbo.stderr
    claims.append(C.claim("I9: DDPM ELBO <= log p_sampler at every point",
                          {"max (ELBO - log p)/stderr": float(exc.max()),
                           "mean ELBO - log p": float((elbo.value - lp).mean())},
                          f"(ELBO - log p - grid error)/stderr <= {c1:.2f} at all {n_points} points",
                          bool((exc <= c1).all())))
    top = iw[max(ks)]
    exc = (top.value - lp - grid_err) / top.stderr
    claims.append(C.claim(f"I10: IW_{max(ks)} <= log p_sampler at every point",
                          {"max (IW - log p)/stderr": float(exc.max())},
                          f"<= {c1:.2f} at all points", bool((exc <= c1).all())))
    means = [float(iw[k].value.mean()) for k in ks]
    claims.append(C.claim("I10: IW_k non-decreasing in k (mean over points)", dict(zip([f"k={k}" for k in ks], means)),
                          "non-decreasing", all(a <= b + 1e-12 for a, b in zip(means, means[1:]))))
    d_iw1 = iw[1].value - elbo.value
    z = d_iw1 / torch.sqrt(iw[1].stderr**2 + elbo.stderr**2)
    c2 = C.t_crit(n_points, None)
    claims.append(C.claim("IW_1 (Monte Carlo chains) = elbo.ddpm (exact Gaussian KLs)",
                          {"max |z|": float(z.abs().max())},
                          f"|difference| <= {c2:.2f} joint stderr at all points", bool((z.abs() <= c2).all())))
    gap1 = lp - iw[1].value
    gap64 = lp - top.value
    d = gap1 - gap64
    md, sd = float(d.mean()), float(d.std() / math.sqrt(n_points))
    claims.append(C.claim(f"IW_{max(ks)} is closer to log p than IW_1", {"mean gap IW_1": float(gap1.mean()),
                          f"mean gap IW_{max(ks)}": float(gap64.mean()), "stderr of difference": sd},
                          "mean(gap_1 - gap_64) > 3.29 stderr", md > C.t_crit(1, None) * sd))
    rows = []
    for i in range(n_points):
        row = {"x": float(x[i, 0]), "log_q0": float(q.log_prob(x[i:i + 1])[0]), "log_p_sampler": float(lp[i]),
               "grid_error": float(grid_err[i]), "elbo": float(elbo.value[i]), "elbo_stderr": float(elbo.stderr[i])}
        for k in ks:
            row[f"iw_{k}"] = float(iw[k].value[i])
            row[f"iw_{k}_stderr"] = float(iw[k].stderr[i])
        rows.append(row)
    tables = [C.save_table(rows, out_dir, "bounds.csv")]

    fig, axes = C.plt.subplots(1, 2, figsize=(11, 4.3))
    ax = axes[0]
    gr = C.as_np(dens.grid)
    xs = torch.as_tensor(gr)[:, None]
    ax.plot(gr, np.exp(C.as_np(q.log_prob(xs))), label="target q")
    ax.plot(gr, np.exp(C.as_np(q_model.log_prob(xs))), "--", label="q' (the model's denoiser)")
    ax.plot(gr, C.as_np(dens.density), ":", lw=2, label=f"p: DDPM sampler output, T={T} (grid)")
    ax.plot(C.as_np(x[:, 0]), np.zeros(n_points), "k|", ms=12, label="evaluation points")
    ax.set_xlim(gr[np.exp(C.as_np(q.log_prob(xs))) > 1e-4][[0, -1]] + np.array([-1, 1]))
    ax.set_xlabel("x")
    ax.set_title("Densities")
    ax.legend(fontsize=8)
    ax = axes[1]
    gaps = np.array([[float((lp - iw[k].value)[i]) for k in ks] for i in range(n_points)])
    se = np.array([float(iw[k].stderr.pow(2).mean().sqrt()) / math.sqrt(n_points) for k in ks])
    ax.errorbar(ks, gaps.mean(0), yerr=2 * se, fmt="o-", capsize=3, label="mean (log p - IW_k) over points, ±2 s.e.")
    eg = float((lp - elbo.value).mean())
    ese = float(elbo.stderr.pow(2).mean().sqrt()) / math.sqrt(n_points)
    ax.axhspan(eg - 2 * ese, eg + 2 * ese, color="C1", alpha=0.3, label="mean (log p - ELBO), ±2 s.e.")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (chains per importance-weighted bound)")
    ax.set_ylabel("log p_sampler - bound (nats)")
    ax.set_title("Bounds below the exact sampler log-density")
    ax.legend(fontsize=8)
    figures = [C.save_fig(fig, out_dir, "ddpm_bounds.png")]
    notes.append(f"T={T}, {n_points} points, elbo.ddpm n_samples={n_samples}, IW pool {n_rep} x {max(ks)} chains, grid "
                 f"{G} points on [-10, 10]. Seconds: ELBO {t_elbo.seconds:.1f}, IW {t_iw.seconds:.1f}, "
                 f"grid {t_grid.seconds:.1f}.")
    notes.append("The ELBO is a bound on the sampler's density log p, not on log q_0: see log_q0 vs log_p_sampler "
                 "in bounds.csv.")
    return {"claims": claims, "figures": figures, "tables": tables, "notes": notes}
