"""The exact 1-D output density of a chain of Gaussian steps on a grid: predictor-corrector (I39, I40).

Every step of a predictor-corrector sampler (Song et al. Alg. 1) is a Gaussian transition given the
current point: the reverse-diffusion predictor (I18) ``x' = a x + c s(x, t) + sqrt(v) z``, the
Euler-Maruyama predictor (I17) likewise, and the Langevin corrector (I19)
``x' = x + eps s(x, t) + sqrt(2 eps) z``.  The law of the chain is therefore propagated exactly
(Chapman-Kolmogorov, as I13 does for DDPM) by

    p'(y) = sum_q w_q int N(y; m_q(x), v) p(x) dx,

with a quadrature mixture ``w_q`` of mean maps where a step averages over something random that is
independent of the state (the fresh known coordinate of replacement inpainting).  In 1-D the
integral is a rectangle rule on a uniform grid, split for speed: the mass of each grid point is
deposited with the kernel ``N(m(x_i), v_1)``, ``v_1 = min(v, (2h)^2)``, on a band of grid points, and
the rest ``N(0, v - v_1)`` is applied as an exact Gaussian multiplier in Fourier space (zero-padded,
no wrap-around).  Both parts are spectrally accurate once ``sqrt(v) >= h`` (a coarser grid raises
``ValueError``): the rule's error is about ``exp(-2 pi^2 v_1 / h^2)``.

The Langevin step size of :func:`densityformula.sampling.predictor_corrector` is set from batch
averages, ``eps = 2 alpha (snr mean||z|| / mean||s||)^2``; :func:`pc_density_1d` uses their large-batch
limits, ``E|z| = sqrt(2/pi)`` and ``E_p|s(x, t)|`` under the propagated density itself, so it is the
sampler's law as the batch grows (the batch-to-batch spread of ``eps`` is ``O(n^{-1/2})``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import torch

from .. import reverse as R
from .._validation import check_int, check_positive_float
from ..models import DiffusionModel, check_model, checked
from ._grid import check_uniform_grid, grid_kl

Tensor = torch.Tensor

__all__ = [
    "gaussian_step_1d", "ChainDensity1D", "pc_density_1d", "langevin_stationary_1d", "replacement_density_1d",
    "PREDICTORS",
]

#: the predictors of :func:`pc_density_1d` (those of ``sampling.predictor_corrector``)
PREDICTORS = ("reverse_diffusion", "euler_maruyama", "none")
#: ``E|z|`` for ``z ~ N(0, 1)``: the large-batch limit of the sampler's mean noise norm in 1-D
MEAN_ABS_NORMAL = math.sqrt(2.0 / math.pi)
_CUT = 9.0  # kernel support in standard deviations (relative tail exp(-40.5) = 2.6e-18)


def _check_grid(grid: object) -> Tuple[Tensor, float]:
    return check_uniform_grid(grid, min_points=3)


def gaussian_step_1d(
    grid: Tensor, density: Tensor, mean: Tensor, var: float, weights: Optional[Tensor] = None
) -> Tensor:
    """One Gaussian Markov step on a uniform grid (I39): the density of ``y`` where ``x ~ p`` (grid
    values ``density``), ``q ~ weights`` independent of ``x``, and ``y | x, q ~ N(mean[q](x), var)``:

        p'(y_j) = sum_q w_q sum_i h p_i N(y_j; mean[q, i], var).

    ``mean``: ``(G,)`` (one map, ``weights`` must be ``None``) or ``(Q, G)`` with ``weights`` ``(Q,)``
    summing to 1.  ``var`` must satisfy ``sqrt(var) >= h`` (the grid step); mass moved outside the
    grid is lost (the returned density integrates to less than the input).  Returns ``(G,)``.
    """
    grid, h = _check_grid(grid)
    G = grid.numel()
    if not isinstance(density, Tensor) or density.shape != (G,):
        raise ValueError(f"density must be a tensor of shape ({G},)")
    if not isinstance(mean, Tensor):
        raise TypeError("mean must be a tensor")
    if mean.ndim == 1:
        if weights is not None:
            raise ValueError("weights need a (Q, G) mean")
        mean2 = mean[None]
        w = torch.ones(1, dtype=grid.dtype, device=grid.device)
    else:
        if weights is None or weights.shape != (mean.shape[0],):
            got = None if weights is None else tuple(weights.shape)
            raise ValueError(f"a (Q, G) mean needs weights of shape (Q,), got {got}")
        mean2 = mean
        w = weights.to(grid)
        if bool((w < 0).any()) or abs(float(w.sum()) - 1.0) > 1e-9:
            raise ValueError("weights must be non-negative and sum to 1")
    if mean2.shape[1] != G:
        raise ValueError(f"mean must have {G} columns (one per grid point), got shape {tuple(mean.shape)}")
    if not bool(torch.isfinite(mean2).all()):
        raise ValueError("mean contains NaN or inf")
    var = check_positive_float(var, "var")
    if math.sqrt(var) < h * (1.0 - 1e-9):
        raise ValueError(
            f"var: the step's standard deviation {math.sqrt(var):.3g} is below the grid step {h:.3g}: use a finer grid"
        )
    v1 = min(var, 4.0 * h * h)
    v2 = var - v1
    B = int(math.ceil(_CUT * math.sqrt(v1) / h)) + 1
    P = int(math.ceil(_CUT * math.sqrt(v2) / h)) + 1 if v2 > 0 else 0
    L = G + 2 * P  # the grid extended by the convolution's reach: mass there may come back
    g0 = float(grid[0]) - P * h
    mu = mean2.reshape(-1)
    mass = (w[:, None] * (density * h)[None, :]).reshape(-1)
    # deposit on ext[2B : 2B + L] (2B cells of margin on each side: means up to B cells outside, their
    # bands; a mean further out reaches the grid only with its kernel's tail beyond 9 sd, and is lost)
    pos = (mu - g0) / h
    j0f = torch.round(pos)
    delta = pos - j0f  # in [-1/2, 1/2]
    inside = (j0f >= -B) & (j0f <= L - 1 + B)
    mass = torch.where(inside, mass, torch.zeros_like(mass))
    j0 = torch.where(inside, j0f, torch.zeros_like(j0f)).long() + 2 * B
    off = torch.arange(-B, B + 1, device=grid.device)
    z = (off.to(grid.dtype)[None, :] - delta[:, None]) * (h / math.sqrt(v1))
    vals = torch.exp(-0.5 * z * z) * (mass / math.sqrt(2.0 * math.pi * v1))[:, None]
    idx = (j0[:, None] + off[None, :]).reshape(-1)
    ext = torch.zeros(L + 4 * B, dtype=grid.dtype, device=grid.device)
    ext.index_add_(0, idx, vals.reshape(-1))
    ext = ext[2 * B : 2 * B + L]
    if v2 > 0:
        n_fft = 1 << int(math.ceil(math.log2(L + 2 * P)))  # zero-padded: no wrap-around
        F = torch.fft.rfft(ext, n=n_fft)
        omega = (2.0 * math.pi / (n_fft * h)) * torch.arange(F.numel(), dtype=grid.dtype, device=grid.device)
        F = F * torch.exp(-0.5 * v2 * omega**2)
        ext = torch.fft.irfft(F, n=n_fft)[:L]
    out = ext[P : P + G]
    # round-off of the FFT leaves |values| ~ 1e-17 max(p) in empty tails; negative ones are set to 0
    return torch.clamp(out, min=0.0)


@dataclass
class ChainDensity1D:
    """The output law of a 1-D chain of Gaussian steps on a grid (I39).

    Attributes:
        grid: ``(G,)`` uniform grid.
        density: ``(G,)`` output density at the grid points.
        mass: ``h * sum(density)`` (1 up to truncation and the rule's error).
        nfe: model evaluations per point of the sampler it describes.
        langevin_eps: the corrector's step sizes, in the order they were taken.
        times: the sampler's time grid.
    """

    grid: Tensor
    density: Tensor
    mass: float
    nfe: int
    times: Tensor
    langevin_eps: List[float] = field(default_factory=list)

    @property
    def h(self) -> float:
        return float(self.grid[1] - self.grid[0])

    def kl_from(self, log_q: Tensor) -> float:
        """``KL(q || p_chain)`` for ``log_q`` given at the grid points, by the rectangle rule
        (:func:`densityformula.likelihood.grid_kl`); chain densities below ``1e-300`` count as ``1e-300``."""
        if not isinstance(log_q, Tensor) or log_q.shape != self.grid.shape:
            raise ValueError(f"log_q must be a tensor of shape {tuple(self.grid.shape)}")
        log_p = torch.log(torch.clamp(self.density.double(), min=1e-300))
        return grid_kl(log_q.double(), log_p, self.grid)[0]

    def moments(self) -> Tuple[float, float]:
        """``(mean, variance)`` of the grid density (normalized by :attr:`mass`)."""
        w = self.density * self.h / self.mass
        m = float((w * self.grid).sum())
        return m, float((w * (self.grid - m) ** 2).sum())

    def cdf(self, x: Tensor) -> Tensor:
        """The CDF at ``x`` (``(n,)``): cumulative rectangle rule, linearly interpolated, normalized by
        the mass (the density between grid points is smooth at the grid's scale)."""
        c = torch.cumsum(self.density * self.h, 0) / self.mass
        # the rule's cell of grid point j is [g_j - h/2, g_j + h/2]: c[j] is the CDF at its right end
        edges = self.grid + 0.5 * self.h
        xx = x.reshape(-1).to(self.grid)
        pos = ((xx - float(edges[0])) / self.h).clamp(-1.0, self.grid.numel() - 1.0)
        j = torch.floor(pos).long()
        frac = pos - j.to(pos.dtype)
        cc = torch.cat([torch.zeros(1, dtype=c.dtype, device=c.device), c])
        lo = cc[(j + 1).clamp(0, c.numel())]
        hi = cc[(j + 2).clamp(0, c.numel())]
        return (lo + frac * (hi - lo)).clamp(0.0, 1.0)


def _score_on(model: DiffusionModel, grid: Tensor, t: float) -> Tensor:
    s: Tensor = model.score(grid[:, None], t)[:, 0]
    return s


def _langevin_eps(score: Tensor, density: Tensor, h: float, snr: float, alpha: float) -> float:
    """``eps = 2 alpha (snr E|z| / E_p|s|)^2`` with the batch means replaced by their limits (I19, I39)."""
    mass = float((density * h).sum())
    gn = float((density * h * score.abs()).sum()) / mass
    if not (gn > 0 and math.isfinite(gn)):
        raise FloatingPointError(f"the mean score norm is {gn}; cannot set the Langevin step size")
    return 2.0 * alpha * (snr * MEAN_ABS_NORMAL / gn) ** 2


def pc_density_1d(
    model: DiffusionModel,
    times: Union[Tensor, Sequence[float]],
    *,
    grid: Tensor,
    snr: float = 0.16,
    corrector_steps: int = 1,
    predictor: str = "reverse_diffusion",
    prior_var: Optional[float] = None,
) -> ChainDensity1D:
    """The output density of :func:`densityformula.sampling.predictor_corrector` in 1-D (I39), in
    the large-batch limit of its step-size rule.

    From ``p = N(0, prior_var)`` (default ``alpha^2 + sigma^2`` at ``times[0]``, the sampler's
    prior), at each grid time ``t_i``: ``corrector_steps`` Langevin kernels
    ``N(x + eps s(x, t_i), 2 eps)`` with ``eps = 2 alpha_{t_i|t_{i+1}}^2 (snr sqrt(2/pi) / E_p|s|)^2``
    (I19), then the predictor kernel ``t_i -> t_{i+1}`` (I18 or I17); ``predictor="none"`` runs the
    Langevin kernels at ``t_{i+1}`` instead (annealed Langevin).  ``corrector_steps=0`` is the
    predictor alone (``sampling.reverse_diffusion`` / ``sampling.euler_maruyama``).  ``times``: the
    sampler's decreasing time grid (``sampling.time_grid``); ``grid``: uniform, fine enough that
    every step's standard deviation is at least its spacing (else ``ValueError``).
    """
    model = checked(check_model(model))
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
    corrector_steps = check_int(corrector_steps, "corrector_steps", 0)
    snr = check_positive_float(snr, "snr")
    if predictor == "none" and corrector_steps == 0:
        raise ValueError("predictor='none' needs corrector_steps >= 1")
    grid, h = _check_grid(grid)
    tt = torch.as_tensor(times, dtype=torch.float64).detach().cpu()
    if tt.ndim != 1 or tt.numel() < 2 or not bool((tt[1:] < tt[:-1]).all()):
        raise ValueError("times must be a strictly decreasing 1-d grid of at least 2 times")
    sched = model.schedule
    levels = R.step_levels(sched, tt[:-1], tt[1:])
    if predictor == "reverse_diffusion":
        coefs: Optional[R.StepCoefficients] = R.reverse_diffusion_step(levels)
    elif predictor == "euler_maruyama":
        t = tt[:-1]
        coefs = R.euler_maruyama_step(sched.drift(t), sched.g2(t), t - tt[1:])
    else:
        coefs = None
    if prior_var is None:
        t0 = tt[0]
        prior_var = float(sched.alpha2(t0)) + float(sched.sigma2(t0))
    prior_var = check_positive_float(prior_var, "prior_var")
    p = torch.exp(-0.5 * grid**2 / prior_var) / math.sqrt(2.0 * math.pi * prior_var)
    alpha2 = (levels.alpha_ts**2).tolist()
    eps_log: List[float] = []
    N = tt.numel() - 1
    with torch.no_grad():
        for i in range(N):
            t_corr = float(tt[i]) if coefs is not None else float(tt[i + 1])
            for _ in range(corrector_steps):
                s = _score_on(model, grid, t_corr)
                eps = _langevin_eps(s, p, h, snr, alpha2[i])
                eps_log.append(eps)
                p = gaussian_step_1d(grid, p, grid + eps * s, 2.0 * eps)
            if coefs is not None:
                a, c, v = float(coefs.a[i]), float(coefs.c[i]), float(coefs.var[i])
                s = _score_on(model, grid, float(tt[i]))
                p = gaussian_step_1d(grid, p, a * grid + c * s, v)
    nfe = N * (corrector_steps + (1 if coefs is not None else 0))
    return ChainDensity1D(grid, p, float((p * h).sum()), nfe, tt, eps_log)


def langevin_stationary_1d(
    model: DiffusionModel,
    t: float,
    *,
    grid: Tensor,
    snr: float = 0.16,
    alpha: float = 1.0,
    tol: float = 1e-12,
    max_iter: int = 20000,
) -> Tuple[ChainDensity1D, int]:
    """The fixed point of the step-size-adapted Langevin kernel at one level ``t`` (I40): iterate
    ``p <- int N(. ; x + eps(p) s(x, t), 2 eps(p)) p(x) dx`` from the exact ``q_t`` (the model's own
    marginal is not known; start from ``N(0, 1)`` when the model has no ``target``) until the total
    variation change of a step is below ``tol``.  This is the ``N -> infinity`` limit of
    :func:`pc_density_1d` at fixed ``snr`` (the unadjusted-Langevin bias, which no number of
    steps removes).  Returns the density and the number of iterations."""
    model = checked(check_model(model))
    grid, h = _check_grid(grid)
    snr = check_positive_float(snr, "snr")
    alpha = check_positive_float(alpha, "alpha")
    target = getattr(getattr(model, "inner", model), "target", None)
    if target is not None:
        p = torch.exp(target.log_prob(grid[:, None], t, model.schedule))
    else:
        p = torch.exp(-0.5 * grid**2) / math.sqrt(2.0 * math.pi)
    eps_log: List[float] = []
    with torch.no_grad():
        s = _score_on(model, grid, float(t))
        n_iter = 0
        for _ in range(max_iter):
            n_iter += 1
            eps = _langevin_eps(s, p, h, snr, alpha)
            new = gaussian_step_1d(grid, p, grid + eps * s, 2.0 * eps)
            new = new / float((new * h).sum())  # the fixed point of the normalized chain
            change = float((new - p).abs().sum() * h)
            p = new
            if change < tol:
                eps_log.append(eps)
                break
        else:
            raise RuntimeError(f"the Langevin fixed point did not converge in {max_iter} iterations")
    tt = torch.tensor([float(t)], dtype=torch.float64)
    return ChainDensity1D(grid, p, float((p * h).sum()), 0, tt, eps_log), n_iter


def replacement_density_1d(
    model: DiffusionModel,
    times: Union[Tensor, Sequence[float]],
    *,
    known: int,
    value: float,
    grid: Tensor,
    nodes: int = 32,
    prior_var: Optional[float] = None,
) -> ChainDensity1D:
    """The output density of the unknown coordinate of replacement inpainting (I42) of a 2-D model,
    ``sampling.inpaint(model, mask, [value], sampler="reverse_diffusion", method="replacement")``.

    After every step (and on ``x_T``) the known coordinate is replaced by a fresh forward draw
    ``alpha_t value + sigma_t xi``, ``xi ~ N(0, 1)`` independent of the unknown coordinate ``u``, so
    ``u`` alone is a Markov chain whose step is a mixture over ``xi`` of Gaussian kernels:

        u' | u ~ E_xi N((2 - alpha_ts) u + sigma2_ts s_u((alpha_t value + sigma_t xi, u), t), sigma2_ts),

    the reverse-diffusion step (I18) of the joint score's unknown component.  The expectation over
    ``xi`` is a Gauss-Hermite rule of ``nodes`` points (:func:`gaussian_step_1d` with weights).
    ``known``: the index (0 or 1) of the known coordinate.  ``prior_var`` defaults to the sampler's
    prior ``alpha^2 + sigma^2`` at ``times[0]``.
    """
    import numpy as np

    model = checked(check_model(model))
    if known not in (0, 1):
        raise ValueError(f"known must be 0 or 1 (a 2-D model), got {known!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"value must be finite, got {value}")
    nodes = check_int(nodes, "nodes", 2)
    grid, h = _check_grid(grid)
    tt = torch.as_tensor(times, dtype=torch.float64).detach().cpu()
    if tt.ndim != 1 or tt.numel() < 2 or not bool((tt[1:] < tt[:-1]).all()):
        raise ValueError("times must be a strictly decreasing 1-d grid of at least 2 times")
    sched = model.schedule
    coefs = R.reverse_diffusion_step(R.step_levels(sched, tt[:-1], tt[1:]))
    xi_np, w_np = np.polynomial.hermite_e.hermegauss(nodes)
    xi = torch.as_tensor(xi_np, dtype=grid.dtype, device=grid.device)
    wq = torch.as_tensor(w_np / w_np.sum(), dtype=grid.dtype, device=grid.device)
    if prior_var is None:
        prior_var = float(sched.alpha2(tt[0])) + float(sched.sigma2(tt[0]))
    prior_var = check_positive_float(prior_var, "prior_var")
    p = torch.exp(-0.5 * grid**2 / prior_var) / math.sqrt(2.0 * math.pi * prior_var)
    G, Q = grid.numel(), xi.numel()
    unknown = 1 - known
    N = tt.numel() - 1
    with torch.no_grad():
        for i in range(N):
            t = tt[i]
            a_t, s_t = float(sched.alpha(t)), float(sched.sigma(t))
            pts = torch.empty(Q, G, 2, dtype=grid.dtype, device=grid.device)
            pts[:, :, known] = (a_t * value + s_t * xi)[:, None]
            pts[:, :, unknown] = grid[None, :]
            s = model.score(pts.reshape(Q * G, 2), float(t))[:, unknown].reshape(Q, G)
            a, c, v = float(coefs.a[i]), float(coefs.c[i]), float(coefs.var[i])
            p = gaussian_step_1d(grid, p, a * grid[None, :] + c * s, v, wq)
    return ChainDensity1D(grid, p, float((p * h).sum()), N, tt, [])
