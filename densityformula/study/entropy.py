"""The target's entropy ``H(q) = -E_q log q`` (docs/math.md section 12, I28).

Closed form for a single Gaussian, Gauss--Hermite per component in 1-D (I27), Monte Carlo with
a standard error for a mixture in ``d > 1``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .._validation import check_int
from ._target import check_target, gaussian_entropy
from .quadrature import entropy_1d

__all__ = ["Entropy", "target_entropy"]


@dataclass(frozen=True)
class Entropy:
    """``H(q)`` in nats with its error: ``"exact"`` (0), ``"quadrature"`` (``|Q_n - Q_{n/2}|``) or
    ``"stderr"`` (a Monte Carlo standard error)."""

    value: float
    error: float
    error_kind: str


def target_entropy(
    target: object, *, n_nodes: int = 96, n_samples: int = 1 << 16, generator: Optional[torch.Generator] = None,
    device: Optional[Any] = None,
) -> Entropy:
    """``H(q) = -E_q log q(X)``: ``1/2 log det(2 pi e S)`` for a Gaussian, Gauss--Hermite of
    ``-log q`` per component in 1-D (I27), else ``-(1/n) sum log q(x_i)``, ``x_i ~ q``."""
    q = check_target(target)
    if q.K == 1:
        return Entropy(float(gaussian_entropy(q.covariance().double())), 0.0, "exact")
    if q.d == 1:
        value, err = entropy_1d(q, n_nodes=n_nodes, device=device)
        return Entropy(value, err, "quadrature")
    n_samples = check_int(n_samples, "n_samples", 2)
    x = q.sample(n_samples, generator=generator)
    lp = q.log_prob(x).double()
    return Entropy(-float(lp.mean()), float(lp.std()) / math.sqrt(n_samples), "stderr")
