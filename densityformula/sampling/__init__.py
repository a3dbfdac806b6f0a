"""Samplers of Song et al.'s SDE framework and controllable generation (``df.sampling``).

Every sampler shares one signature (k-diffusion style)::

    x0 = sampler(model, x_T=None, *, n=None, steps=..., t_max=None, t_min=None, times=None,
                 spacing="auto", generator=None, noise_sampler=None, callback=None, post_step=None,
                 shape=None, dtype=None, device=None, progress=False, return_info=False, **specific)

``t_max`` is the noisy end (where sampling starts), ``t_min`` the data end (where it stops); the
defaults are the model's valid interval (:func:`default_times`, docs/math.md I24) and ``t_start`` /
``t_end`` are their aliases.  ``times=`` takes a prebuilt grid (:func:`time_grid`),
``noise_sampler(x, i)`` replaces the noise draws, ``return_info=True`` also returns a
:class:`SamplerInfo` (where it started and stopped, NFE).  Every step's coefficients come from
:mod:`densityformula.reverse` (docs/math.md section 8):

- :func:`ddpm` -- DDPM ancestral sampling, ``variance="beta" | "beta_tilde"`` (I15)
- :func:`ddim` -- DDIM with ``eta`` (I16)
- :func:`euler_maruyama` -- Euler-Maruyama for the reverse SDE (I17)
- :func:`reverse_diffusion` -- Song et al.'s reverse-diffusion discretization (I18)
- :func:`predictor_corrector` -- predictor + Langevin corrector with the ``snr`` step rule (I19)
- :func:`probability_flow` -- the probability-flow ODE with torchdiffeq in the log-SNR clock (I20)

Each sampler carries ``stochastic`` and ``step_based`` (the :class:`Sampler` protocol).
Every sampler puts its model behind :func:`densityformula.models.checked` once: a NaN, inf or
wrong-shaped model output is a :class:`~densityformula.models.ModelOutputError` naming the call and
the time; a state that overflows although the model's outputs are finite is a
:class:`SamplerDivergedError` (a ``ValueError`` and a ``FloatingPointError``).  Empty input
(``n=0``, an ``x_T`` without rows) is a ``ValueError`` in every sampler.
Controllable generation: :class:`GuidedModel` (classifier guidance), :func:`inpaint`, and the exact
likelihoods of a Gaussian mixture, :func:`gmm_class_log_likelihood` and
:func:`gmm_inpainting_log_likelihood`.  Helpers: :func:`time_grid`, :func:`default_times`,
:func:`prior_sample`, :func:`gaussian_noise`, :func:`energy_distance`, :func:`energy_test`,
:func:`ks_test`, :func:`mixture_cdf`.
"""
from ._conditional import GuidedModel, gmm_class_log_likelihood, gmm_inpainting_log_likelihood, inpaint
from ._grid import LAM_MAX, LAM_MIN, SPACINGS, default_t_start, default_times, prior_sample, time_grid
from ._metrics import EnergyTest, energy_distance, energy_test, ks_test, mixture_cdf
from ._run import NoiseSampler, Sampler, SamplerDivergedError, SamplerInfo, gaussian_noise
from ._samplers import (
    SAMPLERS,
    ddim,
    ddpm,
    euler_maruyama,
    langevin_step,
    predictor_corrector,
    probability_flow,
    reverse_diffusion,
)

__all__ = [
    "ddpm",
    "ddim",
    "euler_maruyama",
    "reverse_diffusion",
    "predictor_corrector",
    "langevin_step",
    "probability_flow",
    "SAMPLERS",
    "Sampler",
    "SamplerInfo",
    "SamplerDivergedError",
    "NoiseSampler",
    "gaussian_noise",
    "GuidedModel",
    "gmm_class_log_likelihood",
    "gmm_inpainting_log_likelihood",
    "inpaint",
    "time_grid",
    "default_times",
    "SPACINGS",
    "prior_sample",
    "default_t_start",
    "LAM_MIN",
    "LAM_MAX",
    "energy_distance",
    "energy_test",
    "EnergyTest",
    "ks_test",
    "mixture_cdf",
]
