"""Bits per dimension, with the data scaling and dequantization explicit (users' requests).

A model defines a density ``p_Y`` on its own coordinates ``y``.  Quantised data (e.g. 8-bit
images) are integers ``u in {0, ..., n_bins - 1}^d`` mapped to the model's coordinates by an
affine map ``y = data_scale * u + shift`` (``data_scale = 2/256`` for the usual ``[-1, 1]``
scaling of 8-bit data, up to the shift, which does not matter).  Then

    log p_U(u) = log p_Y(y) + d log|data_scale|         (change of variables, continuous u)

and, with uniform dequantization ``u + U``, ``U ~ Uniform[0, 1)^d`` (bins of width 1 in ``u``),
``log P(u_int) >= E_U[log p_U(u_int + U)]`` (Jensen), so

    bits/dim = -( log p_Y(y) + d log|data_scale| ) / (d log 2)

is an upper bound on the discrete model's code length per dimension.  The familiar
"``+ 7``" of 8-bit images in ``[-1, 1]`` is ``-log2(2/256) = 7``.
"""
from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

from ._validation import check_int
from .estimate import Estimate

Tensor = torch.Tensor

__all__ = ["bits_per_dim"]


def bits_per_dim(
    logp: Union[Tensor, Estimate],
    d: int,
    *,
    data_scale: Union[float, Tensor] = 1.0,
    dequantization: str = "uniform",
) -> Union[Tensor, Estimate]:
    """Convert model log-densities (nats, in the model's coordinates) to bits per dimension.

    ``bpd = -(logp + sum_i log|data_scale_i|) / (d log 2)``, where ``data_scale`` is ``dy/du``:
    the Jacobian of the map from data units (quantisation bins of width 1) to the model's
    coordinates, a float or a ``(d,)`` tensor of per-dimension scales.

    Args:
        logp: ``(n,)`` log-densities ``log p_Y(y)`` in nats, or an :class:`Estimate` of them
            (value and standard error are converted; cost fields are kept).
        d: number of dimensions of one data point.
        data_scale: ``dy/du`` (e.g. ``2/256`` for 8-bit data scaled to ``[-1, 1]``; ``1/256`` for
            ``[0, 1]``; ``1.0`` for data already in model units).
        dequantization: ``"uniform"`` (``logp`` evaluated at uniformly dequantized points: the
            result bounds the discrete code length) or ``"none"`` (continuous data: the result is
            just the negative log-density per dimension in bits; ``data_scale`` still applies).

    Returns:
        bits per dimension, same type as ``logp``.
    """
    d = check_int(d, "d", 1)
    if dequantization not in ("uniform", "none"):
        raise ValueError(f"dequantization must be 'uniform' or 'none', got {dequantization!r}")
    if isinstance(data_scale, (bool, np.bool_)) or not isinstance(data_scale, (int, float, np.number, Tensor)) or (
        isinstance(data_scale, Tensor) and (data_scale.is_complex() or not data_scale.dtype.is_floating_point)
    ) or isinstance(data_scale, (complex, np.complexfloating)):
        raise TypeError(f"data_scale must be a real float or a real floating (d,) tensor, got {data_scale!r}")
    scale = torch.as_tensor(data_scale, dtype=torch.float64)
    if bool((scale < 0).any()):  # NaN passes here and fails as non-finite below
        raise ValueError(
            "data_scale must be positive (dy/du of an increasing map from data units to model units), "
            f"got {data_scale!r}"
        )
    if scale.ndim == 0:
        log_jac = d * math.log(abs(float(scale))) if float(scale) != 0 else -math.inf
    elif scale.shape == (d,):
        log_jac = float(torch.log(scale.abs()).sum())
    else:
        raise ValueError(f"data_scale must be a float or a ({d},) tensor, got shape {tuple(scale.shape)}")
    if not math.isfinite(log_jac):
        raise ValueError("data_scale must be non-zero and finite")
    denom = d * math.log(2.0)
    if isinstance(logp, Estimate):
        if isinstance(logp.value, Tensor) and (logp.value.is_complex() or not logp.value.dtype.is_floating_point):
            raise TypeError(f"logp.value must be real floating log-densities, got dtype {logp.value.dtype}")
        if not isinstance(logp.value, Tensor) or not bool(torch.isfinite(logp.value).all()):
            raise ValueError("logp.value (the Estimate's log-densities) contains NaN or inf")
        if isinstance(logp.stderr, Tensor) and bool(torch.isnan(logp.stderr).any()):
            raise ValueError("logp.stderr (the Estimate's standard errors) contains NaN")
        value = -(logp.value + log_jac) / denom
        return Estimate(value, logp.stderr / denom, logp.nfe, logp.seconds,
                        dict(logp.extras, units="bits/dim", data_scale=data_scale, dequantization=dequantization))
    if not isinstance(logp, Tensor):
        raise TypeError(f"logp must be a tensor or an Estimate, got {type(logp).__name__}")
    if logp.is_complex() or not logp.dtype.is_floating_point:
        raise TypeError(f"logp must be a real floating tensor of log-densities, got dtype {logp.dtype}")
    if not bool(torch.isfinite(logp).all()):
        raise ValueError("logp contains NaN or inf")
    return -(logp + log_jac) / denom
