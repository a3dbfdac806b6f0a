"""Consistency models, checked exactly on Gaussian mixtures (docs/math.md I44).

The *consistency function* of a diffusion model is its probability-flow map from time ``t`` to the
data end ``t_min`` (Song, Dhariwal, Chen & Sutskever 2023):

    f*(x_t, t) = x(t_min),   x(.) the probability-flow solution through (x_t, t)   (I44),

so ``f*(x, t_min) = x`` (boundary condition) and ``f*(x_t, t) = f*(x_s, s)`` along every PF
trajectory (self-consistency).  For an :class:`~densityformula.models.AnalyticModel` of a mixture
the flow is the exact one, so ``f*`` pushes ``q_t`` onto ``q_{t_min}`` exactly.

- :func:`exact_consistency` / :class:`ExactConsistency`: ``f*`` by integrating the probability-flow
  field of :func:`densityformula.reverse.pf_velocity` (I20) in the log-SNR clock with torchdiffeq,
  every point from its own time, at a tight per-point tolerance;
- :func:`noise_level`, :func:`discretization`: the noise level ``sigma/alpha = exp(-lambda/2)`` and
  Karras et al.'s ``rho``-spacing of ``N`` steps in it;
- :func:`euler_step`, :func:`teacher_step`: one probability-flow step between adjacent times, Euler in
  the noise-level clock (the DDIM step, I16) or Heun (EDM's second-order correction);
- :class:`ConsistencyMLP`: a small network with the skip parameterization
  ``f = c_skip(t) x + c_out(t) F(c_in(t) x, lambda)``, ``c_skip(t_min) = 1``, ``c_out(t_min) = 0``;
- :func:`cd_loss`, :func:`ct_loss`, :func:`train_consistency`: consistency distillation (teacher:
  a model's PF step) and consistency training (the one-sample estimate ``x_0`` of the denoiser);
- :func:`multistep_sample`: one-step and multistep consistency sampling (Song et al. Alg. 1);
- :func:`sampler_law_1d`: the exact 1-D law of that sampler for monotone maps (change of variables
  and Gaussian convolution on grids), and its KL from a target.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import reverse as R
from ._validation import (
    TimeLike,
    as_time,
    check_float_dtype,
    check_int,
    check_positive_float,
    check_seed,
    per_point_time,
    resolve_device,
)
from .models import DiffusionModel, check_model, checked, log_snr_embedding
from .schedules import Schedule
from .targets import GaussianMixture
from .training import EMA

Tensor = torch.Tensor
#: a consistency function ``f(x (n, d), t (n,) or scalar) -> (n, d)``
ConsistencyFunction = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "ConsistencyFunction",
    "noise_level",
    "data_end",
    "discretization",
    "exact_consistency",
    "ExactConsistency",
    "euler_step",
    "teacher_step",
    "ConsistencyMLP",
    "cd_loss",
    "ct_loss",
    "ConsistencyTraining",
    "train_consistency",
    "multistep_sample",
    "SamplerLaw1D",
    "sampler_law_1d",
]

_SOLVERS = ("euler", "heun")
#: the default noisy end of a discretization: log-SNR -10 (noise level e^5 = 148, Song et al. use 80),
#: or the schedule's own end where that is less noisy
NOISY_LOG_SNR = -10.0


def _check_schedule(schedule: object, name: str = "schedule") -> Schedule:
    if not isinstance(schedule, Schedule):
        raise TypeError(f"{name} must be a densityformula Schedule, got {type(schedule).__name__}")
    return schedule


def _check_x(x: object, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, d), got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a real floating tensor, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have shape (n, d) with n, d >= 1, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def noise_level(schedule: Schedule, t: TimeLike) -> Tensor:
    """``sigma_t / alpha_t = exp(-lambda(t)/2)`` (float64): the noise level of ``x_t / alpha_t``, which is
    ``x_0 + (sigma/alpha) z``, a variance-exploding process (Karras et al.'s ``sigma``; I44)."""
    schedule = _check_schedule(schedule)
    return torch.exp(-0.5 * schedule.log_snr(schedule.check_time(t, "t")).double())


def data_end(schedule: Schedule, t_min: Optional[float] = None) -> float:
    """The data end ``t_min`` of a consistency function (default ``schedule.t_min``), checked (I44)."""
    schedule = _check_schedule(schedule)
    if t_min is None:
        return float(schedule.t_min)
    if isinstance(t_min, bool) or not isinstance(t_min, (int, float)) or not math.isfinite(float(t_min)):
        raise TypeError(f"t_min must be None or a finite float, got {t_min!r}")
    schedule.check_time(float(t_min), "t_min")
    if not float(t_min) < schedule.t_max:
        raise ValueError(f"t_min must be below the schedule's t_max = {schedule.t_max}, got {t_min}")
    return float(t_min)


def _noisy_end(schedule: Schedule, t_max: Optional[float]) -> float:
    if t_max is None:
        if schedule.log_snr_range[0] >= NOISY_LOG_SNR:
            return float(schedule.t_max)
        return float(schedule.t_from_log_snr(torch.tensor(NOISY_LOG_SNR, dtype=torch.float64)))
    if isinstance(t_max, bool) or not isinstance(t_max, (int, float)) or not math.isfinite(float(t_max)):
        raise TypeError(f"t_max must be None or a finite float, got {t_max!r}")
    lam = schedule.log_snr(schedule.check_time(float(t_max), "t_max"))
    if not bool(torch.isfinite(lam)):
        raise ValueError(f"t_max must have a finite log-SNR (alpha > 0), got t_max = {t_max}")
    return float(t_max)


def discretization(
    schedule: Schedule, steps: int, *, t_min: Optional[float] = None, t_max: Optional[float] = None, rho: float = 7.0
) -> Tensor:
    """``N + 1`` increasing times ``t_min = t_0 < ... < t_N = t_max`` of a consistency model (float64, I44).

    Karras et al.'s spacing in the noise level ``s = sigma/alpha`` (:func:`noise_level`):
    ``s_i = (s_min^(1/rho) + i/N (s_max^(1/rho) - s_min^(1/rho)))^rho``, ``t_i = t(lambda = -2 log s_i)``.
    ``t_max`` defaults to the schedule's noisy end, or the time of log-SNR :data:`NOISY_LOG_SNR`
    where the schedule goes further (VPLinear: ``lambda(1) = -10.05``; VPCosine, LiYan: ``-inf``).
    ``steps = N`` is the number of intervals (Song et al.'s ``N - 1``).
    """
    schedule = _check_schedule(schedule)
    N = check_int(steps, "steps", 1)
    rho = check_positive_float(rho, "rho")
    lo_t, hi_t = data_end(schedule, t_min), _noisy_end(schedule, t_max)
    if not lo_t < hi_t:
        raise ValueError(f"need t_min < t_max, got t_min = {lo_t}, t_max = {hi_t}")
    s_lo, s_hi = float(noise_level(schedule, lo_t)), float(noise_level(schedule, hi_t))
    i = torch.arange(N + 1, dtype=torch.float64) / N
    s = (s_lo ** (1.0 / rho) + i * (s_hi ** (1.0 / rho) - s_lo ** (1.0 / rho))) ** rho
    t = torch.empty(N + 1, dtype=torch.float64)
    t[1:-1] = schedule.t_from_log_snr(-2.0 * torch.log(s[1:-1]))
    t[0], t[-1] = lo_t, hi_t
    if not bool((t[1:] > t[:-1]).all()):
        raise ValueError(f"steps = {N} gives times that are not strictly increasing on {schedule!r}; use fewer steps")
    return t


# ------------------------------------------------------------------------------------------------
# the exact consistency function: the probability-flow map to the data end
# ------------------------------------------------------------------------------------------------
def exact_consistency(
    model: DiffusionModel,
    x: Tensor,
    t: TimeLike,
    *,
    t_min: Optional[float] = None,
    rtol: float = 1e-10,
    atol: float = 1e-10,
    method: str = "dopri5",
) -> Tensor:
    """The consistency function ``f*(x, t) = x(t_min)`` of ``model``: its probability-flow map (I44).

    Every point ``i`` is carried from its own log-SNR ``lambda_i = lambda(t_i)`` to ``lambda(t_min)``
    along the field of :func:`densityformula.reverse.pf_velocity` (I20).  One torchdiffeq solve in a
    shared clock ``u in [0, 1]`` with ``lambda_i(u) = lambda_i + u (lambda_end - lambda_i)``, so
    ``dx_i/du = (lambda_end - lambda_i) F(x_i, lambda_i(u))``; the error norm is the maximum over
    points of each point's RMS error, so every point meets ``rtol``/``atol`` on its own.  Where
    ``lambda(t_min) = +inf`` (VP at ``t = 0``) the solve stops at the schedule's finite clip (25:
    ``sigma^2 = 1.4e-11``) and one DDIM step (I16) bridges to ``t_min``.  Points with ``t = t_min``
    are returned unchanged (the boundary condition).
    """
    from torchdiffeq import odeint

    model = check_model(model)
    x = _check_x(x)
    rtol = check_positive_float(rtol, "rtol")
    atol = check_positive_float(atol, "atol")
    sched = model.schedule
    lo_t = data_end(sched, t_min)
    n = x.shape[0]
    tt = per_point_time(sched.check_time(t, "t").to(torch.float64).cpu(), n)
    if bool((tt < lo_t).any()):
        raise ValueError(f"t must be >= t_min = {lo_t}, got min t = {float(tt.min())}")
    lam_t = sched.log_snr(tt).double()
    if not bool(torch.isfinite(lam_t[tt > lo_t]).all()):
        raise ValueError("t must have a finite log-SNR (alpha_t > 0) wherever t > t_min")
    lam_end_true = float(sched.log_snr(torch.tensor(lo_t, dtype=torch.float64)))
    bridge = not math.isfinite(lam_end_true)
    lam_end = sched.finite_log_snr_range[1] if bridge else lam_end_true
    cm = checked(model)
    out = x.clone()
    active = tt > lo_t
    ode = active & (lam_t < lam_end)
    dev, dt = x.device, x.dtype
    if bool(ode.any()):
        idx = torch.nonzero(ode).squeeze(1)
        lam0 = lam_t[idx]
        span = lam_end - lam0

        def rhs(u: Tensor, y: Tensor) -> Tensor:
            lam = (lam0 + float(u) * span).to(torch.float64)
            F, _ = R.pf_velocity(cm, y, lam.to(dev), trace="none")
            return F * span.to(device=dev, dtype=dt)[:, None]

        k = idx.numel()
        options = {"norm": lambda e: e.reshape(k, -1).pow(2).mean(1).sqrt().max()}
        u = torch.tensor([0.0, 1.0], dtype=dt, device=dev)
        with torch.no_grad():
            sol = odeint(rhs, x[idx.to(dev)], u, method=method, rtol=rtol, atol=atol, options=options)
        out[idx.to(dev)] = sol[-1]
    if bridge and bool(active.any()):
        idx = torch.nonzero(active).squeeze(1)
        t_from = torch.where(ode[idx], sched.t_from_log_snr(torch.tensor(lam_end, dtype=torch.float64)), tt[idx])
        with torch.no_grad():
            out[idx.to(dev)] = euler_step(cm, out[idx.to(dev)], t_from, lo_t)
    return out


class ExactConsistency:
    """``f*`` of a model as a callable ``f(x, t)`` (:func:`exact_consistency`, I44), with a derivative.

    ``derivative(x, t)``: ``df/dx`` of a 1-D map by central differences with step ``fd_step``
    (relative to ``1 + |x|``): error ``O(fd_step^2)`` plus the solver's ``tol / fd_step``.
    """

    def __init__(self, model: DiffusionModel, *, t_min: Optional[float] = None, rtol: float = 1e-10,
                 atol: float = 1e-10, fd_step: float = 1e-4) -> None:
        self.model = check_model(model)
        self.schedule = self.model.schedule
        self.t_min = data_end(self.schedule, t_min)
        self.rtol = check_positive_float(rtol, "rtol")
        self.atol = check_positive_float(atol, "atol")
        self.fd_step = check_positive_float(fd_step, "fd_step")

    def __call__(self, x: Tensor, t: TimeLike) -> Tensor:
        """``f*(x, t)`` (I44)."""
        return exact_consistency(self.model, x, t, t_min=self.t_min, rtol=self.rtol, atol=self.atol)

    def derivative(self, x: Tensor, t: TimeLike) -> Tensor:
        """``d f*/dx`` of a 1-D map, ``(n,)``, by central differences (one solve of ``2n`` points)."""
        x = _check_x(x)
        if x.shape[1] != 1:
            raise ValueError(f"derivative is for 1-D maps; x has d = {x.shape[1]}")
        h = self.fd_step * (1.0 + x.abs())
        tt = per_point_time(as_time(t, "t"), x.shape[0])
        y = self(torch.cat([x + h, x - h]), torch.cat([tt, tt]))
        n = x.shape[0]
        return ((y[:n] - y[n:]) / (2.0 * h))[:, 0]

    def __repr__(self) -> str:
        return f"ExactConsistency({self.model!r}, t_min={self.t_min}, rtol={self.rtol}, atol={self.atol})"


# ------------------------------------------------------------------------------------------------
# one probability-flow step between adjacent times (the teacher of consistency distillation)
# ------------------------------------------------------------------------------------------------
def _times(schedule: Schedule, t: TimeLike, n: int, name: str) -> Tensor:
    return per_point_time(schedule.check_time(t, name).to(torch.float64).cpu(), n, name)


def euler_step(model: Union[DiffusionModel, Schedule], x_t: Tensor, t: TimeLike, s: TimeLike,
               denoised: Optional[Tensor] = None) -> Tensor:
    """One Euler step of the probability flow from ``t`` down to ``s`` in the noise-level clock (I44):

        x_s = (sigma_s/sigma_t) x_t + (alpha_s - (sigma_s/sigma_t) alpha_t) D,   D = model.denoise(x_t, t),

    which is the DDIM step with ``eta = 0`` (:func:`densityformula.reverse.ddim_step`, I16): in
    ``y = x/alpha`` and ``s = sigma/alpha`` the PF ODE is ``dy/ds = (y - D)/s`` and Euler gives
    ``y_s = y_t + (s_s - s_t)(y_t - D)/s_t``.  ``denoised`` replaces ``D`` (then ``model`` may be a
    schedule); with ``D = x_0`` the step is ``alpha_s x_0 + sigma_s z`` exactly, the CT pair.
    """
    sched = model if isinstance(model, Schedule) else check_model(model).schedule
    x_t = _check_x(x_t, "x_t")
    n = x_t.shape[0]
    tt, ss = _times(sched, t, n, "t"), _times(sched, s, n, "s")
    if denoised is None:
        if isinstance(model, Schedule):
            raise ValueError("denoised is required when a schedule is given instead of a model")
        denoised = checked(model).denoise(x_t, tt.to(x_t.device))
    if denoised.shape != x_t.shape:
        raise ValueError(f"denoised must have the shape of x_t {tuple(x_t.shape)}, got {tuple(denoised.shape)}")
    k = R.ddim_step(R.step_levels(sched, tt, ss), 0.0)
    a = k.a.to(device=x_t.device, dtype=x_t.dtype)[:, None]
    c = k.c.to(device=x_t.device, dtype=x_t.dtype)[:, None]
    return a * x_t + c * denoised


def _col(v: Tensor, like: Tensor) -> Tensor:
    """A per-point ``(n,)`` coefficient as an ``(n, 1)`` column in ``like``'s dtype and device."""
    return v.to(device=like.device, dtype=like.dtype)[:, None]


def teacher_step(model: DiffusionModel, x_t: Tensor, t: TimeLike, s: TimeLike, *, solver: str = "heun") -> Tensor:
    """The probability-flow solver of consistency distillation, one step ``t -> s`` (I44).

    ``"euler"``: :func:`euler_step` (first order; local error ``O(h^2)``).  ``"heun"`` (EDM's
    second-order step, local error ``O(h^3)``): with ``d(x, t) = (x/alpha_t - D(x, t)) / s_t`` the
    slope of ``y = x/alpha`` in the noise level ``s``, ``x_E`` the Euler point,

        x_s = x_E + alpha_s (s_s - s_t) (d(x_E, s) - d(x_t, t)) / 2,

    and the Euler step where ``s_s = 0`` (a step onto ``sigma = 0``, as in EDM).
    """
    if solver not in _SOLVERS:
        raise ValueError(f"solver must be one of {_SOLVERS}, got {solver!r}")
    model = check_model(model)
    x_t = _check_x(x_t, "x_t")
    cm = checked(model)
    sched = model.schedule
    n = x_t.shape[0]
    tt, ss = _times(sched, t, n, "t"), _times(sched, s, n, "s")
    dev = x_t.device
    D_t = cm.denoise(x_t, tt.to(dev))
    x_e = euler_step(sched, x_t, tt, ss, D_t)
    if solver == "euler":
        return x_e
    s_t, s_s = noise_level(sched, tt), noise_level(sched, ss)
    ok = s_s > 0
    if not bool(ok.any()):
        return x_e
    a_t, a_s = sched.alpha(tt), sched.alpha(ss)
    D_s = cm.denoise(x_e, torch.where(ok, ss, tt).to(dev))
    d_t = (x_t / _col(a_t, x_t) - D_t) / _col(s_t, x_t)
    d_s = (x_e / _col(a_s, x_t) - D_s) / _col(torch.where(ok, s_s, torch.ones_like(s_s)), x_t)
    x_h = x_e + _col(a_s * (s_s - s_t) / 2.0, x_t) * (d_s - d_t)
    return torch.where(_col(ok.double(), x_t) > 0, x_h, x_e)


# ------------------------------------------------------------------------------------------------
# the network
# ------------------------------------------------------------------------------------------------
class ConsistencyMLP(nn.Module):
    """A consistency model ``f_theta(x, t)`` with Song et al.'s skip parameterization (I44).

    With ``y = x/alpha_t``, the noise level ``s = sigma_t/alpha_t`` (:func:`noise_level`),
    ``s_min = s(t_min)`` and ``sd = sigma_data``:

        f_theta(x, t) = alpha_{t_min} (c_skip y + c_out F_theta(c_in y, lambda(t))),
        c_skip = sd^2 / ((s - s_min)^2 + sd^2),   c_out = sd (s - s_min) / sqrt(sd^2 + s^2),
        c_in = 1 / sqrt(s^2 + sd^2),

    so ``f_theta(x, t_min) = x`` exactly for every ``theta`` (``c_skip = 1``, ``c_out = 0``; the code
    sets them to exactly 1 and 0 at ``t = t_min``).  ``F_theta`` is an MLP of ``c_in y`` and the
    sinusoidal log-SNR features of :func:`densityformula.models.log_snr_embedding`; its layers
    are initialised from ``seed`` (U(+-1/sqrt(fan_in)), PyTorch's default), never the global RNG.
    """

    def __init__(self, schedule: Schedule, d: int, *, t_min: Optional[float] = None, sigma_data: float = 0.5,
                 width: int = 64, depth: int = 2, embed_dim: int = 16, seed: int = 0,
                 dtype: torch.dtype = torch.float32, device: Any = None) -> None:
        super().__init__()
        self.schedule = _check_schedule(schedule)
        self.d = check_int(d, "d", 1)
        self.t_min = data_end(self.schedule, t_min)
        self.sigma_data = check_positive_float(sigma_data, "sigma_data")
        width = check_int(width, "width", 1)
        depth = check_int(depth, "depth", 1)
        self.embed_dim = check_int(embed_dim, "embed_dim", 3)
        seed = check_seed(seed)
        check_float_dtype(dtype)
        dev = resolve_device(device) if device is not None else torch.device("cpu")
        gen = torch.Generator().manual_seed(seed)
        sizes = [self.d + self.embed_dim] + [width] * depth + [self.d]
        layers: List[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            lin = nn.Linear(a, b, device="meta").to_empty(device="cpu")
            bound = 1.0 / math.sqrt(a)
            with torch.no_grad():
                lin.weight.copy_(torch.empty(b, a, dtype=torch.float64).uniform_(-bound, bound, generator=gen))
                lin.bias.copy_(torch.empty(b, dtype=torch.float64).uniform_(-bound, bound, generator=gen))
            layers.append(lin)
            if i < len(sizes) - 2:
                layers.append(nn.SiLU())
        self.net = nn.Sequential(*layers).to(device=dev, dtype=dtype)
        t0 = torch.tensor(self.t_min, dtype=torch.float64)
        self._s_min = float(noise_level(self.schedule, t0))
        self._a_min = float(self.schedule.alpha(t0))

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype."""
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """The parameters' device."""
        return next(self.parameters()).device

    def coefficients(self, t: TimeLike) -> Tuple[Tensor, Tensor, Tensor]:
        """``(c_skip alpha_min/alpha_t, c_out alpha_min, c_in/alpha_t)`` at ``t`` (float64, I44): the
        factors of ``x``, of ``F`` and of the network input ``x``; exactly ``(1, 0, .)`` at ``t_min``."""
        tt = self.schedule.check_time(t, "t").to(torch.float64).cpu()
        s = noise_level(self.schedule, tt)
        sd2 = self.sigma_data**2
        alpha = self.schedule.alpha(tt).double()
        c_skip = sd2 / ((s - self._s_min) ** 2 + sd2) * (self._a_min / alpha)
        c_out = self.sigma_data * (s - self._s_min) / torch.sqrt(sd2 + s**2) * self._a_min
        c_in = 1.0 / (torch.sqrt(s**2 + sd2) * alpha)
        at_min = tt == self.t_min
        c_skip = torch.where(at_min, torch.ones_like(c_skip), c_skip)
        c_out = torch.where(at_min, torch.zeros_like(c_out), c_out)
        return c_skip, c_out, c_in

    def forward(self, x: Tensor, t: TimeLike) -> Tensor:
        """``f_theta(x, t) = c_skip x + c_out F_theta(c_in x, lambda)`` (I44); ``t`` scalar or ``(n,)``."""
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != self.d:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be a tensor of shape (n, {self.d}), got {got}")
        if x.dtype != self.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the network is {self.dtype}; convert with x.to({self.dtype})")
        n = x.shape[0]
        tt = per_point_time(self.schedule.check_time(t, "t").to(torch.float64).cpu(), n)
        c_skip, c_out, c_in = self.coefficients(tt)
        lam = self.schedule.log_snr(tt).double()
        emb = log_snr_embedding(lam, self.embed_dim).to(device=x.device, dtype=x.dtype)
        F: Tensor = self.net(torch.cat([_col(c_in, x) * x, emb], dim=1))
        return _col(c_skip, x) * x + _col(c_out, x) * F


# ------------------------------------------------------------------------------------------------
# consistency distillation and consistency training
# ------------------------------------------------------------------------------------------------
def _check_times(times: object) -> Tensor:
    if not isinstance(times, Tensor) or times.ndim != 1 or times.numel() < 2:
        raise ValueError("times must be a 1-D tensor of at least 2 increasing times (see discretization)")
    tt = times.to(torch.float64).cpu()
    if not bool((tt[1:] > tt[:-1]).all()):
        raise ValueError("times must be strictly increasing (t_0 = t_min < ... < t_N)")
    return tt


def _pairs(schedule: Schedule, x0: Tensor, times: Tensor, generator: Optional[torch.Generator],
           n_idx: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(t_n, t_{n+1}, x_{n+1} = alpha x0 + sigma z, z, n)`` for ``n ~ U{0..N-1}`` (or ``n_idx``)."""
    tt = _check_times(times)
    N = tt.numel() - 1
    m = x0.shape[0]
    if n_idx is None:
        n_idx = torch.randint(0, N, (m,), generator=generator)
    elif not isinstance(n_idx, Tensor) or n_idx.shape != (m,) or bool((n_idx < 0).any()) or bool((n_idx >= N).any()):
        raise ValueError(f"n_idx must be an integer tensor of shape ({m},) with values in [0, {N - 1}]")
    n_idx = n_idx.cpu().long()
    gdev = generator.device if generator is not None else x0.device
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=gdev).to(x0.device)
    t_lo, t_hi = tt[n_idx], tt[n_idx + 1]
    a = schedule.alpha(t_hi).to(device=x0.device, dtype=x0.dtype)[:, None]
    s = schedule.sigma(t_hi).to(device=x0.device, dtype=x0.dtype)[:, None]
    return t_lo, t_hi, a * x0 + s * z, z, n_idx


def _loss(net: ConsistencyFunction, target: ConsistencyFunction, x_hi: Tensor, t_hi: Tensor, x_lo: Tensor,
          t_lo: Tensor, per_point: bool) -> Tensor:
    with torch.no_grad():
        goal = target(x_lo, t_lo)
    diff = net(x_hi, t_hi) - goal
    per = (diff**2).sum(1)
    return per if per_point else per.mean()


def cd_loss(net: ConsistencyFunction, target: ConsistencyFunction, teacher: DiffusionModel, x0: Tensor,
            times: Tensor, *, solver: str = "heun", generator: Optional[torch.Generator] = None,
            n_idx: Optional[Tensor] = None, per_point: bool = False) -> Tensor:
    """Consistency distillation (Song et al. eq. 7 with ``lambda = 1`` and the squared L2 distance; I44):

        L_CD = E ||f_theta(x_{n+1}, t_{n+1}) - f_target(x_hat_n, t_n)||^2,
        x_{n+1} = alpha_{n+1} x_0 + sigma_{n+1} z,   x_hat_n = teacher PF step t_{n+1} -> t_n,

    ``n ~ U{0, ..., N-1}``, ``x_0`` the data batch (in ``net``'s dtype), the teacher step
    :func:`teacher_step` of ``teacher`` (in the teacher's dtype), ``f_target`` under ``no_grad``.
    ``per_point``: the ``(m,)`` per-point terms instead of their mean.
    """
    x0 = _check_x(x0, "x0")
    teacher = check_model(teacher, "teacher")
    sched = teacher.schedule
    t_lo, t_hi, x_hi, _, _ = _pairs(sched, x0, times, generator, n_idx)
    t_dtype = getattr(teacher, "dtype", x0.dtype)
    t_device = getattr(teacher, "device", x0.device)
    x_lo = teacher_step(teacher, x_hi.to(device=t_device, dtype=t_dtype), t_hi, t_lo, solver=solver)
    return _loss(net, target, x_hi, t_hi, x_lo.to(device=x0.device, dtype=x0.dtype), t_lo, per_point)


def ct_loss(net: ConsistencyFunction, target: ConsistencyFunction, schedule: Schedule, x0: Tensor, times: Tensor,
            *, generator: Optional[torch.Generator] = None, n_idx: Optional[Tensor] = None,
            per_point: bool = False) -> Tensor:
    """Consistency training (Song et al. eq. 10; I44): :func:`cd_loss` with the Euler teacher whose
    denoiser is the one-sample estimate ``x_0`` (score estimate ``-(x_t - alpha x_0)/sigma^2``), so

        x_hat_n = alpha_n x_0 + sigma_n z,   the same ``z`` as ``x_{n+1} = alpha_{n+1} x_0 + sigma_{n+1} z``,

    no teacher model; its gradient agrees with CD's (Euler, exact score) to first order in the step.
    """
    schedule = _check_schedule(schedule)
    x0 = _check_x(x0, "x0")
    t_lo, t_hi, x_hi, z, _ = _pairs(schedule, x0, times, generator, n_idx)
    a = schedule.alpha(t_lo).to(device=x0.device, dtype=x0.dtype)[:, None]
    s = schedule.sigma(t_lo).to(device=x0.device, dtype=x0.dtype)[:, None]
    return _loss(net, target, x_hi, t_hi, a * x0 + s * z, t_lo, per_point)


@dataclass
class ConsistencyTraining:
    """What :func:`train_consistency` returns: the trained ``net``, the EMA ``target`` network, the
    per-step ``losses`` and the discretization ``times``."""

    net: ConsistencyMLP
    target: nn.Module
    losses: List[float] = field(default_factory=list)
    times: Tensor = field(default_factory=lambda: torch.zeros(0))


def train_consistency(
    net: ConsistencyMLP,
    data: GaussianMixture,
    times: Tensor,
    *,
    mode: str = "cd",
    teacher: Optional[DiffusionModel] = None,
    solver: str = "heun",
    steps: int = 400,
    batch_size: int = 256,
    lr: float = 2e-3,
    ema_decay: float = 0.95,
    anneal: bool = True,
    seed: int = 0,
) -> ConsistencyTraining:
    """Train ``net`` by consistency distillation (``mode="cd"``, :func:`cd_loss` with ``teacher``) or
    consistency training (``"ct"``, :func:`ct_loss`) with Adam on fresh draws of ``data`` (I44).

    The target network is the EMA of ``net`` (:class:`densityformula.training.EMA`, decay
    ``min(ema_decay, (1+k)/(10+k))``), updated after every step; data, ``n`` and ``z`` come from one
    generator seeded with ``seed``.  ``anneal``: the learning rate falls linearly from ``lr`` to 0
    over the run (the last steps average out the gradient noise).  ``net`` is trained in place, on
    its own device and dtype.
    """
    if not isinstance(net, ConsistencyMLP):
        raise TypeError(f"net must be a ConsistencyMLP, got {type(net).__name__}")
    if not isinstance(data, GaussianMixture):
        raise TypeError(f"data must be a GaussianMixture, got {type(data).__name__}")
    if data.d != net.d:
        raise ValueError(f"data has d = {data.d} but net has d = {net.d}")
    if mode not in ("cd", "ct"):
        raise ValueError(f"mode must be 'cd' or 'ct', got {mode!r}")
    if mode == "cd" and teacher is None:
        raise ValueError("teacher is required for mode='cd' (an AnalyticModel of the data, say)")
    tt = _check_times(times)
    steps = check_int(steps, "steps", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    lr = check_positive_float(lr, "lr")
    gen = torch.Generator().manual_seed(check_seed(seed))
    ema = EMA(net, ema_decay)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses: List[float] = []
    for k in range(steps):
        if anneal:
            for group in opt.param_groups:
                group["lr"] = lr * (1.0 - k / steps)
        x0 = data.sample(batch_size, generator=gen).to(device=net.device, dtype=net.dtype)
        if mode == "cd":
            assert teacher is not None
            loss = cd_loss(net, ema.module, teacher, x0, tt, solver=solver, generator=gen)
        else:
            loss = ct_loss(net, ema.module, net.schedule, x0, tt, generator=gen)
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        opt.step()
        ema.update(net, k)
        losses.append(float(loss.detach()))
    return ConsistencyTraining(net=net, target=ema.module, losses=losses, times=tt)


# ------------------------------------------------------------------------------------------------
# sampling and the exact 1-D law of the sampler
# ------------------------------------------------------------------------------------------------
def multistep_sample(f: ConsistencyFunction, schedule: Schedule, x_T: Tensor, times: Sequence[float], *,
                     t_min: Optional[float] = None, generator: Optional[torch.Generator] = None) -> Tensor:
    """Multistep consistency sampling (Song et al. Alg. 1; one step when ``len(times) == 1``; I44):

        x <- f(x_T, tau_0);   for tau_j = tau_1 > tau_2 > ...:  x <- f(alpha_{tau|min} x + sigma_{tau|min} z, tau_j),

    ``x_T`` drawn at ``tau_0`` by the caller; the re-noising is the exact forward transition from
    ``t_min`` to ``tau_j`` (:func:`densityformula.reverse.step_levels`), ``z`` from ``generator``.
    """
    schedule = _check_schedule(schedule)
    x = _check_x(x_T, "x_T")
    taus = [float(v) for v in times]
    if not taus:
        raise ValueError("times must hold at least one time (the time of x_T)")
    if any(b >= a for a, b in zip(taus[:-1], taus[1:])):
        raise ValueError(f"times must be strictly decreasing, got {taus}")
    lo = data_end(schedule, t_min)
    if taus[-1] <= lo:
        raise ValueError(f"every time must exceed t_min = {lo}, got {taus[-1]}")
    x = f(x, torch.tensor(taus[0], dtype=torch.float64))
    for tau in taus[1:]:
        lv = R.step_levels(schedule, tau, lo)
        gdev = generator.device if generator is not None else x.device
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=gdev).to(x.device)
        x = float(lv.alpha_ts) * x + math.sqrt(float(lv.sigma2_ts)) * z
        x = f(x, torch.tensor(tau, dtype=torch.float64))
    return x


@dataclass
class SamplerLaw1D:
    """The exact 1-D law of :func:`multistep_sample` (:func:`sampler_law_1d`, I44).

    ``grid``, ``log_p_in``: the last step's input density on its uniform grid; ``y = f(grid)``,
    ``log_det = log f'(grid)``; ``kl = KL(p || q)`` with its rule error ``kl_error``
    (``|KL_h - KL_2h|``); ``monotone``: ``f' > 0`` wherever the input has mass (the change of
    variables needs it; where it is ``False``, ``kl`` is not the KL of the law); ``mass``: the input
    density's total mass on each grid.  ``kl_binned``: ``sum_b P_b log(P_b / Q_b)`` over bins of
    width ``bin_width`` (and two outer bins), ``P_b = int p_in(x) 1[f(x) in b] dx`` on the last grid,
    ``Q_b`` from the target's CDF: valid for every map, a lower bound on ``KL(p || q)`` (data
    processing) that tends to it as the bins shrink; ``kl_binned_error`` the same from every other
    grid point.
    """

    grid: Tensor
    log_p_in: Tensor
    y: Tensor
    log_det: Tensor
    kl: float
    kl_error: float
    monotone: bool
    mass: List[float]
    kl_binned: float
    kl_binned_error: float
    bin_width: float

    def kl_of(self, log_q: Callable[[Tensor], Tensor], shift: float = 0.0, scale: float = 1.0) -> Tuple[float, float]:
        """``KL(p' || q)`` of the law of ``scale * Y + shift`` (a deliberately wrong map: ``log f'`` moves
        by ``log scale``), and its rule error."""
        y = scale * self.y + shift
        return _kl_in(self.grid, self.log_p_in, self.log_det + math.log(scale), log_q(y[:, None]))


def _kl_in(grid: Tensor, log_p: Tensor, log_det: Tensor, log_q_y: Tensor) -> Tuple[float, float]:
    """``KL(p || q) = E_{x ~ p_in}[log p_in(x) - log f'(x) - log q(f(x))]`` by the rectangle rule, and
    the difference from the same rule on every other point."""
    h = float(grid[1] - grid[0])
    p = torch.exp(log_p)
    integrand = torch.where(p > 0, p * (log_p - log_det - log_q_y), torch.zeros_like(p))
    fine = float(integrand.sum()) * h
    coarse = float(integrand[::2].sum()) * 2.0 * h
    return fine, abs(fine - coarse)


def _binned_kl(y: Tensor, log_p: Tensor, h: float, edges: Tensor, log_q_bins: Tensor) -> float:
    """``sum_b P_b log(P_b / Q_b)``, ``P_b = h sum_i p_in(x_i) 1[y_i in b]`` (bins between ``edges`` and
    two outer bins)."""
    idx = torch.bucketize(y.contiguous(), edges)
    P = torch.zeros(edges.numel() + 1, dtype=torch.float64).index_add_(0, idx, torch.exp(log_p) * h)
    keep = P > 0
    return float((P[keep] * (torch.log(P[keep]) - log_q_bins[keep])).sum())


def _mixture_log_bins(target: GaussianMixture, edges: Tensor) -> Tensor:
    """``log Q_b`` of a 1-D mixture for the bins between ``edges`` and the two outer bins (float64)."""
    w = target.weights.double().cpu()
    mu = target.means.double().cpu()[:, 0]
    sd = torch.sqrt(target.covs.double().cpu()[:, 0, 0])
    z = (edges[:, None] - mu[None, :]) / sd[None, :]
    cdf = (w[None, :] * torch.special.ndtr(z)).sum(1)
    sf = (w[None, :] * torch.special.ndtr(-z)).sum(1)  # 1 - cdf without cancellation in the right tail
    inner = torch.where(edges[1:] > 0, sf[:-1] - sf[1:], cdf[1:] - cdf[:-1])
    Q = torch.cat([cdf[:1], inner, sf[-1:]])
    return torch.log(Q.clamp_min(1e-300))


def _derivative(f: Any, x: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
    """``(f(x, t), f'(x, t))`` of a 1-D map: its ``derivative`` method if it has one, else autograd."""
    if hasattr(f, "derivative"):
        with torch.no_grad():
            return f(x, t), f.derivative(x, t)
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = f(xg, t)
        (g,) = torch.autograd.grad(y.sum(), xg)
    return y.detach(), g[:, 0].detach()


def sampler_law_1d(
    f: ConsistencyFunction,
    schedule: Schedule,
    prior: GaussianMixture,
    times: Sequence[float],
    target: GaussianMixture,
    *,
    t_min: Optional[float] = None,
    points: int = 2001,
    width: float = 10.0,
    bins: int = 400,
    dtype: Optional[torch.dtype] = None,
) -> SamplerLaw1D:
    """The exact law of :func:`multistep_sample` in 1-D for maps ``x -> f(x, tau)`` increasing in ``x``,
    and its ``KL(p || target)`` (I44).

    Step 0 has input density ``prior`` (the law of ``x_T`` at ``times[0]``).  A step's output is the
    push-forward ``Y = f(X, tau)``; the next input ``a Y + sqrt(v) Z`` (``a = alpha_{tau|min}``,
    ``v = sigma^2_{tau|min}``) has density ``int p_in(x) N(x'; a f(x), v) dx``, taken by the rectangle
    rule over the previous grid (smooth in ``x``: spectrally accurate once ``sqrt(v) >> f' h``).
    Every grid is uniform with ``points`` nodes over the input law's mean +- ``width`` sd.  The
    last step's law is the change of variables ``p(f(x)) = p_in(x) / f'(x)``, so

        KL(p || q) = E_{x ~ p_in}[log p_in(x) - log f'(x) - log q(f(x))]

    on the last grid (rule error from every other point).  ``f'`` comes from ``f.derivative`` where
    ``f`` has one (:class:`ExactConsistency`), else autograd.  The binned KL (any map) uses ``bins``
    equal bins over the target's mean +- 8 sd.
    """
    schedule = _check_schedule(schedule)
    for nm, g in (("prior", prior), ("target", target)):
        if not isinstance(g, GaussianMixture) or g.d != 1:
            raise ValueError(f"{nm} must be a 1-D GaussianMixture")
    points = check_int(points, "points", 9)
    width = check_positive_float(width, "width")
    taus = [float(v) for v in times]
    if not taus or any(b >= a for a, b in zip(taus[:-1], taus[1:])):
        raise ValueError(f"times must be a non-empty strictly decreasing sequence, got {taus}")
    lo = data_end(schedule, t_min)
    f64 = torch.float64
    dt = dtype if dtype is not None else getattr(f, "dtype", f64)
    mean, var = float(prior.mean()[0]), float(prior.covariance()[0, 0])
    grid = torch.linspace(mean - width * math.sqrt(var), mean + width * math.sqrt(var), points, dtype=f64)
    log_p = prior.log_prob(grid[:, None].to(prior.dtype)).double()
    masses: List[float] = []
    monotone = True
    y = log_det = torch.zeros(0)
    for j, tau in enumerate(taus):
        h = float(grid[1] - grid[0])
        masses.append(float(torch.exp(log_p).sum()) * h)
        dev = getattr(f, "device", torch.device("cpu"))
        y_t, der = _derivative(f, grid[:, None].to(device=dev, dtype=dt), torch.tensor(tau, dtype=f64))
        y, der = y_t[:, 0].double().cpu(), der.double().cpu()
        has_mass = log_p > math.log(1e-14) + float(log_p.max())
        if bool((der[has_mass] <= 0).any()):
            monotone = False
        log_det = torch.log(der.clamp_min(1e-300))
        if j + 1 == len(taus):
            break
        lv = R.step_levels(schedule, taus[j + 1], lo)
        a, v = float(lv.alpha_ts), float(lv.sigma2_ts)
        w = torch.exp(log_p) * h
        m_y = float((w * y).sum() / w.sum())
        v_y = float((w * (y - m_y) ** 2).sum() / w.sum())
        m_in, sd_in = a * m_y, math.sqrt(a * a * v_y + v)
        new = torch.linspace(m_in - width * sd_in, m_in + width * sd_in, points, dtype=f64)
        # log sum_i w_i N(x'; a y_i, v), chunked over the new grid
        lw = torch.log(w.clamp_min(1e-300))
        out = []
        for c in torch.split(new, 1024):
            e = lw[None, :] - 0.5 * (c[:, None] - a * y[None, :]) ** 2 / v
            out.append(torch.logsumexp(e, 1) - 0.5 * math.log(2.0 * math.pi * v))
        grid, log_p = new, torch.cat(out)
    log_q = target.log_prob(y[:, None].to(target.dtype)).double()
    kl, err = _kl_in(grid, log_p, log_det, log_q)
    bins = check_int(bins, "bins", 2)
    m_q, s_q = float(target.mean()[0]), math.sqrt(float(target.covariance()[0, 0]))
    edges = torch.linspace(m_q - 8.0 * s_q, m_q + 8.0 * s_q, bins + 1, dtype=f64)
    log_qb = _mixture_log_bins(target, edges)
    h = float(grid[1] - grid[0])
    kb = _binned_kl(y, log_p, h, edges, log_qb)
    kb2 = _binned_kl(y[::2], log_p[::2], 2.0 * h, edges, log_qb)
    return SamplerLaw1D(grid=grid, log_p_in=log_p, y=y, log_det=log_det, kl=kl, kl_error=err, monotone=monotone,
                        mass=masses, kl_binned=kb, kl_binned_error=abs(kb - kb2), bin_width=float(edges[1] - edges[0]))
