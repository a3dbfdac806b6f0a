"""Closed-form output law of a sampler whose every denoiser is affine (I14).

If ``D_k(x) = A_k x + b_k`` at every step (exactly so for the exact denoiser of a Gaussian
target, or any linear model), the sampler ``x_{k-1} = a_k x_k + c_k D_k(x_k) + sqrt(v_k) z``
maps Gaussians to Gaussians: with ``M_k = a_k I + c_k A_k``,

    m_{k-1} = M_k m_k + c_k b_k,     P_{k-1} = M_k P_k M_k^T + v_k I,     m_K = 0, P_K = prior_var I,

so the output is ``N(m_0, P_0)`` in any dimension.  The KL to a Gaussian target and the DDPM
ELBO (pointwise and in expectation) are then closed form too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Optional

import torch

from ..models import DiffusionModel
from ..schedules import Discrete
from ._kernels import ReverseKernels, sampler_kernels

Tensor = torch.Tensor

__all__ = ["gaussian_sampler", "GaussianSamplerLaw", "gaussian_kl"]

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_kl(m0: Tensor, S0: Tensor, m1: Tensor, S1: Tensor) -> Tensor:
    """``KL(N(m0, S0) || N(m1, S1)) = 1/2 [tr(S1^-1 S0) + (m1-m0)^T S1^-1 (m1-m0) - d + log det S1/det S0]``."""
    d = m0.shape[0]
    L1 = torch.linalg.cholesky(S1)
    L0 = torch.linalg.cholesky(S0)
    A = torch.linalg.solve_triangular(L1, L0, upper=False)
    diff = torch.linalg.solve_triangular(L1, (m1 - m0)[:, None], upper=False)[:, 0]
    logdet = 2.0 * (torch.log(torch.diagonal(L1)).sum() - torch.log(torch.diagonal(L0)).sum())
    return 0.5 * ((A**2).sum() + (diff**2).sum() - d + logdet)


@dataclass
class GaussianSamplerLaw:
    """``N(mean, cov)``: the sampler's output law, with the per-step affine maps it came from."""

    mean: Tensor
    cov: Tensor
    kernels: ReverseKernels
    A: List[Tensor]  # A[k-1] = dD_k/dx (d, d)
    b: List[Tensor]  # b[k-1] = D_k(0)  (d,)

    @property
    def d(self) -> int:
        return int(self.mean.shape[0])

    def log_prob(self, x: Tensor) -> Tensor:
        """``log N(x; mean, cov)``, ``(n,)``."""
        L = torch.linalg.cholesky(self.cov)
        z = torch.linalg.solve_triangular(L, (x - self.mean).T, upper=False)
        return -0.5 * (self.d * _LOG_2PI + (z**2).sum(0)) - torch.log(torch.diagonal(L)).sum()

    def kl(self, mean: Tensor, cov: Tensor, direction: str = "target||sampler") -> Tensor:
        """``KL(N(mean, cov) || sampler)`` (default: the likelihood gap ``E_q[log q - log p]``) or,
        with ``direction="sampler||target"``, ``KL(sampler || N(mean, cov))``."""
        mean = torch.as_tensor(mean, dtype=self.mean.dtype, device=self.mean.device)
        cov = torch.as_tensor(cov, dtype=self.mean.dtype, device=self.mean.device)
        if direction == "target||sampler":
            return gaussian_kl(mean, cov, self.mean, self.cov)
        if direction == "sampler||target":
            return gaussian_kl(self.mean, self.cov, mean, cov)
        raise ValueError(f"direction must be 'target||sampler' or 'sampler||target', got {direction!r}")

    def _check_ddpm(self) -> None:
        if self.kernels.kind != "ddpm":
            raise ValueError("the DDPM ELBO needs sampler='ddpm'")

    def _elbo(self, err_fn, x0_sq: Tensor) -> Tensor:
        """ELBO from ``err_fn(k) = E|x0 - D_k(x_k)|^2`` and ``|x0|^2`` (pointwise or expected)."""
        self._check_ddpm()
        kern = self.kernels
        d = self.d
        ab = kern.alpha_bars
        om = -torch.expm1(torch.log(ab))
        bt = om[:-1] * kern.betas / om[1:]
        v = kern.var
        P = kern.prior_var
        abT, omT = float(ab[-1]), float(om[-1])
        total = -0.5 * (d * omT / P + abT * x0_sq / P - d + d * math.log(P / omT))
        for k in range(1, kern.K + 1):
            err = err_fn(k)
            if k == 1:
                total = total - (0.5 * d * (_LOG_2PI + math.log(float(v[0]))) + err / (2.0 * float(v[0])))
            else:
                vk, btk, ck = float(v[k - 1]), float(bt[k - 1]), float(kern.c[k - 1])
                total = total - 0.5 * (d * (btk / vk - 1.0 + math.log(vk / btk)) + ck * ck * err / vk)
        return total

    def elbo(self, x0: Tensor) -> Tensor:
        """The exact DDPM ELBO of :func:`densityformula.elbo.ddpm` at ``x0`` ``(n, d)`` (I9, I14).

        With ``x_k = sqrt(abar_k) x0 + sqrt(1-abar_k) z`` and ``B_k = I - sqrt(abar_k) A_k``:
        ``E|x0 - A_k x_k - b_k|^2 = |B_k x0 - b_k|^2 + (1-abar_k) ||A_k||_F^2``.
        """
        ab = self.kernels.alpha_bars
        I = torch.eye(self.d, dtype=x0.dtype, device=x0.device)

        def err(k: int) -> Tensor:
            A, b = self.A[k - 1], self.b[k - 1]
            r = x0 @ (I - math.sqrt(float(ab[k])) * A).T - b
            return (r**2).sum(-1) + float(-torch.expm1(torch.log(ab[k]))) * (A**2).sum()

        return self._elbo(err, (x0**2).sum(-1))

    def expected_elbo(self, mean: Tensor, cov: Tensor) -> Tensor:
        """``E_{x0 ~ N(mean, cov)}[ELBO(x0)]`` in closed form:
        ``E|B x0 - b|^2 = |B mean - b|^2 + tr(B cov B^T)``."""
        mean = torch.as_tensor(mean, dtype=self.mean.dtype, device=self.mean.device)
        cov = torch.as_tensor(cov, dtype=self.mean.dtype, device=self.mean.device)
        ab = self.kernels.alpha_bars
        I = torch.eye(self.d, dtype=mean.dtype, device=mean.device)

        def err(k: int) -> Tensor:
            A, b = self.A[k - 1], self.b[k - 1]
            B = I - math.sqrt(float(ab[k])) * A
            r = B @ mean - b
            return (r**2).sum() + torch.trace(B @ cov @ B.T) + float(-torch.expm1(torch.log(ab[k]))) * (A**2).sum()

        return self._elbo(err, (mean**2).sum() + torch.trace(cov))


def gaussian_sampler(
    model: DiffusionModel,
    schedule: Optional[Discrete] = None,
    variance: str = "beta",
    *,
    d: Optional[int] = None,
    sampler: str = "ddpm",
    times: Optional[Any] = None,
    decoder_variance: Optional[float] = None,
    prior_var: Optional[float] = None,
    affine_rtol: float = 1e-7,
    generator: Optional[torch.Generator] = None,
) -> GaussianSamplerLaw:
    """Closed-form output law ``N(m_0, P_0)`` of the DDPM (or Euler--Maruyama) sampler (I14).

    Each step's affine map ``D_k(x) = A_k x + b_k`` is read off the model (``b_k = D_k(0)``,
    ``A_k e_i = D_k(e_i) - b_k``) and checked at a random point; a model whose denoiser is not
    affine raises ``ValueError``.  Then ``m_{k-1} = M_k m_k + c_k b_k``,
    ``P_{k-1} = M_k P_k M_k^T + v_k I`` with ``M_k = a_k I + c_k A_k``.

    Args:
        model: a :class:`DiffusionModel` with affine denoisers (e.g. ``AnalyticModel`` of a
            ``Gaussian``); ``d`` defaults to ``model.target.d``.
        schedule, variance, decoder_variance, sampler, times, prior_var: as
            :func:`sampler_density_1d`.
        affine_rtol: relative tolerance of the affinity check.
        generator: for the random check point.
    """
    if not isinstance(model, DiffusionModel):
        raise TypeError(f"model must be a DiffusionModel, got {type(model).__name__}")
    if d is None:
        target = getattr(model, "target", None)
        d_attr = target.d if target is not None else getattr(model, "d", None)
        if d_attr is None:
            raise ValueError("d is required for a model without a .target or a .d")
        d = int(d_attr)
    kern = sampler_kernels(
        model, sampler, schedule=schedule, variance=variance, decoder_variance=decoder_variance,
        prior_var=prior_var, times=times,
    )
    dtype = getattr(model, "dtype", torch.float64)
    device = getattr(model, "device", torch.device("cpu"))
    pts = torch.cat([torch.zeros(1, d, dtype=dtype, device=device), torch.eye(d, dtype=dtype, device=device)], 0)
    probe = torch.randn(1, d, generator=generator, dtype=dtype).to(device) * 2.0
    I = torch.eye(d, dtype=dtype, device=device)
    m = torch.zeros(d, dtype=dtype, device=device)
    P = kern.prior_var * I
    As: List[Tensor] = [None] * kern.K  # type: ignore[list-item]
    bs: List[Tensor] = [None] * kern.K  # type: ignore[list-item]
    with torch.no_grad():
        for k in range(kern.K, 0, -1):
            out = kern.denoise(torch.cat([pts, probe], 0), k)
            b = out[0]
            A = (out[1 : d + 1] - b).T  # column i = D(e_i) - b
            pred = A @ probe[0] + b
            scale = 1.0 + float(out[-1].abs().max())
            if float((out[-1] - pred).abs().max()) > affine_rtol * scale:
                raise ValueError(f"the model's denoiser is not affine in x at step {k}")
            As[k - 1], bs[k - 1] = A, b
            M = float(kern.a[k - 1]) * I + float(kern.c[k - 1]) * A
            m = M @ m + float(kern.c[k - 1]) * b
            P = M @ P @ M.T + float(kern.var[k - 1]) * I
            P = 0.5 * (P + P.T)
    return GaussianSamplerLaw(m, P, kern, As, bs)
