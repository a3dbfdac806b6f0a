"""The registry of per-point log-likelihood estimators by name (private).

Each entry wraps one estimator of the library for one canonical block of points (see
:mod:`._sharding`), with that block's per-point seeds:

==================  ======================================================  ========  ===================
name                estimator (identity)                                    block     randomness
==================  ======================================================  ========  ===================
``pf_ode``          :func:`~densityformula.likelihood.probability_flow`,    any       ``seed=`` per point
                    ``solver="per_point"`` (I12)                                      (stochastic traces)
``density_formula`` :func:`~densityformula.density_formula` (I5/I6)         1         ``seed=`` of the call
``continuous``      :func:`~densityformula.elbo.continuous` (I8)            1         ``seed=`` of the call
``ddpm``            :func:`~densityformula.elbo.ddpm` (I9)                  1         a generator
``iw``              :func:`~densityformula.elbo.importance_weighted` (I10)  1         a generator
==================  ======================================================  ========  ===================

Only ``pf_ode`` takes one seed per point *and* solves each point with its own steps
(``solver="per_point"``), so a block of several points is evaluated in one call.  The others draw
their noise for the whole call from one seed or generator (point ``i``'s draws would depend on
its position in the batch), so each point is one call with its own seed (their block is 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from ..models import DiffusionModel

Tensor = torch.Tensor
#: ``(log_likelihood (b,), stderr (b,), nfe (b,))`` of one block
BlockResult = Tuple[List[float], List[float], List[int]]
Runner = Callable[[DiffusionModel, Tensor, List[int], Dict[str, Any]], BlockResult]

__all__ = ["EstimatorSpec", "ESTIMATORS", "get_estimator", "resolve_options"]


@dataclass(frozen=True)
class EstimatorSpec:
    """One registered estimator.

    Attributes:
        name: its name in the table and on the command line.
        title: what it computes, with the identity of docs/math.md.
        batched: a block of several points may be one call (per-point seeds and per-point steps).
        options: ``{option: (type, default)}``; ``None`` defaults mean "the library's default".
        run: ``run(model, x (b, d), seeds, options) -> (values, stderrs, nfes)``.
    """

    name: str
    title: str
    batched: bool
    options: Mapping[str, Tuple[type, Any]]
    run: Runner


def _lists(value: Tensor, stderr: Tensor, nfe: Any, b: int) -> BlockResult:
    vals = [float(v) for v in value.detach().cpu().tolist()]
    ses = [float(s) for s in stderr.detach().cpu().tolist()]
    if isinstance(nfe, Tensor):
        nfes = [int(k) for k in nfe.cpu().tolist()]
    else:
        nfes = [int(nfe)] * b
    if len(vals) != b or len(ses) != b or len(nfes) != b:
        raise RuntimeError(f"estimator returned {len(vals)} values for a block of {b} points")
    for v in vals:
        if not math.isfinite(v):
            raise FloatingPointError("estimator returned a non-finite log-likelihood")
    return vals, ses, nfes


def _generator(seed: int, x: Tensor) -> torch.Generator:
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    return gen


def _given(options: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


def _pf_ode(model: DiffusionModel, x: Tensor, seeds: List[int], options: Dict[str, Any]) -> BlockResult:
    from ..likelihood import probability_flow

    opts = _given(options)
    stochastic = opts.get("trace", "exact") in ("hutchinson", "hutchpp")
    seed = torch.tensor(seeds, dtype=torch.int64) if stochastic else None
    est = probability_flow(model, x, solver="per_point", seed=seed, **opts)
    return _lists(est.value, est.stderr, est.extras["nfe_per_point"], x.shape[0])


def _one_point(x: Tensor, seeds: List[int]) -> None:
    if x.shape[0] != 1 or len(seeds) != 1:
        raise ValueError("this estimator evaluates one point per call (block 1)")


def _density_formula(model: DiffusionModel, x: Tensor, seeds: List[int], options: Dict[str, Any]) -> BlockResult:
    from ..formula import density_formula

    _one_point(x, seeds)
    est = density_formula(model, x, seed=seeds[0], **_given(options))
    return _lists(est.value, est.stderr, est.nfe, 1)


def _continuous(model: DiffusionModel, x: Tensor, seeds: List[int], options: Dict[str, Any]) -> BlockResult:
    from ..elbo import continuous

    _one_point(x, seeds)
    est = continuous(model, x, seed=seeds[0], **_given(options))
    return _lists(est.value, est.stderr, est.nfe, 1)


def _ddpm(model: DiffusionModel, x: Tensor, seeds: List[int], options: Dict[str, Any]) -> BlockResult:
    from ..elbo import ddpm

    _one_point(x, seeds)
    est = ddpm(model, x, generator=_generator(seeds[0], x), **_given(options))
    return _lists(est.value, est.stderr, est.nfe, 1)


def _iw(model: DiffusionModel, x: Tensor, seeds: List[int], options: Dict[str, Any]) -> BlockResult:
    from ..elbo import importance_weighted

    _one_point(x, seeds)
    est = importance_weighted(model, x, generator=_generator(seeds[0], x), **_given(options))
    if isinstance(est, dict):  # one k: a single Estimate
        raise RuntimeError("importance_weighted returned several estimates for one k")
    return _lists(est.value, est.stderr, est.nfe, 1)


_FORMULA_OPTIONS: Dict[str, Tuple[type, Any]] = {
    "form": (str, "eps"), "n_nodes": (int, 64), "n_noise": (int, None), "budget": (int, None),
    "n_replicates": (int, 32),
}

#: the estimators by name
ESTIMATORS: Dict[str, EstimatorSpec] = {
    spec.name: spec
    for spec in (
        EstimatorSpec("pf_ode", "probability-flow ODE log-likelihood (I12), per-point dopri5", True,
                      {"trace": (str, "exact"), "n_probes": (int, 1), "probe": (str, "rademacher"),
                       "rtol": (float, 1e-5), "atol": (float, 1e-5), "max_steps": (int, 100_000)}, _pf_ode),
        EstimatorSpec("density_formula", "score-based density formula (I5/I6)", False, _FORMULA_OPTIONS,
                      _density_formula),
        EstimatorSpec("continuous", "continuous-time ELBO (I8)", False, _FORMULA_OPTIONS, _continuous),
        EstimatorSpec("ddpm", "DDPM ELBO of the ancestral sampler (I9)", False,
                      {"n_samples": (int, 2), "steps": (int, None), "variance": (str, "beta")}, _ddpm),
        EstimatorSpec("iw", "importance-weighted DDPM bound (I10)", False,
                      {"k": (int, 16), "n_replicates": (int, 4), "variance": (str, "beta")}, _iw),
    )
}


def get_estimator(name: object) -> EstimatorSpec:
    """The registered estimator ``name`` (``ValueError`` listing the names otherwise)."""
    if not isinstance(name, str) or name not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {name!r}")
    return ESTIMATORS[name]


def _convert(spec: EstimatorSpec, key: str, value: Any) -> Any:
    kind, _ = spec.options[key]
    where = f"option {key!r} of estimator {spec.name!r}"
    if value is None:
        return None
    if isinstance(value, str) and kind is not str:
        try:
            value = kind(value)
        except ValueError:
            raise ValueError(f"{where} must be {kind.__name__}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{where} must be {kind.__name__}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} must be finite, got {value!r}")
    return value


def resolve_options(spec: EstimatorSpec, options: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """``spec``'s defaults updated by ``options`` (converted to the option's type; ``ValueError`` naming an
    unknown option and listing the known ones)."""
    out: Dict[str, Any] = {k: default for k, (_, default) in spec.options.items()}
    for key, value in (options or {}).items():
        if key not in spec.options:
            raise ValueError(f"estimator {spec.name!r} has no option {key!r} (it has {', '.join(spec.options)})")
        out[key] = _convert(spec, key, value)
    return out
