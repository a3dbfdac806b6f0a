"""Diffusion classifiers (densityformula.implications.classifier, docs/math.md I36) against independent ground truth."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from densityformula import models, schedules, targets
from densityformula.experiment import checks
from densityformula.implications import classifier as K
from densityformula.neural import ConditionalMLPDenoiser

SCHED = schedules.VPLinear()
CLASSES = [targets.GaussianMixture([0.5, 0.5], [[-1.5, 0.0], [-1.5, 2.0]], [0.5, 0.5]),
           targets.GaussianMixture([0.3, 0.7], [[1.0, 0.0], [0.5, 1.5]], [[0.3, 0.8], [1.0, 0.2]])]


def _models(classes=CLASSES, sched=SCHED):
    return [models.AnalyticModel(c, sched) for c in classes]


def _points(n, seed=0, classes=CLASSES, prior=(0.5, 0.5)):
    return K.sample_classes(classes, prior, n, generator=torch.Generator().manual_seed(seed))


def test_noise_errors_match_the_denoiser_written_out():
    ms = _models()
    x, _ = _points(5)
    d = K.shared_draws(ms, 5, n_times=7, n_noise=3, generator=torch.Generator().manual_seed(1))
    err = K.noise_errors(ms, x, d)
    assert err.shape == (5, 2, 7, 3)
    for c, g in enumerate(CLASSES):
        for i, j, k in itertools.product(range(5), range(7), range(3)):
            t = float(d.t[i, j])
            a, s = float(SCHED.alpha(t)), float(SCHED.sigma(t))
            z = d.z[i, j, k]
            xt = (a * x[i] + s * z)[None]
            eps = (xt - a * g.denoise(xt, t, SCHED)) / s  # I1 from the posterior mean (I3)
            assert float(((z - eps[0]) ** 2).sum()) == pytest.approx(float(err[i, c, j, k]), rel=1e-9, abs=1e-12)


def test_importance_weights_integrate_a_known_function():
    """``mean(w f(lambda))`` estimates ``int_lo^hi f``: f = sigmoid'(lambda), whose integral is closed form."""
    ms = _models()
    for prop in K.PROPOSALS:
        d = K.shared_draws(ms, 50, n_times=400, proposal=prop, generator=torch.Generator().manual_seed(2))
        lo, hi = d.lambda_range
        sg = torch.sigmoid(d.lam)
        vals = (d.weight * sg * (1 - sg)).flatten()
        truth = 1 / (1 + math.exp(-hi)) - 1 / (1 + math.exp(-lo))
        est, se = float(vals.mean()), float(vals.std() / math.sqrt(vals.numel()))
        assert checks.agreement([est], [se], [truth], dof=None)(0).passed, (prop, est, se, truth)
        w = d.weight.flatten()
        if prop == "time":  # E[w 1(lambda < 5)] = 5 - lo (the weight alone is heavy tailed: ~1/t near t = 0)
            v = w * (d.lam.flatten() < 5.0)
            assert checks.agreement([float(v.mean())], [float(v.std() / math.sqrt(v.numel()))], [5.0 - lo],
                                    dof=None)(0).passed
        else:
            torch.testing.assert_close(w, torch.full_like(w, hi - lo))
        # a wrong weight (none: the heuristic's) does not integrate it
        assert abs(float((sg * (1 - sg)).mean()) - truth) > 10 * se


def test_elbo_scores_estimate_log_q_of_every_class():
    """With the exact denoisers the ELBO of each class is log q(x | c) (I5/I8), per class and per point."""
    ms = _models()
    n = 12
    x, _ = _points(n, seed=3)
    exact = K.exact_scores(CLASSES, x)
    for prop in K.PROPOSALS:
        d = K.shared_draws(ms, n, n_times=4000, proposal=prop, generator=torch.Generator().manual_seed(4))
        sc = K.elbo_scores(K.noise_errors(ms, x, d), d)
        assert sc.value.shape == (n, 2) and sc.dof == 3999
        ok = checks.agreement(sc.value.flatten(), sc.stderr.flatten(), exact.flatten(), dof=sc.dof)(0)
        assert ok.passed, (prop, ok.values)


def test_wrong_weight_or_unshared_noise_breaks_the_elbo_classifier():
    ms = _models()
    n = 12
    x, _ = _points(n, seed=3)
    exact = K.exact_scores(CLASSES, x)
    d = K.shared_draws(ms, n, n_times=2000, proposal="time", generator=torch.Generator().manual_seed(5))
    err = K.noise_errors(ms, x, d)
    bad = K.Draws(d.lam, d.t, torch.full_like(d.weight, d.lambda_range[1] - d.lambda_range[0]), d.z, d.proposal,
                  d.lambda_range)  # the weight of a uniform-in-lambda proposal on uniform-time draws
    sc = K.elbo_scores(err, bad)
    assert not checks.agreement(sc.value.flatten(), sc.stderr.flatten(), exact.flatten(), dof=sc.dof)(0).passed
    # common random numbers: the contrast's standard error with shared noise is far below independent noise's
    d2 = K.shared_draws(ms, n, n_times=2000, proposal="time", generator=torch.Generator().manual_seed(6))
    err2 = K.noise_errors(ms, x, d2)
    a, b = torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)
    _, se_shared = K.margins(K.heuristic_scores(err), a, b)
    _, se_ind = K.margins(K.heuristic_scores(torch.stack([err[:, 0], err2[:, 1]], 1)), a, b)
    ratio = se_ind / se_shared
    assert bool((ratio > 1.0).all()) and float(ratio.median()) > 1.5  # measured: median 1.78


def test_heuristic_is_minus_the_mean_error():
    ms = _models()
    x, _ = _points(4)
    d = K.shared_draws(ms, 4, n_times=5, n_noise=2, proposal="time", generator=torch.Generator().manual_seed(7))
    err = K.noise_errors(ms, x, d)
    h = K.heuristic_scores(err)
    manual = -err.reshape(4, 2, 10).mean(-1)
    torch.testing.assert_close(h.value, manual)
    # the i.i.d. unit is a time node (its noises share the time): the node means' spread over 5 nodes
    torch.testing.assert_close(h.stderr, err.mean(-1).std(-1) / math.sqrt(5))


def test_formula_scores_agree_with_exact_log_likelihoods():
    ms = _models()
    x, _ = _points(40, seed=8)
    exact = K.exact_scores(CLASSES, x)
    f = K.formula_scores(ms, x, seed=3, n_nodes=32, n_noise=2, n_replicates=16, n_pilot=4)
    assert checks.agreement(f.value.flatten(), f.stderr.flatten(), exact.flatten(), dof=f.dof)(0).passed
    a, b = torch.zeros(40, dtype=torch.long), torch.ones(40, dtype=torch.long)
    mv, se = K.margins(f, a, b)
    assert checks.agreement(mv, se, exact[:, 0] - exact[:, 1], dof=f.dof)(0).passed
    # a class-dependent bias of 0.2 nats is seen
    assert not checks.agreement(mv, se, exact[:, 0] - exact[:, 1], dof=f.dof)(0.2).passed


def test_exact_scores_and_classify_are_bayes_rule():
    """``classify`` is the argmax of the posterior written with scipy's normal densities."""
    x, _ = _points(300, seed=9, prior=(0.8, 0.2))
    prior = np.array([0.8, 0.2])
    joint = np.zeros((300, 2))
    for c, g in enumerate(CLASSES):
        for w, m, S in zip(g.weights.numpy(), g.means.numpy(), g.covs.numpy()):
            joint[:, c] += prior[c] * w * stats.multivariate_normal(m, S).pdf(x.numpy())
    ex = K.exact_scores(CLASSES, x)
    np.testing.assert_allclose(ex.numpy(), np.log(joint / prior), rtol=1e-10)
    dec = K.classify(ex, prior)
    assert torch.equal(dec, torch.as_tensor(joint.argmax(1)))
    assert int((dec != K.classify(ex)).sum()) > 0  # the prior matters


def test_sample_classes_follow_the_prior_and_the_class_laws():
    x, y = _points(20000, seed=10, prior=(0.7, 0.3))
    k = int((y == 0).sum())
    assert stats.binomtest(k, 20000, 0.7).pvalue > 1e-3
    for c, g in enumerate(CLASSES):
        xc = x[y == c]
        z = (xc.mean(0) - g.mean()) / (xc.std(0) / math.sqrt(xc.shape[0]))
        assert float(z.abs().max()) < 4.0


def test_wilson_interval_matches_scipy():
    for k, n in [(0, 10), (3, 10), (97, 100), (1000, 1000), (512, 2000)]:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        lo, hi = K.wilson_interval(k, n)
        assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)


def test_disagreement_law_by_enumeration():
    m = torch.tensor([0.1, -0.5, 2.0, 0.0, 1.0, -0.05], dtype=torch.float64)
    se = torch.tensor([0.2, 0.5, 1.0, 0.3, 0.1, 1.0], dtype=torch.float64)
    p = stats.norm.sf(np.abs(m.numpy()) / se.numpy())
    pmf = np.zeros(7)
    for bits in itertools.product([0, 1], repeat=6):
        pmf[sum(bits)] += np.prod([pi if b else 1 - pi for pi, b in zip(p, bits)])
    E, S = K.predicted_disagreements(m, se)
    assert E == pytest.approx(float((np.arange(7) * pmf).sum()), rel=1e-12)
    assert S ** 2 == pytest.approx(float((np.arange(7) ** 2 * pmf).sum()) - E ** 2, rel=1e-10)
    for k in range(7):
        assert K.disagreement_p_value(m, se, k) == pytest.approx(float(pmf[k:].sum()), rel=1e-10, abs=1e-15)


def test_disagreement_p_value_is_calibrated_by_simulation():
    """Unbiased normal estimates: the flips' count is as likely to exceed its alpha-quantile as alpha says."""
    g = torch.Generator().manual_seed(11)
    m = torch.randn(400, generator=g, dtype=torch.float64)
    se = 0.3 * torch.rand(400, generator=g, dtype=torch.float64) + 0.05
    counts = [int(((m + se * torch.randn(400, generator=g, dtype=torch.float64)).sign() != m.sign()).sum())
              for _ in range(400)]
    pv = np.array([K.disagreement_p_value(m, se, c) for c in counts])
    assert 0.02 < float((pv <= 0.1).mean()) < 0.18  # P(p <= 0.1) <= 0.1 (discrete), binomial sd 0.015
    assert float((pv <= 1e-3).mean()) <= 0.01


def test_conditional_network_models_plug_in():
    net = ConditionalMLPDenoiser(2, SCHED, num_classes=2, width=8, depth=1, seed=0, zero_init_output=False)
    ms = [net.given(c) for c in range(2)]
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    d = K.shared_draws(ms, 3, n_times=4, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    err = K.noise_errors(ms, x, d)
    for c in range(2):
        t = d.t[0, 0]
        xt = (SCHED.alpha(t) * x[0] + SCHED.sigma(t) * d.z[0, 0, 0].double()).float()[None]
        with torch.no_grad():
            e = net.eps(xt, t.float().reshape(1), y=c)
        assert float(((d.z[0, 0, 0] - e[0]) ** 2).sum()) == pytest.approx(float(err[0, c, 0, 0]), rel=1e-4)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), sep=st.floats(1.0, 5.0))
def test_formula_classifier_decides_like_bayes_wherever_the_margin_is_resolved(seed, sep):
    classes = [targets.random_gmm(2, 2, seed=seed, separation=sep),
               targets.random_gmm(2, 2, seed=seed + 1, separation=sep)]
    ms = _models(classes)
    x, _ = K.sample_classes(classes, (0.5, 0.5), 24, generator=torch.Generator().manual_seed(seed))
    ex = K.exact_scores(classes, x)
    f = K.formula_scores(ms, x, seed=seed, n_nodes=24, n_noise=2, n_replicates=8, n_pilot=4)
    mv, se = K.margins(f, torch.zeros(24, dtype=torch.long), torch.ones(24, dtype=torch.long))
    m = ex[:, 0] - ex[:, 1]
    resolved = m.abs() > 8 * se + 0.05
    assert torch.equal(K.classify(f)[resolved], K.classify(ex)[resolved])


def test_bad_input_raises_naming_the_argument():
    ms = _models()
    g = torch.Generator().manual_seed(0)
    with pytest.raises(TypeError, match="models"):
        K.shared_draws(ms[0], 3, n_times=2, generator=g)
    with pytest.raises(ValueError, match="at least 2"):
        K.shared_draws(ms[:1], 3, n_times=2, generator=g)
    with pytest.raises(ValueError, match="schedule"):
        K.shared_draws([ms[0], models.AnalyticModel(CLASSES[1], schedules.VPCosine())], 3, n_times=2, generator=g)
    with pytest.raises(ValueError, match="proposal"):
        K.shared_draws(ms, 3, n_times=2, proposal="uniform", generator=g)
    with pytest.raises(ValueError, match="n_times"):
        K.shared_draws(ms, 3, n_times=0, generator=g)
    with pytest.raises(TypeError, match="generator"):
        K.shared_draws(ms, 3, n_times=2, generator=0)
    with pytest.raises(ValueError, match="lambda_range"):
        K.shared_draws(ms, 3, n_times=2, lambda_range=(3.0, 1.0), generator=g)
    d = K.shared_draws(ms, 3, n_times=2, generator=g)
    with pytest.raises(ValueError, match="x has 4 points"):
        K.noise_errors(ms, torch.zeros(4, 2, dtype=torch.float64), d)
    with pytest.raises(ValueError, match="x"):
        K.noise_errors(ms, torch.full((3, 2), float("nan"), dtype=torch.float64), d)
    with pytest.raises(ValueError, match="errors"):
        K.elbo_scores(torch.zeros(3, 2, 5, 1), d)
    with pytest.raises(ValueError, match="prior"):
        K.classify(torch.zeros(3, 2), prior=(0.5, 0.6))
    with pytest.raises(ValueError, match="scores"):
        K.classify(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="k must be <= n"):
        K.wilson_interval(5, 3)
    with pytest.raises(ValueError, match="class indices"):
        K.margins(K.heuristic_scores(torch.zeros(3, 2, 2, 1)), torch.zeros(3, dtype=torch.long),
                  torch.full((3,), 2, dtype=torch.long))
