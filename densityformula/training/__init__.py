"""Denoising score-matching losses and a reproducible trainer, as small parts (docs/math.md section 9).

A denoising loss estimates ``int rho(t) E[err(x_0, t, eps)] dt`` over a time range by drawing
``t ~ p`` and weighting the draw by ``rho(t) / p(t)`` (I22, I23).  Its parts, each a module:

- :mod:`.time_sampling`: the law ``p`` (:class:`UniformTime`, :class:`LogisticLogSNR`,
  :class:`UniformLogSNR`, :class:`UniformSteps`, :class:`LogisticSteps`) and its log-SNR support;
- :mod:`.weighting`: ``rho`` (:class:`TimeAverage`, :class:`ELBOWeight`);
- :mod:`.losses`: the objective ``err`` (:class:`EpsLoss`, :class:`ScoreLoss`,
  :class:`DenoiserLoss`, :class:`ELBOLoss`), their composition :class:`WeightedLoss`, and
  :class:`DenoisingLoss`, the same built from names (weightings ``"eps"``, ``"elbo"``,
  ``"sigma2"``, ``"uniform"`` x time samplings ``"uniform"``, ``"importance"``, ``"truncated"``);
- :mod:`.data`: :class:`TensorData`, :class:`SampledData` (each with its own generator);
- :mod:`.ema`: :class:`EMA`;
- :mod:`.checkpoint`: :class:`Checkpointer` (atomic writes, what a checkpoint holds);
- :mod:`.distributed`: :class:`DistributedContext`, data-parallel training over ``torch.distributed``
  (``torchrun``; the same result as one process at the same global batch);
- :mod:`.trainer`: :class:`Trainer`, the sectioned training loop over them (keyword
  constructor, or :meth:`Trainer.from_parts`); it records the trained log-SNR range on the model
  (``model.valid_log_snr``, I24).
"""
from __future__ import annotations

from .checkpoint import Checkpointer, CheckpointError, atomic_save, load_checkpoint, remove_stale_temp_files
from .data import DataSource, SampledData, TensorData, as_data_source
from .distributed import DistributedContext, resolve_distributed
from .ema import EMA
from .losses import (
    TIME_SAMPLINGS,
    WEIGHTINGS,
    DenoiserLoss,
    DenoisingLoss,
    ELBOLoss,
    EpsLoss,
    NoisyBatch,
    Objective,
    ScoreLoss,
    WeightedLoss,
    denoising_loss,
    sigmoid_log_snr,
)
from .score_matching import (
    PROBE_KINDS,
    DenoisingScoreMatching,
    ExplicitScoreMatching,
    ImplicitScoreMatching,
    SlicedScoreMatching,
    draw_probes,
    score_and_divergence,
    score_and_hutchinson,
)
from .time_sampling import (
    LogisticLogSNR,
    LogisticSteps,
    StepSampler,
    TimeSampler,
    UniformLogSNR,
    UniformSteps,
    UniformTime,
    log_snr_speed,
    time_sampler,
    truncated_range,
)
from .trainer import Trainer, WarmupCosine, record_valid_log_snr
from .weighting import ELBOWeight, TimeAverage, Weighting, ddpm_elbo_weights

__all__ = [
    # names of the single-module era
    "WEIGHTINGS",
    "TIME_SAMPLINGS",
    "DenoisingLoss",
    "denoising_loss",
    "Trainer",
    # time sampling
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
    # weighting
    "Weighting",
    "TimeAverage",
    "ELBOWeight",
    "ddpm_elbo_weights",
    # losses
    "NoisyBatch",
    "Objective",
    "EpsLoss",
    "ScoreLoss",
    "DenoiserLoss",
    "ELBOLoss",
    "WeightedLoss",
    "sigmoid_log_snr",
    # score matching on q_t (docs/math.md I43)
    "PROBE_KINDS",
    "DenoisingScoreMatching",
    "ExplicitScoreMatching",
    "ImplicitScoreMatching",
    "SlicedScoreMatching",
    "draw_probes",
    "score_and_divergence",
    "score_and_hutchinson",
    # data, EMA, checkpoints, trainer
    "DataSource",
    "TensorData",
    "SampledData",
    "as_data_source",
    "EMA",
    "DistributedContext",
    "resolve_distributed",
    "Checkpointer",
    "CheckpointError",
    "remove_stale_temp_files",
    "atomic_save",
    "load_checkpoint",
    "WarmupCosine",
    "record_valid_log_snr",
]
