"""Exact log-likelihood of the probability-flow ODE (docs/math.md section 6, I12).

The clock.  Write the probability-flow ODE ``dx/dt = f x - g^2 s / 2`` in the log-SNR
``lambda`` of the model's schedule.  With ``d lambda/dt = -g^2/sigma^2`` and Tweedie
(``sigma^2 s = alpha D - x``, I1) it becomes, for every schedule of docs/math.md section 1,

    dx/dlambda = F(x, lambda) = c(lambda) x + (alpha D(x, t(lambda)) - x) / 2,
    c(lambda) = d log(alpha)/d lambda = -f sigma^2 / g^2          (c = sigma^2/2 for VP, 0 for VE),

    div F = d c + (alpha tr(dD/dx) - d) / 2 = d c + sigma^2 div s / 2.

For a Gaussian target the Jacobian of ``F`` has eigenvalues in ``(-1/2, 1/2)`` at every
``lambda`` (``dD/dx`` is ``S (S + sigma^2/alpha^2)^{-1} / alpha``), so the ODE is not stiff
anywhere, including the ends of LiYan and VP where the ``t`` clock blows up (docs/math.md section 1).

The likelihood.  Along a solution from ``lambda_s`` (data end, large lambda) to ``lambda_e``
(noise end), the instantaneous change of variables gives (I12)

    log p_s(x(lambda_s)) = log p_e(x(lambda_e)) + int_{lambda_s}^{lambda_e} div F dlambda,

an integral taken in the direction of integration (``lambda`` decreasing).  The sign test in
``tests/test_likelihood_pf.py`` fails if the integral is taken the other way.
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch

from .. import reverse
from .._validation import LogDensity, TimeLike, as_log_density, check_int, check_points, check_positive_float
from ..estimate import Estimate
from ..models import DiffusionModel, check_model, checked, log_snr_interval
from ..reverse import pf_velocity
from ..schedules import Schedule
from ._ode import dopri5_per_point
from ._trace import SeedLike, per_point_seeds, point_probes

Tensor = torch.Tensor
#: ``"gaussian"``, an object with ``log_prob(x)``, a callable of ``x`` or of ``(x, t)``
Prior = Union[str, Callable[..., Tensor], object]

__all__ = ["probability_flow", "pf_velocity"]

_LOG_2PI = math.log(2.0 * math.pi)
_TRACES = ("exact", "func", "autograd", "hutchinson", "hutchpp")


def _alias(
    new: Optional[TimeLike], old: Optional[TimeLike], new_name: str, old_name: str
) -> Tuple[Optional[TimeLike], str]:
    """The value of an interval end given as ``new_name`` or its old alias ``old_name`` (not both)."""
    if new is not None and old is not None:
        raise ValueError(f"give {new_name} or its old name {old_name}, not both")
    if old is not None:
        return old, old_name
    return new, new_name


def _end_lambda(
    schedule: Schedule, t: Optional[TimeLike], default: float, clip: Optional[Tuple[float, float]], name: str
) -> Tensor:
    """Log-SNR of an interval end: ``default`` when ``t`` is None, else ``lambda(t)`` with an infinite
    end replaced by the schedule's finite one (``Schedule.clip_log_snr``), then clipped to ``clip``."""
    if t is None:
        lam = torch.tensor(default, dtype=torch.float64)
    else:
        lam = schedule.clip_log_snr(schedule.log_snr(schedule.check_time(t, name)).double())
    if clip is not None:
        lam = lam.clamp(clip[0], clip[1])
    if not bool(torch.isfinite(lam).all()):
        raise ValueError(f"{name} gives a non-finite log-SNR")
    return lam


def _augmented(
    model: DiffusionModel,
    y: Tensor,
    lam: Tensor,
    d: int,
    trace: str,
    probes: Optional[Tensor],
    sketch: Optional[Tensor] = None,
    create_graph: bool = False,
) -> Tensor:
    """``[F, div F]`` of the state ``y = [x, log-density columns]`` (I12 with the field of I20)."""
    F, div = reverse.pf_velocity(
        model, y[:, :d], lam, trace=trace, probes=probes, sketch=sketch, create_graph=create_graph
    )
    if div is None:  # trace is never "none" here
        raise RuntimeError("pf_velocity returned no divergence")
    return torch.cat([F, div.reshape(div.shape[0], -1)], 1)


def _warn_outside_valid(model: DiffusionModel, lam_lo: float, lam_hi: float, names: str) -> None:
    """RuntimeWarning when an interval the user asked for leaves ``model.valid_log_snr`` (I24)."""
    v_lo, v_hi = model.valid_log_snr
    tol = 1e-6
    if lam_lo < v_lo - tol * max(1.0, abs(v_lo)) or lam_hi > v_hi + tol * max(1.0, abs(v_hi)):
        warnings.warn(
            f"probability_flow integrates this model over log-SNR [{lam_lo:.4g}, {lam_hi:.4g}] ({names}), beyond "
            f"the range [{v_lo:.4g}, {v_hi:.4g}] it is valid on (model.valid_log_snr: for a network, the range "
            "it was trained on); the model's error there enters the likelihood. Leave t_min/t_max unset to "
            "integrate over densityformula.models.log_snr_interval(model).",
            RuntimeWarning,
            stacklevel=3,
        )


def probability_flow(
    model: DiffusionModel,
    x: Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    trace: str = "exact",
    n_probes: int = 1,
    probe: str = "rademacher",
    prior: Prior = "gaussian",
    t_min: Optional[TimeLike] = None,
    t_max: Optional[TimeLike] = None,
    solver: str = "batch",
    error_norm: str = "max",
    lambda_clip: Optional[Tuple[float, float]] = None,
    generator: Optional[torch.Generator] = None,
    seed: Optional[SeedLike] = None,
    sketch_size: Optional[int] = None,
    differentiable: bool = False,
    return_trajectory: bool = False,
    n_trajectory: int = 33,
    max_steps: int = 100_000,
    t_start: Optional[TimeLike] = None,
    t_end: Optional[TimeLike] = None,
    trace_nodes: Optional[int] = None,
) -> Estimate:
    """Per-point log-density (nats) of the model's probability-flow ODE at time ``t_min`` (I12).

    ``log p_{t_min}(x) = log p_prior(x_e) + int_{lambda_s}^{lambda_e} div F(x_lambda, lambda) dlambda``
    with ``F`` of :func:`pf_velocity` (I20), integrated in the log-SNR clock from the data end
    ``lambda_s = lambda(t_min)`` down to the prior end ``lambda_e = lambda(t_max)``.  With the
    exact score, exact trace and the exact prior ``log q_{t_max}`` this reproduces
    ``log q_{t_min}(x)`` to solver tolerance (tested to 1e-5 nats for LiYan, VPLinear, SubVP and VE).

    By default the interval is :func:`densityformula.models.log_snr_interval` of the model
    (docs/math.md section 10, I24): the model's ``valid_log_snr`` (for a network, the range it was
    trained on; the whole line for an analytic model) intersected with the schedule's finite
    log-SNR range.  An interval asked for explicitly that leaves ``valid_log_snr`` is integrated
    as asked, with a ``RuntimeWarning``.

    Args:
        model: any :class:`DiffusionModel`; ``x`` lives in its coordinates at ``t_min``.
        x: ``(n, d)`` points.
        rtol, atol: solver tolerances (state = ``x`` and the accumulated log-density).
        method: a ``torchdiffeq`` method (``solver="batch"``); ``solver="per_point"`` is dopri5.
        trace: ``"exact"`` (closed-form ``model.score_divergence`` if present, else ``tr dD/dx``
            from ``torch.func``: one ``vjp`` vmapped over the ``d`` basis covectors, a few batched
            passes; for a model ``torch.func`` cannot transform, ``d`` sequential autograd
            passes), ``"func"`` (the ``torch.func`` trace, never the fallback), ``"autograd"``
            (always the ``d`` sequential autograd passes; the reference), ``"hutchinson"``
            (``n_probes`` probes, Rademacher or Gaussian, drawn once and held fixed along the
            path, estimates averaged), ``"hutchpp"`` (Hutch++, identity H++ of
            :mod:`densityformula.likelihood._trace`: per point a sketch of ``sketch_size``
            vectors, default ``n_probes``, and ``n_probes`` residual probes, all held fixed along
            the path; ``sketch_size + n_probes`` vector-Jacobian products and one forward pass
            per evaluation).  With a stochastic trace the log-density component is left out of
            the error norm, so the steps depend only on the path of ``x`` (the solver does not
            resolve probe noise) and the estimate is exactly unbiased for the exact-trace
            integral on those steps.
        n_probes, probe: stochastic-trace settings (``probe`` in ``{"rademacher", "gaussian"}``;
            the Hutch++ sketch uses the same kind).
        seed: per-point seeds of the probes instead of ``generator``: an int ``s`` gives point
            ``i`` the seed ``s + i``; a sequence or ``(n,)`` integer tensor gives each point its
            own.  Each point's probes come from a generator seeded by its seed alone, so with
            ``solver="per_point"`` a point's estimate is the same alone or in any batch.
        sketch_size: ``trace="hutchpp"``: sketch vectors per point (default ``n_probes``).
        differentiable: keep ``value`` attached to the autograd graph of the model's parameters
            (and of ``x``): the solve is differentiated through (backpropagation through the
            solver's steps, every solver), the trace computed with ``create_graph``.  Memory
            grows with the number of steps.
        prior: the log-density at the prior end: ``"gaussian"`` = ``N(0, sigma(t_max)^2 I)`` (the
            forward marginal with the ``alpha x_0`` term dropped; it is the exact ``q_{t_max}`` only
            when ``alpha = 0``); an object with ``log_prob(x)`` (e.g. ``gmm.marginal(schedule, t)``);
            a callable of ``x`` (e.g. ``gmm.marginal(schedule, t).log_prob``); or a callable of
            ``(x, t)``, called with the model times ``t`` (``(n,)``) of the prior end, e.g. the exact
            marginal ``lambda x, t: target.log_prob(x, t, model.schedule)``.  A callable gets ``t``
            when it has two required positional parameters (checked up front; ``TypeError``
            listing the forms otherwise).
        t_min, t_max: model times (floats or ``(n,)`` tensors) of the data end (where ``x`` lives
            and the likelihood is evaluated) and of the prior end; default the ends of
            ``log_snr_interval(model)``.  An infinite log-SNR (LiYan and VP at the ends) is
            replaced by the schedule's finite end (``Schedule.LOG_SNR_CLIP = (-40, 25)``: at
            ``lambda = 25``, ``sigma^2 = 1.4e-11``; at ``lambda = -40``, ``alpha = 2e-9``, where
            LiYan's ``t`` rounds to exactly 1, so ``N(0, I)`` is its exact prior).  The interval
            used is in ``extras["log_snr_interval"]``, its times in ``extras["t_min"]`` and
            ``extras["t_max"]``.
        t_start, t_end: old names of ``t_min`` and ``t_max`` (same meaning).
        lambda_clip: optional ``(lo, hi)``: the log-SNRs of both ends are clipped into it.
        solver: ``"batch"``: one ``torchdiffeq.odeint`` solve for all points with one shared
            step sequence (see ``error_norm``); the steps depend on the batch.  ``"per_point"``: the
            batched per-point Dormand--Prince of :mod:`._ode`; each point has its own steps,
            independent of the rest of the batch (same answer alone or in any batch), still one
            batched model call per stage.  ``"loop"``: one ``torchdiffeq`` solve per point (a
            Python loop; reference only, slow).
        error_norm: ``solver="batch"`` only: ``"max"`` (default; the maximum over points of
            each point's RMS error ratio: every point meets its own tolerance) or ``"rms"``
            (``torchdiffeq``'s default: RMS over the whole batch state, cheaper, only the batch
            average meets the tolerance).
        generator: source of the stochastic-trace probes (not with ``seed``).
        return_trajectory: with ``solver="batch"``, put ``(lambdas, x_path)`` in
            ``extras["trajectory"]`` (``n_trajectory`` points from ``lambda_s`` to ``lambda_e``,
            both ends included, so ``n_trajectory`` must be an int ``>= 2``; ``ValueError`` otherwise).
        n_trajectory: number of trajectory points (``return_trajectory`` only).
        max_steps: ``solver="per_point"``: the most steps of any point (an int ``>= 1``).
        trace_nodes: ``None`` (default): the log-density is a component of the ODE state, so the
            trace is computed at every stage of every step, rejected ones included.  An int
            ``q >= 1`` (``solver="per_point"`` only): the state is ``x`` alone (the steps are
            chosen for the path of ``x``; cheap forward passes) and the divergence integral is
            a ``q``-point Gauss--Legendre rule inside each accepted step, on the step's order-4
            dense output (identity I46, docs/math.md section 17): the trace is evaluated ``q``
            times per accepted step instead of 6 times per attempted step.  The rule has degree
            ``2q - 1``; the error is dominated by the path's, so tighten ``rtol``/``atol``:
            on a trained d = 64 MLP ``q = 3`` at ``rtol = atol = 1e-6`` matched the default mode's
            accuracy at ``1e-5`` in 0.68x its time (docs/bench_pf_trace.md).  ``extras`` adds
            ``"trace_evals_per_point"``.

    Returns:
        :class:`Estimate` with ``value`` = log-density in nats, ``stderr`` = 0 for the exact
        trace (solver error is controlled by the tolerances; it is not a statistical error)
        and, for Hutchinson, the standard error over the ``n_probes`` probes, each carried as its
        own integral (``inf`` for one probe: there is no spread to estimate it from); ``nfe`` = model evaluations per
        point (max over points for ``"per_point"``); ``extras``: ``"prior_logp"``,
        ``"delta_logp"``, ``"x_end"``, ``"t_min"`` and ``"t_max"`` (``(n,)`` model times of the data
        and prior ends; also under their old names ``"t_start"``, ``"t_end"``), ``"lambda_start"``,
        ``"lambda_end"`` (their log-SNRs), ``"log_snr_interval"`` (``(min lambda_end, max
        lambda_start)``), ``"nfe_per_point"`` (and ``"delta_logp_per_probe"`` for Hutchinson).
    """
    tic = time.perf_counter()
    model = checked(check_model(model))  # the model-call boundary: every output checked
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a floating tensor of shape (n, d), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"x must be a floating tensor of shape (n, d), got {tuple(x.shape)}")
    x = check_points(x, int(x.shape[1]), x.dtype, x.device, "x")
    rtol = check_positive_float(rtol, "rtol")
    atol = check_positive_float(atol, "atol")
    max_steps = check_int(max_steps, "max_steps", 1)
    if not isinstance(return_trajectory, (bool, np.bool_)):
        raise TypeError(f"return_trajectory must be a bool, got {type(return_trajectory).__name__}")
    if return_trajectory:
        n_trajectory = check_int(n_trajectory, "n_trajectory", 2)
    if trace not in _TRACES:
        raise ValueError(f"trace must be one of {', '.join(map(repr, _TRACES))}, got {trace!r}")
    if not isinstance(differentiable, (bool, np.bool_)):
        raise TypeError(f"differentiable must be a bool, got {type(differentiable).__name__}")
    differentiable = bool(differentiable)
    if seed is not None and generator is not None:
        raise ValueError("give generator or seed (per-point probe seeds), not both")
    if sketch_size is not None:
        sketch_size = check_int(sketch_size, "sketch_size", 1)
    if solver not in ("batch", "per_point", "loop"):
        raise ValueError(f"solver must be 'batch', 'per_point' or 'loop', got {solver!r}")
    n_probes = check_int(n_probes, "n_probes", 1)
    if probe not in ("rademacher", "gaussian"):
        raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
    prior_fn = as_log_density(prior, "prior", strings=("gaussian",))
    if error_norm not in ("max", "rms"):
        raise ValueError(f"error_norm must be 'max' or 'rms', got {error_norm!r}")
    if solver == "per_point" and method != "dopri5":
        raise ValueError("solver='per_point' implements method='dopri5' only")
    if return_trajectory and solver != "batch":
        raise ValueError("return_trajectory needs solver='batch'")
    if trace_nodes is not None:
        trace_nodes = check_int(trace_nodes, "trace_nodes", 1)
        if solver != "per_point":
            raise ValueError(
                f"trace_nodes needs solver='per_point' (the quadrature runs inside each point's accepted steps), "
                f"got solver={solver!r}"
            )

    sched = model.schedule
    n, d = x.shape
    dev, dtype = x.device, x.dtype
    t_lo, lo_name = _alias(t_min, t_start, "t_min", "t_start")
    t_hi, hi_name = _alias(t_max, t_end, "t_max", "t_end")
    clip: Optional[Tuple[float, float]] = None
    if lambda_clip is not None:
        try:
            clip = (float(lambda_clip[0]), float(lambda_clip[1]))
        except (TypeError, ValueError, IndexError) as exc:
            raise TypeError(f"lambda_clip must be a pair of floats (lo, hi), got {lambda_clip!r}") from exc
        if not clip[0] < clip[1]:
            raise ValueError(f"lambda_clip must be (lo, hi) with lo < hi, got {lambda_clip!r}")
    default_lo, default_hi = log_snr_interval(model)
    lam_s = _end_lambda(sched, t_lo, default_hi, clip, lo_name).to(dev)
    lam_e = _end_lambda(sched, t_hi, default_lo, clip, hi_name).to(dev)
    lam_s_n = lam_s.expand(n) if lam_s.ndim == 0 else lam_s
    lam_e_n = lam_e.expand(n) if lam_e.ndim == 0 else lam_e
    if lam_s_n.shape != (n,) or lam_e_n.shape != (n,):
        raise ValueError(f"{lo_name} and {hi_name} must be scalars or have shape ({n},)")
    if bool((lam_e_n > lam_s_n).any()):
        raise ValueError(f"{hi_name} must not be earlier (noisier-to-cleaner) than {lo_name}")
    if bool((lam_e_n == lam_s_n).any()):
        raise ValueError(
            f"{lo_name} and {hi_name} are equal (the same log-SNR): the flow would have zero length and the "
            f"result would be the prior's log-density at x, not the model's; pass {hi_name} later than {lo_name}"
        )
    interval = (float(lam_e_n.min()), float(lam_s_n.max())) if n else (default_lo, default_hi)
    if t_lo is not None or t_hi is not None or clip is not None:
        asked = ", ".join(nm for nm, v in ((lo_name, t_lo), (hi_name, t_hi), ("lambda_clip", clip)) if v is not None)
        _warn_outside_valid(model, interval[0], interval[1], f"from {asked}")

    probes: Optional[Tensor] = None
    sketch: Optional[Tensor] = None
    stochastic = trace in ("hutchinson", "hutchpp")
    if stochastic:
        k_sk = (sketch_size if sketch_size is not None else n_probes) if trace == "hutchpp" else 0
        if seed is not None:
            seeds = per_point_seeds(seed, n)
            allp = point_probes(seeds, (k_sk + n_probes, d), probe, dtype, dev)  # (k + P, n, d)
        elif probe == "rademacher":
            allp = torch.randint(0, 2, (k_sk + n_probes, n, d), generator=generator, device=dev).to(dtype) * 2 - 1
        else:
            allp = torch.randn(k_sk + n_probes, n, d, generator=generator, dtype=dtype, device=dev)
        sketch, probes = (allp[:k_sk], allp[k_sk:]) if trace == "hutchpp" else (None, allp)
    n_div = n_probes if stochastic else 1
    err_cols = torch.ones(d + n_div, dtype=torch.bool, device=dev)
    if stochastic:
        err_cols[d:] = False

    x0 = x if differentiable else x.detach()
    y0 = torch.cat([x0, torch.zeros(n, n_div, dtype=dtype, device=dev)], 1)
    extras: Dict[str, Any] = {}
    if trace_nodes is not None:
        x_end_q, deltas_q, nfe_x, n_tr, iters = _solve_with_trace_nodes(
            model, x0, lam_s_n.double(), lam_e_n.double(), trace, probes, sketch, trace_nodes, rtol, atol,
            max_steps, differentiable,
        )
        y1 = torch.cat([x_end_q, deltas_q], 1)
        nfe_per_point = nfe_x + n_tr
        extras["iterations"] = iters
        extras["trace_evals_per_point"] = n_tr
    elif solver == "per_point":

        def func_pp(lam: Tensor, y: Tensor, idx: Tensor) -> Tensor:
            pr = probes[:, idx] if probes is not None else None
            sk = sketch[:, idx] if sketch is not None else None
            return _augmented(model, y, lam, d, trace, pr, sk, differentiable)

        y1, nfe_pp, iters = dopri5_per_point(
            func_pp, y0, lam_s_n.double(), lam_e_n.double(), rtol=rtol, atol=atol, err_cols=err_cols,
            max_steps=max_steps,
        )
        nfe_per_point = nfe_pp
        extras["iterations"] = iters
    elif solver == "batch":
        y1, nfe_b, traj = _solve_torchdiffeq(
            model, y0, lam_s_n, lam_e_n, trace, probes, rtol, atol, method, err_cols, return_trajectory,
            n_trajectory, error_norm, sketch, differentiable,
        )
        nfe_per_point = torch.full((n,), nfe_b, dtype=torch.int64, device=dev)
        if traj is not None:
            extras["trajectory"] = traj
    else:
        outs, nfes = [], []
        for i in range(n):  # reference mode: deliberately one solve per point
            pr = probes[:, i : i + 1] if probes is not None else None
            sk = sketch[:, i : i + 1] if sketch is not None else None
            yi, nfe_i, _ = _solve_torchdiffeq(
                model, y0[i : i + 1], lam_s_n[i : i + 1], lam_e_n[i : i + 1], trace, pr, rtol, atol, method,
                err_cols, False, 0, "max", sk, differentiable,
            )
            outs.append(yi)
            nfes.append(nfe_i)
        y1 = torch.cat(outs, 0)
        nfe_per_point = torch.tensor(nfes, dtype=torch.int64, device=dev)

    x_end, deltas = y1[:, :d], y1[:, d:]
    delta = _row_mean(deltas)
    t_end_used = sched.t_from_log_snr(lam_e_n.double())
    if isinstance(prior_fn, LogDensity):
        prior_logp = prior_fn(x_end, t_end_used)
    else:  # "gaussian"
        s2e = sched.sigma2(t_end_used).to(dtype)
        prior_logp = -0.5 * (d * (_LOG_2PI + torch.log(s2e)) + (x_end**2).sum(-1) / s2e)
    value = prior_logp.to(dtype) + delta
    if not bool(torch.isfinite(value).all()):
        raise FloatingPointError("probability_flow produced a non-finite log-density")
    stderr = torch.zeros_like(value).detach()
    if stochastic:
        # each probe's integral is carried in its own state column, so the spread over probes
        # gives the standard error of their mean; one probe has no spread: stderr = inf.
        if n_probes > 1:
            # the spread written as row means (as the value): the same bits alone or in any batch
            dev_sq = (deltas.detach() - delta.detach()[:, None]) ** 2
            stderr = torch.sqrt(_row_mean(dev_sq) / (n_probes - 1.0))
        else:
            stderr = torch.full_like(value, math.inf)
        extras["delta_logp_per_probe"] = deltas.detach()
    t_start_used = sched.t_from_log_snr(lam_s_n.double())
    extras.update(
        prior_logp=prior_logp,
        delta_logp=delta,
        x_end=x_end,
        t_min=t_start_used,
        t_max=t_end_used,
        t_start=t_start_used,
        t_end=t_end_used,
        lambda_start=lam_s_n,
        lambda_end=lam_e_n,
        log_snr_interval=interval,
        nfe_per_point=nfe_per_point,
    )
    return Estimate(
        value=value if differentiable else value.detach(),
        stderr=stderr,
        nfe=int(nfe_per_point.max()) if n else 0,
        seconds=time.perf_counter() - tic,
        extras=extras,
    )


def _solve_with_trace_nodes(
    model: DiffusionModel,
    x0: Tensor,
    lam_s: Tensor,
    lam_e: Tensor,
    trace: str,
    probes: Optional[Tensor],
    sketch: Optional[Tensor],
    q: int,
    rtol: float,
    atol: float,
    max_steps: int,
    differentiable: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """The path of ``x`` by the per-point solver, and ``int div F dlambda`` by Gauss--Legendre (I46).

    On each accepted step ``[lambda_0, lambda_0 + h]`` of a point,
    ``int div F dlambda ~= h sum_j w_j div F(x(lambda_0 + theta_j h), lambda_0 + theta_j h)`` with
    the ``q`` Gauss--Legendre nodes ``theta_j`` and weights ``w_j`` of ``[0, 1]`` and ``x`` from the
    step's dense output; one batched trace call over (accepted points x nodes) per iteration.
    Returns ``(x_end (n, d), integrals (n, P), velocity evaluations (n,), trace evaluations (n,),
    iterations)``.
    """
    n, d = x0.shape
    dev, dtype = x0.device, x0.dtype
    g, w = np.polynomial.legendre.leggauss(q)
    theta = torch.tensor((g + 1.0) / 2.0, dtype=torch.float64, device=dev)
    weights = torch.tensor(w / 2.0, dtype=dtype, device=dev)
    n_cols = probes.shape[0] if probes is not None else 1
    acc = [torch.zeros(n, n_cols, dtype=dtype, device=dev)]
    n_tr = torch.zeros(n, dtype=torch.int64, device=dev)

    def velocity(lam: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        F, _ = reverse.pf_velocity(model, y, lam, trace="none", create_graph=differentiable)
        return F

    def on_accept(idx: Tensor, lam0: Tensor, h: Tensor, dense: Callable[[Tensor], Tensor]) -> None:
        k = idx.shape[0]
        xs = dense(theta).reshape(q * k, d)  # node-major: row j k + i is point idx[i] at node j
        lam = (lam0[None, :] + theta[:, None] * h[None, :]).reshape(q * k)
        pr = probes[:, idx].repeat(1, q, 1) if probes is not None else None
        sk = sketch[:, idx].repeat(1, q, 1) if sketch is not None else None
        _, div = reverse.pf_velocity(model, xs, lam, trace=trace, probes=pr, sketch=sk, create_graph=differentiable)
        if div is None:
            raise RuntimeError("pf_velocity returned no divergence")
        div = div.reshape(q, k, n_cols)
        part = (weights[:, None, None] * div).sum(0) * h.to(dtype)[:, None]  # (k, P)
        acc[0] = acc[0].index_add(0, idx, part)
        n_tr[idx] += q

    err_cols = torch.ones(d, dtype=torch.bool, device=dev)
    x_end, nfe_x, iters = dopri5_per_point(
        velocity, x0, lam_s, lam_e, rtol=rtol, atol=atol, err_cols=err_cols, max_steps=max_steps,
        on_accept=on_accept,
    )
    return x_end, acc[0], nfe_x, n_tr, iters


def _row_mean(v: Tensor) -> Tensor:
    """Mean over the columns of ``(n, P)`` as ``P - 1`` elementwise additions: each row's bits do
    not depend on the other rows (a vectorized row reduction may differ in the last bit with ``n``)."""
    acc = v[:, 0].clone()
    for j in range(1, v.shape[1]):
        acc = acc + v[:, j]
    return acc / v.shape[1]


def _first_step(
    func: Callable[[Tensor, Tensor], Tensor],
    grid: Tensor,
    y0: Tensor,
    rtol: float,
    atol: float,
    norm: Callable[[Tensor], Tensor],
    order: int,
) -> float:
    """Hairer's initial step with the fallback of :func:`._ode.initial_h0` (2 evaluations)."""
    from ._ode import initial_h0

    t0 = grid[0]
    span = (grid[-1] - grid[0]).abs()
    direction = 1.0 if float(grid[-1]) >= float(grid[0]) else -1.0
    scale = atol + y0.abs() * rtol
    f0 = func(t0, y0)
    d0, d1 = norm(y0 / scale).double(), norm(f0 / scale).double()
    h0 = initial_h0(d0, d1, span)
    f1 = func(t0 + direction * h0, y0 + (direction * h0).to(y0.dtype) * f0)
    d2 = norm((f1 - f0) / scale).double() / h0
    dmax = torch.maximum(d1, d2)
    h1 = (0.01 / dmax.clamp_min(1e-300)) ** (1.0 / order) if float(dmax) > 1e-15 else h0 * 1e-3
    return float(torch.minimum(torch.minimum(100 * h0, h1), span))


def _solve_torchdiffeq(
    model: DiffusionModel,
    y0: Tensor,
    lam_s: Tensor,
    lam_e: Tensor,
    trace: str,
    probes: Optional[Tensor],
    rtol: float,
    atol: float,
    method: str,
    err_cols: Tensor,
    return_trajectory: bool,
    n_trajectory: int,
    error_norm: str = "max",
    sketch: Optional[Tensor] = None,
    differentiable: bool = False,
) -> Tuple[Tensor, int, Optional[Tuple[Tensor, Tensor]]]:
    """One ``torchdiffeq.odeint`` solve of the whole batch from ``lam_s`` to ``lam_e``.

    Per-point start/end log-SNRs are mapped to the common clock ``s in [0, 1]`` by
    ``lambda = lam_s + s (lam_e - lam_s)``, ``dy/ds = (lam_e - lam_s) dy/dlambda``.
    """
    from torchdiffeq import odeint

    n, m = y0.shape
    d = m - (probes.shape[0] if probes is not None else 1)
    same = bool((lam_s == lam_s[0]).all()) and bool((lam_e == lam_e[0]).all())
    counter = [0]

    def norm(v: Tensor) -> Tensor:  # max over points of the per-point RMS error ratio
        v = v.reshape(n, m)[:, err_cols]
        if error_norm == "rms":
            return torch.sqrt((v**2).mean())
        return torch.sqrt((v**2).mean(-1)).max()

    func: Callable[[Tensor, Tensor], Tensor]
    if same:
        def func_lam(lam: Tensor, y: Tensor) -> Tensor:
            counter[0] += 1
            return _augmented(model, y, lam.to(torch.float64), d, trace, probes, sketch, differentiable)

        func = func_lam
        grid = torch.stack([lam_s[0], lam_e[0]]).double()
        if return_trajectory:
            grid = torch.linspace(float(lam_s[0]), float(lam_e[0]), n_trajectory, dtype=torch.float64)
    else:
        span = (lam_e - lam_s).double()

        def func_s(s: Tensor, y: Tensor) -> Tensor:
            counter[0] += 1
            lam = lam_s.double() + s.double() * span
            return _augmented(model, y, lam, d, trace, probes, sketch, differentiable) * span.to(y.dtype)[:, None]

        func = func_s
        grid = torch.tensor([0.0, 1.0], dtype=torch.float64)
        if return_trajectory:
            grid = torch.linspace(0.0, 1.0, n_trajectory, dtype=torch.float64)
    grid = grid.to(y0.device)
    with torch.enable_grad() if differentiable else torch.no_grad():
        options: Dict[str, Any] = {"norm": norm}
        orders = {"dopri5": 5, "dopri8": 8, "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 2}
        if method in orders:
            with torch.no_grad():  # the first trial step is a choice, not part of the value
                options["first_step"] = _first_step(func, grid, y0.detach(), rtol, atol, norm, orders[method])
            # land exactly on the end instead of stepping past it and interpolating: past the end
            # lambda leaves the schedule's log-SNR range.  Only the end: the trajectory's inner
            # times are read off the solver's dense output, so asking for them does not change the
            # steps, and the log-density is bit-for-bit the one without return_trajectory (forcing
            # a step onto every output time made it up to 13x less accurate, issue 9).
            options["step_t"] = grid[-1:]
        try:
            ys = odeint(func, y0, grid, rtol=rtol, atol=atol, method=method, options=options)
        except AssertionError as exc:  # torchdiffeq signals a collapsed step with a bare assert
            if "underflow in dt" not in str(exc):
                raise
            raise RuntimeError(
                "probability_flow: the adaptive step size underflowed: the model's velocity is too stiff "
                "somewhere on the path (typically a network evaluated far outside the log-SNR range it was "
                "trained on, or low precision). Leave t_min/t_max unset (the default is the model's valid "
                "log-SNR range) or pass them inside the trained range, use float64 inputs, or loosen rtol/atol."
            ) from exc
    traj = None
    if return_trajectory:
        lams = grid if same else (lam_s[None, :].double() + grid[:, None] * (lam_e - lam_s)[None, :].double())
        traj = (lams, ys[:, :, :d])
    return ys[-1], counter[0], traj
