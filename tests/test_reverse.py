"""The reverse process is defined once (densityformula.reverse, docs/math.md section 8).

(a) single source: patching the one DDPM step function changes the DDPM sampler, the DDPM ELBO and
    the exact sampler density alike, and un-patched all three agree with an independent write-up
    of Ho et al.'s formulas;
(b) sampling.probability_flow and likelihood.probability_flow integrate the same vector field;
(c) every step function against a closed form.
"""
import math

import pytest
import torch

import densityformula as df
import densityformula.likelihood.pf_ode as pf_ode
from densityformula import reverse as R
from densityformula import sampling as S
from densityformula.models import AnalyticModel
from densityformula.schedules import VE, Discrete, LiYan, SubVP, VPCosine, VPLinear
from densityformula.targets import Gaussian, GaussianMixture

F64 = torch.float64
M, V = 0.5, 0.3  # the 1-D Gaussian target N(M, V)
T = 50


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _gauss(m=M, v=V):
    return Gaussian(torch.tensor([m], dtype=F64), torch.tensor([[v]], dtype=F64))


def _gmm():
    return GaussianMixture(
        [0.35, 0.65],
        [[-2.0, 0.5], [1.5, -0.5]],
        [[[0.5, 0.2], [0.2, 0.3]], [[0.3, -0.1], [-0.1, 0.6]]],
    )


SCHEDULES = {
    "liyan": LiYan,
    "vplinear": VPLinear,
    "vpcosine": VPCosine,
    "subvp": SubVP,
    "ve": VE,
    "discrete": lambda: Discrete.ddpm_linear(1000),
}


# ---------------------------------------------------------------------------------------------
# an independent write-up of Ho et al. (2020) for a Gaussian target on a DDPM schedule
# ---------------------------------------------------------------------------------------------
class HoEtAl:
    """Ho et al.'s reverse process with the exact posterior-mean denoiser of N(M, V), from scratch.

    ``beta_tilde_k = (1 - abar_{k-1}) beta_k / (1 - abar_k)``,
    ``mu_tilde_k(x_k, x0) = sqrt(abar_{k-1}) beta_k / (1 - abar_k) x0
    + sqrt(1 - beta_k) (1 - abar_{k-1}) / (1 - abar_k) x_k``,
    ``p(x_{k-1} | x_k) = N(mu_tilde_k(x_k, D_k(x_k)), s_k)``, ``s_k = beta_k`` or ``beta_tilde_k``;
    decoder ``p(x0 | x_1) = N(D_1(x_1), beta_1)``.  ``var_scale`` multiplies every ``s_k``.
    """

    def __init__(self, T, variance="beta", var_scale=1.0):
        self.beta = Discrete.ddpm_linear(T).betas.tolist()
        self.ab = [1.0]
        for b in self.beta:
            self.ab.append(self.ab[-1] * (1.0 - b))
        self.T, self.variance, self.scale = T, variance, var_scale

    def coefs(self, k):
        """``(x_k coefficient, x0 coefficient, variance)`` of step k (1-based)."""
        b, ab, ab_prev = self.beta[k - 1], self.ab[k], self.ab[k - 1]
        if k == 1:
            return 0.0, 1.0, self.scale * b
        bt = (1 - ab_prev) * b / (1 - ab)
        s = b if self.variance == "beta" else bt
        return math.sqrt(1 - b) * (1 - ab_prev) / (1 - ab), math.sqrt(ab_prev) * b / (1 - ab), self.scale * s

    def denoiser(self, k):
        """``D_k(x) = M + A (x - alpha M)``, ``A = alpha V / (alpha^2 V + sigma^2)`` (posterior mean)."""
        a, s2 = math.sqrt(self.ab[k]), 1 - self.ab[k]
        return a * V / (a * a * V + s2), a

    def output_law(self):
        """Mean and variance of the sampler's output from the prior N(0, 1) (every step affine)."""
        mean, var = 0.0, 1.0
        for k in range(self.T, 0, -1):
            ak, ck, vk = self.coefs(k)
            A, a = self.denoiser(k)
            g = ak + ck * A
            mean, var = g * mean + ck * (M - A * a * M), g * g * var + vk
        return mean, var

    def elbo(self, x0):
        """``-(L_T + sum_{k>=2} L_{k-1} + L_0)`` in closed form (Gaussian KLs, E|x0 - D_k|^2 exact)."""
        abT = self.ab[-1]
        L = 0.5 * ((1 - abT) + abT * x0**2 - 1 - math.log(1 - abT))  # KL(q(x_T|x0) || N(0, 1))
        for k in range(1, self.T + 1):
            _, ck, vk = self.coefs(k)
            A, a = self.denoiser(k)
            err = (1 - A * a) ** 2 * (x0 - M) ** 2 + A * A * (1 - self.ab[k])  # E|x0 - D_k(x_k)|^2
            if k == 1:
                L = L + 0.5 * math.log(2 * math.pi * vk) + err / (2 * vk)
            else:
                b, ab, ab_prev = self.beta[k - 1], self.ab[k], self.ab[k - 1]
                bt = (1 - ab_prev) * b / (1 - ab)
                L = L + 0.5 * (bt / vk - 1 + math.log(vk / bt)) + ck * ck * err / (2 * vk)
        return -L

    def sample(self, xT, generator):
        """Algorithm 2 with the decoder mean at the last step (sampling.ddpm's convention)."""
        x = xT.clone()
        for k in range(self.T, 0, -1):
            ak, ck, vk = self.coefs(k)
            A, a = self.denoiser(k)
            mean = ak * x + ck * (M + A * (x - a * M))
            x = mean + math.sqrt(vk) * torch.randn(x.shape, generator=generator, dtype=F64) if k > 1 else mean
        return x


def _three_outputs(model, variance):
    """The DDPM sampler's output, the DDPM ELBO and the exact sampler density, all of one model."""
    xT = torch.randn(200, 1, generator=_gen(0), dtype=F64)
    x0 = torch.linspace(-1.5, 2.5, 9, dtype=F64)[:, None]
    samples = S.ddpm(model, xT, variance=variance, generator=_gen(1))
    elbo = df.elbo.ddpm(model, x0, variance=variance, n_samples=4000, generator=_gen(2))
    dens = df.likelihood.sampler_density_1d(model, variance=variance)
    return xT, x0, samples, elbo, dens


def _check_against_ho(ho, xT, x0, samples, elbo, dens):
    # the sampler: the same draws through Ho et al.'s Algorithm 2
    torch.testing.assert_close(samples, ho.sample(xT, _gen(1)), rtol=1e-10, atol=1e-10)
    # the ELBO: Monte Carlo estimate within 5 standard errors of the closed form
    exact = torch.tensor([ho.elbo(float(v)) for v in x0[:, 0]], dtype=F64)
    assert bool(((elbo.value - exact).abs() < 5 * elbo.stderr + 1e-9).all()), (elbo.value, exact, elbo.stderr)
    # the sampler density: the Gaussian output law of the affine recursion, on its bulk
    mean, var = ho.output_law()
    g = dens.grid
    ref = -0.5 * (math.log(2 * math.pi * var) + (g - mean) ** 2 / var)
    bulk = (g - mean).abs() < 5 * math.sqrt(var)
    torch.testing.assert_close(dens.log_density[bulk], ref[bulk], rtol=0, atol=1e-6)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_ddpm_step_is_the_single_source(monkeypatch, variance):
    model = AnalyticModel(_gauss(), Discrete.ddpm_linear(T))
    base = _three_outputs(model, variance)
    _check_against_ho(HoEtAl(T, variance), *base)

    original = R.ddpm_step

    def wider(levels, variance="beta", decoder_variance=None):
        k = original(levels, variance, decoder_variance)
        return R.StepCoefficients(k.a, k.c, 1.5 * k.var)

    monkeypatch.setattr(R, "ddpm_step", wider)
    patched = _three_outputs(model, variance)
    # all three changed ...
    assert float((patched[2] - base[2]).abs().max()) > 1e-2
    assert float((patched[3].value - base[3].value).abs().min()) > 1e-2
    assert float((patched[4].log_density - base[4].log_density).abs().max()) > 1e-2
    # ... and each into the process with 1.5 times the step variances (the decoder's included)
    _check_against_ho(HoEtAl(T, variance, var_scale=1.5), *patched)


def test_ddpm_kernels_are_the_ddpm_step_on_a_discrete_schedule():
    """ddpm_kernels's per-step arrays equal Ho et al.'s a_k, c_k, v_k; the sampler's generic levels
    on the integer grid reduce to the same step."""
    sch = Discrete.ddpm_linear(50)
    model = AnalyticModel(_gauss(), sch)
    for variance in ("beta", "beta_tilde"):
        ho = HoEtAl(50, variance)
        kern = R.ddpm_kernels(model, sch, variance)
        ref = torch.tensor([ho.coefs(k) for k in range(1, 51)], dtype=F64)
        torch.testing.assert_close(torch.stack([kern.a, kern.c, kern.var], 1), ref, rtol=1e-12, atol=1e-15)
        k = torch.arange(50, 0, -1, dtype=F64)
        generic = R.ddpm_step(R.step_levels(sch, k, k - 1), variance)
        exact = R.ddpm_step(R.discrete_step_levels(sch), variance)
        for g, e in zip(generic, exact):
            torch.testing.assert_close(g.flip(0), e, rtol=1e-10, atol=1e-15)


def test_em_kernels_use_the_euler_maruyama_step():
    sch = VPLinear()
    model = AnalyticModel(_gauss(), sch)
    times = torch.linspace(0.9, 0.05, 18, dtype=F64)
    kern = R.em_kernels(model, times)
    t_hi, h = times.flip(0)[1:], times.flip(0)[1:] - times.flip(0)[:-1]
    step = R.euler_maruyama_step(sch.drift(t_hi), sch.g2(t_hi), h)
    d_form = R.score_to_denoiser_coefficients(step, sch.alpha(t_hi), sch.sigma2(t_hi))
    for got, want in zip((kern.a, kern.c, kern.var), d_form):
        assert torch.equal(got, want)


# ---------------------------------------------------------------------------------------------
# (b) one probability-flow vector field for sampling and likelihood
# ---------------------------------------------------------------------------------------------
def _sampler_field(monkeypatch, model):
    """The vector field ``rhs(lambda, x)`` that sampling.probability_flow hands to its ODE solver."""
    import torchdiffeq

    seen = []

    def fake_odeint(func, y0, t, **kwargs):
        seen.append(func)
        return torch.stack([y0] * len(t))

    with monkeypatch.context() as mp:
        mp.setattr(torchdiffeq, "odeint", fake_odeint)
        S.probability_flow(model, torch.zeros(2, model.target.d, dtype=F64), steps=2)
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("sched", sorted(SCHEDULES))
def test_probability_flow_fields_of_sampling_and_likelihood_agree(monkeypatch, sched):
    schedule = SCHEDULES[sched]()
    model = AnalyticModel(_gmm(), schedule)
    assert pf_ode.pf_velocity is R.pf_velocity  # likelihood re-exports the reverse module's field
    rhs = _sampler_field(monkeypatch, model)
    # at random points and log-SNRs across the schedule's (finite) range
    lo, hi = schedule.finite_log_snr_range
    g = _gen(5)
    for lam in (lo + (hi - lo) * torch.rand(8, generator=g, dtype=F64)).tolist() + [lo, hi]:
        x = 3 * torch.randn(16, 2, generator=g, dtype=F64)
        lam_t = torch.tensor(lam, dtype=F64)
        F_lik, _ = df.likelihood.pf_velocity(model, x, lam_t, trace="none")
        F_lik_exact, _ = df.likelihood.pf_velocity(model, x, lam_t, trace="exact")  # the likelihood's own branch
        F_smp = rhs(lam_t, x)
        torch.testing.assert_close(F_smp, F_lik, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(F_smp, F_lik_exact, rtol=1e-12, atol=1e-12)
    # at the very points and per-point log-SNRs the likelihood's solver visits
    calls = []
    original = R.pf_velocity

    def spy(model_, x_, lam_, **kw):
        out = original(model_, x_, lam_, **kw)
        calls.append((x_.detach().clone(), lam_.detach().clone(), out[0].detach().clone()))
        return out

    with monkeypatch.context() as mp:
        mp.setattr(R, "pf_velocity", spy)
        x0 = _gmm().sample(5, generator=_gen(6))
        df.likelihood.probability_flow(model, x0, rtol=1e-3, atol=1e-3)
    assert len(calls) > 5  # the likelihood takes its field from the reverse module at call time
    for x_, lam_, F_ in calls[:: max(1, len(calls) // 10)]:
        torch.testing.assert_close(rhs(lam_, x_), F_, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sched", sorted(SCHEDULES))
def test_probability_flow_field_is_the_log_snr_ode(sched):
    """``F = c x - sigma eps / 2`` with ``c = d log alpha / d lambda`` (I20), written independently
    (``c = sigma^2/2`` for VP, ``-f sigma^2 / g^2`` otherwise), where the time clock is finite."""
    schedule = SCHEDULES[sched]()
    model = AnalyticModel(_gmm(), schedule)
    lo, hi = schedule.finite_log_snr_range
    g = _gen(7)
    for lam in torch.linspace(max(lo, -9.0), min(hi, 9.0), 7, dtype=F64).tolist():
        x = 2 * torch.randn(10, 2, generator=g, dtype=F64)
        t = schedule.t_from_log_snr(torch.tensor(lam, dtype=F64))
        s2 = float(schedule.sigma2(t))
        c = s2 / 2 if schedule.variance_preserving else -float(schedule.drift(t)) * s2 / float(schedule.g2(t))
        ref = c * x - 0.5 * math.sqrt(s2) * model.eps(x, t)
        F, _ = R.pf_velocity(model, x, torch.tensor(lam, dtype=F64))
        torch.testing.assert_close(F, ref, rtol=1e-9, atol=1e-10)


def test_sampler_calls_the_reverse_modules_field(monkeypatch):
    """sampling.probability_flow looks the field up in densityformula.reverse at call time."""
    model = AnalyticModel(_gauss(), VPLinear())
    xT = torch.linspace(-2, 2, 5, dtype=F64)[:, None]
    base = S.probability_flow(model, xT, steps=8)
    original = R.pf_velocity
    monkeypatch.setattr(R, "pf_velocity", lambda *a, **k: (2.0 * original(*a, **k)[0], None))
    assert float((S.probability_flow(model, xT, steps=8) - base).abs().max()) > 1e-2


# ---------------------------------------------------------------------------------------------
# (c) each step function against a closed form
# ---------------------------------------------------------------------------------------------
def _pairs(schedule, n=6, seed=0):
    """Random step pairs t > s inside the schedule (including the clean end s = t_min)."""
    g = _gen(seed)
    lo, hi = schedule.t_min, schedule.t_max
    u = lo + (hi - lo) * torch.rand(n, 2, generator=g, dtype=F64)
    t, s = u.max(1).values, u.min(1).values
    t = torch.cat([t, t[:1]])
    s = torch.cat([s, torch.tensor([lo], dtype=F64)])
    return t, s


@pytest.mark.parametrize("sched", sorted(SCHEDULES))
def test_step_levels_are_the_forward_transition(sched):
    schedule = SCHEDULES[sched]()
    t, s = _pairs(schedule)
    lv = R.step_levels(schedule, t, s)
    torch.testing.assert_close(lv.alpha_ts, schedule.alpha(t) / schedule.alpha(s), rtol=1e-12, atol=0)
    direct = schedule.sigma2(t) - lv.alpha_ts**2 * schedule.sigma2(s)
    torch.testing.assert_close(lv.sigma2_ts, direct, rtol=1e-9, atol=1e-14)
    with pytest.raises(ValueError, match="s must be smaller"):
        R.step_levels(schedule, s, t)


@pytest.mark.parametrize("sched", sorted(SCHEDULES))
def test_posterior_steps_are_exact_for_a_known_x0(sched):
    """With ``D = x0`` known, DDPM (beta_tilde) and DDIM (any eta) map ``q_t(. | x0)`` onto
    ``q_s(. | x0) = N(alpha_s x0, sigma_s^2)`` exactly: mean ``a alpha_t x0 + c x0``, variance
    ``a^2 sigma_t^2 + var``."""
    schedule = SCHEDULES[sched]()
    t, s = _pairs(schedule, seed=1)
    lv = R.step_levels(schedule, t, s)
    x0 = 0.7
    steps = [R.ddpm_step(lv, "beta_tilde", decoder_variance=0.0)] + [R.ddim_step(lv, eta) for eta in (0.0, 0.5, 1.0)]
    for k in steps:
        torch.testing.assert_close(k.a * lv.alpha_t * x0 + k.c * x0, lv.alpha_s * x0, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(k.a**2 * lv.sigma2_t + k.var, lv.sigma2_s, rtol=1e-10, atol=1e-12)
    # "beta" adds sigma2_ts - beta_tilde to the variance; DDIM eta=1 has the coefficients of beta_tilde
    b, bt = R.ddpm_step(lv, "beta", decoder_variance=0.0), steps[0]
    dec = lv.sigma2_s == 0
    torch.testing.assert_close(b.var[~dec] - bt.var[~dec], (lv.sigma2_ts * (1 - lv.sigma2_s / lv.sigma2_t))[~dec])
    for u, w in zip(steps[-1], bt):
        torch.testing.assert_close(u, w, rtol=1e-10, atol=1e-12)


def _impulse_moments(sampler, model, t0, t1, **kw):
    """Exact output mean and variance of one sampler step from ``x_T ~ q_{t0}`` (affine step,
    unit noise impulses through noise_sampler)."""
    sch = model.schedule
    a0, s20 = float(sch.alpha(t0)), float(sch.sigma2(t0))
    m0, v0 = a0 * M, a0 * a0 * V + s20
    draws = []

    def impulse(x, i):
        z = torch.zeros_like(x)
        z[2 + len(draws)] = 1.0
        draws.append(i)
        return z

    xT = torch.full((6, 1), m0, dtype=F64)
    xT[1] += 1.0
    out = sampler(model, xT, times=torch.tensor([t0, t1], dtype=F64), noise_sampler=impulse, **kw)[:, 0]
    gain, noise = out[1] - out[0], out[2:] - out[0]
    return float(out[0]), float(gain**2 * v0 + (noise**2).sum()), v0


@pytest.mark.parametrize("sched", ["vplinear", "ve", "subvp", "liyan"])
def test_one_step_of_each_sampler_on_a_gaussian(sched):
    """One step from ``q_t`` of N(M, V) with the exact score, mean and variance in closed form:

    - DDPM: the mean is exact (``alpha_s M``); the variance misses ``c^2 Var(x0 | x_t)`` (law of
      total variance) -- plus ``sigma2_ts - beta_tilde`` for ``variance="beta"``;
    - DDIM eta=0: ``a' = alpha_s A + sigma_s (1 - alpha_t A) / sigma_t`` on ``x_t``: variance ``a'^2 V_t``;
    - Euler--Maruyama: ``(1 - h f - h g^2 / V_t)^2 V_t + h g^2``, mean ``(1 - h f) alpha_t M``;
    - reverse diffusion: ``(2 - alpha_ts - sigma2_ts / V_t)^2 V_t + sigma2_ts``, mean ``(2 - alpha_ts) alpha_t M``.
    """
    schedule = SCHEDULES[sched]()
    model = AnalyticModel(_gauss(), schedule)
    t0, t1 = 0.6, 0.45
    tt = torch.tensor([t0, t1], dtype=F64)
    at, as_ = (float(v) for v in schedule.alpha(tt))
    s2t, s2s = (float(v) for v in schedule.sigma2(tt))
    Vt = at * at * V + s2t
    A = at * V / Vt  # D(x) = M + A (x - alpha_t M)
    ats = at / as_
    s2ts = s2t - ats * ats * s2s
    bt = s2ts * s2s / s2t
    c = as_ * s2ts / s2t
    post_var = V * s2t / Vt  # Var(x0 | x_t)
    truth = as_ * as_ * V + s2s
    cases = {
        "ddpm_bt": (S.ddpm, dict(variance="beta_tilde"), as_ * M, truth - c * c * post_var),
        "ddpm_b": (S.ddpm, dict(variance="beta"), as_ * M, truth - c * c * post_var + s2ts - bt),
        "ddim": (S.ddim, dict(eta=0.0), as_ * M, (as_ * A + math.sqrt(s2s) * (1 - at * A) / math.sqrt(s2t)) ** 2 * Vt),
    }
    f, g2, h = float(schedule.drift(t0)), float(schedule.g2(t0)), t0 - t1
    cases["em"] = (S.euler_maruyama, {}, (1 - h * f) * at * M, (1 - h * f - h * g2 / Vt) ** 2 * Vt + h * g2)
    cases["rd"] = (S.reverse_diffusion, {}, (2 - ats) * at * M, (2 - ats - s2ts / Vt) ** 2 * Vt + s2ts)
    for name, (fn, kw, mean_ref, var_ref) in cases.items():
        mean, var, _ = _impulse_moments(fn, model, t0, t1, **kw)
        assert mean == pytest.approx(mean_ref, rel=1e-10, abs=1e-12), name
        assert var == pytest.approx(var_ref, rel=1e-10), name


def test_euler_maruyama_local_error_is_second_order():
    """One EM step's moment error against the true q_s falls like h^2 (weak local order 2)."""
    model = AnalyticModel(_gauss(), VPLinear())
    sch = model.schedule
    errs = []
    for h in (0.02, 0.01, 0.005):
        mean, var, _ = _impulse_moments(S.euler_maruyama, model, 0.5, 0.5 - h)
        a_s, s2_s = float(sch.alpha(0.5 - h)), float(sch.sigma2(0.5 - h))
        errs.append(abs(mean - a_s * M) + abs(var - (a_s * a_s * V + s2_s)))
    assert 3.6 < errs[0] / errs[1] < 4.4 and 3.6 < errs[1] / errs[2] < 4.4, errs


def test_reverse_diffusion_step_on_a_ddpm_schedule_is_song_et_al():
    sch = Discrete.ddpm_linear(30)
    k = R.reverse_diffusion_step(R.discrete_step_levels(sch))
    b = sch.betas
    torch.testing.assert_close(k.a, 2 - torch.sqrt(1 - b), rtol=1e-15, atol=0)
    assert torch.equal(k.c, b) and torch.equal(k.var, b)


def test_langevin_corrector_step_is_the_snr_rule():
    k = R.langevin_corrector_step(score_norm=2.0, noise_norm=1.5, snr=0.2, alpha=0.9)
    eps = 2 * 0.9 * (0.2 * 1.5 / 2.0) ** 2
    assert (float(k.a), float(k.c), float(k.var)) == pytest.approx((1.0, eps, 2 * eps), rel=1e-15)
    # on N(mu, v) with the exact score, one step maps N(mu, v) to N(mu, v + eps^2 / v) (ULA bias)
    v, e = 0.8, float(k.c)
    assert (1 - e / v) ** 2 * v + float(k.var) == pytest.approx(v + e * e / v, rel=1e-12)
    # sampling.langevin_step applies it with the batch-mean norms
    model = AnalyticModel(_gmm(), VPLinear())
    x = torch.randn(30, 2, generator=_gen(0), dtype=F64)
    z = torch.randn(30, 2, generator=_gen(1), dtype=F64)
    s = model.score(x, 0.4)
    kk = R.langevin_corrector_step(float(s.norm(dim=1).mean()), float(z.norm(dim=1).mean()), 0.2, 0.9)
    ref = x + float(kk.c) * s + math.sqrt(float(kk.var)) * z
    torch.testing.assert_close(S.langevin_step(model, x, 0.4, snr=0.2, alpha=0.9, noise=z), ref, rtol=1e-14, atol=1e-14)
    with pytest.raises(FloatingPointError):
        R.langevin_corrector_step(0.0, 1.0, 0.16)
    with pytest.raises(ValueError, match="snr"):
        R.langevin_corrector_step(1.0, 1.0, -1.0)


def test_score_and_denoiser_forms_are_the_same_step():
    model = AnalyticModel(_gmm(), SubVP())
    sch = model.schedule
    t = torch.tensor([0.7], dtype=F64)
    k = R.euler_maruyama_step(sch.drift(t), sch.g2(t), torch.tensor([0.01], dtype=F64))
    kd = R.score_to_denoiser_coefficients(k, sch.alpha(t), sch.sigma2(t))
    x = torch.randn(20, 2, generator=_gen(3), dtype=F64)
    torch.testing.assert_close(
        float(k.a) * x + float(k.c) * model.score(x, 0.7), float(kd.a) * x + float(kd.c) * model.denoise(x, 0.7),
        rtol=1e-12, atol=1e-12,
    )


def test_step_functions_reject_bad_arguments():
    lv = R.step_levels(VPLinear(), 0.5, 0.4)
    with pytest.raises(ValueError, match="variance"):
        R.ddpm_step(lv, "sigma")
    with pytest.raises(ValueError, match="eta"):
        R.ddim_step(lv, -0.1)
    with pytest.raises(ValueError, match="decoder_variance"):
        R.ddpm_step(R.step_levels(VPLinear(), 0.5, 0.0), decoder_variance=-1.0)
    with pytest.raises(ValueError, match="s must"):
        R.step_levels(VPLinear(), 0.5, 1.5)


# ---------------------------------------------------------------------------------------------
# noise_sampler reproduces the generator's draws exactly
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fn,kw",
    [
        (S.ddpm, dict(steps=20)),
        (S.ddpm, dict(steps=20, variance="beta")),
        (S.ddim, dict(steps=20, eta=0.7)),
        (S.euler_maruyama, dict(steps=20)),
        (S.reverse_diffusion, dict(steps=20)),
        (S.predictor_corrector, dict(steps=10, corrector_steps=2)),
        (S.predictor_corrector, dict(steps=10, predictor="none")),
    ],
)
def test_noise_sampler_reproduces_generator_draws(fn, kw):
    model = AnalyticModel(_gmm(), LiYan())
    xT = S.prior_sample(model, 40, t=S.default_times(model)[0], generator=_gen(0))
    a = fn(model, xT, generator=_gen(1), **kw)
    g = _gen(1)
    seen = []

    def noise(x, i):
        seen.append(i)
        return torch.randn(x.shape, generator=g, dtype=x.dtype, device=x.device)

    b = fn(model, xT, noise_sampler=noise, **kw)
    assert torch.equal(a, b)
    assert seen == sorted(seen) and len(seen) > 0
    assert torch.equal(S.gaussian_noise(_gen(4))(xT, 0), torch.randn(xT.shape, generator=_gen(4), dtype=F64))
