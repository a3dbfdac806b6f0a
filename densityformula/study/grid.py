"""The sampler's output density on a 1-D grid, differentiable in the model's parameters (docs/math.md I13).

The recursion of :func:`densityformula.likelihood.sampler_density_1d`,

    p_K = N(0, P),    p_{k-1}(y) = int N(y; a_k x + c_k D_k(x), v_k) p_k(x) dx,

on a uniform grid (rectangle rule in log space), with the last step evaluated at the query points
themselves (:meth:`GridLaw.log_prob`), here written without ``torch.no_grad`` so that
``E_q log p_theta`` can be differentiated; each step is recomputed in the backward pass
(``torch.utils.checkpoint``), so memory is ``O(T G + G^2)``, not ``O(T G^2)``.  Every step's
marginal ``p_k`` can be kept (``keep_marginals``) for the consistency defect (I29).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch
from torch.utils.checkpoint import checkpoint

from ..reverse import ReverseKernels

Tensor = torch.Tensor

__all__ = ["GridLaw", "grid_law", "default_grid", "comparison_grid"]

_LOG_2PI = math.log(2.0 * math.pi)


#: kernel entries beyond this many standard deviations are dropped (``exp(-81/2) = 2.6e-18``)
_BAND = 9.0
#: floor of the log densities on the grid (``exp(-700) ~ 1e-304``): keeps the far tails finite
_LOG_FLOOR = -700.0
_CHUNK = 256


def default_grid(kern: ReverseKernels, *, half_width: float = 8.0, scale: float = math.inf,
                 dtype: torch.dtype = torch.float64, device: Any = None) -> Tensor:
    """A uniform grid on ``[-half_width, half_width]`` with step ``0.7 min(sqrt(min_k v_k), scale)``
    (``scale``: the smallest length the output density varies on, e.g. the target's smallest
    component standard deviation).  Measured on a mixture (KL against a step 8 times smaller): a
    step ``sqrt(min v)`` is off by ``2e-8`` nats at T = 20 and ``1e-10`` at T = 1000, half of it
    by ``1e-14``."""
    h = 0.7 * min(math.sqrt(float(kern.var.min())), float(scale))
    n = 2 * int(math.ceil(half_width / h)) + 1
    return torch.linspace(-half_width, half_width, n, dtype=dtype, device=device)


def comparison_grid(grid: Tensor, kern: ReverseKernels) -> Tensor:
    """A second grid over the same range for a grid-error estimate: every other point when that still
    resolves the kernels (step ``<= sqrt(min v)``), else the coarsest grid that does, else (when that
    is not coarser by 20%) the grid with its step halved."""
    n = grid.numel()
    lo, hi = float(grid[0]), float(grid[-1])
    h, hmax = (hi - lo) / (n - 1), math.sqrt(float(kern.var.min()))
    if n % 2 == 1 and 2.0 * h <= hmax:
        return grid[::2]
    m = int(math.ceil((hi - lo) / hmax)) + 1
    if (hi - lo) / (m - 1) >= 1.2 * h:
        return torch.linspace(lo, hi, m, dtype=grid.dtype, device=grid.device)
    return torch.linspace(lo, hi, 2 * n - 1, dtype=grid.dtype, device=grid.device)


def _log_kernel(y: Tensor, logw: Tensor, mu: Tensor, var: float, *, band: bool = False) -> Tensor:
    """``log sum_i exp(logw_i) N(y_j; mu_i, var)`` for every ``y_j``.

    ``band``: drop the sources with ``|y - mu_i| > 9 sqrt(var)`` (relative contribution below
    ``3e-18``), working on chunks of ``y``, and floor the result at ``-700``; the dense sum otherwise.
    """
    c = -0.5 * (_LOG_2PI + math.log(var))
    width = _BAND * math.sqrt(var)
    span = float(y[-1] - y[0]) if y.numel() > 1 else 0.0
    if not band or 2.0 * width > 0.5 * span:
        return torch.logsumexp(c - 0.5 * (y[:, None] - mu[None, :]) ** 2 / var + logw[None, :], dim=1)
    parts = []
    mu_d = mu.detach()
    for j0 in range(0, y.numel(), _CHUNK):
        yy = y[j0 : j0 + _CHUNK]
        sel = torch.nonzero((mu_d >= float(yy[0]) - width) & (mu_d <= float(yy[-1]) + width)).reshape(-1)
        if sel.numel() == 0:
            parts.append(torch.full_like(yy, _LOG_FLOOR))
            continue
        m, lw = mu[sel], logw[sel]
        parts.append(torch.logsumexp(c - 0.5 * (yy[:, None] - m[None, :]) ** 2 / var + lw[None, :], dim=1))
    return torch.cat(parts).clamp(min=_LOG_FLOOR)


def _leaked(logw: Tensor, mu: Tensor, var: float, lo: float, hi: float) -> float:
    """Mass that one Gaussian step moves outside ``[lo, hi]``."""
    s = math.sqrt(2.0 * var)
    out = 0.5 * (torch.special.erfc((mu - lo) / s) + torch.special.erfc((hi - mu) / s))
    return float((torch.exp(logw) * out).sum())


@dataclass
class GridLaw:
    """The sampler's output law on a grid (I13).

    Attributes:
        grid: ``(G,)`` uniform grid.
        log_density: ``(G,)`` log output density at the grid points (with gradient).
        log_w1: ``(G,)`` ``log(h p_1(g_i))``: the law of ``x_1`` on the grid.
        mu1: ``(G,)`` the decoder means ``a_1 g + c_1 D_1(g)``.
        var1: the decoder variance ``v_1``.
        mass: ``h sum exp(log_density)`` (1 up to grid error and truncation).
        truncation: the mass moved outside the grid's box (prior tails plus every step's leak).
        marginals: ``(T + 1, G)`` ``log p_k`` on the grid, row ``k`` (row 0 the output), when kept.
    """

    grid: Tensor
    log_density: Tensor
    log_w1: Tensor
    mu1: Tensor
    var1: float
    mass: float
    truncation: float
    marginals: Optional[Tensor] = None

    @property
    def h(self) -> float:
        """The grid step."""
        return float(self.grid[1] - self.grid[0])

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p_0(x) = log int N(x; mu_1(u), v_1) p_1(u) du`` at any points ``x`` (``(n,)``), exact
        last step (no interpolation); differentiable."""
        return _log_kernel(x.reshape(-1).to(self.grid.dtype), self.log_w1, self.mu1, self.var1)


def grid_law(kern: ReverseKernels, grid: Tensor, *, keep_marginals: bool = False) -> GridLaw:
    """Propagate the sampler's law ``p_K = N(0, P) -> p_0`` on ``grid`` (I13), differentiably.

    ``grid`` must be uniform and its step at most ``sqrt(min_k v_k)`` (``ValueError`` otherwise).
    """
    if not isinstance(grid, Tensor) or grid.ndim != 1 or grid.numel() < 3 or not grid.dtype.is_floating_point:
        raise ValueError("grid must be a 1-d floating tensor with at least 3 points")
    hs = grid[1:] - grid[:-1]
    h = float(hs.mean())
    if not h > 0 or float((hs - h).abs().max()) > 1e-9 * max(1.0, h):
        raise ValueError("grid must be uniform and increasing")
    vmin = float(kern.var.min())
    if h > math.sqrt(vmin):
        raise ValueError(f"grid step {h:.3g} does not resolve the smallest step standard deviation "
                         f"{math.sqrt(vmin):.3g}; pass a finer grid")
    logh = math.log(h)
    lo, hi = float(grid[0]) - 0.5 * h, float(grid[-1]) + 0.5 * h
    P = kern.prior_var
    logp = -0.5 * (_LOG_2PI + math.log(P)) - 0.5 * grid**2 / P
    sP = math.sqrt(2.0 * P)
    truncation = 0.5 * (math.erfc(-lo / sP) + math.erfc(hi / sP))
    g2 = grid[:, None]
    var = kern.var.tolist()
    rows: List[Tensor] = [logp] if keep_marginals else []
    grad = torch.is_grad_enabled()

    def step(lp: Tensor, k: int) -> Tuple[Tensor, Tensor]:
        mu = kern.mean(g2, k)[:, 0]
        return _log_kernel(grid, logh + lp, mu, var[k - 1], band=True), mu

    for k in range(kern.K, 1, -1):
        if grad:
            new, mu = checkpoint(step, logp, k, use_reentrant=False)
        else:
            new, mu = step(logp, k)
        with torch.no_grad():
            truncation += _leaked(logh + logp.detach(), mu.detach(), var[k - 1], lo, hi)
        logp = new
        if keep_marginals:
            rows.append(logp)
    mu1 = kern.mean(g2, 1)[:, 0]
    log_w1 = logh + logp
    with torch.no_grad():
        truncation += _leaked(log_w1.detach(), mu1.detach(), var[0], lo, hi)
    log_out = _log_kernel(grid, log_w1, mu1, var[0], band=True)
    if keep_marginals:
        rows.append(log_out)
    mass = float(torch.exp(torch.logsumexp(log_out.detach() + logh, 0)))
    marg = torch.stack(rows[::-1]) if keep_marginals else None
    return GridLaw(grid, log_out, log_w1, mu1, var[0], mass, truncation, marg)
