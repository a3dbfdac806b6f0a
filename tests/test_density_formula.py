"""Tests of the score-based density formula (docs/math.md I5, I6, I7, I8) and its quadrature engine.

Ground truth is ``GaussianMixture.log_prob`` and, for Gaussian targets, the closed-form
conditional expectation of the integrand (``_gaussian_integrand``, derived independently of
the library from the linear posterior of a Gaussian).  Tolerances are ``4 * stderr`` (plus the
reported truncation bound) for Monte Carlo quantities and derived error levels for
deterministic ones.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.special import expit

from densityformula import _quadrature as Q
from densityformula.formula import FORMS, density_formula, density_formula_discrete
from densityformula.models import AnalyticModel, DiffusionModel
from densityformula.schedules import VE, Discrete, LiYan, SubVP, VPCosine, VPLinear
from densityformula.targets import GaussianMixture, random_gmm

F64 = torch.float64
# a cheaper configuration than the default (about 8.4k evaluations per point)
CHEAP = dict(n_nodes=40, n_noise=12, n_replicates=16, n_pilot=8)


def _points(target: GaussianMixture, n: int, seed: int) -> torch.Tensor:
    return target.sample(n, generator=torch.Generator().manual_seed(seed))


def _gaussian_integrand(lam: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """Exact ``E_Z[d sigmoid(lam) - ||Z - eps_hat||^2]`` for data ``N(mean, cov)``, shape ``(J, n)``.

    In the eigenbasis of ``cov`` (eigenvalues ``e_i``, coordinates ``y = U^T(x - mean)``) with
    ``a2 = sigmoid(lam)``, ``s2 = sigmoid(-lam)``, ``C_i = a2 e_i + s2``:
    ``x - D = y s2 / C - sqrt(a2 s2) e Z / C`` coordinatewise, so
    ``E||Z - eps_hat||^2 = (a2/s2) E||x - D||^2 = sum_i a2 s2 y_i^2 / C_i^2 + a2^2 e_i^2 / C_i^2``.
    """
    e, U = torch.linalg.eigh(cov)
    y = (x - mean) @ U
    a2 = torch.sigmoid(lam)[:, None, None]
    s2 = torch.sigmoid(-lam)[:, None, None]
    C = a2 * e + s2
    return x.shape[1] * a2[..., 0] - (a2 * s2 * y**2 / C**2 + a2**2 * e**2 / C**2).sum(-1)


def _within(est, truth: torch.Tensor, k: float = 4.0) -> bool:
    bound = est.extras.get("truncation_bound", torch.zeros_like(truth))
    return bool(((est.value - truth).abs() <= k * est.stderr + bound).all())


class DenoiserOnly(DiffusionModel):
    """A model that only has ``denoise`` (like a network): no ``score_divergence``."""

    def __init__(self, target: GaussianMixture, schedule) -> None:
        self.target, self.schedule = target, schedule

    def denoise(self, x_t, t):
        return self.target.denoise(x_t, t, self.schedule)


class OffsetModel(DiffusionModel):
    """Exact denoiser plus ``eps * sigmoid(-lambda(t)) * v``: a perturbed score (I8)."""

    def __init__(self, base: AnalyticModel, v: torch.Tensor, eps: float) -> None:
        self.base, self.v, self.eps_ = base, v, eps
        self.schedule = base.schedule

    def denoise(self, x_t, t):
        lam = self.schedule.log_snr(torch.as_tensor(t, dtype=F64))
        c = (self.eps_ * torch.sigmoid(-lam)).reshape(-1, 1) if lam.ndim else self.eps_ * torch.sigmoid(-lam)
        return self.base.denoise(x_t, t) + c * self.v


# ----------------------------------------------------------------------------------------------
# the quadrature engine
# ----------------------------------------------------------------------------------------------
def test_gauss_legendre_is_exact_for_polynomials():
    nodes, w = Q.gauss_legendre(5, -1.0, 3.0)
    for p in range(10):  # degree <= 2n - 1
        exact = (3.0 ** (p + 1) - (-1.0) ** (p + 1)) / (p + 1)
        assert float((w * nodes**p).sum()) == pytest.approx(exact, rel=1e-12, abs=1e-12)


def test_sinh_rule_integrates_the_logistic_density_and_tails_are_exact():
    # int sigmoid'(lam) dlam over R is 1; the tails of sigmoid' beyond +-25 are ~1.4e-11
    lam, w = Q.sinh_gauss_legendre(48, -25.0, 25.0)
    dens = torch.sigmoid(lam) * torch.sigmoid(-lam)
    assert abs(float((w * dens).sum()) - 1.0) < 1e-10
    # tail nodes integrate B sigmoid(lam) below lo and A sigmoid(-lam) above hi exactly
    lo, hi = -7.5, 4.0
    tn, tw = Q.tail_nodes(lo, hi)
    lower = integrate.quad(lambda u: 3.0 * expit(u), -np.inf, lo)[0]
    upper = integrate.quad(lambda u: -2.0 * expit(-u), hi, np.inf)[0]
    assert tw[0] * 3.0 * expit(tn[0]) == pytest.approx(lower, rel=1e-10)
    assert tw[1] * -2.0 * expit(-tn[1]) == pytest.approx(upper, rel=1e-10)
    assert Q.tail_nodes(-math.inf, math.inf) == ([], [])


def test_allocate_is_neyman_with_a_floor():
    scale = torch.tensor([0.0, 1.0, 2.0, 1e-9, 4.0], dtype=F64)
    m = Q.allocate(scale, 700, 1)
    assert int(m.sum()) == 700 and bool((m >= 1).all())
    assert m[0] == 1 and m[3] == 1
    free = m[[1, 2, 4]].double()
    assert torch.allclose(free / free.sum(), torch.tensor([1, 2, 4], dtype=F64) / 7, atol=2e-3)
    with pytest.raises(ValueError, match="at least"):
        Q.allocate(scale, 3, 1)


def test_normal_draws_are_standard_normal():
    g = torch.Generator().manual_seed(0)
    z = Q.normal_draws(4096, 3, method="sobol", generator=g, device=torch.device("cpu"))
    assert z.dtype == F64 and z.shape == (4096, 3) and bool(torch.isfinite(z).all())
    # scrambled Sobol: moments far more accurate than the MC standard errors (1.6e-2, 2.2e-2)
    assert float(z.mean(0).abs().max()) < 2e-3
    assert float((z.var(0) - 1).abs().max()) < 5e-3
    r = Q.normal_draws(20000, 2, method="random", generator=g, device=torch.device("cpu"))
    assert float(r.mean(0).abs().max()) < 4 / math.sqrt(20000)
    with pytest.raises(ValueError, match="noise"):
        Q.normal_draws(4, 2, method="halton", generator=g, device=torch.device("cpu"))


def test_per_point_noise_is_independent_across_points():
    # With a constant integrand-free toy the replicate errors of different points must be uncorrelated:
    # f = ||Z||^2 has E f = d; no control variate, so errors come from the noise alone.
    n, d = 64, 2
    res = Q.weighted_noise_sum(
        lambda j, i, z: (z * z).sum(-1), n, (d,), torch.ones(1, dtype=F64), pairs_per_replicate=8,
        n_replicates=8, pilot_pairs=0, control_variate=False, allocation="uniform", antithetic=False,
        generator=torch.Generator().manual_seed(1), device=torch.device("cpu"), chunk_size=10_000,
    )
    err = res.replicates - d  # (R, n)
    corr = torch.corrcoef(err.T)
    off = corr[~torch.eye(n, dtype=torch.bool)]
    # independent points: off-diagonal correlations are ~N(0, 1/(R-1)); shared draws would give ~1
    assert float(off.mean().abs()) < 0.1


@pytest.mark.parametrize("antithetic", [False, True])
@pytest.mark.parametrize("noise", ["sobol", "random"])
def test_weighted_noise_sum_is_unbiased_on_a_toy(noise, antithetic):
    # f_j(x_i, Z) = a_j x_i + ||Z||^2 + Z_1: E f_j = a_j x_i + d; weights w_j
    d, n = 3, 5
    x = torch.linspace(-1, 1, n, dtype=F64)
    a = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    w = torch.tensor([1.0, 0.25, 0.5], dtype=F64)
    truth = (w[:, None] * (a[:, None] * x[None] + d)).sum(0)

    def f(j, i, z):
        return a[j] * x[i] + (z * z).sum(-1) + z[:, 0]

    res = Q.weighted_noise_sum(
        f, n, (d,), w, pairs_per_replicate=48, n_replicates=16, pilot_pairs=8, noise=noise,
        antithetic=antithetic, generator=torch.Generator().manual_seed(2), device=torch.device("cpu"),
        chunk_size=97,
    )
    value = res.replicates.mean(0)
    se = res.replicates.std(0) / 4
    assert bool(((value - truth).abs() <= 4 * se + 1e-12).all())
    # the control variate removes ||Z||^2 - d exactly (c = 1): only the Z_1 noise is left
    assert torch.allclose(res.cv_coef, torch.ones_like(res.cv_coef), atol=0.5)
    if antithetic:  # and antithetic pairs remove Z_1: exact
        assert torch.allclose(value, truth, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# the continuous formula
# ----------------------------------------------------------------------------------------------
def test_log_snr_rule_reproduces_gaussian_log_density_exactly():
    """I6 with the exact conditional expectation: only the lambda rule and tails are left."""
    g = random_gmm(3, 1, seed=4)
    x = _points(g, 6, 1)
    model = AnalyticModel(g, LiYan())
    est = density_formula(model, x, n_nodes=64, n_noise=1, n_replicates=2, n_pilot=0)
    lam, w = est.extras["nodes"].to(F64), est.extras["weights"]
    f = _gaussian_integrand(lam, x, g.means[0], g.covs[0])
    value = -1.5 * math.log(2 * math.pi * math.e) + (w[:, None] * f).sum(0)
    assert torch.allclose(value, g.log_prob(x), atol=1e-8, rtol=0)


@pytest.mark.parametrize("schedule", [VPLinear(), VE()], ids=["VPLinear", "VE"])
def test_truncation_bound_covers_the_exact_tail_error(schedule):
    """Where the schedule cannot reach (VPLinear: lambda >= -10.05; VE: -7.8 <= lambda <= 9.2)
    the tail nodes extrapolate; the reported bound must cover what is really lost."""
    g = random_gmm(2, 1, seed=5)
    x = _points(g, 4, 2)
    mean, cov = g.means[0], g.covs[0]
    est = density_formula(AnalyticModel(g, schedule), x, **CHEAP)
    lo, hi = est.extras["lambda_range"]
    for i in range(x.shape[0]):
        xi = x[i : i + 1]

        def fi(u, xi=xi):
            return float(_gaussian_integrand(torch.tensor([u], dtype=F64), xi, mean, cov))

        exact = 0.5 * integrate.quad(fi, -np.inf, lo, epsabs=1e-13)[0]
        exact += 0.5 * integrate.quad(fi, hi, np.inf, epsabs=1e-13)[0] if hi < 24 else 0.0
        lam_t = torch.tensor([lo, hi], dtype=F64)
        tn, tw = Q.tail_nodes(lo, hi)
        approx = 0.5 * float((torch.tensor(tw, dtype=F64) * _gaussian_integrand(lam_t, xi, mean, cov)[:, 0]).sum())
        # the extrapolated tail is accurate to a small fraction of itself ...
        assert abs(approx - exact) <= 0.05 * abs(exact) + 1e-12
        # ... and the bound reported from the Monte Carlo estimate covers the whole tail
        assert float(est.extras["truncation_bound"][i]) + 4 * float(est.stderr[i]) >= abs(exact)
    assert _within(est, g.log_prob(x))


@pytest.mark.parametrize("form", FORMS)
@settings(max_examples=3, deadline=None, derandomize=True)
@given(d=st.integers(1, 10), seed=st.integers(0, 1000))
def test_matches_log_prob_on_random_mixtures(form, d, seed):
    """I5/I6: every form estimates log q_0 within 4 se + truncation bound, with a useful se."""
    g = random_gmm(d, 3, seed=seed)
    x = _points(g, 3, seed + 1)
    est = density_formula(AnalyticModel(g, LiYan()), x, form=form, seed=seed, **CHEAP)
    truth = g.log_prob(x)
    assert _within(est, truth), ((est.value - truth) / est.stderr)
    assert float(est.stderr.max()) < 0.02 * max(1.0, d / 3)  # the test can fail
    assert bool((est.extras["truncation_bound"] < 1e-5).all())  # LiYan reaches every lambda


@pytest.mark.parametrize("d", [1, 4, 10])
def test_forms_agree(d):
    g = random_gmm(d, 3, seed=10 + d)
    x = _points(g, 3, d)
    model = AnalyticModel(g, LiYan())
    ests = {form: density_formula(model, x, form=form, seed=3, **CHEAP) for form in FORMS}
    # eps, denoiser and score are the same algebra on the same noise: equal to rounding
    assert torch.allclose(ests["eps"].value, ests["denoiser"].value, atol=1e-9)
    assert torch.allclose(ests["eps"].value, ests["score"].value, atol=1e-9)
    # the Hyvarinen form (Stein's lemma) is a different random variable with the same mean
    a, b = ests["eps"], ests["hyvarinen"]
    assert bool(((a.value - b.value).abs() <= 4 * torch.sqrt(a.stderr**2 + b.stderr**2)).all())
    assert b.extras["divergence"] == "exact" and b.nfe == 2 * a.nfe


def test_default_configuration():
    g = random_gmm(2, 3, seed=1)
    x = _points(g, 4, 3)
    est = density_formula(AnalyticModel(g, LiYan()), x, seed=0)
    truth = g.log_prob(x)
    assert _within(est, truth)
    assert est.nfe == 32 * 66 * 32 + 16 * 66  # replicates x nodes (64 + 2 tails) x draws + pilot
    # the goal at d = 2: ~1e-3 nats with 1e5 evaluations (rms stderr, as measured)
    assert float(est.stderr.pow(2).mean().sqrt()) < 1.5e-3
    assert est.value.dtype == x.dtype and est.value.device == x.device


def test_hutchinson_divergence_for_models_without_one():
    g = random_gmm(3, 2, seed=7)
    x = _points(g, 3, 4)
    model = DenoiserOnly(g, LiYan())
    est = density_formula(model, x, form="hyvarinen", n_probes=2, seed=1, **CHEAP)
    assert est.extras["divergence"] == "hutchinson"
    assert _within(est, g.log_prob(x))
    assert float(est.stderr.max()) < 0.05
    with pytest.raises(ValueError, match="score_divergence"):
        density_formula(model, x, form="hyvarinen", divergence="exact", **CHEAP)


@pytest.mark.parametrize(
    "schedule",
    [VPLinear(), VPCosine(), SubVP(), VE(), Discrete.ddpm_linear(1000), Discrete.ddpm_cosine(1000)],
    ids=["VPLinear", "VPCosine", "SubVP", "VE", "ddpm_linear", "ddpm_cosine"],
)
def test_every_schedule(schedule):
    """The log-SNR form holds for every schedule (I6); unreachable tails are extrapolated."""
    g = random_gmm(2, 3, seed=3)
    x = _points(g, 3, 5)
    est = density_formula(AnalyticModel(g, schedule), x, seed=2, **CHEAP)
    assert _within(est, g.log_prob(x))
    s_lo, s_hi = schedule.log_snr_range
    lo, hi = est.extras["lambda_range"]
    assert lo >= s_lo and hi <= s_hi


def test_neural_model_float32():
    from densityformula.neural import MLPDenoiser

    torch_gen = torch.Generator().manual_seed(0)
    model = MLPDenoiser(2, VPCosine(), width=16, depth=2, zero_init_output=False, seed=3)
    x = torch.randn(4, 2, generator=torch_gen)
    ests = {form: density_formula(model, x, form=form, seed=5, **CHEAP) for form in FORMS}
    for est in ests.values():
        assert est.value.dtype == torch.float32 and not est.value.requires_grad
        assert bool(torch.isfinite(est.value).all())
        assert est.extras["lambda_range"] == (-15.0, 15.0)
    assert torch.allclose(ests["eps"].value, ests["denoiser"].value, atol=1e-3)
    a, b = ests["eps"], ests["hyvarinen"]
    assert ests["hyvarinen"].extras["divergence"] == "hutchinson"
    assert bool(((a.value - b.value).abs() <= 4 * torch.sqrt(a.stderr**2 + b.stderr**2) + 1e-3).all())


def test_reproducible_and_generator_equals_seed():
    g = random_gmm(2, 2, seed=0)
    x = _points(g, 3, 0)
    model = AnalyticModel(g, LiYan())
    tiny = dict(n_nodes=16, n_noise=8, n_replicates=4, n_pilot=4)
    a = density_formula(model, x, seed=11, **tiny)
    b = density_formula(model, x, seed=11, **tiny)
    c = density_formula(model, x, generator=torch.Generator().manual_seed(11), **tiny)
    e = density_formula(model, x, seed=12, **tiny)
    assert torch.equal(a.value, b.value) and torch.equal(a.value, c.value)
    assert not torch.equal(a.value, e.value)
    # chunking over draws changes nothing but memory (12 rows per draw here: 3 points x 4 replicates)
    f = density_formula(model, x, seed=11, chunk_size=50, **tiny)
    assert torch.allclose(a.value, f.value, atol=1e-12)
    for form in ("eps", "hyvarinen"):
        r = density_formula_discrete(model, x, schedule=Discrete.ddpm_linear(50), form=form, seed=3, n_replicates=4)
        again = density_formula_discrete(model, x, schedule=Discrete.ddpm_linear(50), form=form, seed=3, n_replicates=4)
        assert torch.equal(r.value, again.value)


def test_budget_is_respected():
    g = random_gmm(2, 2, seed=0)
    x = _points(g, 2, 0)
    est = density_formula(AnalyticModel(g, LiYan()), x, budget=20_000, n_replicates=16, seed=0)
    assert 20_000 - 16 * 66 < est.nfe <= 20_000
    with pytest.raises(ValueError, match="budget"):
        density_formula(AnalyticModel(g, LiYan()), x, budget=500)


def test_bad_input():
    g = random_gmm(2, 2, seed=0)
    x = _points(g, 2, 0)
    m = AnalyticModel(g, LiYan())
    with pytest.raises(ValueError, match="form"):
        density_formula(m, x, form="elbo")
    with pytest.raises(TypeError, match="x"):
        density_formula(m, x.numpy())
    with pytest.raises(ValueError, match="x"):
        density_formula(m, torch.full((2, 2), float("nan"), dtype=F64))
    with pytest.raises(ValueError, match="x"):
        density_formula(m, torch.zeros(3, dtype=F64))
    with pytest.raises(TypeError, match="model"):
        density_formula(object(), x)
    with pytest.raises(ValueError, match="n_nodes"):
        density_formula(m, x, n_nodes=1)
    with pytest.raises(TypeError, match="generator"):
        density_formula(m, x, generator=3)
    with pytest.raises(ValueError, match="generator or seed"):
        density_formula(m, x, generator=torch.Generator(), seed=1)
    with pytest.raises(ValueError, match="lambda_range"):
        density_formula(m, x, lambda_range=(3.0, -3.0))
    with pytest.raises(ValueError, match="noise"):
        density_formula(m, x, noise="halton")
    with pytest.raises(ValueError, match="n_pilot"):
        density_formula(m, x, n_pilot=1)
    with pytest.raises(ValueError, match="n_pilot"):
        density_formula(m, x, n_pilot=3, antithetic=True)
    with pytest.raises(TypeError, match="schedule"):
        density_formula_discrete(m, x, schedule=LiYan())
    with pytest.raises(ValueError, match="at least one point"):
        density_formula(m, x[:0])
    with pytest.raises(ValueError, match="allocation"):
        density_formula(m, x, allocation="proportional", **CHEAP)


# ----------------------------------------------------------------------------------------------
# the discrete formula (I7)
# ----------------------------------------------------------------------------------------------
def test_discrete_formula_weights_and_one_over_T_on_a_gaussian():
    """The library's I7 nodes and weights with the exact conditional expectations: error ~ C/T.

    Then the Monte Carlo estimator matches that exact discrete sum within 4 se."""
    g = random_gmm(3, 1, seed=4)
    x = _points(g, 5, 1)
    model = AnalyticModel(g, LiYan())
    truth = g.log_prob(x)
    errs = {}
    for T in (50, 200, 1000):
        est = density_formula_discrete(model, x, schedule=Discrete.ddpm_linear(T), n_noise=1, n_replicates=2, n_pilot=0)
        lam, w = est.extras["nodes"].to(F64), est.extras["weights"]
        integrand = _gaussian_integrand(lam, x, g.means[0], g.covs[0])
        exact = -1.5 * math.log(2 * math.pi * math.e) + (w[:, None] * integrand).sum(0)
        errs[T] = exact - truth
        if T == 200:
            mc = density_formula_discrete(model, x, schedule=Discrete.ddpm_linear(T), n_noise=8, seed=1)
            assert bool(((mc.value - exact).abs() <= 4 * mc.stderr).all())
            assert float(mc.stderr.max()) < 0.01
    # err * T is the same constant (within 15%) for every T, per point
    c50, c200, c1000 = (errs[T] * T for T in (50, 200, 1000))
    assert bool((c200 / c50 - 1).abs().max() < 0.15) and bool((c1000 / c50 - 1).abs().max() < 0.15)
    assert bool((errs[1000].abs() > 1e-4).all())  # a real 1/T error, not noise


def test_discrete_model_on_its_own_grid_equals_continuous_model_at_matching_log_snr():
    g = random_gmm(2, 3, seed=2)
    x = _points(g, 3, 1)
    sched = Discrete.ddpm_linear(100)
    a = density_formula_discrete(AnalyticModel(g, LiYan()), x, schedule=sched, n_noise=4, seed=0)
    b = density_formula_discrete(AnalyticModel(g, sched), x, schedule=sched, n_noise=4, seed=0)
    assert torch.allclose(a.value, b.value, atol=1e-8)
    assert a.nfe == b.nfe and a.extras["T"] == 100


def test_discrete_rejects_unreachable_grid():
    g = random_gmm(2, 2, seed=0)
    x = _points(g, 2, 0)
    with pytest.raises(ValueError, match="log-SNR"):
        density_formula_discrete(AnalyticModel(g, VE()), x, schedule=Discrete.ddpm_linear(50))


# ----------------------------------------------------------------------------------------------
# a wrong score (I8)
# ----------------------------------------------------------------------------------------------
def test_exact_denoiser_of_another_law_gives_that_laws_log_density():
    """The formula is an identity for every law: with p's denoiser it returns log p(x) at any x,
    so moving from q's to p's score moves the value by exactly log p(x) - log q(x)."""
    q = random_gmm(3, 3, seed=8)
    p = GaussianMixture(q.weights, q.means + 1.0, q.covs * 1.5)
    x = _points(q, 4, 9)
    est = density_formula(AnalyticModel(p, LiYan()), x, seed=4, **CHEAP)
    assert _within(est, p.log_prob(x))
    assert float((p.log_prob(x) - q.log_prob(x)).abs().min()) > 10 * float(est.stderr.max())


def test_perturbed_score_moves_the_value_as_i8_predicts():
    """D_theta = D + eps sigmoid(-lambda) v on a Gaussian target.

    Pointwise (log-SNR form of I8): value_theta(x) - log q(x) =
    -1/2 int snr E_Z[eps^2 sigmoid(-lam)^2 ||v||^2 - 2 eps sigmoid(-lam) v.(x - D)] dlam, with
    E_Z(x - D) = U diag(s2 / C) U^T (x - mean) in closed form.  Averaged over x ~ q the cross
    term vanishes and the shift is -1/2 int E||D_theta - D||^2 dsnr = -eps^2 ||v||^2 / 2 (I8)."""
    g = random_gmm(2, 1, seed=3)
    mean, cov = g.means[0], g.covs[0]
    e, U = torch.linalg.eigh(cov)
    v = torch.tensor([0.6, -0.8], dtype=F64)
    eps = 0.5
    base = AnalyticModel(g, LiYan())
    model = OffsetModel(base, v, eps)
    x = _points(g, 4, 7)

    def shift(xi: torch.Tensor) -> float:
        def integrand(lam: float) -> float:
            a2, s2 = expit(lam), expit(-lam)
            c = eps * s2
            m = U @ ((s2 / (a2 * e + s2)) * (U.T @ (xi - mean)))
            return -0.5 * (a2 / s2) * (c * c * float(v @ v) - 2 * c * float(v @ m))

        return integrate.quad(integrand, -40, 40, limit=200, epsabs=1e-12)[0]

    predicted = torch.tensor([shift(xi) for xi in x], dtype=F64)
    est = density_formula(model, x, seed=6, **CHEAP)
    assert bool(((est.value - g.log_prob(x) - predicted).abs() <= 4 * est.stderr + 1e-7).all())
    # closed form of the same prediction: shift(x) = -eps^2 ||v||^2 / 2 + sum_i (U^T v)_i y_i k_i,
    # y = U^T (x - mean), k_i = eps int a2 s2 / (a2 e_i + s2) dlam
    def k_integrand(u: float, ei: float) -> float:
        a2, s2 = expit(u), expit(-u)
        return eps * a2 * s2 / (a2 * ei + s2)

    k = torch.tensor([integrate.quad(k_integrand, -40, 40, args=(ei,), limit=200)[0] for ei in e.tolist()], dtype=F64)

    def closed(pts):
        return -0.5 * eps**2 * float(v @ v) + ((pts - mean) @ U * k) @ (U.T @ v)

    assert torch.allclose(closed(x), predicted, atol=1e-6)
    # averaged over x ~ q the cross term vanishes: the mean shift is -eps^2 ||v||^2 / 2 (I8)
    pointwise = closed(_points(g, 4000, 8))
    mean_shift, se = float(pointwise.mean()), float(pointwise.std() / math.sqrt(len(pointwise)))
    assert abs(mean_shift + 0.5 * eps**2 * float(v @ v)) <= 4 * se


class IsotropicImageModel(DiffusionModel):
    """Exact denoiser of ``N(0, v I)`` data shaped like images ``(c, h, w)``."""

    def __init__(self, v: float, schedule) -> None:
        self.v, self.schedule = v, schedule

    def denoise(self, x_t, t):
        a = self.schedule.alpha(torch.as_tensor(t, dtype=F64)).to(x_t.dtype)
        s2 = self.schedule.sigma2(torch.as_tensor(t, dtype=F64)).to(x_t.dtype)
        c = a * self.v / (a * a * self.v + s2)
        return c.reshape((-1,) + (1,) * (x_t.ndim - 1)) * x_t if c.ndim else c * x_t


def test_image_shaped_points_and_point_batching():
    v = 0.5
    model = IsotropicImageModel(v, VPCosine())
    x = torch.randn(5, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=F64) * math.sqrt(v)
    d = 18
    truth = -0.5 * d * math.log(2 * math.pi * v) - 0.5 * (x**2).flatten(1).sum(1) / v
    cfg = dict(n_nodes=24, n_noise=16, n_replicates=8, n_pilot=8)
    est = density_formula(model, x, seed=0, **cfg)
    assert est.value.shape == (5,) and _within(est, truth)
    assert float(est.stderr.max()) < 0.1  # d = 18
    # a chunk smaller than one draw for all points and replicates splits the points: same law
    small = density_formula(model, x, seed=0, chunk_size=20, **cfg)
    assert _within(small, truth)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_the_points_device():
    g = random_gmm(2, 2, seed=0, device="cuda")
    x = g.sample(3, generator=torch.Generator(device="cuda").manual_seed(0))
    est = density_formula(AnalyticModel(g, LiYan()), x, seed=0, **CHEAP)
    assert est.value.device == x.device and _within(est, g.log_prob(x))


def test_discrete_weights_equal_the_literal_i7_sum():
    """The library's reduction of I7 (nodes lambda_k, weights w_k, integrand d abar_k - ||Z - eps||^2)
    equals docs/math.md I7 written literally with the score, term by term (Gauss-Hermite in d = 1)."""
    g = random_gmm(1, 3, seed=6)
    x = _points(g, 3, 2)
    model = AnalyticModel(g, LiYan())
    sched = Discrete.ddpm_linear(50)
    abar, beta = sched.alpha_bars, sched.betas
    z, wz = np.polynomial.hermite_e.hermegauss(80)
    z, wz = torch.tensor(z, dtype=F64), torch.tensor(wz / math.sqrt(2 * math.pi), dtype=F64)
    literal = torch.full((3,), -0.5 * math.log(2 * math.pi * math.e), dtype=F64)
    reduced = literal.clone()
    est = density_formula_discrete(model, x, schedule=sched, n_noise=1, n_replicates=2, n_pilot=0)
    lam, w = est.extras["nodes"].to(F64), est.extras["weights"]
    for k in range(1, sched.T + 1):
        ab, ab_prev, a_k = float(abar[k]), float(abar[k - 1]), 1.0 - float(beta[k - 1])
        xk = math.sqrt(ab) * x + math.sqrt(1 - ab) * z[None, :]  # (3, Q)
        t = float(LiYan().t_from_log_snr(torch.tensor(math.log(ab / (1 - ab)), dtype=F64)))
        s = model.score(xk.reshape(-1, 1), t).reshape(3, -1)
        sq = (s + (xk - math.sqrt(ab) * x) / (1 - ab)) ** 2
        literal -= (1 - a_k) / (2 * a_k) * (sq * wz).sum(1) - 0.5 * (ab_prev - ab) / (1 - ab)
        eps = -math.sqrt(1 - ab) * s
        reduced += w[k - 1] * (torch.sigmoid(lam[k - 1]) - (((z[None, :] - eps) ** 2) * wz).sum(1))
    assert torch.allclose(literal, reduced, atol=1e-9, rtol=0)
    assert bool((literal - g.log_prob(x)).abs().max() > 1e-3)  # I7 is not exact at T = 50


def test_tails_false_leaves_the_tails_out_but_reports_them():
    g = random_gmm(2, 1, seed=5)
    x = _points(g, 3, 2)
    model = AnalyticModel(g, VE())  # VE reaches only -7.8 <= lambda <= 9.2: tails of ~1e-3
    with_tails = density_formula(model, x, seed=1, **CHEAP)
    without = density_formula(model, x, seed=1, tails=False, **CHEAP)
    tails = with_tails.extras["tail_lower"] + with_tails.extras["tail_upper"]
    assert torch.allclose(with_tails.value - without.value, tails, atol=1e-12)
    assert torch.equal(with_tails.extras["truncation_bound"], without.extras["truncation_bound"])
    assert _within(without, g.log_prob(x)) and not without.extras["tails_included"]
