"""The discrete Girsanov bound of a 1-D sampler against a reference sampler, on a grid (I41).

Two Gaussian reverse chains with the same prior ``p_K`` and the same step variances ``v_k``
(DDPM ancestral or Euler--Maruyama kernels of :mod:`densityformula.reverse` for two models on the
same steps), ``x_{k-1} = m_k(x_k) + sqrt(v_k) z`` and ``x_{k-1} = m*_k(x_k) + sqrt(v_k) z``, have path
laws whose KL divergence is, by the chain rule of KL and the Gaussian KL of equal variances,

    KL(path* || path) = sum_{k=1}^K E_{x ~ p*_k} |m*_k(x) - m_k(x)|^2 / (2 v_k),            (I41)

and the data-processing inequality bounds the KL of the outputs by it:
``KL(p*_0 || p_0) <= KL(path* || path)``.  With ``m_k - m*_k = c_k (D_k - D*_k)`` and Tweedie
(``c_k (D - D*) = c_k sigma_k^2 (s - s*) / alpha_k``) each term is ``h g^2 E|s - s*|^2 / 2`` to first
order in the step, so the sum is the discretization of Girsanov's ``1/2 int g^2 E|s - s*|^2 dt``
(Song, Durkan, Murray & Ermon 2021, Thm. 1; the continuous-time bound on the SDE's KL).  The same sum
with the exact forward marginals ``q_k`` in place of the reference chain's ``p*_k`` is the model's
weighted L2 score error with Girsanov's weights (:attr:`GirsanovBound1D.score_error`).

Every integral is the rectangle rule on one uniform grid; :func:`grid_kl` also reports the rule's
error estimate (the same sum on every other point).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .. import reverse
from ..models import DiffusionModel, check_model, checked
from ..targets import GaussianMixture
from ._grid import check_uniform_grid, grid_kl
from .sampler_density import SamplerDensity1D, _log_kernel_sum, sampler_density_1d

Tensor = torch.Tensor

__all__ = ["girsanov_1d", "GirsanovBound1D"]

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class GirsanovBound1D:
    """The outputs of two 1-D samplers and the Girsanov bound between them (I41).

    Attributes:
        grid: ``(G,)`` the uniform grid.
        model_density, reference_density: the samplers' output laws (I13).
        kl: ``KL(p*_0 || p_0)`` of the outputs (reference first), by :func:`grid_kl`.
        kl_error: its rule error estimate.
        bound: ``sum_k E_{p*_k} |m*_k - m_k|^2 / (2 v_k)`` (I41), the path KL, ``>= kl``.
        terms: ``(K,)`` the bound's terms, index ``k - 1`` for step ``k``.
        score_error: the same sum over the exact forward marginals ``q_k`` of ``target`` (``None``
            without a target): Girsanov's weighted L2 score error of the model.
        score_error_terms: its ``(K,)`` terms (``None`` without a target).
        reference_log_marginals: ``(K, G)`` the reference chain's ``log p*_k`` on the grid (row ``k - 1``).
        reference_means: ``(K, G)`` its means ``m*_k`` at the grid points.
        target_log_marginals: ``(K, G)`` the target's ``log q_k`` (``None`` without a target).
    """

    grid: Tensor
    model_density: SamplerDensity1D
    reference_density: SamplerDensity1D
    kl: float
    kl_error: float
    bound: float
    terms: Tensor
    score_error: Optional[float] = None
    score_error_terms: Optional[Tensor] = None
    reference_log_marginals: Optional[Tensor] = None
    reference_means: Optional[Tensor] = None
    target_log_marginals: Optional[Tensor] = None


def girsanov_1d(
    model: DiffusionModel,
    reference: DiffusionModel,
    *,
    grid: Tensor,
    target: Optional[GaussianMixture] = None,
    sampler: str = "ddpm",
    variance: str = "beta",
    times: Optional[Any] = None,
    reuse: Optional[GirsanovBound1D] = None,
) -> GirsanovBound1D:
    """The discrete Girsanov bound ``KL(p*_0 || p_0) <= sum_k E_{p*_k} |m*_k - m_k|^2 / (2 v_k)`` (I41).

    Both models' sampler kernels (``sampler``, ``variance``, ``times`` as in
    :func:`~densityformula.likelihood.sampler_density_1d`, on the model's own discrete schedule for
    DDPM) must have the same prior and variances (``ValueError`` otherwise: then I41 does not hold).
    The reference chain's marginals ``p*_k`` are propagated on ``grid`` (I13) and every expectation
    is the rectangle rule on it.  With ``target`` (the data law, a 1-D mixture) the same sum over
    the exact forward marginals ``q_k`` (at each step's model time, in the sampler's coordinates)
    is returned as :attr:`GirsanovBound1D.score_error`.  ``reuse``: an earlier result for the same
    ``reference``, ``grid``, ``target`` and sampler settings, whose reference chain (its marginals, means
    and output law) and target marginals are taken instead of being propagated again (the caller
    vouches that the reference and the settings are the same; the grid and the steps are checked).
    """
    model = check_model(model)
    reference = check_model(reference, "reference")
    grid, h = check_uniform_grid(grid)
    grid = grid.double()
    if target is not None:
        if not isinstance(target, GaussianMixture):
            raise TypeError(f"target must be a GaussianMixture, got {type(target).__name__}")
        if target.d != 1:
            raise ValueError(f"target must be 1-D, got d = {target.d}")
    kw: dict[str, Any] = {"schedule": None, "variance": variance, "decoder_variance": None, "prior_var": None,
                          "times": times}
    km = reverse.sampler_kernels(checked(model), sampler, **kw)
    kr = reverse.sampler_kernels(checked(reference), sampler, **kw)
    if km.K != kr.K or not torch.allclose(km.var, kr.var, rtol=1e-12, atol=0.0) or not math.isclose(
            km.prior_var, kr.prior_var, rel_tol=1e-12):
        raise ValueError("model and reference samplers must have the same steps, variances and prior (I41)")
    if reuse is not None:
        if not isinstance(reuse, GirsanovBound1D):
            raise TypeError(f"reuse must be a GirsanovBound1D, got {type(reuse).__name__}")
        if reuse.grid.shape != grid.shape or not torch.equal(reuse.grid, grid):
            raise ValueError("reuse was computed on another grid")
        if reuse.reference_log_marginals is None or reuse.reference_log_marginals.shape[0] != kr.K:
            raise ValueError("reuse was computed for other steps")
        if (target is None) != (reuse.target_log_marginals is None):
            raise ValueError("reuse was computed with a different target (one has none)")
        dr = reuse.reference_density
    else:
        dr = sampler_density_1d(reference, grid=grid, sampler=sampler, variance=variance, times=times,
                                dtype=torch.float64)
    dm = sampler_density_1d(model, grid=grid, sampler=sampler, variance=variance, times=times, dtype=torch.float64)
    g2 = grid[:, None]
    logh = math.log(h)
    if reuse is not None and reuse.reference_log_marginals is not None and reuse.reference_means is not None:
        log_marg, means, log_q = reuse.reference_log_marginals, reuse.reference_means, reuse.target_log_marginals
    else:
        log_marg = torch.empty(kr.K, grid.numel(), dtype=torch.float64)
        means = torch.empty_like(log_marg)
        log_q = None if target is None else torch.empty_like(log_marg)
        P = kr.prior_var
        logp = -0.5 * (_LOG_2PI + math.log(P)) - 0.5 * grid**2 / P
        with torch.no_grad():
            for k in range(kr.K, 0, -1):
                log_marg[k - 1] = logp
                means[k - 1] = kr.mean(g2, k)[:, 0].double()
                if log_q is not None and target is not None:
                    scale = float(kr.in_scale[k - 1])
                    t_k = kr.model_t[k - 1].to(grid.device)
                    log_q[k - 1] = target.to(grid.device, torch.float64).log_prob(
                        g2 * scale, t_k, reference.schedule) + math.log(scale)
                if k > 1:
                    logp = _log_kernel_sum(grid, logh + logp, means[k - 1], float(kr.var[k - 1]))
    with torch.no_grad():
        diff2 = torch.stack([(means[k - 1] - km.mean(g2, k)[:, 0].double()) ** 2 for k in range(1, kr.K + 1)])
    w = h / (2.0 * kr.var.double())[:, None]
    terms = (torch.exp(log_marg) * diff2 * w).sum(1)
    q_terms = None if log_q is None else (torch.exp(log_q) * diff2 * w).sum(1)
    kl, err = grid_kl(dr.log_density, dm.log_density, grid)
    return GirsanovBound1D(
        grid, dm, dr, kl, err, float(terms.sum()), terms,
        None if q_terms is None else float(q_terms.sum()), q_terms, log_marg, means, log_q,
    )
