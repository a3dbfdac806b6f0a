"""The discrete-time density formula (docs/math.md I7) converges to log q_0 like 1/T.

On a DDPM grid ``Discrete.ddpm_linear(T)`` (betas scaled by 1000/T, so every T discretizes the
same continuous process) the right-endpoint rule of I5 in LiYan time gives I7.  With the exact
denoiser of a Gaussian mixture, the error against the closed-form ``log q_0`` is a deterministic
discretization bias plus Monte Carlo noise; the bias, averaged over points, is fitted as
``c1/T + c2/T^2`` (weighted least squares, weights from the standard errors): the model must
fit (chi-square), its leading 1/T term must be significant, and the fit must predict the error
at T = 1000 (and 2000 in full mode), outside the fit.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from densityformula import models, schedules, targets
from densityformula.formula import density_formula_discrete

from . import _common as C  # the driver loads experiments/ as a package

NAME = "discrete_formula"
TITLE = "Discrete density formula (I7) converges to log q_0 as 1/T"
CLAIM = (
    "The DDPM-grid density formula (I7) with the exact score has error O(1/T) against log q_0: c1/T + c2/T^2 "
    "fits the measured bias, its 1/T term is significant, and the fit predicts the error at T = 1000."
)


def run(out_dir: Path, *, quick: bool, seed: int) -> Dict[str, Any]:
    d = 2
    n_points = 16 if quick else 64
    T_fit = [25, 50, 100, 200] if quick else [25, 50, 100, 200, 400]
    T_check = [1000] if quick else [1000, 2000]
    n_noise_fit = 8 if quick else 32
    n_noise_check = 8 if quick else 32
    R = 16
    gmm = targets.random_gmm(d, 3, seed=seed)
    model = models.AnalyticModel(gmm, schedules.LiYan())
    x = gmm.sample(n_points, generator=C.generator(seed + 1))
    truth = gmm.log_prob(x)
    rows, per_point = [], {}
    for T in T_fit + T_check:
        with C.Timer() as tm:
            e = density_formula_discrete(
                model, x, schedule=schedules.Discrete.ddpm_linear(T), seed=seed + 2,
                n_noise=n_noise_fit if T in T_fit else n_noise_check, n_replicates=R,
            )
        err = e.value - truth
        mean_err = float(err.mean())
        se_mean = float(torch.sqrt((e.stderr**2).sum())) / n_points  # points are independent estimates
        per_point[T] = C.as_np(err)
        rows.append({"T": T, "mean_error": mean_err, "stderr_of_mean": se_mean,
                     "max_abs_error": float(err.abs().max()), "alpha_bar_T": e.extras["alpha_bar_T"],
                     "nfe_per_point": e.nfe, "seconds": tm.seconds, "used_in_fit": T in T_fit})
    tables = [C.save_table(rows, out_dir, "errors.csv")]

    fit_rows = [r for r in rows if r["used_in_fit"]]
    m = np.array([r["mean_error"] for r in fit_rows])
    s = np.array([r["stderr_of_mean"] for r in fit_rows])
    Ts = np.array([r["T"] for r in fit_rows], float)
    claims = []
    # Model of the bias: c1/T + c2/T^2 (leading order 1/T, with the next order allowed; the
    # weighted least-squares fit uses the standard errors, and its chi-square tests the model).
    from scipy import stats

    w = 1.0 / s**2
    X = np.stack([1.0 / Ts, 1.0 / Ts**2], 1)
    cov = np.linalg.inv(X.T @ (w[:, None] * X))
    beta = cov @ X.T @ (w * m)
    chi2 = float(np.sum(w * (m - X @ beta) ** 2))
    dof = len(Ts) - 2
    chi2_max = float(stats.chi2.ppf(1.0 - C.ALPHA, dof))
    c1, se_c1 = float(beta[0]), float(math.sqrt(cov[0, 0]))
    p = C.loglog_slope(Ts, np.abs(m)) if np.all(m != 0) else float("nan")  # descriptive only
    claims.append(C.claim("bias = c1/T + c2/T^2 fits the measured mean errors",
                          {"chi2": chi2, "dof": dof, "c1": c1, "c2": float(beta[1]), "log-log slope": p},
                          f"chi2 <= {chi2_max:.1f} (level {C.ALPHA})", chi2 <= chi2_max))
    crit = C.t_crit(1, None)
    claims.append(C.claim("the leading term is 1/T (c1 != 0)", {"c1": c1, "stderr": se_c1},
                          f"|c1| > {crit:.2f} stderr", abs(c1) > crit * se_c1))
    crit = C.t_crit(len(T_check), None)
    for r in rows:
        if r["used_in_fit"]:
            continue
        x = np.array([1.0 / r["T"], 1.0 / r["T"] ** 2])
        pred = float(x @ beta)
        se = math.sqrt(r["stderr_of_mean"] ** 2 + float(x @ cov @ x))
        claims.append(C.claim(
            f"T={r['T']}: mean error predicted by the fit on T <= {int(Ts.max())}",
            {"measured": r["mean_error"], "predicted": pred, "stderr": se},
            f"|measured - predicted| <= {crit:.2f} stderr", abs(r["mean_error"] - pred) <= crit * se,
        ))
    fig, ax = C.plt.subplots(figsize=(6.4, 4.6))
    allT = np.array([r["T"] for r in rows], float)
    allm = np.array([r["mean_error"] for r in rows])
    alls = np.array([r["stderr_of_mean"] for r in rows])
    for T, err in per_point.items():
        ax.scatter(np.full(err.shape, T) * np.exp(0.04 * np.random.default_rng(0).standard_normal(err.shape)),
                   np.abs(err), s=6, color="0.7", zorder=1)
    ax.errorbar(allT, np.abs(allm), yerr=2 * alls, fmt="o", color="C0", capsize=3, zorder=3,
                label="|mean error over points| (±2 s.e.)")
    tt = np.geomspace(allT.min() * 0.8, allT.max() * 1.25, 50)
    ax.plot(tt, np.abs(beta[0] / tt + beta[1] / tt**2), "C1--",
            label=f"|c1/T + c2/T^2|, c1 = {beta[0]:.3g}, c2 = {beta[1]:.3g}")
    ax.plot(tt, np.abs(beta[0]) / tt, "k:", lw=1, label="|c1|/T")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of steps T (ddpm_linear, betas scaled by 1000/T)")
    ax.set_ylabel("|I7 estimate - log q_0|  (nats)")
    ax.set_title(f"Discrete density formula, d = {d} mixture (log-log slope {p:.2f})")
    ax.legend(fontsize=8)
    figures = [C.save_fig(fig, out_dir, "discrete_convergence.png")]
    notes = [
        f"{n_points} points of a d={d} random mixture; grey dots are per-point |errors| (bias + Monte Carlo noise), "
        f"blue the mean signed error over points. The bias is negative: the right-endpoint rule under-counts. "
        f"Fit on T in {T_fit}; T in {T_check} are predictions outside the fit.",
    ]
    return {"claims": claims, "figures": figures, "tables": tables, "notes": notes}
