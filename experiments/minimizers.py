"""The central claim: the minimizer of the DDPM objective nearly coincides with the true one.

Li & Yan (2024) argue that minimizing the DDPM training objective (the ELBO) nearly minimizes
the true objective, ``KL(q || p_theta)`` with ``p_theta`` the law of the model's own DDPM
sampler.  docs/math.md section 5 locates the approximation: the network's score is not the score of its
sampler's output, and the sum over steps discretizes an integral.  Here both objectives are
closed form (I14), so the two minimizers and the cost of using the wrong one can be measured
exactly, as functions of the number of steps T:

* target ``q = N(0, s^2 I)`` in d = 2; model family: the exact denoiser of ``N(0, theta^2 I)`` at
  every step (:class:`AffineDenoiser.from_gaussian`), DDPM sampler with ``variance="beta"``;
* ELBO objective: ``-E_q[ELBO_theta]`` (:meth:`GaussianSamplerLaw.expected_elbo`, closed form);
* true objective: ``KL(q || p_theta^sampler)`` (:meth:`GaussianSamplerLaw.kl`, closed form);
* independent checks of both closed forms, on an affine denoiser outside the family (non-centred,
  correlated, so that no term vanishes by symmetry): simulation of the sampler
  (:func:`densityformula.sampling.ddpm`) and Monte Carlo of the per-point ELBO
  (:func:`densityformula.elbo.ddpm`);
* de Bruijn's identity (I11) for two Gaussians (closed form) and two mixtures (Monte Carlo).

The family contains the truth, so the ELBO's minimizer is the true denoiser ``theta = s`` by
construction; that is a unit test (tests/test_claims_minimizers.py), not a claim here.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run alone: python experiments/minimizers.py
    import densityformula.experiment as _x

    __package__ = _x.script_package(__file__)

import math
from typing import Any, Callable, Dict, Iterable, List, Tuple

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from densityformula import schedules, targets
from densityformula.elbo import ddpm as ddpm_elbo
from densityformula.elbo import kl_de_bruijn
from densityformula.experiment import Claim, Context, Control, Experiment, Outcome, checks, loglog_slope, subplots
from densityformula.likelihood import gaussian_kl, gaussian_sampler
from densityformula.neural import AffineDenoiser
from densityformula.sampling import ddpm as ddpm_sampler

D = 2
S = 0.5  # target standard deviation
F64 = torch.float64
#: the rates are read off the log-log slope over the step counts from here on (the O(1/T) and
#: O(1/T^2) corrections to the leading terms are a few per cent there)
T_RATE = 100
#: stated tolerances of the two rates
SLOPE_TOL_GAP, SLOPE_TOL_EXCESS = 0.1, 0.2
#: the affine denoiser (exact for N(M0, S0)) whose sampler law and ELBO are checked by simulation
T0 = 50
M0 = (0.3, -0.2)
S0 = ((0.36, 0.12), (0.12, 0.25))
#: Gauss-Legendre nodes of the de Bruijn integrals (64 leave a quadrature bias of ~1e-3 nats, 32 of ~1e-2)
N_NODES_DB = 128


def _law(theta: float, sched: schedules.Discrete):
    model = AffineDenoiser.from_gaussian(torch.zeros(D, dtype=F64), theta**2 * torch.eye(D, dtype=F64), sched)
    return model, gaussian_sampler(model, variance="beta", d=D)


def _objectives(sched: schedules.Discrete, q_mean: torch.Tensor,
                q_cov: torch.Tensor) -> Tuple[Callable[[float], float], Callable[[float], float]]:
    """``(theta -> -E_q[ELBO_theta], theta -> KL(q || p_theta^sampler))`` for one schedule, sharing
    a cache of the sampler laws (each law is built once per theta)."""
    cache: Dict[float, Any] = {}

    def law(th: float) -> Any:
        if th not in cache:
            cache[th] = _law(th, sched)[1]
        return cache[th]

    def neg_elbo(th: float) -> float:
        return -float(law(th).expected_elbo(q_mean, q_cov))

    def kl(th: float) -> float:
        return float(law(th).kl(q_mean, q_cov))

    return neg_elbo, kl


def _upper(m: torch.Tensor) -> np.ndarray:
    i, j = np.triu_indices(m.shape[0])
    return m.detach().cpu().double().numpy()[i, j]


def _cov_entry_covariance(cov: torch.Tensor, n: int) -> np.ndarray:
    """Covariance of the sample covariance's upper-triangle entries for ``n`` Gaussian draws:
    ``Cov(S_ij, S_kl) = (C_ik C_jl + C_il C_jk) / (n - 1)``."""
    c = cov.detach().cpu().double().numpy()
    iu = list(zip(*np.triu_indices(c.shape[0])))
    return np.array([[(c[i, k] * c[j, m] + c[i, m] * c[j, k]) / (n - 1) for k, m in iu] for i, j in iu])


def _rate_check(Ts: List[int], values: List[float], slope: float, tol: float, unit: str) -> Callable[[float], Outcome]:
    """Slope of log(value + s) against log T over ``T >= T_RATE`` within ``slope +- tol``, and the values
    decreasing in T.  Defect ``s``: a T-independent part added to every value (one that does not vanish)."""
    Ts_a, v = np.asarray(Ts, float), np.abs(np.asarray(values, float))
    sel = Ts_a >= T_RATE

    def check(s: float) -> Outcome:
        w = v + s
        fit = loglog_slope(Ts_a[sel], w[sel])
        decreasing = bool(np.all(np.diff(w) < 0))
        return Outcome(abs(fit - slope) <= tol and decreasing, {
            f"log-log slope over T >= {T_RATE}": fit, "expected slope": slope, "tolerance": tol,
            f"value at T={int(Ts_a[-1])}": (float(w[-1]), unit), "decreasing in T": float(decreasing),
        })

    return check


class Minimizers(Experiment):
    name = "minimizers"
    title = "ELBO minimizer vs true-likelihood minimizer (the central claim)"
    claim = (
        "Over a one-parameter model family, the DDPM ELBO's minimizer differs from the minimizer of the true "
        "KL(q || p_theta^sampler) by O(1/T), and using it costs only O(1/T^2) nats of KL."
    )

    def compute(self, ctx: Context) -> Dict[str, Any]:
        Ts = [25, 50, 100, 200, 1000] if ctx.quick else [25, 50, 100, 200, 500, 1000, 2000, 4000]
        q_mean = torch.zeros(D, dtype=F64)
        q_cov = S**2 * torch.eye(D, dtype=F64)
        H_q = 0.5 * D * math.log(2 * math.pi * math.e * S**2)  # entropy of q
        rows, curves, slacks = [], {}, []
        for T in ctx.progress(Ts, "T sweep"):
            neg_elbo, kl = _objectives(schedules.Discrete.ddpm_linear(T), q_mean, q_cov)
            opt = dict(bounds=(0.3, 0.8), method="bounded", options={"xatol": 1e-9})
            th_elbo = float(minimize_scalar(neg_elbo, **opt).x)
            th_kl = float(minimize_scalar(kl, **opt).x)
            excess = kl(th_elbo) - kl(th_kl)
            # I9 in expectation on a grid: E_q[ELBO] <= E_q[log p] = -H(q) - KL(q || p)
            grid = np.linspace(0.3, 0.8, 6)
            sl = [-H_q - kl(float(g)) + neg_elbo(float(g)) for g in grid]
            slacks.extend(sl)
            rows.append({"T": T, "theta_elbo": th_elbo, "theta_kl": th_kl, "gap": th_elbo - th_kl,
                         "T_times_gap": T * (th_elbo - th_kl), "kl_at_theta_elbo": kl(th_elbo), "min_kl": kl(th_kl),
                         "excess_kl": excess, "min_slack_E[log p]-E[ELBO]": min(sl)})
            if T in (Ts[0], 200):
                th = np.linspace(0.38, 0.62, 25)
                curves[T] = (th, np.array([neg_elbo(float(v)) for v in th]), np.array([kl(float(v)) for v in th]))

        # independent checks of the closed forms at one T, for an affine denoiser outside the family
        sched0 = schedules.Discrete.ddpm_linear(T0)
        model0 = AffineDenoiser.from_gaussian(torch.tensor(M0, dtype=F64), torch.tensor(S0, dtype=F64), sched0)
        law0 = gaussian_sampler(model0, variance="beta", d=D)
        n_sim = 100_000 if ctx.quick else 1_000_000
        g = ctx.generator(1)
        with torch.no_grad():
            xs = ddpm_sampler(model0, n=n_sim, steps=T0, variance="beta", generator=g, dtype=F64)
        # sampling.ddpm ends with the noiseless step onto sigma = 0; the ELBO's sampler ends with the
        # Gaussian decoder N(D_1(x_1), beta_1 I) (elbo.ddpm docstring): add that noise explicitly.
        xs = xs + math.sqrt(float(sched0.betas[0])) * torch.randn(xs.shape, generator=g, dtype=F64)
        n_x = 2048 if ctx.quick else 8192
        n_mc = 32
        xq = S * torch.randn(n_x, D, generator=g, dtype=F64)  # x ~ q
        est = ddpm_elbo(model0, xq, variance="beta", n_samples=n_mc, generator=g)
        n_big = 200_000 if ctx.quick else 2_000_000
        pw_big = law0.elbo(S * torch.randn(n_big, D, generator=g, dtype=F64))

        # de Bruijn (I11)
        n_db = 4096 if ctx.quick else 32768
        p_mean = torch.tensor([0.3, -0.2], dtype=F64)
        p_cov = torch.tensor([[0.5, 0.1], [0.1, 0.3]], dtype=F64)
        kl_exact = float(gaussian_kl(q_mean, q_cov, p_mean, p_cov))
        e = kl_de_bruijn(targets.Gaussian(q_mean, q_cov), targets.Gaussian(p_mean, p_cov),
                         n_samples=n_db, n_nodes=N_NODES_DB, generator=ctx.generator(2))
        qm = targets.random_gmm(2, 3, seed=ctx.seed)
        pm = targets.GaussianMixture(qm.weights.flip(0), qm.means, 1.3 * qm.covs)
        e2 = kl_de_bruijn(qm, pm, n_samples=n_db, n_nodes=N_NODES_DB, generator=ctx.generator(3))
        big = qm.sample(400_000 if ctx.quick else 4_000_000, generator=ctx.generator(4))
        lr = qm.log_prob(big) - pm.log_prob(big)
        return {
            "Ts": Ts, "rows": rows, "curves": curves, "slacks": np.array(slacks),
            "n_sim": n_sim, "sim_mean": xs.mean(0), "sim_cov": torch.cov(xs.T), "law0_mean": law0.mean,
            "law0_cov": law0.cov,
            "n_x": n_x, "n_mc": n_mc, "elbo_mc": est.value, "elbo_mc_se": est.stderr, "elbo_closed": law0.elbo(xq),
            "n_big": n_big, "pw_mean": float(pw_big.mean()), "pw_se": float(pw_big.std() / math.sqrt(n_big)),
            "expected_elbo": float(law0.expected_elbo(q_mean, q_cov)),
            "n_db": n_db, "kl_exact": kl_exact, "db_gauss": float(e.value[0]), "db_gauss_se": float(e.stderr[0]),
            "db_mix": float(e2.value[0]), "db_mix_se": float(e2.stderr[0]),
            "kl_mc": float(lr.mean()), "kl_mc_se": float(lr.std() / math.sqrt(lr.numel())), "n_kl_mc": lr.numel(),
        }

    def claims(self, r: Dict[str, Any], ctx: Context) -> Iterable[Claim]:
        Ts, rows = r["Ts"], r["rows"]
        yield Claim(
            "argmin gap |theta_elbo - theta_kl| = O(1/T)",
            f"log-log slope over T >= {T_RATE} within -1 +- {SLOPE_TOL_GAP}, and the gap decreasing in T",
            _rate_check(Ts, [x["gap"] for x in rows], -1.0, SLOPE_TOL_GAP, "theta"),
            Control("T-independent shift of the KL minimizer", 6e-4, "theta"),
        )
        yield Claim(
            "cost of the ELBO's minimizer: KL(q||p_theta_elbo) - min KL = O(1/T^2)",
            f"log-log slope over T >= {T_RATE} within -2 +- {SLOPE_TOL_EXCESS}, and the excess decreasing in T",
            _rate_check(Ts, [x["excess_kl"] for x in rows], -2.0, SLOPE_TOL_EXCESS, "nats"),
            Control("T-independent excess KL added", 1e-5, "nats"),
        )
        yield Claim(
            "E_q[ELBO_theta] <= E_q[log p_theta] for every theta and T (I9 in expectation)",
            "E_q[log p] - E_q[ELBO] >= -1e-10 nats (float64 round-off) at 6 thetas x every T",
            checks.above(r["slacks"], -1e-10, unit="nats", label="min slack E_q[log p] - E_q[ELBO]"),
            Control("bias added to E_q[ELBO]", 6e-4 if ctx.quick else 1.5e-4, "nats"),
        )
        # sampler law = simulation: the n_sim draws are i.i.d. N(m, P) under the claim
        P, n = r["law0_cov"], r["n_sim"]
        se_mean = torch.sqrt(torch.diagonal(P) / n)
        mean_se_mean = float(math.sqrt(float(P.sum())) / (D * math.sqrt(n)))  # the coordinates are correlated
        yield Claim(
            f"I14: sampler mean (T={T0}, exact denoiser of N(m0, S0), non-centred and correlated) = simulation",
            f"|simulated - closed form| <= c se per coordinate and in the mean ({n} draws; m0 = {M0}, S0 = {S0})",
            checks.agreement(r["sim_mean"], se_mean, r["law0_mean"], dof=None, unit="x units",
                             mean_stderr=mean_se_mean),
            Control("simulated output shifted along (1, 1)", 0.015, "x units"),
        )
        V = _cov_entry_covariance(P, n)
        sim_cov, law_cov = _upper(r["sim_cov"]), _upper(P)
        se_cov, mean_se_cov = np.sqrt(np.diag(V)), float(math.sqrt(V.sum()) / V.shape[0])

        def cov_check(s: float) -> Outcome:  # defect: the simulated output scaled by (1 + s) about its mean
            return checks.agreement(sim_cov * (1.0 + s) ** 2, se_cov, law_cov, dof=None, unit="x units^2",
                                    mean_stderr=mean_se_cov)(0.0)

        yield Claim(
            f"I14: sampler covariance (T={T0}, exact denoiser of N(m0, S0)) = simulation",
            f"|simulated - closed form| <= c se per entry (upper triangle) and in the mean ({n} draws)",
            cov_check,
            Control("scale error of the simulated output about its mean", 0.02, "relative"),
        )
        yield Claim(
            f"closed-form pointwise ELBO = elbo.ddpm Monte Carlo (T={T0}, {r['n_x']} points x ~ q)",
            f"|Monte Carlo - closed form| <= c se at every point and in the mean (Student t, {r['n_mc'] - 1} dof)",
            checks.agreement(r["elbo_mc"], r["elbo_mc_se"], r["elbo_closed"], dof=r["n_mc"] - 1),
            Control("bias added to every elbo.ddpm estimate", 0.02, "nats"),
        )
        yield Claim(
            "expected_elbo = mean of the pointwise closed-form ELBO over x ~ q",
            f"|mean over {r['n_big']} x ~ q - expected_elbo| <= c se",
            checks.agreement(r["pw_mean"], r["pw_se"], r["expected_elbo"], dof=r["n_big"] - 1),
            Control("bias added to expected_elbo", 0.025, "nats"),
        )
        yield Claim(
            "I11 de Bruijn, two Gaussians = closed-form KL",
            f"|de Bruijn - closed form| <= c se ({r['n_db']} draws at each of {N_NODES_DB} nodes)",
            checks.agreement(r["db_gauss"], r["db_gauss_se"], r["kl_exact"], dof=None),
            Control("bias added to the de Bruijn estimate", 0.01, "nats"),
        )
        yield Claim(
            "I11 de Bruijn, two mixtures = Monte Carlo KL",
            f"|de Bruijn - Monte Carlo (log-ratio over {r['n_kl_mc']} draws)| <= c se (both errors)",
            checks.agreement(r["db_mix"], math.hypot(r["db_mix_se"], r["kl_mc_se"]), r["kl_mc"], dof=None),
            Control("bias added to the de Bruijn estimate", 0.04, "nats"),
        )

    def tables(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        return {"argmins.csv": r["rows"]}

    def notes(self, r: Dict[str, Any], ctx: Context) -> List[str]:
        median_t_gap = float(np.median([x["T_times_gap"] for x in r["rows"]]))
        return [
            "The ELBO is minimized by the true denoiser (theta = s) at every T, as a weighted denoising loss must be "
            "when the family contains the truth (a unit test guards it); the true KL of the DDPM sampler's output is "
            "minimized by a slightly smaller theta that compensates the extra variance the discretized sampler adds. "
            f"The two minimizers differ by about {median_t_gap:.2f}/T, and the KL lost by training on the ELBO is "
            "O(1/T^2).",
            f"Closed forms checked independently on the exact denoiser of N(m0, S0), m0 = {M0}, S0 = {S0} "
            f"(outside the family, non-centred and correlated): sampler simulation ({r['n_sim']} draws, decoder "
            "noise beta_1 added to sampling.ddpm's noiseless last step) and Monte Carlo of elbo.ddpm.",
        ]

    def figures(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        Ts, rows = r["Ts"], r["rows"]
        gaps = [abs(x["gap"]) for x in rows]
        ex = [x["excess_kl"] for x in rows]
        fig, axes = subplots(1, 2, figsize=(11.5, 4.4))
        ax = axes[0]
        for i, (T, (th, ne, k)) in enumerate(r["curves"].items()):
            ax.plot(th, ne - ne.min(), color=f"C{i}", ls="-", label=f"T={T}: -E_q[ELBO] - min")
            ax.plot(th, k - k.min(), color=f"C{i}", ls="--", label=f"T={T}: KL(q||p_sampler) - min")
            row = next(x for x in rows if x["T"] == T)
            ax.axvline(row["theta_kl"], color=f"C{i}", ls=":", lw=1)
        ax.axvline(S, color="k", lw=0.8)
        ax.set_xlabel("theta (model = exact denoiser of N(0, theta^2 I))")
        ax.set_ylabel("objective minus its minimum (nats)")
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.set_title(f"Objectives over the family, target N(0, {S}^2 I), d={D}")
        ax.legend(fontsize=7)
        ax = axes[1]
        ax.loglog(Ts, gaps, "o-", label="|theta_elbo - theta_kl|")
        ax.loglog(Ts, ex, "s-", label="KL(q||p_theta_elbo) - min KL (nats)")
        ax.loglog(Ts, [gaps[0] * Ts[0] / t for t in Ts], "k:", lw=1, label="1/T")
        ax.loglog(Ts, [ex[0] * (Ts[0] / t) ** 2 for t in Ts], "k--", lw=1, label="1/T^2")
        ax.axvspan(T_RATE, Ts[-1], color="0.92", zorder=0, label=f"rates fitted (T >= {T_RATE})")
        ax.set_xlabel("number of DDPM steps T")
        ax.set_title("ELBO minimizer vs true minimizer")
        ax.legend(fontsize=8)
        return {"minimizers": fig}


EXPERIMENT = Minimizers()

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
