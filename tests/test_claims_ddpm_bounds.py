"""What the `ddpm_bounds` experiment no longer claims, because it holds by construction (issue 10).

``importance_weighted`` cuts one pool of chains into consecutive groups; for ``k`` in
``1, 2, 4, ..., 64`` the groups are nested, so by Jensen's inequality (concavity of the log) the
estimates are non-decreasing in ``k`` for every draw -- and so ``log p - IW_64 <= log p - IW_1``.
The experiment used to state both as claims; they cannot fail for a correct grouping, so they
are unit tests of the grouping code, on the experiment's own model (a 1-D mixture, the exact
denoiser of the mixture with shifted means, ``Discrete.ddpm_linear(50)``).
"""
import math

import pytest
import torch

from densityformula import models, schedules, targets
from densityformula.elbo import importance_weighted, importance_weights

KS = [1, 2, 4, 8, 16, 32, 64]  # experiments/ddpm_bounds.py


def _setup(seed):
    q = targets.random_gmm(1, 3, seed=seed)
    q_model = targets.GaussianMixture(q.weights, q.means + 0.3, q.covs)
    model = models.AnalyticModel(q_model, schedules.Discrete.ddpm_linear(50))
    return model, q.sample(6, generator=torch.Generator().manual_seed(seed + 1))


@pytest.mark.parametrize("seed", [0, 5])
def test_iw_k_non_decreasing_in_k_for_every_draw(seed):
    model, x = _setup(seed)
    iw = importance_weighted(model, x, k=KS, n_replicates=2, generator=torch.Generator().manual_seed(seed + 2))
    vals = torch.stack([iw[k].value for k in KS])  # (len(KS), n)
    assert bool((vals[1:] >= vals[:-1] - 1e-12).all()), vals
    # hence IW_64 is at least as close to any upper bound (log p_sampler) as IW_1
    assert bool((iw[max(KS)].value >= iw[1].value - 1e-12).all())


def test_groups_are_consecutive_blocks_of_one_pool():
    """The nesting rests on the grouping: IW_k is the mean log-mean-exp of consecutive blocks of k chains."""
    model, x = _setup(0)
    iw = importance_weighted(model, x, k=[1, 4, 8], n_replicates=2, generator=torch.Generator().manual_seed(3))
    logw = importance_weights(model, x, 16, generator=torch.Generator().manual_seed(3))  # the same pool
    for k in (1, 4, 8):
        lme = torch.logsumexp(logw.reshape(16 // k, k, -1), dim=1) - math.log(k)
        assert torch.allclose(iw[k].value, lme.mean(0), rtol=0, atol=1e-12), k
        assert iw[k].extras["n_groups"] == 16 // k
