"""Evidence lower bounds of diffusion models (docs/math.md section 5: I8, I9, I10, I11).

- :func:`ddpm`: Ho et al.'s discrete ELBO ``-(L_T + sum_{k>=2} L_{k-1} + L_0)`` of the model's
  DDPM ancestral sampler, per point, with exact Gaussian KLs; a lower bound on the log density
  of THAT sampler's output, pointwise (I9).
- :func:`ddpm_objective`: the same quantity as the weighted denoising loss that training
  minimises, without the theta-independent constants (``ddpm = constant - objective``).
- :func:`importance_weighted`: the K-sample bound (I10), non-decreasing in K.
- :func:`continuous`: the continuous-time ELBO (I8): the density formula with the model's
  denoiser, computed by :func:`densityformula.density_formula`.
- :func:`kl_de_bruijn`: ``KL(q || p)`` from the two laws' diffused scores (I11).

Continuous data: the decoder ``p(x_0 | x_1)`` is a Gaussian density ``N(x_0; D_1(x_1), v_1 I)``
(not Ho et al.'s discretised decoder for 8-bit images), so every quantity here is a density
in nats; see :func:`densityformula.bits_per_dim` for the conversion to bits per dimension of
quantised data.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import parameterization as P
from . import reverse
from ._validation import check_int, check_points, check_positive_float, model_dimension
from .estimate import Estimate
from .models import AnalyticModel, CheckedModel, DiffusionModel, check_model, checked
from .reverse import ReverseKernels
from .schedules import Discrete, LiYan
from .targets import GaussianMixture

Tensor = torch.Tensor

__all__ = ["ddpm", "ddpm_objective", "importance_weighted", "continuous", "kl_de_bruijn"]

_LOG_2PI = math.log(2.0 * math.pi)
_MAX_BATCH = 1 << 16  # points per model call
_BYTES_PER_ENTRY = 8  # a float64 work-array entry (the memory-budget accounting of ddpm)


def _check_x(model: object, x: object) -> Tensor:
    """``x`` if it is a finite, non-empty ``(n, d)`` real floating tensor (``_validation.check_points``)."""
    check_model(model)
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (n, d), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"x must be a floating tensor of shape (n, d), got shape {tuple(x.shape)}")
    return check_points(x, int(x.shape[1]), x.dtype, x.device, "x")


def _boundary(model: DiffusionModel) -> CheckedModel:
    """``model`` behind the model-call boundary: every output checked for shape, dtype, device and
    finiteness (:func:`densityformula.models.checked`, idempotent)."""
    return checked(check_model(model))


def _check_gen(generator: object) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")


def _ddpm_interval(kern: ReverseKernels) -> Dict[str, Any]:
    """``extras`` entries of a DDPM bound: the log-SNRs of its steps (``lambda_T`` to ``lambda_1``) and
    the model times of its first and last step (docs/math.md section 10, I24)."""
    lam = kern.ddpm_schedule().log_snrs[1:]
    return {
        "log_snr_interval": (float(lam.min()), float(lam.max())),
        "t_min": float(kern.model_t[0]),
        "t_max": float(kern.model_t[-1]),
    }


def _prior_kl(x0: Tensor, ab_T: float, om_T: float, prior_var: float) -> Tensor:
    """``L_T = KL(N(sqrt(abar_T) x0, (1-abar_T) I) || N(0, P I))`` per point (``om_T = 1 - abar_T``)."""
    d = x0.shape[1]
    om = om_T
    return 0.5 * (
        d * om / prior_var + ab_T * (x0**2).sum(-1) / prior_var - d + d * math.log(prior_var / om)
    )


def _step_terms(kern: ReverseKernels) -> Dict[str, Tensor]:
    """Per-step weight ``w_k`` and constant ``const_k`` with ``ell_k = const_k + w_k |x0 - D_k|^2 / 2``.

    ``ell_1 = L_0 = -log N(x0; D_1(x_1), v_1 I)``, ``ell_k = L_{k-1}`` (k >= 2) (Ho et al.).
    Returned per unit dimension for the constant (multiply by d).
    """
    beta_tilde = kern.ddpm_beta_tilde()
    v = kern.var
    w = kern.c**2 / v
    const = torch.zeros_like(v)
    bt, vv = beta_tilde[1:], v[1:]
    const[1:] = 0.5 * (bt / vv - 1.0 + torch.log(vv / bt))
    w[0] = 1.0 / v[0]
    const[0] = 0.5 * (_LOG_2PI + math.log(float(v[0])))
    return {"w": w, "const": const}


def _cv_coefficients(kern: ReverseKernels, cv_data_var: Optional[float]) -> Tensor:
    """``gamma_k sigma_k^2 / abar_k`` of the control variate ``(|eps|^2 - d)`` (see :func:`ddpm`)."""
    lam = kern.ddpm_schedule().log_snrs[1:]  # log(abar_k / (1 - abar_k))
    if cv_data_var is None:
        return torch.zeros_like(lam)
    snr_v = torch.exp(lam) * cv_data_var
    gamma = (snr_v / (1.0 + snr_v)) ** 2
    return gamma * torch.exp(-lam)


def _sq_errors(
    kern: ReverseKernels,
    x0: Tensor,
    ks: Tensor,
    n_samples: int,
    generator: Optional[torch.Generator],
    cv: Optional[Tensor] = None,
    differentiable: bool = False,
) -> Tensor:
    """``|x0 - D_k(x_k)|^2 - cv_k (|eps|^2 - d)`` for ``x_k ~ q(x_k | x0)``, ``(len(ks), n_samples, n)``.

    All (step, sample, point) triples go through the model in batched calls with per-point times;
    ``differentiable`` keeps the model's outputs on the autograd graph.
    """
    n, d = x0.shape
    dev, dt = x0.device, x0.dtype
    m = int(ks.shape[0])
    sched = kern.ddpm_schedule()
    ab, om = sched.alpha_bars.to(dev), sched.one_minus_alpha_bars.to(dev)
    out = torch.empty(m, n_samples, n, dtype=dt, device=dev)
    per_step = n_samples * n
    steps_per_call = max(1, _MAX_BATCH // max(per_step, 1))
    for j0 in range(0, m, steps_per_call):
        kk = ks[j0 : j0 + steps_per_call].to(dev)
        mm = kk.shape[0]
        eps = torch.randn(mm, n_samples, n, d, generator=generator, dtype=dt, device=dev)
        sa = torch.sqrt(ab[kk]).to(dt)[:, None, None, None]
        so = torch.sqrt(om[kk]).to(dt)[:, None, None, None]
        xk = sa * x0[None, None] + so * eps
        scale = kern.in_scale.to(dev)[kk - 1].to(dt)[:, None, None, None]
        t = kern.model_t.to(dev)[kk - 1][:, None, None].expand(mm, n_samples, n).reshape(-1)
        with contextlib.nullcontext() if differentiable else torch.no_grad():
            D = kern.model.denoise((scale * xk).reshape(-1, d), t).reshape(mm, n_samples, n, d)
        err = ((x0[None, None] - D) ** 2).sum(-1)
        if cv is not None:
            cvk = cv.to(dev, dt)[kk - 1][:, None, None]
            err = err - cvk * ((eps**2).sum(-1) - d)
        out[j0 : j0 + mm] = err
    return out


def _check_step_probs(step_probs: object, T: int) -> Tensor:
    """``step_probs`` as a float64 CPU tensor of ``T - 1`` finite positive probabilities summing to 1."""
    if isinstance(step_probs, Tensor):
        if step_probs.is_complex() or step_probs.dtype == torch.bool:
            raise TypeError(f"step_probs must be real probabilities, got dtype {step_probs.dtype}")
        q = step_probs.detach().to(device="cpu", dtype=torch.float64)
    else:
        try:
            arr = np.asarray(step_probs)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"step_probs must be a tensor of probabilities, got {type(step_probs).__name__}") from exc
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"step_probs must be real probabilities, got {type(step_probs).__name__}")
        q = torch.as_tensor(arr, dtype=torch.float64)
    if tuple(q.shape) != (T - 1,):
        raise ValueError(f"step_probs must have shape ({T - 1},) (steps 2..T), got {tuple(q.shape)}")
    if not bool(torch.isfinite(q).all()):
        raise ValueError("step_probs contains NaN or inf")
    if bool((q <= 0).any()) or abs(float(q.sum()) - 1.0) > 1e-8:
        raise ValueError(f"step_probs must be ({T - 1},) positive probabilities (steps 2..T) summing to 1")
    return q


def _ddpm_core(
    model: DiffusionModel,
    x: Tensor,
    schedule: Optional[Discrete],
    variance: str,
    decoder_variance: Optional[float],
    n_samples: int,
    steps: Optional[int],
    step_probs: Optional[Tensor],
    generator: Optional[torch.Generator],
    cv_data_var: Optional[float] = 1.0,
    memory_budget: int = 1 << 30,
    differentiable: bool = False,
) -> Dict[str, Any]:
    x = _check_x(model, x)
    if not isinstance(differentiable, bool):
        raise TypeError(f"differentiable must be a bool, got {type(differentiable).__name__}")
    memory_budget = check_int(memory_budget, "memory_budget", 1)
    model = _boundary(model)
    if cv_data_var is not None:
        cv_data_var = check_positive_float(cv_data_var, "cv_data_var")
    _check_gen(generator)
    n_samples = check_int(n_samples, "n_samples", 1)
    sched = reverse.default_discrete(model, schedule)
    kern = reverse.ddpm_kernels(model, sched, variance, decoder_variance)
    T = kern.K
    n, d = x.shape
    dev, dt = x.device, x.dtype
    terms = _step_terms(kern)
    w = terms["w"].to(dev, dt)
    const = terms["const"].to(dev, dt) * d
    cv = _cv_coefficients(kern, cv_data_var)
    if steps is None and step_probs is not None:
        raise ValueError(
            "step_probs is used only with steps=m (importance-sampled steps); pass steps or drop step_probs"
        )
    if steps is None:
        ks = torch.arange(1, T + 1, device=dev)
        # points in groups whose (T, S, group) work arrays fit the memory budget: the per-point
        # result is then (T + 2) numbers, whatever n is (a single group reproduces the old stream)
        group = max(1, memory_budget // (_BYTES_PER_ENTRY * T * n_samples * (d + 4)))
        losses, ses, per_steps = [], [], []
        for i0 in range(0, n, group):
            err = _sq_errors(kern, x[i0 : i0 + group], ks, n_samples, generator, cv, differentiable)  # (T, S, g)
            loss_k = 0.5 * w[:, None, None] * err  # (T, S, g)
            del err
            losses.append(loss_k.mean(1).sum(0))
            if n_samples >= 2:
                ses.append(torch.sqrt((loss_k.var(1, unbiased=True) / n_samples).sum(0)))
            per_steps.append(loss_k.mean(1).T + const[None, :])  # (g, T): ell_k
            del loss_k
        loss = torch.cat(losses)
        se = torch.cat(ses) if n_samples >= 2 else torch.full((n,), math.inf, dtype=dt, device=dev)
        per_step = torch.cat(per_steps)
        const_sum = const.sum()
        nfe = T * n_samples
    else:
        steps = check_int(steps, "steps", 1)
        if T < 2:
            raise ValueError("steps needs a schedule with T >= 2")
        if step_probs is None:
            q = torch.full((T - 1,), 1.0 / (T - 1), dtype=torch.float64)
        else:
            q = _check_step_probs(step_probs, T)
        # the decoder term (k = 1) is the largest single term: always estimated, never sampled,
        # so that the sampled part is not dominated by how often k = 1 happens to be drawn
        err1 = _sq_errors(kern, x, torch.ones(1, dtype=torch.long, device=dev), n_samples, generator, cv,
                          differentiable)[0]
        l1 = 0.5 * w[0] * err1  # (S, n)
        idx = torch.multinomial(q, steps, replacement=True, generator=generator) + 2  # (m,) in 2..T
        err = _sq_errors(kern, x, idx.to(dev), n_samples, generator, cv, differentiable)  # (m, S, n)
        qk = q[idx - 2].to(dev, dt)[:, None]
        # unbiased for sum_{k>=2} ell_k (constant part handled exactly): (1/m) sum_j ell_{k_j} / q_{k_j}
        contrib = (0.5 * w[idx - 1][:, None] * err.mean(1)) / qk  # (m, n)
        loss = l1.mean(0) + contrib.mean(0)
        if steps >= 2 and n_samples >= 2:
            se = torch.sqrt(contrib.var(0, unbiased=True) / steps + l1.var(0, unbiased=True) / n_samples)
        else:
            se = torch.full((n,), math.inf, dtype=dt, device=dev)
        per_step = None
        const_sum = const.sum()
        nfe = (steps + 1) * n_samples
    L_T = _prior_kl(x, float(sched.alpha_bars[-1]), float(sched.one_minus_alpha_bars[-1]), kern.prior_var)
    constant = -(L_T + const_sum)
    if differentiable:  # only the value carries the gradient
        se = se.detach()
        per_step = None if per_step is None else per_step.detach()
    return {"loss": loss, "se": se, "constant": constant, "L_T": L_T, "per_step": per_step, "nfe": nfe, "kernels": kern,
            "interval": _ddpm_interval(kern)}


def ddpm(
    model: DiffusionModel,
    x: Tensor,
    *,
    schedule: Optional[Discrete] = None,
    variance: str = "beta",
    decoder_variance: Optional[float] = None,
    n_samples: int = 2,
    steps: Optional[int] = None,
    step_probs: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    cv_data_var: Optional[float] = 1.0,
    memory_budget: int = 1 << 30,
    differentiable: bool = False,
) -> Estimate:
    """Ho et al.'s per-point DDPM ELBO of the model's ancestral sampler (I9), in nats.

    ``ELBO(x0) = -( L_T + sum_{k=2}^T L_{k-1} + L_0 )`` with

    - ``L_T = KL(q(x_T | x0) || N(0, I))`` (closed form);
    - ``L_{k-1} = E_{q(x_k|x0)} KL(q(x_{k-1} | x_k, x0) || p(x_{k-1} | x_k))
      = d/2 (bt_k/v_k - 1 + log(v_k/bt_k)) + c_k^2 E|x0 - D_k(x_k)|^2 / (2 v_k)``
      (exact Gaussian KL; ``bt_k = beta_tilde_k``, ``c_k = sqrt(abar_{k-1}) beta_k/(1-abar_k)``);
    - ``L_0 = -E_{q(x_1|x0)} log N(x0; D_1(x_1), v_1 I)`` (Gaussian decoder at step 1 for
      continuous data; ``v_1 = beta_1`` in both variants unless ``decoder_variance``).

    The sampler is ``x_{k-1} = mu_theta(x_k) + sqrt(v_k) z`` with the posterior-mean
    parameterization ``mu_theta = mu_tilde(x_k, D_k(x_k))`` and ``v_k = beta_k`` or
    ``beta_tilde_k``; step ``k`` is evaluated at the model-schedule time with the same log-SNR
    as ``abar_k`` (the model's ``schedule`` may be any schedule).  The ELBO is pointwise below
    the log density of that sampler's output (I9); its weights are those of I7.

    Args:
        model: any :class:`DiffusionModel`.
        x: ``(n, d)`` data points.
        schedule: the DDPM schedule; default the model's own if discrete, else
            ``Discrete.ddpm_linear(T=1000)``.
        variance: ``"beta"`` or ``"beta_tilde"``.
        decoder_variance: variance of the step-1 decoder (default ``beta_1``).
        n_samples: draws of ``x_k`` per step and point (>= 2 for a standard error; with 1 the
            standard error is reported as ``inf``).  Without the control variate the Monte
            Carlo variance is dominated by the decoder term ``L_0`` (about ``d/2`` nats^2 per
            draw when ``beta_1`` is small).
        steps: ``None``: all ``T`` steps, batched.  An int ``m``: an unbiased importance-sampled
            estimate of the sum over steps ``k = 2..T`` from ``m`` steps drawn (shared by all
            points) with probabilities ``step_probs`` (shape ``(T-1,)``, uniform by default);
            ``L_T`` is exact and the decoder term ``L_0`` (the largest single term) is always
            estimated with its own ``n_samples`` draws, never sampled.
        generator: source of all randomness.
        cv_data_var: control variate (exactly unbiased).  For ANY denoiser,
            ``x0 - D_k(x_k) = -(sigma_k/sqrt(abar_k)) eps - (sigma_k^2/sqrt(abar_k)) s_k`` with
            ``s_k = (sqrt(abar_k) D_k - x_k)/sigma_k^2`` (Tweedie's algebra, I1), so
            ``|x0 - D_k|^2`` carries the pure chi-square noise ``(sigma_k^2/abar_k) |eps|^2``
            at low noise; ``gamma_k (sigma_k^2/abar_k)(|eps|^2 - d)`` (zero mean, fixed
            coefficient) is subtracted with ``gamma_k = (v snr_k / (1 + v snr_k))^2``, the optimal
            coefficient for isotropic Gaussian data of variance ``v = cv_data_var``
            (``sigma_k^2 = 1 - abar_k``).  ``None`` turns it off.  It removes most of the variance
            of ``L_0`` and the low-noise steps (2-D mixture, ``T = 1000``, two draws per step:
            standard error 0.93 -> 0.087 nats; docs/bench_likelihood.md).
        memory_budget: bytes the all-steps estimate may use for its work arrays: points are
            processed in groups of about ``memory_budget / (8 T n_samples (d + 4))``, so memory
            does not grow with ``n`` beyond the returned per-point terms.
        differentiable: keep ``value`` on the autograd graph of the model's parameters (and of
            ``x``), for likelihood training; with a fixed ``generator`` seed it is a smooth function
            of the parameters (the draws of ``x_k`` do not depend on them).  Off by default: the
            model is then called under ``no_grad``.

    Returns:
        :class:`Estimate`; ``nfe = T * n_samples`` (or ``(steps + 1) * n_samples``); ``extras``:
        ``"L_T"``, ``"objective"`` (the loss of :func:`ddpm_objective`), ``"constant"`` and,
        with all steps, ``"terms"`` ``(n, T)``: column ``k-1`` is ``L_0`` for ``k = 1`` and
        ``L_{k-1}`` otherwise.
    """
    tic = time.perf_counter()
    r = _ddpm_core(model, x, schedule, variance, decoder_variance, n_samples, steps, step_probs, generator,
                   cv_data_var, memory_budget, differentiable)
    value = r["constant"] - r["loss"]
    extras = {"L_T": r["L_T"], "objective": r["loss"], "constant": r["constant"], "variance": variance,
              **r["interval"]}
    if r["per_step"] is not None:
        extras["terms"] = r["per_step"]
    return Estimate(value, r["se"], r["nfe"], time.perf_counter() - tic, extras)


def ddpm_objective(
    model: DiffusionModel,
    x: Tensor,
    *,
    schedule: Optional[Discrete] = None,
    variance: str = "beta",
    decoder_variance: Optional[float] = None,
    n_samples: int = 2,
    steps: Optional[int] = None,
    step_probs: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    cv_data_var: Optional[float] = 1.0,
    memory_budget: int = 1 << 30,
    differentiable: bool = False,
) -> Estimate:
    """The DDPM training objective: the theta-dependent part of ``-ELBO``, in nats (I7, I9).

    ``objective(x0) = sum_{k=1}^T (w_k / 2) E|x0 - D_k(x_k)|^2`` with ``w_k = c_k^2 / v_k``
    (``k >= 2``) and ``w_1 = 1 / v_1``, so that ``ddpm(...).value = constant - objective``
    exactly for the same noise (``extras["constant"]`` holds the theta-independent part:
    ``-(L_T + sum_k d/2 (bt_k/v_k - 1 + log(v_k/bt_k)) + d/2 log(2 pi v_1))``).  With
    ``variance="beta"`` the weights ``w_k/2 = abar_{k-1} beta_k / (2 (1-abar_k)^2)`` are those of
    the discrete density formula I7.  Arguments as :func:`ddpm`.
    """
    tic = time.perf_counter()
    r = _ddpm_core(model, x, schedule, variance, decoder_variance, n_samples, steps, step_probs, generator,
                   cv_data_var, memory_budget, differentiable)
    extras = {"constant": r["constant"], "variance": variance, **r["interval"]}
    return Estimate(r["loss"], r["se"], r["nfe"], time.perf_counter() - tic, extras)


def _log_normal(x: Tensor, mean: Tensor, var: float) -> Tensor:
    d = x.shape[-1]
    return -0.5 * (d * (_LOG_2PI + math.log(var)) + ((x - mean) ** 2).sum(-1) / var)


def importance_weights(
    model: DiffusionModel,
    x: Tensor,
    n_chains: int,
    *,
    schedule: Optional[Discrete] = None,
    variance: str = "beta",
    decoder_variance: Optional[float] = None,
    chunk_size: int = 1 << 16,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """``log w = log p(x0, x_{1:T}) - log q(x_{1:T} | x0)`` for ``n_chains`` forward chains per point.

    ``p`` is the model's DDPM sampler (prior ``N(0, I)``, kernels of :func:`ddpm`); ``q`` the
    forward chain ``x_k = sqrt(1 - beta_k) x_{k-1} + sqrt(beta_k) eps``.  Returns ``(n_chains, n)``.
    ``E[exp(log w)] = p_sampler(x0)`` (I10).  Points are processed in chunks so that at most
    ``chunk_size`` chain states are held at once.
    """
    x = _check_x(model, x)
    model = _boundary(model)
    n_chains = check_int(n_chains, "n_chains", 1)
    chunk_size = check_int(chunk_size, "chunk_size", 1)
    _check_gen(generator)
    kern = reverse.ddpm_kernels(model, reverse.default_discrete(model, schedule), variance, decoder_variance)
    return _importance_weights(kern, x, n_chains, chunk_size, generator)


def _importance_weights(
    kern: ReverseKernels, x: Tensor, n_chains: int, chunk_size: int, generator: Optional[torch.Generator]
) -> Tensor:
    """:func:`importance_weights` for given DDPM kernels."""
    n, d = x.shape
    dev, dt = x.device, x.dtype
    sched = kern.ddpm_schedule()
    betas, alphas = sched.betas.tolist(), sched.alphas.tolist()
    pts = max(1, chunk_size // n_chains)
    out = torch.empty(n_chains, n, dtype=dt, device=dev)
    for i0 in range(0, n, pts):
        x0 = x[i0 : i0 + pts]
        m = x0.shape[0]
        prev = x0[None].expand(n_chains, m, d).reshape(-1, d)
        logw = torch.zeros(n_chains * m, dtype=dt, device=dev)
        for k in range(1, kern.K + 1):
            b = betas[k - 1]
            eps = torch.randn(n_chains * m, d, generator=generator, dtype=dt, device=dev)
            xk = math.sqrt(alphas[k - 1]) * prev + math.sqrt(b) * eps
            log_q = -0.5 * (d * (_LOG_2PI + math.log(b)) + (eps**2).sum(-1))
            with torch.no_grad():
                mean = kern.mean(xk, k)
            logw += _log_normal(prev, mean, float(kern.var[k - 1])) - log_q
            prev = xk
        logw += _log_normal(prev, torch.zeros_like(prev), kern.prior_var)
        out[:, i0 : i0 + m] = logw.reshape(n_chains, m)
    return out


def importance_weighted(
    model: DiffusionModel,
    x: Tensor,
    k: Union[int, Sequence[int]] = 16,
    *,
    n_replicates: int = 16,
    schedule: Optional[Discrete] = None,
    variance: str = "beta",
    decoder_variance: Optional[float] = None,
    chunk_size: int = 1 << 16,
    generator: Optional[torch.Generator] = None,
) -> Union[Estimate, Dict[int, Estimate]]:
    """The importance-weighted bound with ``k`` forward chains (I10), per point, in nats.

    ``IW_k(x0) = E[ log (1/k) sum_{j=1}^k w_j ]``, ``w_j = p(x0, x^j_{1:T}) / q(x^j_{1:T} | x0)``,
    computed with log-mean-exp.  ``IW_1 = ELBO`` (the :func:`ddpm` value, estimated here by
    Monte Carlo instead of exact KLs), ``IW_k`` is non-decreasing in ``k`` and tends to the log
    density of the model's DDPM sampler output.

    A pool of ``n_replicates * max(k)`` chains is drawn per point; for each ``k`` the pool is cut
    into consecutive groups of ``k`` and the group log-mean-exps are averaged (standard error
    from their spread).  For a list of ``k`` in which each divides the next (e.g. 1, 2, 4, ..., 64)
    the groups are nested, so the estimates are non-decreasing in ``k`` for every draw, by
    concavity of the log (Burda et al.'s argument applied to the sample).

    Returns:
        an :class:`Estimate` for an int ``k``, or ``{k: Estimate}`` for a sequence;
        ``nfe = T * n_replicates * max(k)`` (shared by all ``k``).
    """
    tic = time.perf_counter()
    single = isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))
    if single:
        ks: List[int] = [check_int(k, "k", 1)]
    else:
        if isinstance(k, (str, bytes, bool, np.bool_)) or not isinstance(k, (Sequence, np.ndarray)):
            raise TypeError(f"k must be a positive int or a sequence of them, got {type(k).__name__}")
        ks = [check_int(v, "k", 1) for v in k]
        if not ks:
            raise ValueError("k must be a positive int or a non-empty sequence of them, got an empty sequence")
    n_replicates = check_int(n_replicates, "n_replicates", 1)
    chunk_size = check_int(chunk_size, "chunk_size", 1)
    kmax = max(ks)
    pool = n_replicates * kmax
    for v in ks:
        if pool % v:
            raise ValueError(f"every k must divide n_replicates * max(k) = {pool}; {v} does not")
    x = _check_x(model, x)
    model = _boundary(model)
    _check_gen(generator)
    kern = reverse.ddpm_kernels(model, reverse.default_discrete(model, schedule), variance, decoder_variance)
    logw = _importance_weights(kern, x, pool, chunk_size, generator)
    T = kern.K
    interval = _ddpm_interval(kern)
    seconds = time.perf_counter() - tic
    res: Dict[int, Estimate] = {}
    for v in ks:
        g = logw.reshape(pool // v, v, -1)
        lme = torch.logsumexp(g, dim=1) - math.log(v)  # (groups, n)
        m = lme.shape[0]
        se = lme.std(0, unbiased=True) / math.sqrt(m) if m >= 2 else torch.full_like(lme[0], math.inf)
        res[v] = Estimate(lme.mean(0), se, T * pool, seconds, {"n_groups": m, **interval})
    return res[ks[0]] if single else res


def continuous(model: DiffusionModel, x: Tensor, **kwargs: Any) -> Estimate:
    """The continuous-time ELBO of the model (I8): the density formula with the model's denoiser.

    ``ELBO_theta(x) = -(d/2) log(2 pi e) + 1/2 int [d sigmoid(lambda) - E||Z - eps_theta(x_lambda)||^2] dlambda``
    (the log-SNR form of I5/I6 with ``D_theta`` in place of the exact denoiser).  With the exact
    denoiser it equals ``log q_0(x)`` (I5); in expectation over ``x ~ q_0`` the gap is
    ``1/2 int E||D_theta - D||^2 dsnr`` (I8).  This is a thin call of
    :func:`densityformula.density_formula` (same integration machinery, same keyword
    arguments); it is not pointwise below ``log q_0``.  ``extras["log_snr_interval"]`` is the
    formula's ``lambda_range`` (and ``extras["t_min"]``, ``extras["t_max"]`` the model times of its
    ends, where they lie in the schedule's range).
    """
    from .formula import density_formula as _formula

    model = _boundary(model)
    est = _formula(model, x, **kwargs)
    est.extras.setdefault("bound", "continuous-time ELBO (I8)")
    lam_range = est.extras.get("lambda_range")
    if lam_range is not None and "log_snr_interval" not in est.extras:
        lo, hi = float(lam_range[0]), float(lam_range[1])
        est.extras["log_snr_interval"] = (lo, hi)
        s_lo, s_hi = model.schedule.log_snr_range
        if s_lo <= lo and hi <= s_hi:
            ends = model.schedule.t_from_log_snr(torch.tensor([hi, lo], dtype=torch.float64))
            est.extras.setdefault("t_min", float(ends[0]))
            est.extras.setdefault("t_max", float(ends[1]))
    return est


def _eps_at(obj: Union[GaussianMixture, DiffusionModel], x_vp: Tensor, lam: float) -> Tensor:
    """Noise prediction ``eps_hat`` at log-SNR ``lam`` for a VP-coordinate point ``x_vp`` (I1)."""
    if isinstance(obj, GaussianMixture):
        liyan = LiYan()
        t = liyan.t_from_log_snr(lam)
        return P.score_to_eps(obj.score(x_vp, t, liyan), liyan.sigma(t).to(x_vp.dtype))
    sched = obj.schedule
    lo, hi = sched.log_snr_range
    if not lo <= lam <= hi:
        raise ValueError(f"log-SNR {lam} is outside the model schedule's range [{lo}, {hi}]")
    lam_t = torch.tensor(lam, dtype=torch.float64)
    t = sched.t_from_log_snr(lam_t)
    scale = float(reverse.input_scale(sched, t, lam_t))
    return obj.eps(x_vp * scale, t)


def kl_de_bruijn(
    q: Union[GaussianMixture, AnalyticModel],
    p: Union[GaussianMixture, DiffusionModel],
    *,
    n_samples: int = 4096,
    n_nodes: int = 128,
    lambda_range: Optional[Tuple[float, float]] = None,
    generator: Optional[torch.Generator] = None,
) -> Estimate:
    """``KL(q || p)`` from the diffused scores of the two laws (de Bruijn, I11).

    ``KL(q||p) = int_0^1 1/(2(1-t)) E_{q_t}||s^p_t - s^q_t||^2 dt`` for the LiYan process; in
    its log-SNR ``lambda`` (``dt/(1-t) = sigma^2 dlambda`` in magnitude, ``sigma^2 ||ds||^2 =
    ||d eps_hat||^2``) this is the schedule-free form

        KL(q || p) = 1/2 int_{-inf}^{inf} E_{x0~q, z} || eps_p(x_lambda) - eps_q(x_lambda) ||^2 dlambda,

    ``x_lambda = sqrt(sigmoid(lambda)) x0 + sqrt(sigmoid(-lambda)) z``.  Gauss--Legendre in
    ``lambda`` on ``lambda_range`` (the integrand decays like ``e^{-|lambda|}``, so the truncation
    error is of order ``e^{-30}``), ``n_samples`` fresh Monte Carlo draws per node.

    ``lambda_range`` defaults to ``(-30, 30)``, intersected, when ``p`` is a model, with its
    ``valid_log_snr`` and its schedule's log-SNR range (where it is valid and defined,
    docs/math.md section 10, I24): for a network the integral then covers the range it was
    trained on (a KL restricted to that range).  The range used is in ``extras["log_snr_interval"]``.

    Args:
        q: the law the expectation is under: a ``GaussianMixture`` or an ``AnalyticModel``
            (its target).
        p: a ``GaussianMixture`` or any :class:`DiffusionModel` (its ``eps`` at the same
            log-SNR is used, so ``KL(q || p_theta)`` measures the model's score error; for a
            network this is the "score swap" of docs/math.md section 5).
    Returns:
        :class:`Estimate` with one value (``value.shape == (1,)``) and its standard error.
    """
    tic = time.perf_counter()
    _check_gen(generator)
    if isinstance(q, AnalyticModel):
        qt = q.target
    elif isinstance(q, GaussianMixture):
        qt = q
    else:
        raise TypeError(f"q must be a GaussianMixture or an AnalyticModel, got {type(q).__name__}")
    if not isinstance(p, (GaussianMixture, DiffusionModel)):
        raise TypeError(f"p must be a GaussianMixture or a DiffusionModel, got {type(p).__name__}")
    p_d = p.d if isinstance(p, GaussianMixture) else model_dimension(p)
    if p_d is not None and p_d != qt.d:
        raise ValueError(f"p has dimension d = {p_d} but q has d = {qt.d}; both must be laws on the same space")
    if isinstance(p, DiffusionModel):
        p = _boundary(p)
    n_samples = check_int(n_samples, "n_samples", 2)
    n_nodes = check_int(n_nodes, "n_nodes", 1)
    if lambda_range is None:
        lo, hi = -30.0, 30.0
        if isinstance(p, DiffusionModel):
            (v_lo, v_hi), (s_lo, s_hi) = p.valid_log_snr, p.schedule.log_snr_range
            lo, hi = max(lo, v_lo, s_lo), min(hi, v_hi, s_hi)
    else:
        try:
            lo, hi = float(lambda_range[0]), float(lambda_range[1])
        except (TypeError, ValueError, IndexError) as exc:
            raise TypeError(f"lambda_range must be a pair of floats, got {lambda_range!r}") from exc
    if not lo < hi:
        raise ValueError(f"lambda_range must be increasing, got {lambda_range!r}")
    nodes, weights = np.polynomial.legendre.leggauss(n_nodes)
    lams = 0.5 * (hi - lo) * nodes + 0.5 * (hi + lo)
    wts = 0.5 * (hi - lo) * weights
    total, var = 0.0, 0.0
    for lam, wt in zip(lams.tolist(), wts.tolist()):
        x0 = qt.sample(n_samples, generator=generator)
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        a2, s2 = 1.0 / (1.0 + math.exp(-lam)), 1.0 / (1.0 + math.exp(lam))
        xl = math.sqrt(a2) * x0 + math.sqrt(s2) * z
        with torch.no_grad():
            diff = ((_eps_at(p, xl, lam) - _eps_at(qt, xl, lam)) ** 2).sum(-1)
        total += 0.5 * wt * float(diff.mean())
        var += (0.5 * wt) ** 2 * float(diff.var()) / n_samples
    dev, dt = qt.means.device, qt.dtype
    return Estimate(
        torch.tensor([total], dtype=dt, device=dev),
        torch.tensor([math.sqrt(var)], dtype=dt, device=dev),
        2 * n_nodes * n_samples,
        time.perf_counter() - tic,
        {"lambda_range": (lo, hi), "log_snr_interval": (lo, hi), "n_nodes": n_nodes},
    )
