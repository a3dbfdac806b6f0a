"""The samplers of Song et al.'s SDE framework, on any :class:`DiffusionModel` (private module).

Every sampler has the same signature (k-diffusion style)::

    sampler(model, x_T=None, *, n=None, steps=..., t_start=None, t_end=None, spacing="auto",
            generator=None, callback=None, post_step=None, shape=None, dtype=None, device=None,
            progress=False, **specific) -> Tensor

and integrates the reverse of the forward process ``X_t = alpha_t X_0 + sigma_t Z`` of
``model.schedule`` from ``t_start`` down to ``t_end`` on :func:`time_grid`.  Notation for one step
from ``t`` to ``s < t`` (docs/math.md section 1-2):

    alpha_{t|s} = alpha_t / alpha_s,  sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2

(the exact forward transition ``X_t | X_s ~ N(alpha_{t|s} X_s, sigma_{t|s}^2 I)`` of every linear
SDE), ``D = model.denoise``, ``eps_hat`` and ``score`` from the one conversion (I1).
"""
from __future__ import annotations

import math
from numbers import Integral
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .. import parameterization as P
from ..schedules import Discrete
from ._grid import Callback, check_x, default_t_start, prior_sample, time_grid

Tensor = torch.Tensor
PostStep = Callable[[Tensor, float], Tensor]

__all__ = [
    "ddpm",
    "euler_maruyama",
    "reverse_diffusion",
    "predictor_corrector",
    "ddim",
    "probability_flow",
    "SAMPLERS",
]


# --------------------------------------------------------------------------------------------
# shared set-up
# --------------------------------------------------------------------------------------------
class _Coefs:
    """float64 coefficients of the schedule on a grid, as Python lists."""

    def __init__(self, schedule: Any, grid: Tensor) -> None:
        self.t: List[float] = grid.tolist()
        self.alpha: List[float] = schedule.alpha(grid).tolist()
        self.sigma: List[float] = schedule.sigma(grid).tolist()
        self.alpha2: List[float] = schedule.alpha2(grid).tolist()
        self.sigma2: List[float] = schedule.sigma2(grid).tolist()
        self.N = len(self.t) - 1

    def transition(self, i: int) -> Tuple[float, float]:
        """``(alpha_{t|s}, sigma_{t|s}^2)`` for the step ``t = t_i -> s = t_{i+1}``."""
        a_s, a_t = self.alpha[i + 1], self.alpha[i]
        a_ts = a_t / a_s if a_s > 0 else 0.0
        s2 = max(self.sigma2[i] - a_ts * a_ts * self.sigma2[i + 1], 0.0)
        return a_ts, s2


def _setup(
    model: Any,
    x_T: Optional[Tensor],
    n: Optional[int],
    steps: int,
    t_start: Optional[float],
    t_end: Optional[float],
    spacing: str,
    generator: Optional[torch.Generator],
    shape: Any,
    dtype: Optional[torch.dtype],
    device: Any,
    finite_coefficients: bool,
) -> Tuple[Tensor, Tensor]:
    schedule = getattr(model, "schedule", None)
    if schedule is None or not callable(getattr(model, "denoise", None)):
        raise TypeError(f"model must be a DiffusionModel (with .schedule and .denoise), got {type(model).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if t_start is None:
        t_start = default_t_start(schedule)
    grid = time_grid(schedule, steps, t_start=t_start, t_end=t_end, spacing=spacing)
    if finite_coefficients:
        f0, g0 = float(schedule.drift(grid[0])), float(schedule.g2(grid[0]))
        if not (math.isfinite(f0) and math.isfinite(g0)):
            raise ValueError(
                f"the reverse SDE's coefficients are infinite at t_start={float(grid[0])}; pass a smaller t_start"
            )
    if x_T is None:
        if n is None:
            raise ValueError("give x_T or n")
        x_T = prior_sample(model, n, t=float(grid[0]), shape=shape, generator=generator, dtype=dtype, device=device)
    else:
        check_x(x_T, "x_T")
        if n is not None and n != x_T.shape[0]:
            raise ValueError(f"n={n} does not match x_T's batch size {x_T.shape[0]}")
        if dtype is not None and dtype != x_T.dtype:
            raise TypeError(f"dtype={dtype} does not match x_T's dtype {x_T.dtype}")
        if device is not None and torch.device(device).type != x_T.device.type:
            raise ValueError(f"device={device} does not match x_T's device {x_T.device}")
    return x_T, grid


def _steps(steps: Optional[int], model: Any, default: int) -> int:
    if getattr(model, "schedule", None) is None or not callable(getattr(model, "denoise", None)):
        raise TypeError(f"model must be a DiffusionModel (with .schedule and .denoise), got {type(model).__name__}")
    if steps is None:
        sch = model.schedule
        return sch.T if isinstance(sch, Discrete) else default
    if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    return int(steps)


def _randn(x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _per_point_norm(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).norm(dim=1)


def _check_finite(x: Tensor, sampler: str, t: float) -> None:
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(f"{sampler}: the state became non-finite at t={t}; use more steps or a smaller step")


def _run(
    name: str,
    x: Tensor,
    c: _Coefs,
    step: Callable[[int, Tensor], Tuple[Tensor, Optional[Tensor]]],
    callback: Optional[Callback],
    post_step: Optional[PostStep],
    progress: bool,
) -> Tensor:
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable or None")
    if post_step is not None:
        if not callable(post_step):
            raise TypeError("post_step must be callable or None")
        x = post_step(x, c.t[0])
    with torch.no_grad():  # no autograd graph across steps (guidance re-enables it locally)
        return _loop(name, x, c, step, callback, post_step, progress)


def _loop(
    name: str,
    x: Tensor,
    c: _Coefs,
    step: Callable[[int, Tensor], Tuple[Tensor, Optional[Tensor]]],
    callback: Optional[Callback],
    post_step: Optional[PostStep],
    progress: bool,
) -> Tensor:
    it = range(c.N)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=name, leave=False)
    for i in it:
        x, denoised = step(i, x)
        if post_step is not None:
            x = post_step(x, c.t[i + 1])
        _check_finite(x, name, c.t[i + 1])
        if callback is not None:
            callback({"i": i, "t": c.t[i], "t_next": c.t[i + 1], "x": x, "denoised": denoised})
    return x


_COMMON_DOC = """
    Args (shared by every sampler):
        model: a :class:`~densityformula.models.DiffusionModel`; its ``schedule`` sets the process.
        x_T: ``(n, ...)`` starting points at ``t_start``; or ``None`` to draw ``n`` from
            :func:`prior_sample`.  dtype and device follow ``x_T`` (or ``dtype``/``device``, else the
            model's).
        n: number of points when ``x_T`` is ``None``.
        steps: number of steps of the grid (:func:`time_grid`).
        t_start, t_end: integration range (defaults: ``t_max`` -- or the time of log-SNR -10 where
            the SDE's coefficients are infinite at ``t_max``, e.g. LiYan -- and ``t_min``).
        spacing: grid spacing, see :func:`time_grid`.
        generator: ``torch.Generator`` on ``x_T``'s device for every random draw (``None``: torch's
            global generator).
        callback: called after every step with ``{"i", "t", "t_next", "x", "denoised"}``.
        post_step: ``post_step(x, t) -> x`` applied to ``x_T`` and after every step (used by
            replacement inpainting).
        shape: per-point shape for the prior draw (default ``(model.d,)`` or ``(model.target.d,)``).
        progress: show a tqdm bar.
    Returns:
        samples at ``t_end``, same shape, dtype and device as ``x_T``.
"""


def _doc(f: Callable) -> Callable:
    f.__doc__ = (f.__doc__ or "") + _COMMON_DOC
    return f


# --------------------------------------------------------------------------------------------
# DDPM ancestral sampling and DDIM
# --------------------------------------------------------------------------------------------
def _x0_eps(model: Any, x: Tensor, t: float, alpha: float, sigma: float) -> Tuple[Tensor, Tensor]:
    x0 = model.denoise(x, t)
    return x0, P.x0_to_eps(x, x0, alpha, sigma)


def _ancestral_step(
    model: Any, x: Tensor, c: _Coefs, i: int, variance: str, generator: Optional[torch.Generator]
) -> Tuple[Tensor, Tensor]:
    t = c.t[i]
    x0 = model.denoise(x, t)
    a_ts, s2_ts = c.transition(i)
    s2_t, s2_s, a_s = c.sigma2[i], c.sigma2[i + 1], c.alpha[i + 1]
    mean = (a_ts * s2_s / s2_t) * x + (a_s * s2_ts / s2_t) * x0
    if s2_s == 0.0:
        var = 0.0  # last step onto sigma = 0: the mean (Ho et al.: no noise at t = 1)
    elif variance == "beta_tilde":
        var = s2_ts * s2_s / s2_t
    else:
        var = s2_ts
    if var > 0.0:
        mean = mean + math.sqrt(var) * _randn(x, generator)
    return mean, x0


@_doc
def ddpm(
    model: Any,
    x_T: Optional[Tensor] = None,
    *,
    n: Optional[int] = None,
    steps: Optional[int] = None,
    variance: str = "beta_tilde",
    t_start: Optional[float] = None,
    t_end: Optional[float] = None,
    spacing: str = "auto",
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callback] = None,
    post_step: Optional[PostStep] = None,
    shape: Any = None,
    dtype: Optional[torch.dtype] = None,
    device: Any = None,
    progress: bool = False,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020), on any schedule's grid.

    One step ``t -> s`` draws from the forward posterior ``q(x_s | x_t, x_0)`` with ``x_0 = D(x_t, t)``:

        x_s = (alpha_{t|s} sigma_s^2 / sigma_t^2) x_t + (alpha_s sigma_{t|s}^2 / sigma_t^2) D + sqrt(v) z,

    ``v = sigma_{t|s}^2 sigma_s^2 / sigma_t^2`` (``variance="beta_tilde"``) or
    ``v = sigma_{t|s}^2`` (``variance="beta"``); the step onto ``sigma_s = 0`` adds no noise.  On
    :class:`~densityformula.schedules.Discrete` with ``steps = T`` this is Ho et al.'s sampler
    exactly (``sigma_{t|s}^2 = beta_k``); fewer steps use a strided subsequence; on a continuous
    schedule it is the ancestral sampler of the discretization on the grid.  With ``"beta"`` its
    steps are those whose ELBO docs/math.md I7/I9 describe (the model's ``D`` enters through the one
    conversion, I1), except the last: this sampler returns the decoder mean ``D(x_1)`` (Ho et
    al.'s practice), whereas ``elbo.ddpm``, ``likelihood.sampler_density_1d`` and
    ``likelihood.gaussian_sampler`` describe a sampler whose last step adds decoder noise
    ``N(D(x_1), beta_1)``; add ``sqrt(beta_1) z`` to the output to compare the two laws.  ``steps`` defaults to ``T`` (Discrete) or 1000.
    Works from ``t_start = t_max`` even where ``alpha = 0`` (LiYan ``t = 1``; pass it explicitly).
    """
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"variance must be 'beta' or 'beta_tilde', got {variance!r}")
    steps = _steps(steps, model, 1000)
    x, grid = _setup(model, x_T, n, steps, t_start, t_end, spacing, generator, shape, dtype, device, False)
    c = _Coefs(model.schedule, grid)
    return _run(
        "ddpm", x, c, lambda i, x: _ancestral_step(model, x, c, i, variance, generator), callback, post_step, progress
    )


def _ddim_step(
    model: Any, x: Tensor, c: _Coefs, i: int, eta: float, generator: Optional[torch.Generator]
) -> Tuple[Tensor, Tensor]:
    x0, eps = _x0_eps(model, x, c.t[i], c.alpha[i], c.sigma[i])
    _, s2_ts = c.transition(i)
    cc2 = eta * eta * s2_ts * c.sigma2[i + 1] / c.sigma2[i]
    out = c.alpha[i + 1] * x0 + math.sqrt(max(c.sigma2[i + 1] - cc2, 0.0)) * eps
    if cc2 > 0.0:
        out = out + math.sqrt(cc2) * _randn(x, generator)
    return out, x0


@_doc
def ddim(
    model: Any,
    x_T: Optional[Tensor] = None,
    *,
    n: Optional[int] = None,
    steps: int = 50,
    eta: float = 0.0,
    t_start: Optional[float] = None,
    t_end: Optional[float] = None,
    spacing: str = "auto",
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callback] = None,
    post_step: Optional[PostStep] = None,
    shape: Any = None,
    dtype: Optional[torch.dtype] = None,
    device: Any = None,
    progress: bool = False,
) -> Tensor:
    """DDIM (Song, Meng & Ermon 2021), with ``eps_hat`` from ``D`` by the one conversion (I1):

        x_s = alpha_s D + sqrt(sigma_s^2 - c^2) eps_hat + c z,  c^2 = eta^2 sigma_{t|s}^2 sigma_s^2 / sigma_t^2.

    ``eta = 0`` is deterministic: the exact Euler step of the probability-flow ODE written as
    ``d(x/alpha) = eps_hat d(sigma/alpha)`` (first order); ``eta = 1`` has the law of
    :func:`ddpm` with ``variance="beta_tilde"``.
    """
    eta = float(eta)
    if not (math.isfinite(eta) and eta >= 0.0):
        raise ValueError(f"eta must be a finite float >= 0, got {eta}")
    steps = _steps(steps, model, 50)
    x, grid = _setup(model, x_T, n, steps, t_start, t_end, spacing, generator, shape, dtype, device, False)
    c = _Coefs(model.schedule, grid)
    return _run("ddim", x, c, lambda i, x: _ddim_step(model, x, c, i, eta, generator), callback, post_step, progress)


# --------------------------------------------------------------------------------------------
# reverse SDE: Euler-Maruyama, reverse diffusion, predictor-corrector
# --------------------------------------------------------------------------------------------
class _SDECoefs(_Coefs):
    def __init__(self, schedule: Any, grid: Tensor) -> None:
        super().__init__(schedule, grid)
        self.f: List[float] = schedule.drift(grid).tolist()
        self.g2: List[float] = schedule.g2(grid).tolist()


def _em_step(model: Any, x: Tensor, c: _SDECoefs, i: int, generator: Optional[torch.Generator]) -> Tuple[Tensor, None]:
    t, h = c.t[i], c.t[i] - c.t[i + 1]
    score = model.score(x, t)
    out = (1.0 - c.f[i] * h) * x + (c.g2[i] * h) * score
    return out + math.sqrt(c.g2[i] * h) * _randn(x, generator), None


def _rd_step(model: Any, x: Tensor, c: _Coefs, i: int, generator: Optional[torch.Generator]) -> Tuple[Tensor, None]:
    a_ts, s2_ts = c.transition(i)
    score = model.score(x, c.t[i])
    out = (2.0 - a_ts) * x + s2_ts * score
    return out + math.sqrt(s2_ts) * _randn(x, generator), None


@_doc
def euler_maruyama(
    model: Any,
    x_T: Optional[Tensor] = None,
    *,
    n: Optional[int] = None,
    steps: Optional[int] = None,
    t_start: Optional[float] = None,
    t_end: Optional[float] = None,
    spacing: str = "auto",
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callback] = None,
    post_step: Optional[PostStep] = None,
    shape: Any = None,
    dtype: Optional[torch.dtype] = None,
    device: Any = None,
    progress: bool = False,
) -> Tensor:
    """Euler-Maruyama for the reverse SDE ``dx = [f x - g^2 score] dt + g dB_bar`` (Song et al. eq. 6;
    ``f``, ``g^2`` of docs/math.md section 1, ``score`` by I1):

        x_s = x_t - (f(t) x_t - g^2(t) score(x_t, t)) h + sqrt(g^2(t) h) z,   h = t - s.

    Weak order 1 in ``h``.  The grid must avoid times where ``f`` or ``g^2`` is infinite (LiYan at
    ``t = 1``; the default ``t_start`` is then log-SNR -10).  ``steps`` defaults to ``T`` or 1000.
    """
    steps = _steps(steps, model, 1000)
    x, grid = _setup(model, x_T, n, steps, t_start, t_end, spacing, generator, shape, dtype, device, True)
    c = _SDECoefs(model.schedule, grid)
    return _run("euler_maruyama", x, c, lambda i, x: _em_step(model, x, c, i, generator), callback, post_step, progress)


@_doc
def reverse_diffusion(
    model: Any,
    x_T: Optional[Tensor] = None,
    *,
    n: Optional[int] = None,
    steps: Optional[int] = None,
    t_start: Optional[float] = None,
    t_end: Optional[float] = None,
    spacing: str = "auto",
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callback] = None,
    post_step: Optional[PostStep] = None,
    shape: Any = None,
    dtype: Optional[torch.dtype] = None,
    device: Any = None,
    progress: bool = False,
) -> Tensor:
    """Song et al.'s reverse-diffusion predictor (their eq. 45-46), for any linear SDE.

    The forward process discretized on the grid, ``x_t = alpha_{t|s} x_s + sigma_{t|s} z`` (exact
    transition), is reversed as

        x_s = (2 - alpha_{t|s}) x_t + sigma_{t|s}^2 score(x_t, t) + sigma_{t|s} z.

    For VP this is ``(2 - sqrt(1 - beta_i)) x + beta_i s + sqrt(beta_i) z``; for VE
    ``x + (sigma_t^2 - sigma_s^2) s + sqrt(sigma_t^2 - sigma_s^2) z``.  First order.
    """
    steps = _steps(steps, model, 1000)
    x, grid = _setup(model, x_T, n, steps, t_start, t_end, spacing, generator, shape, dtype, device, True)
    c = _Coefs(model.schedule, grid)
    return _run(
        "reverse_diffusion", x, c, lambda i, x: _rd_step(model, x, c, i, generator), callback, post_step, progress
    )


def langevin_step(
    model: Any,
    x: Tensor,
    t: float,
    *,
    snr: float = 0.16,
    alpha: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """One Langevin corrector step at time ``t`` with Song et al.'s signal-to-noise rule (their Alg. 4-5):

        eps = 2 alpha (snr ||z|| / ||score||)^2,   x <- x + eps score(x, t) + sqrt(2 eps) z,

    where the norms are per-point Euclidean norms averaged over the batch, as in Song et al.'s
    reference code (so the step size is shared by the batch), and ``alpha = 1 - beta_i`` (VP) or 1 (VE).
    """
    score = model.score(x, t)
    z = _randn(x, generator)
    gn = float(_per_point_norm(score).mean())
    zn = float(_per_point_norm(z).mean())
    if gn == 0.0 or not math.isfinite(gn):
        raise FloatingPointError(f"langevin_step: the mean score norm is {gn} at t={t}; cannot set the step size")
    eps = 2.0 * alpha * (snr * zn / gn) ** 2
    return x + eps * score + math.sqrt(2.0 * eps) * z


_PREDICTORS = {"reverse_diffusion": _rd_step, "euler_maruyama": _em_step, "none": None}


@_doc
def predictor_corrector(
    model: Any,
    x_T: Optional[Tensor] = None,
    *,
    n: Optional[int] = None,
    steps: Optional[int] = None,
    predictor: str = "reverse_diffusion",
    corrector_steps: int = 1,
    snr: float = 0.16,
    t_start: Optional[float] = None,
    t_end: Optional[float] = None,
    spacing: str = "auto",
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callback] = None,
    post_step: Optional[PostStep] = None,
    shape: Any = None,
    dtype: Optional[torch.dtype] = None,
    device: Any = None,
    progress: bool = False,
) -> Tensor:
    """Predictor-corrector sampling (Song et al. Alg. 1): at each grid time ``t_i`` run
    ``corrector_steps`` Langevin steps (:func:`langevin_step`, ``alpha = alpha_{t_i|t_{i+1}}^2``,
    i.e. ``1 - beta_i`` for VP and 1 for VE) and then one predictor step ``t_i -> t_{i+1}``
    (``predictor="reverse_diffusion"``, ``"euler_maruyama"``, or ``"none"`` for corrector-only
    annealed Langevin dynamics (Song & Ermon 2019), which runs the Langevin steps at the levels
    ``t_1, ..., t_N = t_end``).

    Note: the Langevin step does not shrink with the grid, so at a fixed ``snr`` the output keeps
    the unadjusted-Langevin bias as ``steps`` grows (for a Gaussian the stationary variance of the
    corrector is ``v / (1 - snr^2 alpha)``); see ``docs/bench_sampling.md``.
    """
    if predictor not in _PREDICTORS:
        raise ValueError(f"predictor must be one of {tuple(_PREDICTORS)}, got {predictor!r}")
    if isinstance(corrector_steps, bool) or not isinstance(corrector_steps, Integral) or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be a non-negative int, got {corrector_steps!r}")
    snr = float(snr)
    if not (math.isfinite(snr) and snr > 0.0):
        raise ValueError(f"snr must be a positive float, got {snr}")
    steps = _steps(steps, model, 1000)
    x, grid = _setup(model, x_T, n, steps, t_start, t_end, spacing, generator, shape, dtype, device, True)
    c = _SDECoefs(model.schedule, grid)
    pred = _PREDICTORS[predictor]

    def step(i: int, x: Tensor) -> Tuple[Tensor, None]:
        a_ts, _ = c.transition(i)
        # with a predictor: correct at t_i, then predict t_i -> t_{i+1} (Song et al.'s order);
        # without one (annealed Langevin): move to the next level t_{i+1} and correct there
        t_corr = c.t[i] if pred is not None else c.t[i + 1]
        for _ in range(corrector_steps):
            x = langevin_step(model, x, t_corr, snr=snr, alpha=a_ts * a_ts, generator=generator)
        if pred is None:
            return x, None
        return pred(model, x, c, i, generator)

    return _run("predictor_corrector", x, c, step, callback, post_step, progress)


# --------------------------------------------------------------------------------------------
# probability-flow ODE
# --------------------------------------------------------------------------------------------
_FIXED = ("euler", "midpoint", "rk4", "heun3", "explicit_adams", "implicit_adams")


@_doc
def probability_flow(
    model: Any,
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
    shape: Any = None,
    dtype: Optional[torch.dtype] = None,
    device: Any = None,
    progress: bool = False,
    spacing: str = "log_snr",
    post_step: None = None,
) -> Tensor:
    """The probability-flow ODE ``dx/dt = f x - g^2 score / 2`` (Song et al. eq. 13; the flow whose
    density docs/math.md I12 computes) solved with
    torchdiffeq in the log-SNR clock ``lambda``, where it reads

        dx/dlambda = a(lambda) x - (sigma / 2) eps_hat(x, t(lambda)),   a = d log alpha / dlambda = -f sigma^2 / g^2

    (``a = sigma^2 / 2`` for VP, 0 for VE): bounded coefficients on the whole range, no blow-up at
    LiYan's ``t = 1``.  Ends where ``lambda`` is infinite (LiYan ``t = 1``, VP ``t = 0``) are clipped
    to ``[lam_min, lam_max]`` (default +-15) and bridged by one DDIM (``eta = 0``) step, which is
    exact to ``O(alpha^2) = O(e^lam_min)`` at the noisy end and ``O(sigma^2)`` at the clean end
    (about 1e-6 relative at the defaults; 1.4e-4 at +-10, measured on a Gaussian).

    ``steps=None`` (default): adaptive ``method`` (default ``"dopri5"``) with ``rtol``/``atol`` and an
    error norm that is the max over points of each point's RMS error, so every point meets the
    tolerance on its own.  ``steps=k``: fixed grid of ``k`` steps uniform in ``lambda`` with a
    fixed-step ``method`` (default ``"rk4"``): deterministic per point, no coupling.
    The callback is called once at the end with ``{"nfe": ...}`` added.
    """
    from torchdiffeq import odeint

    if post_step is not None:
        raise ValueError("probability_flow does not support post_step (use guidance for conditional sampling)")
    if spacing != "log_snr":
        raise ValueError("probability_flow integrates in the log-SNR clock; spacing must be 'log_snr'")
    schedule = model.schedule
    if steps is not None:
        steps = _steps(steps, model, 0)
        method = "rk4" if method is None else method
        if method not in _FIXED:
            raise ValueError(f"with steps given, method must be a fixed-grid solver {_FIXED}, got {method!r}")
    else:
        method = "dopri5" if method is None else method
        if method in _FIXED:
            raise ValueError(f"method {method!r} is fixed-grid; pass steps=")
    x, grid = _setup(model, x_T, n, 1, t_start, t_end, "t", generator, shape, dtype, device, False)
    ts, te = float(grid[0]), float(grid[-1])
    la = float(schedule.log_snr(torch.tensor(ts, dtype=torch.float64)))
    lb = float(schedule.log_snr(torch.tensor(te, dtype=torch.float64)))
    lo = la if math.isfinite(la) else max(lam_min, schedule.log_snr_range[0])
    hi = lb if math.isfinite(lb) else min(lam_max, schedule.log_snr_range[1])
    if not lo < hi:
        raise ValueError(f"empty log-SNR range [{lo}, {hi}] after clipping")
    range_lo, range_hi = schedule.log_snr_range
    nfe = [0]
    t_lo = float(schedule.t_from_log_snr(torch.tensor(lo, dtype=torch.float64)))
    t_hi = float(schedule.t_from_log_snr(torch.tensor(hi, dtype=torch.float64)))

    def bridge(x: Tensor, t_from: float, t_to: float) -> Tensor:
        c = _Coefs(schedule, torch.tensor([t_from, t_to], dtype=torch.float64))
        nfe[0] += 1
        return _ddim_step(model, x, c, 0, 0.0, None)[0]

    if not math.isfinite(la):
        with torch.no_grad():
            x = bridge(x, ts, t_lo)

    def rhs(lam: Tensor, y: Tensor) -> Tensor:
        nfe[0] += 1
        # adaptive solvers may probe slightly past the last output time; extend the field by its
        # value at the end of the schedule's range there (the interpolant at ``hi`` stays in range)
        lam64 = torch.tensor(min(max(float(lam), range_lo), range_hi), dtype=torch.float64)
        t = schedule.t_from_log_snr(lam64)
        s2 = float(schedule.sigma2(t))
        a = -float(schedule.drift(t)) * s2 / float(schedule.g2(t))
        eps = model.eps(y, float(t))
        return a * y - (0.5 * math.sqrt(s2)) * eps

    n_pts = x.shape[0]
    with torch.no_grad():
        sol = _solve(odeint, rhs, x, lo, hi, steps, method, rtol, atol, n_pts)
    x = sol[-1]
    if not math.isfinite(lb):
        with torch.no_grad():
            x = bridge(x, t_hi, te)
    _check_finite(x, "probability_flow", te)
    if callback is not None:
        callback({"i": 0, "t": ts, "t_next": te, "x": x, "denoised": None, "nfe": nfe[0]})
    return x


def _solve(
    odeint: Callable[..., Tensor],
    rhs: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    lo: float,
    hi: float,
    steps: Optional[int],
    method: str,
    rtol: float,
    atol: float,
    n_pts: int,
) -> Tensor:
    if steps is None:
        lam_t = torch.tensor([lo, hi], dtype=x.dtype, device=x.device)
        options = {"norm": lambda e: e.reshape(n_pts, -1).pow(2).mean(1).sqrt().max()}
        sol = odeint(rhs, x, lam_t, method=method, rtol=rtol, atol=atol, options=options)
    else:
        lam_t = torch.linspace(lo, hi, steps + 1, dtype=torch.float64).to(dtype=x.dtype, device=x.device)
        sol = odeint(rhs, x, lam_t, method=method)
    return sol


#: name -> sampler, all with the shared signature
SAMPLERS: Dict[str, Callable[..., Tensor]] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "euler_maruyama": euler_maruyama,
    "reverse_diffusion": reverse_diffusion,
    "predictor_corrector": predictor_corrector,
    "probability_flow": probability_flow,
}
