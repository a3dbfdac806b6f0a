"""The score-matching regularizer of a generator equals its cross-entropy (Li & Yan 4.2; docs/math.md I38).

By the density formula in log-SNR form (docs/math.md I6), for every ``x``::

    -log q_0(x) = (d/2) log(2 pi e) - 1/2 int [ d sigmoid(lambda) - E_Z||Z - eps_hat(alpha x + sigma Z)||^2 ] d lambda,

with ``eps_hat`` the exact noise prediction of the diffused target.  The generator-dependent part is
a denoising score-matching loss evaluated on generated samples ``x = G(z)`` with the target's own
diffusion scores, so on a quadrature rule ``(lambda_j, w_j)`` in log-SNR

    R(G) = 1/2 sum_j w_j E_{z, Z} ||Z - eps_hat_j(alpha_j G(z) + sigma_j Z)||^2
         = E_z[-log q_0(G(z))] + c,        c = (d/2) (sum_j w_j sigmoid(lambda_j) - log(2 pi e)),

``c`` depending on the dimension and the rule only, not on ``G`` (I38).  Its pathwise gradient in
the generator's parameters is, in expectation, the gradient of the cross-entropy
``E_z[-log q_0(G(z))]``: minimising ``R`` pushes generated samples up the target's log-density.

- :func:`score_regularizer`: ``R`` for a batch of generated samples, differentiable in them, with a
  standard error (:class:`RegularizerEstimate`);
- :func:`cross_entropy`: the exact ``E_G[-log q_0]`` of the same samples (``log_prob`` of the target);
- :class:`CouplingGenerator`: a small affine-coupling generator (2-D noise -> 2-D) whose density
  ``p_G`` is exact, so ``KL(p_G || q) = E_G[log p_G - log q]`` is a plain Monte Carlo mean with an
  honest standard error;
- :func:`mode_coverage`: which mixture components receive a given share of the samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from .. import _quadrature as Q
from .._validation import check_int, check_positive_float, check_seed, model_dtype_device
from ..models import DiffusionModel, check_model, checked
from ..schedules import Schedule
from ..targets import GaussianMixture

Tensor = torch.Tensor

__all__ = [
    "RegularizerEstimate",
    "score_regularizer",
    "regularizer_constant",
    "cross_entropy",
    "CouplingGenerator",
    "mode_coverage",
]

_LOG_2PI_E = math.log(2.0 * math.pi) + 1.0


@dataclass
class RegularizerEstimate:
    """What :func:`score_regularizer` returns.

    Attributes:
        value: scalar tensor, ``R = mean_i per_sample_i`` (differentiable in the samples).
        stderr: standard error of ``value`` as an estimate of ``E_G[-log q_0] + constant`` (over the
            samples: generator and noise randomness together; ``std(per_sample) / sqrt(n)``).
        per_sample: ``(n,)``, ``1/2 sum_j w_j mean_Z ||Z - eps_hat_j||^2`` at each sample (differentiable);
            ``per_sample - constant`` is an unbiased estimate of ``-log q_0(x_i)`` (I38).
        node_means: ``(n, J)`` per-sample, per-node means of the score-matching term (differentiable);
            ``per_sample = 0.5 * node_means @ weights``.
        nodes / weights: ``(J,)`` log-SNR nodes and weights (float64, CPU; the last two are the tail nodes).
        constant: ``c = (d/2)(sum_j w_j sigmoid(lambda_j) - log(2 pi e))`` (nats).
        quadrature_error: ``|R - R_coarse|``, the difference to the coarser companion rule on the same
            values (an estimate of the rule's error, nats).
        nfe: model evaluations per sample.
    """

    value: Tensor
    stderr: float
    per_sample: Tensor
    node_means: Tensor
    nodes: Tensor
    weights: Tensor
    constant: float
    quadrature_error: float
    nfe: int
    extras: Dict[str, Any] = field(default_factory=dict)


def _rule(
    schedule: Schedule, valid: Tuple[float, float], n_nodes: int, lambda_range: Tuple[float, float],
    center: float, scale: float,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Nodes, weights and coarse weights (sinh-Gauss-Legendre plus the two tail nodes, I6) inside the
    schedule's and the model's log-SNR ranges."""
    try:
        lo, hi = float(lambda_range[0]), float(lambda_range[1])
    except (TypeError, IndexError, ValueError) as exc:
        raise TypeError(f"lambda_range must be a pair of floats, got {lambda_range!r}") from exc
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"lambda_range must be finite with lo < hi, got {lambda_range!r}")
    s_lo, s_hi = (float(v) for v in schedule.log_snr_range)
    v_lo, v_hi = valid
    for end_lo, end_hi in ((s_lo, s_hi), (v_lo, v_hi)):
        if math.isfinite(end_lo):
            lo = max(lo, end_lo + 1e-9 * max(1.0, abs(end_lo)))
        if math.isfinite(end_hi):
            hi = min(hi, end_hi - 1e-9 * max(1.0, abs(end_hi)))
    if not lo < hi:
        raise ValueError(
            f"lambda_range {lambda_range} does not overlap the schedule's log-SNR range {(s_lo, s_hi)} and the "
            f"model's valid_log_snr {valid}"
        )
    lam, w = Q.sinh_gauss_legendre(n_nodes, lo, hi, center, scale)
    wc = Q.sinh_coarse_weights(n_nodes, lo, hi, center, scale)
    tn, tw = Q.tail_nodes(lo, hi)
    tails_l = torch.tensor(tn, dtype=torch.float64)
    tails_w = torch.tensor(tw, dtype=torch.float64)
    return torch.cat([lam, tails_l]), torch.cat([w, tails_w]), torch.cat([wc, tails_w])


def regularizer_constant(d: int, nodes: Tensor, weights: Tensor) -> float:
    """``c = (d/2)(sum_j w_j sigmoid(lambda_j) - log(2 pi e))``: ``R(G) - E_G[-log q_0]`` (docs/math.md I38).

    The rule's integral of the Gaussian part ``d sigmoid(lambda)`` of the density formula's integrand (I6)
    and the constant ``-(d/2) log(2 pi e)``; it depends on the dimension and the rule, never on the generator.
    """
    d = check_int(d, "d", 1)
    if nodes.shape != weights.shape or nodes.ndim != 1:
        raise ValueError(
            f"nodes and weights must be 1-d of the same shape, got {tuple(nodes.shape)}, {tuple(weights.shape)}"
        )
    s = float((weights.double() * torch.sigmoid(nodes.double())).sum())
    return 0.5 * d * (s - _LOG_2PI_E)


def score_regularizer(
    model: DiffusionModel,
    x: Tensor,
    *,
    n_nodes: int = 24,
    n_noise: int = 2,
    lambda_range: Tuple[float, float] = (-20.0, 20.0),
    lambda_center: float = 0.0,
    lambda_scale: float = 3.0,
    control_variate: bool = True,
    antithetic: bool = True,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
) -> RegularizerEstimate:
    """The score-matching regularizer ``R(G)`` of generated samples ``x = G(z)`` (docs/math.md I38).

    Implements ``R = 1/n sum_i 1/2 sum_j w_j mean_Z [ ||Z - eps_hat_j(x_ij)||^2 - sigmoid(lambda_j)(||Z||^2 - d) ]``
    with ``x_ij = alpha_j x_i + sigma_j Z`` at the model schedule's time of log-SNR ``lambda_j``; the rule
    ``(lambda_j, w_j)`` is ``n_nodes`` sinh-mapped Gauss-Legendre nodes on ``lambda_range`` (clipped to the
    schedule's range and the model's ``valid_log_snr``, I24) plus the two exact tail nodes of I6.  The
    term ``sigmoid(lambda)(||Z||^2 - d)`` has mean zero for every draw (``E||Z||^2 = d``) and does not depend
    on ``x``: it is the training loss's control variate, which removes the ``d - ||Z||^2`` noise at high
    SNR (``control_variate=False`` leaves it out).  With the exact ``eps_hat`` of the target,
    ``E[per_sample_i] = -log q_0(x_i) + constant`` to the rule's accuracy (I38, from the log-SNR form of the
    density formula, I6), so ``R = E_G[-log q_0] + constant`` and ``grad R`` is an unbiased estimate of
    ``grad E_G[-log q_0]`` (the pathwise derivative through ``x``).  With a trained ``eps_hat`` it is the
    model's continuous-time ELBO (I8) of the samples, up to the same constant.

    Args:
        model: a :class:`~densityformula.models.DiffusionModel` (e.g. ``AnalyticModel(gmm, schedule)``).
        x: ``(n, d)`` generated samples (any floating dtype; cast to the model's dtype, with gradient).
        n_nodes: Gauss-Legendre nodes in log-SNR (>= 8).
        n_noise: noise draws per sample and node (even with ``antithetic``: pairs ``(Z, -Z)``).
        generator / seed: the noise (default ``seed=0``); a CPU generator.
    Returns:
        :class:`RegularizerEstimate`.
    """
    m = check_model(model)
    schedule = m.schedule
    if not isinstance(schedule, Schedule):
        raise TypeError("model.schedule must be a densityformula Schedule")
    cm = checked(m)
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (n, d), got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"x must have shape (n, d) with n >= 2 samples, got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be a real floating tensor, got dtype {x.dtype}")
    if not bool(torch.isfinite(x.detach()).all()):
        raise ValueError("x contains NaN or inf")
    n_nodes = check_int(n_nodes, "n_nodes", 8)
    n_noise = check_int(n_noise, "n_noise", 1)
    if not isinstance(antithetic, bool):
        raise TypeError(f"antithetic must be a bool, got {antithetic!r}")
    if not isinstance(control_variate, bool):
        raise TypeError(f"control_variate must be a bool, got {control_variate!r}")
    if antithetic and n_noise % 2:
        raise ValueError(f"n_noise must be even with antithetic pairs, got {n_noise}")
    center = float(lambda_center)
    if not math.isfinite(center):
        raise ValueError(f"lambda_center must be finite, got {lambda_center!r}")
    scale = check_positive_float(lambda_scale, "lambda_scale")
    if generator is not None and seed is not None:
        raise ValueError("give either generator or seed, not both")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else check_seed(seed))
    elif not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    valid = tuple(float(v) for v in m.valid_log_snr)
    lam, w, wc = _rule(schedule, (valid[0], valid[1]), n_nodes, lambda_range, center, scale)

    dtype, device = model_dtype_device(m)
    if x.device.type != device.type:
        raise ValueError(f"x is on {x.device} but the model is on {device}; move x with x.to({str(device)!r})")
    xm = x.to(dtype)
    n, d = xm.shape
    J = lam.numel()
    t = schedule.t_from_log_snr(lam)
    lam_eff = schedule.log_snr(t)
    a_t = schedule.alpha(t).to(device=device, dtype=dtype)
    s_t = schedule.sigma(t).to(device=device, dtype=dtype)
    if bool((s_t <= 0).any()) or bool((a_t <= 0).any()):
        raise ValueError("lambda nodes must map to times with 0 < sigma and 0 < alpha in the model's schedule")
    half = n_noise // 2 if antithetic else n_noise
    z = torch.randn(n, J, half, d, generator=generator, dtype=torch.float64, device=generator.device)
    if antithetic:
        z = torch.cat([z, -z], 2)
    z = z.to(device=device, dtype=dtype)  # (n, J, m, d)
    xt = a_t[None, :, None, None] * xm[:, None, None, :] + s_t[None, :, None, None] * z
    tt = t.to(device=device)[None, :, None].expand(n, J, n_noise).reshape(-1)
    e = cm.eps(xt.reshape(-1, d), tt).reshape(n, J, n_noise, d)
    sm = ((z - e) ** 2).sum(-1)  # (n, J, m)
    if control_variate:
        sig = torch.sigmoid(lam_eff).to(device=device, dtype=dtype)
        sm = sm - sig[None, :, None] * ((z * z).sum(-1) - d)
    node_means = sm.mean(2)  # (n, J)
    w_dev = w.to(device=device, dtype=dtype)
    per_sample = 0.5 * node_means @ w_dev
    value = per_sample.mean()
    stderr = float(per_sample.detach().double().std(unbiased=True)) / math.sqrt(n)
    nm = node_means.detach().double().mean(0).cpu()
    quad = 0.5 * abs(float(nm @ (w - wc)))
    const = regularizer_constant(d, lam_eff.detach().double().cpu(), w)
    return RegularizerEstimate(
        value=value, stderr=stderr, per_sample=per_sample, node_means=node_means, nodes=lam_eff.detach().double().cpu(),
        weights=w, constant=const, quadrature_error=quad, nfe=J * n_noise,
        extras={"lambda_interval": (float(lam[:-2].min()), float(lam[:-2].max())), "n_noise": n_noise},
    )


def cross_entropy(target: GaussianMixture, x: Tensor) -> Tuple[Tensor, float]:
    """The exact cross-entropy ``E_G[-log q_0] ~ mean_i -log q_0(x_i)`` of samples ``x_i ~ p_G`` (I2 at t = 0).

    Returns ``(value, stderr)``: ``value`` a scalar tensor, differentiable in ``x`` (its gradient is the
    ground truth that the regularizer's gradient estimates, I38), ``stderr = std_i / sqrt(n)`` over the samples.
    """
    if not isinstance(target, GaussianMixture):
        raise TypeError(f"target must be a GaussianMixture, got {type(target).__name__}")
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[0] < 2:
        raise ValueError("x must be a tensor of shape (n, d) with n >= 2")
    nll = -target.log_prob(x.to(target.dtype))
    return nll.mean(), float(nll.detach().std(unbiased=True)) / math.sqrt(x.shape[0])


class _Conditioner(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(1, width), torch.nn.SiLU(), torch.nn.Linear(width, width), torch.nn.SiLU(),
            torch.nn.Linear(width, 2),
        )
        with torch.no_grad():  # start at the identity map
            last = self.net[-1]
            assert isinstance(last, torch.nn.Linear)
            last.weight.mul_(0.1)
            last.bias.zero_()

    def forward(self, v: Tensor) -> Tuple[Tensor, Tensor]:
        out = self.net(v)
        return 2.0 * torch.tanh(out[:, :1] / 2.0), out[:, 1:]  # log-scale bounded in (-2, 2), shift


class CouplingGenerator(torch.nn.Module):
    """A 2-D generator ``x = G(z)``, ``z ~ N(0, I_2)``, with an exact density (affine couplings, Dinh et al. 2017).

    ``n_layers`` affine coupling layers that alternately update one coordinate given the other,
    ``x_b <- x_b exp(s(x_a)) + m(x_a)`` (``s`` bounded in ``(-2, 2)``), followed by an elementwise affine
    map ``x <- x exp(log_scale) + shift``.  The change of variables gives
    ``log p_G(G(z)) = log N(z; 0, I) - sum_layers s - sum log_scale`` exactly.

    Args:
        n_layers: coupling layers (>= 1); width: hidden units of each conditioner MLP (two hidden layers).
        init_scale: the initial elementwise scale (the generator starts as ``N(0, init_scale^2 I)``).
        seed: the parameters' initialisation; dtype / device: of the parameters.
    """

    d = 2

    def __init__(
        self, n_layers: int = 6, width: int = 32, *, init_scale: float = 1.0, seed: int = 0,
        dtype: torch.dtype = torch.float32, device: Any = "cpu",
    ) -> None:
        super().__init__()
        n_layers = check_int(n_layers, "n_layers", 1)
        width = check_int(width, "width", 1)
        init_scale = check_positive_float(init_scale, "init_scale")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(check_seed(seed))
            self.layers = torch.nn.ModuleList([_Conditioner(width) for _ in range(n_layers)])
        self.log_scale = torch.nn.Parameter(torch.full((2,), math.log(init_scale)))
        self.shift = torch.nn.Parameter(torch.zeros(2))
        self.to(device=device, dtype=dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.shift.dtype

    @property
    def device(self) -> torch.device:
        return self.shift.device

    def forward_and_log_det(self, z: Tensor) -> Tuple[Tensor, Tensor]:
        """``(G(z), log |det dG/dz|)`` for ``z`` of shape ``(n, 2)``."""
        if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[1] != 2:
            raise ValueError(f"z must be a tensor of shape (n, 2), got {getattr(z, 'shape', type(z).__name__)}")
        a, b = z[:, :1], z[:, 1:]
        log_det = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for i, layer in enumerate(self.layers):
            if i % 2 == 0:
                s, m = layer(a)
                b = b * torch.exp(s) + m
            else:
                s, m = layer(b)
                a = a * torch.exp(s) + m
            log_det = log_det + s[:, 0]
        x = torch.cat([a, b], 1) * torch.exp(self.log_scale) + self.shift
        return x, log_det + self.log_scale.sum()

    def forward(self, z: Tensor) -> Tensor:
        """``G(z)``."""
        return self.forward_and_log_det(z)[0]

    def sample(self, n: int, *, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        """``(x, log p_G(x))`` for ``n`` samples: ``log p_G(G(z)) = log N(z) - log |det dG/dz|``."""
        n = check_int(n, "n", 1)
        z = torch.randn(n, 2, generator=generator, dtype=self.dtype, device=generator.device if generator else "cpu")
        z = z.to(self.device)
        x, log_det = self.forward_and_log_det(z)
        log_n = -0.5 * (z * z).sum(1) - math.log(2.0 * math.pi)
        return x, log_n - log_det

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p_G(x)`` by inverting the layers (exact change of variables)."""
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"x must be a tensor of shape (n, 2), got {getattr(x, 'shape', type(x).__name__)}")
        y = (x - self.shift) * torch.exp(-self.log_scale)
        a, b = y[:, :1], y[:, 1:]
        log_det = self.log_scale.sum().expand(x.shape[0])
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            if i % 2 == 0:
                s, m = layer(a)
                b = (b - m) * torch.exp(-s)
            else:
                s, m = layer(b)
                a = (a - m) * torch.exp(-s)
            log_det = log_det + s[:, 0]
        z = torch.cat([a, b], 1)
        return -0.5 * (z * z).sum(1) - math.log(2.0 * math.pi) - log_det


def mode_coverage(target: GaussianMixture, x: Tensor, *, min_share: float, radius: float = 3.0) -> Dict[str, Any]:
    """Which components of ``target`` the samples ``x`` cover.

    A sample belongs to component ``k`` when ``k`` has the largest responsibility (I3 at t = 0) and the
    sample lies within ``radius`` of ``mu_k`` in ``S_k``'s Mahalanobis metric (else it is off every mode).
    A component is covered when it holds at least ``min_share`` of the samples.  Returns ``counts``
    ``(K,)``, ``shares``, ``covered`` (bool ``(K,)``), ``coverage`` (fraction of components covered) and
    ``on_mode`` (fraction of samples that belong to some component).
    """
    if not isinstance(target, GaussianMixture):
        raise TypeError(f"target must be a GaussianMixture, got {type(target).__name__}")
    if not (0.0 < float(min_share) <= 1.0):
        raise ValueError(f"min_share must lie in (0, 1], got {min_share!r}")
    radius = check_positive_float(radius, "radius")
    xx = x.detach().to(target.dtype)
    if xx.ndim != 2 or xx.shape[0] == 0:
        raise ValueError(f"x must have shape (n, d) with n >= 1, got {tuple(xx.shape)}")
    k = target.responsibilities(xx).argmax(1)
    covs = target.covs  # (K, d, d)
    diff = xx - target.means[k]
    sol = torch.linalg.solve(covs[k], diff[..., None])[..., 0]
    maha = (diff * sol).sum(1).sqrt()
    on = maha <= radius
    counts = torch.bincount(k[on], minlength=target.K).to(torch.float64)
    shares = counts / xx.shape[0]
    covered = shares >= float(min_share)
    return {
        "counts": counts.cpu(), "shares": shares.cpu(), "covered": covered.cpu(),
        "coverage": float(covered.double().mean()), "on_mode": float(on.double().mean()),
    }
