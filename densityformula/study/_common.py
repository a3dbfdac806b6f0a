"""Argument handling shared by the study's functions (docs/math.md section 12)."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from .._validation import model_dimension, model_dtype_device
from ..models import CheckedModel, DiffusionModel, check_model
from ..targets import GaussianMixture
from .family import Family

__all__ = ["as_model", "inner_model", "setup", "check_generator", "check_choice"]


def as_model(model: object) -> DiffusionModel:
    """The model of a :class:`Family`, or ``model`` itself if it is a :class:`DiffusionModel`."""
    if isinstance(model, Family):
        return model.model
    return check_model(model)


def inner_model(model: DiffusionModel) -> DiffusionModel:
    """The model behind a :class:`CheckedModel` wrapper."""
    return model.inner if isinstance(model, CheckedModel) else model


def setup(
    model: object, target: GaussianMixture, dtype: Optional[torch.dtype], device: Any
) -> Tuple[DiffusionModel, int, torch.dtype, torch.device]:
    """``(model, d, dtype, device)``: the model, the target's dimension (checked against the model's,
    where it states one) and the dtype/device to work in (default the model's)."""
    m = as_model(model)
    d = target.d
    md = model_dimension(inner_model(m))
    if md is not None and md != d:
        raise ValueError(f"the model has dimension {md} but the target has d = {d}")
    dt, dev = model_dtype_device(inner_model(m), dtype, device)
    return m, d, dt, dev


def check_generator(generator: object) -> Optional[torch.Generator]:
    """``generator`` if it is ``None`` or a ``torch.Generator``, else ``TypeError``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


def check_choice(value: object, name: str, choices: Tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else ``ValueError`` naming ``name``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
