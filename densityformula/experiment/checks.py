"""Checks for experiment claims: statistical tests with a stated level, and exact comparisons.

Every function here returns a *check*: a function of a defect size ``s >= 0`` that returns an
:class:`~densityformula.experiment.Outcome` (docs/math.md I25).  ``check(0)`` tests the real
data; ``check(s)`` tests the same data with a defect of size ``s`` introduced the way the
function's docstring says (a bias added to an estimate, pushed past a limit, ...).  Pair a check
with a :class:`~densityformula.experiment.Control` in a :class:`~densityformula.experiment.Claim`.

Statistical checks hold at family-wise level ``alpha`` (default :data:`ALPHA`) split evenly
between a test of every point (Bonferroni over points, so a defect at one point is seen) and a
test of the mean over points (so a bias shared by all points is seen, at a ``sqrt(n)`` smaller
standard error).  Critical values are Student-t quantiles with the degrees of freedom of the
standard errors used (``dof``; normal when ``None``); the mean's degrees of freedom follow from
Welch-Satterthwaite.  With calibrated standard errors a correct estimator fails such a check with
probability at most ``alpha``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import numpy as np

from ._claims import Check, Outcome

__all__ = [
    "ALPHA", "t_crit", "as_array", "agreement", "at_most", "at_least", "within", "below", "above", "p_value",
]

#: family-wise false-alarm level of every statistical claim
ALPHA = 1e-3


def t_crit(n_tests: int = 1, dof: Optional[float] = None, alpha: float = ALPHA, *, sided: int = 2) -> float:
    """Critical value at family-wise level ``alpha`` over ``n_tests`` tests (Bonferroni).

    ``sided=2``: the ``1 - alpha / (2 n_tests)`` quantile; ``sided=1``: ``1 - alpha / n_tests``.
    Student-t with ``dof`` degrees of freedom, normal when ``dof`` is ``None`` (I25).
    """
    from scipy import stats

    if sided not in (1, 2):
        raise ValueError(f"sided must be 1 or 2, got {sided!r}")
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    if dof is not None and not dof > 0:  # dof=0 used to mean a normal quantile, a negative one NaN
        raise ValueError(f"dof must be None (normal) or > 0, got {dof!r}")
    p = 1.0 - alpha / (sided * max(1, int(n_tests)))
    return float(stats.t.ppf(p, dof)) if dof else float(stats.norm.ppf(p))


def as_array(v: Any) -> np.ndarray:
    """``v`` (tensor, array, number, list) as a flat float64 numpy array."""
    try:
        import torch

        if isinstance(v, torch.Tensor):
            return np.asarray(v.detach().cpu().double().numpy(), dtype=float).ravel()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return np.asarray(v, dtype=float).ravel()


def _finite(name: str, a: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has non-finite entries: a claim cannot be checked on them")
    return a


def _stderr(a: np.ndarray) -> np.ndarray:
    if np.any(_finite("stderr", a) < 0):
        raise ValueError("stderr has negative entries: a standard error is >= 0")
    return a


def _mean_dof(se: np.ndarray, dof: Optional[float]) -> Optional[float]:
    """Welch-Satterthwaite degrees of freedom of ``sqrt(sum se^2) / n``."""
    if not dof:
        return None
    s2 = se**2
    den = float(np.sum(s2**2) / dof)
    return float(np.sum(s2) ** 2 / den) if den > 0 else None


def _z(excess: np.ndarray, se: np.ndarray) -> np.ndarray:
    return np.where(se > 0, excess / np.where(se > 0, se, 1.0), np.where(excess > 0, np.inf, 0.0))


def _two_tests(
    err: np.ndarray, se: np.ndarray, bound: np.ndarray, dof: Optional[float], alpha: float, sided: int,
    mean_stderr: Optional[float],
) -> tuple[bool, dict[str, float]]:
    """Point-wise and mean tests of ``err`` (signed excess for one-sided, error for two-sided)."""
    n = err.size
    c_pts = t_crit(n, dof, alpha / 2, sided=sided)
    e_mean = float(err.mean())
    se_mean = float(mean_stderr) if mean_stderr is not None else float(math.sqrt(np.sum(se**2)) / n)
    c_mean = t_crit(1, _mean_dof(se, dof), alpha / 2, sided=sided)
    if sided == 2:
        exc_pts = np.maximum(np.abs(err) - bound, 0.0)
        exc_mean = max(abs(e_mean) - float(bound.mean()), 0.0)
    else:
        exc_pts = np.maximum(err - bound, 0.0)
        exc_mean = max(e_mean - float(bound.mean()), 0.0)
    z_pts = _z(exc_pts, se)
    z_mean = float(_z(np.array([exc_mean]), np.array([se_mean]))[0])
    passed = bool(np.all(z_pts <= c_pts)) and z_mean <= c_mean
    return passed, {
        "z_max": float(z_pts.max()), "c_pts": c_pts, "z_mean": z_mean, "c_mean": c_mean,
        "e_mean": e_mean, "se_mean": se_mean,
    }


def agreement(
    estimate: Any,
    stderr: Any,
    truth: Any,
    *,
    dof: Optional[float],
    bound: Any = 0.0,
    unit: str = "nats",
    alpha: float = ALPHA,
    mean_stderr: Optional[float] = None,
) -> Check:
    """``|estimate - truth| <= c se + bound`` at every point, and the same for the mean over points.

    Defect of size ``s``: ``s`` (in ``unit``) added to every estimate (a shared bias).
    ``bound`` is a deterministic error bound the estimator reports (truncation, grid, O(1/T)).
    ``mean_stderr`` overrides the mean's standard error (``sqrt(sum se^2) / n`` for independent
    points) where the points share noise.
    """
    est = _finite("estimate", as_array(estimate))
    se = _stderr(np.broadcast_to(as_array(stderr), est.shape).astype(float))
    tr = _finite("truth", np.broadcast_to(as_array(truth), est.shape).astype(float))
    b = _finite("bound", np.broadcast_to(as_array(bound), est.shape).astype(float))

    def check(s: float) -> Outcome:
        err = est + s - tr
        passed, r = _two_tests(err, se, b, dof, alpha, 2, mean_stderr)
        return Outcome(passed, {
            "max |error|": (float(np.abs(err).max()), unit),
            "mean error": (r["e_mean"], unit),
            "max z (points)": r["z_max"], "limit z (points)": r["c_pts"],
            "z (mean)": r["z_mean"], "limit z (mean)": r["c_mean"],
        })

    return check


def _one_sided(value: Any, stderr: Any, limit: Any, dof: Optional[float], bound: Any, unit: str, alpha: float,
               mean_stderr: Optional[float], sign: float) -> Check:
    v = _finite("value", as_array(value))
    se = _stderr(np.broadcast_to(as_array(stderr), v.shape).astype(float))
    lim = _finite("limit", np.broadcast_to(as_array(limit), v.shape).astype(float))
    b = _finite("bound", np.broadcast_to(as_array(bound), v.shape).astype(float))

    def check(s: float) -> Outcome:
        excess = sign * (v - lim) + s  # > 0: on the wrong side of the limit
        passed, r = _two_tests(excess, se, b, dof, alpha, 1, mean_stderr)
        side = "value - limit" if sign > 0 else "limit - value"
        return Outcome(passed, {
            f"max ({side})": (float(excess.max()), unit),
            f"mean ({side})": (r["e_mean"], unit),
            "max z (points)": r["z_max"], "limit z (points)": r["c_pts"],
            "z (mean)": r["z_mean"], "limit z (mean)": r["c_mean"],
        })

    return check


def at_most(
    value: Any, stderr: Any, limit: Any, *, dof: Optional[float], bound: Any = 0.0, unit: str = "nats",
    alpha: float = ALPHA, mean_stderr: Optional[float] = None,
) -> Check:
    """One-sided: ``value <= limit + c se + bound`` at every point and in the mean over points.

    Defect of size ``s``: every value raised by ``s`` (pushed past the limit).
    """
    return _one_sided(value, stderr, limit, dof, bound, unit, alpha, mean_stderr, +1.0)


def at_least(
    value: Any, stderr: Any, limit: Any, *, dof: Optional[float], bound: Any = 0.0, unit: str = "nats",
    alpha: float = ALPHA, mean_stderr: Optional[float] = None,
) -> Check:
    """One-sided: ``value >= limit - c se - bound`` at every point and in the mean over points.

    Defect of size ``s``: every value lowered by ``s``.
    """
    return _one_sided(value, stderr, limit, dof, bound, unit, alpha, mean_stderr, -1.0)


def within(value: Any, reference: Any, *, atol: float, rtol: float = 0.0, unit: str = "") -> Check:
    """Exact comparison: ``|value - reference| <= atol + rtol |reference|`` everywhere.

    Defect of size ``s``: ``s`` added to every value (a wrong constant).
    """
    v = _finite("value", as_array(value))
    ref = _finite("reference", np.broadcast_to(as_array(reference), v.shape).astype(float))
    tol = atol + rtol * np.abs(ref)

    def check(s: float) -> Outcome:
        diff = np.abs(v + s - ref)
        return Outcome(bool(np.all(diff <= tol)), {
            "max |difference|": (float(diff.max()), unit), "tolerance": (float(tol.max()), unit),
        })

    return check


def below(value: Any, limit: float, *, unit: str = "", label: str = "max value") -> Check:
    """Exact comparison: every ``value <= limit``.  Defect of size ``s``: every value raised by ``s``."""
    v = _finite("value", as_array(value))

    def check(s: float) -> Outcome:
        top = float(v.max()) + s
        return Outcome(top <= limit, {label: (top, unit), "limit": (float(limit), unit)})

    return check


def above(value: Any, limit: float, *, unit: str = "", label: str = "min value") -> Check:
    """Exact comparison: every ``value >= limit``.  Defect of size ``s``: every value lowered by ``s``."""
    v = _finite("value", as_array(value))

    def check(s: float) -> Outcome:
        low = float(v.min()) - s
        return Outcome(low >= limit, {label: (low, unit), "limit": (float(limit), unit)})

    return check


def p_value(p_of: Callable[[float], float], level: float, *, label: str = "p-value") -> Check:
    """A test's p-value on data with a defect of size ``s`` (``p_of(s)``) must be ``>= level``."""
    if not (0.0 < level < 1.0):
        raise ValueError(f"level must lie in (0, 1), got {level!r}")

    def check(s: float) -> Outcome:
        p = float(p_of(s))
        if not (0.0 <= p <= 1.0):
            raise ValueError(f"p_of returned {p!r}, not a p-value")
        return Outcome(p >= level, {label: p, "level": level})

    return check
