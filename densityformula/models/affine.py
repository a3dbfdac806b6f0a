"""Affine denoisers on a discrete schedule: :class:`AffineDenoiser` (docs/math.md I14).

``D_k(x_t) = A_k x_t + b_k``, one affine map per step ``k`` of a
:class:`~densityformula.schedules.Discrete` schedule, for the exact linear-Gaussian studies
(I14); :meth:`AffineDenoiser.from_gaussian` gives the exact posterior mean of a Gaussian target
(I3 with ``K = 1``).  Reads the schedule only through its public arrays
(``log_alpha_bars``, ``one_minus_alpha_bars``, ``check_time``).
"""
from __future__ import annotations

from typing import Union

import numpy.typing as npt
import torch
from torch import nn
from torch.types import Device

from .._validation import (
    TimeLike,
    as_time,
    check_float_dtype,
    check_full_precision,
    check_int,
    check_points,
    per_point_time,
    resolve_device,
)
from ..schedules import Discrete
from ._base import DiffusionModel

Tensor = torch.Tensor
#: a mean vector or covariance matrix: a tensor or anything numpy reads as an array
ArrayLike = Union[Tensor, npt.ArrayLike]

__all__ = ["AffineDenoiser"]


class AffineDenoiser(DiffusionModel, nn.Module):
    """``D_k(x_t) = A_k x_t + b_k``: one affine map per step ``k = 0..T`` of a Discrete schedule (I14).

    Time must be an integer step (``t`` float or tensor with integral values, per point
    allowed).  ``A`` has shape ``(T+1, d, d)`` and ``b`` ``(T+1, d)``; float64 by default, for the
    exact linear-Gaussian studies.  ``init`` is ``"identity"`` (``A_k = I / alpha_k``, ``b_k = 0``:
    ``eps_hat = 0`` at every step) or ``"zero"`` (``D = 0``).
    """

    schedule: Discrete

    def __init__(
        self,
        d: int,
        schedule: Discrete,
        *,
        init: str = "identity",
        dtype: torch.dtype = torch.float64,
        device: Device = None,
    ) -> None:
        nn.Module.__init__(self)
        check_int(d, "d", 1)
        if not isinstance(schedule, Discrete):
            raise TypeError(f"schedule must be a densityformula Discrete schedule, got {type(schedule).__name__}")
        check_float_dtype(dtype)
        self.schedule = schedule
        self.d = d
        T = schedule.T
        dev = resolve_device(device)
        if init == "identity":
            inv_a = torch.exp(-0.5 * schedule.log_alpha_bars)  # 1 / alpha_k, k = 0..T
            A = inv_a[:, None, None] * torch.eye(d, dtype=torch.float64)[None]
        elif init == "zero":
            A = torch.zeros(T + 1, d, d, dtype=torch.float64)
        else:
            raise ValueError(f"init must be 'identity' or 'zero', got {init!r}")
        self.A = nn.Parameter(A.to(dtype=dtype, device=dev))
        self.b = nn.Parameter(torch.zeros(T + 1, d, dtype=dtype, device=dev))

    @classmethod
    def from_gaussian(
        cls,
        mean: ArrayLike,
        cov: ArrayLike,
        schedule: Discrete,
        *,
        dtype: torch.dtype = torch.float64,
        device: Device = None,
    ) -> AffineDenoiser:
        """The exact posterior mean of ``N(mean, cov)`` at every step (I3 with ``K = 1``):
        ``A_k = alpha_k S C_k^{-1}``, ``b_k = mu - alpha_k A_k mu``, ``C_k = alpha_k^2 S + sigma_k^2 I``."""
        mu = torch.as_tensor(mean, dtype=torch.float64)
        S = torch.as_tensor(cov, dtype=torch.float64)
        if mu.ndim != 1:
            raise ValueError(f"mean must have shape (d,), got {tuple(mu.shape)}")
        d = mu.shape[0]
        if S.shape != (d, d):
            raise ValueError(f"cov must have shape ({d}, {d}), got {tuple(S.shape)}")
        model = cls(d, schedule, init="zero", dtype=dtype, device=device)
        a = torch.sqrt(schedule.alpha_bars)  # alpha_k
        s2 = schedule.one_minus_alpha_bars  # sigma_k^2 = 1 - alpha_bar_k
        C = a[:, None, None] ** 2 * S[None] + s2[:, None, None] * torch.eye(d, dtype=torch.float64)[None]
        # A_k = alpha_k S C_k^{-1}: solve C_k A_k^T = alpha_k S (C_k, S symmetric)
        A = torch.linalg.solve(C, a[:, None, None] * S[None].expand(C.shape)).transpose(1, 2)
        b = mu[None] - a[:, None] * (A @ mu)
        with torch.no_grad():
            model.A.copy_(A.to(model.A.dtype))
            model.b.copy_(b.to(model.b.dtype))
        return model

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of ``A`` and ``b``."""
        return self.A.dtype

    @property
    def device(self) -> torch.device:
        """Device of ``A`` and ``b``."""
        return self.A.device

    def steps(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """Integer step index per point, ``(n,)`` long; ``ValueError`` for non-integral ``t``."""
        tt = per_point_time(as_time(t, "t").to(x_t.device), x_t.shape[0])
        self.schedule.check_time(tt, "t")
        k = torch.round(tt)
        if bool((k != tt).any()):
            raise ValueError("t must be an integer step index for an AffineDenoiser")
        return k.long()

    def denoise(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """``D_k(x_t) = A_k x_t + b_k`` (I14)."""
        if not isinstance(x_t, Tensor):
            raise TypeError(f"x_t must be a floating torch.Tensor, got {type(x_t).__name__}")
        check_points(x_t, self.d, x_t.dtype, self.device, "x_t")
        check_full_precision(x_t, "x_t")
        k = self.steps(x_t, t)
        A = self.A.to(x_t.dtype)
        b = self.b.to(x_t.dtype)
        return torch.einsum("nij,nj->ni", A[k], x_t) + b[k]

    def forward(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """Same as :meth:`denoise`."""
        return self.denoise(x_t, t)

    def extra_repr(self) -> str:
        """Shown by ``repr``."""
        return f"d={self.d}, schedule={self.schedule!r}"
