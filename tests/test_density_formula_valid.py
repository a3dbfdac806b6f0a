"""The density formula respects the model's validity range (docs/math.md I24; I5-I7).

A network with a recorded ``valid_log_snr`` is never evaluated outside it (every model call is
recorded); beyond it the integrand follows the exact asymptotic tail law, as beyond the schedule's
range.  An analytic model (valid on the whole line) gives bit-identical results to a run where the
range is given explicitly as the whole line or as any range wider than the one integrated.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import pytest
import torch

from densityformula.formula import density_formula, density_formula_discrete
from densityformula.models import AnalyticModel, MLPDenoiser
from densityformula.schedules import Discrete, LiYan, VPCosine
from densityformula.targets import GaussianMixture, random_gmm

F64 = torch.float64
CHEAP = dict(n_nodes=24, n_noise=8, n_replicates=4, n_pilot=4)


class RangedAnalytic(AnalyticModel):
    """The exact model of a mixture, declared valid only on ``valid``."""

    def __init__(self, target: GaussianMixture, schedule, valid: Tuple[float, float]) -> None:
        super().__init__(target, schedule)
        self._valid = valid

    @property
    def valid_log_snr(self) -> Tuple[float, float]:
        return self._valid


def _recording(model: MLPDenoiser) -> List[torch.Tensor]:
    """Wrap ``model.predict`` (every eps/denoise/score/v call goes through it); record its log-SNRs."""
    seen: List[torch.Tensor] = []
    inner = model.predict

    def predict(x_t, t, kind="x0", cond=None):
        tt = torch.as_tensor(t, dtype=F64).expand(x_t.shape[0])
        seen.append(model.schedule.log_snr(tt).detach())
        return inner(x_t, t, kind, cond)

    model.predict = predict  # type: ignore[method-assign]
    return seen


def _net(valid: Tuple[float, float]) -> MLPDenoiser:
    net = MLPDenoiser(2, VPCosine(), width=16, depth=2, zero_init_output=False, dtype=F64, seed=1)
    net.valid_log_snr = valid
    return net


@pytest.mark.filterwarnings("ignore:density_formula. at:RuntimeWarning")  # an untrained network's tails
@pytest.mark.parametrize("form", ["eps", "denoiser", "hyvarinen"])
def test_network_never_evaluated_outside_its_valid_range(form):
    lo, hi = -4.0, 6.0
    net = _net((lo, hi))
    seen = _recording(net)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    est = density_formula(net, x, form=form, seed=0, **CHEAP)
    lam = torch.cat(seen)
    assert lam.numel() > 0
    assert float(lam.min()) >= lo and float(lam.max()) <= hi
    a, b = est.extras["log_snr_interval"]
    assert lo <= a < lo + 1e-6 and hi - 1e-6 < b <= hi
    assert est.extras["lambda_range"] == (a, b) and est.extras["valid_log_snr"] == (lo, hi)
    sch = net.schedule
    assert est.extras["t_max"] == float(sch.t_from_log_snr(a)) and est.extras["t_min"] == float(sch.t_from_log_snr(b))
    assert bool(torch.isfinite(est.value).all())


def test_network_discrete_formula_never_evaluated_outside_its_valid_range():
    lo, hi = -3.0, 5.0
    net = _net((lo, hi))
    seen = _recording(net)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    grid = Discrete.ddpm_linear(100)
    est = density_formula_discrete(net, x, schedule=grid, n_noise=2, n_replicates=4, seed=0)
    lam = torch.cat(seen)
    assert float(lam.min()) >= lo and float(lam.max()) <= hi
    n_below, n_above = est.extras["extrapolated_steps"]
    steps = grid.log_snrs[1:]
    assert n_below == int((steps < lo).sum()) > 0 and n_above == int((steps > hi).sum()) > 0
    # J = valid steps + one tail node at each end
    assert est.extras["node_means"].shape[1] == 100 - n_below - n_above + 2
    a, b = est.extras["log_snr_interval"]
    assert lo <= a and b <= hi


@pytest.mark.parametrize("schedule", [LiYan(), VPCosine()], ids=["LiYan", "VPCosine"])
def test_analytic_model_unchanged_by_the_valid_range(schedule):
    g = random_gmm(2, 3, seed=5)
    x = g.sample(4, generator=torch.Generator().manual_seed(2))
    base = AnalyticModel(g, schedule)
    for valid in ((-math.inf, math.inf), (-1e3, 1e3), (-30.0, 30.0)):
        other = RangedAnalytic(g, schedule, valid)
        for form in ("eps", "hyvarinen"):
            a = density_formula(base, x, form=form, seed=3, **CHEAP)
            b = density_formula(other, x, form=form, seed=3, **CHEAP)
            assert torch.equal(a.value, b.value) and torch.equal(a.stderr, b.stderr)
            assert a.extras["log_snr_interval"] == b.extras["log_snr_interval"] == a.extras["lambda_range"]
        grid = Discrete.ddpm_linear(50)
        a = density_formula_discrete(base, x, schedule=grid, n_noise=2, n_replicates=4, seed=4)
        b = density_formula_discrete(other, x, schedule=grid, n_noise=2, n_replicates=4, seed=4)
        assert torch.equal(a.value, b.value) and b.extras["extrapolated_steps"] == (0, 0)


def test_tails_from_the_valid_range_are_accurate():
    """Cutting an exact model's range to [-8, 10] moves the estimate by no more than the reported bound."""
    g = random_gmm(2, 2, seed=1)
    x = g.sample(4, generator=torch.Generator().manual_seed(3))
    model = RangedAnalytic(g, LiYan(), (-8.0, 10.0))
    est = density_formula(model, x, seed=1, n_nodes=40, n_noise=16, n_replicates=16, n_pilot=8)
    err = (est.value - g.log_prob(x)).abs()
    assert bool((err <= 4 * est.stderr + est.extras["truncation_bound"]).all())
    assert bool((est.extras["truncation_bound"] > 0).all())
    grid = Discrete.ddpm_linear(200)  # steps at log-SNR in [-10.1, 7.6]
    model = RangedAnalytic(g, LiYan(), (-6.0, 5.0))
    full = density_formula_discrete(AnalyticModel(g, LiYan()), x, schedule=grid, n_noise=8, seed=2)
    cut = density_formula_discrete(model, x, schedule=grid, n_noise=8, seed=2)
    assert all(k > 0 for k in cut.extras["extrapolated_steps"])
    diff = (full.value - cut.value).abs()
    assert bool((diff <= 4 * torch.sqrt(full.stderr**2 + cut.stderr**2) + 2e-3).all())


def test_lambda_range_outside_the_valid_range_is_refused():
    net = _net((-2.0, 2.0))
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="valid_log_snr"):
        density_formula(net, x, lambda_range=(5.0, 10.0), **CHEAP)
