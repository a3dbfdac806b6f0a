"""The exact output density of a model's sampler in 1-D, by propagation on a grid (I13).

For a sampler with Gaussian steps ``x_{k-1} = mu_k(x_k) + sqrt(v_k) z`` (DDPM ancestral, or
Euler--Maruyama for the reverse SDE; the kernels of :mod:`densityformula.reverse`, I15 / I17) and
prior ``p_K`` (``N(0, P)`` by default),

    p_{k-1}(y) = int N(y; mu_k(x), v_k) p_k(x) dx,

evaluated with the rectangle (= trapezoid, the density being negligible at the ends) rule
on a uniform grid, in log space (log-sum-exp).  The last step is evaluated at the query
points themselves, so ``log_prob(x)`` has no interpolation error.  For smooth integrands the
rule converges faster than any power of ``h`` once ``h`` is well below the width of every
kernel (``sqrt(v_k)``) and of the density; ``mass`` (which should be 1) and a comparison with
the grid halved report the grid error.

The box.  Mass that a step moves outside the grid's box ``[grid[0] - h/2, grid[-1] + h/2]`` is
lost: the grid density is a lower bound of the sampler's (``p_grid <= p`` up to the rule's
error) whose deficit integrates to at most ``truncation`` (the prior's mass outside the box plus
every step's leaked mass, computed exactly from the Gaussian kernels); ``grid_error =
|mass + truncation - 1|`` is the rule's discretization error of the total mass.  The density
outside the grid is not computed: ``log_prob`` raises ``ValueError`` there instead of returning
the (badly) truncated value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch

from .. import reverse
from .._validation import LogDensity, as_log_density, check_real_tensor, model_dtype_device
from ..models import CheckedModel, DiffusionModel, check_model, checked
from ..reverse import ReverseKernels
from ..schedules import Discrete

Tensor = torch.Tensor

__all__ = ["sampler_density_1d", "SamplerDensity1D"]

_LOG_2PI = math.log(2.0 * math.pi)


def _leaked(logw: Tensor, mu: Tensor, var: float, lo: float, hi: float) -> float:
    """``sum_i exp(logw_i) P(N(mu_i, var) outside [lo, hi])``: the mass one Gaussian step moves out of the box."""
    s = math.sqrt(var)
    sqrt2 = math.sqrt(2.0)
    below = 0.5 * torch.special.erfc((mu - lo) / (s * sqrt2))
    above = 0.5 * torch.special.erfc((hi - mu) / (s * sqrt2))
    return float((torch.exp(logw) * (below + above)).sum())


def _log_kernel_sum(y: Tensor, logw: Tensor, mu: Tensor, var: float, chunk: int = 1 << 22) -> Tensor:
    """``log sum_i exp(logw_i) N(y_j; mu_i, var)`` for every ``y_j``, in chunks of ``y``."""
    out = torch.empty_like(y)
    rows = max(1, chunk // max(mu.numel(), 1))
    c = -0.5 * (_LOG_2PI + math.log(var))
    for j0 in range(0, y.numel(), rows):
        yy = y[j0 : j0 + rows]
        lk = c - 0.5 * (yy[:, None] - mu[None, :]) ** 2 / var + logw[None, :]
        out[j0 : j0 + rows] = torch.logsumexp(lk, dim=1)
    return out


@dataclass
class SamplerDensity1D:
    """The output law of a 1-D sampler on a grid (I13).

    Attributes:
        grid: ``(G,)`` uniform grid.
        log_density: ``(G,)`` log of the output density at the grid points.
        mass: ``h * sum(density)``, which should be 1 (grid error and truncation show here).
        kernels: the sampler's steps.
        truncation: the box truncation: the mass lost outside ``[grid[0] - h/2, grid[-1] + h/2]``
            (the prior's mass outside the box plus the mass each step's Gaussian kernel moved out
            of it).  It bounds the sampler's mass outside the box, and the integral over the
            box of ``p - p_grid`` (``p_grid <= p``: near the edges the grid density is low).
        grid_error: the discretization error of the rectangle rule on the total mass,
            ``|mass + truncation - 1|``.
        support: ``(grid[0], grid[-1])``: where :meth:`log_prob` is defined.
    """

    grid: Tensor
    log_density: Tensor
    mass: float
    kernels: ReverseKernels
    _log_w1: Tensor
    _mu1: Tensor
    truncation: float = 0.0
    grid_error: float = 0.0

    @property
    def support(self) -> Tuple[float, float]:
        return float(self.grid[0]), float(self.grid[-1])

    @property
    def density(self) -> Tensor:
        return torch.exp(self.log_density)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact last step at the query points: ``log int N(x; mu_1(u), v_1) p_1(u) du``.

        ``x``: ``(n,)`` or ``(n, 1)`` real floating tensor with ``n >= 1`` (integer, bool and
        complex tensors raise ``TypeError``: an integer query is refused rather than converted, as
        in every other estimator); returns ``(n,)`` in ``x``'s dtype.  Every point must lie in
        :attr:`support` (the grid's range): ``ValueError`` otherwise, since the density beyond the
        grid was never propagated (see :attr:`truncation`).
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a tensor, got {type(x).__name__}")
        if x.is_complex() or not x.dtype.is_floating_point:
            raise TypeError(
                f"x must be a real floating tensor, got dtype {x.dtype}"
                + (f"; convert with x.to({self.grid.dtype})" if x.dtype != torch.bool else "")
            )
        check_real_tensor(x, "x")
        if x.ndim == 2 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 1:
            raise ValueError(f"x must have shape (n,) or (n, 1), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("x is an empty batch (no points); pass at least one point")
        out_dtype = x.dtype
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or inf")
        xx = x.to(self.grid.dtype).to(self.grid.device)
        lo, hi = self.support
        outside = (xx < lo) | (xx > hi)
        if bool(outside.any()):
            worst = float(xx[outside][0])
            raise ValueError(
                f"x has {int(outside.sum())} point(s) outside the grid's support [{lo:.6g}, {hi:.6g}] "
                f"(e.g. {worst:.6g}); "
                "the density there was not propagated: pass a wider grid to sampler_density_1d"
            )
        return _log_kernel_sum(xx, self._log_w1, self._mu1, float(self.kernels.var[0])).to(out_dtype)


def sampler_density_1d(
    model: DiffusionModel,
    schedule: Optional[Discrete] = None,
    variance: str = "beta",
    *,
    grid: Optional[Tensor] = None,
    sampler: str = "ddpm",
    times: Optional[Any] = None,
    decoder_variance: Optional[float] = None,
    prior_var: Optional[float] = None,
    prior: object = None,
    dtype: Optional[torch.dtype] = None,
    device: Any = None,
) -> SamplerDensity1D:
    """The exact output density of the model's sampler in 1-D (I13).

    ``p_{k-1}(y) = int N(y; a_k x + c_k D_k(x), v_k) p_k(x) dx`` from ``p_K`` (default
    ``N(0, P)``) to ``p_0``, with the kernels of the DDPM ancestral sampler used by
    :func:`densityformula.elbo.ddpm` (same mean function, same variances, same prior, so that
    ``elbo.ddpm(x) <= log p_0(x)`` can be checked pointwise, I9), or of Euler--Maruyama.

    Args:
        model: a 1-D :class:`DiffusionModel`.
        schedule, variance, decoder_variance: the DDPM sampler (as in ``elbo.ddpm``).
        grid: uniform 1-D grid covering the mass of every ``p_k`` (default
            ``linspace(-8, 8, 1601)``); its spacing must resolve the smallest step standard
            deviation ``sqrt(v_1)`` (a ``ValueError`` is raised when ``h > sqrt(min v)``).
        sampler: ``"ddpm"`` or ``"euler_maruyama"`` (then ``times``: the model-schedule time grid,
            and ``prior_var`` defaults to ``alpha^2 + sigma^2`` at the largest time).
        prior: the law of ``x_K``: ``None`` or ``"gaussian"`` (``N(0, prior_var)``), an object with
            ``log_prob(x)``, a callable of ``x`` or a callable of ``(x, t)`` (``x``: ``(G, 1)`` grid
            points; ``t``: the model-schedule time of the first step, ``kernels.model_t[-1]``, as
            ``(G,)``), e.g. ``gmm.marginal(schedule, T).log_prob`` for the exact ``q_T``.
        dtype, device: of the grid; default the model's (float64 on the CPU for a model that
            states neither).
    """
    model = checked(check_model(model))  # the model-call boundary: every output checked
    prior_fn = as_log_density("gaussian" if prior is None else prior, "prior", strings=("gaussian",))
    if isinstance(prior_fn, LogDensity) and prior_var is not None:
        raise ValueError("prior_var sets the Gaussian prior; give prior or prior_var, not both")
    kern = reverse.sampler_kernels(
        model, sampler, schedule=schedule, variance=variance, decoder_variance=decoder_variance,
        prior_var=prior_var, times=times,
    )
    dtype, device = model_dtype_device(model.inner if isinstance(model, CheckedModel) else model, dtype, device)
    if grid is None:
        grid = torch.linspace(-8.0, 8.0, 1601, dtype=dtype, device=device)
    if not isinstance(grid, Tensor) or grid.ndim != 1 or grid.numel() < 3:
        raise ValueError("grid must be a 1-d tensor with at least 3 points")
    if grid.is_complex() or not grid.dtype.is_floating_point:
        raise TypeError(f"grid must be a real floating tensor, got dtype {grid.dtype}")
    if not bool(torch.isfinite(grid).all()):
        raise ValueError("grid contains NaN or inf")
    grid = grid.to(dtype=dtype, device=device)
    hs = grid[1:] - grid[:-1]
    h = float(hs.mean())
    if not h > 0 or float((hs - h).abs().max()) > 1e-9 * max(1.0, abs(h)):
        raise ValueError("grid must be uniform and increasing")
    vmin = float(kern.var.min())
    if h > math.sqrt(vmin):
        raise ValueError(
            f"grid spacing {h:.3g} does not resolve the smallest step standard deviation {math.sqrt(vmin):.3g}"
        )
    logh = math.log(h)
    box_lo, box_hi = float(grid[0]) - 0.5 * h, float(grid[-1]) + 0.5 * h
    g2 = grid[:, None]
    if isinstance(prior_fn, LogDensity):
        t_K = kern.model_t[-1].to(device).expand(grid.shape[0])
        with torch.no_grad():
            logp = prior_fn(g2, t_K).to(dtype)
        if not bool((logp < math.inf).all()) or bool(torch.isnan(logp).any()):
            raise ValueError("prior returned NaN or +inf on the grid")
        # the prior's mass outside the box, as the rule sees it
        truncation = max(0.0, 1.0 - float(torch.exp(torch.logsumexp(logp + logh, 0))))
    else:
        P = kern.prior_var
        logp = -0.5 * (_LOG_2PI + math.log(P)) - 0.5 * grid**2 / P
        sP = math.sqrt(2.0 * P)
        truncation = 0.5 * (math.erfc(-box_lo / sP) + math.erfc(box_hi / sP))
    with torch.no_grad():
        for k in range(kern.K, 1, -1):
            mu = kern.mean(g2, k)[:, 0]
            truncation += _leaked(logh + logp, mu, float(kern.var[k - 1]), box_lo, box_hi)
            logp = _log_kernel_sum(grid, logh + logp, mu, float(kern.var[k - 1]))
        mu1 = kern.mean(g2, 1)[:, 0]
    log_w1 = logh + logp
    truncation += _leaked(log_w1, mu1, float(kern.var[0]), box_lo, box_hi)
    log_out = _log_kernel_sum(grid, log_w1, mu1, float(kern.var[0]))
    mass = float(torch.exp(torch.logsumexp(log_out + logh, 0)))
    grid_error = abs(mass + truncation - 1.0)
    return SamplerDensity1D(grid, log_out, mass, kern, log_w1, mu1, truncation, grid_error)
