"""Neural and parametric models: a re-export of :mod:`densityformula.models` (kept for old imports).

``densityformula.neural.MLPDenoiser`` is :class:`densityformula.models.MLPDenoiser`, and so on;
the code lives in :mod:`densityformula.models.neural` and :mod:`densityformula.models.affine`.
"""
from __future__ import annotations

from .models.affine import AffineDenoiser
from .models.neural import ConditionalMLPDenoiser, ConditionedModel, MLPDenoiser, log_snr_embedding

__all__ = [
    "MLPDenoiser",
    "ConditionalMLPDenoiser",
    "ConditionedModel",
    "AffineDenoiser",
    "log_snr_embedding",
]
