"""Gauss--Hermite rules for expectations under 1-D Gaussian mixtures (docs/math.md section 12, I27).

``E f(Z) = int f(z) N(z; 0, 1) dz ~ sum_i w_i f(z_i)`` with the probabilists' Hermite nodes (exact
for polynomials of degree ``< 2n``); for a mixture ``q = sum_j pi_j N(m_j, s2_j)`` the rule is the
union of the component rules, ``x_ji = m_j + s_j z_i`` with weights ``pi_j w_i``.  Its error is
estimated by comparing two orders (:func:`two_orders`): ``|Q_n - Q_{n/2}|``, a conservative
estimate of the error of ``Q_n`` for smooth integrands (the rule converges geometrically there).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Callable, Optional, Tuple

import numpy as np
import torch

from .._validation import check_int, model_dtype_device
from ._target import Mixture1D, mixture_1d

Tensor = torch.Tensor

__all__ = ["gauss_hermite", "mixture_rule", "two_orders", "log_mixture_density", "entropy_1d"]

_LOG_2PI = math.log(2.0 * math.pi)


def gauss_hermite(n: int, *, dtype: torch.dtype = torch.float64, device: Any = None) -> Tuple[Tensor, Tensor]:
    """Nodes and weights of ``E f(Z) ~ sum_i w_i f(z_i)``, ``Z ~ N(0, 1)`` (``n`` nodes, ``sum w = 1``).

    numpy's ``hermegauss`` up to 128 nodes (it overflows beyond about 150), above that Golub--Welsch:
    the nodes are the eigenvalues of the Jacobi matrix of ``He_{k+1} = x He_k - k He_{k-1}``
    (off-diagonal ``sqrt(k)``), the weights the squared first components of its eigenvectors.
    """
    z, w = _nodes(check_int(n, "n", 1))
    dt, dev = model_dtype_device(None, dtype, device)
    return torch.tensor(z, dtype=dt, device=dev), torch.tensor(w, dtype=dt, device=dev)


@lru_cache(maxsize=64)
def _nodes(n: int) -> Tuple[np.ndarray, np.ndarray]:
    """The rule of :func:`gauss_hermite` as float64 arrays (cached: the study calls it at every step)."""
    if n <= 128:
        z, w = np.polynomial.hermite_e.hermegauss(n)
    else:
        z, vec = np.linalg.eigh(np.diag(np.sqrt(np.arange(1.0, n)), 1) + np.diag(np.sqrt(np.arange(1.0, n)), -1))
        w = vec[0] ** 2
    z.setflags(write=False)
    w = w / w.sum()
    w.setflags(write=False)
    return z, w


def mixture_rule(mix: Mixture1D, n: int) -> Tuple[Tensor, Tensor]:
    """``E_q f(X) ~ sum_i w_i f(x_i)`` for ``q = sum_j pi_j N(m_j, s2_j)``: ``(K n,)`` nodes and weights,
    ``x = m_j + s_j z_i``, ``w = pi_j w_i`` (:func:`gauss_hermite`)."""
    z, w = gauss_hermite(n, dtype=mix.means.dtype, device=mix.means.device)
    x = mix.means[:, None] + torch.sqrt(mix.variances)[:, None] * z[None, :]
    return x.reshape(-1), (mix.weights[:, None] * w[None, :]).reshape(-1)


def two_orders(fn: Callable[[int], Tensor], n: int) -> Tuple[Tensor, float]:
    """``(Q_n, |Q_n - Q_{n // 2}|)``: a quadrature value and its error estimate from a lower order.

    ``fn(m)`` is the rule of order ``m``; only ``Q_n`` carries a gradient (the lower order is
    evaluated without one).
    """
    n = check_int(n, "n_nodes", 4)
    value = fn(n)
    with torch.no_grad():
        low = fn(max(2, n // 2))
    return value, float((value.detach() - low).abs().max())


def log_mixture_density(x: Tensor, mix: Mixture1D) -> Tensor:
    """``log q(x) = log sum_j pi_j N(x; m_j, s2_j)`` (I2), any shape of ``x``."""
    v = mix.variances
    lk = (
        torch.log(mix.weights) - 0.5 * (_LOG_2PI + torch.log(v)) - 0.5 * (x[..., None] - mix.means) ** 2 / v
    )
    return torch.logsumexp(lk, dim=-1)


def entropy_1d(
    target: object, *, n_nodes: int = 96, dtype: torch.dtype = torch.float64, device: Optional[Any] = None
) -> Tuple[float, float]:
    """``H(q) = -E_q log q(X)`` of a 1-D mixture by Gauss--Hermite (I27), with its error estimate.

    Returns ``(H, |Q_n - Q_{n/2}|)`` in nats.
    """
    mix = mixture_1d(target, dtype=dtype, device=device)

    def rule(m: int) -> Tensor:
        x, w = mixture_rule(mix, m)
        return -(w * log_mixture_density(x, mix)).sum()

    value, err = two_orders(rule, n_nodes)
    return float(value), err
