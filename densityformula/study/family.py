"""A parametric denoiser family: the parameters the study optimises (docs/math.md section 12).

A :class:`Family` is any ``torch.nn.Module`` that is a :class:`~densityformula.models.DiffusionModel`
on a :class:`~densityformula.schedules.Discrete` schedule; its parameters ``theta`` (all
trainable parameters unless a list is given) are the study's parameters, read and written as one
flat float64 vector (:meth:`Family.vector`, :meth:`Family.set_vector`, :meth:`Family.gradient`), so
that any optimiser can work on ``theta -> objective(model_theta)``.  A family may know the
minimiser of an objective in closed form (:meth:`Family.closed_form`; the affine family does, I30).
"""
from __future__ import annotations

import copy
from typing import Any, Iterable, List, Optional

import numpy as np
import torch
from torch import nn

from ..models import DiffusionModel
from ..schedules import Discrete

Tensor = torch.Tensor

__all__ = ["Family"]


class Family:
    """A parametric family ``{D_theta}`` of denoisers on a discrete schedule.

    Args:
        model: a :class:`DiffusionModel` that is also an ``nn.Module``, whose ``schedule`` is a
            :class:`Discrete` schedule (the DDPM grid of the study; its denoiser ``D_theta(x, k)``
            is called at the integer steps ``k = 1..T``).
        parameters: the parameters ``theta`` (default: every parameter with ``requires_grad``).
        name: a label for tables and figures.
    """

    def __init__(self, model: DiffusionModel, *, parameters: Optional[Iterable[nn.Parameter]] = None,
                 name: str = "") -> None:
        if not isinstance(model, DiffusionModel) or not isinstance(model, nn.Module):
            raise TypeError(f"model must be a DiffusionModel that is an nn.Module, got {type(model).__name__}")
        if not isinstance(model.schedule, Discrete):
            raise TypeError(
                f"model.schedule must be a densityformula Discrete schedule, got {type(model.schedule).__name__}"
            )
        params = [p for p in model.parameters() if p.requires_grad] if parameters is None else list(parameters)
        if not params:
            raise ValueError("the family has no parameters (none given and none of the model's requires grad)")
        for p in params:
            if not isinstance(p, nn.Parameter):
                raise TypeError(f"parameters must be nn.Parameter objects, got {type(p).__name__}")
        self.model: DiffusionModel = model
        self.parameters: List[nn.Parameter] = params
        self.name = str(name) if name else type(model).__name__

    @property
    def module(self) -> nn.Module:
        """The model as an ``nn.Module``."""
        assert isinstance(self.model, nn.Module)
        return self.model

    @property
    def schedule(self) -> Discrete:
        """The model's discrete schedule."""
        sched = self.model.schedule
        assert isinstance(sched, Discrete)
        return sched

    @property
    def n_params(self) -> int:
        """``dim theta``."""
        return int(sum(p.numel() for p in self.parameters))

    def vector(self) -> Tensor:
        """``theta`` as one flat float64 CPU tensor (a copy, detached)."""
        return torch.cat([p.detach().reshape(-1).to("cpu", torch.float64) for p in self.parameters])

    def set_vector(self, theta: Any) -> None:
        """Write ``theta`` (a tensor or array of ``n_params`` numbers) into the parameters, in place."""
        t = torch.as_tensor(np.asarray(theta.detach().cpu() if isinstance(theta, Tensor) else theta,
                                       dtype=np.float64))
        if t.ndim != 1 or t.numel() != self.n_params:
            raise ValueError(f"theta must be a vector of {self.n_params} numbers, got shape {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError("theta contains NaN or inf")
        i = 0
        with torch.no_grad():
            for p in self.parameters:
                n = p.numel()
                p.copy_(t[i : i + n].reshape(p.shape).to(p.device, p.dtype))
                i += n

    def gradient(self) -> Tensor:
        """The parameters' ``.grad`` as one flat float64 CPU tensor (zeros where a grad is ``None``)."""
        return torch.cat([
            (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).to("cpu", torch.float64)
            for p in self.parameters
        ])

    def zero_grad(self) -> None:
        """Clear the parameters' gradients."""
        for p in self.parameters:
            p.grad = None

    def closed_form(self, objective: object) -> Optional[Tensor]:
        """The minimiser of ``objective`` over this family as a ``theta`` vector, where known in closed
        form; ``None`` otherwise (then :func:`densityformula.study.minimize` runs an optimiser)."""
        return None

    def copy(self) -> Family:
        """An independent copy (the model deep-copied; the same parameter selection)."""
        new = copy.copy(self)
        new.model = copy.deepcopy(self.model)
        names = {id(p): n for n, p in self.module.named_parameters()}
        mine = dict(new.module.named_parameters())
        new.parameters = [mine[names[id(p)]] for p in self.parameters]
        return new

    def __repr__(self) -> str:
        return f"Family({self.name}, n_params={self.n_params}, T={self.schedule.T})"
