"""The two-sample metrics used to check samplers: energy distance, its permutation test, KS."""
import math

import numpy as np
import pytest
import scipy.stats
import torch

from densityformula.sampling import energy_distance, energy_test, ks_test, mixture_cdf
from densityformula.targets import Gaussian, GaussianMixture


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_energy_distance_1d_equals_scipy_squared():
    g = _gen(0)
    x = torch.randn(300, 1, generator=g, dtype=torch.float64)
    y = 0.5 + 1.3 * torch.randn(200, 1, generator=g, dtype=torch.float64)
    ours = float(energy_distance(x, y))
    ref = scipy.stats.energy_distance(x[:, 0].numpy(), y[:, 0].numpy()) ** 2
    assert ours == pytest.approx(ref, rel=1e-10)


def _e_abs_normal(mu, s):
    """E|N(mu, s^2)| in closed form."""
    return s * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * s * s)) + mu * (1 - 2 * scipy.stats.norm.cdf(-mu / s))


def test_unbiased_energy_distance_matches_closed_form_for_gaussians():
    # population value 2E|X-Y| - E|X-X'| - E|Y-Y'| for X ~ N(0, a^2), Y ~ N(m, b^2)
    a, m, b = 1.0, 0.7, 1.5
    r2 = math.sqrt(2)
    truth = 2 * _e_abs_normal(-m, math.hypot(a, b)) - _e_abs_normal(0, a * r2) - _e_abs_normal(0, b * r2)
    g = _gen(1)
    reps = torch.stack(
        [
            energy_distance(
                a * torch.randn(400, 1, generator=g, dtype=torch.float64),
                m + b * torch.randn(400, 1, generator=g, dtype=torch.float64),
                unbiased=True,
            )
            for _ in range(40)
        ]
    )
    se = float(reps.std()) / math.sqrt(len(reps))
    assert abs(float(reps.mean()) - truth) < 4 * se, (float(reps.mean()), truth, se)
    # and the V-statistic is biased upward by (E|X-X'|/n + E|Y-Y'|/m): it is the larger one
    x = a * torch.randn(50, 1, generator=g, dtype=torch.float64)
    y = m + b * torch.randn(50, 1, generator=g, dtype=torch.float64)
    assert float(energy_distance(x, y)) > float(energy_distance(x, y, unbiased=True))


def test_energy_distance_is_zero_for_identical_samples_and_symmetric():
    g = _gen(2)
    x = torch.randn(100, 3, generator=g, dtype=torch.float64)
    y = torch.randn(80, 3, generator=g, dtype=torch.float64)
    assert float(energy_distance(x, x)) == pytest.approx(0.0, abs=1e-12)
    assert float(energy_distance(x, y)) == pytest.approx(float(energy_distance(y, x)), rel=1e-12)


def test_energy_test_statistic_and_power():
    g = _gen(3)
    x = torch.randn(400, 2, generator=g, dtype=torch.float64)
    y = torch.randn(300, 2, generator=g, dtype=torch.float64)
    res = energy_test(x, y, permutations=199, generator=_gen(4))
    assert res.statistic == pytest.approx(float(energy_distance(x, y)), rel=1e-9)
    assert res.null.shape == (199,)
    assert res.p_value > 0.01
    # a 0.3-sd shift in one coordinate is found
    shifted = energy_test(x, y + torch.tensor([0.3, 0.0], dtype=torch.float64), permutations=199, generator=_gen(4))
    assert shifted.p_value <= 0.01


def test_energy_test_null_is_calibrated():
    # under H0 the permutation p-value is uniform: the rejection rate at 0.1 over 60 independent
    # tests is Binomial(60, 0.1) (mean 6, sd 2.3)
    g = _gen(5)
    p = [
        energy_test(
            torch.randn(60, 2, generator=g, dtype=torch.float64),
            torch.randn(60, 2, generator=g, dtype=torch.float64),
            permutations=99,
            generator=g,
        ).p_value
        for _ in range(60)
    ]
    rejections = sum(pi <= 0.1 for pi in p)
    assert 0 <= rejections <= 14


def test_energy_metrics_reject_bad_input():
    x = torch.randn(10, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="dimension"):
        energy_distance(x, torch.randn(10, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="x"):
        energy_distance(x.numpy(), x)
    with pytest.raises(ValueError, match="NaN"):
        energy_distance(x, torch.full((5, 2), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="permutations"):
        energy_test(x, x, permutations=0)


def test_mixture_cdf_against_scipy_and_monte_carlo():
    gmm = GaussianMixture([0.3, 0.7], [[-1.0, 2.0], [2.0, 0.0]], [[[1.0, 0.3], [0.3, 0.5]], [[0.2, 0.0], [0.0, 2.0]]])
    u = np.array([0.6, -0.8])
    cdf = mixture_cdf(gmm, u)
    t = np.linspace(-4, 4, 9)
    sd0 = math.sqrt(0.36 * 1.0 + 0.64 * 0.5 - 2 * 0.48 * 0.3)
    sd1 = math.sqrt(0.36 * 0.2 + 0.64 * 2.0)
    ref = 0.3 * scipy.stats.norm.cdf(t, -0.6 - 1.6, sd0) + 0.7 * scipy.stats.norm.cdf(t, 1.2, sd1)
    np.testing.assert_allclose(cdf(t), ref, rtol=1e-12)
    x = gmm.sample(4000, generator=_gen(6))
    assert ks_test(x, gmm, u).pvalue > 0.01
    assert ks_test(x + 0.15 * torch.as_tensor(u), gmm, u).pvalue < 0.01  # 0.15 along u
    assert ks_test(x, Gaussian(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))).pvalue < 0.01
