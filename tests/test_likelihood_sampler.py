"""Exact sampler output laws: the 1-D grid density (I13) and the affine-Gaussian recursion (I14)."""
import math

import pytest
import torch

import densityformula as df
from densityformula.likelihood import gaussian_kl, gaussian_sampler, sampler_density_1d
from densityformula.models import DiffusionModel


def gen(seed):
    return torch.Generator().manual_seed(seed)


T50 = df.schedules.Discrete.ddpm_linear(T=50)
GRID = torch.linspace(-8, 8, 1601, dtype=torch.float64)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_grid_density_matches_gaussian_closed_form_ddpm(variance):
    """I13 vs I14 (1-D Gaussian target, exact affine denoiser): the grid density integrates to 1
    and equals the closed-form N(m_0, P_0) of the recursion."""
    G = df.targets.Gaussian(torch.tensor([0.5]), torch.tensor([[0.3]]))
    m = df.models.AnalyticModel(G, T50)
    dens = sampler_density_1d(m, None, variance, grid=GRID)
    law = gaussian_sampler(m, variance=variance)
    assert abs(dens.mass - 1.0) < 1e-10
    x = torch.linspace(-3, 4, 15, dtype=torch.float64)[:, None]
    assert (dens.log_prob(x) - law.log_prob(x)).abs().max() < 1e-9
    assert (dens.log_density - law.log_prob(GRID[:, None])).abs()[500:1200].max() < 1e-9


def test_grid_density_euler_maruyama_matches_closed_form():
    G = df.targets.Gaussian(torch.tensor([-0.4]), torch.tensor([[0.6]]))
    m = df.models.AnalyticModel(G, df.schedules.VPLinear())
    times = torch.linspace(1e-3, 1.0, 120, dtype=torch.float64)
    dens = sampler_density_1d(m, sampler="euler_maruyama", times=times, grid=GRID)
    law = gaussian_sampler(m, sampler="euler_maruyama", times=times)
    assert abs(dens.mass - 1.0) < 1e-10
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None]
    assert (dens.log_prob(x) - law.log_prob(x)).abs().max() < 1e-9
    # Euler-Maruyama with 120 steps is biased: its law is not the target's
    assert float(law.kl(G.means[0], G.covs[0])) > 1e-6


def test_grid_error_is_bounded_by_refinement():
    """Mixture target (non-affine denoiser): mass 1 and the density is unchanged when the grid
    spacing is halved (grid error < 1e-8 at the test points)."""
    g = df.targets.GaussianMixture([0.3, 0.7], [[-1.5], [1.0]], [0.2, 0.5])
    m = df.models.AnalyticModel(g, T50)
    coarse = sampler_density_1d(m, grid=torch.linspace(-8, 8, 801, dtype=torch.float64))
    fine = sampler_density_1d(m, grid=GRID)
    x = torch.linspace(-3, 3.5, 14, dtype=torch.float64)
    assert abs(coarse.mass - 1) < 1e-9 and abs(fine.mass - 1) < 1e-9
    assert (coarse.log_prob(x) - fine.log_prob(x)).abs().max() < 1e-8
    # the sampler output is close to, but not exactly, the target at T = 50
    diff = (fine.log_prob(x) - g.log_prob(x[:, None])).abs()
    assert 1e-4 < float(diff.max()) < 0.5


def test_grid_too_coarse_raises():
    m = df.models.AnalyticModel(df.targets.Gaussian(torch.zeros(1), torch.ones(1)), T50)
    with pytest.raises(ValueError, match="grid"):
        sampler_density_1d(m, grid=torch.linspace(-7, 7, 50, dtype=torch.float64))
    with pytest.raises(ValueError, match="sampler"):
        sampler_density_1d(m, sampler="heun")


def _simulate_ddpm(model, sched, n, d, variance, seed):
    """Ancestral sampling written out from Ho et al.'s formulas (independent of densityformula.reverse)."""
    g = gen(seed)
    b = sched.betas
    ab = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - b, 0)])
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    for k in range(sched.T, 0, -1):
        D = model.denoise(x, float(k))
        c0 = ab[k - 1].sqrt() * b[k - 1] / (1 - ab[k])
        ck = (1 - b[k - 1]).sqrt() * (1 - ab[k - 1]) / (1 - ab[k])
        mean = c0 * D + ck * x
        if k == 1:
            v = b[0]
        else:
            v = b[k - 1] if variance == "beta" else (1 - ab[k - 1]) / (1 - ab[k]) * b[k - 1]
        x = mean + v.sqrt() * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_gaussian_recursion_vs_simulation(variance):
    """I14 in d = 3: the closed-form mean/covariance match simulated DDPM samples within MC error."""
    A = torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.7, 0.2], [0.1, 0.0, 0.5]], dtype=torch.float64)
    G = df.targets.Gaussian(torch.tensor([0.5, -1.0, 0.2]), A @ A.T)
    m = df.models.AnalyticModel(G, T50)
    law = gaussian_sampler(m, variance=variance)
    n = 20_000
    xs = _simulate_ddpm(m, T50, n, 3, variance, seed=1)
    se_mean = torch.sqrt(torch.diagonal(law.cov) / n)
    assert bool(((xs.mean(0) - law.mean).abs() < 4.5 * se_mean).all())
    emp = torch.cov(xs.T)
    # sd of a sample covariance entry: sqrt((S_ii S_jj + S_ij^2) / n)
    se_cov = torch.sqrt((torch.outer(torch.diagonal(law.cov), torch.diagonal(law.cov)) + law.cov**2) / n)
    assert bool(((emp - law.cov).abs() < 4.5 * se_cov).all())
    # the exact-denoiser sampler is close to the target but not equal (T = 50)
    kl = float(law.kl(G.means[0], G.covs[0]))
    assert 0 < kl < 0.1


def test_expected_elbo_closed_form_vs_pointwise_and_kl_bound():
    """E_q[ELBO] from the closed form equals the Monte Carlo mean of the pointwise closed-form ELBO,
    and E_q[ELBO] <= E_q[log p_sampler] = -H(q) - KL(q || p_sampler) (I9 on average, I14)."""
    A = torch.tensor([[0.8, 0.2], [0.0, 0.6]], dtype=torch.float64)
    G = df.targets.Gaussian(torch.tensor([0.3, -0.5]), A @ A.T)
    m = df.models.AnalyticModel(G, T50)
    law = gaussian_sampler(m)
    x = G.sample(200_000, generator=gen(2))
    pw = law.elbo(x)
    ee = float(law.expected_elbo(G.means[0], G.covs[0]))
    assert abs(float(pw.mean()) - ee) < 4.5 * float(pw.std()) / math.sqrt(x.shape[0])
    ent = 0.5 * (2 * math.log(2 * math.pi * math.e) + float(torch.logdet(G.covs[0])))
    assert ee <= -ent - float(law.kl(G.means[0], G.covs[0]))


def test_gaussian_kl_vs_torch_distributions():
    from torch.distributions import MultivariateNormal, kl_divergence

    m0, m1 = torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64), torch.tensor([0.0, -0.4, 0.5], dtype=torch.float64)
    A = torch.randn(3, 3, generator=gen(3), dtype=torch.float64)
    B = torch.randn(3, 3, generator=gen(4), dtype=torch.float64)
    S0, S1 = A @ A.T + 0.5 * torch.eye(3, dtype=torch.float64), B @ B.T + 0.5 * torch.eye(3, dtype=torch.float64)
    ref = kl_divergence(MultivariateNormal(m0, S0), MultivariateNormal(m1, S1))
    assert abs(float(gaussian_kl(m0, S0, m1, S1) - ref)) < 1e-10


class _Tanh(DiffusionModel):
    schedule = T50

    def denoise(self, x_t, t):
        return torch.tanh(x_t)


def test_non_affine_model_rejected():
    with pytest.raises(ValueError, match="affine"):
        gaussian_sampler(_Tanh(), d=2)


def test_gaussian_sampler_takes_an_affine_denoiser_without_target():
    """I14 on an AffineDenoiser (dimension from ``model.d``) equals the law of the exact Gaussian model."""
    import densityformula as df

    S = df.schedules.Discrete.ddpm_linear(50)
    mean, cov = torch.tensor([0.3, -0.2]), torch.tensor([[0.25, 0.05], [0.05, 0.16]])
    affine = df.neural.AffineDenoiser.from_gaussian(mean, cov, S)
    exact = df.models.AnalyticModel(df.targets.Gaussian(mean, cov), S)
    a, b = df.likelihood.gaussian_sampler(affine), df.likelihood.gaussian_sampler(exact)
    m64, c64 = mean.double(), cov.double()
    torch.testing.assert_close(a.kl(m64, c64), b.kl(m64, c64), rtol=1e-8, atol=1e-12)
