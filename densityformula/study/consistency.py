"""The time-consistency defect of a model: its denoisers against those of its own sampler (docs/math.md I29).

A family is time-consistent when its denoisers at all steps are the posterior means of ONE law; a
DDPM sampler then reproduces that law's reverse chain up to its Gaussian kernels.  The defect
measures how far the model's ``D_k`` is from an "own" denoiser ``D^own_k`` derived from the model's
own sampler (1-D, on a grid, I13), weighted as in the ELBO (I9):

    defect = sum_{k=1}^T (w_k / 2) E_{x_k ~ mu_k} (D_k(x_k) - D^own_k(x_k))^2     (nats),

``mu_k`` the target's diffused marginal ``q_k`` (``measure="target"``, the ELBO's own weighting)
or the sampler's marginal ``p_k`` (``"sampler"``).  Three choices of ``D^own`` (``variant``):

- ``"chain"``: ``E_p[x_0 | x_k]`` under the sampler's generative chain, by the recursion
  ``m_1 = a_1 x + c_1 D_1``, ``m_k(x) = int N(y; a_k x + c_k D_k(x), v_k) m_{k-1}(y) dy``; for an affine
  family that is exact for some Gaussian, ``m_k = D_k`` exactly at every T (the tower property:
  ``E[x_0|x_k] = A_{k-1} E[x_{k-1}|x_k] + b_{k-1}`` and the sampler's step mean is ``E[x_{k-1}|x_k]``);
- ``"output"``: the exact denoiser of the sampler's output law ``p_0`` diffused by the forward
  process, ``E[x_0 | x_k]`` with ``x_0 ~ p_0``, ``x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) z``;
- ``"tweedie"``: Tweedie's formula on the sampler's marginals,
  ``D = (x + (1 - abar_k) d/dx log p_k(x)) / sqrt(abar_k)``, the score from the kernel of step ``k + 1``
  exactly (``d/dy log p_k(y) = E[(mu_{k+1}(x) - y) / v_{k+1} | y]``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..reverse import ReverseKernels
from ..schedules import Discrete
from ._common import as_model, check_choice
from ._steps import denoise_steps, sampler_kernels, step_terms
from ._target import check_target, mixture_1d
from .grid import comparison_grid, default_grid, grid_law

Tensor = torch.Tensor

__all__ = ["ConsistencyDefect", "consistency_defect"]

_VARIANTS = ("chain", "output", "tweedie")
_BAND = 9.0
_CHUNK = 256


@dataclass
class ConsistencyDefect:
    """The defect of I29 and its parts.

    Attributes:
        value: the weighted defect (nats).
        per_step: ``(T,)`` ``(w_k/2) E (D_k - D^own_k)^2``.
        rms: ``(T,)`` ``sqrt(E (D_k - D^own_k)^2)`` (``x`` units).
        error: ``|defect on`` :func:`~densityformula.study.grid.comparison_grid` ``- value|``
            (``nan`` when not asked).
        variant, measure: as asked.
        grid: ``(G,)``; ``denoisers``, ``own``: ``(T, G)`` ``D_k`` and ``D^own_k`` on it (row ``k - 1``).
    """

    value: float
    per_step: Tensor
    rms: Tensor
    error: float
    variant: str
    measure: str
    grid: Tensor
    denoisers: Tensor
    own: Tensor


def _average(y: Tensor, centres: Tensor, logw: Tensor, var: float, f: Tensor) -> Tensor:
    """``sum_i softmax_i(logw_i - (y_j - c_i)^2 / (2 var)) f_i`` for every ``y_j`` (centres within
    ``9 sqrt(var)`` of a chunk of ``y``; all of them where none is)."""
    width = _BAND * math.sqrt(var)
    out = []
    for j0 in range(0, y.numel(), _CHUNK):
        yy = y[j0 : j0 + _CHUNK]
        sel = torch.nonzero((centres >= float(yy.min()) - width) & (centres <= float(yy.max()) + width)).reshape(-1)
        c, lw, ff = (centres, logw, f) if sel.numel() == 0 else (centres[sel], logw[sel], f[sel])
        wts = torch.softmax(lw[None, :] - 0.5 * (yy[:, None] - c[None, :]) ** 2 / var, dim=1)
        out.append(wts @ ff)
    return torch.cat(out)


def _own(kern: ReverseKernels, g: Tensor, D: Tensor, variant: str, marginals: Optional[Tensor],
         log_p0: Optional[Tensor]) -> Tensor:
    """``(T, G)`` ``D^own_k`` on the grid."""
    K = kern.K
    sched = kern.ddpm_schedule()
    a, c, v = kern.a.tolist(), kern.c.tolist(), kern.var.tolist()
    mu = torch.stack([a[k] * g + c[k] * D[k] for k in range(K)])  # (T, G): step means a_k x + c_k D_k(x)
    own = torch.empty_like(D)
    if variant == "chain":
        own[0] = mu[0]
        for k in range(2, K + 1):
            own[k - 1] = _average(mu[k - 1], g, torch.zeros_like(g), v[k - 1], own[k - 2])
        return own
    ab, om = sched.alpha_bars.tolist(), sched.one_minus_alpha_bars.tolist()
    if variant == "output":
        assert log_p0 is not None
        for k in range(1, K + 1):
            own[k - 1] = _average(g, math.sqrt(ab[k]) * g, log_p0, om[k], g)
        return own
    assert marginals is not None
    for k in range(1, K + 1):
        if k == K:
            score = -g / kern.prior_var
        else:
            score = (_average(g, mu[k], marginals[k + 1], v[k], mu[k]) - g) / v[k]
        own[k - 1] = (g + om[k] * score) / math.sqrt(ab[k])
    return own


def _defect(kern: ReverseKernels, g: Tensor, variant: str, measure: str, target: Any) -> tuple[Tensor, Tensor,
                                                                                                 Tensor, Tensor]:
    K = kern.K
    D = denoise_steps(kern, g[None, :, None].expand(K, g.numel(), 1).contiguous(), torch.arange(1, K + 1))[..., 0]
    need_law = variant in ("output", "tweedie") or measure == "sampler"
    law = grid_law(kern, g, keep_marginals=True) if need_law else None
    marg = law.marginals if law is not None else None
    own = _own(kern, g, D, variant, marg, law.log_density if law is not None else None)
    sched = kern.ddpm_schedule()
    if measure == "target":
        mix = mixture_1d(target, dtype=g.dtype, device=g.device)
        ab = sched.alpha_bars[1:].to(g)[:, None, None]
        om = sched.one_minus_alpha_bars[1:].to(g)[:, None, None]
        var = ab * mix.variances[None, None] + om  # (T, 1, J)
        logq = torch.logsumexp(torch.log(mix.weights) - 0.5 * torch.log(var)
                               - 0.5 * (g[None, :, None] - torch.sqrt(ab) * mix.means) ** 2 / var, dim=-1)
        wts = torch.softmax(logq, dim=1)  # (T, G)
    else:
        assert marg is not None
        wts = torch.softmax(marg[1:], dim=1)
    sq = (wts * (D - own) ** 2).sum(1)
    per_step = 0.5 * step_terms(kern).w.to(g) * sq
    return per_step, torch.sqrt(sq), D, own


def consistency_defect(
    model: object,
    target: Optional[object] = None,
    *,
    schedule: Optional[Discrete] = None,
    variance: str = "beta",
    decoder_variance: Optional[float] = None,
    variant: str = "chain",
    measure: Optional[str] = None,
    grid: Optional[Tensor] = None,
    grid_error: bool = True,
) -> ConsistencyDefect:
    """``sum_k (w_k/2) E_{mu_k} (D_k - D^own_k)^2`` of a 1-D model's DDPM sampler (I29), see the module docstring.

    Args:
        model: a 1-D :class:`DiffusionModel` or :class:`~densityformula.study.Family`.
        target: the data law ``q`` (needed for ``measure="target"``, the default when given).
        variant: ``"chain"``, ``"output"`` or ``"tweedie"``.
        measure: ``"target"`` (``x_k ~ q_k``) or ``"sampler"`` (``x_k ~ p_k``).
        grid: the grid (default :func:`~densityformula.study.grid.default_grid`, covering the target).
        grid_error: also compute the defect on a second grid and report the difference.
    """
    m = as_model(model)
    check_choice(variant, "variant", _VARIANTS)
    if measure is None:
        measure = "target" if target is not None else "sampler"
    check_choice(measure, "measure", ("target", "sampler"))
    if measure == "target":
        if target is None:
            raise ValueError("measure='target' needs the target")
        q = check_target(target)
        if q.d != 1:
            raise ValueError(f"consistency_defect is 1-D; the target has d = {q.d}")
    kern = sampler_kernels(m, schedule, variance, decoder_variance)
    with torch.no_grad():
        if grid is None:
            half, scale = 8.0, math.inf
            if target is not None:
                mix = mixture_1d(target)
                sd = torch.sqrt(mix.variances)
                half, scale = max(8.0, float((mix.means.abs() + 10.0 * sd).max())), float(sd.min())
            g = default_grid(kern, half_width=half, scale=scale)
        else:
            g = grid.to(torch.float64)
        per_step, rms, D, own = _defect(kern, g, variant, measure, target)
        value = float(per_step.sum())
        err = math.nan
        if grid_error:
            err = abs(float(_defect(kern, comparison_grid(g, kern), variant, measure, target)[0].sum()) - value)
    return ConsistencyDefect(value, per_step, rms, err, variant, measure, g, D, own)
