"""``probability_flow(trace_nodes=q)``: the divergence integrated by Gauss--Legendre inside each
accepted step of the x-only per-point solve (I46), against closed forms and the default mode."""

import math

import numpy as np
import pytest
import torch

import densityformula as df
from densityformula.likelihood import probability_flow
from densityformula.likelihood._ode import dense_output, dopri5_per_point

F64 = torch.float64
S = df.schedules.VPLinear()


def _mlp(d, width=16, depth=2, seed=0):
    return df.models.MLPDenoiser(d, S, width=width, depth=depth, seed=seed, zero_init_output=False, dtype=F64)


def _x(n, d, seed=0):
    return torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(seed))


def test_dense_output_is_order_four_and_exact_at_the_ends():
    """The continuous extension on y' = k y: exact at theta = 0 and 1 (it interpolates the step),
    error inside the step falling like h^5 (halving h divides it by ~32)."""
    k = torch.tensor([0.7, -1.3], dtype=F64)
    errs = []
    for h in (0.2, 0.1):
        seen = []

        def on_accept(idx, t0, dt, dense, seen=seen):
            th = torch.tensor([0.0, 0.37, 1.0], dtype=F64)
            v = dense(th)[..., 0]
            exact = torch.exp(k[idx][None] * (t0[None] + th[:, None] * dt[None]))
            seen.append((v - exact).abs())

        # one step of length h: atol huge so the first step is accepted whatever its error
        dopri5_per_point(lambda t, y, idx: k[idx, None] * y, torch.ones(2, 1, dtype=F64), torch.zeros(2, dtype=F64),
                         torch.full((2,), h, dtype=F64), rtol=1.0, atol=1.0, err_cols=torch.ones(1, dtype=torch.bool),
                         on_accept=on_accept)
        e = torch.stack(seen[:1])[0]
        step_end = float(e[2].max())  # the step's own y5 error (order 5 local)
        errs.append(float(e[1].max()))
        assert float(e[0].max()) == 0.0
        assert step_end < 1e-5
    assert 16 < errs[0] / errs[1] < 64, errs


def test_dense_output_function_reproduces_a_quartic_step():
    """On y' = 4 t^3 (solution t^4: a quartic) one Dormand--Prince step and its dense output are exact."""
    f = lambda t, y, idx: (4 * t**3)[:, None].to(y.dtype)  # noqa: E731
    got = []
    dopri5_per_point(f, torch.zeros(1, 1, dtype=F64), torch.zeros(1, dtype=F64), torch.ones(1, dtype=F64),
                     rtol=1.0, atol=1.0, err_cols=torch.ones(1, dtype=torch.bool),
                     on_accept=lambda idx, t0, dt, dense: got.append((t0, dt, dense)))
    t0, dt, dense = got[0]
    th = torch.linspace(0, 1, 7, dtype=F64)
    want = (t0 + th * dt) ** 4
    assert float((dense(th)[:, 0, 0] - want).abs().max()) < 1e-13
    assert callable(dense_output)


@pytest.mark.parametrize("name", ["VPLinear", "LiYan", "VE"])
def test_exact_score_reproduces_log_q(name):
    """I12 with I46: exact score, prior and trace, q = 3 nodes per step: log q_{t_min} to 1e-5 nats,
    the mean error no larger than the default mode's at the same tolerance (x 2 slack)."""
    sched = {"VPLinear": df.schedules.VPLinear(), "LiYan": df.schedules.LiYan(), "VE": df.schedules.VE()}[name]
    g = df.targets.random_gmm(2, 3, seed=3)
    m = df.models.AnalyticModel(g, sched)
    x = g.sample(40, generator=torch.Generator().manual_seed(0))
    prior = lambda xe, te: g.log_prob(xe, te, sched)  # noqa: E731
    q3 = probability_flow(m, x, rtol=1e-8, atol=1e-8, prior=prior, solver="per_point", trace_nodes=3)
    aug = probability_flow(m, x, rtol=1e-8, atol=1e-8, prior=prior, solver="per_point")
    exact = g.log_prob(x, q3.extras["t_min"], sched)
    err, err_aug = (q3.value - exact).abs(), (aug.value - exact).abs()
    assert float(err.max()) < 1e-5, float(err.max())
    assert float(err.mean()) < 2 * float(err_aug.mean()) + 1e-7
    # 3 trace evaluations per accepted step, none for rejected ones: fewer than the default's 6 per attempt
    n_tr = q3.extras["trace_evals_per_point"]
    assert bool((n_tr % 3 == 0).all()) and bool((n_tr < aug.extras["nfe_per_point"]).all())


def test_wrong_quadrature_is_seen():
    """The check discriminates: one node per step (the midpoint rule, degree 1) on a loose path is
    off by far more than q = 3 is."""
    g = df.targets.random_gmm(2, 3, seed=3)
    m = df.models.AnalyticModel(g, S)
    x = g.sample(32, generator=torch.Generator().manual_seed(1))
    prior = lambda xe, te: g.log_prob(xe, te, S)  # noqa: E731
    exact = g.log_prob(x, probability_flow(m, x[:1], prior=prior).extras["t_min"][0], S)
    e1 = (probability_flow(m, x, rtol=1e-4, atol=1e-4, prior=prior, solver="per_point", trace_nodes=1).value
          - exact).abs().mean()
    e3 = (probability_flow(m, x, rtol=1e-4, atol=1e-4, prior=prior, solver="per_point", trace_nodes=3).value
          - exact).abs().mean()
    assert float(e3) < 0.2 * float(e1), (float(e1), float(e3))


def test_network_matches_the_default_mode_and_hutchinson_stays_honest():
    """On an MLP (d = 6): q = 3 at 1e-9 equals the default exact solve at 1e-9 to 1e-6 nats; with
    Hutchinson probes (held fixed, per-point seeds) the stderr over 6 probes is honest against it."""
    d = 6
    m, x = _mlp(d, width=24, seed=2), _x(200, d, seed=5)
    ref = probability_flow(m, x, trace="exact", rtol=1e-9, atol=1e-9, solver="per_point")
    q3 = probability_flow(m, x[:20], trace="exact", rtol=1e-9, atol=1e-9, solver="per_point", trace_nodes=3)
    assert float((q3.value - ref.value[:20]).abs().max()) < 1e-6
    P = 6
    h = probability_flow(m, x, trace="hutchinson", n_probes=P, seed=3, rtol=1e-7, atol=1e-7, solver="per_point",
                         trace_nodes=3)
    from scipy import stats

    z = ((h.value - ref.value) / h.stderr).numpy()
    cover = float(np.mean(np.abs(z) < stats.t.ppf(0.975, P - 1)))
    assert abs(cover - 0.95) < 3 * math.sqrt(0.95 * 0.05 / z.size) + 0.02, cover
    assert abs(float(np.mean(z))) < 4 * math.sqrt(P / (P - 2.0)) / math.sqrt(z.size), float(np.mean(z))


def test_per_point_seeds_give_the_same_estimate_alone_and_in_a_batch():
    m, x = _mlp(4), _x(7, 4, seed=3)
    kw = dict(trace="hutchinson", n_probes=2, solver="per_point", trace_nodes=2, seed=10)
    full = probability_flow(m, x, **kw)
    alone = probability_flow(m, x[4:5], **{**kw, "seed": 14})
    assert int(alone.extras["trace_evals_per_point"][0]) == int(full.extras["trace_evals_per_point"][4])
    assert abs(float(alone.value[0]) - float(full.value[4])) < 1e-12 * abs(float(full.value[4]))


def test_gradient_matches_central_differences():
    """d/dtheta sum_i log p(x_i) through the x-only solve and the node traces (differentiable=True)."""
    m, x = _mlp(3, width=8), _x(3, 3)
    kw = dict(rtol=1e-8, atol=1e-8, solver="per_point", trace_nodes=3)
    params = list(m.parameters())
    g = torch.Generator().manual_seed(1)
    dirs = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    v = probability_flow(m, x, differentiable=True, **kw).value
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

    fd = (at(1e-5) - at(-1e-5)) / 2e-5
    assert abs(ana - fd) <= 1e-6 * abs(fd) + 1e-7, (ana, fd)
    assert abs(fd) > 1e-2


def test_bad_trace_nodes():
    m, x = _mlp(2), _x(3, 2)
    with pytest.raises(ValueError, match="trace_nodes"):
        probability_flow(m, x, trace_nodes=0, solver="per_point")
    with pytest.raises(TypeError, match="trace_nodes"):
        probability_flow(m, x, trace_nodes=2.5, solver="per_point")
    with pytest.raises(ValueError, match="trace_nodes needs solver='per_point'"):
        probability_flow(m, x, trace_nodes=3)
