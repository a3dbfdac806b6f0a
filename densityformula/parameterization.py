"""The one conversion between denoiser, noise, score and velocity (docs/math.md section 2).

With ``x_t = alpha x_0 + sigma eps``:

- ``eps_hat = (x_t - alpha D) / sigma``
- ``score = -(x_t - alpha D) / sigma^2 = -eps_hat / sigma``        (I1, Tweedie)
- ``v = alpha eps_hat - sigma D``

``alpha`` and ``sigma`` may be Python floats, 0-d tensors or ``(n,)`` tensors; they
broadcast over the trailing dimensions of ``x_t`` (points ``(n, d)`` or images
``(n, c, h, w)``).  Every other module converts through these functions; :func:`convert` is the
one entry point from any kind to any other (it picks the route that stays accurate).

Every public function checks its arguments (predictions and ``x_t``: real floating tensors of
one shape; ``alpha``, ``sigma``: finite and ``>= 0``, and ``> 0`` where the route divides by
them) and raises ``TypeError`` / ``ValueError`` naming the argument rather than returning a
NaN / inf; a zero scale that is divided by raises
:class:`ZeroScaleError` (a ``ValueError``).
"""
from __future__ import annotations

from typing import Tuple, Union

import torch

from ._validation import ZeroScaleError, check_real_tensor, check_scale

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
    "ZeroScaleError",
]


def _b(a: Scale, x: Tensor) -> Scale:
    """Reshape a per-point scale ``(n,)`` to ``(n, 1, ..., 1)`` so it broadcasts against ``x``."""
    if isinstance(a, Tensor) and a.ndim == 1:
        return a.to(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    if isinstance(a, Tensor):
        return a.to(x.dtype)
    return a


# -- the kernels (arguments already checked) ----------------------------------------------------
def _x0_to_eps(x_t: Tensor, x0: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    return (x_t - _b(alpha, x_t) * x0) / _b(sigma, x_t)


def _eps_to_x0(x_t: Tensor, eps: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    return (x_t - _b(sigma, x_t) * eps) / _b(alpha, x_t)


def _eps_to_score(eps: Tensor, sigma: Scale) -> Tensor:
    return -eps / _b(sigma, eps)


def _score_to_eps(score: Tensor, sigma: Scale) -> Tensor:
    return -_b(sigma, score) * score


def _eps_x0_to_v(eps: Tensor, x0: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    return _b(alpha, eps) * eps - _b(sigma, eps) * x0


def _v_to_x0(x_t: Tensor, v: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    a, s = _b(alpha, x_t), _b(sigma, x_t)
    return (a * x_t - s * v) / (a * a + s * s)


def _to_x0(kind: str, out: Tensor, x_t: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    if kind == "x0":
        return out
    if kind == "eps":
        return _eps_to_x0(x_t, out, alpha, sigma)
    if kind == "score":
        return _eps_to_x0(x_t, _score_to_eps(out, sigma), alpha, sigma)
    return _v_to_x0(x_t, out, alpha, sigma)


def _from_x0(kind: str, x0: Tensor, x_t: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    if kind == "x0":
        return x0
    if kind == "eps":
        return _x0_to_eps(x_t, x0, alpha, sigma)
    if kind == "score":
        return _eps_to_score(_x0_to_eps(x_t, x0, alpha, sigma), sigma)
    return _eps_x0_to_v(_x0_to_eps(x_t, x0, alpha, sigma), x0, alpha, sigma)


# -- argument checks (docs/math.md section 2: alpha, sigma >= 0, finite) -------------------------
def _pair(a: object, a_name: str, b: object, b_name: str) -> Tensor:
    """Both real floating tensors of one shape; returns ``b`` (the tensor the scales broadcast against)."""
    x = check_real_tensor(a, a_name)
    y = check_real_tensor(b, b_name)
    if tuple(x.shape) != tuple(y.shape):
        raise ValueError(
            f"{a_name} has shape {tuple(x.shape)} but {b_name} has shape {tuple(y.shape)}; they must match"
        )
    if x.device != y.device:
        raise ValueError(f"{a_name} is on {x.device} but {b_name} is on {y.device}")
    return y


def _scales(alpha: object, sigma: object, like: Tensor, like_name: str, *, alpha_divides: bool = False,
            sigma_divides: bool = False) -> Tuple[Scale, Scale]:
    a = check_scale(alpha, "alpha", like, like_name, positive=alpha_divides,
                    why="the conversion divides by alpha" if alpha_divides else "")
    s = check_scale(sigma, "sigma", like, like_name, positive=sigma_divides,
                    why="the conversion divides by sigma" if sigma_divides else "")
    return a, s


def _divides(source: str, target: str) -> Tuple[bool, bool, bool]:
    """Whether the route of :func:`convert` divides by ``alpha``, by ``sigma``, by ``alpha^2 + sigma^2``."""
    if source == target or (source, target) == ("score", "eps"):
        return False, False, False
    if (source, target) == ("eps", "score"):
        return False, True, False
    alpha_div = source in ("eps", "score")  # x0 = (x_t - sigma eps) / alpha
    sigma_div = target in ("eps", "score") or (target == "v" and source != "eps")  # eps = (x_t - alpha x0) / sigma
    return alpha_div, sigma_div, source == "v"


def _check_v_denominator(alpha: Scale, sigma: Scale) -> None:
    """``alpha^2 + sigma^2 > 0`` (the denominator of :func:`v_to_x0`)."""
    a2 = alpha * alpha + sigma * sigma
    if isinstance(a2, Tensor):
        if a2.numel() and not bool((a2 > 0).all()):
            raise ValueError("alpha and sigma are both zero: v_to_x0 divides by alpha^2 + sigma^2")
    elif not a2 > 0:
        raise ValueError("alpha and sigma are both zero: v_to_x0 divides by alpha^2 + sigma^2")


# -- the public conversions --------------------------------------------------------------------
def x0_to_eps(x_t: Tensor, x0: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    """``eps_hat = (x_t - alpha x0) / sigma`` (docs/math.md section 2); ``sigma > 0``."""
    _pair(x0, "x0", x_t, "x_t")
    a, s = _scales(alpha, sigma, x_t, "x_t", sigma_divides=True)
    return _x0_to_eps(x_t, x0, a, s)


def eps_to_x0(x_t: Tensor, eps: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    """``x0 = (x_t - sigma eps) / alpha`` (docs/math.md section 2); ``alpha > 0``."""
    _pair(eps, "eps", x_t, "x_t")
    a, s = _scales(alpha, sigma, x_t, "x_t", alpha_divides=True)
    return _eps_to_x0(x_t, eps, a, s)


def eps_to_score(eps: Tensor, sigma: Scale) -> Tensor:
    """``score = -eps / sigma`` (I1); ``sigma > 0``."""
    check_real_tensor(eps, "eps")
    s = check_scale(sigma, "sigma", eps, "eps", positive=True, why="the conversion divides by sigma")
    return _eps_to_score(eps, s)


def score_to_eps(score: Tensor, sigma: Scale) -> Tensor:
    """``eps = -sigma score`` (I1); ``sigma >= 0``."""
    check_real_tensor(score, "score")
    s = check_scale(sigma, "sigma", score, "score")
    return _score_to_eps(score, s)


def eps_x0_to_v(eps: Tensor, x0: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    """``v = alpha eps - sigma x0`` from both predictions (no division: finite where ``sigma = 0``)."""
    _pair(x0, "x0", eps, "eps")
    a, s = _scales(alpha, sigma, eps, "eps")
    return _eps_x0_to_v(eps, x0, a, s)


def x0_to_v(x_t: Tensor, x0: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    """``v = alpha eps - sigma x0`` with ``eps = (x_t - alpha x0) / sigma``; ``sigma > 0``."""
    _pair(x0, "x0", x_t, "x_t")
    a, s = _scales(alpha, sigma, x_t, "x_t", sigma_divides=True)
    return _eps_x0_to_v(_x0_to_eps(x_t, x0, a, s), x0, a, s)


def v_to_x0(x_t: Tensor, v: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    """``x0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2)`` (inverse of :func:`x0_to_v`)."""
    _pair(v, "v", x_t, "x_t")
    a, s = _scales(alpha, sigma, x_t, "x_t")
    _check_v_denominator(a, s)
    return _v_to_x0(x_t, v, a, s)


def _check_kind(kind: str, name: str = "kind") -> str:
    if kind not in KINDS:
        raise ValueError(f"{name} must be one of {KINDS}, got {kind!r}")
    return kind


def to_x0(kind: str, out: Tensor, x_t: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    """Convert a network output of parameterization ``kind`` to the denoiser ``D = E[X_0 | x_t]``
    (docs/math.md section 2); ``alpha > 0`` for ``eps`` and ``score``."""
    kind = _check_kind(kind)
    return convert(kind, "x0", out, x_t, alpha, sigma)


def from_x0(kind: str, x0: Tensor, x_t: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    """Convert a denoiser output ``D`` to parameterization ``kind`` (docs/math.md section 2);
    ``sigma > 0`` for ``eps``, ``score`` and ``v``."""
    kind = _check_kind(kind)
    return convert("x0", kind, x0, x_t, alpha, sigma)


def convert(source: str, target: str, out: Tensor, x_t: Tensor, alpha: Scale, sigma: Scale) -> Tensor:
    """A prediction ``out`` of kind ``source`` as kind ``target`` (``"x0"``, ``"eps"``, ``"score"``, ``"v"``).

    The one conversion of docs/math.md section 2 (``x_t = alpha x_0 + sigma eps``), routed so that
    it stays accurate where a scale vanishes:

    - ``source == target``: ``out`` itself;
    - ``eps <-> score``: ``s = -eps / sigma`` and ``eps = -sigma s`` directly (I1), never through
      ``x0 = (x_t - sigma eps) / alpha``, which is ``0 / 0``-prone where ``alpha -> 0``;
    - ``eps -> v``: ``v = alpha eps - sigma x0`` with the given ``eps`` (only ``x0`` is derived);
    - anything else through the denoiser: ``x0`` first, then ``target``.

    ``out`` and ``x_t`` are real floating tensors of one shape; ``alpha`` and ``sigma`` are finite
    and ``>= 0`` (floats, 0-d tensors, ``(n,)`` tensors or tensors that broadcast against ``x_t``).

    Raises:
        TypeError: ``out`` / ``x_t`` not real floating tensors, ``alpha`` / ``sigma`` not real.
        ValueError: an unknown kind; shapes that differ; a NaN / inf or negative scale; a scale
            that is zero where the route divides by it (``sigma`` for ``eps``/``score``/``v`` from
            ``x0``, ``alpha`` for ``x0`` from ``eps``/``score``), which would give inf or NaN
            (that one is a ``ZeroScaleError``, a ``ValueError`` subclass).
    """
    source = _check_kind(source, "source")
    target = _check_kind(target, "target")
    _pair(out, "out", x_t, "x_t")
    alpha_div, sigma_div, v_den = _divides(source, target)
    a, s = _scales(alpha, sigma, x_t, "x_t", alpha_divides=alpha_div, sigma_divides=sigma_div)
    if v_den:
        _check_v_denominator(a, s)
    if source == target:
        return out
    if source == "eps" and target == "score":
        return _eps_to_score(out, s)
    if source == "score" and target == "eps":
        return _score_to_eps(out, s)
    x0 = _to_x0(source, out, x_t, a, s)
    if source == "eps" and target == "v":
        return _eps_x0_to_v(out, x0, a, s)
    return _from_x0(target, x0, x_t, a, s)
