"""RL fine-tuning of a diffusion sampler toward a reward-tilted target whose exact form is known.

The pretrained model is the exact model of the 1-D mixture Q3 on a 25-step DDPM schedule; the
reward is the quadratic ``r(x) = -(x - 1)^2 / 2``.  The optimum of ``E_p[r] - beta KL(p || q)`` over
output laws is ``q exp(r / beta) / Z``, again a mixture in closed form (``densityformula.finetune.tilt``,
docs/math.md I45).  The sampler is fine-tuned by REINFORCE with per-step Gaussian log-probs (DDPO
style, leave-one-out baseline) within the family ``AnalyticModel(tilt(q, A_theta, b_theta))``, once
with the path-KL penalty (``beta = 1``: the sum of per-step Gaussian KLs to the pretrained kernels)
and once without it; the exact output law of the fine-tuned DDPM sampler is propagated on a grid
(``likelihood.sampler_density_1d``, I13), so its KL to the tilted target, its entropy and its
expected reward are numbers without Monte-Carlo noise.  With the penalty the sampler approaches the
tilted target (down to the 25-step sampler's own discretization floor); without it the reward keeps
rising past the target's, the entropy falls and the KL to the tilted target passes a minimum and
grows (reward hacking, collapse onto the reward's mode).  A last part measures DDIM's log-probs as
``eta -> 0``: the kernel variances are ``O(eta^2)``, the log-probs diverge like ``-K log eta`` and the
variance of the log-likelihood ratio and of the score-function gradient grows like ``eta^-2``.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run alone: python experiments/rl_finetuning.py
    import densityformula.experiment as _x

    __package__ = _x.script_package(__file__)

import math
from typing import Any, Dict, Iterable, List

import numpy as np
import torch
from scipy import integrate

from densityformula import finetune as F
from densityformula import likelihood, models, reverse, sampling, schedules, targets
from densityformula.experiment import Claim, Context, Control, Experiment, Outcome, checks, subplots

from . import _common as C

T_STEPS = 25
BETA = 1.0
REWARD = F.QuadraticReward.centered([[1.0]], [1.0])
LR, LR_DECAY = 0.3, 30.0
ETAS = [1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01]


def _law(model: models.DiffusionModel, sched: schedules.Discrete, grid: torch.Tensor) -> torch.Tensor:
    return likelihood.sampler_density_1d(model, sched, "beta", grid=grid).log_density


def _summary(log_p: torch.Tensor, log_t: torch.Tensor, log_pre: torch.Tensor, grid: torch.Tensor) -> Dict[str, float]:
    h = float(grid[1] - grid[0])
    p = torch.exp(log_p)
    return {
        "kl_target": likelihood.grid_kl(log_p, log_t, grid)[0],
        "kl_pretrained": likelihood.grid_kl(log_p, log_pre, grid)[0],
        "entropy": float(-(p * log_p).sum() * h),
        "reward": float((p * REWARD(grid[:, None])).sum() * h),
    }


class RLFinetuning(Experiment):
    name = "rl_finetuning"
    title = "RL fine-tuning reaches the reward-tilted target only with the KL penalty"
    claim = (
        "Policy-gradient fine-tuning with per-step log-probs and the path-KL penalty (beta = 1) brings the exact "
        "output law of a DDPM sampler to q exp(r/beta)/Z (closed form, checked by quadrature); without the penalty "
        "the reward rises past the target's while the entropy falls and the KL to the tilted target grows; DDIM's "
        "log-probs diverge as eta -> 0 and the score-function variance grows like eta^-2."
    )

    def compute(self, ctx: Context) -> Dict[str, Any]:
        quick = ctx.quick
        q = C.Q3
        sched = schedules.Discrete.ddpm_linear(T=T_STEPS)
        pre = models.AnalyticModel(q, sched)
        grid = torch.linspace(-5.0, 5.0, 601, dtype=torch.float64)
        target = F.tilt_reward(q, REWARD, BETA)
        log_t = target.mixture.log_prob(grid[:, None])
        with C.one_thread():
            log_pre = _law(pre, sched, grid)
            pre_row = _summary(log_pre, log_t, log_pre, grid)
            floor = _summary(_law(models.AnalyticModel(target.mixture, sched), sched, grid), log_t, log_pre, grid)
            h = float(grid[1] - grid[0])
            pt = torch.exp(log_t)
            target_row = {"entropy": float(-(pt * log_t).sum() * h),
                          "reward": float((pt * REWARD(grid[:, None])).sum() * h)}
            tilt_check = self._tilt_quadrature(q)
            iters = 100 if quick else 300
            n = 256 if quick else 512
            every = 10 if quick else 20
            runs: Dict[str, Any] = {}
            for label, beta, off in (("penalized", BETA, 1), ("unpenalized", 0.0, 2)):
                model = F.TiltedModel(q, sched)

                def ev(m: models.DiffusionModel, it: int) -> Dict[str, Any]:
                    assert isinstance(m, F.TiltedModel)
                    return _summary(_law(m.frozen(), sched, grid), log_t, log_pre, grid)

                res = F.finetune(model, pre, REWARD, beta=beta, n=n, iterations=iters, lr=LR, lr_decay=LR_DECAY,
                                 generator=ctx.generator(off), evaluate=ev, evaluate_every=every)
                runs[label] = {"evals": res.evaluations, "history": res.history, "model": model,
                               "A": float(model.A[0, 0]), "b": float(model.b_param[0])}
            # the path-KL penalty bounds the output KL (data processing): fresh trajectories of the final run
            fin = runs["penalized"]["model"]
            kern = reverse.ddpm_kernels(fin, sched, "beta")
            n_path = 4000
            states = F.sample_chain(kern, n_path, generator=ctx.generator(3))
            with torch.no_grad():
                path = F.step_kls(kern, pre, states).sum(1)
            path_kl = {"mean": float(path.mean()), "se": float(path.std() / math.sqrt(n_path)), "n": n_path,
                       "output_kl": runs["penalized"]["evals"][-1]["kl_pretrained"]}
            eta = self._eta_sweep(q, ctx)
        twod = self._two_d(ctx)
        return {"grid": grid, "log_t": log_t, "log_pre": log_pre, "pre": pre_row, "floor": floor,
                "target": target_row, "tilt": tilt_check, "runs": {k: {kk: vv for kk, vv in v.items() if kk != "model"}
                                                                  for k, v in runs.items()},
                "final_laws": {k: _law(v["model"].frozen(), sched, grid) for k, v in runs.items()},
                "path_kl": path_kl, "eta": eta, "twod": twod, "iters": iters, "n": n,
                "log_Z": float(target.log_Z)}

    @staticmethod
    def _tilt_quadrature(q: targets.GaussianMixture) -> Dict[str, Any]:
        """Closed-form tilt against scipy quadrature of ``q exp(r / beta)``: log Z, mean, variance."""
        r = REWARD.scaled(1.0 / BETA)
        t = F.tilt(q, r.A, r.b, c=r.c)

        def unnorm(x: float) -> float:
            lq = float(q.log_prob(torch.tensor([[x]], dtype=torch.float64))[0])
            return math.exp(lq + float(r(torch.tensor([[x]], dtype=torch.float64))[0]))

        kw = {"epsabs": 1e-14, "epsrel": 1e-12, "limit": 200}
        Z = integrate.quad(unnorm, -np.inf, np.inf, **kw)[0]
        m1 = integrate.quad(lambda x: x * unnorm(x), -np.inf, np.inf, **kw)[0] / Z
        m2 = integrate.quad(lambda x: x * x * unnorm(x), -np.inf, np.inf, **kw)[0] / Z
        xs = np.linspace(-3.0, 3.0, 7)
        dens_q = np.array([unnorm(float(x)) / Z for x in xs])
        dens_c = np.exp(C.as_np(t.mixture.log_prob(torch.tensor(xs[:, None], dtype=torch.float64))))
        closed = np.concatenate([[float(t.log_Z), float(t.mixture.mean()[0]), float(t.mixture.covariance()[0, 0])],
                                 np.log(dens_c)])
        quad = np.concatenate([[math.log(Z), m1, m2 - m1 * m1], np.log(dens_q)])
        return {"closed": closed, "quad": quad}

    @staticmethod
    def _two_d(ctx: Context) -> Dict[str, Any]:
        """2-D: the tilted mixture's mean against self-normalized importance weighting of draws of q."""
        gmm = targets.random_gmm(2, 3, seed=ctx.seed, separation=3.0)
        g = ctx.generator(21)
        M = torch.randn(2, 2, generator=g, dtype=torch.float64)
        A = 0.5 * M @ M.T + 0.2 * torch.eye(2, dtype=torch.float64)
        b = torch.randn(2, generator=g, dtype=torch.float64)
        t = F.tilt(gmm, A, b)
        n = 100_000 if ctx.quick else 400_000
        x = gmm.sample(n, generator=ctx.generator(22))
        lw = F.QuadraticReward(A, b)(x)
        w = torch.exp(lw - lw.max())
        w = w / w.sum()
        mean = (w[:, None] * x).sum(0)
        se = torch.sqrt((w[:, None] ** 2 * (x - mean) ** 2).sum(0))  # delta method
        return {"is_mean": C.as_np(mean), "is_se": C.as_np(se), "closed": C.as_np(t.mixture.mean()), "n": n,
                "ess": float(1.0 / (w**2).sum())}

    @staticmethod
    def _eta_sweep(q: targets.GaussianMixture, ctx: Context) -> Dict[str, Any]:
        """DDIM chains of the pretrained model at falling eta: mean log-prob, the variance of the log-ratio to a
        slightly tilted model and of the score-function gradient (with respect to b_theta)."""
        sched = schedules.Discrete.ddpm_linear(T=T_STEPS)
        pre = models.AnalyticModel(q, sched)
        times = sampling.time_grid(pre, T_STEPS)
        fam = F.TiltedModel(q, sched)
        n = 2000 if ctx.quick else 8000
        hb = 1e-4
        pert = models.AnalyticModel(F.tilt(q, [[0.0]], [0.1]).mixture, sched)
        rows = []
        x_T = torch.randn(n, 1, generator=ctx.generator(31), dtype=torch.float64)
        for eta in ETAS:
            k0 = F.ddim_kernels(pre, times, eta)
            states = F.sample_chain(k0, x_T=x_T, generator=ctx.generator(32))
            with torch.no_grad():
                lp0 = F.step_log_probs(k0, states).sum(1)
                lp1 = F.step_log_probs(F.ddim_kernels(pert, times, eta), states).sum(1)
                lps = []
                for s in (+1.0, -1.0):
                    fam.b_param.fill_(s * hb)
                    lps.append(F.step_log_probs(F.ddim_kernels(fam, times, eta), states).sum(1))
                fam.b_param.fill_(0.0)
                grad = (lps[0] - lps[1]) / (2 * hb)
            rows.append({"eta": eta, "mean_log_prob": float(lp0.mean()), "var_log_ratio": float((lp1 - lp0).var()),
                         "var_grad": float(grad.var()), "stochastic_steps": int((k0.var > 0).sum()),
                         "min_var": float(k0.var[k0.var > 0].min())})
        return {"rows": rows, "n": n}

    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _slope(rows: List[Dict[str, Any]], key: str, eta_max: float = 0.1) -> float:
        rr = [x for x in rows if x["eta"] <= eta_max]
        le = np.log([x["eta"] for x in rr])
        y = np.log([x[key] for x in rr]) if key != "mean_log_prob" else np.array([x[key] for x in rr])
        return float(np.polyfit(le, y, 1)[0])

    def claims(self, r: Dict[str, Any], ctx: Context) -> Iterable[Claim]:
        tc = r["tilt"]
        yield Claim(
            "the tilted target's closed form is q exp(r/beta)/Z",
            "log Z, mean, variance and the log density at 7 points of the closed-form tilt equal scipy quadrature "
            "of q exp(r/beta) to 1e-8",
            checks.within(tc["closed"], tc["quad"], atol=1e-8),
            Control("offset added to the closed form", 1e-6, "nats"),
        )
        tw = r["twod"]
        yield Claim(
            "the 2-D tilt equals importance-weighted draws of q",
            f"self-normalized importance-weighted mean of {tw['n']} draws of q (weights exp r) agrees with the "
            "tilted mixture's mean (delta-method standard errors)",
            checks.agreement(tw["is_mean"], tw["is_se"], tw["closed"], dof=None, unit=""),
            Control("shift of the tilted mean", 0.1, ""),
        )
        pen, unp = r["runs"]["penalized"]["evals"], r["runs"]["unpenalized"]["evals"]
        kl_pre = r["pre"]["kl_target"]

        def approach(s: float) -> Outcome:
            run = pen if s == 0 else unp
            kl = run[-1]["kl_target"]
            other = unp[-1]["kl_target"]
            ok = kl <= 0.1 * kl_pre and kl <= 0.5 * other
            return Outcome(ok, {"KL(final || tilted)": (kl, "nats"), "pretrained": (kl_pre, "nats"),
                                "unpenalized": (other, "nats"),
                                "discretization floor": (r["floor"]["kl_target"], "nats")})

        yield Claim(
            "with the KL penalty the sampler approaches q exp(r/beta)/Z",
            "final exact KL(p_theta || tilted) <= 0.1 x the pretrained model's and <= 0.5 x the unpenalized run's",
            approach,
            Control("the unpenalized run in place of the penalized one", 1, "run", search=False),
        )

        def hacking(s: float) -> Outcome:
            run = unp if s == 0 else pen
            H, rew = run[-1]["entropy"], run[-1]["reward"]
            ok = H <= r["target"]["entropy"] - 0.1 and rew > r["target"]["reward"]
            return Outcome(ok, {"entropy": (H, "nats"), "tilted target's entropy": (r["target"]["entropy"], "nats"),
                                "E[r]": rew, "tilted target's E[r]": r["target"]["reward"]})

        yield Claim(
            "without the penalty the reward is hacked: entropy falls below the target's",
            "unpenalized final entropy <= H(tilted) - 0.1 nats and its E[r] above the tilted target's",
            hacking,
            Control("the penalized run in place of the unpenalized one", 1, "run", search=False),
        )

        def grows(s: float) -> Outcome:
            run = unp if s == 0 else pen
            kls = [e["kl_target"] for e in run]
            ratio = kls[-1] / min(kls)
            return Outcome(ratio >= 1.4, {"KL(final) / min KL along the run": ratio, "limit": 1.4})

        yield Claim(
            "without the penalty the KL to the tilted target passes a minimum and grows",
            "unpenalized: final KL(p_theta || tilted) >= 1.4 x its minimum along fine-tuning",
            grows,
            Control("the penalized run in place of the unpenalized one", 1, "run", search=False),
        )
        pk = r["path_kl"]
        yield Claim(
            "the path-KL penalty bounds the output KL",
            f"mean over {pk['n']} trajectories of sum_k KL_k >= exact KL(p_theta,0 || p_pre,0) (data processing)",
            checks.at_least(pk["mean"], pk["se"], pk["output_kl"], dof=pk["n"] - 1),
            Control("lowered path-KL estimate", max(pk["mean"] - pk["output_kl"], 0.0) + 10 * pk["se"], "nats"),
        )
        rows = r["eta"]["rows"]
        s_ratio, s_grad = self._slope(rows, "var_log_ratio"), self._slope(rows, "var_grad")
        yield Claim(
            "the score-function gradient's variance grows like eta^-2 as eta -> 0",
            "log-log slope of Var[d log p(trajectory) / d b_theta] against eta (eta <= 0.1) within 0.3 of -2",
            checks.within(s_grad, -2.0, atol=0.3),
            Control("offset added to the slope", 0.6, ""),
        )
        yield Claim(
            "the log-likelihood ratio of a fixed perturbation degenerates at least as fast",
            "log-log slope of Var[log p_1/p_0] (b_theta = 0.1 against 0) against eta (eta <= 0.1) <= -1.7 "
            "(eta^-2 from the linear term, eta^-4 once c^2 |dD|^2 / v exceeds 1)",
            checks.below(s_ratio, -1.7, label="slope"),
            Control("offset added to the slope", 2.0, ""),
        )
        n_live = rows[-1]["stochastic_steps"]
        s_mean = self._slope(rows, "mean_log_prob") / n_live
        yield Claim(
            "DDIM log-probs diverge like -K log eta",
            f"slope of E log p(trajectory) against log eta (eta <= 0.1), per stochastic step ({n_live}), within "
            "0.05 of -1 (v_k = O(eta^2), d = 1)",
            checks.within(s_mean, -1.0, atol=0.05),
            Control("offset added to the slope", 0.1, ""),
        )

    def tables(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        rows = []
        for label, run in r["runs"].items():
            for e in run["evals"]:
                rows.append({"run": label, **e})
        hist = [{"run": label, **h} for label, run in r["runs"].items() for h in run["history"]]
        return {"finetune.csv": rows, "history.csv": hist, "eta.csv": r["eta"]["rows"]}

    def notes(self, r: Dict[str, Any], ctx: Context) -> list[str]:
        pen, unp = r["runs"]["penalized"], r["runs"]["unpenalized"]
        return [
            f"Q3 on Discrete.ddpm_linear(T={T_STEPS}), DDPM sampler with variance beta and decoder noise; reward "
            f"-(x - 1)^2/2, beta = {BETA}; REINFORCE with n = {r['n']} trajectories, Adam lr {LR} decayed as "
            f"1/(1 + t/{LR_DECAY:g}), {r['iters']} iterations; exact laws on a grid h = 1/60 on [-5, 5].",
            f"pretrained: KL to tilted {r['pre']['kl_target']:.4f}, E[r] {r['pre']['reward']:.4f}, entropy "
            f"{r['pre']['entropy']:.4f}; tilted target: E[r] {r['target']['reward']:.4f}, entropy "
            f"{r['target']['entropy']:.4f}, log Z {r['log_Z']:.4f}; the exact tilted model's 25-step sampler: "
            f"KL {r['floor']['kl_target']:.4f} (the floor).",
            f"penalized final: KL {pen['evals'][-1]['kl_target']:.4f}, E[r] {pen['evals'][-1]['reward']:.4f}, entropy "
            f"{pen['evals'][-1]['entropy']:.4f}, (A, b) = ({pen['A']:.3f}, {pen['b']:.3f}) (optimum (1, 1)).",
            f"unpenalized final: KL {unp['evals'][-1]['kl_target']:.4f}, E[r] {unp['evals'][-1]['reward']:.4f}, "
            f"entropy {unp['evals'][-1]['entropy']:.4f}, (A, b) = ({unp['A']:.3f}, {unp['b']:.3f}).",
            f"path KL {r['path_kl']['mean']:.4f} ± {r['path_kl']['se']:.4f} >= output KL "
            f"{r['path_kl']['output_kl']:.4f}.",
        ]

    def figures(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        fig, axes = subplots(1, 3, figsize=(15.5, 4.4))
        ax = axes[0]
        for label, style in (("penalized", "C0o-"), ("unpenalized", "C3s--")):
            ev = r["runs"][label]["evals"]
            ax.plot([e["reward"] for e in ev], [e["kl_target"] for e in ev], style, label=label)
        ax.plot([r["target"]["reward"]], [r["floor"]["kl_target"]], "k*", ms=12, label="tilted target (floor)")
        ax.set_yscale("log")
        ax.set_xlabel("exact E[r(x_0)]")
        ax.set_ylabel("exact KL(p_theta || q e^{r/beta}/Z) [nats]")
        ax.set_title("KL to the tilted target against reward")
        ax.legend(fontsize=8)
        ax = axes[1]
        x = C.as_np(r["grid"])
        ax.plot(x, np.exp(C.as_np(r["log_pre"])), "0.5", lw=1, label="pretrained sampler")
        ax.plot(x, np.exp(C.as_np(r["log_t"])), "k-", lw=2, label="tilted target")
        ax.plot(x, np.exp(C.as_np(r["final_laws"]["penalized"])), "C0--", label="fine-tuned, KL penalty")
        ax.plot(x, np.exp(C.as_np(r["final_laws"]["unpenalized"])), "C3:", lw=2, label="fine-tuned, no penalty")
        ax.set_xlim(-3.5, 3.5)
        ax.set_title("Exact output laws")
        ax.legend(fontsize=8)
        ax = axes[2]
        rows = r["eta"]["rows"]
        e = np.array([x["eta"] for x in rows])
        ax.loglog(e, [x["var_log_ratio"] for x in rows], "o-", label="Var log p_1/p_0")
        ax.loglog(e, [x["var_grad"] for x in rows], "s-", label="Var d log p / d b")
        ax.loglog(e, rows[-1]["var_grad"] * (e / e[-1]) ** -2.0, "k:", label="eta^-2")
        ax.set_xlabel("DDIM eta")
        ax.set_title("DDIM log-probs as eta -> 0")
        ax.legend(fontsize=8)
        return {"rl_finetuning": fig}


EXPERIMENT = RLFinetuning()

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
