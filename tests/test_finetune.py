"""RL fine-tuning toward a reward-tilted target (docs/math.md I45): per-step log-probs, per-step
KLs, the closed-form tilt of a mixture by a quadratic reward, and the policy gradient."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.stats import multivariate_normal

from densityformula import elbo, models, reverse, sampling, schedules, targets
from densityformula import finetune as F

Q1 = targets.GaussianMixture([0.3, 0.7], [[-1.5], [1.0]], [0.2, 0.4])
Q2 = targets.random_gmm(2, 3, seed=3)


def _kernels(gmm: targets.GaussianMixture, T: int = 25, variance: str = "beta") -> reverse.ReverseKernels:
    sched = schedules.Discrete.ddpm_linear(T=T)
    return reverse.ddpm_kernels(models.AnalyticModel(gmm, sched), sched, variance)


# ---------------------------------------------------------------------------------------------
# per-step log-probs
# ---------------------------------------------------------------------------------------------
def test_step_log_probs_are_scipys_multivariate_normal_summed_over_dimensions() -> None:
    kern = _kernels(Q2)
    g = torch.Generator().manual_seed(0)
    states = F.sample_chain(kern, 5, generator=g)
    lp = F.step_log_probs(kern, states)
    assert lp.shape == (5, kern.K)
    for j in range(kern.K):
        k = kern.K - j
        x, y = states[j], states[j + 1]
        mean = kern.mean(x, k)
        for i in range(5):
            ref = multivariate_normal(mean[i].numpy(), float(kern.var[k - 1]) * np.eye(2)).logpdf(y[i].numpy())
            assert abs(float(lp[i, k - 1]) - ref) < 1e-10
    # the "mean" reduction is the per-dimension average: exactly 1/d of the sum (the averaging bug)
    lp_mean = F.step_log_probs(kern, states, reduction="mean")
    assert torch.allclose(lp_mean * 2, lp, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(lp_mean, lp, rtol=1e-3)  # negative control: they differ


def test_ddim_log_probs_match_the_library_sampler_and_scipy() -> None:
    model = models.AnalyticModel(Q2, schedules.VPLinear())
    times = sampling.time_grid(model, 8)
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(6, 2, generator=g, dtype=torch.float64)
    states, grid = F.record_trajectory(sampling.ddim, model, x_T, times=times, eta=0.7,
                                       generator=torch.Generator().manual_seed(2))
    kern = F.ddim_kernels(model, grid, eta=0.7)
    # the chain of ddim_kernels with the same noise reproduces the sampler's states
    zs = []

    def noise(x: torch.Tensor, i: int) -> torch.Tensor:
        z = torch.randn(x.shape, generator=g2, dtype=x.dtype)
        zs.append(z)
        return z

    g2 = torch.Generator().manual_seed(5)
    xs2, _ = F.record_trajectory(sampling.ddim, model, x_T, times=times, eta=0.7, noise_sampler=noise)
    x = x_T
    for j in range(kern.K):
        k = kern.K - j
        x = kern.mean(x, k) + (math.sqrt(float(kern.var[k - 1])) * zs[j] if float(kern.var[k - 1]) > 0 else 0.0)
        assert torch.allclose(x, xs2[j + 1], atol=1e-12)
    lp = F.step_log_probs(kern, states)
    for j in range(kern.K):
        k = kern.K - j
        v = float(kern.var[k - 1])
        if v == 0:
            assert bool((lp[:, k - 1] == 0).all())  # the deterministic step onto sigma = 0 is left out
            continue
        mean = kern.mean(states[j], k)
        ref = [multivariate_normal(mean[i].numpy(), v * np.eye(2)).logpdf(states[j + 1][i].numpy()) for i in range(6)]
        assert np.allclose(lp[:, k - 1].numpy(), ref, atol=1e-10)


def test_ddpm_chain_is_the_library_ddpm_sampler_up_to_its_decoder_noise() -> None:
    sched = schedules.Discrete.ddpm_linear(T=25)
    model = models.AnalyticModel(Q1, sched)
    kern = reverse.ddpm_kernels(model, sched, "beta")
    x_T = torch.randn(4, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    states, _ = F.record_trajectory(sampling.ddpm, model, x_T, variance="beta",
                                    generator=torch.Generator().manual_seed(3))
    ours = F.sample_chain(kern, x_T=x_T, generator=torch.Generator().manual_seed(3))
    # same draws at steps K..2 (same generator stream); the library's last step is the decoder mean
    assert torch.allclose(ours[:-1], states[:-1], atol=1e-12)
    assert torch.allclose(states[-1], kern.mean(states[-2], 1), atol=1e-12)


def test_expected_log_ratio_of_posterior_and_kernel_is_the_elbo_term() -> None:
    """E_{x_k ~ q(.|x0), x_{k-1} ~ q(.|x_k, x0)} [log q(x_{k-1}|x_k,x0) - log p(x_{k-1}|x_k)] = L_{k-1} (I9)."""
    sched = schedules.Discrete.ddpm_linear(T=25)
    model = models.AnalyticModel(Q2, sched)
    kern = reverse.ddpm_kernels(model, sched, "beta")
    x0 = torch.tensor([[0.3, -0.7]], dtype=torch.float64)
    est = elbo.ddpm(model, x0, n_samples=4000, generator=torch.Generator().manual_seed(0), cv_data_var=None)
    terms = est.extras["terms"][0]
    g = torch.Generator().manual_seed(1)
    S = 20000
    ab, bt = sched.alpha_bars, kern.ddpm_beta_tilde()
    for k in (2, 10, 25):
        eps = torch.randn(S, 2, generator=g, dtype=torch.float64)
        xk = math.sqrt(float(ab[k])) * x0 + math.sqrt(1 - float(ab[k])) * eps
        mu_q = float(kern.a[k - 1]) * xk + float(kern.c[k - 1]) * x0
        xkm1 = mu_q + math.sqrt(float(bt[k - 1])) * torch.randn(S, 2, generator=g, dtype=torch.float64)
        log_q = torch.tensor(multivariate_normal(np.zeros(2), float(bt[k - 1]) * np.eye(2)).logpdf(
            (xkm1 - mu_q).numpy()))
        log_p = F.kernel_log_prob(kern, k, xk, xkm1)
        ratio = (log_q - log_p).detach()
        # the ELBO's term averages c^2 |x0 - D_k(x_k)|^2 / (2 v) over its 4000 draws of x_k: its standard
        # error from the same quantity over our draws; tolerance 5 standard errors of the difference
        Dk = kern.denoise(xk, k)
        elbo_draw = float(kern.c[k - 1]) ** 2 * ((x0 - Dk) ** 2).sum(-1) / (2 * float(kern.var[k - 1]))
        se = math.sqrt(float(ratio.var()) / S + float(elbo_draw.var()) / 4000)
        assert abs(float(ratio.mean()) - float(terms[k - 1])) < 5 * se + 1e-9
        # negative control: the per-dimension mean of both log-densities is off by a factor d = 2
        lp_mean = F.kernel_log_prob(kern, k, xk, xkm1, reduction="mean").detach()
        assert abs(float((log_q / 2 - lp_mean).mean()) - float(terms[k - 1])) > 0.4 * float(terms[k - 1])
    # step 1: L_0 = -E log p(x0 | x1)
    eps = torch.randn(S, 2, generator=g, dtype=torch.float64)
    x1 = math.sqrt(float(ab[1])) * x0 + math.sqrt(1 - float(ab[1])) * eps
    l0 = -F.kernel_log_prob(kern, 1, x1, x0.expand(S, 2)).detach()
    se = math.sqrt(float(l0.var()) / S + float(l0.var()) / 4000)
    assert abs(float(l0.mean()) - float(terms[0])) < 5 * se


def test_gradient_of_log_probs_matches_finite_differences() -> None:
    sched = schedules.Discrete.ddpm_linear(T=25)
    m = F.TiltedModel(Q2, sched)
    with torch.no_grad():
        m.A_param.copy_(torch.tensor([[0.3, 0.1], [0.1, 0.2]], dtype=torch.float64))
        m.b_param.copy_(torch.tensor([0.2, -0.1], dtype=torch.float64))
    kern = reverse.ddpm_kernels(m, sched, "beta")
    states = F.sample_chain(kern, 7, generator=torch.Generator().manual_seed(0))
    total = F.step_log_probs(kern, states).sum()
    total.backward()
    grad_b = m.b_param.grad.clone()
    grad_A = m.A_param.grad.clone()
    h = 1e-6
    for i in range(2):
        vals = []
        for s in (+1, -1):
            with torch.no_grad():
                m.b_param[i] += s * h
                vals.append(float(F.step_log_probs(kern, states).sum()))
                m.b_param[i] -= s * h
        fd = (vals[0] - vals[1]) / (2 * h)
        assert abs(fd - float(grad_b[i])) < 1e-5 * max(1.0, abs(fd))
    vals = []
    for s in (+1, -1):
        with torch.no_grad():
            m.A_param[0, 1] += s * h
            vals.append(float(F.step_log_probs(kern, states).sum()))
            m.A_param[0, 1] -= s * h
    fd = (vals[0] - vals[1]) / (2 * h)
    assert abs(fd - float(grad_A[0, 1])) < 1e-5 * max(1.0, abs(fd))


def test_step_kls_are_gaussian_kls_and_their_sum_bounds_the_output_kl() -> None:
    sched = schedules.Discrete.ddpm_linear(T=25)
    pre = models.AnalyticModel(Q1, sched)
    tilted = F.tilt(Q1, [[0.8]], [0.5]).mixture
    ft = models.AnalyticModel(tilted, sched)
    kern = reverse.ddpm_kernels(ft, sched, "beta")
    states = F.sample_chain(kern, 4000, generator=torch.Generator().manual_seed(0))
    kl = F.step_kls(kern, pre, states)
    # one step against the closed-form KL of two Gaussians with equal variance
    k, j = 5, kern.K - 5
    m1 = kern.mean(states[j], k)
    m0 = float(kern.a[k - 1]) * states[j] + float(kern.c[k - 1]) * pre.denoise(states[j], kern.model_t[k - 1])
    ref = ((m1 - m0) ** 2).sum(-1) / (2 * float(kern.var[k - 1]))
    assert torch.allclose(kl[:, k - 1], ref, rtol=1e-10, atol=1e-14)
    # sum over steps >= KL of the outputs (data processing), by the exact 1-D grid laws
    from densityformula import likelihood

    grid = torch.linspace(-7, 7, 1401, dtype=torch.float64)
    p1 = likelihood.sampler_density_1d(ft, sched, "beta", grid=grid)
    p0 = likelihood.sampler_density_1d(pre, sched, "beta", grid=grid)
    kl_out, _ = likelihood.grid_kl(p1.log_density, p0.log_density, grid)
    path = kl.sum(1)
    se = float(path.std()) / math.sqrt(path.numel())
    assert float(path.mean()) > kl_out - 4 * se  # one-sided, 4 standard errors
    assert kl_out > 0.01


# ---------------------------------------------------------------------------------------------
# the tilt
# ---------------------------------------------------------------------------------------------
def _quad_1d(gmm: targets.GaussianMixture, A: float, b: float, c: float = 0.0):
    def unnorm(x: float) -> float:
        return float(torch.exp(gmm.log_prob(torch.tensor([[x]], dtype=torch.float64)))[0]) * math.exp(
            -0.5 * A * x * x + b * x + c)

    Z = integrate.quad(unnorm, -np.inf, np.inf, epsabs=1e-13, epsrel=1e-11, limit=200)[0]
    m1 = integrate.quad(lambda x: x * unnorm(x), -np.inf, np.inf, epsabs=1e-13, epsrel=1e-11, limit=200)[0] / Z
    m2 = integrate.quad(lambda x: x * x * unnorm(x), -np.inf, np.inf, epsabs=1e-13, epsrel=1e-11, limit=200)[0] / Z
    return math.log(Z), m1, m2 - m1 * m1, unnorm


def test_tilt_matches_scipy_quadrature_in_one_dimension() -> None:
    A, b, c = 0.7, 1.2, 0.3
    t = F.tilt(Q1, [[A]], [b], c=c)
    log_Z, mean, var, unnorm = _quad_1d(Q1, A, b, c)
    assert abs(float(t.log_Z) - log_Z) < 1e-9
    assert abs(float(t.mixture.mean()[0]) - mean) < 1e-9
    assert abs(float(t.mixture.covariance()[0, 0]) - var) < 1e-9
    xs = torch.linspace(-4, 4, 17, dtype=torch.float64)[:, None]
    dens = torch.exp(t.mixture.log_prob(xs))
    ref = torch.tensor([unnorm(float(x)) for x in xs], dtype=torch.float64) / math.exp(log_Z)
    assert torch.allclose(dens, ref, rtol=1e-10)
    # negative control: weights without the normalizer ratio Z_k are wrong by far more than the tolerance
    wrong = targets.GaussianMixture(Q1.weights, t.mixture.means, t.mixture.covs[:, 0, 0])
    assert float((torch.exp(wrong.log_prob(xs)) - ref).abs().max()) > 1e-2


def test_tilt_matches_scipy_quadrature_in_two_dimensions() -> None:
    A = np.array([[0.6, 0.2], [0.2, 0.4]])
    b = np.array([0.5, -0.3])
    t = F.tilt(Q2, A, b)

    def unnorm(y: float, x: float) -> float:
        p = float(torch.exp(Q2.log_prob(torch.tensor([[x, y]], dtype=torch.float64)))[0])
        v = np.array([x, y])
        return p * math.exp(-0.5 * v @ A @ v + b @ v)

    Z = integrate.dblquad(unnorm, -9, 9, -9, 9, epsabs=1e-11, epsrel=1e-9)[0]
    assert abs(float(t.log_Z) - math.log(Z)) < 1e-7
    x0 = torch.tensor([[0.4, -0.2]], dtype=torch.float64)
    assert abs(float(t.mixture.log_prob(x0)) - math.log(unnorm(-0.2, 0.4) / Z)) < 1e-7


def test_tilt_matches_importance_weighted_sampling() -> None:
    A = torch.tensor([[0.6, 0.2], [0.2, 0.4]], dtype=torch.float64)
    b = torch.tensor([0.5, -0.3], dtype=torch.float64)
    t = F.tilt(Q2, A, b)
    r = F.QuadraticReward(A, b)
    x = Q2.sample(200000, generator=torch.Generator().manual_seed(0))
    lw = r(x)
    w = torch.exp(lw - lw.max())
    w = w / w.sum()
    mean = (w[:, None] * x).sum(0)
    # self-normalized IS: delta-method standard error sum w_i^2 (x_i - mean)^2
    se = torch.sqrt((w[:, None] ** 2 * (x - mean) ** 2).sum(0))
    assert bool(((mean - t.mixture.mean()).abs() < 5 * se).all())
    # log Z = log E_q exp(r): plain Monte Carlo mean
    e = torch.exp(lw)
    se_z = float(e.std()) / math.sqrt(e.numel()) / float(e.mean())
    assert abs(math.log(float(e.mean())) - float(t.log_Z)) < 5 * se_z


def test_tilt_reward_is_the_tilt_by_r_over_beta_and_gaussian_closed_form() -> None:
    g = targets.Gaussian([0.5], 2.0)
    r = F.QuadraticReward.centered([[1.0]], [2.0])
    t = F.tilt_reward(g, r, beta=0.5)
    # N(0.5, 2) * exp(-(x-2)^2) : precision 1/2 + 2, mean (0.25 + 4) / 2.5
    assert abs(float(t.mixture.covs[0, 0, 0]) - 1 / 2.5) < 1e-12
    assert abs(float(t.mixture.means[0, 0]) - 4.25 / 2.5) < 1e-12


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(1, 3), K=st.integers(1, 3), scale=st.floats(0.05, 2.0))
def test_property_tilt_is_a_normalized_reweighting_of_q(seed: int, d: int, K: int, scale: float) -> None:
    gmm = targets.random_gmm(d, K, seed=seed)
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(d, d, generator=g, dtype=torch.float64)
    A = scale * (M @ M.T) / d  # positive semi-definite: always normalizable
    b = torch.randn(d, generator=g, dtype=torch.float64)
    t = F.tilt(gmm, A, b)
    x = gmm.sample(8, generator=g)
    lhs = t.mixture.log_prob(x)
    rhs = gmm.log_prob(x) + F.QuadraticReward(A, b)(x) - t.log_Z
    assert torch.allclose(lhs, rhs, atol=1e-9, rtol=1e-9)
    # tilting back by -r gives q again
    back = F.tilt(t.mixture, -A, -b)
    assert torch.allclose(back.mixture.log_prob(x), gmm.log_prob(x), atol=1e-8)
    assert abs(float(back.log_Z + t.log_Z)) < 1e-8


def test_non_normalizable_tilt_names_A() -> None:
    with pytest.raises(ValueError, match="A"):
        F.tilt(Q1, [[-10.0]], [0.0])  # 1/0.2 - 10 < 0
    with pytest.raises(ValueError, match="A"):
        F.tilt(Q2, -50 * np.eye(2), [0.0, 0.0])


def test_bad_inputs() -> None:
    kern = _kernels(Q1)
    states = F.sample_chain(kern, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="reduction"):
        F.step_log_probs(kern, states, reduction="avg")
    with pytest.raises(ValueError, match="states"):
        F.step_log_probs(kern, states[1:])
    with pytest.raises(TypeError, match="kernels"):
        F.step_log_probs("ddpm", states)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ks"):
        F.kernel_log_prob(kern, 0, states[0], states[1])
    with pytest.raises(ValueError, match="shape"):
        F.tilt(Q1, [[1.0, 0.0]], [0.0])
    with pytest.raises(ValueError, match="symmetric"):
        F.tilt(Q2, [[1.0, 0.5], [0.0, 1.0]], [0.0, 0.0])
    with pytest.raises(TypeError, match="gmm"):
        F.tilt("q", [[1.0]], [0.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta"):
        F.tilt_reward(Q1, F.QuadraticReward.centered([[1.0]], [0.0]), beta=0.0)
    with pytest.raises(ValueError, match="eta"):
        F.ddim_kernels(models.AnalyticModel(Q1, schedules.VPLinear()), [1.0, 0.5, 0.0], eta=-1.0)
    with pytest.raises(ValueError, match="times"):
        F.ddim_kernels(models.AnalyticModel(Q1, schedules.VPLinear()), [0.0, 0.5, 1.0])
    sched = schedules.Discrete.ddpm_linear(T=25)
    with pytest.raises(TypeError, match="model"):
        F.finetune(models.AnalyticModel(Q1, sched), models.AnalyticModel(Q1, sched), lambda x: x[:, 0], beta=1.0)
    with pytest.raises(TypeError, match="generator"):
        F.sample_chain(kern, 3, generator=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr_decay"):
        F.finetune(F.TiltedModel(Q1, sched), models.AnalyticModel(Q1, sched), lambda x: x[:, 0], beta=1.0,
                   iterations=1, lr_decay=0.0)
    with pytest.raises(ValueError, match="A"):
        F.QuadraticReward(torch.ones(2, 2), torch.ones(3))


def test_eta_to_zero_makes_ddim_log_probs_diverge() -> None:
    model = models.AnalyticModel(Q1, schedules.VPLinear())
    times = sampling.time_grid(model, 10)
    x_T = torch.randn(200, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    means = []
    for eta in (1.0, 0.1, 0.01):
        kern = F.ddim_kernels(model, times, eta=eta)
        states = F.sample_chain(kern, x_T=x_T, generator=torch.Generator().manual_seed(1))
        lp = F.step_log_probs(kern, states).sum(1)
        means.append(float(lp.mean()))
        n_live = int((kern.var > 0).sum())
    # v ~ eta^2, so E log p = sum_k -(d/2)(log(2 pi v_k) + 1) rises by n_live * d * log(10) per decade
    assert abs((means[2] - means[1]) - n_live * math.log(10.0)) < 1e-6 * n_live + 0.5
    assert means[0] < means[1] < means[2]
    assert bool((F.ddim_kernels(model, times, eta=0.0).var == 0).all())


def test_finetune_increases_the_objective_and_is_reproducible() -> None:
    sched = schedules.Discrete.ddpm_linear(T=25)
    pre = models.AnalyticModel(Q1, sched)
    r = F.QuadraticReward.centered([[1.0]], [1.0])
    runs = []
    for _ in range(2):
        m = F.TiltedModel(Q1, sched)
        res = F.finetune(m, pre, r, beta=1.0, n=128, iterations=30, lr=0.1, generator=torch.Generator().manual_seed(0))
        runs.append((res, m.b_param.detach().clone()))
    assert torch.equal(runs[0][1], runs[1][1])  # the generator is the only randomness
    h = runs[0][0].history
    first = np.mean([x["objective"] for x in h[:5]])
    last = np.mean([x["objective"] for x in h[-5:]])
    assert last > first
    # the parameters move toward the optimum (A, b) / beta = (1, 1)
    assert float(runs[0][1][0]) > 0.3
