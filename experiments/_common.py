"""Helpers shared by the experiment scripts (not an experiment: the leading underscore).

The generic machinery -- the :class:`~densityformula.experiment.Experiment` type, claims with
negative controls, statistical checks, figure style -- lives in :mod:`densityformula.experiment`;
this module keeps only what the experiments here share among themselves.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Type

import numpy as np
import torch

from densityformula import schedules, targets

#: the 1-D target of the central study (elbo_vs_kl part b, elbo_vs_nll, weightings): three components,
#: outside every family of two
Q3 = targets.GaussianMixture([0.3, 0.3, 0.4], [[-2.0], [0.0], [1.5]], [0.1, 0.2, 0.15])

# the continuous schedules every schedule-sweep experiment runs over
SCHEDULES: Dict[str, Type[schedules.Schedule]] = {
    "LiYan": schedules.LiYan,
    "VPLinear": schedules.VPLinear,
    "VPCosine": schedules.VPCosine,
    "SubVP": schedules.SubVP,
    "VE": schedules.VE,
}


def as_np(v: Any) -> np.ndarray:
    """``v`` (tensor or array-like) as a float64 numpy array of the same shape."""
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().double().numpy()
    return np.asarray(v, dtype=float)


def fmt(v: float, se: float | None = None) -> str:
    return f"{v:.5g}" if se is None else f"{v:.5g} ± {se:.2g}"


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one torch thread, restoring the previous count after.

    For computations made of thousands of small tensor operations (grid propagations, quadratures):
    on a shared CPU one thread is 5-10x faster than a contended pool (measured: 35 s against 4 min
    for elbo_vs_kl's quick mode on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
