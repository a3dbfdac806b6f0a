"""Gaussian-mixture targets (docs/math.md section 3, I1-I4) against independent references.

References used here, none of which shares code with ``densityformula.targets``:
scipy.stats.multivariate_normal + logsumexp (log q_0, log q_t), torch autograd of ``log_prob``
(score, divergence, Tweedie), Monte Carlo over the exact posterior written out in numpy
(denoiser), simulation of ``alpha X_0 + sigma Z`` (marginals), mpmath at 40 digits (extreme
points, ill-conditioned covariances), numpy Schur complements and a brute-force grid (condition).

Floating-point tolerances follow one rule, :func:`fp_tol`: a backward-stable factorisation of
``C`` perturbs it by ``O(d eps |C|)``, which moves ``log N(x; m, C)`` by at most
``d kappa(C) eps (1 + Mahalanobis^2)`` (first-order perturbation of log det and of the quadratic form).
"""
from __future__ import annotations

import math
from typing import Tuple

import mpmath as mp
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.special import logsumexp

from densityformula import schedules as S
from densityformula import targets as T
from densityformula.targets import Gaussian, GaussianMixture, random_gmm

EPS = float(np.finfo(np.float64).eps)
F64 = torch.float64

SCHEDULES = [
    S.LiYan(),
    S.VPLinear(),
    S.VPCosine(),
    S.SubVP(),
    S.VE(),
    S.Discrete.ddpm_linear(100),
    S.Discrete.ddpm_cosine(100),
]
SETTINGS = settings(max_examples=50, deadline=None, derandomize=True)


# ----------------------------------------------------------------------------------------------
# random mixtures and their numpy description
# ----------------------------------------------------------------------------------------------
class Case:
    """A random mixture together with an independent numpy copy of its parameters."""

    def __init__(self, d: int, K: int, cov_type: str, seed: int, spread: float = 2.0) -> None:
        rng = np.random.default_rng(seed)
        self.d, self.K, self.cov_type, self.rng = d, K, cov_type, rng
        self.w = rng.dirichlet(np.full(K, 2.0))
        self.mu = spread * rng.normal(size=(K, d))
        if cov_type == "full":
            A = rng.normal(size=(K, d, d))
            covs = A @ A.transpose(0, 2, 1) / d + 0.2 * np.eye(d)
            covs = 0.5 * (covs + covs.transpose(0, 2, 1))
            self.S = covs
        elif cov_type == "diag":
            covs = rng.uniform(0.1, 2.0, size=(K, d))
            self.S = np.stack([np.diag(c) for c in covs])
        else:
            covs = rng.uniform(0.1, 2.0, size=K)
            self.S = np.stack([c * np.eye(d) for c in covs])
        self.gmm = GaussianMixture(torch.tensor(self.w), torch.tensor(self.mu), torch.tensor(covs))

    def C(self, a: float, s: float) -> np.ndarray:
        return a * a * self.S + s * s * np.eye(self.d)[None]

    def kappa(self, a: float, s: float) -> float:
        return max(float(np.linalg.cond(c)) for c in self.C(a, s))

    def points(self, n: int, a: float, s: float, far: float = 1.0) -> np.ndarray:
        """Draws from q_t, some pushed ``far`` times further out."""
        k = self.rng.choice(self.K, size=n, p=self.w)
        C = self.C(a, s)
        L = np.linalg.cholesky(C)
        z = self.rng.normal(size=(n, self.d))
        x = a * self.mu[k] + np.einsum("nij,nj->ni", L[k], z)
        x[n // 2 :] *= far
        return x

    def log_comp(self, x: np.ndarray, a: float, s: float) -> np.ndarray:
        """(n, K) log w_k N(x; a mu_k, C_k) with scipy."""
        C = self.C(a, s)
        return np.stack(
            [
                np.log(self.w[k]) + stats.multivariate_normal(a * self.mu[k], C[k]).logpdf(x).reshape(-1)
                for k in range(self.K)
            ],
            1,
        )

    def log_q(self, x: np.ndarray, a: float, s: float) -> np.ndarray:
        return logsumexp(self.log_comp(x, a, s), axis=1)

    def maha2(self, x: np.ndarray, a: float, s: float) -> np.ndarray:
        """(n,) smallest squared Mahalanobis distance to a component."""
        C = self.C(a, s)
        out = []
        for k in range(self.K):
            y = x - a * self.mu[k]
            out.append(np.einsum("ni,ni->n", y, np.linalg.solve(C[k], y.T).T))
        return np.min(np.stack(out, 1), 1)

    def posterior(self, x: np.ndarray, a: float, s: float):
        """Exact posterior of X_0 given X_t = x: weights r (n,K), means m (n,K,d), covs P (K,d,d)."""
        C = self.C(a, s)
        lc = self.log_comp(x, a, s)
        r = np.exp(lc - logsumexp(lc, axis=1, keepdims=True))
        m = np.empty((x.shape[0], self.K, self.d))
        P = np.empty((self.K, self.d, self.d))
        for k in range(self.K):
            gain = a * self.S[k] @ np.linalg.inv(C[k])  # the test may use explicit inverses
            m[:, k] = self.mu[k] + (x - a * self.mu[k]) @ gain.T
            P[k] = self.S[k] - a * a * self.S[k] @ np.linalg.inv(C[k]) @ self.S[k]
            P[k] = 0.5 * (P[k] + P[k].T)
        return r, m, P


def fp_tol(d: int, kappa: float, maha2, c: float = 16.0):
    """Float64 error budget of a log-density (see module docstring)."""
    return c * d * kappa * EPS * (1.0 + np.asarray(maha2))


@st.composite
def cases(draw, max_d: int = 8, max_K: int = 5) -> Case:
    d = draw(st.integers(1, max_d))
    K = draw(st.integers(1, max_K))
    cov_type = draw(st.sampled_from(["full", "diag", "iso"]))
    seed = draw(st.integers(0, 2**32 - 1))
    return Case(d, K, cov_type, seed)


@st.composite
def times(draw) -> Tuple[S.Schedule, float]:
    sch = draw(st.sampled_from(SCHEDULES))
    u = draw(st.one_of(st.sampled_from([0.0, 1e-12, 1 - 1e-12, 1.0]), st.floats(0.0, 1.0)))
    t = sch.t_min + u * (sch.t_max - sch.t_min)
    return sch, float(min(max(t, sch.t_min), sch.t_max))


def scales(sch: S.Schedule, t) -> Tuple[np.ndarray, np.ndarray]:
    tt = torch.as_tensor(t, dtype=F64)
    return sch.alpha(tt).numpy(), sch.sigma(tt).numpy()


def tens(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(x, dtype=F64)


def autograd_grad_lap(gmm: GaussianMixture, x: torch.Tensor, t, sch) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gradient and Laplacian of ``gmm.log_prob(., t, sch)`` by autograd (one backward per dim)."""
    x = x.clone().requires_grad_(True)
    lp = gmm.log_prob(x, t, sch)
    (g,) = torch.autograd.grad(lp.sum(), x, create_graph=True)
    lap = torch.zeros(x.shape[0], dtype=x.dtype)
    for i in range(x.shape[1]):
        (h,) = torch.autograd.grad(g[:, i].sum(), x, retain_graph=True)
        lap = lap + h[:, i]
    return g.detach(), lap.detach()


# ----------------------------------------------------------------------------------------------
# I2: log q_0 and log q_t against scipy
# ----------------------------------------------------------------------------------------------
@SETTINGS
@given(case=cases(), st_=times(), per_point=st.booleans())
def test_log_prob_matches_scipy(case, st_, per_point):
    sch, t0 = st_
    n = 6
    if per_point:  # a different time for every point
        u = case.rng.uniform(0, 1, size=n)
        t = sch.t_min + u * (sch.t_max - sch.t_min)
        t[0] = t0
    else:
        t = np.full(n, t0)
    a, s = scales(sch, t)
    x = np.concatenate([case.points(1, a[i], s[i], far=3.0) for i in range(n)])
    ref = np.array([case.log_q(x[i : i + 1], a[i], s[i])[0] for i in range(n)])
    got = case.gmm.log_prob(tens(x), torch.tensor(t) if per_point else t0, sch).numpy()
    kap = max(case.kappa(a[i], s[i]) for i in range(n))
    maha = np.array([case.maha2(x[i : i + 1], a[i], s[i])[0] for i in range(n)])
    assert np.all(np.abs(got - ref) <= fp_tol(case.d, kap, maha)), (got - ref)
    if t0 == sch.t_min and not per_point and float(sch.sigma(t0)) == 0:
        np.testing.assert_allclose(case.gmm.log_prob(tens(x)).numpy(), ref, rtol=0, atol=1e-12 * (1 + abs(ref).max()))


@SETTINGS
@given(case=cases())
def test_log_q0_and_responsibilities_match_scipy(case):
    x = case.points(8, 1.0, 0.0, far=4.0)
    lc = case.log_comp(x, 1.0, 0.0)
    ref = logsumexp(lc, axis=1)
    tol = fp_tol(case.d, case.kappa(1.0, 0.0), case.maha2(x, 1.0, 0.0))
    assert np.all(np.abs(case.gmm.log_prob(tens(x)).numpy() - ref) <= tol)
    r = case.gmm.responsibilities(tens(x)).numpy()
    np.testing.assert_allclose(r, np.exp(lc - ref[:, None]), rtol=0, atol=float(tol.max()) * 2)
    np.testing.assert_allclose(r.sum(1), 1.0, atol=8 * EPS * case.K)


# ----------------------------------------------------------------------------------------------
# I1, I4: score and divergence against autograd; Tweedie consistency of the denoiser
# ----------------------------------------------------------------------------------------------
@SETTINGS
@given(case=cases(), st_=times())
def test_score_divergence_tweedie_against_autograd(case, st_):
    sch, t = st_
    a, s = (float(v) for v in scales(sch, t))
    x = tens(case.points(6, a, s, far=2.0))
    g, lap = autograd_grad_lap(case.gmm, x, t, sch)
    score = case.gmm.score(x, t, sch)
    div = case.gmm.score_divergence(x, t, sch)
    den = case.gmm.denoise(x, t, sch)
    kap = case.kappa(a, s)
    maha = case.maha2(x.numpy(), a, s)
    scale_g = float(g.abs().max()) + 1.0
    # derivatives inherit the log-density's relative accuracy, times their own size
    tol_g = fp_tol(case.d, kap, maha.max()) * scale_g
    assert float((score - g).abs().max()) <= tol_g
    tol_l = fp_tol(case.d, kap, maha.max()) * (1.0 + float(lap.abs().max()) + scale_g**2)
    assert float((div - lap).abs().max()) <= tol_l
    # I1 (Tweedie): alpha D = x + sigma^2 grad log q_t   (no division, valid at alpha = 0 and sigma = 0)
    lhs = a * den
    rhs = x + s * s * g
    tol_t = fp_tol(case.d, kap, maha.max()) * (float(x.abs().max()) + s * s * scale_g + 1.0)
    assert float((lhs - rhs).abs().max()) <= tol_t
    assert not torch.isnan(torch.cat([score.flatten(), div, den.flatten()])).any()


def test_per_point_time_equals_scalar_time():
    case = Case(3, 4, "full", seed=7)
    for sch in SCHEDULES:
        t = torch.linspace(sch.t_min, sch.t_max, 9, dtype=F64)
        x = tens(case.points(9, 0.7, 0.7))
        for meth in ("log_prob", "score", "denoise", "score_divergence", "responsibilities"):
            vec = getattr(case.gmm, meth)(x, t, sch)
            loop = torch.cat([getattr(case.gmm, meth)(x[i : i + 1], float(t[i]), sch) for i in range(9)])
            torch.testing.assert_close(vec, loop, rtol=1e-13, atol=1e-13)


# ----------------------------------------------------------------------------------------------
# I3: denoiser against Monte Carlo over the exact posterior
# ----------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None, derandomize=True)
@given(case=cases(max_d=6, max_K=4), st_=times())
def test_denoise_matches_posterior_monte_carlo(case, st_):
    sch, t = st_
    a, s = (float(v) for v in scales(sch, t))
    n, M = 4, 4000
    x = case.points(n, a, s, far=1.5)
    r, m, P = case.posterior(x, a, s)
    got = case.gmm.denoise(tens(x), t, sch).numpy()
    rng = np.random.default_rng(12345)
    zmax = 0.0
    for i in range(n):
        k = rng.choice(case.K, size=M, p=r[i] / r[i].sum())
        ev, V = np.linalg.eigh(P)
        ev = np.clip(ev, 0.0, None)
        z = rng.normal(size=(M, case.d)) * np.sqrt(ev[k])
        draws = m[i, k] + np.einsum("mij,mj->mi", V[k], z)
        mc = draws.mean(0)
        se = draws.std(0, ddof=1) / math.sqrt(M)
        err = np.abs(got[i] - mc)
        # a degenerate posterior (sigma = 0 or alpha = 0 with one component) has se = 0: exact agreement
        floor = 1e-9 * (1 + np.abs(mc))
        zmax = max(zmax, float(np.max(err / (se + floor))))
    # n * d <= 24 comparisons per example, 25 examples: P(|N(0,1)| > 5.5) * 600 ~ 2e-5
    assert zmax <= 5.5, zmax
    # and the closed form sum_k r_k m_k written with explicit inverses
    exact = np.einsum("nk,nkd->nd", r, m)
    kap = case.kappa(a, s)
    tol = fp_tol(case.d, kap, case.maha2(x, a, s).max()) * (1 + np.abs(exact).max() + np.abs(m).max())
    assert np.abs(got - exact).max() <= tol


def test_denoise_limits_at_the_ends():
    case = Case(4, 3, "full", seed=3)
    x = tens(case.points(10, 1.0, 0.5, far=2.0))
    for sch in (S.LiYan(), S.VPLinear(), S.SubVP(), S.Discrete.ddpm_linear(100)):
        # sigma(t_min) = 0: the posterior is a point mass at x
        torch.testing.assert_close(case.gmm.denoise(x, sch.t_min, sch), x, rtol=1e-14, atol=1e-14)
    for sch in (S.LiYan(), S.VPCosine()):
        # alpha(t_max) = 0: X_t carries no information; D = E[X_0], q_t = N(0, I)
        assert float(sch.alpha(sch.t_max)) == 0.0
        torch.testing.assert_close(case.gmm.denoise(x, sch.t_max, sch), case.gmm.mean().expand(10, 4))
        ref = stats.multivariate_normal(np.zeros(4), np.eye(4)).logpdf(x.numpy())
        np.testing.assert_allclose(case.gmm.log_prob(x, sch.t_max, sch).numpy(), ref, rtol=1e-14)
        # a few ulps of the K-term sum
        torch.testing.assert_close(case.gmm.score(x, sch.t_max, sch), -x, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(case.gmm.score_divergence(x, sch.t_max, sch), torch.full((10,), -4.0, dtype=F64))


# ----------------------------------------------------------------------------------------------
# I2: marginals against simulation of alpha X_0 + sigma Z
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sch", SCHEDULES, ids=[repr(s) for s in SCHEDULES])
def test_marginal_matches_simulation(sch):
    case = Case(3, 3, "full", seed=11)
    n = 20000
    rng = np.random.default_rng(2024)
    t = sch.t_min + 0.3 * (sch.t_max - sch.t_min)
    a, s = (float(v) for v in scales(sch, t))
    # simulate X_0 independently of the library, then the forward process
    k = rng.choice(case.K, size=n, p=case.w)
    L = np.linalg.cholesky(case.S)
    x0 = case.mu[k] + np.einsum("nij,nj->ni", L[k], rng.normal(size=(n, 3)))
    xt = a * x0 + s * rng.normal(size=(n, 3))
    marg = case.gmm.marginal(sch, t)
    # mean: z-scores with the exact marginal covariance
    cov = marg.covariance().numpy()
    z = (xt.mean(0) - marg.mean().numpy()) / np.sqrt(np.diag(cov) / n)
    assert np.abs(z).max() < 4.5, z
    # KS on two random 1-D projections against the exact projected-mixture CDF
    for _ in range(2):
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        mk = marg.means.numpy() @ u
        sk = np.sqrt(np.einsum("i,kij,j->k", u, marg.covs.numpy(), u))
        wk = marg.weights.numpy()

        def cdf(v, wk=wk, mk=mk, sk=sk):
            return np.sum(wk[None] * stats.norm.cdf((np.asarray(v)[:, None] - mk[None]) / sk[None]), 1)

        p = stats.kstest(xt @ u, cdf).pvalue
        assert p > 1e-4, p
    # the marginal's own log_prob agrees with log_prob(x, t, schedule)
    xs = tens(xt[:50])
    torch.testing.assert_close(marg.log_prob(xs), case.gmm.log_prob(xs, t, sch), rtol=1e-12, atol=1e-12)
    # its parameters are I2 in closed form
    np.testing.assert_allclose(marg.means.numpy(), a * case.mu, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(marg.covs.numpy(), case.C(a, s), rtol=1e-12, atol=1e-14)


def test_marginal_rejects_vector_time_and_bad_schedule():
    case = Case(2, 2, "diag", seed=0)
    with pytest.raises(ValueError, match=r"\bt\b"):
        case.gmm.marginal(S.LiYan(), torch.tensor([0.1, 0.2], dtype=F64))
    with pytest.raises(TypeError, match="schedule"):
        case.gmm.marginal("LiYan", 0.1)
    with pytest.raises(ValueError, match=r"\bt\b"):
        case.gmm.marginal(S.LiYan(), 1.5)


# ----------------------------------------------------------------------------------------------
# Fokker-Planck: d log q/dt = -d f - f x.grad log q + g^2/2 (lap log q + |grad log q|^2)
# ----------------------------------------------------------------------------------------------
FP_SCHEDULES = [S.LiYan(), S.VPLinear(), S.VPCosine(), S.SubVP(), S.VE(), S.Discrete.ddpm_linear(100)]


@pytest.mark.parametrize("sch", FP_SCHEDULES, ids=[repr(s) for s in FP_SCHEDULES])
@pytest.mark.parametrize("cov_type", ["full", "diag", "iso"])
def test_fokker_planck_residual_is_zero(sch, cov_type):
    case = Case(3, 3, cov_type, seed=5)
    gmm = case.gmm
    span = sch.t_max - sch.t_min
    if isinstance(sch, S.Discrete):
        ts = [10.5, 40.5, 80.5]  # inside steps: beta is constant there
        h = 0.05
    else:
        ts = [sch.t_min + f * span for f in (0.05, 0.3, 0.6, 0.9)]
        h = 1e-3 * span
    for t in ts:
        a, s = (float(v) for v in scales(sch, t))
        x = tens(case.points(8, a, s, far=2.0))
        # 5-point stencil in t: truncation O(h^4), rounding O(eps |log q| / h)
        lp = [gmm.log_prob(x, t + j * h, sch) for j in (-2, -1, 1, 2)]
        dt = (lp[0] - 8 * lp[1] + 8 * lp[2] - lp[3]) / (12 * h)
        g, lap = autograd_grad_lap(gmm, x, t, sch)
        f = float(sch.drift(t))
        g2 = float(sch.g2(t))
        rhs = -case.d * f - f * (x * g).sum(1) + 0.5 * g2 * (lap + (g * g).sum(1))
        scale = 1.0 + dt.abs() + rhs.abs()
        resid = (dt - rhs).abs() / scale
        assert float(resid.max()) <= 1e-6, (t, float(resid.max()))


# ----------------------------------------------------------------------------------------------
# extreme regimes
# ----------------------------------------------------------------------------------------------
def mp_log_q(w, mu, S_, x, a2: float, s2: float, dps: int = 40):
    """log q_t(x) in mpmath from exact float64 parameters (Cholesky at ``dps`` digits)."""
    with mp.workdps(dps):
        out = []
        K, d = mu.shape
        for xi in x:
            terms = []
            for k in range(K):
                C = mp.matrix(d, d)
                for i in range(d):
                    for j in range(d):
                        C[i, j] = mp.mpf(a2) * mp.mpf(float(S_[k, i, j])) + (mp.mpf(s2) if i == j else 0)
                L = mp.cholesky(C)
                y = mp.matrix([mp.mpf(float(xi[i])) - mp.sqrt(mp.mpf(a2)) * mp.mpf(float(mu[k, i])) for i in range(d)])
                z = mp.lu_solve(L, y)  # forward substitution with lower-triangular L
                quad = sum(z[i] ** 2 for i in range(d))
                logdet = 2 * sum(mp.log(L[i, i]) for i in range(d))
                terms.append(mp.log(mp.mpf(float(w[k]))) - (d * mp.log(2 * mp.pi) + logdet + quad) / 2)
            out.append(mp.log(mp.fsum(mp.exp(v) for v in terms)))
        return out


def test_log_prob_50_standard_deviations_out_mpmath():
    case = Case(3, 3, "full", seed=21, spread=1.0)
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(6, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    big = np.sqrt(max(np.linalg.eigvalsh(c).max() for c in case.S))
    x = 60.0 * big * dirs + case.mu.mean(0)
    for sch, t in ((None, None), (S.LiYan(), 0.3), (S.VPLinear(), 1e-12)):
        a2 = 1.0 if sch is None else float(sch.alpha2(t))
        s2 = 0.0 if sch is None else float(sch.sigma2(t))
        a, s = math.sqrt(a2), math.sqrt(s2)
        assert case.maha2(x, a, s).min() >= 50.0**2
        ref = mp_log_q(case.w, case.mu, case.S, x, float(np.float64(a) ** 2), float(np.float64(s) ** 2))
        got = case.gmm.log_prob(tens(x)) if sch is None else case.gmm.log_prob(tens(x), t, sch)
        for gi, ri in zip(got.tolist(), ref):
            assert abs((gi - ri) / ri) <= 1e-10, (gi, ri)
        if sch is not None:
            for meth in ("score", "denoise", "score_divergence", "responsibilities"):
                out = getattr(case.gmm, meth)(tens(x), t, sch)
                assert bool(torch.isfinite(out).all()), meth
            g, lap = autograd_grad_lap(case.gmm, tens(x), t, sch)
            torch.testing.assert_close(case.gmm.score(tens(x), t, sch), g, rtol=1e-10, atol=1e-10)


def ill_conditioned(d: int, K: int, cond: float, seed: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    covs = []
    for _ in range(K):
        Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        e = np.exp(np.linspace(-0.5, 0.5, d) * np.log(cond))
        c = Q @ np.diag(e) @ Q.T
        covs.append(0.5 * (c + c.T))
    return rng.dirichlet(np.ones(K)), rng.normal(size=(K, d)), np.stack(covs)


@pytest.mark.parametrize("cond", [1e4, 1e8])
def test_ill_conditioned_covariances_mpmath(cond):
    d, K = 5, 2
    w, mu, S_ = ill_conditioned(d, K, cond, seed=1)
    gmm = GaussianMixture(torch.tensor(w), torch.tensor(mu), torch.tensor(S_))
    rng = np.random.default_rng(3)
    L = np.linalg.cholesky(S_)
    k = rng.choice(K, size=6, p=w)
    x = mu[k] + np.einsum("nij,nj->ni", L[k], rng.normal(size=(6, d)))
    x[3:] += rng.normal(size=(3, d))  # some points off the thin directions
    for sch, t in ((None, None), (S.LiYan(), 1e-12), (S.VPLinear(), 0.2)):
        a2 = 1.0 if sch is None else float(sch.alpha2(t))
        s2 = 0.0 if sch is None else float(sch.sigma2(t))
        C = a2 * S_ + s2 * np.eye(d)
        kap = max(np.linalg.cond(c) for c in C)
        ref = np.array([float(v) for v in mp_log_q(w, mu, S_, x, a2, s2)])
        got = (gmm.log_prob(tens(x)) if sch is None else gmm.log_prob(tens(x), t, sch)).numpy()
        assert np.all(np.isfinite(got))
        maha = np.min(
            [np.einsum("ni,ni->n", x - math.sqrt(a2) * mu[j], np.linalg.solve(C[j], (x - math.sqrt(a2) * mu[j]).T).T)
             for j in range(K)], 0)
        err = np.abs(got - ref)
        assert np.all(err <= fp_tol(d, kap, maha, c=4.0)), (err, fp_tol(d, kap, maha, c=4.0))
        if sch is not None:
            for meth in ("score", "denoise", "score_divergence"):
                assert bool(torch.isfinite(getattr(gmm, meth)(tens(x), t, sch)).all()), meth


def test_random_gmm_condition_number_1e8_finite():
    gmm = random_gmm(6, 3, seed=4, condition_number=1e8)
    ev = np.linalg.eigvalsh(gmm.covs.numpy())
    np.testing.assert_allclose(ev.max(1) / ev.min(1), 1e8, rtol=1e-6)
    x = gmm.sample(50, generator=torch.Generator().manual_seed(0))
    for sch in SCHEDULES:
        for t in (sch.t_min, sch.t_min + 1e-12 * (sch.t_max - sch.t_min), 0.5 * (sch.t_min + sch.t_max)):
            for meth in ("log_prob", "score", "denoise", "score_divergence"):
                assert bool(torch.isfinite(getattr(gmm, meth)(x, t, sch)).all()), (sch, t, meth)


def _check_high_dim(gmm: GaussianMixture, kap_S: float, t: float = 0.5) -> None:
    """log_prob, score, divergence (I4), denoiser (I3) against Cholesky / explicit-inverse numpy forms."""
    from scipy.linalg import cho_factor, cho_solve

    sch = S.LiYan()
    d, K = gmm.d, gmm.K
    a, s = float(sch.alpha(t)), float(sch.sigma(t))
    x = a * gmm.sample(4, generator=torch.Generator().manual_seed(1)) + s * torch.randn(
        4, d, generator=torch.Generator().manual_seed(2), dtype=F64
    )
    Sig, w, mu, xn = gmm.covs.numpy(), gmm.weights.numpy(), gmm.means.numpy(), x.numpy()
    lc, gk, mk, trs, maha = [], [], [], [], []
    for k in range(K):
        C = a * a * Sig[k] + s * s * np.eye(d)
        cf = cho_factor(C, lower=True)
        y = xn - a * mu[k]
        sol = cho_solve(cf, y.T).T  # C^{-1} y
        q = np.einsum("ni,ni->n", y, sol)
        maha.append(q)
        lc.append(np.log(w[k]) - 0.5 * (d * math.log(2 * math.pi) + 2 * np.log(np.diag(cf[0])).sum() + q))
        gk.append(-sol)
        trs.append(np.trace(cho_solve(cf, np.eye(d))))
        mk.append(mu[k] + a * sol @ Sig[k])
    lc, gk, mk = np.stack(lc, 1), np.stack(gk, 1), np.stack(mk, 1)
    ref = logsumexp(lc, 1)
    r = np.exp(lc - ref[:, None])
    kap = kap_S  # kappa(a^2 S + s^2 I) <= kappa(S)
    got = gmm.log_prob(x, t, sch).numpy()
    assert np.all(np.abs(got - ref) <= fp_tol(d, kap, np.min(maha, 0), c=4.0)), got - ref
    sc = np.einsum("nk,nkd->nd", r, gk)
    div = np.einsum("nk,nk->n", r, -np.array(trs)[None] + (gk**2).sum(2)) - (sc**2).sum(1)
    den = np.einsum("nk,nkd->nd", r, mk)
    rel = fp_tol(d, kap, 0.0, c=4.0)  # relative accuracy of one solve
    np.testing.assert_allclose(gmm.score(x, t, sch).numpy(), sc, rtol=0, atol=rel * np.abs(sc).max())
    np.testing.assert_allclose(gmm.score_divergence(x, t, sch).numpy(), div, rtol=rel * d)
    np.testing.assert_allclose(gmm.denoise(x, t, sch).numpy(), den, rtol=0, atol=rel * np.abs(den).max())


def test_dimension_1000_diagonal_and_isotropic():
    d, K = 1000, 3
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(K))
    mu = rng.normal(size=(K, d)) * 0.1
    var = np.exp(rng.uniform(-1, 1, size=(K, d)))
    _check_high_dim(GaussianMixture(torch.tensor(w), torch.tensor(mu), torch.tensor(var)), kap_S=math.e**2)
    _check_high_dim(GaussianMixture(torch.tensor(w), torch.tensor(mu), torch.tensor([0.5, 1.0, 2.0])), kap_S=1.0)


@pytest.mark.slow
def test_dimension_1000_full_random_gmm():
    # random_gmm's covariances have condition number exactly 10 (test_random_gmm_properties)
    _check_high_dim(random_gmm(1000, 3, seed=0, condition_number=10.0), kap_S=10.0)


@pytest.mark.parametrize("sch", SCHEDULES, ids=[repr(s) for s in SCHEDULES])
def test_times_within_1e12_of_the_ends(sch):
    case = Case(4, 3, "full", seed=9)
    span = sch.t_max - sch.t_min
    for t in (sch.t_min, sch.t_min + 1e-12 * span, sch.t_max - 1e-12 * span, sch.t_max):
        a, s = (float(v) for v in scales(sch, t))
        x = case.points(6, a, s, far=3.0)
        got = case.gmm.log_prob(tens(x), t, sch).numpy()
        ref = case.log_q(x, a, s)
        tol = fp_tol(4, case.kappa(a, s), case.maha2(x, a, s))
        assert np.all(np.abs(got - ref) <= tol), (t, got - ref)
        g, lap = autograd_grad_lap(case.gmm, tens(x), t, sch)
        sc = case.gmm.score(tens(x), t, sch)
        torch.testing.assert_close(sc, g, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(case.gmm.score_divergence(tens(x), t, sch), lap, rtol=1e-9, atol=1e-9)
        assert bool(torch.isfinite(case.gmm.denoise(tens(x), t, sch)).all())


# ----------------------------------------------------------------------------------------------
# sampling, moments, random_gmm, dtype/device, chunking
# ----------------------------------------------------------------------------------------------
def test_sample_law_and_reproducibility():
    case = Case(3, 4, "full", seed=13)
    n = 40000
    x, lab = case.gmm.sample(n, generator=torch.Generator().manual_seed(5), return_labels=True)
    assert x.shape == (n, 3) and x.dtype == F64 and lab.shape == (n,)
    # label frequencies: binomial z-scores
    freq = np.bincount(lab.numpy(), minlength=case.K) / n
    z = (freq - case.w) / np.sqrt(case.w * (1 - case.w) / n)
    assert np.abs(z).max() < 4.5
    # each component: mean z-scores and a KS test on a projection
    rng = np.random.default_rng(1)
    for k in range(case.K):
        xk = x[lab == k].numpy()
        zk = (xk.mean(0) - case.mu[k]) / np.sqrt(np.diag(case.S[k]) / len(xk))
        assert np.abs(zk).max() < 4.5
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        p = stats.kstest(xk @ u, stats.norm(case.mu[k] @ u, math.sqrt(u @ case.S[k] @ u)).cdf).pvalue
        assert p > 1e-4
    again = case.gmm.sample(n, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again, x)
    other = case.gmm.sample(10, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(other, x[:10])
    assert case.gmm.sample(0).shape == (0, 3)


def test_mean_and_covariance_closed_forms():
    case = Case(4, 3, "full", seed=17)
    m = case.w @ case.mu
    cov = sum(case.w[k] * (case.S[k] + np.outer(case.mu[k] - m, case.mu[k] - m)) for k in range(case.K))
    np.testing.assert_allclose(case.gmm.mean().numpy(), m, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(case.gmm.covariance().numpy(), cov, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(case.gmm.covs.numpy(), case.S, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(case.gmm.weights.numpy(), case.w, rtol=1e-14)
    assert case.gmm.K == 3 and case.gmm.d == 4 and case.gmm.dtype == F64 and case.gmm.device.type == "cpu"


def test_storage_types():
    w, mu = torch.tensor([0.3, 0.7], dtype=F64), torch.zeros(2, 3, dtype=F64)
    assert GaussianMixture(w, mu, torch.tensor([1.0, 2.0])).cov_type == "iso"
    assert GaussianMixture(w, mu, torch.ones(2, 3)).cov_type == "diag"
    assert GaussianMixture(w, mu, torch.eye(3).expand(2, 3, 3)).cov_type == "full"
    full = GaussianMixture(w, mu, torch.diag_embed(torch.tensor([[1.0, 2, 3], [4, 5, 6]])))
    diag = GaussianMixture(w, mu, torch.tensor([[1.0, 2, 3], [4, 5, 6]]))
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(full.log_prob(x), diag.log_prob(x), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(full.score(x, 0.4, S.LiYan()), diag.score(x, 0.4, S.LiYan()), rtol=1e-13, atol=1e-13)


def test_gaussian_is_the_k1_mixture():
    mean = np.array([1.0, -2.0])
    cov = np.array([[2.0, 0.3], [0.3, 0.5]])
    g = Gaussian(torch.tensor(mean), torch.tensor(cov))
    x = np.random.default_rng(0).normal(size=(5, 2))
    np.testing.assert_allclose(g.log_prob(tens(x)).numpy(), stats.multivariate_normal(mean, cov).logpdf(x), rtol=1e-13)
    assert g.K == 1
    gd = Gaussian(torch.tensor(mean), torch.tensor([2.0, 0.5]))
    ref = stats.multivariate_normal(mean, np.diag([2.0, 0.5])).logpdf(x)
    np.testing.assert_allclose(gd.log_prob(tens(x)).numpy(), ref, rtol=1e-13)
    gi = Gaussian(torch.tensor(mean), 2.0)
    ref = stats.multivariate_normal(mean, 2.0 * np.eye(2)).logpdf(x)
    np.testing.assert_allclose(gi.log_prob(tens(x)).numpy(), ref, rtol=1e-13)


def test_random_gmm_properties():
    a = random_gmm(5, 3, seed=1)
    b = random_gmm(5, 3, seed=1)
    c = random_gmm(5, 3, seed=2)
    assert torch.equal(a.means, b.means) and torch.equal(a.covs, b.covs) and not torch.equal(a.means, c.means)
    np.testing.assert_allclose(a.weights.sum().item(), 1.0, rtol=1e-15)
    ev = np.linalg.eigvalsh(a.covs.numpy())
    np.testing.assert_allclose(ev.max(1) / ev.min(1), 10.0, rtol=1e-10)
    np.testing.assert_allclose(np.exp(np.log(ev).mean(1)), 1.0, rtol=1e-10)  # geometric mean 1
    twice = random_gmm(5, 3, seed=1, separation=6.0)
    torch.testing.assert_close(twice.means, 2 * a.means, rtol=1e-14, atol=0)
    f32 = random_gmm(5, 3, seed=1, dtype=torch.float32)
    assert f32.dtype == torch.float32 and f32.means.dtype == torch.float32
    with pytest.raises((ValueError, TypeError), match=r"\bd\b"):
        random_gmm(0, 3)
    with pytest.raises((ValueError, TypeError), match="condition_number"):
        random_gmm(3, 3, condition_number=0.5)
    with pytest.raises((ValueError, TypeError), match="separation"):
        random_gmm(3, 3, separation=-1.0)
    with pytest.raises(TypeError, match="seed"):
        random_gmm(3, 3, seed=1.5)


def test_to_float32_and_dtype_mismatch():
    case = Case(3, 2, "full", seed=2)
    g32 = case.gmm.to(dtype=torch.float32)
    assert g32.dtype == torch.float32
    x = tens(case.points(5, 1.0, 0.0))
    ref = case.gmm.log_prob(x)
    got = g32.log_prob(x.float())
    assert got.dtype == torch.float32
    # float32: relative rounding 2^-24 of every term of size ~|log q| + d
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=float(64 * 2**-24 * (1 + ref.abs().max() + 3)))
    with pytest.raises(TypeError, match=r"\bx\b"):
        case.gmm.log_prob(x.float())
    with pytest.raises(TypeError, match=r"\bx\b"):
        g32.score(x, 0.5, S.LiYan())
    with pytest.raises(TypeError, match="dtype"):
        case.gmm.to(dtype=torch.int32)


def test_chunked_evaluation_equals_unchunked(monkeypatch):
    case = Case(3, 4, "full", seed=8)
    x = tens(case.points(100, 0.8, 0.6))
    t = torch.linspace(0.0, 1.0, 100, dtype=F64)
    sch = S.LiYan()
    full = {m: getattr(case.gmm, m)(x, t, sch) for m in ("log_prob", "score", "denoise", "score_divergence")}
    monkeypatch.setattr(T, "_CHUNK_ELEMENTS", {"cpu": 50, "cuda": 50})  # chunks of 4 points
    for m, v in full.items():
        # identical formulas; only BLAS blocking of the batched products may differ
        torch.testing.assert_close(getattr(case.gmm, m)(x, t, sch), v, rtol=1e-14, atol=1e-14)


def test_zero_weight_component_is_inert():
    w = torch.tensor([0.0, 1.0], dtype=F64)
    mu = torch.tensor([[100.0], [0.0]], dtype=F64)
    gmm = GaussianMixture(w, mu, torch.tensor([1e-6, 1.0], dtype=F64))
    x = torch.tensor([[0.3], [-2.0]], dtype=F64)
    sch = S.LiYan()
    np.testing.assert_allclose(gmm.log_prob(x, 0.4, sch).numpy(), stats.norm(0, 1).logpdf(x.numpy()[:, 0]), rtol=1e-14)
    torch.testing.assert_close(gmm.score(x, 0.4, sch), -x)
    assert bool(torch.isfinite(gmm.score_divergence(x, 0.0, sch)).all())


def test_autograd_through_denoise_and_log_prob():
    case = Case(2, 2, "full", seed=1)
    x = tens(case.points(3, 0.8, 0.6)).requires_grad_(True)
    out = case.gmm.denoise(x, 0.36, S.LiYan()).sum() + case.gmm.log_prob(x, 0.36, S.LiYan()).sum()
    (g,) = torch.autograd.grad(out, x)
    assert bool(torch.isfinite(g).all())


# ----------------------------------------------------------------------------------------------
# condition(mask, values)
# ----------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None, derandomize=True)
@given(case=cases(max_d=6, max_K=4), mask_seed=st.integers(0, 10_000))
def test_condition_matches_schur_complement_and_bayes(case, mask_seed):
    assume(case.d >= 2)
    rng = np.random.default_rng(mask_seed)
    nk = int(rng.integers(1, case.d))
    known = np.zeros(case.d, dtype=bool)
    known[rng.choice(case.d, size=nk, replace=False)] = True
    v = rng.normal(size=nk) * 2
    cond = case.gmm.condition(torch.tensor(known), torch.tensor(v))
    u = ~known
    w_ref, m_ref, c_ref = [], [], []
    for k in range(case.K):
        Skk = case.S[k][np.ix_(known, known)]
        Suk = case.S[k][np.ix_(u, known)]
        Suu = case.S[k][np.ix_(u, u)]
        Kinv = np.linalg.inv(Skk)
        m_ref.append(case.mu[k][u] + Suk @ Kinv @ (v - case.mu[k][known]))
        c_ref.append(Suu - Suk @ Kinv @ Suk.T)
        w_ref.append(np.log(case.w[k]) + stats.multivariate_normal(case.mu[k][known], Skk).logpdf(v))
    w_ref = np.exp(np.array(w_ref) - logsumexp(w_ref))
    kap = max(np.linalg.cond(c) for c in case.S)
    np.testing.assert_allclose(cond.weights.numpy(), w_ref, rtol=1e-9, atol=1e-12)
    atol_m = 1e-12 * kap * (1 + np.abs(m_ref).max())
    np.testing.assert_allclose(cond.means.numpy(), np.stack(m_ref), rtol=0, atol=atol_m)
    np.testing.assert_allclose(cond.covs.numpy(), np.stack(c_ref), rtol=0, atol=1e-12 * kap * (1 + np.abs(c_ref).max()))
    assert cond.d == int(u.sum()) and cond.K == case.K
    # passing the full (d,) vector of values uses values[mask]
    full_v = np.zeros(case.d)
    full_v[known] = v
    cond2 = case.gmm.condition(torch.tensor(known), torch.tensor(full_v))
    torch.testing.assert_close(cond2.means, cond.means)


def test_condition_by_bayes_rule_on_a_grid():
    """2-D mixture, x_2 known: p(x_1 | x_2) = q_0(x_1, x_2) / int q_0(., x_2), by brute-force quadrature."""
    w = np.array([0.3, 0.5, 0.2])
    mu = np.array([[-2.0, 1.0], [1.0, -0.5], [3.0, 2.0]])
    S_ = np.array([[[1.0, 0.6], [0.6, 0.8]], [[0.5, -0.2], [-0.2, 1.5]], [[2.0, 0.0], [0.0, 0.3]]])
    gmm = GaussianMixture(torch.tensor(w), torch.tensor(mu), torch.tensor(S_))
    v2 = 0.7
    grid = np.linspace(-25, 25, 200001)
    pts = np.stack([grid, np.full_like(grid, v2)], 1)

    def log_joint(p):
        parts = [np.log(w[k]) + stats.multivariate_normal(mu[k], S_[k]).logpdf(p) for k in range(3)]
        return logsumexp(np.stack(parts, 1), 1)

    logj = log_joint(pts)
    h = grid[1] - grid[0]
    log_norm = logsumexp(logj) + math.log(h)  # trapezoid = rectangle here: the tails are ~e^-200
    cond = gmm.condition(torch.tensor([False, True]), torch.tensor([v2], dtype=F64))
    probe = np.linspace(-6, 7, 27)
    got = cond.log_prob(tens(probe[:, None])).numpy()
    pp = np.stack([probe, np.full_like(probe, v2)], 1)
    ref = log_joint(pp)
    # rectangle rule on a smooth, rapidly decaying integrand: error far below 1e-10
    np.testing.assert_allclose(got, ref - log_norm, rtol=0, atol=1e-10)


def test_condition_bad_arguments():
    gmm = Case(3, 2, "full", seed=0).gmm
    with pytest.raises((TypeError, ValueError), match="mask"):
        gmm.condition(torch.tensor([1, 0, 1]), torch.tensor([0.0, 0.0]))
    with pytest.raises((TypeError, ValueError), match="mask"):
        gmm.condition(torch.tensor([True, False]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="mask"):
        gmm.condition(torch.tensor([True, True, True]), torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="values"):
        gmm.condition(torch.tensor([True, False, True]), torch.zeros(5, dtype=F64))
    with pytest.raises(ValueError, match="values"):
        gmm.condition(torch.tensor([True, False, True]), torch.tensor([0.0, math.nan], dtype=F64))
    with pytest.raises(TypeError, match="values"):  # float32 values to a float64 mixture
        gmm.condition(torch.tensor([True, False, True]), torch.tensor([0.0, 0.7]))


# ----------------------------------------------------------------------------------------------
# bad input: ValueError / TypeError naming the argument
# ----------------------------------------------------------------------------------------------
W2 = torch.tensor([0.4, 0.6], dtype=F64)
MU2 = torch.zeros(2, 2, dtype=F64)
I2 = torch.eye(2, dtype=F64).expand(2, 2, 2).clone()


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        (dict(covs=torch.tensor([[[1.0, 0.0], [0.0, -1.0]]] * 2)), ValueError, "covs"),  # not PSD
        (dict(covs=torch.tensor([[[1.0, 2.0], [2.0, 1.0]]] * 2)), ValueError, "covs"),  # indefinite
        (dict(covs=torch.tensor([[[1.0, 0.0], [0.0, 0.0]]] * 2)), ValueError, "covs"),  # singular
        (dict(covs=torch.tensor([[[1.0, 0.5], [0.0, 1.0]]] * 2)), ValueError, "covs"),  # not symmetric
        (dict(covs=torch.tensor([[1.0, -1.0], [1.0, 1.0]])), ValueError, "covs"),  # diag <= 0
        (dict(covs=torch.tensor([1.0, 0.0])), ValueError, "covs"),  # iso <= 0
        (dict(covs=torch.ones(3, 2, 2)), ValueError, "covs"),  # wrong K
        (dict(covs=torch.ones(2, 2, 3)), ValueError, "covs"),
        (dict(covs=torch.full((2, 2), math.inf)), ValueError, "covs"),
        (dict(covs=torch.full((2, 2), math.nan)), ValueError, "covs"),
        (dict(weights=torch.tensor([-0.2, 1.2])), ValueError, "weights"),
        (dict(weights=torch.tensor([0.3, 0.3])), ValueError, "weights"),
        (dict(weights=torch.tensor([math.nan, 1.0])), ValueError, "weights"),
        (dict(weights=torch.tensor([[0.5, 0.5]])), ValueError, "weights"),
        (dict(weights=torch.tensor([0.2, 0.3, 0.5])), ValueError, "means"),  # K mismatch
        (dict(means=torch.zeros(2, 2, 1)), ValueError, "means"),
        (dict(means=torch.tensor([[0.0, math.inf], [0.0, 0.0]])), ValueError, "means"),
        (dict(means="zeros"), TypeError, "means"),
        (dict(weights=None), TypeError, "weights"),
        (dict(dtype=torch.int64), TypeError, "dtype"),
    ],
)
def test_constructor_rejects_bad_input(kwargs, exc, name):
    args = dict(weights=W2, means=MU2, covs=I2)
    args.update(kwargs)
    dtype = args.pop("dtype", F64)
    with pytest.raises(exc, match=name):
        GaussianMixture(args["weights"], args["means"], args["covs"], dtype=dtype)


def test_gaussian_constructor_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\bcov\b|covs"):
        Gaussian(torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    with pytest.raises(ValueError, match=r"\bcov\b"):
        Gaussian(torch.zeros(2), torch.ones(3))
    with pytest.raises(ValueError, match="mean"):
        Gaussian(torch.zeros(2, 2), torch.ones(2))


def test_methods_reject_bad_input():
    gmm = GaussianMixture(W2, MU2, I2)
    sch = S.LiYan()
    x = torch.zeros(3, 2, dtype=F64)
    for meth in ("score", "denoise", "score_divergence"):
        f = getattr(gmm, meth)
        with pytest.raises(ValueError, match=r"\bx\b"):
            f(torch.zeros(3, 3, dtype=F64), 0.5, sch)
        with pytest.raises(ValueError, match=r"\bx\b"):
            f(torch.zeros(2, dtype=F64), 0.5, sch)
        with pytest.raises(ValueError, match=r"\bx\b"):
            f(torch.tensor([[0.0, math.nan]], dtype=F64), 0.5, sch)
        with pytest.raises(ValueError, match=r"\bx\b"):
            f(torch.tensor([[0.0, math.inf]], dtype=F64), 0.5, sch)
        with pytest.raises(TypeError, match=r"\bx\b"):
            f(x.float(), 0.5, sch)
        with pytest.raises(TypeError, match=r"\bx\b"):
            f(x.numpy(), 0.5, sch)
        with pytest.raises(TypeError, match=r"\bx\b"):
            f(x.long(), 0.5, sch)
        with pytest.raises(ValueError, match=r"\bt\b"):
            f(x, 1.5, sch)
        with pytest.raises(ValueError, match=r"\bt\b"):
            f(x, -1e-9, sch)
        with pytest.raises(ValueError, match=r"\bt\b"):
            f(x, math.nan, sch)
        with pytest.raises(ValueError, match=r"\bt\b"):
            f(x, torch.full((4,), 0.5, dtype=F64), sch)
        with pytest.raises(TypeError, match="schedule"):
            f(x, 0.5, "LiYan")
    with pytest.raises(ValueError, match="schedule"):
        gmm.log_prob(x, 0.5)
    with pytest.raises(ValueError, match=r"\bt\b"):
        gmm.log_prob(x, schedule=sch)
    with pytest.raises(ValueError, match=r"\bn\b"):
        gmm.sample(-1)
    with pytest.raises(ValueError, match=r"\bn\b"):
        gmm.sample(2.5)
    with pytest.raises(TypeError, match="generator"):
        gmm.sample(3, generator=0)


def test_far_points_never_return_nan():
    """x so far out that every component's log-density overflows: log_prob is -inf, the rest raise."""
    gmm = GaussianMixture(W2, torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=F64), I2)
    x = torch.tensor([[1e200, 0.0]], dtype=F64)
    assert float(gmm.log_prob(x)) == -math.inf
    for meth in ("score", "denoise", "score_divergence", "responsibilities"):
        with pytest.raises(ValueError, match=r"\bx\b"):
            getattr(gmm, meth)(x, 0.5, S.LiYan())
    # a point far from a very narrow component only: finite and exact (that component has r = 0)
    g2 = GaussianMixture(W2, torch.tensor([[0.0, 0.0], [1e10, 0.0]], dtype=F64), torch.tensor([1e-300, 1.0], dtype=F64))
    x2 = torch.tensor([[5e9, 0.0]], dtype=F64)
    torch.testing.assert_close(g2.score(x2, 0.0, S.LiYan()), torch.tensor([[5e9, 0.0]], dtype=F64))
