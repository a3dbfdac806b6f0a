"""The models package: the model contract and every model (docs/architecture.md "API contract").

- :mod:`._base`: :class:`Denoiser` (the ``typing.Protocol``: ``schedule``, ``denoise(x_t, t)``,
  ``valid_log_snr``), :class:`DiffusionModel` (the base class: derived ``eps``/``score``/``v``),
  :class:`ExactDivergence` (the optional exact divergence, I4), :func:`check_model`, :func:`log_snr_interval`,
  :data:`WHOLE_LINE` (docs/math.md section 2, I24);
- :mod:`.analytic`: :class:`AnalyticModel`, the exact model of a Gaussian mixture (I1-I4);
- :mod:`.neural`: :class:`MLPDenoiser`, :class:`ConditionalMLPDenoiser`,
  :class:`ConditionedModel`, :func:`log_snr_embedding`;
- :mod:`.affine`: :class:`AffineDenoiser`, one affine map per discrete step (I14);
- :mod:`.checked`: the model-call boundary, :func:`checked` and :class:`ModelOutputError`.

The modules import only ``_base`` and lower layers (schedules, targets, parameterization), so the
package has no import cycle; ``densityformula.neural`` re-exports the neural models.
"""
from ._base import (
    WHOLE_LINE,
    Denoiser,
    DiffusionModel,
    ExactDivergence,
    ModelProtocol,
    check_model,
    log_snr_interval,
)
from .affine import AffineDenoiser
from .analytic import AnalyticModel
from .checked import CheckedModel, ModelOutputError, check_output, checked
from .neural import ConditionalMLPDenoiser, ConditionedModel, MLPDenoiser, log_snr_embedding

__all__ = [
    "Denoiser",
    "ModelProtocol",
    "ExactDivergence",
    "DiffusionModel",
    "AnalyticModel",
    "MLPDenoiser",
    "ConditionalMLPDenoiser",
    "ConditionedModel",
    "AffineDenoiser",
    "log_snr_embedding",
    "WHOLE_LINE",
    "check_model",
    "log_snr_interval",
    "checked",
    "check_output",
    "CheckedModel",
    "ModelOutputError",
]
