"""Weightings ``rho(t)`` of the denoising loss over time (docs/math.md I22).

A denoising loss is ``int_lo^hi rho(t) E[err(t)] dt`` (a sum over steps ``k`` for a
:class:`~densityformula.schedules.Discrete` schedule); the objective ``err`` is one of
:mod:`densityformula.training.losses`.  Two weightings cover the four named weightings of
:class:`~densityformula.training.DenoisingLoss`:

- :class:`TimeAverage`: ``rho = 1 / (hi - lo)`` (``1 / #steps``), the average over the time
  range; with the eps, score and x0 errors it gives ``"eps"``, ``"sigma2"`` and ``"uniform"``;
- :class:`ELBOWeight`: continuous ``rho = -1/2 dlambda/dt = g^2 / (2 sigma^2)`` (I8), discrete
  ``beta_k / (2 alpha_k (1 - abar_k))`` (I7); with the eps error it gives ``"elbo"``.

Weightings hold no state (the ELBO weights of a step sampler are cached); ``rho`` reads the
range (and, for steps, the step table) from the loss's
:class:`~densityformula.training.time_sampling.TimeSampler`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Dict, Optional, Tuple

import torch

from .time_sampling import StepSampler, TimeSampler, log_snr_speed

Tensor = torch.Tensor

__all__ = ["Weighting", "TimeAverage", "ELBOWeight", "ddpm_elbo_weights"]


def ddpm_elbo_weights(betas: Tensor, one_minus_alpha_bars: Tensor) -> Tensor:
    """``w_k = beta_k / (2 alpha_k (1 - abar_k))`` for ``k = 1..T`` (I7).

    The DDPM ELBO term ``(1 - alpha_k) / (2 alpha_k) ||s_k + eps / sigma_k||^2`` with
    ``s_k = -eps_hat / sigma_k`` and ``sigma_k^2 = 1 - abar_k`` is ``w_k ||eps - eps_hat||^2``.
    ``one_minus_alpha_bars`` is indexed ``k = 0..T``, as :attr:`Discrete.one_minus_alpha_bars`.
    """
    return betas / (2.0 * (1.0 - betas) * one_minus_alpha_bars[1:])


class Weighting(ABC):
    """``rho(t)``: the weight of the error at time ``t`` in ``int rho(t) E[err(t)] dt`` (I22).

    ``rho(t, sampler)`` takes ``t`` already checked by ``sampler.check``.
    """

    #: a short name, stored in checkpoints
    name: str = "weighting"

    @abstractmethod
    def rho(self, t: Tensor, sampler: TimeSampler) -> Tensor:
        """``rho(t)`` (float64, like ``t``) over ``sampler``'s time range; for steps the weight of step ``t``."""

    def config(self) -> Dict[str, object]:
        """The weighting's settings (compared when a checkpoint is resumed)."""
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class TimeAverage(Weighting):
    """``rho = 1 / (hi - lo)`` (``1 / #steps``): the loss is the time average of the error (I22).

    With the eps error this is Ho et al.'s "simple" loss.
    """

    name = "time_average"

    def rho(self, t: Tensor, sampler: TimeSampler) -> Tensor:
        if isinstance(sampler, StepSampler):
            return torch.full_like(t, 1.0 / sampler.steps.numel())
        return torch.full_like(t, 1.0 / (sampler.hi - sampler.lo))


class ELBOWeight(Weighting):
    """The ELBO weight of the eps error (I22): ``-1/2 dlambda/dt = g^2 / (2 sigma^2)`` in continuous
    time (I8), ``beta_k / (2 alpha_k (1 - abar_k))`` per step (I7, :func:`ddpm_elbo_weights`)."""

    name = "elbo"

    def __init__(self) -> None:
        # the weights of the last step sampler's steps (a cache, not state)
        self._table: Optional[Tuple[StepSampler, Tensor]] = None

    def rho(self, t: Tensor, sampler: TimeSampler) -> Tensor:
        if isinstance(sampler, StepSampler):
            if self._table is None or self._table[0] is not sampler:
                sch = sampler.schedule
                w = ddpm_elbo_weights(sch.betas, sch.one_minus_alpha_bars)
                self._table = (sampler, w[sampler.steps - 1])
            return self._table[1][sampler.positions(t)].to(t.device)
        return 0.5 * log_snr_speed(sampler.schedule, t)
