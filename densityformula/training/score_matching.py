"""Score-matching objectives on the noisy marginals ``q_t`` (docs/math.md I43).

Each objective is an :class:`~densityformula.training.losses.Objective`: a per-sample error at
``x_t = alpha x_0 + sigma eps`` that :class:`~densityformula.training.losses.WeightedLoss` weights
over time (any schedule, any weighting ``rho``, any time sampler), so the trainer takes them as it
takes :class:`~densityformula.training.losses.ScoreLoss`.  All are scaled by ``sigma^2`` (as
``ScoreLoss``: on the scale of the eps error) unless ``sigma2_weight=False``:

=================================  ===========================================================
objective                          per-sample error (times ``sigma^2``)
=================================  ===========================================================
:class:`DenoisingScoreMatching`    ``||s_theta(x_t) + eps / sigma||^2`` (Vincent 2011; = ScoreLoss)
:class:`ExplicitScoreMatching`     ``||s_theta(x_t) - grad log q_t(x_t)||^2`` (needs the exact score)
:class:`ImplicitScoreMatching`     ``||s_theta||^2 + 2 div s_theta`` (Hyvarinen 2005); the divergence
                                   exact (``d`` vector-Jacobian products) or Hutchinson's
                                   ``v^T (ds/dx) v`` averaged over ``probes`` draws of ``v``
:class:`SlicedScoreMatching`       ``(v^T s_theta)^2 + 2 v^T (ds/dx) v`` (Song et al. 2019, twice their
                                   ``1/2`` form); ``variance_reduced=True``: ``||s_theta||^2 + 2 v^T
                                   (ds/dx) v`` (SSM-VR, which is Hutchinson ISM with the same probes)
=================================  ===========================================================

Their expectations differ by constants that do not depend on the model (I43):
``E[DSM] - E[ISM] = d`` exactly, ``E[ESM] - E[ISM] = sigma^2 E||grad log q_t||^2``; the sliced and
Hutchinson forms are unbiased for ISM.  So all four train the same score.

Probes ``v`` (Rademacher or standard Gaussian, ``E[v v^T] = I``) are drawn from the objective's own
``torch.Generator`` (``generator=`` or ``seed=``), or passed explicitly as ``probes=`` of shape
``(m, n, *point_shape)``.  Limitation: the trainer's checkpoints do not hold that generator, so a
resumed run with a probe objective redraws probes from the objective's current generator state
(bitwise-exact resume holds for DSM/ESM/exact ISM only).  The divergence assumes the model treats
rows independently (no coupling across the batch, true of every model in the library).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch

from ..models import DiffusionModel
from ..schedules import Schedule
from ..targets import GaussianMixture
from .losses import NoisyBatch, Objective

Tensor = torch.Tensor

__all__ = [
    "PROBE_KINDS",
    "draw_probes",
    "score_and_divergence",
    "score_and_hutchinson",
    "DenoisingScoreMatching",
    "ExplicitScoreMatching",
    "ImplicitScoreMatching",
    "SlicedScoreMatching",
]

PROBE_KINDS = ("rademacher", "gaussian")
DIVERGENCES = ("exact", "hutchinson")


def _sq(v: Tensor) -> Tensor:
    return (v**2).sum(tuple(range(1, v.ndim)))


def _check_kind(kind: object) -> str:
    if kind not in PROBE_KINDS:
        raise ValueError(f"probe_kind must be one of {PROBE_KINDS}, got {kind!r}")
    return str(kind)


def _check_count(probes: object) -> int:
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes must be an int >= 1, got {probes!r}")
    return probes


def draw_probes(
    m: int,
    shape: Tuple[int, ...],
    kind: str = "rademacher",
    *,
    generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float64,
    device: Union[str, torch.device, None] = None,
) -> Tensor:
    """``m`` probe batches ``v`` of ``shape`` with ``E[v v^T] = I`` (docs/math.md I43): Rademacher
    (``+-1`` with probability 1/2) or standard Gaussian; shape ``(m, *shape)``."""
    m = _check_count(m)
    kind = _check_kind(kind)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    dev = torch.device(device) if device is not None else (generator.device if generator is not None else None)
    full = (m,) + tuple(shape)
    if kind == "gaussian":
        return torch.randn(full, generator=generator, dtype=dtype, device=dev)
    bits = torch.randint(0, 2, full, generator=generator, device=dev)
    return (2 * bits - 1).to(dtype)


def _score_at(model: DiffusionModel, batch: NoisyBatch) -> Tuple[Tensor, Tensor]:
    """``(x, s_theta(x, t))`` with ``x`` a copy of ``x_t`` that requires grad (the model's parameters keep theirs)."""
    x = batch.x_t.detach().requires_grad_(True)
    return x, model.score(x, batch.t, **batch.cond)


def score_and_divergence(model: DiffusionModel, batch: NoisyBatch) -> Tuple[Tensor, Tensor]:
    """``(s_theta(x_t), div_x s_theta(x_t))``; the divergence exact, ``sum_i d s_i / d x_i`` from ``d``
    vector-Jacobian products with ``create_graph=True`` (docs/math.md I43), so both stay differentiable
    in the model's parameters.  Cost: one forward and ``d`` backward passes through the model."""
    x, s = _score_at(model, batch)
    flat = s.reshape(s.shape[0], -1)
    div = torch.zeros(s.shape[0], dtype=s.dtype, device=s.device)
    for i in range(flat.shape[1]):
        (g,) = torch.autograd.grad(flat[:, i].sum(), x, create_graph=True)
        div = div + g.reshape(g.shape[0], -1)[:, i]
    return s, div


def score_and_hutchinson(model: DiffusionModel, batch: NoisyBatch, probes: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``(s, mean_j v_j^T (ds/dx) v_j, mean_j (v_j^T s)^2)`` over the probes ``v_j`` (``probes`` of shape
    ``(m, n, *point_shape)``): Hutchinson's estimate of ``div s`` and the sliced ``(v^T s)^2``, each unbiased
    for ``div s`` and ``||s||^2`` when ``E[v v^T] = I`` (docs/math.md I43).  Cost: one forward and ``m``
    backward passes."""
    x, s = _score_at(model, batch)
    if not isinstance(probes, Tensor) or probes.ndim != s.ndim + 1 or probes.shape[1:] != s.shape:
        raise ValueError(f"probes must be a tensor of shape (m, {', '.join(map(str, s.shape))}), got "
                         f"{tuple(probes.shape) if isinstance(probes, Tensor) else type(probes).__name__}")
    probes = probes.to(dtype=s.dtype, device=s.device)
    m = probes.shape[0]
    vjv = torch.zeros(s.shape[0], dtype=s.dtype, device=s.device)
    vs2 = torch.zeros_like(vjv)
    for j in range(m):
        v = probes[j]
        vs = (v * s).sum(tuple(range(1, s.ndim)))
        (g,) = torch.autograd.grad(vs.sum(), x, create_graph=True)  # v^T ds/dx per row
        vjv = vjv + (g * v).sum(tuple(range(1, s.ndim)))
        vs2 = vs2 + vs**2
    return s, vjv / m, vs2 / m


class _ScoreObjective(Objective):
    """Shared settings: the ``sigma^2`` scale (docs/math.md I43)."""

    def __init__(self, *, sigma2_weight: bool = True) -> None:
        if not isinstance(sigma2_weight, bool):
            raise TypeError(f"sigma2_weight must be a bool, got {type(sigma2_weight).__name__}")
        self.sigma2_weight = sigma2_weight

    def _scale(self, batch: NoisyBatch, err: Tensor) -> Tensor:
        return batch.sigma.to(err.dtype) ** 2 * err if self.sigma2_weight else err

    def config(self) -> Dict[str, object]:
        return {"name": self.name, "sigma2_weight": self.sigma2_weight}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class _ProbeObjective(_ScoreObjective):
    """Settings of the objectives that draw probes from their own generator (docs/math.md I43)."""

    def __init__(self, probes: int, probe_kind: str, generator: Optional[torch.Generator], seed: Optional[int],
                 sigma2_weight: bool) -> None:
        super().__init__(sigma2_weight=sigma2_weight)
        self.probes = _check_count(probes)
        self.probe_kind = _check_kind(probe_kind)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be None or an int >= 0, got {seed!r}")
        if generator is not None and seed is not None:
            raise ValueError("give at most one of generator and seed")
        self.seed = seed
        self.generator = generator
        self._own = generator is None  # a generator made here (from ``seed``) follows the batch's device

    def _probes(self, s_shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        if self.generator is None or (self._own and self.generator.device != device):
            g = torch.Generator(device=device)
            g.manual_seed(self.seed if self.seed is not None else 0)
            self.generator, self._own = g, True
        elif self.generator.device != device:
            raise ValueError(f"generator is on {self.generator.device}, the batch on {device}")
        return draw_probes(self.probes, s_shape, self.probe_kind, generator=self.generator, dtype=dtype,
                           device=device)

    def _probes_for(self, batch: NoisyBatch, probes: Optional[Tensor]) -> Tensor:
        """The given probes (checked by :func:`score_and_hutchinson`), else ``self.probes`` fresh draws."""
        if probes is None:
            return self._probes(tuple(batch.x_t.shape), batch.x_t.dtype, batch.x_t.device)
        return probes

    def config(self) -> Dict[str, object]:
        return {**super().config(), "probes": self.probes, "probe_kind": self.probe_kind}


class DenoisingScoreMatching(_ScoreObjective):
    """Denoising score matching ``sigma^2 ||s_theta(x_t) + eps / sigma||^2`` (Vincent 2011; docs/math.md
    I43, I22): :class:`~densityformula.training.losses.ScoreLoss` with the ``sigma^2`` scale optional.
    ``E[DSM] = E[ISM] + d`` (``+ d / sigma^2`` unscaled)."""

    name = "dsm"

    def __call__(self, model: DiffusionModel, batch: NoisyBatch) -> Tensor:
        """``sigma^2 ||s_theta(x_t) + eps / sigma||^2`` per sample, shape ``(n,)`` (I43)."""
        target = -batch.noise / batch.b(batch.sigma)  # grad log q(x_t | x_0)
        return self._scale(batch, _sq(model.score(batch.x_t, batch.t, **batch.cond) - target))


class ExplicitScoreMatching(_ScoreObjective):
    """Explicit score matching ``sigma^2 ||s_theta(x_t) - grad log q_t(x_t)||^2`` (docs/math.md I43).

    Args:
        exact: the exact score: a :class:`~densityformula.targets.GaussianMixture` (its
            ``score(x, t, schedule)`` under the trained model's schedule, I1/I4) or a
            :class:`~densityformula.models.DiffusionModel` (e.g. ``AnalyticModel``).
        sigma2_weight: scale by ``sigma^2`` (default) or not.
    """

    name = "esm"

    def __init__(self, exact: Union[GaussianMixture, DiffusionModel], *, sigma2_weight: bool = True) -> None:
        super().__init__(sigma2_weight=sigma2_weight)
        if not isinstance(exact, (GaussianMixture, DiffusionModel)):
            raise TypeError(f"exact must be a GaussianMixture or a DiffusionModel, got {type(exact).__name__}")
        self.exact = exact

    def exact_score(self, x_t: Tensor, t: Tensor, schedule: Schedule) -> Tensor:
        """``grad log q_t(x_t)`` (no gradient), in ``x_t``'s dtype and on its device (a mixture is
        evaluated in its own dtype, on its own device)."""
        with torch.no_grad():
            if isinstance(self.exact, GaussianMixture):
                dev = self.exact.device
                out = self.exact.score(x_t.detach().to(device=dev, dtype=self.exact.dtype), t.to(dev), schedule)
            else:
                out = self.exact.score(x_t.detach(), t)
        return out.to(device=x_t.device, dtype=x_t.dtype)

    def __call__(self, model: DiffusionModel, batch: NoisyBatch) -> Tensor:
        """``sigma^2 ||s_theta(x_t) - grad log q_t(x_t)||^2`` per sample, shape ``(n,)`` (I43)."""
        if batch.cond:
            raise ValueError("ExplicitScoreMatching has no conditional exact score: batch.cond must be empty")
        s_true = self.exact_score(batch.x_t, batch.t, model.schedule)
        return self._scale(batch, _sq(model.score(batch.x_t, batch.t) - s_true))


class ImplicitScoreMatching(_ProbeObjective):
    """Implicit (Hyvarinen) score matching on ``q_t``: ``sigma^2 (||s_theta||^2 + 2 div s_theta)`` at ``x_t``
    (docs/math.md I43).  ``E[ISM] = E[ESM] - sigma^2 E||grad log q_t||^2`` (integration by parts).

    Args:
        divergence: ``"exact"`` (``d`` backward passes) or ``"hutchinson"`` (``probes`` backward passes,
            ``div s`` estimated by the mean of ``v^T (ds/dx) v``, unbiased).
        probes, probe_kind: the number and law (``"rademacher"``, ``"gaussian"``) of Hutchinson probes.
        generator, seed: where probes come from (one of them; default ``seed=0``); ``probes=`` in
            :meth:`__call__` overrides.
        sigma2_weight: scale by ``sigma^2`` (default) or not.
    """

    name = "ism"

    def __init__(self, divergence: str = "exact", *, probes: int = 1, probe_kind: str = "rademacher",
                 generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
                 sigma2_weight: bool = True) -> None:
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
        super().__init__(probes, probe_kind, generator, seed, sigma2_weight)
        self.divergence = divergence

    def __call__(self, model: DiffusionModel, batch: NoisyBatch, probes: Optional[Tensor] = None) -> Tensor:
        """``sigma^2 (||s||^2 + 2 div s)`` per sample, shape ``(n,)``; with ``divergence="hutchinson"`` the
        divergence is the mean of ``v^T (ds/dx) v`` over ``probes`` (given, ``(m, n, d)``, or drawn) (I43)."""
        if self.divergence == "exact":
            if probes is not None:
                raise ValueError("probes are only used with divergence='hutchinson'")
            s, div = score_and_divergence(model, batch)
        else:
            s, div, _ = score_and_hutchinson(model, batch, self._probes_for(batch, probes))
        return self._scale(batch, _sq(s) + 2.0 * div)

    def config(self) -> Dict[str, object]:
        out = {**super().config(), "divergence": self.divergence}
        if self.divergence == "exact":
            out.pop("probes")
            out.pop("probe_kind")
        return out


class SlicedScoreMatching(_ProbeObjective):
    """Sliced score matching on ``q_t`` (Song et al. 2019; docs/math.md I43), twice their form:
    ``sigma^2 mean_j ((v_j^T s_theta)^2 + 2 v_j^T (ds/dx) v_j)``; ``variance_reduced=True`` replaces
    ``(v^T s)^2`` by its mean ``||s||^2`` (SSM-VR, equal to Hutchinson ISM with the same probes).
    Unbiased for ISM when ``E[v v^T] = I``.

    Args:
        probes, probe_kind, generator, seed, sigma2_weight: as :class:`ImplicitScoreMatching`.
        variance_reduced: use ``||s||^2`` in place of ``(v^T s)^2``.
    """

    name = "ssm"

    def __init__(self, *, probes: int = 1, probe_kind: str = "rademacher", variance_reduced: bool = False,
                 generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
                 sigma2_weight: bool = True) -> None:
        super().__init__(probes, probe_kind, generator, seed, sigma2_weight)
        if not isinstance(variance_reduced, bool):
            raise TypeError(f"variance_reduced must be a bool, got {type(variance_reduced).__name__}")
        self.variance_reduced = variance_reduced

    def __call__(self, model: DiffusionModel, batch: NoisyBatch, probes: Optional[Tensor] = None) -> Tensor:
        """``sigma^2 mean_j ((v_j^T s)^2 + 2 v_j^T (ds/dx) v_j)`` per sample (``||s||^2`` for ``(v^T s)^2`` when
        variance-reduced), shape ``(n,)``; ``probes`` given (``(m, n, d)``) or drawn (I43)."""
        s, vjv, vs2 = score_and_hutchinson(model, batch, self._probes_for(batch, probes))
        first = _sq(s) if self.variance_reduced else vs2
        return self._scale(batch, first + 2.0 * vjv)

    def config(self) -> Dict[str, object]:
        return {**super().config(), "variance_reduced": self.variance_reduced}
