"""The data an evaluation reads: the packaged digits, a ``.npy`` / ``.csv`` file, or a tensor (private).

Each comes with its spec (recorded in the table and hashed into the run's key), its SHA-256 and
the scaling that :func:`densityformula.bits_per_dim` needs: for the digits, counts ``v + u`` in bins
of width 1 map to ``x = lo + (hi - lo)(v + u)/17``, so ``data_scale = dx/dc = (hi - lo)/17`` and
the dequantization is ``"uniform"`` (``"none"`` for bin centres); for other data the scale is
given (default 1: the data are in model units) and there is no dequantization.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

Tensor = torch.Tensor
PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["Dataset", "load_dataset", "tensor_digest"]


@dataclass(frozen=True)
class Dataset:
    """Points to evaluate and how they were made.

    Attributes:
        x: ``(n, d)`` float64 CPU tensor.
        spec: what was loaded (JSON-able), e.g. ``{"name": "digits", "scale": "symmetric", ...}``.
        digest: SHA-256 of ``x``'s float64 bytes.
        data_scale: ``dy/du`` of :func:`densityformula.bits_per_dim`.
        dequantization: ``"uniform"`` or ``"none"``.
    """

    x: Tensor
    spec: Dict[str, Any]
    digest: str
    data_scale: float
    dequantization: str


def tensor_digest(x: Tensor) -> str:
    """SHA-256 of the shape and float64 bytes of ``x``."""
    t = x.detach().to(device="cpu", dtype=torch.float64).contiguous()
    h = hashlib.sha256(f"{tuple(t.shape)}".encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def _limit(x: Tensor, limit: Optional[int]) -> Tensor:
    if limit is None:
        return x
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive int, got {limit!r}")
    return x[:limit]


def load_dataset(
    data: Union[str, PathLike, Tensor],
    *,
    limit: Optional[int] = None,
    scale: str = "symmetric",
    dequantize: bool = True,
    data_seed: int = 0,
    data_scale: Optional[float] = None,
) -> Dataset:
    """``data`` as a :class:`Dataset`: ``"digits"`` (the packaged 8x8 digits in ``scale``, dequantized
    with a generator seeded ``data_seed`` or at the bin centres), a ``.npy`` / ``.csv`` file of an
    ``(n, d)`` array, or an ``(n, d)`` tensor; the first ``limit`` rows."""
    if isinstance(data, Tensor):
        if data.ndim != 2 or not data.dtype.is_floating_point or data.shape[0] == 0:
            raise ValueError(f"data must be a non-empty floating (n, d) tensor, got {data.dtype} {tuple(data.shape)}")
        x = _limit(data.detach().to(device="cpu", dtype=torch.float64), limit)
        spec: Dict[str, Any] = {"name": "tensor", "shape": list(x.shape)}
        deq = "none"
        scale_v = 1.0 if data_scale is None else float(data_scale)
    elif isinstance(data, str) and data == "digits":
        from ..data import DIGITS_LEVELS, DIGITS_SCALES, load_digits

        if scale not in DIGITS_SCALES:
            raise ValueError(f"scale must be one of {', '.join(DIGITS_SCALES)}, got {scale!r}")
        gen = torch.Generator().manual_seed(int(data_seed))
        x = _limit(load_digits(scale, dequantize, gen, dtype=torch.float64), limit)  # type: ignore[arg-type]
        lo, hi = DIGITS_SCALES[scale]
        spec = {"name": "digits", "scale": scale, "dequantize": bool(dequantize), "data_seed": int(data_seed),
                "n": int(x.shape[0])}
        deq = "uniform" if dequantize else "none"
        scale_v = (hi - lo) / DIGITS_LEVELS
        if data_scale is not None:
            raise ValueError("data_scale is set by the digits' scaling; do not pass it with data='digits'")
    elif isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_file():
            raise ValueError(f"data must be 'digits' or an existing .npy / .csv file, got {str(data)!r}")
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif path.suffix == ".csv":
            arr = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
        else:
            raise ValueError(f"data file must end in .npy or .csv, got {str(data)!r}")
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.dtype.kind not in "fiu":
            raise ValueError(f"data file {str(data)!r} must hold a non-empty numeric (n, d) array")
        x = _limit(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64)), limit)
        spec = {"name": str(path), "n": int(x.shape[0])}
        deq = "none"
        scale_v = 1.0 if data_scale is None else float(data_scale)
    else:
        raise TypeError(f"data must be 'digits', a path or a tensor, got {type(data).__name__}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("data contains NaN or inf")
    if not (scale_v > 0 and np.isfinite(scale_v)):
        raise ValueError(f"data_scale must be a positive finite float, got {data_scale!r}")
    if limit is not None:
        spec["limit"] = int(limit)
    return Dataset(x, spec, tensor_digest(x), float(scale_v), deq)
