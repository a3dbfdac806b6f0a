"""Does the ELBO rank models like their true likelihood?  Spearman's rho with a cluster bootstrap (I33).

Given, for a set of models (checkpoints of training runs), an objective ``x`` (``-E_q[ELBO]``) and
the quantity it stands for ``y`` (the true NLL ``E_q[-log p_theta]``), :func:`rank_agreement`
returns Spearman's rank correlation, a percentile-bootstrap interval that resamples whole training
runs (``groups``: checkpoints of one run are not independent), and the pairs whose order the two
disagree on by more than their errors (the *inversions*).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from .._validation import check_int, check_seed

__all__ = ["RankAgreement", "rank_agreement", "spearman"]


def spearman(x: Union[Sequence[float], np.ndarray], y: Union[Sequence[float], np.ndarray]) -> float:
    """Spearman's ``rho``: the Pearson correlation of the average ranks of ``x`` and ``y`` (I33).

    ``nan`` when either has a single distinct value (no ranking to compare)."""
    from scipy.stats import rankdata

    ra = rankdata(np.asarray(x, dtype=float), method="average")
    rb = rankdata(np.asarray(y, dtype=float), method="average")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


@dataclass(frozen=True)
class RankAgreement:
    """Spearman's ``rho`` of ``(x, y)``, its bootstrap interval ``(lo, hi)`` at ``level``, and the inversions:
    index pairs ``(i, j)`` with ``x_i < x_j`` but ``y_i > y_j``, both differences beyond the errors."""

    rho: float
    lo: float
    hi: float
    level: float
    n: int
    n_groups: int
    inversions: List[Tuple[int, int]] = field(default_factory=list)
    n_pairs: int = 0

    @property
    def inverted_fraction(self) -> float:
        """Inversions over the pairs whose order both quantities resolve."""
        return len(self.inversions) / self.n_pairs if self.n_pairs else 0.0


def _vector(v: Any, name: str, n: Optional[int] = None) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=float).ravel()
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of real numbers, got {type(v).__name__}") from None
    if n is not None and a.size != n:
        raise ValueError(f"{name} must have {n} entries (one per model), got {a.size}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite")
    return a


def rank_agreement(
    x: Sequence[float], y: Sequence[float], *, groups: Optional[Sequence[Any]] = None,
    x_error: Any = 0.0, y_error: Any = 0.0, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
) -> RankAgreement:
    """Spearman's ``rho(x, y)`` with a percentile bootstrap over ``groups`` and the inversions (I33).

    Args:
        x, y: one value per model (e.g. ``-E_q[ELBO]`` and the true NLL).
        groups: the unit of independence of each model (e.g. its training run); the bootstrap draws
            whole groups with replacement.  Default: every model its own group.
        x_error, y_error: error of each value (scalar or per model); a pair is resolved when both
            differences exceed the sum of the two errors.
        n_boot, level, seed: bootstrap replicates, interval level, and the seed of its draws.
    """
    xa = _vector(x, "x")
    n = xa.size
    if n < 3:
        raise ValueError(f"x must hold at least 3 models, got {n}")
    ya = _vector(y, "y", n)
    ex = np.broadcast_to(_vector(np.broadcast_to(x_error, (n,)), "x_error"), (n,))
    ey = np.broadcast_to(_vector(np.broadcast_to(y_error, (n,)), "y_error"), (n,))
    n_boot = check_int(n_boot, "n_boot", 1)
    if not (0.0 < float(level) < 1.0):
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    rng = np.random.default_rng(check_seed(seed))
    labels = list(range(n)) if groups is None else list(groups)
    if len(labels) != n:
        raise ValueError(f"groups must have {n} entries (one per model), got {len(labels)}")
    keys = {g: i for i, g in enumerate(dict.fromkeys(labels))}
    gid = np.array([keys[g] for g in labels])
    members = [np.flatnonzero(gid == g) for g in range(len(keys))]
    rho = spearman(xa, ya)
    boot = []
    for _ in range(n_boot):
        pick = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        r = spearman(xa[pick], ya[pick])
        if np.isfinite(r):
            boot.append(r)
    a = (1.0 - float(level)) / 2.0
    lo, hi = (float(np.quantile(boot, a)), float(np.quantile(boot, 1.0 - a))) if boot else (np.nan, np.nan)
    i, j = np.triu_indices(n, 1)
    dx, dy = xa[j] - xa[i], ya[j] - ya[i]
    resolved = (np.abs(dx) > ex[i] + ex[j]) & (np.abs(dy) > ey[i] + ey[j])
    inv = resolved & (dx * dy < 0)
    # (better ELBO, better NLL): the first has the smaller x
    inversions = [(int(a), int(b)) if d > 0 else (int(b), int(a)) for a, b, d in zip(i[inv], j[inv], dx[inv])]
    return RankAgreement(rho, lo, hi, float(level), n, len(members), inversions, int(resolved.sum()))
