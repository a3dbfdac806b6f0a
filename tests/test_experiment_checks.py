"""The checks behind every experiment claim, against independent ground truth (issue 10).

``densityformula.experiment.checks`` and ``_claims``: critical values against scipy; the
false-alarm rate of the statistical checks measured by simulation on calibrated data (fixed seeds,
``alpha = 0.05`` so that the rate is measurable in 2000 trials); Student-t degrees of freedom; the
mean test that sees a bias shared by all points where the test of the worst point does not; the
power search against checks with a known threshold; claim statuses, number formatting and input
validation.
"""
import math

import numpy as np
import pytest
from scipy import stats

from densityformula.experiment import Claim, Control, Outcome, Quantity, checks, evaluate
from densityformula.experiment._claims import _power

TRIALS = 2000
ALPHA = 0.05
#: a measured false-alarm rate must not exceed alpha by more than 4 binomial standard errors ...
UPPER = ALPHA + 4 * math.sqrt(ALPHA * (1 - ALPHA) / TRIALS)
#: ... nor fall absurdly below it (Bonferroni is conservative, not that conservative)
LOWER = ALPHA / 4


# --- critical values ---------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "dof", "alpha", "sided", "expected"), [
    (1, None, 0.05, 2, stats.norm.ppf(0.975)),
    (10, None, 0.05, 2, stats.norm.ppf(1 - 0.05 / 20)),
    (1, None, 0.05, 1, stats.norm.ppf(0.95)),
    (1, 3, 0.05, 2, stats.t.ppf(0.975, 3)),
    (10, 5, 0.01, 2, stats.t.ppf(1 - 0.01 / 20, 5)),
    (4, 7.5, 0.05, 1, stats.t.ppf(1 - 0.05 / 4, 7.5)),
    (512, None, 1e-3, 2, stats.norm.ppf(1 - 1e-3 / 1024)),
])
def test_t_crit_matches_scipy(n, dof, alpha, sided, expected):
    assert checks.t_crit(n, dof, alpha, sided=sided) == pytest.approx(expected, rel=1e-12)


def test_t_crit_bonferroni():
    for dof in (None, 4):
        # n tests at level alpha: each at alpha / n
        assert checks.t_crit(8, dof, 0.04) == pytest.approx(checks.t_crit(1, dof, 0.005), rel=1e-12)
        # more tests, a larger critical value; more degrees of freedom, a smaller one
        cs = [checks.t_crit(n, dof, 0.05) for n in (1, 2, 10, 100)]
        assert cs == sorted(cs) and len(set(cs)) == 4
    assert checks.t_crit(3, 5) > checks.t_crit(3, 50) > checks.t_crit(3, None)
    # the family-wise rate of n independent two-sided normal tests at that critical value is <= alpha
    for n in (1, 5, 100):
        c = checks.t_crit(n, None, 0.05)
        assert 0.048 <= 1 - (1 - 2 * stats.norm.sf(c)) ** n <= 0.05 + 1e-12
    assert checks.t_crit() == pytest.approx(stats.norm.ppf(1 - checks.ALPHA / 2))


@pytest.mark.parametrize("kwargs", [{"sided": 3}, {"alpha": 0.0}, {"alpha": 1.0}, {"alpha": -0.1},
                                    {"dof": 0}, {"dof": -2.0}])
def test_t_crit_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        checks.t_crit(2, **{"dof": None, **kwargs})


def test_critical_values_of_both_tests():
    """Half of alpha to the points (Bonferroni), half to the mean (Welch-Satterthwaite dof)."""
    n, dof, alpha = 16, 4, 0.01
    out = checks.agreement(np.zeros(n), np.full(n, 0.5), 0.0, dof=dof, alpha=alpha)(0.0)
    q = out.quantities()
    assert q["limit z (points)"].value == pytest.approx(stats.t.ppf(1 - alpha / (4 * n), dof))
    # equal standard errors: the mean's dof is n * dof
    assert q["limit z (mean)"].value == pytest.approx(stats.t.ppf(1 - alpha / 4, n * dof))
    one = checks.at_most(np.zeros(n), np.full(n, 0.5), 0.0, dof=None, alpha=alpha)(0.0).quantities()
    assert one["limit z (points)"].value == pytest.approx(stats.norm.ppf(1 - alpha / (2 * n)))
    assert one["limit z (mean)"].value == pytest.approx(stats.norm.ppf(1 - alpha / 2))


# --- false alarms on calibrated data -------------------------------------------------------------


def _rate(trial, seed: int) -> float:
    rng = np.random.default_rng(seed)
    return sum(not trial(rng) for _ in range(TRIALS)) / TRIALS


def test_agreement_false_alarm_rate_is_alpha():
    n, truth = 20, 3.0
    se = np.linspace(0.5, 2.0, n)  # unequal, known standard errors

    def trial(rng):
        est = truth + se * rng.standard_normal(n)
        return checks.agreement(est, se, truth, dof=None, alpha=ALPHA)(0.0).passed

    rate = _rate(trial, 1)
    assert LOWER <= rate <= UPPER, rate


@pytest.mark.parametrize("kind", ["at_most", "at_least"])
def test_one_sided_false_alarm_rate_is_alpha(kind):
    n, limit = 20, 1.0
    se = np.linspace(0.5, 2.0, n)
    check = getattr(checks, kind)
    sign = 1.0 if kind == "at_most" else -1.0

    def trial(rng):  # values right at the limit: the worst case of a true claim
        return check(limit + se * rng.standard_normal(n), se, limit, dof=None, alpha=ALPHA)(0.0).passed

    def inside(rng):  # values well on the right side: (almost) never an alarm
        return check(limit - sign * (2 + se * rng.standard_normal(n)), se, limit, dof=None, alpha=ALPHA)(0.0).passed

    rate = _rate(trial, 2)
    assert LOWER <= rate <= UPPER, rate
    assert _rate(inside, 3) <= 0.005


def test_student_t_degrees_of_freedom_matter():
    """Standard errors estimated from 4 draws (dof 3): t-distributed z; a normal quantile over-rejects."""
    n, draws = 20, 4
    scale = np.linspace(0.5, 2.0, n)

    def trial(dof):
        def run(rng):
            x = scale[:, None] * rng.standard_normal((n, draws))
            est, se = x.mean(axis=1), x.std(axis=1, ddof=1) / math.sqrt(draws)
            return checks.agreement(est, se, 0.0, dof=dof, alpha=ALPHA)(0.0).passed
        return run

    with_t = _rate(trial(draws - 1), 4)
    with_normal = _rate(trial(None), 4)
    assert LOWER <= with_t <= UPPER, with_t
    assert with_normal > 5 * UPPER, with_normal  # about 0.6 here


def test_student_t_errors_of_known_scale():
    """One point, errors ``se * t_3``: the t quantile holds its level, the normal one does not."""
    def trial(dof):
        return lambda rng: checks.agreement(rng.standard_t(3), 1.0, 0.0, dof=dof, alpha=ALPHA)(0.0).passed

    # with one point both tests (each at alpha / 2) are the same test: the rate is alpha / 2
    half = ALPHA / 2 + 4 * math.sqrt(ALPHA / 2 * (1 - ALPHA / 2) / TRIALS)
    assert LOWER <= _rate(trial(3), 5) <= half
    assert _rate(trial(None), 5) > UPPER  # P(|t_3| > 2.24) = 0.11: over the whole alpha


# --- the mean test ---------------------------------------------------------------------------------


def test_mean_test_catches_a_shared_bias_the_worst_point_misses():
    """The issue's example: 0.10 nats added to 512 values with se 0.1 each (default alpha 1e-3)."""
    n, se, bias = 512, 0.1, 0.10
    truth = np.linspace(-3.0, 3.0, n)
    noise = stats.norm.ppf((np.arange(n) + 0.5) / n)  # standard normal quantiles: a typical sample
    est = truth + se * noise
    check = checks.agreement(est, se, truth, dof=None)
    assert check(0.0).passed
    out = check(bias)
    q = {k: v.value for k, v in out.quantities().items()}
    assert q["max z (points)"] < q["limit z (points)"]  # the test of the worst point alone passes
    assert q["max z (points)"] == pytest.approx(bias / se + noise.max())
    assert q["z (mean)"] == pytest.approx(bias / (se / math.sqrt(n)))  # 22.6 sigma
    assert q["z (mean)"] > q["limit z (mean)"] and not out.passed
    assert q["mean error"] == pytest.approx(bias)


def test_mean_stderr_override():
    """Points sharing their noise: the mean's standard error is given, not sqrt(sum se^2) / n."""
    est = np.full(100, 0.3)  # one shared error of 0.3 at every point, se 0.2
    independent = checks.agreement(est, 0.2, 0.0, dof=None)(0.0)
    shared = checks.agreement(est, 0.2, 0.0, dof=None, mean_stderr=0.2)(0.0)
    assert not independent.passed and shared.passed
    assert shared.quantities()["z (mean)"].value == pytest.approx(1.5)


def test_bound_is_allowed_on_top_of_the_noise():
    est = np.array([1.0, -1.0])
    assert not checks.agreement(est, 0.01, 0.0, dof=None)(0.0).passed
    assert checks.agreement(est, 0.01, 0.0, dof=None, bound=1.0)(0.0).passed
    assert checks.at_most(np.array([1.5]), 0.01, 1.0, dof=None, bound=0.5)(0.0).passed
    assert not checks.at_least(np.array([0.4]), 0.01, 1.0, dof=None, bound=0.5)(0.0).passed


def test_defects_move_values_the_way_the_docstrings_say():
    assert checks.at_most(0.0, 1.0, 0.0, dof=None)(0.0).quantities()["max (value - limit)"].value == 0.0
    assert checks.at_most(0.0, 1.0, 0.0, dof=None)(2.0).quantities()["max (value - limit)"].value == 2.0
    assert checks.at_least(0.0, 1.0, 0.0, dof=None)(2.0).quantities()["max (limit - value)"].value == 2.0
    assert checks.agreement(1.0, 1.0, 1.0, dof=None)(0.5).quantities()["mean error"].value == 0.5
    assert checks.below(1.0, 2.0)(0.5).quantities()["max value"].value == 1.5
    assert checks.above(1.0, 0.0)(0.5).quantities()["min value"].value == 0.5


# --- power --------------------------------------------------------------------------------------

#: the ratio between the bounds of the power search when it stops: span ** (1 / 2 ** steps)
RESOLUTION = 1024.0 ** (1 / 2**8)


@pytest.mark.parametrize("threshold", [0.3, 0.0125, 0.9])
def test_power_is_the_smallest_failing_defect(threshold):
    check = checks.within(0.0, 0.0, atol=threshold)  # fails exactly for defects above the threshold
    p = _power(check, Control("constant added", 1.0, "u"))
    assert p["relation"] == "=" and p["unit"] == "u"
    assert threshold < p["size"] <= threshold * RESOLUTION * (1 + 1e-12)
    assert not check(p["size"]).passed and check(p["size"] / RESOLUTION * (1 - 1e-12)).passed


def test_power_of_a_statistical_check():
    """One point with se 1 and a bias s: fails once s exceeds the critical value."""
    check = checks.agreement(0.0, 1.0, 0.0, dof=None)
    c = checks.t_crit(1, None, checks.ALPHA / 2)
    p = _power(check, Control("bias added", 10.0))
    assert c < p["size"] <= c * RESOLUTION * (1 + 1e-12)


def test_power_below_the_search_range_and_without_search():
    exact = checks.within(0.0, 0.0, atol=1e-6)
    assert _power(exact, Control("x", 1.0, "u")) == {"size": 1 / 1024, "unit": "u", "relation": "<"}
    assert _power(exact, Control("x", 2.0, "u", search=False)) == {"size": 2.0, "unit": "u", "relation": "<="}


# --- claims ---------------------------------------------------------------------------------------


def test_evaluate_statuses():
    holds = evaluate(Claim("a", "x = 0", checks.within(0.0, 0.0, atol=0.1), Control("x raised", 1.0)))
    assert holds["status"] == "holds" and holds["passed"] is True
    assert holds["control"] == {"what": "x raised", "size": 1.0, "unit": "", "passed": False,
                                "value": {"max |difference|": {"value": 1.0, "unit": "", "text": "1"},
                                          "tolerance": {"value": 0.1, "unit": "", "text": "0.1"}}}
    assert holds["power"]["relation"] == "=" and 0.1 < holds["power"]["size"] < 0.11

    fails = evaluate(Claim("b", "x = 0", checks.within(0.5, 0.0, atol=0.1), Control("x raised", 1.0)))
    assert (fails["status"], fails["passed"], fails["power"]) == ("fails", False, None)

    blind = evaluate(Claim("c", "x = 0", checks.within(0.0, 0.0, atol=5.0), Control("x raised", 1.0)))
    assert (blind["status"], blind["passed"], blind["power"]) == ("control passed", False, None)
    assert blind["control"]["passed"] is True

    # a failing claim whose control also fails is still "fails"
    assert evaluate(Claim("d", "-", lambda s: Outcome(False), Control("x", 1.0)))["status"] == "fails"


def test_evaluate_calls_the_check_at_zero_and_at_the_control_size():
    sizes = []

    def check(s):
        sizes.append(s)
        return Outcome(s < 0.5, {"s": s})

    record = evaluate(Claim("e", "-", check, Control("x", 2.0, search=False)))
    assert sizes == [0.0, 2.0] and record["value"] == {"s": {"value": 0.0, "unit": "", "text": "0"}}


@pytest.mark.parametrize(("quantity", "text"), [
    (Quantity(0.0123, "nats"), "0.0123 nats"),
    (Quantity(3.14159265, "nats"), "3.142 nats"),
    (Quantity(-0.5, "bits/dim"), "-0.5 bits/dim"),
    (Quantity(0.0), "0"),
    (Quantity(4000, "steps"), "4000 steps"),
    (Quantity(12000, "steps"), "12000 steps"),  # a count in full, not 1.2e+04
    (Quantity(1234567.0, "samples"), "1234567 samples"),
    (Quantity(123456.7, "nats"), "1.235e+05 nats"),
    (Quantity(1.23456e-5, "nats"), "1.235e-05 nats"),
    (Quantity(0.012345, "nats", digits=2), "0.012 nats"),
    (Quantity(float("nan"), "nats"), "nan nats"),
    (Quantity(float("inf")), "inf"),
])
def test_quantity_text(quantity, text):
    assert quantity.text() == text
    j = quantity.as_json()
    assert j["text"] == text and j["unit"] == quantity.unit
    assert j["value"] == (quantity.value if math.isfinite(quantity.value) else str(float(quantity.value)))


def test_outcome_values_as_quantities():
    q = Outcome(True, {"a": 1.5, "b": (2.0, "nats"), "c": Quantity(3.0, "steps")}).quantities()
    assert [v.text() for v in q.values()] == ["1.5", "2 nats", "3 steps"]


@pytest.mark.parametrize(("what", "size"), [
    ("", 1.0), (None, 1.0), ("x", 0.0), ("x", -1.0), ("x", float("nan")), ("x", float("inf")), ("x", "1"), ("x", None),
])
def test_control_validation(what, size):
    with pytest.raises(ValueError, match="Control"):
        Control(what, size)


# --- bad input ----------------------------------------------------------------------------------

NAN = float("nan")


@pytest.mark.parametrize(("make", "name"), [
    (lambda: checks.agreement([1.0, NAN], 1.0, 0.0, dof=None), "estimate"),
    (lambda: checks.agreement([1.0, 2.0], [1.0, NAN], 0.0, dof=None), "stderr"),
    (lambda: checks.agreement([1.0, 2.0], 1.0, NAN, dof=None), "truth"),
    (lambda: checks.agreement([1.0, 2.0], 1.0, 0.0, dof=None, bound=NAN), "bound"),
    (lambda: checks.agreement([1.0, 2.0], [1.0, -1.0], 0.0, dof=None), "stderr"),
    (lambda: checks.at_most([NAN], 1.0, 0.0, dof=3), "value"),
    (lambda: checks.at_most([1.0], float("inf"), 0.0, dof=3), "stderr"),
    (lambda: checks.at_most([1.0], -1.0, 0.0, dof=3), "stderr"),
    (lambda: checks.at_least([1.0], 1.0, NAN, dof=3), "limit"),
    (lambda: checks.within([NAN], 0.0, atol=1.0), "value"),
    (lambda: checks.within([1.0], NAN, atol=1.0), "reference"),
    (lambda: checks.below([1.0, NAN], 2.0), "value"),
    (lambda: checks.above([NAN], 0.0), "value"),
    (lambda: checks.p_value(lambda s: 0.5, 0.0), "level"),
    (lambda: checks.p_value(lambda s: 0.5, 1.0), "level"),
])
def test_checks_reject_bad_input(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_checks_reject_bad_values_at_check_time():
    with pytest.raises(ValueError, match="p-value"):
        checks.p_value(lambda s: NAN, 0.01)(0.0)
    with pytest.raises(ValueError, match="p-value"):
        checks.p_value(lambda s: 1.5, 0.01)(0.0)
    with pytest.raises(ValueError, match="dof"):
        checks.agreement([1.0], 1.0, 1.0, dof=0)(0.0)
    p = checks.p_value(lambda s: 0.5 - s, 0.01)
    assert p(0.0).passed and not p(0.495).passed
