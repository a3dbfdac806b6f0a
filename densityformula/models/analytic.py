"""The exact model of an analytic target: :class:`AnalyticModel` (docs/math.md section 3, I1-I4)."""
from __future__ import annotations

from typing import Tuple

import torch

from .. import parameterization as P
from .._validation import TimeLike
from ..schedules import Schedule
from ..targets import GaussianMixture
from ._base import DiffusionModel

Tensor = torch.Tensor

__all__ = ["AnalyticModel"]


class AnalyticModel(DiffusionModel):
    """The exact denoiser and score of an analytic target under a schedule (I1-I4).

    Valid on the whole log-SNR line (I24) and with an exact divergence
    (``has_exact_divergence`` is ``True``).

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
        a, s = self._scales(x_t, t)
        return P.convert("score", "eps", self.score(x_t, t), x_t, a, s)

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
        """The target's dtype."""
        return self.target.dtype

    @property
    def device(self) -> torch.device:
        """The target's device."""
        return self.target.device

    def __repr__(self) -> str:
        return f"AnalyticModel({self.target!r}, {self.schedule!r})"
