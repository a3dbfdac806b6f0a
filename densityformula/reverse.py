"""The reverse process, defined once: transition kernels and the probability-flow vector field.

Every sampler (:mod:`densityformula.sampling`), the DDPM ELBO and the importance-weighted bound
(:mod:`densityformula.elbo`), the exact sampler densities and the probability-flow likelihood
(:mod:`densityformula.likelihood`) take their steps from here (docs/math.md section 8).

Gaussian reverse kernels.

Every sampler here has steps ``k = K..1`` of the form

    x_{k-1} = a_k x_k + c_k D_k(x_k) + sqrt(v_k) z,   z ~ N(0, I),   x_K ~ N(0, prior_var I),

where ``D_k(x) = model.denoise(in_scale_k x, model_t_k)`` is the model's denoiser evaluated at
the model-schedule time with the same log-SNR as step ``k`` (the sampler's variables are
rescaled into the model's coordinates by ``in_scale_k = alpha^model(t_k) / alpha_k``; for VP
models ``in_scale = 1``).

DDPM (Ho et al.; docs/math.md section 8, I15): with ``abar_k = prod_{j<=k} (1 - beta_j)``, the
posterior-mean parameterization ``mu_theta(x_k) = mu_tilde_k(x_k, x0 = D_k(x_k))`` gives
``a_k = sqrt(alpha_k) (1 - abar_{k-1}) / (1 - abar_k)``, ``c_k = sqrt(abar_{k-1}) beta_k / (1 - abar_k)``
and ``v_k = beta_k`` or ``beta_tilde_k = (1 - abar_{k-1}) beta_k / (1 - abar_k)`` for ``k >= 2``.
Step 1 is the decoder: ``a_1 = 0``, ``c_1 = 1`` and ``v_1 = beta_1`` in both variants
(``beta_tilde_1 = 0``: continuous data need a non-degenerate decoder), or ``decoder_variance``.

Euler--Maruyama for the reverse SDE ``dx = (f x - g^2 s) dt + g dB-bar`` on a decreasing time
grid ``t_K > ... > t_0`` of the model's schedule: with ``s = -(x - alpha D)/sigma^2`` (I1) and
``h = t_k - t_{k-1}``, ``a_k = 1 - h f - h g^2/sigma^2``, ``c_k = h g^2 alpha / sigma^2``,
``v_k = h g^2``, all at ``t_k`` (I17).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Tuple, Union

import torch

from .models import DiffusionModel
from .schedules import Discrete, Schedule

Tensor = torch.Tensor

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class ReverseKernels:
    """Coefficients of ``x_{k-1} = a_k x_k + c_k D_k(x_k) + sqrt(v_k) z`` for ``k = 1..K``.

    Arrays are float64, shape ``(K,)``, index ``k - 1`` for step ``k``.
    """

    model: DiffusionModel
    a: Tensor
    c: Tensor
    var: Tensor
    model_t: Tensor
    in_scale: Tensor
    prior_var: float
    kind: str
    # DDPM only (None otherwise): forward-process quantities of the discrete schedule
    alpha_bars: Optional[Tensor] = None  # (K+1,)
    betas: Optional[Tensor] = None  # (K,)
    schedule: Optional[Discrete] = None  # the discrete schedule of the steps
    beta_tilde: Optional[Tensor] = None  # (K,) posterior variances (1 - abar_{k-1}) beta_k / (1 - abar_k)

    @property
    def K(self) -> int:
        return int(self.a.shape[0])

    def ddpm_schedule(self) -> Discrete:
        """The discrete schedule of DDPM kernels (I15; ``ValueError`` for other kernels)."""
        if self.kind != "ddpm" or self.schedule is None:
            raise ValueError(f"these are {self.kind!r} kernels; the DDPM quantities need sampler='ddpm'")
        return self.schedule

    def ddpm_beta_tilde(self) -> Tensor:
        """``beta_tilde_k = (1 - abar_{k-1}) beta_k / (1 - abar_k)`` (``(K,)``) of DDPM kernels (I15;
        ``ValueError`` for other kernels)."""
        self.ddpm_schedule()
        if self.beta_tilde is None:
            raise ValueError("these DDPM kernels carry no beta_tilde")
        return self.beta_tilde

    def denoise(self, x: Tensor, k: int) -> Tensor:
        """``D_k(x)`` for step ``k`` (1-based), all points at once."""
        i = k - 1
        t = self.model_t[i].to(x.device)
        s = float(self.in_scale[i])
        xin = x if s == 1.0 else x * s
        return self.model.denoise(xin, t)

    def mean(self, x: Tensor, k: int, D: Optional[Tensor] = None) -> Tensor:
        """``a_k x + c_k D_k(x)``."""
        i = k - 1
        if D is None:
            D = self.denoise(x, k)
        return float(self.a[i]) * x + float(self.c[i]) * D


def _model_times(model: DiffusionModel, lam: Tensor, same: bool) -> Tuple[Tensor, Tensor, int]:
    """Model time and input scale with log-SNR ``lam`` (clamped into the model's range, warned)."""
    sched = model.schedule
    if same:
        k = torch.arange(1, lam.shape[0] + 1, dtype=torch.float64)
        return k, torch.ones_like(k), 0
    lo, hi = sched.log_snr_range
    clamped = (lam < lo) | (lam > hi)
    n_clamped = int(clamped.sum())
    if n_clamped:
        warnings.warn(
            f"{n_clamped} step(s) have a log-SNR outside the model schedule's range [{lo:.4g}, {hi:.4g}]; "
            "the model is evaluated at the nearest end of its range there",
            RuntimeWarning,
            stacklevel=3,
        )
    lam_c = lam.clamp(lo, hi)
    t = sched.t_from_log_snr(lam_c)
    # sampler variable x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) z; model variable alpha_m x0 +
    # sigma_m z with the same SNR, so x_model = (alpha_m / sqrt(abar_k)) x_k = (sigma_m / sqrt(1-abar_k)) x_k.
    return t, input_scale(sched, t, lam), n_clamped


def input_scale(sched: Schedule, t: Tensor, lam: Tensor) -> Tensor:
    """``x_model / x_vp`` at log-SNR ``lam``: ``alpha_m/sqrt(sigmoid(lam)) = sigma_m/sqrt(sigmoid(-lam))`` (I21).

    The two ratios are equal in exact arithmetic; the noise ratio is used for ``lam < 0`` and the
    signal ratio otherwise, because near an end of the range the small one of ``alpha_m`` /
    ``sigma_m`` is computed from a time ``t`` that has lost its relative precision (e.g. LiYan at
    ``lam = -30``: ``1 - t = 9e-14`` is known to 1e-3).  Where the log-SNR was clamped into the
    model's range this also matches the noise at the noisy end and the signal at the clean end.
    """
    scale_a = sched.alpha(t) / torch.exp(0.5 * _log_sigmoid(lam))
    scale_s = sched.sigma(t) / torch.exp(0.5 * _log_sigmoid(-lam))
    return torch.where(lam < 0, scale_s, scale_a)


def _log_sigmoid(lam: Tensor) -> Tensor:
    return -torch.logaddexp(torch.zeros_like(lam), -lam)


def same_discrete(a: Schedule, b: Schedule) -> bool:
    """Whether two schedules are the same discrete schedule (same betas to 1e-12)."""
    return (
        isinstance(a, Discrete)
        and isinstance(b, Discrete)
        and a.T == b.T
        and bool(torch.allclose(a.betas, b.betas, rtol=1e-12, atol=0.0))
    )


def default_discrete(model: DiffusionModel, schedule: Optional[Discrete]) -> Discrete:
    """``schedule``, else the model's own schedule when discrete, else ``Discrete.ddpm_linear(1000)``."""
    if schedule is not None:
        if not isinstance(schedule, Discrete):
            raise TypeError(f"schedule must be a densityformula.schedules.Discrete, got {type(schedule).__name__}")
        return schedule
    if isinstance(model.schedule, Discrete):
        return model.schedule
    return Discrete.ddpm_linear(T=1000)


def ddpm_kernels(
    model: DiffusionModel,
    schedule: Discrete,
    variance: str = "beta",
    decoder_variance: Optional[float] = None,
) -> ReverseKernels:
    """The DDPM ancestral sampler of ``model`` on ``schedule`` (see the module docstring)."""
    if not isinstance(model, DiffusionModel):
        raise TypeError(f"model must be a DiffusionModel, got {type(model).__name__}")
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"variance must be 'beta' or 'beta_tilde', got {variance!r}")
    if decoder_variance is not None and not (
        isinstance(decoder_variance, (int, float))
        and not isinstance(decoder_variance, bool)
        and decoder_variance > 0
        and math.isfinite(decoder_variance)
    ):
        raise ValueError(f"decoder_variance must be a positive float, got {decoder_variance!r}")
    betas = schedule.betas.double()
    log_ab = schedule.log_alpha_bars
    ab = schedule.alpha_bars
    # every step k -> k-1 from the one DDPM step function (I15); step 1 is its decoder step
    levels = discrete_step_levels(schedule)
    a, c, var = ddpm_step(levels, variance, decoder_variance)
    om_prev, om_k = levels.sigma2_s, levels.sigma2_t
    beta_tilde = om_prev * betas / om_k
    lam = log_ab[1:] - torch.log(om_k)
    same = same_discrete(model.schedule, schedule)
    t, scale, _ = _model_times(model, lam, same)
    return ReverseKernels(
        model, a, c, var, t, scale, 1.0, "ddpm", alpha_bars=ab, betas=betas, schedule=schedule, beta_tilde=beta_tilde
    )


def em_kernels(model: DiffusionModel, times: Any, prior_var: Optional[float] = None) -> ReverseKernels:
    """Euler--Maruyama steps of the reverse SDE of ``model`` on a decreasing grid ``times``.

    ``times``: ``(K+1,)`` model times ``t_K > ... > t_0`` (given in either order; sorted here).
    ``prior_var`` defaults to ``alpha(t_K)^2 + sigma(t_K)^2`` (1 for VP schedules).
    """
    sched = model.schedule
    tt = torch.as_tensor(times, dtype=torch.float64).flatten().sort().values
    if tt.numel() < 2 or bool((tt[1:] <= tt[:-1]).any()):
        raise ValueError("times must hold at least two distinct, non-repeated model times")
    t_hi, t_lo = tt[1:], tt[:-1]
    h = t_hi - t_lo
    f, g2 = sched.drift(t_hi), sched.g2(t_hi)
    s2, alpha = sched.sigma2(t_hi), sched.alpha(t_hi)
    if bool((s2 <= 0).any()):
        raise ValueError("times must not include a step starting where sigma = 0")
    # the one Euler--Maruyama step (I17), its score written through the denoiser (I1)
    a, c, var = score_to_denoiser_coefficients(euler_maruyama_step(f, g2, h), alpha, s2)
    if prior_var is None:
        prior_var = float(sched.alpha2(tt[-1]) + sched.sigma2(tt[-1]))
    return ReverseKernels(model, a, c, var, t_hi, torch.ones_like(t_hi), float(prior_var), "euler_maruyama")


def sampler_kernels(
    model: DiffusionModel,
    sampler: str,
    *,
    schedule: Optional[Discrete],
    variance: str,
    decoder_variance: Optional[float],
    prior_var: Optional[float],
    times: Any,
) -> ReverseKernels:
    """The reverse kernels of ``sampler`` (``"ddpm"`` or ``"euler_maruyama"``) for ``model``: the
    one place where the sampler densities (I13, I14) choose what they propagate."""
    if sampler == "ddpm":
        kern = ddpm_kernels(model, default_discrete(model, schedule), variance, decoder_variance)
        if prior_var is not None:
            kern.prior_var = float(prior_var)
        return kern
    if sampler == "euler_maruyama":
        if times is None:
            raise ValueError("times (the model-schedule time grid) is required for sampler='euler_maruyama'")
        return em_kernels(model, times, prior_var)
    raise ValueError(f"sampler must be 'ddpm' or 'euler_maruyama', got {sampler!r}")


# --------------------------------------------------------------------------------------------
# probability-flow vector field (I20; its likelihood is I12)
# --------------------------------------------------------------------------------------------
def pf_coefficients(schedule: Schedule, lam: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``t(lambda)``, ``alpha``, ``sigma^2`` and ``c = d log alpha / d lambda`` (float64) (I20).

    For a variance-preserving schedule ``c = sigmoid(-lambda)/2`` as a function of ``lambda``;
    otherwise ``c = -f sigma^2 / g^2``.
    """
    lo, hi = schedule.log_snr_range
    lam = lam.clamp(lo, hi)  # solvers may probe just past the ends
    t = schedule.t_from_log_snr(lam)
    alpha = schedule.alpha(t)
    if schedule.variance_preserving:
        # alpha^2 = sigmoid(lambda) exactly, so c = sigmoid(-lambda)/2 as a function of lambda;
        # -f sigma^2/g^2 would be inf * 0 where t(lambda) rounds to the end t = 1.
        s2 = torch.sigmoid(-lam)
        c = 0.5 * s2
    else:
        s2 = schedule.sigma2(t)
        c = -schedule.drift(t) * s2 / schedule.g2(t)
    return t, alpha, s2, c


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    """A scalar or per-point ``(k,)`` coefficient reshaped to broadcast against ``x (k, d)``."""
    v = v.to(x.dtype)
    return v[:, None] if v.ndim == 1 else v


def pf_velocity(
    model: DiffusionModel,
    x: Tensor,
    lam: Tensor,
    *,
    trace: str = "none",
    probes: Optional[Tensor] = None,
    sketch: Optional[Tensor] = None,
    create_graph: bool = False,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Probability-flow velocity in the log-SNR clock and (optionally) its divergence (I20).

    ``F = c x + (alpha D(x, t) - x)/2`` with ``t = t(lambda)``, ``c = d log alpha/d lambda``;
    ``div F = d c + (alpha tr dD/dx - d)/2``.  Every trace assumes the rows of ``x`` are
    independent points (row ``i`` of ``D`` depends on row ``i`` of ``x`` only).

    Args:
        model: any :class:`DiffusionModel` (its ``schedule`` defines ``t(lambda)``).
        x: ``(k, d)`` points in the model's coordinates.
        lam: scalar or ``(k,)`` log-SNR (float64).
        trace: ``"none"`` (no divergence); ``"exact"``: the model's closed-form
            ``score_divergence`` if it has one, else ``tr dD/dx`` from one ``torch.func.vjp``
            vmapped over the ``d`` basis covectors (a few batched backward passes), falling back
            to ``"autograd"`` for a model ``torch.func`` cannot transform; ``"func"``: the
            ``torch.func`` trace, without the fallback; ``"autograd"`` (``d`` sequential backward
            passes, exact); ``"hutchinson"`` (``v_j^T (dF/dx) v_j`` for each of ``probes``);
            ``"hutchpp"``: Hutch++ of ``dD/dx`` with the per-point ``sketch`` and residual
            ``probes`` (identity H++ of :mod:`densityformula.likelihood._trace`).
        probes: ``(P, k, d)`` probe vectors for ``"hutchinson"`` / residual probes for ``"hutchpp"``.
        sketch: ``(r, k, d)`` sketch vectors for ``"hutchpp"``.
        create_graph: keep ``F`` and the divergence attached to the autograd graph (of the model's
            parameters and of ``x``), so that a solve can be differentiated (likelihood training).

    Returns:
        ``(F (k, d), div F (k,) or None)``; for ``"hutchinson"`` and ``"hutchpp"`` the divergence
        is ``(k, P)``, one unbiased single-probe estimate per column.
    """
    from .likelihood import _trace

    t, alpha, s2, c = pf_coefficients(model.schedule, lam)
    d = x.shape[1]
    cb, ab = _bcast(c, x), _bcast(alpha, x)
    grad_ctx = torch.enable_grad if create_graph else torch.no_grad
    if trace == "none":
        with grad_ctx():
            return cb * x + 0.5 * (ab * model.denoise(x, t) - x), None
    if trace not in ("exact", "func", "autograd", "hutchinson", "hutchpp"):
        raise ValueError(f"trace must be 'exact', 'func', 'autograd', 'hutchinson' or 'hutchpp', got {trace!r}")
    c_x, a_x = c.to(x.dtype), alpha.to(x.dtype)  # scalars or (k,)
    if trace == "exact" and model.has_exact_divergence:
        with grad_ctx():
            # one pass where the model shares it (AnalyticModel: one set of responsibilities, I4)
            D, div_s = model.denoise_and_score_divergence(x, t)
            F = cb * x + 0.5 * (ab * D - x)
            div = d * c_x + 0.5 * s2.to(x.dtype) * div_s
            return F, div
    if trace in ("exact", "func", "hutchpp"):

        def den(z: Tensor) -> Tensor:
            return model.denoise(z, t)

        xin = x if create_graph else x.detach()
        with grad_ctx():
            if trace == "hutchpp":
                if probes is None or sketch is None:
                    raise ValueError("probes and sketch are required for trace='hutchpp'")
                D, est = _trace.hutchpp_trace(den, xin, sketch, probes)  # (k, P) traces of dD/dx
                F = cb * xin + 0.5 * (ab * D - xin)
                cc, aa = (c_x[:, None], a_x[:, None]) if c_x.ndim else (c_x, a_x)
                div = d * cc + 0.5 * (aa * est - d)
                return (F, div) if create_graph else (F.detach(), div.detach())
            res = _trace.exact_trace(den, xin) if trace == "func" else _trace.try_exact_trace(den, xin)
            if res is not None:
                D, tr = res
                F = cb * xin + 0.5 * (ab * D - xin)
                div = d * c_x + 0.5 * (a_x * tr - d)
                return (F, div) if create_graph else (F.detach(), div.detach())
        # trace="exact" on a model torch.func cannot transform: the sequential autograd passes below
    with torch.enable_grad():
        xg = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
        F = cb * xg + 0.5 * (ab * model.denoise(xg, t) - xg)
        if trace == "hutchinson":
            if probes is None:
                raise ValueError("probes are required for trace='hutchinson'")
            # one backward pass per probe through the same graph (on CPU this beats
            # is_grads_batched, whose vmap over the backward was 2-30x slower in d = 64)
            cols = []
            for j in range(probes.shape[0]):
                keep = create_graph or j + 1 < probes.shape[0]
                (vjp,) = torch.autograd.grad(F, xg, probes[j], retain_graph=keep, create_graph=create_graph)
                cols.append((vjp * probes[j]).sum(-1))
            div = torch.stack(cols, 1)
        else:
            # exact trace: d backward passes, pass i gives row i of dF/dx for every point
            div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for i in range(d):
                keep = create_graph or i + 1 < d
                (gi,) = torch.autograd.grad(F[:, i].sum(), xg, retain_graph=keep, create_graph=create_graph)
                div = div + gi[:, i]
    if create_graph:
        return F, div
    return F.detach(), div.detach()


# --------------------------------------------------------------------------------------------
# step coefficients of the reverse processes (docs/math.md section 8, I15-I19)
#
# Every sampler of densityformula.sampling, ddpm_kernels and em_kernels take the coefficients
# of their steps from these functions; each returns ``StepCoefficients(a, c, var)`` of
#
#     x_s = a x_t + c out(x_t) + sqrt(var) z,   z ~ N(0, I),
#
# where ``out`` is the model's denoiser ``D(x_t, t)`` (DDPM, DDIM) or its score (Euler--Maruyama,
# reverse diffusion, Langevin), as each function states; score_to_denoiser_coefficients converts.
# --------------------------------------------------------------------------------------------
class StepLevels(NamedTuple):
    """The two noise levels of reverse steps ``t -> s`` (``s < t``) and the exact forward
    transition between them, float64, any shape (docs/math.md section 8):

        X_t | X_s ~ N(alpha_ts X_s, sigma2_ts I),  alpha_ts = alpha_t / alpha_s,
        sigma2_ts = sigma_t^2 - alpha_ts^2 sigma_s^2.
    """

    alpha_t: Tensor
    sigma2_t: Tensor
    alpha_s: Tensor
    sigma2_s: Tensor
    alpha_ts: Tensor
    sigma2_ts: Tensor


class StepCoefficients(NamedTuple):
    """``x_s = a x_t + c out(x_t) + sqrt(var) z`` (float64; ``out`` is ``D`` or the score, per step
    function; docs/math.md section 8)."""

    a: Tensor
    c: Tensor
    var: Tensor


def step_levels(schedule: Schedule, t: Union[float, Tensor], s: Union[float, Tensor]) -> StepLevels:
    """:class:`StepLevels` of ``schedule`` for the steps ``t -> s`` (float64), the forward
    transition of docs/math.md section 1.

    ``sigma2_ts`` is computed as ``-sigma_t^2 expm1(lambda_t - lambda_s)``, which equals
    ``sigma_t^2 - alpha_ts^2 sigma_s^2`` because ``alpha_ts^2 sigma_s^2 = sigma_t^2 e^(lambda_t -
    lambda_s)``: no cancellation for short steps, exact where a log-SNR is infinite (``alpha_t = 0``
    or ``sigma_s = 0``).
    """
    tt = schedule.check_time(t, "t")
    ss = schedule.check_time(s, "s")
    if not bool((ss < tt).all()):
        raise ValueError("s must be smaller than t (a reverse step goes from t down to s)")
    a_t, a_s = schedule.alpha(tt), schedule.alpha(ss)
    s2_t, s2_s = schedule.sigma2(tt), schedule.sigma2(ss)
    a_ts = torch.where(a_s > 0, a_t / torch.where(a_s > 0, a_s, torch.ones_like(a_s)), torch.zeros_like(a_t))
    s2_ts = -s2_t * torch.expm1(schedule.log_snr(tt) - schedule.log_snr(ss))
    return StepLevels(a_t, s2_t, a_s, s2_s, a_ts, s2_ts)


def discrete_step_levels(schedule: Discrete) -> StepLevels:
    """:class:`StepLevels` of every step ``k -> k - 1`` (``k = 1..T``) of a DDPM schedule, from its
    arrays: ``alpha_ts^2 = 1 - beta_k``, ``sigma2_ts = beta_k`` exactly (Ho et al.; I15)."""
    betas = schedule.betas.double()
    ab = schedule.alpha_bars
    one_m_ab = schedule.one_minus_alpha_bars  # 1 - abar_k without cancellation
    return StepLevels(
        alpha_t=torch.sqrt(ab[1:]),
        sigma2_t=one_m_ab[1:],
        alpha_s=torch.sqrt(ab[:-1]),
        sigma2_s=one_m_ab[:-1],
        alpha_ts=torch.sqrt(1.0 - betas),
        sigma2_ts=betas,
    )


def ddpm_step(
    levels: StepLevels, variance: str = "beta", decoder_variance: Optional[float] = None
) -> StepCoefficients:
    """The DDPM ancestral step ``t -> s`` in the posterior-mean parameterization (I15), ``out = D``:

        x_s = (alpha_ts sigma_s^2 / sigma_t^2) x_t + (alpha_s sigma2_ts / sigma_t^2) D(x_t) + sqrt(v) z,

    the mean of the forward posterior ``q(x_s | x_t, x_0 = D)``, with ``v = sigma2_ts`` (``"beta"``)
    or ``v = sigma2_ts sigma_s^2 / sigma_t^2`` (``"beta_tilde"``, the posterior variance).  The
    decoder step onto ``sigma_s = 0`` has ``a = 0``, ``c = alpha_s`` and ``v = decoder_variance``,
    by default ``sigma2_ts`` (``beta_1``) in both variants.  On a DDPM schedule
    (:func:`discrete_step_levels`) this is Ho et al.'s ``a_k, c_k, v_k`` of :func:`ddpm_kernels`.
    """
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"variance must be 'beta' or 'beta_tilde', got {variance!r}")
    lv = levels
    a = lv.alpha_ts * lv.sigma2_s / lv.sigma2_t
    c = lv.alpha_s * lv.sigma2_ts / lv.sigma2_t
    var = lv.sigma2_ts.clone() if variance == "beta" else lv.sigma2_s * lv.sigma2_ts / lv.sigma2_t
    decoder = lv.sigma2_s == 0
    if bool(decoder.any()):
        if decoder_variance is None:
            v_dec = lv.sigma2_ts
        else:
            if not (isinstance(decoder_variance, (int, float)) and decoder_variance >= 0
                    and math.isfinite(decoder_variance)):
                raise ValueError(f"decoder_variance must be a finite float >= 0, got {decoder_variance!r}")
            v_dec = torch.full_like(var, float(decoder_variance))
        a = torch.where(decoder, torch.zeros_like(a), a)
        c = torch.where(decoder, lv.alpha_s, c)
        var = torch.where(decoder, v_dec, var)
    return StepCoefficients(a, c, var)


def ddim_step(levels: StepLevels, eta: float = 0.0) -> StepCoefficients:
    """The DDIM step ``t -> s`` (I16), ``out = D``:

        x_s = alpha_s D + sqrt(sigma_s^2 - c2) eps_hat + sqrt(c2) z,   c2 = eta^2 sigma2_ts sigma_s^2 / sigma_t^2,

    with ``eps_hat = (x_t - alpha_t D) / sigma_t`` (I1), i.e. ``a = sqrt(sigma_s^2 - c2) / sigma_t``,
    ``c = alpha_s - a alpha_t``, ``var = c2``.  ``eta = 0``: deterministic (the first-order
    exponential step of the probability-flow ODE); ``eta = 1``: the law of :func:`ddpm_step` with
    ``"beta_tilde"``.
    """
    eta = float(eta)
    if not (math.isfinite(eta) and eta >= 0.0):
        raise ValueError(f"eta must be a finite float >= 0, got {eta}")
    lv = levels
    c2 = (eta * eta) * lv.sigma2_ts * lv.sigma2_s / lv.sigma2_t
    a = torch.sqrt((lv.sigma2_s - c2).clamp(min=0.0)) / torch.sqrt(lv.sigma2_t)
    return StepCoefficients(a, lv.alpha_s - a * lv.alpha_t, c2)


def euler_maruyama_step(drift: Tensor, g2: Tensor, h: Tensor) -> StepCoefficients:
    """One Euler--Maruyama step of the reverse SDE ``dx = (f x - g^2 score) dt + g dB-bar`` from ``t``
    to ``s = t - h`` with ``f = drift(t)``, ``g^2 = g2(t)`` (I17), ``out = score(x_t, t)``:

        x_s = (1 - h f) x_t + h g^2 score + sqrt(h g^2) z.
    """
    hg2 = h * g2
    return StepCoefficients(1.0 - h * drift, hg2, hg2)


def reverse_diffusion_step(levels: StepLevels) -> StepCoefficients:
    """Song et al.'s reverse-diffusion predictor ``t -> s`` (their eq. 45-46; I18), ``out = score``:

        x_s = (2 - alpha_ts) x_t + sigma2_ts score(x_t, t) + sqrt(sigma2_ts) z

    (VP: ``(2 - sqrt(1 - beta_i)) x + beta_i s + sqrt(beta_i) z``; VE: ``x + (sigma_t^2 - sigma_s^2) s + ...``).
    """
    return StepCoefficients(2.0 - levels.alpha_ts, levels.sigma2_ts, levels.sigma2_ts.clone())


def langevin_corrector_step(score_norm: float, noise_norm: float, snr: float, alpha: float = 1.0) -> StepCoefficients:
    """One Langevin corrector step with Song et al.'s signal-to-noise rule (their Alg. 4-5; I19),
    ``out = score(x, t)``:

        eps = 2 alpha (snr ||z|| / ||score||)^2,   x <- x + eps score + sqrt(2 eps) z,

    ``score_norm``/``noise_norm``: the norms of the score and of the noise draw ``z`` (Song et al.:
    per-point norms averaged over the batch); ``alpha = 1 - beta_i`` (VP) or 1 (VE).
    """
    if score_norm == 0.0 or not math.isfinite(score_norm):
        raise FloatingPointError(f"the score norm is {score_norm}; cannot set the Langevin step size")
    snr, alpha = float(snr), float(alpha)
    if not (math.isfinite(snr) and snr > 0.0):
        raise ValueError(f"snr must be a positive float, got {snr}")
    eps = 2.0 * alpha * (snr * noise_norm / score_norm) ** 2
    one, step, var = torch.tensor([1.0, eps, 2.0 * eps], dtype=torch.float64)
    return StepCoefficients(one, step, var)


def score_to_denoiser_coefficients(coefs: StepCoefficients, alpha: Tensor, sigma2: Tensor) -> StepCoefficients:
    """The same step with ``out = D``: ``score = (alpha D - x_t) / sigma_t^2`` (I1) gives
    ``a_D = a - c / sigma_t^2`` and ``c_D = c alpha / sigma_t^2`` (``alpha``, ``sigma2`` at ``t``)."""
    return StepCoefficients(coefs.a - coefs.c / sigma2, coefs.c * alpha / sigma2, coefs.var)
