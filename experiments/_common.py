"""Helpers shared by the experiment scripts (not an experiment: the leading underscore).

The generic machinery -- the :class:`~densityformula.experiment.Experiment` type, claims with
negative controls, statistical checks, figure style -- lives in :mod:`densityformula.experiment`;
this module keeps only what the experiments here share among themselves.
"""
from __future__ import annotations

from typing import Any, Dict, Type

import numpy as np
import torch

from densityformula import schedules

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
