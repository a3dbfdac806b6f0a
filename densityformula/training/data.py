"""Data sources of the trainer: batches of ``x_0`` (and labels), each with its own generator.

- :class:`TensorData`: a fixed dataset ``(N, d)`` (optionally with labels), reshuffled every epoch.
- :class:`SampledData`: fresh draws every step from a sampler ``draw(n, generator=g)`` (e.g.
  ``GaussianMixture.sample``, ``Digits.sample``); :meth:`SampledData.from_target` wraps an object
  with a ``sample`` method.

A source owns a CPU ``torch.Generator``; :meth:`DataSource.state_dict` holds its state (and the
position in the current epoch), so a resumed run sees the same batches.
"""
from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from typing import Callable, Dict, Optional, Tuple, Union

import torch

from .._validation import check_float_dtype, check_int, check_seed, resolve_device
from .distributed import shard_bounds
from .time_sampling import DeviceLike

Tensor = torch.Tensor
Batch = Tuple[Tensor, Optional[Tensor]]

__all__ = ["DataSource", "TensorData", "SampledData", "as_data_source"]


def _seeded(seed: object) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (Python or numpy int in ``[0, 2**63)``, else an error naming it)."""
    try:
        value = check_seed(seed, "seed")
    except TypeError as exc:  # a ValueError, as before, for every bad seed
        raise ValueError(f"seed must be an int >= 0, got {seed!r}") from exc
    g = torch.Generator(device="cpu")
    g.manual_seed(value)
    return g


def _bounds(batch_size: int, rank: int, world_size: int) -> Tuple[int, int]:
    return shard_bounds(check_int(batch_size, "batch_size", 1), rank, world_size)


def _opt_dtype(dtype: object) -> Optional[torch.dtype]:
    return None if dtype is None else check_float_dtype(dtype, "dtype")


def _opt_device(device: object) -> Optional[torch.device]:
    return None if device is None else resolve_device(device, "device")


class DataSource(ABC):
    """Where the training batches come from.

    Attributes:
        generator: the source's CPU generator (seeded at construction).
        device, dtype: batches are returned there, in that dtype (``None``: as drawn; labels keep
            their dtype).
        labelled: whether batches carry class labels ``y``.
    """

    generator: torch.Generator
    device: torch.device
    dtype: Optional[torch.dtype]
    labelled: bool = False

    @abstractmethod
    def next_batch(self, batch_size: int) -> Batch:
        """The next ``(x_0, y)`` batch: ``x_0`` of shape ``(batch_size, ...)``, ``y`` labels or ``None``."""

    def next_shard(self, batch_size: int, rank: int, world_size: int) -> Batch:
        """Rank ``rank``'s rows ``[rank B // W, (rank + 1) B // W)`` of the next global batch of ``B = batch_size``.

        The source advances exactly as :meth:`next_batch` ``(batch_size)`` does, on every rank, so
        the union over ranks of the shards is the single-process batch and a checkpoint of the
        source's state is the same for every world size.  This default draws the global batch and
        keeps the slice (a sampler's draws cannot be split without changing them);
        :class:`TensorData` gathers only its own rows.
        """
        lo, hi = _bounds(batch_size, rank, world_size)
        x, y = self.next_batch(batch_size)
        return x[lo:hi], (y[lo:hi] if y is not None else None)

    @property
    def max_batch_size(self) -> Optional[int]:
        """The largest batch the source can give (``None``: unbounded)."""
        return None

    def to(self, device: DeviceLike = None, dtype: Optional[torch.dtype] = None) -> DataSource:
        """Return batches on ``device`` in ``dtype`` from now on (the trainer calls this); returns ``self``."""
        dev, dt = _opt_device(device), _opt_dtype(dtype)
        if dev is not None:
            self.device = dev
        if dt is not None:
            self.dtype = dt
        return self

    def state_dict(self) -> Dict[str, object]:
        """The generator state (everything a resumed run needs)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restore :meth:`state_dict`."""
        gen = state["generator"]
        if not isinstance(gen, Tensor):
            raise TypeError("state['generator'] must be a generator state (a uint8 tensor)")
        self.generator.set_state(gen)

    def config(self) -> Dict[str, object]:
        """A short description (stored in checkpoints)."""
        return {"kind": type(self).__name__, "labelled": self.labelled}


class TensorData(DataSource):
    """A fixed dataset, reshuffled every epoch (``torch.randperm`` with the source's generator).

    A batch that would run past the end of the epoch starts a new permutation (the leftover rows
    of the old one are skipped).

    Args:
        x: floating tensor ``(N, d)`` (or ``(N, ...)``), finite.
        y: optional labels, one per row.
        seed: seeds the generator.
        device, dtype: where batches go (the dataset is moved there once).
    """

    def __init__(
        self,
        x: Tensor,
        y: Optional[Tensor] = None,
        *,
        seed: int = 0,
        device: DeviceLike = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
            got = f"dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(
                f"data must be a target with .sample(), a floating tensor (N, d), or a pair (x, y); got {got}"
            )
        if x.is_meta:
            raise ValueError("data is a meta tensor (no values)")
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"data must have shape (N, d) with N >= 1, got {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("data contains NaN or inf")
        if y is not None:
            if not isinstance(y, Tensor) or y.ndim == 0 or y.shape[0] != x.shape[0]:
                raise ValueError("labels y must be a tensor with one row per data point")
            if y.dtype.is_floating_point or y.is_complex() or y.dtype == torch.bool:
                raise TypeError(f"labels y must be an integer tensor (class indices), got dtype {y.dtype}")
        self.generator = _seeded(seed)
        dev, dt = _opt_device(device), _opt_dtype(dtype)
        self.device = dev if dev is not None else x.device
        self.dtype = dt if dt is not None else x.dtype
        self._x = x
        self._y = y
        self.labelled = y is not None
        self._perm: Optional[Tensor] = None
        self._pos = 0
        self.to()

    def to(self, device: DeviceLike = None, dtype: Optional[torch.dtype] = None) -> TensorData:
        super().to(device, dtype)
        self._x = self._x.to(device=self.device, dtype=self.dtype or self._x.dtype)
        if self._y is not None:
            self._y = self._y.to(self.device)
        return self

    @property
    def max_batch_size(self) -> Optional[int]:
        return int(self._x.shape[0])

    @property
    def point_shape(self) -> Tuple[int, ...]:
        """The shape of one data point (``(d,)`` for ``(N, d)`` data)."""
        return tuple(self._x.shape[1:])

    def _indices(self, batch_size: int) -> Tensor:
        """The next global batch's row indices (CPU), advancing the permutation."""
        batch_size = check_int(batch_size, "batch_size", 1)
        N = self._x.shape[0]
        if batch_size > N:
            raise ValueError(f"data has {N} rows, fewer than batch_size={batch_size}")
        if self._perm is None or self._pos + batch_size > N:
            self._perm = torch.randperm(N, generator=self.generator)
            self._pos = 0
        idx = self._perm[self._pos : self._pos + batch_size]
        self._pos += batch_size
        return idx

    def _rows(self, idx: Tensor) -> Batch:
        idx = idx.to(self.device)
        return self._x[idx], (self._y[idx] if self._y is not None else None)

    def next_batch(self, batch_size: int) -> Batch:
        return self._rows(self._indices(batch_size))

    def next_shard(self, batch_size: int, rank: int, world_size: int) -> Batch:
        """This rank's rows of the next global batch: the permutation advances by ``batch_size``, only
        the rank's rows are gathered (see :meth:`DataSource.next_shard`)."""
        lo, hi = _bounds(batch_size, rank, world_size)
        return self._rows(self._indices(batch_size)[lo:hi])

    def state_dict(self) -> Dict[str, object]:
        """Generator state, the current permutation (CPU) and the position in it."""
        return {**super().state_dict(), "perm": self._perm.cpu() if self._perm is not None else None,
                "pos": self._pos}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        super().load_state_dict(state)
        perm, pos = state["perm"], state["pos"]
        if perm is not None and not isinstance(perm, Tensor):
            raise TypeError("state['perm'] must be a tensor or None")
        if not isinstance(pos, int):
            raise TypeError("state['pos'] must be an int")
        self._perm = perm
        self._pos = pos


class SampledData(DataSource):
    """Fresh samples every step: ``draw(batch_size, generator=g)`` returns ``x`` or ``(x, y)``.

    Args:
        draw: the sampler, e.g. ``gmm.sample`` (a ``GaussianMixture``), ``Digits().sample``.
        labelled: batches carry labels (``draw`` must then return ``(x, y)``).
        seed: seeds the generator.
        device, dtype: where batches go (default: as drawn).
    """

    def __init__(
        self,
        draw: Callable[..., object],
        *,
        labelled: bool = False,
        seed: int = 0,
        device: DeviceLike = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        if not callable(draw):
            raise TypeError(f"draw must be callable as draw(n, generator=g), got {type(draw).__name__}")
        self._draw = draw
        self.labelled = bool(labelled)
        self.generator = _seeded(seed)
        dev = _opt_device(device)
        self.device = dev if dev is not None else torch.device("cpu")
        self.dtype = _opt_dtype(dtype)

    @classmethod
    def from_target(
        cls,
        target: object,
        *,
        labelled: bool = False,
        seed: int = 0,
        device: DeviceLike = None,
        dtype: Optional[torch.dtype] = None,
    ) -> SampledData:
        """Draw from ``target.sample(n, generator=g)`` (``return_labels=True`` when ``labelled``)."""
        sample = getattr(target, "sample", None)
        if not callable(sample):
            raise TypeError(f"target must have a sample(n, generator=...) method, got {type(target).__name__}")
        draw = functools.partial(sample, return_labels=True) if labelled else sample
        return cls(draw, labelled=labelled, seed=seed, device=device, dtype=dtype)

    def next_batch(self, batch_size: int) -> Batch:
        batch_size = check_int(batch_size, "batch_size", 1)
        out = self._draw(batch_size, generator=self.generator)
        y: Optional[Tensor] = None
        if self.labelled:
            if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(v, Tensor) for v in out)):
                raise TypeError("a labelled sampler must return a pair (x, y) of tensors")
            x, y = out
            y = y.to(self.device)
        elif isinstance(out, Tensor):
            x = out
        else:
            raise TypeError(f"the sampler must return a tensor, got {type(out).__name__}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"the sampler (draw) must return a floating tensor, got dtype {x.dtype}")
        if x.ndim < 1 or x.shape[0] != batch_size:
            raise ValueError(f"the sampler (draw) must return batch_size={batch_size} rows, got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("the sampler (draw) returned NaN or inf")
        return x.to(device=self.device, dtype=self.dtype if self.dtype is not None else x.dtype), y


def as_data_source(
    data: object,
    *,
    labelled: bool = False,
    seed: int = 0,
    device: DeviceLike = None,
    dtype: Optional[torch.dtype] = None,
) -> DataSource:
    """The :class:`DataSource` for the trainer's ``data`` argument.

    ``data`` is a :class:`DataSource` (returned as is, moved to ``device``/``dtype``), an object with
    ``.sample(n, generator=...)`` (fresh samples; labels from ``return_labels=True`` when
    ``labelled``), a floating tensor ``(N, d)``, or a pair ``(x, y)`` of tensors with labels.
    """
    if isinstance(data, DataSource):
        return data.to(device, dtype)
    if callable(getattr(data, "sample", None)):
        return SampledData.from_target(data, labelled=labelled, seed=seed, device=device, dtype=dtype)
    y: Union[Tensor, None] = None
    if isinstance(data, (tuple, list)):
        if len(data) != 2 or not all(isinstance(v, Tensor) for v in data):
            raise TypeError("data as a sequence must be a pair (x, y) of tensors")
        data, y = data
    if not isinstance(data, Tensor):
        raise TypeError("data must be a target with .sample(), a floating tensor (N, d), or a pair (x, y)")
    return TensorData(data, y, seed=seed, device=device, dtype=dtype)
