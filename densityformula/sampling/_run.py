"""What every sampler shares (private): argument handling, the step loop, noise, the report.

A sampler is ``sampler(model, x_T=None, *, n, steps, t_max, t_min, times, spacing, generator,
noise_sampler, callback, post_step, shape, dtype, device, progress, return_info, **specific)``
(k-diffusion's ``sample_*(model, x, sigmas, ..., noise_sampler=...)`` is the pattern).  Its steps
are ``x_s = a x_t + c out(x_t) + sqrt(var) z`` with coefficients from :mod:`densityformula.reverse`
(docs/math.md section 8) and ``out`` the model's denoiser or score; this module only runs them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, Callable, List, Literal, Optional, Protocol, Tuple, Union, cast, overload, runtime_checkable

import torch

from .._validation import check_float_dtype, check_int, resolve_device
from ..models import DiffusionModel, check_model, checked
from ..reverse import StepCoefficients
from ..schedules import Discrete
from ._grid import (
    Callback,
    check_times,
    check_x,
    check_x_shape,
    default_times,
    infinite_coefficients,
    prior_sample,
    resolve_alias,
    time_grid,
    warn_outside_valid,
)

Tensor = torch.Tensor
PostStep = Callable[[Tensor, float], Tensor]
#: ``noise_sampler(x, i) -> z``: the standard normal draw, shaped like ``x``, for a step of grid
#: index ``i`` (k-diffusion's ``noise_sampler``); called once per random draw of the step.
NoiseSampler = Callable[[Tensor, int], Tensor]
Device = Optional[Union[str, torch.device]]


@dataclass(frozen=True)
class SamplerInfo:
    """Where a sampler actually ran (``return_info=True``), docs/math.md section 10 (I24).

    Attributes:
        t_max: the time it started at (noisy end).
        t_min: the time it stopped at (data end).
        log_snr_interval: ``(lambda(t_max), lambda(t_min))`` (an infinite end was bridged in one step).
        nfe: number of model evaluations.
        steps: number of steps of the grid (``None`` for an adaptive ODE solver).
        times: the grid, float64 (for an adaptive ODE solver: its two ends).
    """

    t_max: float
    t_min: float
    log_snr_interval: Tuple[float, float]
    nfe: int
    steps: Optional[int]
    times: Tensor = field(repr=False)

    def __getitem__(self, key: str) -> object:
        """``info["t_max"]`` etc., like ``Estimate.extras``."""
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)


SamplerOutput = Union[Tensor, Tuple[Tensor, SamplerInfo]]


class SamplerDivergedError(FloatingPointError, ValueError):
    """A sampler's state became non-finite although every model output was finite (too few or too
    large steps for the process).  A ``FloatingPointError`` (as before) and a ``ValueError`` (bad
    arguments: the grid); a NaN or inf from the model itself is a
    :class:`~densityformula.models.ModelOutputError` instead, naming the model call and the time."""


@runtime_checkable
class Sampler(Protocol):
    """The type of every sampler (``SAMPLERS`` holds them by name): called as
    ``sampler(model, x_T=None, **arguments)``, it returns the samples, or ``(samples, info)`` with
    ``return_info=True``; its properties:

    ``stochastic``: it draws noise at its steps (``ddim`` only when ``eta > 0``);
    ``step_based``: it walks a grid of steps and accepts ``post_step`` (not the adaptive ODE).
    """

    stochastic: bool
    step_based: bool
    __name__: str

    @overload
    def __call__(
        self, model: DiffusionModel, x_T: Optional[Tensor] = None, *, return_info: Literal[False] = False,
        **kwargs: Any,
    ) -> Tensor: ...

    @overload
    def __call__(
        self, model: DiffusionModel, x_T: Optional[Tensor] = None, *, return_info: Literal[True], **kwargs: Any
    ) -> Tuple[Tensor, SamplerInfo]: ...


def sampler(*, stochastic: bool, step_based: bool) -> Callable[[Callable[..., SamplerOutput]], Sampler]:
    """Decorator: record a sampler's properties as attributes, append the shared docs, and type it
    as a :class:`Sampler` (its parameters stay those of the function, checked when called)."""

    def wrap(fn: Callable[..., SamplerOutput]) -> Sampler:
        fn.stochastic = stochastic  # type: ignore[attr-defined]
        fn.step_based = step_based  # type: ignore[attr-defined]
        fn.__doc__ = (fn.__doc__ or "") + COMMON_DOC
        return cast(Sampler, fn)

    return wrap


COMMON_DOC = """
    Args (shared by every sampler):
        model: a :class:`~densityformula.models.DiffusionModel`; its ``schedule`` sets the process.
        x_T: ``(n, ...)`` starting points at ``t_max``; or ``None`` to draw ``n`` from
            :func:`prior_sample`.  dtype and device follow ``x_T`` (or ``dtype``/``device``, else the
            model's).
        n: number of points when ``x_T`` is ``None``.
        steps: number of steps of the grid (:func:`time_grid`).
        t_max, t_min: where sampling starts (noisy end) and stops (data end); aliases ``t_start``,
            ``t_end``.  Defaults: :func:`default_times`, the model's valid log-SNR interval (I24) --
            for an analytic model the schedule's ends (``t_max``, or log-SNR -10 where the SDE's
            coefficients are infinite there, e.g. LiYan).  A ``RuntimeWarning`` when an explicit
            time lies outside ``model.valid_log_snr``.
        times: a prebuilt strictly decreasing grid (e.g. :func:`time_grid`) instead of ``steps``,
            ``t_max``, ``t_min`` and ``spacing``.
        spacing: grid spacing, see :func:`time_grid`.
        generator: ``torch.Generator`` on ``x_T``'s device for every random draw (``None``: torch's
            global generator).
        noise_sampler: ``noise_sampler(x, i) -> z`` replaces the standard normal draws of the steps
            (``i``: grid index of the step); default ``torch.randn`` with ``generator``.
        callback: called after every step with ``{"i", "t", "t_next", "x", "denoised"}``.
        post_step: ``post_step(x, t) -> x`` applied to ``x_T`` and after every step (used by
            replacement inpainting).
        shape: per-point shape for the prior draw (default ``(model.d,)`` or ``(model.target.d,)``).
        progress: show a tqdm bar.
        return_info: also return a :class:`SamplerInfo` (where it started and stopped, NFE).
    Returns:
        samples at ``t_min``, same shape, dtype and device as ``x_T``; with ``return_info``,
        ``(samples, info)``.
    Raises:
        ValueError / TypeError: a bad argument, named in the message (empty input ``n=0`` or an
            ``x_T`` without rows, a meta tensor, an unavailable ``device``, ``t_max == t_min``, ...).
        ModelOutputError: the model returned NaN / inf or a wrong shape, dtype or device (the
            method and the time are named).
        SamplerDivergedError: the state became non-finite although the model's outputs were finite.
"""


def _randn(x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def gaussian_noise(generator: Optional[torch.Generator] = None) -> NoiseSampler:
    """The default ``noise_sampler``: ``torch.randn`` shaped like ``x`` from ``generator``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")

    def noise(x: Tensor, i: int) -> Tensor:
        return _randn(x, generator)

    return noise


def check_steps(steps: Optional[int], model: DiffusionModel, default: int) -> int:
    """``steps``, or ``T`` for a Discrete schedule / ``default`` when ``None``."""
    if steps is None:
        sch = model.schedule
        return sch.T if isinstance(sch, Discrete) else default
    if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    return int(steps)


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


@dataclass
class Run:
    """One sampler run: the model, the state, the grid, the noise source and the counters."""

    name: str
    model: DiffusionModel
    x: Tensor
    grid: Tensor
    noise_sampler: NoiseSampler
    t: List[float]
    nfe: int = 0

    @property
    def N(self) -> int:
        return len(self.t) - 1

    def noise(self, x: Tensor, i: int) -> Tensor:
        z = self.noise_sampler(x, i)
        if not isinstance(z, Tensor) or z.shape != x.shape:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"noise_sampler must return a tensor shaped like x {tuple(x.shape)}, got {got}")
        if z.is_meta or not (z.dtype.is_floating_point or z.dtype in _INT_DTYPES):
            raise TypeError(f"noise_sampler must return a real tensor with values, got dtype {z.dtype} on {z.device}")
        z = z.to(dtype=x.dtype, device=x.device)
        if not bool(torch.isfinite(z).all()):
            raise ValueError(f"noise_sampler returned NaN or inf at grid index i={i} (t={self.t[i]})")
        return z

    def denoise(self, x: Tensor, t: float) -> Tensor:
        self.nfe += 1
        return self.model.denoise(x, t)

    def score(self, x: Tensor, t: float) -> Tensor:
        self.nfe += 1
        return self.model.score(x, t)

    def info(self, steps: Optional[int]) -> SamplerInfo:
        sched = self.model.schedule
        t0, t1 = float(self.grid[0]), float(self.grid[-1])
        lam = sched.log_snr(torch.tensor([t0, t1], dtype=torch.float64))
        return SamplerInfo(t0, t1, (float(lam[0]), float(lam[1])), self.nfe, steps, self.grid.clone())


def prepare(
    name: str,
    model: object,
    x_T: Optional[Tensor],
    *,
    n: Optional[int],
    steps: Optional[int],
    t_max: Optional[float],
    t_min: Optional[float],
    t_start: Optional[float],
    t_end: Optional[float],
    times: Optional[Tensor],
    spacing: str,
    generator: Optional[torch.Generator],
    noise_sampler: Optional[NoiseSampler],
    shape: Any,
    dtype: Optional[torch.dtype],
    device: Device,
    finite_coefficients: bool,
    default_steps: int,
) -> Run:
    """Check the shared arguments, build the grid, draw ``x_T``: a :class:`Run` ready to step.

    The model goes behind the model-call boundary here, once (:func:`densityformula.models.checked`):
    every output a step uses is checked for ``x``'s shape, dtype and device and for finiteness,
    so a NaN from the model is a ``ModelOutputError`` naming the call and the time.  Empty input
    (``n=0``, an ``x_T`` with no rows) is a ``ValueError`` in every sampler.
    """
    model = checked(check_model(model))
    if n is not None:
        n = check_int(n, "n", 1)
    if dtype is not None:
        dtype = check_float_dtype(dtype, "dtype")
    if device is not None:
        device = resolve_device(device, "device")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if noise_sampler is not None and not callable(noise_sampler):
        raise TypeError("noise_sampler must be a callable noise_sampler(x, i) -> Tensor or None")
    schedule = model.schedule
    t_max = resolve_alias(t_max, t_start, "t_max", "t_start")
    t_min = resolve_alias(t_min, t_end, "t_min", "t_end")
    if times is not None:
        given = [k for k, v in (("steps", steps), ("t_max", t_max), ("t_min", t_min)) if v is not None]
        if spacing != "auto":
            given.append("spacing")
        if given:
            raise ValueError(f"times is a prebuilt grid; do not also give {', '.join(given)}")
        grid = check_times(schedule, times)
        warn_outside_valid(model, [float(grid[0]), float(grid[-1])], ["times[0]", "times[-1]"])
    else:
        k = check_steps(steps, model, default_steps)
        explicit = [(t, nm) for t, nm in ((t_max, "t_max"), (t_min, "t_min")) if t is not None]
        if t_max is None or t_min is None:
            d_max, d_min = default_times(model)
            t_max = d_max if t_max is None else t_max
            t_min = d_min if t_min is None else t_min
        grid = time_grid(schedule, k, t_max=t_max, t_min=t_min, spacing=spacing)
        if explicit:
            warn_outside_valid(model, [float(t) for t, _ in explicit], [nm for _, nm in explicit])
    if finite_coefficients and infinite_coefficients(schedule, float(grid[0])):
        raise ValueError(
            f"the reverse SDE's coefficients are infinite at t_max (t_start)={float(grid[0])}; "
            "pass a smaller t_max (the default, default_times(model), avoids it)"
        )
    if x_T is None:
        if n is None:
            raise ValueError("give x_T or n")
        if shape is not None:
            check_x_shape(model, shape, "shape")
        x_T = prior_sample(model, n, t=float(grid[0]), shape=shape, generator=generator, dtype=dtype, device=device)
    else:
        check_x(x_T, "x_T")
        check_x_shape(model, x_T.shape[1:], "x_T")
        if n is not None and n != x_T.shape[0]:
            raise ValueError(f"n={n} does not match x_T's batch size {x_T.shape[0]}")
        if dtype is not None and dtype != x_T.dtype:
            raise TypeError(f"dtype={dtype} does not match x_T's dtype {x_T.dtype}")
        if device is not None and torch.device(device).type != x_T.device.type:
            raise ValueError(f"device={device} does not match x_T's device {x_T.device}")
    noise = noise_sampler if noise_sampler is not None else gaussian_noise(generator)
    return Run(name, model, x_T, grid, noise, grid.tolist())


def coefficient_lists(coefs: StepCoefficients) -> Tuple[List[float], List[float], List[float]]:
    """The float64 step coefficients as Python floats (the steps run on any device and dtype)."""
    return coefs.a.tolist(), coefs.c.tolist(), coefs.var.tolist()


Step = Callable[[int, Tensor], Tuple[Tensor, Optional[Tensor]]]


def linear_step(run: Run, coefs: StepCoefficients, out: str) -> Step:
    """The step ``x_{i+1} = a_i x_i + c_i out(x_i, t_i) + sqrt(var_i) z`` (``out``: ``"denoise"`` or
    ``"score"``); noise is drawn only where ``var_i > 0``."""
    a, c, v = coefficient_lists(coefs)
    evaluate = run.denoise if out == "denoise" else run.score

    def step(i: int, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        y = evaluate(x, run.t[i])
        x_next = a[i] * x + c[i] * y
        if v[i] > 0.0:
            x_next = x_next + math.sqrt(v[i]) * run.noise(x, i)
        return x_next, (y if out == "denoise" else None)

    return step


def _check_finite(x: Tensor, name: str, t: float) -> None:
    if not bool(torch.isfinite(x).all()):
        raise SamplerDivergedError(
            f"{name}: the state became non-finite at t={t} (the model's outputs were finite); "
            "use more steps (steps=) or a finer grid (times=)"
        )


def _post(post_step: PostStep, x: Tensor, t: float) -> Tensor:
    out = post_step(x, t)
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"post_step must return a tensor shaped like x {tuple(x.shape)}, got {got} at t={t}")
    return out


def execute(
    run: Run,
    step: Step,
    callback: Optional[Callback],
    post_step: Optional[PostStep],
    progress: bool,
    return_info: bool,
) -> SamplerOutput:
    """Walk the grid: ``post_step`` on ``x_T``, then every step, ``post_step``, finiteness check, callback."""
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable or None")
    x = run.x
    if post_step is not None:
        if not callable(post_step):
            raise TypeError("post_step must be callable or None")
        x = _post(post_step, x, run.t[0])
    it: Any = range(run.N)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=run.name, leave=False)
    with torch.no_grad():  # no autograd graph across steps (guidance re-enables it locally)
        for i in it:
            x, denoised = step(i, x)
            if post_step is not None:
                x = _post(post_step, x, run.t[i + 1])
            _check_finite(x, run.name, run.t[i + 1])
            if callback is not None:
                callback({"i": i, "t": run.t[i], "t_next": run.t[i + 1], "x": x, "denoised": denoised})
    return finish(run, x, return_info, run.N)


def finish(run: Run, x: Tensor, return_info: bool, steps: Optional[int]) -> SamplerOutput:
    """``x``, or ``(x, info)`` with ``return_info``."""
    if return_info:
        return x, run.info(steps)
    return x

