"""Canonical evaluation blocks, their split over ranks, work items and per-point seeds (private).

The evaluator never lets the batch size or the number of processes decide which points share an
estimator call (the package docstring of :mod:`densityformula.evaluation` says why):

- the ``n`` points are cut, by global index, into canonical blocks ``[k B, min((k + 1) B, n))``
  of ``B = block`` points (:func:`blocks`); one estimator call evaluates exactly one block;
- rank ``r`` of ``W`` takes the contiguous run of blocks ``shard_bounds(n_blocks, r, W)``
  (:func:`rank_blocks`): disjoint, covering, no padding, no duplicate;
- a rank's blocks are grouped into work items of ``ceil(batch_size / B)`` blocks
  (:func:`work_items`), the unit of progress and of the part files a resume reuses.

So the floating-point operations that produce point ``i``'s number depend on ``i``, its block
and the run's options only.  Randomness comes from :func:`point_seed` ``(seed, i)``.
"""
from __future__ import annotations

from typing import List, Tuple

from ..training.distributed import shard_bounds

__all__ = ["blocks", "rank_blocks", "work_items", "point_seed", "SEED_LIMIT"]

#: seeds are in ``[0, 2**63)`` (a torch generator seed, :func:`densityformula._validation.check_seed`)
SEED_LIMIT = 1 << 63
_MASK = (1 << 64) - 1

Block = Tuple[int, int]


def blocks(n: int, block: int) -> List[Block]:
    """The canonical blocks ``[(start, stop)]`` of ``n`` points in blocks of ``block`` (the last may be short)."""
    if n < 0 or block < 1:
        raise ValueError(f"need n >= 0 and block >= 1, got n={n}, block={block}")
    return [(s, min(s + block, n)) for s in range(0, n, block)]


def rank_blocks(all_blocks: List[Block], rank: int, world_size: int) -> List[Block]:
    """Rank ``rank``'s contiguous run of blocks: ``shard_bounds(len(all_blocks), rank, world_size)``."""
    lo, hi = shard_bounds(len(all_blocks), rank, world_size)
    return all_blocks[lo:hi]


def work_items(my_blocks: List[Block], batch_size: int, block: int) -> List[List[Block]]:
    """Consecutive groups of ``ceil(batch_size / block)`` blocks (at least one block per item)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    per = max(1, -(-batch_size // block))
    return [my_blocks[i:i + per] for i in range(0, len(my_blocks), per)]


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def point_seed(seed: int, index: int) -> int:
    """The seed of point ``index`` in a run seeded ``seed``: ``splitmix64(splitmix64(seed) XOR index) mod 2**63``.

    A function of ``(seed, index)`` alone (not of the batch, block or rank); distinct runs' seeds
    are decorrelated (``seed + index`` would give point 1 of seed 0 the stream of point 0 of seed 1).
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return _splitmix64(_splitmix64(seed & _MASK) ^ (index & _MASK)) % SEED_LIMIT
