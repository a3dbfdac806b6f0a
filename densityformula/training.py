"""Denoising score-matching losses and a reproducible trainer (docs/math.md sections 2, 4 and 5).

Loss
----
With ``x_t = alpha_t x_0 + sigma_t eps`` every weighting is a Monte-Carlo estimate of an
objective ``int rho(t) E[err(t)] dt`` over a time range ``[lo, hi]`` of the schedule (a sum
over steps ``k`` for a :class:`~densityformula.schedules.Discrete` schedule).  A sample at time
``t`` drawn from the density ``p(t)`` contributes ``rho(t) / p(t) * err``:

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
control variate ``sigmoid(lambda)(||eps||^2 - d)`` of docs/math.md section 4.  With the exact denoiser
and a schedule whose log-SNR range is the whole real line (LiYan, VPCosine), its expectation over
``t`` and ``eps`` is ``-log q_0(x_0)`` (I5/I6).

Time sampling: ``"uniform"`` (``t ~ U[lo, hi]``; ``k ~ U{lo..hi}``), ``"truncated"``
(the same on ``[t_min + truncation*(t_max-t_min), t_max - truncation*(t_max-t_min)]`` unless
``t_range`` is given) and ``"importance"`` (log-SNR drawn from a logistic law with
``proposal_loc``/``proposal_scale`` restricted to the range, ``p(t) = logistic(lambda(t))
|dlambda/dt| / Z``; discrete: ``p_k`` proportional to the logistic mass of ``(lambda_k,
lambda_{k-1}]``).  For a given time range, uniform and importance sampling estimate the same
objective (only the variance differs); ``"truncated"`` changes the range, hence the objective.
"""
from __future__ import annotations

import copy
import math
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from ._validation import as_time, resolve_device
from .models import DiffusionModel
from .schedules import Discrete, Schedule

Tensor = torch.Tensor

__all__ = ["WEIGHTINGS", "TIME_SAMPLINGS", "DenoisingLoss", "denoising_loss", "Trainer"]

WEIGHTINGS = ("eps", "elbo", "sigma2", "uniform")
TIME_SAMPLINGS = ("uniform", "importance", "truncated")
_LOG_2PI_E = math.log(2.0 * math.pi) + 1.0
_U_EPS = 1e-12  # uniforms are drawn in [eps, 1 - eps] so that no sample sits exactly on an end


def _same_schedule(a: Schedule, b: Schedule) -> bool:
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
            if not (isinstance(x, Tensor) and isinstance(y, Tensor) and x.shape == y.shape and torch.equal(x.cpu(), y.cpu())):
                return False
        elif x != y:
            return False
    return True


def _logistic_cdf(lam: Tensor, loc: float, scale: float) -> Tensor:
    return torch.sigmoid((lam - loc) / scale)


def _logistic_log_pdf(lam: Tensor, loc: float, scale: float) -> Tensor:
    z = (lam - loc) / scale
    return -torch.nn.functional.softplus(z) - torch.nn.functional.softplus(-z) - math.log(scale)


class DenoisingLoss:
    """The weighted denoising loss of a schedule (see the module docstring for the table).

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
        if not isinstance(truncation, (int, float)) or not 0.0 <= truncation < 0.5:
            raise ValueError(f"truncation must be a float in [0, 0.5), got {truncation!r}")
        if not isinstance(proposal_scale, (int, float)) or not (proposal_scale > 0 and math.isfinite(proposal_scale)):
            raise ValueError(f"proposal_scale must be a positive float, got {proposal_scale!r}")
        if not isinstance(proposal_loc, (int, float)) or not math.isfinite(proposal_loc):
            raise ValueError(f"proposal_loc must be a finite float, got {proposal_loc!r}")
        if include_constant and weighting != "elbo":
            raise ValueError("include_constant=True needs weighting='elbo'")
        self.schedule = schedule
        self.weighting = weighting
        self.time_sampling = time_sampling
        self.truncation = float(truncation)
        self.proposal_loc = float(proposal_loc)
        self.proposal_scale = float(proposal_scale)
        self.include_constant = bool(include_constant)
        self.discrete = isinstance(schedule, Discrete)
        span = schedule.t_max - schedule.t_min
        if t_range is None:
            cut = self.truncation * span if time_sampling == "truncated" else 0.0
            lo, hi = schedule.t_min + cut, schedule.t_max - cut
        else:
            try:
                lo, hi = (float(v) for v in t_range)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"t_range must be a pair of floats, got {t_range!r}") from exc
            if not (schedule.t_min <= lo < hi <= schedule.t_max):
                raise ValueError(
                    f"t_range must satisfy {schedule.t_min} <= lo < hi <= {schedule.t_max}, got {t_range!r}"
                )
        if self.discrete:
            k_lo, k_hi = max(1, math.ceil(lo)), min(schedule.T, math.floor(hi))
            if k_lo > k_hi:
                raise ValueError(f"t_range {t_range!r} contains no step k in 1..{schedule.T}")
            self.lo, self.hi = float(k_lo), float(k_hi)
            self._build_discrete()
        else:
            self.lo, self.hi = float(lo), float(hi)

    # -- discrete tables ---------------------------------------------------------------
    def _build_discrete(self) -> None:
        s: Discrete = self.schedule  # type: ignore[assignment]
        ks = torch.arange(int(self.lo), int(self.hi) + 1)
        log_ab = s._log_ab
        ab = torch.exp(log_ab)
        beta = s.betas[ks - 1]
        # I7: (1 - alpha_k) / (2 alpha_k) * ||s_k + eps/sigma_k||^2 = beta_k / (2 alpha_k (1 - abar_k)) ||eps - eps_hat||^2
        w_elbo = beta / (2.0 * (1.0 - beta) * (-torch.expm1(log_ab[ks])))
        if self.time_sampling == "importance":
            lam = log_ab - torch.log(-torch.expm1(log_ab))  # lam_0 = +inf
            F = _logistic_cdf(lam, self.proposal_loc, self.proposal_scale)
            mass = (F[ks - 1] - F[ks]).clamp_min(0.0)
            if not bool((mass > 0).all()):
                raise ValueError("the importance proposal gives zero mass to some steps; widen proposal_scale")
            p = mass / mass.sum()
        else:
            p = torch.full((ks.numel(),), 1.0 / ks.numel(), dtype=torch.float64)
        self._ks = ks
        self._p = p
        self._rho = w_elbo if self.weighting == "elbo" else torch.full_like(p, 1.0 / ks.numel())
        self._sig = ab[ks] / (ab[ks] + (-torch.expm1(log_ab[ks])))  # sigmoid(lambda_k) = abar_k

    # -- time sampling -----------------------------------------------------------------
    def sample_t(self, n: int, generator: Optional[torch.Generator] = None, device: Any = None) -> Tensor:
        """Draw ``n`` times (float64, shape ``(n,)``) from this loss's time sampling."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        dev = torch.device(device) if device is not None else (generator.device if generator is not None else torch.device("cpu"))
        if self.discrete:
            idx = torch.multinomial(self._p.to(dev), n, replacement=True, generator=generator) if n else torch.zeros(
                0, dtype=torch.long, device=dev
            )
            return self._ks.to(dev)[idx].to(torch.float64)
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=dev).clamp(_U_EPS, 1.0 - _U_EPS)
        if self.time_sampling in ("uniform", "truncated"):
            return self.lo + (self.hi - self.lo) * u
        lam_hi = self.schedule.log_snr(self.lo)
        lam_lo = self.schedule.log_snr(self.hi)
        F_lo = float(_logistic_cdf(lam_lo, self.proposal_loc, self.proposal_scale))
        F_hi = float(_logistic_cdf(lam_hi, self.proposal_loc, self.proposal_scale))
        v = F_lo + (F_hi - F_lo) * u
        lam = self.proposal_loc + self.proposal_scale * (torch.log(v) - torch.log1p(-v))
        lam = lam.clamp(float(lam_lo), float(lam_hi))
        return self.schedule.t_from_log_snr(lam).clamp(self.lo, self.hi)

    def factor(self, t: Tensor) -> Tensor:
        """``rho(t) / p(t)``: the Monte-Carlo weight of a sample at time ``t`` (float64 ``(n,)``)."""
        t = as_time(t, "t").reshape(-1)
        if self.discrete:
            k = torch.round(t)
            if bool((k != t).any()) or bool((k < self.lo).any()) or bool((k > self.hi).any()):
                raise ValueError(f"t must hold integer steps in [{int(self.lo)}, {int(self.hi)}]")
            i = (k.long() - int(self.lo)).cpu()
            return (self._rho[i] / self._p[i]).to(t.device)
        if bool((t < self.lo).any()) or bool((t > self.hi).any()):
            raise ValueError(f"t must lie in the loss's time range [{self.lo}, {self.hi}]")
        sch = self.schedule
        if self.time_sampling in ("uniform", "truncated"):
            width = self.hi - self.lo
            if self.weighting == "elbo":
                return 0.5 * sch.g2(t) / sch.sigma2(t) * width
            return torch.ones_like(t)
        lam = sch.log_snr(t)
        F_lo = _logistic_cdf(sch.log_snr(self.hi), self.proposal_loc, self.proposal_scale)
        F_hi = _logistic_cdf(sch.log_snr(self.lo), self.proposal_loc, self.proposal_scale)
        Z = (F_hi - F_lo).to(t.device)
        inv_pdf = torch.exp(-_logistic_log_pdf(lam, self.proposal_loc, self.proposal_scale)) * Z
        if self.weighting == "elbo":
            return 0.5 * inv_pdf  # rho = |dlam/dt| / 2, p = pdf(lam) |dlam/dt| / Z
        return inv_pdf * sch.sigma2(t) / sch.g2(t) / (self.hi - self.lo)

    def sigmoid_log_snr(self, t: Tensor) -> Tensor:
        """``sigmoid(lambda(t)) = alpha^2 / (alpha^2 + sigma^2)`` (float64)."""
        t = as_time(t, "t").reshape(-1)
        if self.discrete:
            i = (torch.round(t).long() - int(self.lo)).cpu()
            return self._sig[i].to(t.device)
        a2, s2 = self.schedule.alpha2(t), self.schedule.sigma2(t)
        return a2 / (a2 + s2)

    # -- the loss ----------------------------------------------------------------------
    def __call__(
        self,
        model: DiffusionModel,
        x0: Tensor,
        *,
        generator: Optional[torch.Generator] = None,
        t: Optional[Tensor] = None,
        noise: Optional[Tensor] = None,
        y: Any = None,
    ) -> Tensor:
        """Per-sample loss ``rho(t)/p(t) err(x_0, t, eps)``, shape ``(n,)`` (module docstring).

        ``t`` and ``noise`` may be given (then ``generator`` is not used for them); ``y`` is
        passed to a conditional model.
        """
        if not isinstance(model, DiffusionModel):
            raise TypeError(f"model must be a DiffusionModel, got {type(model).__name__}")
        if not isinstance(x0, Tensor) or not x0.dtype.is_floating_point:
            raise TypeError("x0 must be a floating torch.Tensor")
        if x0.ndim < 2 or x0.shape[0] == 0:
            raise ValueError(f"x0 must have shape (n, d) with n >= 1, got {tuple(x0.shape)}")
        if not bool(torch.isfinite(x0).all()):
            raise ValueError("x0 contains NaN or inf")
        if not _same_schedule(model.schedule, self.schedule):
            raise ValueError(f"model.schedule {model.schedule!r} is not the schedule this loss was built for")
        n = x0.shape[0]
        dev = x0.device
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
        fac = self.factor(t).to(x0.dtype)
        a = self.schedule.alpha(t).to(x0.dtype)
        s = self.schedule.sigma(t).to(x0.dtype)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        x_t = a.reshape(shape) * x0 + s.reshape(shape) * noise
        kw = {} if y is None else {"y": y}
        dims = tuple(range(1, x0.ndim))
        if self.weighting in ("eps", "elbo"):
            err = ((noise - model.eps(x_t, t, **kw)) ** 2).sum(dims)
        elif self.weighting == "sigma2":
            target = -noise / s.reshape(shape)  # grad log q(x_t | x_0)
            err = (s**2) * ((model.score(x_t, t, **kw) - target) ** 2).sum(dims)
        else:
            err = ((x0 - model.denoise(x_t, t, **kw)) ** 2).sum(dims)
        if self.include_constant:
            d = x0[0].numel()
            sig = self.sigmoid_log_snr(t).to(x0.dtype)
            return 0.5 * d * _LOG_2PI_E + fac * (err - sig * (noise**2).sum(dims))
        return fac * err


def denoising_loss(
    model: DiffusionModel,
    x0: Tensor,
    weighting: str = "eps",
    time_sampling: str = "uniform",
    *,
    generator: Optional[torch.Generator] = None,
    t: Optional[Tensor] = None,
    noise: Optional[Tensor] = None,
    y: Any = None,
    **kwargs: Any,
) -> Tensor:
    """Per-sample weighted denoising loss of ``model`` on ``x0`` (``(n,)``); see :class:`DenoisingLoss`.

    ``"elbo"`` implements the I7 (discrete) / I8 (continuous) weights.
    """
    loss = DenoisingLoss(model.schedule, weighting, time_sampling, **kwargs)
    return loss(model, x0, generator=generator, t=t, noise=noise, y=y)


# ======================================================================================
# Trainer
# ======================================================================================

_CKPT_FORMAT = "densityformula.trainer/1"


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class Trainer:
    """Train a :class:`DiffusionModel` that is also a ``torch.nn.Module`` on a denoising loss.

    Args:
        model: e.g. :class:`~densityformula.neural.MLPDenoiser`; moved to ``device``.
        data: a target with ``.sample(n, generator=...)`` (fresh samples every step, e.g. a
            :class:`~densityformula.targets.GaussianMixture`), a tensor ``(N, d)`` (a fixed
            dataset, shuffled each epoch), or a pair ``(x, y)`` of tensors with labels.
        steps: total number of optimisation steps (the learning-rate schedule spans them).
        loss: a :class:`DenoisingLoss`; default ``DenoisingLoss(model.schedule, weighting,
            time_sampling)``.
        batch_size, lr, weight_decay, grad_clip: Adam(W) settings (``grad_clip=None``: none).
        lr_schedule: ``"constant"`` or ``"cosine"`` (to 0 over ``steps``), after ``warmup`` steps.
        ema_decay: exponential moving average of the weights (``None``: no EMA); the effective
            decay is ``min(ema_decay, (1 + step) / (10 + step))``.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ...
        mixed_precision: ``False``, ``True``/``"bf16"`` or ``"fp16"`` (CUDA only; on CPU a
            warning is issued and full precision is used).
        seed: seeds the data generator (CPU) and the noise generator (on ``device``).
        label_dropout: probability of replacing a class label by "no condition" (-1).
        checkpoint_path: where :meth:`save_checkpoint` writes (atomically); an existing file
            is never overwritten unless ``overwrite=True`` or it is the file being resumed.
        checkpoint_every: save every that many steps (0: only when asked / at the end of
            :meth:`train`).
        resume_from: a checkpoint to continue from exactly (model, optimizer, EMA, generators,
            data order, step, history).
        progress: show a tqdm bar.
    """

    def __init__(
        self,
        model: DiffusionModel,
        data: Any,
        *,
        steps: int,
        loss: Optional[DenoisingLoss] = None,
        weighting: str = "eps",
        time_sampling: str = "uniform",
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        grad_clip: Optional[float] = 1.0,
        lr_schedule: str = "cosine",
        warmup: int = 0,
        ema_decay: Optional[float] = 0.999,
        device: Any = "auto",
        mixed_precision: Union[bool, str] = False,
        seed: int = 0,
        label_dropout: float = 0.0,
        checkpoint_path: Union[str, os.PathLike, None] = None,
        checkpoint_every: int = 0,
        resume_from: Union[str, os.PathLike, None] = None,
        overwrite: bool = False,
        progress: bool = True,
    ) -> None:
        if not isinstance(model, DiffusionModel) or not isinstance(model, nn.Module):
            raise TypeError(f"model must be a DiffusionModel and a torch.nn.Module, got {type(model).__name__}")
        for name, value, lo in (("steps", steps, 1), ("batch_size", batch_size, 1), ("warmup", warmup, 0),
                                ("checkpoint_every", checkpoint_every, 0), ("seed", seed, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
        if not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive float, got {lr!r}")
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        if ema_decay is not None and not (isinstance(ema_decay, (int, float)) and 0.0 <= ema_decay < 1.0):
            raise ValueError(f"ema_decay must be None or a float in [0, 1), got {ema_decay!r}")
        if grad_clip is not None and not (isinstance(grad_clip, (int, float)) and grad_clip > 0):
            raise ValueError(f"grad_clip must be None or a positive float, got {grad_clip!r}")
        if not isinstance(label_dropout, (int, float)) or not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must be a float in [0, 1), got {label_dropout!r}")
        if mixed_precision not in (False, True, "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be False, True, 'bf16' or 'fp16', got {mixed_precision!r}")
        self.device = resolve_device(device)
        self.amp_dtype: Optional[torch.dtype] = None
        if mixed_precision:
            if self.device.type != "cuda":
                warnings.warn("mixed_precision is only used on CUDA; training in full precision", stacklevel=2)
            else:
                self.amp_dtype = torch.float16 if mixed_precision == "fp16" else torch.bfloat16
        if loss is None:
            loss = DenoisingLoss(model.schedule, weighting, time_sampling)
        elif not isinstance(loss, DenoisingLoss):
            raise TypeError(f"loss must be a DenoisingLoss, got {type(loss).__name__}")
        if not _same_schedule(loss.schedule, model.schedule):
            raise ValueError(f"loss.schedule {loss.schedule!r} is not model.schedule {model.schedule!r}")
        self.loss = loss
        self.model = model.to(self.device)
        self.steps = steps
        self.batch_size = batch_size
        self.grad_clip = grad_clip
        self.ema_decay = ema_decay
        self.label_dropout = float(label_dropout)
        self.seed = seed
        self.progress = progress
        self.checkpoint_every = checkpoint_every
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self._setup_data(data)
        if self.label_dropout > 0 and (self._labels is None or getattr(model, "num_classes", None) is None):
            raise ValueError("label_dropout needs class labels in data and a model with num_classes")
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        total, wu = steps, warmup

        def lr_lambda(step: int) -> float:
            if wu and step < wu:
                return (step + 1) / wu
            if lr_schedule == "constant":
                return 1.0
            frac = min(1.0, (step - wu) / max(1, total - wu))
            return 0.5 * (1.0 + math.cos(math.pi * frac))

        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.ema: Optional[nn.Module] = None
        if ema_decay is not None:
            self.ema = copy.deepcopy(self.model, memo={id(self.model.schedule): self.model.schedule})
            for p in self.ema.parameters():
                p.requires_grad_(False)
        self.data_generator = torch.Generator(device="cpu")
        self.data_generator.manual_seed(seed)
        self.noise_generator = torch.Generator(device=self.device)
        self.noise_generator.manual_seed(seed + 1)
        self.step = 0
        self.history: List[Tuple[int, float]] = []
        self._config = {
            "steps": steps, "batch_size": batch_size, "lr": float(lr), "weight_decay": float(weight_decay),
            "grad_clip": grad_clip, "lr_schedule": lr_schedule, "warmup": warmup, "ema_decay": ema_decay,
            "seed": seed, "label_dropout": self.label_dropout, "weighting": loss.weighting,
            "time_sampling": loss.time_sampling, "t_range": (loss.lo, loss.hi), "model": type(model).__name__,
            "proposal": (loss.proposal_loc, loss.proposal_scale), "include_constant": loss.include_constant,
            # the architecture (not the init seed: the weights come from the checkpoint)
            "model_config": {k: v for k, v in model.config().items() if k != "seed"} if hasattr(model, "config") else None,
        }
        resume = Path(resume_from) if resume_from is not None else None
        if self.checkpoint_path is not None and self.checkpoint_path.exists() and not overwrite:
            if resume is None or resume.resolve() != self.checkpoint_path.resolve():
                raise FileExistsError(
                    f"checkpoint_path {self.checkpoint_path} exists; pass resume_from=it to continue, "
                    "or overwrite=True to replace it"
                )
        if resume is not None:
            self.load_checkpoint(resume)

    # -- data ----------------------------------------------------------------------------
    def _setup_data(self, data: Any) -> None:
        self._target = None
        self._x: Optional[Tensor] = None
        self._labels: Optional[Tensor] = None
        self._perm: Optional[Tensor] = None
        self._pos = 0
        if hasattr(data, "sample") and callable(data.sample):
            self._target = data
            if getattr(self.model, "num_classes", None) is not None:
                self._labels = torch.empty(0)  # marker: labels come from sample(return_labels=True)
            return
        y = None
        if isinstance(data, (tuple, list)):
            if len(data) != 2 or not all(isinstance(v, Tensor) for v in data):
                raise TypeError("data as a sequence must be a pair (x, y) of tensors")
            data, y = data
        if not isinstance(data, Tensor) or not data.dtype.is_floating_point:
            raise TypeError("data must be a target with .sample(), a floating tensor (N, d), or a pair (x, y)")
        if data.ndim < 2:
            raise ValueError(f"data must have shape (N, d), got {tuple(data.shape)}")
        if data.shape[0] < self.batch_size:
            raise ValueError(f"data has {data.shape[0]} rows, fewer than batch_size={self.batch_size}")
        if not bool(torch.isfinite(data).all()):
            raise ValueError("data contains NaN or inf")
        self._x = data.to(device=self.device, dtype=self.model_dtype)
        if y is not None:
            if not isinstance(y, Tensor) or y.shape[0] != data.shape[0]:
                raise ValueError("labels y must be a tensor with one row per data point")
            self._labels = y.to(self.device)

    @property
    def model_dtype(self) -> torch.dtype:
        """Dtype of the model's parameters (batches are cast to it)."""
        return next(self.model.parameters()).dtype

    def _next_batch(self) -> Tuple[Tensor, Optional[Tensor]]:
        B = self.batch_size
        if self._target is not None:
            if self._labels is not None:
                x, y = self._target.sample(B, generator=self.data_generator, return_labels=True)
                return x.to(device=self.device, dtype=self.model_dtype), y.to(self.device)
            x = self._target.sample(B, generator=self.data_generator)
            return x.to(device=self.device, dtype=self.model_dtype), None
        assert self._x is not None
        N = self._x.shape[0]
        if self._perm is None or self._pos + B > N:
            self._perm = torch.randperm(N, generator=self.data_generator)
            self._pos = 0
        idx = self._perm[self._pos : self._pos + B].to(self.device)
        self._pos += B
        return self._x[idx], (self._labels[idx] if self._labels is not None else None)

    # -- training -------------------------------------------------------------------------
    def _ema_update(self) -> None:
        if self.ema is None:
            return
        decay = min(self.ema_decay, (1.0 + self.step) / (10.0 + self.step))
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.model.parameters()):
                pe.lerp_(p, 1.0 - decay)

    def train_step(self) -> float:
        """One optimisation step; returns the batch's mean loss."""
        self.model.train()
        x0, y = self._next_batch()
        if y is not None and self.label_dropout > 0:
            drop = torch.rand(y.shape[0], generator=self.noise_generator, device=self.device) < self.label_dropout
            y = torch.where(drop, torch.full_like(y, -1), y)
        if self.amp_dtype is not None:
            with torch.autocast(device_type="cuda", dtype=self.amp_dtype):
                loss = self.loss(self.model, x0, generator=self.noise_generator, y=y).float().mean()
        else:
            loss = self.loss(self.model, x0, generator=self.noise_generator, y=y).mean()
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"non-finite loss {float(loss)} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lr_scheduler.step()
        self.step += 1
        self._ema_update()
        value = float(loss.detach())
        self.history.append((self.step, value))
        return value

    def train(self, until: Optional[int] = None) -> List[Tuple[int, float]]:
        """Train up to step ``until`` (default: ``steps``); returns the history ``[(step, loss)]``.

        Saves a checkpoint every ``checkpoint_every`` steps and at the end when
        ``checkpoint_path`` is set.
        """
        end = self.steps if until is None else until
        if not isinstance(end, int) or isinstance(end, bool) or not 0 <= end <= self.steps:
            raise ValueError(f"until must be an int in [0, {self.steps}], got {until!r}")
        from tqdm.auto import tqdm

        bar = tqdm(total=end, initial=self.step, disable=not self.progress, desc="train", leave=False)
        try:
            while self.step < end:
                value = self.train_step()
                bar.update(1)
                if self.step % 50 == 0:
                    bar.set_postfix(loss=f"{value:.4g}")
                if self.checkpoint_path is not None and self.checkpoint_every and self.step % self.checkpoint_every == 0:
                    self.save_checkpoint()
        finally:
            bar.close()
        if self.checkpoint_path is not None:
            self.save_checkpoint()
        self.model.eval()
        return self.history

    @property
    def eval_model(self) -> nn.Module:
        """The EMA model when EMA is on, else the trained model."""
        return self.ema if self.ema is not None else self.model

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything an exact resume needs."""
        return {
            "format": _CKPT_FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "data_generator": self.data_generator.get_state(),
            "noise_generator": self.noise_generator.get_state(),
            "data_perm": self._perm.cpu() if self._perm is not None else None,
            "data_pos": self._pos,
            "history": list(self.history),
            "config": self._config,
            "torch_version": str(torch.__version__),
        }

    def save_checkpoint(self, path: Union[str, os.PathLike, None] = None, *, overwrite: bool = False) -> Path:
        """Write :meth:`state_dict` atomically (temporary file + ``os.replace``).

        ``path=None`` writes this trainer's ``checkpoint_path``; another existing file is only
        replaced with ``overwrite=True``.
        """
        if path is None:
            if self.checkpoint_path is None:
                raise ValueError("path must be given when the trainer has no checkpoint_path")
            target = self.checkpoint_path
        else:
            target = Path(path)
            if target.exists() and not overwrite and target != self.checkpoint_path:
                raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
        _atomic_save(self.state_dict(), target)
        return target

    def load_checkpoint(self, path: Union[str, os.PathLike]) -> None:
        """Restore the exact training state saved by :meth:`save_checkpoint`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} not found")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != _CKPT_FORMAT:
            raise ValueError(f"{path} is not a densityformula trainer checkpoint")
        saved = state["config"]
        diff = {k: (saved.get(k), v) for k, v in self._config.items() if k != "steps" and saved.get(k) != v}
        if diff:
            raise ValueError(f"checkpoint {path} was written with a different configuration: {diff}")
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            if state["ema"] is None:
                raise ValueError(f"checkpoint {path} has no EMA weights")
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.data_generator.set_state(state["data_generator"])
        self.noise_generator.set_state(state["noise_generator"])
        self._perm = state["data_perm"]
        self._pos = int(state["data_pos"])
        self.history = [tuple(h) for h in state["history"]]  # type: ignore[misc]
        self.step = int(state["step"])
