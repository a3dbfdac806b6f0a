"""Exact likelihoods of diffusion models (docs/math.md section 6: I12, I13, I14).

- :func:`probability_flow`: log-density of the probability-flow ODE (I12), integrated in
  log-SNR with ``torchdiffeq`` or with a batched per-point Dormand--Prince, by default over the
  model's valid log-SNR interval (docs/math.md section 10, I24), its vector field (I20) and every
  reverse kernel taken from :mod:`densityformula.reverse`.
- :func:`sampler_density_1d`: the exact output density of the DDPM ancestral sampler (or an
  Euler--Maruyama reverse SDE) in 1-D, propagated on a grid (I13).
- :func:`gaussian_sampler`: the closed-form Gaussian output law of the DDPM sampler when every
  step's denoiser is affine (I14).
- :func:`pc_density_1d`, :func:`langevin_stationary_1d`, :func:`replacement_density_1d`: the exact
  1-D output laws of predictor-corrector sampling, of its fixed-snr Langevin limit and of
  replacement inpainting (docs/math.md section 15: I39, I40, I42), built on :func:`gaussian_step_1d`.
- :func:`girsanov_1d`: the discrete Girsanov bound between two 1-D samplers (I41); :func:`grid_kl`
  the KL of two densities on a uniform grid, with its rule error.

Every ``prior=`` takes ``"gaussian"``, an object with ``log_prob(x)``, a callable of ``x`` or a
callable of ``(x, t)``, checked up front by ``densityformula._validation.as_log_density``.
"""
from ._grid import grid_kl
from .chain_density import (
    ChainDensity1D,
    gaussian_step_1d,
    langevin_stationary_1d,
    pc_density_1d,
    replacement_density_1d,
)
from .gaussian_law import GaussianSamplerLaw, gaussian_kl, gaussian_sampler
from .girsanov import GirsanovBound1D, girsanov_1d
from .pf_ode import pf_velocity, probability_flow
from .sampler_density import SamplerDensity1D, sampler_density_1d

__all__ = [
    "probability_flow", "pf_velocity",
    "sampler_density_1d", "SamplerDensity1D", "gaussian_sampler", "GaussianSamplerLaw", "gaussian_kl",
    "pc_density_1d", "langevin_stationary_1d", "replacement_density_1d", "gaussian_step_1d", "ChainDensity1D",
    "girsanov_1d", "GirsanovBound1D", "grid_kl",
]
