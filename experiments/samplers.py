"""Every sampler with the exact score reproduces a 2-D mixture (Song et al.'s samplers).

Each sampler of :mod:`densityformula.sampling` is run with the exact denoiser of a 2-D Gaussian
mixture (VPLinear schedule) for a range of step counts; its output is compared with exact draws
from the mixture by the energy distance.  The noise floor -- the energy distance between two
independent exact samples of the same size -- is what a perfect sampler would score; at the
largest step count each sampler must be indistinguishable from exact draws by the permutation
energy test (:func:`densityformula.sampling.energy_test`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from densityformula import models, sampling, schedules, targets

from . import _common as C  # the driver loads experiments/ as a package

NAME = "samplers"
TITLE = "Samplers with the exact score reproduce a 2-D mixture"
CLAIM = (
    "With the exact score every sampler's output converges to the target as the steps grow: at the largest step "
    "count its energy distance to exact draws is at the exact-vs-exact noise floor."
)


SAMPLERS = {
    "ddpm (beta_tilde)": (sampling.ddpm, {}),
    "ddim (eta=0)": (sampling.ddim, {"eta": 0.0}),
    "euler_maruyama": (sampling.euler_maruyama, {}),
    "reverse_diffusion": (sampling.reverse_diffusion, {}),
    "predictor_corrector": (sampling.predictor_corrector, {}),
    "probability_flow (rk4)": (sampling.probability_flow, {}),
}


def run(out_dir: Path, *, quick: bool, seed: int) -> Dict[str, Any]:
    n = 1500 if quick else 3000
    steps_list = [5, 10, 30, 100, 300] if quick else [5, 10, 30, 100, 300, 1000]
    n_floor = 10 if quick else 40
    perms = 199 if quick else 999
    gmm = targets.random_gmm(2, 3, seed=seed, separation=4.0)
    model = models.AnalyticModel(gmm, schedules.VPLinear())
    ref = gmm.sample(n, generator=C.generator(seed + 1))
    floor = np.array([float(sampling.energy_distance(gmm.sample(n, generator=C.generator(seed + 100 + 2 * i)),
                                                     gmm.sample(n, generator=C.generator(seed + 101 + 2 * i))))
                      for i in range(n_floor)])
    claims, rows, notes = [], [], []
    outputs = {}
    for name, (fn, kw) in SAMPLERS.items():
        for steps in steps_list:
            g = C.generator(seed + 7)
            with C.Timer() as tm, torch.no_grad():
                xs = fn(model, n=n, steps=steps, generator=g, dtype=torch.float64, **kw)
            ed = float(sampling.energy_distance(xs, ref))
            rows.append({"sampler": name, "steps": steps, "energy_distance": ed, "seconds": tm.seconds})
            outputs[name] = xs
        test = sampling.energy_test(outputs[name], ref, permutations=perms, generator=C.generator(seed + 8))
        rows[-1]["energy_test_p"] = test.p_value
        eds = [r["energy_distance"] for r in rows if r["sampler"] == name]
        level = 0.01 / len(SAMPLERS)  # family-wise 1% over samplers; p-values are discrete in 1/(perms+1)
        claims.append(C.claim(f"{name}: {steps_list[-1]} steps indistinguishable from exact draws",
                              {"energy distance": eds[-1], "noise floor (mean)": float(floor.mean()),
                               "permutation p": test.p_value},
                              f"energy test p >= {level:.3g}", test.p_value >= level))
    tables = [C.save_table(rows, out_dir, "energy.csv")]
    notes.append(f"{n} samples per run, VPLinear schedule, exact mixture denoiser; noise floor from {n_floor} pairs of "
                 f"exact samples: mean {floor.mean():.2e}, max {floor.max():.2e}; permutation tests with {perms} "
                 "relabellings.")

    fig, axes = C.plt.subplots(1, 2, figsize=(11.5, 4.4))
    ax = axes[0]
    for name in SAMPLERS:
        rr = [r for r in rows if r["sampler"] == name]
        ax.loglog([r["steps"] for r in rr], [max(r["energy_distance"], 1e-6) for r in rr], "o-", label=name)
    ax.axhspan(floor.min(), floor.max(), color="0.8", label="exact vs exact (noise floor)")
    ax.axhline(floor.mean(), color="0.4", lw=1)
    ax.set_xlabel("steps")
    ax.set_ylabel("energy distance to exact draws")
    ax.set_title(f"Samplers with the exact score, n = {n}")
    ax.legend(fontsize=7)
    ax = axes[1]
    r = C.as_np(ref)
    ax.scatter(r[:, 0], r[:, 1], s=3, alpha=0.4, label="exact")
    xs = C.as_np(outputs["euler_maruyama"])
    ax.scatter(xs[:, 0], xs[:, 1], s=3, alpha=0.4, label=f"euler_maruyama, {steps_list[-1]} steps")
    ax.set_aspect("equal")
    ax.legend(fontsize=8, markerscale=3)
    ax.set_title("Target and one sampler's output")
    figures = [C.save_fig(fig, out_dir, "samplers.png")]
    return {"claims": claims, "figures": figures, "tables": tables, "notes": notes}
