"""Weighted denoising losses as mixtures of ELBOs of noise-augmented data (docs/math.md I32).

Kingma & Gao (2023): a weighted loss ``sum_k w_k l_k`` (``w_k`` relative to the ELBO's weights,
I31) equals, up to a constant that does not depend on the model,

    sum_{j=0}^{T-1} p_j E_{x_j ~ q_j}[-ELBO_j(x_j)],      p_j = w_{j+1} - w_j,  w_0 := 0,

where ``q_j`` is the target diffused to step ``j`` and ``ELBO_j`` the DDPM ELBO of the data ``x_j``
under the model's sub-chain ``p(x_T) prod_{k > j} p_theta(x_{k-1} | x_k)``.  The mixture is proper
(``p_j >= 0``) exactly when ``w_k`` is non-decreasing in ``k`` (non-increasing in log-SNR).

- :func:`noisy_elbo`: ``E_{q_j}[-ELBO_j]`` for every ``j = 0..T-1``, exactly by quadrature in 1-D and
  from the definition of ``ELBO_j`` (the Gaussian KLs of the sub-chain's forward posteriors
  ``q(x_{k-1} | x_k, x_j)`` against the model's kernels, its decoder term at step ``j + 1`` and its
  prior term), not from the ``x_0`` terms of I27;
- :func:`augmentation_identity`: for a weighted loss, the mixture weights ``p_j``, whether they are
  ``>= 0``, and both sides of the identity (their difference is the model-free constant).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .._validation import check_int
from ..schedules import Discrete
from ._common import as_model, check_choice, setup
from ._steps import sampler_kernels, step_terms
from ._target import check_target, mixture_1d
from .quadrature import gauss_hermite
from .weighted import _parts, denoising_objective

Tensor = torch.Tensor

__all__ = ["NoisyELBO", "noisy_elbo", "AugmentationIdentity", "augmentation_weights", "augmentation_identity"]

_LOG_2PI = math.log(2.0 * math.pi)
#: inner Gauss--Hermite order for ``x_j | x_k``: the integrand is quadratic in ``x_j`` (exact for ``n >= 2``)
_INNER = 3


@dataclass
class NoisyELBO:
    """``E_{q_j}[-ELBO_j]`` of the model's sub-chains, ``j = 0..T-1`` (I32).

    Attributes:
        value: ``(T,)`` ``E_{q_j}[-ELBO_j]`` in nats, index ``j``, with a gradient in the model's parameters.
        error: ``(T,)`` quadrature error estimates ``|Q_n - Q_{n/2}|``.
        terms: ``(T, T)`` detached: ``terms[j, k - 1]`` the expected step-``k`` term of ``-ELBO_j``
            (the KL of ``q(x_{k-1} | x_k, x_j)`` to the model's kernel for ``k > j + 1``, the decoder
            term ``-log p_theta(x_j | x_{j+1})`` for ``k = j + 1``, ``0`` for ``k <= j``).
        prior: ``(T,)`` ``E_{q_j} KL(q(x_T | x_j) || N(0, P))``.
        variance: the sampler's variance.
    """

    value: Tensor
    error: Tensor
    terms: Tensor
    prior: Tensor
    variance: str


def _noisy_terms(kern: Any, mix: Any, n: int, dt: torch.dtype, dev: torch.device) -> tuple[Tensor, Tensor]:
    """``(terms (T, T), prior (T,))`` of :func:`noisy_elbo` by the rule of order ``n`` (with gradient)."""
    from ._steps import denoise_steps

    sched = kern.ddpm_schedule()
    T = sched.T
    lab = sched.log_alpha_bars.to(dev, dt)  # (T + 1,)
    betas = sched.betas.to(dev, dt)
    a_k, c_k, v_k = kern.a.to(dev, dt), kern.c.to(dev, dt), kern.var.to(dev, dt)
    z, wz = gauss_hermite(n, dtype=dt, device=dev)
    u, wu = gauss_hermite(_INNER, dtype=dt, device=dev)
    pi, m0, s0 = mix.weights, mix.means, mix.variances  # (J,)
    # x_k ~ q_k per component: the outer nodes, shared by every j
    ab = torch.exp(lab[1:])[:, None]  # (T, 1)
    mk = torch.sqrt(ab) * m0[None]  # (T, J)
    Vk = ab * s0[None] + (-torch.expm1(lab[1:]))[:, None]
    xk = mk[..., None] + torch.sqrt(Vk)[..., None] * z  # (T, J, n)
    J = m0.shape[0]
    D = denoise_steps(kern, xk.reshape(T, J * n, 1), torch.arange(1, T + 1))[..., 0].reshape(T, J, n)
    M = a_k[:, None, None] * xk + c_k[:, None, None] * D  # the model's kernel mean, (T, J, n)
    rows = []
    priors = []
    P = float(kern.prior_var)
    for j in range(T):
        ks = torch.arange(j + 1, T + 1, device=dev)  # steps of the sub-chain
        aj = torch.exp(lab[j])
        mj, Vj = torch.sqrt(aj) * m0, aj * s0 + (-torch.expm1(lab[j]))  # q_j component (J,)
        lr = lab[ks] - lab[j]  # log abar_{k|j}
        r = torch.exp(0.5 * lr)[:, None, None]  # (m, 1, 1)
        om = (-torch.expm1(lr))[:, None, None]  # 1 - abar_{k|j}
        Vkj = Vk[ks - 1][..., None]  # (m, J, 1)
        # x_j | x_k under one component (exact Gaussian conditioning)
        pm = mj[None, :, None] + r * Vj[None, :, None] * (xk[ks - 1] - r * mj[None, :, None]) / Vkj
        pv = Vj[None, :, None] * om / Vkj  # (m, J, 1)
        xj = pm[..., None] + torch.sqrt(pv)[..., None] * u  # (m, J, n, INNER)
        xkk = xk[ks - 1][..., None]
        Mk = M[ks - 1][..., None]
        vk = v_k[ks - 1][:, None, None, None]
        # forward posterior q(x_{k-1} | x_k, x_j): abar_{k-1|j}, beta_k
        lr1 = (lab[ks - 1] - lab[j])[:, None, None, None]
        om1 = -torch.expm1(lr1)
        omk = om[..., None]
        bk = betas[ks - 1][:, None, None, None]
        mt = torch.exp(0.5 * lr1) * bk / omk * xj + torch.sqrt(1.0 - bk) * om1 / omk * xkk
        bt = om1 * bk / omk
        first = torch.zeros_like(bt, dtype=torch.bool)
        first[0] = True  # k = j + 1: the decoder term -log N(x_j; M, v)
        bt_safe = torch.where(first, torch.ones_like(bt), bt)
        kl = 0.5 * (bt_safe / vk - 1.0 + torch.log(vk / bt_safe) + (mt - Mk) ** 2 / vk)
        dec = 0.5 * (_LOG_2PI + torch.log(vk) + (xj - Mk) ** 2 / vk)
        f = torch.where(first, dec, kl)  # (m, J, n, INNER)
        e = ((f * wu).sum(-1) * wz).sum(-1)  # (m, J)
        row = (e * pi).sum(-1)  # (m,)
        rows.append(torch.cat([torch.zeros(j, dtype=dt, device=dev), row]))
        # prior: KL(N(r_T x_j, 1 - abar_{T|j}) || N(0, P)), closed form in E_{q_j} x_j^2
        rT2, omT = torch.exp(lab[T] - lab[j]), -torch.expm1(lab[T] - lab[j])
        ex2 = (pi * (mj**2 + Vj)).sum()
        priors.append(0.5 * (omT / P + rT2 * ex2 / P - 1.0 + torch.log(P / omT)))
    return torch.stack(rows), torch.stack(priors)


def noisy_elbo(
    model: object, target: object, *, schedule: Optional[Discrete] = None, variance: str = "beta",
    decoder_variance: Optional[float] = None, n_nodes: int = 64, dtype: Optional[torch.dtype] = None,
    device: Any = None,
) -> NoisyELBO:
    """``E_{x_j ~ q_j}[-ELBO_j(x_j)]`` for ``j = 0..T-1``: the DDPM ELBO of the target diffused to
    step ``j`` under the model's steps ``j+1..T`` (I32), exactly by quadrature (1-D targets),
    differentiable in the model's parameters.

    ``-ELBO_j(x_j) = KL(q(x_T|x_j) || N(0, P)) + sum_{k=j+2}^T E KL(q(x_{k-1}|x_k, x_j) || p_theta(x_{k-1}|x_k))
    - E log p_theta(x_j | x_{j+1})``, with ``q(x_{k-1}|x_k, x_j)`` the forward posterior of the chain
    started at ``x_j`` (``abar_{k|j} = abar_k/abar_j``) and ``p_theta(x_{k-1}|x_k) = N(a_k x_k + c_k D_k(x_k),
    v_k)`` the sampler's kernel (I15).  Per component of ``q``: ``x_k ~ q_k`` by Gauss--Hermite
    (``n_nodes``; error ``|Q_n - Q_{n/2}|``) and ``x_j | x_k`` (Gaussian) by a 3-node rule, exact since
    the integrand is quadratic in ``x_j``.  ``j = 0`` is ``-E_q[ELBO]`` (I9, :func:`elbo_objective`).
    """
    q = check_target(target)
    m, d, dt, dev = setup(model, q, dtype, device)
    if d != 1:
        raise ValueError(f"noisy_elbo is 1-D; the target has d = {d}")
    n_nodes = check_int(n_nodes, "n_nodes", 4)
    check_choice(variance, "variance", ("beta", "beta_tilde"))
    if schedule is not None and not isinstance(schedule, Discrete):
        raise TypeError(f"schedule must be a densityformula Discrete schedule, got {type(schedule).__name__}")
    kern = sampler_kernels(m, schedule, variance, decoder_variance)
    mix = mixture_1d(q, dtype=dt, device=dev)
    terms, prior = _noisy_terms(kern, mix, n_nodes, dt, dev)
    value = terms.sum(1) + prior
    with torch.no_grad():
        t2, p2 = _noisy_terms(kern, mix, max(2, n_nodes // 2), dt, dev)
        err = (value.detach() - (t2.sum(1) + p2)).abs()
    return NoisyELBO(value, err, terms.detach(), prior.detach(), variance)


@dataclass
class AugmentationIdentity:
    """Both sides of ``E_q[loss] = sum_j p_j E_{q_j}[-ELBO_j] + constant`` (I32).

    Attributes:
        weight: ``(T,)`` ``w_k``, ``k = 1..T``: the loss's weight of step ``k`` relative to the ELBO's
            (``0`` at steps the loss does not cover; for ``variance="beta"`` the ``w_k`` of
            :func:`implied_weight` on the loss's steps).
        p: ``(T,)`` ``p_j = w_{j+1} - w_j`` (``w_0 = 0``), ``j = 0..T-1``.
        proper: every ``p_j >= -rtol max|w|``: the loss is a (non-negative) mixture of noisy-data ELBOs.
        loss: ``E_q[loss]`` (:func:`denoising_objective`).
        mixture: ``sum_j p_j E_{q_j}[-ELBO_j]`` (:func:`noisy_elbo`).
        constant: ``loss - mixture``: model-independent by I32.
        error: the two sides' quadrature error estimates, summed.
    """

    weight: Tensor
    p: Tensor
    proper: bool
    loss: float
    mixture: float
    constant: float
    error: float


def augmentation_weights(loss: object, model: object, *, variance: str = "beta",
                         decoder_variance: Optional[float] = None) -> Tensor:
    """``w_k``, ``k = 1..T``, of a weighted loss relative to the DDPM ELBO of ``model``'s sampler:
    ``w_k = x0-weight_k / (w^ELBO_k / 2)`` with the ``x0`` weight ``rho_k m_k`` of I31 and ``w^ELBO_k`` of
    I9; ``0`` at steps the loss does not cover (I32)."""
    _, sched, steps, rho, kind = _parts(loss)
    kern = sampler_kernels(as_model(model), sched, variance, decoder_variance)
    ab, om = sched.alpha_bars, sched.one_minus_alpha_bars
    mult = ab[steps] / om[steps] if kind == "eps" else torch.ones_like(rho)
    w = torch.zeros(sched.T, dtype=torch.float64)
    w[steps - 1] = rho * mult / (0.5 * step_terms(kern).w.double()[steps - 1])
    return w


def augmentation_identity(
    model: object, target: object, loss: object, *, variance: str = "beta", decoder_variance: Optional[float] = None,
    n_nodes: int = 64, rtol: float = 1e-9,
) -> AugmentationIdentity:
    """Kingma & Gao's identity for a discrete weighted loss (I32): with ``w_k`` the loss's weights
    relative to the ELBO's (:func:`augmentation_weights`) and ``p_j = w_{j+1} - w_j``,

    ``E_q[loss] = sum_k w_k l_k(0) + c = sum_{j=0}^{T-1} p_j E_{q_j}[-ELBO_j] + constant``,

    ``l_k(0)`` the ``theta``-dependent step-``k`` term of ``-E_q[ELBO]``.  Both sides are computed
    independently (:func:`denoising_objective`, :func:`noisy_elbo`); ``constant`` does not depend on
    the model.  ``proper``: ``p_j >= 0`` for all ``j`` (to ``rtol`` relative to ``max |w|``)."""
    q = check_target(target)
    _, sched, _, _, _ = _parts(loss)
    w = augmentation_weights(loss, model, variance=variance, decoder_variance=decoder_variance)
    p = w - torch.cat([torch.zeros(1, dtype=w.dtype), w[:-1]])
    proper = bool((p >= -rtol * float(w.abs().max())).all())
    lhs = denoising_objective(model, q, loss, n_nodes=n_nodes)
    ne = noisy_elbo(model, q, schedule=sched, variance=variance, decoder_variance=decoder_variance, n_nodes=n_nodes)
    pv = p.to(ne.value.device, ne.value.dtype)
    rhs = float((pv * ne.value.detach()).sum())
    err = lhs.error + float((pv.abs() * ne.error).sum())
    return AugmentationIdentity(w, p, proper, float(lhs), rhs, float(lhs) - rhs, err)
