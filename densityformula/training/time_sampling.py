"""Time samplers of the denoising loss: the law ``p(t)`` of the Monte-Carlo times (docs/math.md I23).

A denoising loss estimates ``int_lo^hi rho(t) E[err(t)] dt`` (a sum over steps for a
:class:`~densityformula.schedules.Discrete` schedule) by drawing ``t ~ p`` and weighting the
draw by ``rho(t) / p(t)`` (I23).  A sampler owns the time range ``[lo, hi]`` of that objective
and the law ``p`` on it:

- :class:`UniformTime`: ``t ~ U[lo, hi]``, ``p(t) = 1 / (hi - lo)``;
- :class:`LogisticLogSNR`: ``lambda(t)`` logistic (``loc``, ``scale``) restricted to
  ``[lambda(hi), lambda(lo)]``, ``p(t) = logistic(lambda(t)) |dlambda/dt| / Z`` with
  ``|dlambda/dt| = g^2 / sigma^2``;
- :class:`UniformLogSNR`: ``lambda(t) ~ U[lambda(hi), lambda(lo)]``,
  ``p(t) = |dlambda/dt| / (lambda(lo) - lambda(hi))`` (finite ranges only);
- :class:`UniformSteps`: steps ``k ~ U{lo..hi}`` of a Discrete schedule, ``p_k = 1 / #steps``;
- :class:`LogisticSteps`: ``p_k`` proportional to the logistic mass of ``(lambda_k, lambda_{k-1}]``.

Samplers hold no random state: the caller passes the ``generator`` (the trainer's noise
generator), so a resumed run draws the same times.  Every sampler reports
:attr:`~TimeSampler.log_snr_support`, the log-SNR interval its draws cover; the trainer records
it as the model's valid range (docs/math.md I24).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch

from .._validation import as_time, check_int, check_positive_float, resolve_device
from ..schedules import Discrete, Schedule

Tensor = torch.Tensor
DeviceLike = Union[str, torch.device, int, None]

__all__ = [
    "TimeSampler",
    "UniformTime",
    "LogisticLogSNR",
    "UniformLogSNR",
    "StepSampler",
    "UniformSteps",
    "LogisticSteps",
    "time_sampler",
    "truncated_range",
    "log_snr_speed",
]

#: uniforms are drawn in ``[eps, 1 - eps]`` so that no sample sits exactly on an end
U_EPS = 1e-12

#: where the draws reach log-SNR -inf, the trained range stops at this quantile of the draws'
#: log-SNR at the noisy end: below it lies 1e-3 of the training draws (docs/math.md I24)
NOISY_TAIL = 1e-3


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def log_snr_speed(schedule: Schedule, t: Tensor) -> Tensor:
    """``|dlambda/dt| = g(t)^2 / sigma_t^2`` of a continuous schedule (docs/math.md I23).

    From ``lambda = log alpha^2 - log sigma^2`` and ``g^2 = d sigma^2/dt - 2 f sigma^2`` with
    ``f = d log alpha / dt``: ``dlambda/dt = 2 f - (d sigma^2/dt) / sigma^2 = -g^2 / sigma^2``.
    """
    return schedule.g2(t) / schedule.sigma2(t)


def _logistic_cdf(lam: Tensor, loc: float, scale: float) -> Tensor:
    return torch.sigmoid((lam - loc) / scale)


def _logistic_log_pdf(lam: Tensor, loc: float, scale: float) -> Tensor:
    z = (lam - loc) / scale
    return -torch.nn.functional.softplus(z) - torch.nn.functional.softplus(-z) - math.log(scale)


def _check_schedule(schedule: object) -> Schedule:
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a densityformula Schedule, got {type(schedule).__name__}")
    return schedule


def _check_n(n: object) -> int:
    """``int(n)`` for a Python or numpy integer ``n >= 0``; ``TypeError`` / ``ValueError`` naming ``n``."""
    return check_int(n, "n", 0)


def _device(device: DeviceLike, generator: Optional[torch.Generator]) -> torch.device:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if device is not None:
        return resolve_device(device, "device")  # ValueError for an unavailable CUDA / MPS or meta device
    return generator.device if generator is not None else torch.device("cpu")


def _check_logistic(loc: object, scale: object) -> Tuple[float, float]:
    """``(loc, scale)`` as floats: ``scale`` finite and ``> 0``, ``loc`` finite (Python or numpy reals);
    ``ValueError`` naming ``proposal_scale`` / ``proposal_loc`` otherwise (NaN included)."""
    try:
        scale_f = check_positive_float(scale, "proposal_scale")
    except TypeError as exc:
        raise ValueError(f"proposal_scale must be a positive float, got {scale!r}") from exc
    if isinstance(loc, bool) or not isinstance(loc, (int, float, np.integer, np.floating)) or not math.isfinite(
        float(loc)
    ):
        raise ValueError(f"proposal_loc must be a finite float, got {loc!r}")
    return float(loc), scale_f


def check_t_range(schedule: Schedule, t_range: object) -> Tuple[float, float]:
    """``t_range`` as floats ``(lo, hi)`` with ``t_min <= lo < hi <= t_max``, or ``TypeError``/``ValueError``."""
    if t_range is None:
        return float(schedule.t_min), float(schedule.t_max)
    try:
        lo, hi = (float(v) for v in t_range)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise TypeError(f"t_range must be a pair of floats, got {t_range!r}") from exc
    if not (schedule.t_min <= lo < hi <= schedule.t_max):
        raise ValueError(f"t_range must satisfy {schedule.t_min} <= lo < hi <= {schedule.t_max}, got {t_range!r}")
    return lo, hi


def _check_truncation(truncation: object) -> float:
    ok = isinstance(truncation, (int, float, np.integer, np.floating)) and not isinstance(truncation, (bool, np.bool_))
    if not ok or not 0.0 <= float(truncation) < 0.5:  # type: ignore[arg-type]
        raise ValueError(f"truncation must be a float in [0, 0.5), got {truncation!r}")
    return float(truncation)  # type: ignore[arg-type]


def truncated_range(schedule: Schedule, truncation: float = 1e-3) -> Tuple[float, float]:
    """``[t_min + c, t_max - c]`` with ``c = truncation (t_max - t_min)``: the ``"truncated"`` time range."""
    _check_truncation(truncation)
    cut = float(truncation) * (schedule.t_max - schedule.t_min)
    return schedule.t_min + cut, schedule.t_max - cut


# ------------------------------------------------------------------------------------------------
# the interface
# ------------------------------------------------------------------------------------------------
class TimeSampler(ABC):
    """The law ``p`` of the loss's Monte-Carlo times on the objective's time range ``[lo, hi]`` (I23).

    Attributes:
        schedule: the forward process.
        lo, hi: the time range (integer steps, as floats, for a Discrete schedule).
        kind: a short name (``"uniform"``, ``"importance"``, ...), stored in checkpoints.
    """

    schedule: Schedule
    lo: float
    hi: float
    kind: str = "time_sampler"
    #: ``True`` for samplers of integer steps of a Discrete schedule
    discrete: bool = False

    @abstractmethod
    def sample(self, n: int, generator: Optional[torch.Generator] = None, device: DeviceLike = None) -> Tensor:
        """``n`` times ``t ~ p``, float64, shape ``(n,)``, on ``device`` (default: the generator's)."""

    @abstractmethod
    def density(self, t: Tensor) -> Tensor:
        """``p(t)`` for ``t`` in ``[lo, hi]`` (see :meth:`check`): a probability per unit time; for
        steps, the probability ``p_k`` of step ``k``."""

    def log_snr_quantile(self, q: float) -> float:
        """The ``q``-quantile of the draws' log-SNR ``lambda(t)``, ``t ~ p`` (docs/math.md I24)."""
        raise NotImplementedError(f"{type(self).__name__} does not provide log-SNR quantiles")

    @property
    def trained_log_snr_range(self) -> Tuple[float, float]:
        """The log-SNR range a model trained with these draws is trusted on (docs/math.md I24).

        :attr:`log_snr_support`, except that an infinite noisy end (uniform time on LiYan or
        VPCosine reaches ``lambda = -inf``) is replaced by the :data:`NOISY_TAIL` quantile of the
        draws' log-SNR: a network sees almost no draws below it, and there its error enters a
        likelihood at full weight.  The clean end stays as it is, infinite included: as
        ``sigma -> 0`` the model's error enters the denoiser, and hence the flow, multiplied by
        ``sigma``, so evaluating it there is harmless.
        """
        lo, hi = self.log_snr_support
        if lo == -math.inf:
            lo = self.log_snr_quantile(NOISY_TAIL)
        return lo, hi

    @property
    @abstractmethod
    def log_snr_support(self) -> Tuple[float, float]:
        """``(lambda_lo, lambda_hi)``: the log-SNR interval the draws cover, ``(lambda(hi), lambda(lo))``
        (docs/math.md I24); ends may be infinite when the time range reaches them."""

    def check(self, t: Tensor) -> Tensor:
        """``t`` as float64 ``(n,)``, or ``ValueError`` if a value lies outside ``[lo, hi]``."""
        t = as_time(t, "t").reshape(-1)
        if bool((t < self.lo).any()) or bool((t > self.hi).any()):
            raise ValueError(f"t must lie in the loss's time range [{self.lo}, {self.hi}]")
        return t

    def config(self) -> Dict[str, object]:
        """The sampler's settings (compared when a checkpoint is resumed)."""
        return {"kind": self.kind, "t_range": (self.lo, self.hi)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "kind")
        return f"{type(self).__name__}({self.schedule!r}, {args})"


class _Continuous(TimeSampler):
    def __init__(self, schedule: Schedule, t_range: Optional[Tuple[float, float]] = None) -> None:
        self.schedule = _check_schedule(schedule)
        if isinstance(schedule, Discrete):
            raise TypeError(f"{type(self).__name__} samples continuous time; use UniformSteps/LogisticSteps "
                            "for a Discrete schedule")
        self.lo, self.hi = check_t_range(schedule, t_range)
        # lambda at the ends of the range: lambda(hi) <= lambda(lo)
        self._lam_lo = self.schedule.log_snr(self.hi)
        self._lam_hi = self.schedule.log_snr(self.lo)

    def _uniforms(self, n: int, generator: Optional[torch.Generator], device: DeviceLike) -> Tensor:
        dev = _device(device, generator)
        return torch.rand(_check_n(n), generator=generator, dtype=torch.float64, device=dev).clamp(U_EPS, 1.0 - U_EPS)

    @property
    def log_snr_support(self) -> Tuple[float, float]:
        return float(self._lam_lo), float(self._lam_hi)


class UniformTime(_Continuous):
    """``t ~ U[lo, hi]``: ``p(t) = 1 / (hi - lo)`` (docs/math.md I23).

    Args:
        schedule: a continuous schedule.
        t_range: ``(lo, hi)`` inside ``[t_min, t_max]``; default the whole range (see
            :func:`truncated_range` for the ``"truncated"`` range).
    """

    kind = "uniform"

    def sample(self, n: int, generator: Optional[torch.Generator] = None, device: DeviceLike = None) -> Tensor:
        u = self._uniforms(n, generator, device)
        return self.lo + (self.hi - self.lo) * u

    def density(self, t: Tensor) -> Tensor:
        return torch.full_like(t, 1.0 / (self.hi - self.lo))

    def log_snr_quantile(self, q: float) -> float:
        # lambda decreases in t: P(lambda(t) <= lambda(t_q)) = P(t >= t_q) = q at t_q = hi - q (hi - lo)
        return float(self.schedule.log_snr(self.hi - q * (self.hi - self.lo)))


class LogisticLogSNR(_Continuous):
    """Importance sampling in log-SNR: ``lambda ~ Logistic(loc, scale)`` restricted to
    ``[lambda(hi), lambda(lo)]`` (docs/math.md I23).

    Inverse-CDF draw ``lambda = loc + scale logit(F_lo + (F_hi - F_lo) u)``, ``t = t(lambda)``; in
    time ``p(t) = logistic(lambda(t)) |dlambda/dt| / Z`` with ``Z = F_hi - F_lo`` and
    ``|dlambda/dt| = g^2 / sigma^2`` (:func:`log_snr_speed`).

    Args:
        schedule: a continuous schedule.
        loc, scale: the logistic law of ``lambda`` (``scale > 0``).
        t_range: ``(lo, hi)``; default the whole range.
    """

    kind = "importance"

    def __init__(
        self, schedule: Schedule, loc: float = 0.0, scale: float = 2.0, t_range: Optional[Tuple[float, float]] = None
    ) -> None:
        super().__init__(schedule, t_range)
        self.loc, self.scale = _check_logistic(loc, scale)
        self._F_lo = _logistic_cdf(self._lam_lo, self.loc, self.scale)
        self._F_hi = _logistic_cdf(self._lam_hi, self.loc, self.scale)

    def sample(self, n: int, generator: Optional[torch.Generator] = None, device: DeviceLike = None) -> Tensor:
        u = self._uniforms(n, generator, device)
        F_lo, F_hi = float(self._F_lo), float(self._F_hi)
        v = F_lo + (F_hi - F_lo) * u
        lam = self.loc + self.scale * (torch.log(v) - torch.log1p(-v))
        lam = lam.clamp(float(self._lam_lo), float(self._lam_hi))
        return self.schedule.t_from_log_snr(lam).clamp(self.lo, self.hi)

    def density(self, t: Tensor) -> Tensor:
        Z = (self._F_hi - self._F_lo).to(t.device)
        pdf = torch.exp(_logistic_log_pdf(self.schedule.log_snr(t), self.loc, self.scale))
        return pdf * log_snr_speed(self.schedule, t) / Z

    def log_snr_quantile(self, q: float) -> float:
        v = float(self._F_lo) + (float(self._F_hi) - float(self._F_lo)) * q
        lam = self.loc + self.scale * (math.log(v) - math.log1p(-v))
        return min(max(lam, float(self._lam_lo)), float(self._lam_hi))

    def config(self) -> Dict[str, object]:
        return {**super().config(), "loc": self.loc, "scale": self.scale}


class UniformLogSNR(_Continuous):
    """``lambda ~ U[lambda(hi), lambda(lo)]``: ``p(t) = |dlambda/dt| / (lambda(lo) - lambda(hi))``
    (docs/math.md I23); the log-SNR range must be finite (pass ``t_range`` for LiYan, VPCosine, ...).

    Args:
        schedule: a continuous schedule.
        t_range: ``(lo, hi)``; default the whole range.
    """

    kind = "uniform_log_snr"

    def __init__(self, schedule: Schedule, t_range: Optional[Tuple[float, float]] = None) -> None:
        super().__init__(schedule, t_range)
        lam_lo, lam_hi = self.log_snr_support
        if not (math.isfinite(lam_lo) and math.isfinite(lam_hi)):
            raise ValueError(
                f"UniformLogSNR needs a finite log-SNR range; [{lam_lo}, {lam_hi}] over t_range "
                f"[{self.lo}, {self.hi}] of {schedule!r}: pass a narrower t_range"
            )

    def sample(self, n: int, generator: Optional[torch.Generator] = None, device: DeviceLike = None) -> Tensor:
        u = self._uniforms(n, generator, device)
        lam_lo, lam_hi = self.log_snr_support
        lam = (lam_lo + (lam_hi - lam_lo) * u).clamp(lam_lo, lam_hi)
        return self.schedule.t_from_log_snr(lam).clamp(self.lo, self.hi)

    def density(self, t: Tensor) -> Tensor:
        lam_lo, lam_hi = self.log_snr_support
        return log_snr_speed(self.schedule, t) / (lam_hi - lam_lo)

    def log_snr_quantile(self, q: float) -> float:
        lam_lo, lam_hi = self.log_snr_support
        return lam_lo + q * (lam_hi - lam_lo)


# ------------------------------------------------------------------------------------------------
# discrete steps
# ------------------------------------------------------------------------------------------------
class StepSampler(TimeSampler):
    """Steps ``k`` of a Discrete schedule drawn with probabilities ``p_k`` (docs/math.md I23).

    The steps are the integers ``1..T`` inside ``t_range`` (default all of them).
    """

    discrete = True
    kind = "steps"

    def __init__(self, schedule: Discrete, t_range: Optional[Tuple[float, float]] = None) -> None:
        if not isinstance(schedule, Discrete):
            raise TypeError(f"schedule must be a densityformula Discrete schedule, got {type(schedule).__name__}")
        self.schedule: Discrete = schedule
        lo, hi = check_t_range(schedule, t_range)
        k_lo, k_hi = max(1, math.ceil(lo)), min(schedule.T, math.floor(hi))
        if k_lo > k_hi:
            raise ValueError(f"t_range {t_range!r} contains no step k in 1..{schedule.T}")
        self.lo, self.hi = float(k_lo), float(k_hi)
        #: the steps ``k_lo..k_hi`` (long, CPU)
        self.steps = torch.arange(k_lo, k_hi + 1)
        self.probs = self._probabilities()

    @abstractmethod
    def _probabilities(self) -> Tensor:
        """``p_k`` for :attr:`steps` (float64, CPU, summing to 1)."""

    def check(self, t: Tensor) -> Tensor:
        """``t`` as float64 ``(n,)``, or ``ValueError`` unless it holds integer steps in ``[lo, hi]``."""
        t = as_time(t, "t").reshape(-1)
        k = torch.round(t)
        if bool((k != t).any()) or bool((k < self.lo).any()) or bool((k > self.hi).any()):
            raise ValueError(f"t must hold integer steps in [{int(self.lo)}, {int(self.hi)}]")
        return t

    def positions(self, t: Tensor) -> Tensor:
        """The position of each step ``t`` (already checked) in :attr:`steps` (long, CPU)."""
        return (torch.round(t).long() - int(self.lo)).cpu()

    def index(self, t: Tensor) -> Tensor:
        """:meth:`positions` of ``t`` after :meth:`check`."""
        return self.positions(self.check(t))

    def sample(self, n: int, generator: Optional[torch.Generator] = None, device: DeviceLike = None) -> Tensor:
        dev = _device(device, generator)
        if _check_n(n):
            idx = torch.multinomial(self.probs.to(dev), n, replacement=True, generator=generator)
        else:
            idx = torch.zeros(0, dtype=torch.long, device=dev)
        return self.steps.to(dev)[idx].to(torch.float64)

    def density(self, t: Tensor) -> Tensor:
        return self.probs[self.positions(t)].to(t.device)

    @property
    def log_snr_support(self) -> Tuple[float, float]:
        lam = self.schedule.log_snrs
        return float(lam[int(self.hi)]), float(lam[int(self.lo)])


class UniformSteps(StepSampler):
    """``k ~ U{lo..hi}``: ``p_k = 1 / #steps`` (docs/math.md I23)."""

    kind = "uniform"

    def _probabilities(self) -> Tensor:
        n = self.steps.numel()
        return torch.full((n,), 1.0 / n, dtype=torch.float64)


class LogisticSteps(StepSampler):
    """Importance sampling of steps: ``p_k`` proportional to the logistic(``loc``, ``scale``) mass of
    ``(lambda_k, lambda_{k-1}]`` (docs/math.md I23), the discrete form of :class:`LogisticLogSNR`."""

    kind = "importance"

    def __init__(
        self, schedule: Discrete, loc: float = 0.0, scale: float = 2.0, t_range: Optional[Tuple[float, float]] = None
    ) -> None:
        self.loc, self.scale = _check_logistic(loc, scale)
        super().__init__(schedule, t_range)

    def _probabilities(self) -> Tensor:
        F = _logistic_cdf(self.schedule.log_snrs, self.loc, self.scale)  # lambda_0 = +inf: F = 1
        ks = self.steps
        mass = (F[ks - 1] - F[ks]).clamp_min(0.0)
        if not bool((mass > 0).all()):
            raise ValueError("the importance proposal gives zero mass to some steps; widen proposal_scale")
        return mass / mass.sum()

    def config(self) -> Dict[str, object]:
        return {**super().config(), "loc": self.loc, "scale": self.scale}


# ------------------------------------------------------------------------------------------------
# by name
# ------------------------------------------------------------------------------------------------
def time_sampler(
    schedule: Schedule,
    kind: str = "uniform",
    *,
    t_range: Optional[Tuple[float, float]] = None,
    truncation: float = 1e-3,
    proposal_loc: float = 0.0,
    proposal_scale: float = 2.0,
) -> TimeSampler:
    """The sampler named ``kind`` for ``schedule`` (the ``time_sampling`` of ``DenoisingLoss``).

    ``"uniform"`` (:class:`UniformTime` / :class:`UniformSteps`), ``"truncated"`` (the same on
    :func:`truncated_range` unless ``t_range`` is given), ``"importance"``
    (:class:`LogisticLogSNR` / :class:`LogisticSteps`), ``"uniform_log_snr"``
    (:class:`UniformLogSNR`, continuous schedules only).
    """
    schedule = _check_schedule(schedule)
    kinds = ("uniform", "importance", "truncated", "uniform_log_snr")
    if kind not in kinds:
        raise ValueError(f"time_sampling must be one of {kinds}, got {kind!r}")
    if kind == "truncated":
        cut = truncated_range(schedule, truncation)
        t_range = cut if t_range is None else t_range
    else:
        _check_truncation(truncation)
    loc, scale = _check_logistic(proposal_loc, proposal_scale)
    if isinstance(schedule, Discrete):
        if kind == "importance":
            return LogisticSteps(schedule, loc, scale, t_range)
        if kind == "uniform_log_snr":
            raise ValueError("time_sampling='uniform_log_snr' needs a continuous schedule")
        return UniformSteps(schedule, t_range)
    if kind == "importance":
        return LogisticLogSNR(schedule, loc, scale, t_range)
    if kind == "uniform_log_snr":
        return UniformLogSNR(schedule, t_range)
    return UniformTime(schedule, t_range)
