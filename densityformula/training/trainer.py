"""The trainer: a sectioned training loop over the parts of :mod:`densityformula.training`.

``Trainer`` composes a data source (:mod:`.data`), a loss (time sampler x weighting x objective,
:mod:`.losses`), an optimizer and learning-rate schedule, an :class:`~.ema.EMA` and a
:class:`~.checkpoint.Checkpointer`.  Its life has four sections, as EDM's ``training_loop``:

1. set-up (:meth:`Trainer.__init__` / :meth:`Trainer.from_parts`): check the parts, move them to
   the device, record the trained log-SNR range on the model (``model.valid_log_snr``,
   docs/math.md I24), copy the EMA;
2. resume (``resume_from=``): restore every part's state from a checkpoint, refusing one written
   with other settings;
3. loop (:meth:`Trainer.train`, :meth:`Trainer.train_step`): batch, loss, step, EMA, record;
4. checkpoint: every ``checkpoint_every`` steps and at the end, atomically.

On CPU a resumed run is bitwise identical to an uninterrupted one.  On several processes
(``torchrun``; :mod:`.distributed`) the same code trains the same model at the same global batch,
each rank on its rows, with one gradient all-reduce per step; checkpoints are written by rank 0
and resume on any number of processes.

The per-step path is lean: parameters are listed once, AdamW, clipping and the EMA use torch's
multi-tensor (``foreach``) kernels, one synchronisation reads (and checks) the loss, and the
loss's per-batch input and output checks run on the first batch only when the loss is a plain
:class:`WeightedLoss` and the data a :class:`TensorData` / :class:`SampledData` (which check
their values themselves); the numbers are those of the checked path.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .._validation import check_int, check_seed, model_dimension, resolve_device
from ..models import CheckedModel, DiffusionModel, check_model
from .checkpoint import FORMAT, Checkpointer, CheckpointError, atomic_save
from .checkpoint import load_checkpoint as _read_checkpoint
from .data import DataSource, SampledData, TensorData, as_data_source
from .distributed import DistributedContext, resolve_distributed
from .ema import EMA
from .losses import DenoisingLoss, NoisyBatch, WeightedLoss, same_schedule
from .time_sampling import DeviceLike

Tensor = torch.Tensor
PathLike = Union[str, "os.PathLike[str]"]
History = List[Tuple[int, float]]

__all__ = ["Trainer", "WarmupCosine", "record_valid_log_snr"]

# what :meth:`Trainer.load_checkpoint` needs of a state (format /2; /1 kept the data source's state flat)
_STATE_KEYS = ("step", "model", "ema", "optimizer", "scaler", "noise_generator", "data", "history", "config")
_LEGACY_KEYS = ("step", "model", "ema", "optimizer", "scaler", "noise_generator", "data_generator", "history",
                "config")


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
class WarmupCosine:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then constant or a cosine to 0 at ``steps``.

    ``f(k) = (k + 1) / warmup`` for ``k < warmup``; then ``1`` (``cosine=False``) or
    ``(1 + cos(pi min(1, (k - warmup) / (steps - warmup)))) / 2``.  For ``torch.optim.lr_scheduler.LambdaLR``.
    """

    def __init__(self, steps: int, warmup: int = 0, cosine: bool = True) -> None:
        self.steps = steps
        self.warmup = warmup
        self.cosine = cosine

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if not self.cosine:
            return 1.0
        frac = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return 0.5 * (1.0 + math.cos(math.pi * frac))


def record_valid_log_snr(model: object, interval: Tuple[float, float]) -> bool:
    """Set ``model.valid_log_snr = interval`` when the model has that settable property (docs/math.md I24).

    Returns whether it was set (an analytic model's range stays the whole line).
    """
    prop = getattr(type(model), "valid_log_snr", None)
    if isinstance(prop, property) and prop.fset is not None:
        setattr(model, "valid_log_snr", (float(interval[0]), float(interval[1])))  # noqa: B010
        return True
    return False


def _check_trainable(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a DiffusionModel and a torch.nn.Module, got {type(model).__name__}")
    try:
        check_model(model)
    except TypeError as exc:
        raise TypeError(f"model must be a DiffusionModel and a torch.nn.Module, got {type(model).__name__}") from exc
    return model


def _amp_dtype(mixed_precision: Union[bool, str], device: torch.device) -> Optional[torch.dtype]:
    if mixed_precision not in (False, True, "bf16", "fp16"):
        raise ValueError(f"mixed_precision must be False, True, 'bf16' or 'fp16', got {mixed_precision!r}")
    if not mixed_precision:
        return None
    if device.type != "cuda":
        warnings.warn("mixed_precision is only used on CUDA; training in full precision", stacklevel=3)
        return None
    return torch.float16 if mixed_precision == "fp16" else torch.bfloat16


def _num_classes(model: nn.Module) -> Optional[int]:
    n = getattr(model, "num_classes", None)
    return n if isinstance(n, int) else None


def _model_config(model: nn.Module) -> Optional[Dict[str, object]]:
    """The architecture (``model.config()`` without the init seed: the weights come from the checkpoint)."""
    config = getattr(model, "config", None)
    if not callable(config):
        return None
    return {k: v for k, v in config().items() if k != "seed"}


def _plain(value: object) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


# ------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------
class Trainer:
    """Train a :class:`DiffusionModel` that is also a ``torch.nn.Module`` on a denoising loss.

    This constructor builds the parts from keyword arguments; :meth:`from_parts` takes them ready-made.

    Args:
        model: e.g. :class:`~densityformula.neural.MLPDenoiser`; moved to ``device``.
        data: a target with ``.sample(n, generator=...)`` (fresh samples every step, e.g. a
            :class:`~densityformula.targets.GaussianMixture`), a tensor ``(N, d)`` (a fixed
            dataset, shuffled each epoch), a pair ``(x, y)`` of tensors with labels, or a
            :class:`~densityformula.training.data.DataSource`.
        steps: total number of optimisation steps (the learning-rate schedule spans them).
        loss: a :class:`DenoisingLoss` or any :class:`WeightedLoss`; default
            ``DenoisingLoss(model.schedule, weighting, time_sampling)``.
        batch_size, lr, weight_decay, grad_clip: Adam(W) settings (``grad_clip=None``: none).
        lr_schedule: ``"constant"`` or ``"cosine"`` (to 0 over ``steps``), after ``warmup`` steps.
        ema_decay: exponential moving average of the weights (``None``: no EMA); the effective
            decay is ``min(ema_decay, (1 + step) / (10 + step))``.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ...
        mixed_precision: ``False``, ``True``/``"bf16"`` or ``"fp16"`` (CUDA only; on CPU a
            warning is issued and full precision is used).
        seed: seeds the data generator (CPU) and the noise generator (on ``device``, ``seed + 1``).
        label_dropout: probability of replacing a class label by "no condition" (-1).
        checkpoint_path: where :meth:`save_checkpoint` writes (atomically); an existing file
            is never overwritten unless ``overwrite=True`` or it is the file being resumed.
        checkpoint_every: save every that many steps (0: only when asked / at the end of
            :meth:`train`).
        resume_from: a checkpoint to continue from exactly (model, optimizer, EMA, generators,
            data order, step, history).
        progress: show a tqdm bar (rank 0 only).
        distributed: data-parallel training over ``torch.distributed`` (:mod:`.distributed`):
            ``None`` (default) finds an initialised process group or the ``torchrun``
            environment, else trains on one process; ``True`` requires one; ``False`` trains on
            this process alone; or a :class:`~.distributed.DistributedContext`.  ``batch_size`` is
            the global batch: ``W`` processes train what one process trains at that batch (to
            float rounding), each on its rows; rank 0 writes the checkpoints, which resume on any
            number of processes.

    The model's ``valid_log_snr`` (when settable, as on ``MLPDenoiser``) is set to the loss's
    :attr:`~WeightedLoss.trained_log_snr_range` at set-up (docs/math.md I24) and saved with the weights.
    """

    _config: Dict[str, object]

    # -- set-up: the compatibility constructor ----------------------------------------------------
    def __init__(
        self,
        model: DiffusionModel,
        data: object,
        *,
        steps: int,
        loss: Optional[WeightedLoss] = None,
        weighting: str = "eps",
        time_sampling: str = "uniform",
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        grad_clip: Optional[float] = 1.0,
        lr_schedule: str = "cosine",
        warmup: int = 0,
        ema_decay: Optional[float] = 0.999,
        device: DeviceLike = "auto",
        mixed_precision: Union[bool, str] = False,
        seed: int = 0,
        label_dropout: float = 0.0,
        checkpoint_path: Optional[PathLike] = None,
        checkpoint_every: int = 0,
        resume_from: Optional[PathLike] = None,
        overwrite: bool = False,
        progress: bool = True,
        distributed: Union[None, bool, DistributedContext] = None,
    ) -> None:
        module = _check_trainable(model)
        steps, batch_size = check_int(steps, "steps", 1), check_int(batch_size, "batch_size", 1)
        warmup, checkpoint_every = check_int(warmup, "warmup", 0), check_int(checkpoint_every, "checkpoint_every", 0)
        seed = check_seed(seed, "seed")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive float, got {lr!r}")
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        if ema_decay is not None and not (isinstance(ema_decay, (int, float)) and 0.0 <= ema_decay < 1.0):
            raise ValueError(f"ema_decay must be None or a float in [0, 1), got {ema_decay!r}")
        ctx, dev = resolve_distributed(distributed, resolve_device(device))
        amp = _amp_dtype(mixed_precision, dev)
        if loss is None:
            loss = DenoisingLoss(model.schedule, weighting, time_sampling)
        module.to(dev)
        source = as_data_source(data, labelled=_num_classes(module) is not None, seed=seed, device=dev,
                                dtype=_param_dtype(module))
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no trainable parameters")
        optimizer = _adamw(params, lr, weight_decay)
        factor = WarmupCosine(steps, warmup, lr_schedule == "cosine")
        # a plain function: LambdaLR then keeps its settings out of the checkpoint (a resume may change ``steps``)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: factor(k))
        checkpointer = (Checkpointer(checkpoint_path, every=checkpoint_every, overwrite=overwrite)
                        if checkpoint_path is not None else None)
        self._assemble(
            module, source, loss, steps=steps, batch_size=batch_size, optimizer=optimizer, lr_scheduler=scheduler,
            ema=ema_decay, checkpointer=checkpointer, noise_seed=(seed + 1) % 2**63, grad_clip=grad_clip,
            label_dropout=label_dropout, amp_dtype=amp, device=dev, progress=progress, dist=ctx,
        )
        self.seed: Optional[int] = seed
        self._checkpoint_every = checkpoint_every
        config: Dict[str, object] = {
            "steps": steps, "batch_size": batch_size, "lr": float(lr), "weight_decay": float(weight_decay),
            "grad_clip": grad_clip, "lr_schedule": lr_schedule, "warmup": warmup, "ema_decay": ema_decay,
            "seed": seed, "label_dropout": self.label_dropout,
        }
        if isinstance(loss, DenoisingLoss):
            config.update({
                "weighting": loss.weighting, "time_sampling": loss.time_sampling, "t_range": (loss.lo, loss.hi),
                "proposal": (loss.proposal_loc, loss.proposal_scale), "include_constant": loss.include_constant,
            })
        self._config = {**config, **self._config}
        self._resume(resume_from)

    # -- set-up: from ready-made parts ------------------------------------------------------------
    @classmethod
    def from_parts(
        cls,
        model: DiffusionModel,
        data: DataSource,
        loss: WeightedLoss,
        *,
        steps: int,
        batch_size: int,
        optimizer: Optional[torch.optim.Optimizer] = None,
        lr_scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None,
        ema: Union[EMA, float, None] = None,
        checkpointer: Optional[Checkpointer] = None,
        noise_seed: int = 1,
        grad_clip: Optional[float] = None,
        label_dropout: float = 0.0,
        mixed_precision: Union[bool, str] = False,
        device: DeviceLike = "auto",
        progress: bool = False,
        resume_from: Optional[PathLike] = None,
        distributed: Union[None, bool, DistributedContext] = None,
    ) -> Trainer:
        """A trainer over ready-made parts.

        Args:
            model: a :class:`DiffusionModel` that is a ``torch.nn.Module``; moved to ``device``.
            data: a :class:`~.data.DataSource` (moved to ``device`` and the model's dtype).
            loss: a :class:`WeightedLoss` (e.g. ``WeightedLoss(EpsLoss(), ELBOWeight(),
                LogisticLogSNR(schedule))``) for ``model.schedule``.
            steps, batch_size: the length of the run and the batch size.
            optimizer: over the model's parameters; default ``AdamW(lr=1e-3, weight_decay=0)`` (the
                keyword constructor's defaults).
            lr_scheduler: stepped once per step; default none.
            ema: an :class:`~.ema.EMA` of ``model`` or its decay (``None``: no EMA).
            checkpointer: a :class:`~.checkpoint.Checkpointer` (``None``: save only when asked).
            noise_seed: seeds the generator of times, noise and label dropout (on ``device``).
            grad_clip, label_dropout, mixed_precision, progress: as in :class:`Trainer`.
            resume_from: a checkpoint written by a trainer over the same parts.
            distributed: as in :class:`Trainer`.
        """
        self = cls.__new__(cls)
        module = _check_trainable(model)
        ctx, dev = resolve_distributed(distributed, resolve_device(device))
        module.to(dev)
        if not isinstance(data, DataSource):
            raise TypeError(f"data must be a densityformula.training DataSource, got {type(data).__name__}")
        data.to(dev, _param_dtype(module))
        if optimizer is None:
            optimizer = _adamw([p for p in module.parameters() if p.requires_grad], 1e-3, 0.0)
        self._assemble(
            module, data, loss, steps=check_int(steps, "steps", 1), batch_size=check_int(batch_size, "batch_size", 1),
            optimizer=optimizer, lr_scheduler=lr_scheduler, ema=ema, checkpointer=checkpointer,
            noise_seed=check_seed(noise_seed, "noise_seed"), grad_clip=grad_clip, label_dropout=label_dropout,
            amp_dtype=_amp_dtype(mixed_precision, dev), device=dev, progress=progress, dist=ctx,
        )
        self.seed = None
        self._checkpoint_every = checkpointer.every if checkpointer is not None else 0
        self._config = {
            "steps": steps, "batch_size": batch_size, "optimizer": type(optimizer).__name__,
            "optimizer_defaults": {k: v for k, v in optimizer.defaults.items() if _plain(v)},
            "lr_scheduler": type(lr_scheduler).__name__ if lr_scheduler is not None else None,
            "ema": self.averager.config() if self.averager is not None else None, "grad_clip": grad_clip,
            "label_dropout": self.label_dropout, "noise_seed": noise_seed, "data": data.config(), **self._config,
        }
        self._resume(resume_from)
        return self

    def _assemble(
        self,
        model: nn.Module,
        data: DataSource,
        loss: WeightedLoss,
        *,
        steps: int,
        batch_size: int,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Optional[torch.optim.lr_scheduler.LRScheduler],
        ema: Union[EMA, float, None],
        checkpointer: Optional[Checkpointer],
        noise_seed: int,
        grad_clip: Optional[float],
        label_dropout: float,
        amp_dtype: Optional[torch.dtype],
        device: torch.device,
        progress: bool,
        dist: DistributedContext,
    ) -> None:
        """The set-up shared by both constructors (the model and data are already on ``device``)."""
        if not isinstance(loss, WeightedLoss):
            raise TypeError(f"loss must be a DenoisingLoss (or a WeightedLoss), got {type(loss).__name__}")
        denoiser = check_model(model)
        if not same_schedule(loss.schedule, denoiser.schedule):
            raise ValueError(f"loss.schedule {loss.schedule!r} is not model.schedule {denoiser.schedule!r}")
        if grad_clip is not None and (isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float))
                                      or not grad_clip > 0):
            raise ValueError(f"grad_clip must be None or a positive float, got {grad_clip!r}")
        if isinstance(label_dropout, bool) or not isinstance(label_dropout, (int, float)) \
                or not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must be a float in [0, 1), got {label_dropout!r}")
        d = model_dimension(denoiser)
        if d is not None and isinstance(data, TensorData) and data.point_shape != (d,):
            got = (data.max_batch_size,) + data.point_shape
            raise ValueError(f"data must have shape (N, {d}) for this model (its d = {d}), got {got}")
        cap = data.max_batch_size
        if cap is not None and cap < batch_size:
            raise ValueError(f"data has {cap} rows, fewer than batch_size={batch_size}")
        if label_dropout > 0 and (not data.labelled or _num_classes(model) is None):
            raise ValueError("label_dropout needs class labels in data and a model with num_classes")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if batch_size < dist.world_size:
            raise ValueError(f"batch_size={batch_size} is smaller than the number of processes ({dist.world_size}): "
                             "every rank needs at least one row of the global batch")
        self.dist = dist
        # every replica starts from rank 0's weights (before the EMA copy, so it starts from them too)
        dist.broadcast_module(model)
        self.model = model
        self._denoiser = denoiser
        self.data = data
        self.loss = loss
        self.device = device
        self.amp_dtype = amp_dtype
        self.steps = steps
        self.batch_size = batch_size
        self.grad_clip = float(grad_clip) if grad_clip is not None else None
        self.label_dropout = float(label_dropout)
        self.progress = progress and dist.is_main
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        self.checkpointer = checkpointer
        # the trained log-SNR range, on the model before the EMA copy (so both carry it)
        self.valid_log_snr = loss.trained_log_snr_range
        record_valid_log_snr(model, self.valid_log_snr)
        if isinstance(ema, EMA):
            ema.module.to(device)
            record_valid_log_snr(ema.module, self.valid_log_snr)
            self.averager: Optional[EMA] = ema
        else:
            self.averager = EMA(model, ema) if ema is not None else None
        # listed once: the per-step path (clipping, EMA, all-reduce) does not walk the module tree
        self._params: List[Tensor] = list(model.parameters())
        if self.averager is not None:
            dist.broadcast_module(self.averager.module)
            mine = list(self.averager.module.parameters())
            if len(mine) != len(self._params) or any(a.shape != b.shape for a, b in zip(mine, self._params)):
                raise ValueError("ema does not average this model's parameters (number or shapes differ)")
        # the checks the loss makes of every batch (finite x_0, its shape, the model's outputs) are made
        # on the first step; later steps compute the same numbers without them, when the loss is a
        # plain WeightedLoss and the batches come from a source that checks its data itself
        self._inner = denoiser.inner if isinstance(denoiser, CheckedModel) else denoiser
        self._fast_loss = (type(loss).__call__ is WeightedLoss.__call__
                           and type(data) in (TensorData, SampledData))
        self._checked_batches = 0
        self.noise_generator = torch.Generator(device=device)
        self.noise_generator.manual_seed(noise_seed)
        self.step = 0
        self.history: History = []
        self._config = {
            "model": type(model).__name__, "model_config": _model_config(model), "loss": loss.config(),
            "valid_log_snr": self.valid_log_snr, "schedule": repr(loss.schedule),
        }

    # -- resume -----------------------------------------------------------------------------------
    def _resume(self, resume_from: Optional[PathLike]) -> None:
        if self.checkpointer is not None:
            self.checkpointer.check_fresh_start(resume_from)
        if resume_from is not None:
            self.load_checkpoint(resume_from)

    # -- accessors --------------------------------------------------------------------------------
    @property
    def ema(self) -> Optional[nn.Module]:
        """The EMA model (``None`` without EMA)."""
        return self.averager.module if self.averager is not None else None

    @property
    def eval_model(self) -> nn.Module:
        """The EMA model when EMA is on, else the trained model."""
        return self.averager.module if self.averager is not None else self.model

    @property
    def model_dtype(self) -> torch.dtype:
        """Dtype of the model's parameters (batches are cast to it)."""
        return _param_dtype(self.model)

    @property
    def data_generator(self) -> torch.Generator:
        """The data source's generator (CPU)."""
        return self.data.generator

    @property
    def ema_decay(self) -> Optional[float]:
        """The EMA's decay (``None`` without EMA); settable while EMA is on."""
        return self.averager.decay if self.averager is not None else None

    @ema_decay.setter
    def ema_decay(self, decay: float) -> None:
        if self.averager is None:
            raise ValueError("this trainer has no EMA (it was built with ema_decay=None)")
        if isinstance(decay, bool) or not (isinstance(decay, (int, float)) and 0.0 <= decay < 1.0):
            raise ValueError(f"ema_decay must be a float in [0, 1), got {decay!r}")
        self.averager.decay = float(decay)

    @property
    def checkpoint_path(self) -> Optional[Path]:
        """Where :meth:`save_checkpoint` writes by default (``None``: nowhere); settable."""
        return self.checkpointer.path if self.checkpointer is not None else None

    @checkpoint_path.setter
    def checkpoint_path(self, path: Optional[PathLike]) -> None:
        if path is None:
            self.checkpointer = None
        elif self.checkpointer is None:
            self.checkpointer = Checkpointer(path, every=self._checkpoint_every)
        else:
            self.checkpointer.path = Path(path)

    @property
    def checkpoint_every(self) -> int:
        """Save every that many steps (``0``: only when asked and at the end); settable."""
        return self.checkpointer.every if self.checkpointer is not None else self._checkpoint_every

    @checkpoint_every.setter
    def checkpoint_every(self, every: int) -> None:
        self._checkpoint_every = check_int(every, "checkpoint_every", 0)
        if self.checkpointer is not None:
            self.checkpointer.every = every

    # -- loop -------------------------------------------------------------------------------------
    def train_step(self) -> float:
        """One optimisation step; returns the batch's mean loss.

        On ``W`` processes (:mod:`.distributed`) each rank computes the loss of its rows of the
        global batch (times, noise and label drops drawn for the global batch, so the union is the
        single-process batch), the gradients of ``(1 / B) sum_i l_i`` are summed over ranks in one
        all-reduce, and every rank takes the same step: the single-process step to float rounding.
        """
        if not self.model.training:
            self.model.train()
        value = self._distributed_loss_backward() if self.dist.active else self._loss_backward()
        # optimisation
        if self.scaler.is_enabled():
            if self.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self._params, self.grad_clip, foreach=True)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if self.grad_clip is not None:
                nn.utils.clip_grad_norm_(self._params, self.grad_clip, foreach=True)
            self.optimizer.step()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.step += 1
        # EMA, record
        if self.averager is not None:
            self.averager.update_tensors(self._params, self.step)
        self.history.append((self.step, value))
        return value

    def _batch(self) -> Tuple[Tensor, Optional[Tensor]]:
        # label dropout draws from the noise generator before the loss does
        x0, y = self.data.next_batch(self.batch_size)
        if y is not None and self.label_dropout > 0:
            drop = torch.rand(y.shape[0], generator=self.noise_generator, device=self.device) < self.label_dropout
            y = torch.where(drop, torch.full_like(y, -1), y)
        return x0, y

    def _forward(self, x0: Tensor, y: Optional[Tensor], t: Optional[Tensor] = None,
                 noise: Optional[Tensor] = None) -> Tensor:
        """Per-sample losses (float32 under autocast)."""
        if self.amp_dtype is not None:
            with torch.autocast(device_type="cuda", dtype=self.amp_dtype):
                return self._per_sample(x0, y, t, noise).float()
        return self._per_sample(x0, y, t, noise)

    def _per_sample(self, x0: Tensor, y: Optional[Tensor], t: Optional[Tensor], noise: Optional[Tensor]) -> Tensor:
        if not self._fast_loss or self._checked_batches == 0:
            out = self.loss(self._denoiser, x0, generator=self.noise_generator, t=t, noise=noise, y=y)
            self._checked_batches += 1
            return out
        # WeightedLoss.__call__ without its per-batch checks (made on the first batch; the data
        # source checks every batch's values): the same draws in the same order, the same arithmetic
        # rho(t) / p(t) err(x_0, t, eps) (+ offset) (docs/math.md I22, I23)
        loss, g = self.loss, self.noise_generator
        if t is None:
            t = loss.sample_t(x0.shape[0], generator=g, device=x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype, device=x0.device)
        # loss.factor(t) without its range check: t was drawn from the sampler (I23)
        sampler = loss.time_sampler
        fac = (loss.weight.rho(t, sampler) / sampler.density(t)).to(x0.dtype)
        err = loss.objective(self._inner, NoisyBatch.make(loss.schedule, x0, t, noise.to(x0.dtype), y))
        offset = loss.objective.offset(x0)
        return fac * err if offset is None else offset + fac * err

    def _loss_backward(self) -> float:
        x0, y = self._batch()
        loss = self._forward(x0, y).mean()
        value = float(loss.detach())  # one synchronisation per step: the value is the check
        if not math.isfinite(value):
            raise FloatingPointError(f"non-finite loss {value} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(self.scaler.scale(loss))
        return value

    def _distributed_loss_backward(self) -> float:
        B, g = self.batch_size, self.noise_generator
        lo, hi = self.dist.shard(B)
        x0, y = self.data.next_shard(B, self.dist.rank, self.dist.world_size)
        # the global batch's draws, in the order one process makes them (label drops, times, noise)
        if y is not None and self.label_dropout > 0:
            drop = torch.rand(B, generator=g, device=self.device)[lo:hi] < self.label_dropout
            y = torch.where(drop, torch.full_like(y, -1), y)
        t = self.loss.sample_t(B, generator=g, device=self.device)[lo:hi]
        noise = torch.randn((B,) + tuple(x0.shape[1:]), generator=g, dtype=x0.dtype, device=self.device)[lo:hi]
        total = self._forward(x0, y, t, noise).sum()
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(self.scaler.scale(total / B))
        trained = [p for p in self._params if p.requires_grad]
        had = [p.grad is not None for p in trained]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in trained]
        # the loss sum and, per parameter, how many ranks gave it a gradient: in the same all-reduce
        dtype = grads[0].dtype if grads else total.dtype
        extra = torch.tensor([0.0] + [float(h) for h in had], dtype=dtype, device=total.device)
        extra[0] = total.detach()
        self.dist.all_reduce_sum_([*grads, extra])
        host = extra.tolist()  # one synchronisation
        for p, grad, count in zip(trained, grads, host[1:]):
            # a parameter no rank used keeps no gradient, as on one process (the optimizer skips it)
            p.grad = grad if count > 0 else None
        value = float(host[0]) / B
        if not math.isfinite(value):
            raise FloatingPointError(f"non-finite loss {value} at step {self.step}")
        return value

    def train(self, until: Optional[int] = None) -> History:
        """Train up to step ``until`` (default: ``steps``); returns the history ``[(step, loss)]``.

        Saves a checkpoint every ``checkpoint_every`` steps and at the end when
        ``checkpoint_path`` is set.
        """
        end = self.steps if until is None else until
        if not isinstance(end, int) or isinstance(end, bool) or not 0 <= end <= self.steps:
            raise ValueError(f"until must be an int in [0, {self.steps}], got {until!r}")
        # tqdm.auto picks the notebook widget, which warns in a kernel without ipywidgets even when
        # disabled: take it only when a bar is shown
        if self.progress:
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm

        bar = tqdm(total=end, initial=self.step, disable=not self.progress, desc="train", leave=False)
        try:
            while self.step < end:
                value = self.train_step()
                bar.update(1)
                if self.step % 50 == 0:
                    bar.set_postfix(loss=f"{value:.4g}")
                if self.checkpointer is not None and self.checkpointer.due(self.step):
                    self.save_checkpoint()
        finally:
            bar.close()
        # checkpoint at the end
        if self.checkpointer is not None:
            self.save_checkpoint()
        self.model.eval()
        return self.history

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything an exact resume needs (the keys are listed in :mod:`.checkpoint`)."""
        return {
            "format": FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.averager.state_dict() if self.averager is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "noise_generator": self.noise_generator.get_state(),
            "data": self.data.state_dict(),
            "history": list(self.history),
            "config": self._config,
            "valid_log_snr": self.valid_log_snr,
            "torch_version": str(torch.__version__),
        }

    def load_state_dict(self, state: Dict[str, Any], *, source: str = "the state") -> None:
        """Restore :meth:`state_dict` (``ValueError`` if it was written with another configuration)."""
        saved = state["config"]
        # keys a checkpoint of an older format lacks are not compared
        diff = {k: (saved.get(k), v) for k, v in self._config.items() if k != "steps" and k in saved and saved[k] != v}
        if diff:
            raise ValueError(f"checkpoint {source} was written with a different configuration: {diff}")
        self.model.load_state_dict(state["model"])
        if self.averager is not None:
            if state["ema"] is None:
                raise ValueError(f"checkpoint {source} has no EMA weights")
            self.averager.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and state["lr_scheduler"] is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.noise_generator.set_state(state["noise_generator"])
        if "data" in state:
            self.data.load_state_dict(state["data"])
        else:  # format /1
            legacy: Dict[str, object] = {"generator": state["data_generator"]}
            if isinstance(self.data, TensorData):
                legacy.update(perm=state["data_perm"], pos=int(state["data_pos"]))
            self.data.load_state_dict(legacy)
        self.history = [(int(s), float(v)) for s, v in state["history"]]
        self.step = int(state["step"])
        # the trained range: a /1 checkpoint's model state lacks it
        lo, hi = state.get("valid_log_snr", self.valid_log_snr)
        self.valid_log_snr = (float(lo), float(hi))
        for module in (self.model, self.ema):
            if module is not None:
                record_valid_log_snr(module, self.valid_log_snr)

    def save_checkpoint(self, path: Optional[PathLike] = None, *, overwrite: bool = False) -> Path:
        """Write :meth:`state_dict` atomically (temporary file + ``os.replace``).

        ``path=None`` writes this trainer's ``checkpoint_path``; another existing file is only
        replaced with ``overwrite=True``.  On several processes rank 0 writes (every rank holds
        the same state) and every rank returns once the file is in place.
        """
        if path is None:
            if self.checkpointer is None:
                raise ValueError("path must be given when the trainer has no checkpoint_path")
            where = self.checkpointer.path
        else:
            where = Path(path)
        if not self.dist.is_main:
            self.dist.barrier()
            return where
        try:
            if self.checkpointer is not None:
                return self.checkpointer.save(self.state_dict(), path, overwrite=overwrite)
            target = os.fspath(where)
            if os.path.exists(target) and not overwrite:
                raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
            return atomic_save(self.state_dict(), target)
        finally:
            self.dist.barrier()

    def load_checkpoint(self, path: PathLike) -> None:
        """Restore the exact training state saved by :meth:`save_checkpoint`.

        The file's checksum is verified first (:func:`~.checkpoint.load_checkpoint`); an unreadable,
        corrupt or foreign file, or a state lacking what a resume needs, is a
        :class:`~.checkpoint.CheckpointError` naming ``path``, raised before anything is restored.  A
        complete state that does not fit these parts (other tensor shapes) is one too, raised while
        restoring: the trainer is then half restored and should not be used.
        """
        state = _read_checkpoint(path)
        needed = _LEGACY_KEYS if state["format"] == "densityformula.trainer/1" else _STATE_KEYS
        missing = [key for key in needed if key not in state]
        if missing:
            raise CheckpointError(f"checkpoint {path} of format {state['format']!r} lacks {missing}: "
                                  "not a complete trainer checkpoint")
        if not isinstance(state["config"], dict):
            raise CheckpointError(f"checkpoint {path} has a config of type {type(state['config']).__name__}, "
                                  "not a dict")
        try:
            self.load_state_dict(state, source=str(path))
        except (KeyError, TypeError, RuntimeError, IndexError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this trainer: {type(exc).__name__}: {exc}") from exc

    def __repr__(self) -> str:
        return (f"Trainer({type(self.model).__name__}, {self.loss!r}, step {self.step}/{self.steps}, "
                f"batch_size={self.batch_size}, ema={self.averager!r}, checkpointer={self.checkpointer!r})")


def _adamw(params: List[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with torch's multi-tensor (``foreach``) update: the per-tensor update's arithmetic, one
    kernel launch per operation for all tensors (torch picks it on CUDA, not on CPU)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)


def _param_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype
