"""Samplers of Song et al.'s SDE framework and controllable generation (``df.sampling``).

Every sampler shares one signature (k-diffusion style)::

    x0 = sampler(model, x_T=None, *, n=None, steps=..., t_start=None, t_end=None,
                 spacing="auto", generator=None, callback=None, post_step=None,
                 shape=None, dtype=None, device=None, progress=False, **specific)

- :func:`ddpm` -- DDPM ancestral sampling, ``variance="beta" | "beta_tilde"``
- :func:`euler_maruyama` -- Euler-Maruyama for the reverse SDE
- :func:`reverse_diffusion` -- Song et al.'s reverse-diffusion discretization
- :func:`predictor_corrector` -- predictor + Langevin corrector with the ``snr`` step rule (0.16)
- :func:`probability_flow` -- the probability-flow ODE with torchdiffeq in the log-SNR clock
- :func:`ddim` -- DDIM with ``eta``

Controllable generation: :class:`GuidedModel` (classifier guidance), :func:`inpaint`, and the exact
likelihoods of a Gaussian mixture, :func:`gmm_class_log_likelihood` and
:func:`gmm_inpainting_log_likelihood`.  Helpers: :func:`time_grid`, :func:`prior_sample`,
:func:`energy_distance`, :func:`energy_test`, :func:`ks_test`, :func:`mixture_cdf`.
"""
from ._conditional import GuidedModel, gmm_class_log_likelihood, gmm_inpainting_log_likelihood, inpaint
from ._grid import LAM_MAX, LAM_MIN, default_t_start, prior_sample, time_grid
from ._metrics import EnergyTest, energy_distance, energy_test, ks_test, mixture_cdf
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
    "GuidedModel",
    "gmm_class_log_likelihood",
    "gmm_inpainting_log_likelihood",
    "inpaint",
    "time_grid",
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
