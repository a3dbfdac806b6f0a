"""Consistency models checked exactly on Gaussian mixtures (docs/math.md I44).

Ground truths: the closed-form affine probability-flow map of a Gaussian; the exact marginals of a
mixture (KS tests, the 1-D quantile identity of monotone transport); the library's own
probability-flow sampler; Gauss--Hermite expectations over the exact posterior of a mixture
(Song et al. 2023 Thm 2).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from densityformula import consistency as CM
from densityformula import models, sampling, schedules, targets

F64 = torch.float64
GAUSS_SCHEDULES = [schedules.VPLinear(), schedules.VE(), schedules.VPCosine()]
Q2 = targets.GaussianMixture([0.4, 0.6], [[-1.2], [1.0]], [0.16, 0.25])


def _gaussian_flow_map(mean: torch.Tensor, cov: torch.Tensor, sched: schedules.Schedule, x: torch.Tensor,
                       t: torch.Tensor, t_min: float) -> torch.Tensor:
    """The PF map of N(mean, cov) from t to t_min in closed form (I44): with ``cov = U diag(e) U^T``,
    ``x_min = alpha_min mean + U diag(sqrt(v_min / v_t)) U^T (x - alpha_t mean)``, ``v = alpha^2 e + sigma^2``.

    Derivation: in the eigenbasis each coordinate of ``y = x - alpha m`` solves a scalar linear ODE
    (the field is affine, I20), so the map is ``y -> k y`` with ``k > 0``; the flow carries
    ``N(0, v_t)`` to ``N(0, v_min)``, hence ``k = sqrt(v_min / v_t)``.
    """
    e, U = torch.linalg.eigh(cov)
    a_t, s2_t = sched.alpha(t)[:, None], sched.sigma2(t)[:, None]
    t0 = torch.tensor(t_min, dtype=F64)
    a0, s20 = sched.alpha(t0), sched.sigma2(t0)
    y = (x - a_t * mean) @ U
    k = torch.sqrt((a0**2 * e + s20) / (a_t**2 * e + s2_t))
    out: torch.Tensor = a0 * mean + (k * y) @ U.T
    return out


@pytest.mark.parametrize("sched", GAUSS_SCHEDULES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("t_min", [None, 0.02])
def test_exact_consistency_is_the_closed_form_gaussian_flow_map(sched: schedules.Schedule, t_min: float) -> None:
    cov = torch.tensor([[0.5, 0.3], [0.3, 0.4]], dtype=F64)
    mean = torch.tensor([0.7, -0.4], dtype=F64)
    gmm = targets.GaussianMixture([1.0], mean[None], cov[None])
    model = models.AnalyticModel(gmm, sched)
    gen = torch.Generator().manual_seed(0)
    n = 40
    lo = 0.0 if t_min is None else t_min
    t = lo + (0.95 - lo) * torch.rand(n, generator=gen, dtype=F64)
    x = torch.cat([gmm.marginal(sched, float(ti)).sample(1, generator=gen) for ti in t])
    got = CM.exact_consistency(model, x, t, t_min=t_min)
    want = _gaussian_flow_map(mean, cov, sched, x, t, lo)
    err = (got - want).abs()
    # rtol = atol = 1e-10 per step of dopri5 over O(100) steps, plus the 1.4e-11 bridge at t = 0
    assert float(err.max()) < 2e-8 and float(err.mean()) < 2e-9


def test_boundary_points_are_returned_unchanged_and_mixed_times_are_per_point() -> None:
    sched = schedules.VPLinear()
    model = models.AnalyticModel(Q2, sched)
    x = torch.linspace(-2, 2, 6, dtype=F64)[:, None]
    t = torch.tensor([0.0, 0.3, 0.0, 0.7, 0.1, 0.0], dtype=F64)
    y = CM.exact_consistency(model, x, t)
    assert torch.equal(y[t == 0], x[t == 0])
    alone = CM.exact_consistency(model, x[3:4], t[3:4])
    assert float((alone - y[3:4]).abs().max()) < 1e-8


def test_exact_consistency_matches_the_libraries_probability_flow_sampler() -> None:
    sched = schedules.VPLinear()
    gmm = targets.random_gmm(2, 3, seed=4)
    model = models.AnalyticModel(gmm, sched)
    x = gmm.marginal(sched, 0.8).sample(50, generator=torch.Generator().manual_seed(1))
    ours = CM.exact_consistency(model, x, 0.8)
    lib = sampling.probability_flow(model, x, t_max=0.8, t_min=0.0, rtol=1e-10, atol=1e-10, lam_max=25.0)
    assert float((ours - lib).abs().max()) < 1e-6


def test_pushforward_of_q_t_is_q_t_min() -> None:
    """KS of f*(x_t) against q_{t_min}, and the exact 1-D quantile identity F_min(f*(x)) = F_t(x)."""
    sched = schedules.VE()
    model = models.AnalyticModel(Q2, sched)
    t = 0.8
    x = Q2.marginal(sched, t).sample(3000, generator=torch.Generator().manual_seed(2))
    y = CM.exact_consistency(model, x, t)
    cdf_min = sampling.mixture_cdf(Q2.marginal(sched, 0.0))
    p = stats.kstest(y[:, 0].numpy(), cdf_min).pvalue
    assert p > 1e-3
    shifted = stats.kstest(y[:, 0].numpy() + 0.1, cdf_min).pvalue  # negative control: 0.1 of ~1.1 sd
    assert shifted < 1e-3
    grid = torch.linspace(-120, 120, 201, dtype=F64)[:, None]
    fy = CM.exact_consistency(model, grid, t)
    lhs = cdf_min(fy[:, 0].numpy())
    rhs = sampling.mixture_cdf(Q2.marginal(sched, t))(grid[:, 0].numpy())
    assert np.max(np.abs(lhs - rhs)) < 1e-7


def test_one_step_law_of_the_exact_function_is_the_target_and_a_shift_is_not() -> None:
    sched = schedules.VE()
    model = models.AnalyticModel(Q2, sched)
    q_min, q_T = Q2.marginal(sched, 0.0), Q2.marginal(sched, 1.0)
    law = CM.sampler_law_1d(CM.ExactConsistency(model), sched, q_T, [1.0], q_min, points=1001)
    assert law.monotone and abs(law.mass[0] - 1.0) < 1e-9
    assert abs(law.kl) < 1e-6 + 3 * law.kl_error
    sd = math.sqrt(float(Q2.covariance()[0, 0]))
    kl_shift, _ = law.kl_of(q_min.log_prob, shift=0.05 * sd)
    kl_scale, _ = law.kl_of(q_min.log_prob, scale=1.05)
    assert kl_shift > 1e-3 and kl_scale > 1e-3


def test_self_consistency_along_a_trajectory_two_d() -> None:
    """f*(x_t, t) = f*(x_s, s) with x_s the PF point at s of the trajectory through (x_t, t)."""
    sched = schedules.VPCosine()
    gmm = targets.random_gmm(2, 3, seed=7)
    model = models.AnalyticModel(gmm, sched)
    gen = torch.Generator().manual_seed(3)
    x_t = gmm.marginal(sched, 0.9).sample(30, generator=gen)
    for s in (0.6, 0.2):
        x_s = CM.exact_consistency(model, x_t, 0.9, t_min=s)
        assert float((CM.exact_consistency(model, x_s, s) - CM.exact_consistency(model, x_t, 0.9)).abs().max()) < 1e-7
    # negative control: evaluating at the wrong time breaks it
    x_s = CM.exact_consistency(model, x_t, 0.9, t_min=0.6)
    assert float((CM.exact_consistency(model, x_s, 0.5) - CM.exact_consistency(model, x_t, 0.9)).abs().max()) > 1e-2


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.sampled_from([1, 2]), K=st.integers(1, 3),
       t=st.floats(0.3, 0.95), s=st.floats(0.05, 0.25))
def test_property_self_consistency_and_transport_on_random_mixtures(seed: int, d: int, K: int, t: float,
                                                                      s: float) -> None:
    sched = schedules.VPLinear()
    gmm = targets.random_gmm(d, K, seed=seed, separation=3.0)
    model = models.AnalyticModel(gmm, sched)
    x_t = gmm.marginal(sched, t).sample(20, generator=torch.Generator().manual_seed(seed))
    x_s = CM.exact_consistency(model, x_t, t, t_min=s)
    a, b = CM.exact_consistency(model, x_s, s), CM.exact_consistency(model, x_t, t)
    assert float((a - b).abs().max()) < 1e-7
    if d == 1:  # transport: the quantile of x_t under q_t is the quantile of f*(x_t) under q_0
        lhs = sampling.mixture_cdf(gmm)(b[:, 0].numpy())
        rhs = sampling.mixture_cdf(gmm.marginal(sched, t))(x_t[:, 0].numpy())
        assert np.max(np.abs(lhs - rhs)) < 1e-7


# ------------------------------------------------------------------------------------------------
# the network
# ------------------------------------------------------------------------------------------------
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31), width=st.integers(1, 24), depth=st.integers(1, 3), d=st.sampled_from([1, 2, 3]),
       which=st.integers(0, 2), double=st.booleans())
def test_boundary_condition_of_the_network_is_exact(seed: int, width: int, depth: int, d: int, which: int,
                                                     double: bool) -> None:
    sched, t_min = [(schedules.VPLinear(), None), (schedules.VE(), None), (schedules.VPCosine(), 1e-3)][which]
    dt = F64 if double else torch.float32
    net = CM.ConsistencyMLP(sched, d, t_min=t_min, width=width, depth=depth, seed=seed, dtype=dt)
    x = 3.0 * torch.randn(17, d, generator=torch.Generator().manual_seed(seed % 1000), dtype=dt)
    lo = net.t_min
    assert torch.equal(net(x, lo), x)
    t = torch.where(torch.arange(17) % 2 == 0, torch.tensor(lo, dtype=F64), torch.tensor(0.5, dtype=F64))
    y = net(x, t)
    assert torch.equal(y[::2], x[::2])
    assert not torch.equal(y[1::2], x[1::2])


def test_network_is_seeded_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = CM.ConsistencyMLP(schedules.VE(), 2, seed=5)
    b = CM.ConsistencyMLP(schedules.VE(), 2, seed=5)
    c = CM.ConsistencyMLP(schedules.VE(), 2, seed=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


# ------------------------------------------------------------------------------------------------
# steps and losses
# ------------------------------------------------------------------------------------------------
def test_euler_step_is_ddim_and_with_x0_it_is_the_ct_pair() -> None:
    sched = schedules.VPLinear()
    model = models.AnalyticModel(Q2, sched)
    gen = torch.Generator().manual_seed(0)
    x0 = Q2.sample(50, generator=gen)
    z = torch.randn(50, 1, generator=gen, dtype=F64)
    t, s = 0.6, 0.3
    x_t = sched.alpha(t) * x0 + sched.sigma(t) * z
    pair = CM.euler_step(sched, x_t, t, s, denoised=x0)
    assert float((pair - (sched.alpha(s) * x0 + sched.sigma(s) * z)).abs().max()) < 1e-13
    ddim = sampling.ddim(model, x_t, times=torch.tensor([t, s], dtype=F64), eta=0.0)
    assert float((CM.euler_step(model, x_t, t, s) - ddim).abs().max()) < 1e-12


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2)])
def test_teacher_local_error_has_the_solvers_order(solver: str, order: int) -> None:
    sched = schedules.VE()
    model = models.AnalyticModel(Q2, sched)
    x = Q2.marginal(sched, 0.7).sample(200, generator=torch.Generator().manual_seed(1))
    errs = []
    for h in (0.04, 0.02, 0.01):
        exact = CM.exact_consistency(model, x, 0.7, t_min=0.7 - h)
        errs.append(float((CM.teacher_step(model, x, 0.7, 0.7 - h, solver=solver) - exact).abs().mean()))
    slopes = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(abs(sl - (order + 1)) < 0.35 for sl in slopes), slopes


def _cd_loss_of(f: CM.ConsistencyFunction, model: models.AnalyticModel, N: int, solver: str, M: int = 16) -> float:
    times = CM.discretization(model.schedule, N)
    gen = torch.Generator().manual_seed(0)
    x0 = Q2.sample(N * M, generator=gen)
    n_idx = torch.arange(N).repeat_interleave(M)
    return float(CM.cd_loss(f, f, model, x0, times, solver=solver, generator=gen, n_idx=n_idx))


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2)])
def test_cd_loss_of_the_exact_function_is_the_teachers_error(solver: str, order: int) -> None:
    """With f_theta = f_target = f*, L_CD = E||f*(x_hat_n) - f*(Phi(x_{n+1}))||^2 = O(h^(2(p+1))): the mean
    over n of squared local errors falls like N^-(2p+2) (4 for Euler, 6 for Heun; measured 3.8-3.9 and 5.9-6.3)."""
    sched = schedules.VE()
    model = models.AnalyticModel(Q2, sched)
    f = CM.ExactConsistency(model)
    losses = [_cd_loss_of(f, model, N, solver) for N in (8, 16, 32)]
    slopes = [math.log2(losses[i] / losses[i + 1]) for i in range(2)]
    assert all(sl > 2 * order + 1.4 for sl in slopes), slopes
    assert losses[-1] < (1e-4 if order == 1 else 1e-6)

    # negative control: a map that breaks self-consistency by 0.5 (s(t) - s_min)/s_max keeps an O(N^-2) loss
    def bad(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = torch.as_tensor(t, dtype=F64)
        return f(x, t) + 0.5 * ((CM.noise_level(sched, tt) - 0.01) / 50.0).reshape(-1, 1)

    bad_losses = [_cd_loss_of(bad, model, N, solver) for N in (16, 32)]
    assert bad_losses[1] > 10 * losses[-1]
    assert math.log2(bad_losses[0] / bad_losses[1]) < 2 * order + 1.4


def _posterior(gmm: targets.GaussianMixture, sched: schedules.Schedule, x: torch.Tensor,
               t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Responsibilities, means and variances of the components of x_0 | x_t (1-D, I3)."""
    a, s2 = sched.alpha(t)[:, None], sched.sigma2(t)[:, None]
    mu, S = gmm.means[:, 0], gmm.covs[:, 0, 0]
    r = gmm.responsibilities(x, t, sched)
    C = a**2 * S + s2
    return r, mu + a * S / C * (x - a * mu), S - a**2 * S**2 / C


def _gradient_gap(net: CM.ConsistencyMLP, model: models.AnalyticModel, N: int, bias: float, M: int = 32) -> float:
    """||E grad L_CT - grad L_CD|| / ||grad L_CD|| with the CT expectation over x_0 | x_{n+1} exact
    (Gauss--Hermite, 40 nodes per posterior component), CD with the Euler teacher (Thm 2)."""
    sched, gmm = model.schedule, model.target
    times = CM.discretization(sched, N)
    n_idx = torch.arange(N).repeat_interleave(M)
    t_lo, t_hi = times[n_idx], times[n_idx + 1]
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([gmm.marginal(sched, float(times[k + 1])).sample(M, generator=gen) for k in range(N)])
    nodes, w = np.polynomial.hermite_e.hermegauss(40)
    nodes_t, w_t = torch.tensor(nodes), torch.tensor(w / w.sum())
    with torch.no_grad():
        t_cd = net(CM.teacher_step(model, x, t_hi, t_lo, solver="euler"), t_lo)
        r, mk, vk = _posterior(gmm, sched, x, t_hi)
        ratio = sched.sigma(t_lo) / sched.sigma(t_hi)
        c = sched.alpha(t_lo) - ratio * sched.alpha(t_hi)
        x0 = mk[:, :, None] + torch.sqrt(vk)[:, :, None] * nodes_t + bias
        xs = ratio[:, None, None] * x[:, :, None] + c[:, None, None] * x0  # CT's x_hat_n = alpha_n x0 + sigma_n z
        n, K, Q = xs.shape
        fx = net(xs.reshape(-1, 1), t_lo.repeat_interleave(K * Q)).reshape(n, K, Q)
        t_ct = (r[:, :, None] * w_t * fx).sum((1, 2))[:, None]

    def grad(goal: torch.Tensor) -> torch.Tensor:
        net.zero_grad()
        ((net(x, t_hi) - goal) ** 2).sum(1).mean().backward()
        return torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]).clone()

    g_cd, g_ct = grad(t_cd), grad(t_ct)
    return float((g_ct - g_cd).norm() / g_cd.norm())


def test_ct_gradient_agrees_with_cd_to_first_order_in_the_step() -> None:
    """Song et al. 2023 Thm 2: the one-sample denoiser x_0 enters the target linearly to first order, so
    E[grad L_CT] - grad L_CD = O(h^2) while grad L_CD = O(h): the relative gap falls like 1/N (measured
    slope 0.85-1.1); a biased estimate (x_0 + 0.05) keeps a gap of ~0.3 that does not fall."""
    model = models.AnalyticModel(Q2, schedules.VE())
    net = CM.ConsistencyMLP(model.schedule, 1, sigma_data=1.0, width=32, seed=3, dtype=F64)
    gaps = [_gradient_gap(net, model, N, 0.0) for N in (8, 16, 32)]
    assert gaps[-1] < 0.01
    assert math.log2(gaps[0] / gaps[-1]) / 2 > 0.7, gaps
    biased = [_gradient_gap(net, model, N, 0.05) for N in (8, 32)]
    assert biased[1] > 0.1 and math.log2(biased[0] / biased[1]) / 2 < 0.3


def test_ct_loss_uses_the_same_noise_for_both_times() -> None:
    sched = schedules.VE()
    net = CM.ConsistencyMLP(sched, 1, seed=0, dtype=F64)
    times = CM.discretization(sched, 5)
    x0 = Q2.sample(64, generator=torch.Generator().manual_seed(0))
    n_idx = torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(1))
    got = CM.ct_loss(net, net, sched, x0, times, generator=torch.Generator().manual_seed(2), n_idx=n_idx,
                     per_point=True)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    t_lo, t_hi = times[n_idx], times[n_idx + 1]
    with torch.no_grad():
        want = (net(sched.alpha(t_hi)[:, None] * x0 + sched.sigma(t_hi)[:, None] * z, t_hi)
                - net(sched.alpha(t_lo)[:, None] * x0 + sched.sigma(t_lo)[:, None] * z, t_lo)) ** 2
    assert float((got.detach() - want[:, 0]).abs().max()) < 1e-12


# ------------------------------------------------------------------------------------------------
# sampling and the exact 1-D law
# ------------------------------------------------------------------------------------------------
def test_multistep_sampling_with_the_exact_function_draws_the_target() -> None:
    sched = schedules.VE()
    model = models.AnalyticModel(Q2, sched)
    f = CM.ExactConsistency(model)
    gen = torch.Generator().manual_seed(4)
    x_T = Q2.marginal(sched, 1.0).sample(2000, generator=gen)
    cdf = sampling.mixture_cdf(Q2.marginal(sched, 0.0))
    for taus in ([1.0], [1.0, 0.6]):
        y = CM.multistep_sample(f, sched, x_T, taus, generator=gen)
        assert stats.kstest(y[:, 0].numpy(), cdf).pvalue > 1e-3


def test_the_1d_law_is_the_law_of_the_actual_multistep_sampler() -> None:
    """A lightly trained network (not f*): KS of 4000 two-step draws against the law's CDF
    P(Y <= y) = int p_in(x) 1[f(x) <= y] dx on the grid."""
    sched = schedules.VE()
    model = models.AnalyticModel(Q2, sched)
    times = CM.discretization(sched, 8)
    net = CM.ConsistencyMLP(sched, 1, sigma_data=1.0, width=16, seed=1)
    CM.train_consistency(net, Q2, times, teacher=model, steps=40, batch_size=64, seed=2)
    taus = [1.0, 0.5]
    law = CM.sampler_law_1d(net, sched, Q2.marginal(sched, 1.0), taus, Q2.marginal(sched, 0.0), points=4001)
    assert abs(law.mass[1] - 1.0) < 1e-6
    order = torch.argsort(law.y)
    h = float(law.grid[1] - law.grid[0])
    cum = torch.cumsum(torch.exp(law.log_p_in)[order] * h, 0).numpy()
    ys = law.y[order].numpy()

    def cdf(v: np.ndarray) -> np.ndarray:
        return np.asarray(np.interp(v, ys, cum, left=0.0, right=1.0))

    gen = torch.Generator().manual_seed(5)
    x_T = Q2.marginal(sched, 1.0).sample(4000, generator=gen).float()
    with torch.no_grad():
        y = CM.multistep_sample(net, sched, x_T, taus, generator=gen)
    assert stats.kstest(y[:, 0].double().numpy(), cdf).pvalue > 1e-3
    assert stats.kstest(y[:, 0].double().numpy() + 0.05, cdf).pvalue < 1e-3  # control: 0.05 shift


def test_training_by_cd_and_ct_moves_the_network_towards_the_exact_function() -> None:
    sched = schedules.VE()
    model = models.AnalyticModel(Q2, sched)
    times = CM.discretization(sched, 8)
    x = Q2.marginal(sched, 0.8).sample(400, generator=torch.Generator().manual_seed(0))
    exact = CM.exact_consistency(model, x, 0.8, rtol=1e-8, atol=1e-8)
    for mode in ("cd", "ct"):
        net = CM.ConsistencyMLP(sched, 1, sigma_data=1.0, width=32, seed=0)
        with torch.no_grad():
            before = float(((net(x.float(), 0.8).double() - exact) ** 2).mean())
        run = CM.train_consistency(net, Q2, times, mode=mode, teacher=model, steps=150, batch_size=128, lr=1e-2, seed=1)
        with torch.no_grad():
            after = float(((net(x.float(), 0.8).double() - exact) ** 2).mean())
        assert after < before / 3, (mode, before, after)  # measured 5-6.5x at seeds 0, 1
        assert len(run.losses) == 150 and all(math.isfinite(v) for v in run.losses)


# ------------------------------------------------------------------------------------------------
# bad inputs
# ------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_naming_the_argument() -> None:
    sched = schedules.VE()
    model = models.AnalyticModel(Q2, sched)
    x = torch.zeros(3, 1, dtype=F64)
    net = CM.ConsistencyMLP(sched, 1)
    times = CM.discretization(sched, 4)
    with pytest.raises(ValueError, match="t must be >= t_min"):
        CM.exact_consistency(model, x, 0.1, t_min=0.2)
    with pytest.raises(ValueError, match="x must have shape"):
        CM.exact_consistency(model, torch.zeros(3, dtype=F64), 0.5)
    with pytest.raises(TypeError, match="model"):
        CM.exact_consistency("model", x, 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rtol"):
        CM.exact_consistency(model, x, 0.5, rtol=-1.0)
    with pytest.raises(ValueError, match="t_min"):
        CM.exact_consistency(model, x, 0.5, t_min=2.0)
    with pytest.raises(ValueError, match="solver"):
        CM.teacher_step(model, x, 0.5, 0.4, solver="rk4")
    with pytest.raises(ValueError, match="s must be smaller than t"):
        CM.teacher_step(model, x, 0.4, 0.5)
    with pytest.raises(ValueError, match="steps"):
        CM.discretization(sched, 0)
    with pytest.raises(ValueError, match="width"):
        CM.ConsistencyMLP(sched, 1, width=0)
    with pytest.raises(TypeError, match="x has dtype"):
        net(x, 0.5)
    with pytest.raises(ValueError, match="mode"):
        CM.train_consistency(net, Q2, times, mode="gan")
    with pytest.raises(ValueError, match="teacher"):
        CM.train_consistency(net, Q2, times, mode="cd")
    with pytest.raises(TypeError, match="teacher"):
        CM.cd_loss(net, net, "teacher", x.float(), times)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="times must be strictly increasing"):
        CM.ct_loss(net, net, sched, x.float(), times.flip(0))
    with pytest.raises(ValueError, match="n_idx"):
        CM.ct_loss(net, net, sched, x.float(), times, n_idx=torch.tensor([0, 1, 9]))
    with pytest.raises(ValueError, match="times must be strictly decreasing"):
        CM.multistep_sample(net, sched, x.float(), [0.5, 0.8])
    with pytest.raises(ValueError, match="target"):
        CM.sampler_law_1d(net, sched, Q2, [1.0], targets.random_gmm(2, 2))
    with pytest.raises(ValueError, match="t_max"):
        CM.discretization(schedules.LiYan(), 4, t_max=1.0)
