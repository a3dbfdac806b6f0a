"""Controllable generation: classifier guidance and inpainting against the exact conditionals."""

import pytest
import torch
from test_sampling import _gen, _gmm, check_differs, check_matches

from densityformula import sampling as S
from densityformula.models import AnalyticModel
from densityformula.schedules import VE, LiYan, VPLinear
from densityformula.targets import Gaussian, GaussianMixture

F64 = torch.float64


def _gmm3():
    return GaussianMixture(
        [0.4, 0.6],
        [[-1.5, 0.5, 1.0], [1.5, -0.5, 0.0]],
        [
            [[0.6, 0.3, 0.2], [0.3, 0.5, 0.1], [0.2, 0.1, 0.4]],
            [[0.4, -0.2, 0.1], [-0.2, 0.5, 0.0], [0.1, 0.0, 0.3]],
        ],
    )


# ---------------------------------------------------------------------------------------------
# classifier guidance
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sched", [VPLinear, LiYan, VE])
def test_guided_score_is_the_exact_component_score(sched):
    """grad log q_t(x) + grad log r_k(x, t) = grad log of component k diffused (Bayes, I2-I3)."""
    sch = sched()
    gmm = _gmm()
    model = AnalyticModel(gmm, sch)
    x = 2 * torch.randn(64, 2, generator=_gen(0), dtype=F64)
    y = torch.arange(64) % 2
    guided = S.GuidedModel(model, S.gmm_class_log_likelihood(gmm, sch, y))
    comps = [Gaussian(gmm.means[k], gmm.covs[k]) for k in range(2)]
    for t in (0.05, 0.5, 0.95):
        ref_s = torch.where((y == 0)[:, None], comps[0].score(x, t, sch), comps[1].score(x, t, sch))
        ref_d = torch.where((y == 0)[:, None], comps[0].denoise(x, t, sch), comps[1].denoise(x, t, sch))
        torch.testing.assert_close(guided.score(x, t), ref_s, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(guided.denoise(x, t), ref_d, rtol=1e-9, atol=1e-9)
        a, s = float(sch.alpha(t)), float(sch.sigma(t))
        torch.testing.assert_close(guided.eps(x, t), (x - a * ref_d) / s, rtol=1e-9, atol=1e-9)


def test_guidance_scale_multiplies_the_gradient():
    sch = VPLinear()
    gmm = _gmm()
    model = AnalyticModel(gmm, sch)
    ll = S.gmm_class_log_likelihood(gmm, sch, 1)
    x = torch.randn(10, 2, generator=_gen(1), dtype=F64)
    g1 = S.GuidedModel(model, ll).score(x, 0.3) - model.score(x, 0.3)
    g3 = S.GuidedModel(model, ll, scale=3.0).score(x, 0.3) - model.score(x, 0.3)
    torch.testing.assert_close(g3, 3 * g1)
    # the gradient itself against central finite differences of log r_1
    h = 1e-6
    fd = torch.stack(
        [(ll(x + h * e, 0.3) - ll(x - h * e, 0.3)) / (2 * h) for e in torch.eye(2, dtype=F64)], dim=1
    )
    torch.testing.assert_close(g1, fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "sampler,kw",
    [
        (S.ddpm, dict(steps=1000)),
        (S.euler_maruyama, dict(steps=500)),
        (S.ddim, dict(steps=100)),
        (S.probability_flow, dict()),
        (S.predictor_corrector, dict(steps=250)),
    ],
)
def test_class_conditional_samples_match_the_component(sampler, kw):
    sch = VPLinear()
    gmm = _gmm()
    guided = S.GuidedModel(AnalyticModel(gmm, sch), S.gmm_class_log_likelihood(gmm, sch, 0))
    x = sampler(guided, n=1000, generator=_gen(11), **kw)
    comp0 = GaussianMixture([1.0], gmm.means[:1], gmm.covs[:1])
    check_matches(x, comp0, 12, f"guided {sampler.__name__}")
    check_differs(x, gmm, 12, f"guided {sampler.__name__} vs the unconditional mixture")


def test_per_point_labels_on_liyan():
    sch = LiYan()
    gmm = _gmm()
    y = (torch.arange(2000) >= 1000).long()
    guided = S.GuidedModel(AnalyticModel(gmm, sch), S.gmm_class_log_likelihood(gmm, sch, y))
    x = S.ddim(guided, n=2000, steps=200, generator=_gen(13))
    for k in range(2):
        comp = GaussianMixture([1.0], gmm.means[k : k + 1], gmm.covs[k : k + 1])
        check_matches(x[y == k], comp, 14 + k, f"label {k}")


# ---------------------------------------------------------------------------------------------
# inpainting
# ---------------------------------------------------------------------------------------------
def _conditional_process(gmm, sch, mask, values, t):
    """Law of X_t = alpha X_0 + sigma Z with X_0[known] = values, X_0[unknown] ~ gmm.condition."""
    cond = gmm.condition(mask, values)
    K, d = cond.K, gmm.d
    means = torch.zeros(K, d, dtype=F64)
    means[:, mask] = values
    means[:, ~mask] = cond.means
    covs = torch.zeros(K, d, d, dtype=F64)
    um = (~mask).nonzero()[:, 0]
    covs[:, um[:, None], um[None, :]] = cond.covs
    a, s2 = float(sch.alpha(t)), float(sch.sigma2(t))
    return GaussianMixture(cond.weights, a * means, a * a * covs + s2 * torch.eye(d, dtype=F64))


@pytest.mark.parametrize("sched", [VPLinear, VE])
def test_inpainting_guided_score_is_the_conditional_process_score(sched):
    sch = sched()
    gmm = _gmm3()
    mask = torch.tensor([True, False, False])
    values = torch.tensor([0.3], dtype=F64)
    guided = S.GuidedModel(AnalyticModel(gmm, sch), S.gmm_inpainting_log_likelihood(gmm, sch, mask, values))
    x = 1.5 * torch.randn(50, 3, generator=_gen(20), dtype=F64)
    for t in (0.02, 0.3, 0.9):
        # the law at t = 0 of VPLinear is the law itself
        ref = _conditional_process(gmm, sch, mask, values, t).score(x, 0.0, VPLinear())
        torch.testing.assert_close(guided.score(x, t), ref, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(
    "sampler,kw", [("ddpm", dict(steps=1000)), ("euler_maruyama", dict(steps=500)), ("ddim", dict(steps=100))]
)
def test_guided_inpainting_matches_the_exact_conditional(sampler, kw):
    sch = VPLinear()
    gmm = _gmm3()
    mask = torch.tensor([True, False, False])
    values = torch.tensor([0.3], dtype=F64)
    x = S.inpaint(
        AnalyticModel(gmm, sch), mask, values, n=1000, sampler=sampler, method="guidance",
        log_likelihood=S.gmm_inpainting_log_likelihood(gmm, sch, mask, values), generator=_gen(21), **kw
    )
    assert torch.equal(x[:, 0], torch.full((1000,), 0.3, dtype=F64))
    check_matches(x[:, 1:], gmm.condition(mask, values), 22, f"guided inpainting {sampler}")


def test_replacement_inpainting_is_exact_for_independent_blocks_and_biased_otherwise():
    sch = VPLinear()
    mask = torch.tensor([True, False, False])
    values = torch.tensor([0.3], dtype=F64)
    # known coordinate independent of the unknown ones: replacement is exact
    cov = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.4, 0.2], [0.0, 0.2, 0.6]], dtype=F64)
    indep = Gaussian(torch.tensor([0.5, -1.0, 1.0], dtype=F64), cov)
    x = S.inpaint(AnalyticModel(indep, sch), mask, values, n=1000, sampler="ddpm", steps=1000, generator=_gen(23))
    check_matches(x[:, 1:], indep.condition(mask, values), 24, "replacement, independent blocks")
    # correlated mixture: the replacement (imputation) method is only an approximation
    gmm = _gmm3()
    x = S.inpaint(AnalyticModel(gmm, sch), mask, values, n=1000, sampler="ddpm", steps=1000, generator=_gen(25))
    assert torch.equal(x[:, 0], torch.full((1000,), 0.3, dtype=F64))
    check_differs(x[:, 1:], gmm.condition(mask, values), 26, "replacement, correlated mixture")


def test_conditional_bad_arguments():
    sch = VPLinear()
    gmm = _gmm3()
    model = AnalyticModel(gmm, sch)
    mask = torch.tensor([True, False, False])
    with pytest.raises(ValueError, match="y"):
        S.gmm_class_log_likelihood(gmm, sch, 2)
    with pytest.raises(TypeError, match="y"):
        S.gmm_class_log_likelihood(gmm, sch, 0.5)
    with pytest.raises(ValueError, match="shape"):
        S.GuidedModel(model, lambda x, t: x.sum()).score(torch.zeros(3, 3, dtype=F64), 0.5)
    with pytest.raises(TypeError, match="log_likelihood"):
        S.GuidedModel(model, None)
    with pytest.raises(TypeError, match="mask"):
        S.inpaint(model, torch.tensor([1, 0, 0]), [0.3], n=4)
    with pytest.raises(ValueError, match="known"):
        S.inpaint(model, torch.tensor([True, True, True]), [0.3, 0.1, 0.2], n=4)
    with pytest.raises(ValueError, match="values"):
        S.inpaint(model, mask, [0.3, 0.1], n=4)
    with pytest.raises(ValueError, match="probability_flow"):
        S.inpaint(model, mask, [0.3], n=4, sampler="probability_flow")
    with pytest.raises(ValueError, match="log_likelihood"):
        S.inpaint(model, mask, [0.3], n=4, method="guidance")
    with pytest.raises(ValueError, match="method"):
        S.inpaint(model, mask, [0.3], n=4, method="repaint")
    with pytest.raises(ValueError, match="sigma_t = 0"):
        S.gmm_inpainting_log_likelihood(gmm, sch, mask, [0.3])(torch.zeros(2, 3, dtype=F64), 0.0)
    ly = LiYan()
    guided = S.GuidedModel(AnalyticModel(gmm, ly), S.gmm_class_log_likelihood(gmm, ly, 0))
    with pytest.raises(ValueError, match="alpha > 0"):
        guided.denoise(torch.zeros(2, 3, dtype=F64), 1.0)
