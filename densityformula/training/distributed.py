"""Data-parallel training over ``torch.distributed`` (``torchrun``; gloo on CPU, NCCL on CUDA).

A :class:`~densityformula.training.Trainer` trains on ``W`` processes exactly what it trains on one
at the same global batch ``B``, to float rounding:

- **sharded batch.**  Every rank advances the same data and noise generators by the *global*
  batch, and keeps its rows ``[r B // W, (r + 1) B // W)`` (:meth:`DistributedContext.shard`):
  the union over ranks of the rows, times, noises and label drops is the single-process batch
  (a :class:`~.data.TensorData` gathers only its own rows; a sampler's draw cannot be split
  without changing it, so a :class:`~.data.SampledData` draws the global batch and keeps its
  slice).  The generators' states are therefore those of one process, on every rank.
- **one all-reduce per step.**  Rank ``r`` back-propagates ``(1 / B) sum_{i in shard r} l_i``;
  the gradients (and the local loss sums) are flattened into one buffer per dtype and summed over
  ranks (``all_reduce``, ``SUM``), which gives every rank
  ``grad (1 / B) sum_{i=1}^{B} l_i = grad mean(l)``, the single-process gradient, and the global
  mean loss.  This is DistributedDataParallel's gradient averaging (its bucketed all-reduce)
  without wrapping the module: the loss calls the model's ``eps`` / ``denoise`` methods, not
  ``forward``, which DDP's hooks would miss; shards of unequal size (``W`` not dividing ``B``)
  are weighted exactly.
- **identical replicas.**  The parameters are broadcast from rank 0 at set-up; every rank then
  clips, steps and averages (EMA) the same summed gradients, so the replicas stay equal.
- **checkpoints written once.**  Rank 0 writes (atomically, :class:`~.checkpoint.Checkpointer`),
  the others wait at a barrier; since every part's state is that of one process, a checkpoint
  written by ``W`` processes resumes on any ``W'`` (1 included) and continues identically.

The context is found automatically (:func:`resolve_distributed`): an initialised default process
group, else the ``torchrun`` environment (``WORLD_SIZE > 1``, ``RANK``, ``MASTER_ADDR``), which
initialises one (gloo for a CPU device, NCCL for CUDA); otherwise training is single-process, so a
user's single-process code does not change.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

Tensor = torch.Tensor

__all__ = ["DistributedContext", "SINGLE_PROCESS", "resolve_distributed", "torchrun_environment", "shard_bounds"]


def shard_bounds(n: int, rank: int, world_size: int) -> Tuple[int, int]:
    """Rows ``[rank n // W, (rank + 1) n // W)`` of a global batch of ``n``: disjoint, covering, in order."""
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"rank must be in [0, world_size), got rank={rank!r}, world_size={world_size!r}")
    return rank * n // world_size, (rank + 1) * n // world_size


def torchrun_environment() -> Optional[Dict[str, int]]:
    """``{"rank", "world_size", "local_rank"}`` from ``torchrun``'s variables when ``WORLD_SIZE > 1``, else ``None``."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "-1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        return None
    if world <= 1 or rank < 0 or "MASTER_ADDR" not in os.environ:
        return None
    return {"rank": rank, "world_size": world, "local_rank": local}


@dataclass(frozen=True)
class DistributedContext:
    """The process group a trainer runs in (``world_size = 1``: a single process, no communication).

    Attributes:
        rank, world_size: this process's rank and the number of processes.
        group: the ``torch.distributed`` process group (``None``: the default one).
    """

    rank: int = 0
    world_size: int = 1
    group: Optional[object] = None

    @property
    def active(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints and shows progress."""
        return self.rank == 0

    def shard(self, n: int) -> Tuple[int, int]:
        """This rank's rows of a global batch of ``n`` (:func:`shard_bounds`)."""
        return shard_bounds(n, self.rank, self.world_size)

    def barrier(self) -> None:
        """Wait for every rank (nothing on one process)."""
        if self.active:
            torch.distributed.barrier(group=self.group)  # type: ignore[arg-type]

    def broadcast_module(self, module: nn.Module) -> None:
        """Overwrite ``module``'s parameters and buffers with rank 0's (in place; nothing on one process)."""
        if not self.active:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                torch.distributed.broadcast(tensor.data, src=self._global_rank(0), group=self.group)  # type: ignore[arg-type]

    def all_reduce_sum_(self, tensors: Sequence[Tensor]) -> None:
        """Sum ``tensors`` over ranks in place: one ``all_reduce`` per dtype of a flat buffer."""
        if not self.active or not tensors:
            return
        groups: Dict[Tuple[torch.dtype, torch.device], List[Tensor]] = {}
        for tensor in tensors:
            groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
        for parts in groups.values():
            flat = torch.cat([p.reshape(-1) for p in parts])
            torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM, group=self.group)
            offset = 0
            for p in parts:
                n = p.numel()
                p.copy_(flat[offset:offset + n].view_as(p))
                offset += n

    def _global_rank(self, group_rank: int) -> int:
        if self.group is None:
            return group_rank
        return int(torch.distributed.get_global_rank(self.group, group_rank))  # type: ignore[arg-type]


#: one process, no communication
SINGLE_PROCESS = DistributedContext()


def _backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def resolve_distributed(
    distributed: Union[None, bool, DistributedContext], device: torch.device
) -> Tuple[DistributedContext, torch.device]:
    """The trainer's :class:`DistributedContext` and device for its ``distributed`` argument.

    ``None`` (default): the initialised default process group if there is one with more than one
    process, else the ``torchrun`` environment (:func:`torchrun_environment`), for which the
    default group is initialised (``gloo`` on CPU, ``nccl`` on CUDA), else a single process.
    ``True``: the same, but a ``ValueError`` when neither exists.  ``False``: a single process
    even inside a group (e.g. independent runs per rank).  A :class:`DistributedContext`: as given.
    On CUDA without a device index, rank ``r`` trains on ``cuda:LOCAL_RANK`` (else
    ``r mod device_count``).
    """
    if isinstance(distributed, DistributedContext):
        return distributed, _local_device(device, distributed.rank)
    if distributed is False:
        return SINGLE_PROCESS, device
    if distributed is not None and distributed is not True:
        raise TypeError(f"distributed must be None, a bool or a DistributedContext, got {type(distributed).__name__}")
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        world = int(dist.get_world_size())
        if world > 1:
            rank = int(dist.get_rank())
            return DistributedContext(rank, world), _local_device(device, rank)
    env = torchrun_environment()
    if env is not None and dist.is_available() and not dist.is_initialized():
        dev = _local_device(device, env["local_rank"])
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=_backend(dev))
        return DistributedContext(int(dist.get_rank()), int(dist.get_world_size())), dev
    if distributed is True:
        raise ValueError("distributed=True needs an initialised torch.distributed process group with more than "
                         "one process or a torchrun environment (WORLD_SIZE > 1, RANK, MASTER_ADDR)")
    return SINGLE_PROCESS, device


def _local_device(device: torch.device, rank: int) -> torch.device:
    if device.type != "cuda" or device.index is not None:
        return device
    local = os.environ.get("LOCAL_RANK")
    index = int(local) if local is not None and local.isdigit() else rank % max(1, torch.cuda.device_count())
    return torch.device("cuda", index)
