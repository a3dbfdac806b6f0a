"""Input checking shared by the public modules (private).

Every public function funnels its arguments through these helpers so that bad
input fails early with a ``ValueError`` / ``TypeError`` that names the argument.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from numbers import Real
from typing import Any, Callable, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import numpy as np
import torch

Tensor = torch.Tensor
TimeLike = Union[float, int, Tensor]


def check_int(value: object, name: str, minimum: int) -> int:
    """``int(value)`` if it is an integer ``>= minimum``, else ``TypeError`` / ``ValueError`` naming ``name``.

    Python and numpy integers (``np.integer``, e.g. ``np.int64(3)``) are accepted; ``bool``
    (and ``np.bool_``) and every non-integer type are rejected with ``TypeError``.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    out = int(value)
    if out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {out}")
    return out


#: seeds must fit torch's / numpy's 64-bit generators
_SEED_LIMIT = 2**63


def check_seed(seed: object, name: str = "seed") -> int:
    """``int(seed)`` if it is an integer with ``0 <= seed < 2**63``.

    Raises:
        TypeError / ValueError: otherwise, naming ``name`` (no ``OverflowError`` from a generator later).
    """
    out = check_int(seed, name, 0)
    if out >= _SEED_LIMIT:
        raise ValueError(f"{name} must be < 2**63 (a 64-bit generator seed), got {out}")
    return out


def _finite_real(value: object, name: str, what: str) -> float:
    """``float(value)`` for a finite Python / numpy real, else ``TypeError`` (saying ``what``) / ``ValueError``."""
    if not isinstance(value, (Real, np.integer, np.floating)):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    try:
        out = float(value)
    except OverflowError as exc:
        raise ValueError(f"{name} must be finite, got {value!r}") from exc
    if not np.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def check_positive_float(value: object, name: str, *, allow_zero: bool = False) -> float:
    """``float(value)`` if it is a finite real number ``> 0`` (``>= 0`` with ``allow_zero``).

    Python and numpy reals (and 0-d real tensors) are accepted.

    Raises:
        TypeError: ``value`` is not a real number (``bool``, complex, strings, ... included).
        ValueError: ``value`` is NaN, infinite, negative, or zero without ``allow_zero``; the message names ``name``.
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got bool")
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.ndim != 0 or value.dtype == torch.bool or value.is_complex():
            raise TypeError(
                f"{name} must be a real number, got a tensor of shape {tuple(value.shape)}, dtype {value.dtype}"
            )
        value = value.item()
    out = _finite_real(value, name, "a real number")
    if out < 0 or (out == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {out}")
    return out


def check_float_dtype(dtype: Any, name: str = "dtype") -> torch.dtype:
    """Return ``dtype`` if it is a torch floating dtype, else raise ``TypeError``."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating torch.dtype, got {dtype!r}")
    return dtype


def resolve_device(device: Any, name: str = "device") -> torch.device:
    """``"auto"`` picks CUDA when present; ``None`` means CPU.

    Raises:
        ValueError: ``device`` is not a device, names a CUDA / MPS device that is not available
            (torch itself would fail later with an ``AssertionError``), or is the ``meta`` device
            (which holds no values to estimate with); the message names ``name``.
    """
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise ValueError(f"{name} must be 'auto', None or a torch device, got {device!r}")
    try:
        out = torch.device(device)
    except (RuntimeError, TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name} must be 'auto', None or a torch device, got {device!r}") from exc
    if out.type == "meta":
        raise ValueError(f"{name}={device!r}: the meta device holds no values; use 'cpu', 'cuda' or 'auto'")
    if out.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={device!r} but CUDA is not available; use 'cpu' or 'auto'")
        if out.index is not None and out.index >= torch.cuda.device_count():
            raise ValueError(
                f"{name}={device!r} but only {torch.cuda.device_count()} CUDA device(s) are available"
            )
    if out.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"{name}={device!r} but MPS is not available; use 'cpu' or 'auto'")
    return out


def as_float_tensor(
    value: Any,
    name: str,
    *,
    dtype: torch.dtype = torch.float64,
    device: Any = None,
    allow_nonfinite: bool = False,
) -> Tensor:
    """Convert array-like ``value`` to a floating tensor and reject NaN / inf."""
    if isinstance(value, Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must be real-valued, got dtype {value.dtype}")
        out = value.to(dtype=dtype, device=device if device is not None else value.device)
    else:
        if isinstance(value, (str, bytes)) or value is None:
            raise TypeError(f"{name} must be array-like of numbers, got {type(value).__name__}")
        try:
            kind = np.asarray(value).dtype.kind  # torch would silently drop imaginary parts
            if kind not in "fiu":
                raise TypeError(f"{name} must hold real numbers, got numpy dtype kind {kind!r}")
            out = torch.as_tensor(value, dtype=dtype, device=device)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise TypeError(f"{name} must be array-like of numbers, got {type(value).__name__}") from exc
    if not allow_nonfinite and out.numel() and not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return out


def check_points(
    x: Any, d: int, dtype: torch.dtype, device: torch.device, name: str = "x", *, allow_empty: bool = False
) -> Tensor:
    """Check that ``x`` is a finite ``(n, d)`` tensor of ``dtype`` on ``device``.

    Raises:
        TypeError: ``x`` is not a tensor, or not of a real floating dtype (complex, bool and
            integer tensors are refused rather than converted), or of another floating dtype.
        ValueError: wrong shape, wrong device, NaN / inf, or an empty batch (``n = 0``) unless
            ``allow_empty``; every message names ``name``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, {d}), got {type(x).__name__}")
    if x.is_complex() or x.dtype == torch.bool or not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a real floating tensor, got dtype {x.dtype}")
    if x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (no data); pass a tensor with values")
    if x.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {x.dtype} but this object works in {dtype}; convert with {name}.to({dtype})"
        )
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"{name} must have shape (n, {d}), got {tuple(x.shape)}")
    if x.device.type != device.type:
        raise ValueError(f"{name} is on {x.device} but this object is on {device}")
    if x.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}); pass at least one point")
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x


#: the floating dtypes models, samplers and losses compute in; half precision is refused
FULL_PRECISION = (torch.float32, torch.float64)


def check_full_precision(x: Tensor, name: str) -> Tensor:
    """``x`` if its dtype is float32 or float64, else ``TypeError`` naming ``name``.

    Half precision (float16, bfloat16) is refused rather than silently upcast: the conversions
    of docs/math.md section 2 divide by ``sigma`` and ``alpha``, and a float16 state (3 significant
    digits, largest value 65504) loses them long before the small-noise end.  Mixed-precision
    training keeps ``x`` in float32 and lets autocast pick the matmul precision.
    """
    if x.dtype not in FULL_PRECISION:
        raise TypeError(
            f"{name} has dtype {x.dtype}; half precision is not supported here (float32 or float64 only): "
            f"convert with {name}.to(torch.float32)"
        )
    return x


def check_real_tensor(x: object, name: str) -> Tensor:
    """``x`` if it is a ``torch.Tensor`` of a real floating dtype with values (not on ``meta``).

    Raises:
        TypeError: not a tensor, or an integer, bool or complex tensor (refused, never converted:
            an integer tensor would be truncated and a complex one silently accepted); names ``name``.
        ValueError: a ``meta`` tensor (no values); names ``name``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex() or not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a real floating tensor, got dtype {x.dtype}")
    if x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (no data); pass a tensor with values")
    return x


def model_dimension(model: object) -> Optional[int]:
    """The data dimension ``d`` a model states (``model.d``, or ``model.target.d`` for an analytic
    model; optional attributes of the model contract), or ``None`` when it states none."""
    d = getattr(model, "d", None)
    if d is None:
        d = getattr(getattr(model, "target", None), "d", None)
    if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)):
        return None
    return int(d)


def check_batch_shape(x: Tensor, name: str, model: object) -> Tensor:
    """``x`` if it is a batch ``(n, d)`` (``n >= 1``) for ``model``'s dimension ``d``; a model that
    states no ``d`` (:func:`model_dimension`) takes any ``(n, ...)`` with ``n >= 1``.

    Raises:
        ValueError: another shape (an extra axis, a wrong ``d``, no rows); names ``name``.
    """
    d = model_dimension(model)
    if d is not None and (x.ndim != 2 or x.shape[1] != d):
        raise ValueError(f"{name} must have shape (n, {d}) for this model (its d = {d}), got {tuple(x.shape)}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n, d) with n >= 1, got {tuple(x.shape)}")
    return x


class ZeroScaleError(ValueError):
    """A scale (``alpha`` or ``sigma``) is zero where a conversion divides by it (docs/math.md section 2).

    Raised by :mod:`densityformula.parameterization` (public there as
    ``densityformula.parameterization.ZeroScaleError``); a model's method that meets it (e.g. an
    eps-network's ``denoise`` where ``alpha = 0``) is reported at the model-call boundary as a
    :class:`~densityformula.models.ModelOutputError` naming the method and the time.
    """


def check_scale(value: object, name: str, like: Tensor, like_name: str = "x", *, positive: bool = False,
                why: str = "") -> Union[float, Tensor]:
    """A scale (``alpha`` or ``sigma`` of docs/math.md section 1) to broadcast against ``like``.

    A real number (Python / numpy) or a real tensor that is 0-d, ``(n,)`` with ``n = like.shape[0]``,
    or broadcastable to ``like``'s shape; every value finite and ``>= 0`` (``> 0`` with
    ``positive``, for a scale divided by; ``why`` says so in the message).  Returns a float or the tensor.

    Raises:
        TypeError: not a real number or a real tensor; names ``name``.
        ValueError: NaN / inf, negative (or zero with ``positive``) values, or a shape that does not
            broadcast against ``like``; names ``name``.
    """
    bound = "> 0" if positive else ">= 0"
    tail = f" ({why})" if why else ""
    if isinstance(value, Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must be a real number or a real tensor, got dtype {value.dtype}")
        if value.device.type == "meta":
            raise ValueError(f"{name} is a meta tensor (no data); pass a tensor with values")
        n = like.shape[0] if like.ndim else 1
        if value.ndim == 1 and value.shape[0] not in (1, n):
            raise ValueError(
                f"{name} has shape {tuple(value.shape)}: a per-point scale must have shape ({n},) "
                f"for {like_name} of shape {tuple(like.shape)}"
            )
        if value.ndim > 1:
            lead = like.ndim - value.ndim
            ok_shape = lead >= 0 and all(v in (1, w) for v, w in zip(value.shape, like.shape[lead:]))
            if not ok_shape:
                raise ValueError(
                    f"{name} has shape {tuple(value.shape)}, which does not broadcast against {like_name} "
                    f"of shape {tuple(like.shape)}"
                )
        if value.numel():
            v = value.detach()
            finite = torch.isfinite(v)
            good = finite & ((v > 0) if positive else (v >= 0))
            if not bool(good.all()):
                if not bool(finite.all()):
                    raise ValueError(f"{name} contains NaN or inf")
                low = float(v.min())
                error = ZeroScaleError if low == 0 else ValueError
                raise error(f"{name} must be {bound}{tail}, got a minimum of {low:.6g}")
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number or a real tensor, got {type(value).__name__}")
    out = _finite_real(value, name, "a real number or a real tensor")
    if out < 0:
        raise ValueError(f"{name} must be {bound}{tail}, got {out}")
    if positive and out == 0:
        raise ZeroScaleError(f"{name} must be {bound}{tail}, got {out}")
    return out


def as_time(t: TimeLike, name: str = "t", *, like: Optional[Tensor] = None) -> Tensor:
    """Convert ``t`` (float, 0-d or 1-d tensor) to a float64 tensor, rejecting NaN.

    The result lives on ``like``'s device when ``t`` is a Python number.
    """
    if isinstance(t, bool):
        raise TypeError(f"{name} must be a float or a tensor, got bool")
    if isinstance(t, Tensor):
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{name} must be real-valued, got dtype {t.dtype}")
        out = t.to(torch.float64)
    elif isinstance(t, Real):
        device = like.device if like is not None else None
        try:
            value = float(t)
        except OverflowError as exc:
            raise ValueError(f"{name} is too large to be represented as a float") from exc
        out = torch.tensor(value, dtype=torch.float64, device=device)
    else:
        try:
            kind = np.asarray(t).dtype.kind  # torch would silently drop imaginary parts
            if kind not in "fiu":
                raise TypeError(f"{name} must hold real numbers, got numpy dtype kind {kind!r}")
            out = torch.as_tensor(t, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise TypeError(f"{name} must be a float or a tensor, got {type(t).__name__}") from exc
    if out.ndim > 1:
        raise ValueError(f"{name} must be a scalar or have shape (n,), got {tuple(out.shape)}")
    if bool(torch.isnan(out).any()):
        raise ValueError(f"{name} contains NaN")
    return out


def out_dtype(t: TimeLike) -> torch.dtype:
    """The dtype a schedule returns for input ``t``: ``t``'s float dtype, else float64."""
    if isinstance(t, Tensor) and t.dtype.is_floating_point:
        return t.dtype
    return torch.float64


def per_point_time(t: Tensor, n: int, name: str = "t") -> Tensor:
    """Broadcast a scalar or ``(n,)`` time tensor to shape ``(n,)``."""
    if t.ndim == 0:
        return t.expand(n)
    if t.shape[0] != n:
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got {tuple(t.shape)}")
    return t


# ----------------------------------------------------------------------------------------------
# density arguments (``prior=`` and friends)
# ----------------------------------------------------------------------------------------------
#: the forms a density argument may take, as every error message states them
DENSITY_FORMS = (
    "an object with a log_prob(x) method (e.g. a GaussianMixture, or gmm.marginal(schedule, t)), "
    "a callable log_density(x) -> (n,) (e.g. gmm.marginal(schedule, t).log_prob), "
    "or a callable log_density(x, t) -> (n,) (e.g. lambda x, t: gmm.log_prob(x, t, schedule))"
)

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@dataclass(frozen=True)
class LogDensity:
    """A density argument in normal form: ``log_density(x, t) -> (n,)`` whatever form it was given in.

    Attributes:
        fn: the user's callable (``obj.log_prob`` for an object with ``log_prob``).
        takes_time: whether ``fn`` is called as ``fn(x, t)`` (else ``fn(x)``).
        name: the argument's name, for error messages.
    """

    fn: Callable[..., object]
    takes_time: bool
    name: str

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """``log p(x)`` (``(n,)``); ``t`` is passed on only to a callable of ``(x, t)``."""
        out = self.fn(x, t) if self.takes_time else self.fn(x)
        n = x.shape[0]
        if not isinstance(out, Tensor) or tuple(out.shape) != (n,):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"{self.name} must return a tensor of shape ({n},) (one log-density per point), got {got}; "
                "a per-dimension log-density (e.g. torch.distributions.Normal) needs .sum(-1) or Independent"
            )
        return out


def _takes_time(fn: Callable[..., object], name: str) -> bool:
    """Whether ``fn`` wants ``(x, t)`` (two required positional parameters) or ``x`` (one).

    Only required parameters count, so ``gmm.marginal(schedule, t).log_prob`` (signature
    ``(x, t=None, schedule=None)``) is a callable of ``x``.  A callable taking ``*args`` (or whose
    signature cannot be read) gets ``(x, t)``, as every callable did before the one-argument form.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    params = list(sig.parameters.values())
    required = [p for p in params if p.kind in _POSITIONAL and p.default is inspect.Parameter.empty]
    optional = [p for p in params if p.kind in _POSITIONAL and p.default is not inspect.Parameter.empty]
    var_positional = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    kw_required = [
        p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
    if kw_required:
        raise TypeError(
            f"{name} has required keyword-only parameter(s) {kw_required}, which are never passed; "
            f"{name} must be {DENSITY_FORMS}"
        )
    if len(required) == 1:
        return False
    if len(required) == 2:
        return True
    if not required and (var_positional or len(optional) >= 2):
        return True
    if not required and len(optional) == 1:
        return False
    raise TypeError(
        f"{name} takes {len(required)} required positional argument(s) {[p.name for p in required]}; "
        f"{name} must be {DENSITY_FORMS}"
    )


def as_log_density(density: object, name: str = "prior", *, strings: Sequence[str] = ()) -> Union[str, LogDensity]:
    """Check a density argument up front and bring it to one form: the one check of every ``prior=``.

    Accepted: one of ``strings`` (returned as is, e.g. ``"gaussian"``); an object with a
    ``log_prob`` method; a callable of ``x``; a callable of ``(x, t)``.  Whether a callable (or a
    ``log_prob`` method) gets ``t`` is decided from its signature: exactly one required
    positional parameter means ``x`` only, two mean ``(x, t)``.

    Raises:
        TypeError: anything else, naming ``name`` and listing the accepted forms.
        ValueError: a string that is not one of ``strings``.
    """
    choices = ", ".join(repr(s) for s in strings)
    if isinstance(density, str):
        if density in strings:
            return density
        lead = f"one of {choices}, " if strings else ""
        raise ValueError(f"{name} must be {lead}{DENSITY_FORMS}; got the string {density!r}")
    log_prob = getattr(density, "log_prob", None)  # the documented duck type of a density object
    fn: Optional[Callable[..., object]] = None
    if log_prob is not None and callable(log_prob):
        fn = log_prob
    elif callable(density):
        fn = density
    if fn is None:
        lead = f"one of {choices}, " if strings else ""
        raise TypeError(f"{name} must be {lead}{DENSITY_FORMS}; got {type(density).__name__}")
    return LogDensity(fn, _takes_time(fn, name), name)


# ----------------------------------------------------------------------------------------------
# dtype and device of a model
# ----------------------------------------------------------------------------------------------
@runtime_checkable
class HasDtypeDevice(Protocol):
    """A model that states its dtype and device (``AnalyticModel``, ``MLPDenoiser``)."""

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...


def model_dtype_device(
    model: object, dtype: Optional[torch.dtype] = None, device: Any = None
) -> Tuple[torch.dtype, torch.device]:
    """``(dtype, device)`` to work in for ``model``: the explicit arguments when given, else the
    model's own (:class:`HasDtypeDevice`, or the first parameter of a ``torch.nn.Module``), else
    ``float64`` on the CPU."""
    m_dtype, m_device = torch.float64, torch.device("cpu")
    if isinstance(model, HasDtypeDevice):
        m_dtype, m_device = model.dtype, model.device
    elif isinstance(model, torch.nn.Module):
        p = next(model.parameters(), None)
        if p is not None:
            m_dtype, m_device = p.dtype, p.device
    out_dtype = check_float_dtype(dtype) if dtype is not None else m_dtype
    out_device = resolve_device(device) if device is not None else m_device
    return out_dtype, out_device
