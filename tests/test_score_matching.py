"""Score matching on the noisy marginals q_t (docs/math.md I43): DSM, ISM (exact and Hutchinson), SSM and
ESM differ by model-independent constants, the probe estimators are unbiased, each is minimized by the
true score, and the trainer runs on them.

Tolerances.  Every Monte-Carlo identity is checked as ``|mean(D) - c| <= Z se`` with ``D`` the per-sample
difference of two objectives on the same draws (common random numbers), ``se = std(D) / sqrt(n)`` and
``Z = 5`` (two-sided normal tail 6e-7 per check; a few hundred checks over the hypothesis examples keep
the family-wise false-alarm rate below 1e-3).  The negative controls are sized so that the same check
fails with z well above Z.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from densityformula import schedules, targets
from densityformula.models import AnalyticModel, DiffusionModel
from densityformula.neural import MLPDenoiser
from densityformula.training import (
    DenoisingScoreMatching,
    ExplicitScoreMatching,
    ImplicitScoreMatching,
    NoisyBatch,
    ScoreLoss,
    SlicedScoreMatching,
    TimeAverage,
    Trainer,
    UniformTime,
    WeightedLoss,
    draw_probes,
    score_and_divergence,
    score_and_hutchinson,
)

F64 = torch.float64
VP = schedules.VPLinear()
Z = 5.0


def _batch(gmm: targets.GaussianMixture, n: int, t: float, seed: int, schedule: schedules.Schedule = VP
           ) -> NoisyBatch:
    g = torch.Generator().manual_seed(seed)
    x0 = gmm.sample(n, generator=g)
    return NoisyBatch.make(schedule, x0, torch.full((n,), t, dtype=F64), torch.randn(x0.shape, generator=g, dtype=F64))


def _net(d: int, seed: int, schedule: schedules.Schedule = VP) -> MLPDenoiser:
    return MLPDenoiser(d, schedule, width=16, depth=2, embed_dim=8, dtype=F64, seed=seed, zero_init_output=False)


def _z(diff: torch.Tensor, const: float = 0.0) -> float:
    """``(mean(diff) - const) / se``."""
    diff = diff.detach()
    se = float(diff.std()) / math.sqrt(diff.numel())
    excess = float(diff.mean()) - const
    if se == 0.0:  # an identity that holds per sample (ESM's gradient at the true score)
        return 0.0 if abs(excess) < 1e-12 else math.copysign(math.inf, excess)
    return excess / se


def _true_sq(gmm: targets.GaussianMixture, batch: NoisyBatch) -> torch.Tensor:
    return (gmm.score(batch.x_t, batch.t, VP) ** 2).sum(1)


MIXTURES = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(0, 10_000))


# -- the constants -----------------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(mix=MIXTURES, net_seeds=st.tuples(st.integers(0, 1000), st.integers(1001, 2000)),
       t=st.floats(0.05, 0.9))
def test_dsm_ism_esm_differ_by_model_independent_constants(mix, net_seeds, t):
    """I43: E[DSM] - E[ISM] = d, E[ESM] - E[ISM] = sigma^2 E||s*||^2, E[DSM] - E[ESM] = d - sigma^2 E||s*||^2,
    for random mixtures and random networks; the DSM - ISM difference of two networks agrees."""
    d, K, seed = mix
    gmm = targets.random_gmm(d, K, seed=seed)
    batch = _batch(gmm, 3000, t, seed + 1)
    s2 = float(VP.sigma2(t))
    star = s2 * _true_sq(gmm, batch)
    diffs = []
    for ns in net_seeds:
        net = _net(d, ns)
        dsm = DenoisingScoreMatching()(net, batch)
        ism = ImplicitScoreMatching()(net, batch)
        esm = ExplicitScoreMatching(gmm)(net, batch)
        assert abs(_z(dsm - ism, d)) < Z
        assert abs(_z(esm - ism - star)) < Z
        assert abs(_z(dsm - esm + star, d)) < Z
        diffs.append((dsm - ism).detach())
    assert abs(_z(diffs[0] - diffs[1])) < Z


def test_the_constant_checks_fail_on_a_wrong_constant_or_divergence():
    """Negative controls of the test above: a constant off by 0.2, a divergence scaled by 0.8, the exact score
    of another mixture in ESM (each z > 2 Z)."""
    gmm = targets.random_gmm(2, 3, seed=3)
    batch = _batch(gmm, 20_000, 0.2, 4)
    net = _net(2, 5)
    dsm = DenoisingScoreMatching()(net, batch).detach()
    s, div = score_and_divergence(net, batch)
    s2 = float(VP.sigma2(0.2))
    ism = s2 * ((s**2).sum(1) + 2 * div).detach()
    assert abs(_z(dsm - ism, 2.0)) < Z
    assert abs(_z(dsm - ism, 2.2)) > 2 * Z
    # a divergence scaled by 0.8, on the exact model (where E[sigma^2 div s] = -sigma^2 E||s*||^2 is large)
    exact = AnalyticModel(gmm, VP)
    s, div = score_and_divergence(exact, batch)
    dsm_exact = DenoisingScoreMatching()(exact, batch).detach()
    right = s2 * ((s**2).sum(1) + 2 * div).detach()
    wrong = s2 * ((s**2).sum(1) + 2 * 0.8 * div).detach()
    assert abs(_z(dsm_exact - right, 2.0)) < Z
    assert abs(_z(dsm_exact - wrong, 2.0)) > 2 * Z
    # ESM against a perturbed exact score: the difference to ISM is no longer sigma^2 ||s*||^2
    star = s2 * _true_sq(gmm, batch)
    esm_bad = ExplicitScoreMatching(targets.random_gmm(2, 3, seed=99))(net, batch).detach()
    assert abs(_z(esm_bad - ism - star)) > 2 * Z


def test_unscaled_objectives_differ_by_d_over_sigma2_and_dsm_is_score_loss():
    gmm = targets.random_gmm(2, 2, seed=1)
    batch = _batch(gmm, 4000, 0.4, 2)
    net = _net(2, 3)
    s2 = float(VP.sigma2(0.4))
    torch.testing.assert_close(DenoisingScoreMatching()(net, batch), ScoreLoss()(net, batch), rtol=1e-12, atol=0)
    raw_dsm = DenoisingScoreMatching(sigma2_weight=False)(net, batch)
    torch.testing.assert_close(raw_dsm * s2, ScoreLoss()(net, batch), rtol=1e-12, atol=0)
    raw_ism = ImplicitScoreMatching(sigma2_weight=False)(net, batch)
    assert abs(_z(raw_dsm - raw_ism, 2.0 / s2)) < Z


@pytest.mark.parametrize("schedule", [schedules.VE(), schedules.VPCosine(), schedules.SubVP(), schedules.LiYan()],
                         ids=lambda s: type(s).__name__)
def test_the_constants_hold_under_every_schedule(schedule):
    """I43 for any schedule: E[DSM] - E[ISM] = d and E[ESM] - E[ISM] = sigma^2 E||s*||^2 (5 se)."""
    gmm = targets.random_gmm(2, 3, seed=8)
    t = 0.5 * (schedule.t_min + schedule.t_max) if math.isfinite(schedule.t_max) else 1.0
    batch = _batch(gmm, 4000, t, 9, schedule)
    net = _net(2, 10, schedule)
    s2 = float(schedule.sigma2(torch.tensor(t, dtype=F64)))
    star = s2 * (gmm.score(batch.x_t, batch.t, schedule) ** 2).sum(1)
    ism = ImplicitScoreMatching()(net, batch)
    assert abs(_z(DenoisingScoreMatching()(net, batch) - ism, 2.0)) < Z
    esm = ExplicitScoreMatching(gmm)(net, batch)
    assert abs(_z(esm - ism - star)) < Z
    torch.testing.assert_close(esm, ExplicitScoreMatching(AnalyticModel(gmm, schedule))(net, batch), rtol=1e-9,
                               atol=1e-12)


def test_through_weighted_loss_the_objectives_are_rho_over_p_times_err():
    """WeightedLoss (the checked call path the trainer takes on its first batch) keeps the x-gradient the
    divergence needs: its value is rho/p times the objective called directly (I22, I23)."""
    gmm = targets.random_gmm(2, 2, seed=4)
    net = _net(2, 1)
    x0 = gmm.sample(64, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.1, 0.9, 64, dtype=F64)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    sampler = UniformTime(VP, (0.05, 1.0))
    batch = NoisyBatch.make(VP, x0, t, noise)
    # rho / p = (1 / 0.95) / (1 / 0.95) = 1 for TimeAverage over UniformTime
    loss = WeightedLoss(ImplicitScoreMatching(), TimeAverage(), sampler)(net, x0, t=t, noise=noise)
    torch.testing.assert_close(loss, ImplicitScoreMatching()(net, batch), rtol=1e-12, atol=1e-12)
    # the sliced loss draws its probes from its own generator: the same seed gives the same probes
    loss = WeightedLoss(SlicedScoreMatching(seed=3), TimeAverage(), sampler)(net, x0, t=t, noise=noise)
    torch.testing.assert_close(loss, SlicedScoreMatching(seed=3)(net, batch), rtol=1e-12, atol=1e-12)


# -- the divergence and its estimators ------------------------------------------------------------------
def test_exact_divergence_against_the_closed_form_and_finite_differences():
    """score_and_divergence: the mixture's closed-form divergence (I4), and central differences for a network."""
    gmm = targets.random_gmm(3, 3, seed=2)
    batch = _batch(gmm, 64, 0.3, 1)
    _, div = score_and_divergence(AnalyticModel(gmm, VP), batch)
    torch.testing.assert_close(div.detach(), gmm.score_divergence(batch.x_t, batch.t, VP), rtol=1e-9, atol=1e-9)
    net = _net(3, 4)
    _, div = score_and_divergence(net, batch)
    # central differences, h = 1e-4 in float64: truncation O(h^2) ~ 1e-8, rounding ~ 1e-16 / h
    h, fd = 1e-4, torch.zeros(64, dtype=F64)
    with torch.no_grad():
        for i in range(3):
            e = torch.zeros(3, dtype=F64)
            e[i] = h
            fd += (net.score(batch.x_t + e, batch.t)[:, i] - net.score(batch.x_t - e, batch.t)[:, i]) / (2 * h)
    torch.testing.assert_close(div.detach(), fd, rtol=1e-6, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(mix=MIXTURES, net_seed=st.integers(0, 1000), t=st.floats(0.05, 0.9),
       kind=st.sampled_from(["rademacher", "gaussian"]), m=st.integers(1, 3))
def test_hutchinson_and_sliced_are_unbiased_for_ism(mix, net_seed, t, kind, m):
    """I43: E_v[v^T J v] = tr J and E_v[(v^T s)^2] = ||s||^2, so Hutchinson ISM and SSM are unbiased for ISM;
    SSM-VR is Hutchinson ISM on the same probes; one Rademacher probe is exact in d = 1."""
    d, K, seed = mix
    gmm = targets.random_gmm(d, K, seed=seed)
    batch = _batch(gmm, 3000, t, seed + 7)
    net = _net(d, net_seed)
    ism = ImplicitScoreMatching()(net, batch)
    probes = draw_probes(m, (3000, d), kind, generator=torch.Generator().manual_seed(seed))
    hut = ImplicitScoreMatching("hutchinson")(net, batch, probes)
    ssm = SlicedScoreMatching()(net, batch, probes)
    vr = SlicedScoreMatching(variance_reduced=True)(net, batch, probes)
    torch.testing.assert_close(vr, hut, rtol=1e-12, atol=1e-12)
    if d == 1 and kind == "rademacher":
        torch.testing.assert_close(hut, ism, rtol=1e-10, atol=1e-10)
    else:
        assert abs(_z(hut - ism)) < Z
    assert abs(_z(ssm - ism)) < Z


def test_probe_estimators_fail_with_wrongly_scaled_probes():
    """Negative control: probes with E[v v^T] = 1.44 I bias both estimators (z > 2 Z)."""
    gmm = targets.random_gmm(2, 3, seed=5)
    batch = _batch(gmm, 20_000, 0.1, 6)
    net = _net(2, 7)
    ism = ImplicitScoreMatching()(net, batch)
    probes = draw_probes(1, (20_000, 2), "rademacher", generator=torch.Generator().manual_seed(1))
    assert abs(_z(ImplicitScoreMatching("hutchinson")(net, batch, probes) - ism)) < Z
    assert abs(_z(ImplicitScoreMatching("hutchinson")(net, batch, 1.2 * probes) - ism)) > 2 * Z
    assert abs(_z(SlicedScoreMatching()(net, batch, 1.2 * probes) - ism)) > 2 * Z


def test_probes_are_reproducible_from_the_generator_and_have_identity_second_moment():
    a = draw_probes(2, (5000, 3), "rademacher", generator=torch.Generator().manual_seed(3))
    b = draw_probes(2, (5000, 3), "rademacher", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and set(a.unique().tolist()) == {-1.0, 1.0}
    g = draw_probes(1, (200_000, 2), "gaussian", generator=torch.Generator().manual_seed(4))[0]
    # E[v v^T] = I; entries of the empirical second moment have sd <= sqrt(2 / n) = 0.0032
    torch.testing.assert_close(g.T @ g / g.shape[0], torch.eye(2, dtype=F64), rtol=0, atol=5 * math.sqrt(2 / 2e5))
    ism1 = ImplicitScoreMatching("hutchinson", seed=11)
    ism2 = ImplicitScoreMatching("hutchinson", seed=11)
    gmm = targets.random_gmm(2, 2, seed=0)
    batch = _batch(gmm, 50, 0.5, 0)
    net = _net(2, 0)
    assert torch.equal(ism1(net, batch), ism2(net, batch))


# -- the minimizer is the true score ---------------------------------------------------------------------
class _Perturbed(DiffusionModel, nn.Module):
    """``s_theta(x) = s*(x) + theta_i (A x + c)`` with one ``theta_i`` per row (per-sample gradients)."""

    def __init__(self, gmm: targets.GaussianMixture, theta: torch.Tensor, seed: int) -> None:
        nn.Module.__init__(self)
        d = gmm.d
        g = torch.Generator().manual_seed(seed)
        self.schedule = VP
        self.exact = AnalyticModel(gmm, VP)
        self.A = torch.randn(d, d, generator=g, dtype=F64) / math.sqrt(d)
        self.c = torch.randn(d, generator=g, dtype=F64)
        self.theta = theta

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.A.T + self.c

    def score(self, x_t: torch.Tensor, t, **cond) -> torch.Tensor:  # type: ignore[override]
        return self.exact.score(x_t, t) + self.theta[:, None] * self.phi(x_t)

    def denoise(self, x_t: torch.Tensor, t, **cond) -> torch.Tensor:  # type: ignore[override]
        tt = torch.as_tensor(t, dtype=F64).reshape(-1, 1)
        return (x_t + self.schedule.sigma2(tt) * self.score(x_t, t)) / self.schedule.alpha(tt)


def _objectives(gmm: targets.GaussianMixture) -> dict:
    return {
        "dsm": DenoisingScoreMatching(), "esm": ExplicitScoreMatching(gmm), "ism": ImplicitScoreMatching(),
        "ism_hutchinson": ImplicitScoreMatching("hutchinson", seed=3), "ssm": SlicedScoreMatching(seed=4),
        "ssm_gaussian": SlicedScoreMatching(probe_kind="gaussian", seed=5),
    }


def _per_sample_grad(objective, gmm: targets.GaussianMixture, batch: NoisyBatch, theta0: float,
                     seed: int) -> torch.Tensor:
    n = batch.x_t.shape[0]
    theta = torch.full((n,), theta0, dtype=F64, requires_grad=True)
    model = _Perturbed(gmm, theta, seed)
    (grad,) = torch.autograd.grad(objective(model, batch).sum(), theta)
    return grad


@pytest.mark.parametrize("name", ["dsm", "esm", "ism", "ism_hutchinson", "ssm", "ssm_gaussian"])
@settings(max_examples=4, deadline=None)
@given(mix=MIXTURES, t=st.floats(0.05, 0.9))
def test_the_true_score_is_a_stationary_point_and_a_perturbed_one_is_not(name, mix, t):
    """I43: in the family s* + theta (A x + c) every objective is ESM + const = sigma^2 theta^2 E||phi||^2 + const,
    so its gradient at theta = 0 is zero (to MC error) and at theta = 0.5 equals ESM's, 2 sigma^2 0.5 E||phi||^2
    (the negative control: nonzero, z > Z)."""
    d, K, seed = mix
    gmm = targets.random_gmm(d, K, seed=seed)
    batch = _batch(gmm, 2000, t, seed + 3)
    obj = _objectives(gmm)[name]
    g0 = _per_sample_grad(obj, gmm, batch, 0.0, seed)
    assert abs(_z(g0)) < Z
    g1 = _per_sample_grad(obj, gmm, batch, 0.5, seed)
    ref = _per_sample_grad(ExplicitScoreMatching(gmm), gmm, batch, 0.5, seed)
    assert _z(g1) > Z  # perturbed: the gradient pushes theta back to 0
    assert abs(_z(g1 - ref)) < Z


# -- the trainer -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", [ImplicitScoreMatching(), SlicedScoreMatching(seed=1),
                                       ImplicitScoreMatching("hutchinson", probe_kind="gaussian", seed=2)])
def test_trainer_trains_with_score_matching_objectives(objective):
    """A Trainer over WeightedLoss(objective, TimeAverage, UniformTime) runs and lowers the exact score error."""
    gmm = targets.random_gmm(2, 2, seed=0)
    net = MLPDenoiser(2, VP, width=32, depth=2, seed=0)
    loss = WeightedLoss(objective, TimeAverage(), UniformTime(VP, (0.05, 1.0)))
    esm = WeightedLoss(ExplicitScoreMatching(gmm), TimeAverage(), UniformTime(VP, (0.05, 1.0)))
    x0 = gmm.sample(4000, generator=torch.Generator().manual_seed(1)).float()

    def err() -> float:
        return float(esm(net, x0, generator=torch.Generator().manual_seed(2)).mean().detach())

    before = err()
    trainer = Trainer(net, gmm, steps=150, loss=loss, batch_size=128, lr=3e-3, device="cpu", progress=False,
                      ema_decay=None, seed=0)
    history = trainer.train()
    assert all(math.isfinite(v) for _, v in history)
    assert err() < 0.7 * before


# -- bad input ------------------------------------------------------------------------------------------
def test_bad_input_raises_naming_the_argument():
    with pytest.raises(ValueError, match="divergence"):
        ImplicitScoreMatching("trace")
    with pytest.raises(ValueError, match="probes"):
        ImplicitScoreMatching("hutchinson", probes=0)
    with pytest.raises(ValueError, match="probes"):
        SlicedScoreMatching(probes=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probe_kind"):
        SlicedScoreMatching(probe_kind="uniform")
    with pytest.raises(TypeError, match="generator"):
        SlicedScoreMatching(generator=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        SlicedScoreMatching(seed=-1)
    with pytest.raises(ValueError, match="generator and seed"):
        SlicedScoreMatching(seed=1, generator=torch.Generator())
    with pytest.raises(TypeError, match="variance_reduced"):
        SlicedScoreMatching(variance_reduced=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sigma2_weight"):
        DenoisingScoreMatching(sigma2_weight="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="exact"):
        ExplicitScoreMatching(lambda x, t: x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probe_kind"):
        draw_probes(1, (3, 2), "sobol")
    with pytest.raises(ValueError, match="probes"):
        draw_probes(0, (3, 2))
    gmm = targets.random_gmm(2, 2, seed=0)
    batch = _batch(gmm, 8, 0.5, 0)
    net = _net(2, 0)
    with pytest.raises(ValueError, match="probes"):
        score_and_hutchinson(net, batch, torch.ones(1, 8, 3, dtype=F64))
    with pytest.raises(ValueError, match="probes"):
        ImplicitScoreMatching()(net, batch, torch.ones(1, 8, 2, dtype=F64))
    with pytest.raises(ValueError, match="cond"):
        ExplicitScoreMatching(gmm)(net, NoisyBatch.make(VP, batch.x0, batch.t, batch.noise, y=torch.zeros(8)))
