"""Denoiser families of the central study's nonlinear part (docs/math.md section 12, I29).

- :class:`MixtureDenoiser` / :func:`mixture_family`: time-consistent.  Its denoisers are the exact
  posterior means (I3) of its own Gaussian mixture ``r = sum_i pi_i N(nu_i, diag tau_i^2)`` diffused
  by the schedule, so all steps are the denoisers of one law; parameters: logits, means and
  log-variances (``M`` components, fewer than the target's for a misspecified family).
- :class:`PerStepDenoiser` / :func:`per_step_family` (1-D): time-inconsistent.  Independent
  parameters at every step: ``D_k(x) = A_k x + b_k + sum_j theta_kj phi_j(x / s_k)`` with Gaussian
  bumps ``phi_j`` on ``[-3, 3]`` and ``s_k = sqrt(abar_k v_data + 1 - abar_k)`` the scale of ``x_k``.
- :func:`mlp_family`: a shared-parameter MLP (:class:`densityformula.models.MLPDenoiser`, which
  works on a discrete schedule: the step index is its time, its log-SNR embedding takes
  ``lambda_k``), float64 by default.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn
from torch.types import Device

from .._validation import as_time, check_float_dtype, check_int, check_seed, per_point_time, resolve_device
from ..models import DiffusionModel, MLPDenoiser
from ..schedules import Discrete
from ..targets import GaussianMixture
from ._target import check_target
from .family import Family

Tensor = torch.Tensor

__all__ = ["MixtureDenoiser", "PerStepDenoiser", "PerStepFamily", "mixture_family", "per_step_family", "mlp_family"]


def _check_schedule(schedule: object) -> Discrete:
    if not isinstance(schedule, Discrete):
        raise TypeError(f"schedule must be a densityformula Discrete schedule, got {type(schedule).__name__}")
    return schedule


class MixtureDenoiser(DiffusionModel, nn.Module):
    """The exact denoiser of a diagonal Gaussian mixture ``r``, a learnable one (I2, I3).

    ``D(x_t, t) = sum_i rho_i(x_t) (nu_i + alpha tau_i^2 (x_t - alpha nu_i) / C_i)``,
    ``C_i = alpha^2 tau_i^2 + sigma^2``, ``rho_i`` the posterior responsibilities of the components
    under ``r_t``.  Parameters: ``logits (M,)`` (``pi = softmax``), ``means (M, d)``,
    ``log_vars (M, d)``.  Any time of the schedule (float or per point ``(n,)``).
    """

    def __init__(self, M: int, schedule: Discrete, *, d: int = 1, dtype: torch.dtype = torch.float64,
                 device: Device = None) -> None:
        nn.Module.__init__(self)
        M = check_int(M, "M", 1)
        self.d = check_int(d, "d", 1)
        self.schedule = _check_schedule(schedule)
        check_float_dtype(dtype)
        dev = resolve_device(device)
        self.logits = nn.Parameter(torch.zeros(M, dtype=dtype, device=dev))
        self.means = nn.Parameter(torch.zeros(M, self.d, dtype=dtype, device=dev))
        self.log_vars = nn.Parameter(torch.zeros(M, self.d, dtype=dtype, device=dev))

    @classmethod
    def from_mixture(cls, mixture: GaussianMixture, schedule: Discrete, *, dtype: torch.dtype = torch.float64,
                     device: Device = None) -> MixtureDenoiser:
        """The denoiser of a given mixture with diagonal (or isotropic) covariances."""
        q = check_target(mixture, "mixture")
        if q.cov_type == "full":
            raise ValueError("mixture must have diagonal or isotropic covariances")
        model = cls(q.K, schedule, d=q.d, dtype=dtype, device=device)
        with torch.no_grad():
            model.logits.copy_(q.log_weights.to(model.logits))
            model.means.copy_(q.means.to(model.means))
            model.log_vars.copy_(torch.log(q.eigvals).to(model.log_vars))
        return model

    @property
    def M(self) -> int:
        """Number of components."""
        return int(self.logits.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    @property
    def device(self) -> torch.device:
        return self.means.device

    def mixture(self) -> GaussianMixture:
        """The model's own law ``r`` (detached) as a :class:`GaussianMixture`."""
        with torch.no_grad():
            return GaussianMixture(torch.softmax(self.logits, 0), self.means, torch.exp(self.log_vars),
                                   dtype=self.dtype, device=self.device)

    def denoise(self, x_t: Tensor, t: Any) -> Tensor:
        """``E_r[X_0 | X_t = x_t]`` (I3), differentiable in the parameters."""
        if not isinstance(x_t, Tensor) or x_t.ndim != 2 or x_t.shape[1] != self.d:
            raise ValueError(f"x_t must be a tensor of shape (n, {self.d})")
        tt = per_point_time(as_time(t, "t").to(x_t.device), x_t.shape[0])
        a = self.schedule.alpha(tt).to(x_t.dtype)[:, None, None]  # (n, 1, 1)
        s2 = self.schedule.sigma2(tt).to(x_t.dtype)[:, None, None]
        mu = self.means.to(x_t.dtype)[None]  # (1, M, d)
        v = torch.exp(self.log_vars.to(x_t.dtype))[None]
        C = a**2 * v + s2
        r = x_t[:, None, :] - a * mu
        logr = torch.log_softmax(self.logits.to(x_t.dtype), 0)[None] - 0.5 * (torch.log(C) + r**2 / C).sum(-1)
        rho = torch.softmax(logr, dim=1)  # (n, M)
        post = mu + a * v * r / C
        out: Tensor = (rho[..., None] * post).sum(1)
        return out

    def forward(self, x_t: Tensor, t: Any) -> Tensor:
        """Same as :meth:`denoise`."""
        return self.denoise(x_t, t)

    def extra_repr(self) -> str:
        return f"M={self.M}, d={self.d}, schedule={self.schedule!r}"


class PerStepDenoiser(DiffusionModel, nn.Module):
    """``D_k(x) = A_k x + b_k + sum_j theta_kj phi_j(x / s_k)`` with independent parameters per step (1-D).

    ``phi_j(u) = exp(-(u - c_j)^2 / (2 w^2))``, ``n_basis`` centres ``c_j`` evenly on ``[-3, 3]``,
    ``w`` their spacing; ``s_k = sqrt(abar_k data_var + 1 - abar_k)``.  Initialised at the exact
    denoiser of ``N(0, data_var)`` (``theta = 0``).  Times are integer steps (per point allowed).
    """

    def __init__(self, schedule: Discrete, *, n_basis: int = 6, data_var: float = 1.0,
                 dtype: torch.dtype = torch.float64, device: Device = None) -> None:
        nn.Module.__init__(self)
        self.schedule = _check_schedule(schedule)
        self.d = 1
        self.n_basis = check_int(n_basis, "n_basis", 1)
        if not (isinstance(data_var, (int, float)) and data_var > 0 and math.isfinite(data_var)):
            raise ValueError(f"data_var must be a positive float, got {data_var!r}")
        check_float_dtype(dtype)
        dev = resolve_device(device)
        ab = schedule.alpha_bars
        om = schedule.one_minus_alpha_bars
        scale2 = ab * data_var + om
        self.scale: Tensor
        self.centres: Tensor
        self.register_buffer("scale", torch.sqrt(scale2).to(dtype=dtype, device=dev))
        self.register_buffer("centres", torch.linspace(-3.0, 3.0, self.n_basis, dtype=dtype, device=dev))
        self.width = 6.0 / max(self.n_basis - 1, 1)
        self.A = nn.Parameter((torch.sqrt(ab) * data_var / scale2).to(dtype=dtype, device=dev))
        self.b = nn.Parameter(torch.zeros(schedule.T + 1, dtype=dtype, device=dev))
        self.theta = nn.Parameter(torch.zeros(schedule.T + 1, self.n_basis, dtype=dtype, device=dev))

    @property
    def dtype(self) -> torch.dtype:
        return self.A.dtype

    @property
    def device(self) -> torch.device:
        return self.A.device

    def features(self, x_t: Tensor, k: Tensor) -> Tensor:
        """``phi_j(x / s_k)``, ``(n, n_basis)``."""
        u = x_t[:, 0] / self.scale.to(x_t.dtype)[k]
        out: Tensor = torch.exp(-0.5 * ((u[:, None] - self.centres.to(x_t.dtype)[None]) / self.width) ** 2)
        return out

    def denoise(self, x_t: Tensor, t: Any) -> Tensor:
        """``D_k(x_t)`` at the integer step ``k = t`` (``ValueError`` for a non-integral time)."""
        if not isinstance(x_t, Tensor) or x_t.ndim != 2 or x_t.shape[1] != 1:
            raise ValueError("x_t must be a tensor of shape (n, 1)")
        tt = per_point_time(as_time(t, "t").to(x_t.device), x_t.shape[0])
        self.schedule.check_time(tt, "t")
        k = torch.round(tt)
        if bool((k != tt).any()):
            raise ValueError("t must be an integer step index for a PerStepDenoiser")
        kk = k.long()
        lin = self.A.to(x_t.dtype)[kk] * x_t[:, 0] + self.b.to(x_t.dtype)[kk]
        out = lin + (self.theta.to(x_t.dtype)[kk] * self.features(x_t, kk)).sum(-1)
        return out[:, None]

    def forward(self, x_t: Tensor, t: Any) -> Tensor:
        """Same as :meth:`denoise`."""
        return self.denoise(x_t, t)

    def extra_repr(self) -> str:
        return f"n_basis={self.n_basis}, schedule={self.schedule!r}"


def mixture_family(M: int, schedule: Discrete, *, d: int = 1, init: Optional[GaussianMixture] = None,
                   seed: int = 0, dtype: torch.dtype = torch.float64, device: Device = None) -> Family:
    """A time-consistent family: :class:`MixtureDenoiser` with ``M`` components.

    ``init``: a mixture to start from (its first ``M`` components by weight, renormalised), else
    means drawn from ``N(0, 1)`` with the generator seeded by ``seed``, unit variances, equal weights.
    """
    model = MixtureDenoiser(M, schedule, d=d, dtype=dtype, device=device)
    with torch.no_grad():
        if init is not None:
            q = check_target(init, "init")
            order = torch.argsort(q.weights, descending=True)[:M]
            if order.numel() < M:
                raise ValueError(f"init has {q.K} components, fewer than M = {M}")
            model.logits.copy_(torch.log(q.weights[order] / q.weights[order].sum()).to(model.logits))
            model.means.copy_(q.means[order].to(model.means))
            model.log_vars.copy_(torch.log(q.eigvals[order]).to(model.log_vars))
        else:
            g = torch.Generator().manual_seed(check_seed(seed))
            model.means.copy_(torch.randn(M, d, generator=g, dtype=torch.float64).to(model.means))
    return Family(model, name=f"mixture(M={M})")


class PerStepFamily(Family):
    """:class:`PerStepDenoiser` as a family; its denoising-loss minimiser is closed form (I30's argument):
    every step's term is a least-squares fit, the same for every positive step weight, of
    ``E[x_0 | x_k]`` on the features ``(x, 1, phi_j(x / s_k))`` under ``q_k``, solved on the Gauss--Hermite
    nodes of I27 (``n_nodes``; 1-D targets)."""

    model: PerStepDenoiser

    def __init__(self, model: PerStepDenoiser, *, n_nodes: int = 96) -> None:
        if not isinstance(model, PerStepDenoiser):
            raise TypeError(f"model must be a PerStepDenoiser, got {type(model).__name__}")
        super().__init__(model, parameters=[model.A, model.b, model.theta], name=f"per-step(J={model.n_basis})")
        self.n_nodes = check_int(n_nodes, "n_nodes", 4)

    def closed_form(self, objective: object) -> Optional[Tensor]:
        """The minimiser of an :class:`~densityformula.study.ELBOObjective` or a
        :class:`~densityformula.study.DenoisingObjective` on this family's schedule; ``None`` otherwise."""
        from ..reverse import same_discrete
        from .elbo_objective import ELBOObjective
        from .quadrature import gauss_hermite
        from .weighted import DenoisingObjective

        if isinstance(objective, ELBOObjective):
            if objective.schedule is not None and not same_discrete(objective.schedule, self.schedule):
                return None
        elif isinstance(objective, DenoisingObjective):
            if not same_discrete(objective.loss.schedule, self.schedule):  # type: ignore[attr-defined]
                return None
        else:
            return None
        q = check_target(objective.target)
        if q.d != 1:
            return None
        m = self.model
        sched = self.schedule
        T = sched.T
        with torch.no_grad():
            z, w = gauss_hermite(self.n_nodes)
            pi, mu, s2 = q.weights.double(), q.means[:, 0].double(), q.eigvals[:, 0].double()
            ks = torch.arange(1, T + 1)
            a = torch.sqrt(sched.alpha_bars[1:])[:, None, None]
            om = sched.one_minus_alpha_bars[1:][:, None, None]
            var = a**2 * s2[None, :, None] + om  # (T, K, 1)
            xk = a * mu[None, :, None] + torch.sqrt(var) * z  # (T, K, n)
            post = mu[None, :, None] + a * s2[None, :, None] * (xk - a * mu[None, :, None]) / var
            wt = (pi[None, :, None] * w).expand(T, -1, -1).reshape(T, -1)  # (T, K n)
            x = xk.reshape(T, -1)
            A = m.A.detach().clone().double()
            b = m.b.detach().clone().double()
            th = m.theta.detach().clone().double()
            for k in ks.tolist():
                xx = x[k - 1]
                feats = m.features(xx[:, None].to(m.dtype), torch.full((xx.numel(),), k)).double()
                X = torch.cat([xx[:, None], torch.ones_like(xx)[:, None], feats], 1)
                sw = torch.sqrt(wt[k - 1])[:, None]
                sol = torch.linalg.lstsq(sw * X, sw[:, 0] * post.reshape(T, -1)[k - 1], driver="gelsd").solution
                A[k], b[k], th[k] = sol[0], sol[1], sol[2:]
        return torch.cat([A.reshape(-1), b.reshape(-1), th.reshape(-1)])


def per_step_family(schedule: Discrete, *, n_basis: int = 6, data_var: float = 1.0,
                    dtype: torch.dtype = torch.float64, device: Device = None) -> PerStepFamily:
    """A time-inconsistent family: :class:`PerStepDenoiser` (independent parameters at every step)."""
    return PerStepFamily(PerStepDenoiser(schedule, n_basis=n_basis, data_var=data_var, dtype=dtype, device=device))


def mlp_family(schedule: Discrete, *, width: int = 16, depth: int = 2, d: int = 1, seed: int = 0,
               parameterization: str = "eps", dtype: torch.dtype = torch.float64, device: Device = None,
               **kwargs: Any) -> Family:
    """A shared-parameter family: :class:`~densityformula.models.MLPDenoiser` of the given width and depth
    on the discrete schedule, initialised from ``seed`` (its last layer at zero: ``eps_hat = 0``)."""
    model = MLPDenoiser(d, _check_schedule(schedule), width=width, depth=depth, parameterization=parameterization,
                        seed=check_seed(seed), dtype=dtype, device=device, **kwargs)
    return Family(model, name=f"mlp(width={width}, depth={depth})")
