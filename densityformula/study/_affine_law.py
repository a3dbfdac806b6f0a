"""The linear-Gaussian sampler law, differentiable in the model's parameters (docs/math.md I14, I26).

``densityformula.likelihood.gaussian_sampler`` computes the same law without gradients; here the
affine maps ``D_k(x) = A_k x + b_k`` are read off the model with autograd on (``b_k = D_k(0)``,
``A_k e_i = D_k(e_i) - b_k``), so that the closed-form ELBO objective and KL of an affine family
can be minimised by L-BFGS:

    m_{k-1} = M_k m_k + c_k b_k,   P_{k-1} = M_k P_k M_k^T + v_k I,   M_k = a_k I + c_k A_k,
    E||x_0 - A_k x_k - b_k||^2 = ||B_k mu - b_k||^2 + tr(B_k S B_k^T) + (1 - abar_k) ||A_k||_F^2,
    B_k = I - sqrt(abar_k) A_k,

for any target of mean ``mu`` and covariance ``S`` (the moment reduction, I26).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from ..reverse import ReverseKernels
from ._steps import denoise_steps, prior_kl_mean, step_terms

Tensor = torch.Tensor

__all__ = ["AffineMaps", "affine_maps", "affine_law", "affine_neg_elbo", "gaussian_cross_entropy"]

_LOG_2PI = math.log(2.0 * math.pi)


class AffineMaps(NamedTuple):
    """``A`` ``(T, d, d)`` and ``b`` ``(T, d)``: ``D_k(x) = A[k-1] x + b[k-1]``."""

    A: Tensor
    b: Tensor


def affine_maps(
    kern: ReverseKernels, d: int, *, dtype: torch.dtype, device: torch.device,
    generator: Optional[torch.Generator] = None, rtol: float = 1e-7,
) -> AffineMaps:
    """``D_k(x) = A_k x + b_k`` read off the model at ``0`` and ``e_i`` (I14), checked at a random point.

    ``ValueError`` when the denoiser is not affine at some step (deviation above ``rtol``).
    """
    K = kern.K
    eye = torch.eye(d, dtype=dtype, device=device)
    probe = 2.0 * torch.randn(1, d, generator=generator, dtype=dtype).to(device)
    pts = torch.cat([torch.zeros(1, d, dtype=dtype, device=device), eye, probe], 0)  # (d + 2, d)
    ks = torch.arange(1, K + 1)
    out = denoise_steps(kern, pts[None].expand(K, d + 2, d).contiguous(), ks)  # (K, d + 2, d)
    b = out[:, 0]
    A = (out[:, 1 : d + 1] - b[:, None]).transpose(1, 2)
    with torch.no_grad():
        pred = torch.einsum("kij,j->ki", A, probe[0]) + b
        dev = (out[:, -1] - pred).abs().amax(-1) / (1.0 + out[:, -1].abs().amax(-1))
        worst = int(dev.argmax())
        if float(dev[worst]) > rtol:
            raise ValueError(
                f"the model's denoiser is not affine in x at step {worst + 1} (relative deviation "
                f"{float(dev[worst]):.3g} > {rtol:.3g}); the closed forms need an affine family"
            )
    return AffineMaps(A, b)


def affine_law(kern: ReverseKernels, maps: AffineMaps, *, until: int = 0) -> tuple[Tensor, Tensor]:
    """Mean and covariance ``(m_j, P_j)`` of the sampler's ``x_j``, ``j = until`` (default the output
    ``x_0``) (I14), differentiable."""
    A, b = maps
    K, d = b.shape
    eye = torch.eye(d, dtype=b.dtype, device=b.device)
    m = torch.zeros(d, dtype=b.dtype, device=b.device)
    P = kern.prior_var * eye
    a, c, v = kern.a.tolist(), kern.c.tolist(), kern.var.tolist()
    for k in range(K, until, -1):
        M = a[k - 1] * eye + c[k - 1] * A[k - 1]
        m = M @ m + c[k - 1] * b[k - 1]
        P = M @ P @ M.T + v[k - 1] * eye
        P = 0.5 * (P + P.T)
    return m, P


def affine_neg_elbo(kern: ReverseKernels, maps: AffineMaps, mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
    """``(-E_q[ELBO], per-step ell_k (T,))`` in closed form for a target of mean ``mean``, covariance ``cov``
    (I9, I14, I26); differentiable in the maps."""
    A, b = maps
    K, d = b.shape
    sched = kern.ddpm_schedule()
    ab = sched.alpha_bars[1:].to(b.device, b.dtype)
    om = sched.one_minus_alpha_bars[1:].to(b.device, b.dtype)
    eye = torch.eye(d, dtype=b.dtype, device=b.device)
    B = eye[None] - torch.sqrt(ab)[:, None, None] * A  # (K, d, d)
    r = torch.einsum("kij,j->ki", B, mean) - b
    err = (r**2).sum(-1) + torch.einsum("kij,jl,kil->k", B, cov, B) + om * (A**2).sum((1, 2))
    terms = step_terms(kern)
    ell = d * terms.const.to(b.device, b.dtype) + 0.5 * terms.w.to(b.device, b.dtype) * err
    second = (mean**2).sum() + torch.trace(cov)
    return prior_kl_mean(kern, d, second) + ell.sum(), ell


def gaussian_cross_entropy(mean: Tensor, cov: Tensor, m: Tensor, P: Tensor) -> Tensor:
    """``-E_q log N(X; m, P)`` for any ``q`` of mean ``mean`` and covariance ``cov``:
    ``1/2 (d log 2 pi + log det P + tr(P^-1 S) + (mu - m)^T P^-1 (mu - m))``."""
    d = mean.shape[0]
    L = torch.linalg.cholesky(P)
    Linv_S = torch.linalg.solve_triangular(L, cov, upper=False)
    tr = torch.trace(torch.linalg.solve_triangular(L, Linv_S.T, upper=False))
    z = torch.linalg.solve_triangular(L, (mean - m)[:, None], upper=False)[:, 0]
    out: Tensor = 0.5 * (d * _LOG_2PI + 2.0 * torch.log(torch.diagonal(L)).sum() + tr + (z**2).sum())
    return out
