"""The DDPM training objective ``-E_q[ELBO]``, exact in 1-D, differentiable (docs/math.md I9, I27).

By I9, ``-ELBO(x_0) = L_T(x_0) + sum_k ell_k(x_0)`` with
``ell_k = d const_k + (w_k / 2) E_{q(x_k|x_0)} ||x_0 - D_k(x_k)||^2`` (``densityformula.study._steps``),
so ``-E_q[ELBO]`` needs ``E_q L_T`` (closed form in ``E||x_0||^2``) and, per step, the expected
squared denoising error under ``q(x_0) q(x_k | x_0)``.  Three ways (I27):

- ``"quadrature"`` (1-D): for a component ``N(m, s2)`` of ``q``, ``x_k ~ N(a m, a^2 s2 + om)``
  (``a = sqrt(abar_k)``, ``om = 1 - abar_k``) and ``x_0 | x_k ~ N(mu(x_k), r2)`` with
  ``mu = m + a s2 (x_k - a m)/(a^2 s2 + om)``, ``r2 = s2 om/(a^2 s2 + om)``, so
  ``E (x_0 - D_k(x_k))^2 = E_{x_k} (mu(x_k) - D_k(x_k))^2 + r2``: the 2-D integral over
  ``(x_0, x_k)`` done exactly in ``x_0`` and by Gauss--Hermite in ``x_k``; error from two orders;
- ``"monte_carlo"`` (any d): ``x_0 ~ q``, one ``x_k ~ q(x_k|x_0)`` per step and point; the standard
  error is that of the per-point ``-ELBO`` (the steps' draws are independent given ``x_0``);
- ``"closed_form"`` (affine denoisers, any d): the Gaussian quadratic forms of I14, which depend
  on ``q`` only through its mean and covariance (I26).

Every value carries a gradient in the model's parameters (no ``torch.no_grad``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .._validation import check_int
from ..models import AffineDenoiser
from ..reverse import ReverseKernels
from ..schedules import Discrete
from ._affine_law import affine_maps, affine_neg_elbo
from ._common import check_choice, check_generator, inner_model, setup
from ._steps import denoise_steps, prior_kl_mean, sampler_kernels, step_terms
from ._target import check_target, mixture_1d, target_moments
from .quadrature import gauss_hermite

Tensor = torch.Tensor

__all__ = ["ELBOValue", "elbo_objective", "ELBOObjective"]

_METHODS = ("auto", "quadrature", "monte_carlo", "closed_form")


@dataclass
class ELBOValue:
    """``-E_q[ELBO]`` of a model's DDPM sampler (I9) and how it was computed.

    Attributes:
        value: ``-E_q[ELBO]`` in nats, a scalar tensor with a gradient in the model's parameters.
        error: its error estimate: ``|Q_n - Q_{n/2}|`` (``error_kind="quadrature"``), a standard
            error (``"stderr"``) or 0 (``"exact"``, the closed form).
        error_kind: see ``error``.
        method: ``"quadrature"``, ``"monte_carlo"`` or ``"closed_form"``.
        objective: the ``theta``-dependent part ``sum_k (w_k/2) E||x_0 - D_k||^2`` (with gradient).
        constant: ``E_q L_T + d sum_k const_k`` (``value = constant + objective``).
        per_step: ``(T,)`` the expected ``ell_k`` (detached).
        prior_term: ``E_q L_T``.
        variance: the sampler's variance (``"beta"`` or ``"beta_tilde"``).
    """

    value: Tensor
    error: float
    error_kind: str
    method: str
    objective: Tensor
    constant: float
    per_step: Tensor
    prior_term: float
    variance: str

    def __float__(self) -> float:
        return float(self.value.detach())


def _quadrature(kern: ReverseKernels, target: object, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(T,)`` ``E_q (x_0 - D_k(x_k))^2`` per step by the reduced Gauss--Hermite rule (1-D)."""
    mix = mixture_1d(target, dtype=dtype, device=device)
    sched = kern.ddpm_schedule()
    K = kern.K
    ab = sched.alpha_bars[1:].to(device, dtype)[:, None, None]  # (T, 1, 1)
    om = sched.one_minus_alpha_bars[1:].to(device, dtype)[:, None, None]
    a = torch.sqrt(ab)
    z, w = gauss_hermite(n, dtype=dtype, device=device)
    m, s2 = mix.means[None, :, None], mix.variances[None, :, None]  # (1, J, 1)
    var_k = a**2 * s2 + om  # (T, J, 1)
    xk = a * m + torch.sqrt(var_k) * z[None, None, :]  # (T, J, n)
    mu = m + a * s2 * (xk - a * m) / var_k
    r2 = (s2 * om / var_k)[..., 0]  # (T, J)
    J = mix.means.shape[0]
    D = denoise_steps(kern, xk.reshape(K, J * n, 1), torch.arange(1, K + 1))[..., 0].reshape(K, J, n)
    err = ((mu - D) ** 2 * w).sum(-1) + r2  # (T, J)
    return (err * mix.weights[None, :]).sum(-1)


def _monte_carlo(
    kern: ReverseKernels, target: object, n: int, d: int, generator: Optional[torch.Generator],
    dtype: torch.dtype, device: torch.device,
) -> tuple[Tensor, Tensor]:
    """``(E_err (T,), per-point weighted sum (n,))`` from ``x_0 ~ q`` and one ``x_k`` per step and point."""
    q = check_target(target)
    sched = kern.ddpm_schedule()
    K = kern.K
    x0 = q.sample(n, generator=generator).to(device, dtype)  # (n, d)
    eps = torch.randn(K, n, d, generator=generator, dtype=torch.float64).to(device, dtype)
    a = torch.sqrt(sched.alpha_bars[1:]).to(device, dtype)[:, None, None]
    s = torch.sqrt(sched.one_minus_alpha_bars[1:]).to(device, dtype)[:, None, None]
    xk = a * x0[None] + s * eps
    D = denoise_steps(kern, xk, torch.arange(1, K + 1))
    err = ((x0[None] - D) ** 2).sum(-1)  # (T, n)
    w = step_terms(kern).w.to(device, dtype)
    abT = float(sched.alpha_bars[-1])
    per_point = 0.5 * (w[:, None] * err).sum(0) + 0.5 * abT * (x0**2).sum(-1) / kern.prior_var
    return err.mean(1), per_point


def elbo_objective(
    model: object,
    target: object,
    *,
    schedule: Optional[Discrete] = None,
    variance: str = "beta",
    decoder_variance: Optional[float] = None,
    method: str = "auto",
    n_nodes: int = 64,
    n_samples: int = 4096,
    generator: Optional[torch.Generator] = None,
    dtype: Optional[torch.dtype] = None,
    device: Any = None,
) -> ELBOValue:
    """``-E_{x_0 ~ q}[ELBO(x_0)]``: the DDPM training objective with its constants, in nats (I9, I27).

    ``-E_q[ELBO] = E_q L_T + sum_{k=1}^T ( d const_k + (w_k/2) E_{q(x_0) q(x_k|x_0)} ||x_0 - D_k(x_k)||^2 )``
    with the ``w_k``, ``const_k`` of I9 (``w_k = c_k^2/v_k``, ``w_1 = 1/v_1``).  Equal in expectation
    to ``-elbo.ddpm(model, x).value.mean()`` over ``x ~ q`` (the library's Monte Carlo estimate).

    Args:
        model: a :class:`DiffusionModel` or a :class:`~densityformula.study.Family`.
        target: the data law ``q`` (a :class:`~densityformula.targets.GaussianMixture`).
        schedule, variance, decoder_variance: the DDPM sampler, as in :func:`densityformula.elbo.ddpm`.
        method: ``"auto"`` (quadrature in 1-D, closed form for an ``AffineDenoiser``, else Monte
            Carlo), ``"quadrature"``, ``"monte_carlo"`` or ``"closed_form"`` (see the module docstring).
        n_nodes: Gauss--Hermite nodes per component (the error compares ``n_nodes`` with ``n_nodes // 2``).
        n_samples: points ``x_0 ~ q`` of the Monte Carlo method.
        generator: randomness of the Monte Carlo method (pass a freshly seeded one for common
            random numbers across calls) and of the closed form's affinity check.
        dtype, device: where to compute (default the model's).
    """
    q = check_target(target)
    m, d, dt, dev = setup(model, q, dtype, device)
    check_choice(method, "method", _METHODS)
    check_generator(generator)
    n_nodes = check_int(n_nodes, "n_nodes", 4)
    n_samples = check_int(n_samples, "n_samples", 2)
    kern = sampler_kernels(m, schedule, variance, decoder_variance)
    if method == "auto":
        method = "quadrature" if d == 1 else (
            "closed_form" if isinstance(inner_model(m), AffineDenoiser) else "monte_carlo")
    terms = step_terms(kern)
    w, const = terms.w.to(dev, dt), terms.const.to(dev, dt)
    mean, cov = target_moments(q, dtype=dt, device=dev)
    second = (mean**2).sum() + torch.trace(cov)
    prior = prior_kl_mean(kern, d, second)
    const_sum = float(prior) + d * float(const.sum())
    if method == "closed_form":
        maps = affine_maps(kern, d, dtype=dt, device=dev, generator=generator)
        value, ell = affine_neg_elbo(kern, maps, mean, cov)
        return ELBOValue(value, 0.0, "exact", method, value - const_sum, const_sum, ell.detach(), float(prior),
                         variance)
    if method == "quadrature":
        if d != 1:
            raise ValueError(f"method='quadrature' needs a 1-D target, got d = {d}; use 'monte_carlo'")

        def rule(n: int) -> Tensor:
            return 0.5 * (w * _quadrature(kern, q, n, dt, dev)).sum()

        err_k = _quadrature(kern, q, n_nodes, dt, dev)
        objective = 0.5 * (w * err_k).sum()
        with torch.no_grad():
            low = rule(max(2, n_nodes // 2))
        error = float((objective.detach() - low).abs())
        ell = (d * const + 0.5 * w * err_k).detach()
        return ELBOValue(objective + const_sum, error, "quadrature", method, objective, const_sum, ell,
                         float(prior), variance)
    err_k, per_point = _monte_carlo(kern, q, n_samples, d, generator, dt, dev)
    # E_q L_T is exact; the per-point total also carries the x_0-dependent part of L_T so that the
    # standard error is that of the per-point -ELBO
    objective = 0.5 * (w * err_k).sum()
    se = float(per_point.detach().std()) / math.sqrt(n_samples)
    ell = (d * const + 0.5 * w * err_k).detach()
    return ELBOValue(objective + const_sum, se, "stderr", method, objective, const_sum, ell, float(prior), variance)


class ELBOObjective:
    """``model -> -E_q[ELBO]`` (:func:`elbo_objective`) as an objective of :func:`densityformula.study.minimize`.

    The Monte Carlo method redraws from a generator seeded with ``seed`` at every call (common
    random numbers), so that the objective is a deterministic, smooth function of ``theta``.
    """

    name = "elbo"
    differentiable = True

    def __init__(
        self, target: object, *, schedule: Optional[Discrete] = None, variance: str = "beta",
        decoder_variance: Optional[float] = None, method: str = "auto", n_nodes: int = 64, n_samples: int = 4096,
        seed: int = 0,
    ) -> None:
        self.target = check_target(target)
        self.schedule = schedule
        self.variance = variance
        self.decoder_variance = decoder_variance
        self.method = check_choice(method, "method", _METHODS)
        self.n_nodes = n_nodes
        self.n_samples = n_samples
        self.seed = seed

    def evaluate(self, model: object) -> ELBOValue:
        """The full :class:`ELBOValue` at ``model``."""
        gen = torch.Generator().manual_seed(int(self.seed))
        return elbo_objective(model, self.target, schedule=self.schedule, variance=self.variance,
                              decoder_variance=self.decoder_variance, method=self.method, n_nodes=self.n_nodes,
                              n_samples=self.n_samples, generator=gen)

    def __call__(self, model: object) -> Tensor:
        """``-E_q[ELBO]`` at ``model`` (scalar, with gradient)."""
        return self.evaluate(model).value

    def __repr__(self) -> str:
        return f"ELBOObjective(variance={self.variance!r}, method={self.method!r})"
