"""Samplers with the exact score reproduce the target; each step matches its paper's formula."""
import math
import zlib

import pytest
import torch

import densityformula as df
from densityformula import sampling as S
from densityformula.models import AnalyticModel
from densityformula.schedules import VE, Discrete, LiYan, SubVP, VPCosine, VPLinear
from densityformula.targets import Gaussian, GaussianMixture

F64 = torch.float64
# Every sampler run is checked by 4 tests (energy-distance permutation test + KS along 3
# directions); each at FAMILY_ALPHA / 4 (Bonferroni), so one run of an exact sampler fails with
# probability <= 1% (fixed seeds: the outcomes are deterministic).
FAMILY_ALPHA = 0.01
PERMUTATIONS = 799  # smallest attainable p-value 1/800 < FAMILY_ALPHA / 4


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _gmm():
    return GaussianMixture(
        [0.35, 0.65],
        [[-2.0, 0.5], [1.5, -0.5]],
        [[[0.5, 0.2], [0.2, 0.3]], [[0.3, -0.1], [-0.1, 0.6]]],
    )


def match_pvalues(x, gmm, seed, directions=None):
    """p-values of the 4 checks of ``x`` against exact draws / the exact CDF of ``gmm``."""
    ref = gmm.sample(x.shape[0], generator=_gen(10_000 + seed))
    et = S.energy_test(x, ref, permutations=PERMUTATIONS, generator=_gen(seed))
    if directions is None:
        directions = [[1.0] + [0.0] * (gmm.d - 1), [0.0] * (gmm.d - 1) + [1.0], [1.0 / math.sqrt(gmm.d)] * gmm.d]
    return {"energy": et.p_value, **{f"ks{u}": S.ks_test(x, gmm, u).pvalue for u in directions}}


def check_matches(x, gmm, seed, label):
    p = match_pvalues(x, gmm, seed)
    level = FAMILY_ALPHA / len(p)
    assert min(p.values()) > level, f"{label}: p-values {p} (level {level})"


def check_differs(x, gmm, seed, label):
    p = match_pvalues(x, gmm, seed)
    level = FAMILY_ALPHA / len(p)
    assert min(p.values()) <= level, f"{label}: not detected, p-values {p}"


SCHEDULES = {
    "liyan": LiYan,
    "vplinear": VPLinear,
    "ve": VE,
    "ddpm1000": lambda: Discrete.ddpm_linear(1000),
    "vpcosine": VPCosine,
    "subvp": SubVP,
}

# steps chosen so that the discretization bias is far below what n = 1000 points can detect
CONFIGS = {
    "ddpm_beta_tilde": (S.ddpm, dict(steps=1000, variance="beta_tilde")),  # 250 steps: bias KS-detectable at n=1000
    "ddpm_beta": (S.ddpm, dict(steps=1000, variance="beta")),
    "ddim": (S.ddim, dict(steps=100, eta=0.0)),
    "euler_maruyama": (S.euler_maruyama, dict(steps=500)),
    "reverse_diffusion": (S.reverse_diffusion, dict(steps=500)),
    "predictor_corrector": (S.predictor_corrector, dict(steps=250)),
    "probability_flow": (S.probability_flow, dict()),
}


@pytest.mark.parametrize("sched", sorted(SCHEDULES))
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sampler_reproduces_mixture(name, sched):
    gmm = _gmm()
    schedule = SCHEDULES[sched]()
    model = AnalyticModel(gmm, schedule)
    fn, kw = CONFIGS[name]
    kw = dict(kw)
    if isinstance(schedule, Discrete) and fn in (S.ddpm, S.euler_maruyama, S.reverse_diffusion):
        kw["steps"] = None  # every one of the T = 1000 steps
    seed = zlib.crc32(f"{name}/{sched}".encode()) % 1000
    x = fn(model, n=1000, generator=_gen(seed), **kw)
    assert x.shape == (1000, 2) and x.dtype == F64
    check_matches(x, gmm, seed, f"{name} on {sched}")


@pytest.mark.parametrize(
    "fn,kw",
    [
        (S.euler_maruyama, dict(steps=6)),
        (S.ddpm, dict(steps=3)),
        (S.ddim, dict(steps=3)),
        (S.probability_flow, dict(steps=2, method="euler")),
    ],
)
def test_too_few_steps_are_detected(fn, kw):
    """The distributional check has power: coarse grids fail it."""
    gmm = _gmm()
    model = AnalyticModel(gmm, VPLinear())
    x = fn(model, n=1000, generator=_gen(3), **kw)
    check_differs(x, gmm, 4, f"{fn.__name__} {kw}")


# ---------------------------------------------------------------------------------------------
# each step against an independent implementation of the paper's formula
# ---------------------------------------------------------------------------------------------
def _gauss1d():
    return Gaussian(torch.tensor([1.0], dtype=F64), torch.tensor([[0.25]], dtype=F64))


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_ddpm_equals_ho_et_al_on_discrete_schedule(variance):
    T = 50
    sch = Discrete.ddpm_linear(T)
    gmm = _gmm()
    model = AnalyticModel(gmm, sch)
    xT = torch.randn(64, 2, generator=_gen(0), dtype=F64)
    ours = S.ddpm(model, xT, variance=variance, generator=_gen(1))
    # Ho et al. Algorithm 2 in its eps form
    beta, ab = sch.betas, sch.alpha_bars
    g = _gen(1)
    x = xT.clone()
    for k in range(T, 0, -1):
        eps = model.eps(x, float(k))
        mean = (x - beta[k - 1] / torch.sqrt(1 - ab[k]) * eps) / torch.sqrt(1 - beta[k - 1])
        var = beta[k - 1] if variance == "beta" else beta[k - 1] * (1 - ab[k - 1]) / (1 - ab[k])
        x = mean + torch.sqrt(var) * torch.randn(x.shape, generator=g, dtype=F64) if k > 1 else mean
    torch.testing.assert_close(ours, x, rtol=1e-10, atol=1e-10)


def test_ddpm_strided_uses_every_kth_step():
    sch = Discrete.ddpm_linear(100)
    grid = S.time_grid(sch, 20)
    assert grid.tolist() == [float(k) for k in range(100, -1, -5)]
    assert S.time_grid(sch, 100).tolist() == [float(k) for k in range(100, -1, -1)]


@pytest.mark.parametrize("sched", ["liyan", "ddpm1000", "ve"])
def test_ddim_eta_one_is_ddpm_beta_tilde(sched):
    model = AnalyticModel(_gmm(), SCHEDULES[sched]())
    xT = S.prior_sample(model, 200, generator=_gen(0))
    a = S.ddim(model, xT, steps=40, eta=1.0, generator=_gen(1))
    b = S.ddpm(model, xT, steps=40, variance="beta_tilde", generator=_gen(1))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_reverse_diffusion_is_song_et_al_vp_and_ve():
    gmm = _gmm()
    # VP: x_{i-1} = (2 - sqrt(1 - beta_i)) x_i + beta_i s + sqrt(beta_i) z   (Song et al. eq. 46)
    sch = Discrete.ddpm_linear(30)
    model = AnalyticModel(gmm, sch)
    xT = torch.randn(50, 2, generator=_gen(0), dtype=F64)
    ours = S.reverse_diffusion(model, xT, generator=_gen(1))
    g, x = _gen(1), xT.clone()
    for k in range(30, 0, -1):
        b = sch.betas[k - 1]
        z = torch.randn(x.shape, generator=g, dtype=F64)
        x = (2 - torch.sqrt(1 - b)) * x + b * model.score(x, float(k)) + torch.sqrt(b) * z
    torch.testing.assert_close(ours, x, rtol=1e-9, atol=1e-9)
    # VE: x_{i-1} = x_i + (sigma_i^2 - sigma_{i-1}^2) s + sqrt(sigma_i^2 - sigma_{i-1}^2) z   (eq. 47)
    ve = VE()
    model = AnalyticModel(gmm, ve)
    xT = 50 * torch.randn(50, 2, generator=_gen(2), dtype=F64)
    ours = S.reverse_diffusion(model, xT, steps=40, generator=_gen(3))
    sig = [0.01 * 5000 ** (i / 40) for i in range(41)]
    g, x = _gen(3), xT.clone()
    for i in range(40, 0, -1):
        d2 = sig[i] ** 2 - sig[i - 1] ** 2
        x = x + d2 * model.score(x, i / 40) + math.sqrt(d2) * torch.randn(x.shape, generator=g, dtype=F64)
    torch.testing.assert_close(ours, x, rtol=1e-8, atol=1e-8)


def test_euler_maruyama_is_the_reverse_sde_step():
    sch = VPLinear()
    model = AnalyticModel(_gmm(), sch)
    xT = torch.randn(40, 2, generator=_gen(0), dtype=F64)
    ours = S.euler_maruyama(model, xT, steps=7, generator=_gen(1))
    g, x, h = _gen(1), xT.clone(), 1 / 7
    for i in range(7):
        t = 1 - i * h
        beta = 0.1 + 19.9 * t  # f = -beta/2, g^2 = beta
        z = torch.randn(x.shape, generator=g, dtype=F64)
        x = x + (0.5 * beta * x + beta * model.score(x, t)) * h + math.sqrt(beta * h) * z
    torch.testing.assert_close(ours, x, rtol=1e-9, atol=1e-9)


def test_langevin_step_is_song_et_al_rule():
    model = AnalyticModel(_gmm(), VPLinear())
    x = torch.randn(30, 2, generator=_gen(0), dtype=F64)
    out = S.langevin_step(model, x, 0.4, snr=0.2, alpha=0.9, generator=_gen(1))
    z = torch.randn(x.shape, generator=_gen(1), dtype=F64)
    s = model.score(x, 0.4)
    eps = 2 * 0.9 * (0.2 * z.norm(dim=1).mean() / s.norm(dim=1).mean()) ** 2
    torch.testing.assert_close(out, x + eps * s + torch.sqrt(2 * eps) * z)


def _exact_transport(sch, x, t0, t1, m=1.0, v=0.25):
    """The probability-flow map of N(m, v): the monotone map between the two Gaussians q_t0 -> q_t1."""
    a0, a1 = float(sch.alpha(t0)), float(sch.alpha(t1))
    v0 = a0 * a0 * v + float(sch.sigma2(t0))
    v1 = a1 * a1 * v + float(sch.sigma2(t1))
    return a1 * m + math.sqrt(v1 / v0) * (x - a0 * m)


@pytest.mark.parametrize("sched", sorted(SCHEDULES))
def test_probability_flow_is_the_exact_transport_for_a_gaussian(sched):
    sch = SCHEDULES[sched]()
    model = AnalyticModel(_gauss1d(), sch)
    xT = torch.linspace(-3, 3, 61, dtype=F64)[:, None]
    info = {}
    # start at t_max explicitly: for LiYan (alpha = 0 there) this exercises the bridge step
    out = S.probability_flow(model, xT, t_start=sch.t_max, rtol=1e-8, atol=1e-8, callback=info.update)
    exact = _exact_transport(sch, xT, sch.t_max, sch.t_min)
    # solver tolerance plus the O(e^-15) bridges at infinite log-SNR ends
    assert float((out - exact).abs().max()) < 2e-6
    assert info["nfe"] > 10


def test_probability_flow_rk4_is_fourth_order_and_ddim_first_order():
    sch = VE()  # finite log-SNR at both ends: no bridge, the pure solver error
    model = AnalyticModel(_gauss1d(), sch)
    xT = torch.linspace(-100, 100, 41, dtype=F64)[:, None]
    exact = _exact_transport(sch, xT, 1.0, 0.0)
    err = {k: float((S.probability_flow(model, xT, steps=k) - exact).abs().max()) for k in (16, 32)}
    assert 3.5 < math.log2(err[16] / err[32]) < 4.5, err
    sch = VPLinear()
    model = AnalyticModel(_gauss1d(), sch)
    xT = torch.linspace(-3, 3, 41, dtype=F64)[:, None]
    exact = _exact_transport(sch, xT, 1.0, 0.0)
    err = {k: float((S.ddim(model, xT, steps=k) - exact).abs().max()) for k in (64, 128)}
    assert 0.85 < math.log2(err[64] / err[128]) < 1.15, err


def test_probability_flow_does_not_couple_points():
    model = AnalyticModel(_gmm(), LiYan())
    xT = torch.randn(20, 2, generator=_gen(0), dtype=F64)
    batch = S.probability_flow(model, xT, steps=30)
    solo = S.probability_flow(model, xT[3:4], steps=30)
    torch.testing.assert_close(batch[3:4], solo, rtol=0, atol=1e-13)
    # adaptive: per-point error control, a far outlier does not change the others beyond tolerance
    a = S.probability_flow(model, xT, rtol=1e-7, atol=1e-7)
    b = S.probability_flow(model, torch.cat([xT, torch.tensor([[40.0, -40.0]], dtype=F64)]), rtol=1e-7, atol=1e-7)
    assert float((a - b[:20]).abs().max()) < 1e-5


# ---------------------------------------------------------------------------------------------
# grids, priors, plumbing
# ---------------------------------------------------------------------------------------------
def test_time_grid_spacings():
    ly = LiYan()
    g = S.time_grid(ly, 10)  # log-SNR, both ends infinite -> bridged
    assert g[0] == 1.0 and g[-1] == 0.0 and bool((g[1:] < g[:-1]).all())
    lam = ly.log_snr(g[1:-1])
    torch.testing.assert_close(lam, torch.linspace(-10, 10, 9, dtype=F64))
    g = S.time_grid(ly, 8, t_start=S.default_t_start(ly), spacing="rho")
    u = -torch.log1p(-g)
    torch.testing.assert_close(u, torch.linspace(float(u[0]), 0.0, 9, dtype=F64), atol=1e-9, rtol=0)
    assert float(ly.log_snr(g[0])) == pytest.approx(-10.0)
    torch.testing.assert_close(S.time_grid(VPLinear(), 4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=F64))


def test_default_t_start_avoids_infinite_coefficients():
    assert S.default_t_start(VPLinear()) == 1.0
    assert S.default_t_start(LiYan(), finite_coefficients=False) == 1.0
    t = S.default_t_start(LiYan())
    assert float(LiYan().log_snr(t)) == pytest.approx(-10.0)
    assert S.default_t_start(VPCosine()) < 1.0  # cosine alpha(1) = 0


def test_prior_sample_scale_and_reproducibility():
    model = AnalyticModel(_gmm(), VE())
    x = S.prior_sample(model, 5, generator=_gen(0))
    torch.testing.assert_close(x, math.sqrt(1 + 50.0**2) * torch.randn(5, 2, generator=_gen(0), dtype=F64))
    a = S.euler_maruyama(model, n=10, steps=20, generator=_gen(1))
    b = S.euler_maruyama(model, n=10, steps=20, generator=_gen(1))
    assert torch.equal(a, b)


def test_float32_models_and_callback():
    gmm32 = _gmm().to(dtype=torch.float32)
    model = AnalyticModel(gmm32, VPLinear())
    seen = []
    x = S.ddpm(model, n=1000, steps=200, generator=_gen(7), callback=seen.append)
    assert x.dtype == torch.float32 and bool(torch.isfinite(x).all())
    assert len(seen) == 200 and seen[0]["t"] == 1.0 and seen[-1]["t_next"] == 0.0
    assert set(seen[0]) >= {"i", "t", "t_next", "x", "denoised"}
    check_matches(x.double(), _gmm(), 7, "float32 ddpm")


def test_bad_arguments_raise():
    model = AnalyticModel(_gmm(), LiYan())
    with pytest.raises(ValueError, match="x_T or n"):
        S.ddpm(model)
    with pytest.raises(ValueError, match="variance"):
        S.ddpm(model, n=2, variance="sigma")
    with pytest.raises(ValueError, match="eta"):
        S.ddim(model, n=2, eta=-1.0)
    with pytest.raises(ValueError, match="snr"):
        S.predictor_corrector(model, n=2, snr=0.0)
    with pytest.raises(ValueError, match="steps"):
        S.ddpm(model, n=2, steps=0)
    with pytest.raises(ValueError, match="spacing"):
        S.ddpm(model, n=2, spacing="linear")
    with pytest.raises(ValueError, match="t_start"):
        S.ddpm(model, n=2, t_start=1.5)
    with pytest.raises(ValueError, match="t_start"):
        S.euler_maruyama(model, n=2, t_start=1.0)  # LiYan's drift is infinite at t = 1
    with pytest.raises(ValueError, match="n=3"):
        S.ddpm(model, torch.zeros(2, 2, dtype=F64), n=3)
    with pytest.raises(ValueError, match="NaN"):
        S.ddpm(model, torch.full((2, 2), float("nan"), dtype=F64))
    with pytest.raises(TypeError, match="x_T"):
        S.ddpm(model, [[0.0, 0.0]])
    with pytest.raises(TypeError, match="model"):
        S.ddpm(object(), n=2)
    with pytest.raises(ValueError, match="steps"):
        S.ddpm(AnalyticModel(_gmm(), Discrete.ddpm_linear(30)), n=2, steps=31)
    with pytest.raises(ValueError, match="method"):
        S.probability_flow(model, n=2, steps=4, method="dopri5")
    with pytest.raises(TypeError, match="generator"):
        S.ddpm(model, n=2, generator=0)


class _TinyNet(df.models.DiffusionModel, torch.nn.Module):
    """A float32 network-backed model: D = W x_t + b (parameters require grad)."""

    def __init__(self, schedule):
        torch.nn.Module.__init__(self)
        self.schedule = schedule
        self.lin = torch.nn.Linear(2, 2)
        self.d = 2

    @property
    def dtype(self):
        return torch.float32

    def denoise(self, x_t, t):
        return self.lin(x_t)


@pytest.mark.parametrize("name", sorted(S.SAMPLERS))
def test_samplers_build_no_autograd_graph_for_networks(name):
    torch.manual_seed(0)  # only for nn.Linear's init; every sampler draw uses the explicit generator
    net = _TinyNet(VPLinear())
    x = S.SAMPLERS[name](net, n=8, **({} if name == "probability_flow" else {"steps": 5}), generator=_gen(0))
    assert x.dtype == torch.float32 and not x.requires_grad and bool(torch.isfinite(x).all())


@pytest.mark.parametrize(
    "sched,kw",
    [
        ("vplinear", dict(predictor="euler_maruyama", steps=500)),
        ("ve", dict(predictor="none", steps=200, corrector_steps=3)),  # annealed Langevin dynamics (SMLD)
    ],
)
def test_predictor_corrector_variants(sched, kw):
    gmm = _gmm()
    model = AnalyticModel(gmm, SCHEDULES[sched]())
    x = S.predictor_corrector(model, n=1000, generator=_gen(31), **kw)
    check_matches(x, gmm, 32, f"predictor_corrector {kw}")
