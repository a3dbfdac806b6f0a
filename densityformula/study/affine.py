"""The affine family and its closed-form minimisers (docs/math.md I14, I26, I30).

:class:`AffineFamily` is :class:`~densityformula.models.AffineDenoiser` (``D_k(x) = A_k x + b_k``, one
map per step) as a study :class:`~densityformula.study.Family`.  By the moment reduction (I26) both
objectives see the target only through its mean ``mu`` and covariance ``S``, and both minimisers
are closed form (I30):

- ``-E_q[ELBO]``: every step's term ``(w_k/2) E||x_0 - A_k x_k - b_k||^2`` is a least-squares
  regression of ``x_0`` on ``x_k``, minimised by ``A_k = sqrt(abar_k) S C_k^-1``,
  ``b_k = mu - sqrt(abar_k) A_k mu``, ``C_k = abar_k S + (1 - abar_k) I``: the exact denoiser of
  ``N(mu, S)`` (:meth:`AffineDenoiser.from_gaussian`), whatever ``q`` is;
- ``KL(q || p_sampler)``: the sampler's output is ``N(m_0, P_0)`` with ``P_0 = c_1^2 A_1 P_1 A_1^T + v_1 I``,
  so every Gaussian with covariance ``>= v_1 I`` is reachable; the best Gaussian is the moment match
  ``N(mu, S)``, reached (when ``S - v_1 I`` is positive definite) by any steps ``k >= 2`` and
  ``A_1 = (S - v_1 I)^{1/2} P_1^{-1/2} / c_1``, ``b_1 = mu / c_1 - A_1 m_1``; the minimum is
  ``KL(q || N(mu, S)) = H(N(mu, S)) - H(q)``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.types import Device

from ..models import AffineDenoiser
from ..reverse import same_discrete
from ..schedules import Discrete
from ._affine_law import AffineMaps, affine_law
from ._steps import sampler_kernels
from ._target import target_moments
from .elbo_objective import ELBOObjective
from .family import Family
from .kl import KLObjective

Tensor = torch.Tensor

__all__ = ["AffineFamily"]


def _sym_power(S: Tensor, p: float) -> Tensor:
    """``S^p`` of a symmetric positive definite matrix (eigendecomposition)."""
    e, U = torch.linalg.eigh(S)
    out: Tensor = (U * e**p) @ U.T
    return out


class AffineFamily(Family):
    """``{D_k(x) = A_k x + b_k, k = 0..T}`` in ``d`` dimensions: an :class:`AffineDenoiser` as a family (I14).

    ``theta = (A, b)`` flattened (``(T + 1) d (d + 1)`` numbers; step 0 is never called by the
    sampler).  :meth:`closed_form` knows both minimisers (I30).
    """

    model: AffineDenoiser

    def __init__(self, d: int, schedule: Discrete, *, init: str = "identity", dtype: torch.dtype = torch.float64,
                 device: Device = None, model: Optional[AffineDenoiser] = None) -> None:
        m = model if model is not None else AffineDenoiser(d, schedule, init=init, dtype=dtype, device=device)
        if not isinstance(m, AffineDenoiser):
            raise TypeError(f"model must be an AffineDenoiser, got {type(m).__name__}")
        super().__init__(m, parameters=[m.A, m.b], name=f"affine(d={m.d})")

    def _vector_of(self, A: Tensor, b: Tensor) -> Tensor:
        return torch.cat([A.detach().reshape(-1).double().cpu(), b.detach().reshape(-1).double().cpu()])

    def _compatible(self, schedule: Optional[Discrete]) -> bool:
        return schedule is None or same_discrete(schedule, self.schedule)

    def closed_form(self, objective: object) -> Optional[Tensor]:
        """The minimiser (I30) of an :class:`ELBOObjective` or a :class:`KLObjective` on this family's
        schedule, as ``theta``; ``None`` for any other objective, another schedule, or (KL) a target
        covariance not above ``v_1 I``."""
        if isinstance(objective, ELBOObjective) and self._compatible(objective.schedule):
            mean, cov = target_moments(objective.target)
            best = AffineDenoiser.from_gaussian(mean, cov, self.schedule, dtype=self.model.dtype)
            return self._vector_of(best.A, best.b)
        if isinstance(objective, KLObjective) and self._compatible(objective.schedule):
            return self._kl_minimiser(objective)
        return None

    def _kl_minimiser(self, objective: KLObjective) -> Optional[Tensor]:
        mean, cov = target_moments(objective.target)
        d = self.model.d
        kern = sampler_kernels(self.model, objective.schedule, objective.variance, objective.decoder_variance)
        v1, c1 = float(kern.var[0]), float(kern.c[0])
        eye = torch.eye(d, dtype=torch.float64)
        rest = cov - v1 * eye
        if float(torch.linalg.eigvalsh(rest).min()) <= 0.0:
            return None
        base = AffineDenoiser.from_gaussian(mean, cov, self.schedule, dtype=torch.float64)
        A_all, b_all = base.A.detach().clone(), base.b.detach().clone()
        # m_1, P_1: the law of x_1 under steps K..2 (step 1 does not enter it)
        with torch.no_grad():
            m1, P1 = affine_law(kern, AffineMaps(A_all[1:], b_all[1:]), until=1)
        A1 = _sym_power(rest, 0.5) @ _sym_power(P1, -0.5) / c1
        b1 = mean / c1 - A1 @ m1
        A_all[1], b_all[1] = A1, b1
        return self._vector_of(A_all, b_all)
