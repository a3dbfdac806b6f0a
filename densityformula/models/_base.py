"""The model contract every estimator and sampler talks to (docs/architecture.md "API contract").

A model is a ``schedule`` (the forward process, docs/math.md section 1), a denoiser
``denoise(x_t, t) ~ E[X_0 | X_t = x_t]`` (I3) and the log-SNR range over which it may be trusted,
``valid_log_snr`` (docs/math.md section 10, I24).  :class:`Denoiser` states that contract as a
``typing.Protocol``; :class:`DiffusionModel` is the base class that implements the rest of it
(noise prediction, score and velocity through :func:`densityformula.parameterization.convert`,
the optional exact divergence) so that a model implements one method and every estimator runs.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Protocol, Tuple, runtime_checkable

import torch

from .. import parameterization as P
from .._validation import TimeLike, as_time, per_point_time
from ..schedules import Schedule

Tensor = torch.Tensor

__all__ = [
    "Denoiser",
    "ModelProtocol",
    "ExactDivergence",
    "DiffusionModel",
    "WHOLE_LINE",
    "check_model",
    "log_snr_interval",
]

#: the whole log-SNR line: an analytic model is exact at every noise level
WHOLE_LINE: Tuple[float, float] = (-math.inf, math.inf)


@runtime_checkable
class Denoiser(Protocol):
    """The typed model contract (docs/architecture.md "API contract", docs/math.md I24).

    - ``schedule``: the forward process ``X_t = alpha_t X_0 + sigma_t Z`` (docs/math.md section 1);
    - ``denoise(x_t, t)``: ``D(x_t, t) ~ E[X_0 | X_t = x_t]`` (I3), same shape as ``x_t``;
    - ``valid_log_snr``: ``(lambda_lo, lambda_hi)``, where the model may be trusted (I24).

    Every :class:`DiffusionModel` satisfies it; ``isinstance(obj, Denoiser)`` checks the three
    members exist (not their signatures).
    """

    schedule: Schedule

    def denoise(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """``D(x_t, t) ~ E[X_0 | X_t = x_t]`` (I3)."""
        ...

    @property
    def valid_log_snr(self) -> Tuple[float, float]:
        """``(lambda_lo, lambda_hi)`` where the model may be trusted (I24)."""
        ...


#: the same Protocol under the name the issue uses
ModelProtocol = Denoiser


@runtime_checkable
class ExactDivergence(Protocol):
    """Optional capability: the exact divergence of the score, ``div s_t = tr grad^2 log q_t`` (I4).

    A model has it when it defines ``score_divergence(x_t, t) -> (n,)``;
    ``isinstance(model, ExactDivergence)`` (or ``model.has_exact_divergence``) tells, and narrows
    the type for a type checker.
    """

    def score_divergence(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """``div s_t(x_t)`` (I4), shape ``(n,)``."""
        ...


class DiffusionModel(ABC):
    """Base class of every model: ``schedule`` plus ``denoise(x_t, t)``; the rest is derived.

    ``x_t`` has shape ``(n, ...)`` (points ``(n, d)``); ``t`` is a float or an ``(n,)`` tensor
    in the schedule's range.

    Required: ``schedule`` and :meth:`denoise` (the posterior mean, I3).

    Derived (override for accuracy or speed): :meth:`eps`, :meth:`score` (I1), :meth:`v`, all
    through :func:`densityformula.parameterization.convert`; :attr:`valid_log_snr` (the whole
    line unless overridden; a network returns the range it was trained on, I24).

    Optional capability, typed (no ``getattr`` probes): the exact divergence of the score,
    ``div s_t = tr grad^2 log q_t`` (I4).  A model that can compute it defines
    ``score_divergence(x_t, t) -> (n,)``, which makes it an :class:`ExactDivergence` (the small
    Protocol of that one method) and :attr:`has_exact_divergence` ``True``; the base class does
    not define ``score_divergence``.  :meth:`denoise_and_score_divergence` returns the denoiser
    and the divergence in one call (two calls by default; :class:`AnalyticModel` shares one pass
    over the mixture) and raises ``NotImplementedError`` without the capability.  Callers test
    ``model.has_exact_divergence`` (or ``isinstance(model, ExactDivergence)``, which also narrows
    the type) and otherwise fall back to autograd or Hutchinson estimates of the divergence.
    """

    schedule: Schedule

    @abstractmethod
    def denoise(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """``D(x_t, t) ~ E[X_0 | X_t = x_t]`` (I3), same shape as ``x_t``."""

    @property
    def valid_log_snr(self) -> Tuple[float, float]:
        """``(lambda_lo, lambda_hi)``: the log-SNRs at which this model may be trusted (I24).

        The whole line for an analytic model; the range a network was trained on (recorded by the
        trainer, saved in its checkpoint).  Estimators and samplers default to
        :func:`log_snr_interval`, this range intersected with the schedule's.
        """
        return WHOLE_LINE

    # -- optional capability: the exact divergence of the score (I4) --------------------------
    @property
    def has_exact_divergence(self) -> bool:
        """Whether the model's class defines ``score_divergence`` (is an :class:`ExactDivergence`, I4).

        A class-level look-up (no ``isinstance`` on the Protocol, which is slow on ``nn.Module``):
        samplers ask it at every step.
        """
        return callable(getattr(type(self), "score_divergence", None))

    def denoise_and_score_divergence(self, x_t: Tensor, t: TimeLike) -> Tuple[Tensor, Tensor]:
        """``(denoise(x_t, t), score_divergence(x_t, t))`` (I3, I4); override to share one pass.

        ``NotImplementedError`` when the model has no exact divergence (:attr:`has_exact_divergence`).
        """
        if not isinstance(self, ExactDivergence):
            raise NotImplementedError(
                f"{type(self).__name__} has no score_divergence (has_exact_divergence is False); "
                "use an autograd or Hutchinson estimate of the divergence"
            )
        return self.denoise(x_t, t), self.score_divergence(x_t, t)

    # -- derived predictions (docs/math.md section 2) -----------------------------------------
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
        return P.convert("x0", "eps", self.denoise(x_t, t), x_t, a, s)

    def score(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """Score ``-(x_t - alpha D) / sigma^2`` (I1, Tweedie)."""
        a, s = self._scales(x_t, t)
        return P.convert("x0", "score", self.denoise(x_t, t), x_t, a, s)

    def v(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """Velocity ``alpha eps - sigma D`` (docs/math.md section 2)."""
        a, s = self._scales(x_t, t)
        return P.convert("x0", "v", self.denoise(x_t, t), x_t, a, s)




def check_model(model: object, name: str = "model") -> DiffusionModel:
    """``model`` if it is a :class:`DiffusionModel`, else ``TypeError`` naming ``name``.

    The one type check for model arguments (docs/architecture.md "API contract").
    """
    if not isinstance(model, DiffusionModel):
        raise TypeError(
            f"{name} must be a densityformula DiffusionModel (a schedule and denoise(x_t, t)), "
            f"got {type(model).__name__}"
        )
    return model


def log_snr_interval(model: Denoiser) -> Tuple[float, float]:
    """The default log-SNR interval of every estimator and sampler for ``model`` (I24).

    ``model.valid_log_snr`` intersected with ``model.schedule.finite_log_snr_range`` (infinite
    schedule ends clipped to ``Schedule.LOG_SNR_CLIP``).  Raises ``ValueError`` if they do not
    overlap.
    """
    lo_s, hi_s = model.schedule.finite_log_snr_range
    lo_m, hi_m = model.valid_log_snr
    lo, hi = max(lo_s, float(lo_m)), min(hi_s, float(hi_m))
    if not lo < hi:
        raise ValueError(
            f"the model's valid log-SNR range [{lo_m}, {hi_m}] does not overlap its schedule's "
            f"[{lo_s}, {hi_s}]"
        )
    return lo, hi
