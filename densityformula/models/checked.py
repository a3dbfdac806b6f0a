"""The model-call boundary: every output a model returns is checked once, in one place.

An estimator, sampler, loss or trainer wraps its model with :func:`checked` at its entry; the
wrapper forwards every call and checks that each output has the input's shape, dtype and device
and is finite.  A model that breaks that contract raises :class:`ModelOutputError` (a
``ValueError``) naming the method, the time at which it was called and what was wrong, instead
of turning into a silent NaN or a finite but wrong number downstream.  The check is one
``isfinite`` pass over the output per call.
"""
from __future__ import annotations

from typing import Any, Callable, Tuple

import torch

from .._validation import TimeLike, ZeroScaleError
from ._base import DiffusionModel

Tensor = torch.Tensor

__all__ = ["ModelOutputError", "check_output", "checked", "CheckedModel"]


class ModelOutputError(ValueError):
    """A model returned an output of the wrong type, shape, dtype or device, or a NaN / inf, or
    could not compute it (its parameterization divides by a scale that is zero at that time)."""


def _describe_time(t: TimeLike) -> str:
    if isinstance(t, Tensor):
        if t.numel() == 1:
            return f"t = {float(t.reshape(-1)[0]):.6g}"
        if t.numel() == 0:
            return "t = (empty)"
        if float(t.min()) == float(t.max()):
            return f"t = {float(t.min()):.6g} (per point)"
        return f"t in [{float(t.min()):.6g}, {float(t.max()):.6g}]"
    return f"t = {t!r}"


def check_output(out: object, like: Tensor, *, model: object, method: str, t: TimeLike,
                 shape: Tuple[int, ...] = ()) -> Tensor:
    """``out`` if it is a finite tensor shaped like ``like`` (or ``shape`` when given), with its
    dtype and device; else :class:`ModelOutputError` naming ``model.method`` and the time."""

    def where() -> str:  # built only for an error: reading t may synchronize a device
        return f"{type(model).__name__}.{method}(x_t, {_describe_time(t)})"

    if not isinstance(out, Tensor):
        raise ModelOutputError(f"{where()} returned {type(out).__name__}, not a torch.Tensor")
    want = tuple(shape) if shape else tuple(like.shape)
    if tuple(out.shape) != want:
        raise ModelOutputError(
            f"{where()} returned shape {tuple(out.shape)} for x_t of shape {tuple(like.shape)}; expected {want}"
        )
    if out.dtype != like.dtype:
        raise ModelOutputError(f"{where()} returned dtype {out.dtype} for x_t of dtype {like.dtype}")
    if out.device != like.device:
        raise ModelOutputError(f"{where()} returned a tensor on {out.device} for x_t on {like.device}")
    finite = torch.isfinite(out)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ModelOutputError(f"{where()} returned {bad} non-finite value(s) (NaN or inf) of {out.numel()}")
    return out


class CheckedModel(DiffusionModel):
    """A :class:`DiffusionModel` whose every output is checked by :func:`check_output`.

    Everything else (``schedule``, ``valid_log_snr``, attributes such as ``target`` or ``d``) is
    the wrapped model's; ``model.inner`` is the wrapped model.
    """

    def __init__(self, inner: DiffusionModel) -> None:
        self.inner = inner
        self.schedule = inner.schedule

    def __getattr__(self, name: str) -> Any:  # only called for names not found on the wrapper
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def valid_log_snr(self) -> Tuple[float, float]:
        return self.inner.valid_log_snr

    @property
    def has_exact_divergence(self) -> bool:
        return self.inner.has_exact_divergence

    def _guarded(self, method: str, fn: Callable[[], Any], t: TimeLike) -> Any:
        """``fn()``; a conversion's division by a zero scale becomes a :class:`ModelOutputError`
        naming ``method`` and the time (where the output would have been inf or NaN)."""
        try:
            return fn()
        except ZeroScaleError as exc:
            raise ModelOutputError(
                f"{type(self.inner).__name__}.{method}(x_t, {_describe_time(t)}) cannot be computed there: {exc}"
            ) from exc

    def _checked(self, method: str, x_t: Tensor, t: TimeLike) -> Tensor:
        if method != "denoise" and getattr(type(self.inner), method) is getattr(DiffusionModel, method):
            # derived from denoise by the base class: derive it here from the checked denoise, so a
            # wrong-shaped D cannot broadcast inside the conversion and pass as a right-shaped eps
            out = self._guarded(method, lambda: getattr(DiffusionModel, method)(self, x_t, t), t)
        else:
            out = self._guarded(method, lambda: getattr(self.inner, method)(x_t, t), t)
        return check_output(out, x_t, model=self.inner, method=method, t=t)

    def denoise(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """The wrapped model's ``denoise`` (I3), checked."""
        return self._checked("denoise", x_t, t)

    def eps(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """The wrapped model's ``eps`` (docs/math.md section 2), checked."""
        return self._checked("eps", x_t, t)

    def score(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """The wrapped model's ``score`` (I1), checked."""
        return self._checked("score", x_t, t)

    def v(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """The wrapped model's ``v`` (docs/math.md section 2), checked."""
        return self._checked("v", x_t, t)

    def denoise_and_score_divergence(self, x_t: Tensor, t: TimeLike) -> Tuple[Tensor, Tensor]:
        """The wrapped model's denoiser and exact divergence (I3, I4), both checked."""
        D, div = self._guarded(
            "denoise_and_score_divergence", lambda: self.inner.denoise_and_score_divergence(x_t, t), t
        )
        check_output(D, x_t, model=self.inner, method="denoise", t=t)
        check_output(div, x_t, model=self.inner, method="score_divergence", t=t, shape=(x_t.shape[0],))
        return D, div

    def __repr__(self) -> str:
        return f"checked({self.inner!r})"


class _CheckedExact(CheckedModel):
    """:class:`CheckedModel` of a model with an exact divergence (an ``ExactDivergence``)."""

    def score_divergence(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """The wrapped model's ``score_divergence`` (I4), checked, shape ``(n,)``."""
        out = self._guarded("score_divergence", lambda: self.inner.score_divergence(x_t, t), t)  # type: ignore[attr-defined]
        return check_output(out, x_t, model=self.inner, method="score_divergence", t=t, shape=(x_t.shape[0],))


def checked(model: DiffusionModel) -> CheckedModel:
    """``model`` behind the model-call boundary (every output checked; idempotent)."""
    if isinstance(model, CheckedModel):
        return model
    return _CheckedExact(model) if model.has_exact_divergence else CheckedModel(model)
