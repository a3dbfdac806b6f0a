"""Noise processes ``X_t = alpha_t X_0 + sigma_t Z`` (docs/math.md section 1).

Every schedule exposes the same vectorised methods::

    alpha(t) sigma(t) alpha2(t) sigma2(t) snr(t) log_snr(t) t_from_log_snr(lam)
    drift(t)  -- f(t) = d log(alpha_t) / dt
    g2(t)     -- g(t)^2 = d sigma_t^2 / dt - 2 f(t) sigma_t^2
    t_min t_max log_snr_range

``t`` is a Python number, a 0-d tensor or an ``(n,)`` tensor.  All arithmetic is
done in float64 with closed forms chosen so that nothing cancels near the ends
of the time range (for example ``sigma^2 = -expm1(-B)`` rather than
``1 - exp(-B)``); the result is cast back to ``t``'s floating dtype (float64 for
Python numbers) on ``t``'s device.  Where the log-SNR is infinite (LiYan at
``t = 0`` and ``t = 1``) it is returned as ``+inf`` / ``-inf``, never NaN.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Tuple, Union

import numpy.typing as npt
import torch

from ._validation import TimeLike, as_time, check_int, out_dtype

Tensor = torch.Tensor

__all__ = ["Schedule", "LiYan", "VPLinear", "VPCosine", "SubVP", "VE", "Discrete"]


def _finite_float(name: str, value: object) -> float:
    """``value`` as a finite Python float, else ``TypeError`` / ``ValueError`` naming ``name``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a finite float, got {value!r}")
    try:
        out = float(value)
    except OverflowError as exc:
        raise ValueError(f"{name} must be a finite float, got an int too large for a float") from exc
    if not math.isfinite(out):
        raise ValueError(f"{name} must be a finite float, got {value!r}")
    return out


def _log_sigmoid(lam: Tensor) -> Tensor:
    """log(sigmoid(lam)), exact for +-inf."""
    return -torch.logaddexp(torch.zeros_like(lam), -lam)


class Schedule(ABC):
    """A linear Gaussian forward process; subclasses implement the float64 ``_`` methods."""

    t_min: float = 0.0
    t_max: float = 1.0
    #: ``alpha_t^2 + sigma_t^2 = 1`` at every ``t`` (docs/math.md section 1); such a schedule has
    #: ``alpha^2 = sigmoid(lambda)`` and ``sigma^2 = sigmoid(-lambda)`` as functions of log-SNR.
    variance_preserving: bool = False
    #: Where the log-SNR is infinite at an end (LiYan at t = 0 and t = 1, VPCosine at t = 1),
    #: integrators stop at these finite values (``sigma^2 = 1.4e-11`` at 25, ``alpha = 2e-9`` at -40).
    LOG_SNR_CLIP: Tuple[float, float] = (-40.0, 25.0)

    # -- float64 implementations (t already checked, float64) -------------------
    @abstractmethod
    def _alpha2(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _sigma2(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _log_snr(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _t_from_log_snr(self, lam: Tensor) -> Tensor: ...

    @abstractmethod
    def _drift(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _g2(self, t: Tensor) -> Tensor: ...

    def _sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(self._sigma2(t))

    # -- public API --------------------------------------------------------------
    def check_time(self, t: TimeLike, name: str = "t") -> Tensor:
        """``t`` as a float64 tensor, or ``ValueError`` naming ``name`` if outside ``[t_min, t_max]``."""
        tt = as_time(t, name)
        if tt.numel() and (bool((tt < self.t_min).any()) or bool((tt > self.t_max).any())):
            lo, hi = float(tt.min()), float(tt.max())
            raise ValueError(
                f"{name} must lie in [{self.t_min}, {self.t_max}] for {self!r}, got values in [{lo}, {hi}]"
            )
        return tt

    _check = check_time  # private alias kept for subclasses written against the old name

    def _out(self, value: Tensor, t: TimeLike) -> Tensor:
        return value.to(out_dtype(t))

    def alpha(self, t: TimeLike) -> Tensor:
        """Signal scale ``alpha_t`` (docs/math.md section 1 table)."""
        return self._out(torch.sqrt(self._alpha2(self._check(t))), t)

    def sigma(self, t: TimeLike) -> Tensor:
        """Noise scale ``sigma_t`` (docs/math.md section 1 table)."""
        return self._out(self._sigma(self._check(t)), t)

    def alpha2(self, t: TimeLike) -> Tensor:
        """``alpha_t^2`` computed without a square root."""
        return self._out(self._alpha2(self._check(t)), t)

    def sigma2(self, t: TimeLike) -> Tensor:
        """``sigma_t^2`` computed without cancellation near ``t_min``."""
        return self._out(self._sigma2(self._check(t)), t)

    def log_snr(self, t: TimeLike) -> Tensor:
        """``lambda(t) = log(alpha_t^2 / sigma_t^2)``; ``+-inf`` where exact, never NaN."""
        return self._out(self._log_snr(self._check(t)), t)

    def snr(self, t: TimeLike) -> Tensor:
        """``alpha_t^2 / sigma_t^2``."""
        return self._out(torch.exp(self._log_snr(self._check(t))), t)

    def t_from_log_snr(self, lam: TimeLike) -> Tensor:
        """Inverse of :meth:`log_snr`.

        ``lam`` must lie in :attr:`log_snr_range` (values outside it by a relative
        1e-12 from rounding are clamped; anything further raises ``ValueError``).
        """
        ll = as_time(lam, "lam")
        lo, hi = self.log_snr_range
        tol_lo = 1e-12 * max(1.0, abs(lo)) if math.isfinite(lo) else 0.0
        tol_hi = 1e-12 * max(1.0, abs(hi)) if math.isfinite(hi) else 0.0
        if ll.numel() and (bool((ll < lo - tol_lo).any()) or bool((ll > hi + tol_hi).any())):
            raise ValueError(
                f"lam must lie in the log-SNR range [{lo}, {hi}] of {self!r}, "
                f"got values in [{float(ll.min())}, {float(ll.max())}]"
            )
        ll = ll.clamp(lo, hi)
        t = self._t_from_log_snr(ll).clamp(self.t_min, self.t_max)
        return self._out(t, lam)

    def drift(self, t: TimeLike) -> Tensor:
        """``f(t) = d log(alpha_t)/dt`` of the SDE ``dX = f X dt + g dB``."""
        return self._out(self._drift(self._check(t)), t)

    def g2(self, t: TimeLike) -> Tensor:
        """``g(t)^2 = d sigma_t^2/dt - 2 f(t) sigma_t^2``."""
        return self._out(self._g2(self._check(t)), t)

    @property
    def log_snr_range(self) -> Tuple[float, float]:
        """``(lambda(t_max), lambda(t_min))``: the log-SNRs this schedule reaches."""
        ends = torch.tensor([self.t_max, self.t_min], dtype=torch.float64)
        lam = self._log_snr(ends)
        return float(lam[0]), float(lam[1])

    @property
    def finite_log_snr_range(self) -> Tuple[float, float]:
        """:attr:`log_snr_range` with infinite ends replaced by :attr:`LOG_SNR_CLIP`.

        The interval every integrator in log-SNR uses by default for this schedule.
        """
        lo, hi = self.log_snr_range
        clo, chi = self.LOG_SNR_CLIP
        return (lo if math.isfinite(lo) else clo, hi if math.isfinite(hi) else chi)

    def clip_log_snr(self, lam: Tensor) -> Tensor:
        """``lam`` clamped into :attr:`finite_log_snr_range`."""
        lo, hi = self.finite_log_snr_range
        return lam.clamp(lo, hi)

    def one_minus_alpha2(self, t: TimeLike) -> Tensor:
        """``1 - alpha_t^2`` without cancellation (``= sigma_t^2`` for a variance-preserving schedule;
        ``1 - alpha_bar`` in DDPM notation)."""
        tt = self.check_time(t)
        return self._out(-torch.expm1(torch.log(self._alpha2(tt))), t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LiYan(Schedule):
    """``alpha_t^2 = 1 - t``, ``sigma_t^2 = t`` on ``[0, 1]`` (Li & Yan's SDE).

    ``dX = -X / (2(1-t)) dt + dB / sqrt(1-t)``; exactly N(0, I) at ``t = 1``.
    """

    variance_preserving = True

    def _alpha2(self, t: Tensor) -> Tensor:
        return 1.0 - t

    def _sigma2(self, t: Tensor) -> Tensor:
        return t.clone()

    def _log_snr(self, t: Tensor) -> Tensor:
        return torch.log1p(-t) - torch.log(t)

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        return torch.sigmoid(-lam)

    def _drift(self, t: Tensor) -> Tensor:
        return -0.5 / (1.0 - t)

    def _g2(self, t: Tensor) -> Tensor:
        return 1.0 / (1.0 - t)


class _VPFromB(Schedule):
    """VP processes with ``alpha_t^2 = exp(-B(t))``, ``B(t) = int_0^t beta``."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        beta_min, beta_max = _finite_float("beta_min", beta_min), _finite_float("beta_max", beta_max)
        if not 0.0 < beta_min <= beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def _B(self, t: Tensor) -> Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def _beta(self, t: Tensor) -> Tensor:
        return self.beta_min + (self.beta_max - self.beta_min) * t

    def _t_from_B(self, B: Tensor) -> Tensor:
        # root of (beta_max - beta_min)/2 t^2 + beta_min t - B = 0, written without cancellation
        delta = self.beta_max - self.beta_min
        return 2.0 * B / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * delta * B))

    def _alpha2(self, t: Tensor) -> Tensor:
        return torch.exp(-self._B(t))

    def _drift(self, t: Tensor) -> Tensor:
        return -0.5 * self._beta(t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta_min={self.beta_min}, beta_max={self.beta_max})"


class VPLinear(_VPFromB):
    """Song et al.'s VP SDE: ``beta(t) = beta_min + (beta_max - beta_min) t``, ``sigma^2 = 1 - alpha^2``."""

    variance_preserving = True

    def _sigma2(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self._B(t))

    def _log_snr(self, t: Tensor) -> Tensor:
        B = self._B(t)
        return -B - torch.log(-torch.expm1(-B))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        # exp(-B) = sigmoid(lam)  =>  B = -log sigmoid(lam)
        return self._t_from_B(-_log_sigmoid(lam))

    def _g2(self, t: Tensor) -> Tensor:
        return self._beta(t)


class SubVP(_VPFromB):
    """Song et al.'s sub-VP SDE: ``alpha^2 = exp(-B)``, ``sigma = 1 - exp(-B)``."""

    def _sigma(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self._B(t))

    def _sigma2(self, t: Tensor) -> Tensor:
        return self._sigma(t) ** 2

    def _log_snr(self, t: Tensor) -> Tensor:
        B = self._B(t)
        return -B - 2.0 * torch.log(-torch.expm1(-B))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        # exp(-B) / (1 - exp(-B))^2 = exp(lam); the root in (0, 1) in a cancellation-free form
        b = torch.exp(-lam)
        B = torch.log1p(0.5 * (b + torch.sqrt(b * (4.0 + b))))
        return self._t_from_B(B)

    def _g2(self, t: Tensor) -> Tensor:
        return self._beta(t) * (-torch.expm1(-2.0 * self._B(t)))


class VPCosine(Schedule):
    """Nichol & Dhariwal's cosine schedule in continuous time.

    ``alpha_bar(t) = cos^2(theta_t) / cos^2(theta_0)``, ``theta_t = (t + s)/(1 + s) pi/2``.
    ``cos(theta_t)`` is computed as ``sin((1 - t) pi / (2(1+s)))`` so that ``alpha_bar(1) = 0``
    exactly and the log-SNR there is ``-inf``.
    """

    variance_preserving = True

    def __init__(self, s: float = 0.008) -> None:
        s = _finite_float("s", s)
        if not s > 0.0:
            raise ValueError(f"s must be positive, got {s}")
        self.s = float(s)
        self._c = math.pi / (2.0 * (1.0 + self.s))
        self._theta0 = self.s * self._c
        self._cos0 = math.cos(self._theta0)
        self._sin0 = math.sin(self._theta0)

    def _cos_theta(self, t: Tensor) -> Tensor:
        return torch.sin((1.0 - t) * self._c)

    def _alpha2(self, t: Tensor) -> Tensor:
        return (self._cos_theta(t) / self._cos0) ** 2

    def _sigma2(self, t: Tensor) -> Tensor:
        # cos^2 th0 - cos^2 th = sin(th - th0) sin(th + th0)
        theta = (t + self.s) * self._c
        return torch.sin(t * self._c) * torch.sin(theta + self._theta0) / self._cos0**2

    def _log_snr(self, t: Tensor) -> Tensor:
        theta = (t + self.s) * self._c
        return 2.0 * torch.log(self._cos_theta(t)) - torch.log(torch.sin(t * self._c)) - torch.log(
            torch.sin(theta + self._theta0)
        )

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        a = torch.sigmoid(lam)
        b = torch.sigmoid(-lam)
        sin_th = torch.sqrt(b + a * self._sin0**2)
        sqrt_a = torch.sqrt(a)
        sin_d = self._cos0 * b / (sin_th + sqrt_a * self._sin0)
        cos_d = sqrt_a * self._cos0**2 + sin_th * self._sin0
        return torch.atan2(sin_d, cos_d) / self._c

    def _drift(self, t: Tensor) -> Tensor:
        # d/dt log cos(theta) = -tan(theta) * c, tan(theta) = cos((1-t)c) / sin((1-t)c)
        u = (1.0 - t) * self._c
        return -self._c * torch.cos(u) / torch.sin(u)

    def _g2(self, t: Tensor) -> Tensor:
        return -2.0 * self._drift(t)

    def __repr__(self) -> str:
        return f"VPCosine(s={self.s})"


class VE(Schedule):
    """Song et al.'s VE SDE: ``alpha = 1``, ``sigma_t = sigma_min (sigma_max / sigma_min)^t``."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        sigma_min, sigma_max = _finite_float("sigma_min", sigma_min), _finite_float("sigma_max", sigma_max)
        if not 0.0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def _log_sigma(self, t: Tensor) -> Tensor:
        return math.log(self.sigma_min) + t * self._log_ratio

    def _alpha2(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def _sigma(self, t: Tensor) -> Tensor:
        return torch.exp(self._log_sigma(t))

    def _sigma2(self, t: Tensor) -> Tensor:
        return torch.exp(2.0 * self._log_sigma(t))

    def _log_snr(self, t: Tensor) -> Tensor:
        return -2.0 * self._log_sigma(t)

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        return (-0.5 * lam - math.log(self.sigma_min)) / self._log_ratio

    def _drift(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _g2(self, t: Tensor) -> Tensor:
        return 2.0 * self._log_ratio * self._sigma2(t)

    def __repr__(self) -> str:
        return f"VE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class Discrete(Schedule):
    """A DDPM noise schedule ``beta_1..beta_T`` (docs/math.md section 1, last row).

    Time is the step index ``k`` in ``[0, T]``; at integer ``k``,
    ``alpha(k)^2 = alpha_bar_k = prod_{j<=k} (1 - beta_j)``.  Between integers
    ``log alpha_bar`` is interpolated linearly, which makes the schedule a VP SDE with
    piecewise-constant ``beta(t) = -log(1 - beta_k)`` on ``(k-1, k]``; ``drift`` and ``g2``
    refer to that SDE.  Step ``k`` sits at LiYan time ``tau[k] = 1 - alpha_bar_k``.
    """

    variance_preserving = True

    def __init__(self, betas: Union[Tensor, npt.ArrayLike]) -> None:
        from ._validation import as_float_tensor

        b = as_float_tensor(betas, "betas").cpu()
        if b.ndim != 1 or b.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-d sequence, got shape {tuple(b.shape)}")
        if bool((b <= 0).any()) or bool((b >= 1).any()):
            raise ValueError("betas must lie strictly between 0 and 1")
        self.betas: Tensor = b
        self.T: int = int(b.numel())
        self.t_min = 0.0
        self.t_max = float(self.T)
        log_a = torch.log1p(-b)
        self._log_ab = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(log_a, 0)])

    @property
    def log_alpha_bars(self) -> Tensor:
        """``log alpha_bar_k`` for ``k = 0..T`` (``0`` at ``k = 0``), float64, shape ``(T+1,)``."""
        return self._log_ab

    @property
    def one_minus_alpha_bars(self) -> Tensor:
        """``1 - alpha_bar_k`` for ``k = 0..T`` without cancellation; the same array as :attr:`tau`."""
        return -torch.expm1(self._log_ab)

    @property
    def log_snrs(self) -> Tensor:
        """``lambda_k = log(alpha_bar_k / (1 - alpha_bar_k))`` for ``k = 0..T`` (``+inf`` at ``k = 0``)."""
        return self._log_ab - torch.log(self.one_minus_alpha_bars)

    # -- constructors ---------------------------------------------------------------
    @classmethod
    def ddpm_linear(
        cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, scale_with_T: bool = True
    ) -> Discrete:
        """Ho et al.'s linear schedule; betas are scaled by ``1000 / T`` when ``scale_with_T``.

        The scaling keeps ``sum beta`` (hence the continuous-time limit) the same for every ``T``.
        """
        T = check_int(T, "T", 1)
        beta_start, beta_end = _finite_float("beta_start", beta_start), _finite_float("beta_end", beta_end)
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
        scale = 1000.0 / T if scale_with_T else 1.0
        if scale * beta_end >= 1.0:
            raise ValueError(f"T={T} is too small for the scaled linear schedule (beta_end*1000/T >= 1)")
        return cls(torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64))

    @classmethod
    def ddpm_cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Discrete:
        """Nichol & Dhariwal's cosine schedule, ``beta_k = min(1 - abar_k/abar_{k-1}, max_beta)``."""
        T = check_int(T, "T", 1)
        max_beta = _finite_float("max_beta", max_beta)
        if not 0.0 < max_beta < 1.0:
            raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")
        cont = VPCosine(s)
        k = torch.arange(T + 1, dtype=torch.float64) / T
        log_ab = torch.log(cont._alpha2(k))
        betas = -torch.expm1(log_ab[1:] - log_ab[:-1])
        return cls(betas.clamp(max=max_beta))

    # -- per-step arrays ------------------------------------------------------------
    @property
    def alphas(self) -> Tensor:
        """``1 - beta_k``, shape ``(T,)``."""
        return 1.0 - self.betas

    @property
    def alpha_bars(self) -> Tensor:
        """``alpha_bar_k`` for ``k = 0..T`` (``alpha_bar_0 = 1``), shape ``(T+1,)``."""
        return torch.exp(self._log_ab)

    @property
    def tau(self) -> Tensor:
        """LiYan time of each step, ``tau_k = 1 - alpha_bar_k``, shape ``(T+1,)`` (:attr:`one_minus_alpha_bars`)."""
        return self.one_minus_alpha_bars

    # -- continuous interpolation -------------------------------------------------------
    def _interp(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        log_ab = self._log_ab.to(t.device)
        k0 = torch.clamp(torch.floor(t), 0, self.T - 1).long()
        frac = t - k0.to(t.dtype)
        lo, hi = log_ab[k0], log_ab[k0 + 1]
        return lo + frac * (hi - lo), hi - lo

    def _alpha2(self, t: Tensor) -> Tensor:
        return torch.exp(self._interp(t)[0])

    def _sigma2(self, t: Tensor) -> Tensor:
        return -torch.expm1(self._interp(t)[0])

    def _log_snr(self, t: Tensor) -> Tensor:
        la = self._interp(t)[0]
        return la - torch.log(-torch.expm1(la))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        target = _log_sigmoid(lam)  # log alpha_bar, decreasing in t
        neg = -self._log_ab.to(lam.device)  # increasing
        k = torch.searchsorted(neg, (-target).contiguous()).clamp(1, self.T)
        lo, hi = neg[k - 1], neg[k]
        frac = ((-target) - lo) / (hi - lo)
        return (k - 1).to(lam.dtype) + frac.clamp(0.0, 1.0)

    def _drift(self, t: Tensor) -> Tensor:
        return 0.5 * self._interp(t)[1]

    def _g2(self, t: Tensor) -> Tensor:
        return -self._interp(t)[1]

    def __repr__(self) -> str:
        return f"Discrete(T={self.T}, beta_1={float(self.betas[0]):.3g}, beta_T={float(self.betas[-1]):.3g})"
