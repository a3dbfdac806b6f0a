"""Two-sample metrics for checking samplers against exact draws (private module).

- :func:`energy_distance` -- Szekely's energy distance
  ``E(P, Q) = 2 E||X - Y|| - E||X - X'|| - E||Y - Y'||`` (V- or U-statistic).
- :func:`energy_test` -- its permutation test: the null distribution of the statistic is the law
  of the same statistic over random relabellings of the pooled sample, so the threshold is derived
  from the data, not chosen.
- :func:`mixture_cdf` / :func:`ks_test` -- one-dimensional Kolmogorov-Smirnov test against the exact
  CDF of a Gaussian mixture projected on a direction (``scipy.stats.kstest``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from .._validation import as_float_tensor, check_int, check_real_tensor
from ..targets import GaussianMixture

Tensor = torch.Tensor
#: a projection direction: ``(d,)`` numbers
Direction = Optional[Union[Tensor, Sequence[float]]]

__all__ = ["energy_distance", "energy_test", "EnergyTest", "mixture_cdf", "ks_test"]


def _points(v: object, name: str, minimum: int = 2) -> Tensor:
    """``v`` if it is a finite real floating ``(n, d)`` tensor with ``n >= minimum``; else an error naming ``name``."""
    if not isinstance(v, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, d), got {type(v).__name__}")
    check_real_tensor(v, name)
    if v.ndim != 2 or v.shape[0] < minimum:
        raise ValueError(f"{name} must have shape (n, d) with n >= {minimum}, got {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return v


def _direction(direction: Direction, d: int) -> Tensor:
    """The projection direction as a float64 ``(d,)`` tensor (``e_1`` for ``None``): finite, real, nonzero."""
    if direction is None:
        u = torch.zeros(d, dtype=torch.float64)
        u[0] = 1.0
        return u
    if isinstance(direction, Tensor):
        check_real_tensor(direction, "direction")
        u = direction.detach().to(device="cpu", dtype=torch.float64)
    else:
        u = as_float_tensor(direction, "direction", allow_nonfinite=True)
    if tuple(u.shape) != (d,):
        raise ValueError(f"direction must have shape ({d},) (one entry per dimension of gmm), got {tuple(u.shape)}")
    if not bool(torch.isfinite(u).all()):
        raise ValueError("direction contains NaN or inf")
    if not bool((u != 0).any()):
        raise ValueError("direction is the zero vector; the projection <u, X> needs a nonzero direction")
    return u


def _check_gmm(gmm: object) -> GaussianMixture:
    if not isinstance(gmm, GaussianMixture):
        raise TypeError(f"gmm must be a densityformula GaussianMixture, got {type(gmm).__name__}")
    return gmm


def _pair(x_in: object, y_in: object) -> tuple[Tensor, Tensor]:
    x, y = _points(x_in, "x"), _points(y_in, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    if x.device != y.device:
        raise ValueError(f"x is on {x.device} but y is on {y.device}")
    dt = torch.promote_types(x.dtype, y.dtype)
    return x.to(dt), y.to(dt)


def energy_distance(x: Tensor, y: Tensor, *, unbiased: bool = False) -> Tensor:
    """Squared energy distance between the samples ``x (n, d)`` and ``y (m, d)`` (a 0-d tensor).

    ``2 mean ||x_i - y_j|| - mean ||x_i - x_j|| - mean ||y_i - y_j||``; the within-sample means run
    over all ``n^2`` pairs (V-statistic, the plug-in value for the empirical laws, >= 0; in 1-D it
    equals ``2 int (F_n - G_m)^2``, the square of ``scipy.stats.energy_distance``) or over the
    ``n(n-1)`` distinct pairs when ``unbiased`` (U-statistic, unbiased for the population value).
    """
    x, y = _pair(x, y)
    n, m = x.shape[0], y.shape[0]
    dxy = torch.cdist(x, y).mean()
    sxx = torch.cdist(x, x).sum()
    syy = torch.cdist(y, y).sum()
    if unbiased:
        return 2.0 * dxy - sxx / (n * (n - 1)) - syy / (m * (m - 1))
    return 2.0 * dxy - sxx / (n * n) - syy / (m * m)


@dataclass
class EnergyTest:
    """Result of :func:`energy_test`: V-statistic, permutation p-value and the null statistics."""

    statistic: float
    p_value: float
    null: Tensor

    def __repr__(self) -> str:
        q = float(torch.quantile(self.null, 0.99))
        return f"EnergyTest(statistic={self.statistic:.4g}, p_value={self.p_value:.3g}, null_q99={q:.4g})"


def energy_test(
    x: Tensor,
    y: Tensor,
    *,
    permutations: int = 499,
    generator: Optional[torch.Generator] = None,
    chunk: int = 64,
) -> EnergyTest:
    """Permutation test of ``P = Q`` with the energy distance (Szekely & Rizzo 2004).

    The pooled ``(n + m)`` points are relabelled ``permutations`` times; the p-value is
    ``(1 + #{null >= observed}) / (1 + permutations)``.  One ``(n+m)^2`` distance matrix is formed;
    each relabelling costs one matrix-vector product (batched ``chunk`` at a time).
    """
    x, y = _pair(x, y)
    permutations = check_int(permutations, "permutations", 1)
    chunk = check_int(chunk, "chunk", 1)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    n, m = x.shape[0], y.shape[0]
    z = torch.cat([x, y])
    D = torch.cdist(z, z)
    N = n + m
    row = D.sum(1)
    total = row.sum()

    def stat(L: Tensor) -> Tensor:  # L: (N, P) 0/1 float, column = indicator of the "x" group
        DL = D @ L
        s_aa = (L * DL).sum(0)
        s_ab = L.T @ row - s_aa
        s_bb = total - 2.0 * (L.T @ row) + s_aa
        return 2.0 * s_ab / (n * m) - s_aa / (n * n) - s_bb / (m * m)

    lab = torch.zeros(N, 1, dtype=z.dtype, device=z.device)
    lab[:n] = 1.0
    observed = float(stat(lab)[0])
    nulls = []
    done = 0
    while done < permutations:
        k = min(chunk, permutations - done)
        gdev = generator.device if generator is not None else z.device
        keys = torch.rand(k, N, generator=generator, device=gdev).to(z.device)
        idx = torch.argsort(keys, dim=1)[:, :n]  # (k, n): the relabelled "x" group
        L = torch.zeros(k, N, dtype=z.dtype, device=z.device)
        L.scatter_(1, idx, 1.0)
        nulls.append(stat(L.T))
        done += k
    null = torch.cat(nulls).cpu()
    p = (1.0 + float((null >= observed).sum())) / (1.0 + permutations)
    return EnergyTest(statistic=observed, p_value=p, null=null)


def mixture_cdf(gmm: GaussianMixture, direction: Direction = None) -> Callable[[Any], np.ndarray]:
    """The CDF (a numpy-vectorized callable) of ``<u, X>`` for ``X ~ gmm`` and unit-free ``u``.

    A projection of ``sum_k w_k N(mu_k, S_k)`` is ``sum_k w_k N(u.mu_k, u^T S_k u)``; ``direction``
    defaults to ``e_1`` (must be given with ``gmm.d`` entries).
    """
    from scipy.special import ndtr

    u = _direction(direction, _check_gmm(gmm).d)
    mu = (gmm.means.double().cpu() @ u).numpy()
    sd = torch.sqrt(torch.einsum("i,kij,j->k", u, gmm.covs.double().cpu(), u)).numpy()
    w = gmm.weights.double().cpu().numpy()

    def cdf(t: Any) -> np.ndarray:
        tt = np.asarray(t, dtype=np.float64)
        out: np.ndarray = (w * ndtr((tt[..., None] - mu) / sd)).sum(-1)
        return out

    return cdf


def ks_test(samples: Tensor, gmm: GaussianMixture, direction: Direction = None) -> Any:
    """``scipy.stats.kstest`` of the projected samples ``samples @ u`` against :func:`mixture_cdf`
    (its result object: ``.statistic``, ``.pvalue``).

    Raises:
        TypeError: ``gmm`` is not a GaussianMixture; ``samples`` is not a real floating tensor
            (integer, bool and complex tensors are refused, not converted); ``direction`` is not real.
        ValueError: ``samples`` not ``(n, gmm.d)`` with ``n >= 1``, or holding NaN / inf;
            ``direction`` not ``(gmm.d,)``, non-finite or zero.
    """
    from scipy.stats import kstest

    d = _check_gmm(gmm).d
    samples = _points(samples, "samples", minimum=1)
    if samples.shape[1] != d:
        raise ValueError(f"samples must have shape (n, {d}) (gmm.d = {d}), got {tuple(samples.shape)}")
    u = _direction(direction, d)
    proj = (samples.detach().double().cpu() @ u).numpy()
    return kstest(proj, mixture_cdf(gmm, u))
