"""Analytic targets: Gaussian mixtures whose every diffused quantity is exact (docs/math.md section 3).

``q_0 = sum_k w_k N(mu_k, S_k)`` diffuses under ``X_t = alpha X_0 + sigma Z`` to

    q_t = sum_k w_k N(alpha mu_k, C_k),   C_k = alpha^2 S_k + sigma^2 I          (I2)

Implementation note.  Each covariance is eigendecomposed once, ``S_k = U_k diag(e_k) U_k^T``,
at construction.  Then ``C_k = U_k diag(alpha^2 e_k + sigma^2) U_k^T`` for *every* time, so a
per-point time costs no factorisation at all (better than caching a Cholesky factor per
``(schedule, t)``), and log-determinants, solves and traces are sums over ``d`` numbers that
cannot lose positive-definiteness.  Diagonal and isotropic covariances skip the rotations.
Everything is batched over points and components; log-sum-exp everywhere; large batches are
processed in chunks that bound memory.
"""
from __future__ import annotations

import math
from typing import Dict, Literal, Optional, Tuple, Union, overload

import numpy as np
import numpy.typing as npt
import torch
from torch.types import Device

from ._validation import (
    TimeLike,
    as_float_tensor,
    as_time,
    check_float_dtype,
    check_int,
    check_points,
    check_seed,
    per_point_time,
    resolve_device,
)
from .schedules import Schedule

Tensor = torch.Tensor
#: numbers for a parameter: a tensor or anything numpy reads as an array
ArrayLike = Union[Tensor, npt.ArrayLike]

__all__ = ["GaussianMixture", "Gaussian", "random_gmm"]

_LOG_2PI = math.log(2.0 * math.pi)
# n_chunk * K * d stays below this: small enough to stay in cache on a CPU (measured ~2x faster
# than 2^23 at n = 1e5, docs/benchmarks.md), large enough to fill a GPU
_CHUNK_ELEMENTS = {"cpu": 1 << 17, "cuda": 1 << 23}


class GaussianMixture:
    """A mixture of Gaussians with exact density, score, denoiser and divergence at every noise level.

    Args:
        weights: ``(K,)`` non-negative, summing to 1.
        means: ``(K, d)``.
        covs: ``(K, d, d)`` full symmetric positive-definite, ``(K, d)`` diagonal, ``(K,)``
            isotropic (one variance per component) or a positive scalar (shared isotropic).
        dtype: floating dtype of every computation (float64 by default).
        device: where the parameters live; methods take and return tensors there.
    """

    def __init__(
        self,
        weights: ArrayLike,
        means: ArrayLike,
        covs: ArrayLike,
        *,
        dtype: torch.dtype = torch.float64,
        device: Device = None,
    ) -> None:
        check_float_dtype(dtype)
        dev = resolve_device(device) if device is not None else None
        w = as_float_tensor(weights, "weights", dtype=torch.float64, device=dev)
        mu = as_float_tensor(means, "means", dtype=torch.float64, device=dev)
        if w.ndim != 1 or w.numel() == 0:
            raise ValueError(f"weights must have shape (K,) with K >= 1, got {tuple(w.shape)}")
        K = w.shape[0]
        if mu.ndim != 2 or mu.shape[0] != K or mu.shape[1] == 0:
            raise ValueError(f"means must have shape (K, d) = ({K}, d), got {tuple(mu.shape)}")
        d = mu.shape[1]
        if bool((w < 0).any()):
            raise ValueError("weights must be non-negative")
        if abs(float(w.sum()) - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1, got sum {float(w.sum())!r}")
        w = w / w.sum()
        S = as_float_tensor(covs, "covs", dtype=torch.float64, device=mu.device)
        cov_type, eigvals, eigvecs = _decompose(S, K, d)
        self._set(torch.log(w), mu, eigvals, eigvecs, cov_type, dtype)

    # -- construction helpers --------------------------------------------------------------
    def _set(
        self,
        log_w: Tensor,
        means: Tensor,
        eigvals: Tensor,
        eigvecs: Optional[Tensor],
        cov_type: str,
        dtype: torch.dtype,
    ) -> None:
        self._log_w = log_w.to(dtype)
        self._means = means.to(dtype)
        self._e = eigvals.to(dtype)
        self._U = eigvecs.to(dtype) if eigvecs is not None else None
        self._cov_type = cov_type
        self._dtype = dtype
        self._mr = (
            torch.einsum("kij,ki->kj", self._U, self._means) if self._U is not None else self._means
        )

    @classmethod
    def _from_parts(
        cls,
        log_w: Tensor,
        means: Tensor,
        eigvals: Tensor,
        eigvecs: Optional[Tensor],
        cov_type: str,
        dtype: torch.dtype,
    ) -> GaussianMixture:
        obj = cls.__new__(cls)
        GaussianMixture._set(obj, log_w, means, eigvals, eigvecs, cov_type, dtype)
        return obj

    # -- properties ---------------------------------------------------------------------
    @property
    def K(self) -> int:
        """Number of components."""
        return int(self._means.shape[0])

    @property
    def d(self) -> int:
        """Dimension."""
        return int(self._means.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._means.device

    @property
    def cov_type(self) -> str:
        """``"full"``, ``"diag"`` or ``"iso"``: how the covariances are stored."""
        return self._cov_type

    @property
    def weights(self) -> Tensor:
        return torch.exp(self._log_w)

    @property
    def log_weights(self) -> Tensor:
        return self._log_w

    @property
    def means(self) -> Tensor:
        return self._means

    @property
    def eigvals(self) -> Tensor:
        """Eigenvalues of each covariance, ``(K, d)``."""
        return self._e

    @property
    def covs(self) -> Tensor:
        """Full covariances ``(K, d, d)`` (assembled from the stored factors)."""
        if self._U is None:
            return torch.diag_embed(self._e)
        return torch.einsum("kij,kj,klj->kil", self._U, self._e, self._U)

    def mean(self) -> Tensor:
        """Mixture mean ``sum_k w_k mu_k``."""
        return self.weights @ self._means

    def covariance(self) -> Tensor:
        """Mixture covariance ``sum_k w_k (S_k + mu_k mu_k^T) - m m^T``."""
        w = self.weights
        m = w @ self._means
        second = torch.einsum("k,kij->ij", w, self.covs) + torch.einsum("k,ki,kj->ij", w, self._means, self._means)
        return second - torch.outer(m, m)

    def to(self, device: Device = None, dtype: Optional[torch.dtype] = None) -> GaussianMixture:
        """A copy on ``device`` in ``dtype`` (either may be omitted)."""
        dtype = check_float_dtype(dtype) if dtype is not None else self._dtype
        dev = resolve_device(device) if device is not None else self.device
        return GaussianMixture._from_parts(
            self._log_w.to(dev),
            self._means.to(dev),
            self._e.to(dev),
            self._U.to(dev) if self._U is not None else None,
            self._cov_type,
            dtype,
        )

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.K}, d={self.d}, cov_type={self._cov_type!r}, dtype={self._dtype})"

    # -- core ----------------------------------------------------------------------------
    def _scales(self, n: int, t: Optional[TimeLike], schedule: Optional[Schedule]) -> Tuple[Tensor, Tensor]:
        """Per-point ``alpha, sigma`` of shape ``(n,)`` in this mixture's dtype and device."""
        if t is None and schedule is None:
            one = torch.ones(n, dtype=self._dtype, device=self.device)
            return one, torch.zeros_like(one)
        if t is None or schedule is None:
            raise ValueError("t and schedule must be given together")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a densityformula Schedule, got {type(schedule).__name__}")
        tt = per_point_time(as_time(t, "t").to(self.device), n)
        a = schedule.alpha(tt).to(self._dtype)
        s = schedule.sigma(tt).to(self._dtype)
        return a, s

    def _core(self, x: Tensor, a: Tensor, s: Tensor, want: Tuple[str, ...]) -> Dict[str, Tensor]:
        """Exact quantities of q_t at ``x`` for per-point ``alpha = a``, ``sigma = s`` (I2-I4)."""
        d = self.d
        one = torch.ones(d, dtype=x.dtype, device=x.device)  # "@ one" sums over d: far faster than .sum(-1) on CPU
        a3 = a[:, None, None]
        c = a3 * a3 * self._e[None] + (s * s)[:, None, None]  # (n, K, d): eigenvalues of C_k
        if self._U is None:
            y = x[:, None, :] - a3 * self._means[None]
        else:
            y = torch.einsum("kij,ni->nkj", self._U, x) - a3 * self._mr[None]
        z = y / c  # C_k^{-1}(x - alpha mu_k) in the eigenbasis of S_k
        log_comp = -0.5 * (d * _LOG_2PI + torch.log(c) @ one + (y * z) @ one)  # (n, K)
        joint = self._log_w[None] + log_comp
        out: Dict[str, Tensor] = {}
        lse = torch.logsumexp(joint, dim=1)
        if "log_prob" in want:
            out["log_prob"] = lse
        if set(want) - {"log_prob"}:
            r = torch.exp(joint - lse[:, None])  # the softmax, reusing the log-sum-exp
            out["resp"] = r
            # a component with r_k = 0 contributes nothing, even where its z_k overflowed (0 * inf = NaN)
            rz = r[..., None] * z
            live = None
            if bool(torch.isnan(rz.detach()).any()):  # rare: only then pay for the masking pass
                live = (r > 0)[..., None]
                rz = torch.where(live, rz, torch.zeros((), dtype=z.dtype, device=z.device))
            if "score" in want or "div" in want:
                score = -self._rotate_back(rz)
                out["score"] = score
            if "denoise" in want:
                out["denoise"] = r @ self._means + a[:, None] * self._rotate_back(rz * self._e[None])
            if "div" in want:
                tr = (1.0 / c) @ one
                g2 = (z * z) @ one
                term = r * (g2 - tr)
                if bool(torch.isnan(term.detach()).any()):  # r_k = 0 with an overflowed ||g_k||^2
                    term = torch.where(r > 0, term, torch.zeros((), dtype=r.dtype, device=r.device))
                sc = out["score"]
                out["div"] = term.sum(1) - (sc * sc) @ one
        return out

    def _rotate_back(self, v: Tensor) -> Tensor:
        """``sum_k U_k v_k`` for ``v`` of shape ``(n, K, d)``."""
        if self._U is None:
            return v.sum(1)
        return torch.einsum("kij,nkj->ni", self._U, v)

    def _eval(
        self, x: Tensor, t: Optional[TimeLike], schedule: Optional[Schedule], want: Tuple[str, ...]
    ) -> Dict[str, Tensor]:
        x = check_points(x, self.d, self._dtype, self.device)
        n = x.shape[0]
        a, s = self._scales(n, t, schedule)
        if n == 0:
            return self._core(x, a, s, want)
        chunk = max(1, _CHUNK_ELEMENTS.get(self.device.type, 1 << 23) // (self.K * self.d))
        if n <= chunk:
            out = self._core(x, a, s, want)
        else:
            parts = [
                self._core(x[i : i + chunk], a[i : i + chunk], s[i : i + chunk], want) for i in range(0, n, chunk)
            ]
            out = {k: torch.cat([p[k] for p in parts], 0) for k in parts[0]}
        for key, val in out.items():
            # never return NaN silently: it only arises when x is so far from every component that each
            # component's log-density overflows float range (then the posterior is undefined in this dtype)
            if bool(torch.isnan(val.detach()).any()):
                bad = torch.isnan(val.detach().reshape(n, -1)).any(1)
                raise ValueError(
                    f"x is numerically out of range for this mixture in {self._dtype}: {key} is undefined "
                    f"(overflow) at {int(bad.sum())} point(s), e.g. row {int(torch.nonzero(bad)[0])}"
                )
        return out

    # -- public methods ------------------------------------------------------------------
    def log_prob(self, x: Tensor, t: Optional[TimeLike] = None, schedule: Optional[Schedule] = None) -> Tensor:
        """``log q_0(x)``, or ``log q_t(x)`` of the diffused mixture (I2) when ``t, schedule`` are given.

        ``x``: ``(n, d)``; ``t``: scalar or ``(n,)``.  Returns ``(n,)``.
        """
        return self._eval(x, t, schedule, ("log_prob",))["log_prob"]

    def responsibilities(
        self, x: Tensor, t: Optional[TimeLike] = None, schedule: Optional[Schedule] = None
    ) -> Tensor:
        """Posterior component probabilities ``r_k(x) = P(k | X_t = x)``, ``(n, K)`` (I3)."""
        return self._eval(x, t, schedule, ("resp",))["resp"]

    def score(self, x: Tensor, t: TimeLike, schedule: Schedule) -> Tensor:
        """``grad_x log q_t(x) = sum_k r_k g_k``, ``g_k = -C_k^{-1}(x - alpha mu_k)`` (I1, I4)."""
        return self._eval(x, t, schedule, ("score",))["score"]

    def denoise(self, x: Tensor, t: TimeLike, schedule: Schedule) -> Tensor:
        """Posterior mean ``E[X_0 | X_t = x] = sum_k r_k m_k``,
        ``m_k = mu_k + alpha S_k C_k^{-1}(x - alpha mu_k)`` (I3)."""
        return self._eval(x, t, schedule, ("denoise",))["denoise"]

    def score_divergence(self, x: Tensor, t: TimeLike, schedule: Schedule) -> Tensor:
        """``div s = sum_k r_k(-tr C_k^{-1} + ||g_k||^2) - ||s||^2`` (I4), ``(n,)``."""
        return self._eval(x, t, schedule, ("div",))["div"]

    def marginal(self, schedule: Schedule, t: TimeLike) -> GaussianMixture:
        """The mixture law of ``X_t`` (I2) at one time ``t``."""
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a densityformula Schedule, got {type(schedule).__name__}")
        tt = as_time(t, "t")
        if tt.numel() != 1:
            raise ValueError("marginal needs a single time t; for per-point times use log_prob(x, t, schedule)")
        a = float(schedule.alpha(tt.reshape(())))
        s2 = float(schedule.sigma2(tt.reshape(())))
        e = a * a * self._e + s2
        if not bool((e > 0).all()):
            raise ValueError("the marginal at this t is degenerate (zero variance)")
        return GaussianMixture._from_parts(self._log_w, a * self._means, e, self._U, self._cov_type, self._dtype)

    @overload
    def sample(
        self, n: int, generator: Optional[torch.Generator] = None, return_labels: Literal[False] = False
    ) -> Tensor: ...

    @overload
    def sample(
        self, n: int, generator: Optional[torch.Generator] = None, *, return_labels: Literal[True]
    ) -> Tuple[Tensor, Tensor]: ...

    @overload
    def sample(
        self, n: int, generator: Optional[torch.Generator], return_labels: Literal[True]
    ) -> Tuple[Tensor, Tensor]: ...

    @overload
    def sample(
        self, n: int, generator: Optional[torch.Generator] = None, return_labels: bool = False
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]: ...

    def sample(
        self, n: int, generator: Optional[torch.Generator] = None, return_labels: bool = False
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """``n`` exact draws (and their component labels if ``return_labels``)."""
        if isinstance(n, np.integer):
            n = int(n)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator) if n else torch.zeros(
            0, dtype=torch.long, device=self.device
        )
        z = torch.randn(n, self.d, generator=generator, dtype=self._dtype, device=self.device)
        z = z * torch.sqrt(self._e[labels])
        if self._U is None:
            x = self._means[labels] + z
        else:
            x = torch.empty_like(z)
            for k in range(self.K):  # loop over components, never over points
                idx = labels == k
                if bool(idx.any()):
                    x[idx] = self._means[k] + z[idx] @ self._U[k].T
        return (x, labels) if return_labels else x

    def condition(self, mask: ArrayLike, values: ArrayLike) -> GaussianMixture:
        """The exact conditional mixture of the unknown coordinates given the known ones.

        ``mask``: bool ``(d,)``, True where the coordinate is known; ``values``: ``(d_known,)``
        (or ``(d,)``, of which ``values[mask]`` is used).  Component ``k`` becomes
        ``N(mu_u + S_uk S_kk^{-1}(v - mu_k), S_uu - S_uk S_kk^{-1} S_ku)`` with weight
        ``proportional to w_k N(v; mu_k, S_kk)``.
        """
        try:
            m = mask.to(self.device) if isinstance(mask, Tensor) else torch.as_tensor(mask, device=self.device)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise TypeError(f"mask must be a bool tensor of shape ({self.d},), got {type(mask).__name__}") from exc
        if m.dtype != torch.bool or m.shape != (self.d,):
            raise TypeError(f"mask must be a bool tensor of shape ({self.d},), got {m.dtype} {tuple(m.shape)}")
        nk = int(m.sum())
        if nk == 0 or nk == self.d:
            raise ValueError("mask must mark at least one known and one unknown coordinate")
        if isinstance(values, Tensor) and values.dtype.is_floating_point and values.dtype != self._dtype:
            # like x elsewhere: a silent float32 -> float64 upcast would carry float32 rounding into the result
            raise TypeError(
                f"values has dtype {values.dtype} but this mixture works in {self._dtype}; "
                f"convert with values.to({self._dtype})"
            )
        v = as_float_tensor(values, "values", dtype=self._dtype, device=self.device)
        if v.shape == (self.d,):
            v = v[m]
        if v.shape != (nk,):
            raise ValueError(f"values must have shape ({nk},) or ({self.d},), got {tuple(v.shape)}")
        S = self.covs
        kn, un = m, ~m
        S_kk = S[:, kn][:, :, kn]
        S_uk = S[:, un][:, :, kn]
        S_uu = S[:, un][:, :, un]
        L = torch.linalg.cholesky(S_kk)
        diff = (v[None] - self._means[:, kn])[..., None]  # (K, nk, 1)
        sol = torch.cholesky_solve(diff, L)
        mu_u = self._means[:, un] + (S_uk @ sol)[..., 0]
        cov_u = S_uu - S_uk @ torch.cholesky_solve(S_uk.transpose(1, 2), L)
        cov_u = 0.5 * (cov_u + cov_u.transpose(1, 2))
        half = torch.linalg.solve_triangular(L, diff, upper=False)[..., 0]
        log_n = -0.5 * (nk * _LOG_2PI + 2 * torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(-1) + (half**2).sum(-1))
        log_w = torch.log_softmax(self._log_w + log_n, 0)
        cov_type, e, U = _decompose(cov_u.double(), self.K, self.d - nk)
        return GaussianMixture._from_parts(log_w, mu_u, e, U, cov_type, self._dtype)


def _decompose(S: Tensor, K: int, d: int) -> Tuple[str, Tensor, Optional[Tensor]]:
    """Validate a covariance argument and return ``(cov_type, eigvals (K,d), eigvecs or None)``."""
    if S.ndim == 0:
        S = S.expand(K)
    if S.ndim == 1:
        if S.shape[0] != K:
            raise ValueError(f"isotropic covs must have shape (K,) = ({K},), got {tuple(S.shape)}")
        if bool((S <= 0).any()):
            raise ValueError("covs must be positive (isotropic variances)")
        return "iso", S[:, None].expand(K, d).clone(), None
    if S.ndim == 2:
        if S.shape != (K, d):
            raise ValueError(f"diagonal covs must have shape (K, d) = ({K}, {d}), got {tuple(S.shape)}")
        if bool((S <= 0).any()):
            raise ValueError("covs must be positive (diagonal variances)")
        return "diag", S.clone(), None
    if S.ndim != 3 or S.shape != (K, d, d):
        raise ValueError(f"covs must have shape (K, d, d) = ({K}, {d}, {d}), (K, d) or (K,), got {tuple(S.shape)}")
    scale = S.abs().amax(dim=(1, 2)).clamp_min(torch.finfo(torch.float64).tiny)
    asym = (S - S.transpose(1, 2)).abs().amax(dim=(1, 2)) / scale
    if bool((asym > 1e-10).any()):
        k = int(torch.argmax(asym))
        raise ValueError(f"covs[{k}] is not symmetric (relative asymmetry {float(asym[k]):.2g})")
    S = 0.5 * (S + S.transpose(1, 2))
    e, U = torch.linalg.eigh(S)
    if bool((e <= 0).any()):
        k = int(torch.nonzero((e <= 0).any(1))[0])
        raise ValueError(f"covs[{k}] is not positive definite (smallest eigenvalue {float(e[k].min()):.3g})")
    return "full", e, U


class Gaussian(GaussianMixture):
    """A single Gaussian ``N(mean, cov)``: the ``K = 1`` mixture.

    ``cov``: ``(d, d)``, ``(d,)`` diagonal, or a positive scalar (isotropic).
    """

    def __init__(
        self, mean: ArrayLike, cov: ArrayLike, *, dtype: torch.dtype = torch.float64, device: Device = None
    ) -> None:
        device = resolve_device(device) if device is not None else None
        mu = as_float_tensor(mean, "mean", dtype=torch.float64, device=device)
        if mu.ndim != 1 or mu.numel() == 0:
            raise ValueError(f"mean must have shape (d,), got {tuple(mu.shape)}")
        S = as_float_tensor(cov, "cov", dtype=torch.float64, device=mu.device)
        d = mu.shape[0]
        if S.ndim == 0:
            covs = S.reshape(1)
        elif S.ndim == 1:
            if S.shape[0] != d:
                raise ValueError(f"diagonal cov must have shape ({d},), got {tuple(S.shape)}")
            covs = S[None]
        elif S.ndim == 2:
            if S.shape != (d, d):
                raise ValueError(f"cov must have shape ({d}, {d}), got {tuple(S.shape)}")
            covs = S[None]
        else:
            raise ValueError(f"cov must be a scalar, (d,) or (d, d), got {tuple(S.shape)}")
        super().__init__(torch.ones(1, dtype=torch.float64), mu[None], covs, dtype=dtype, device=device)

    def __repr__(self) -> str:
        return f"Gaussian(d={self.d}, cov_type={self.cov_type!r}, dtype={self.dtype})"


def random_gmm(
    d: int,
    K: int,
    seed: int = 0,
    separation: float = 3.0,
    condition_number: float = 10.0,
    *,
    dtype: torch.dtype = torch.float64,
    device: Device = None,
) -> GaussianMixture:
    """A reproducible random mixture for tests and experiments.

    Means are ``N(0, separation^2 / (2d) I)`` so that two means lie about ``separation`` apart
    (in units of the component scale) whatever ``d``; each covariance is ``Q diag(e) Q^T`` with a
    random rotation ``Q`` and eigenvalues spaced geometrically with ratio exactly
    ``condition_number`` (geometric mean 1); weights are a softmax of Gaussian logits.
    """
    d, K = check_int(d, "d", 1), check_int(K, "K", 1)
    seed = check_seed(seed)
    if not (isinstance(separation, (int, float)) and math.isfinite(separation) and separation >= 0):
        raise ValueError(f"separation must be a finite non-negative float, got {separation!r}")
    if not (isinstance(condition_number, (int, float)) and math.isfinite(condition_number) and condition_number >= 1):
        raise ValueError(f"condition_number must be a finite float >= 1, got {condition_number!r}")
    check_float_dtype(dtype)
    g = torch.Generator().manual_seed(seed)
    logits = 0.5 * torch.randn(K, generator=g, dtype=torch.float64)
    w = torch.softmax(logits, 0)
    means = separation / math.sqrt(2.0 * d) * torch.randn(K, d, generator=g, dtype=torch.float64)
    frac = torch.linspace(-0.5, 0.5, d, dtype=torch.float64) if d > 1 else torch.zeros(1, dtype=torch.float64)
    e = torch.exp(frac * math.log(condition_number))
    eig = torch.stack([e[torch.randperm(d, generator=g)] for _ in range(K)])
    Q, R = torch.linalg.qr(torch.randn(K, d, d, generator=g, dtype=torch.float64))
    Q = Q * torch.sign(torch.diagonal(R, dim1=1, dim2=2))[:, None, :]
    dev = resolve_device(device)
    return GaussianMixture._from_parts(torch.log(w).to(dev), means.to(dev), eig.to(dev), Q.to(dev), "full", dtype)
