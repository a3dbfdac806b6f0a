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
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .. import reverse
from .._validation import LogDensity, as_log_density, model_dtype_device
from ..models import DiffusionModel, check_model
from ..reverse import ReverseKernels
from ..schedules import Discrete

Tensor = torch.Tensor

__all__ = ["sampler_density_1d", "SamplerDensity1D"]

_LOG_2PI = math.log(2.0 * math.pi)


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
    """

    grid: Tensor
    log_density: Tensor
    mass: float
    kernels: ReverseKernels
    _log_w1: Tensor
    _mu1: Tensor

    @property
    def density(self) -> Tensor:
        return torch.exp(self.log_density)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact last step at the query points: ``log int N(x; mu_1(u), v_1) p_1(u) du``.

        ``x``: ``(n,)`` or ``(n, 1)``; returns ``(n,)``.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a tensor, got {type(x).__name__}")
        if x.ndim == 2 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 1:
            raise ValueError(f"x must have shape (n,) or (n, 1), got {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or inf")
        xx = x.to(self.grid.dtype).to(self.grid.device)
        return _log_kernel_sum(xx, self._log_w1, self._mu1, float(self.kernels.var[0])).to(x.dtype)


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
    model = check_model(model)
    prior_fn = as_log_density("gaussian" if prior is None else prior, "prior", strings=("gaussian",))
    if isinstance(prior_fn, LogDensity) and prior_var is not None:
        raise ValueError("prior_var sets the Gaussian prior; give prior or prior_var, not both")
    kern = reverse.sampler_kernels(
        model, sampler, schedule=schedule, variance=variance, decoder_variance=decoder_variance,
        prior_var=prior_var, times=times,
    )
    dtype, device = model_dtype_device(model, dtype, device)
    if grid is None:
        grid = torch.linspace(-8.0, 8.0, 1601, dtype=dtype, device=device)
    if not isinstance(grid, Tensor) or grid.ndim != 1 or grid.numel() < 3:
        raise ValueError("grid must be a 1-d tensor with at least 3 points")
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
    g2 = grid[:, None]
    if isinstance(prior_fn, LogDensity):
        t_K = kern.model_t[-1].to(device).expand(grid.shape[0])
        with torch.no_grad():
            logp = prior_fn(g2, t_K).to(dtype)
        if not bool((logp < math.inf).all()) or bool(torch.isnan(logp).any()):
            raise ValueError("prior returned NaN or +inf on the grid")
    else:
        P = kern.prior_var
        logp = -0.5 * (_LOG_2PI + math.log(P)) - 0.5 * grid**2 / P
    with torch.no_grad():
        for k in range(kern.K, 1, -1):
            mu = kern.mean(g2, k)[:, 0]
            logp = _log_kernel_sum(grid, logh + logp, mu, float(kern.var[k - 1]))
        mu1 = kern.mean(g2, 1)[:, 0]
    log_w1 = logh + logp
    log_out = _log_kernel_sum(grid, log_w1, mu1, float(kern.var[0]))
    mass = float(torch.exp(torch.logsumexp(log_out + logh, 0)))
    return SamplerDensity1D(grid, log_out, mass, kern, log_w1, mu1)
