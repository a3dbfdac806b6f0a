"""A trained model rebuilt from a trainer checkpoint, and content digests of models (private).

A :class:`~densityformula.training.Trainer` checkpoint records the network's class
(``config["model"]``), its constructor arguments without the init seed (``config["model_config"]``)
and its weights (``model``; the EMA's in ``ema``), but not its noise schedule: the schedule is read
from ``config["schedule"]`` when a checkpoint has it (a ``repr`` such as
``VPLinear(beta_min=0.1, beta_max=20.0)``) and must otherwise be given.
"""
from __future__ import annotations

import ast
import hashlib
import os
import re
from typing import Any, Dict, Optional, Tuple, Type, Union

import torch
from torch import nn

from .. import schedules as S
from ..models import ConditionalMLPDenoiser, DiffusionModel, MLPDenoiser
from ..training.checkpoint import load_checkpoint

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["parse_schedule", "model_from_checkpoint", "file_digest", "model_digest"]

_SCHEDULES: Dict[str, Type[S.Schedule]] = {
    "liyan": S.LiYan, "vplinear": S.VPLinear, "vp_linear": S.VPLinear, "vp": S.VPLinear, "subvp": S.SubVP,
    "vpcosine": S.VPCosine, "vp_cosine": S.VPCosine, "cosine": S.VPCosine, "ve": S.VE,
}
_MODELS: Dict[str, Type[MLPDenoiser]] = {"MLPDenoiser": MLPDenoiser, "ConditionalMLPDenoiser": ConditionalMLPDenoiser}
_SPEC = re.compile(r"^\s*([A-Za-z_]+)\s*(?:\((.*)\))?\s*$")


def parse_schedule(spec: Union[str, S.Schedule]) -> S.Schedule:
    """A continuous schedule from ``spec``: a :class:`~densityformula.schedules.Schedule`, its ``repr``
    (``"VPLinear(beta_min=0.1, beta_max=20.0)"``) or a short name (``liyan``, ``vp_linear``, ``subvp``,
    ``vp_cosine``, ``ve``; their default parameters).  ``ValueError`` naming ``schedule`` otherwise."""
    if isinstance(spec, S.Schedule):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"schedule must be a Schedule or a string, got {type(spec).__name__}")
    match = _SPEC.match(spec)
    cls = _SCHEDULES.get(match.group(1).lower()) if match else None
    if match is None or cls is None:
        raise ValueError(f"schedule must be one of {', '.join(sorted(set(_SCHEDULES)))} or a repr such as "
                         f"'VPLinear(beta_min=0.1, beta_max=20.0)', got {spec!r}")
    kwargs: Dict[str, Any] = {}
    if match.group(2):
        try:
            call = ast.parse(f"f({match.group(2)})", mode="eval").body
            if not isinstance(call, ast.Call) or call.args:
                raise ValueError("positional arguments")
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg is not None}
        except (SyntaxError, ValueError) as exc:
            raise ValueError(f"schedule {spec!r}: arguments must be name=number pairs ({exc})") from None
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"schedule {spec!r}: {exc}") from None


def file_digest(path: PathLike) -> str:
    """SHA-256 hex digest of the file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_digest(model: DiffusionModel) -> str:
    """SHA-256 of a model's class, schedule, ``valid_log_snr`` and (for a module) every tensor of its state dict
    (names, dtypes, shapes, bytes); for another model its ``repr``."""
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}|{model.schedule!r}|{model.valid_log_snr!r}".encode())
    if isinstance(model, nn.Module):
        for name, value in model.state_dict().items():
            h.update(name.encode())
            if isinstance(value, torch.Tensor):
                t = value.detach().cpu().contiguous()
                h.update(f"{t.dtype}{tuple(t.shape)}".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            else:
                h.update(repr(value).encode())
    else:  # e.g. an AnalyticModel: its repr and every tensor attribute of it and of its target
        h.update(repr(model).encode())
        for obj in (model, getattr(model, "target", None)):
            for name, value in sorted(vars(obj).items()) if obj is not None else []:
                if isinstance(value, torch.Tensor):
                    h.update(name.encode())
                    h.update(value.detach().cpu().double().contiguous().numpy().tobytes())
    return h.hexdigest()


def model_from_checkpoint(
    path: PathLike,
    *,
    schedule: Union[None, str, S.Schedule] = None,
    weights: str = "ema",
    dtype: Optional[torch.dtype] = torch.float64,
    device: Any = "cpu",
) -> Tuple[MLPDenoiser, Dict[str, Any]]:
    """The network a :class:`~densityformula.training.Trainer` checkpoint holds, and what it was built from.

    Args:
        path: the checkpoint (its checksum is verified by
            :func:`densityformula.training.checkpoint.load_checkpoint`).
        schedule: the model's schedule when the checkpoint does not record one (see the module
            docstring); a checkpoint that records one and a different ``schedule`` is a ``ValueError``.
        weights: ``"ema"`` (the averaged weights; the plain ones when the run had no EMA) or ``"model"``.
        dtype: the dtype to evaluate in (``None``: the checkpoint's).
        device: where to put it.

    Returns:
        ``(model, info)`` with ``info = {"digest", "model", "model_config", "schedule", "weights", "step"}``
        (``digest``: SHA-256 of the file).
    """
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    state = load_checkpoint(path)
    config = state.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"checkpoint {path} has no config")
    name, arch = config.get("model"), config.get("model_config")
    if name not in _MODELS or not isinstance(arch, dict):
        raise ValueError(f"checkpoint {path} holds a {name!r} without its model_config; model_from_checkpoint "
                         f"rebuilds {', '.join(_MODELS)}")
    recorded = config.get("schedule")
    if recorded is not None:
        sched = parse_schedule(str(recorded))
        if schedule is not None and repr(parse_schedule(schedule)) != repr(sched):
            raise ValueError(f"schedule {parse_schedule(schedule)!r} differs from the checkpoint's {sched!r}")
    elif schedule is None:
        raise ValueError(f"checkpoint {path} does not record its schedule; pass schedule= "
                         "(e.g. 'VPLinear(beta_min=0.1, beta_max=20.0)')")
    else:
        sched = parse_schedule(schedule)
    use = "ema" if weights == "ema" and state.get("ema") is not None else "model"
    sd = state[use]
    if not isinstance(sd, dict) or "out.weight" not in sd:
        raise ValueError(f"checkpoint {path} has no {use} weights of an MLP denoiser")
    saved_dtype = sd["out.weight"].dtype
    model = _MODELS[str(name)](schedule=sched, dtype=saved_dtype, seed=0, **arch)
    model.load_state_dict(sd)
    model.to(device=device, dtype=dtype if dtype is not None else saved_dtype)
    model.eval()
    info = {"digest": file_digest(path), "model": name, "model_config": arch, "schedule": repr(sched),
            "weights": use, "step": state.get("step")}
    return model, info
