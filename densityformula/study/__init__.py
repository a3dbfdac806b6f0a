"""The central study: where training on the ELBO matches maximum likelihood (docs/math.md section 12).

Given a target ``q`` (a Gaussian mixture), a parametric denoiser family (:class:`Family`: any
``nn.Module`` behind the model interface on a discrete schedule) and the DDPM sampler:

- :func:`elbo_objective`: ``-E_q[ELBO]``, the training objective (exact by quadrature in 1-D,
  closed form for affine denoisers, Monte Carlo otherwise; differentiable) (I9, I27);
- :func:`true_kl`: ``KL(q || p_sampler)`` (exact grid density in 1-D, closed form for affine
  denoisers, importance-weighted bound otherwise) (I13, I14);
- :func:`minimize`: the minimiser of either over a family (closed form or L-BFGS) (I30);
- :func:`decomposition`: ``-E_q[ELBO] = H(q) + KL(q || p) + E_q[log p - ELBO]``, each term computed
  on its own (I28);
- :func:`consistency_defect`: how far a model's denoisers are from those of its own sampler (I29);
- :func:`denoising_objective`, :func:`implied_weight`: a weighted denoising loss as an objective, and
  its Kingma--Gao weight ``w(lambda)`` and monotonicity (I31);
- :func:`rank_agreement`: whether the ELBO ranks models like their true NLL (Spearman, cluster bootstrap) (I33);
- :func:`noisy_elbo`, :func:`augmentation_identity`: a weighted loss as a mixture of ELBOs of noisy data (I32);
- :class:`AffineFamily` and the part (b) families (:func:`mixture_family`, :func:`per_step_family`,
  :func:`mlp_family`); the moment reduction for affine families is I26.
"""
from .affine import AffineFamily
from .augmented import AugmentationIdentity, NoisyELBO, augmentation_identity, augmentation_weights, noisy_elbo
from .consistency import ConsistencyDefect, consistency_defect
from .decomposition import Decomposition, decomposition, pointwise_elbo_1d
from .elbo_objective import ELBOObjective, ELBOValue, elbo_objective
from .entropy import Entropy, target_entropy
from .families import MixtureDenoiser, PerStepDenoiser, PerStepFamily, mixture_family, mlp_family, per_step_family
from .family import Family
from .grid import GridLaw, default_grid, grid_law
from .kl import KLObjective, KLValue, true_kl
from .minimize import MinimizeResult, minimize
from .ranking import RankAgreement, rank_agreement, spearman
from .weighted import DenoisingObjective, ImpliedWeight, WeightedValue, denoising_objective, implied_weight

__all__ = [
    "Family", "AffineFamily", "MixtureDenoiser", "PerStepDenoiser", "PerStepFamily", "mixture_family",
    "per_step_family", "mlp_family",
    "elbo_objective", "ELBOValue", "ELBOObjective", "true_kl", "KLValue", "KLObjective",
    "minimize", "MinimizeResult", "decomposition", "Decomposition", "pointwise_elbo_1d",
    "consistency_defect", "ConsistencyDefect", "target_entropy", "Entropy", "grid_law", "GridLaw", "default_grid",
    "rank_agreement", "RankAgreement", "spearman",
    "denoising_objective", "DenoisingObjective", "WeightedValue", "implied_weight", "ImpliedWeight",
    "noisy_elbo", "NoisyELBO", "augmentation_identity", "AugmentationIdentity", "augmentation_weights",
]
