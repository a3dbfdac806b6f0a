"""``evaluate``: per-point log-likelihoods of a dataset, sharded over ranks, exactly once (private).

See :mod:`densityformula.evaluation` for the guarantees; the steps are:

1. load the model (a :class:`~densityformula.models.DiffusionModel` or a trainer checkpoint,
   :func:`._model.model_from_checkpoint`) and the data (:func:`._data.load_dataset`);
2. per estimator: the run key (:func:`._store.run_key`), the canonical blocks and this rank's
   run of them (:mod:`._sharding`), the parts a killed run already wrote (:class:`._store.PartStore`);
3. evaluate every block not finished, one estimator call per block, writing a part per work item;
4. one ``gather_object`` of every rank's rows to rank 0, which checks that each point appears
   exactly once per estimator, converts to bits/dim and writes the CSV.
"""
from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .._validation import check_int, check_seed, resolve_device
from ..bits import bits_per_dim
from ..models import DiffusionModel, check_model
from ..training.distributed import DistributedContext, resolve_distributed
from ._data import Dataset, load_dataset
from ._estimators import EstimatorSpec, get_estimator, resolve_options
from ._model import model_digest, model_from_checkpoint
from ._sharding import blocks, point_seed, rank_blocks, work_items
from ._store import PartStore, Row, check_output, run_key, write_csv

Tensor = torch.Tensor
PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["evaluate", "EvaluationResult"]


@dataclass
class EvaluationResult:
    """What :func:`evaluate` did.

    Attributes:
        records: the table's rows (dicts keyed by :data:`~._store.COLUMNS`): every row on rank 0,
            this rank's rows on the others.
        path: the CSV written (rank 0, when ``out`` was given), else ``None``.
        computed_blocks: estimator calls this process made (blocks not found among the parts).
        reused_points: points of this rank read back from the parts of an earlier run.
        n_blocks: blocks of every estimator together (all ranks).
        rank, world_size: this process and the number of processes.
        keys: the run key of each estimator.
        seconds: wall time.
    """

    records: List[Dict[str, Any]]
    path: Optional[Path]
    computed_blocks: int
    reused_points: int
    n_blocks: int
    rank: int
    world_size: int
    keys: Dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def values(self, estimator: str) -> Tensor:
        """``log_likelihood`` of ``estimator`` by index (float64)."""
        rows = sorted((r["index"], r["log_likelihood"]) for r in self.records if r["estimator"] == estimator)
        return torch.tensor([v for _, v in rows], dtype=torch.float64)


def _model(
    model: Union[DiffusionModel, PathLike], schedule: Any, weights: str, dtype: torch.dtype, device: torch.device
) -> Tuple[DiffusionModel, str, str]:
    """``(model, digest, label)``."""
    if isinstance(model, (str, os.PathLike)):
        net, info = model_from_checkpoint(model, schedule=schedule, weights=weights, dtype=dtype, device=device)
        return net, str(info["digest"]), f"{Path(model).name}@sha256:{str(info['digest'])[:16]}({info['weights']})"
    model = check_model(model)
    if schedule is not None:
        raise ValueError("schedule is read from the model; pass it only with a checkpoint")
    if isinstance(model, nn.Module):
        params = list(model.parameters())
        if params and (params[0].dtype != dtype or params[0].device != device):
            model = copy.deepcopy(model).to(device=device, dtype=dtype)
    digest = model_digest(model)
    return model, digest, f"{type(model).__name__}@sha256:{digest[:16]}"


def _check_estimators(estimators: Union[str, Sequence[str]]) -> List[EstimatorSpec]:
    names = [estimators] if isinstance(estimators, str) else list(estimators)
    if not names:
        raise ValueError("estimators must name at least one estimator")
    if len(set(names)) != len(names):
        raise ValueError(f"estimators must not repeat a name, got {names}")
    return [get_estimator(n) for n in names]


def _gather(ctx: DistributedContext, obj: Any) -> Optional[List[Any]]:
    """Every rank's ``obj`` on rank 0 (one ``gather_object``), ``None`` on the others."""
    if not ctx.active:
        return [obj]
    dist = torch.distributed
    dst = 0 if ctx.group is None else int(dist.get_global_rank(ctx.group, 0))  # type: ignore[arg-type]
    got: Optional[List[Any]] = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, got, dst=dst, group=ctx.group)  # type: ignore[arg-type]
    return got


def _bar(progress: bool, ctx: DistributedContext, total: int) -> Any:
    if not (progress and ctx.is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"evaluate (rank 0 of {ctx.world_size})", unit="pt")


def evaluate(
    model: Union[DiffusionModel, PathLike],
    data: Union[str, PathLike, Tensor],
    estimators: Union[str, Sequence[str]] = "pf_ode",
    *,
    options: Optional[Mapping[str, Mapping[str, Any]]] = None,
    out: Optional[PathLike] = None,
    overwrite: bool = False,
    parts_dir: Optional[PathLike] = None,
    keep_parts: bool = False,
    seed: int = 0,
    batch_size: int = 64,
    block: int = 16,
    dtype: torch.dtype = torch.float64,
    device: Any = "cpu",
    schedule: Any = None,
    weights: str = "ema",
    limit: Optional[int] = None,
    scale: str = "symmetric",
    dequantize: bool = True,
    data_seed: int = 0,
    data_scale: Optional[float] = None,
    progress: bool = False,
    distributed: Union[None, bool, DistributedContext] = None,
) -> EvaluationResult:
    """Per-point log-likelihoods (nats) and bits/dim of ``data`` under ``model`` by each estimator.

    Point ``i``'s numbers depend only on the model, point ``i``, its canonical block
    ``[k block, (k + 1) block)`` (``k = i // block``; block 1 for the estimators that draw noise per
    call, :mod:`._estimators`), the estimator's options and ``point_seed(seed, i)``: they are
    bitwise the same for every ``batch_size``, world size and resume (tested).

    Args:
        model: a :class:`DiffusionModel` or a trainer checkpoint file (then ``schedule`` and
            ``weights`` as in :func:`densityformula.evaluation.model_from_checkpoint`).
        data: ``"digits"`` (with ``limit``, ``scale``, ``dequantize``, ``data_seed``), a ``.npy`` /
            ``.csv`` file or an ``(n, d)`` tensor (with ``data_scale``, default 1).
        estimators: names from :data:`densityformula.evaluation.ESTIMATORS`.
        options: ``{estimator: {option: value}}`` overriding the registry's defaults.
        out: the CSV to write (rank 0); an existing file only with ``overwrite``.  ``None``: no file.
        parts_dir: where finished work items are kept for a resume (default ``<out>.parts``; with
            neither, nothing is kept).  Removed once the table is written unless ``keep_parts``.
        seed: the run's seed; point ``i`` uses :func:`~._sharding.point_seed` ``(seed, i)``.
        batch_size: points per work item (rounded up to whole blocks): progress and part-file size.
        block: points per estimator call of a batched estimator (``pf_ode``); part of the run key.
        dtype, device: of the evaluation.
        progress: a tqdm bar on rank 0.
        distributed: as in :class:`~densityformula.training.Trainer` (an initialised process group
            or the ``torchrun`` environment by default; ``False``: this process alone).

    Returns:
        an :class:`EvaluationResult`.
    """
    tic = time.perf_counter()
    seed = check_seed(seed, "seed")
    batch_size = check_int(batch_size, "batch_size", 1)
    block = check_int(block, "block", 1)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    specs = _check_estimators(estimators)
    options = dict(options or {})
    for name in options:
        get_estimator(name)
        if name not in [s.name for s in specs]:
            raise ValueError(f"options name estimator {name!r}, which is not evaluated")
    resolved = {s.name: resolve_options(s, options.get(s.name)) for s in specs}
    path = check_output(out, overwrite) if out is not None else None
    dev = resolve_device(device, "device")
    ctx, dev = resolve_distributed(distributed, dev)
    net, digest, label = _model(model, schedule, weights, dtype, dev)
    ds: Dataset = load_dataset(data, limit=limit, scale=scale, dequantize=dequantize, data_seed=data_seed,
                               data_scale=data_scale)
    n, d = ds.x.shape
    root = Path(parts_dir) if parts_dir is not None else (path.with_name(path.name + ".parts") if path else None)

    plans = []
    total = 0
    for spec in specs:
        unit = block if spec.batched else 1
        key = run_key({"model": digest, "data": ds.digest, "data_spec": ds.spec, "estimator": spec.name,
                       "options": resolved[spec.name], "seed": seed, "dtype": str(dtype), "block": unit})
        mine = rank_blocks(blocks(n, unit), ctx.rank, ctx.world_size)
        plans.append((spec, unit, key, work_items(mine, batch_size, unit), -(-n // unit)))
        total += sum(b - a for a, b in mine)
    bar = _bar(progress, ctx, total)
    rows: List[Tuple[str, Row]] = []
    computed = reused = 0
    try:
        for spec, _unit, key, items, _ in plans:
            store = PartStore(root, key) if root is not None else None
            done = store.finished() if store is not None else {}
            for item in items:
                fresh: List[Row] = []
                for a, b in item:
                    if all(i in done for i in range(a, b)):
                        rows.extend((spec.name, done[i]) for i in range(a, b))
                        reused += b - a
                        continue
                    seeds = [point_seed(seed, i) for i in range(a, b)]
                    xb = ds.x[a:b].to(device=dev, dtype=dtype)
                    t0 = time.perf_counter()
                    vals, ses, nfes = spec.run(net, xb, seeds, dict(resolved[spec.name]))
                    per = (time.perf_counter() - t0) / (b - a)
                    new = [(a + j, vals[j], ses[j], nfes[j], per, seeds[j]) for j in range(b - a)]
                    fresh.extend(new)
                    rows.extend((spec.name, r) for r in new)
                    computed += 1
                if fresh and store is not None:
                    store.write(fresh)
                if bar is not None:
                    bar.update(sum(b - a for a, b in item))
    finally:
        if bar is not None:
            bar.close()

    gathered = _gather(ctx, rows)
    records: List[Dict[str, Any]] = []
    written: Optional[Path] = None
    all_rows = [r for part in gathered for r in part] if gathered is not None else rows
    by_est: Dict[str, List[Row]] = {s.name: [] for s in specs}
    for name, r in all_rows:
        by_est[name].append(r)
    for spec, unit, key, _, _ in plans:
        got = sorted(by_est[spec.name], key=lambda r: r[0])
        if gathered is not None and [r[0] for r in got] != list(range(n)):
            raise RuntimeError(f"estimator {spec.name}: the gathered rows do not cover the {n} points exactly once")
        if not got:
            continue
        ll = torch.tensor([r[1] for r in got], dtype=torch.float64)
        bpd = bits_per_dim(ll, d, data_scale=ds.data_scale, dequantization=ds.dequantization)
        assert isinstance(bpd, Tensor)
        opts = json.dumps(resolved[spec.name], sort_keys=True, separators=(",", ":"))
        data_label = json.dumps({**ds.spec, "data_scale": ds.data_scale, "dequantization": ds.dequantization},
                                sort_keys=True, separators=(",", ":"))
        for r, b in zip(got, bpd.tolist()):
            records.append({"index": r[0], "estimator": spec.name, "log_likelihood": r[1], "stderr": r[2],
                            "nfe": r[3], "bits_per_dim": float(b), "seconds": r[4], "point_seed": r[5],
                            "seed": seed, "block": unit, "dtype": str(dtype).replace("torch.", ""),
                            "data": data_label, "model": label, "options": opts, "run_key": key[:24]})
    if gathered is not None and path is not None:
        written = write_csv(path, records)
        if root is not None and not keep_parts:
            for _, _, key, _, _ in plans:
                PartStore(root, key).remove()
    return EvaluationResult(records, written, computed, reused, sum(p[4] for p in plans), ctx.rank,
                            ctx.world_size, {p[0].name: p[2] for p in plans}, time.perf_counter() - tic)
