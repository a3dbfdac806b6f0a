"""RL fine-tuning of diffusion samplers toward a reward-tilted target (docs/math.md I45).

A layer-6 module (it imports ``models``, ``schedules``, ``targets``, ``reverse``, ``sampling``):

- per-step Gaussian log-probabilities of a reverse chain ``x_K -> ... -> x_0`` whose steps are the
  kernels of :mod:`densityformula.reverse` (``x_{k-1} = a_k x_k + c_k D_k(x_k) + sqrt(v_k) z``):
  :func:`kernel_log_prob`, :func:`step_log_probs`, differentiable in the model's parameters;
  the chains of DDPM (:func:`densityformula.reverse.ddpm_kernels`) and of DDIM with ``eta > 0``
  (:func:`ddim_kernels`, built with :func:`densityformula.reverse.ddim_step`);
  :func:`sample_chain` draws trajectories, :func:`record_trajectory` records those of the
  library's samplers, :func:`rollout` does both and returns the log-probs;
- the per-step KL between a fine-tuned and a reference kernel, :func:`step_kls` (their sum along
  the fine-tuned trajectory is an unbiased estimate of the path KL, which bounds the KL of the
  outputs);
- the tilt of a Gaussian mixture by a quadratic reward in closed form, :func:`tilt`,
  :class:`QuadraticReward`: ``q exp(r) / Z`` is again a mixture;
- :class:`TiltedModel`, the parametric family ``AnalyticModel(tilt(q, A_theta, b_theta))``, and
  :func:`finetune`: REINFORCE (DDPO-style, per-step log-probs, leave-one-out baseline, reward to
  go) of ``E[r(x_0)] - beta KL``, whose optimum over output laws is ``q exp(r / beta) / Z``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from . import reverse
from ._validation import TimeLike, as_float_tensor, check_int, check_positive_float
from .models import AnalyticModel, DiffusionModel, check_model, checked
from .reverse import ReverseKernels
from .schedules import Discrete
from .targets import GaussianMixture

Tensor = torch.Tensor

__all__ = [
    "ddim_kernels",
    "sample_chain",
    "record_trajectory",
    "kernel_log_prob",
    "step_log_probs",
    "step_kls",
    "Rollout",
    "rollout",
    "QuadraticReward",
    "Tilted",
    "tilt",
    "tilt_reward",
    "TiltedModel",
    "FinetuneResult",
    "finetune",
]

_LOG_2PI = math.log(2.0 * math.pi)
_REDUCTIONS = ("sum", "mean")


# --------------------------------------------------------------------------------------------
# chains and trajectories
# --------------------------------------------------------------------------------------------
def ddim_kernels(model: DiffusionModel, times: Any, eta: float = 1.0, prior_var: Optional[float] = None
                 ) -> ReverseKernels:
    """The DDIM chain of ``model`` on the decreasing grid ``times`` as :class:`ReverseKernels` (I16, I45).

    Step ``k`` (``k = K`` first, from ``times[0]``) is :func:`densityformula.reverse.ddim_step` from
    ``times[K - k]`` to ``times[K - k + 1]``: ``a = sqrt(sigma_s^2 - c2)/sigma_t``,
    ``c = alpha_s - a alpha_t``, ``v = c2 = eta^2 sigma_{t|s}^2 sigma_s^2 / sigma_t^2`` -- exactly
    the steps of :func:`densityformula.sampling.ddim` on that grid (``sampling.time_grid`` or a
    run's ``info.times``).  ``v`` is proportional to ``eta^2``: as ``eta -> 0`` the kernels become
    point masses and their log-densities diverge (docs/math.md I45).  A step onto ``sigma_s = 0``
    has ``v = 0`` for every ``eta`` (deterministic).
    """
    model = check_model(model)
    eta = check_positive_float(eta, "eta", allow_zero=True)
    grid = torch.as_tensor(times, dtype=torch.float64).flatten()
    if grid.numel() < 2 or bool((grid[1:] >= grid[:-1]).any()):
        raise ValueError("times must be a strictly decreasing grid of at least two times (t_max first)")
    coefs = reverse.ddim_step(reverse.step_levels(model.schedule, grid[:-1], grid[1:]), eta)
    # reverse.ReverseKernels index k - 1 for step k, step K the noisy one: flip the grid order
    a, c, var = coefs.a.flip(0), coefs.c.flip(0), coefs.var.flip(0)
    t = grid[:-1].flip(0)
    if prior_var is None:
        t0 = grid[:1]
        prior_var = float(model.schedule.alpha2(t0) + model.schedule.sigma2(t0))
    return ReverseKernels(model, a, c, var, t, torch.ones_like(t), float(prior_var), "ddim")


def _check_kernels(kernels: object) -> ReverseKernels:
    if not isinstance(kernels, ReverseKernels):
        raise TypeError(f"kernels must be densityformula.reverse.ReverseKernels, got {type(kernels).__name__}")
    return kernels


def _check_generator(generator: object) -> Optional[torch.Generator]:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


def _model_d(model: DiffusionModel) -> int:
    d = getattr(model, "d", None)
    if d is None:
        target = getattr(model, "target", None)
        d = getattr(target, "d", None)
    if d is None:
        raise ValueError("the model states no dimension (d or target.d); pass x_T")
    return int(d)


def sample_chain(
    kernels: ReverseKernels,
    n: Optional[int] = None,
    *,
    x_T: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float64,
    device: Union[str, torch.device, None] = None,
) -> Tensor:
    """Trajectories of the chain ``x_K ~ N(0, P I)``, ``x_{k-1} = a_k x_k + c_k D_k(x_k) + sqrt(v_k) z`` (I15, I45).

    This is the sampler whose output density :func:`densityformula.likelihood.sampler_density_1d`
    and whose ELBO :func:`densityformula.elbo.ddpm` describe (for DDPM kernels, decoder noise
    included).  Returns ``states`` ``(K + 1, n, d)``: ``states[j] = x_{K - j}`` (``states[0]`` the
    prior draw, ``states[-1] = x_0``), without an autograd graph.  Noise is drawn only at steps with
    ``v_k > 0``.
    """
    kern = _check_kernels(kernels)
    _check_generator(generator)
    model = checked(kern.model)
    kern_c = ReverseKernels(model, kern.a, kern.c, kern.var, kern.model_t, kern.in_scale, kern.prior_var, kern.kind)
    if x_T is None:
        if n is None:
            raise ValueError("give x_T or n")
        n = check_int(n, "n", 1)
        d = _model_d(kern.model)
        x_T = math.sqrt(kern.prior_var) * torch.randn(n, d, generator=generator, dtype=dtype, device=device)
    elif not isinstance(x_T, Tensor) or x_T.ndim != 2 or x_T.shape[0] == 0:
        raise ValueError("x_T must be a non-empty (n, d) tensor")
    states = [x_T]
    x = x_T
    with torch.no_grad():
        for k in range(kern.K, 0, -1):
            m = kern_c.mean(x, k)
            v = float(kern.var[k - 1])
            if v > 0.0:
                m = m + math.sqrt(v) * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = m
            states.append(x)
    return torch.stack(states)


def record_trajectory(sampler: Callable[..., Any], model: DiffusionModel, x_T: Tensor, **kwargs: Any
                      ) -> Tuple[Tensor, Tensor]:
    """Run a library sampler (``densityformula.sampling.ddpm``, ``ddim``, ...) from ``x_T`` and record
    every state through its ``callback``: returns ``(states (N + 1, n, d), times (N + 1,))`` with
    ``states[0] = x_T`` and ``times`` the grid it ran on (``info.times``), ready for
    :func:`ddim_kernels` (I45)."""
    if not callable(sampler):
        raise TypeError("sampler must be a densityformula.sampling sampler")
    if "callback" in kwargs or "return_info" in kwargs:
        raise ValueError("record_trajectory sets callback and return_info itself")
    xs: List[Tensor] = [x_T]

    def cb(info: Dict[str, Any]) -> None:
        xs.append(info["x"].detach().clone())

    _, info = sampler(model, x_T, callback=cb, return_info=True, **kwargs)
    return torch.stack(xs), info.times


def _check_states(kern: ReverseKernels, states: object) -> Tensor:
    if not isinstance(states, Tensor) or states.ndim != 3:
        got = tuple(states.shape) if isinstance(states, Tensor) else type(states).__name__
        raise ValueError(f"states must be a (K + 1, n, d) tensor, got {got}")
    if states.shape[0] != kern.K + 1:
        raise ValueError(f"states must have K + 1 = {kern.K + 1} rows (one per state x_K..x_0), got {states.shape[0]}")
    if not bool(torch.isfinite(states).all()):
        raise ValueError("states contains NaN or inf")
    return states


def _reduction(reduction: object) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    return str(reduction)


def _denoise_steps(kern: ReverseKernels, ks: Tensor, x: Tensor, model: Optional[DiffusionModel] = None) -> Tensor:
    """``D_k(x)`` for ``x`` ``(m, n, d)`` at steps ``ks`` ``(m,)``, in one model call with per-point times."""
    m, n, d = x.shape
    mdl = checked(kern.model if model is None else model)
    idx = (ks - 1).cpu()
    scale = kern.in_scale[idx].to(device=x.device, dtype=x.dtype)[:, None, None]
    t = kern.model_t[idx].to(x.device)[:, None].expand(m, n).reshape(-1)
    return mdl.denoise((scale * x).reshape(m * n, d), t).reshape(m, n, d)


def kernel_log_prob(
    kernels: ReverseKernels,
    ks: Union[int, Tensor],
    x_from: Tensor,
    x_to: Tensor,
    *,
    reduction: str = "sum",
) -> Tensor:
    """``log p_theta(x_{k-1} | x_k) = log N(x_{k-1}; a_k x_k + c_k D_k(x_k), v_k I)`` (I45).

    ``ks``: a step (``1..K``) or ``(m,)`` steps; ``x_from`` (``x_k``), ``x_to`` (``x_{k-1}``): ``(n, d)``
    for one step or ``(m, n, d)``.  ``reduction="sum"`` (default) sums the ``d`` coordinates'
    log-densities: that is the log-density of the ``d``-dimensional kernel, the quantity whose
    expectation is a KL and whose gradient is the score-function term.  ``"mean"`` divides by ``d``
    (a common bug: it scales the policy gradient by ``1/d`` against the KL penalty and breaks
    ``E[log q - log p] = KL``); offered for comparison only.  Differentiable in the model's
    parameters (and in ``x_from``).  Deterministic steps (``v_k = 0``) have no density: ``ValueError``.
    """
    kern = _check_kernels(kernels)
    red = _reduction(reduction)
    single = isinstance(ks, int)
    kt = torch.as_tensor([ks] if single else ks, dtype=torch.long).flatten()
    if kt.numel() == 0 or bool(((kt < 1) | (kt > kern.K)).any()):
        raise ValueError(f"ks must be steps in 1..{kern.K}")
    if single:
        x_from, x_to = x_from[None], x_to[None]
    if x_from.ndim != 3 or x_from.shape != x_to.shape or x_from.shape[0] != kt.numel():
        raise ValueError("x_from and x_to must both be (n, d) for one step or (m, n, d) for m steps")
    var = kern.var[kt - 1]
    if bool((var <= 0).any()):
        raise ValueError("a deterministic step (v_k = 0) has no density; leave it out (see step_log_probs)")
    D = _denoise_steps(kern, kt, x_from)
    dt, dev = x_from.dtype, x_from.device
    a = kern.a[kt - 1].to(dev, dt)[:, None, None]
    c = kern.c[kt - 1].to(dev, dt)[:, None, None]
    v = var.to(dev, dt)[:, None, None]
    mean = a * x_from + c * D
    lp = -0.5 * ((x_to - mean) ** 2 / v + _LOG_2PI + torch.log(v))
    out = lp.sum(-1) if red == "sum" else lp.mean(-1)
    return out[0] if single else out


def step_log_probs(kernels: ReverseKernels, states: Tensor, *, reduction: str = "sum") -> Tensor:
    """Per-step ``log p_theta(x_{k-1} | x_k)`` of trajectories ``states`` ``(K + 1, n, d)`` (I45).

    Returns ``(n, K)``, column ``k - 1`` for step ``k`` (as ``elbo.ddpm``'s ``terms``); steps with
    ``v_k = 0`` (DDIM's step onto ``sigma = 0``, any step at ``eta = 0``) are deterministic, carry no
    density and are returned as 0 (DDPO leaves them out; no score-function gradient passes them).
    One model call for all stochastic steps; differentiable in the model's parameters.
    """
    kern = _check_kernels(kernels)
    st = _check_states(kern, states)
    K, n = kern.K, st.shape[1]
    ks = torch.arange(K, 0, -1)  # states[j] = x_{K - j}: the step out of row j is K - j
    live = kern.var[ks - 1] > 0
    out = torch.zeros(n, K, dtype=st.dtype, device=st.device)
    if bool(live.any()):
        rows = torch.nonzero(live).flatten()
        lp = kernel_log_prob(kern, ks[rows], st[rows], st[rows + 1], reduction=reduction)  # (m, n)
        cols = (ks[rows] - 1).to(st.device)
        out = out.index_put((torch.arange(n, device=st.device)[:, None], cols[None, :]), lp.T)
    return out


def step_kls(kernels: ReverseKernels, reference: DiffusionModel, states: Tensor, *, reduction: str = "sum") -> Tensor:
    """``KL(p_theta(. | x_k) || p_ref(. | x_k)) = c_k^2 |D_k(x_k) - D^ref_k(x_k)|^2 / (2 v_k)`` (I45).

    The two kernels share ``a_k, c_k, v_k`` (the same chain, ``kernels.model`` against ``reference``),
    so the Gaussian KL is the squared mean difference over twice the variance.  Evaluated at
    ``states[K - k] = x_k`` of trajectories of the fine-tuned chain, ``sum_k`` is an unbiased
    estimate of the path KL ``KL(P_theta || P_ref)``, which bounds ``KL(p_theta,0 || p_ref,0)``
    (data processing).  Returns ``(n, K)`` (column ``k - 1`` for step ``k``), differentiable in the
    fine-tuned model's parameters; ``reference`` is called without a graph.  ``v_k = 0``: ``inf``
    unless the means agree (then 0).
    """
    kern = _check_kernels(kernels)
    reference = check_model(reference, "reference")
    st = _check_states(kern, states)
    red = _reduction(reduction)
    K, d = kern.K, st.shape[2]
    ks = torch.arange(K, 0, -1)
    x = st[:-1]
    D = _denoise_steps(kern, ks, x)
    with torch.no_grad():
        D_ref = _denoise_steps(kern, ks, x, reference)
    c = kern.c[ks - 1].to(st.device, st.dtype)[:, None]
    v = kern.var[ks - 1].to(st.device, st.dtype)[:, None]
    sq = ((D - D_ref) ** 2).sum(-1)
    if red == "mean":
        sq = sq / d
    kl = torch.where(v > 0, c * c * sq / (2.0 * torch.where(v > 0, v, torch.ones_like(v))),
                     torch.where(sq > 0, torch.full_like(sq, math.inf), torch.zeros_like(sq)))  # (K, n)
    return kl.flip(0).T  # rows were steps K..1: column k - 1 for step k


@dataclass
class Rollout:
    """Trajectories and their per-step log-probabilities (I45).

    Attributes:
        states: ``(K + 1, n, d)``, ``states[j] = x_{K - j}`` (no graph).
        log_probs: ``(n, K)``, column ``k - 1``: ``log p_theta(x_{k-1} | x_k)`` (differentiable).
        kernels: the chain.
    """

    states: Tensor
    log_probs: Tensor
    kernels: ReverseKernels

    @property
    def x0(self) -> Tensor:
        """The outputs ``x_0`` ``(n, d)``."""
        return self.states[-1]

    @property
    def log_prob(self) -> Tensor:
        """``log p_theta(x_{0:K-1} | x_K) = sum_k log p_theta(x_{k-1} | x_k)``, ``(n,)``."""
        return self.log_probs.sum(1)


def rollout(
    kernels: ReverseKernels,
    n: int,
    *,
    generator: Optional[torch.Generator] = None,
    reduction: str = "sum",
    dtype: torch.dtype = torch.float64,
    device: Union[str, torch.device, None] = None,
) -> Rollout:
    """Sample ``n`` trajectories of the chain (:func:`sample_chain`) and return them with their
    per-step log-probabilities (:func:`step_log_probs`, differentiable in the model's parameters) (I45)."""
    states = sample_chain(kernels, n, generator=generator, dtype=dtype, device=device)
    return Rollout(states, step_log_probs(kernels, states, reduction=reduction), kernels)


# --------------------------------------------------------------------------------------------
# the reward-tilted target
# --------------------------------------------------------------------------------------------
def _sym(A: Tensor, name: str) -> Tensor:
    scale = float(A.detach().abs().max()) if A.numel() else 0.0
    if scale > 0 and float((A - A.T).detach().abs().max()) > 1e-10 * scale:
        raise ValueError(f"{name} must be symmetric")
    return 0.5 * (A + A.T)


@dataclass(frozen=True)
class QuadraticReward:
    """``r(x) = -1/2 x^T A x + b^T x + c`` (I45).

    ``A``: ``(d, d)`` symmetric, ``b``: ``(d,)``, ``c``: a float.  ``A`` need not be positive
    definite: ``q exp(r)`` is normalizable when every tilted precision ``S_k^-1 + A`` is
    (:func:`tilt` checks it).
    """

    A: Tensor
    b: Tensor
    c: float = 0.0

    def __post_init__(self) -> None:
        A = as_float_tensor(self.A, "A")
        b = as_float_tensor(self.b, "b")
        if A.ndim != 2 or A.shape[0] != A.shape[1] or b.shape != (A.shape[0],):
            raise ValueError(f"A must be (d, d) and b (d,), got {tuple(A.shape)} and {tuple(b.shape)}")
        if not (isinstance(self.c, (int, float)) and math.isfinite(self.c)):
            raise ValueError(f"c must be a finite float, got {self.c!r}")
        object.__setattr__(self, "A", _sym(A, "A"))
        object.__setattr__(self, "b", b)

    @classmethod
    def centered(cls, A: Any, center: Any) -> QuadraticReward:
        """``r(x) = -1/2 (x - center)^T A (x - center)`` (``b = A center``, ``c = -1/2 center^T A center``)."""
        A_t = as_float_tensor(A, "A")
        m = as_float_tensor(center, "center")
        return cls(A_t, A_t @ m, float(-0.5 * m @ A_t @ m))

    @property
    def d(self) -> int:
        return int(self.b.shape[0])

    def __call__(self, x: Tensor) -> Tensor:
        """``r(x)`` for ``x`` ``(n, d)``, returns ``(n,)`` in ``x``'s dtype."""
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"x must be an (n, {self.d}) tensor")
        A, b = self.A.to(x.device, x.dtype), self.b.to(x.device, x.dtype)
        return -0.5 * ((x @ A) * x).sum(-1) + x @ b + self.c

    def scaled(self, s: float) -> QuadraticReward:
        """``s r`` (``r / beta`` with ``s = 1 / beta``)."""
        s = float(s)
        return QuadraticReward(s * self.A, s * self.b, s * self.c)


@dataclass
class Tilted:
    """``q exp(r) / Z`` of a mixture ``q`` (I45): the mixture and ``log Z = log E_q[exp(r)]``."""

    mixture: GaussianMixture
    log_Z: Tensor
    log_Z_components: Tensor = field(repr=False)  # (K,) log int N(x; m_k, S_k) exp(r(x)) dx


def tilt(gmm: GaussianMixture, A: Any, b: Any, *, c: Any = 0.0) -> Tilted:
    """The tilt of a Gaussian mixture by a quadratic reward, in closed form (I45).

    ``q(x) exp(-1/2 x^T A x + b^T x + c) / Z = sum_k w'_k N(x; m'_k, S'_k)`` with

        S'_k^-1 = S_k^-1 + A,   m'_k = S'_k (S_k^-1 m_k + b),
        log Z_k = c + 1/2 (log|S'_k| - log|S_k|) + 1/2 m'_k^T S'_k^-1 m'_k - 1/2 m_k^T S_k^-1 m_k,
        w'_k = w_k Z_k / Z,   Z = sum_k w_k Z_k.

    Differentiable in ``A``, ``b`` (and ``c``).  ``ValueError`` naming ``A`` when a tilted precision
    ``S_k^-1 + A`` is not positive definite (``q exp(r)`` is then not normalizable).
    """
    if not isinstance(gmm, GaussianMixture):
        raise TypeError(f"gmm must be a densityformula.targets.GaussianMixture, got {type(gmm).__name__}")
    d, dt, dev = gmm.d, gmm.dtype, gmm.device
    A_t = as_float_tensor(A, "A", dtype=dt, device=dev)
    b_t = as_float_tensor(b, "b", dtype=dt, device=dev)
    if A_t.ndim == 0 and d == 1:
        A_t = A_t.reshape(1, 1)
    if A_t.shape != (d, d):
        raise ValueError(f"A must have shape (d, d) = ({d}, {d}), got {tuple(A_t.shape)}")
    if b_t.ndim == 0 and d == 1:
        b_t = b_t.reshape(1)
    if b_t.shape != (d,):
        raise ValueError(f"b must have shape (d,) = ({d},), got {tuple(b_t.shape)}")
    c_t = as_float_tensor(c, "c", dtype=dt, device=dev)
    if c_t.numel() != 1:
        raise ValueError("c must be a scalar")
    A_t = _sym(A_t, "A")
    S = gmm.covs  # (K, d, d)
    m = gmm.means
    prec = torch.linalg.inv(S)
    P = prec + A_t[None]
    L, info = torch.linalg.cholesky_ex(P)
    if bool((info > 0).any()):
        k = int(torch.nonzero(info > 0)[0])
        lo = float(torch.linalg.eigvalsh(P[k].detach()).min())
        raise ValueError(
            f"A: the tilted precision S_k^-1 + A of component {k} is not positive definite (smallest "
            f"eigenvalue {lo:.3g}); q exp(r) is not normalizable"
        )
    h = torch.einsum("kij,kj->ki", prec, m) + b_t[None]
    m_new = torch.cholesky_solve(h[..., None], L)[..., 0]
    S_new = torch.cholesky_inverse(L)
    S_new = 0.5 * (S_new + S_new.transpose(1, 2))
    logdet_P = 2.0 * torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(-1)
    logdet_S = torch.log(gmm.eigvals).sum(-1)
    quad_old = torch.einsum("ki,kij,kj->k", m, prec, m)
    log_Zk = c_t.reshape(()) + 0.5 * (-logdet_P - logdet_S + (h * m_new).sum(-1) - quad_old)
    log_w = gmm.log_weights + log_Zk
    log_Z = torch.logsumexp(log_w, 0)
    w_new = torch.exp(log_w - log_Z)
    diagonal = gmm.cov_type in ("iso", "diag") and bool(
        (A_t.detach() - torch.diag(torch.diagonal(A_t.detach()))).abs().max() == 0)
    covs: Tensor = torch.diagonal(S_new, dim1=1, dim2=2) if (diagonal or d == 1) else S_new
    with warnings.catch_warnings():  # the constructor's float() checks of a tensor on the graph
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad", category=UserWarning)
        mixture = GaussianMixture(w_new, m_new, covs, dtype=dt, device=dev)
    return Tilted(mixture, log_Z, log_Zk)


def tilt_reward(gmm: GaussianMixture, reward: QuadraticReward, beta: float = 1.0) -> Tilted:
    """``q exp(r / beta) / Z``: the optimum of ``E_p[r] - beta KL(p || q)`` over laws ``p`` (I45)."""
    if not isinstance(reward, QuadraticReward):
        raise TypeError(f"reward must be a QuadraticReward, got {type(reward).__name__}")
    beta = check_positive_float(beta, "beta")
    r = reward.scaled(1.0 / beta)
    return tilt(gmm, r.A, r.b, c=r.c)


# --------------------------------------------------------------------------------------------
# a parametric family and the policy gradient
# --------------------------------------------------------------------------------------------
class TiltedModel(DiffusionModel, nn.Module):
    """``AnalyticModel(tilt(base, A_theta, b_theta))``: the exact model of the tilted mixture, with
    ``A_theta`` (symmetrized) and ``b_theta`` learnable (I45).

    At ``A_theta = 0, b_theta = 0`` (the initialization) it is the pretrained exact model of
    ``base``; at ``(A / beta, b / beta)`` it is the exact model of the KL-regularized optimum
    ``q exp(r / beta) / Z``, so the family contains the answer.  Parameters are float64.
    """

    def __init__(self, base: GaussianMixture, schedule: Any) -> None:
        nn.Module.__init__(self)
        if not isinstance(base, GaussianMixture):
            raise TypeError(f"base must be a GaussianMixture, got {type(base).__name__}")
        self.base = base
        self.schedule = schedule
        self.A_param = nn.Parameter(torch.zeros(base.d, base.d, dtype=base.dtype, device=base.device))
        self.b_param = nn.Parameter(torch.zeros(base.d, dtype=base.dtype, device=base.device))
        self._cache: Optional[Tuple[Tuple[int, int], AnalyticModel]] = None

    def _param_version(self) -> Tuple[int, int]:
        return (self.A_param._version, self.b_param._version)  # bumped by every in-place update

    @property
    def d(self) -> int:
        return self.base.d

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def A(self) -> Tensor:
        return 0.5 * (self.A_param + self.A_param.T)

    def tilted(self) -> Tilted:
        """The current mixture ``tilt(base, A_theta, b_theta)``."""
        return tilt(self.base, self.A, self.b_param)

    def denoise(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """The posterior mean of the tilted mixture (I3), differentiable in ``A_theta, b_theta``
        (under ``no_grad`` the tilted mixture is cached until the parameters change)."""
        if not torch.is_grad_enabled():
            return self.frozen().denoise(x_t, t)
        return AnalyticModel(self.tilted().mixture, self.schedule).denoise(x_t, t)

    def frozen(self) -> AnalyticModel:
        """The current model as an :class:`AnalyticModel` without a graph."""
        v = self._param_version()
        if self._cache is None or self._cache[0] != v:
            with torch.no_grad():
                self._cache = (v, AnalyticModel(self.tilted().mixture, self.schedule))
        return self._cache[1]


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns: one row per iteration (``iteration``, ``reward`` and its
    standard error, ``path_kl`` (the estimate ``E sum_k KL_k``), ``objective = reward - beta
    path_kl``, ``grad_norm``) and the rows of ``evaluate`` (with their ``iteration``)."""

    history: List[Dict[str, float]]
    evaluations: List[Dict[str, Any]]


def finetune(
    model: DiffusionModel,
    reference: DiffusionModel,
    reward: Callable[[Tensor], Tensor],
    *,
    beta: float,
    schedule: Optional[Discrete] = None,
    variance: str = "beta",
    n: int = 256,
    iterations: int = 100,
    lr: float = 0.05,
    lr_decay: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    evaluate: Optional[Callable[[DiffusionModel, int], Dict[str, Any]]] = None,
    evaluate_every: int = 10,
    reduction: str = "sum",
    dtype: torch.dtype = torch.float64,
    device: Union[str, torch.device, None] = None,
) -> FinetuneResult:
    """Policy-gradient fine-tuning of the DDPM chain of ``model`` toward ``max E[r(x_0)] - beta KL`` (I45).

    Each iteration draws ``n`` trajectories of the chain (:func:`sample_chain`, kernels
    :func:`densityformula.reverse.ddpm_kernels` of ``model`` on ``schedule``), their per-step
    log-probs ``l_k`` (:func:`step_log_probs`) and per-step KLs ``KL_k`` to ``reference``
    (:func:`step_kls`), and ascends the surrogate

        mean_i [ sum_k (G_ik - baseline_k) l_ik ] - beta mean_i sum_k KL_ik,
        G_ik = r(x_0^i) - beta sum_{j < k} KL_ij        (the return after step k's action),

    whose gradient is an unbiased estimate of the gradient of ``J = E[r(x_0)] - beta E sum_k KL_k``
    (the score-function term for the dependence of the trajectory on theta, plus the direct
    gradient of the KL at fixed states); ``baseline_k`` is the leave-one-out mean of ``G_k``, which
    keeps it unbiased.  ``beta = 0`` is reward maximization alone.  Over output laws the optimum
    of ``E_p[r] - beta KL(p || q)`` is ``q exp(r / beta) / Z`` (:func:`tilt_reward`).

    ``evaluate(model, iteration)`` (e.g. the exact 1-D KL to the tilted target) runs at iteration 0,
    every ``evaluate_every`` iterations and after the last one.  Adam with ``lr`` unless
    ``optimizer`` is given; ``lr_decay = tau`` scales the step size by ``1 / (1 + t / tau)`` at
    iteration ``t`` (a Robbins-Monro decay: with a constant step the parameters keep a random walk
    of about ``lr`` around the optimum, set by the gradient noise).  All randomness from ``generator``.
    """
    model = check_model(model)
    reference = check_model(reference, "reference")
    if not isinstance(model, nn.Module) or not list(model.parameters()):
        raise TypeError("model must be a torch.nn.Module DiffusionModel with parameters")
    if not callable(reward):
        raise TypeError("reward must be callable: reward(x (n, d)) -> (n,)")
    beta = check_positive_float(beta, "beta", allow_zero=True)
    n = check_int(n, "n", 2)
    iterations = check_int(iterations, "iterations", 0)
    evaluate_every = check_int(evaluate_every, "evaluate_every", 1)
    lr = check_positive_float(lr, "lr")
    _reduction(reduction)
    _check_generator(generator)
    sched = reverse.default_discrete(model, schedule)
    opt = optimizer if optimizer is not None else torch.optim.Adam(model.parameters(), lr=lr)
    sched_lr: Optional[torch.optim.lr_scheduler.LambdaLR] = None
    if lr_decay is not None:
        tau = check_positive_float(lr_decay, "lr_decay")
        sched_lr = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1.0 + t / tau))
    history: List[Dict[str, float]] = []
    evals: List[Dict[str, Any]] = []
    params = [p for p in model.parameters() if p.requires_grad]

    def run_eval(it: int) -> None:
        if evaluate is not None:
            row = dict(evaluate(model, it))
            row["iteration"] = it
            evals.append(row)

    run_eval(0)
    for it in range(1, iterations + 1):
        kern = reverse.ddpm_kernels(model, sched, variance)
        states = sample_chain(kern, n, generator=generator, dtype=dtype, device=device)
        lp = step_log_probs(kern, states, reduction=reduction)  # (n, K)
        kl = step_kls(kern, reference, states, reduction=reduction) if beta > 0 else torch.zeros_like(lp)
        with torch.no_grad():
            r = reward(states[-1])
            # G_k = r - beta sum_{j<k} KL_j: cumulative sum over columns 0..k-2
            cum = torch.cumsum(kl.detach(), 1) - kl.detach()
            G = r[:, None] - beta * cum
            base = (G.sum(0, keepdim=True) - G) / (n - 1)
            adv = G - base
        surrogate = (adv * lp).sum(1).mean() - beta * kl.sum(1).mean()
        opt.zero_grad()
        torch.autograd.backward(-surrogate)
        gn = math.sqrt(sum(float((p.grad**2).sum()) for p in params if p.grad is not None))
        opt.step()
        if sched_lr is not None:
            sched_lr.step()
        with torch.no_grad():
            path_kl = kl.detach().sum(1)
            history.append({
                "iteration": float(it), "reward": float(r.mean()), "reward_se": float(r.std() / math.sqrt(n)),
                "path_kl": float(path_kl.mean()), "objective": float(r.mean() - beta * path_kl.mean()),
                "grad_norm": gn,
            })
        if it % evaluate_every == 0 or it == iterations:
            run_eval(it)
    return FinetuneResult(history, evals)
