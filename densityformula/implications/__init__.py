"""Li & Yan's implications of the density formula (their sections 4.2-4.4), as reusable computations.

- :mod:`.classifier`: diffusion classifiers -- class log-likelihoods by the ELBO, by the
  diffusion-classifier heuristic and by the density formula (docs/math.md I36);
- :mod:`.diffusion_loss`: the per-token diffusion loss of autoregressive models as an affine
  function of the conditional NLL (I37);
- :mod:`.gan`: the score-matching regularizer of a generator, equal to the cross-entropy of its
  samples under the target up to a constant (I38).
"""
from . import classifier, diffusion_loss, gan

__all__ = ["classifier", "diffusion_loss", "gan"]
