"""The study's target law ``q``: a Gaussian mixture, and what the study reads off it (docs/math.md section 12).

- :func:`check_target`: the one type check of a ``target`` argument;
- :func:`mixture_1d`: the weights, means and variances of a 1-D mixture as float64 vectors;
- :func:`target_moments`: its mean and covariance (all that an affine family sees of it, I26);
- :func:`gaussian_entropy`: ``H(N(m, S)) = 1/2 log det(2 pi e S)``.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Tuple

import torch

from .._validation import model_dtype_device
from ..targets import GaussianMixture

Tensor = torch.Tensor

__all__ = ["check_target", "Mixture1D", "mixture_1d", "target_moments", "gaussian_entropy"]


class Mixture1D(NamedTuple):
    """``q = sum_j w_j N(m_j, s2_j)`` in 1-D: three ``(K,)`` float64 vectors."""

    weights: Tensor
    means: Tensor
    variances: Tensor


def check_target(target: object, name: str = "target") -> GaussianMixture:
    """``target`` if it is a :class:`~densityformula.targets.GaussianMixture`, else ``TypeError``."""
    if not isinstance(target, GaussianMixture):
        raise TypeError(f"{name} must be a densityformula.targets.GaussianMixture, got {type(target).__name__}")
    return target


def mixture_1d(target: object, *, dtype: torch.dtype = torch.float64, device: Any = None) -> Mixture1D:
    """The components of a 1-D mixture ``q = sum_j w_j N(m_j, s2_j)`` (I2); ``ValueError`` for ``d != 1``."""
    q = check_target(target)
    if q.d != 1:
        raise ValueError(f"target must be 1-D for this computation, got d = {q.d}")
    dt, dev = model_dtype_device(None, dtype, device if device is not None else q.device)
    return Mixture1D(
        q.weights.to(dev, dt), q.means[:, 0].to(dev, dt), q.eigvals[:, 0].to(dev, dt)
    )


def target_moments(
    target: object, *, dtype: torch.dtype = torch.float64, device: Optional[Any] = None
) -> Tuple[Tensor, Tensor]:
    """Mean ``m = sum_j w_j m_j`` and covariance ``S = sum_j w_j (S_j + m_j m_j^T) - m m^T`` of the target."""
    q = check_target(target)
    dt, dev = model_dtype_device(None, dtype, device if device is not None else q.device)
    return q.mean().to(dev, dt), q.covariance().to(dev, dt)


def gaussian_entropy(cov: Tensor) -> Tensor:
    """``H(N(m, S)) = 1/2 log det(2 pi e S) = d/2 log(2 pi e) + 1/2 log det S`` (nats)."""
    d = cov.shape[0]
    out: Tensor = 0.5 * d * math.log(2.0 * math.pi * math.e) + 0.5 * torch.linalg.slogdet(cov)[1]
    return out
