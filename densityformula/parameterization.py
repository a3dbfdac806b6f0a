"""The one conversion between denoiser, noise, score and velocity (docs/math.md section 2).

With ``x_t = alpha x_0 + sigma eps``:

- ``eps_hat = (x_t - alpha D) / sigma``
- ``score = -(x_t - alpha D) / sigma^2 = -eps_hat / sigma``        (I1, Tweedie)
- ``v = alpha eps_hat - sigma D``

``alpha`` and ``sigma`` may be Python floats, 0-d tensors or ``(n,)`` tensors; they
broadcast over the trailing dimensions of ``x_t`` (points ``(n, d)`` or images
``(n, c, h, w)``).  Every other module converts through these functions; :func:`convert` is the
one entry point from any kind to any other (it picks the route that stays accurate).
"""
from __future__ import annotations

from typing import Union

import torch

Tensor = torch.Tensor
Scale = Union[float, Tensor]

KINDS = ("x0", "eps", "score", "v")

__all__ = [
    "KINDS",
    "x0_to_eps",
    "eps_to_x0",
    "eps_to_score",
    "score_to_eps",
    "x0_to_v",
    "eps_x0_to_v",
    "v_to_x0",
    "to_x0",
    "from_x0",
    "convert",
]


def _b(a: Scale, x: Tensor) -> Scale:
    """Reshape a per-point scale ``(n,)`` to ``(n, 1, ..., 1)`` so it broadcasts against ``x``."""
    if isinstance(a, Tensor) and a.ndim == 1:
        return a.to(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    if isinstance(a, Tensor):
        return a.to(x.dtype)
    return a


def x0_to_eps(x_t: Tensor, x0: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    """``eps_hat = (x_t - alpha x0) / sigma``."""
    return (x_t - _b(alpha, x_t) * x0) / _b(sigma, x_t)


def eps_to_x0(x_t: Tensor, eps: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    """``x0 = (x_t - sigma eps) / alpha``."""
    return (x_t - _b(sigma, x_t) * eps) / _b(alpha, x_t)


def eps_to_score(eps: Tensor, sigma: Scale) -> Tensor:
    """``score = -eps / sigma`` (I1)."""
    return -eps / _b(sigma, eps)


def score_to_eps(score: Tensor, sigma: Scale) -> Tensor:
    """``eps = -sigma score`` (I1)."""
    return -_b(sigma, score) * score


def eps_x0_to_v(eps: Tensor, x0: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    """``v = alpha eps - sigma x0`` from both predictions (no division: finite where ``sigma = 0``)."""
    return _b(alpha, eps) * eps - _b(sigma, eps) * x0


def x0_to_v(x_t: Tensor, x0: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    """``v = alpha eps - sigma x0``."""
    return eps_x0_to_v(x0_to_eps(x_t, x0, alpha, sigma), x0, alpha, sigma)


def v_to_x0(x_t: Tensor, v: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    """``x0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2)`` (inverse of :func:`x0_to_v`)."""
    a, s = _b(alpha, x_t), _b(sigma, x_t)
    return (a * x_t - s * v) / (a * a + s * s)


def _check_kind(kind: str, name: str = "kind") -> str:
    if kind not in KINDS:
        raise ValueError(f"{name} must be one of {KINDS}, got {kind!r}")
    return kind


def to_x0(kind: str, out: Tensor, x_t: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    """Convert a network output of parameterization ``kind`` to the denoiser ``D = E[X_0 | x_t]``."""
    kind = _check_kind(kind)
    if kind == "x0":
        return out
    if kind == "eps":
        return eps_to_x0(x_t, out, alpha, sigma)
    if kind == "score":
        return eps_to_x0(x_t, score_to_eps(out, sigma), alpha, sigma)
    return v_to_x0(x_t, out, alpha, sigma)


def from_x0(kind: str, x0: Tensor, x_t: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    """Convert a denoiser output ``D`` to parameterization ``kind``."""
    kind = _check_kind(kind)
    if kind == "x0":
        return x0
    if kind == "eps":
        return x0_to_eps(x_t, x0, alpha, sigma)
    if kind == "score":
        return eps_to_score(x0_to_eps(x_t, x0, alpha, sigma), sigma)
    return x0_to_v(x_t, x0, alpha, sigma)


def convert(source: str, target: str, out: Tensor, x_t: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    """A prediction ``out`` of kind ``source`` as kind ``target`` (``"x0"``, ``"eps"``, ``"score"``, ``"v"``).

    The one conversion of docs/math.md section 2 (``x_t = alpha x_0 + sigma eps``), routed so that
    it stays accurate where a scale vanishes:

    - ``source == target``: ``out`` itself;
    - ``eps <-> score``: ``s = -eps / sigma`` and ``eps = -sigma s`` directly (I1), never through
      ``x0 = (x_t - sigma eps) / alpha``, which is ``0 / 0``-prone where ``alpha -> 0``;
    - ``eps -> v``: ``v = alpha eps - sigma x0`` with the given ``eps`` (only ``x0`` is derived);
    - anything else through the denoiser: :func:`to_x0` then :func:`from_x0`.

    Where the route divides by zero the result is inf, as the parameterization dictates (an
    eps-prediction's ``x0`` at ``alpha = 0``, an x0-prediction's ``eps``/``score`` at ``sigma = 0``).
    """
    source = _check_kind(source, "source")
    target = _check_kind(target, "target")
    if source == target:
        return out
    if source == "eps" and target == "score":
        return eps_to_score(out, sigma)
    if source == "score" and target == "eps":
        return score_to_eps(out, sigma)
    x0 = to_x0(source, out, x_t, alpha, sigma)
    if source == "eps" and target == "v":
        return eps_x0_to_v(out, x0, alpha, sigma)
    return from_x0(target, x0, x_t, alpha, sigma)
