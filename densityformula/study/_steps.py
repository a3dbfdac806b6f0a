"""The DDPM sampler of a model and the per-step terms of its ELBO (docs/math.md I9, I15).

One place for what every function of the study needs from the sampler: its kernels
``x_{k-1} = a_k x_k + c_k D_k(x_k) + sqrt(v_k) z`` (:func:`densityformula.reverse.ddpm_kernels`),
the ELBO's per-step weights and constants

    ell_k = const_k d + (w_k / 2) E||x_0 - D_k(x_k)||^2,   w_k = c_k^2 / v_k  (k >= 2),  w_1 = 1 / v_1,
    const_k = 1/2 (bt_k/v_k - 1 + log(v_k/bt_k))  (k >= 2),   const_1 = 1/2 log(2 pi v_1),

and the denoiser at every step at once, with gradients (no ``torch.no_grad`` here: the study
differentiates through it).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from .. import reverse
from ..models import DiffusionModel, check_model, checked
from ..reverse import ReverseKernels
from ..schedules import Discrete

Tensor = torch.Tensor

__all__ = ["StepTerms", "sampler_kernels", "step_terms", "denoise_steps", "prior_kl_mean"]

_LOG_2PI = math.log(2.0 * math.pi)


class StepTerms(NamedTuple):
    """``w_k`` and ``const_k`` (per unit dimension) of ``ell_k = d const_k + w_k/2 E||x_0 - D_k||^2`` (I9),
    float64 ``(T,)``, index ``k - 1``."""

    w: Tensor
    const: Tensor


def sampler_kernels(
    model: DiffusionModel, schedule: Optional[Discrete], variance: str, decoder_variance: Optional[float]
) -> ReverseKernels:
    """The DDPM kernels (I15) of ``model`` (behind the model-call boundary) on ``schedule`` (default
    the model's own when discrete)."""
    m = checked(check_model(model))
    return reverse.ddpm_kernels(m, reverse.default_discrete(m, schedule), variance, decoder_variance)


def step_terms(kern: ReverseKernels) -> StepTerms:
    """``w_k``, ``const_k`` of the DDPM ELBO (I9) for the kernels ``kern``."""
    bt = kern.ddpm_beta_tilde()
    v = kern.var
    w = kern.c**2 / v
    const = torch.zeros_like(v)
    const[1:] = 0.5 * (bt[1:] / v[1:] - 1.0 + torch.log(v[1:] / bt[1:]))
    w[0] = 1.0 / v[0]
    const[0] = 0.5 * (_LOG_2PI + math.log(float(v[0])))
    return StepTerms(w, const)


def denoise_steps(kern: ReverseKernels, x: Tensor, ks: Tensor) -> Tensor:
    """``D_k(x)`` for a batch per step: ``x`` is ``(m, M, d)``, ``ks`` ``(m,)`` steps in ``1..T``; one
    model call with per-point times, differentiable in the model's parameters."""
    m, M, d = x.shape
    dev, dt = x.device, x.dtype
    kk = ks.to(dev).long()
    scale = kern.in_scale.to(dev, dt)[kk - 1][:, None, None]
    t = kern.model_t.to(dev, dt)[kk - 1][:, None].expand(m, M).reshape(-1)
    out = kern.model.denoise((scale * x).reshape(-1, d), t)
    return out.reshape(m, M, d)


def prior_kl_mean(kern: ReverseKernels, d: int, second_moment: Tensor) -> Tensor:
    """``E_q L_T = E_q KL(N(sqrt(abar_T) x_0, (1 - abar_T) I) || N(0, P I))``
    ``= 1/2 (d om/P + abar_T E||x_0||^2 / P - d + d log(P/om))`` (I9), ``om = 1 - abar_T``."""
    sched = kern.ddpm_schedule()
    abT, om = float(sched.alpha_bars[-1]), float(sched.one_minus_alpha_bars[-1])
    P = kern.prior_var
    out: Tensor = 0.5 * (d * om / P + abT * second_moment / P - d + d * math.log(P / om))
    return out
