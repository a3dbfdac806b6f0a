"""Shared helpers of the experiment scripts: claims, tolerances, figures and tables.

Not an experiment (the leading underscore keeps ``densityformula reproduce`` from running it).
Each experiment loads it with :func:`load` below, by path, so that the scripts work wherever
the driver imports them from.

Tolerances are never picked to make a claim pass.  A Monte Carlo estimate is compared with its
ground truth through ``|estimate - truth| <= c * stderr + bound``, where ``bound`` is a
deterministic error bound the estimator reports (truncation, grid) and ``c`` is the two-sided
Student-t quantile at family-wise level ``alpha`` over the ``n`` points tested (Bonferroni), with
the degrees of freedom of the standard error (replicates - 1): with a calibrated standard error
a correct estimator fails such a claim with probability at most ``alpha``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from densityformula import schedules  # noqa: E402

# the continuous schedules every schedule-sweep experiment runs over
SCHEDULES = {
    "LiYan": schedules.LiYan,
    "VPLinear": schedules.VPLinear,
    "VPCosine": schedules.VPCosine,
    "SubVP": schedules.SubVP,
    "VE": schedules.VE,
}

ALPHA = 1e-3  # family-wise false-alarm level of every statistical claim


def t_crit(n_tests: int, dof: Optional[int] = None, alpha: float = ALPHA) -> float:
    """Two-sided critical value at family-wise level ``alpha`` over ``n_tests`` (Bonferroni).

    Student-t with ``dof`` degrees of freedom (normal when ``dof`` is None).
    """
    from scipy import stats

    p = 1.0 - alpha / (2.0 * max(1, int(n_tests)))
    return float(stats.t.ppf(p, dof)) if dof else float(stats.norm.ppf(p))


def as_np(v: Any) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().double().numpy()
    return np.asarray(v, dtype=float)


def claim(name: str, value: Any, expected: str, passed: bool) -> Dict[str, Any]:
    """One entry of ``summary["claims"]`` (values rounded for the report, JSON-safe)."""
    return {"name": name, "value": _round(value), "expected": expected, "passed": bool(passed)}


def _round(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            return str(v)
        return float(f"{v:.6g}")
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return _round(float(v))
    if isinstance(v, (list, tuple)):
        return [_round(x) for x in v]
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    return v


def agreement(
    name: str,
    estimate: Any,
    stderr: Any,
    truth: Any,
    *,
    dof: Optional[int],
    bound: Any = 0.0,
    alpha: float = ALPHA,
) -> Dict[str, Any]:
    """Claim ``|estimate - truth| <= c stderr + bound`` at every point (family-wise level ``alpha``).

    The reported value is the largest ``(|error| - bound) / stderr`` (a z-score; 0 when the error is
    within the bound) together with the largest absolute error.
    """
    est, se, tr = as_np(estimate).ravel(), as_np(stderr).ravel(), as_np(truth).ravel()
    b = np.broadcast_to(as_np(bound), est.shape)
    err = np.abs(est - tr)
    c = t_crit(est.size, dof, alpha)
    excess = np.maximum(err - b, 0.0)
    z = np.where(se > 0, excess / np.where(se > 0, se, 1.0), np.where(excess > 0, np.inf, 0.0))
    passed = bool(np.all(excess <= c * se))
    return claim(
        name,
        {"max |error|": float(err.max()), "max z": float(z.max()), "mean stderr": float(se.mean())},
        f"|error| <= {c:.2f} stderr + reported bound at all {est.size} points",
        passed,
    )


def save_table(rows: Sequence[Dict[str, Any]], out_dir: Path, name: str) -> str:
    import pandas as pd

    frame = pd.DataFrame(list(rows))
    frame.to_csv(out_dir / name, index=False, float_format="%.8g")
    return name


def save_fig(fig: plt.Figure, out_dir: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name


def loglog_slope(x: Iterable[float], y: Iterable[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    lx, ly = np.log(np.asarray(list(x), float)), np.log(np.asarray(list(y), float))
    return float(np.polyfit(lx, ly, 1)[0])


class Timer:
    """``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> Timer:
        self._t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._t0


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def fmt(v: float, se: Optional[float] = None) -> str:
    return f"{v:.5g}" if se is None else f"{v:.5g} ± {se:.2g}"


__all__: List[str] = [
    "ALPHA", "t_crit", "as_np", "claim", "agreement", "save_table", "save_fig", "loglog_slope", "Timer",
    "generator", "fmt", "plt", "np", "torch",
]
