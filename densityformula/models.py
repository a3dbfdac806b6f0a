"""The model interface every estimator talks to (docs/architecture.md "API contract", docs/math.md section 2).

A :class:`DiffusionModel` has a ``schedule`` and a denoiser ``denoise(x_t, t) ~ E[X_0 | X_t = x_t]``.
Noise prediction, score and velocity are derived from it through
:mod:`densityformula.parameterization` (the one conversion), so a model implements one method
and every estimator and sampler runs on it.  ``denoise`` must be differentiable in ``x_t``
(estimators use autograd for divergences).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
import math
from typing import Tuple

import torch

from . import parameterization as P
from ._validation import TimeLike, as_time, per_point_time
from .schedules import Schedule
from .targets import GaussianMixture

Tensor = torch.Tensor

__all__ = ["DiffusionModel", "AnalyticModel", "log_snr_interval", "check_model"]

#: the whole log-SNR line: an analytic model is exact at every noise level
WHOLE_LINE: Tuple[float, float] = (-math.inf, math.inf)


class DiffusionModel(ABC):
    """Interface: ``schedule`` plus ``denoise(x_t, t)``; ``eps``, ``score``, ``v`` are derived.

    ``x_t`` has shape ``(n, ...)`` (points ``(n, d)``); ``t`` is a float or an ``(n,)`` tensor
    in the schedule's range.
    """

    schedule: Schedule

    @abstractmethod
    def denoise(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """``D(x_t, t) ~ E[X_0 | X_t = x_t]``, same shape as ``x_t``."""

    @property
    def valid_log_snr(self) -> Tuple[float, float]:
        """``(lambda_lo, lambda_hi)``: the log-SNRs at which this model may be trusted.

        The whole line for an analytic model; the range a network was trained on (recorded by the
        trainer, saved in its checkpoint).  Estimators and samplers default to
        :func:`log_snr_interval`, this range intersected with the schedule's.
        """
        return WHOLE_LINE

    def _scales(self, x_t: Tensor, t: TimeLike) -> Tuple[Tensor, Tensor]:
        if not isinstance(x_t, Tensor) or not x_t.dtype.is_floating_point or x_t.ndim < 1:
            raise TypeError(f"x_t must be a floating torch.Tensor of shape (n, ...), got {type(x_t).__name__}")
        tt = as_time(t, "t").to(x_t.device)
        if tt.ndim == 1:
            per_point_time(tt, x_t.shape[0])
        return self.schedule.alpha(tt).to(x_t.dtype), self.schedule.sigma(tt).to(x_t.dtype)

    def eps(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """Noise prediction ``(x_t - alpha D) / sigma`` (docs/math.md section 2)."""
        a, s = self._scales(x_t, t)
        return P.x0_to_eps(x_t, self.denoise(x_t, t), a, s)

    def score(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """Score ``-(x_t - alpha D) / sigma^2`` (I1, Tweedie)."""
        a, s = self._scales(x_t, t)
        return P.from_x0("score", self.denoise(x_t, t), x_t, a, s)

    def v(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """Velocity ``alpha eps - sigma D`` (docs/math.md section 2)."""
        a, s = self._scales(x_t, t)
        return P.x0_to_v(x_t, self.denoise(x_t, t), a, s)


class AnalyticModel(DiffusionModel):
    """The exact denoiser and score of an analytic target under a schedule (I1-I4).

    Args:
        target: a :class:`~densityformula.targets.GaussianMixture`.
        schedule: the forward process.
    """

    def __init__(self, target: GaussianMixture, schedule: Schedule) -> None:
        if not isinstance(target, GaussianMixture):
            raise TypeError(f"target must be a GaussianMixture, got {type(target).__name__}")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a densityformula Schedule, got {type(schedule).__name__}")
        self.target = target
        self.schedule = schedule

    def denoise(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """Posterior mean ``sum_k r_k m_k`` (I3)."""
        return self.target.denoise(x_t, t, self.schedule)

    def score(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """Exact ``grad log q_t`` computed directly (stable even where ``sigma = 0``) (I1)."""
        return self.target.score(x_t, t, self.schedule)

    def eps(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """Exact noise prediction ``-sigma s_t`` (I1), computed from the score so that it stays finite
        (zero) where ``sigma = 0`` instead of ``0 / 0``."""
        _, s = self._scales(x_t, t)
        return P.score_to_eps(self.score(x_t, t), s)

    def v(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """Exact velocity ``alpha eps - sigma D`` (docs/math.md section 2), finite where ``sigma = 0``."""
        a, s = self._scales(x_t, t)
        return P.eps_x0_to_v(self.eps(x_t, t), self.denoise(x_t, t), a, s)

    def score_divergence(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """Exact ``div s_t = tr grad^2 log q_t`` (I4)."""
        return self.target.score_divergence(x_t, t, self.schedule)

    def denoise_and_score_divergence(self, x_t: Tensor, t: TimeLike) -> Tuple[Tensor, Tensor]:
        """The posterior mean (I3) and ``div s_t`` (I4) from one pass over the components."""
        out = self.target._eval(x_t, t, self.schedule, ("denoise", "div"))
        return out["denoise"], out["div"]

    def log_prob(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """Exact ``log q_t(x_t)`` (I2)."""
        return self.target.log_prob(x_t, t, self.schedule)

    @property
    def dtype(self) -> torch.dtype:
        return self.target.dtype

    @property
    def device(self) -> torch.device:
        return self.target.device

    def __repr__(self) -> str:
        return f"AnalyticModel({self.target!r}, {self.schedule!r})"


def check_model(model: object, name: str = "model") -> DiffusionModel:
    """``model`` if it is a :class:`DiffusionModel`, else ``TypeError`` naming ``name``."""
    if not isinstance(model, DiffusionModel):
        raise TypeError(
            f"{name} must be a densityformula DiffusionModel (a schedule and denoise(x_t, t)), "
            f"got {type(model).__name__}"
        )
    return model


def log_snr_interval(model: DiffusionModel) -> Tuple[float, float]:
    """The default log-SNR interval of every estimator and sampler for ``model``.

    ``model.valid_log_snr`` intersected with ``model.schedule.finite_log_snr_range`` (infinite
    schedule ends clipped to ``Schedule.LOG_SNR_CLIP``).  Raises ``ValueError`` if they do not
    overlap.
    """
    lo_s, hi_s = model.schedule.finite_log_snr_range
    lo_m, hi_m = getattr(model, "valid_log_snr", WHOLE_LINE)
    lo, hi = max(lo_s, float(lo_m)), min(hi_s, float(hi_m))
    if not lo < hi:
        raise ValueError(
            f"the model's valid log-SNR range [{lo_m}, {hi_m}] does not overlap its schedule's "
            f"[{lo_s}, {hi_s}]"
        )
    return lo, hi


_NEURAL = ("MLPDenoiser", "ConditionalMLPDenoiser", "ConditionedModel", "AffineDenoiser", "log_snr_embedding")


def __getattr__(name: str):
    """Neural and parametric models live in :mod:`densityformula.neural`; re-exported here lazily."""
    if name in _NEURAL:
        from . import neural

        return getattr(neural, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
