"""Traces of networks for the probability-flow likelihood (I12, I20): the torch.func exact trace,
Hutch++ and per-point probe seeds, and gradients of the likelihood with respect to parameters."""

import math

import numpy as np
import pytest
import torch

import densityformula as df
from densityformula.likelihood import pf_velocity, probability_flow
from densityformula.models import DiffusionModel

F64 = torch.float64
S = df.schedules.VPLinear()


def _mlp(d, width=16, depth=2, dtype=F64, seed=0):
    return df.models.MLPDenoiser(d, S, width=width, depth=depth, seed=seed, zero_init_output=False, dtype=dtype)


def _x(n, d, seed=0):
    return torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(seed))


class NumpyDenoiser(DiffusionModel):
    """A denoiser that leaves torch for numpy (torch.func cannot transform it): the exact trace
    must fall back to autograd passes, and must still be exact."""

    def __init__(self, d):
        self.schedule = S
        self.A = torch.linspace(0.2, 0.9, d * d, dtype=F64).reshape(d, d)

    def denoise(self, x_t, t):
        shift = torch.from_numpy(np.zeros(x_t.shape)).to(x_t) if x_t.detach().numpy().size else 0.0
        return torch.tanh(x_t @ self.A) + shift


@pytest.mark.parametrize("d,dtype", [(2, F64), (64, F64), (64, torch.float32)])
def test_func_trace_equals_autograd_passes(d, dtype):
    """trace='func' (vmapped vjp over the basis) equals the d sequential autograd passes to rounding."""
    m = _mlp(d, width=32, depth=3, dtype=dtype)
    x, lam = _x(9, d), torch.linspace(-6.0, 8.0, 9, dtype=F64)
    F_a, div_a = pf_velocity(m, x, lam, trace="autograd")
    F_f, div_f = pf_velocity(m, x, lam, trace="func")
    F_e, div_e = pf_velocity(m, x, lam, trace="exact")
    tol = 1e-12 if dtype == F64 else 1e-5
    scale = float(div_a.abs().max()) + 1.0
    assert float((div_a - div_f).abs().max()) < tol * scale * d
    assert torch.equal(div_f, div_e) and torch.equal(F_f, F_e)  # "exact" takes the func path
    assert float((F_a - F_f).abs().max()) < tol * 10


def test_exact_falls_back_to_autograd_when_func_cannot_transform():
    m = NumpyDenoiser(3)
    x, lam = _x(5, 3), torch.tensor(0.5, dtype=F64)
    with pytest.raises((RuntimeError, NotImplementedError)):
        pf_velocity(m, x, lam, trace="func")
    _, div_e = pf_velocity(m, x, lam, trace="exact")
    _, div_a = pf_velocity(m, x, lam, trace="autograd")
    assert torch.allclose(div_e, div_a, rtol=0, atol=1e-13)


def test_exact_likelihood_of_mlp_equals_autograd_reference():
    """The whole solve with the func trace takes the same steps as with the autograd trace and
    gives the same log-density to float rounding (float64 network)."""
    m, x = _mlp(5), _x(12, 5)
    a = probability_flow(m, x, trace="autograd")
    e = probability_flow(m, x, trace="exact")
    assert a.nfe == e.nfe
    assert float((a.value - e.value).abs().max()) < 1e-10


def _z_checks(err, se, n_probes):
    """err/se of a mean of n_probes probes: Student t with n_probes - 1 degrees of freedom when
    the per-probe estimates are ~ normal; its 95% interval must cover about 95% of points."""
    from scipy import stats

    z = (err / se).numpy()
    q = stats.t.ppf(0.975, n_probes - 1)
    cover = float(np.mean(np.abs(z) < q))
    n = z.size
    tol = 3 * math.sqrt(0.95 * 0.05 / n) + 0.02  # 3 binomial SE + slack for non-normal probes
    assert abs(cover - 0.95) < tol, (cover, n)
    assert abs(float(np.mean(z))) < 4 * math.sqrt(n_probes / (n_probes - 2.0)) / math.sqrt(n), float(np.mean(z))
    spread = float(np.std(z)) / math.sqrt((n_probes - 1) / (n_probes - 3))
    assert 0.8 < spread < 1.25, spread


@pytest.mark.parametrize("trace,kw", [("hutchinson", {}), ("hutchpp", dict(sketch_size=3))])
def test_stochastic_traces_have_honest_standard_errors(trace, kw):
    """Over 300 points, (estimate - exact) / stderr has the spread of Student t_(P-1) and its 95%
    intervals cover ~95% (the exact trace is the reference: same model, same interval)."""
    d, P = 8, 8
    m, x = _mlp(d, width=24, seed=2), _x(300, d, seed=5)
    exact = probability_flow(m, x, trace="exact", rtol=1e-6, atol=1e-6)
    est = probability_flow(m, x, trace=trace, n_probes=P, seed=11, rtol=1e-6, atol=1e-6, **kw)
    assert bool((est.stderr > 0).all())
    _z_checks(est.value - exact.value, est.stderr, P)


def test_hutchpp_beats_hutchinson_and_is_exact_when_the_sketch_spans():
    d, P = 8, 8
    m, x = _mlp(d, width=24, seed=2), _x(40, d, seed=5)
    h = probability_flow(m, x, trace="hutchinson", n_probes=P, seed=1)
    hpp = probability_flow(m, x, trace="hutchpp", n_probes=P, sketch_size=4, seed=1)
    assert float(hpp.stderr.mean()) < 0.8 * float(h.stderr.mean())
    full = probability_flow(m, x, trace="hutchpp", n_probes=2, sketch_size=d, seed=1)  # Q spans R^d
    ex = probability_flow(m, x, trace="exact")
    assert float(full.stderr.max()) < 1e-9
    assert float((full.value - ex.value).abs().max()) < 1e-4  # solver tolerance (different steps)


@pytest.mark.parametrize("trace", ["hutchinson", "hutchpp"])
def test_per_point_seeds_batch_invariance(trace):
    """With per-point seeds and solver='per_point' a point's estimate is identical alone and in a
    batch of 7; an int seed s gives point i the seed s + i."""
    m, x = _mlp(4), _x(7, 4, seed=3)
    seeds = torch.tensor([5, 17, 2, 99, 40, 3, 8])
    kw = dict(trace=trace, n_probes=3, solver="per_point")
    full = probability_flow(m, x, seed=seeds, **kw)
    for i in (0, 3, 6):
        alone = probability_flow(m, x[i : i + 1], seed=[int(seeds[i])], **kw)
        # same probes and same steps; the network's matmuls round differently for 1 row and for 7
        # (BLAS kernels chosen by shape), so equality is to float64 rounding, not bitwise
        assert int(alone.extras["nfe_per_point"][0]) == int(full.extras["nfe_per_point"][i])
        assert abs(float(alone.value[0]) - float(full.value[i])) < 1e-12 * abs(float(full.value[i]))
        assert abs(float(alone.stderr[0]) - float(full.stderr[i])) < 1e-12
    shifted = probability_flow(m, x[2:5], seed=12, **kw)
    base = probability_flow(m, x, seed=10, **kw)
    assert torch.allclose(shifted.value, base.value[2:5], rtol=1e-13, atol=0)
    other = probability_flow(m, x, seed=seeds + 1, **kw)
    assert float((other.value - full.value).abs().min()) > 1e-8  # the seeds matter


def test_bad_trace_arguments():
    m, x = _mlp(2), _x(3, 2)
    with pytest.raises(ValueError, match="generator or seed"):
        probability_flow(m, x, trace="hutchinson", seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="seed"):
        probability_flow(m, x, trace="hutchinson", seed=[1, 2])
    with pytest.raises(TypeError, match="seed"):
        probability_flow(m, x, trace="hutchinson", seed=torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="seed"):
        probability_flow(m, x, trace="hutchinson", seed=-1)
    with pytest.raises(ValueError, match="sketch_size"):
        probability_flow(m, x, trace="hutchpp", sketch_size=0)
    with pytest.raises(TypeError, match="differentiable"):
        probability_flow(m, x, differentiable="yes")
    with pytest.raises(ValueError, match="trace"):
        probability_flow(m, x, trace="hutch")
    with pytest.raises(ValueError, match="sketch"):
        pf_velocity(m, x, torch.tensor(0.0, dtype=F64), trace="hutchpp", probes=torch.ones(1, 3, 2))


def _directional(m, x, kw, h=1e-5, seed=1):
    params = list(m.parameters())
    g = torch.Generator().manual_seed(seed)
    dirs = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    v = probability_flow(m, x, differentiable=True, **kw).value
    assert v.requires_grad
    grads = torch.autograd.grad(v.sum(), params)
    ana = float(sum((a * b).sum() for a, b in zip(grads, dirs)))

    def at(s):
        with torch.no_grad():
            for p, dd in zip(params, dirs):
                p.add_(s * dd)
        out = float(probability_flow(m, x, **kw).value.sum())
        with torch.no_grad():
            for p, dd in zip(params, dirs):
                p.sub_(s * dd)
        return out

    return ana, (at(h) - at(-h)) / (2 * h)


@pytest.mark.parametrize(
    "solver,trace,kw,rel",
    [
        ("per_point", "exact", {}, 1e-6),
        ("per_point", "hutchpp", dict(n_probes=2, sketch_size=1, seed=0), 1e-6),
        # the batch solver's shared step (a max over points) is not differentiated exactly by
        # torchdiffeq: agreement to the solver tolerance, not to finite-difference precision
        ("batch", "exact", {}, 1e-4),
    ],
)
def test_likelihood_gradient_matches_central_differences(solver, trace, kw, rel):
    """d/dtheta of sum_i log p(x_i) along a random parameter direction: autograd through the
    solve (differentiable=True) against central finite differences of the same solve (float64)."""
    m, x = _mlp(3, width=8), _x(3, 3)
    ana, fd = _directional(m, x, dict(rtol=1e-8, atol=1e-8, trace=trace, solver=solver, **kw))
    assert abs(ana - fd) <= rel * abs(fd) + 1e-7, (ana, fd)
    assert abs(fd) > 1e-2  # the direction matters: the test can see a zero or wrong gradient


def test_value_detached_by_default():
    m, x = _mlp(2), _x(3, 2)
    assert not probability_flow(m, x).value.requires_grad
