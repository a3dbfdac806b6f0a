"""Weighted denoising losses as objectives of the study, and their implied log-SNR weights (docs/math.md I31).

A discrete :class:`~densityformula.training.WeightedLoss` (a ``DenoisingLoss`` on a
:class:`~densityformula.schedules.Discrete` schedule) has the expectation (the time sampler only
changes the Monte Carlo noise, I23)

    E_q[loss] = sum_k rho_k E_q err_k,    err_k = m_k ||x_0 - D_k(x_k)||^2,

``m_k = abar_k / (1 - abar_k)`` for the eps and score errors (``eps - eps_hat = sqrt(abar_k/(1 - abar_k))
(D_k - x_0)``, I22) and ``1`` for the x0 error.  :func:`denoising_objective` computes it exactly in
1-D by the quadrature of I27 (differentiable); :func:`implied_weight` writes the same loss as
``sum_k w_k W_k E||eps - eps_hat||^2`` with ``W_k = beta_k / (2 alpha_k (1 - abar_k))`` the discrete
ELBO weight (I7), the discrete form of Kingma & Gao's ``1/2 int w(lambda) E||eps - eps_hat||^2 dlambda``
(``w = 1`` for the ELBO), and says whether ``w`` is monotone (non-increasing in ``lambda``: their
condition for the loss to be an ELBO of Gaussian-augmented data).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from .._validation import check_int
from ..schedules import Discrete
from ..training import DenoiserLoss, ELBOLoss, EpsLoss, ScoreLoss, WeightedLoss
from ..training.time_sampling import StepSampler
from ..training.weighting import ddpm_elbo_weights
from ._common import setup
from ._steps import sampler_kernels
from ._target import check_target
from .elbo_objective import _quadrature

Tensor = torch.Tensor

__all__ = ["WeightedValue", "ImpliedWeight", "denoising_objective", "implied_weight", "DenoisingObjective"]


@dataclass
class WeightedValue:
    """``E_q[loss]`` (``value``, with gradient), its quadrature error estimate, and per step ``k`` of
    the loss's steps the weight ``x0_weights`` of ``E_q||x_0 - D_k||^2`` (``rho_k m_k``)."""

    value: Tensor
    error: float
    steps: Tensor
    x0_weights: Tensor

    def __float__(self) -> float:
        return float(self.value.detach())


@dataclass(frozen=True)
class ImpliedWeight:
    """``w_k`` at ``lambda_k`` of the loss's steps, in ``loss = sum_k w_k W_k E||eps - eps_hat||^2``
    (``W_k`` the discrete ELBO weight, so ``w = 1`` is the ELBO), and whether ``w`` is non-increasing
    in ``lambda`` (``monotone``, to ``rtol``)."""

    log_snr: Tensor
    weight: Tensor
    monotone: bool


def _parts(loss: object) -> tuple[WeightedLoss, Discrete, Tensor, Tensor, str]:
    """``(loss, schedule, steps, rho_k, kind)`` of a discrete weighted loss (``kind``: ``"eps"`` or ``"x0"``)."""
    if not isinstance(loss, WeightedLoss):
        raise TypeError(f"loss must be a densityformula.training WeightedLoss (e.g. DenoisingLoss), got "
                        f"{type(loss).__name__}")
    sampler = loss.time_sampler
    if not isinstance(sampler, StepSampler) or not isinstance(loss.schedule, Discrete):
        raise ValueError("the loss must be on a Discrete schedule with a step sampler (discrete time)")
    obj = loss.objective
    if isinstance(obj, ELBOLoss):
        raise ValueError("include_constant=True adds parameter-free terms; use elbo_objective for -E_q[ELBO]")
    if isinstance(obj, (EpsLoss, ScoreLoss)):
        kind = "eps"
    elif isinstance(obj, DenoiserLoss):
        kind = "x0"
    else:
        raise TypeError(f"unsupported objective {type(obj).__name__}: eps, score or x0 errors only")
    steps = sampler.steps.clone()
    rho = loss.weight.rho(steps.to(torch.float64), sampler).double()
    return loss, loss.schedule, steps, rho, kind


def denoising_objective(
    model: object, target: object, loss: object, *, n_nodes: int = 64,
    dtype: Optional[torch.dtype] = None, device: Any = None,
) -> WeightedValue:
    """``E_{x_0 ~ q} E[loss(x_0)] = sum_k rho_k m_k E_q||x_0 - D_k(x_k)||^2`` exactly (1-D quadrature, I27),
    differentiable in the model's parameters (I31).  Error: ``|Q_n - Q_{n/2}|``."""
    q = check_target(target)
    m, d, dt, dev = setup(model, q, dtype, device)
    if d != 1:
        raise ValueError(f"denoising_objective is 1-D; the target has d = {d}")
    n_nodes = check_int(n_nodes, "n_nodes", 4)
    loss_, sched, steps, rho, kind = _parts(loss)
    kern = sampler_kernels(m, sched, "beta", None)
    ab, om = sched.alpha_bars, sched.one_minus_alpha_bars
    mult = ab[steps] / om[steps] if kind == "eps" else torch.ones_like(rho)
    wx = (rho * mult).to(dev, dt)
    idx = (steps - 1).to(dev)
    value = (wx * _quadrature(kern, q, n_nodes, dt, dev)[idx]).sum()
    with torch.no_grad():
        low = (wx * _quadrature(kern, q, max(2, n_nodes // 2), dt, dev)[idx]).sum()
    return WeightedValue(value, float((value.detach() - low).abs()), steps, wx.detach())


def implied_weight(loss: object, *, rtol: float = 1e-9) -> ImpliedWeight:
    """Kingma & Gao's weight of a discrete weighted loss relative to the ELBO (I31):
    ``w_k = rho_k c_k / W_k``, ``W_k = beta_k / (2 alpha_k (1 - abar_k))``, with ``c_k = 1`` for the eps
    and score errors and ``e^{-lambda_k} = (1 - abar_k)/abar_k`` for the x0 error (the x0 error is
    ``e^{-lambda} ||eps - eps_hat||^2``, I22); ``monotone`` when ``w`` does not increase with ``lambda``
    over all ``T`` steps (``w_k <= w_{k+1} (1 + rtol)``), a step the loss never draws counting as
    ``w_k = 0``: exactly when the loss is a proper mixture of ELBOs of noise-augmented data (I32)."""
    _, sched, steps, rho, kind = _parts(loss)
    lam = sched.log_snrs  # (T + 1,), +inf at 0
    W = ddpm_elbo_weights(sched.betas.double(), sched.one_minus_alpha_bars)[steps - 1]
    c = torch.ones_like(rho) if kind == "eps" else torch.exp(-lam[steps])
    w = rho * c / W
    # monotone over all T steps, a step the loss never draws weighing 0 (e.g. step T under "truncated":
    # w drops to 0 at the noisiest end, so the loss is no mixture of ELBOs, I32)
    full = torch.zeros(sched.T, dtype=w.dtype)
    full[steps - 1] = w
    mono = bool((full[:-1] <= full[1:] * (1.0 + rtol)).all())  # non-decreasing in k = non-increasing in lambda
    return ImpliedWeight(lam[steps], w, mono)


class DenoisingObjective:
    """``model -> E_q[loss]`` (:func:`denoising_objective`) as an objective of :func:`densityformula.study.minimize`."""

    name = "denoising"
    differentiable = True

    def __init__(self, target: object, loss: object, *, n_nodes: int = 64) -> None:
        self.target = check_target(target)
        _parts(loss)
        self.loss = loss
        self.n_nodes = n_nodes

    def __call__(self, model: object) -> Tensor:
        """``E_q[loss]`` at ``model`` (scalar, with gradient)."""
        return denoising_objective(model, self.target, self.loss, n_nodes=self.n_nodes).value

    def __repr__(self) -> str:
        return f"DenoisingObjective({self.loss!r})"
