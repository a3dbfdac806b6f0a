"""Denoising losses: one short class per objective, and their Monte-Carlo composition (docs/math.md I22, I23).

With ``x_t = alpha_t x_0 + sigma_t eps`` a denoising loss is ``int_lo^hi rho(t) E[err(x_0, t, eps)] dt``
(a sum over steps for a :class:`~densityformula.schedules.Discrete` schedule).  Its three parts:

- the objective ``err`` (this module): :class:`EpsLoss` ``||eps - eps_hat||^2``, :class:`ScoreLoss`
  ``sigma^2 ||s_theta - grad log q(x_t | x_0)||^2`` (denoising score matching; equal in value to
  the eps loss since ``grad log q(x_t | x_0) = -eps / sigma``, I1), :class:`DenoiserLoss`
  ``||x_0 - D_theta||^2``, :class:`ELBOLoss` (the eps error with the parameter-free terms of
  ``-ELBO``);
- the weighting ``rho`` (:mod:`~densityformula.training.weighting`);
- the time sampler ``p`` (:mod:`~densityformula.training.time_sampling`).

:class:`WeightedLoss` composes them: a draw ``t ~ p`` contributes ``rho(t) / p(t) err`` (I23).
:class:`DenoisingLoss` builds the parts from names (``weighting`` x ``time_sampling``):

============  =====================================  ==========================================
weighting     err                                     rho(t)
============  =====================================  ==========================================
``"eps"``     ``||eps - eps_hat||^2`` (Ho et al.)     ``1 / (hi - lo)``  (``1 / #steps``)
``"sigma2"``  ``sigma^2 ||s_theta - grad log          ``1 / (hi - lo)``; equals ``"eps"`` in value
              q(x_t|x_0)||^2`` (Song et al.)          since ``grad log q(x_t|x_0) = -eps/sigma`` (I1)
``"uniform"`` ``||x_0 - D_theta||^2`` (uniform-t,     ``1 / (hi - lo)``
              unweighted denoiser error, MAR-style)
``"elbo"``    ``||eps - eps_hat||^2``                 continuous: ``-1/2 dlambda/dt = g^2 / (2 sigma^2)``
                                                      (I8; in LiYan time ``||x_0 - D||^2 / (2 t^2)``,
                                                      the denoiser form of I5/I6); discrete: the DDPM
                                                      ELBO weight ``beta_k / (2 alpha_k (1 - abar_k))``
                                                      of I7
============  =====================================  ==========================================

``include_constant=True`` (``"elbo"`` only) adds the parameter-free terms so that the loss is an
unbiased estimate of ``-ELBO(x_0)`` in nats: ``(d/2) log(2 pi e) + rho/p (err - sigmoid(lambda)
||eps||^2)`` -- the ``-d sigmoid(lambda)`` of the log-SNR form of I6 (I7's
``(d/2)(abar_{k-1} - abar_k)/(1 - abar_k)`` in discrete time) written with the zero-mean
control variate ``sigmoid(lambda)(||eps||^2 - d)`` of docs/math.md section 4.  With the exact
denoiser and a schedule whose log-SNR range is the whole real line (LiYan, VPCosine), its
expectation over ``t`` and ``eps`` is ``-log q_0(x_0)`` (I5/I6).

Time sampling: ``"uniform"`` (``t ~ U[lo, hi]``; ``k ~ U{lo..hi}``), ``"truncated"``
(the same on ``[t_min + truncation*(t_max-t_min), t_max - truncation*(t_max-t_min)]`` unless
``t_range`` is given) and ``"importance"`` (log-SNR drawn from a logistic law with
``proposal_loc``/``proposal_scale`` restricted to the range, ``p(t) = logistic(lambda(t))
|dlambda/dt| / Z``; discrete: ``p_k`` proportional to the logistic mass of ``(lambda_k,
lambda_{k-1}]``).  For a given time range, uniform and importance sampling estimate the same
objective (only the variance differs); ``"truncated"`` changes the range, hence the objective.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch

from .._validation import TimeLike, as_time, check_batch_shape, check_full_precision, check_real_tensor
from ..models import CheckedModel, DiffusionModel, check_model, check_output
from ..schedules import Discrete, Schedule
from .time_sampling import DeviceLike, StepSampler, TimeSampler, time_sampler
from .weighting import ELBOWeight, TimeAverage, Weighting

Tensor = torch.Tensor

__all__ = [
    "WEIGHTINGS",
    "TIME_SAMPLINGS",
    "NoisyBatch",
    "Objective",
    "EpsLoss",
    "ScoreLoss",
    "DenoiserLoss",
    "ELBOLoss",
    "WeightedLoss",
    "DenoisingLoss",
    "denoising_loss",
    "sigmoid_log_snr",
]

WEIGHTINGS = ("eps", "elbo", "sigma2", "uniform")
TIME_SAMPLINGS = ("uniform", "importance", "truncated")
LOG_2PI_E = math.log(2.0 * math.pi) + 1.0


def same_schedule(a: Schedule, b: Schedule) -> bool:
    """``a is b``, or the same class with the same parameters (a deep copy of a schedule)."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    va, vb = vars(a), vars(b)
    if va.keys() != vb.keys():
        return False
    for k in va:
        x, y = va[k], vb[k]
        if isinstance(x, Tensor) or isinstance(y, Tensor):
            if not (isinstance(x, Tensor) and isinstance(y, Tensor) and x.shape == y.shape
                    and torch.equal(x.cpu(), y.cpu())):
                return False
        elif x != y:
            return False
    return True


class _TrainingCalls(CheckedModel):
    """The model-call boundary of a loss (:mod:`densityformula.models.checked`): the model's
    ``denoise`` / ``eps`` / ``score`` / ``v`` outputs checked by ``check_output`` (shape, dtype,
    device, finiteness), with the conditioning keywords (``y=``) passed on.

    Only the call path is wrapped: the outputs are the model's own tensors, so gradients flow to
    its parameters unchanged, and the model (an ``nn.Module`` being trained) is not modified.
    """

    def _call(self, method: str, x_t: Tensor, t: TimeLike, cond: Dict[str, Any]) -> Tensor:
        if method != "denoise" and not cond and getattr(type(self.inner), method) is getattr(DiffusionModel, method):
            # derived from denoise (I1): derive it from the checked denoise, so that a wrong-shape
            # denoiser output is caught before the conversion broadcasts it
            out = self._guarded(method, lambda: getattr(DiffusionModel, method)(self, x_t, t), t)
        else:
            out = self._guarded(method, lambda: getattr(self.inner, method)(x_t, t, **cond), t)
        return check_output(out, x_t, model=self.inner, method=method, t=t)

    def denoise(self, x_t: Tensor, t: TimeLike, **cond: Any) -> Tensor:
        """The model's ``denoise`` (I3), checked."""
        return self._call("denoise", x_t, t, cond)

    def eps(self, x_t: Tensor, t: TimeLike, **cond: Any) -> Tensor:
        """The model's ``eps`` (docs/math.md section 2), checked."""
        return self._call("eps", x_t, t, cond)

    def score(self, x_t: Tensor, t: TimeLike, **cond: Any) -> Tensor:
        """The model's ``score`` (I1), checked."""
        return self._call("score", x_t, t, cond)

    def v(self, x_t: Tensor, t: TimeLike, **cond: Any) -> Tensor:
        """The model's ``v`` (docs/math.md section 2), checked."""
        return self._call("v", x_t, t, cond)


def sigmoid_log_snr(schedule: Schedule, t: Tensor) -> Tensor:
    """``sigmoid(lambda(t)) = alpha^2 / (alpha^2 + sigma^2)`` (float64; ``abar_k`` at the steps of a
    Discrete schedule, read from its tables) (docs/math.md I22)."""
    t = as_time(t, "t").reshape(-1)
    if isinstance(schedule, Discrete):
        k = torch.round(t).long().cpu()
        ab = torch.exp(schedule.log_alpha_bars[k])
        return (ab / (ab + schedule.one_minus_alpha_bars[k])).to(t.device)
    a2, s2 = schedule.alpha2(t), schedule.sigma2(t)
    return a2 / (a2 + s2)


def _sq(v: Tensor) -> Tensor:
    """``||v_i||^2`` per sample (sum over every axis but the first)."""
    return (v**2).sum(tuple(range(1, v.ndim)))


# ------------------------------------------------------------------------------------------------
# objectives
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoisyBatch:
    """One Monte-Carlo batch: ``x_t = alpha x_0 + sigma eps`` at times ``t`` (docs/math.md section 1).

    ``alpha``, ``sigma`` have shape ``(n,)``; :meth:`b` broadcasts them against ``x_0``.
    ``cond`` holds the conditioning (``{"y": y}``) passed to a conditional model.
    """

    x0: Tensor
    t: Tensor
    noise: Tensor
    alpha: Tensor
    sigma: Tensor
    x_t: Tensor
    cond: Dict[str, object]

    @classmethod
    def make(cls, schedule: Schedule, x0: Tensor, t: Tensor, noise: Tensor, y: object = None) -> NoisyBatch:
        """The batch of ``x0`` noised with ``noise`` at times ``t`` under ``schedule``."""
        a = schedule.alpha(t).to(x0.dtype)
        s = schedule.sigma(t).to(x0.dtype)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        x_t = a.reshape(shape) * x0 + s.reshape(shape) * noise
        return cls(x0, t, noise, a, s, x_t, {} if y is None else {"y": y})

    def b(self, v: Tensor) -> Tensor:
        """``v`` of shape ``(n,)`` reshaped to broadcast against ``x_0``."""
        return v.reshape((-1,) + (1,) * (self.x0.ndim - 1))


class Objective(ABC):
    """``err(x_0, t, eps)``: the per-sample error a denoising loss weights (docs/math.md I22)."""

    #: a short name, stored in checkpoints
    name: str = "objective"

    @abstractmethod
    def __call__(self, model: DiffusionModel, batch: NoisyBatch) -> Tensor:
        """``err`` per sample, shape ``(n,)``."""

    def offset(self, x0: Tensor) -> Optional[float]:
        """A parameter-free term added outside the Monte-Carlo weight, or ``None`` (only :class:`ELBOLoss`)."""
        return None

    def config(self) -> Dict[str, object]:
        """The objective's settings (compared when a checkpoint is resumed)."""
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EpsLoss(Objective):
    """``||eps - eps_theta(x_t, t)||^2`` (Ho et al. 2020; docs/math.md I22)."""

    name = "eps"

    def __call__(self, model: DiffusionModel, batch: NoisyBatch) -> Tensor:
        return _sq(batch.noise - model.eps(batch.x_t, batch.t, **batch.cond))


class ScoreLoss(Objective):
    """Denoising score matching ``sigma^2 ||s_theta(x_t, t) - grad log q(x_t | x_0)||^2`` with
    ``grad log q(x_t | x_0) = -eps / sigma`` (Song et al.; I1, I22): explicit score matching plus a
    constant, equal in value to :class:`EpsLoss`."""

    name = "sigma2"

    def __call__(self, model: DiffusionModel, batch: NoisyBatch) -> Tensor:
        target = -batch.noise / batch.b(batch.sigma)  # grad log q(x_t | x_0)
        score = model.score(batch.x_t, batch.t, **batch.cond)
        return (batch.sigma**2) * _sq(score - target)


class DenoiserLoss(Objective):
    """``||x_0 - D_theta(x_t, t)||^2``, the unweighted denoiser error (docs/math.md I22)."""

    name = "x0"

    def __call__(self, model: DiffusionModel, batch: NoisyBatch) -> Tensor:
        return _sq(batch.x0 - model.denoise(batch.x_t, batch.t, **batch.cond))


class ELBOLoss(EpsLoss):
    """``-ELBO`` with its parameter-free terms (I22, I7/I8): err ``= ||eps - eps_hat||^2 -
    sigmoid(lambda) ||eps||^2`` under the ELBO weight, plus the offset ``(d/2) log(2 pi e)``.

    ``sigmoid(lambda)(||eps||^2 - d)`` has mean zero (docs/math.md section 4), so with
    :class:`~densityformula.training.weighting.ELBOWeight` the expectation is ``-ELBO(x_0)`` in nats.
    """

    name = "elbo_with_constant"

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule

    def __call__(self, model: DiffusionModel, batch: NoisyBatch) -> Tensor:
        sig = sigmoid_log_snr(self.schedule, batch.t).to(batch.x0.dtype)
        return super().__call__(model, batch) - sig * _sq(batch.noise)

    def offset(self, x0: Tensor) -> Optional[float]:
        """``(d/2) log(2 pi e)``, ``d`` the dimension of a sample."""
        return 0.5 * x0[0].numel() * LOG_2PI_E


# ------------------------------------------------------------------------------------------------
# the Monte-Carlo composition
# ------------------------------------------------------------------------------------------------
class WeightedLoss:
    """``rho(t) / p(t) err(x_0, t, eps)`` with ``t ~ p``, ``eps ~ N(0, I)`` (docs/math.md I22, I23).

    Args:
        objective: the error (:class:`EpsLoss`, :class:`ScoreLoss`, :class:`DenoiserLoss`,
            :class:`ELBOLoss` or your own :class:`Objective`).
        weighting: ``rho`` (:class:`~densityformula.training.weighting.TimeAverage` or
            :class:`~densityformula.training.weighting.ELBOWeight`).
        time_sampler: ``p`` and the time range.
    """

    def __init__(self, objective: Objective, weighting: Weighting, time_sampler: TimeSampler) -> None:
        if not isinstance(objective, Objective):
            raise TypeError(f"objective must be a densityformula.training Objective, got {type(objective).__name__}")
        if not isinstance(weighting, Weighting):
            raise TypeError(f"weighting must be a densityformula.training Weighting, got {type(weighting).__name__}")
        if not isinstance(time_sampler, TimeSampler):
            raise TypeError(f"time_sampler must be a densityformula.training TimeSampler, got "
                            f"{type(time_sampler).__name__}")
        self.objective = objective
        self.weight = weighting
        self.time_sampler = time_sampler
        self.schedule: Schedule = time_sampler.schedule
        self.discrete = isinstance(time_sampler, StepSampler)
        self.lo, self.hi = time_sampler.lo, time_sampler.hi

    @property
    def log_snr_support(self) -> Tuple[float, float]:
        """The log-SNR interval the loss trains on: the time sampler's (docs/math.md I24)."""
        return self.time_sampler.log_snr_support

    @property
    def trained_log_snr_range(self) -> Tuple[float, float]:
        """The range a model trained on this loss is trusted on: the time sampler's (docs/math.md I24)."""
        return self.time_sampler.trained_log_snr_range

    def sample_t(self, n: int, generator: Optional[torch.Generator] = None, device: DeviceLike = None) -> Tensor:
        """Draw ``n`` times (float64, shape ``(n,)``) from the time sampler."""
        return self.time_sampler.sample(n, generator, device)

    def factor(self, t: Tensor) -> Tensor:
        """``rho(t) / p(t)``: the Monte-Carlo weight of a sample at time ``t`` (float64 ``(n,)``) (I23)."""
        t = self.time_sampler.check(t)
        return self.weight.rho(t, self.time_sampler) / self.time_sampler.density(t)

    def sigmoid_log_snr(self, t: Tensor) -> Tensor:
        """``sigmoid(lambda(t)) = alpha^2 / (alpha^2 + sigma^2)`` (float64)."""
        return sigmoid_log_snr(self.schedule, t)

    def config(self) -> Dict[str, object]:
        """The settings of the three parts (compared when a checkpoint is resumed)."""
        return {"objective": self.objective.config(), "weighting": self.weight.config(),
                "time_sampler": self.time_sampler.config()}

    def __call__(
        self,
        model: DiffusionModel,
        x0: Tensor,
        *,
        generator: Optional[torch.Generator] = None,
        t: Optional[Tensor] = None,
        noise: Optional[Tensor] = None,
        y: object = None,
    ) -> Tensor:
        """Per-sample loss ``rho(t)/p(t) err(x_0, t, eps)`` (plus the objective's offset), shape ``(n,)``.

        ``t`` and ``noise`` may be given (then ``generator`` is not used for them); ``y`` is
        passed to a conditional model.
        """
        model = check_model(model)
        if not isinstance(x0, Tensor) or not x0.dtype.is_floating_point:
            raise TypeError(f"x0 must be a real floating torch.Tensor, got "
                            f"{f'dtype {x0.dtype}' if isinstance(x0, Tensor) else type(x0).__name__}")
        check_real_tensor(x0, "x0")  # a meta tensor: ValueError naming x0
        check_full_precision(x0, "x0")
        check_batch_shape(x0, "x0", model)
        if not bool(torch.isfinite(x0).all()):
            raise ValueError("x0 contains NaN or inf")
        if not same_schedule(model.schedule, self.schedule):
            raise ValueError(f"model.schedule {model.schedule!r} is not the schedule this loss was built for")
        n, dev = x0.shape[0], x0.device
        # -- times, then noise (this order of draws from ``generator`` is part of exact resume)
        if t is None:
            t = self.sample_t(n, generator=generator, device=dev)
        else:
            t = as_time(t, "t").to(dev)
            if t.ndim == 0:
                t = t.expand(n)
            if t.shape != (n,):
                raise ValueError(f"t must have shape ({n},), got {tuple(t.shape)}")
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=dev)
        elif not isinstance(noise, Tensor) or noise.shape != x0.shape:
            raise ValueError(f"noise must be a tensor of shape {tuple(x0.shape)}")
        noise = noise.to(x0.dtype)
        # -- rho / p err (+ offset)
        fac = self.factor(t).to(x0.dtype)
        inner = model.inner if isinstance(model, CheckedModel) else model
        err = self.objective(_TrainingCalls(inner), NoisyBatch.make(self.schedule, x0, t, noise, y))
        offset = self.objective.offset(x0)
        return fac * err if offset is None else offset + fac * err

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.objective!r}, {self.weight!r}, {self.time_sampler!r})"


class DenoisingLoss(WeightedLoss):
    """The weighted denoising loss of a schedule, built from names (see the module docstring's table).

    ``weighting`` picks the objective and ``rho`` (``"eps"``: :class:`EpsLoss` x ``TimeAverage``,
    ``"sigma2"``: :class:`ScoreLoss` x ``TimeAverage``, ``"uniform"``: :class:`DenoiserLoss` x
    ``TimeAverage``, ``"elbo"``: :class:`EpsLoss` (:class:`ELBOLoss` with ``include_constant``) x
    ``ELBOWeight``); ``time_sampling`` the time sampler
    (:func:`~densityformula.training.time_sampling.time_sampler`).

    Args:
        schedule: the forward process (continuous or :class:`Discrete`).
        weighting: ``"eps" | "elbo" | "sigma2" | "uniform"``.
        time_sampling: ``"uniform" | "importance" | "truncated"``.
        t_range: ``(lo, hi)`` inside ``[t_min, t_max]``; the objective's time range.
        truncation: fraction of ``[t_min, t_max]`` cut at each end by ``"truncated"``.
        proposal_loc, proposal_scale: logistic law of the log-SNR for ``"importance"``.
        include_constant: add the parameter-free ELBO terms (``"elbo"`` only): then
            ``E[loss] = -ELBO`` in nats (I7 / I8).
    """

    def __init__(
        self,
        schedule: Schedule,
        weighting: str = "eps",
        time_sampling: str = "uniform",
        *,
        t_range: Optional[Tuple[float, float]] = None,
        truncation: float = 1e-3,
        proposal_loc: float = 0.0,
        proposal_scale: float = 2.0,
        include_constant: bool = False,
    ) -> None:
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a densityformula Schedule, got {type(schedule).__name__}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}")
        if include_constant and weighting != "elbo":
            raise ValueError("include_constant=True needs weighting='elbo'")
        sampler = time_sampler(schedule, time_sampling, t_range=t_range, truncation=truncation,
                               proposal_loc=proposal_loc, proposal_scale=proposal_scale)
        objective: Objective
        if weighting == "elbo":
            objective = ELBOLoss(schedule) if include_constant else EpsLoss()
        elif weighting == "eps":
            objective = EpsLoss()
        elif weighting == "sigma2":
            objective = ScoreLoss()
        else:
            objective = DenoiserLoss()
        rho: Weighting = ELBOWeight() if weighting == "elbo" else TimeAverage()
        super().__init__(objective, rho, sampler)
        self.weighting = weighting
        self.time_sampling = time_sampling
        self.truncation = float(truncation)
        self.proposal_loc = float(proposal_loc)
        self.proposal_scale = float(proposal_scale)
        self.include_constant = bool(include_constant)

    def __repr__(self) -> str:
        return (f"DenoisingLoss({self.schedule!r}, {self.weighting!r}, {self.time_sampling!r}, "
                f"t_range=({self.lo}, {self.hi}), include_constant={self.include_constant})")


def denoising_loss(
    model: DiffusionModel,
    x0: Tensor,
    weighting: str = "eps",
    time_sampling: str = "uniform",
    *,
    generator: Optional[torch.Generator] = None,
    t: Optional[Tensor] = None,
    noise: Optional[Tensor] = None,
    y: object = None,
    **kwargs: object,
) -> Tensor:
    """Per-sample weighted denoising loss of ``model`` on ``x0`` (``(n,)``); see :class:`DenoisingLoss`.

    ``"elbo"`` implements the I7 (discrete) / I8 (continuous) weights (docs/math.md I22).
    """
    loss = DenoisingLoss(check_model(model).schedule, weighting, time_sampling, **kwargs)  # type: ignore[arg-type]
    return loss(model, x0, generator=generator, t=t, noise=noise, y=y)
