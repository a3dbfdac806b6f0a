"""Spearman's rho, its cluster bootstrap and the inversions (docs/math.md I33) against scipy and brute force."""
import numpy as np
import pytest
from scipy import stats

from densityformula.study import rank_agreement, spearman


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, 40).astype(float)  # many ties
    y = x + rng.normal(0, 2, 40)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_inversions_are_the_discordant_resolved_pairs():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=25), rng.normal(size=25)
    ex, ey = 0.1, 0.2
    r = rank_agreement(x, y, x_error=ex, y_error=ey, n_boot=10)
    brute, resolved = set(), 0
    for i in range(25):
        for j in range(25):
            if i < j and abs(x[i] - x[j]) > 2 * ex and abs(y[i] - y[j]) > 2 * ey:
                resolved += 1
            if x[i] < x[j] - 2 * ex and y[i] > y[j] + 2 * ey:
                brute.add((i, j))
    assert set(r.inversions) == brute and r.n_pairs == resolved
    assert r.inverted_fraction == pytest.approx(len(brute) / resolved)


def test_monotone_data_have_rho_one_and_no_inversions():
    x = np.linspace(0, 1, 12)
    r = rank_agreement(x, np.exp(3 * x), n_boot=200)
    assert r.rho == 1.0 and r.lo == 1.0 and r.hi == 1.0 and r.inversions == []


def test_interval_covers_zero_for_independent_data_and_not_for_dependent():
    rng = np.random.default_rng(3)
    x = rng.normal(size=200)
    indep = rank_agreement(x, rng.normal(size=200), n_boot=500, seed=4)
    dep = rank_agreement(x, x + 0.5 * rng.normal(size=200), n_boot=500, seed=4)
    assert indep.lo < 0 < indep.hi
    assert dep.lo > 0.7


def test_the_bootstrap_resamples_whole_groups():
    """Ten copies of each of 8 independent points: resampling copies as if independent gives an interval
    about sqrt(10) too narrow; resampling the groups gives the interval of the 8 points."""
    rng = np.random.default_rng(5)
    x8, y8 = rng.normal(size=8), rng.normal(size=8)
    x, y = np.repeat(x8, 10), np.repeat(y8, 10)
    groups = np.repeat(np.arange(8), 10)
    naive = rank_agreement(x, y, n_boot=1000, seed=1)
    clustered = rank_agreement(x, y, groups=groups, n_boot=1000, seed=1)
    base = rank_agreement(x8, y8, n_boot=1000, seed=1)
    assert clustered.n_groups == 8 and naive.n_groups == 80
    width = lambda r: r.hi - r.lo  # noqa: E731
    assert width(naive) < 0.6 * width(clustered)
    assert width(clustered) == pytest.approx(width(base), rel=0.3)


@pytest.mark.parametrize("kwargs, match", [
    ({"x": [1.0, 2.0], "y": [1.0, 2.0]}, "at least 3"),
    ({"x": [1.0, 2.0, 3.0], "y": [1.0, 2.0]}, "y must have 3"),
    ({"x": [1.0, np.nan, 3.0], "y": [1.0, 2.0, 3.0]}, "x must be finite"),
    ({"x": [1.0, 2.0, 3.0], "y": [1.0, 2.0, 3.0], "groups": [0, 1]}, "groups must have 3"),
    ({"x": [1.0, 2.0, 3.0], "y": [1.0, 2.0, 3.0], "level": 1.0}, "level"),
    ({"x": [1.0, 2.0, 3.0], "y": [1.0, 2.0, 3.0], "n_boot": 0}, "n_boot"),
])
def test_bad_input_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rank_agreement(**kwargs)


def test_non_numeric_input_is_a_type_error():
    with pytest.raises(TypeError, match="x must be"):
        rank_agreement(object(), [1.0, 2.0, 3.0])
