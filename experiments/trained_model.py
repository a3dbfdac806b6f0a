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
* Gibbs: ``E_q[log p_ODE] <= E_q[log q]`` (the ODE defines a normalized density).

Not claimed, because docs/math.md section 5 says they are false in general: ELBO <= log q_0 pointwise,
and ELBO <= log p_ODE (the ELBO bounds the SDE sampler's density, not the ODE's).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from densityformula import models, schedules, targets
from densityformula.elbo import ddpm, kl_de_bruijn
from densityformula.formula import density_formula
from densityformula.likelihood import probability_flow
from densityformula.neural import MLPDenoiser
from densityformula.sampling import default_t_start
from densityformula.training import Trainer

from . import _common as C  # the driver loads experiments/ as a package

NAME = "trained_model"
TITLE = "Trained MLP: continuous ELBO, DDPM ELBO, PF-ODE likelihood and log q_0"
CLAIM = (
    "For a trained network, the ELBO gap equals its weighted denoising error on average (I8) and both the ELBO and "
    "the PF-ODE likelihood lie below log q_0 on average; pointwise orderings are reported, not claimed."
)


LAM_RANGE = (-15.0, 15.0)  # the density formula's float32 default; the network is compared on this range


def run(out_dir: Path, *, quick: bool, seed: int) -> Dict[str, Any]:
    d = 2
    train_steps = 2000 if quick else 20000
    n_points = 256 if quick else 2048
    gmm = targets.random_gmm(d, 3, seed=seed, separation=4.0)
    sched = schedules.VPCosine()
    data_std = float(torch.sqrt(torch.diagonal(gmm.covariance()).mean()))
    net = MLPDenoiser(d, sched, width=64 if quick else 128, depth=3, data_std=data_std, seed=seed)
    with C.Timer() as t_train:
        trainer = Trainer(net, gmm, steps=train_steps, batch_size=512, lr=3e-3, device="cpu", progress=False, seed=seed)
        history = trainer.train()
    model = trainer.eval_model.eval()

    x = gmm.sample(n_points, generator=C.generator(seed + 1))
    x32 = x.float()
    logq = gmm.log_prob(x)
    est_kw = dict(n_nodes=24 if quick else 48, n_noise=4 if quick else 16, n_replicates=16, lambda_range=LAM_RANGE,
                  tails=False)
    with torch.no_grad(), C.Timer() as t_df:
        cont = density_formula(model, x32, seed=seed + 2, **est_kw)
        # the same truncated formula with the exact denoiser: its (tiny) truncation bias
        exact = density_formula(models.AnalyticModel(gmm, sched), x, seed=seed + 2, **est_kw)
    with torch.no_grad(), C.Timer() as t_ddpm:
        # all T steps (a sampled subset of steps would be shared by all points, so its error would
        # not average out over points)
        disc = ddpm(model, x32, n_samples=2 if quick else 8, generator=C.generator(seed + 3))
    # the data end of every likelihood: log-SNR LAM_RANGE[1]; three noise ends, prior N(0, sigma^2 I) at each:
    # the default (the noisy end of the network's trained range, model.valid_log_snr), the samplers' start
    # time (log-SNR -10), and log-SNR -40 (the old default, far below anything the network saw in training)
    t_min = float(sched.t_from_log_snr(torch.tensor(LAM_RANGE[1], dtype=torch.float64)))
    t_max_sampler = float(default_t_start(sched))
    t_max_far = float(sched.t_from_log_snr(torch.tensor(-40.0, dtype=torch.float64)))
    pf_kw: Dict[str, Any] = dict(trace="exact", t_min=t_min)
    with C.Timer() as t_pf:
        pf_default = probability_flow(model, x32, rtol=1e-5, atol=1e-5, **pf_kw)
        pf = probability_flow(model, x32, rtol=1e-5, atol=1e-5, t_max=t_max_sampler, **pf_kw)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pf_full = probability_flow(model, x32, rtol=1e-5, atol=1e-5, t_max=t_max_far, **pf_kw)
        warned_far = any(issubclass(w.category, RuntimeWarning) and "beyond the range" in str(w.message)
                         for w in caught)
        # normalization of the ODE densities on a grid over a box that holds q's mass
        gx = torch.linspace(-11.0, 9.0, 41 if quick else 161)
        gy = torch.linspace(-11.0, 8.0, 39 if quick else 153)
        GX, GY = torch.meshgrid(gx, gy, indexing="ij")
        grid = torch.stack([GX.flatten(), GY.flatten()], 1)
        cell = float((gx[1] - gx[0]) * (gy[1] - gy[0]))
        mass_q = float(torch.exp(gmm.log_prob(grid.double())).sum()) * cell
        mass = {}
        for key, kw in (("sampler", {"t_max": t_max_sampler}), ("default", {})):
            g = probability_flow(model, grid, rtol=1e-4, atol=1e-4, **pf_kw, **kw)
            mass[key] = float(torch.exp(g.value.double()).sum()) * cell
    logq_start = gmm.log_prob(x, t=pf.extras["t_min"].double(), schedule=sched)
    lam_end_default = float(pf_default.extras["lambda_end"][0])
    lam_end_full = float(pf_full.extras["lambda_end"][0])
    lam_end_sampler = float(pf.extras["lambda_end"][0])
    with torch.no_grad(), C.Timer() as t_kl:
        gap = kl_de_bruijn(gmm, model, n_samples=2048 if quick else 32768, n_nodes=48, lambda_range=LAM_RANGE,
                           generator=C.generator(seed + 4))
        gap_full = kl_de_bruijn(gmm, model, n_samples=2048 if quick else 32768, n_nodes=96, lambda_range=(-30.0, 30.0),
                                generator=C.generator(seed + 5))

    cv, dv, pv = cont.value.double(), disc.value.double(), pf.value.double()
    claims, notes = [], []
    crit = C.t_crit(3, None)
    # I8 on the common range: E[ELBO_theta - log q] = E[ELBO_exact,trunc - log q] - gap
    diff = cv - exact.value  # paired on the same points
    m, se = float(diff.mean()), float(diff.std() / math.sqrt(n_points))
    g, gse = float(gap.value[0]), float(gap.stderr[0])
    tot_se = math.sqrt(se**2 + gse**2)
    claims.append(C.claim("I8: E_q[ELBO_theta - ELBO_exact] = -1/2 int E||eps_theta - eps||^2 dlambda on lambda in "
                          f"{LAM_RANGE}",
                          {"measured": m, "de Bruijn integral": -g, "stderr": tot_se},
                          f"|measured + integral| <= {crit:.2f} stderr", abs(m + g) <= crit * tot_se))
    em = cv - logq
    mm, mse = float(em.mean()), float(em.std() / math.sqrt(n_points))
    claims.append(C.claim("E_q[ELBO_theta] <= E_q[log q_0]", {"mean ELBO - log q_0": mm, "stderr": mse},
                          f"mean - {crit:.2f} stderr < 0 (not significantly above)", mm - crit * mse < 0))
    pm_ = pv - logq_start
    pmm, pse = float(pm_.mean()), float(pm_.std() / math.sqrt(n_points))
    claims.append(C.claim(f"Gibbs: E_q[log p_ODE] <= E_q[log q] (ODE from log-SNR {lam_end_sampler:.0f})",
                          {"mean log p_ODE - log q": pmm, "stderr": pse},
                          f"mean - {crit:.2f} stderr < 0", pmm - crit * pse < 0))
    claims.append(C.claim(f"PF-ODE density (from log-SNR {lam_end_sampler:.0f}) integrates to 1 on a grid",
                          {"mass": mass["sampler"], "mass of q on the same grid": mass_q,
                           f"mass of the ODE density from log-SNR {lam_end_default:.1f}": mass["default"]},
                          "|mass - 1| <= 0.01 (grid and box truncation)", abs(mass["sampler"] - 1.0) <= 0.01))
    pd_ = pf_default.value.double() - logq_start
    pdm, pdse = float(pd_.mean()), float(pd_.std() / math.sqrt(n_points))
    claims.append(C.claim(f"Gibbs: E_q[log p_ODE] <= E_q[log q] (ODE from log-SNR {lam_end_default:.1f}, the default: "
                          "the noisy end of the trained range)",
                          {"mean log p_ODE - log q": pdm, "stderr": pdse},
                          f"mean - {crit:.2f} stderr < 0", pdm - crit * pdse < 0))
    pf_m = pf_full.value.double() - logq_start
    pfm, pfse = float(pf_m.mean()), float(pf_m.std() / math.sqrt(n_points))
    claims.append(C.claim(f"Gibbs: E_q[log p_ODE] <= E_q[log q] (ODE from log-SNR {lam_end_full:.0f}, asked for "
                          "explicitly)", {"mean log p_ODE - log q": pfm, "stderr": pfse},
                          f"mean - {crit:.2f} stderr < 0", pfm - crit * pfse < 0))
    claims.append(C.claim("probability_flow warns when asked to integrate beyond the network's trained range",
                          {"trained range": list(model.valid_log_snr), "asked from log-SNR": lam_end_full,
                           "warned": warned_far}, "a RuntimeWarning", warned_far))

    frac = lambda v: float((v > 0).double().mean())  # noqa: E731
    summary_rows = [
        {"quantity": "continuous ELBO (density formula, trained D)", "mean_minus_log_q0": mm, "stderr": mse,
         "frac_points_above_log_q0": frac(em), "mean_point_stderr": float(cont.stderr.double().mean())},
        {"quantity": "DDPM ELBO (T=1000, variance beta)", "mean_minus_log_q0": float((dv - logq).mean()),
         "stderr": float((dv - logq).std() / math.sqrt(n_points)), "frac_points_above_log_q0": frac(dv - logq),
         "mean_point_stderr": float(disc.stderr.double().mean())},
        {"quantity": f"PF-ODE log-likelihood (exact trace), log-SNR {LAM_RANGE[1]:.0f} to {lam_end_sampler:.0f}",
         "mean_minus_log_q0": pmm, "stderr": pse, "frac_points_above_log_q0": frac(pm_), "mean_point_stderr": 0.0},
        {"quantity": f"PF-ODE log-likelihood (exact trace), log-SNR {LAM_RANGE[1]:.0f} to {lam_end_default:.1f} "
                     "(default)",
         "mean_minus_log_q0": pdm, "stderr": pdse, "frac_points_above_log_q0": frac(pd_), "mean_point_stderr": 0.0},
        {"quantity": f"PF-ODE log-likelihood (exact trace), log-SNR {LAM_RANGE[1]:.0f} to {lam_end_full:.0f}",
         "mean_minus_log_q0": pfm, "stderr": pfse, "frac_points_above_log_q0": frac(pf_m), "mean_point_stderr": 0.0},
    ]
    tables = [C.save_table(summary_rows, out_dir, "summary.csv")]
    rows = [{"x0": float(x[i, 0]), "x1": float(x[i, 1]), "log_q0": float(logq[i]), "elbo_continuous": float(cv[i]),
             "elbo_continuous_stderr": float(cont.stderr[i]), "elbo_ddpm": float(dv[i]),
             "elbo_ddpm_stderr": float(disc.stderr[i]),
             "log_p_ode": float(pv[i]), "log_p_ode_default_range": float(pf_default.value[i]),
             "log_p_ode_from_-40": float(pf_full.value[i])} for i in range(n_points)]
    tables.append(C.save_table(rows, out_dir, "points.csv"))
    notes.append(f"Training: {train_steps} steps, batch 512, {t_train.seconds:.1f} s; final loss {history[-1][1]:.4f}. "
                 f"Seconds: density formula {t_df.seconds:.1f}, DDPM ELBO {t_ddpm.seconds:.1f}, "
                 f"PF-ODE {t_pf.seconds:.1f}, de Bruijn {t_kl.seconds:.1f}.")
    notes.append(f"Pointwise: the continuous ELBO exceeds log q_0 at {100 * frac(em):.0f}% of the points and the "
                 f"PF-ODE log-likelihood at {100 * frac(pm_):.0f}%; the continuous ELBO exceeds the PF-ODE likelihood "
                 f"at {100 * frac(cv - pv):.0f}% -- neither ordering is a theorem.")
    notes.append(f"The PF-ODE likelihood depends on where the ODE starts. By default probability_flow starts at the "
                 f"noisy end of the network's trained range, model.valid_log_snr = ({model.valid_log_snr[0]:.1f}, "
                 f"{model.valid_log_snr[1]}) (the trainer records it: below {model.valid_log_snr[0]:.1f} lie 0.1% of "
                 f"its training draws): mean minus log q {pdm:.3f} ± {pdse:.3f} nats, grid mass "
                 f"{mass['default']:.3f}. From log-SNR {lam_end_sampler:.0f} (where the samplers start): {pmm:.3f} ± "
                 f"{pse:.3f}. From log-SNR {lam_end_full:.0f} (asked explicitly; the library warns): {pfm:.3f} ± "
                 f"{pfse:.3f}: the network is hardly trained there, and the ODE spreads the prior's mass. All are "
                 "normalized densities of different models.")
    notes.append(f"The network's eps error is concentrated at extreme log-SNR: 1/2 int E||eps_theta - eps||^2 is "
                 f"{g:.3f} on {LAM_RANGE} but {float(gap_full.value[0]):.3f} on (-30, 30). The density formula's "
                 "default range for float32 is (-15, 15) with analytic tails, which assume the exact asymptotics, so "
                 "the ELBO reported there omits the network's errors beyond that range.")

    fig, axes = C.plt.subplots(1, 3, figsize=(15, 4.4))
    ax = axes[0]
    h = np.array(history)
    ax.plot(h[:, 0], h[:, 1], lw=0.6, alpha=0.5)
    k = max(1, len(h) // 30)
    ax.plot(h[k - 1:, 0], np.convolve(h[:, 1], np.ones(k) / k, mode="valid"), lw=1.5)
    ax.set_xlabel("training step")
    ax.set_ylabel("eps loss")
    ax.set_title("Training")
    ax = axes[1]
    lq = C.as_np(logq)
    ax.scatter(lq, C.as_np(cv) - lq, s=6, label="continuous ELBO - log q_0")
    ax.scatter(lq, C.as_np(dv) - lq, s=6, label="DDPM ELBO - log q_0")
    ax.scatter(lq, C.as_np(pv - logq_start), s=6, label=f"log p_ODE - log q (ODE from log-SNR {lam_end_sampler:.0f})")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_ylim(np.percentile(np.concatenate([C.as_np(dv) - lq, C.as_np(cv) - lq, C.as_np(pm_)]), [1, 99]) * 1.3)
    ax.set_xlabel("log q_0(x)")
    ax.set_ylabel("nats")
    ax.set_title("Per point, relative to the truth")
    ax.legend(fontsize=8, markerscale=2)
    ax = axes[2]
    labels = ["cont. ELBO", "DDPM ELBO", f"PF-ODE\n(from {lam_end_sampler:.0f})",
              f"PF-ODE\n(from {lam_end_default:.1f}, default)", f"PF-ODE\n(from {lam_end_full:.0f})"]
    vals = [r["mean_minus_log_q0"] for r in summary_rows]
    errs = [2 * r["stderr"] for r in summary_rows]
    ax.bar(labels, vals, yerr=errs, capsize=4, color=["C0", "C1", "C2", "C3", "C4"])
    ax.axhline(-g, color="k", ls="--", lw=1, label="-1/2 int E||eps_theta - eps||^2 (I8)")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_ylabel("mean over x ~ q of (estimate - log q_0), ±2 s.e.")
    ax.set_title("Averages")
    ax.legend(fontsize=8)
    figures = [C.save_fig(fig, out_dir, "trained_model.png")]
    return {"claims": claims, "figures": figures, "tables": tables, "notes": notes}
