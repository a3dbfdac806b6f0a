"""Conditional generation against the exact conditional mixture: replacement versus guidance.

Inpainting: a 2-D two-component mixture whose known coordinate ``x_1 = 0`` and unknown ``x_2``
have within-component correlation ``rho`` (and component means offset by ``rho``; at ``rho = 0``
they are independent).  The exact conditional law of ``x_2`` is ``GaussianMixture.condition``.
Song et al.'s replacement method (``sampling.inpaint(method="replacement")``, reverse-diffusion
steps) makes ``x_2`` a 1-D Markov chain (the known coordinate is a fresh forward draw after every
step), so its output density is exact on a grid (``chain_density.replacement_density_1d``,
docs/math.md I42) and its KL from the exact conditional has no Monte-Carlo noise; the grid is
checked against the actual sampler (KS).  Guidance with the exact likelihood
``log q(X_0[known] = v | X_t)`` (``sampling.gmm_inpainting_log_likelihood``) is checked by KS tests
of its draws against the exact conditional CDF.  Class-conditional sampling: guidance with the
exact classifier ``log r_y(x, t)`` (``sampling.gmm_class_log_likelihood``) must give component ``y``.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run alone: python experiments/conditional_generation.py
    import densityformula.experiment as _x

    __package__ = _x.script_package(__file__)

import math
from typing import Any, Dict, Iterable, List

import numpy as np
import torch

from densityformula import models, sampling, schedules, targets
from densityformula.experiment import Claim, Context, Control, Experiment, Outcome, checks, subplots
from densityformula.likelihood import chain_density as CD

from . import _common as C

VALUE = 0.0  # the known coordinate x_1
MASK = torch.tensor([True, False])
DIRECTIONS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7071067811865476, 0.7071067811865476]], dtype=torch.float64)


def family(rho: float, s2: float = 0.3) -> targets.GaussianMixture:
    """Two components, means ``(mu_k, rho c_k)``, covariance ``s2 [[1, rho], [rho, 1]]``: ``x_1`` and
    ``x_2`` are independent at ``rho = 0`` and increasingly dependent as ``rho`` grows."""
    mu, c = np.array([-1.5, 1.2]), np.array([1.5, -1.0])
    means = np.stack([mu, rho * c], 1)
    cov = s2 * np.array([[1.0, rho], [rho, 1.0]])
    return targets.GaussianMixture([0.4, 0.6], means.tolist(), np.stack([cov, cov]).tolist())


def _correlation(g: targets.GaussianMixture) -> float:
    S = g.covariance()
    return float(S[0, 1] / torch.sqrt(S[0, 0] * S[1, 1]))


class ConditionalGeneration(Experiment):
    name = "conditional_generation"
    title = "Conditional sampling: replacement is biased on correlated coordinates, exact guidance is not"
    claim = (
        "Against the exact conditional mixture, replacement inpainting keeps a KL bias that grows with the correlation "
        "between known and unknown coordinates and does not shrink with the steps (it converges like the plain "
        "sampler only when they are independent), while guidance with the exact likelihood, and class guidance with "
        "the exact classifier, pass KS tests against the exact conditional laws."
    )

    def compute(self, ctx: Context) -> Dict[str, Any]:
        quick = ctx.quick
        sched = schedules.VPLinear()
        rhos = [0.0, 0.5, 0.9] if quick else [0.0, 0.3, 0.5, 0.7, 0.9]
        grid = torch.linspace(-6.5, 6.5, 867, dtype=torch.float64)  # h = 0.015
        steps_all = [25, 100]
        steps_long = steps_all if quick else [25, 100, 400, 800]
        nodes = 8
        n_mc, n_guid, mc_steps = 20000, 4000, 200
        rows: List[Dict[str, Any]] = []
        mc: Dict[float, Dict[str, Any]] = {}
        with C.one_thread():
            for i, rho in enumerate(ctx.progress(rhos, "correlation")):
                g = family(rho)
                model = models.AnalyticModel(g, sched)
                cond = g.condition(MASK, torch.tensor([VALUE], dtype=torch.float64))
                log_q = cond.log_prob(grid[:, None])
                for N in (steps_long if rho in (0.0, 0.9) else steps_all):
                    r = CD.replacement_density_1d(model, sampling.time_grid(model, N), known=0, value=VALUE,
                                                  grid=grid, nodes=nodes)
                    rows.append({"rho": rho, "correlation": _correlation(g), "steps": N, "kl": r.kl_from(log_q),
                                 "mass": r.mass})
                ll = sampling.gmm_inpainting_log_likelihood(g, sched, MASK, [VALUE])
                with torch.no_grad():
                    xg = sampling.inpaint(model, MASK, [VALUE], sampler="reverse_diffusion", method="guidance",
                                          log_likelihood=ll, n=n_guid, steps=mc_steps,
                                          generator=ctx.generator(31 + 10 * i))
                    xr = sampling.inpaint(model, MASK, [VALUE], sampler="reverse_diffusion", method="replacement",
                                          n=n_guid, steps=mc_steps, generator=ctx.generator(32 + 10 * i))
                mc[rho] = {"guidance": C.as_np(xg)[:, 1], "replacement": C.as_np(xr)[:, 1], "cond": cond}
            # the replacement grid against the actual replacement sampler, at the largest correlation
            rho_c = max(rhos)
            g = family(rho_c)
            model = models.AnalyticModel(g, sched)
            times = sampling.time_grid(model, 100)
            dens = CD.replacement_density_1d(model, times, known=0, value=VALUE, grid=grid, nodes=nodes)
            dens2 = CD.replacement_density_1d(model, times, known=0, value=VALUE, grid=grid, nodes=nodes + 4)
            log_q_c = mc[rho_c]["cond"].log_prob(grid[:, None])
            with torch.no_grad():
                xs = sampling.inpaint(model, MASK, [VALUE], sampler="reverse_diffusion", method="replacement",
                                      n=n_mc, times=times, generator=ctx.generator(33))
            grid_mc = {"x": C.as_np(xs)[:, 1], "density": dens, "kl": dens.kl_from(log_q_c),
                       "kl_nodes2": dens2.kl_from(log_q_c)}
            # class-conditional: guidance with the exact classifier of a random 2-D mixture
            gc = targets.random_gmm(2, 3, seed=ctx.seed, separation=3.0)
            cmodel = models.AnalyticModel(gc, sched)
            y = int(torch.argmin(gc.weights))  # the rarest component: the strongest test of the guidance
            guided = sampling.GuidedModel(cmodel, sampling.gmm_class_log_likelihood(gc, sched, y))
            cls_steps = [25, 200] if quick else [25, 100, 400]
            cls: Dict[int, np.ndarray] = {}
            with torch.no_grad():
                for N in cls_steps:
                    xc = sampling.reverse_diffusion(guided, n=n_guid, steps=N, generator=ctx.generator(40 + N))
                    cls[N] = C.as_np(xc)
            comp = targets.GaussianMixture([1.0], gc.means[y : y + 1], gc.covs[y : y + 1])
        return {"rows": rows, "rhos": rhos, "mc": mc, "grid": grid, "grid_mc": grid_mc, "n_mc": n_mc,
                "n_guid": n_guid, "mc_steps": mc_steps, "cls": cls, "cls_steps": cls_steps, "comp": comp, "y": y,
                "gc": gc, "nodes": nodes, "steps_long": steps_long}

    @staticmethod
    def _kl(rows: List[Dict[str, Any]], rho: float, steps: int) -> float:
        for r in rows:
            if r["rho"] == rho and r["steps"] == steps:
                return float(r["kl"])
        raise KeyError((rho, steps))

    def claims(self, r: Dict[str, Any], ctx: Context) -> Iterable[Claim]:
        from scipy.stats import kstest

        rows, mc = r["rows"], r["mc"]
        rho_hi = max(r["rhos"])
        sd_of = {rho: math.sqrt(float(v["cond"].covariance()[0, 0])) for rho, v in mc.items()}

        # 1. the replacement grid density is the replacement sampler's law
        gm = r["grid_mc"]

        def p_grid(s: float) -> float:
            dens: CD.ChainDensity1D = gm["density"]
            x = gm["x"] + s * sd_of[rho_hi]
            return float(kstest(x, lambda u: C.as_np(dens.cdf(torch.as_tensor(u, dtype=torch.float64)))).pvalue)

        yield Claim(
            "the replacement grid density is the law of the replacement sampler",
            f"KS p-value of {r['n_mc']} replacement draws (rho = {rho_hi}, 100 steps) against the grid CDF "
            f">= {checks.ALPHA:g}",
            checks.p_value(p_grid, checks.ALPHA, label="KS p-value"),
            Control("draws shifted", 0.05, "conditional sd"),
        )

        # 2. the quadrature over the fresh known coordinate is converged
        yield Claim(
            "the Gauss-Hermite rule over the known coordinate is converged",
            f"|KL({r['nodes']} nodes) - KL({r['nodes'] + 4} nodes)| <= 1e-4 KL",
            checks.within(gm["kl"], gm["kl_nodes2"], atol=0.0, rtol=1e-4, unit="nats"),
            Control("offset added to the KL", 1e-3, "nats"),
        )

        # 3. guidance with the exact likelihood matches the exact conditional at every correlation
        level = checks.ALPHA / len(mc)

        def p_guid(s: float) -> float:
            return min(float(sampling.ks_test(torch.as_tensor(v["guidance"] + s * sd_of[rho])[:, None],
                                              v["cond"]).pvalue) for rho, v in mc.items())

        yield Claim(
            "guidance with the exact likelihood samples the exact conditional",
            f"KS p-value of {r['n_guid']} guided draws ({r['mc_steps']} steps) against GaussianMixture.condition, "
            f"min over rho in {r['rhos']} >= {level:.2g} (Bonferroni)",
            checks.p_value(p_guid, level, label="min KS p-value"),
            Control("draws shifted", 0.1, "conditional sd"),
        )

        # 4. replacement is biased at high correlation, and the bias does not shrink with the steps
        n_lo, n_hi = (25, 100) if ctx.quick else (100, 400)

        def repl_bias(s: float) -> Outcome:
            rho = rho_hi if s == 0 else 0.0
            a, b = self._kl(rows, rho, n_lo), self._kl(rows, rho, n_hi)
            ok = b >= 0.1 and b / a >= 0.5
            return Outcome(ok, {f"KL at {n_hi} steps": (b, "nats"), f"KL({n_hi}) / KL({n_lo})": b / a,
                                "limit (KL)": (0.1, "nats"), "limit (ratio)": 0.5})

        yield Claim(
            f"replacement keeps a bias at rho = {rho_hi} that does not shrink with the steps",
            f"exact KL(cond || replacement) >= 0.1 nats at {n_hi} steps and >= half its value at {n_lo} steps",
            repl_bias,
            Control("the independent case rho = 0 in place of rho = 0.9", 1, "run", search=False),
        )

        # 5. at rho = 0 replacement is exact up to the sampler's own discretization: KL ~ N^-2
        def repl_converges(s: float) -> Outcome:
            rho = 0.0 if s == 0 else rho_hi
            a, b = self._kl(rows, rho, n_lo), self._kl(rows, rho, n_hi)
            slope = math.log(a / b) / math.log(n_hi / n_lo)
            return Outcome(slope >= 1.5, {"KL slope": slope, "limit": 1.5, f"KL at {n_hi}": (b, "nats")})

        yield Claim(
            "replacement converges like the plain sampler when the coordinates are independent",
            f"rho = 0: log(KL({n_lo}) / KL({n_hi})) / log 4 >= 1.5",
            repl_converges,
            Control(f"the correlated case rho = {rho_hi} in place of rho = 0", 1, "run", search=False),
        )

        # 6. the replacement sample itself fails the KS test at high correlation (the same test guidance passes)
        def p_repl(s: float) -> float:
            rho = rho_hi if s == 0 else 0.0
            v = mc[rho]
            return float(sampling.ks_test(torch.as_tensor(v["replacement"])[:, None], v["cond"]).pvalue)

        def repl_rejected(s: float) -> Outcome:
            p = p_repl(s)
            return Outcome(p < checks.ALPHA, {"KS p-value": p, "must be below": checks.ALPHA})

        yield Claim(
            f"the replacement draws are rejected against the exact conditional at rho = {rho_hi}",
            f"KS p-value of {r['n_guid']} replacement draws ({r['mc_steps']} steps) < {checks.ALPHA:g}",
            repl_rejected,
            Control("the independent case rho = 0 in place of rho = 0.9", 1, "run", search=False),
        )

        # 7. class-conditional guidance gives the chosen component
        comp = r["comp"]
        sd = torch.sqrt(comp.covs[0].diagonal())
        n_max = max(r["cls_steps"])
        xs = torch.as_tensor(r["cls"][n_max])
        lvl = checks.ALPHA / len(DIRECTIONS)

        def p_cls(s: float) -> float:
            shifted = xs + s * sd * DIRECTIONS[0]
            return min(float(sampling.ks_test(shifted, comp, u).pvalue) for u in DIRECTIONS)

        yield Claim(
            "class guidance with the exact classifier samples the chosen component",
            f"KS p-value of {r['n_guid']} draws ({n_max} steps) against component {r['y']} on {len(DIRECTIONS)} "
            f"projections >= {lvl:.2g}",
            checks.p_value(p_cls, lvl, label="min KS p-value"),
            Control("draws shifted along e_1", 0.1, "component sd"),
        )

    def tables(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        ks_rows = []
        for rho, v in r["mc"].items():
            for method in ("guidance", "replacement"):
                t = sampling.ks_test(torch.as_tensor(v[method])[:, None], v["cond"])
                ks_rows.append({"rho": rho, "method": method, "steps": r["mc_steps"], "n": r["n_guid"],
                                "ks_statistic": float(t.statistic), "p_value": float(t.pvalue),
                                "mean": float(v[method].mean()), "exact_mean": float(v["cond"].mean()[0])})
        return {"replacement_kl.csv": r["rows"], "ks.csv": ks_rows}

    def notes(self, r: Dict[str, Any], ctx: Context) -> list[str]:
        gm = r["grid_mc"]
        return [
            f"Inpainting target: family(rho) (two components, x_1 = {VALUE} known), VPLinear, reverse-diffusion "
            f"steps; replacement grid h = 0.015 on [-6.5, 6.5] with a {r['nodes']}-node Gauss-Hermite rule over the "
            f"fresh known coordinate ({r['nodes'] + 4} nodes change the KL by "
            f"{abs(gm['kl'] - gm['kl_nodes2']):.1e} nats).",
            "Guidance for inpainting is a 2-D chain (both coordinates move), so its law is checked by KS tests of "
            f"{r['n_guid']} draws only; its exact KL would need a 2-D grid (not computed).",
            f"Class guidance: random_gmm(2, 3, seed={ctx.seed}, separation=3), component {r['y']} (the rarest, weight "
            f"{float(r['gc'].weights[r['y']]):.3f}).",
        ]

    def figures(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        rows = r["rows"]
        fig, axes = subplots(1, 3, figsize=(15.5, 4.4))
        ax = axes[0]
        for N in sorted({x["steps"] for x in rows}):
            rr = sorted((x for x in rows if x["steps"] == N), key=lambda x: x["rho"])
            ax.semilogy([x["rho"] for x in rr], [x["kl"] for x in rr], "o-", label=f"replacement, {N} steps")
        ax.set_xlabel("rho (within-component correlation of known and unknown)")
        ax.set_ylabel("exact KL(conditional || replacement) [nats]")
        ax.set_title("Replacement inpainting: exact KL")
        ax.legend(fontsize=8)
        ax = axes[1]
        n = r["n_guid"]
        crit = 1.95 / math.sqrt(n)  # the KS statistic's 0.1% critical value (asymptotic)
        for method, style in (("guidance", "C0o-"), ("replacement", "C3s--")):
            ks = [float(sampling.ks_test(torch.as_tensor(r["mc"][rho][method])[:, None],
                                         r["mc"][rho]["cond"]).statistic) for rho in r["rhos"]]
            ax.semilogy(r["rhos"], ks, style, label=method)
        ax.axhline(crit, color="0.4", lw=1, label="KS critical value (level 1e-3)")
        ax.set_xlabel("rho")
        ax.set_ylabel("KS statistic against the exact conditional")
        ax.set_title(f"Monte Carlo, {n} draws, {r['mc_steps']} steps")
        ax.legend(fontsize=8)
        ax = axes[2]
        rho = max(r["rhos"])
        x = r["grid"].numpy()
        cond = r["mc"][rho]["cond"]
        ax.plot(x, np.exp(C.as_np(cond.log_prob(r["grid"][:, None]))), "k-", lw=1.5, label="exact conditional")
        ax.plot(x, C.as_np(r["grid_mc"]["density"].density), "C3--", lw=1.2, label="replacement (grid, 100 steps)")
        ax.hist(r["mc"][rho]["guidance"], bins=80, density=True, alpha=0.35, color="C0", label="guidance draws")
        ax.set_xlim(-3.5, 4.0)
        ax.set_title(f"x_2 | x_1 = {VALUE}, rho = {rho}")
        ax.legend(fontsize=8)
        fig2, ax2 = subplots(1, 1, figsize=(5.5, 4.4))
        gc = r["gc"]
        ref = C.as_np(gc.sample(2000, generator=ctx.generator(2)))
        ax2.scatter(ref[:, 0], ref[:, 1], s=3, alpha=0.3, color="0.6", label="unconditional target")
        xs = r["cls"][max(r["cls_steps"])][:2000]
        ax2.scatter(xs[:, 0], xs[:, 1], s=3, alpha=0.4, color="C0", label=f"class-guided, y = {r['y']}")
        ax2.set_aspect("equal")
        ax2.legend(markerscale=3, fontsize=8)
        ax2.set_title("Class guidance with the exact classifier")
        return {"inpainting": fig, "class_guidance": fig2}


EXPERIMENT = ConditionalGeneration()

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
