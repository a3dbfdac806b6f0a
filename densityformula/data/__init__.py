"""Real data shipped inside the package: the 8x8 handwritten digits (no download, no scikit-learn).

``digits.csv.gz`` is scikit-learn's copy of the UCI optical-recognition digits (1797 images of
8x8 pixel counts in ``0..16``, label ``0..9``); see ``LICENSE_digits.txt`` next to it.

Scaling and dequantization are explicit so that likelihoods of the discrete data can be
reported correctly.  A pixel count ``v`` in ``{0, ..., 16}`` becomes ``c = v + u`` in
``[0, 17)`` with ``u ~ U[0, 1)`` (uniform dequantization; ``u = 1/2``, the bin centre, without
it), and then ``x = lo + (hi - lo) c / 17`` with ``(lo, hi)`` given by ``scale``.  For a density
``p_X`` on the scaled data, the dequantized-count density is
``log p_C(c) = log p_X(x) + log_det`` with ``log_det = d log((hi - lo) / 17)`` (see
:func:`digits_log_det_jacobian`), and ``E_u[log p_C(v + u)] <= log P(v)`` bounds the discrete
log-likelihood (bits/dim ``= -log P(v) / (d log 2)``).
"""
from __future__ import annotations

import gzip
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import numpy as np
import torch

from .._validation import check_float_dtype, resolve_device

Tensor = torch.Tensor

__all__ = [
    "DIGITS_LEVELS",
    "DIGITS_SHAPE",
    "DIGITS_SCALES",
    "load_digits",
    "load_digits_raw",
    "digits_log_det_jacobian",
    "digits_split",
    "Digits",
]

DIGITS_LEVELS = 17  # pixel counts 0..16
DIGITS_SHAPE = (8, 8)
DIGITS_SCALES = {"symmetric": (-1.0, 1.0), "unit": (0.0, 1.0), "counts": (0.0, float(DIGITS_LEVELS))}
_FILE = Path(__file__).with_name("digits.csv.gz")
_N, _D = 1797, 64


@lru_cache(maxsize=1)
def _read() -> Tuple[np.ndarray, np.ndarray]:
    if not _FILE.is_file():
        raise FileNotFoundError(f"the packaged digits data {_FILE} is missing (reinstall densityformula)")
    with gzip.open(_FILE, "rt") as fh:
        arr = np.loadtxt(fh, delimiter=",", dtype=np.float64)
    if arr.shape != (_N, _D + 1):
        raise RuntimeError(f"{_FILE} has shape {arr.shape}, expected ({_N}, {_D + 1})")
    pix, lab = arr[:, :_D], arr[:, _D]
    if not (np.all(pix == np.round(pix)) and pix.min() >= 0 and pix.max() <= DIGITS_LEVELS - 1):
        raise RuntimeError(f"{_FILE} does not hold integer pixel counts in 0..16")
    pix, lab = pix.astype(np.int64), lab.astype(np.int64)
    pix.setflags(write=False)
    lab.setflags(write=False)
    return pix, lab


def load_digits_raw() -> Tuple[Tensor, Tensor]:
    """The pixel counts ``(1797, 64)`` (int64, ``0..16``) and labels ``(1797,)`` (int64, ``0..9``)."""
    pix, lab = _read()
    return torch.from_numpy(pix.copy()), torch.from_numpy(lab.copy())


def _check_scale(scale: Any) -> Tuple[float, float]:
    if not isinstance(scale, str) or scale not in DIGITS_SCALES:
        raise ValueError(f"scale must be one of {tuple(DIGITS_SCALES)}, got {scale!r}")
    return DIGITS_SCALES[scale]


def digits_log_det_jacobian(scale: str = "symmetric", d: int = _D) -> float:
    """``log|det dx/dc| = d log((hi - lo) / 17)`` of the map from dequantized counts ``c`` to ``x``.

    Add it to a model's ``log p_X(x)`` to get the density of the dequantized counts; for
    ``"symmetric"`` it is ``64 log(2/17) = -136.96`` nats.
    """
    lo, hi = _check_scale(scale)
    if not isinstance(d, int) or isinstance(d, bool) or d < 1:
        raise ValueError(f"d must be a positive int, got {d!r}")
    return d * math.log((hi - lo) / DIGITS_LEVELS)


def load_digits(
    scale: str = "symmetric",
    dequantize: bool = True,
    generator: Optional[torch.Generator] = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: Any = None,
    return_labels: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """The 1797 digits as ``(1797, 64)`` data, ``x = lo + (hi - lo)(v + u) / 17`` (module docstring).

    Args:
        scale: ``"symmetric"`` (``[-1, 1]``, default), ``"unit"`` (``[0, 1]``) or ``"counts"``
            (``[0, 17)``).
        dequantize: add ``u ~ U[0, 1)`` drawn from ``generator`` (a fresh CPU generator seeded
            with 0 when ``None``); ``False`` uses the bin centres ``u = 1/2``.
        generator: a CPU ``torch.Generator`` for the dequantization noise.
        dtype, device: of the returned tensor.
        return_labels: also return the ``(1797,)`` int64 labels.
    """
    lo, hi = _check_scale(scale)
    if not isinstance(dequantize, bool):
        raise TypeError(f"dequantize must be a bool, got {type(dequantize).__name__}")
    check_float_dtype(dtype)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU generator, got one on {generator.device}")
    pix, lab = load_digits_raw()
    c = pix.to(torch.float64)
    if dequantize:
        if generator is None:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(0)
        c = c + torch.rand(c.shape, generator=generator, dtype=torch.float64)
    else:
        c = c + 0.5
    x = (lo + (hi - lo) * c / DIGITS_LEVELS).to(dtype=dtype, device=resolve_device(device))
    if dtype != torch.float64:
        # rounding to a narrower dtype can land exactly on hi; keep the half-open interval
        x = torch.minimum(x, torch.nextafter(torch.tensor(hi, dtype=dtype), torch.tensor(lo, dtype=dtype)).to(x.device))
    if return_labels:
        return x, lab.to(device=x.device)
    return x


def digits_split(test_fraction: float = 0.2, seed: int = 0) -> Tuple[Tensor, Tensor]:
    """A fixed random split of the 1797 row indices into ``(train, test)`` (sorted int64 tensors)."""
    if not isinstance(test_fraction, (int, float)) or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    perm = torch.randperm(_N, generator=g)
    n_test = int(round(test_fraction * _N))
    return torch.sort(perm[n_test:]).values, torch.sort(perm[:n_test]).values


class Digits:
    """The digits as a data source with fresh dequantization noise at every draw.

    ``sample(n, generator)`` picks ``n`` rows of the chosen split uniformly with replacement
    and dequantizes them anew (module docstring), so a :class:`~densityformula.training.Trainer`
    given a ``Digits`` sees the continuous density of the dequantized counts rather than one
    fixed noise draw.

    Args:
        scale: as in :func:`load_digits`.
        split: ``"train"``, ``"test"`` or ``"all"`` (see :func:`digits_split`).
        test_fraction, split_seed: the split.
        dequantize: ``False`` gives the bin centres.
        dtype: of the samples.
    """

    d = _D

    def __init__(
        self,
        scale: str = "symmetric",
        split: str = "train",
        *,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        dequantize: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.lo, self.hi = _check_scale(scale)
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        if not isinstance(dequantize, bool):
            raise TypeError(f"dequantize must be a bool, got {type(dequantize).__name__}")
        check_float_dtype(dtype)
        pix, lab = load_digits_raw()
        if split != "all":
            train, test = digits_split(test_fraction, split_seed)
            idx = train if split == "train" else test
            pix, lab = pix[idx], lab[idx]
        self.scale, self.split, self.dequantize, self.dtype = scale, split, dequantize, dtype
        self.counts, self.labels = pix.to(torch.float64), lab
        self.log_det_jacobian = digits_log_det_jacobian(scale)

    def __len__(self) -> int:
        return self.counts.shape[0]

    def sample(
        self, n: int, generator: Optional[torch.Generator] = None, return_labels: bool = False
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """``n`` rows drawn with replacement, freshly dequantized: ``(n, 64)`` (and labels)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        idx = torch.randint(len(self), (n,), generator=generator)
        c = self.counts[idx]
        if self.dequantize:
            c = c + torch.rand(c.shape, generator=generator, dtype=torch.float64)
        else:
            c = c + 0.5
        x = (self.lo + (self.hi - self.lo) * c / DIGITS_LEVELS).to(self.dtype)
        if self.dtype != torch.float64:
            below_hi = torch.nextafter(torch.tensor(self.hi, dtype=self.dtype), torch.tensor(self.lo, dtype=self.dtype))
            x = torch.minimum(x, below_hi)
        return (x, self.labels[idx]) if return_labels else x

    def __repr__(self) -> str:
        return f"Digits(scale={self.scale!r}, split={self.split!r}, n={len(self)}, dequantize={self.dequantize})"
