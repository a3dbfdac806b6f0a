"""The true objective ``KL(q || p_sampler)`` of a model's DDPM sampler (docs/math.md I13, I14, I28).

``KL(q || p) = E_q log q - E_q log p`` with ``p`` the law of the model's own DDPM sampler output
(with its decoder noise ``v_1`` at the last step, the sampler that I9's ELBO bounds):

- ``"grid"`` (1-D): ``p`` propagated on a grid (:func:`densityformula.study.grid.grid_law`, I13,
  differentiable), both expectations by Gauss--Hermite per component of ``q`` (I27).  Error: the
  quadrature's two orders plus the grid's: the same KL on a coarser grid where one still resolves
  the kernels (else a finer one), a conservative estimate since the rectangle rule converges
  faster than any power of the step, plus the same KL on a box twice as wide (the box error:
  where ``q`` is wider than ``p``, ``E_q log p`` reads ``p``'s far tails, fed from beyond the box);
- ``"closed_form"`` (affine denoisers, any d): ``p = N(m_0, P_0)`` (I14) and
  ``KL = -H(q) + 1/2 (d log 2 pi + log det P_0 + tr(P_0^-1 S) + (mu - m_0)^T P_0^-1 (mu - m_0))``,
  which depends on ``q`` only through ``H(q)``, its mean and its covariance (I26);
- ``"importance_weighted"`` (any model, any d): ``E_q log q - E_q IW_K``, an upper bound on the
  KL (``IW_K <= log p``, I10) with a Monte Carlo standard error; no gradient.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

from .. import elbo as _elbo
from .._validation import check_int
from ..models import AffineDenoiser
from ..schedules import Discrete
from ._affine_law import affine_law, affine_maps, gaussian_cross_entropy
from ._common import check_choice, check_generator, inner_model, setup
from ._steps import sampler_kernels
from ._target import check_target, mixture_1d, target_moments
from .entropy import target_entropy
from .grid import GridLaw, comparison_grid, default_grid, grid_law
from .quadrature import log_mixture_density, mixture_rule

Tensor = torch.Tensor

__all__ = ["KLValue", "true_kl", "KLObjective"]

_METHODS = ("auto", "grid", "closed_form", "importance_weighted")


@dataclass
class KLValue:
    """``KL(q || p_sampler)`` and how it was computed.

    Attributes:
        value: the KL in nats, a scalar tensor (with a gradient for ``"grid"`` and ``"closed_form"``).
        error: the error estimate (``"grid"``: quadrature orders plus grid refinement; ``"closed_form"``:
            the error of ``H(q)``; ``"importance_weighted"``: a standard error).
        error_kind: ``"quadrature"``, ``"exact"`` or ``"stderr"``.
        method: ``"grid"``, ``"closed_form"`` or ``"importance_weighted"`` (an upper bound).
        neg_log_lik: ``-E_q log p`` (the cross-entropy; ``KL = neg_log_lik - H(q)``).
        entropy: ``H(q)`` as used here.
        differentiable: whether ``value`` carries a gradient in the model's parameters.
        extras: method details: ``"quadrature_error"``, ``"grid_error"``, ``"truncation"``,
            ``"mass"``, ``"grid_points"`` (grid), ``"mean"``/``"cov"`` of the output law (closed form).
    """

    value: Tensor
    error: float
    error_kind: str
    method: str
    neg_log_lik: float
    entropy: float
    differentiable: bool
    extras: Dict[str, Any] = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value.detach())


def _grid_terms(law: GridLaw, target: object, n: int) -> Tensor:
    """``E_q [log q - log p]`` by the Gauss--Hermite rule of order ``n`` against the grid law."""
    mix = mixture_1d(target, dtype=law.grid.dtype, device=law.grid.device)
    x, w = mixture_rule(mix, n)
    return (w * (log_mixture_density(x, mix) - law.log_prob(x))).sum()


def _default_grid(kern: Any, target: object, dtype: torch.dtype, device: torch.device) -> Tensor:
    """:func:`~densityformula.study.grid.default_grid` covering the target (``|m_j| + 12 s_j``, at least
    12) and resolving its narrowest component.  The box is wide because ``E_q log p`` reads the
    sampler's density in ITS tails wherever ``q`` is wider than ``p``, and those tails are fed by
    mass from beyond the box."""
    mix = mixture_1d(target)
    sd = torch.sqrt(mix.variances)
    half = max(12.0, float((mix.means.abs() + 12.0 * sd).max()))
    return default_grid(kern, half_width=half, scale=float(sd.min()), dtype=dtype, device=device)


def _widened(grid: Tensor) -> Tensor:
    """The grid extended by half its width on each side, same step (the box-error comparison)."""
    n = grid.numel()
    lo, hi = float(grid[0]), float(grid[-1])
    extra = (n - 1) // 2
    h = (hi - lo) / (n - 1)
    return torch.linspace(lo - extra * h, hi + extra * h, n + 2 * extra, dtype=grid.dtype, device=grid.device)


def true_kl(
    model: object,
    target: object,
    *,
    schedule: Optional[Discrete] = None,
    variance: str = "beta",
    decoder_variance: Optional[float] = None,
    method: str = "auto",
    grid: Optional[Tensor] = None,
    n_nodes: int = 64,
    grid_error: bool = True,
    n_samples: int = 1024,
    k: int = 64,
    generator: Optional[torch.Generator] = None,
    dtype: Optional[torch.dtype] = None,
    device: Any = None,
) -> KLValue:
    """``KL(q || p_sampler) = E_q log q - E_q log p_sampler`` of the model's DDPM sampler (I13, I14).

    Args:
        model: a :class:`DiffusionModel` or a :class:`~densityformula.study.Family`.
        target: the data law ``q`` (a :class:`~densityformula.targets.GaussianMixture`).
        schedule, variance, decoder_variance: the DDPM sampler, as in :func:`densityformula.elbo.ddpm`.
        method: ``"auto"`` (grid in 1-D, closed form for an ``AffineDenoiser``, else importance
            weighted), ``"grid"``, ``"closed_form"`` or ``"importance_weighted"``.
        grid: the 1-D grid (default :func:`densityformula.study.grid.default_grid`).
        n_nodes: Gauss--Hermite nodes per component of ``q`` (error from ``n_nodes // 2``).
        grid_error: estimate the grid error (two more propagations: on
            :func:`~densityformula.study.grid.comparison_grid` and on a box twice as wide).
        n_samples, k: points ``x ~ q`` and chains per point of the importance-weighted bound.
        generator: randomness of the importance-weighted bound, of a Monte Carlo entropy (mixtures in
            ``d > 1``) and of the affinity check.
        dtype, device: where to compute (default the model's).
    """
    q = check_target(target)
    m, d, dt, dev = setup(model, q, dtype, device)
    check_choice(method, "method", _METHODS)
    check_generator(generator)
    n_nodes = check_int(n_nodes, "n_nodes", 4)
    kern = sampler_kernels(m, schedule, variance, decoder_variance)
    if method == "auto":
        method = "grid" if d == 1 else (
            "closed_form" if isinstance(inner_model(m), AffineDenoiser) else "importance_weighted")
    H = target_entropy(q, n_nodes=2 * n_nodes, generator=generator, device=dev)
    if method == "grid":
        if d != 1:
            raise ValueError(f"method='grid' needs a 1-D target, got d = {d}")
        g = _default_grid(kern, q, dt, dev) if grid is None else grid.to(dev, dt)
        law = grid_law(kern, g)
        value = _grid_terms(law, q, n_nodes)
        with torch.no_grad():
            q_err = float((value.detach() - _grid_terms(law, q, max(2, n_nodes // 2))).abs())
            g_err = math.nan
            if grid_error:
                other = grid_law(kern, comparison_grid(g, kern))
                g_err = float((value.detach() - _grid_terms(other, q, n_nodes)).abs())
                wide = grid_law(kern, _widened(g))
                g_err += float((value.detach() - _grid_terms(wide, q, n_nodes)).abs())
        nll = float(value.detach()) + H.value
        extras = {"quadrature_error": q_err, "grid_error": g_err, "truncation": law.truncation,
                  "mass": law.mass, "grid_points": int(g.numel()), "entropy_error": H.error}
        err = q_err + (0.0 if math.isnan(g_err) else g_err)
        return KLValue(value, err, "quadrature", method, nll, H.value, True, extras)
    mean, cov = target_moments(q, dtype=dt, device=dev)
    if method == "closed_form":
        maps = affine_maps(kern, d, dtype=dt, device=dev, generator=generator)
        m0, P0 = affine_law(kern, maps)
        ce = gaussian_cross_entropy(mean, cov, m0, P0)
        value = ce - H.value
        return KLValue(value, H.error, "exact" if H.error_kind == "exact" else H.error_kind, method,
                       float(ce.detach()), H.value, True,
                       {"mean": m0.detach(), "cov": P0.detach(), "entropy_error": H.error})
    n_samples = check_int(n_samples, "n_samples", 2)
    k = check_int(k, "k", 1)
    x = q.sample(n_samples, generator=generator).to(dev, dt)
    est = _elbo.importance_weighted(m, x, k, schedule=kern.ddpm_schedule(), variance=variance,
                                    decoder_variance=decoder_variance, n_replicates=1, generator=generator)
    assert not isinstance(est, dict)
    lq = q.log_prob(x).to(dt)
    diff = (lq - est.value).double()
    se = math.sqrt(float(diff.var()) / n_samples)  # the spread over x ~ q includes the bound's own noise
    value = torch.as_tensor(float(diff.mean()), dtype=dt, device=dev)
    return KLValue(value, se, "stderr", method, float(-est.value.double().mean()), -float(lq.double().mean()),
                   False, {"k": k, "upper_bound": True})


class KLObjective:
    """``model -> KL(q || p_sampler)`` (:func:`true_kl`) as an objective of :func:`densityformula.study.minimize`."""

    name = "kl"

    def __init__(
        self, target: object, *, schedule: Optional[Discrete] = None, variance: str = "beta",
        decoder_variance: Optional[float] = None, method: str = "auto", grid: Optional[Tensor] = None,
        n_nodes: int = 64,
    ) -> None:
        self.target = check_target(target)
        self.schedule = schedule
        self.variance = variance
        self.decoder_variance = decoder_variance
        self.method = check_choice(method, "method", _METHODS)
        if self.method == "importance_weighted":
            raise ValueError("KLObjective needs a differentiable method ('grid' or 'closed_form'), "
                             "not 'importance_weighted'")
        self.grid = grid
        self.n_nodes = n_nodes
        self.differentiable = True

    def evaluate(self, model: object, *, grid_error: bool = False) -> KLValue:
        """The full :class:`KLValue` at ``model`` (the grid error only when asked: it costs a propagation)."""
        return true_kl(model, self.target, schedule=self.schedule, variance=self.variance,
                       decoder_variance=self.decoder_variance, method=self.method, grid=self.grid,
                       n_nodes=self.n_nodes, grid_error=grid_error, generator=torch.Generator().manual_seed(0))

    def __call__(self, model: object) -> Tensor:
        """``KL(q || p_sampler)`` at ``model`` (scalar, with gradient)."""
        return self.evaluate(model).value

    def __repr__(self) -> str:
        return f"KLObjective(variance={self.variance!r}, method={self.method!r})"
