"""Time grids, priors and argument handling shared by every sampler (private).

A sampler walks a strictly decreasing grid ``t_0 = t_start > t_1 > ... > t_N = t_end`` of the
model's schedule.  The grid and every coefficient on it are computed once, in float64 on the
CPU, and handed to the step functions as Python floats, so the samplers run unchanged on any
device and in any floating dtype.
"""
from __future__ import annotations

import math
from numbers import Integral
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch

from ..schedules import Discrete, LiYan, Schedule

Tensor = torch.Tensor
Callback = Callable[[Dict[str, Any]], None]

SPACINGS = ("auto", "t", "log_snr", "rho", "index")

#: Default log-SNR clip for ends where the schedule's log-SNR is infinite (LiYan at t=1, every VP
#: process at t=0).  -10 is where Ho et al.'s T=1000 linear schedule ends (alpha_bar_T = 4.0e-5).
LAM_MIN = -10.0
LAM_MAX = 10.0


def _finite_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
        isinstance(value, Tensor) and value.numel() == 1
    ):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def _lam(schedule: Schedule, t: float) -> float:
    return float(schedule.log_snr(torch.tensor(t, dtype=torch.float64)))


def default_t_start(schedule: Schedule, *, finite_coefficients: bool = True, lam_min: float = LAM_MIN) -> float:
    """``t_max``, or the time where the log-SNR equals ``lam_min`` when ``finite_coefficients`` is
    asked for and the SDE's drift ``f`` or ``g^2`` is infinite at ``t_max`` (LiYan at ``t = 1``)."""
    t = schedule.t_max
    if not finite_coefficients:
        return t
    tt = torch.tensor(t, dtype=torch.float64)
    if math.isfinite(float(schedule.drift(tt))) and math.isfinite(float(schedule.g2(tt))) and math.isfinite(
        _lam(schedule, t)
    ):
        return t
    lo, _ = schedule.log_snr_range
    return float(schedule.t_from_log_snr(torch.tensor(max(lam_min, lo), dtype=torch.float64)))


def _default_spacing(schedule: Schedule) -> str:
    if isinstance(schedule, Discrete):
        return "index"
    if isinstance(schedule, LiYan):
        return "log_snr"
    return "t"


def time_grid(
    schedule: Schedule,
    steps: int,
    *,
    t_start: Optional[float] = None,
    t_end: Optional[float] = None,
    spacing: str = "auto",
    lam_min: float = LAM_MIN,
    lam_max: float = LAM_MAX,
) -> Tensor:
    """A strictly decreasing float64 grid of ``steps + 1`` times from ``t_start`` to ``t_end``.

    Spacings (docs/math.md section 1):

    - ``"t"``: uniform in the schedule's time (Song et al.'s choice for VP, sub-VP and VE; for VE it
      is also uniform in log-SNR, ``lambda = -2 log sigma``).
    - ``"log_snr"``: uniform in ``lambda = log(alpha^2 / sigma^2)``.  An infinite end (LiYan at
      ``t = 1``, VP processes at ``t = 0``) is clipped to ``lam_min`` / ``lam_max`` and the true end
      is kept as an extra grid point, so one step bridges the clipped tail.
    - ``"rho"``: uniform in ``rho = -log alpha^2`` (LiYan: ``u = -log(1 - t)``, where the process is
      the plain OU process ``dX = -X/2 du + dB``; VPLinear: ``B(t)``).  Needs a finite ``rho`` at
      ``t_start``.
    - ``"index"``: for :class:`~densityformula.schedules.Discrete`, integer steps
      ``floor(linspace(T, 0, steps+1) + 1/2)`` (every step when ``steps == T``).
    - ``"auto"``: ``"index"`` for Discrete, ``"log_snr"`` for LiYan, ``"t"`` otherwise.

    Defaults: ``t_start = t_max`` and ``t_end = t_min``.
    """
    if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    steps = int(steps)
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    ts = schedule.t_max if t_start is None else _finite_float(t_start, "t_start")
    te = schedule.t_min if t_end is None else _finite_float(t_end, "t_end")
    if not schedule.t_min <= te < ts <= schedule.t_max:
        raise ValueError(
            f"need t_min <= t_end < t_start <= t_max = [{schedule.t_min}, {schedule.t_max}], "
            f"got t_start={ts}, t_end={te}"
        )
    lam_min = _finite_float(lam_min, "lam_min")
    lam_max = _finite_float(lam_max, "lam_max")
    if not lam_min < lam_max:
        raise ValueError(f"need lam_min < lam_max, got {lam_min}, {lam_max}")
    if spacing == "auto":
        spacing = _default_spacing(schedule)
    f64 = dict(dtype=torch.float64)
    if spacing == "index":
        if not isinstance(schedule, Discrete):
            raise ValueError("spacing='index' needs a Discrete schedule")
        if ts != round(ts) or te != round(te):
            raise ValueError(f"spacing='index' needs integer t_start and t_end, got {ts}, {te}")
        if steps > ts - te:
            raise ValueError(f"steps={steps} exceeds the number of discrete steps {int(ts - te)} between t_end and t_start")
        grid = torch.floor(torch.linspace(ts, te, steps + 1, **f64) + 0.5)
    elif spacing == "t":
        grid = torch.linspace(ts, te, steps + 1, **f64)
    elif spacing == "rho":
        a2 = schedule.alpha2(torch.tensor([ts, te], **f64))
        if not bool((a2 > 0).all()):
            raise ValueError("spacing='rho' needs alpha > 0 at t_start; pass a smaller t_start")
        rho = torch.linspace(float(-torch.log(a2[0])), float(-torch.log(a2[1])), steps + 1, **f64)
        grid = _rho_to_t(schedule, rho, ts, te)
    else:  # log_snr
        la, lb = _lam(schedule, ts), _lam(schedule, te)
        head = not math.isfinite(la)
        tail = not math.isfinite(lb)
        lo = max(la, lam_min) if head else la
        hi = min(lb, lam_max) if tail else lb
        inner = steps + 1 - int(head) - int(tail)
        if inner < 2 or not lo < hi:
            raise ValueError(
                f"steps={steps} is too few for a log-SNR grid that bridges infinite ends "
                f"(log-SNR from {la} to {lb}, clipped to [{lo}, {hi}])"
            )
        lam = torch.linspace(lo, hi, inner, **f64)
        mid = schedule.t_from_log_snr(lam)
        parts = ([torch.tensor([ts], **f64)] if head else []) + [mid] + ([torch.tensor([te], **f64)] if tail else [])
        grid = torch.cat(parts)
        grid[0], grid[-1] = ts, te
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"the {spacing!r} grid with steps={steps} is not strictly decreasing; use fewer steps")
    return grid


def _rho_to_t(schedule: Schedule, rho: Tensor, ts: float, te: float) -> Tensor:
    """Times where ``-log alpha^2 = rho`` (bisection in float64; monotone for every VP schedule)."""
    lo = torch.full_like(rho, te)
    hi = torch.full_like(rho, ts)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        r = -torch.log(schedule.alpha2(mid))
        up = r > rho
        hi = torch.where(up, mid, hi)
        lo = torch.where(up, lo, mid)
    t = 0.5 * (lo + hi)
    t[0], t[-1] = ts, te
    return t


def infer_dtype_device(model: Any, dtype: Optional[torch.dtype], device: Any) -> Tuple[torch.dtype, torch.device]:
    """``dtype``/``device`` when given, else the model's (``model.dtype``/``model.device``), else
    float64 on the CPU."""
    if dtype is None:
        dtype = getattr(model, "dtype", None)
        if not isinstance(dtype, torch.dtype):
            dtype = torch.float64
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if device is None:
        device = getattr(model, "device", None)
    try:
        device = torch.device(device) if device is not None else torch.device("cpu")
    except (TypeError, RuntimeError) as exc:
        raise ValueError(f"device must be a torch device, got {device!r}") from exc
    return dtype, device


def model_shape(model: Any) -> Tuple[int, ...]:
    """The per-point shape ``(d,)`` of a model: ``model.d`` or ``model.target.d``."""
    d = getattr(model, "d", None)
    if d is None and getattr(model, "target", None) is not None:
        d = getattr(model.target, "d", None)
    if d is None:
        raise ValueError("cannot infer the data shape from the model; pass x_T or shape=")
    return (int(d),)


def prior_sample(
    model: Any,
    n: int,
    *,
    t: Optional[float] = None,
    shape: Optional[Union[int, Sequence[int]]] = None,
    generator: Optional[torch.Generator] = None,
    dtype: Optional[torch.dtype] = None,
    device: Any = None,
) -> Tensor:
    """``n`` draws of the sampler prior ``N(0, (alpha_t^2 + sigma_t^2) I)`` at ``t`` (default ``t_max``).

    For VP processes ``alpha^2 + sigma^2 = 1`` (Song et al.'s ``N(0, I)``); for VE it is
    ``1 + sigma_max^2`` (Song et al. use ``sigma_max^2``).  It matches the true law of ``X_t``
    (docs/math.md I2) when ``X_0`` has zero mean and identity covariance; otherwise the mismatch is
    ``alpha_t^2 (Cov X_0 - I)``, which is ``4.5e-5`` relative at log-SNR -10.  Pass ``x_T`` drawn
    from ``target.marginal(schedule, t)`` to remove it.
    """
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    schedule = model.schedule
    t = schedule.t_max if t is None else _finite_float(t, "t")
    if shape is None:
        shape = model_shape(model)
    elif isinstance(shape, Integral):
        shape = (int(shape),)
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive ints, got {shape!r}")
    dtype, device = infer_dtype_device(model, dtype, device)
    tt = torch.tensor(t, dtype=torch.float64)
    scale = math.sqrt(float(schedule.alpha2(tt)) + float(schedule.sigma2(tt)))
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return scale * torch.randn((int(n),) + shape, generator=generator, dtype=dtype, device=device)


def check_x(x: Any, name: str = "x_T") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, ...), got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n, ...) with n >= 1, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x
