"""Neural models behind the :class:`~densityformula.models.DiffusionModel` interface (docs/math.md section 2).

- :class:`MLPDenoiser`: an MLP of ``x_t`` and a log-SNR embedding whose output is one of the
  parameterizations ``"eps" | "x0" | "v" | "score"``.  Every other parameterization is obtained
  through :func:`densityformula.parameterization.convert` (the one conversion), e.g.
  ``D = (x_t - sigma eps_hat) / alpha`` and ``s = -eps_hat / sigma`` (I1).  Its trained log-SNR
  range ``valid_log_snr`` (I24) is saved in its state dict.
- :class:`ConditionalMLPDenoiser`: the same network conditioned on a class label or a
  conditioning vector ``z``; ``model.given(y)`` binds the condition and returns a plain
  :class:`DiffusionModel` (:class:`ConditionedModel`), so every estimator and sampler runs on
  the conditional model.

Both subclass :class:`DiffusionModel` and :class:`torch.nn.Module`; parameters are initialised
from an explicit ``seed`` (no global RNG is touched).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.types import Device

from .. import parameterization as P
from .._validation import (
    TimeLike,
    as_time,
    check_float_dtype,
    check_full_precision,
    check_int,
    check_seed,
    per_point_time,
    resolve_device,
)
from ..schedules import Schedule
from ._base import DiffusionModel

Tensor = torch.Tensor
#: a condition: a class label (int or ``(n,)`` integer tensor), a conditioning vector
#: (``(cond_dim,)`` or ``(n, cond_dim)``), or ``None`` for the unconditional model
Condition = Union[None, int, Sequence[int], Sequence[float], Tensor]

__all__ = [
    "MLPDenoiser",
    "ConditionalMLPDenoiser",
    "ConditionedModel",
    "log_snr_embedding",
]

_LAMBDA_CLIP = 20.0  # |log-SNR| beyond which the embedding saturates (alpha/sigma ~ e^10)


def log_snr_embedding(lam: Tensor, dim: int, clip: float = _LAMBDA_CLIP) -> Tensor:
    """Sinusoidal features of the log-SNR ``lambda = log(alpha^2 / sigma^2)`` (docs/math.md section 1).

    ``lambda`` is clamped to ``[-clip, clip]`` first, so the ``+-inf`` that schedules return at
    their ends (e.g. LiYan at ``t = 0, 1``) embed to finite features.  Returns
    ``(n, dim)``: ``[lambda_c / clip, sin(f_i lambda_c), cos(f_i lambda_c)]`` with ``dim // 2``
    geometric frequencies ``f_i`` in ``[1/(2 clip), 2]`` (the last column is padding when ``dim``
    is even).
    """
    if dim < 3:
        raise ValueError(f"embed_dim must be >= 3, got {dim}")
    lam_c = torch.nan_to_num(lam, nan=0.0).clamp(-clip, clip)
    half = (dim - 1) // 2
    freqs = torch.exp(
        torch.linspace(math.log(0.5 / clip), math.log(2.0), half, dtype=lam_c.dtype, device=lam_c.device)
    )
    arg = lam_c[:, None] * freqs[None]
    parts = [lam_c[:, None] / clip, torch.sin(arg), torch.cos(arg)]
    out = torch.cat(parts, dim=1)
    if out.shape[1] < dim:
        out = torch.cat([out, torch.zeros(out.shape[0], dim - out.shape[1], dtype=out.dtype, device=out.device)], 1)
    return out


def _linear(n_in: int, n_out: int) -> nn.Linear:
    """An ``nn.Linear`` created without touching the global RNG (initialised by :func:`_init_linear`).

    What ``nn.utils.skip_init`` does: build on the meta device, then allocate uninitialised storage.
    """
    return nn.Linear(n_in, n_out, device="meta").to_empty(device="cpu")


def _init_linear(layer: nn.Linear, gen: torch.Generator, zero: bool = False) -> None:
    """PyTorch's default ``nn.Linear`` init (U(+-1/sqrt(fan_in))) drawn from an explicit generator."""
    with torch.no_grad():
        if zero:
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()
            return
        bound = 1.0 / math.sqrt(layer.in_features)
        w = torch.empty(layer.weight.shape, dtype=torch.float64).uniform_(-bound, bound, generator=gen)
        layer.weight.copy_(w)
        if layer.bias is not None:
            b = torch.empty(layer.bias.shape, dtype=torch.float64).uniform_(-bound, bound, generator=gen)
            layer.bias.copy_(b)


class _TimeMixin:
    """Per-point ``alpha, sigma, lambda`` of a schedule for a batch ``x_t``."""

    schedule: Schedule

    def _coeffs(self, x_t: Tensor, t: TimeLike) -> Tuple[Tensor, Tensor, Tensor]:
        tt = per_point_time(as_time(t, "t").to(x_t.device), x_t.shape[0])
        return self.schedule.alpha(tt), self.schedule.sigma(tt), self.schedule.log_snr(tt)


class MLPDenoiser(_TimeMixin, DiffusionModel, nn.Module):
    """An MLP denoiser ``D_theta(x_t, t)`` with a log-SNR embedding (docs/math.md section 2).

    The network sees ``c_in x_t`` with ``c_in = 1 / sqrt(alpha^2 data_std^2 + sigma^2)`` (so its
    input has unit scale under every schedule, VE included) and a learned projection of
    :func:`log_snr_embedding` added to every hidden layer.  Its raw output is interpreted as
    ``parameterization`` (``"eps"``, ``"x0"``, ``"v"`` or ``"score"``) and converted with
    :func:`densityformula.parameterization.to_x0` / ``from_x0``; ``eps``/``score`` of an
    eps-network are returned without passing through ``x0`` (``s = -eps / sigma``, I1), which
    keeps them accurate where ``alpha -> 0``.

    Args:
        d: data dimension (inputs are ``(n, d)``).
        schedule: the forward process the model is trained for.
        width, depth: hidden width and number of hidden layers.
        parameterization: what the last layer predicts.
        embed_dim: size of the log-SNR embedding.
        data_std: data scale used in ``c_in``.
        dtype, device: of the parameters (float32 by default).
        seed: initialisation seed (explicit generator; global RNG untouched).
        zero_init_output: start with a zero last layer (``eps_hat = 0`` etc.).
    """

    def __init__(
        self,
        d: int,
        schedule: Schedule,
        *,
        width: int = 128,
        depth: int = 3,
        parameterization: str = "eps",
        embed_dim: int = 32,
        data_std: float = 1.0,
        dtype: torch.dtype = torch.float32,
        device: Device = None,
        seed: int = 0,
        zero_init_output: bool = True,
        _cond_in: int = 0,
    ) -> None:
        nn.Module.__init__(self)
        check_int(d, "d", 1)
        check_int(width, "width", 1)
        check_int(depth, "depth", 1)
        check_int(embed_dim, "embed_dim", 3)
        seed = check_seed(seed)
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a densityformula Schedule, got {type(schedule).__name__}")
        if parameterization not in P.KINDS:
            raise ValueError(f"parameterization must be one of {P.KINDS}, got {parameterization!r}")
        if (
            not isinstance(data_std, (int, float))
            or isinstance(data_std, bool)
            or not data_std > 0
            or not math.isfinite(data_std)
        ):
            raise ValueError(f"data_std must be a positive finite float, got {data_std!r}")
        check_float_dtype(dtype)
        self.schedule = schedule
        self.d = d
        self.width = width
        self.depth = depth
        self.parameterization = parameterization
        self.embed_dim = embed_dim
        self.data_std = float(data_std)
        self.seed = seed
        self._cond_in = _cond_in
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed)
        self.time_mlp = nn.Sequential(_linear(embed_dim, width), nn.SiLU(), _linear(width, width))
        self.time_proj = _linear(width, depth * width)
        self.inp = _linear(d + _cond_in, width)
        self.hidden = nn.ModuleList([_linear(width, width) for _ in range(depth - 1)])
        self.out = _linear(width, d)
        for layer in [self.time_mlp[0], self.time_mlp[2], self.time_proj, self.inp, *self.hidden]:
            _init_linear(layer, gen)
        _init_linear(self.out, gen, zero=zero_init_output)
        self.to(dtype=dtype, device=resolve_device(device))
        # the log-SNR range the network was trained on: set by the trainer, saved in the state dict
        # (``_extra_state``), so every checkpoint carries it
        self._valid_log_snr: Tuple[float, float] = (-math.inf, math.inf)

    @property
    def valid_log_snr(self) -> Tuple[float, float]:
        """The log-SNR range this network was trained on (``(-inf, inf)`` until trained)."""
        return self._valid_log_snr

    @valid_log_snr.setter
    def valid_log_snr(self, value: Tuple[float, float]) -> None:
        lo, hi = (float(v) for v in value)
        if math.isnan(lo) or math.isnan(hi) or not lo < hi:
            raise ValueError(f"valid_log_snr must be (lo, hi) with lo < hi, got {value!r}")
        self._valid_log_snr = (lo, hi)

    def get_extra_state(self) -> Dict[str, List[float]]:
        """Saved in the state dict: the trained log-SNR range."""
        return {"valid_log_snr": list(self._valid_log_snr)}

    def set_extra_state(self, state: Mapping[str, Sequence[float]]) -> None:
        """Restores :meth:`get_extra_state`."""
        lo, hi = state["valid_log_snr"]
        self.valid_log_snr = (lo, hi)

    def _load_from_state_dict(
        self,
        state_dict: Dict[str, Any],
        prefix: str,
        local_metadata: Dict[str, Any],
        strict: bool,
        missing_keys: List[str],
        unexpected_keys: List[str],
        error_msgs: List[str],
    ) -> None:
        # checkpoints written before the range was recorded load as "valid everywhere"
        key = prefix + "_extra_state"
        if key not in state_dict:
            state_dict[key] = {"valid_log_snr": [-math.inf, math.inf]}
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # -- properties --------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the parameters."""
        return self.out.weight.dtype

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.out.weight.device

    def extra_repr(self) -> str:
        """Shown by ``repr``."""
        return (
            f"d={self.d}, width={self.width}, depth={self.depth}, parameterization={self.parameterization!r}, "
            f"schedule={self.schedule!r}"
        )

    # -- network -----------------------------------------------------------------------
    def _check_x(self, x_t: Tensor) -> None:
        if not isinstance(x_t, Tensor):
            raise TypeError(f"x_t must be a torch.Tensor, got {type(x_t).__name__}")
        if not x_t.dtype.is_floating_point:
            raise TypeError(f"x_t must be a floating tensor, got {x_t.dtype}")
        check_full_precision(x_t, "x_t")
        if x_t.ndim != 2 or x_t.shape[1] != self.d:
            raise ValueError(f"x_t must have shape (n, {self.d}), got {tuple(x_t.shape)}")
        if x_t.device.type != self.device.type:
            raise ValueError(f"x_t is on {x_t.device} but the model is on {self.device}")
        if x_t.shape[0] == 0:
            raise ValueError(f"x_t is an empty batch (shape {tuple(x_t.shape)}); pass at least one point")
        if not bool(torch.isfinite(x_t).all()):
            raise ValueError("x_t contains NaN or inf")

    def _features(self, x_t: Tensor, cond: Optional[Tensor]) -> Tensor:
        return x_t if cond is None else torch.cat([x_t, cond], dim=1)

    def _net(self, x_t: Tensor, a: Tensor, s: Tensor, lam: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """Raw network output (the ``parameterization`` of the model), in ``x_t``'s dtype."""
        p = self.dtype
        c_in = torch.rsqrt(a.double() ** 2 * self.data_std**2 + s.double() ** 2).to(p)
        emb = log_snr_embedding(lam.double(), self.embed_dim).to(p)
        temb = self.time_proj(nn.functional.silu(self.time_mlp(emb)))
        tparts = temb.chunk(self.depth, dim=1)
        h = self.inp(self._features(x_t.to(p) * c_in[:, None], cond)) + tparts[0]
        h = nn.functional.silu(h)
        for layer, tp in zip(self.hidden, tparts[1:]):
            h = nn.functional.silu(layer(h) + tp)
        out: Tensor = self.out(h)
        return out.to(x_t.dtype)

    def predict(self, x_t: Tensor, t: TimeLike, kind: str = "x0", cond: Optional[Tensor] = None) -> Tensor:
        """The model's prediction in parameterization ``kind`` (docs/math.md section 2).

        The raw output (``self.parameterization``) goes through
        :func:`densityformula.parameterization.convert`: returned as is when ``kind`` matches,
        ``eps <-> score`` by ``s = -eps/sigma`` directly (I1), anything else through ``x0``.  Where
        the conversion would divide by zero (an eps-network's ``D`` at ``alpha = 0``, an
        x0-network's ``eps``/``score`` at ``sigma = 0``) it raises ``ZeroScaleError`` (a
        ``ValueError``; behind :func:`~densityformula.models.checked` a ``ModelOutputError`` naming
        the method and the time) instead of returning inf.  ``x_t`` must be float32 or float64
        (half precision is refused with a ``TypeError``).
        """
        if kind not in P.KINDS:
            raise ValueError(f"kind must be one of {P.KINDS}, got {kind!r}")
        self._check_x(x_t)
        a, s, lam = self._coeffs(x_t, t)
        out = self._net(x_t, a, s, lam, cond)
        return P.convert(self.parameterization, kind, out, x_t, a.to(x_t.dtype), s.to(x_t.dtype))

    def forward(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """Raw output in the model's own parameterization."""
        return self.predict(x_t, t, self.parameterization)

    def denoise(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """``D_theta(x_t, t) ~ E[X_0 | X_t = x_t]`` (docs/math.md section 2)."""
        return self.predict(x_t, t, "x0")

    def eps(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """``eps_hat = (x_t - alpha D) / sigma`` (docs/math.md section 2)."""
        return self.predict(x_t, t, "eps")

    def score(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """``s = -eps_hat / sigma`` (I1)."""
        return self.predict(x_t, t, "score")

    def v(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """``v = alpha eps_hat - sigma D`` (docs/math.md section 2)."""
        return self.predict(x_t, t, "v")

    def config(self) -> Dict[str, Any]:
        """Constructor arguments (without ``schedule``), for checkpoints."""
        return {
            "d": self.d,
            "width": self.width,
            "depth": self.depth,
            "parameterization": self.parameterization,
            "embed_dim": self.embed_dim,
            "data_std": self.data_std,
            "seed": self.seed,
        }


class ConditionalMLPDenoiser(MLPDenoiser):
    """:class:`MLPDenoiser` conditioned on a class label or a conditioning vector ``z``.

    Exactly one of ``num_classes`` (labels ``y`` in ``0..num_classes-1``, embedded in
    ``cond_embed_dim`` dims; label ``-1`` or ``y=None`` is the learned "no condition" token, for
    classifier-free training with label dropout) and ``cond_dim`` (real vectors ``z`` of that
    size; ``None`` means a zero vector plus a "no condition" flag) is given.

    ``denoise(x_t, t, y=None)`` etc. take the condition per point (``(n,)`` labels or
    ``(n, cond_dim)``) or one condition for all points.  ``model.given(y)`` returns a
    :class:`ConditionedModel`: a plain ``DiffusionModel`` for the conditional law, the model of
    ``q_0(x | y)`` that every estimator and sampler accepts.
    """

    def __init__(
        self,
        d: int,
        schedule: Schedule,
        *,
        num_classes: Optional[int] = None,
        cond_dim: Optional[int] = None,
        cond_embed_dim: int = 16,
        **kwargs: Any,
    ) -> None:
        if (num_classes is None) == (cond_dim is None):
            raise ValueError("give exactly one of num_classes (class labels) and cond_dim (conditioning vectors)")
        if num_classes is not None:
            check_int(num_classes, "num_classes", 1)
            cond_in = check_int(cond_embed_dim, "cond_embed_dim", 1)
        else:
            cond_in = check_int(cond_dim, "cond_dim", 1) + 1  # + the "no condition" flag
        seed = kwargs.get("seed", 0)
        super().__init__(d, schedule, _cond_in=cond_in, **kwargs)
        self.num_classes = num_classes
        self.cond_dim = cond_dim
        self.cond_embed_dim = cond_embed_dim
        if num_classes is not None:
            # last row: no condition; built on the meta device (as nn.utils.skip_init): no draw from the global RNG
            self.label_embed = nn.Embedding(num_classes + 1, cond_embed_dim, device="meta").to_empty(device="cpu")
            gen = torch.Generator(device="cpu")
            gen.manual_seed(seed + 1_000_003)
            with torch.no_grad():
                w = torch.randn(self.label_embed.weight.shape, generator=gen, dtype=torch.float64)
                self.label_embed.weight.copy_(w)
            self.label_embed.to(dtype=self.dtype, device=self.device)

    def _cond_features(self, y: Condition, n: int) -> Tensor:
        dev, p = self.device, self.dtype
        if self.num_classes is not None:
            if y is None:
                lab = torch.full((n,), self.num_classes, dtype=torch.long, device=dev)
            else:
                lab = torch.as_tensor(y, device=dev)
                if lab.dtype.is_floating_point or lab.dtype == torch.bool or lab.is_complex():
                    raise TypeError(f"y must hold integer class labels, got dtype {lab.dtype}")
                lab = lab.long()
                if lab.ndim == 0:
                    lab = lab.expand(n)
                if lab.shape != (n,):
                    raise ValueError(f"y must be a label or have shape ({n},), got {tuple(lab.shape)}")
                if bool(((lab < -1) | (lab >= self.num_classes)).any()):
                    raise ValueError(f"y must lie in [0, {self.num_classes - 1}] (or -1 for no condition)")
                lab = torch.where(lab < 0, torch.full_like(lab, self.num_classes), lab)
            emb: Tensor = self.label_embed(lab)
            return emb
        cond_dim = int(self.cond_dim) if self.cond_dim is not None else 0
        if y is None:
            z = torch.zeros(n, cond_dim, dtype=p, device=dev)
            flag = torch.ones(n, 1, dtype=p, device=dev)
        else:
            if not isinstance(y, Tensor):
                y = torch.as_tensor(y, dtype=p, device=dev)
            if not y.dtype.is_floating_point:
                raise TypeError(f"y must be a floating conditioning vector, got dtype {y.dtype}")
            z = y.to(device=dev, dtype=p)
            if z.ndim == 1:
                z = z[None].expand(n, -1)
            if z.shape != (n, cond_dim):
                raise ValueError(f"y must have shape ({cond_dim},) or ({n}, {cond_dim}), got {tuple(y.shape)}")
            if not bool(torch.isfinite(z).all()):
                raise ValueError("y contains NaN or inf")
            flag = torch.zeros(n, 1, dtype=p, device=dev)
        return torch.cat([z, flag], dim=1)

    def predict(
        self, x_t: Tensor, t: TimeLike, kind: str = "x0", cond: Optional[Tensor] = None, y: Condition = None
    ) -> Tensor:
        """Prediction in parameterization ``kind`` given condition ``y`` (see :meth:`MLPDenoiser.predict`)."""
        self._check_x(x_t)
        if cond is None:
            cond = self._cond_features(y, x_t.shape[0])
        return super().predict(x_t, t, kind, cond=cond)

    def forward(self, x_t: Tensor, t: TimeLike, y: Condition = None) -> Tensor:
        """Raw output in the model's own parameterization, given ``y``."""
        return self.predict(x_t, t, self.parameterization, y=y)

    def denoise(self, x_t: Tensor, t: TimeLike, y: Condition = None) -> Tensor:
        """``D_theta(x_t, t | y)`` (docs/math.md section 2); ``y=None`` is the unconditional model."""
        return self.predict(x_t, t, "x0", y=y)

    def eps(self, x_t: Tensor, t: TimeLike, y: Condition = None) -> Tensor:
        """``eps_hat(x_t, t | y)`` (docs/math.md section 2)."""
        return self.predict(x_t, t, "eps", y=y)

    def score(self, x_t: Tensor, t: TimeLike, y: Condition = None) -> Tensor:
        """``s(x_t, t | y) = -eps_hat / sigma`` (I1)."""
        return self.predict(x_t, t, "score", y=y)

    def v(self, x_t: Tensor, t: TimeLike, y: Condition = None) -> Tensor:
        """``v(x_t, t | y)`` (docs/math.md section 2)."""
        return self.predict(x_t, t, "v", y=y)

    def given(self, y: Condition) -> ConditionedModel:
        """The :class:`DiffusionModel` of ``q_0(x | y)`` (``y`` one condition or one per point)."""
        return ConditionedModel(self, y)

    def config(self) -> Dict[str, Any]:
        """Constructor arguments (without ``schedule``), for checkpoints."""
        cfg = super().config()
        cfg.update(num_classes=self.num_classes, cond_dim=self.cond_dim, cond_embed_dim=self.cond_embed_dim)
        return cfg


class ConditionedModel(DiffusionModel):
    """A :class:`ConditionalMLPDenoiser` with its condition bound: ``denoise(x_t, t) = D(x_t, t | y)``.

    ``y`` is one condition (a label, or a ``(cond_dim,)`` vector) used for every point, or one
    per point (then ``x_t`` must have exactly that many rows).
    """

    def __init__(self, base: ConditionalMLPDenoiser, y: Condition) -> None:
        if not isinstance(base, ConditionalMLPDenoiser):
            raise TypeError(f"base must be a ConditionalMLPDenoiser, got {type(base).__name__}")
        self.base = base
        self.schedule = base.schedule
        self.y = y

    @property
    def valid_log_snr(self) -> Tuple[float, float]:
        """The base network's trained log-SNR range."""
        return self.base.valid_log_snr

    def _call(self, x_t: Tensor, t: TimeLike, kind: str) -> Tensor:
        return self.base.predict(x_t, t, kind, y=self.y)

    def denoise(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """``D_theta(x_t, t | y)`` (docs/math.md section 2)."""
        return self._call(x_t, t, "x0")

    def eps(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """``eps_hat(x_t, t | y)`` (docs/math.md section 2)."""
        return self._call(x_t, t, "eps")

    def score(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """``s(x_t, t | y)`` (I1)."""
        return self._call(x_t, t, "score")

    def v(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """``v(x_t, t | y)`` (docs/math.md section 2)."""
        return self._call(x_t, t, "v")

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the base model's parameters."""
        return self.base.dtype

    @property
    def device(self) -> torch.device:
        """Device of the base model's parameters."""
        return self.base.device

    def __repr__(self) -> str:
        return f"ConditionedModel({type(self.base).__name__}, y={self.y!r})"
