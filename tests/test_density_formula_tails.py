"""The tail extrapolation of df.density_formula is only trusted where the integrand decays.

An exact model's integrand decays like e^{-|lambda|} beyond the truncated range (the assumption
behind the tail nodes); a model whose eps_hat has a constant offset c never decays at high SNR
(the integrand tends to -c^2 d at both ends, so its continuous ELBO diverges) and must not get a finite
"truncation bound".
"""
import math
import warnings

import pytest
import torch

import densityformula as df
from densityformula.models import DiffusionModel


class OffsetEps(DiffusionModel):
    """The exact model with eps_hat shifted by a constant c at every noise level."""

    def __init__(self, exact, c):
        self.exact, self.schedule, self.c = exact, exact.schedule, c

    def denoise(self, x_t, t):
        a, s = self._scales(x_t, t)
        return self.exact.denoise(x_t, t) - (s / a)[:, None] * self.c


@pytest.mark.parametrize("schedule", [df.schedules.LiYan(), df.schedules.VPLinear()], ids=repr)
def test_exact_model_gets_finite_bound_and_no_warning(schedule):
    gmm = df.targets.random_gmm(2, 3, seed=0)
    x = gmm.sample(40, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = df.density_formula(df.models.AnalyticModel(gmm, schedule), x, n_noise=8, n_replicates=8)
    assert bool(torch.isfinite(est.extras["truncation_bound"]).all())
    lower, upper = est.extras["tail_decay_ratio"]
    # the lower tail is estimated precisely: its decay matches the assumed sigmoid(lambda) law
    assert float((lower - 1).abs().max()) < 0.2


@pytest.mark.parametrize("schedule", [df.schedules.LiYan(), df.schedules.VPLinear()], ids=repr)
def test_non_decaying_integrand_is_flagged(schedule):
    gmm = df.targets.random_gmm(2, 3, seed=0)
    x = gmm.sample(40, generator=torch.Generator().manual_seed(1))
    model = OffsetEps(df.models.AnalyticModel(gmm, schedule), 0.05)
    with pytest.warns(RuntimeWarning, match="does not decay"):
        est = df.density_formula(model, x, n_noise=8, n_replicates=8)
    assert bool(torch.isinf(est.extras["truncation_bound"]).all())
    # at the lower end (extras node order: interior nodes, then the lower and upper tail nodes) the
    # integrand sits at its constant limit -c^2 d instead of decaying like sigmoid(lambda)
    lo_mean = est.extras["node_means"][:, -2]
    # (only where the range reaches lambda = -25: VPLinear stops at -10, where the data still
    # inform Z and the cross term -2c E[sum(Z - eps)] has not vanished)
    if isinstance(schedule, df.schedules.LiYan):
        assert torch.allclose(lo_mean, torch.full_like(lo_mean, -(0.05**2) * 2), rtol=0.2)
    assert math.isfinite(float(est.value.mean()))


def test_non_decaying_integrand_is_not_warned_about_on_a_finite_range_without_tails():
    """tails=False asks for the integral over lambda_range alone: nothing is extrapolated, so no
    warning, but truncation_bound still says the whole-line value is unknown."""
    gmm = df.targets.random_gmm(2, 3, seed=0)
    x = gmm.sample(40, generator=torch.Generator().manual_seed(1))
    model = OffsetEps(df.models.AnalyticModel(gmm, df.schedules.LiYan()), 0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = df.density_formula(model, x, n_noise=8, n_replicates=8, lambda_range=(-15.0, 15.0), tails=False)
    assert bool(torch.isinf(est.extras["truncation_bound"]).all())
