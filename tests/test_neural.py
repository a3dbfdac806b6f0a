"""Neural and affine models behind the DiffusionModel interface (docs/math.md section 2, I1, I3, I14)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from densityformula import parameterization as P
from densityformula import schedules, targets
from densityformula.models import AnalyticModel, DiffusionModel
from densityformula.neural import (
    AffineDenoiser,
    ConditionalMLPDenoiser,
    ConditionedModel,
    MLPDenoiser,
    log_snr_embedding,
)

KINDS = ("eps", "x0", "v", "score")
F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _model(kind: str, schedule=None, **kw) -> MLPDenoiser:
    schedule = schedule if schedule is not None else schedules.VPLinear()
    kw.setdefault("width", 16)
    kw.setdefault("depth", 2)
    return MLPDenoiser(3, schedule, parameterization=kind, dtype=F64, zero_init_output=False, seed=3, **kw)


def _batch(n: int = 7, d: int = 3, seed: int = 0, t_lo: float = 0.05, t_hi: float = 0.95):
    g = _gen(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    t = t_lo + (t_hi - t_lo) * torch.rand(n, generator=g, dtype=F64)
    return x, t


# -- the one conversion round-trips (docs/math.md section 2) ---------------------------------------------


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    kind=st.sampled_from(KINDS),
    a=st.floats(0.05, 1.0),
    s=st.floats(0.05, 1.0),
    seed=st.integers(0, 10_000),
)
def test_parameterization_round_trip(kind, a, s, seed):
    g = _gen(seed)
    x0 = torch.randn(5, 3, generator=g, dtype=F64)
    eps = torch.randn(5, 3, generator=g, dtype=F64)
    x_t = a * x0 + s * eps
    out = P.from_x0(kind, x0, x_t, a, s)
    torch.testing.assert_close(P.to_x0(kind, out, x_t, a, s), x0, rtol=1e-10, atol=1e-10)
    # at the true x0 every parameterization takes its defining value (docs/math.md section 2)
    expected = {"x0": x0, "eps": eps, "score": -eps / s, "v": a * eps - s * x0}[kind]
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_mlp_predictions_are_consistent_conversions(kind):
    """Every view of one network agrees with the hand-written formulas of docs/math.md section 2."""
    sch = schedules.VPLinear()
    m = _model(kind, sch)
    x, t = _batch()
    a, s = sch.alpha(t)[:, None], sch.sigma(t)[:, None]
    D, eps, score, v = m.denoise(x, t), m.eps(x, t), m.score(x, t), m.v(x, t)
    torch.testing.assert_close(eps, (x - a * D) / s, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(score, -(x - a * D) / s**2, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(v, a * eps - s * D, rtol=1e-9, atol=1e-9)
    native = {"eps": eps, "x0": D, "v": v, "score": score}[kind]
    assert torch.equal(m(x, t), native)  # the raw output is returned untouched
    for other in KINDS:
        torch.testing.assert_close(P.to_x0(other, m.predict(x, t, other), x, a[:, 0], s[:, 0]), D, rtol=1e-9, atol=1e-9)


def test_eps_network_score_is_direct_where_alpha_vanishes():
    """LiYan at t = 1 has alpha = 0: an eps-network's eps and score stay finite (I1: s = -eps/sigma)."""
    m = _model("eps", schedules.LiYan())
    x, _ = _batch()
    t = torch.ones(x.shape[0], dtype=F64)
    eps = m.eps(x, t)
    assert torch.isfinite(eps).all()
    torch.testing.assert_close(m.score(x, t), -eps, rtol=0, atol=0)  # sigma(1) = 1


def test_is_a_diffusion_model_and_module():
    for m in (_model("eps"), AffineDenoiser(2, schedules.Discrete.ddpm_linear(50))):
        assert isinstance(m, DiffusionModel) and isinstance(m, torch.nn.Module)
    c = ConditionalMLPDenoiser(2, schedules.LiYan(), num_classes=3, width=8, depth=1)
    assert isinstance(c.given(1), DiffusionModel)


def test_scalar_and_per_point_time_agree_and_points_do_not_couple():
    m = _model("eps")
    x, _ = _batch(n=6)
    full = m.denoise(x, 0.3)
    torch.testing.assert_close(full, m.denoise(x, torch.full((6,), 0.3, dtype=F64)), rtol=0, atol=0)
    singles = torch.cat([m.denoise(x[i : i + 1], 0.3) for i in range(6)])
    torch.testing.assert_close(full, singles, rtol=1e-12, atol=1e-12)


def test_denoise_is_differentiable_and_autograd_matches_finite_differences():
    m = _model("v")
    x, t = _batch(n=3)
    x = x.requires_grad_(True)
    D = m.denoise(x, t)
    (g,) = torch.autograd.grad(D[:, 0].sum(), x)
    h = 1e-6
    e0 = torch.zeros_like(x)
    e0[:, 1] = h
    with torch.no_grad():
        fd = (m.denoise(x + e0, t)[:, 0] - m.denoise(x - e0, t)[:, 0]) / (2 * h)
    torch.testing.assert_close(g[:, 1], fd, rtol=1e-6, atol=1e-8)


def test_seed_determines_initialisation_without_global_rng():
    sch = schedules.LiYan()
    state = torch.random.get_rng_state()
    a = MLPDenoiser(2, sch, width=8, depth=2, seed=5, zero_init_output=False)
    ConditionalMLPDenoiser(2, sch, num_classes=4, width=8, depth=2, seed=5)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    b = MLPDenoiser(2, sch, width=8, depth=2, seed=5, zero_init_output=False)
    c = MLPDenoiser(2, sch, width=8, depth=2, seed=6, zero_init_output=False)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_zero_init_output_means_zero_prediction():
    m = MLPDenoiser(2, schedules.VPLinear(), width=8, depth=2, parameterization="eps")
    x = torch.randn(4, 2, generator=_gen(1))
    assert torch.equal(m.eps(x, 0.5), torch.zeros_like(x))


def test_log_snr_embedding_is_finite_at_infinite_log_snr():
    lam = torch.tensor([-math.inf, -50.0, 0.0, 50.0, math.inf], dtype=F64)
    e = log_snr_embedding(lam, 9)
    assert e.shape == (5, 9) and torch.isfinite(e).all()
    torch.testing.assert_close(e[0], e[1]) and torch.testing.assert_close(e[3], e[4])
    assert not torch.allclose(e[1], e[2])


def test_mlp_works_on_every_schedule_and_the_ve_input_is_rescaled():
    all_schedules = (
        schedules.LiYan(), schedules.VPCosine(), schedules.SubVP(), schedules.VE(), schedules.Discrete.ddpm_cosine(100)
    )
    for sch in all_schedules:
        m = MLPDenoiser(2, sch, width=8, depth=2, zero_init_output=False)
        x = torch.randn(5, 2, generator=_gen(2)) * float(sch.sigma(sch.t_max)) + 0.1
        t = torch.linspace(sch.t_min + 0.1, sch.t_max, 5, dtype=F64)
        out = m.eps(x, t)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"parameterization": "noise"}, ValueError),
        ({"width": 0}, ValueError),
        ({"depth": 1.5}, TypeError),
        ({"data_std": -1.0}, ValueError),
        ({"dtype": torch.int32}, TypeError),
        ({"embed_dim": 2}, ValueError),
    ],
)
def test_mlp_bad_constructor_arguments(kwargs, exc):
    with pytest.raises(exc):
        MLPDenoiser(2, schedules.LiYan(), **kwargs)


def test_mlp_bad_call_arguments():
    m = MLPDenoiser(2, schedules.LiYan(), width=8, depth=1)
    with pytest.raises(TypeError, match="schedule"):
        MLPDenoiser(2, "LiYan")
    with pytest.raises(ValueError, match="x_t"):
        m.denoise(torch.zeros(3, 5), 0.5)
    with pytest.raises(ValueError, match="t"):
        m.denoise(torch.zeros(3, 2), 1.5)
    with pytest.raises(ValueError, match="t"):
        m.denoise(torch.zeros(3, 2), torch.tensor([0.1, float("nan"), 0.2]))
    with pytest.raises(ValueError, match="t"):
        m.denoise(torch.zeros(3, 2), torch.rand(4))
    with pytest.raises(ValueError, match="kind"):
        m.predict(torch.zeros(3, 2), 0.5, "mean")


# -- conditional --------------------------------------------------------------------------------


def test_conditional_labels_matter_and_given_binds_them():
    c = ConditionalMLPDenoiser(
        2, schedules.LiYan(), num_classes=3, width=16, depth=2, zero_init_output=False, dtype=F64
    )
    x, t = _batch(n=4, d=2)
    d0, d1 = c.denoise(x, t, y=0), c.denoise(x, t, y=torch.tensor([1, 1, 1, 1]))
    assert not torch.allclose(d0, d1)
    assert torch.equal(c.given(1).denoise(x, t), d1)
    assert torch.equal(c.given(torch.tensor([1, 1, 1, 1])).eps(x, t), c.eps(x, t, y=1))
    assert torch.equal(c.denoise(x, t), c.denoise(x, t, y=-1))  # None is the "no condition" token
    mixed = c.denoise(x, t, y=torch.tensor([0, 1, 0, 1]))
    torch.testing.assert_close(mixed[::2], d0[::2], rtol=0, atol=0)
    torch.testing.assert_close(mixed[1::2], d1[1::2], rtol=0, atol=0)
    with pytest.raises(ValueError, match="y"):
        c.denoise(x, t, y=3)
    with pytest.raises(TypeError, match="y"):
        c.denoise(x, t, y=torch.tensor([0.5] * 4))
    with pytest.raises(ValueError, match="y"):
        c.given(torch.tensor([0, 1])).denoise(x, t)


def test_conditional_vector():
    c = ConditionalMLPDenoiser(2, schedules.LiYan(), cond_dim=3, width=8, depth=2, zero_init_output=False)
    x = torch.randn(4, 2, generator=_gen(0))
    z = torch.randn(3, generator=_gen(1))
    out = c.denoise(x, 0.4, y=z)
    assert torch.equal(out, c.denoise(x, 0.4, y=z[None].expand(4, 3)))
    assert not torch.allclose(out, c.denoise(x, 0.4))
    with pytest.raises(ValueError, match="y"):
        c.denoise(x, 0.4, y=torch.randn(4, 2))
    with pytest.raises(ValueError, match="exactly one"):
        ConditionalMLPDenoiser(2, schedules.LiYan(), num_classes=3, cond_dim=2)
    with pytest.raises(TypeError):
        ConditionedModel(MLPDenoiser(2, schedules.LiYan()), 1)


# -- affine (I14 setting) -----------------------------------------------------------------------


def test_affine_from_gaussian_is_the_exact_posterior_mean():
    """I3 with K = 1 at every integer step, against the analytic model."""
    sch = schedules.Discrete.ddpm_linear(T=50)
    S = torch.tensor([[2.0, 0.5, 0.1], [0.5, 1.0, -0.2], [0.1, -0.2, 0.7]], dtype=F64)
    mu = torch.tensor([0.3, -1.0, 2.0], dtype=F64)
    aff = AffineDenoiser.from_gaussian(mu, S, sch)
    exact = AnalyticModel(targets.Gaussian(mu, S), sch)
    g = _gen(0)
    x = torch.randn(51, 3, generator=g, dtype=F64)
    k = torch.arange(51, dtype=F64)
    torch.testing.assert_close(aff.denoise(x, k), exact.denoise(x, k), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(aff.eps(x[1:], k[1:]), exact.eps(x[1:], k[1:]), rtol=1e-9, atol=1e-9)


def test_affine_identity_init_predicts_zero_noise_and_rejects_fractional_steps():
    sch = schedules.Discrete.ddpm_linear(T=40)
    aff = AffineDenoiser(2, sch)
    x = torch.randn(5, 2, generator=_gen(0), dtype=F64)
    k = torch.tensor([1.0, 5.0, 10.0, 20.0, 40.0], dtype=F64)
    torch.testing.assert_close(aff.eps(x, k), torch.zeros_like(x), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="integer"):
        aff.denoise(x, 2.5)
    with pytest.raises(ValueError, match="t"):
        aff.denoise(x, 41.0)
    with pytest.raises(TypeError, match="Discrete"):
        AffineDenoiser(2, schedules.LiYan())
    with pytest.raises(ValueError, match="init"):
        AffineDenoiser(2, sch, init="random")
    with pytest.raises(ValueError, match="x_t"):
        aff.denoise(torch.zeros(3, 4, dtype=F64), 1.0)
    assert sum(p.numel() for p in aff.parameters()) == 41 * (4 + 2)
