"""Every sampler with the exact score reproduces a 2-D mixture (Song et al.'s samplers).

Each sampler of :mod:`densityformula.sampling` is run with the exact denoiser of a 2-D Gaussian
mixture (VPLinear schedule) for a range of step counts.  The energy distance to exact draws shows
the convergence (against the exact-vs-exact noise floor).  The claim is tested at the largest step
count with one-sample Kolmogorov-Smirnov tests of the output's projections on three directions
against the mixture's exact projected CDFs (continuous, exact p-values; Bonferroni over samplers
and directions).  Negative control: the same output shifted by a small fraction of the target's
standard deviation must fail the same tests.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run alone: python experiments/samplers.py
    import densityformula.experiment as _x

    __package__ = _x.script_package(__file__)

from typing import Any, Dict, Iterable

import numpy as np
import torch

from densityformula import models, sampling, schedules, targets
from densityformula.experiment import Claim, Context, Control, Experiment, Timer, checks, subplots

from . import _common as C

SAMPLERS = {
    "ddpm (beta_tilde)": (sampling.ddpm, {}),
    "ddim (eta=0)": (sampling.ddim, {"eta": 0.0}),
    "euler_maruyama": (sampling.euler_maruyama, {}),
    "reverse_diffusion": (sampling.reverse_diffusion, {}),
    "predictor_corrector": (sampling.predictor_corrector, {}),
    "probability_flow (rk4)": (sampling.probability_flow, {}),
}
#: projection directions of the KS tests (unit vectors)
DIRECTIONS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7071067811865476, 0.7071067811865476]], dtype=torch.float64)


class Samplers(Experiment):
    name = "samplers"
    title = "Samplers with the exact score reproduce a 2-D mixture"
    claim = (
        "With the exact score every sampler's output converges to the target as the steps grow: at the largest step "
        "count its projections pass exact Kolmogorov-Smirnov tests against the target, while the same output shifted "
        "by a fifth of a standard deviation fails them."
    )

    def compute(self, ctx: Context) -> Dict[str, Any]:
        n = 4000 if ctx.quick else 12000
        steps_list = [5, 10, 30, 100, 300] if ctx.quick else [5, 10, 30, 100, 300, 1000]
        n_floor = 6 if ctx.quick else 20
        gmm = targets.random_gmm(2, 3, seed=ctx.seed, separation=4.0)
        model = models.AnalyticModel(gmm, schedules.VPLinear())
        n_ed = min(n, 2000)  # energy distance on a subsample (O(n^2))
        ref = gmm.sample(n_ed, generator=ctx.generator(1))
        floor = np.array([float(sampling.energy_distance(gmm.sample(n_ed, generator=ctx.generator(100 + 2 * i)),
                                                         gmm.sample(n_ed, generator=ctx.generator(101 + 2 * i))))
                          for i in range(n_floor)])
        rows, outputs = [], {}
        for name, (fn, kw) in ctx.progress(SAMPLERS.items(), "samplers"):
            for steps in steps_list:
                with Timer() as tm, torch.no_grad():
                    xs = fn(model, n=n, steps=steps, generator=ctx.generator(7), dtype=torch.float64, **kw)
                rows.append({"sampler": name, "steps": steps, "energy_distance": float(sampling.energy_distance(
                    xs[:n_ed], ref)), "seconds": tm.seconds})
            outputs[name] = xs
        sd = gmm.covariance().diagonal().sqrt()
        return {"gmm": gmm, "n": n, "steps": steps_list, "rows": rows, "outputs": outputs, "ref": ref,
                "floor": floor, "sd": sd}

    def claims(self, r: Dict[str, Any], ctx: Context) -> Iterable[Claim]:
        gmm, sd = r["gmm"], r["sd"]
        level = checks.ALPHA / (len(SAMPLERS) * len(DIRECTIONS))
        for name, xs in r["outputs"].items():
            def p_of(s: float, xs: torch.Tensor = xs) -> float:
                shifted = xs + s * sd * DIRECTIONS[0]  # shifted along e_1 by s standard deviations
                return min(float(sampling.ks_test(shifted, gmm, u).pvalue) for u in DIRECTIONS)

            yield Claim(
                f"{name}: {r['steps'][-1]} steps indistinguishable from the target",
                f"min KS p-value over {len(DIRECTIONS)} projections >= {level:.2g} (family-wise {checks.ALPHA:g})",
                checks.p_value(p_of, level, label="min KS p-value"),
                Control("output shifted along e_1", 0.2, "target sd"),
            )

    def tables(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        return {"energy.csv": r["rows"]}

    def notes(self, r: Dict[str, Any], ctx: Context) -> list[str]:
        f = r["floor"]
        return [f"{r['n']} samples per run, VPLinear schedule, exact mixture denoiser; energy distances on 2000 "
                f"of them; noise floor from {f.size} pairs of exact samples: mean {f.mean():.2e}, max {f.max():.2e}."]

    def figures(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        rows, floor = r["rows"], r["floor"]
        fig, axes = subplots(1, 2, figsize=(11.5, 4.4))
        ax = axes[0]
        for name in SAMPLERS:
            rr = [x for x in rows if x["sampler"] == name]
            ax.loglog([x["steps"] for x in rr], [max(x["energy_distance"], 1e-6) for x in rr], "o-", label=name)
        ax.axhspan(floor.min(), floor.max(), color="0.8", label="exact vs exact (noise floor)")
        ax.axhline(floor.mean(), color="0.4", lw=1)
        ax.set_xlabel("steps")
        ax.set_ylabel("energy distance to exact draws")
        ax.set_title("Samplers with the exact score")
        ax.legend()
        ax = axes[1]
        ref = C.as_np(r["ref"])
        ax.scatter(ref[:, 0], ref[:, 1], s=3, alpha=0.4, label="exact")
        xs = C.as_np(r["outputs"]["euler_maruyama"][: len(ref)])
        ax.scatter(xs[:, 0], xs[:, 1], s=3, alpha=0.4, label=f"euler_maruyama, {r['steps'][-1]} steps")
        ax.set_aspect("equal")
        ax.legend(markerscale=3)
        ax.set_title("Target and one sampler's output")
        return {"samplers": fig}


EXPERIMENT = Samplers()

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
