"""Controllable generation (Song et al. 2021, section 5 and appendix I) (private module).

- :class:`GuidedModel` adds the gradient of a log-likelihood ``log p(y | x_t, t)`` to a model's
  score: ``grad log q_t(x | y) = grad log q_t(x) + grad_x log p(y | x_t = x)`` (Bayes), so any
  sampler run on it samples the conditional.  With the exact classifier (for a mixture, the
  component posterior: :func:`gmm_class_log_likelihood`) and the exact score this is exact.
- :func:`inpaint` fills unknown coordinates given known ones, by Song et al.'s replacement
  (imputation) method -- an approximation -- or by guidance with the likelihood of the known
  coordinates, ``log q(X_0[known] = y | X_t = x)`` (:func:`gmm_inpainting_log_likelihood`), which is
  exact for a mixture.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch

from .. import parameterization as P
from .._validation import TimeLike
from ..models import DiffusionModel, check_model, checked
from ..schedules import Schedule
from ..targets import GaussianMixture
from ._grid import check_times, check_x, default_times, infer_dtype_device, model_shape, prior_sample, resolve_alias
from ._run import Sampler, SamplerOutput

Tensor = torch.Tensor
LogLikelihood = Callable[[Tensor, TimeLike], Tensor]
#: labels, masks and values: a tensor or a (nested) sequence of numbers
ArrayLike = Union[Tensor, Sequence[Any], int, float]

__all__ = ["GuidedModel", "gmm_class_log_likelihood", "gmm_inpainting_log_likelihood", "inpaint"]

_LOG_2PI = math.log(2.0 * math.pi)


class GuidedModel(DiffusionModel):
    """A model whose score is ``score(x, t) + scale * grad_x log_likelihood(x, t)``.

    ``log_likelihood(x_t, t) -> (n,)`` is ``log p(y | X_t = x_t)`` for the wanted ``y`` (close over
    the labels); its gradient is taken with autograd.  Through the one conversion (I1) the guided
    noise prediction is ``eps - sigma * scale * grad`` and the guided denoiser
    ``D + (sigma^2 / alpha) * scale * grad`` (the conditional posterior mean, by Tweedie), so every
    sampler works on it.  ``scale = 1`` is exact Bayes; ``scale > 1`` is Dhariwal & Nichol's
    classifier-guidance temperature.  The denoiser needs ``alpha > 0`` (start below LiYan's t = 1).
    """

    def __init__(self, model: DiffusionModel, log_likelihood: LogLikelihood, scale: float = 1.0) -> None:
        model = check_model(model)
        if not callable(log_likelihood):
            raise TypeError("log_likelihood must be callable (x_t, t) -> (n,)")
        scale = float(scale)
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale}")
        self.base = model
        # the model-call boundary: a NaN / wrong shape from the base model names the base model
        self._checked_base = checked(model)
        self.schedule = model.schedule
        self.log_likelihood = log_likelihood
        self.scale = scale

    @property
    def valid_log_snr(self) -> Tuple[float, float]:
        """The base model's valid log-SNR range (guidance adds an exact likelihood gradient)."""
        return self.base.valid_log_snr

    @property
    def dtype(self) -> torch.dtype:
        """The base model's dtype (float64 when it states none)."""
        return infer_dtype_device(self.base, None, None)[0]

    @property
    def device(self) -> torch.device:
        """The base model's device (CPU when it states none)."""
        return infer_dtype_device(self.base, None, None)[1]

    @property
    def d(self) -> Optional[int]:
        """The base model's data dimension, if it states one."""
        try:
            return model_shape(self.base)[0]
        except ValueError:
            return None

    def guidance(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """``scale * grad_x log_likelihood(x_t, t)`` (autograd), same shape as ``x_t``."""
        with torch.enable_grad():
            xr = x_t.detach().requires_grad_(True)
            lp = self.log_likelihood(xr, t)
            if not isinstance(lp, Tensor) or lp.shape != (x_t.shape[0],):
                got = tuple(lp.shape) if isinstance(lp, Tensor) else type(lp).__name__
                raise ValueError(f"log_likelihood must return shape ({x_t.shape[0]},), got {got}")
            # a log-likelihood constant in x_t guides by zero (autograd would raise a RuntimeError)
            g = torch.autograd.grad(lp.sum(), xr, allow_unused=True)[0] if lp.requires_grad else None
        if g is None:
            g = torch.zeros_like(x_t)
        if not bool(torch.isfinite(g).all()):
            raise ValueError(f"log_likelihood's gradient (the guidance) is not finite at t={t}")
        return self.scale * g

    def score(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """Guided score ``grad log q_t(x) + scale grad log p(y | x_t)`` (Song et al. eq. 48)."""
        return self._checked_base.score(x_t, t) + self.guidance(x_t, t)

    def eps(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """Guided noise prediction ``eps - sigma * guidance`` (I1)."""
        _, s = self._scales(x_t, t)
        return self._checked_base.eps(x_t, t) + P.score_to_eps(self.guidance(x_t, t), s)

    def denoise(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """Guided denoiser from the guided noise prediction (I1): ``(x_t - sigma eps_g) / alpha``."""
        a, s = self._scales(x_t, t)
        if bool((a == 0).any()):
            raise ValueError("GuidedModel.denoise needs alpha > 0; start the sampler below t_max")
        return P.eps_to_x0(x_t, self.eps(x_t, t), a, s)

    def __repr__(self) -> str:
        return f"GuidedModel({self.base!r}, scale={self.scale})"


def _gauss_logpdf(x: Tensor, mean: Tensor, cov: Tensor) -> Tensor:
    """``log N(x_n; mean_k, cov_k)`` for ``x (n, d)``, ``mean (K, d)``, ``cov (K, d, d)`` -> ``(n, K)``."""
    L = torch.linalg.cholesky(cov)  # (K, d, d)
    diff = x[:, None, :] - mean  # (n, K, d)
    # solve L z = diff for every (n, k)
    z = torch.linalg.solve_triangular(L[None], diff[..., None], upper=False)[..., 0]
    logdet = 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    d = x.shape[1]
    out: Tensor = -0.5 * (d * _LOG_2PI + logdet[None] + (z * z).sum(-1))
    return out


def _marginal_parts(schedule: Schedule, t: TimeLike) -> Tuple[float, float]:
    """``(alpha_t, sigma_t^2)`` at one time ``t`` (the samplers call models with a Python float)."""
    if isinstance(t, torch.Tensor) and t.numel() != 1:
        raise ValueError("the mixture likelihoods take one time t for the whole batch")
    tt = torch.as_tensor(float(t), dtype=torch.float64)
    a = float(schedule.alpha(tt))
    s2 = float(schedule.sigma2(tt))
    return a, s2


def gmm_class_log_likelihood(gmm: GaussianMixture, schedule: Schedule, y: ArrayLike) -> LogLikelihood:
    """The exact classifier of a mixture: ``log p(k = y | X_t = x) = log r_y(x, t)`` (I3), the log of
    the component posterior of ``q_t`` (docs/math.md section 3), as a function ``(x_t, t) -> (n,)``.

    ``y``: an int (every point) or an ``(n,)`` integer tensor of component labels.  Computed with
    Cholesky factors and log-sum-exp (no underflow for far components), differentiable in ``x``.
    """
    K = gmm.K
    yt = torch.as_tensor(y, device=gmm.device)
    if yt.dtype in (torch.float16, torch.float32, torch.float64, torch.bool):
        raise TypeError(f"y must hold integer labels, got dtype {yt.dtype}")
    if bool((yt < 0).any()) or bool((yt >= K).any()):
        raise ValueError(f"y must lie in [0, {K}), got {yt}")

    def log_lik(x: Tensor, t: TimeLike) -> Tensor:
        a, s2 = _marginal_parts(schedule, t)
        cov = (a * a) * gmm.covs + s2 * torch.eye(gmm.d, dtype=gmm.dtype, device=gmm.device)
        joint = gmm.log_weights[None] + _gauss_logpdf(x, a * gmm.means, cov)  # (n, K)
        lab = yt.expand(x.shape[0]) if yt.ndim == 0 else yt
        if lab.shape != (x.shape[0],):
            raise ValueError(f"y must be an int or have shape ({x.shape[0]},), got {tuple(lab.shape)}")
        return joint.gather(1, lab[:, None].long())[:, 0] - torch.logsumexp(joint, dim=1)

    return log_lik


def _mask_values(gmm: GaussianMixture, mask: ArrayLike, values: ArrayLike) -> Tuple[Tensor, Tensor]:
    m = torch.as_tensor(mask, device=gmm.device)
    if m.dtype != torch.bool or m.shape != (gmm.d,):
        raise TypeError(f"mask must be a bool tensor of shape ({gmm.d},), got {m.dtype} {tuple(m.shape)}")
    nk = int(m.sum())
    if nk == 0 or nk == gmm.d:
        raise ValueError("mask must mark at least one known and one unknown coordinate")
    v = torch.as_tensor(values, dtype=gmm.dtype, device=gmm.device)
    if v.shape == (gmm.d,):
        v = v[m]
    if v.shape != (nk,):
        raise ValueError(f"values must have shape ({nk},) or ({gmm.d},), got {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise ValueError("values contains NaN or inf")
    return m, v


def gmm_inpainting_log_likelihood(
    gmm: GaussianMixture, schedule: Schedule, mask: ArrayLike, values: ArrayLike
) -> LogLikelihood:
    """``log q(X_0[mask] = values | X_t = x)`` of a mixture, a function ``(x_t, t) -> (n,)``.

    ``(X_0[known], X_t)`` is a mixture with components ``N((mu_kn, alpha mu), [[S_kn,kn, alpha S_kn,:],
    [alpha S_:,kn, alpha^2 S + sigma^2 I]])`` (docs/math.md I2), so the log-likelihood is
    ``log q(values, x) - log q_t(x)``.  Guiding with it samples ``q_t(x | X_0[known] = values)``
    exactly, whose unknown coordinates at ``t_min`` have the law ``gmm.condition(mask, values)``.
    Undefined where ``sigma_t = 0``.
    """
    m, v = _mask_values(gmm, mask, values)
    S = gmm.covs
    mu = gmm.means
    S_kk = S[:, m][:, :, m]  # (K, nk, nk)
    S_k_all = S[:, m, :]  # (K, nk, d)
    eye = torch.eye(gmm.d, dtype=gmm.dtype, device=gmm.device)

    def log_lik(x: Tensor, t: TimeLike) -> Tensor:
        a, s2 = _marginal_parts(schedule, t)
        if s2 <= 0.0:
            raise ValueError(f"the inpainting likelihood is singular at t={t} where sigma_t = 0")
        C = (a * a) * S + s2 * eye
        top = torch.cat([S_kk, a * S_k_all], dim=2)
        bot = torch.cat([a * S_k_all.transpose(1, 2), C], dim=2)
        cov = torch.cat([top, bot], dim=1)
        mean = torch.cat([mu[:, m], a * mu], dim=1)
        z = torch.cat([v.expand(x.shape[0], -1), x], dim=1)
        joint = torch.logsumexp(gmm.log_weights[None] + _gauss_logpdf(z, mean, cov), dim=1)
        marg = torch.logsumexp(gmm.log_weights[None] + _gauss_logpdf(x, a * mu, C), dim=1)
        return joint - marg

    return log_lik


def inpaint(
    model: DiffusionModel,
    mask: ArrayLike,
    values: ArrayLike,
    x_T: Optional[Tensor] = None,
    *,
    sampler: Union[str, Callable[..., SamplerOutput]] = "ddpm",
    method: str = "replacement",
    log_likelihood: Optional[LogLikelihood] = None,
    n: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    **sampler_kwargs: Any,
) -> Tensor:
    """Fill the unknown coordinates (``mask == False``) of ``(n, d)`` points given the known ones.

    ``method="replacement"`` (Song et al. appendix I.2, the imputation method): after every step to
    time ``s`` the known coordinates are overwritten with a fresh forward sample
    ``alpha_s values + sigma_s z``.  This is an approximation: the unknown coordinates follow the
    joint score at a random noisy version of the known ones instead of the conditional score; its
    bias is measured in ``docs/bench_sampling.md`` (it vanishes when known and unknown coordinates
    are independent).  Needs a step-based sampler (``sampler.step_based``; not ``probability_flow``).

    ``method="guidance"``: sample from ``GuidedModel(model, log_likelihood)`` where
    ``log_likelihood(x, t) = log q(X_0[known] = values | X_t = x)`` -- exact when it is exact, e.g.
    :func:`gmm_inpainting_log_likelihood` for a mixture.

    The known coordinates of the output are set to ``values``.  Other keyword arguments go to the
    sampler (``steps``, ``t_min``, ``times``, ...); by default every sampler starts at
    ``default_times(model)[0]``.
    """
    from ._samplers import SAMPLERS

    model = checked(check_model(model))  # the model-call boundary (the sampler's own is idempotent)
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {tuple(SAMPLERS)} or a callable, got {sampler!r}")
        sampler = SAMPLERS[sampler]
    elif not callable(sampler):
        raise TypeError("sampler must be a name or a callable")
    m = torch.as_tensor(mask)
    if m.dtype != torch.bool or m.ndim != 1:
        raise TypeError(f"mask must be a 1-d bool tensor, got {m.dtype} {tuple(m.shape)}")
    nk = int(m.sum())
    if nk == 0 or nk == m.shape[0]:
        raise ValueError("mask must mark at least one known and one unknown coordinate")
    if x_T is None:
        if n is None:
            raise ValueError("give x_T or n")
        x_T = prior_sample(
            model, n, t=_start_time(model, sampler_kwargs), shape=(m.shape[0],), generator=generator,
            dtype=sampler_kwargs.pop("dtype", None), device=sampler_kwargs.pop("device", None),
        )
    check_x(x_T, "x_T")
    if x_T.ndim != 2 or x_T.shape[1] != m.shape[0]:
        raise ValueError(f"x_T must have shape (n, {m.shape[0]}), got {tuple(x_T.shape)}")
    m = m.to(x_T.device)
    v = torch.as_tensor(values, dtype=x_T.dtype, device=x_T.device)
    if v.shape == (m.shape[0],):
        v = v[m]
    if v.shape != (nk,):
        raise ValueError(f"values must have shape ({nk},) or ({m.shape[0]},), got {tuple(v.shape)}")
    schedule = model.schedule
    if sampler_kwargs.get("return_info"):
        raise ValueError("inpaint returns the samples only; call the sampler itself for return_info")
    if method == "replacement":
        if log_likelihood is not None:
            raise ValueError("log_likelihood is only used with method='guidance'")
        # a user's callable is taken to be step-based (it must accept post_step)
        if isinstance(sampler, Sampler) and not sampler.step_based:
            raise ValueError(f"replacement inpainting needs a step-based sampler, not {sampler.__name__}")

        def post_step(x: Tensor, t: float) -> Tensor:
            tt = torch.tensor(t, dtype=torch.float64)
            a, s = float(schedule.alpha(tt)), float(schedule.sigma(tt))
            x = x.clone()
            z = torch.randn((x.shape[0], nk), generator=generator, dtype=x.dtype, device=x.device)
            x[:, m] = a * v + s * z
            return x

        res = sampler(model, x_T, generator=generator, post_step=post_step, **sampler_kwargs)
    elif method == "guidance":
        if log_likelihood is None:
            raise ValueError("method='guidance' needs log_likelihood (e.g. gmm_inpainting_log_likelihood)")
        res = sampler(GuidedModel(model, log_likelihood), x_T, generator=generator, **sampler_kwargs)
    else:
        raise ValueError(f"method must be 'replacement' or 'guidance', got {method!r}")
    out = (res if isinstance(res, Tensor) else res[0]).clone()
    out[:, m] = v
    return out


def _start_time(model: DiffusionModel, kwargs: Dict[str, Any]) -> float:
    """The sampler's start time for the prior draw; when none is given it is fixed in ``kwargs``."""
    times = kwargs.get("times")
    if times is not None:
        return float(check_times(model.schedule, times)[0])
    t0 = resolve_alias(kwargs.get("t_max"), kwargs.get("t_start"), "t_max", "t_start")
    if t0 is None:
        t0 = default_times(model)[0]
        kwargs["t_start"] = t0  # the alias: also understood by callables written before t_max
    return float(t0)
