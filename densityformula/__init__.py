"""densityformula: verify the theory of diffusion models' likelihoods with numbers you can trust.

``import densityformula as df`` gives the modules ``df.schedules``, ``df.targets``,
``df.models``, ``df.parameterization``, ``df.neural``, ``df.training``, ``df.data``,
``df.sampling``, ``df.elbo``, ``df.likelihood``, ``df.formula``, ``df.study`` (the central study),
``df.implications`` (Li & Yan's sections 4.2-4.4), ``df.consistency`` (consistency models),
``df.finetune`` (RL fine-tuning, reward tilts) and ``df.evaluation`` (per-point likelihood
tables across processes); the estimators
``df.density_formula`` and ``df.density_formula_discrete`` (Li & Yan's density formula,
docs/math.md I5-I7, in :mod:`densityformula.formula`); ``df.bits_per_dim``; and the
:class:`Estimate` every estimator returns.
"""
import sys

from . import data, elbo, formula, likelihood, models, neural, parameterization, sampling, schedules, targets, training
from .bits import bits_per_dim
from .estimate import Estimate
from .formula import density_formula, density_formula_discrete

# the formula module's old path: ``from densityformula.density_formula import density_formula`` keeps
# working, while the attribute ``densityformula.density_formula`` is the function, not a module
sys.modules[__name__ + ".density_formula"] = formula
from . import (  # noqa: E402 - built on everything above: the central study (docs/math.md section 12) and the rest
    consistency,
    evaluation,
    finetune,
    implications,
    study,
)

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
    "formula",
    "Estimate",
    "density_formula",
    "density_formula_discrete",
    "elbo",
    "likelihood",
    "bits_per_dim",
    "__version__",
    "study",
    "implications",
    "evaluation",
    "consistency",
    "finetune",
]
