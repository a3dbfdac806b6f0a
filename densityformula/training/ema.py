"""Exponential moving average of a network's weights.

After optimisation step ``k`` (``k = 1, 2, ...``) every parameter is updated as

    theta_ema <- decay_k theta_ema + (1 - decay_k) theta,    decay_k = min(decay, (1 + k) / (10 + k)),

the warm-up of ``decay_k`` keeping the average from remembering the initial weights for
``~1 / (1 - decay)`` steps.  Buffers are copied once, at construction.
"""
from __future__ import annotations

import copy
from typing import Any, Dict

import torch
from torch import nn

__all__ = ["EMA"]


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
        if isinstance(decay, bool) or not (isinstance(decay, (int, float)) and 0.0 <= decay < 1.0):
            raise ValueError(f"ema_decay must be None or a float in [0, 1), got {decay!r}")
        self.decay = float(decay)
        memo: Dict[int, object] = {}
        schedule = getattr(model, "schedule", None)
        if schedule is not None:
            memo[id(schedule)] = schedule
        self.module: nn.Module = copy.deepcopy(model, memo=memo)
        for p in self.module.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """``decay_k = min(decay, (1 + k) / (10 + k))`` after step ``k``."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    def update(self, model: nn.Module, step: int) -> None:
        """``theta_ema <- decay_k theta_ema + (1 - decay_k) theta`` after step ``step`` (``torch.lerp``)."""
        decay = self.decay_at(step)
        with torch.no_grad():
            for pe, p in zip(self.module.parameters(), model.parameters()):
                pe.lerp_(p, 1.0 - decay)

    def state_dict(self) -> Dict[str, Any]:
        """The averaged module's state dict (loadable into a model built like the trained one)."""
        return self.module.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.module.load_state_dict(state)

    def config(self) -> Dict[str, object]:
        """``{"decay": decay}``."""
        return {"decay": self.decay}

    def __repr__(self) -> str:
        return f"EMA(decay={self.decay})"
