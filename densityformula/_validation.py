"""Input checking shared by the public modules (private).

Every public function funnels its arguments through these helpers so that bad
input fails early with a ``ValueError`` / ``TypeError`` that names the argument.
"""
from __future__ import annotations

from numbers import Real
from typing import Any, Optional, Union

import numpy as np
import torch

Tensor = torch.Tensor
TimeLike = Union[float, int, Tensor]


def check_float_dtype(dtype: Any, name: str = "dtype") -> torch.dtype:
    """Return ``dtype`` if it is a torch floating dtype, else raise ``TypeError``."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating torch.dtype, got {dtype!r}")
    return dtype


def resolve_device(device: Any) -> torch.device:
    """``"auto"`` picks CUDA when present; ``None`` means CPU."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"device must be 'auto', None or a torch device, got {device!r}") from exc


def as_float_tensor(
    value: Any,
    name: str,
    *,
    dtype: torch.dtype = torch.float64,
    device: Any = None,
    allow_nonfinite: bool = False,
) -> Tensor:
    """Convert array-like ``value`` to a floating tensor and reject NaN / inf."""
    if isinstance(value, Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must be real-valued, got dtype {value.dtype}")
        out = value.to(dtype=dtype, device=device if device is not None else value.device)
    else:
        if isinstance(value, (str, bytes)) or value is None:
            raise TypeError(f"{name} must be array-like of numbers, got {type(value).__name__}")
        try:
            kind = np.asarray(value).dtype.kind  # torch would silently drop imaginary parts
            if kind not in "fiu":
                raise TypeError(f"{name} must hold real numbers, got numpy dtype kind {kind!r}")
            out = torch.as_tensor(value, dtype=dtype, device=device)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise TypeError(f"{name} must be array-like of numbers, got {type(value).__name__}") from exc
    if not allow_nonfinite and out.numel() and not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return out


def check_points(x: Any, d: int, dtype: torch.dtype, device: torch.device, name: str = "x") -> Tensor:
    """Check that ``x`` is a finite ``(n, d)`` tensor of ``dtype`` on ``device``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, {d}), got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    if x.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {x.dtype} but this object works in {dtype}; convert with {name}.to({dtype})"
        )
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"{name} must have shape (n, {d}), got {tuple(x.shape)}")
    if x.device.type != device.type:
        raise ValueError(f"{name} is on {x.device} but this object is on {device}")
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def as_time(t: TimeLike, name: str = "t", *, like: Optional[Tensor] = None) -> Tensor:
    """Convert ``t`` (float, 0-d or 1-d tensor) to a float64 tensor, rejecting NaN.

    The result lives on ``like``'s device when ``t`` is a Python number.
    """
    if isinstance(t, bool):
        raise TypeError(f"{name} must be a float or a tensor, got bool")
    if isinstance(t, Tensor):
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{name} must be real-valued, got dtype {t.dtype}")
        out = t.to(torch.float64)
    elif isinstance(t, Real):
        device = like.device if like is not None else None
        try:
            value = float(t)
        except OverflowError as exc:
            raise ValueError(f"{name} is too large to be represented as a float") from exc
        out = torch.tensor(value, dtype=torch.float64, device=device)
    else:
        try:
            kind = np.asarray(t).dtype.kind  # torch would silently drop imaginary parts
            if kind not in "fiu":
                raise TypeError(f"{name} must hold real numbers, got numpy dtype kind {kind!r}")
            out = torch.as_tensor(t, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise TypeError(f"{name} must be a float or a tensor, got {type(t).__name__}") from exc
    if out.ndim > 1:
        raise ValueError(f"{name} must be a scalar or have shape (n,), got {tuple(out.shape)}")
    if bool(torch.isnan(out).any()):
        raise ValueError(f"{name} contains NaN")
    return out


def out_dtype(t: TimeLike) -> torch.dtype:
    """The dtype a schedule returns for input ``t``: ``t``'s float dtype, else float64."""
    if isinstance(t, Tensor) and t.dtype.is_floating_point:
        return t.dtype
    return torch.float64


def per_point_time(t: Tensor, n: int, name: str = "t") -> Tensor:
    """Broadcast a scalar or ``(n,)`` time tensor to shape ``(n,)``."""
    if t.ndim == 0:
        return t.expand(n)
    if t.shape[0] != n:
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got {tuple(t.shape)}")
    return t
