"""``Estimate``: what every estimator returns (docs/architecture.md, "Conventions")."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Tuple

import torch

if TYPE_CHECKING:  # pandas is imported only when a frame is asked for
    import pandas

Tensor = torch.Tensor

__all__ = ["Estimate"]


@dataclass
class Estimate:
    """A per-point estimate with its uncertainty and cost.

    Attributes:
        value: estimated quantity per point, shape ``(n,)`` (log-densities are in nats).
        stderr: standard error per point, shape ``(n,)`` (zero for deterministic estimators;
            a deterministic discretisation or truncation bound goes in ``extras``).
        nfe: number of model (denoiser) evaluations per point.
        seconds: wall time of the call.
        extras: anything else the estimator reports, e.g. ``"truncation_bound"``
            (nats, per point or scalar) or ``"trajectory"``.
    """

    value: Tensor
    stderr: Tensor
    nfe: int
    seconds: float
    extras: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.value, Tensor) or self.value.ndim != 1:
            raise ValueError("value must be a 1-d tensor (one entry per point)")
        if not isinstance(self.stderr, Tensor) or self.stderr.shape != self.value.shape:
            raise ValueError("stderr must be a tensor of the same shape as value")

    def __len__(self) -> int:
        return int(self.value.shape[0])

    def ci(self, level: float = 0.95) -> Tuple[Tensor, Tensor]:
        """Normal-approximation confidence interval ``value -+ z stderr`` per point."""
        if not isinstance(level, (int, float)) or isinstance(level, bool) or not 0.0 < level < 1.0:
            raise ValueError(f"level must lie in (0, 1), got {level}")
        from statistics import NormalDist

        z = NormalDist().inv_cdf(0.5 + level / 2.0)
        return self.value - z * self.stderr, self.value + z * self.stderr

    def mean(self) -> Tuple[float, float]:
        """Mean of ``value`` over points and its standard error from ``stderr`` alone.

        (The spread of ``value`` across points is a property of the data, not of the estimator.)
        """
        n = len(self)
        m = float(self.value.mean())
        se = float(torch.sqrt((self.stderr.double() ** 2).sum())) / n if n else math.nan
        return m, se

    def to_frame(self) -> pandas.DataFrame:
        """A ``pandas.DataFrame`` with columns ``value`` and ``stderr``; cost in ``.attrs``."""
        import pandas as pd

        frame = pd.DataFrame(
            {"value": self.value.detach().cpu().double().numpy(), "stderr": self.stderr.detach().cpu().double().numpy()}
        )
        frame.attrs.update({"nfe": self.nfe, "seconds": self.seconds})
        return frame

    def __repr__(self) -> str:
        n = len(self)
        if n == 0:
            return f"Estimate(n=0, nfe={self.nfe}, seconds={self.seconds:.3g})"
        m, se = self.mean()
        head = ", ".join(f"{float(v):.6g}" for v in self.value[:3])
        more = ", ..." if n > 3 else ""
        max_se = float(self.stderr.max())
        extra = f", extras: {len(self.extras)} keys" if self.extras else ""
        return (
            f"Estimate(n={n}, value=[{head}{more}], mean={m:.6g} ± {se:.2g}, max stderr={max_se:.2g}, "
            f"nfe={self.nfe}/point, seconds={self.seconds:.3g}{extra})"
        )
