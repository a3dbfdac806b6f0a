"""Diffusion classifiers: per-class log-likelihood scores from class-conditional diffusion models (docs/math.md I36).

Classes ``c = 1..C`` with priors ``pi_c`` and laws ``q(x | c)``; the Bayes classifier picks
``argmax_c log pi_c + log q(x | c)`` (Li & Yan 2024, section 4.3).  Every class model shares one
schedule; for each test point the same draws ``(lambda_j, Z_jk)`` (common random numbers) are used
for every class, so that the noise of a class contrast is the noise of a difference.

- :func:`shared_draws`: the shared log-SNRs (a proposal in log-SNR or uniform in the schedule's time)
  and noises;
- :func:`noise_errors`: ``||Z - eps_c(alpha x + sigma Z, t)||^2`` for every class, ``(n, C, M, K)``;
- :func:`elbo_scores`: the continuous ELBO of each class model (I8; I36 eq. 1), unbiased for
  ``log q(x | c)`` with the exact denoisers;
- :func:`heuristic_scores`: the diffusion-classifier recipe, minus the unweighted mean error at
  uniformly drawn times (I36 eq. 2) -- not a log-likelihood;
- :func:`formula_scores`: :func:`densityformula.density_formula` per class (I5/I6) with the same seed;
- :func:`exact_scores`: ``log q(x | c)`` of Gaussian-mixture classes (I2);
- :func:`classify`, :func:`margins`, :func:`wilson_interval`, :func:`predicted_disagreements`:
  decisions, class contrasts with their standard errors, and the binomial arithmetic of accuracy and
  agreement.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch

from .._validation import check_int, check_points
from ..formula import density_formula
from ..models import DiffusionModel, check_model, log_snr_interval
from ..schedules import Schedule
from ..targets import GaussianMixture

Tensor = torch.Tensor

__all__ = [
    "Draws", "Scores", "shared_draws", "noise_errors", "elbo_scores", "heuristic_scores", "formula_scores",
    "exact_scores", "classify", "margins", "wilson_interval", "predicted_disagreements", "disagreement_p_value",
    "sample_classes",
    "common_log_snr_range", "PROPOSALS",
]

_LOG_2PI_E = math.log(2.0 * math.pi) + 1.0
#: where draws of log-SNR go by default (clipped further to the models' common valid range, I24)
DEFAULT_LAMBDA_RANGE = (-20.0, 20.0)
#: proposals of :func:`shared_draws`: uniform in log-SNR (the ELBO's own measure) or in the schedule's time
PROPOSALS = ("log_snr", "time")


@dataclass(frozen=True)
class Draws:
    """Draws shared by every class: log-SNRs ``lam`` ``(n, M)``, times ``t`` ``(n, M)`` in the models' schedule,
    importance weights ``weight = 1 / p(lam)`` ``(n, M)`` of the log-SNR integral, noises ``z`` ``(n, M, K, d)``.

    ``proposal`` is ``"log_snr"`` or ``"time"``; ``lambda_range`` the interval the draws cover.
    """

    lam: Tensor
    t: Tensor
    weight: Tensor
    z: Tensor
    proposal: str
    lambda_range: Tuple[float, float]

    @property
    def n_times(self) -> int:
        """``M``: log-SNR (time) nodes per point."""
        return int(self.lam.shape[1])

    @property
    def n_noise(self) -> int:
        """``K``: noise draws per node."""
        return int(self.z.shape[2])


@dataclass(frozen=True)
class Scores:
    """Per-class scores ``value`` ``(n, C)`` and the ``terms`` ``(n, C, N)`` they are the mean of.

    The terms are i.i.d. across their last axis for every point (Monte Carlo draws or independent
    replicates) and shared across classes, so any contrast of classes has the standard error of the
    same contrast of the terms (:func:`margins`).  ``stderr`` ``(n, C)`` is that of each class alone.
    """

    value: Tensor
    stderr: Tensor
    terms: Tensor
    method: str

    @property
    def dof(self) -> int:
        """Degrees of freedom of every standard error (``N - 1``)."""
        return int(self.terms.shape[-1]) - 1


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------
def _check_models(models: object) -> Tuple[Sequence[DiffusionModel], Schedule]:
    if isinstance(models, DiffusionModel) or not isinstance(models, (list, tuple)):
        raise TypeError(
            f"models must be a list or tuple of DiffusionModel (one per class), got {type(models).__name__}")
    if len(models) < 2:
        raise ValueError(f"models must hold at least 2 class models, got {len(models)}")
    ms = [check_model(m, f"models[{i}]") for i, m in enumerate(models)]
    sched = ms[0].schedule
    for i, m in enumerate(ms[1:], 1):
        if type(m.schedule) is not type(sched) or repr(m.schedule) != repr(sched):
            raise ValueError(f"every class model must share one schedule: models[{i}] has {m.schedule!r}, "
                             f"models[0] has {sched!r}")
    return ms, sched


def _check_x(x: object, d: Optional[int] = None) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (n, d), got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (n, d) with n >= 1, got {tuple(x.shape)}")
    return check_points(x, int(x.shape[1]) if d is None else d, x.dtype, x.device, "x")


def _check_generator(generator: object) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


def _check_scores(scores: object, name: str = "scores") -> Tensor:
    v = scores.value if isinstance(scores, Scores) else scores
    if not isinstance(v, Tensor) or v.ndim != 2 or v.shape[1] < 2 or not v.dtype.is_floating_point:
        raise ValueError(f"{name} must be Scores or a floating tensor of shape (n, C) with C >= 2")
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} has non-finite entries")
    return v


def common_log_snr_range(models: Sequence[DiffusionModel],
                         lambda_range: Tuple[float, float] = DEFAULT_LAMBDA_RANGE) -> Tuple[float, float]:
    """``lambda_range`` intersected with every model's valid log-SNR interval (I24) and its schedule's range.

    Raises ``ValueError`` when the intersection is empty.
    """
    ms, _ = _check_models(models)
    try:
        lo, hi = float(lambda_range[0]), float(lambda_range[1])
    except (TypeError, IndexError, ValueError) as exc:
        raise TypeError(f"lambda_range must be a pair of floats, got {lambda_range!r}") from exc
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"lambda_range must be finite with lo < hi, got {lambda_range!r}")
    for m in ms:
        m_lo, m_hi = log_snr_interval(m)
        lo, hi = max(lo, m_lo), min(hi, m_hi)
    if not lo < hi:
        raise ValueError(f"lambda_range {lambda_range} does not overlap the models' common valid log-SNR range")
    return lo, hi


# ------------------------------------------------------------------------------------------------
# shared draws and errors
# ------------------------------------------------------------------------------------------------
def shared_draws(
    models: Sequence[DiffusionModel],
    n: int,
    *,
    n_times: int,
    n_noise: int = 1,
    proposal: str = "log_snr",
    lambda_range: Tuple[float, float] = DEFAULT_LAMBDA_RANGE,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
    device: Any = "cpu",
) -> Draws:
    """``n_times`` i.i.d. log-SNRs per point and ``n_noise`` i.i.d. ``N(0, I_d)`` noises per log-SNR (I36).

    ``proposal="log_snr"``: ``lambda ~ U[lo, hi]``, importance weight ``hi - lo``;
    ``proposal="time"``: ``t ~ U[t(hi), t(lo)]`` in the models' schedule (the diffusion-classifier
    recipe), importance weight ``1 / p(lambda) = (t(lo) - t(hi)) |d lambda/dt| = (t(lo) - t(hi)) g^2/sigma^2``
    (docs/math.md section 1: ``d lambda/dt = -g^2/sigma^2``).  ``[lo, hi]`` is
    :func:`common_log_snr_range` of ``lambda_range``.  The same draws serve every class.
    """
    ms, sched = _check_models(models)
    n = check_int(n, "n", 1)
    n_times = check_int(n_times, "n_times", 1)
    n_noise = check_int(n_noise, "n_noise", 1)
    if proposal not in PROPOSALS:
        raise ValueError(f"proposal must be one of {PROPOSALS}, got {proposal!r}")
    gen = _check_generator(generator)
    d = _model_dim(ms)
    lo, hi = common_log_snr_range(ms, lambda_range)
    u = torch.rand(n, n_times, generator=gen, dtype=torch.float64)
    if proposal == "log_snr":
        lam = lo + (hi - lo) * u
        t = _per_entry(sched.t_from_log_snr, lam)
        weight = torch.full_like(lam, hi - lo)
    else:
        ends = sched.t_from_log_snr(torch.tensor([hi, lo], dtype=torch.float64))
        t_lo, t_hi = float(ends[0]), float(ends[1])
        t = t_lo + (t_hi - t_lo) * u
        lam = _per_entry(sched.log_snr, t).clamp(lo, hi)
        weight = (t_hi - t_lo) * _per_entry(sched.g2, t) / _per_entry(sched.sigma2, t)
    z = torch.randn(n, n_times, n_noise, d, generator=gen, dtype=torch.float64)
    dev = torch.device(device)
    return Draws(lam.to(dev), t.to(dev), weight.to(dev), z.to(device=dev, dtype=dtype), proposal, (lo, hi))


def _per_entry(fn: Any, t: Tensor) -> Tensor:
    """``fn`` (a schedule method of 1-D times) applied to every entry of ``t``, same shape."""
    out: Tensor = fn(t.reshape(-1)).reshape(t.shape)
    return out


def _model_dim(models: Sequence[DiffusionModel]) -> int:
    for m in models:
        for obj in (m, getattr(m, "target", None), getattr(m, "base", None)):
            d = getattr(obj, "d", None)
            if isinstance(d, int):
                return d
    raise ValueError("cannot tell the data dimension from the models (none has an integer attribute d)")


def noise_errors(models: Sequence[DiffusionModel], x: Tensor, draws: Draws, *, chunk: int = 1 << 16) -> Tensor:
    """``E[c, i, j, k] = ||Z_ijk - eps_c(alpha_ij x_i + sigma_ij Z_ijk, t_ij)||^2`` as ``(n, C, M, K)`` (I36).

    ``alpha``, ``sigma`` are those of the models' schedule at the shared times; the model is called on
    ``chunk`` rows at a time, under ``torch.no_grad``.
    """
    ms, sched = _check_models(models)
    if not isinstance(draws, Draws):
        raise TypeError(f"draws must be Draws (from shared_draws), got {type(draws).__name__}")
    n, M, K, d = draws.z.shape
    x = _check_x(x, d)
    if x.shape[0] != n:
        raise ValueError(f"x has {x.shape[0]} points but draws were made for {n}")
    chunk = check_int(chunk, "chunk", 1)
    t = draws.t.to(torch.float64)
    a = _per_entry(sched.alpha, t).to(x)[:, :, None, None]
    s = _per_entry(sched.sigma, t).to(x)[:, :, None, None]
    z = draws.z.to(x)
    xt = (a * x[:, None, None, :] + s * z).reshape(-1, d)
    tt = t[:, :, None].expand(n, M, K).reshape(-1).to(x.device)
    zz = z.reshape(-1, d)
    out = torch.empty(len(ms), xt.shape[0], dtype=x.dtype, device=x.device)
    with torch.no_grad():
        for c, m in enumerate(ms):
            for i in range(0, xt.shape[0], chunk):
                e = m.eps(xt[i:i + chunk], tt[i:i + chunk])
                out[c, i:i + chunk] = ((zz[i:i + chunk] - e.to(x)) ** 2).sum(-1)
    if not bool(torch.isfinite(out).all()):
        raise ValueError("a class model returned non-finite noise predictions")
    return out.reshape(len(ms), n, M, K).permute(1, 0, 2, 3)


def _scores(terms: Tensor, method: str) -> Scores:
    N = terms.shape[-1]
    value = terms.mean(-1)
    se = terms.std(-1, unbiased=True) / math.sqrt(N) if N >= 2 else torch.full_like(value, math.inf)
    return Scores(value, se, terms, method)


def elbo_scores(errors: Tensor, draws: Draws) -> Scores:
    """The continuous ELBO of each class model from shared draws (I8; docs/math.md I36 eq. 1).

    ``ELBO_c(x) = -(d/2) log(2 pi e) + 1/2 int_lo^hi [ d sigmoid(lambda) - E||Z - eps_c(x_lambda)||^2 ] d lambda``
    estimated by ``-(d/2) log(2 pi e) + mean_{j,k} w_j/2 [sigmoid(lambda_j) ||Z_jk||^2 - ||Z_jk - eps_c||^2]``
    with ``w_j = 1/p(lambda_j)`` (the draws' importance weights); ``sigmoid(lambda)(||Z||^2 - d)`` is a
    zero-mean control variate, the same for every class.  With the exact denoiser of class ``c`` the
    expectation is ``log q(x | c)`` minus the tails outside ``[lo, hi]`` (I6 tail laws: of order
    ``e^{lo}`` and ``e^{-hi}``).  The terms are averaged over the noises of one node, so they are i.i.d.
    over the ``M`` nodes.
    """
    if not isinstance(draws, Draws):
        raise TypeError(f"draws must be Draws (from shared_draws), got {type(draws).__name__}")
    n, M, K, d = draws.z.shape
    if not isinstance(errors, Tensor) or errors.ndim != 4 or errors.shape[0] != n or errors.shape[2:] != (M, K):
        raise ValueError(f"errors must have shape (n, C, M, K) = ({n}, C, {M}, {K}), got "
                         f"{tuple(errors.shape) if isinstance(errors, Tensor) else type(errors).__name__}")
    sig = torch.sigmoid(draws.lam).to(errors)[:, None, :, None]
    zz = (draws.z.to(errors) ** 2).sum(-1)[:, None]  # (n, 1, M, K)
    w = draws.weight.to(errors)[:, None, :]
    per_node = (sig * zz - errors).mean(-1)  # (n, C, M)
    terms = -0.5 * d * _LOG_2PI_E + 0.5 * w * per_node
    return _scores(terms, f"elbo ({draws.proposal} proposal)")


def heuristic_scores(errors: Tensor) -> Scores:
    """The diffusion-classifier recipe (I36 eq. 2): ``H_c(x) = -mean_{j,k} ||Z_jk - eps_c(x_{t_j}, t_j)||^2``.

    Meant for draws with ``proposal="time"`` (uniform times, the same noise for every class); no weight,
    no constant: ``argmax_c H_c`` is the recipe's decision.  Its limit is
    ``-int p(lambda) E||Z - eps_c||^2 d lambda`` with the proposal's density ``p``, which is not
    ``log q(x | c)`` up to a class-independent constant unless ``p`` is uniform in log-SNR.
    """
    if not isinstance(errors, Tensor) or errors.ndim != 4:
        raise ValueError("errors must be a tensor of shape (n, C, M, K) (from noise_errors)")
    return _scores(-errors.mean(-1), "heuristic (unweighted)")


def formula_scores(models: Sequence[DiffusionModel], x: Tensor, *, seed: int, **kwargs: Any) -> Scores:
    """``log q(x | c)`` by Li & Yan's density formula (I5/I6) with each class model, the same ``seed`` for all.

    :func:`densityformula.density_formula` per class with ``allocation="uniform"`` (so that every class
    sees the same noise draws, point by point) unless ``kwargs`` say otherwise; the terms are its
    independent replicates (``n_replicates``), shared across classes replicate by replicate.  With a
    trained network this is the network's continuous ELBO (I8).
    """
    ms, _ = _check_models(models)
    x = _check_x(x)
    kwargs.setdefault("allocation", "uniform")
    reps = []
    for m in ms:
        est = density_formula(m, x, seed=seed, **kwargs)
        reps.append(est.extras["replicates"].to(x.dtype))  # (R, n)
    terms = torch.stack(reps, 0).permute(2, 0, 1)  # (n, C, R)
    return _scores(terms, "density formula")


def exact_scores(classes: Sequence[GaussianMixture], x: Tensor) -> Tensor:
    """``log q(x | c)`` ``(n, C)`` of Gaussian-mixture classes, closed form (I2 at ``t = 0``)."""
    if not isinstance(classes, (list, tuple)) or len(classes) < 2:
        raise ValueError("classes must be a list or tuple of at least 2 GaussianMixture")
    for i, g in enumerate(classes):
        if not isinstance(g, GaussianMixture):
            raise TypeError(f"classes[{i}] must be a GaussianMixture, got {type(g).__name__}")
    x = _check_x(x, classes[0].d)
    return torch.stack([g.log_prob(x.to(g.dtype)) for g in classes], 1)


def sample_classes(classes: Sequence[GaussianMixture], prior: Any, n: int, *,
                   generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    """``n`` draws ``(x, y)``: ``y ~ prior``, ``x ~ q(. | y)`` (one draw of the joint mixture of all components)."""
    log_prior = _log_prior(prior, len(classes))
    n = check_int(n, "n", 1)
    _check_generator(generator)
    w = torch.cat([torch.exp(lp + g.log_weights) for lp, g in zip(log_prior, classes)])
    which = torch.cat([torch.full((g.K,), c, dtype=torch.long) for c, g in enumerate(classes)])
    means = torch.cat([g.means for g in classes])
    covs = torch.cat([g.covs for g in classes])
    joint = GaussianMixture(w / w.sum(), means, covs)
    x, comp = joint.sample(n, generator=generator, return_labels=True)
    return x, which[comp]


def _log_prior(prior: Any, C: int) -> Tensor:
    p = torch.as_tensor(prior, dtype=torch.float64)
    if p.shape != (C,):
        raise ValueError(f"prior must have shape ({C},), got {tuple(p.shape)}")
    if not bool(torch.isfinite(p).all()) or bool((p <= 0).any()) or abs(float(p.sum()) - 1.0) > 1e-9:
        raise ValueError("prior must hold positive class probabilities summing to 1")
    return torch.log(p)


# ------------------------------------------------------------------------------------------------
# decisions, contrasts and binomial intervals
# ------------------------------------------------------------------------------------------------
def classify(scores: Any, prior: Any = None) -> Tensor:
    """``argmax_c (log pi_c + score_c)`` ``(n,)`` (I36 eq. 3); ``prior=None``: equal priors.

    Adding ``log pi_c`` is meaningful only for scores in nats (log-likelihoods and their estimates);
    the heuristic's scores are not (docs/math.md I36).
    """
    v = _check_scores(scores)
    if prior is not None:
        v = v + _log_prior(prior, v.shape[1]).to(v)
    return v.argmax(1)


def margins(scores: Scores, a: Tensor, b: Tensor, prior: Any = None) -> Tuple[Tensor, Tensor]:
    """Contrast ``score_a - score_b (+ log pi_a - log pi_b)`` per point and its standard error from the shared terms.

    ``a``, ``b`` are ``(n,)`` class indices (e.g. the Bayes decision and the runner-up).
    """
    if not isinstance(scores, Scores):
        raise TypeError(f"scores must be Scores, got {type(scores).__name__}")
    n, C, N = scores.terms.shape
    a, b = torch.as_tensor(a).long(), torch.as_tensor(b).long()
    if a.shape != (n,) or b.shape != (n,) or bool(((a < 0) | (a >= C) | (b < 0) | (b >= C)).any()):
        raise ValueError(f"a and b must be class indices of shape ({n},) in [0, {C - 1}]")
    dev = scores.terms.device
    idx, a, b = torch.arange(n, device=dev), a.to(dev), b.to(dev)
    diff = scores.terms[idx, a] - scores.terms[idx, b]  # (n, N)
    value = diff.mean(-1)
    if prior is not None:
        lp = _log_prior(prior, C).to(value)
        value = value + lp[a] - lp[b]
    se = diff.std(-1, unbiased=True) / math.sqrt(N) if N >= 2 else torch.full_like(value, math.inf)
    return value, se


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> Tuple[float, float]:
    """Wilson's score interval for a binomial proportion ``k / n`` at normal quantile ``z`` (I36)."""
    k, n = check_int(k, "k", 0), check_int(n, "n", 1)
    if k > n:
        raise ValueError(f"k must be <= n, got k={k}, n={n}")
    if not (isinstance(z, (int, float)) and z > 0 and math.isfinite(z)):
        raise ValueError(f"z must be a positive finite float, got {z!r}")
    p = k / n
    den = 1.0 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def predicted_disagreements(true_margin: Tensor, stderr: Tensor) -> Tuple[float, float]:
    """Expected number of sign flips of unbiased, normal margin estimates, and its standard deviation (I36).

    A point whose exact margin is ``m_i`` and whose estimate has standard error ``s_i`` flips with
    probability ``p_i = Phi(-|m_i| / s_i)``; the count has mean ``sum p_i`` and variance ``sum p_i (1 - p_i)``.
    """
    if not isinstance(true_margin, Tensor) or not isinstance(stderr, Tensor) or true_margin.shape != stderr.shape:
        raise ValueError("true_margin and stderr must be tensors of the same shape")
    if bool((stderr < 0).any()) or not bool(torch.isfinite(true_margin).all()):
        raise ValueError("stderr must be >= 0 and true_margin finite")
    p = _flip_probabilities(true_margin, stderr)
    return float(p.sum()), float(torch.sqrt((p * (1 - p)).sum()))


def _flip_probabilities(true_margin: Tensor, stderr: Tensor) -> Tensor:
    z = true_margin.abs().double() / stderr.double().clamp_min(1e-300)
    return 0.5 * torch.erfc(z / math.sqrt(2.0))


def disagreement_p_value(true_margin: Tensor, stderr: Tensor, observed: int) -> float:
    """``P(D >= observed)`` for ``D`` the number of flips of :func:`predicted_disagreements` (I36).

    ``D`` is a sum of independent Bernoulli(``p_i``) variables (a Poisson-binomial law), computed exactly
    by convolving the points one at a time (points with ``p_i < 1e-15`` are left out).  A small value says
    that the estimates disagree with the exact decisions more often than their own noise explains.
    """
    if not isinstance(true_margin, Tensor) or not isinstance(stderr, Tensor) or true_margin.shape != stderr.shape:
        raise ValueError("true_margin and stderr must be tensors of the same shape")
    if bool((stderr < 0).any()) or not bool(torch.isfinite(true_margin).all()):
        raise ValueError("stderr must be >= 0 and true_margin finite")
    k = check_int(observed, "observed", 0)
    if k == 0:
        return 1.0
    pt = _flip_probabilities(true_margin, stderr).flatten()
    p = pt[pt >= 1e-15].cpu().numpy()
    pmf = np.zeros(k + 1)  # P(D = j) for j < k, and P(D >= k) in the last entry
    pmf[0] = 1.0
    for pi in p:
        top = pmf[k] + pi * pmf[k - 1]
        pmf[1:k] = pmf[1:k] * (1.0 - pi) + pmf[:k - 1] * pi
        pmf[0] *= 1.0 - pi
        pmf[k] = top
    return float(min(1.0, max(0.0, pmf[k])))
