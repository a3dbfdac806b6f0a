"""Discretization error of each sampler versus the number of steps, for a Gaussian target.

With the exact (affine) score of ``N(m, v)`` every step of ddpm / ddim / Euler-Maruyama / reverse
diffusion is affine in the state and the fresh noise, so the output is Gaussian and its mean and
variance are computed EXACTLY by pushing a handful of points through the sampler with the noise
generator replaced by unit impulses through ``noise_sampler`` (row 0: x_T = mean, row 1:
x_T = mean + 1, row 2 + j: unit noise at draw j).  No Monte Carlo error: the convergence slopes are
measured to 3 digits.
The predictor-corrector's Langevin step size is set from batch norms (not affine), so it is
studied by Monte Carlo (marked slow).
"""
import math

import pytest
import torch

from densityformula import sampling as S
from densityformula.models import AnalyticModel
from densityformula.schedules import Discrete, LiYan, VPLinear
from densityformula.targets import Gaussian

F64 = torch.float64
M, V = 1.0, 0.25


def _model(sch):
    return AnalyticModel(Gaussian(torch.tensor([M], dtype=F64), torch.tensor([[V]], dtype=F64)), sch)


def exact_output_moments(sampler, sch, steps, **kw):
    """Mean and variance of the sampler output when x_T ~ q_{t_start} exactly (docs/math.md I2)."""
    t0 = kw.pop("t_start", S.default_t_start(sch))
    a0, s20 = float(sch.alpha(t0)), float(sch.sigma2(t0))
    m0, v0 = a0 * M, a0 * a0 * V + s20
    draws = []

    def impulse(x, i):
        z = torch.zeros_like(x)
        j = len(draws)
        draws.append(j)
        assert 2 + j < x.shape[0], "more noise draws than rows"
        z[2 + j] = 1.0
        return z

    rows = steps + 2
    xT = torch.full((rows, 1), m0, dtype=F64)
    xT[1] += 1.0
    out = sampler(_model(sch), xT, steps=steps, t_start=t0, noise_sampler=impulse, **kw)[:, 0]
    gain = out[1] - out[0]
    noise = out[2:] - out[0]
    return float(out[0]), float(gain**2 * v0 + (noise**2).sum())


def test_impulse_moments_agree_with_monte_carlo():
    """The exact-moment device itself, against simulation (n = 200000, 4 standard errors)."""
    sch = VPLinear()
    mean, var = exact_output_moments(S.euler_maruyama, sch, 16)
    g = torch.Generator().manual_seed(0)
    a0, s20 = float(sch.alpha(1.0)), float(sch.sigma2(1.0))
    n = 200_000
    xT = a0 * M + math.sqrt(a0 * a0 * V + s20) * torch.randn(n, 1, generator=g, dtype=F64)
    x = S.euler_maruyama(_model(sch), xT, steps=16, generator=g)[:, 0]
    assert abs(float(x.mean()) - mean) < 4 * math.sqrt(var / n)
    assert abs(float(x.var()) - var) < 4 * var * math.sqrt(2 / n)


CASES = {
    "ddpm_beta_tilde": (S.ddpm, dict(variance="beta_tilde")),
    "ddpm_beta": (S.ddpm, dict(variance="beta")),
    "ddim_eta0": (S.ddim, dict(eta=0.0)),
    "ddim_eta1": (S.ddim, dict(eta=1.0)),
    "euler_maruyama": (S.euler_maruyama, dict()),
    "reverse_diffusion": (S.reverse_diffusion, dict()),
}


@pytest.mark.parametrize("sched", ["vplinear", "liyan"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_first_order_convergence(name, sched):
    """Error of the output variance (and mean) falls like 1/steps: slope -1 on a log-log plot."""
    sch = VPLinear() if sched == "vplinear" else LiYan()
    fn, kw = CASES[name]
    steps = [64, 128, 256, 512, 1024]
    errs = []
    for k in steps:
        mean, var = exact_output_moments(fn, sch, k, **kw)
        errs.append(abs(var - V) + abs(mean - M))
    slopes = [math.log2(errs[i] / errs[i + 1]) for i in range(len(steps) - 1)]
    assert errs[-1] < 0.02 * V, errs
    assert 0.8 < slopes[-1] < 1.2, (errs, slopes)


def test_ddpm_on_discrete_schedule_converges_to_the_continuous_limit():
    """Ho et al.'s sampler on Discrete.ddpm_linear(T): the error of the output law falls ~1/T."""
    errs = []
    for T in (125, 250, 500, 1000):
        mean, var = exact_output_moments(S.ddpm, Discrete.ddpm_linear(T), T, variance="beta")
        errs.append(abs(var - V) + abs(mean - M))
    slope = math.log2(errs[-2] / errs[-1])
    assert 0.8 < slope < 1.2, errs


@pytest.mark.slow
def test_predictor_corrector_keeps_the_langevin_bias():
    """At fixed snr the Langevin step does not shrink with the grid: the output variance stays
    inflated by about v snr^2 / (1 - snr^2) (the stationary bias of unadjusted Langevin on a
    Gaussian with Song et al.'s step rule), while smaller snr removes it."""
    sch = VPLinear()
    model = _model(sch)
    n = 100_000
    out = {}
    for snr in (0.16, 0.04):
        g = torch.Generator().manual_seed(1)
        a0, s20 = float(sch.alpha(1.0)), float(sch.sigma2(1.0))
        xT = a0 * M + math.sqrt(a0 * a0 * V + s20) * torch.randn(n, 1, generator=g, dtype=F64)
        x = S.predictor_corrector(model, xT, steps=512, snr=snr, generator=g)[:, 0]
        out[snr] = float(x.var()) - V
    se = V * math.sqrt(2 / n)
    pred = V * 0.16**2 / (1 - 0.16**2)
    assert out[0.16] > 4 * se, out  # a bias, not noise
    assert abs(out[0.16] - pred) < 0.35 * pred + 3 * se, (out, pred)
    assert out[0.04] < out[0.16] - 3 * se, out
