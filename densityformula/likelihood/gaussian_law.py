"""Closed-form output law of a sampler whose every denoiser is affine (I14).

If ``D_k(x) = A_k x + b_k`` at every step (exactly so for the exact denoiser of a Gaussian
target, or any linear model), the sampler ``x_{k-1} = a_k x_k + c_k D_k(x_k) + sqrt(v_k) z``
maps Gaussians to Gaussians: with ``M_k = a_k I + c_k A_k``,

    m_{k-1} = M_k m_k + c_k b_k,     P_{k-1} = M_k P_k M_k^T + v_k I,     m_K = 0, P_K = prior_var I
                                                                        (or any Gaussian prior),

so the output is ``N(m_0, P_0)`` in any dimension.  The KL to a Gaussian target and the DDPM
ELBO (pointwise and in expectation) are then closed form too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Protocol, Tuple, runtime_checkable

import torch

from .. import reverse
from .._validation import LogDensity, as_log_density, check_int, check_positive_float, model_dtype_device
from ..models import AnalyticModel, CheckedModel, DiffusionModel, check_model, checked
from ..reverse import ReverseKernels
from ..schedules import Discrete

Tensor = torch.Tensor

__all__ = ["gaussian_sampler", "GaussianSamplerLaw", "gaussian_kl"]

_LOG_2PI = math.log(2.0 * math.pi)


@runtime_checkable
class _HasDimension(Protocol):
    """A model that states its dimension ``d`` (e.g. ``AffineDenoiser``, ``MLPDenoiser``)."""

    d: int


def gaussian_kl(m0: Tensor, S0: Tensor, m1: Tensor, S1: Tensor) -> Tensor:
    """``KL(N(m0, S0) || N(m1, S1)) = 1/2 [tr(S1^-1 S0) + (m1-m0)^T S1^-1 (m1-m0) - d + log det S1/det S0]``."""
    d = m0.shape[0]
    L1 = torch.linalg.cholesky(S1)
    L0 = torch.linalg.cholesky(S0)
    A = torch.linalg.solve_triangular(L1, L0, upper=False)
    diff = torch.linalg.solve_triangular(L1, (m1 - m0)[:, None], upper=False)[:, 0]
    logdet = 2.0 * (torch.log(torch.diagonal(L1)).sum() - torch.log(torch.diagonal(L0)).sum())
    out: Tensor = 0.5 * ((A**2).sum() + (diff**2).sum() - d + logdet)
    return out


@dataclass
class GaussianSamplerLaw:
    """``N(mean, cov)``: the sampler's output law, with the per-step affine maps it came from."""

    mean: Tensor
    cov: Tensor
    kernels: ReverseKernels
    A: List[Tensor]  # A[k-1] = dD_k/dx (d, d)
    b: List[Tensor]  # b[k-1] = D_k(0)  (d,)
    prior_mean: Optional[Tensor] = None  # law of x_K when a prior was given (else 0, prior_var I)
    prior_cov: Optional[Tensor] = None

    @property
    def d(self) -> int:
        return int(self.mean.shape[0])

    def log_prob(self, x: Tensor) -> Tensor:
        """``log N(x; mean, cov)``, ``(n,)``."""
        L = torch.linalg.cholesky(self.cov)
        z = torch.linalg.solve_triangular(L, (x - self.mean).T, upper=False)
        out: Tensor = -0.5 * (self.d * _LOG_2PI + (z**2).sum(0)) - torch.log(torch.diagonal(L)).sum()
        return out

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

    def _prior(self) -> Tuple[Tensor, Tensor]:
        """Mean and covariance of the law of ``x_K`` (``0``, ``prior_var I`` unless a prior was given)."""
        if self.prior_mean is not None and self.prior_cov is not None:
            return self.prior_mean, self.prior_cov
        eye = torch.eye(self.d, dtype=self.mean.dtype, device=self.mean.device)
        return torch.zeros(self.d, dtype=self.mean.dtype, device=self.mean.device), self.kernels.prior_var * eye

    def _elbo(self, err_fn: Callable[[int], Tensor], prior_quad: Callable[[Tensor, Tensor, float], Tensor]) -> Tensor:
        """ELBO from ``err_fn(k) = E|x0 - D_k(x_k)|^2`` and ``prior_quad(m, S_inv, a) = E (m - a x0)^T S^-1 (m - a x0)``
        (pointwise or expected) (I9): ``L_T = KL(N(a x0, (1 - abar_T) I) || N(m, S))``, ``a = sqrt(abar_T)``."""
        kern = self.kernels
        sched = kern.ddpm_schedule()
        d = self.d
        ab, om = sched.alpha_bars, sched.one_minus_alpha_bars
        bt = kern.ddpm_beta_tilde()
        v = kern.var
        abT, omT = float(ab[-1]), float(om[-1])
        m, S = self._prior()
        L = torch.linalg.cholesky(S)
        S_inv = torch.cholesky_inverse(L)
        logdet_S = 2.0 * torch.log(torch.diagonal(L)).sum()
        quad = prior_quad(m, S_inv, math.sqrt(abT))
        total = -0.5 * (omT * torch.trace(S_inv) + quad - d + logdet_S - d * math.log(omT))
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
        sched = self.kernels.ddpm_schedule()
        ab, om = sched.alpha_bars, sched.one_minus_alpha_bars
        eye = torch.eye(self.d, dtype=x0.dtype, device=x0.device)

        def err(k: int) -> Tensor:
            A, b = self.A[k - 1], self.b[k - 1]
            r = x0 @ (eye - math.sqrt(float(ab[k])) * A).T - b
            return (r**2).sum(-1) + float(om[k]) * (A**2).sum()

        def prior_quad(m: Tensor, S_inv: Tensor, a: float) -> Tensor:
            r = m[None, :] - a * x0
            return ((r @ S_inv) * r).sum(-1)

        return self._elbo(err, prior_quad)

    def expected_elbo(self, mean: Tensor, cov: Tensor) -> Tensor:
        """``E_{x0 ~ N(mean, cov)}[ELBO(x0)]`` in closed form (I9, I14):
        ``E|B x0 - b|^2 = |B mean - b|^2 + tr(B cov B^T)``."""
        mean = torch.as_tensor(mean, dtype=self.mean.dtype, device=self.mean.device)
        cov = torch.as_tensor(cov, dtype=self.mean.dtype, device=self.mean.device)
        sched = self.kernels.ddpm_schedule()
        ab, om = sched.alpha_bars, sched.one_minus_alpha_bars
        eye = torch.eye(self.d, dtype=mean.dtype, device=mean.device)

        def err(k: int) -> Tensor:
            A, b = self.A[k - 1], self.b[k - 1]
            B = eye - math.sqrt(float(ab[k])) * A
            r = B @ mean - b
            return (r**2).sum() + torch.trace(B @ cov @ B.T) + float(om[k]) * (A**2).sum()

        def prior_quad(m: Tensor, S_inv: Tensor, a: float) -> Tensor:
            r = m - a * mean
            return r @ S_inv @ r + a * a * torch.trace(S_inv @ cov)

        return self._elbo(err, prior_quad)


def _gaussian_from_log_density(
    fn: LogDensity,
    t: Tensor,
    d: int,
    dtype: torch.dtype,
    device: torch.device,
    rtol: float,
    generator: Optional[torch.Generator],
) -> Tuple[Tensor, Tensor]:
    """Mean and covariance of a Gaussian log-density ``f``, read off its values (I14).

    ``f(x) = c + g^T x + x^T H x / 2`` is exact for a Gaussian, so ``H`` and ``g`` follow from
    ``f`` at ``0``, ``+-e_i`` and ``e_i + e_j`` (central differences, exact for a quadratic); then
    ``cov = -H^-1``, ``mean = cov g``.  Checked at a random point (``rtol``) and for a negative
    definite ``H``; anything else raises ``ValueError``.
    """
    eye = torch.eye(d, dtype=dtype, device=device)
    pairs = [(i, j) for i in range(d) for j in range(i + 1, d)]
    rows = [torch.zeros(1, d, dtype=dtype, device=device), eye, -eye]
    if pairs:
        rows.append(torch.stack([eye[i] + eye[j] for i, j in pairs]))
    probe = torch.randn(1, d, generator=generator, dtype=dtype).to(device)
    pts = torch.cat(rows + [probe], 0)
    with torch.no_grad():
        f = fn(pts, t.expand(pts.shape[0])).to(dtype)
    if not bool(torch.isfinite(f).all()):
        raise ValueError("prior returned a non-finite log-density; the Gaussian law needs a Gaussian prior")
    f0, fp, fm = f[0], f[1 : d + 1], f[d + 1 : 2 * d + 1]
    g = 0.5 * (fp - fm)
    H = torch.diag(fp + fm - 2.0 * f0)
    for idx, (i, j) in enumerate(pairs):
        hij = f[2 * d + 1 + idx] - fp[i] - fp[j] + f0
        H[i, j] = H[j, i] = hij
    pred = f0 + g @ probe[0] + 0.5 * probe[0] @ H @ probe[0]
    if float((f[-1] - pred).abs()) > rtol * (1.0 + float(f[-1].abs())):
        raise ValueError("prior is not a Gaussian log-density (not quadratic in x); the Gaussian law needs one")
    L, info = torch.linalg.cholesky_ex(-H)
    if int(info) != 0:
        raise ValueError("prior is not a Gaussian log-density (its Hessian is not negative definite)")
    cov = torch.cholesky_inverse(L)
    return cov @ g, 0.5 * (cov + cov.T)


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
    prior: object = None,
    dtype: Optional[torch.dtype] = None,
    device: Any = None,
) -> GaussianSamplerLaw:
    """Closed-form output law ``N(m_0, P_0)`` of the DDPM (or Euler--Maruyama) sampler (I14).

    Each step's affine map ``D_k(x) = A_k x + b_k`` is read off the model (``b_k = D_k(0)``,
    ``A_k e_i = D_k(e_i) - b_k``) and checked at a random point; a model whose denoiser is not
    affine raises ``ValueError``.  Then ``m_{k-1} = M_k m_k + c_k b_k``,
    ``P_{k-1} = M_k P_k M_k^T + v_k I`` with ``M_k = a_k I + c_k A_k``.

    Args:
        model: a :class:`DiffusionModel` with affine denoisers (e.g. ``AnalyticModel`` of a
            ``Gaussian``); ``d`` defaults to ``model.target.d`` (an ``AnalyticModel``) or
            ``model.d``.
        schedule, variance, decoder_variance, sampler, times, prior_var: as
            :func:`sampler_density_1d`.
        affine_rtol: relative tolerance of the affinity checks (denoisers and prior).
        generator: for the random check points.
        prior: the law of ``x_K``: ``None`` or ``"gaussian"`` (``N(0, prior_var I)``), or any
            Gaussian log-density in the forms of :func:`sampler_density_1d` (an object with
            ``log_prob(x)``, a callable of ``x`` or of ``(x, t)``, ``t`` = ``kernels.model_t[-1]``);
            its mean and covariance are read off its values (exact for a quadratic), and a
            log-density that is not Gaussian raises ``ValueError``.
        dtype, device: of the law; default the model's.
    """
    model = checked(check_model(model))  # the model-call boundary: every output checked
    inner = model.inner if isinstance(model, CheckedModel) else model
    prior_fn = as_log_density("gaussian" if prior is None else prior, "prior", strings=("gaussian",))
    if isinstance(prior_fn, LogDensity) and prior_var is not None:
        raise ValueError("prior_var sets the Gaussian prior; give prior or prior_var, not both")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    affine_rtol = check_positive_float(affine_rtol, "affine_rtol")
    model_d: Optional[int] = None
    if isinstance(inner, AnalyticModel):
        model_d = inner.target.d
    elif isinstance(inner, _HasDimension):
        model_d = int(inner.d)
    if d is None:
        if model_d is None:
            raise ValueError("d is required for a model that is not an AnalyticModel and has no .d")
        d = model_d
    elif model_d is not None:
        d = check_int(d, "d", 1)
        if d != model_d:
            raise ValueError(f"d = {d} does not match the model's dimension {model_d}; leave d=None to use it")
    kern = reverse.sampler_kernels(
        model, sampler, schedule=schedule, variance=variance, decoder_variance=decoder_variance,
        prior_var=prior_var, times=times,
    )
    d = check_int(d, "d", 1)
    dtype, device = model_dtype_device(inner, dtype, device)
    pts = torch.cat([torch.zeros(1, d, dtype=dtype, device=device), torch.eye(d, dtype=dtype, device=device)], 0)
    probe = torch.randn(1, d, generator=generator, dtype=dtype).to(device) * 2.0
    eye = torch.eye(d, dtype=dtype, device=device)
    prior_mean: Optional[Tensor] = None
    prior_cov: Optional[Tensor] = None
    if isinstance(prior_fn, LogDensity):
        prior_mean, prior_cov = _gaussian_from_log_density(
            prior_fn, kern.model_t[-1].to(device), d, dtype, device, affine_rtol, generator
        )
        m, P = prior_mean.clone(), prior_cov.clone()
    else:
        m = torch.zeros(d, dtype=dtype, device=device)
        P = kern.prior_var * eye
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
                raise ValueError(
                    f"the model's denoiser is not affine in x at step {k} (deviation "
                    f"{float((out[-1] - pred).abs().max()) / scale:.3g} relative > affine_rtol = {affine_rtol:.3g})"
                )
            As[k - 1], bs[k - 1] = A, b
            M = float(kern.a[k - 1]) * eye + float(kern.c[k - 1]) * A
            m = M @ m + float(kern.c[k - 1]) * b
            P = M @ P @ M.T + float(kern.var[k - 1]) * eye
            P = 0.5 * (P + P.T)
    return GaussianSamplerLaw(m, P, kern, As, bs, prior_mean, prior_cov)
