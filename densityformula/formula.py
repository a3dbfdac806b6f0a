"""Li & Yan's score-based density formula (Li & Yan 2024, Theorem 1; docs/math.md I5-I7) as an estimator.

(The module used to be named ``density_formula``, like the function it shadowed; under its
old dotted name it is still importable, while the attribute ``densityformula.density_formula``
is the estimator below.)

Continuous time, written once in log-SNR so that it holds for every schedule (docs/math.md I5/I6)::

    log q_0(x) = -(d/2) log(2 pi e) + 1/2 int_{-inf}^{inf} E_Z[ f(lambda, x, Z) ] d lambda,
    f = d sigmoid(lambda) - ||Z - eps_hat(x_lambda)||^2,        x_lambda = alpha x + sigma Z,

and, with the same integrand, on a DDPM grid (docs/math.md I7; the I7 weights reduce to
``w_k = beta_k / (2 alpha_k (1 - alpha_bar_k))`` times ``d alpha_bar_k - E||Z - eps_hat_k||^2``).

Integrand forms (all exact in expectation for ANY model, by algebra or Stein's lemma):

- ``"eps"``:       ``d sigmoid(lambda) - ||Z - eps_hat||^2`` (one ``model.eps`` call)
- ``"denoiser"``:  ``d sigmoid(lambda) - snr ||x - D||^2``   (one ``model.denoise`` call; best in float32)
- ``"score"``:     ``d sigmoid(lambda) - ||Z + sigma s||^2`` (one ``model.score`` call)
- ``"hyvarinen"``: ``-(sigmoid(-lambda) d + sigma^2 (||s||^2 + 2 div s))`` (bounded; needs a
  divergence: ``model.score_divergence`` when present, else Hutchinson with Rademacher probes)

Here ``alpha, sigma`` are the MODEL's own scales at the time ``t(lambda)`` of its schedule, so
``eps_hat`` and ``sigma s`` are scale-free and VE or sub-VP models work unchanged.

Validity range (docs/math.md I24): the model is evaluated only inside ``model.valid_log_snr``
(the whole line for an analytic model, the trained range for a network).  Beyond it the
integrand is treated exactly as beyond the schedule's range: the tail nodes at the ends of the
evaluated interval carry the exact asymptotic law ``B sigmoid(lambda)`` / ``A sigmoid(-lambda)``.
``extras["log_snr_interval"]`` reports where the model was evaluated.

Accuracy on demand: ``density_formula(..., atol=...)`` runs the same estimator in rounds, point
by point, until ``stderr <= atol`` (or ``max_evals`` is spent; such points are flagged in
``extras["met_target"]`` and warned about), with the lower end of the log-SNR range, the number
of nodes and the budget chosen from the earlier rounds, and the full quadratic control variate
``c . (Z_i Z_j - delta_ij, Z_i)`` (zero mean for every marginally normal draw, exact for a
one-Gaussian posterior) up to d = 3; see :func:`_density_formula_atol`.

See :mod:`densityformula._quadrature` for the estimator: sinh-mapped Gauss-Legendre in
log-SNR, tail nodes for the exact asymptotic ``e^{-|lambda|}`` behaviour beyond the truncation
(reported bound), scrambled Sobol normal draws with a per-point digital shift (antithetic
pairs for pseudo-random noise), a pilot-fitted control variate ``c(||Z||^2 - d)``, Neyman
allocation of draws across nodes and independent replicates for the standard error.

Which variance goes where: for ``lambda -> +inf`` the eps-form integrand is
``-(||Z||^2 - d) + O(e^{-lambda/2})`` (noise of size ``sqrt(2d)`` around a mean that vanishes
like ``e^{-lambda}``); the control variate removes it exactly (fitted ``c -> -1``) and the odd
remainder is integrated by the Sobol points (or cancelled by antithetic pairs).  For
``lambda -> -inf`` the eps-form integrand is deterministic to leading order
(``sigmoid(lambda)(d - ||x - E X_0||^2)``) while the Hyvarinen form carries ``-(||Z||^2 - d)``
noise there (again removed by the control variate, ``c -> -1``).  What is left is the genuinely
random middle, ``|lambda| <~ 5``, where the allocation puts the draws.  Measured (see
``docs/bench_density_formula.md``): ~4e-4 nats at d = 2, ~1.5e-3 at d = 10 and ~1e-2 at d = 100
with 1e5 evaluations per point, error falling like ``N^-0.85`` at d = 2 (plain Monte Carlo:
``N^-0.5``).
"""
from __future__ import annotations

import functools
import math
import time
import warnings
from numbers import Real
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from . import _quadrature as Q
from ._validation import check_int, check_positive_float, check_seed, model_dtype_device
from .estimate import Estimate
from .models import DiffusionModel, ExactDivergence, ModelOutputError, check_model, checked
from .models.checked import CheckedModel
from .schedules import Discrete, Schedule

Tensor = torch.Tensor

__all__ = ["density_formula", "density_formula_discrete", "FORMS"]

FORMS = ("eps", "denoiser", "score", "hyvarinen")
_LOG_2PI_E = math.log(2.0 * math.pi) + 1.0


# ---------------------------------------------------------------------------------------------
# argument checking
# ---------------------------------------------------------------------------------------------


def _check_model(model: object) -> Tuple[DiffusionModel, Schedule]:
    """``(checked(model), model.schedule)``: the model behind the model-call boundary.

    Every output of the returned model is checked for the input's shape, dtype, device and
    finiteness (:func:`densityformula.models.checked`), so a wrong-shaped or NaN output raises
    :class:`~densityformula.models.ModelOutputError` instead of broadcasting into a wrong number.
    """
    m = check_model(model)
    if not isinstance(m.schedule, Schedule):
        raise TypeError("model.schedule must be a densityformula Schedule")
    return checked(m), m.schedule


def _run_noise_sum(caller: str, x: Tensor, **kwargs: Any) -> Q.NoiseSumResult:
    """:func:`~._quadrature.weighted_noise_sum`, with a model-output error put in the caller's terms."""
    try:
        return Q.weighted_noise_sum(**kwargs)
    except ModelOutputError as exc:
        raise ModelOutputError(
            f"{caller}: the model argument returned a bad output: {exc} (x_t is an internal batch of noised "
            f"copies of the points x, shape {tuple(x.shape)})"
        ) from exc


def _valid_range(model: DiffusionModel) -> Tuple[float, float]:
    """``model.valid_log_snr`` as two floats with ``lo < hi`` (I24), else ``ValueError``."""
    try:
        v_lo, v_hi = (float(v) for v in model.valid_log_snr)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"model.valid_log_snr must be a pair of floats, got {model.valid_log_snr!r}") from exc
    if math.isnan(v_lo) or math.isnan(v_hi) or not v_lo < v_hi:
        raise ValueError(f"model.valid_log_snr must be (lo, hi) with lo < hi, got {(v_lo, v_hi)}")
    return v_lo, v_hi


def _inside(lo: float, hi: float) -> Tuple[float, float]:
    """``[lo, hi]`` pulled in by a relative 1e-9 at its finite ends (strictly inside, after rounding)."""
    return (
        lo + 1e-9 * max(1.0, abs(lo)) if math.isfinite(lo) else lo,
        hi - 1e-9 * max(1.0, abs(hi)) if math.isfinite(hi) else hi,
    )


def _check_x(x: object, model: Optional[DiffusionModel] = None) -> Tensor:
    """``x`` if it is a finite, non-empty real floating ``(n, ...)`` tensor on the model's device."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (n, d) or (n, ...), got {type(x).__name__}")
    if x.is_complex() or not x.dtype.is_floating_point:
        raise TypeError(f"x must be a real floating tensor, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"x must have shape (n, d) or (n, ...), got {tuple(x.shape)}")
    if x.device.type == "meta":
        raise ValueError("x is on the meta device (it holds no values); put it on the model's device")
    if x.shape[0] == 0:
        raise ValueError(f"x must contain at least one point (got an empty batch of shape {tuple(x.shape)})")
    if x.numel() == 0:
        raise ValueError(f"x must have at least one coordinate per point, got shape {tuple(x.shape)}")
    if model is not None:
        _, m_device = model_dtype_device(model.inner if isinstance(model, CheckedModel) else model)
        if m_device.type != x.device.type:
            raise ValueError(f"x is on {x.device} but the model is on {m_device}; move x with x.to({str(m_device)!r})")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf")
    return x


def _make_generator(generator: Optional[torch.Generator], seed: Optional[int]) -> torch.Generator:
    if generator is not None and seed is not None:
        raise ValueError("give either generator or seed, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    return torch.Generator().manual_seed(0 if seed is None else check_seed(seed, "seed"))


def _chunk_rows(chunk_size: Optional[int], memory_budget: int, d: int) -> int:
    if chunk_size is not None:
        return check_int(chunk_size, "chunk_size", 1)
    check_int(memory_budget, "memory_budget", 1)
    # ~16 float64 row-sized temporaries alive per row (x_t, z, outputs, model internals)
    return max(64, memory_budget // (16 * 8 * max(d, 1)))


# ---------------------------------------------------------------------------------------------
# the integrand
# ---------------------------------------------------------------------------------------------
def _make_integrand(
    model: DiffusionModel,
    x: Tensor,
    lam: Tensor,
    form: str,
    *,
    n_probes: int,
    divergence: str,
    generator: torch.Generator,
) -> Tuple[Callable[[Tensor, Tensor, Tensor], Tensor], Tensor, int, Optional[str]]:
    """The per-row integrand ``f(lambda_j, x_i, Z)`` (docs/math.md I6) at the model's own times.

    Returns ``(f, lam_eff, evals_per_row, divergence_used)``; ``lam_eff`` is the log-SNR the model's schedule
    actually realises at ``t(lambda)`` (equal to ``lam`` up to rounding, inside its range).
    """
    schedule = model.schedule
    device = x.device
    lam64 = lam.to(dtype=torch.float64, device=device)
    t = schedule.t_from_log_snr(lam64)  # float64; clamped into [t_min, t_max] by the schedule
    lam_eff = schedule.log_snr(t)
    a_t = schedule.alpha(t)
    s_t = schedule.sigma(t)
    if not bool(torch.isfinite(lam_eff).all()) or bool((s_t <= 0).any()) or bool((a_t <= 0).any()):
        raise ValueError("lambda nodes must map to times with 0 < sigma and 0 < alpha in the model's schedule")
    a2_vp = torch.sigmoid(lam_eff)
    s2_vp = torch.sigmoid(-lam_eff)
    snr = torch.exp(lam_eff)
    d = x[0].numel()
    dims = tuple(range(1, x.ndim))
    xdt = x.dtype
    # the optional exact divergence (I4): typed capability, see DiffusionModel
    exact: Optional[ExactDivergence] = model if isinstance(model, ExactDivergence) else None
    div_used: Optional[str] = None
    if form == "hyvarinen":
        div_used = divergence
        if div_used == "auto":
            div_used = "exact" if exact is not None else "hutchinson"
        if div_used == "exact" and exact is None:
            raise ValueError("divergence='exact' needs model.score_divergence; use 'hutchinson'")
        if div_used not in ("exact", "hutchinson"):
            raise ValueError(f"divergence must be 'auto', 'exact' or 'hutchinson', got {divergence!r}")
        evals = 2 if div_used == "exact" else 1 + n_probes
    else:
        evals = 1

    def rows(v: Tensor, idx: Tensor) -> Tensor:
        return v[idx].reshape((-1,) + (1,) * (x.ndim - 1))

    def f(node_idx: Tensor, point_idx: Tensor, z: Tensor) -> Tensor:
        with torch.no_grad():
            return _f(node_idx, point_idx, z).detach()

    def _f(node_idx: Tensor, point_idx: Tensor, z: Tensor) -> Tensor:
        x0 = x[point_idx]
        at, st = rows(a_t, node_idx), rows(s_t, node_idx)
        x_t = (at * x0.double() + st * z).to(xdt)
        tt = t[node_idx]
        base = d * a2_vp[node_idx]
        if form == "eps":
            e = model.eps(x_t, tt).double()
            return base - ((z - e) ** 2).sum(dims)
        if form == "denoiser":
            D = model.denoise(x_t, tt).double()
            return base - snr[node_idx] * ((x0.double() - D) ** 2).sum(dims)
        if form == "score":
            s = model.score(x_t, tt).double()
            return base - ((z + st * s) ** 2).sum(dims)
        # Hyvarinen form: -(sigma_vp^2 d + sigma_t^2 (||s||^2 + 2 div s))
        if exact is not None and div_used == "exact":
            s = model.score(x_t, tt).double()
            div = exact.score_divergence(x_t, tt).double()
        else:
            with torch.enable_grad():
                xg = x_t.detach().requires_grad_(True)
                sg = model.score(xg, tt)
                acc = torch.zeros(x_t.shape[0], dtype=torch.float64, device=device)
                for p in range(n_probes):
                    v = (torch.randint(0, 2, x_t.shape, generator=generator, device=generator.device) * 2 - 1).to(
                        device=device, dtype=sg.dtype
                    )
                    (jv,) = torch.autograd.grad(sg, xg, grad_outputs=v, retain_graph=p < n_probes - 1)
                    jv = jv.detach()
                    acc = acc + (jv * v).double().sum(dims)
                div = acc / n_probes
                s = sg.detach().double()
        s2 = s_t[node_idx] ** 2
        return -(s2_vp[node_idx] * d + s2 * ((s * s).sum(dims) + 2.0 * div))

    return f, lam_eff, evals, div_used


def _resolve_antithetic(antithetic: Optional[bool], noise: str) -> bool:
    # Antithetic pairs help pseudo-random noise but break the net structure of Sobol points
    # (measured: 2-3x larger error at d = 2 and 10 with Sobol), so the default depends on noise.
    if antithetic is None:
        return noise == "random"
    if not isinstance(antithetic, bool):
        raise TypeError(f"antithetic must be a bool or None, got {antithetic!r}")
    return antithetic


def _resolve_control_variate(control_variate: object) -> Tuple[bool, str]:
    """``(on, features)`` of :func:`~._quadrature.weighted_noise_sum` from ``True``/``False``/``"quadratic"``."""
    if isinstance(control_variate, bool):
        return control_variate, "norm"
    if isinstance(control_variate, str):
        if control_variate == "quadratic":
            return True, "quadratic"
        raise ValueError(f"control_variate must be True, False or 'quadratic', got {control_variate!r}")
    raise TypeError(f"control_variate must be a bool or 'quadratic', got {type(control_variate).__name__}")


def _replicate_summary(reps: Tensor) -> Tuple[Tensor, Tensor]:
    R = reps.shape[0]
    value = reps.mean(0)
    se = reps.std(0, unbiased=True) / math.sqrt(R) if R > 1 else torch.full_like(value, float("inf"))
    return value, se


def _pairs_per_replicate(
    n_noise: Optional[int], budget: Optional[int], J: int, R: int, pilot_pairs: int, k: int, evals: int
) -> int:
    if budget is not None:
        check_int(budget, "budget", 1)
        if n_noise is not None:
            raise ValueError("give either n_noise or budget, not both")
        main = budget // evals - J * pilot_pairs * k
        pairs = main // (k * R)
        if pairs < J:
            raise ValueError(
                f"budget={budget} is too small: the pilot and one antithetic pair per node and replicate "
                f"need {evals * (J * pilot_pairs * k + J * k * R)} evaluations; lower n_nodes/n_replicates/n_pilot"
            )
        return pairs
    n_noise = 32 if n_noise is None else check_int(n_noise, "n_noise", 1)
    return max(J, (n_noise * J) // k)


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
#: fewer Gauss-Legendre nodes cannot resolve the integrand's structure at |lambda| <~ 5, and the
#: coarser companion rule (half the nodes) that estimates their error then resolves nothing either
_MIN_NODES = 8
_DECAY_TOLERANCE = 2.0  # observed/expected decay across the last unit of log-SNR; 1 for an exact score
_TAIL_FLOOR = 1e-6  # nats: a non-decaying tail smaller than this is not flagged (below any reported accuracy)
#: one-sided tail of the discrete formula's error_bound: that of 3 normal standard errors, P(|N(0,1)| > 3) / 2
_BOUND_TAIL = 0.5 * math.erfc(3.0 / math.sqrt(2.0))


@functools.cache
def _bound_quantile(n_replicates: int) -> float:
    """The Student-t quantile (``n_replicates - 1`` dof) with upper tail ``_BOUND_TAIL``: 3 stderr's level."""
    from scipy.special import stdtrit

    return float(stdtrit(n_replicates - 1, 1.0 - _BOUND_TAIL))


def _richardson_bound(reps: Tensor, diffs: Tensor) -> Tuple[Tensor, Tensor, Tensor, float]:
    """The discretization part of the discrete formula's ``error_bound`` (docs/math.md I7), per point.

    ``reps`` ``(R, n)``: the replicates of ``v_T``; ``diffs`` ``(2, R, n)``: those of
    ``D1 = v_T - v_{T/2}`` and ``D2 = v_{T/2} - v_{T/4}`` (the same draws, so each replicate
    holds one joint draw of all three).  With ``err_T ~ C T^-p`` the ratio ``r = D2 / D1`` is
    ``2^p`` and ``v_T + c1 D1`` (``c1 = 1/(r - 1)``) and ``v_T + c2 D2`` (``c2 = c1 / r``) are
    Richardson extrapolations to ``T = inf``; by the triangle inequality
    ``|v_T - log q_0| <= c_k |D_k| + |v_T + c_k D_k - log q_0|``, and the last term is the Monte
    Carlo error of the extrapolated value (its own stderr from the replicates, at the t-quantile
    ``q`` of ``_BOUND_TAIL``) where the model holds.  ``r`` is the observed ratio
    ``(|D2| - se(D2)) / (|D1| + se(D1))`` (lowered by one standard error of each difference)
    clipped to ``[2^(1/4), 2]`` where both differences exceed ``q`` of their standard errors;
    elsewhere the ratio is noise and first order, ``r = 2``, is assumed.  The larger of the two
    bounds is taken (``D1`` can be small by chance where ``D2`` is not).

    Returns ``(bound, estimate, r, q)``: ``bound = max_k (c_k |D_k| + q stderr(v_T + c_k D_k))``,
    ``estimate = max_k c_k |D_k|`` (the Richardson estimate of the error, without its noise).
    """
    R = reps.shape[0]
    q = _bound_quantile(R)
    D = diffs.mean(1)  # (2, n)
    sD = diffs.std(1, unbiased=True) / math.sqrt(R)
    resolved = (D.abs() > q * sD).all(0)
    # the observed ratio, lowered by one standard error of each difference (a smaller r is the safe side)
    observed = ((D[1].abs() - sD[1]).clamp_min(0.0) / (D[0].abs() + sD[0]).clamp_min(1e-300)).clamp(2.0**0.25, 2.0)
    r = torch.where(resolved, observed, torch.full_like(observed, 2.0))
    c1 = 1.0 / (r - 1.0)
    c = torch.stack([c1, c1 / r])  # (2, n)
    ext = reps[None] + c[:, None, :] * diffs  # (2, R, n): the extrapolated values, replicate by replicate
    parts = c * D.abs()
    bounds = parts + q * ext.std(1, unbiased=True) / math.sqrt(R)
    return bounds.max(0).values, parts.max(0).values, r, q


def _tail_decay_ratios(lam: Tensor, node_means: Tensor, lo: float, hi: float) -> Tuple[Tensor, Tensor]:
    """Observed over expected decay of the integrand from ~1 unit inside each end to the end.

    For an exact score the integrand behaves like ``B sigmoid(lambda)`` at the lower end and
    ``A sigmoid(-lambda)`` at the upper end (the assumption of :func:`~._quadrature.tail_nodes`),
    so the ratio is about 1; a non-decaying integrand gives about ``e`` or more.  ``(lower, upper)``,
    each ``(n,)``; NaN-free (0 where the inner node estimate is exactly 0).
    """
    J = lam.numel()
    inner = lam[: J - 2]
    out = []
    for end, pick, sign in ((lo, inner >= lo + 1.0, 1.0), (hi, inner <= hi - 1.0, -1.0)):
        idx = torch.nonzero(pick).flatten()
        col = J - 2 if sign > 0 else J - 1
        if idx.numel() == 0:
            out.append(torch.zeros(node_means.shape[0], dtype=node_means.dtype, device=node_means.device))
            continue
        a = int(idx.min()) if sign > 0 else int(idx.max())
        expected = torch.sigmoid(torch.tensor(sign * end, dtype=torch.float64)) / torch.sigmoid(
            torch.tensor(sign * float(inner[a]), dtype=torch.float64)
        )
        f_in, f_end = node_means[:, a], node_means[:, col]
        safe = torch.where(f_in != 0, f_in, torch.ones_like(f_in))
        ratio = torch.where(f_in != 0, f_end / safe, torch.zeros_like(f_in))
        out.append(ratio / expected.to(ratio.device))
    return out[0], out[1]


def density_formula(
    model: DiffusionModel,
    x: Tensor,
    *,
    form: str = "eps",
    n_nodes: int = 64,
    n_noise: Optional[int] = None,
    budget: Optional[int] = None,
    n_replicates: int = 32,
    n_pilot: int = 16,
    lambda_range: Optional[Tuple[float, float]] = None,
    lambda_center: float = 0.0,
    lambda_scale: float = 3.0,
    tails: bool = True,
    noise: str = "sobol",
    antithetic: Optional[bool] = None,
    control_variate: Union[bool, str] = True,
    allocation: str = "neyman",
    divergence: str = "auto",
    n_probes: int = 1,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    chunk_size: Optional[int] = None,
    memory_budget: int = 1 << 30,
    progress: bool = False,
    atol: Optional[float] = None,
    max_evals: int = 1_000_000,
    proposal: Union[None, str, Tuple[float, float]] = "auto",
    cross_fit: Optional[bool] = None,
) -> Estimate:
    """``log q_0(x)`` of the model's data law by the score-based density formula (docs/math.md I5, I6).

    Implements, for every schedule through its log-SNR ``lambda``,
    ``log q_0(x) = -(d/2) log(2 pi e) + 1/2 int [d sigmoid(lambda) - E||Z - eps_hat(x_lambda)||^2] d lambda``
    (I6, log-SNR form; I5 is the LiYan-time version), with the integrand in the chosen ``form``
    (``"eps"``, ``"denoiser"``, ``"score"`` or ``"hyvarinen"``; all exact in expectation for any
    model with ``denoise``).  With a model's denoiser in place of the true one the same number
    is the continuous-time ELBO of docs/math.md I8.

    Estimator: ``n_nodes`` Gauss-Legendre nodes in ``u`` with
    ``lambda = lambda_center + lambda_scale sinh(u)`` on ``lambda_range`` (default ``(-25, 25)``
    for float64 ``x``, ``(-15, 15)`` for lower precision, clipped to what the schedule reaches
    and to the model's ``valid_log_snr`` (I24), so that a network is never evaluated outside the
    range it was trained on; ``extras["log_snr_interval"]`` is the interval actually used);
    beyond it the asymptotic tails ``B sigmoid(lambda)`` / ``A sigmoid(-lambda)`` are integrated
    exactly from one node at each end and added to the value (``tails=True``; with ``False`` they
    are estimated but left out) and their size is reported in ``extras["truncation_bound"]`` as
    a conservative bound on the truncation error (it covers it whenever the extrapolated tail
    is within 100% of the true one; for Gaussian targets it is within 5%, see the tests).
    Quadrature error in ``lambda``: the same node means integrated by the coarser companion rule
    (the interpolatory rule on every other node, :func:`~._quadrature.sinh_coarse_weights`) give
    a second value; their difference is ``extras["quadrature_error"]`` ``(n,)``, an estimate of
    the ``n_nodes`` rule's error that is conservative where the rule converges (it is the coarse
    rule's error; with the default 64 nodes it is at the Monte Carlo noise level;
    ``extras["quadrature_error_se"]`` is the Monte Carlo standard error of the difference, from
    the replicates).  ``n_nodes`` must be at least 8.
    ``extras["error_bound"] = truncation_bound + quadrature_error + 3 stderr``.
    Noise: ``noise="sobol"`` (scrambled Sobol through the normal inverse CDF, with an independent
    digital shift per point so that different points have uncorrelated errors) or ``"random"``;
    antithetic pairs ``(Z, -Z)`` (default: only with ``"random"``; they break Sobol's nets);
    control variate ``c(||Z||^2 - d)`` fitted per point and node on an independent pilot of
    ``n_pilot`` draws per node (``control_variate="quadratic"``: every ``Z_i Z_j - delta_ij`` and
    ``Z_i`` instead, fitted by least squares, which removes the whole noise wherever the posterior
    is one Gaussian; it needs ``n_pilot >= d (d + 3) / 2 + 2``); Neyman allocation of the remaining draws across nodes;
    ``n_replicates`` independent replicates, each exactly unbiased; ``stderr`` is their standard
    error (with the default 32 replicates ``value +- 1.96 stderr`` is a ~94% interval, Student
    t with 31 degrees of freedom; ``extras["replicates"]`` holds the replicate values).
    The estimator runs under ``torch.no_grad`` (except the Hutchinson probes) and is not
    differentiable with respect to model parameters.

    Args:
        model: a :class:`~densityformula.models.DiffusionModel` (``eps``/``score`` are used by those
            forms; the Hyvarinen form uses ``score_divergence`` when the model has one, i.e.
            ``model.has_exact_divergence``).
        x: points ``(n, d)`` (or ``(n, ...)``, flattened inside), on the model's device.
        n_noise: average noise draws per node per replicate (default 32); or give ``budget``,
            the total model evaluations per point (pilot included).
        divergence, n_probes: Hyvarinen form only: ``"auto"``/``"exact"``/``"hutchinson"`` and
            the number of Rademacher probes per draw (averaged).
        generator / seed: the randomness (default ``seed=0``).
        chunk_size: rows per model call; default from ``memory_budget`` bytes.
        atol: accuracy on demand (nats): spend evaluations per point until its standard error
            and its quadrature-error estimate are both at most ``atol`` (see
            :func:`_density_formula_atol`; incompatible with ``n_noise``/``budget``).  ``None``
            (default): one run with the fixed budget above, unchanged.
        max_evals: with ``atol``, the most model evaluations to spend on one point (all rounds
            together); points that do not reach ``atol`` within it are flagged in
            ``extras["met_target"]`` and named in a ``RuntimeWarning``.
        proposal: importance sampling of the noise (docs/math.md I35): ``(tau, gamma)`` draws every
            coordinate as ``h(Z)`` with ``N(0, tau^2)`` tails and weights it exactly
            (:func:`~._quadrature.tail_transform`); needs ``control_variate="quadratic"``.  ``"auto"``
            (default): none for a fixed budget (unchanged), ``(3, 1)`` with ``atol`` up to d = 3.
        cross_fit: fit the quadratic control variate of each replicate on the pilot and all other
            replicates' draws (docs/math.md I35; still exactly unbiased).  ``None`` (default): only
            with ``atol`` (and the quadratic control variate).

    Returns:
        :class:`Estimate` with ``value`` (nats), ``stderr``, ``nfe`` (model evaluations per
        point: one per denoiser call, two for score + exact divergence, ``1 + n_probes`` with
        Hutchinson), ``extras``: ``truncation_bound`` ``(n,)``, ``quadrature_error`` ``(n,)``,
        ``error_bound`` ``(n,)``, ``tail_lower``/``tail_upper``
        ``(n,)`` (tail contributions included in ``value``), ``lambda_range`` and
        ``log_snr_interval`` (both the evaluated interval ``(lo, hi)``), ``t_min``/``t_max`` (the
        model's times at ``hi``/``lo``), ``valid_log_snr``, ``nodes``, ``weights``, ``node_means``
        ``(n, J)``, ``allocation``, ``replicates`` ``(R, n)``, ``form``.
    """
    if atol is not None:
        return _density_formula_atol(
            model, x, atol=atol, max_evals=max_evals, n_noise=n_noise, budget=budget, generator=generator, seed=seed,
            form=form, n_nodes=n_nodes, n_replicates=n_replicates, n_pilot=n_pilot, lambda_range=lambda_range,
            lambda_center=lambda_center, lambda_scale=lambda_scale, tails=tails, noise=noise, antithetic=antithetic,
            control_variate=control_variate, allocation=allocation, divergence=divergence, n_probes=n_probes,
            chunk_size=chunk_size, memory_budget=memory_budget, progress=progress, proposal=proposal,
            cross_fit=cross_fit,
        )
    check_int(max_evals, "max_evals", 1)
    if cross_fit is not None and not isinstance(cross_fit, bool):
        raise TypeError(f"cross_fit must be None or a bool, got {cross_fit!r}")
    # without atol, "auto" is no importance sampling (the fixed-budget estimator is unchanged)
    proposal = None if isinstance(proposal, str) and proposal == "auto" else Q.check_proposal(proposal)
    t0 = time.perf_counter()
    model, schedule = _check_model(model)
    x = _check_x(x, model)
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    n_nodes = check_int(n_nodes, "n_nodes", _MIN_NODES)
    n_replicates = check_int(n_replicates, "n_replicates", 2)
    n_pilot = check_int(n_pilot, "n_pilot", 0)
    n_probes = check_int(n_probes, "n_probes", 1)
    budget = None if budget is None else check_int(budget, "budget", 1)
    memory_budget = check_int(memory_budget, "memory_budget", 1)
    if isinstance(lambda_center, bool) or not isinstance(lambda_center, Real):
        raise TypeError(f"lambda_center must be a real number, got {type(lambda_center).__name__}")
    if not math.isfinite(float(lambda_center)):
        raise ValueError(f"lambda_center must be finite, got {lambda_center!r}")
    lambda_scale = check_positive_float(lambda_scale, "lambda_scale")
    if noise not in ("sobol", "random"):
        raise ValueError(f"noise must be 'sobol' or 'random', got {noise!r}")
    gen = _make_generator(generator, seed)
    n, d = x.shape[0], x[0].numel()
    antithetic = _resolve_antithetic(antithetic, noise)
    k = 2 if antithetic else 1
    if antithetic and n_pilot % 2:
        raise ValueError(f"n_pilot must be even with antithetic pairs, got {n_pilot}")
    pilot_pairs = n_pilot // k
    if 0 < pilot_pairs < 2:
        raise ValueError(f"n_pilot must give at least 2 draws (pairs) per node, got {n_pilot}")

    s_lo, s_hi = schedule.log_snr_range
    if lambda_range is None:
        lambda_range = (-25.0, 25.0) if x.dtype == torch.float64 else (-15.0, 15.0)
    try:
        lo, hi = float(lambda_range[0]), float(lambda_range[1])
    except (TypeError, IndexError, ValueError) as exc:
        raise TypeError(f"lambda_range must be a pair of floats, got {lambda_range!r}") from exc
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"lambda_range must be finite with lo < hi, got {lambda_range!r}")
    # what the schedule reaches, pulled in by a relative 1e-9 so that sigma > 0 and alpha > 0
    lo = max(lo, s_lo + 1e-9 * max(1.0, abs(s_lo)) if math.isfinite(s_lo) else lo)
    hi = min(hi, s_hi - 1e-9 * max(1.0, abs(s_hi)) if math.isfinite(s_hi) else hi)
    if not lo < hi:
        raise ValueError(f"lambda_range {lambda_range} does not overlap the schedule's log-SNR range {(s_lo, s_hi)}")
    # where the model is valid (I24), pulled in the same way: beyond it the tail nodes take over
    v_lo, v_hi = _valid_range(model)
    in_lo, in_hi = _inside(v_lo, v_hi)
    lo, hi = max(lo, in_lo), min(hi, in_hi)
    if not lo < hi:
        raise ValueError(
            f"lambda_range {lambda_range} within the schedule's log-SNR range {(s_lo, s_hi)} does not overlap "
            f"the model's valid_log_snr {(v_lo, v_hi)}"
        )

    lam, w = Q.sinh_gauss_legendre(n_nodes, lo, hi, float(lambda_center), float(lambda_scale))
    # the coarser companion rule on every other node (same values): their difference estimates
    # the quadrature error of the n_nodes rule
    w_coarse = Q.sinh_coarse_weights(n_nodes, lo, hi, float(lambda_center), float(lambda_scale))
    # the two tail nodes are always evaluated (lower then upper end, both finite here): with
    # tails=False they are left out of the value but still measure the truncation error
    tn, tw = Q.tail_nodes(lo, hi)
    lam = torch.cat([lam, torch.tensor(tn, dtype=torch.float64)])
    w = torch.cat([w, torch.tensor(tw, dtype=torch.float64)])
    J = lam.numel()
    f, lam_eff, evals, div_used = _make_integrand(
        model, x, lam, form, n_probes=n_probes, divergence=divergence, generator=gen
    )
    cv_on, cv_features = _resolve_control_variate(control_variate)
    if proposal is not None and not (cv_on and cv_features == "quadratic"):
        raise ValueError("proposal (importance sampling of the noise) needs control_variate='quadratic'")
    pairs = _pairs_per_replicate(n_noise, budget, J, n_replicates, pilot_pairs, k, evals)
    weights = 0.5 * w
    # fine minus coarse companion rule on the finite-range nodes (the tail nodes are exact for their law)
    dw = 0.5 * (w - torch.cat([w_coarse, torch.zeros(J - n_nodes, dtype=torch.float64)]))
    dw[n_nodes:] = 0.0
    res = _run_noise_sum(
        "density_formula", x, f=f, n=n, shape=tuple(x.shape[1:]), weights=weights, pairs_per_replicate=pairs,
        n_replicates=n_replicates,
        pilot_pairs=pilot_pairs, noise=noise, antithetic=antithetic, control_variate=cv_on,
        allocation=allocation, generator=gen, device=x.device, chunk_size=_chunk_rows(chunk_size, memory_budget, d),
        memory_budget=memory_budget,
        progress=progress, extra_weights=dw[None], cv_features=cv_features, proposal=proposal,
        cross_fit=bool(cross_fit) and cv_on and cv_features == "quadratic",
    )
    const = -0.5 * d * _LOG_2PI_E
    wdev = weights.to(x.device)
    tail_lower = wdev[J - 2] * res.node_means[:, J - 2]
    tail_upper = wdev[J - 1] * res.node_means[:, J - 1]
    reps = const + res.replicates
    if not tails:
        reps = reps - (tail_lower + tail_upper)
    value, se = _replicate_summary(reps)
    bound = tail_lower.abs() + tail_upper.abs()
    decay = _tail_decay_ratios(lam_eff.detach().cpu(), res.node_means, lo, hi)
    # the extrapolation assumes the integrand decays like sigmoid(+-lambda) beyond the range, as it
    # does for an exact score; a network whose eps_hat does not vanish at high SNR (or whose
    # denoiser is off at low SNR) breaks that, and its continuous ELBO may even diverge. Where the
    # integrand visibly fails to decay across the last unit of log-SNR, no bound can be claimed.
    undecayed = torch.zeros(n, dtype=torch.bool, device=x.device)
    # standard error of each tail node's mean (pilot spread over all its draws; conservative under Sobol)
    draws = (res.allocation.to(torch.float64) * k * n_replicates).clamp_min(1.0)
    node_se = (res.pilot_sd.to(torch.float64) / torch.sqrt(draws)).to(x.device)
    for ratio, col, tail in zip(decay, (J - 2, J - 1), (tail_lower, tail_upper)):
        # the pilot spread is an average over points, so demand a wide margin for any one point
        significant = (res.node_means[:, col].abs() > 8.0 * node_se[col]) & (tail.abs() > _TAIL_FLOOR)
        undecayed |= (ratio > _DECAY_TOLERANCE) & significant
    if bool(undecayed.any()):
        bound = torch.where(undecayed, torch.full_like(bound, math.inf), bound)
    # quadrature error in lambda: the n_nodes rule against its coarser companion on the same node
    # means (a sum over the finite-range nodes only; the tail nodes are exact for their law)
    dwd = dw.to(x.device)
    quad_error = (res.node_means[:, :n_nodes] * dwd[:n_nodes]).sum(1).abs()
    # its Monte Carlo standard error, from the same replicates (the difference is as noisy as they are)
    if res.extra_replicates is not None:
        quad_se = res.extra_replicates[0].std(0, unbiased=True) / math.sqrt(n_replicates)
    else:  # pragma: no cover - extra_weights always given above
        quad_se = torch.full_like(quad_error, math.inf)
    # with tails=False the value is the integral over lambda_range alone, as asked: nothing was
    # extrapolated, so only truncation_bound (inf there) says the whole-line integral is unknown
    if bool(undecayed.any()) and tails:
        warnings.warn(
            f"density_formula: at {int(undecayed.sum())} of {n} points the integrand does not decay like "
            f"e^(-|lambda|) beyond lambda_range {(lo, hi)} (typical of a network whose eps_hat does not "
            "vanish at high SNR): the tail extrapolation is unreliable, truncation_bound is inf there, and "
            "the model's continuous ELBO over the whole log-SNR line may diverge. Compare values only on a "
            "common finite lambda_range with tails=False.",
            RuntimeWarning,
            stacklevel=2,
        )
    extras: Dict[str, Any] = {
        "truncation_bound": bound,
        "quadrature_error": quad_error.to(x.dtype),
        "quadrature_error_se": quad_se.to(x.dtype),
        "error_bound": (bound + quad_error + 3.0 * se).to(x.dtype),
        "tail_decay_ratio": decay,
        "tail_lower": tail_lower,
        "tail_upper": tail_upper,
        "lambda_range": (lo, hi),
        "log_snr_interval": (lo, hi),
        "t_min": float(schedule.t_from_log_snr(hi)),
        "t_max": float(schedule.t_from_log_snr(lo)),
        "valid_log_snr": (v_lo, v_hi),
        "tails_included": bool(tails),
        "schedule_log_snr_range": (s_lo, s_hi),
        "form": form,
        "divergence": div_used,
        "nodes": lam_eff.detach().cpu(),
        "weights": weights,
        "node_means": res.node_means,
        "allocation": res.allocation,
        "replicates": reps,
        "n_replicates": n_replicates,
        "cv_coef": res.cv_coef,
        "pilot_sd": res.pilot_sd,
    }
    out_dtype = x.dtype
    return Estimate(
        value=value.to(out_dtype), stderr=se.to(out_dtype), nfe=res.evals_per_point * evals,
        seconds=time.perf_counter() - t0, extras=extras,
    )


# ---------------------------------------------------------------------------------------------
# accuracy on demand
# ---------------------------------------------------------------------------------------------
_ATOL_MARGIN = 0.85  # aim each round's stderr at this fraction of atol (the stderr is itself an estimate)
_ATOL_MAX_NODES = 512
_ATOL_NODES = 128  # the fewest nodes of the rounds after the first
_ATOL_MAX_ROUNDS = 16
_ATOL_QUADRATIC_MAX_D = 3  # up to this dimension atol mode uses control_variate="quadratic"
#: the importance proposal of atol mode, (tau, gamma) of _quadrature.tail_transform: N(0, 3^2) tails beyond |z| ~ 1
_ATOL_PROPOSAL = (3.0, 1.0)
_ATOL_GROWTH = 4.0  # largest factor between a point's budgets in consecutive rounds
_ATOL_GUARD = 1.0  # the previous run's stderr scaled to the last budget must be within this multiple of atol
_ATOL_PILOT = 4096  # evaluations per point of the first round (at least twice its minimum)
#: range trimming: nodes whose summed |weight| (|mean| + sd) beyond the kept range is below this fraction of atol
_ATOL_TRIM = 0.01


def _budget_tier(b: float) -> int:
    """``b`` rounded up onto the grid ``1024 * 2^(j/4)`` (groups points with similar needs into one call)."""
    if b <= 1024:
        return 1024
    j = math.ceil(4.0 * math.log2(b / 1024.0) - 1e-9)
    return int(math.ceil(1024.0 * 2.0 ** (j / 4.0)))


def _trimmed_range(est: Estimate, atol: float, lo: float, hi: float) -> Tuple[float, float]:
    """The log-SNR range ``[lo', hi]``, ``lo' >= lo``, below which the first round's integrand is negligible.

    Per finite-range node ``j`` the size ``c_j = |w_j| (max_i |m_ij| + sd_j)`` (``m_ij`` the node
    means over the points, ``sd_j`` the pilot spread); ``lo'`` is one unit of log-SNR below the
    lowest node such that the nodes below it sum to at most ``_ATOL_TRIM atol`` (the upper end is
    kept: trimmed there, the extrapolated tail missed the share of narrow components).
    Beyond it the tail nodes carry the exact asymptotic law (I6 tails), as beyond any range.
    """
    lam = est.extras["nodes"][:-2].to(torch.float64)
    w = est.extras["weights"][:-2].to(torch.float64)
    m = est.extras["node_means"][:, :-2].abs().max(0).values.cpu().to(torch.float64)
    c = w.abs() * (m + est.extras["pilot_sd"][:-2].cpu().to(torch.float64))
    order = torch.argsort(lam)
    lam, c = lam[order], c[order]
    cut = _ATOL_TRIM * atol
    below = torch.cumsum(c, 0) <= cut  # nodes at the low end that can go
    above = torch.flip(torch.cumsum(torch.flip(c, [0]), 0), [0]) <= cut
    keep = torch.nonzero(~(below | above)).flatten()
    if keep.numel() == 0:
        return lo, hi
    new_lo = max(lo, float(lam[int(keep.min())]) - 1.0)
    # the upper end stays: cut there, the tail law A sigmoid(-lambda) extrapolated from a trimmed end
    # missed narrow components' share (measured: 95% intervals at 0.66 with lambda_range (-25, 15))
    new_hi = hi
    return (new_lo, new_hi) if new_lo < new_hi else (lo, hi)


def _density_formula_atol(
    model: DiffusionModel,
    x: Tensor,
    *,
    atol: object,
    max_evals: object,
    n_noise: Optional[int],
    budget: Optional[int],
    generator: Optional[torch.Generator],
    seed: Optional[int],
    n_nodes: int,
    n_replicates: int,
    n_pilot: int,
    lambda_range: Optional[Tuple[float, float]],
    proposal: Union[None, str, Tuple[float, float]] = "auto",
    cross_fit: Optional[bool] = None,
    **common: Any,
) -> Estimate:
    """:func:`density_formula` with accuracy on demand: rounds of independent runs until ``stderr <= atol``.

    The estimate is the one of I6 (``log q_0(x) = -(d/2) log(2 pi e) + 1/2 int [d sigmoid(lambda) -
    E||Z - eps_hat||^2] d lambda``), computed by the fixed-budget estimator of
    :func:`density_formula`; what adapts to the model is how much is spent and where:

    1. a first round on every point at ``max(4096, 2 x the minimum of one run)`` evaluations
       (about 6,300 at d = 2 with the defaults) with the given nodes and map;
    2. the lower end of the log-SNR range is raised to where that round's integrand is not negligible
       (:func:`_trimmed_range`: the excluded nodes sum to at most ``atol / 100``; beyond it the
       tail nodes carry the exact asymptotic law, I6 tails), so the nodes go where it has structure;
    3. every point that has not met the target is run again, independently, with the budget
       that the ``N^-p`` law predicts from its last run, ``N (se / (0.85 atol))^(1/p)`` (``p = 1/2``: an upper
       estimate: the quasi-Monte Carlo error falls faster; from the second extra round on, the rate
       ``se ~ N^-p`` is fitted from the point's last two runs, ``p`` in ``[1/2, 1]``), at most
       4x its last budget per round (all that is left when the prediction exceeds it), with at
       least 128 nodes, and with twice the nodes where its quadrature-error estimate (fine against
       coarse rule) exceeds ``atol / 2`` and 2/3 of 3 of its own standard errors
       (``extras["quadrature_error_se"]``, from the replicates, which say whether the difference is
       noise); points with similar needs share a run, whose Neyman
       allocation of draws across nodes then fits them;
    4. a point's reported estimate is its last run alone (earlier runs only chose the budget, so
       the interval ``value +- 1.96 stderr`` keeps its level); it meets the target when
       ``stderr <= atol`` and its quadrature-error estimate is at most ``atol`` or within 3 of its own
       standard errors (``quadrature_error_se``: then the difference of the rules is noise, and the
       fine rule's error, far below the coarse rule's, is part of it).  Its evaluations are counted over all
       its rounds; a point whose next run would pass ``max_evals`` gets one last run with what is
       left (when that is more than its last run had) and is flagged if it still misses.

    Up to ``d = 3`` (and with the default ``control_variate=True``) every run uses the full
    quadratic control variate (``control_variate="quadratic"``, with ``n_pilot`` raised to twice
    its ``d (d + 3) / 2 + 3`` if needed), the importance proposal ``(tau, gamma) = (3, 1)`` of
    :func:`~._quadrature.tail_transform` (``E[w(Z) f(h(Z))] = E[f(Z)]``, docs/math.md I35: the rare
    draws that carry ``x_lambda`` into another mixture component are reached, which removed the
    bias of up to 4e-3 nats and the 0.70 coverage measured on narrow-component mixtures) and
    cross-fitted coefficients (each replicate's fitted on the other replicates' draws).
    A run's ``stderr <= atol`` stops a point only where its previous run's stderr scaled to the new
    budget by ``N^-1/2`` is at most ``atol`` as well (so a stderr small by chance is not selected);
    ``met_target`` is still ``stderr <= atol`` and the quadrature condition of step 4.

    ``extras`` adds ``evals_per_point`` ``(n,)`` (all rounds), ``met_target`` ``(n,)`` bool,
    ``n_nodes_per_point`` ``(n,)``, ``rounds``, ``atol``, ``max_evals``, ``proposal``, ``cross_fit`` and the adapted
    ``log_snr_interval``; ``nfe`` is the largest per-point count.
    """
    t0 = time.perf_counter()
    tol = check_positive_float(atol, "atol")
    cap = check_int(max_evals, "max_evals", 1)
    if n_noise is not None or budget is not None:
        raise ValueError("atol chooses the budget per point: give atol or n_noise/budget, not both")
    checked_model, _ = _check_model(model)
    x = _check_x(x, checked_model)
    n_nodes = check_int(n_nodes, "n_nodes", _MIN_NODES)
    n_replicates = check_int(n_replicates, "n_replicates", 2)
    n_pilot = check_int(n_pilot, "n_pilot", 0)
    gen = _make_generator(generator, seed)
    form = common.get("form", "eps")
    evals = 1
    if form == "hyvarinen":
        div = common.get("divergence", "auto")
        exact = isinstance(checked_model, ExactDivergence)
        evals = 2 if div == "exact" or (div == "auto" and exact) else 1 + int(common.get("n_probes", 1))
    k = 2 if _resolve_antithetic(common.get("antithetic"), common.get("noise", "sobol")) else 1
    d = x[0].numel()
    if common.get("control_variate", True) is True and d <= _ATOL_QUADRATIC_MAX_D:
        # the full quadratic control variate (measured: 20-30% smaller errors at d = 2 on the broad family)
        common["control_variate"] = "quadratic"
    quadratic = isinstance(common.get("control_variate"), str) and common.get("control_variate") == "quadratic"
    if isinstance(proposal, str) and proposal == "auto":
        # importance sampling of the noise with heavier tails wherever the quadratic control variate runs
        # at low dimension (docs/math.md I35: the rare draws that reach another mixture component)
        proposal = _ATOL_PROPOSAL if quadratic and d <= _ATOL_QUADRATIC_MAX_D else None
    else:
        proposal = Q.check_proposal(proposal)
    if proposal is not None and not quadratic:
        raise ValueError("proposal (importance sampling of the noise) needs control_variate='quadratic'")
    if quadratic:
        n_pilot = max(n_pilot, 2 * k * (Q.cv_feature_count(d, "quadratic", k == 2, proposal is not None) + 2))
    if cross_fit is not None and not isinstance(cross_fit, bool):
        raise TypeError(f"cross_fit must be None or a bool, got {cross_fit!r}")
    # the quadratic control variate's coefficients fitted on the other replicates' draws (None: wherever it runs)
    common["cross_fit"] = quadratic if cross_fit is None else cross_fit

    def min_budget(nodes: int) -> int:
        return evals * k * (nodes + 2) * (n_pilot // k + n_replicates)

    if min_budget(n_nodes) > cap:
        raise ValueError(
            f"max_evals={cap} is below the {min_budget(n_nodes)} evaluations one run with n_nodes={n_nodes}, "
            f"n_pilot={n_pilot} and n_replicates={n_replicates} needs"
        )
    n = x.shape[0]
    dev = x.device
    value = torch.zeros(n, dtype=x.dtype, device=dev)
    se = torch.full((n,), math.inf, dtype=x.dtype, device=dev)
    spent = torch.zeros(n, dtype=torch.long)
    last_budget = torch.zeros(n, dtype=torch.long)
    prev_budget = torch.zeros(n, dtype=torch.long)
    prev_se = torch.full((n,), math.inf, dtype=torch.float64)
    nodes_of = torch.full((n,), n_nodes, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)  # met, or out of budget
    per_point: Dict[str, Tensor] = {}
    reps_all = torch.zeros(n_replicates, n, dtype=x.dtype, device=dev)
    interval = None

    def run(idx: Tensor, b: int, nodes: int, rng: Optional[Tuple[float, float]]) -> Estimate:
        sub_seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))
        est = density_formula(
            model, x[idx.to(dev)], budget=b, n_nodes=nodes, n_replicates=n_replicates, n_pilot=n_pilot,
            lambda_range=rng, seed=sub_seed, proposal=proposal, **common,
        )
        ii = idx.to(dev)
        prev_budget[idx] = last_budget[idx]
        prev_se[idx] = se[idx.to(dev)].cpu().double()
        value[ii] = est.value
        se[ii] = est.stderr
        spent[idx] += est.nfe
        last_budget[idx] = est.nfe
        reps_all[:, ii] = est.extras["replicates"].to(x.dtype)
        for key in ("quadrature_error", "quadrature_error_se", "truncation_bound", "error_bound",
                    "tail_lower", "tail_upper"):
            if key not in per_point:
                per_point[key] = torch.zeros(n, dtype=est.extras[key].dtype, device=dev)
            per_point[key][ii] = est.extras[key].to(per_point[key].dtype)
        return est

    first = run(torch.arange(n), min(cap, max(_ATOL_PILOT, 2 * min_budget(n_nodes))), n_nodes, lambda_range)
    lo, hi = first.extras["log_snr_interval"]
    interval = _trimmed_range(first, tol, lo, hi)
    rounds = 1
    while rounds < _ATOL_MAX_ROUNDS:
        quad = per_point["quadrature_error"].cpu().double()
        quad_noise = 3.0 * per_point["quadrature_error_se"].cpu().double()
        s = se.cpu().double()
        met = (s <= tol) & ((quad <= tol) | (quad <= quad_noise))
        # a run's own stderr certifies the target only where the previous run's stderr, scaled to this
        # budget by the N^-1/2 law, agrees (an independent check): otherwise a stderr that came out small
        # by chance at a budget grown too little would be selected (measured: max |z| 4.2 at 34k evaluations)
        predicted = prev_se * torch.sqrt(prev_budget.double() / last_budget.double().clamp_min(1.0))
        met &= ~torch.isfinite(prev_se) | (predicted <= _ATOL_GUARD * tol)
        done |= met
        todo = torch.nonzero(~done).flatten()
        if todo.numel() == 0:
            break
        plans: Dict[Tuple[int, int], List[int]] = {}
        for i in todo.tolist():
            # at least _ATOL_NODES nodes once the budget grows: at stderr ~ 1e-3 the 64-node rule's bias is
            # comparable to it on narrow components (measured on the broad family: 95% intervals at 0.88)
            nodes = max(int(nodes_of[i]), _ATOL_NODES)
            # a quadrature error beyond atol / 2 that the noise does not explain: refine the rule
            if 2.0 * float(quad[i]) > tol and 1.5 * float(quad[i]) > float(quad_noise[i]) and nodes < _ATOL_MAX_NODES:
                nodes *= 2
            # se ~ N^-p: p fitted from the point's last two runs (clipped to [1/2, 1]), 1/2 before;
            # at most _ATOL_GROWTH times the last budget per round, so that a wrong rate costs little
            p = 0.5
            if float(prev_budget[i]) > 0 and float(last_budget[i]) > float(prev_budget[i]) and float(s[i]) > 0:
                p = math.log(float(prev_se[i]) / float(s[i])) / math.log(float(last_budget[i]) / float(prev_budget[i]))
                p = min(1.0, max(0.5, p)) if math.isfinite(p) else 0.5
            ratio = max(1.0, float(s[i]) / (_ATOL_MARGIN * tol)) ** (1.0 / p)
            need = float(last_budget[i]) * min(_ATOL_GROWTH, ratio)
            need = max(need, 2.0 * min_budget(nodes))
            b = _budget_tier(need)
            left = cap - int(spent[i])
            # predicted to need more than is left (or to leave too little for another run): all of it, now
            if float(last_budget[i]) * ratio >= left or left - b < b:
                done[i] = True  # the last try (flagged below if it still misses), only if it beats the last run
                b = left
                if b <= int(last_budget[i]):
                    continue
                if b < min_budget(nodes):
                    nodes = int(nodes_of[i])
                    if b < min_budget(nodes):
                        continue
            nodes_of[i] = nodes
            plans.setdefault((nodes, b), []).append(i)
        if not plans:
            break
        for (nodes, b), members in sorted(plans.items()):
            run(torch.tensor(members, dtype=torch.long), b, nodes, interval)
        rounds += 1
    quad = per_point["quadrature_error"].cpu().double()
    quad_noise = 3.0 * per_point["quadrature_error_se"].cpu().double()
    met = (se.cpu().double() <= tol) & ((quad <= tol) | (quad <= quad_noise))
    if not bool(met.all()):
        warnings.warn(
            f"density_formula: {int((~met).sum())} of {n} points did not reach atol={tol} within max_evals={cap} "
            f"evaluations per point (largest stderr {float(se.max()):.3g}, largest quadrature_error "
            f"{float(quad.max()):.3g}); they are flagged in extras['met_target']",
            RuntimeWarning,
            stacklevel=3,
        )
    extras: Dict[str, Any] = dict(per_point)
    extras.update(
        {
            "evals_per_point": spent,
            "met_target": met,
            "n_nodes_per_point": nodes_of,
            "rounds": rounds,
            "atol": tol,
            "max_evals": cap,
            "log_snr_interval": interval,
            "lambda_range": interval,
            "first_round_interval": (lo, hi),
            "replicates": reps_all,
            "n_replicates": n_replicates,
            "form": form,
            "proposal": proposal,
            "cross_fit": bool(common.get("cross_fit")),
        }
    )
    return Estimate(value=value, stderr=se, nfe=int(spent.max()), seconds=time.perf_counter() - t0, extras=extras)


def _valid_steps(
    lam: Tensor, wk: Tensor, valid: Tuple[float, float]
) -> Tuple[Tensor, Tensor, Tuple[int, int]]:
    """Nodes and weights of the discrete sum with the steps outside ``valid`` (I24) folded into tails.

    A step ``k`` with ``lambda_k`` above the (pulled-in) upper end ``h`` is replaced by the exact
    asymptotic law ``f(lambda_k) = f(h) sigmoid(-lambda_k) / sigmoid(-h)`` (below the lower end
    ``l``: ``f(l) sigmoid(lambda_k) / sigmoid(l)``), the law of :func:`~._quadrature.tail_nodes`:
    one node at ``h`` (``l``) with the summed weight.  Returns ``(nodes, weights, (n_below,
    n_above))``; with every step valid the inputs come back unchanged.
    """
    lo, hi = _inside(*valid)
    below, above = lam < lo, lam > hi
    n_below, n_above = int(below.sum()), int(above.sum())
    if n_below == 0 and n_above == 0:
        return lam, wk, (0, 0)
    keep = ~(below | above)
    nodes: List[Tensor] = [lam[keep]]
    weights: List[Tensor] = [wk[keep]]
    one = torch.ones(1, dtype=lam.dtype)
    if n_below:
        w_lo = (wk[below] * torch.sigmoid(lam[below])).sum() / torch.sigmoid(torch.tensor(lo, dtype=lam.dtype))
        nodes.append(lo * one)
        weights.append(w_lo.reshape(1))
    if n_above:
        w_hi = (wk[above] * torch.sigmoid(-lam[above])).sum() / torch.sigmoid(torch.tensor(-hi, dtype=lam.dtype))
        nodes.append(hi * one)
        weights.append(w_hi.reshape(1))
    return torch.cat(nodes), torch.cat(weights), (n_below, n_above)


def _full_weights(schedule: Discrete) -> Tensor:
    """The I7 weights ``w_k = beta_k / (2 alpha_k (1 - abar_k))``, ``k = 1..T`` (docs/math.md I7)."""
    return schedule.betas / (2.0 * schedule.alphas * schedule.one_minus_alpha_bars[1:])


def _sub_grid_weights(schedule: Discrete, stride: int) -> Tensor:
    """The I7 weights of the subgrid ``abar_0, abar_s, abar_2s, ..., abar_T`` (``s = stride``), on the full grid.

    Shape ``(T,)``: the subgrid's weight ``beta'_j / (2 alpha'_j (1 - abar_{k_j}))`` (with
    ``alpha'_j = abar_{k_j} / abar_{k_{j-1}}``) at its steps ``k_j`` (multiples of ``s``, and
    ``T`` itself), zero elsewhere.  The subgrid's nodes are a subset of the grid's, so its
    estimate reuses the same draws.
    """
    T = schedule.T
    idx = list(range(0, T + 1, stride))
    if idx[-1] != T:
        idx.append(T)
    ab = schedule.alpha_bars.to(torch.float64)
    steps = torch.tensor(idx, dtype=torch.long)
    a_h = ab[steps[1:]] / ab[steps[:-1]]
    w_h = (1.0 - a_h) / (2.0 * a_h * schedule.one_minus_alpha_bars.to(torch.float64)[steps[1:]])
    out = torch.zeros(T, dtype=torch.float64)
    out[steps[1:] - 1] = w_h
    return out


def _unresolved_high_snr(
    lam: Tensor, node_means: Tensor, pilot_sd: Tensor, alloc: Tensor, draws_per_pair: int
) -> Tensor:
    """``(n,)`` bool: where the integrand at the highest node is not decaying like ``sigmoid(-lambda)``.

    Compares the node at the top ``lambda_1`` with the node about one unit of log-SNR below it:
    the observed ratio ``f(lambda_1) / f(lambda_a)`` against the law's
    ``sigmoid(-lambda_1) / sigmoid(-lambda_a)``, flagged above ``_DECAY_TOLERANCE`` or below 0
    (a sign change) where the values are clearly above their noise (8 standard errors) and the
    top one above ``_TAIL_FLOOR``.
    """
    top = int(torch.argmax(lam))
    lam_top = float(lam[top])
    below = torch.nonzero(lam <= lam_top - 1.0).flatten()
    n = node_means.shape[0]
    if below.numel() == 0:
        return torch.zeros(n, dtype=torch.bool, device=node_means.device)
    a = int(below[torch.argmax(lam[below])])
    expected = math.exp(-math.log1p(math.exp(lam_top)) + math.log1p(math.exp(float(lam[a]))))
    f_top, f_a = node_means[:, top], node_means[:, a]
    safe = torch.where(f_a != 0, f_a, torch.ones_like(f_a))
    ratio = torch.where(f_a != 0, f_top / safe, torch.zeros_like(f_a)) / expected
    draws = (alloc.to(torch.float64) * draws_per_pair).clamp_min(1.0)
    se_top = float(pilot_sd[top]) / math.sqrt(float(draws[top]))
    significant = (f_top.abs() > 8.0 * se_top) & (f_top.abs() > _TAIL_FLOOR)
    # a sign change between the two nodes breaks the law as clearly as a non-decaying value
    significant_a = f_a.abs() > 8.0 * float(pilot_sd[a]) / math.sqrt(float(draws[a]))
    return ((ratio > _DECAY_TOLERANCE) | ((ratio < 0) & significant_a)) & significant


def density_formula_discrete(
    model: DiffusionModel,
    x: Tensor,
    *,
    schedule: Optional[Discrete] = None,
    form: str = "eps",
    n_noise: Optional[int] = None,
    budget: Optional[int] = None,
    n_replicates: int = 32,
    n_pilot: int = 8,
    noise: str = "sobol",
    antithetic: Optional[bool] = None,
    control_variate: bool = True,
    allocation: str = "neyman",
    divergence: str = "auto",
    n_probes: int = 1,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    chunk_size: Optional[int] = None,
    memory_budget: int = 1 << 30,
    progress: bool = False,
) -> Estimate:
    """The density formula on a DDPM grid (docs/math.md I7), exact in its conditional expectations up to MC.

    ``log q_0(x) ~ -(d/2) log(2 pi e)
    - sum_{k=1}^T [ (1-alpha_k)/(2 alpha_k) E||s_k + (X_k - sqrt(abar_k) x)/(1-abar_k)||^2
    - (d/2)(abar_{k-1} - abar_k)/(1 - abar_k) ]``, which is
    ``-(d/2) log(2 pi e) + sum_k w_k (d abar_k - E||Z - eps_hat_k||^2)`` with
    ``w_k = beta_k / (2 alpha_k (1 - abar_k))`` (the same integrand as the continuous formula,
    so every ``form`` works).  Its error against ``log q_0`` is O(1/T) plus O(abar_T) (measured).

    The model is evaluated at the time of ITS schedule whose log-SNR equals
    ``log(abar_k / (1 - abar_k))``; a model whose schedule is ``schedule`` itself is evaluated
    at the integer steps.  Steps the model's schedule cannot reach raise ``ValueError``.
    Steps outside the model's ``valid_log_snr`` (I24) are not evaluated: as beyond the range of
    :func:`density_formula`, their integrand follows the exact asymptotic law from the nearest
    valid end, ``f(lambda_k) = f(lambda_hi) sigmoid(-lambda_k) / sigmoid(-lambda_hi)`` above and
    ``f(lambda_lo) sigmoid(lambda_k) / sigmoid(lambda_lo)`` below, so one tail node at each end
    carries their weights (``extras["extrapolated_steps"]``, ``extras["log_snr_interval"]``).
    The noise is estimated as in :func:`density_formula` (Sobol, antithetic, control variate,
    Neyman allocation across the ``T`` steps, replicates); ``n_noise`` is the average number of
    draws per step and replicate (default 2) or ``budget`` the total per point.

    Default ``schedule``: ``Discrete.ddpm_linear(T=1000)``, for ANY continuous model schedule
    (VPLinear, SubVP, VE, ...): its steps beyond the log-SNR range the model's schedule reaches
    are folded into the tail nodes exactly like the steps beyond ``valid_log_snr`` above
    (``extras["default_grid"]`` is True).  An explicit ``schedule`` the model cannot reach
    raises ``ValueError``.

    Discretization error (``stderr`` is the Monte Carlo error alone): the sum is a first-order
    rule (docs/math.md I7, error ``~ C T^-p`` with ``p = 1`` asymptotically).  The same draws give
    the estimates on the subgrids of every 2nd and every 4th step (a subset of the nodes, see
    :func:`_sub_grid_weights`), replicate by replicate; with ``D1 = v_T - v_{T/2}``,
    ``D2 = v_{T/2} - v_{T/4}`` and their ratio ``r = 2^p`` (clipped to ``[2^(1/4), 2]``, and
    ``r = 2`` where either difference is within ``q`` of its standard errors, see
    :func:`_richardson_bound`), the
    Richardson estimate of the error of the ``T``-grid is
    ``extras["discretization_error"] = max(|D1| / (r - 1), |D2| / (r (r - 1)))`` per point
    (``|D1|`` for a first-order rule; up to ``5.3 |D1|`` where convergence is visibly slower).
    It is an estimate, not a bound: ``D1`` and ``D2`` are differences of Monte Carlo sums, as
    noisy as the estimate itself or more, and can be small by chance.
    ``extras["richardson_ratio"]``: the ``r`` used, per point.
    ``extras["truncation_error"]``: the ``O(abar_T)`` term left out beyond the grid's lowest
    log-SNR, by the tail law of :func:`~._quadrature.tail_nodes`.

    ``extras["error_bound"]``, per point: ``truncation_error + max_k (c_k |D_k| + q se_k)``
    with ``c_1 = 1/(r - 1)``, ``c_2 = c_1 / r`` and ``se_k`` the standard error (over the
    replicates) of the extrapolated value ``v_T + c_k D_k``; since
    ``|v_T - log q_0| <= c_k |D_k| + |v_T + c_k D_k - log q_0|``, this counts the Monte Carlo noise
    of the estimate and of the differences together.  ``q =
    extras["error_bound_quantile"]`` is the Student-t quantile (``n_replicates - 1`` dof) of
    the level of 3 normal standard errors, so the bound is meant to fail at at most 0.27% of
    the points (``q`` = 3.26 for 32 replicates, 3.59 for 16, 9.2 for 4; 3 standard errors of
    16 replicates alone fail at ~0.9%).  Measured (tests/test_formula_reliability.py,
    ``test_discrete_error_bound_holds_at_its_stated_rate``; random 1-D/2-D mixtures as in
    experiments/discrete_formula.py, 16 points x 20 seeds per dimension, ``n_noise = 8``, 16
    replicates): it fails at 3 of 640 points (0.47%, within the binomial noise of 0.27%) at
    ``T = 25`` and at none of 640 at each of
    ``T = 50, 100, 200, 1000`` (before, with ``discretization_error + truncation_error +
    3 stderr``: 7.7%, 7.7%, 8.4%, 3.0% and 1.1%).  It is ``inf`` where the integrand at the grid's
    highest log-SNR does not yet decay like ``sigmoid(-lambda)`` (structure finer than the grid
    resolves, so the first step's high-SNR law fails and no bound can be claimed).  It rests on
    the asymptotic form ``C T^-p`` of the error on the three grids ``T/4, T/2, T``: on a
    pre-asymptotic grid it can fail more often (measured on mixtures of condition number 100 at
    points 1.5x farther out: 6.4% at ``T = 25``, 0.3-1.6% at ``T = 50`` over two sets of seeds,
    none of 320 at ``T = 100, 200``; before: 17.7%, 5.9%, 10.3%, 7.2%).  Cost: the replicates of
    ``D1, D2`` are two more weighted sums over the same node estimates (no model calls).

    Returns:
        :class:`Estimate`; ``extras`` as listed above plus ``T``, ``log_snr_interval``,
        ``t_min``/``t_max``, ``extrapolated_steps``, ``nodes``, ``weights``, ``node_means``,
        ``allocation``, ``replicates``, ``alpha_bar_T``.
    """
    t0 = time.perf_counter()
    model, model_schedule = _check_model(model)
    x = _check_x(x, model)
    default_grid = schedule is None
    if schedule is None:
        schedule = Discrete.ddpm_linear(T=1000)
    if not isinstance(schedule, Discrete):
        raise TypeError(f"schedule must be a densityformula Discrete schedule, got {type(schedule).__name__}")
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    n_replicates = check_int(n_replicates, "n_replicates", 2)
    n_pilot = check_int(n_pilot, "n_pilot", 0)
    n_probes = check_int(n_probes, "n_probes", 1)
    budget = None if budget is None else check_int(budget, "budget", 1)
    memory_budget = check_int(memory_budget, "memory_budget", 1)
    if noise not in ("sobol", "random"):
        raise ValueError(f"noise must be 'sobol' or 'random', got {noise!r}")
    gen = _make_generator(generator, seed)
    n, d = x.shape[0], x[0].numel()
    antithetic = _resolve_antithetic(antithetic, noise)
    k = 2 if antithetic else 1
    if antithetic and n_pilot % 2:
        raise ValueError(f"n_pilot must be even with antithetic pairs, got {n_pilot}")
    pilot_pairs = n_pilot // k
    if 0 < pilot_pairs < 2:
        raise ValueError(f"n_pilot must give at least 2 draws (pairs) per node, got {n_pilot}")
    abar = schedule.alpha_bars  # (T+1,)
    lam = schedule.log_snrs[1:]  # log(abar/(1-abar)), k=1..T
    m_lo, m_hi = float(model_schedule.log_snr_range[0]), float(model_schedule.log_snr_range[1])
    v_lo, v_hi = _valid_range(model)
    if default_grid:
        # the default grid serves every continuous schedule: steps beyond what the model's schedule
        # reaches are folded into the tail nodes exactly as steps beyond valid_log_snr (I24)
        v_lo, v_hi = max(v_lo, m_lo), min(v_hi, m_hi)
        if not v_lo < v_hi:
            raise ValueError(
                f"the model's valid_log_snr {_valid_range(model)} does not overlap its schedule's log-SNR "
                f"range {(m_lo, m_hi)}"
            )
    else:
        tol = 1e-9
        if bool((lam < m_lo - tol * max(1, abs(m_lo))).any()) or bool((lam > m_hi + tol * max(1, abs(m_hi))).any()):
            raise ValueError(
                f"the model's schedule reaches log-SNR {(m_lo, m_hi)} but the grid (schedule) needs "
                f"[{float(lam.min())}, {float(lam.max())}]; pass a grid inside that range, or schedule=None "
                "for the default grid, which adapts to the model"
            )
        lam = lam.clamp(m_lo, m_hi)
    wk = wk_all = _full_weights(schedule)
    lam_full = lam
    lam, wk, extrapolated = _valid_steps(lam_full, wk, (v_lo, v_hi))
    # weights of value_T - value_{T/2} and value_{T/2} - value_{T/4} on the evaluated nodes
    w_half, w_quarter = _sub_grid_weights(schedule, 2), _sub_grid_weights(schedule, 4)
    _, dwk1, _ = _valid_steps(lam_full, wk_all - w_half, (v_lo, v_hi))
    _, dwk2, _ = _valid_steps(lam_full, w_half - w_quarter, (v_lo, v_hi))
    f, lam_eff, evals, div_used = _make_integrand(
        model, x, lam, form, n_probes=n_probes, divergence=divergence, generator=gen
    )
    J = lam.numel()
    if n_noise is None and budget is None:
        n_noise = 2
    pairs = _pairs_per_replicate(n_noise, budget, J, n_replicates, pilot_pairs, k, evals)
    res = _run_noise_sum(
        "density_formula_discrete", x, f=f, n=n, shape=tuple(x.shape[1:]), weights=wk, pairs_per_replicate=pairs,
        n_replicates=n_replicates,
        pilot_pairs=pilot_pairs, noise=noise, antithetic=antithetic, control_variate=control_variate,
        allocation=allocation, generator=gen, device=x.device, chunk_size=_chunk_rows(chunk_size, memory_budget, d),
        memory_budget=memory_budget,
        progress=progress, extra_weights=torch.stack([dwk1, dwk2]),
    )
    reps = -0.5 * d * _LOG_2PI_E + res.replicates
    value, se = _replicate_summary(reps)
    lam_used = lam_eff.detach().cpu()
    lam_lo, lam_hi = float(lam_used.min()), float(lam_used.max())
    # Richardson (docs/math.md I7 is a first-order rule) from the same draws on the subgrids of every 2nd
    # and every 4th step, with the Monte Carlo noise of the differences in the bound (_richardson_bound)
    q = _bound_quantile(n_replicates)
    if schedule.T >= 4 and res.extra_replicates is not None:
        disc_bound, disc, ratio, q = _richardson_bound(reps, res.extra_replicates)
    else:
        disc = disc_bound = torch.full((n,), math.inf, dtype=torch.float64, device=x.device)
        ratio = torch.full((n,), math.nan, dtype=torch.float64, device=x.device)
    # the sum stops at abar_T > 0: beyond the grid's lowest log-SNR lambda_T the integrand follows
    # sigmoid(lambda) f(lambda_e) / sigmoid(lambda_e) (lambda_e the lowest evaluated node, the tail
    # law of _quadrature.tail_nodes), whose half-integral is the O(abar_T) term left out
    lam_T = float(schedule.log_snrs[-1])
    j_e = int(torch.argmin(lam_used))
    sp = math.log1p(math.exp(lam_T)) if lam_T < 30 else lam_T
    trunc = (0.5 * sp / float(torch.sigmoid(torch.tensor(lam_lo, dtype=torch.float64)))) * res.node_means[:, j_e].abs()
    # the first step stands for the whole high-SNR end (the exact law A sigmoid(-lambda) beyond
    # lambda_1, I7): where the integrand has not started to decay like that across the last unit
    # of log-SNR (data structure finer than the grid resolves), no bound can be claimed
    unresolved = _unresolved_high_snr(lam_used, res.node_means, res.pilot_sd, res.allocation, k * n_replicates)
    error_bound = disc_bound + trunc
    error_bound = torch.where(unresolved, torch.full_like(error_bound, math.inf), error_bound)
    extras: Dict[str, Any] = {
        "T": schedule.T,
        "log_snr_interval": (lam_lo, lam_hi),
        "t_min": float(model_schedule.t_from_log_snr(lam_hi)),
        "t_max": float(model_schedule.t_from_log_snr(lam_lo)),
        "extrapolated_steps": extrapolated,
        "form": form,
        "divergence": div_used,
        "nodes": lam_used,
        "weights": wk,
        "node_means": res.node_means,
        "allocation": res.allocation,
        "replicates": reps,
        "alpha_bar_T": float(abar[-1]),
        "discretization_error": disc.to(x.dtype),
        "truncation_error": trunc.to(x.dtype),
        "error_bound": error_bound.to(x.dtype),
        "error_bound_quantile": q,
        "richardson_ratio": ratio,
        "default_grid": default_grid,
    }
    return Estimate(
        value=value.to(x.dtype), stderr=se.to(x.dtype), nfe=res.evals_per_point * evals,
        seconds=time.perf_counter() - t0, extras=extras,
    )
