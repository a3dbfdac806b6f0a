"""Uniform 1-D grids and the KL divergence between two densities on one (rectangle rule)."""
from __future__ import annotations

import math
from typing import Tuple

import torch

Tensor = torch.Tensor


def check_uniform_grid(grid: object, min_points: int = 5) -> Tuple[Tensor, float]:
    """``(grid, h)`` for a real, finite, uniform, increasing 1-d tensor of at least ``min_points`` points.

    ``ValueError``/``TypeError`` naming ``grid`` otherwise.
    """
    if not isinstance(grid, Tensor) or grid.ndim != 1 or grid.numel() < min_points:
        raise ValueError(f"grid must be a 1-d tensor with at least {min_points} points")
    if grid.is_complex() or not grid.dtype.is_floating_point:
        raise TypeError(f"grid must be a real floating tensor, got dtype {grid.dtype}")
    if not bool(torch.isfinite(grid).all()):
        raise ValueError("grid contains NaN or inf")
    hs = grid[1:] - grid[:-1]
    h = float(hs.mean())
    if not h > 0 or float((hs - h).abs().max()) > 1e-9 * max(1.0, abs(h)):
        raise ValueError("grid must be uniform and increasing")
    return grid, h


def _kl_sum(log_p: Tensor, log_q: Tensor, h: float) -> float:
    p = torch.exp(log_p)
    # 0 log 0 = 0: where p underflows the term vanishes whatever log q is
    term = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return float(term.sum()) * h


def grid_kl(log_p: Tensor, log_q: Tensor, grid: Tensor) -> Tuple[float, float]:
    """``KL(p || q) = int p (log p - log q) dx`` by the rectangle rule on a uniform grid (I41).

    ``log_p``, ``log_q``: ``(G,)`` log-densities at the grid points (normalized densities; the rule
    does not renormalize them, so a density that lost mass off the grid shows in the value).
    Returns ``(kl, error)``: ``error = |KL_h - KL_2h|``, the difference from the same rule on every
    other point, an estimate of the rule's error (an overestimate once the rule converges).
    ``ValueError`` for non-finite ``log_q`` where ``p > 0`` (an infinite KL is not a number to report).
    """
    grid, h = check_uniform_grid(grid)
    for name, v in (("log_p", log_p), ("log_q", log_q)):
        if not isinstance(v, Tensor) or v.shape != grid.shape:
            raise ValueError(f"{name} must be a tensor of the grid's shape {tuple(grid.shape)}")
        if bool(torch.isnan(v).any()) or bool((v == math.inf).any()):
            raise ValueError(f"{name} contains NaN or +inf")
    lp, lq = log_p.double(), log_q.double()
    if bool((torch.isinf(lq) & (lp > -math.inf)).any()):
        raise ValueError("log_q is -inf where p > 0: KL(p || q) is infinite")
    fine = _kl_sum(lp, lq, h)
    coarse = _kl_sum(lp[::2], lq[::2], 2.0 * h)
    return fine, abs(fine - coarse)
