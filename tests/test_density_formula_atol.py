"""Accuracy on demand: ``density_formula(..., atol=...)`` against the exact log-density of a mixture.

Ground truth: ``GaussianMixture.log_prob`` (closed form) with the exact denoiser
(:class:`~densityformula.models.AnalyticModel`), so the only error is the estimator's
(docs/math.md I6).  Tolerances come from the reported standard errors (Student t with 31
degrees of freedom for 32 replicates) and binomial counts; every seed is fixed.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import densityformula as df
from densityformula.formula import density_formula
from densityformula.models import AnalyticModel
from densityformula.schedules import LiYan


def _case(n: int, seed: int = 1, point_seed: int = 3):
    g = df.targets.random_gmm(2, 3, seed=seed)
    model = AnalyticModel(g, LiYan())
    x = g.sample(n, generator=torch.Generator().manual_seed(point_seed))
    return model, x, g.log_prob(x)


def test_atol_reaches_target_and_reports_what_it_spent() -> None:
    model, x, truth = _case(24)
    atol = 4e-3
    est = density_formula(model, x, atol=atol, max_evals=400_000, seed=11)
    e = est.extras
    assert bool(e["met_target"].all())
    assert bool((est.stderr <= atol).all())
    spent = e["evals_per_point"]
    assert spent.shape == (24,) and bool((spent <= 400_000).all()) and est.nfe == int(spent.max())
    err = (est.value - truth).abs()
    # with stderr <= atol: E|err| <= sqrt(2/pi) * 1.04 * atol (t_31 spread), and the mean of 24
    # points stays below atol with a wide margin; the worst point below 4.5 stderr
    # (P(|t_31| > 4.5) ~ 1e-4 per point)
    assert float(err.mean()) <= atol
    assert bool((err <= 4.5 * est.stderr).all())
    # at most 5 of 24 beyond 1.96 stderr (binomial(24, 0.06): P(> 5) < 0.5%)
    assert int((err > 1.96 * est.stderr).sum()) <= 5


def test_larger_atol_spends_fewer_evaluations() -> None:
    model, x, _ = _case(16)
    tight = density_formula(model, x, atol=3e-3, max_evals=400_000, seed=2)
    loose = density_formula(model, x, atol=2e-2, max_evals=400_000, seed=2)
    assert bool(tight.extras["met_target"].all()) and bool(loose.extras["met_target"].all())
    assert float(loose.extras["evals_per_point"].double().mean()) < 0.5 * float(
        tight.extras["evals_per_point"].double().mean()
    )


def test_unreachable_points_are_flagged_and_warned() -> None:
    model, x, _ = _case(6)
    with pytest.warns(RuntimeWarning, match="did not reach atol"):
        est = density_formula(model, x, atol=1e-7, max_evals=30_000, seed=0)
    assert not bool(est.extras["met_target"].any())
    assert bool((est.extras["evals_per_point"] <= 30_000).all())
    assert bool((est.stderr > 1e-7).all())
    assert bool(torch.isfinite(est.value).all())


def test_met_flag_matches_the_reported_errors() -> None:
    model, x, _ = _case(8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        est = density_formula(model, x, atol=2e-3, max_evals=40_000, seed=4)
    e = est.extras
    quad, quad_se = e["quadrature_error"], e["quadrature_error_se"]
    expected = (est.stderr <= 2e-3) & ((quad <= 2e-3) | (quad <= 3.0 * quad_se))
    assert torch.equal(e["met_target"], expected.cpu())


@pytest.mark.parametrize("bad", [0.0, -1e-3, math.nan, math.inf])
def test_bad_atol_raises_naming_it(bad: float) -> None:
    model, x, _ = _case(2)
    with pytest.raises(ValueError, match="atol"):
        density_formula(model, x, atol=bad)


def test_bad_atol_type_and_max_evals_raise_naming_them() -> None:
    model, x, _ = _case(2)
    with pytest.raises(TypeError, match="atol"):
        density_formula(model, x, atol="0.01")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_evals"):
        density_formula(model, x, atol=1e-2, max_evals=0)
    with pytest.raises(ValueError, match="max_evals"):
        density_formula(model, x, atol=1e-2, max_evals=1000)  # below one run's minimum
    with pytest.raises(TypeError, match="max_evals"):
        density_formula(model, x, atol=1e-2, max_evals=1.5e5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_evals"):
        density_formula(model, x, max_evals=-3)
    with pytest.raises(ValueError, match="atol"):
        density_formula(model, x, atol=1e-2, budget=20_000)


def test_default_call_is_unchanged_by_the_new_arguments() -> None:
    model, x, _ = _case(4)
    a = density_formula(model, x, budget=8000, seed=3)
    b = density_formula(model, x, budget=8000, seed=3, atol=None, max_evals=123_456)
    assert torch.equal(a.value, b.value) and torch.equal(a.stderr, b.stderr) and a.nfe == b.nfe
    assert "met_target" not in a.extras


@pytest.mark.slow
def test_atol_standard_errors_are_honest_over_many_points() -> None:
    """z = error / stderr over 192 points of two mixtures: spread ~1 and ~95% inside 1.96."""
    zs = []
    for seed in (1, 4):
        model, x, truth = _case(96, seed=seed, point_seed=seed + 10)
        est = density_formula(model, x, atol=5e-3, max_evals=400_000, seed=seed)
        assert bool(est.extras["met_target"].all())
        zs.append((est.value - truth) / est.stderr)
    z = torch.cat(zs)
    # sd of t_31 is 1.034; the sample sd of 192 draws has a relative spread ~ 0.06 (heavier for t)
    assert 0.8 <= float(z.std()) <= 1.3
    inside = int((z.abs() <= 1.96).sum())
    # P(|t_31| <= 1.96) = 0.941; binomial(192, 0.941) sd ~ 3.3: 4 sd either side
    assert 168 <= inside <= 192


def test_quadratic_control_variate_is_exact_for_one_gaussian() -> None:
    """One anisotropic Gaussian: ``||Z - eps_hat||^2`` is a quadratic polynomial in ``Z`` (eps_hat is affine),
    so the full quadratic control variate leaves no noise; the norm-only one does (condition number 100)."""
    from densityformula.targets import GaussianMixture

    g = GaussianMixture([1.0], [[0.5, -1.0]], [[[2.0, 0.9], [0.9, 0.5]]])
    model = AnalyticModel(g, LiYan())
    x = g.sample(6, generator=torch.Generator().manual_seed(0))
    truth = g.log_prob(x)
    quad = density_formula(model, x, budget=12_000, control_variate="quadratic", seed=1)
    norm = density_formula(model, x, budget=12_000, seed=1)
    assert float((quad.value - truth).abs().max()) < 1e-7
    assert float(quad.stderr.max()) < 1e-7
    assert float(norm.stderr.min()) > 1e-5
    assert quad.extras["cv_coef"].shape[-1] == 5  # Z_1, Z_2, Z_1^2 - 1, Z_1 Z_2, Z_2^2 - 1


def test_bad_control_variate_raises_naming_it() -> None:
    model, x, _ = _case(2)
    with pytest.raises(ValueError, match="control_variate"):
        density_formula(model, x, control_variate="cubic")
    with pytest.raises(TypeError, match="control_variate"):
        density_formula(model, x, control_variate=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_pilot"):
        density_formula(model, x, control_variate="quadratic", n_pilot=4)


def _narrow_member():
    """A hard member of the broad family (benchmarks/density_formula_broad.py, ``member(2, 6)``, rounded):
    a narrow component (scale ~0.04) holding 88% of the mass, 4.5 units from a wider one."""
    from densityformula.targets import GaussianMixture

    g = GaussianMixture(
        torch.softmax(torch.tensor([-0.128, -2.119], dtype=torch.float64), 0),
        [[1.2002, 1.3258], [3.0451, -2.7834]],
        [[[1.9928e-3, 1.2274e-4], [1.2274e-4, 1.5124e-3]], [[0.2182, -0.014542], [-0.014542, 0.1666]]],
    )
    model = AnalyticModel(g, LiYan())
    x = g.sample(48, generator=torch.Generator().manual_seed(101))
    return model, x, g.log_prob(x)


def test_atol_is_unbiased_and_honest_on_a_narrow_component_mixture() -> None:
    """Rare noise draws that carry x_lambda into the other component made the old estimator biased
    (mean z = +0.87, max |z| = 7.0, 41 of 48 inside 1.96 stderr on these points): z = err / stderr must
    have mean ~0 and spread ~1, the worst point within 4.5 stderr, and the mean error within 3 of its
    standard errors."""
    model, x, truth = _narrow_member()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        est = density_formula(model, x, atol=1e-3, max_evals=100_000, seed=5)
    err = est.value - truth
    z = err / est.stderr
    # mean of 48 t_31 draws: sd 1.03 / sqrt(48) = 0.15, so |mean z| <= 0.6 is 4 of its sd
    assert abs(float(z.mean())) <= 0.6
    assert 0.7 <= float(z.std()) <= 1.4
    # the worst point: P(|t_31| > 4.5) ~ 1e-4 per point
    assert float(z.abs().max()) <= 4.5
    # binomial(48, 0.941): mean 45.2, sd 1.6; 4 sd below is 38.6
    assert int((z.abs() <= 1.96).sum()) >= 39
    # the mean error against its own standard error (3 standard errors of the mean over the points)
    assert abs(float(err.mean())) <= 3.0 * float(est.stderr.pow(2).sum().sqrt()) / x.shape[0]
    assert float(err.abs().mean()) <= 1e-3  # measured 4.4e-4 (the old estimator: 2.7e-3)
    assert est.extras["proposal"] == (3.0, 1.0) and est.extras["cross_fit"] is True


def test_tail_transform_weights_integrate_exactly() -> None:
    """``E[w(Z) g(h(Z))] = E[g(Z)]`` (change of variables, docs/math.md I35) by quadrature on a fine grid."""
    from densityformula._quadrature import tail_transform

    z = torch.linspace(-9.0, 9.0, 180_001, dtype=torch.float64)
    y, log_w = tail_transform(z[:, None], (3.0, 1.0))
    phi = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    dz = float(z[1] - z[0])
    for g, exact in ((lambda t: torch.ones_like(t), 1.0), (lambda t: t**2, 1.0), (lambda t: t**4, 3.0),
                     (lambda t: torch.exp(-((t - 3.0) ** 2)), math.exp(-3.0) / math.sqrt(3.0))):
        assert abs(float((phi * torch.exp(log_w) * g(y[:, 0])).sum()) * dz - exact) < 1e-8
    # tails of N(0, tau^2): y ~ 3 z beyond |z| ~ 1, and the weight is bounded
    assert abs(float(y[-1, 0]) / 9.0 - 3.0) < 0.02 and float(log_w.exp().max()) < 2.0


def test_proposal_keeps_the_quadratic_control_variate_exact_for_one_gaussian() -> None:
    from densityformula.targets import GaussianMixture

    g = GaussianMixture([1.0], [[0.5, -1.0]], [[[2.0, 0.9], [0.9, 0.5]]])
    model = AnalyticModel(g, LiYan())
    x = g.sample(4, generator=torch.Generator().manual_seed(0))
    for cf in (False, True):
        est = density_formula(model, x, budget=12_000, control_variate="quadratic", proposal=(3.0, 1.0),
                              cross_fit=cf, n_pilot=18, seed=1)
        assert float((est.value - g.log_prob(x)).abs().max()) < 1e-7
        assert float(est.stderr.max()) < 1e-7


def test_bad_proposal_and_cross_fit_raise_naming_them() -> None:
    model, x, _ = _case(2)
    with pytest.raises(ValueError, match="proposal"):
        density_formula(model, x, proposal=(3.0, 1.0))  # needs control_variate="quadratic"
    with pytest.raises(ValueError, match="proposal"):
        density_formula(model, x, control_variate="quadratic", proposal=(0.5, 1.0))
    with pytest.raises(TypeError, match="proposal"):
        density_formula(model, x, control_variate="quadratic", proposal="wide")
    with pytest.raises(TypeError, match="cross_fit"):
        density_formula(model, x, atol=1e-2, cross_fit="yes")  # type: ignore[arg-type]
