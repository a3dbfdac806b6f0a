"""The step samplers of Song et al.'s SDE framework, on any :class:`DiffusionModel` (private module).

Every sampler has the same signature (k-diffusion style)::

    sampler(model, x_T=None, *, n=None, steps=..., t_max=None, t_min=None, times=None,
            spacing="auto", generator=None, noise_sampler=None, callback=None, post_step=None,
            shape=None, dtype=None, device=None, progress=False, return_info=False, **specific)

(``t_start``/``t_end``: aliases of ``t_max``/``t_min``) and integrates the reverse of the forward
process ``X_t = alpha_t X_0 + sigma_t Z`` of ``model.schedule`` from ``t_max`` down to ``t_min`` on
:func:`time_grid`.  The coefficients of every step come from :mod:`densityformula.reverse`
(docs/math.md section 8, I15-I19): this module defines no step of its own.
"""
from __future__ import annotations

import math
from numbers import Integral
from typing import Dict, Optional, Tuple

import torch

from .. import reverse as R
from .._validation import check_int, check_positive_float
from ..models import DiffusionModel, check_model, checked
from ..schedules import Schedule
from ._flow import probability_flow
from ._grid import Callback, _finite_float, check_x, check_x_shape
from ._run import (
    Device,
    NoiseSampler,
    PostStep,
    Run,
    Sampler,
    SamplerDivergedError,
    SamplerOutput,
    Step,
    _randn,
    execute,
    linear_step,
    prepare,
    sampler,
)

Tensor = torch.Tensor

__all__ = [
    "ddpm",
    "euler_maruyama",
    "reverse_diffusion",
    "predictor_corrector",
    "langevin_step",
    "ddim",
    "probability_flow",
    "SAMPLERS",
]


def _levels(run: Run) -> R.StepLevels:
    return R.step_levels(run.model.schedule, run.grid[:-1], run.grid[1:])


# --------------------------------------------------------------------------------------------
# DDPM ancestral sampling and DDIM (out = D)
# --------------------------------------------------------------------------------------------
@sampler(stochastic=True, step_based=True)
def ddpm(
    model: DiffusionModel,
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
    shape: Optional[Tuple[int, ...]] = None,
    dtype: Optional[torch.dtype] = None,
    device: Device = None,
    progress: bool = False,
    t_max: Optional[float] = None,
    t_min: Optional[float] = None,
    times: Optional[Tensor] = None,
    noise_sampler: Optional[NoiseSampler] = None,
    return_info: bool = False,
) -> SamplerOutput:
    """DDPM ancestral sampling (Ho et al. 2020), on any schedule's grid, with the step of
    :func:`densityformula.reverse.ddpm_step` (I15).

    One step ``t -> s`` draws from the forward posterior ``q(x_s | x_t, x_0)`` with ``x_0 = D(x_t, t)``:

        x_s = (alpha_{t|s} sigma_s^2 / sigma_t^2) x_t + (alpha_s sigma_{t|s}^2 / sigma_t^2) D + sqrt(v) z,

    ``v = sigma_{t|s}^2 sigma_s^2 / sigma_t^2`` (``variance="beta_tilde"``) or
    ``v = sigma_{t|s}^2`` (``variance="beta"``); the step onto ``sigma_s = 0`` adds no noise.  On
    :class:`~densityformula.schedules.Discrete` with ``steps = T`` this is Ho et al.'s sampler
    exactly (``sigma_{t|s}^2 = beta_k``); fewer steps use a strided subsequence; on a continuous
    schedule it is the ancestral sampler of the discretization on the grid.  With ``"beta"`` its
    steps are those whose ELBO docs/math.md I7/I9 describe (the same step function as
    ``reverse.ddpm_kernels``), except the last: this sampler returns the decoder mean ``D(x_1)``
    (Ho et al.'s practice, ``decoder_variance=0``), whereas ``elbo.ddpm``,
    ``likelihood.sampler_density_1d`` and ``likelihood.gaussian_sampler`` describe a sampler whose
    last step adds decoder noise ``N(D(x_1), beta_1)``; add ``sqrt(beta_1) z`` to the output to
    compare the two laws.  ``steps`` defaults to ``T`` (Discrete) or 1000.  Works from
    ``t_max = schedule.t_max`` even where ``alpha = 0`` (LiYan ``t = 1``).
    """
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"variance must be 'beta' or 'beta_tilde', got {variance!r}")
    run = prepare(
        "ddpm", model, x_T, n=n, steps=steps, t_max=t_max, t_min=t_min, t_start=t_start, t_end=t_end,
        times=times, spacing=spacing, generator=generator, noise_sampler=noise_sampler, shape=shape,
        dtype=dtype, device=device, finite_coefficients=False, default_steps=1000,
    )
    coefs = R.ddpm_step(_levels(run), variance, decoder_variance=0.0)
    return execute(run, linear_step(run, coefs, "denoise"), callback, post_step, progress, return_info)


@sampler(stochastic=True, step_based=True)
def ddim(
    model: DiffusionModel,
    x_T: Optional[Tensor] = None,
    *,
    n: Optional[int] = None,
    steps: Optional[int] = None,
    eta: float = 0.0,
    t_start: Optional[float] = None,
    t_end: Optional[float] = None,
    spacing: str = "auto",
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callback] = None,
    post_step: Optional[PostStep] = None,
    shape: Optional[Tuple[int, ...]] = None,
    dtype: Optional[torch.dtype] = None,
    device: Device = None,
    progress: bool = False,
    t_max: Optional[float] = None,
    t_min: Optional[float] = None,
    times: Optional[Tensor] = None,
    noise_sampler: Optional[NoiseSampler] = None,
    return_info: bool = False,
) -> SamplerOutput:
    """DDIM (Song, Meng & Ermon 2021), the step of :func:`densityformula.reverse.ddim_step` (I16),
    with ``eps_hat`` from ``D`` by the one conversion (I1):

        x_s = alpha_s D + sqrt(sigma_s^2 - c^2) eps_hat + c z,  c^2 = eta^2 sigma_{t|s}^2 sigma_s^2 / sigma_t^2.

    ``eta = 0`` is deterministic: the exact Euler step of the probability-flow ODE written as
    ``d(x/alpha) = eps_hat d(sigma/alpha)`` (first order); ``eta = 1`` has the law of
    :func:`ddpm` with ``variance="beta_tilde"``.  ``steps`` defaults to 50.
    """
    eta = check_positive_float(eta, "eta", allow_zero=True)
    if steps is None and times is None:
        steps = 50
    run = prepare(
        "ddim", model, x_T, n=n, steps=steps, t_max=t_max, t_min=t_min, t_start=t_start, t_end=t_end,
        times=times, spacing=spacing, generator=generator, noise_sampler=noise_sampler, shape=shape,
        dtype=dtype, device=device, finite_coefficients=False, default_steps=50,
    )
    coefs = R.ddim_step(_levels(run), eta)
    return execute(run, linear_step(run, coefs, "denoise"), callback, post_step, progress, return_info)


# --------------------------------------------------------------------------------------------
# reverse SDE: Euler-Maruyama, reverse diffusion, predictor-corrector (out = score)
# --------------------------------------------------------------------------------------------
def _em_coefficients(schedule: Schedule, grid: Tensor) -> R.StepCoefficients:
    t = grid[:-1]
    return R.euler_maruyama_step(schedule.drift(t), schedule.g2(t), t - grid[1:])


def _em_step(run: Run) -> Step:
    return linear_step(run, _em_coefficients(run.model.schedule, run.grid), "score")


def _rd_step(run: Run) -> Step:
    return linear_step(run, R.reverse_diffusion_step(_levels(run)), "score")


@sampler(stochastic=True, step_based=True)
def euler_maruyama(
    model: DiffusionModel,
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
    shape: Optional[Tuple[int, ...]] = None,
    dtype: Optional[torch.dtype] = None,
    device: Device = None,
    progress: bool = False,
    t_max: Optional[float] = None,
    t_min: Optional[float] = None,
    times: Optional[Tensor] = None,
    noise_sampler: Optional[NoiseSampler] = None,
    return_info: bool = False,
) -> SamplerOutput:
    """Euler-Maruyama for the reverse SDE ``dx = [f x - g^2 score] dt + g dB_bar`` (Song et al. eq. 6;
    ``f``, ``g^2`` of docs/math.md section 1, ``score`` by I1), the step of
    :func:`densityformula.reverse.euler_maruyama_step` (I17):

        x_s = x_t - (f(t) x_t - g^2(t) score(x_t, t)) h + sqrt(g^2(t) h) z,   h = t - s.

    Weak order 1 in ``h``.  The grid must avoid times where ``f`` or ``g^2`` is infinite (LiYan at
    ``t = 1``; the default ``t_max`` is then log-SNR -10).  ``steps`` defaults to ``T`` or 1000.
    """
    run = prepare(
        "euler_maruyama", model, x_T, n=n, steps=steps, t_max=t_max, t_min=t_min, t_start=t_start,
        t_end=t_end, times=times, spacing=spacing, generator=generator, noise_sampler=noise_sampler,
        shape=shape, dtype=dtype, device=device, finite_coefficients=True, default_steps=1000,
    )
    return execute(run, _em_step(run), callback, post_step, progress, return_info)


@sampler(stochastic=True, step_based=True)
def reverse_diffusion(
    model: DiffusionModel,
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
    shape: Optional[Tuple[int, ...]] = None,
    dtype: Optional[torch.dtype] = None,
    device: Device = None,
    progress: bool = False,
    t_max: Optional[float] = None,
    t_min: Optional[float] = None,
    times: Optional[Tensor] = None,
    noise_sampler: Optional[NoiseSampler] = None,
    return_info: bool = False,
) -> SamplerOutput:
    """Song et al.'s reverse-diffusion predictor (their eq. 45-46), for any linear SDE, the step of
    :func:`densityformula.reverse.reverse_diffusion_step` (I18).

    The forward process discretized on the grid, ``x_t = alpha_{t|s} x_s + sigma_{t|s} z`` (exact
    transition), is reversed as

        x_s = (2 - alpha_{t|s}) x_t + sigma_{t|s}^2 score(x_t, t) + sigma_{t|s} z.

    For VP this is ``(2 - sqrt(1 - beta_i)) x + beta_i s + sqrt(beta_i) z``; for VE
    ``x + (sigma_t^2 - sigma_s^2) s + sqrt(sigma_t^2 - sigma_s^2) z``.  First order.
    """
    run = prepare(
        "reverse_diffusion", model, x_T, n=n, steps=steps, t_max=t_max, t_min=t_min, t_start=t_start,
        t_end=t_end, times=times, spacing=spacing, generator=generator, noise_sampler=noise_sampler,
        shape=shape, dtype=dtype, device=device, finite_coefficients=True, default_steps=1000,
    )
    return execute(run, _rd_step(run), callback, post_step, progress, return_info)


def _per_point_norm(v: Tensor) -> Tensor:
    out: Tensor = torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1)
    return out


def _langevin(x: Tensor, score: Tensor, z: Tensor, snr: float, alpha: float, t: float) -> Tensor:
    """``x + eps score + sqrt(2 eps) z`` with ``eps`` from :func:`densityformula.reverse.langevin_corrector_step`."""
    gn = float(_per_point_norm(score).mean())
    zn = float(_per_point_norm(z).mean())
    if gn == 0.0 or not math.isfinite(gn):
        raise SamplerDivergedError(f"langevin_step: the mean score norm is {gn} at t={t}; cannot set the step size")
    k = R.langevin_corrector_step(gn, zn, snr, alpha)
    return float(k.a) * x + float(k.c) * score + math.sqrt(float(k.var)) * z


def langevin_step(
    model: DiffusionModel,
    x: Tensor,
    t: float,
    *,
    snr: float = 0.16,
    alpha: float = 1.0,
    generator: Optional[torch.Generator] = None,
    noise: Optional[Tensor] = None,
) -> Tensor:
    """One Langevin corrector step at time ``t`` with Song et al.'s signal-to-noise rule (their Alg. 4-5),
    :func:`densityformula.reverse.langevin_corrector_step` (I19):

        eps = 2 alpha (snr ||z|| / ||score||)^2,   x <- x + eps score(x, t) + sqrt(2 eps) z,

    where the norms are per-point Euclidean norms averaged over the batch, as in Song et al.'s
    reference code (so the step size is shared by the batch), and ``alpha = 1 - beta_i`` (VP) or 1 (VE).
    ``noise``: the draw ``z`` (default ``torch.randn`` with ``generator``).
    """
    model = checked(check_model(model))  # the model-call boundary: a NaN score is a ModelOutputError
    check_x(x, "x")
    check_x_shape(model, x.shape[1:], "x")
    t = _finite_float(t, "t")
    snr = check_positive_float(snr, "snr")
    alpha = check_positive_float(alpha, "alpha")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if noise is not None:
        if not isinstance(noise, torch.Tensor) or noise.shape != x.shape:
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"noise must be a tensor shaped like x {tuple(x.shape)}, got {got}")
        if not bool(torch.isfinite(noise).all()):
            raise ValueError("noise contains NaN or inf")
    score = model.score(x, t)
    z = _randn(x, generator) if noise is None else noise.to(dtype=x.dtype, device=x.device)
    return _langevin(x, score, z, snr, alpha, t)


_PREDICTORS = ("reverse_diffusion", "euler_maruyama", "none")


@sampler(stochastic=True, step_based=True)
def predictor_corrector(
    model: DiffusionModel,
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
    shape: Optional[Tuple[int, ...]] = None,
    dtype: Optional[torch.dtype] = None,
    device: Device = None,
    progress: bool = False,
    t_max: Optional[float] = None,
    t_min: Optional[float] = None,
    times: Optional[Tensor] = None,
    noise_sampler: Optional[NoiseSampler] = None,
    return_info: bool = False,
) -> SamplerOutput:
    """Predictor-corrector sampling (Song et al. Alg. 1): at each grid time ``t_i`` run
    ``corrector_steps`` Langevin steps (:func:`langevin_step`, ``alpha = alpha_{t_i|t_{i+1}}^2``,
    i.e. ``1 - beta_i`` for VP and 1 for VE; I19) and then one predictor step ``t_i -> t_{i+1}``
    (``predictor="reverse_diffusion"`` (I18), ``"euler_maruyama"`` (I17), or ``"none"`` for
    corrector-only annealed Langevin dynamics (Song & Ermon 2019), which runs the Langevin steps at
    the levels ``t_1, ..., t_N = t_min``).  ``noise_sampler`` is called once per corrector step and
    once for the predictor, with the step's index.

    Note: the Langevin step does not shrink with the grid, so at a fixed ``snr`` the output keeps
    the unadjusted-Langevin bias as ``steps`` grows (for a Gaussian the stationary variance of the
    corrector is ``v / (1 - snr^2 alpha)``); see ``docs/bench_sampling.md``.
    """
    if predictor not in _PREDICTORS:
        raise ValueError(f"predictor must be one of {_PREDICTORS}, got {predictor!r}")
    if isinstance(corrector_steps, bool) or not isinstance(corrector_steps, Integral) or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be a non-negative int, got {corrector_steps!r}")
    corrector_steps = check_int(corrector_steps, "corrector_steps", 0)
    snr = check_positive_float(snr, "snr")
    run = prepare(
        "predictor_corrector", model, x_T, n=n, steps=steps, t_max=t_max, t_min=t_min, t_start=t_start,
        t_end=t_end, times=times, spacing=spacing, generator=generator, noise_sampler=noise_sampler,
        shape=shape, dtype=dtype, device=device, finite_coefficients=True, default_steps=1000,
    )
    alpha_ts = _levels(run).alpha_ts.tolist()
    pred: Optional[Step] = None
    if predictor == "reverse_diffusion":
        pred = _rd_step(run)
    elif predictor == "euler_maruyama":
        pred = _em_step(run)

    def step(i: int, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        # with a predictor: correct at t_i, then predict t_i -> t_{i+1} (Song et al.'s order);
        # without one (annealed Langevin): move to the next level t_{i+1} and correct there
        t_corr = run.t[i] if pred is not None else run.t[i + 1]
        for _ in range(corrector_steps):
            score = run.score(x, t_corr)
            x = _langevin(x, score, run.noise(x, i), snr, alpha_ts[i] * alpha_ts[i], t_corr)
        if pred is None:
            return x, None
        return pred(i, x)

    return execute(run, step, callback, post_step, progress, return_info)


#: name -> sampler, all with the shared signature; each carries ``stochastic`` and ``step_based``
SAMPLERS: Dict[str, Sampler] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "euler_maruyama": euler_maruyama,
    "reverse_diffusion": reverse_diffusion,
    "predictor_corrector": predictor_corrector,
    "probability_flow": probability_flow,
}
