"""densityformula: verify the theory of diffusion models' likelihoods with numbers you can trust.

``import densityformula as df`` gives the modules ``df.schedules``, ``df.targets``,
``df.models``, ``df.parameterization``, ``df.neural``, ``df.training``, ``df.data``,
``df.sampling``, ``df.elbo``, ``df.likelihood``; the estimators ``df.density_formula`` and
``df.density_formula_discrete``; ``df.bits_per_dim``; and the :class:`Estimate` every
estimator returns.
"""
from . import parameterization, schedules, targets
from . import models
from .estimate import Estimate
from . import neural, training, data, sampling
from .density_formula import density_formula, density_formula_discrete
from . import elbo, likelihood
from .bits import bits_per_dim

__version__ = "0.1.0"

__all__ = [
    "schedules",
    "targets",
    "models",
    "parameterization",
    "neural",
    "training",
    "data",
    "sampling",
    "Estimate",
    "density_formula",
    "density_formula_discrete",
    "elbo",
    "likelihood",
    "bits_per_dim",
    "__version__",
]
