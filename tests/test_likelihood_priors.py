"""Density arguments (``prior=``): every accepted form, one up-front check, one error message.

The forms (``densityformula._validation.as_log_density``): the strings accepted before, an object
with ``log_prob(x)``, a callable of ``x``, a callable of ``(x, t)``; a callable gets ``t`` exactly
when it has two required positional parameters.
"""
import pytest
import torch

import densityformula as df
from densityformula._validation import DENSITY_FORMS, LogDensity, as_log_density
from densityformula.likelihood import gaussian_sampler, probability_flow, sampler_density_1d
from densityformula.models import DiffusionModel

F64 = torch.float64
T50 = df.schedules.Discrete.ddpm_linear(T=50)
GRID = torch.linspace(-8, 8, 1601, dtype=F64)


def _gmm():
    return df.targets.random_gmm(2, 3, seed=3)


class CountingModel(DiffusionModel):
    """The exact denoiser of a mixture, counting its calls."""

    def __init__(self, target, schedule):
        self.target, self.schedule, self.calls = target, schedule, 0

    def denoise(self, x_t, t):
        self.calls += 1
        return self.target.denoise(x_t, t, self.schedule)


# ----------------------------------------------------------------------------------------------
# the normal form
# ----------------------------------------------------------------------------------------------
def test_as_log_density_reads_the_form_from_the_signature():
    g = _gmm()
    S = df.schedules.VPLinear()
    x = g.sample(4, generator=torch.Generator().manual_seed(0))
    t = torch.full((4,), 0.7, dtype=F64)
    exact = g.log_prob(x, t, S)
    marg = g.marginal(S, 0.7)

    def two(x, t):
        return g.log_prob(x, t, S)

    def var(*args):
        return g.log_prob(args[0], args[1], S)

    cases = {
        "object with log_prob": (marg, False),
        "bound log_prob, one required argument": (marg.log_prob, False),
        "callable of x": (lambda x: marg.log_prob(x), False),
        "callable of (x, t)": (two, True),
        "callable of (x, t) with an optional third": (lambda x, t, S=S: g.log_prob(x, t, S), True),
        "*args (as before: gets (x, t))": (var, True),
        "model with log_prob(x_t, t)": (df.models.AnalyticModel(g, S), True),
    }
    for label, (density, takes_time) in cases.items():
        ld = as_log_density(density, "prior")
        assert isinstance(ld, LogDensity) and ld.takes_time is takes_time, label
        assert torch.allclose(ld(x, t), exact, rtol=1e-12, atol=1e-12), label
    assert as_log_density("gaussian", "prior", strings=("gaussian",)) == "gaussian"


def test_as_log_density_errors_name_the_argument_and_the_forms():
    for bad in (3, object(), None, torch.zeros(3), [1.0]):
        with pytest.raises(TypeError, match="prior must be") as info:
            as_log_density(bad, "prior", strings=("gaussian",))
        assert DENSITY_FORMS in str(info.value) and "'gaussian'" in str(info.value)

    def three(x, t, s):
        return x

    def kw_only(x, *, scale):
        return x

    for bad in (three, kw_only, lambda: 0):
        with pytest.raises(TypeError, match="prior") as info:
            as_log_density(bad, "prior")
        assert DENSITY_FORMS in str(info.value)
    with pytest.raises(ValueError, match="prior must be one of 'gaussian'"):
        as_log_density("uniform", "prior", strings=("gaussian",))
    ld = as_log_density(lambda x: x, "prior")  # (n, d) instead of (n,)
    assert isinstance(ld, LogDensity)
    with pytest.raises(ValueError, match=r"prior must return a tensor of shape \(4,\)"):
        ld(torch.zeros(4, 2), torch.zeros(4))


# ----------------------------------------------------------------------------------------------
# probability_flow
# ----------------------------------------------------------------------------------------------
def test_probability_flow_accepts_every_prior_form():
    """The exact prior q_{t_max} in every form gives the same likelihood, which is log q_{t_min}
    to solver tolerance (I12); in particular ``prior=gmm.marginal(schedule, t).log_prob``."""
    S = df.schedules.VPLinear()
    g = _gmm()
    m = df.models.AnalyticModel(g, S)
    x = g.sample(12, generator=torch.Generator().manual_seed(1))
    t_max = 0.8
    marg = g.marginal(S, t_max)
    forms = {
        "(x, t)": lambda xe, te: g.log_prob(xe, te, S),
        "bound log_prob": marg.log_prob,
        "object": marg,
        "callable of x": lambda xe: marg.log_prob(xe),
        "model": df.models.AnalyticModel(g, S),
    }
    values = {}
    for label, prior in forms.items():
        est = probability_flow(m, x, rtol=1e-8, atol=1e-8, t_max=t_max, prior=prior)
        values[label] = est.value
        exact = g.log_prob(x, est.extras["t_min"], S)
        assert float((est.value - exact).abs().max()) < 1e-5, label
    ref = values["(x, t)"]
    for label, v in values.items():
        assert torch.allclose(v, ref, rtol=0, atol=1e-10), label
    # the "gaussian" prior N(0, sigma^2 I) is not q_{0.8} for VPLinear: a different number
    gauss = probability_flow(m, x, rtol=1e-8, atol=1e-8, t_max=t_max, prior="gaussian")
    assert float((gauss.value - ref).abs().max()) > 1e-3


def test_probability_flow_checks_the_prior_before_integrating():
    g = _gmm()
    m = CountingModel(g, df.schedules.LiYan())
    x = g.sample(3, generator=torch.Generator().manual_seed(2))
    for bad in (3, "uniform", lambda x, t, s: x):
        with pytest.raises((TypeError, ValueError), match="prior") as info:
            probability_flow(m, x, prior=bad)
        assert DENSITY_FORMS in str(info.value)
    assert m.calls == 0


# ----------------------------------------------------------------------------------------------
# the grid density (I13) and the Gaussian law (I14)
# ----------------------------------------------------------------------------------------------
def test_grid_density_prior_forms():
    """The default N(0, 1) prior given as a log-density (every form) reproduces the default; the
    exact q_T as prior gives a different, still normalized, law."""
    G = df.targets.GaussianMixture([0.3, 0.7], [[-1.5], [1.0]], [0.2, 0.5])
    m = df.models.AnalyticModel(G, T50)
    ref = sampler_density_1d(m, grid=GRID)
    std = df.targets.Gaussian(torch.zeros(1), torch.ones(1, 1))
    forms = (std, std.log_prob, lambda x: std.log_prob(x), lambda x, t: std.log_prob(x))
    for prior in forms:
        dens = sampler_density_1d(m, grid=GRID, prior=prior)
        assert (dens.log_density - ref.log_density).abs().max() < 1e-12
    exact_qT = sampler_density_1d(m, grid=GRID, prior=lambda x, t: G.log_prob(x, t, T50))
    assert abs(exact_qT.mass - 1.0) < 1e-9
    assert 0 < float((exact_qT.log_density - ref.log_density).abs()[400:1200].max()) < 0.1
    with pytest.raises(ValueError, match="prior_var"):
        sampler_density_1d(m, grid=GRID, prior=std, prior_var=2.0)
    with pytest.raises(TypeError, match="prior must be"):
        sampler_density_1d(m, grid=GRID, prior=1.0)


def test_gaussian_law_with_a_gaussian_prior():
    """A Gaussian prior N(mu, S) is read off its log-density and propagated (I14): the law agrees
    with the grid density under the same prior (1-D), and its DDPM ELBO stays below its log-density
    pointwise (I9, with L_T against N(mu, S))."""
    G = df.targets.Gaussian(torch.tensor([0.5]), torch.tensor([[0.3]]))
    m = df.models.AnalyticModel(G, T50)
    prior = df.targets.Gaussian(torch.tensor([0.4]), torch.tensor([[1.7]]))
    law = gaussian_sampler(m, prior=prior.log_prob, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(law.prior_mean, prior.means[0], atol=1e-9)
    assert torch.allclose(law.prior_cov, prior.covs[0], atol=1e-9)
    dens = sampler_density_1d(m, grid=GRID, prior=prior)
    x = torch.linspace(-3, 4, 15, dtype=F64)[:, None]
    assert (dens.log_prob(x) - law.log_prob(x)).abs().max() < 1e-8
    default = gaussian_sampler(m)
    assert not torch.allclose(law.mean, default.mean, atol=1e-6)
    # the default prior given as an object reproduces the default law and ELBO
    same = gaussian_sampler(m, prior=df.targets.Gaussian(torch.zeros(1), torch.ones(1, 1)))
    assert torch.allclose(same.mean, default.mean, atol=1e-12) and torch.allclose(same.cov, default.cov, atol=1e-12)
    assert torch.allclose(same.elbo(x), default.elbo(x), atol=1e-9)
    assert bool((law.elbo(x) <= law.log_prob(x) + 1e-9).all())
    # expected ELBO: a point mass gives the pointwise ELBO; a spread matches the Monte Carlo mean
    x0 = torch.tensor([0.7], dtype=F64)
    assert torch.allclose(law.expected_elbo(x0, torch.zeros(1, 1)), law.elbo(x0[None])[0], atol=1e-10)
    xs = G.sample(200_000, generator=torch.Generator().manual_seed(1))
    mc = law.elbo(xs)
    se = float(mc.std()) / len(mc) ** 0.5
    assert abs(float(law.expected_elbo(G.means[0], G.covs[0])) - float(mc.mean())) < 4 * se


def test_gaussian_law_prior_in_two_dimensions_and_errors():
    G = df.targets.Gaussian(torch.tensor([0.5, -0.2]), torch.tensor([[0.3, 0.1], [0.1, 0.6]]))
    m = df.models.AnalyticModel(G, T50)
    S0 = torch.tensor([[1.2, 0.4], [0.4, 0.9]], dtype=F64)
    prior = df.targets.Gaussian(torch.tensor([0.3, -0.6]), S0)
    law = gaussian_sampler(m, prior=lambda x, t: prior.log_prob(x))
    assert torch.allclose(law.prior_mean, prior.means[0], atol=1e-9)
    assert torch.allclose(law.prior_cov, S0, atol=1e-9)
    with pytest.raises(ValueError, match="not a Gaussian"):
        gaussian_sampler(m, prior=df.targets.random_gmm(2, 3, seed=0))
    with pytest.raises(ValueError, match="not a Gaussian"):
        gaussian_sampler(m, prior=lambda x: (x**2).sum(-1) / 2)  # Hessian positive definite
    with pytest.raises(TypeError, match="prior must be"):
        gaussian_sampler(m, prior=b"N(0, 1)")
