"""Time grids, the default sampling interval, priors and argument checks shared by every sampler.

A sampler walks a strictly decreasing grid ``t_0 = t_max > t_1 > ... > t_N = t_min`` of the
model's schedule (``t_max``: the noisy end, where sampling starts; ``t_min``: the data end, where it
stops).  :func:`time_grid` builds it (k-diffusion's ``get_sigmas_*``), :func:`default_times` gives
its default ends for a model (docs/math.md section 10, I24).  The grid and every coefficient on it
are computed once, in float64 on the CPU, and handed to the steps as Python floats, so the samplers
run unchanged on any device and in any floating dtype.
"""
from __future__ import annotations

import math
import warnings
from numbers import Integral
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch

from .._validation import check_full_precision, resolve_device
from ..models import DiffusionModel, check_model, log_snr_interval
from ..schedules import Discrete, LiYan, Schedule

Tensor = torch.Tensor
Callback = Callable[[Dict[str, Any]], None]

SPACINGS = ("auto", "t", "log_snr", "rho", "index")

#: Default log-SNR clip for ends where the schedule's log-SNR is infinite (LiYan at t=1, every VP
#: process at t=0).  -10 is where Ho et al.'s T=1000 linear schedule ends (alpha_bar_T = 4.0e-5).
LAM_MIN = -10.0
LAM_MAX = 10.0


def _finite_float(value: object, name: str) -> float:
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


def _t_of(schedule: Schedule, lam: float) -> float:
    return float(schedule.t_from_log_snr(torch.tensor(lam, dtype=torch.float64)))


def infinite_coefficients(schedule: Schedule, t: float) -> bool:
    """Whether the reverse SDE's drift ``f`` or ``g^2`` (or the log-SNR) is infinite at ``t``
    (LiYan and VPCosine at ``t = 1``), where Euler--Maruyama-type steps cannot start."""
    tt = torch.tensor(t, dtype=torch.float64)
    vals = (float(schedule.drift(tt)), float(schedule.g2(tt)), _lam(schedule, t))
    return not all(math.isfinite(v) for v in vals)


def default_t_start(schedule: Schedule, *, finite_coefficients: bool = True, lam_min: float = LAM_MIN) -> float:
    """``t_max``, or the time where the log-SNR equals ``lam_min`` when ``finite_coefficients`` is
    asked for and the SDE's drift ``f`` or ``g^2`` is infinite at ``t_max`` (LiYan at ``t = 1``)."""
    t = schedule.t_max
    if not finite_coefficients or not infinite_coefficients(schedule, t):
        return t
    lo, _ = schedule.log_snr_range
    return _t_of(schedule, max(lam_min, lo))


def default_times(model: DiffusionModel) -> Tuple[float, float]:
    """``(t_max, t_min)``: where a sampler of ``model`` starts and stops by default (I24).

    The times of :func:`densityformula.models.log_snr_interval` (the model's ``valid_log_snr``
    within its schedule's range) at each end where the model's valid range is finite; at an end
    where the model is valid over the whole schedule (an analytic model: both ends) the schedule's
    own end -- ``schedule.t_min`` at the data end (an infinite log-SNR there is bridged in one
    step) and :func:`default_t_start` at the noisy end (``schedule.t_max``, or log-SNR
    :data:`LAM_MIN` where the reverse SDE's coefficients are infinite at ``t_max``, LiYan and
    VPCosine).  A start with infinite coefficients inside the model's range moves to log-SNR
    :data:`LAM_MIN` likewise.
    """
    model = check_model(model)
    sched = model.schedule
    lo, hi = log_snr_interval(model)  # ValueError if the model's range misses the schedule's
    valid_lo, valid_hi = model.valid_log_snr
    if math.isfinite(valid_lo):
        t_max = _t_of(sched, lo)
        if infinite_coefficients(sched, t_max):
            t_max = _t_of(sched, max(lo, LAM_MIN))
    else:
        t_max = default_t_start(sched)
    t_min = _t_of(sched, hi) if math.isfinite(valid_hi) else sched.t_min
    return t_max, t_min


def resolve_alias(value: Optional[float], alias: Optional[float], name: str, alias_name: str) -> Optional[float]:
    """``value`` or its old name ``alias`` (``ValueError`` when both are given)."""
    if alias is None:
        return value
    if value is not None:
        raise ValueError(f"give {name} or its alias {alias_name}, not both")
    return alias


def warn_outside_valid(model: DiffusionModel, times: Sequence[float], names: Sequence[str]) -> None:
    """``RuntimeWarning`` for every time whose log-SNR lies outside ``model.valid_log_snr`` (I24)."""
    lo, hi = model.valid_log_snr
    for t, name in zip(times, names):
        lam = _lam(model.schedule, t)
        tol = 1e-9 * max(1.0, abs(lam)) if math.isfinite(lam) else 0.0
        if lam < lo - tol or lam > hi + tol:
            warnings.warn(
                f"{name}={t:.6g} has log-SNR {lam:.4g}, outside the model's valid range "
                f"model.valid_log_snr = ({lo:.4g}, {hi:.4g}); the model is used where it was not trained",
                RuntimeWarning,
                stacklevel=4,
            )


def _default_spacing(schedule: Schedule) -> str:
    if isinstance(schedule, Discrete):
        return "index"
    if isinstance(schedule, LiYan):
        return "log_snr"
    return "t"


def time_grid(
    schedule: Union[Schedule, DiffusionModel],
    steps: int,
    *,
    t_max: Optional[float] = None,
    t_min: Optional[float] = None,
    spacing: str = "auto",
    lam_min: float = LAM_MIN,
    lam_max: float = LAM_MAX,
    t_start: Optional[float] = None,
    t_end: Optional[float] = None,
) -> Tensor:
    """A strictly decreasing float64 grid of ``steps + 1`` times from ``t_max`` down to ``t_min``.

    ``schedule``: a :class:`~densityformula.schedules.Schedule` (default ends ``schedule.t_max`` and
    ``schedule.t_min``) or a :class:`~densityformula.models.DiffusionModel` (default ends
    :func:`default_times`, the samplers' defaults).  ``t_start`` /
    ``t_end`` are aliases of ``t_max`` / ``t_min``.  Pass the grid to any sampler as ``times=``.

    Spacings (docs/math.md section 1):

    - ``"t"``: uniform in the schedule's time (Song et al.'s choice for VP, sub-VP and VE; for VE it
      is also uniform in log-SNR, ``lambda = -2 log sigma``).
    - ``"log_snr"``: uniform in ``lambda = log(alpha^2 / sigma^2)``.  An infinite end (LiYan at
      ``t = 1``, VP processes at ``t = 0``) is clipped to ``lam_min`` / ``lam_max`` and the true end
      is kept as an extra grid point, so one step bridges the clipped tail.
    - ``"rho"``: uniform in ``rho = -log alpha^2`` (LiYan: ``u = -log(1 - t)``, where the process is
      the plain OU process ``dX = -X/2 du + dB``; VPLinear: ``B(t)``).  Needs a finite ``rho`` at
      ``t_max``.
    - ``"index"``: for :class:`~densityformula.schedules.Discrete`, integer steps
      ``floor(linspace(t_max, t_min, steps+1) + 1/2)`` (every step when ``steps == T``).
    - ``"auto"``: ``"index"`` for Discrete, ``"log_snr"`` for LiYan, ``"t"`` otherwise.
    """
    t_max = resolve_alias(t_max, t_start, "t_max", "t_start")
    t_min = resolve_alias(t_min, t_end, "t_min", "t_end")
    if isinstance(schedule, DiffusionModel):
        d_max, d_min = default_times(schedule)
        schedule = schedule.schedule
    elif isinstance(schedule, Schedule):
        d_max, d_min = schedule.t_max, schedule.t_min
    else:
        raise TypeError(f"schedule must be a Schedule or a DiffusionModel, got {type(schedule).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    steps = int(steps)
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    ts = d_max if t_max is None else _finite_float(t_max, "t_max (t_start)")
    te = d_min if t_min is None else _finite_float(t_min, "t_min (t_end)")
    if not schedule.t_min <= te < ts <= schedule.t_max:
        raise ValueError(
            f"need schedule.t_min <= t_min < t_max <= schedule.t_max = [{schedule.t_min}, {schedule.t_max}], "
            f"got t_max (t_start)={ts}, t_min (t_end)={te}"
        )
    lam_min = _finite_float(lam_min, "lam_min")
    lam_max = _finite_float(lam_max, "lam_max")
    if not lam_min < lam_max:
        raise ValueError(f"need lam_min < lam_max, got {lam_min}, {lam_max}")
    if spacing == "auto":
        spacing = _default_spacing(schedule)
    f64 = torch.float64
    if spacing == "index":
        if not isinstance(schedule, Discrete):
            raise ValueError("spacing='index' needs a Discrete schedule")
        if ts != round(ts) or te != round(te):
            raise ValueError(f"spacing='index' needs integer t_max and t_min, got {ts}, {te}")
        if steps > ts - te:
            raise ValueError(
                f"steps={steps} exceeds the number of discrete steps {int(ts - te)} between t_min and t_max"
            )
        grid = torch.floor(torch.linspace(ts, te, steps + 1, dtype=f64) + 0.5)
    elif spacing == "t":
        grid = torch.linspace(ts, te, steps + 1, dtype=f64)
    elif spacing == "rho":
        a2 = schedule.alpha2(torch.tensor([ts, te], dtype=f64))
        if not bool((a2 > 0).all()):
            raise ValueError("spacing='rho' needs alpha > 0 at t_max (t_start); pass a smaller t_max")
        rho = torch.linspace(float(-torch.log(a2[0])), float(-torch.log(a2[1])), steps + 1, dtype=f64)
        grid = _rho_to_t(schedule, rho, ts, te)
    else:  # log_snr
        grid = _log_snr_grid(schedule, steps, ts, te, lam_min, lam_max)
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"the {spacing!r} grid with steps={steps} is not strictly decreasing; use fewer steps")
    return grid


def _log_snr_grid(schedule: Schedule, steps: int, ts: float, te: float, lam_min: float, lam_max: float) -> Tensor:
    """Uniform in log-SNR; an infinite end is clipped and kept as an extra (bridging) point."""
    f64 = torch.float64
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
    mid = schedule.t_from_log_snr(torch.linspace(lo, hi, inner, dtype=f64))
    head_t = [torch.tensor([ts], dtype=f64)] if head else []
    tail_t = [torch.tensor([te], dtype=f64)] if tail else []
    grid = torch.cat(head_t + [mid] + tail_t)
    grid[0], grid[-1] = ts, te
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


def check_times(schedule: Schedule, times: object, name: str = "times") -> Tensor:
    """A user's grid ``times`` as a float64 CPU tensor: 1-d, at least 2 points, strictly decreasing,
    inside ``[schedule.t_min, schedule.t_max]``."""
    if isinstance(times, Tensor):
        tt = times.detach().to(device="cpu", dtype=torch.float64)
    elif isinstance(times, (list, tuple)):
        tt = torch.as_tensor(times, dtype=torch.float64)
    else:
        raise TypeError(
            f"{name} must be a 1-d tensor of times (e.g. from sampling.time_grid), got {type(times).__name__}"
        )
    if tt.ndim != 1 or tt.numel() < 2:
        raise ValueError(f"{name} must be a 1-d grid of at least 2 times, got shape {tuple(tt.shape)}")
    if not bool(torch.isfinite(tt).all()):
        raise ValueError(f"{name} contains NaN or inf")
    if not bool((tt[1:] < tt[:-1]).all()):
        raise ValueError(f"{name} must be strictly decreasing (from t_max, the noisy end, to t_min)")
    if float(tt[-1]) < schedule.t_min or float(tt[0]) > schedule.t_max:
        raise ValueError(
            f"{name} must lie in [{schedule.t_min}, {schedule.t_max}], got [{float(tt[-1])}, {float(tt[0])}]"
        )
    return tt


def infer_dtype_device(
    model: DiffusionModel, dtype: Optional[torch.dtype], device: Optional[Union[str, torch.device]]
) -> Tuple[torch.dtype, torch.device]:
    """``dtype``/``device`` when given, else the model's (``model.dtype``/``model.device``, the
    optional attributes of the model contract), else float64 on the CPU."""
    if dtype is None:
        dtype = getattr(model, "dtype", None)
        if not isinstance(dtype, torch.dtype):
            dtype = torch.float64
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if device is None:
        device = getattr(model, "device", None)
        if device is None:
            return dtype, torch.device("cpu")
    # ValueError for a CUDA / MPS device that is not available, or the meta device
    return dtype, resolve_device(device, "device")


def model_shape(model: DiffusionModel) -> Tuple[int, ...]:
    """The per-point shape ``(d,)`` of a model: ``model.d`` or ``model.target.d`` (optional
    attributes of the model contract)."""
    d = getattr(model, "d", None)
    target = getattr(model, "target", None)
    if d is None and target is not None:
        d = getattr(target, "d", None)
    if d is None:
        raise ValueError("cannot infer the data shape from the model; pass x_T or shape=")
    return (int(d),)


def prior_sample(
    model: DiffusionModel,
    n: int,
    *,
    t: Optional[float] = None,
    shape: Optional[Union[int, Sequence[int]]] = None,
    generator: Optional[torch.Generator] = None,
    dtype: Optional[torch.dtype] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> Tensor:
    """``n`` draws of the sampler prior ``N(0, (alpha_t^2 + sigma_t^2) I)`` at ``t`` (default ``t_max``).

    For VP processes ``alpha^2 + sigma^2 = 1`` (Song et al.'s ``N(0, I)``); for VE it is
    ``1 + sigma_max^2`` (Song et al. use ``sigma_max^2``).  It matches the true law of ``X_t``
    (docs/math.md I2) when ``X_0`` has zero mean and identity covariance; otherwise the mismatch is
    ``alpha_t^2 (Cov X_0 - I)``, which is ``4.5e-5`` relative at log-SNR -10.  Pass ``x_T`` drawn
    from ``target.marginal(schedule, t)`` to remove it.
    """
    model = check_model(model)
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    schedule = model.schedule
    t = schedule.t_max if t is None else _finite_float(t, "t")
    if shape is None:
        shp = model_shape(model)
    elif isinstance(shape, Integral):
        shp = (int(shape),)
    else:
        shp = tuple(int(s) for s in shape)
    if not shp or any(s < 1 for s in shp):
        raise ValueError(f"shape must be a non-empty tuple of positive ints, got {shape!r}")
    dt, dev = infer_dtype_device(model, dtype, device)
    tt = torch.tensor(t, dtype=torch.float64)
    scale = math.sqrt(float(schedule.alpha2(tt)) + float(schedule.sigma2(tt)))
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return scale * torch.randn((int(n),) + shp, generator=generator, dtype=dt, device=dev)


def check_x(x: object, name: str = "x_T") -> Tensor:
    """``x`` if it is a finite floating tensor of shape ``(n, ...)``, else ``TypeError``/``ValueError``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, ...), got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    if x.is_meta:
        raise ValueError(f"{name} is a meta tensor (no values); pass a tensor on 'cpu' or 'cuda'")
    check_full_precision(x, name)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n, ...) with n >= 1, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def check_x_shape(model: DiffusionModel, shape: Any, name: str) -> None:
    """``ValueError`` naming ``name`` when the per-point ``shape`` (of ``x_T``, or the ``shape=``
    argument) is not the model's ``(d,)`` (``model.d`` or ``model.target.d``); nothing when the
    model states no ``d``."""
    try:
        want = model_shape(model)
    except (ValueError, TypeError):
        return
    if isinstance(shape, Integral):
        got: Tuple[int, ...] = (int(shape),)
    else:
        try:
            got = tuple(int(s) for s in shape)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a tuple of ints, got {shape!r}") from exc
    if got != want:
        per_point = f"(n, {', '.join(str(v) for v in want)})" if name == "x_T" else str(want)
        shown = f"(n, {', '.join(str(v) for v in got)})" if name == "x_T" else str(got)
        raise ValueError(f"{name} must have shape {per_point} for this model (its d = {want[0]}), got {shown}")
