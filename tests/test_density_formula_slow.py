"""Slow statistical tests of the density formula estimator (docs/math.md I5-I7).

Run with ``pytest -m slow tests/test_density_formula_slow.py``.
"""
from __future__ import annotations

import math

import pytest
import torch

from densityformula.formula import density_formula, density_formula_discrete
from densityformula.models import AnalyticModel
from densityformula.schedules import Discrete, LiYan, VPLinear
from densityformula.targets import GaussianMixture, random_gmm

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("d, seed, schedule", [(3, 0, LiYan()), (5, 1, VPLinear())], ids=["d3-LiYan", "d5-VPLinear"])
def test_calibration_of_95_percent_intervals(d, seed, schedule):
    """Over 200 points the nominal 95% intervals ``value -+ 1.96 stderr`` cover ``log q_0``
    between 90% and 99% of the time (32 replicates: Student-t coverage 94.1%)."""
    g = random_gmm(d, 3, seed=seed)
    x = g.sample(200, generator=torch.Generator().manual_seed(100 + seed))
    truth = g.log_prob(x)
    est = density_formula(AnalyticModel(g, schedule), x, n_nodes=48, n_noise=8, seed=seed)
    lo, hi = est.ci(0.95)
    bound = est.extras["truncation_bound"]
    covered = ((truth >= lo - bound) & (truth <= hi + bound)).double().mean().item()
    assert 0.90 <= covered <= 0.99, covered
    # the z-scores are centred (no bias shared by the points) and have unit scale
    z = (est.value - truth) / est.stderr
    assert abs(float(z.mean())) < 4 * 1.1 / math.sqrt(200)
    assert 0.85 < float(z.std()) < 1.25


def test_discrete_error_falls_like_one_over_T():
    """I7 on a mixture: error(T) ~ C / T for T = 50, 200, 1000 (the estimator resolves it)."""
    g0 = random_gmm(2, 3, seed=1)
    g = GaussianMixture(g0.weights, g0.means, g0.covs * 0.1)  # sharper components: larger C
    x = g.sample(8, generator=torch.Generator().manual_seed(3))
    model = AnalyticModel(g, LiYan())
    truth = g.log_prob(x)
    mean_err, mean_se = {}, {}
    for T in (50, 200, 1000):
        est = density_formula_discrete(model, x, schedule=Discrete.ddpm_linear(T), n_noise=32, seed=T)
        err = est.value - truth
        mean_err[T] = float(err.mean())
        mean_se[T] = float(est.stderr.pow(2).mean().sqrt()) / math.sqrt(len(x))
    assert mean_se[1000] < 0.1 * abs(mean_err[1000])  # resolved
    slope_1 = math.log(mean_err[50] / mean_err[200]) / math.log(4)
    slope_2 = math.log(mean_err[200] / mean_err[1000]) / math.log(5)
    slope = math.log(mean_err[50] / mean_err[1000]) / math.log(20)
    for s in (slope_1, slope_2, slope):
        assert 0.8 < s < 1.2, (mean_err, mean_se)


def test_goals_of_issue_at_d10():
    """d = 10 random mixture: mean |error| <= 1e-2 with 1e5 evaluations per point."""
    g = random_gmm(10, 3, seed=1)
    x = g.sample(6, generator=torch.Generator().manual_seed(3))
    est = density_formula(AnalyticModel(g, LiYan()), x, budget=100_000, seed=1)
    err = (est.value - g.log_prob(x)).abs()
    assert est.nfe <= 100_000
    assert float(err.mean()) < 1e-2 and float(est.stderr.max()) < 5e-3
