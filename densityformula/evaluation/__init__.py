"""Distributed, exactly-once evaluation of per-point log-likelihoods (issue 12).

``evaluate(model_or_checkpoint, data, ["pf_ode", ...], out="table.csv")`` computes, for every
point of a dataset and every estimator of the registry (:data:`ESTIMATORS`: ``pf_ode``,
``density_formula``, ``continuous``, ``ddpm``, ``iw``), its log-likelihood in nats, standard
error, model evaluations and bits per dimension, and writes one tidy CSV row per (point,
estimator).  The command line is ``densityformula evaluate``.

Guarantees (tests/test_evaluation.py, tests/test_cli_evaluate.py):

- **exactly once.**  The points are cut by global index into canonical blocks; rank ``r`` of
  ``W`` evaluates the contiguous run ``shard_bounds(n_blocks, r, W)`` of them (no padding, no
  duplicate); one ``gather_object`` brings every row to rank 0, which checks that each point
  appears once per estimator before it writes the table.
- **bitwise invariance.**  float64 CPU matrix products are not batch-invariant (MKL's kernels
  differ in the last bits with the number of rows: measured), so the batch size never decides
  which points share an estimator call: one call evaluates exactly one canonical block
  (``block`` points for ``pf_ode``, whose per-point solver and per-point probe seeds make a
  point's number a function of its block alone; one point for the estimators that draw their
  noise per call).  Point ``i``'s randomness comes from :func:`point_seed` ``(seed, i)``.  Hence
  the table is bitwise the same for every batch size and world size (the ``seconds`` column
  aside), at a fixed ``block``, which is part of the run key.
- **resume.**  Every finished work item is written atomically to ``<out>.parts/<key>/``, keyed on
  a hash of every input (model or checkpoint content, data, estimator and options, seed, dtype,
  block, library and torch versions); a rerun after a kill reads them back and evaluates only
  the blocks not finished, then gives the same table.
"""
from ._data import Dataset, load_dataset, tensor_digest
from ._estimators import ESTIMATORS, EstimatorSpec, get_estimator, resolve_options
from ._evaluate import EvaluationResult, evaluate
from ._model import file_digest, model_digest, model_from_checkpoint, parse_schedule
from ._sharding import blocks, point_seed, rank_blocks, work_items
from ._store import COLUMNS, PartStore, run_key

__all__ = [
    "evaluate",
    "EvaluationResult",
    "ESTIMATORS",
    "EstimatorSpec",
    "get_estimator",
    "resolve_options",
    "model_from_checkpoint",
    "parse_schedule",
    "model_digest",
    "file_digest",
    "load_dataset",
    "Dataset",
    "tensor_digest",
    "point_seed",
    "blocks",
    "rank_blocks",
    "work_items",
    "PartStore",
    "run_key",
    "COLUMNS",
]
