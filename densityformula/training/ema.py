"""Exponential moving average of a network's weights.

After optimisation step ``k`` (``k = 1, 2, ...``) every parameter is updated as

    theta_ema <- decay_k theta_ema + (1 - decay_k) theta,    decay_k = min(decay, (1 + k) / (10 + k)),

the warm-up of ``decay_k`` keeping the average from remembering the initial weights for
``~1 / (1 - decay)`` steps.  Buffers are copied once, at construction.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .._validation import check_int

Tensor = torch.Tensor

__all__ = ["EMA"]


def _max_abs(tensors: List[Tensor]) -> List[Tensor]:
    """``max |t|`` of each tensor (NaN if it holds a NaN), one fused call where torch has one."""
    if hasattr(torch, "_foreach_max"):
        return list(torch._foreach_max(torch._foreach_abs(tensors)))
    return [t.abs().amax() for t in tensors]


class EMA:
    """The moving average ``module`` (a frozen copy of ``model``) and its update.

    Args:
        model: the trained network (an ``nn.Module``); its ``schedule`` attribute, if any, is
            shared with the copy, not duplicated.
        decay: ``decay`` in ``[0, 1)``.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        ok = isinstance(decay, (int, float, np.integer, np.floating)) and not isinstance(decay, (bool, np.bool_))
        if not ok or not 0.0 <= float(decay) < 1.0:  # NaN fails the range test too
            raise ValueError(f"ema_decay must be None or a float in [0, 1), got {decay!r}")
        self.decay = float(decay)
        memo: Dict[int, object] = {}
        schedule = getattr(model, "schedule", None)
        if schedule is not None:
            memo[id(schedule)] = schedule
        self.module: nn.Module = copy.deepcopy(model, memo=memo)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._mine: Optional[List[Tensor]] = None  # the average's parameters, listed once

    def decay_at(self, step: int) -> float:
        """``decay_k = min(decay, (1 + k) / (10 + k))`` after step ``k``."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    def update(self, model: nn.Module, step: int) -> None:
        """``theta_ema <- decay_k theta_ema + (1 - decay_k) theta`` after step ``step`` (``torch.lerp``).

        ``model`` must have the averaged network's parameters (number and shapes); a model with a
        NaN or inf parameter is a ``ValueError`` and leaves the average unchanged.
        """
        step = check_int(step, "step", 0)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        theirs = list(model.parameters())
        mine = self._params()
        if len(mine) != len(theirs) or any(a.shape != b.shape for a, b in zip(mine, theirs)):
            raise ValueError("model does not have the averaged network's parameters (number or shapes differ)")
        self.update_tensors(theirs, step)

    def _params(self) -> List[Tensor]:
        mine = self._mine
        if mine is None:
            mine = self._mine = list(self.module.parameters())
        return mine

    def update_tensors(self, params: Sequence[Tensor], step: int) -> None:
        """:meth:`update` from the trained parameters ``params``, in ``module.parameters()`` order.

        The trainer's per-step path: ``params`` are taken as checked (same number and shapes as
        the average's; the trainer lists them once).  One fused ``torch._foreach_lerp_`` over all
        tensors (bitwise what the per-tensor ``lerp_`` gives) and one finiteness check (the
        max-abs of every tensor, ``max |theta_i|``, propagates NaN and inf and cannot overflow): a
        non-finite parameter is a ``ValueError`` and leaves the average unchanged.
        """
        mine = self._params()
        decay = self.decay_at(step)
        with torch.no_grad():
            theirs = [p if p.dtype == pe.dtype and p.device == pe.device else p.to(dtype=pe.dtype, device=pe.device)
                      for pe, p in zip(mine, params)]
            if theirs:
                peaks = _max_abs(theirs)
                try:
                    finite = bool(torch.stack(peaks).isfinite().all())
                except RuntimeError:  # parameters on several devices
                    finite = bool(torch.stack([m.cpu() for m in peaks]).isfinite().all())
                if not finite:
                    raise ValueError(f"model has NaN or inf parameters at step {step}; the average is left unchanged")
            torch._foreach_lerp_(mine, theirs, 1.0 - decay)

    def state_dict(self) -> Dict[str, Any]:
        """The averaged module's state dict (loadable into a model built like the trained one)."""
        return self.module.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (``ValueError`` naming ``state`` when it does not fit the network)."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a state dict, got {type(state).__name__}")
        try:
            self.module.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"state does not fit the averaged network: {exc}") from exc

    def config(self) -> Dict[str, object]:
        """``{"decay": decay}``."""
        return {"decay": self.decay}

    def __repr__(self) -> str:
        return f"EMA(decay={self.decay})"
