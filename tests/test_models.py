"""The model interface (docs/math.md section 2): a model that implements only ``denoise`` gets ``eps``,
``score`` and ``v`` through the one conversion, and they agree with the target's exact score (I1).

References: the target's score (itself checked against autograd of ``log_prob`` in
test_targets.py), numpy closed forms of eps / v, and the posterior-covariance identity
``d D / d x_t = (alpha / sigma^2) Cov[X_0 | x_t]`` with the covariance written out in numpy.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from densityformula import schedules as S
from densityformula.models import (
    WHOLE_LINE,
    AnalyticModel,
    Denoiser,
    DiffusionModel,
    ExactDivergence,
    ModelProtocol,
    check_model,
    log_snr_interval,
)
from densityformula.targets import GaussianMixture, random_gmm

F64 = torch.float64
EPS = float(np.finfo(np.float64).eps)
SCHEDULES = [S.LiYan(), S.VPLinear(), S.VPCosine(), S.SubVP(), S.VE(), S.Discrete.ddpm_linear(100)]
IDS = [repr(s) for s in SCHEDULES]


class DenoiserOnly(DiffusionModel):
    """A model that implements nothing but the interface's abstract method."""

    def __init__(self, target: GaussianMixture, schedule: S.Schedule) -> None:
        self.target, self.schedule = target, schedule

    def denoise(self, x_t, t):
        return self.target.denoise(x_t, t, self.schedule)


def points(gmm: GaussianMixture, n: int, seed: int = 0) -> torch.Tensor:
    return 1.5 * gmm.sample(n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sch", SCHEDULES, ids=IDS)
def test_derived_outputs_follow_tweedie(sch):
    gmm = random_gmm(3, 4, seed=1)
    model = DenoiserOnly(gmm, sch)
    x = points(gmm, 12)
    # interior times, including per-point times (sigma > 0 and alpha > 0 there)
    t_vec = torch.linspace(sch.t_min, sch.t_max, 14, dtype=F64)[1:-1]
    for t in (0.3 * (sch.t_min + sch.t_max), t_vec):
        a = sch.alpha(torch.as_tensor(t, dtype=F64)).numpy().reshape(-1, 1)
        s = sch.sigma(torch.as_tensor(t, dtype=F64)).numpy().reshape(-1, 1)
        D = gmm.denoise(x, t, sch).numpy()
        xn = x.numpy()
        score = gmm.score(x, t, sch).numpy()
        # I1: -(x - alpha D) / sigma^2 is the score; eps = -sigma score; v = alpha eps - sigma D
        tol = 1e-10 * (1 + np.abs(score).max())
        np.testing.assert_allclose(model.score(x, t).numpy(), score, rtol=0, atol=tol * 1e2 / s.min() ** 2)
        np.testing.assert_allclose(model.eps(x, t).numpy(), (xn - a * D) / s, rtol=1e-12, atol=1e-12)
        atol = 1e-9 * (1 + np.abs(s * score).max()) / s.min()
        np.testing.assert_allclose(model.eps(x, t).numpy(), -s * score, rtol=0, atol=atol)
        np.testing.assert_allclose(model.v(x, t).numpy(), a * (xn - a * D) / s - s * D, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sch", SCHEDULES, ids=IDS)
def test_analytic_model_matches_target_and_interface(sch):
    gmm = random_gmm(2, 3, seed=2)
    exact = AnalyticModel(gmm, sch)
    generic = DenoiserOnly(gmm, sch)
    x = points(gmm, 9, seed=3)
    t = torch.linspace(sch.t_min, sch.t_max, 11, dtype=F64)[1:-1]
    assert torch.equal(exact.denoise(x, t), gmm.denoise(x, t, sch))
    assert torch.equal(exact.score(x, t), gmm.score(x, t, sch))
    assert torch.equal(exact.score_divergence(x, t), gmm.score_divergence(x, t, sch))
    assert torch.equal(exact.log_prob(x, t), gmm.log_prob(x, t, sch))
    s = sch.sigma(t)[:, None]
    rtol = 1e-9 / float(s.min())  # the generic path divides by sigma
    torch.testing.assert_close(exact.eps(x, t), generic.eps(x, t), rtol=rtol, atol=rtol)
    torch.testing.assert_close(exact.v(x, t), generic.v(x, t), rtol=rtol, atol=rtol)
    torch.testing.assert_close(exact.score(x, t), generic.score(x, t), rtol=rtol, atol=rtol)
    assert exact.dtype == F64 and exact.device.type == "cpu" and "AnalyticModel" in repr(exact)
    assert callable(getattr(exact, "score_divergence", None))
    assert getattr(generic, "score_divergence", None) is None
    # the optional capability is typed (DiffusionModel docstring): a flag and a Protocol
    assert exact.has_exact_divergence and isinstance(exact, ExactDivergence)
    assert not generic.has_exact_divergence and not isinstance(generic, ExactDivergence)
    D, div = exact.denoise_and_score_divergence(x, t)
    assert torch.equal(D, gmm.denoise(x, t, sch)) and torch.equal(div, gmm.score_divergence(x, t, sch))
    with pytest.raises(NotImplementedError, match="score_divergence"):
        generic.denoise_and_score_divergence(x, t)


def test_analytic_eps_and_v_finite_at_sigma_zero():
    """At t_min (sigma = 0) the exact eps is -sigma * score = 0, not 0/0 (foundation fix)."""
    gmm = random_gmm(3, 2, seed=0)
    x = points(gmm, 5)
    for sch in (S.LiYan(), S.VPLinear(), S.SubVP(), S.Discrete.ddpm_linear(100)):
        m = AnalyticModel(gmm, sch)
        eps, v = m.eps(x, sch.t_min), m.v(x, sch.t_min)
        assert bool(torch.isfinite(eps).all() and torch.isfinite(v).all())
        assert float(eps.abs().max()) == 0.0
        # v = alpha eps - sigma D = 0 at sigma = 0
        assert float(v.abs().max()) == 0.0
        # continuity: eps at tiny t is -sigma score, small
        t = sch.t_min + 1e-10 * (sch.t_max - sch.t_min)
        assert float(m.eps(x, t).abs().max()) <= float(sch.sigma(t)) * float(m.score(x, t).abs().max()) * (1 + 1e-12)


def test_denoiser_jacobian_is_posterior_covariance():
    """d D / d x_t = (alpha / sigma^2) Cov[X_0 | X_t = x_t]: autograd through denoise vs numpy posterior."""
    rng = np.random.default_rng(0)
    d, K = 3, 3
    w = rng.dirichlet(np.ones(K))
    mu = rng.normal(size=(K, d)) * 2
    A = rng.normal(size=(K, d, d))
    Sg = A @ A.transpose(0, 2, 1) / d + 0.3 * np.eye(d)
    gmm = GaussianMixture(torch.tensor(w), torch.tensor(mu), torch.tensor(Sg))
    sch = S.VPLinear()
    t = 0.2
    a, s = float(sch.alpha(t)), float(sch.sigma(t))
    model = AnalyticModel(gmm, sch)
    x = torch.tensor(rng.normal(size=(4, d)), dtype=F64)
    # (the targets' input validation is data-dependent, so torch.func.vmap cannot batch this; loop over 4 points)
    def denoise_one(z):
        return model.denoise(z[None], t)[0]

    jac = np.stack([torch.autograd.functional.jacobian(denoise_one, x[i]).numpy() for i in range(4)])
    C = a * a * Sg + s * s * np.eye(d)
    for i in range(4):
        xi = x[i].numpy()
        lc = np.array([np.log(w[k]) + stats.multivariate_normal(a * mu[k], C[k]).logpdf(xi) for k in range(K)])
        r = np.exp(lc - logsumexp(lc))
        m = np.stack([mu[k] + a * Sg[k] @ np.linalg.solve(C[k], xi - a * mu[k]) for k in range(K)])
        P = np.stack([Sg[k] - a * a * Sg[k] @ np.linalg.solve(C[k], Sg[k]) for k in range(K)])
        mean = r @ m
        cov = np.einsum("k,kij->ij", r, P) + np.einsum("k,ki,kj->ij", r, m, m) - np.outer(mean, mean)
        np.testing.assert_allclose(jac[i], a / s**2 * cov, rtol=1e-8, atol=1e-8 * np.abs(a / s**2 * cov).max())


def test_float32_model():
    gmm = random_gmm(4, 3, seed=5)
    m32 = AnalyticModel(gmm.to(dtype=torch.float32), S.LiYan())
    m64 = AnalyticModel(gmm, S.LiYan())
    x = points(gmm, 6)
    for meth in ("denoise", "eps", "score", "v"):
        out = getattr(m32, meth)(x.float(), 0.4)
        assert out.dtype == torch.float32
        ref = getattr(m64, meth)(x, 0.4)
        torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_bad_input():
    gmm = random_gmm(2, 2, seed=0)
    with pytest.raises(TypeError, match="target"):
        AnalyticModel("gmm", S.LiYan())
    with pytest.raises(TypeError, match="schedule"):
        AnalyticModel(gmm, "LiYan")
    with pytest.raises(TypeError):
        DiffusionModel()  # abstract
    m = DenoiserOnly(gmm, S.LiYan())
    x = points(gmm, 3)
    for meth in ("eps", "score", "v"):
        with pytest.raises(ValueError, match=r"\bt\b"):
            getattr(m, meth)(x, torch.full((4,), 0.5, dtype=F64))
        with pytest.raises(ValueError, match=r"\bt\b"):
            getattr(m, meth)(x, 2.0)
    am = AnalyticModel(gmm, S.LiYan())
    for meth in ("denoise", "eps", "score", "v", "score_divergence", "log_prob"):
        with pytest.raises(ValueError, match=r"\bt\b"):
            getattr(am, meth)(x, -0.5)
        with pytest.raises(TypeError, match=r"\bx\b"):
            getattr(am, meth)(x.float(), 0.5)


class WithDivergence(DenoiserOnly):
    """A user model that adds ``score_divergence``: it gains the capability and the default joint call."""

    def score_divergence(self, x_t, t):
        return self.target.score_divergence(x_t, t, self.schedule)


def test_exact_divergence_capability_of_a_user_model():
    gmm = random_gmm(2, 2, seed=4)
    m = WithDivergence(gmm, S.VPCosine())
    x = points(gmm, 5)
    assert m.has_exact_divergence and isinstance(m, ExactDivergence)
    D, div = m.denoise_and_score_divergence(x, 0.3)
    assert torch.equal(D, m.denoise(x, 0.3)) and torch.equal(div, m.score_divergence(x, 0.3))


def test_model_protocol_and_contract():
    """Every model satisfies the typed contract (schedule, denoise, valid_log_snr; docs/math.md I24)."""
    from densityformula.models import AffineDenoiser, MLPDenoiser

    gmm = random_gmm(2, 2, seed=0)
    models = [
        AnalyticModel(gmm, S.LiYan()),
        DenoiserOnly(gmm, S.VPLinear()),
        MLPDenoiser(2, S.VPCosine(), width=8, depth=1),
        AffineDenoiser(2, S.Discrete.ddpm_linear(50)),
    ]
    assert ModelProtocol is Denoiser
    for m in models:
        assert isinstance(m, Denoiser) and check_model(m) is m
    assert not isinstance(object(), Denoiser)
    assert models[0].valid_log_snr == WHOLE_LINE == (-math.inf, math.inf)
    # the default interval: the schedule's finite range, cut to the model's valid range
    assert log_snr_interval(models[0]) == S.LiYan().finite_log_snr_range
    net = models[2]
    net.valid_log_snr = (-5.0, 7.0)
    assert log_snr_interval(net) == (-5.0, 7.0)
    net.valid_log_snr = (30.0, 40.0)
    with pytest.raises(ValueError, match="valid log-SNR"):
        log_snr_interval(net)
    with pytest.raises(TypeError, match="mdl"):
        check_model(gmm, "mdl")


def test_models_package_has_no_cycle_and_old_paths_work():
    """``densityformula.models`` is a package importing no ``densityformula.neural``; the old module is a shim."""
    import pathlib
    import subprocess
    import sys

    import densityformula
    import densityformula.models as M
    import densityformula.neural as N

    for name in N.__all__:
        assert getattr(N, name) is getattr(M, name)
    pkg = pathlib.Path(M.__file__).parent
    assert pkg.name == "models" and (pkg / "_base.py").is_file()
    for f in pkg.glob("*.py"):
        text = f.read_text()
        assert "from ..neural" not in text and "import densityformula.neural" not in text, f.name
    # a fresh interpreter can import the leaf modules first, in any order
    root = pathlib.Path(densityformula.__file__).parent.parent
    for first in ("densityformula.models.neural", "densityformula.neural", "densityformula.models.affine"):
        code = f"import {first}; from densityformula.models import MLPDenoiser, AffineDenoiser, AnalyticModel"
        subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
