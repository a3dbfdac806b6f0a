"""The probability-flow ODE sampler (private module).

Its vector field is :func:`densityformula.reverse.pf_velocity` (I20), the same function that
:func:`densityformula.likelihood.probability_flow` integrates for the likelihood (I12), so sampling
and likelihood follow the same flow.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

from .. import reverse as R
from .._validation import check_positive_float
from ..models import DiffusionModel, check_model
from ._grid import Callback, _finite_float
from ._run import (
    Device,
    NoiseSampler,
    Run,
    SamplerDivergedError,
    SamplerOutput,
    check_steps,
    finish,
    prepare,
    sampler,
)

Tensor = torch.Tensor

_FIXED = ("euler", "midpoint", "rk4", "heun3", "explicit_adams", "implicit_adams")


@sampler(stochastic=False, step_based=False)
def probability_flow(
    model: DiffusionModel,
    x_T: Optional[Tensor] = None,
    *,
    n: Optional[int] = None,
    steps: Optional[int] = None,
    method: Optional[str] = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_start: Optional[float] = None,
    t_end: Optional[float] = None,
    lam_min: float = -15.0,
    lam_max: float = 15.0,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callback] = None,
    shape: Optional[Tuple[int, ...]] = None,
    dtype: Optional[torch.dtype] = None,
    device: Device = None,
    progress: bool = False,
    spacing: str = "log_snr",
    post_step: None = None,
    t_max: Optional[float] = None,
    t_min: Optional[float] = None,
    times: Optional[Tensor] = None,
    noise_sampler: Optional[NoiseSampler] = None,
    return_info: bool = False,
) -> SamplerOutput:
    """The probability-flow ODE ``dx/dt = f x - g^2 score / 2`` (Song et al. eq. 13; the flow whose
    density docs/math.md I12 computes) solved with torchdiffeq in the log-SNR clock ``lambda``, with
    the vector field of :func:`densityformula.reverse.pf_velocity` (I20):

        dx/dlambda = c(lambda) x + (alpha D(x, t(lambda)) - x) / 2,   c = d log alpha / dlambda = -f sigma^2 / g^2

    (``c = sigma^2 / 2`` for VP, 0 for VE): bounded coefficients on the whole range, no blow-up at
    LiYan's ``t = 1``.  Ends where ``lambda`` is infinite (LiYan ``t = 1``, VP ``t = 0``) are clipped
    to ``[lam_min, lam_max]`` (default +-15) and bridged by one DDIM (``eta = 0``) step (I16), which
    is exact to ``O(alpha^2) = O(e^lam_min)`` at the noisy end and ``O(sigma^2)`` at the clean end
    (about 1e-6 relative at the defaults; 1.4e-4 at +-10, measured on a Gaussian).

    ``steps=None`` (default): adaptive ``method`` (default ``"dopri5"``) with ``rtol``/``atol`` and an
    error norm that is the max over points of each point's RMS error, so every point meets the
    tolerance on its own.  ``steps=k``: fixed grid of ``k`` steps uniform in ``lambda`` with a
    fixed-step ``method`` (default ``"rk4"``): deterministic per point, no coupling.  ``times=``: a
    fixed-step solver on the log-SNRs of that grid (an infinite end bridged by one DDIM step).
    Deterministic: ``generator`` is used only for the prior draw and ``noise_sampler`` never.
    The callback is called once at the end with ``{"nfe": ...}`` added.
    """
    from torchdiffeq import odeint

    if post_step is not None:
        raise ValueError("probability_flow does not support post_step (use guidance for conditional sampling)")
    if spacing != "log_snr":
        raise ValueError("probability_flow integrates in the log-SNR clock; spacing must be 'log_snr'")
    model = check_model(model)
    rtol = check_positive_float(rtol, "rtol")
    atol = check_positive_float(atol, "atol")
    lam_min = _finite_float(lam_min, "lam_min")
    lam_max = _finite_float(lam_max, "lam_max")
    if not lam_min < lam_max:
        raise ValueError(f"need lam_min < lam_max, got lam_min={lam_min}, lam_max={lam_max}")
    if times is not None and steps is not None:
        raise ValueError("times is a prebuilt grid; do not also give steps")
    fixed = steps is not None or times is not None
    if steps is not None:
        steps = check_steps(steps, model, 0)
    if fixed:
        method = "rk4" if method is None else method
        if method not in _FIXED:
            raise ValueError(f"with steps or times given, method must be a fixed-grid solver {_FIXED}, got {method!r}")
    else:
        method = "dopri5" if method is None else method
        if method in _FIXED:
            raise ValueError(f"method {method!r} is fixed-grid; pass steps=")
    run = prepare(
        "probability_flow", model, x_T, n=n, steps=None if times is not None else 1, t_max=t_max, t_min=t_min,
        t_start=t_start, t_end=t_end, times=times, spacing="auto" if times is not None else "t",
        generator=generator, noise_sampler=noise_sampler, shape=shape, dtype=dtype, device=device,
        finite_coefficients=False, default_steps=1,
    )
    sched = run.model.schedule
    ts, te = run.t[0], run.t[-1]
    f64 = torch.float64
    if times is None:
        la, lb = _log_snr(run, ts), _log_snr(run, te)
        range_lo, range_hi = sched.log_snr_range
        lo = la if math.isfinite(la) else max(lam_min, range_lo)
        hi = lb if math.isfinite(lb) else min(lam_max, range_hi)
        if not lo < hi:
            raise ValueError(
                f"empty log-SNR range [{lo}, {hi}] from t_max (t_start)={ts} to t_min (t_end)={te} after "
                f"clipping an infinite end to lam_min={lam_min} / lam_max={lam_max}; move t_max or t_min"
            )
        nodes = torch.tensor([lo, hi], dtype=f64) if steps is None else torch.linspace(lo, hi, steps + 1, dtype=f64)
        t_nodes = sched.t_from_log_snr(nodes)
        head, tail = not math.isfinite(la), not math.isfinite(lb)
    else:
        lam_grid = sched.log_snr(run.grid)
        head, tail = not math.isfinite(float(lam_grid[0])), not math.isfinite(float(lam_grid[-1]))
        inner = slice(int(head), lam_grid.numel() - int(tail))
        nodes, t_nodes = lam_grid[inner], run.grid[inner]
        if nodes.numel() < 2:
            raise ValueError("times needs at least two points with a finite log-SNR (an infinite end is bridged)")
    x = run.x
    with torch.no_grad():
        if head:
            x = _bridge(run, x, ts, float(t_nodes[0]))
        x = _solve(odeint, _field(run), x, nodes, steps is None and times is None, method, rtol, atol)
        if tail:
            x = _bridge(run, x, float(t_nodes[-1]), te)
    if not bool(torch.isfinite(x).all()):
        raise SamplerDivergedError(
            f"probability_flow: the state became non-finite at t={te} (the model's outputs were finite); "
            "use a tighter rtol/atol or more steps"
        )
    if callback is not None:
        callback({"i": 0, "t": ts, "t_next": te, "x": x, "denoised": None, "nfe": run.nfe})
    ends = [torch.tensor([ts], dtype=f64)] if head else []
    run.grid = torch.cat(ends + [t_nodes.to(f64)] + ([torch.tensor([te], dtype=f64)] if tail else []))
    run.grid[0], run.grid[-1] = ts, te
    n_steps = None if (steps is None and times is None) else run.grid.numel() - 1
    return finish(run, x, return_info, n_steps)


def _log_snr(run: Run, t: float) -> float:
    return float(run.model.schedule.log_snr(torch.tensor(t, dtype=torch.float64)))


def _bridge(run: Run, x: Tensor, t_from: float, t_to: float) -> Tensor:
    """One DDIM (``eta = 0``) step ``t_from -> t_to`` (I16) across a clipped infinite log-SNR end."""
    levels = R.step_levels(run.model.schedule, t_from, t_to)
    k = R.ddim_step(levels, 0.0)
    return float(k.a) * x + float(k.c) * run.denoise(x, t_from)


def _field(run: Run) -> Callable[[Tensor, Tensor], Tensor]:
    """``F(lambda, x)`` of :func:`densityformula.reverse.pf_velocity` (I20), counting evaluations."""

    def rhs(lam: Tensor, y: Tensor) -> Tensor:
        run.nfe += 1
        F, _ = R.pf_velocity(run.model, y, lam.detach().to(torch.float64), trace="none")
        return F

    return rhs


def _solve(
    odeint: Callable[..., Tensor],
    rhs: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    nodes: Tensor,
    adaptive: bool,
    method: str,
    rtol: float,
    atol: float,
) -> Tensor:
    lam_t = nodes.to(dtype=x.dtype, device=x.device)
    try:
        if adaptive:
            n_pts = x.shape[0]
            options = {"norm": lambda e: e.reshape(n_pts, -1).pow(2).mean(1).sqrt().max()}
            sol = odeint(rhs, x, lam_t, method=method, rtol=rtol, atol=atol, options=options)
        else:
            sol = odeint(rhs, x, lam_t, method=method)
    except AssertionError as exc:  # torchdiffeq's step-size underflow / unsorted nodes
        raise SamplerDivergedError(
            f"probability_flow: the ODE solver {method!r} failed ({exc}); loosen rtol/atol or pass steps="
        ) from exc
    return sol[-1]
