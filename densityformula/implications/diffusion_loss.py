"""The per-token diffusion loss of autoregressive models as a function of the conditional NLL (docs/math.md I37).

Li & Yan (2024, section 4.4) read the diffusion loss that MAR (Li et al. 2024, autoregressive
generation without vector quantization) puts on each token, ``L(z) = E_{t, eps} ||eps -
eps_theta(x_t, t, z)||^2`` with ``x ~ p(. | z)``, as the negative log-likelihood ``-log p(x | z)``
up to an affine map, so that training the backbone that produces ``z`` on it trains a likelihood.
This module makes every term of that argument exact for a conditional Gaussian-mixture target:

- :class:`ConditionalMixture`: ``p(x | z) = sum_k w_k(z) N(mu_k(z), s_k(z)^2 I)`` with logits,
  means and log-scales affine in ``z`` (so smooth in ``z``); ``at(z)`` is the
  :class:`~densityformula.targets.GaussianMixture` of one ``z``, ``sample`` draws ``(x, z)`` pairs
  (the trainer's data, ``SampledData(family.sample, labelled=True)``), ``entropy`` is the exact NLL
  ``H(z) = E[-log p(x | z)]`` by Gauss--Hermite quadrature;
- :func:`log_snr_weight`: the weight ``w(lambda)`` of any continuous library loss in
  ``E[loss] = int w(lambda) E||eps - eps_theta||^2 d lambda`` (I22, I23);
- :func:`eps_error_curves`: at each log-SNR, the exact MMSE of ``eps`` given ``x_lambda`` under
  ``p(. | z)``, a model's expected error and its excess over the MMSE (quadrature, no Monte Carlo);
- :func:`per_z_losses`: the per-``z`` expected losses of the Bayes-optimal denoiser and of a
  model, for any set of library losses, with quadrature and truncation error estimates;
- :func:`elbo_loss_constant`, :func:`affine_fit`, :func:`expectation_nodes`: the constant of
  I37(a), the least-squares affine fit ``loss(z) = a + b NLL(z)`` and the quadrature nodes of
  ``p_t(. | z)`` at which an experiment evaluates a model's NLL (density formula, PF-ODE).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.types import Device

from .._quadrature import sinh_coarse_weights, sinh_gauss_legendre
from .._validation import as_float_tensor, check_float_dtype, check_int, resolve_device
from ..schedules import Schedule
from ..targets import GaussianMixture
from ..training.losses import DenoiserLoss, ELBOLoss, EpsLoss, ScoreLoss, WeightedLoss
from ..training.time_sampling import StepSampler, log_snr_speed

Tensor = torch.Tensor
#: a model's noise prediction: ``eps_theta(x_t, t)`` for ``(n, d)`` points at ``(n,)`` times
EpsFn = Callable[[Tensor, Tensor], Tensor]
#: what :func:`eps_error_curves` / :func:`per_z_losses` accept as a model: an object with
#: ``.eps(x_t, t)`` (a :class:`~densityformula.models.DiffusionModel`, e.g. a
#: ``ConditionalMLPDenoiser.given(z)``), or a function ``z -> such an object`` (per-``z`` models)
ModelLike = object

__all__ = [
    "ConditionalMixture",
    "EpsErrors",
    "PerZLosses",
    "AffineFit",
    "log_snr_weight",
    "eps_error_curves",
    "per_z_losses",
    "elbo_loss_constant",
    "affine_fit",
    "expectation_nodes",
]

LOG_2PI_E = math.log(2.0 * math.pi) + 1.0
#: the largest tensor-product Gauss--Hermite rule built (points per component)
_MAX_NODES = 200_000


def _gauss_hermite(n: int) -> Tuple[np.ndarray, np.ndarray]:
    """``E f(U) ~ sum_i w_i f(u_i)``, ``U ~ N(0, 1)`` (probabilists' Hermite rule, weights summing to 1)."""
    u, w = np.polynomial.hermite_e.hermegauss(n)
    return u, w / w.sum()


def _product_rule(n: int, d: int) -> Tuple[Tensor, Tensor]:
    """The ``n^d``-point product rule of ``E f(U)``, ``U ~ N(0, I_d)``: nodes ``(n^d, d)``, weights ``(n^d,)``."""
    if n**d > _MAX_NODES:
        raise ValueError(f"n_nodes={n} in d={d} needs {n**d} points per component (more than {_MAX_NODES}); "
                         "use fewer nodes or a Monte-Carlo estimate")
    u, w = _gauss_hermite(n)
    grids = np.meshgrid(*([u] * d), indexing="ij")
    wgrids = np.meshgrid(*([w] * d), indexing="ij")
    nodes = np.stack([g.ravel() for g in grids], axis=1)
    weights = np.prod(np.stack([g.ravel() for g in wgrids], axis=1), axis=1)
    return torch.tensor(nodes, dtype=torch.float64), torch.tensor(weights, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------
# the conditional target
# ------------------------------------------------------------------------------------------------
class ConditionalMixture:
    """``p(x | z) = sum_k w_k(z) N(x; mu_k(z), s_k(z)^2 I_d)`` with parameters affine in ``z`` (docs/math.md I37).

    ``log w(z) = log_softmax(logits + logit_slopes z)``, ``mu_k(z) = means_k + mean_slopes_k z``,
    ``log s_k(z) = log_scales_k + log_scale_slopes_k z``; ``z`` is a vector of ``cond_dim`` numbers,
    drawn uniformly from the box ``[z_low, z_high]^cond_dim`` by :meth:`sample`.

    Args:
        logits: ``(K,)`` component logits at ``z = 0``.
        means: ``(K, d)`` component means at ``z = 0``.
        log_scales: ``(K,)`` log standard deviations at ``z = 0``.
        logit_slopes: ``(K, cond_dim)`` (default zeros, ``cond_dim = 1``).
        mean_slopes: ``(K, d, cond_dim)`` (default zeros).
        log_scale_slopes: ``(K, cond_dim)`` (default zeros).
        z_low, z_high: the box of the law of ``z`` (``z_low < z_high``).
        dtype, device: of every computation (float64 by default).
    """

    def __init__(
        self,
        logits: object,
        means: object,
        log_scales: object,
        *,
        logit_slopes: object = None,
        mean_slopes: object = None,
        log_scale_slopes: object = None,
        z_low: float = -1.0,
        z_high: float = 1.0,
        dtype: torch.dtype = torch.float64,
        device: Device = None,
    ) -> None:
        check_float_dtype(dtype)
        dev = resolve_device(device) if device is not None else torch.device("cpu")
        a = as_float_tensor(logits, "logits", dtype=torch.float64, device=dev)
        mu = as_float_tensor(means, "means", dtype=torch.float64, device=dev)
        ls = as_float_tensor(log_scales, "log_scales", dtype=torch.float64, device=dev)
        if a.ndim != 1 or a.numel() == 0:
            raise ValueError(f"logits must have shape (K,) with K >= 1, got {tuple(a.shape)}")
        K = a.shape[0]
        if mu.ndim != 2 or mu.shape[0] != K or mu.shape[1] == 0:
            raise ValueError(f"means must have shape (K, d) = ({K}, d), got {tuple(mu.shape)}")
        if ls.shape != (K,):
            raise ValueError(f"log_scales must have shape ({K},), got {tuple(ls.shape)}")
        d = mu.shape[1]
        m = None
        for name, v, lead in (("logit_slopes", logit_slopes, (K,)), ("mean_slopes", mean_slopes, (K, d)),
                              ("log_scale_slopes", log_scale_slopes, (K,))):
            if v is not None:
                t = as_float_tensor(v, name, dtype=torch.float64, device=dev)
                if t.ndim != len(lead) + 1 or tuple(t.shape[:-1]) != lead or t.shape[-1] == 0:
                    raise ValueError(f"{name} must have shape {lead + ('cond_dim',)}, got {tuple(t.shape)}")
                if m is not None and t.shape[-1] != m:
                    raise ValueError(f"{name} has cond_dim {t.shape[-1]}, the other slopes {m}")
                m = t.shape[-1]
        m = 1 if m is None else m

        def slope(v: object, name: str, shape: Tuple[int, ...]) -> Tensor:
            if v is None:
                return torch.zeros(shape, dtype=torch.float64, device=dev)
            return as_float_tensor(v, name, dtype=torch.float64, device=dev)

        for name, v in (("z_low", z_low), ("z_high", z_high)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite float, got {v!r}")
        if not z_low < z_high:
            raise ValueError(f"need z_low < z_high, got z_low={z_low}, z_high={z_high}")
        for name, v in (("logits", a), ("means", mu), ("log_scales", ls)):
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"{name} contains NaN or inf")
        self._a, self._mu, self._ls = a.to(dtype), mu.to(dtype), ls.to(dtype)
        self._A = slope(logit_slopes, "logit_slopes", (K, m)).to(dtype)
        self._B = slope(mean_slopes, "mean_slopes", (K, d, m)).to(dtype)
        self._C = slope(log_scale_slopes, "log_scale_slopes", (K, m)).to(dtype)
        for name, v in (("logit_slopes", self._A), ("mean_slopes", self._B), ("log_scale_slopes", self._C)):
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"{name} contains NaN or inf")
        self.z_low, self.z_high = float(z_low), float(z_high)
        self._dtype = dtype
        self._device = dev

    # -- properties ----------------------------------------------------------------------------
    @property
    def K(self) -> int:
        """Number of components."""
        return int(self._a.shape[0])

    @property
    def d(self) -> int:
        """Dimension of ``x``."""
        return int(self._mu.shape[1])

    @property
    def cond_dim(self) -> int:
        """Dimension of ``z``."""
        return int(self._A.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of every computation."""
        return self._dtype

    @property
    def device(self) -> torch.device:
        """Where the parameters live."""
        return self._device

    def __repr__(self) -> str:
        return (f"ConditionalMixture(K={self.K}, d={self.d}, cond_dim={self.cond_dim}, "
                f"z in [{self.z_low}, {self.z_high}])")

    # -- parameters ----------------------------------------------------------------------------
    def _z(self, z: object, name: str = "z") -> Tensor:
        """``z`` as ``(n, cond_dim)``: a number (``cond_dim = 1``), a ``(cond_dim,)`` vector or ``(n, cond_dim)``."""
        zz = as_float_tensor(z, name, dtype=self._dtype, device=self._device)
        if zz.ndim == 0:
            zz = zz.reshape(1, 1)
        if zz.ndim == 1:
            zz = zz.reshape(1, -1) if zz.shape[0] == self.cond_dim or self.cond_dim != 1 else zz.reshape(-1, 1)
        if zz.ndim != 2 or zz.shape[1] != self.cond_dim:
            raise ValueError(f"{name} must be a number, ({self.cond_dim},) or (n, {self.cond_dim}), "
                             f"got {tuple(zz.shape)}")
        if not bool(torch.isfinite(zz).all()):
            raise ValueError(f"{name} contains NaN or inf")
        return zz

    def parameters(self, z: object) -> Tuple[Tensor, Tensor, Tensor]:
        """``(log w (n, K), mu (n, K, d), s^2 (n, K))`` at each row of ``z`` (docs/math.md I37)."""
        zz = self._z(z)
        log_w = torch.log_softmax(self._a + zz @ self._A.T, dim=1)
        mu = self._mu + torch.einsum("kdm,nm->nkd", self._B, zz)
        s2 = torch.exp(2.0 * (self._ls + zz @ self._C.T))
        return log_w, mu, s2

    def at(self, z: object) -> GaussianMixture:
        """The :class:`~densityformula.targets.GaussianMixture` ``p(. | z)`` of one ``z``."""
        zz = self._z(z)
        if zz.shape[0] != 1:
            raise ValueError(f"z must be one condition, got {zz.shape[0]}")
        log_w, mu, s2 = self.parameters(zz)
        return GaussianMixture(torch.exp(log_w[0]), mu[0], s2[0], dtype=self._dtype, device=self._device)

    def log_prob(self, x: Tensor, z: object) -> Tensor:
        """``log p(x_i | z_i)`` for ``(n, d)`` points and ``n`` conditions (or one for all), shape ``(n,)``."""
        if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
            raise TypeError(f"x must be a floating torch.Tensor, got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"x must have shape (n, {self.d}), got {tuple(x.shape)}")
        zz = self._z(z)
        if zz.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"z must be one condition or one per point ({x.shape[0]}), got {zz.shape[0]}")
        log_w, mu, s2 = self.parameters(zz)
        xx = x.to(self._dtype)[:, None, :]
        sq = ((xx - mu) ** 2).sum(-1)
        comp = log_w - 0.5 * sq / s2 - 0.5 * self.d * torch.log(2.0 * math.pi * s2)
        return torch.logsumexp(comp, dim=1)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        """``n`` pairs: ``z ~ U[z_low, z_high]^cond_dim``, ``x ~ p(. | z)``; returns ``(x (n, d), z (n, cond_dim))``."""
        n = check_int(n, "n", 1)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        u = torch.rand(n, self.cond_dim, generator=generator, dtype=torch.float64, device=self._device)
        z = (self.z_low + (self.z_high - self.z_low) * u).to(self._dtype)
        log_w, mu, s2 = self.parameters(z)
        k = torch.multinomial(torch.exp(log_w), 1, replacement=True, generator=generator)[:, 0]
        e = torch.randn(n, self.d, generator=generator, dtype=torch.float64, device=self._device).to(self._dtype)
        rows = torch.arange(n, device=self._device)
        x = mu[rows, k] + torch.sqrt(s2[rows, k])[:, None] * e
        return x, z

    def entropy(self, z: object, n_nodes: int = 48) -> Tuple[Tensor, Tensor]:
        """Exact NLL ``H(z) = E_{x ~ p(.|z)}[-log p(x | z)]`` per row of ``z``, and an error estimate (I37).

        Gauss--Hermite per component (``n_nodes`` per axis, tensor product in ``d`` dimensions),
        ``E_p f = sum_k w_k E f(mu_k + s_k U)``; the error estimate is ``|Q_n - Q_{n/2}|``.
        """
        n_nodes = check_int(n_nodes, "n_nodes", 4)
        zz = self._z(z)
        out = []
        for n in (n_nodes, n_nodes // 2):
            vals = []
            for i in range(zz.shape[0]):
                x, w = expectation_nodes(self, zz[i], n)
                vals.append(-(w * self.log_prob(x, zz[i])).sum())
            out.append(torch.stack(vals))
        return out[0], (out[0] - out[1]).abs()


def expectation_nodes(
    family: ConditionalMixture, z: object, n_nodes: int = 16, *, t: Optional[float] = None,
    schedule: Optional[Schedule] = None,
) -> Tuple[Tensor, Tensor]:
    """Nodes ``x_i`` and weights ``W_i`` with ``sum_i W_i f(x_i) ~ E_{x ~ p_t(. | z)} f(x)`` (docs/math.md I37).

    ``p_t(. | z)`` is ``p(. | z)`` diffused to time ``t`` of ``schedule`` (I2; ``t=None``: ``p`` itself):
    component ``k`` is ``N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I)``, integrated by the
    tensor-product Gauss--Hermite rule with ``n_nodes`` per axis.  Returns ``((K n^d, d), (K n^d,))``.
    """
    if not isinstance(family, ConditionalMixture):
        raise TypeError(f"family must be a ConditionalMixture, got {type(family).__name__}")
    n_nodes = check_int(n_nodes, "n_nodes", 1)
    zz = family._z(z)
    if zz.shape[0] != 1:
        raise ValueError(f"z must be one condition, got {zz.shape[0]}")
    log_w, mu, s2 = family.parameters(zz)
    a, v = 1.0, s2[0]
    if t is not None or schedule is not None:
        if t is None or not isinstance(schedule, Schedule):
            raise ValueError("give both t and a Schedule to diffuse p(. | z), or neither")
        tt = torch.tensor(float(t), dtype=torch.float64)
        a = float(schedule.alpha(tt))
        v = a**2 * s2[0] + float(schedule.sigma2(tt))
    u, wu = _product_rule(n_nodes, family.d)
    u, wu = u.to(family.dtype).to(family.device), wu.to(family.dtype).to(family.device)
    x = (a * mu[0][:, None, :] + torch.sqrt(v)[:, None, None] * u[None]).reshape(-1, family.d)
    w = (torch.exp(log_w[0])[:, None] * wu[None]).reshape(-1)
    return x, w


# ------------------------------------------------------------------------------------------------
# losses as integrals over the log-SNR
# ------------------------------------------------------------------------------------------------
def _eps_multiplier(loss: WeightedLoss, lam: Tensor) -> Tensor:
    """``err / ||eps - eps_theta||^2`` of the loss's objective at log-SNR ``lam`` (I22)."""
    obj = loss.objective
    if isinstance(obj, (EpsLoss, ScoreLoss)):  # ELBOLoss is an EpsLoss
        return torch.ones_like(lam)
    if isinstance(obj, DenoiserLoss):
        return torch.exp(-lam)
    raise TypeError(f"the loss's objective must be EpsLoss, ScoreLoss, DenoiserLoss or ELBOLoss, got "
                    f"{type(obj).__name__}")


def log_snr_weight(loss: WeightedLoss, lam: Tensor) -> Tensor:
    """``w(lambda)`` with ``E[loss] = int w(lambda) E||eps - eps_theta(x_lambda)||^2 d lambda`` (docs/math.md I37, I22).

    For a loss ``int rho(t) E[err] dt`` on ``[lo, hi]`` with ``err = m(lambda) ||eps - eps_theta||^2``
    (I22: ``m = 1`` for the eps and score errors, ``e^{-lambda}`` for the x0 error), the change of
    variables ``t -> lambda(t)`` gives ``w(lambda) = m(lambda) rho(t(lambda)) / |d lambda/dt|`` on the loss's
    log-SNR support and 0 outside.  The ``"elbo"`` weight is ``1/2``; the ``"eps"`` weight with uniform
    time on VPCosine is ``1/|d lambda/dt|`` (``~ sech(lambda/2) / (2 pi)``, MAR's loss).  The time
    sampler does not enter (I23).  Continuous-time losses only.  ``lam``: float64 tensor.
    """
    if not isinstance(loss, WeightedLoss):
        raise TypeError(f"loss must be a densityformula.training WeightedLoss, got {type(loss).__name__}")
    if isinstance(loss.time_sampler, StepSampler):
        raise ValueError("log_snr_weight needs a continuous-time loss (a Discrete schedule's loss is a sum over steps)")
    lam = as_float_tensor(lam, "lam", dtype=torch.float64)
    if not bool(torch.isfinite(lam).all()):
        raise ValueError("lam contains NaN or inf")
    lo, hi = loss.log_snr_support
    sched = loss.schedule
    inside = (lam >= lo) & (lam <= hi)
    t = sched.t_from_log_snr(lam.clamp(max(lo, -700.0), min(hi, 700.0)))
    t = t.clamp(loss.lo, loss.hi)
    w = loss.weight.rho(t, loss.time_sampler) / log_snr_speed(sched, t)
    w = w * _eps_multiplier(loss, lam)
    return torch.where(inside, w, torch.zeros_like(w))


def _components(family: ConditionalMixture, z: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    log_w, mu, s2 = family.parameters(z.reshape(1, -1))
    return log_w[0].double(), mu[0].double(), s2[0].double()


def _eps_of(model: ModelLike, z: Tensor) -> Optional[EpsFn]:
    if model is None:
        return None
    obj = model(z) if callable(model) and not hasattr(model, "eps") else model
    fn = getattr(obj, "eps", None)
    if not callable(fn):
        raise TypeError(f"model must have an eps(x_t, t) method or map z to such a model, got {type(obj).__name__}")
    dt = getattr(obj, "dtype", torch.float64)
    dev = getattr(obj, "device", torch.device("cpu"))

    def eps(x: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad():
            out = fn(x.to(dtype=dt, device=dev), t.to(dev))
        if not isinstance(out, Tensor) or out.shape != x.shape:
            raise ValueError(f"model.eps returned shape {getattr(out, 'shape', None)}, expected {tuple(x.shape)}")
        return out.detach().to(device="cpu", dtype=torch.float64)

    return eps


@dataclass(frozen=True)
class EpsErrors:
    """Per log-SNR node: the exact MMSE ``E||eps - eps_hat||^2``, a model's error ``E||eps - eps_theta||^2``
    and its excess ``E||eps_hat - eps_theta||^2`` under ``p(. | z)`` (``None`` without a model), and
    ``remainder = MMSE - d sigmoid(lambda)`` computed without cancellation (the ELBO integrand of I6)."""

    lam: Tensor
    mmse: Tensor
    remainder: Tensor
    model: Optional[Tensor]
    excess: Optional[Tensor]


def eps_error_curves(
    family: ConditionalMixture,
    z: object,
    schedule: Schedule,
    lam: Tensor,
    *,
    model: ModelLike = None,
    n_nodes: int = 32,
) -> EpsErrors:
    """Exact eps errors at each log-SNR ``lam`` for ``x_0 ~ p(. | z)`` (docs/math.md I37, I3, I22).

    Under component ``k`` (``x_0 ~ N(mu_k, s_k^2 I)``), ``x_t = alpha x_0 + sigma eps`` is
    ``N(alpha mu_k, c_k I)``, ``c_k = alpha^2 s_k^2 + sigma^2``, and ``eps | x_t, k`` is Gaussian with mean
    ``e_k(x_t) = sigma (x_t - alpha mu_k) / c_k`` and variance ``alpha^2 s_k^2 / c_k`` per axis; so for any
    predictor ``c(x_t)``, ``E||eps - c||^2 = sum_k w_k (E_k||e_k - c||^2 + d alpha^2 s_k^2 / c_k)`` with ``E_k``
    over ``x_t ~ N(alpha mu_k, c_k I)``, a Gauss--Hermite rule of ``n_nodes`` per axis.  The MMSE takes
    ``c = eps_hat = sum_k r_k e_k`` (the posterior mean, I3); the excess ``E||eps_hat - eps_theta||^2`` is
    integrated separately (the cross term vanishes by the tower rule, so ``model = mmse + excess``
    checks the rule).  ``alpha, sigma`` are the schedule's at ``t(lambda)``, the time at which the model
    is called.
    """
    if not isinstance(family, ConditionalMixture):
        raise TypeError(f"family must be a ConditionalMixture, got {type(family).__name__}")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a densityformula Schedule, got {type(schedule).__name__}")
    n_nodes = check_int(n_nodes, "n_nodes", 1)
    zz = family._z(z)
    if zz.shape[0] != 1:
        raise ValueError(f"z must be one condition, got {zz.shape[0]}")
    lam = as_float_tensor(lam, "lam", dtype=torch.float64).reshape(-1)
    if not bool(torch.isfinite(lam).all()):
        raise ValueError("lam contains NaN or inf")
    log_w, mu, s2 = _components(family, zz[0])
    d, K, L = family.d, family.K, lam.shape[0]
    t = schedule.t_from_log_snr(lam)
    a2, sg2 = schedule.alpha2(t), schedule.sigma2(t)  # (L,)
    a, sg = torch.sqrt(a2), torch.sqrt(sg2)
    u, wu = _product_rule(n_nodes, d)  # (M, d), (M,)
    M = u.shape[0]
    c = a2[:, None] * s2[None, :] + sg2[:, None]  # (L, K)
    # x_t nodes under each component: (L, K, M, d)
    xt = a[:, None, None, None] * mu[None, :, None, :] + torch.sqrt(c)[:, :, None, None] * u[None, None]
    # e_j(x_t) for every component j at every node: (L, K, M, J, d)
    diff = xt[:, :, :, None, :] - a[:, None, None, None, None] * mu[None, None, None, :, :]
    cj = c[:, None, None, :]
    e_all = sg[:, None, None, None, None] * diff / cj[..., None]
    logr = log_w[None, None, None, :] - 0.5 * (diff**2).sum(-1) / cj - 0.5 * d * torch.log(cj)
    r = torch.softmax(logr, dim=-1)  # (L, K, M, J)
    eps_hat = (r[..., None] * e_all).sum(-2)  # (L, K, M, d)
    e_own = sg[:, None, None, None] * (xt - a[:, None, None, None] * mu[None, :, None, :]) / c[:, :, None, None]
    w = torch.exp(log_w)
    var_term = d * a2[:, None] * s2[None, :] / c  # (L, K)
    # d alpha^2 s^2 / c - d alpha^2 / (alpha^2 + sigma^2) = d alpha^2 sigma^2 (s^2 - 1) / (c (alpha^2 + sigma^2))
    rem_term = d * a2[:, None] * sg2[:, None] * (s2[None, :] - 1.0) / (c * (a2 + sg2)[:, None])

    def mean_over(v: Tensor) -> Tensor:  # (L, K, M) -> (L,)
        return ((v * wu[None, None, :]).sum(-1) * w[None, :]).sum(-1)

    gap_bayes = mean_over(((e_own - eps_hat) ** 2).sum(-1))
    mmse = gap_bayes + (var_term * w[None, :]).sum(-1)
    remainder = gap_bayes + (rem_term * w[None, :]).sum(-1)
    model_err: Optional[Tensor] = None
    excess: Optional[Tensor] = None
    eps_fn = _eps_of(model, zz[0])
    if eps_fn is not None:
        pred = eps_fn(xt.reshape(-1, d), t[:, None, None].expand(L, K, M).reshape(-1)).reshape(L, K, M, d)
        model_err = mean_over(((e_own - pred) ** 2).sum(-1)) + (var_term * w[None, :]).sum(-1)
        excess = mean_over(((eps_hat - pred) ** 2).sum(-1))
    return EpsErrors(lam, mmse, remainder, model_err, excess)


@dataclass(frozen=True)
class PerZLosses:
    """Per-``z`` expected losses (rows: the ``z`` grid) from :func:`per_z_losses` (docs/math.md I37).

    ``bayes[name]``: the loss of the exact denoiser; ``model[name]``: of the model (``None``
    without one); ``excess[name]``: ``int w E||eps_hat - eps_theta||^2`` (``model - bayes`` by the tower
    rule); ``*_error``: the quadrature error estimates (the coarse log-SNR rule and the ``n/2``-node
    Gauss--Hermite rule against the fine ones); ``tail[name]``: the I6 tail estimate of the Bayes
    ELBO integrand beyond the range (only for ELBO losses with their constant); ``entropy``: ``H(z)``.
    """

    z: Tensor
    lambda_range: Tuple[float, float]
    entropy: Tensor
    entropy_error: Tensor
    bayes: Dict[str, Tensor]
    bayes_error: Dict[str, Tensor]
    model: Optional[Dict[str, Tensor]]
    model_error: Optional[Dict[str, Tensor]]
    excess: Optional[Dict[str, Tensor]]
    tail: Dict[str, Tensor]


def _with_constant(loss: WeightedLoss) -> bool:
    return isinstance(loss.objective, ELBOLoss)


def per_z_losses(
    family: ConditionalMixture,
    z: object,
    losses: Mapping[str, WeightedLoss],
    *,
    model: ModelLike = None,
    lambda_range: Tuple[float, float] = (-25.0, 25.0),
    n_lambda: int = 64,
    n_nodes: int = 32,
    lambda_center: float = 0.0,
    lambda_scale: float = 3.0,
    entropy_nodes: int = 48,
) -> PerZLosses:
    """``L_w(z) = int_lo^hi w(lambda) E_{x_0 ~ p(.|z), eps}||eps - eps_theta(x_lambda, z)||^2 dlambda`` per z (I37).

    For each loss (all on one schedule), ``w`` is :func:`log_snr_weight`; an ELBO loss with its
    constant (``DenoisingLoss(..., "elbo", include_constant=True)``) integrates
    ``MMSE - d sigmoid(lambda)`` and adds ``(d/2) log(2 pi e)``, so its Bayes value is ``H(z)`` minus the
    part of I6 outside ``[lo, hi]`` (``tail``, the I6 tail law read off the ends).  The log-SNR
    integral uses the sinh-mapped Gauss--Legendre rule of the density formula (``n_lambda`` nodes);
    the inner expectations are exact Gauss--Hermite rules (:func:`eps_error_curves`).  ``model``:
    an object with ``eps(x_t, t)`` or a function ``z -> model`` (e.g. ``net.given``).  The
    losses' time ranges must cover ``[lo, hi]`` for the value to be the loss itself; outside their
    log-SNR support the weight is 0.
    """
    if not isinstance(losses, Mapping) or not losses:
        raise ValueError("losses must be a non-empty mapping name -> WeightedLoss")
    schedules = {id(v.schedule): v.schedule for v in losses.values() if isinstance(v, WeightedLoss)}
    if len(schedules) != 1 or not all(isinstance(v, WeightedLoss) for v in losses.values()):
        raise ValueError("losses must be WeightedLoss objects on one schedule")
    schedule = next(iter(schedules.values()))
    lo, hi = (float(v) for v in lambda_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"lambda_range must be finite (lo, hi) with lo < hi, got {lambda_range!r}")
    n_lambda = check_int(n_lambda, "n_lambda", 8)
    n_nodes = check_int(n_nodes, "n_nodes", 2)
    zz = family._z(z)
    lam, wq = sinh_gauss_legendre(n_lambda, lo, hi, lambda_center, lambda_scale)
    wc = sinh_coarse_weights(n_lambda, lo, hi, lambda_center, lambda_scale)
    ends = torch.tensor([lo, hi], dtype=torch.float64)
    weights = {k: log_snr_weight(v, lam) for k, v in losses.items()}
    H, H_err = family.entropy(zz, entropy_nodes)
    d = family.d
    keys = ("b", "be", "m", "me", "x", "tail")
    out: Dict[str, Dict[str, List[float]]] = {k: {key: [] for key in keys} for k in losses}
    for i in range(zz.shape[0]):
        fine = eps_error_curves(family, zz[i], schedule, lam, model=model, n_nodes=n_nodes)
        coarse = eps_error_curves(family, zz[i], schedule, lam, model=model, n_nodes=max(1, n_nodes // 2))
        end = eps_error_curves(family, zz[i], schedule, ends, n_nodes=n_nodes)
        for name, loss in losses.items():
            w = weights[name]
            const = _with_constant(loss)
            off = 0.5 * d * LOG_2PI_E if const else 0.0
            b_f = fine.remainder if const else fine.mmse
            b_c = coarse.remainder if const else coarse.mmse
            val = off + float((wq * w * b_f).sum())
            err = abs(float(((wq - wc) * w * b_f).sum())) + abs(float((wq * w * (b_f - b_c)).sum()))
            out[name]["b"].append(val)
            out[name]["be"].append(err)
            if const:
                # I6 tails of the ELBO integrand f = w (MMSE - d sigmoid):
                # f(lo) softplus(lo) / sigmoid(lo) below, f(hi) softplus(-hi) / sigmoid(-hi) above
                wl = log_snr_weight(loss, ends)
                f = wl * end.remainder
                t_lo = float(f[0]) * float(torch.nn.functional.softplus(ends[0]) / torch.sigmoid(ends[0]))
                t_hi = float(f[1]) * float(torch.nn.functional.softplus(-ends[1]) / torch.sigmoid(-ends[1]))
                out[name]["tail"].append(t_lo + t_hi)
            if fine.model is not None and fine.excess is not None and coarse.model is not None:
                m_f = fine.model - (d * torch.sigmoid(lam) if const else 0.0)
                m_c = coarse.model - (d * torch.sigmoid(lam) if const else 0.0)
                out[name]["m"].append(off + float((wq * w * m_f).sum()))
                out[name]["me"].append(abs(float(((wq - wc) * w * m_f).sum()))
                                       + abs(float((wq * w * (m_f - m_c)).sum())))
                out[name]["x"].append(float((wq * w * fine.excess).sum()))

    def arr(v: List[float]) -> Tensor:
        return torch.tensor(v, dtype=torch.float64)

    has_model = model is not None
    return PerZLosses(
        z=zz.detach().double().cpu(), lambda_range=(lo, hi), entropy=H.double().cpu(),
        entropy_error=H_err.double().cpu(),
        bayes={k: arr(v["b"]) for k, v in out.items()}, bayes_error={k: arr(v["be"]) for k, v in out.items()},
        model={k: arr(v["m"]) for k, v in out.items()} if has_model else None,
        model_error={k: arr(v["me"]) for k, v in out.items()} if has_model else None,
        excess={k: arr(v["x"]) for k, v in out.items()} if has_model else None,
        tail={k: arr(v["tail"]) for k, v in out.items() if v["tail"]},
    )


def elbo_loss_constant(d: int, lambda_range: Tuple[float, float]) -> float:
    """``C`` of I37(a): the ELBO-weighted eps loss without its constant on ``[lo, hi]`` is ``H(z) + C`` up to the tails.

    ``1/2 int_lo^hi MMSE d lambda = H(z) - (d/2) log(2 pi e) + (d/2) int_lo^hi sigmoid(lambda) d lambda - T(z)``
    with ``int_lo^hi sigmoid = softplus(hi) - softplus(lo)`` and ``T(z)`` the part of the I6 integral
    outside the range (docs/math.md I37).
    """
    d = check_int(d, "d", 1)
    lo, hi = (float(v) for v in lambda_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"lambda_range must be finite (lo, hi) with lo < hi, got {lambda_range!r}")

    def softplus(v: float) -> float:
        return max(v, 0.0) + math.log1p(math.exp(-abs(v)))

    return -0.5 * d * LOG_2PI_E + 0.5 * d * (softplus(hi) - softplus(lo))


@dataclass(frozen=True)
class AffineFit:
    """``y ~ intercept + slope x`` by least squares; ``residuals = y - fit``; ``nats = residuals / slope``
    (the error, in units of ``x``, of reading ``x`` off ``y`` through the fit)."""

    intercept: float
    slope: float
    residuals: np.ndarray
    rms: float
    max_abs: float

    @property
    def nats(self) -> np.ndarray:
        """Residuals in units of ``x`` (nats when ``x`` is an NLL)."""
        return self.residuals / self.slope if self.slope != 0 else np.full_like(self.residuals, np.inf)


ArrayLike = Union[Tensor, np.ndarray, Sequence[float]]


def affine_fit(y: ArrayLike, x: ArrayLike) -> AffineFit:
    """Least-squares ``y = a + b x`` over the points (the ``z`` grid), docs/math.md I37.

    Needs at least three points and a non-constant ``x``; raises ``ValueError`` on NaN or inf.
    """
    yy = np.asarray(y.detach().cpu().double().numpy() if isinstance(y, Tensor) else y, dtype=float).ravel()
    xx = np.asarray(x.detach().cpu().double().numpy() if isinstance(x, Tensor) else x, dtype=float).ravel()
    if yy.shape != xx.shape:
        raise ValueError(f"y and x must have the same length, got {yy.size} and {xx.size}")
    if yy.size < 3:
        raise ValueError(f"an affine fit needs at least 3 points, got {yy.size}")
    if not (np.all(np.isfinite(yy)) and np.all(np.isfinite(xx))):
        raise ValueError("y and x must be finite")
    if np.ptp(xx) == 0:
        raise ValueError("x is constant: the slope of an affine fit is undetermined")
    A = np.stack([np.ones_like(xx), xx], axis=1)
    coef, *_ = np.linalg.lstsq(A, yy, rcond=None)
    res = yy - A @ coef
    return AffineFit(float(coef[0]), float(coef[1]), res, float(np.sqrt(np.mean(res**2))), float(np.abs(res).max()))
