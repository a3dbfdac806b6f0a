"""``-E_q[ELBO] = H(q) + KL(q || p) + E_q[log p - ELBO]``, each term on its own (docs/math.md I28).

The identity is ``log p = ELBO + (log p - ELBO)`` averaged over ``q`` with ``-E_q log p = H(q) + KL``;
it is a check only if the four numbers are computed independently, which they are here (1-D):

- ``-E_q[ELBO]``: :func:`elbo_objective`, the weighted denoising form ``E_q L_T + sum_k (d const_k +
  (w_k/2) E||x_0 - D_k||^2)`` with the inner ``x_0``-integral exact (I27);
- ``H(q)``: Gauss--Hermite of ``-log q`` (:func:`target_entropy`) at its own order;
- ``KL``: :func:`true_kl` on its grid, at its own order;
- ``E_q[log p - ELBO]``: :func:`pointwise_elbo_1d`, the ELBO of each ``x_0`` from its definition
  (every step's Gaussian KL between the forward posterior ``q(x_{k-1} | x_k, x_0)``, written from
  the betas, and the model's kernel, averaged over ``x_k | x_0`` by Gauss--Hermite: the tensor-product
  rule over ``(x_0, x_k)``), against ``log p`` from a separate grid propagation, at a third order.

For affine denoisers in any d the first three are closed forms (I14, I26) and the gap a Monte Carlo
average of the closed-form pointwise ELBO and log density of
:class:`densityformula.likelihood.GaussianSamplerLaw` over ``x ~ q``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .._validation import check_int
from ..likelihood import gaussian_sampler
from ..models import AffineDenoiser
from ..reverse import ReverseKernels
from ..schedules import Discrete
from ._common import check_generator, inner_model, setup
from ._steps import denoise_steps, sampler_kernels
from ._target import check_target, mixture_1d
from .elbo_objective import elbo_objective
from .entropy import target_entropy
from .grid import grid_law
from .kl import _default_grid, true_kl
from .quadrature import gauss_hermite, mixture_rule

Tensor = torch.Tensor

__all__ = ["Decomposition", "decomposition", "pointwise_elbo_1d"]

_LOG_2PI = math.log(2.0 * math.pi)
_MAX_POINTS = 1 << 20


@dataclass(frozen=True)
class Decomposition:
    """The four terms of I28 (nats), their error estimates, and the identity's residual.

    ``residual = neg_elbo - (entropy + kl + gap)``; ``tolerance`` is the sum of the four error
    estimates (quadrature orders, grid refinement, or ``4`` standard errors for Monte Carlo terms).
    """

    neg_elbo: float
    entropy: float
    kl: float
    gap: float
    neg_elbo_error: float
    entropy_error: float
    kl_error: float
    gap_error: float
    method: str

    @property
    def residual(self) -> float:
        return self.neg_elbo - (self.entropy + self.kl + self.gap)

    @property
    def tolerance(self) -> float:
        return self.neg_elbo_error + self.entropy_error + self.kl_error + self.gap_error

    def holds(self, slack: float = 1e-9) -> bool:
        """``|residual| <= tolerance + slack``."""
        return abs(self.residual) <= self.tolerance + slack


def _kl_normal(m0: Tensor, v0: Tensor, m1: Tensor, v1: Tensor) -> Tensor:
    """``KL(N(m0, v0) || N(m1, v1))`` in 1-D, elementwise."""
    return 0.5 * (torch.log(v1 / v0) + (v0 + (m0 - m1) ** 2) / v1 - 1.0)


def _pointwise(kern: ReverseKernels, x0: Tensor, n_nodes: int) -> Tensor:
    """The 1-D ELBO of every ``x0`` ``(n,)`` from its definition (I9), Gauss--Hermite over ``x_k | x_0``."""
    sched = kern.ddpm_schedule()
    dt, dev = x0.dtype, x0.device
    betas = sched.betas.to(dev, dt)
    ab = sched.alpha_bars.to(dev, dt)  # (T + 1,)
    om = sched.one_minus_alpha_bars.to(dev, dt)
    z, w = gauss_hermite(n_nodes, dtype=dt, device=dev)
    T, n = kern.K, x0.shape[0]
    # L_T: KL(q(x_T | x_0) || N(0, P))
    P = torch.as_tensor(kern.prior_var, dtype=dt, device=dev)
    total = _kl_normal(torch.sqrt(ab[T]) * x0, om[T].expand(n), torch.zeros_like(x0), P.expand(n))
    step = max(1, _MAX_POINTS // (n * n_nodes))
    for k0 in range(1, T + 1, step):
        ks = torch.arange(k0, min(T, k0 + step - 1) + 1, device=dev)
        kk = ks - 1
        xk = torch.sqrt(ab[ks])[:, None, None] * x0[None, :, None] + torch.sqrt(om[ks])[:, None, None] * z
        D = denoise_steps(kern, xk.reshape(ks.numel(), n * n_nodes, 1), ks)[..., 0].reshape(xk.shape)
        mean = kern.a.to(dev, dt)[kk][:, None, None] * xk + kern.c.to(dev, dt)[kk][:, None, None] * D
        v = kern.var.to(dev, dt)[kk][:, None, None]
        # the forward posterior q(x_{k-1} | x_k, x_0) (I15), from the betas
        bt = torch.where(ks == 1, torch.ones_like(om[ks]), om[ks - 1] * betas[kk] / om[ks])  # step 1: the decoder
        mt = (torch.sqrt(1.0 - betas[kk]) * om[ks - 1] / om[ks])[:, None, None] * xk + (
            torch.sqrt(ab[ks - 1]) * betas[kk] / om[ks])[:, None, None] * x0[None, :, None]
        kl = _kl_normal(mt, bt[:, None, None].expand_as(mt), mean, v.expand_as(mean))
        dec = 0.5 * (_LOG_2PI + torch.log(v) + (x0[None, :, None] - mean) ** 2 / v)  # -log N(x_0; mean, v)
        term = torch.where((ks == 1)[:, None, None], dec, kl)
        total = total + (term * w).sum(-1).sum(0)
    return -total


def pointwise_elbo_1d(
    model: object, x: Tensor, *, schedule: Optional[Discrete] = None, variance: str = "beta",
    decoder_variance: Optional[float] = None, n_nodes: int = 48,
) -> Tensor:
    """``ELBO(x_0) = -(L_T + sum_{k>=2} L_{k-1} + L_0)`` of each 1-D point (I9), from the definition:
    ``L_{k-1} = E_{x_k|x_0} KL(q(x_{k-1}|x_k, x_0) || N(a_k x_k + c_k D_k(x_k), v_k))`` with the
    forward posterior written from the betas, ``L_0 = -E log N(x_0; D_1(x_1), v_1)``, Gauss--Hermite
    of ``n_nodes`` over ``x_k | x_0``.  ``x``: ``(n,)`` or ``(n, 1)``; returns ``(n,)`` (with gradient)."""
    n_nodes = check_int(n_nodes, "n_nodes", 2)
    from ._common import as_model

    m = as_model(model)
    kern = sampler_kernels(m, schedule, variance, decoder_variance)
    xx = x.reshape(-1)
    return _pointwise(kern, xx, n_nodes)


def decomposition(
    model: object,
    target: object,
    *,
    schedule: Optional[Discrete] = None,
    variance: str = "beta",
    decoder_variance: Optional[float] = None,
    grid: Optional[Tensor] = None,
    n_nodes: int = 64,
    n_samples: int = 1 << 16,
    generator: Optional[torch.Generator] = None,
    dtype: Optional[torch.dtype] = None,
    device: Any = None,
) -> Decomposition:
    """``-E_q[ELBO] = H(q) + KL(q || p_sampler) + E_q[log p_sampler - ELBO]`` (I28), terms computed apart.

    1-D (any model): :func:`elbo_objective` (quadrature, ``n_nodes``), :func:`target_entropy`
    (``n_nodes + 16``), :func:`true_kl` (grid, ``n_nodes + 8``) and the gap by :func:`pointwise_elbo_1d`
    at the Gauss--Hermite nodes of ``q`` (order ``n_nodes - 8`` in ``x_0`` and ``n_nodes - 16`` in
    ``x_k``) against ``log p`` from its own grid propagation.  ``d > 1``: affine denoisers only,
    closed forms and a Monte Carlo gap over ``n_samples`` draws (``generator``).
    """
    q = check_target(target)
    m, d, dt, dev = setup(model, q, dtype, device)
    check_generator(generator)
    n_nodes = check_int(n_nodes, "n_nodes", 24)
    kern = sampler_kernels(m, schedule, variance, decoder_variance)
    sched = kern.ddpm_schedule()
    with torch.no_grad():
        if d == 1:
            neg = elbo_objective(m, q, schedule=sched, variance=variance, decoder_variance=decoder_variance,
                                 method="quadrature", n_nodes=n_nodes, dtype=dt, device=dev)
            H = target_entropy(q, n_nodes=n_nodes + 16, device=dev)
            kl = true_kl(m, q, schedule=sched, variance=variance, decoder_variance=decoder_variance, method="grid",
                         grid=grid, n_nodes=n_nodes + 8, dtype=dt, device=dev)
            g = _default_grid(kern, q, dt, dev) if grid is None else grid.to(dev, dt)
            law = grid_law(kern, g)
            mix = mixture_1d(q, dtype=dt, device=dev)

            def gap_rule(n0: int, nz: int) -> float:
                x, w = mixture_rule(mix, n0)
                return float((w * (law.log_prob(x) - _pointwise(kern, x, nz))).sum())

            gap = gap_rule(n_nodes - 8, n_nodes - 16)
            gap_err = abs(gap - gap_rule((n_nodes - 8) // 2, (n_nodes - 16) // 2))
            return Decomposition(float(neg.value), H.value, float(kl.value), gap, neg.error, H.error, kl.error,
                                 gap_err, "quadrature")
        if not isinstance(inner_model(m), AffineDenoiser):
            raise ValueError(f"decomposition in d = {d} needs an affine model (AffineDenoiser); got "
                             f"{type(inner_model(m)).__name__}")
        neg = elbo_objective(m, q, schedule=sched, variance=variance, decoder_variance=decoder_variance,
                             method="closed_form", generator=generator, dtype=dt, device=dev)
        kl = true_kl(m, q, schedule=sched, variance=variance, decoder_variance=decoder_variance,
                     method="closed_form", n_samples=n_samples, generator=generator, dtype=dt, device=dev)
        law_g = gaussian_sampler(m, sched, variance, decoder_variance=decoder_variance, generator=generator,
                                 dtype=dt, device=dev)
        n_samples = check_int(n_samples, "n_samples", 2)
        x = q.sample(n_samples, generator=generator).to(dev, dt)
        diff = (law_g.log_prob(x) - law_g.elbo(x)).double()
        gap, gap_se = float(diff.mean()), float(diff.std()) / math.sqrt(n_samples)
        # H(q) enters both H and KL (KL = cross-entropy - H): its error cancels in H + KL
        ent_err = float(kl.extras.get("entropy_error", 0.0))
        return Decomposition(float(neg.value), float(kl.entropy), float(kl.value), gap, 0.0, 4.0 * ent_err, 0.0,
                             4.0 * gap_se, "closed_form")
