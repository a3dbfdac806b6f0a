"""The score-matching regularizer of a generator equals its cross-entropy up to a constant (docs/math.md I38).

Ground truths: the exact ``log_prob`` of the target on the same generated samples (and its autograd
gradient in the generator's parameters), the closed-form cross-entropy of an affine generator against a
Gaussian target, the closed-form integral of ``sigmoid`` for the constant, autograd Jacobians and a grid
integral for the coupling generator's density.  Every statistical check is at family-wise level 1e-3
(Student t on the samples' or batches' spread), and each has a negative control that must fail.
"""
from __future__ import annotations

import math
from typing import Callable, List, Tuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from densityformula import models, schedules, targets
from densityformula.experiment.checks import t_crit
from densityformula.implications import gan

F64 = torch.float64
SETTINGS = settings(max_examples=10, deadline=None, derandomize=True)
SCHEDULES = [schedules.VPLinear(), schedules.LiYan(), schedules.VE(), schedules.VPCosine()]


def _generator(kind: str, d: int, seed: int) -> Tuple[Callable[[torch.Tensor], torch.Tensor], List[torch.Tensor]]:
    """A random small generator ``z -> x`` in float64 and its parameters (affine, or a tanh MLP)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "affine":
        A = (torch.eye(d, dtype=F64) * (0.5 + torch.rand((), generator=g, dtype=F64))
             + 0.3 * torch.randn(d, d, generator=g, dtype=F64)).requires_grad_(True)
        b = (0.8 * torch.randn(d, generator=g, dtype=F64)).requires_grad_(True)
        return (lambda z: z @ A.T + b), [A, b]
    W1 = (torch.randn(8, d, generator=g, dtype=F64)).requires_grad_(True)
    b1 = (0.3 * torch.randn(8, generator=g, dtype=F64)).requires_grad_(True)
    W2 = (0.6 * torch.randn(d, 8, generator=g, dtype=F64)).requires_grad_(True)
    b2 = (0.5 * torch.randn(d, generator=g, dtype=F64)).requires_grad_(True)
    return (lambda z: torch.tanh(z @ W1.T + b1) @ W2.T + b2 + 0.5 * z), [W1, b1, W2, b2]


def _paired_z(r: gan.RegularizerEstimate, x: torch.Tensor, gmm: targets.GaussianMixture, shift: float = 0.0) -> float:
    """``|mean_i (R_i - c - (-log q(x_i)))| / se``: the identity's z-statistic on the same samples."""
    diff = (r.per_sample.detach() - r.constant - shift + gmm.log_prob(x.detach())).double()
    return abs(float(diff.mean())) / (float(diff.std()) / math.sqrt(diff.numel()))


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 3), K=st.integers(1, 4),
       kind=st.sampled_from(["affine", "mlp"]), sched=st.sampled_from(SCHEDULES))
def test_regularizer_is_the_cross_entropy_plus_a_constant(seed: int, d: int, K: int, kind: str, sched) -> None:
    """I38 pointwise in mean: ``R_i - c`` estimates ``-log q_0(x_i)`` without bias, for random mixtures,
    generators and schedules; and a bias of 0.15 nats is detected (the control)."""
    gmm = targets.random_gmm(d, K, seed=seed % 1000)
    model = models.AnalyticModel(gmm, sched)
    G, _ = _generator(kind, d, seed)
    n = 1500
    x = G(torch.randn(n, d, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)).detach()
    r = gan.score_regularizer(model, x, n_nodes=32, n_noise=4, seed=seed % 997)
    crit = t_crit(1, n - 1)
    assert _paired_z(r, x, gmm) <= crit
    assert _paired_z(r, x, gmm, shift=0.15) > crit  # negative control: a wrong constant
    ce, se = gan.cross_entropy(gmm, x)
    assert abs(float(r.value) - r.constant - float(ce)) <= crit * r.stderr  # the means (se: samples)
    assert r.nfe == 34 * 4 and r.per_sample.shape == (n,) and r.node_means.shape == (n, 34)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 2), K=st.integers(1, 3),
       kind=st.sampled_from(["affine", "mlp"]))
def test_gradient_is_the_autograd_gradient_of_the_cross_entropy(seed: int, d: int, K: int, kind: str) -> None:
    """I38 for gradients: on the same samples, batch by batch, ``grad R`` and the autograd gradient of
    ``mean_i -log q_0(G(z_i))`` agree within their standard error over batches in every parameter; the
    gradient of a regularizer whose weights at log-SNR > 0 are 20% too large does not (the control)."""
    gmm = targets.random_gmm(d, K, seed=seed % 1000, separation=2.0)
    model = models.AnalyticModel(gmm, schedules.VPLinear())
    G, params = _generator(kind, d, seed)
    g = torch.Generator().manual_seed(seed + 7)
    B, nb = 24, 64
    good, bad = [], []
    for _ in range(B):
        x = G(torch.randn(nb, d, generator=g, dtype=F64))
        r = gan.score_regularizer(model, x, n_nodes=24, n_noise=2, generator=g)
        upper = 0.5 * (r.node_means @ (r.weights * (r.nodes > 0)).to(F64)).mean()
        ce, _ = gan.cross_entropy(gmm, x)
        g_r = torch.autograd.grad(r.value, params, retain_graph=True)
        g_u = torch.autograd.grad(upper, params, retain_graph=True)
        g_c = torch.autograd.grad(ce, params)
        flat = [torch.cat([v.flatten() for v in gg]) for gg in (g_r, g_u, g_c)]
        good.append(flat[0] - flat[2])
        bad.append(flat[0] + 0.2 * flat[1] - flat[2])
    crit = t_crit(flat[0].numel(), B - 1)

    scale = float(flat[2].abs().max())

    def zmax(rows: List[torch.Tensor]) -> float:
        # the rule's deterministic error (~1e-9 of the gradient's size) is allowed for at 1e-6
        D = torch.stack(rows)
        excess = (D.mean(0).abs() - 1e-6 * scale).clamp_min(0.0)
        return float((excess / (D.std(0) / math.sqrt(B)).clamp_min(1e-300)).max())

    assert zmax(good) <= crit
    assert zmax(bad) > crit


def test_gaussian_target_affine_generator_closed_form() -> None:
    """For ``q = N(mu, S)`` and ``G(z) = A z + b`` the cross-entropy is closed form:
    ``1/2 (d log 2 pi + log|S| + tr(S^-1 A A^T) + (b - mu)^T S^-1 (b - mu))``; ``R - c`` estimates it."""
    mu = torch.tensor([0.5, -1.0], dtype=F64)
    S = torch.tensor([[1.0, 0.4], [0.4, 0.5]], dtype=F64)
    gmm = targets.GaussianMixture([1.0], mu[None], S[None])
    A = torch.tensor([[0.7, 0.2], [-0.3, 1.1]], dtype=F64)
    b = torch.tensor([1.0, 0.5], dtype=F64)
    Si = torch.linalg.inv(S)
    exact = 0.5 * (2 * math.log(2 * math.pi) + math.log(float(torch.det(S))) + float(torch.trace(Si @ A @ A.T))
                   + float((b - mu) @ Si @ (b - mu)))
    n = 16000
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(3), dtype=F64) @ A.T + b
    for sched in (schedules.VPLinear(), schedules.VE()):
        r = gan.score_regularizer(models.AnalyticModel(gmm, sched), x, n_nodes=32, seed=4)
        crit = t_crit(1, n - 1)
        assert abs(float(r.value) - r.constant - exact) <= crit * r.stderr
        assert abs(float(r.value) - r.constant + 0.3 - exact) > crit * r.stderr  # control: 0.3 nats off


def test_constant_is_the_rule_integral_of_sigmoid() -> None:
    """``c = (d/2)(sum_j w_j sigmoid(lambda_j) - log 2 pi e)`` with the rule exact for ``sigmoid`` on
    ``[lo, hi]`` (``softplus(hi) - softplus(lo)``) plus the two tail nodes' terms in closed form."""
    gmm = targets.random_gmm(3, 2, seed=0)
    x = gmm.sample(16, generator=torch.Generator().manual_seed(0))
    for lo, hi in ((-20.0, 20.0), (-10.0, 8.0)):
        r = gan.score_regularizer(models.AnalyticModel(gmm, schedules.VPLinear()), x, n_nodes=48,
                                  lambda_range=(lo, hi))
        sp = torch.nn.functional.softplus
        lo_t, hi_t = torch.tensor(lo, dtype=F64), torch.tensor(hi, dtype=F64)
        total = (sp(hi_t) - sp(lo_t)) + sp(lo_t) + sp(-hi_t) * torch.sigmoid(hi_t) / torch.sigmoid(-hi_t)
        expected = 1.5 * (float(total) - (math.log(2 * math.pi) + 1.0))
        assert r.constant == pytest.approx(expected, abs=1e-8)
        assert gan.regularizer_constant(3, r.nodes, r.weights) == pytest.approx(r.constant, abs=1e-12)


def test_a_wrong_score_breaks_the_identity() -> None:
    """The identity needs the target's own scores: the regularizer built from a different mixture's
    scores differs from the target's cross-entropy by a generator-dependent amount (a fixed shift
    would be a constant; the two generators' differences disagree)."""
    gmm = targets.random_gmm(2, 3, seed=2)
    other = targets.random_gmm(2, 3, seed=3)
    g = torch.Generator().manual_seed(0)
    offsets = []
    for scale in (0.5, 1.5):
        x = gmm.sample(3000, generator=g) * scale
        r = gan.score_regularizer(models.AnalyticModel(other, schedules.VPLinear()), x, n_nodes=32, seed=1)
        diff = r.per_sample.detach() - r.constant + gmm.log_prob(x)
        offsets.append((float(diff.mean()), float(diff.std()) / math.sqrt(3000)))
    (m1, s1), (m2, s2) = offsets
    assert abs(m1 - m2) > t_crit(1, None) * math.hypot(s1, s2)


def test_coupling_generator_density_is_exact() -> None:
    """``log p_G`` of :class:`CouplingGenerator`: sampling and inversion agree, the log-determinant is
    the autograd Jacobian's, and the density integrates to 1 on a grid."""
    G = gan.CouplingGenerator(4, 16, init_scale=1.5, seed=3, dtype=F64)
    with torch.no_grad():  # move away from the identity so the test sees a nonlinear map
        for p in G.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=F64))
    x, lp = G.sample(200, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(G.log_prob(x), lp, atol=1e-9)
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    _, log_det = G.forward_and_log_det(z)
    for i in range(5):
        J = torch.autograd.functional.jacobian(lambda v: G(v[None])[0], z[i])
        assert float(torch.det(J).abs().log()) == pytest.approx(float(log_det[i].detach()), abs=1e-9)
    # the density's integral over a box equals the share of samples in it (binomial se; midpoint grid)
    m, half = 500, 4.0
    g1 = -half + (torch.arange(m, dtype=F64) + 0.5) * (2 * half / m)
    X, Y = torch.meshgrid(g1, g1, indexing="ij")
    with torch.no_grad():
        dens = G.log_prob(torch.stack([X.flatten(), Y.flatten()], 1)).exp()
        xs, _ = G.sample(200000, generator=torch.Generator().manual_seed(5))
    mass = float(dens.sum()) * (2 * half / m) ** 2
    share = float((xs.abs().max(1).values <= half).double().mean())
    assert 0.2 < share < 0.98
    assert abs(mass - share) <= 4 * math.sqrt(share * (1 - share) / 200000) + 1e-3
    assert abs(mass - share + 0.01) > 4 * math.sqrt(share * (1 - share) / 200000) + 1e-3  # control: 1% off


def test_mode_coverage() -> None:
    """Exact draws of a ring cover every mode with ``P(chi2_2 <= 9) = 1 - e^-4.5`` of them on a mode;
    draws from one component cover one mode of eight."""
    K = 8
    ang = torch.arange(K, dtype=F64) * 2 * math.pi / K
    ring = targets.GaussianMixture(torch.full((K,), 1 / K), 3 * torch.stack([ang.cos(), ang.sin()], 1),
                                   torch.full((K,), 0.0625))
    x = ring.sample(20000, generator=torch.Generator().manual_seed(0))
    cov = gan.mode_coverage(ring, x, min_share=1 / (4 * K))
    assert cov["coverage"] == 1.0
    p = 1 - math.exp(-4.5)
    assert abs(cov["on_mode"] - p) <= 4 * math.sqrt(p * (1 - p) / 20000)
    one = ring.means[2] + 0.25 * torch.randn(5000, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    cov1 = gan.mode_coverage(ring, one, min_share=1 / (4 * K))
    assert cov1["coverage"] == 1 / K and bool(cov1["covered"][2])


def test_bad_arguments_raise() -> None:
    gmm = targets.random_gmm(2, 2, seed=0)
    model = models.AnalyticModel(gmm, schedules.VPLinear())
    x = gmm.sample(8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        gan.score_regularizer(model, x.numpy())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n >= 2"):
        gan.score_regularizer(model, x[:1])
    with pytest.raises(ValueError, match="NaN"):
        gan.score_regularizer(model, torch.full((4, 2), math.nan, dtype=F64))
    with pytest.raises(ValueError, match="n_noise must be even"):
        gan.score_regularizer(model, x, n_noise=3)
    with pytest.raises(ValueError, match="n_nodes"):
        gan.score_regularizer(model, x, n_nodes=4)
    with pytest.raises(ValueError, match="lambda_range"):
        gan.score_regularizer(model, x, lambda_range=(3.0, -3.0))
    with pytest.raises(ValueError, match="either generator or seed"):
        gan.score_regularizer(model, x, seed=1, generator=torch.Generator())
    with pytest.raises(TypeError, match="model"):
        gan.score_regularizer(object(), x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_share"):
        gan.mode_coverage(gmm, x, min_share=0.0)
    with pytest.raises(TypeError, match="target"):
        gan.cross_entropy(object(), x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="z must be"):
        gan.CouplingGenerator(2, 4).forward_and_log_det(torch.zeros(3, 3))
