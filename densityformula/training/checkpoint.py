"""Trainer checkpoints: atomic writes, what they hold, and the rules for resuming.

A checkpoint is one ``torch.save`` file (loadable with ``weights_only=True``) holding the
trainer's :meth:`~densityformula.training.Trainer.state_dict`:

==================  ===========================================================================
key                 content
==================  ===========================================================================
``format``          ``"densityformula.trainer/2"`` (``/1`` files, written before the parts had
                    their own state, load too)
``step``            optimisation steps done
``model``           the model's state dict (an ``MLPDenoiser``'s holds its ``valid_log_snr``)
``ema``             the EMA model's state dict, or ``None``
``optimizer``,      torch's state dicts
``lr_scheduler``,
``scaler``
``noise_generator`` state of the generator of times, noise and label dropout
``data``            the data source's state (generator, permutation, position)
``history``         ``[(step, loss)]``
``config``          the settings; a resume with other settings is refused
``valid_log_snr``   the log-SNR interval trained on (docs/math.md I24)
``torch_version``   for the record
==================  ===========================================================================

Writes go to a temporary file in the same folder, are fsynced and then ``os.replace``-d onto
the target, so a run killed mid-write leaves the previous checkpoint intact.  An existing file is
never replaced by a fresh run unless asked (``overwrite=True``) or resumed from.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

__all__ = ["FORMAT", "READABLE_FORMATS", "Checkpointer", "atomic_save", "load_checkpoint"]

PathLike = Union[str, "os.PathLike[str]"]

FORMAT = "densityformula.trainer/2"
#: formats :func:`load_checkpoint` accepts
READABLE_FORMATS = ("densityformula.trainer/1", FORMAT)


def atomic_save(obj: object, path: PathLike) -> Path:
    """``torch.save(obj)`` to a temporary file next to ``path``, fsync, then ``os.replace`` onto ``path``."""
    path = Path(path)
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
    return path


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """The state saved in ``path`` (``weights_only=True``, CPU); ``FileNotFoundError`` or ``ValueError``
    if it is missing or not a trainer checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{path} is not a densityformula trainer checkpoint")
    return state


class Checkpointer:
    """Where and how often a trainer saves.

    Args:
        path: the checkpoint file.
        every: save every that many steps (``0``: only when asked and at the end of training).
        overwrite: a fresh run may replace an existing ``path``.
    """

    def __init__(self, path: PathLike, *, every: int = 0, overwrite: bool = False) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"checkpoint_path must be a str or os.PathLike, got {type(path).__name__}")
        if not isinstance(every, int) or isinstance(every, bool) or every < 0:
            raise ValueError(f"checkpoint_every must be an int >= 0, got {every!r}")
        self.path = Path(path)
        self.every = every
        self.overwrite = bool(overwrite)

    def check_fresh_start(self, resume_from: Optional[PathLike]) -> None:
        """``FileExistsError`` if :attr:`path` exists, is not the file being resumed and ``overwrite`` is off."""
        if self.path.exists() and not self.overwrite:
            if resume_from is None or Path(resume_from).resolve() != self.path.resolve():
                raise FileExistsError(
                    f"checkpoint_path {self.path} exists; pass resume_from=it to continue, "
                    "or overwrite=True to replace it"
                )

    def due(self, step: int) -> bool:
        """Whether to save after ``step`` (every :attr:`every` steps)."""
        return bool(self.every) and step % self.every == 0

    def save(self, state: Dict[str, Any], path: Optional[PathLike] = None, *, overwrite: bool = False) -> Path:
        """Write ``state`` atomically to :attr:`path`, or to ``path`` (an existing other file only with
        ``overwrite=True``)."""
        target = self.path if path is None else Path(path)
        if target != self.path and target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
        return atomic_save(state, target)

    def __repr__(self) -> str:
        return f"Checkpointer({str(self.path)!r}, every={self.every}, overwrite={self.overwrite})"
