"""Quadrature in log-SNR and variance-reduced Monte Carlo over the noise (private).

The density formula (docs/math.md I5/I6, and its discrete version I7) is a weighted sum over
log-SNR nodes ``lambda_j`` of conditional expectations over the noise ``Z ~ N(0, I_d)``::

    S(x) = sum_j w_j E_Z[ f_j(x, Z) ].

This module estimates such sums for a batch of points, for any integrand ``f`` given as a
callable on flattened rows, with

- a deterministic rule in log-SNR: Gauss-Legendre after the map ``lambda = c + s sinh(u)``,
  which puts nodes where the integrand has structure (``|lambda| <~ 10``) and few in the
  exponentially decaying tails (:func:`sinh_gauss_legendre`), plus exact tail nodes for the
  asymptotic ``e^{-|lambda|}`` behaviour outside the truncated range (:func:`tail_nodes`);
- scrambled Sobol points mapped through the normal inverse CDF, with an independent digital
  shift per point (so different points have uncorrelated errors), or pseudo-random draws,
  optionally in antithetic pairs ``(Z, -Z)`` (:class:`_NoiseSource`);
- the zero-mean control variate ``c_j(x) (||Z||^2 - d)`` with ``c_j(x)`` fitted on an
  independent pilot sample, so that every replicate stays exactly unbiased;
- Neyman allocation of the noise draws across nodes from the pilot's residual standard
  deviations (:func:`allocate`);
- independent replicates (independent scrambles) for an honest standard error.

Everything is batched over points x nodes x draws and packed into model calls of at most
``chunk_size`` rows; no Python loop runs over points.  ``elbo.continuous`` and the discrete
formula reuse :func:`weighted_noise_sum` with their own nodes and weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

Tensor = torch.Tensor

__all__ = [
    "gauss_legendre",
    "sinh_gauss_legendre",
    "sinh_coarse_weights",
    "tail_nodes",
    "normal_draws",
    "allocate",
    "NoiseSumResult",
    "weighted_noise_sum",
    "SOBOL_MAX_DIM",
]

SOBOL_MAX_DIM = 21201  # torch.quasirandom.SobolEngine.MAXDIM
_HALF_ULP30 = 2.0**-31  # Sobol points are multiples of 2^-30; shift to the cell midpoints


def gauss_legendre(n: int, lo: float, hi: float) -> Tuple[Tensor, Tensor]:
    """Gauss-Legendre nodes and weights on ``[lo, hi]`` (float64, CPU)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n_nodes must be a positive int, got {n!r}")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"need finite lo < hi, got lo={lo}, hi={hi}")
    u, w = np.polynomial.legendre.leggauss(n)
    nodes = 0.5 * (hi - lo) * u + 0.5 * (hi + lo)
    return torch.tensor(nodes, dtype=torch.float64), torch.tensor(0.5 * (hi - lo) * w, dtype=torch.float64)


def sinh_gauss_legendre(
    n: int, lo: float, hi: float, center: float = 0.0, scale: float = 3.0
) -> Tuple[Tensor, Tensor]:
    """Nodes ``lambda_j`` and weights ``w_j`` with ``sum_j w_j f(lambda_j) ~ int_lo^hi f(lambda) d lambda``.

    Gauss-Legendre in ``u`` after the substitution ``lambda = center + scale sinh(u)``: dense
    nodes near ``center``, geometrically sparser ones in the tails, where the density-formula
    integrand decays like ``e^{-|lambda|}``.  For ``random_gmm`` targets this is exact to
    ~1e-10 nats with 48 nodes on [-25, 25], where plain Gauss-Legendre needs ~128.
    """
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"lambda_scale must be a positive finite float, got {scale!r}")
    if not math.isfinite(center):
        raise ValueError(f"lambda_center must be finite, got {center!r}")
    u_lo, u_hi = math.asinh((lo - center) / scale), math.asinh((hi - center) / scale)
    u, wu = gauss_legendre(n, u_lo, u_hi)
    lam = center + scale * torch.sinh(u)
    return lam, wu * scale * torch.cosh(u)


def sinh_coarse_weights(
    n: int, lo: float, hi: float, center: float = 0.0, scale: float = 3.0
) -> Tensor:
    """Weights of the coarser companion rule of :func:`sinh_gauss_legendre` on the same nodes.

    The interpolatory rule on every other node of the ``n``-node rule (nodes ``0, 2, 4, ...``;
    ``ceil(n / 2)`` of them, exact for polynomials in ``u`` of degree ``ceil(n / 2) - 1``), with
    zero weight on the others, so that it reuses the integrand values of the fine rule.  The
    difference of the two rules estimates the quadrature error (it is the coarse rule's error,
    which bounds the fine rule's wherever the rules converge; the fine Gauss rule is exact to
    degree ``2n - 1``).  Shape ``(n,)``, float64, in the node order of :func:`sinh_gauss_legendre`.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise ValueError(f"n_nodes must be an int >= 2, got {n!r}")
    t, _ = np.polynomial.legendre.leggauss(n)
    sub = t[::2]
    m = sub.shape[0]
    # interpolatory weights on [-1, 1]: sum_j v_j P_k(t_j) = int P_k = 2 [k = 0], k < m
    vander = np.polynomial.legendre.legvander(sub, m - 1)  # (m, m), rows = nodes
    rhs = np.zeros(m)
    rhs[0] = 2.0
    v = np.linalg.solve(vander.T, rhs)
    u_lo, u_hi = math.asinh((lo - center) / scale), math.asinh((hi - center) / scale)
    half = 0.5 * (u_hi - u_lo)
    u = torch.tensor(half * t + 0.5 * (u_hi + u_lo), dtype=torch.float64)
    out = torch.zeros(n, dtype=torch.float64)
    out[::2] = torch.tensor(v * half, dtype=torch.float64)
    return out * scale * torch.cosh(u)


def _softplus(v: float) -> float:
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def tail_nodes(lo: float, hi: float) -> Tuple[List[float], List[float]]:
    """Nodes and weights that integrate the two tails outside ``[lo, hi]`` exactly for the
    asymptotic forms of the density-formula integrand.

    For ``lambda -> -inf`` the integrand is ``B sigmoid(lambda) + O(sigmoid(lambda)^2)`` and for
    ``lambda -> +inf`` it is ``A sigmoid(-lambda) + O(e^{-2 lambda})`` (the Gaussian limits of
    docs/math.md I6: ``alpha^2 (d - ||x - E X_0||^2)`` and ``-e^{-lambda}(d + ||grad log q||^2 +
    2 lap log q)``).  Reading ``B, A`` off one evaluation at the truncation point gives
    ``int_{-inf}^{lo} f = f(lo) softplus(lo) / sigmoid(lo)`` and
    ``int_{hi}^{inf} f = f(hi) softplus(-hi) / sigmoid(-hi)``.  An infinite end needs no node.
    """
    nodes: List[float] = []
    weights: List[float] = []
    if math.isfinite(lo):
        nodes.append(lo)
        weights.append(_softplus(lo) / _sigmoid(lo))
    if math.isfinite(hi):
        nodes.append(hi)
        weights.append(_softplus(-hi) / _sigmoid(-hi))
    return nodes, weights


def _seeds(generator: torch.Generator, k: int) -> List[int]:
    return [int(v) for v in torch.randint(0, 2**62, (k,), generator=generator, device=generator.device).tolist()]


def sobol_bits(n: int, d: int, *, generator: torch.Generator) -> Tensor:
    """``n`` points of a freshly scrambled (LMS + digital shift) Sobol sequence in ``d`` dims,
    as int64 integers ``k`` with the point ``k / 2^30`` (CPU)."""
    # torch's SobolEngine.__init__ has no annotations (its stubs are incomplete there)
    engine = torch.quasirandom.SobolEngine(d, scramble=True, seed=_seeds(generator, 1)[0])  # type: ignore[no-untyped-call]
    return torch.round(engine.draw(n, dtype=torch.float64) * 2.0**30).long()


def bits_to_normal(bits: Tensor) -> Tensor:
    """Map 30-bit integers to N(0, 1) through the inverse CDF at the cell midpoints, float64."""
    u = bits.double() * 2.0**-30 + _HALF_ULP30
    return math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)


def check_proposal(proposal: object, name: str = "proposal") -> Optional[Tuple[float, float]]:
    """``proposal`` as ``(tau, gamma)`` floats with ``tau > 1`` and ``gamma > 0`` (both finite), or ``None``."""
    if proposal is None:
        return None
    if isinstance(proposal, (str, bytes)) or not isinstance(proposal, (tuple, list)) or len(proposal) != 2:
        raise TypeError(f"{name} must be None, 'auto' or a pair (tau, gamma), got {proposal!r}")
    try:
        tau, gamma = float(proposal[0]), float(proposal[1])
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be None, 'auto' or a pair of floats (tau, gamma), got {proposal!r}") from exc
    if not (math.isfinite(tau) and tau > 1.0) or not (math.isfinite(gamma) and gamma > 0.0):
        raise ValueError(f"{name} = (tau, gamma) needs finite tau > 1 and gamma > 0, got {proposal!r}")
    return tau, gamma


def tail_transform(z: Tensor, proposal: Tuple[float, float]) -> Tuple[Tensor, Tensor]:
    """Importance sampling of ``N(0, I_d)`` with heavier tails, by a change of variables: ``(y, log w)``.

    Every coordinate is mapped by the odd, increasing ``h(z) = z sqrt((1 + tau^2 gamma z^2) / (1 + gamma z^2))``
    (``h(z) ~ z`` for ``|z| << gamma^-1/2``, ``~ tau z`` beyond), and
    ``log w(z) = sum_i [log h'(z_i) - (h(z_i)^2 - z_i^2) / 2]``, so that for ``Z ~ N(0, I)``
    ``E[w(Z) g(h(Z))] = E[g(Z)]`` for every ``g`` (substitute ``y = h(z)``: ``w = phi(h(z)) h'(z) / phi(z)``).
    Exact for any ``(tau, gamma)``: ``y`` has the density ``phi(z) / h'(z)``, whose tails are those of
    ``N(0, tau^2)``.  Applied to scrambled Sobol normals it keeps their net structure (a smooth
    monotone map of each coordinate, like the normal quantile itself).  ``w`` is even in ``z``,
    so an antithetic pair ``(Z, -Z)`` shares its weight.  ``(..., d) -> (..., d), (...)``.
    """
    tau, gamma = proposal
    a = (tau * tau - 1.0) * gamma
    z2 = z * z
    den = 1.0 + gamma * z2
    r = 1.0 + a * z2 / den  # (1 + tau^2 gamma z^2) / (1 + gamma z^2)
    y = z * torch.sqrt(r)
    # h' = sqrt(r) + z^2 a / (den^2 sqrt(r)) = (r + a z^2 / den^2) / sqrt(r)
    log_hp = torch.log(r + a * z2 / (den * den)) - 0.5 * torch.log(r)
    log_w = (log_hp - 0.5 * z2 * (r - 1.0)).sum(-1)
    return y, log_w


def normal_draws(
    n: int,
    d: int,
    *,
    method: str,
    generator: torch.Generator,
    device: torch.device,
) -> Tensor:
    """``n`` standard normal vectors in ``d`` dimensions, float64, on ``device``.

    ``method="sobol"``: one scrambled Sobol sequence (fresh scramble from ``generator``) through
    ``sqrt(2) erfinv(2u - 1)`` in float64 (falls back to pseudo-random above 21201 dims);
    ``"random"``: ``torch.randn``.  Each row is marginally exactly N(0, I) in both cases.
    """
    if method not in ("sobol", "random"):
        raise ValueError(f"noise must be 'sobol' or 'random', got {method!r}")
    if n == 0:
        return torch.zeros(0, d, dtype=torch.float64, device=device)
    if method == "sobol" and d <= SOBOL_MAX_DIM:
        return bits_to_normal(sobol_bits(n, d, generator=generator)).to(device)
    z = torch.randn(n, d, generator=generator, dtype=torch.float64, device=generator.device)
    return z.to(device)


class _NoiseSource:
    """Noise for ``n_sets`` independent replicates x ``n`` points, node by node.

    Sobol: per set, one scrambled Sobol sequence whose consecutive segments go to the nodes
    (drawn as they are needed, so memory does not grow with the budget), and per (set, point)
    an independent uniformly random digital shift (XOR of the 30 bits).  The digital shift
    alone makes every point's estimate unbiased given the shared sequence, so the errors of
    different points are uncorrelated (they would be strongly correlated if all points shared
    the same draws) while each point keeps a full low-discrepancy net.
    Random: independent ``randn`` for every point and draw.
    """

    def __init__(
        self, n: int, d: int, n_sets: int, *, method: str, generator: torch.Generator, device: torch.device,
    ) -> None:
        if method not in ("sobol", "random"):
            raise ValueError(f"noise must be 'sobol' or 'random', got {method!r}")
        self.n, self.d, self.S = n, d, n_sets
        self.sobol = method == "sobol" and d <= SOBOL_MAX_DIM
        self.generator, self.device = generator, device
        if self.sobol:
            self.engines = [
                torch.quasirandom.SobolEngine(d, scramble=True, seed=seed)  # type: ignore[no-untyped-call]
                for seed in _seeds(generator, n_sets)
            ]
            self.shift = torch.randint(0, 2**30, (n_sets, n, d), generator=generator, device=generator.device).cpu()

    def next_block(self, size: int) -> Tensor:
        """The next ``size`` draws of every set and point: ``(S, n, size, d)`` float64 on the device."""
        if self.sobol:
            base = torch.stack([torch.round(e.draw(size, dtype=torch.float64) * 2.0**30).long() for e in self.engines])
            bits = torch.bitwise_xor(base[:, None, :, :], self.shift[:, :, None, :])
            return bits_to_normal(bits).to(self.device)
        z = torch.randn(self.S, self.n, size, self.d, generator=self.generator, dtype=torch.float64,
                        device=self.generator.device)
        return z.to(self.device)


def allocate(scale: Tensor, total: int, minimum: int = 1) -> Tensor:
    """Integer allocation ``m_j >= minimum`` with ``sum m_j = total``, ``m_j ~ scale_j``.

    Neyman allocation: with per-draw standard deviations ``sd_j`` and weights ``w_j`` the variance
    ``sum w_j^2 sd_j^2 / m_j`` is smallest for ``m_j ~ |w_j| sd_j``.  Largest-remainder rounding.
    """
    J = scale.numel()
    if total < minimum * J:
        raise ValueError(f"need at least {minimum * J} draws for {J} nodes, got {total}")
    s = scale.detach().double().cpu().clamp(min=0)
    s = torch.where(torch.isfinite(s), s, torch.zeros_like(s))
    if float(s.sum()) <= 0:
        s = torch.ones_like(s)
    # water-filling: nodes with tiny scale get only the minimum, the rest share proportionally
    share = s / s.sum() * total
    m = torch.clamp(share, min=float(minimum))
    for _ in range(50):
        over = m > minimum
        excess = float(m.sum()) - total
        if abs(excess) < 1e-9 or not bool(over.any()):
            break
        sub = s[over] / s[over].sum() * (float(m[over].sum()) - excess)
        m[over] = sub
        m = torch.clamp(m, min=float(minimum))
    base = torch.floor(m + 1e-9).long().clamp(min=minimum)
    rest = total - int(base.sum())
    if rest > 0:
        frac = m - base.double()
        order = torch.argsort(frac, descending=True)
        base[order[:rest]] += 1
    elif rest < 0:
        order = torch.argsort(m - base.double())
        i = 0
        while rest < 0 and i < 10 * J:
            j = order[i % J]
            if base[j] > minimum:
                base[j] -= 1
                rest += 1
            i += 1
    return base


CV_FEATURES = ("norm", "quadratic")


def cv_feature_count(d: int, features: str, antithetic: bool, proposal: bool = False) -> int:
    """How many zero-mean control-variate features :func:`_cv_features` gives in ``d`` dimensions
    (one more, ``w - 1``, with an importance ``proposal``)."""
    if features == "norm":
        return 1
    return d * (d + 1) // 2 + (0 if antithetic else d) + (1 if proposal else 0)


def _cv_features(z: Tensor, d: int, features: str, antithetic: bool) -> Tensor:
    """Zero-mean functions of ``Z ~ N(0, I_d)``: ``(..., d) -> (...)`` or ``(..., m)``.

    ``"norm"``: ``||Z||^2 - d`` alone (shape ``(...)``).  ``"quadratic"``: every ``Z_i Z_j - delta_ij``
    (``i <= j``) and, without antithetic pairs (whose pair means cancel odd functions), every ``Z_i``:
    all of them have mean exactly 0 because each draw is marginally ``N(0, I)`` (Sobol points with
    a digital shift included), and they capture the integrand exactly wherever the posterior is a
    single Gaussian (then ``||Z - eps_hat||^2`` is a quadratic polynomial in ``Z``).
    """
    if features == "norm":
        return (z * z).sum(-1) - d
    iu = torch.triu_indices(d, d, device=z.device)
    quad = z[..., iu[0]] * z[..., iu[1]] - (iu[0] == iu[1]).to(z.dtype)
    return quad if antithetic else torch.cat([z, quad], -1)


# An integrand: f(node_idx (B,), point_idx (B,), z (B, *shape) float64) -> (B,) float64 values.
Integrand = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class NoiseSumResult:
    """What :func:`weighted_noise_sum` returns.

    Attributes:
        replicates: ``(R, n)`` independent, unbiased estimates of ``sum_j w_j E f_j``.
        node_means: ``(n, J)`` per-node estimates of ``E f_j`` averaged over replicates.
        allocation: ``(J,)`` antithetic pairs per node per replicate.
        cv_coef: ``(n, J)`` control-variate coefficients (zeros when disabled).
        pilot_sd: ``(J,)`` pilot residual standard deviation per pair, averaged (rms) over points.
        evals_per_point: integrand evaluations per point (pilot included).
        extra_replicates: ``(K, R, n)`` the replicates of ``sum_j v_kj E f_j`` for the rows ``v_k`` of
            ``extra_weights`` (same draws, so each replicate's sums are jointly distributed like the
            estimates themselves), or ``None`` without ``extra_weights``.
    """

    replicates: Tensor
    node_means: Tensor
    allocation: Tensor
    cv_coef: Tensor
    pilot_sd: Tensor
    evals_per_point: int
    info: Dict[str, object] = field(default_factory=dict)
    extra_replicates: Optional[Tensor] = None


def _run_stage(
    f: Integrand,
    n: int,
    shape: Sequence[int],
    pairs: Tensor,
    n_sets: int,
    *,
    noise: str,
    antithetic: bool,
    generator: torch.Generator,
    device: torch.device,
    chunk_size: int,
    progress: bool,
    keep_draws: bool = True,
    cv_features: str = "norm",
    proposal: Optional[Tuple[float, float]] = None,
    moments: Optional[Dict[int, Dict[str, Tensor]]] = None,
) -> Tuple[List[Tensor], List[Tensor]]:
    """Evaluate ``f`` on ``n_sets`` independent noise sets, ``pairs[j]`` draws (or antithetic
    pairs) at node ``j`` for every point.

    With an importance ``proposal`` the draws come from it and both the values and the features
    are multiplied by the weight ``w = phi / q`` of the draw (the same for ``Z`` and ``-Z``), and
    ``w - 1`` (mean 0 under ``q``) is the first feature: ``E_q[w f] = E_phi[f]``.

    ``moments`` (a dict, filled in; with ``keep_draws=False`` and vector features): per node ``j``,
    ``moments[j]["gg"]`` ``(S, n, m, m)`` and ``moments[j]["gf"]`` ``(S, n, m)``, the sums over the draws
    of ``g g^T`` and ``g fbar``, for the cross-fitted control variate of :func:`weighted_noise_sum`.

    Returns per node ``fbar`` ``(S, n, P_j)`` (antithetic pair means) and ``g = ||Z||^2 - d``
    ``(S, n, P_j)``; with ``keep_draws=False`` their sums over the draws instead, ``(S, n)``
    each, so that memory does not grow with the number of draws.
    """
    J = pairs.numel()
    d = int(np.prod(shape)) if len(shape) else 1
    P = [int(p) for p in pairs.tolist()]
    src = _NoiseSource(n, d, n_sets, method=noise, generator=generator, device=device)
    k = 2 if antithetic else 1
    outputs: Dict[int, List[Tensor]] = {j: [] for j in range(J)}
    gouts: Dict[int, List[Tensor]] = {j: [] for j in range(J)}
    pending: List[Tuple[int, Tensor, Optional[Tensor], Optional[Tensor]]] = []
    pending_rows = 0

    def flush() -> None:
        nonlocal pending, pending_rows
        if not pending:
            return
        node_idx, point_idx, zrows, sizes = [], [], [], []
        for j, zb, _, _ in pending:  # zb: (S, n, P, d) -> rows ordered (point, set, pair, sign)
            S, _, Pb, _ = zb.shape
            zz = torch.stack([zb, -zb], 3) if antithetic else zb[:, :, :, None]  # (S, n, P, k, d)
            m = S * Pb * k
            zrows.append(zz.permute(1, 0, 2, 3, 4).reshape((n * m,) + tuple(shape)))
            point_idx.append(torch.arange(n, device=device).repeat_interleave(m))
            node_idx.append(torch.full((n * m,), j, dtype=torch.long, device=device))
            sizes.append((j, S, Pb))
        vals = f(torch.cat(node_idx), torch.cat(point_idx), torch.cat(zrows))
        expected = sum(n * S * Pb * k for _, S, Pb in sizes)
        if vals.shape != (expected,):
            raise ValueError(f"integrand returned shape {tuple(vals.shape)}, expected ({expected},)")
        if not bool(torch.isfinite(vals).all()):
            raise ValueError("the integrand is not finite (NaN or inf from the model, or an overflow in it)")
        pos = 0
        for (j, S, Pb), (_, _, wb, gk) in zip(sizes, pending):
            m = n * S * Pb * k
            block = vals[pos : pos + m].reshape(n, S, Pb, k).mean(-1).permute(1, 0, 2)  # (S, n, P)
            if wb is not None:
                block = block * wb
            if moments is not None and gk is not None:
                gf = torch.einsum("snp,snpm->snm", block, gk)
                moments[j]["gf"] = moments[j]["gf"] + gf if "gf" in moments[j] else gf
            if keep_draws:
                outputs[j].append(block)
            else:
                outputs[j] = [block.sum(2) if not outputs[j] else outputs[j][0] + block.sum(2)]
            pos += m
        pending, pending_rows = [], 0

    rows_per_draw = n * k * n_sets
    max_draws = max(1, chunk_size // rows_per_draw)
    iterator: Any = range(J)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="density formula nodes", leave=False)
    for j in iterator:
        for p0 in range(0, P[j], max_draws):  # a node alone larger than a chunk is split
            p1 = min(P[j], p0 + max_draws)
            zb = src.next_block(p1 - p0)  # (S, n, P, d): consecutive Sobol segments, node by node
            wb = None
            if proposal is not None:  # the draws of the heavier-tailed proposal and their weights
                zb, log_w = tail_transform(zb, proposal)
                wb = torch.exp(log_w)  # (S, n, P)
            gb = _cv_features(zb, d, cv_features, antithetic)
            if wb is not None:
                gb = torch.cat([(wb - 1.0)[..., None], gb * wb[..., None]], -1)
            if keep_draws:
                gouts[j].append(gb)
            else:
                gouts[j] = [gb.sum(2) if not gouts[j] else gouts[j][0] + gb.sum(2)]
            gk = None
            if moments is not None and not keep_draws and gb.ndim == 4:
                gk = gb
                gg = torch.einsum("snpm,snpk->snmk", gb, gb)
                moments.setdefault(j, {})
                moments[j]["gg"] = moments[j]["gg"] + gg if "gg" in moments[j] else gg
            rows = rows_per_draw * (p1 - p0)
            if pending_rows + rows > chunk_size and pending:
                flush()
            pending.append((j, zb, wb, gk))
            pending_rows += rows
            if pending_rows >= chunk_size:
                flush()
    flush()
    if not keep_draws:
        return [outputs[j][0] for j in range(J)], [gouts[j][0] for j in range(J)]
    fbar = [torch.cat(outputs[j], 2) for j in range(J)]
    gs = [torch.cat(gouts[j], 2) for j in range(J)]
    return fbar, gs


def _cross_fit_coefficients(
    sf: Tensor, sg: Tensor, sgg: Tensor, sgf: Tensor, per_rep: float,
    pilot: Optional[Tuple[Tensor, Tensor, Tensor, Tensor]], pilot_draws: int,
) -> Tensor:
    """Per replicate ``r``, the least-squares control-variate coefficients on every draw but ``r``'s.

    ``sf`` ``(R, n)``, ``sg`` ``(R, n, m)``, ``sgg`` ``(R, n, m, m)``, ``sgf`` ``(R, n, m)``: replicate ``r``'s
    sums over its ``per_rep`` draws of ``f``, ``phi``, ``phi phi^T``, ``phi f``; ``pilot``: the same sums of
    the pilot (``pilot_draws`` draws), added to every fold.  Returns ``c`` ``(R, n, m)`` with
    ``c_r = (Cov_-r(phi) + ridge)^-1 Cov_-r(phi, f)`` (the ridge: 1e-9 of the mean feature variance).
    """
    R = sf.shape[0]
    tf, tg, tgg, tgf = sf.sum(0), sg.sum(0), sgg.sum(0), sgf.sum(0)
    n_o = (R - 1) * per_rep
    if pilot is not None:
        tf, tg, tgg, tgf = tf + pilot[0], tg + pilot[1], tgg + pilot[2], tgf + pilot[3]
        n_o += pilot_draws
    of, og, ogg, ogf = (tf[None] - sf) / n_o, (tg[None] - sg) / n_o, (tgg[None] - sgg) / n_o, (tgf[None] - sgf) / n_o
    A = ogg - og[..., :, None] * og[..., None, :]
    b = ogf - og * of[..., None]
    m = A.shape[-1]
    ridge = 1e-9 * torch.diagonal(A, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)
    A = A + ridge[..., None, None] * torch.eye(m, dtype=A.dtype, device=A.device)
    coef: Tensor = torch.linalg.solve(A, b[..., None])[..., 0]
    return coef


def weighted_noise_sum(
    f: Integrand,
    n: int,
    shape: Sequence[int],
    weights: Tensor,
    *,
    pairs_per_replicate: int,
    n_replicates: int,
    pilot_pairs: int,
    noise: str = "sobol",
    antithetic: bool = True,
    control_variate: bool = True,
    allocation: str = "neyman",
    generator: torch.Generator,
    device: torch.device,
    chunk_size: int,
    progress: bool = False,
    memory_budget: Optional[int] = None,
    extra_weights: Optional[Tensor] = None,
    cv_features: str = "norm",
    proposal: Optional[Tuple[float, float]] = None,
    cross_fit: bool = False,
) -> NoiseSumResult:
    """Unbiased replicated estimates of ``S(x_i) = sum_j w_j E_Z f_j(x_i, Z)`` for ``n`` points.

    Stage 1 (pilot, ``pilot_pairs`` antithetic pairs per node, independent noise): per point and
    node, the control-variate coefficient ``c_ij = Cov(fbar, g) / Var(g)`` with
    ``g = ||Z||^2 - d`` and the residual standard deviation of ``fbar - c g``.
    Stage 2 (``n_replicates`` independent scrambles): ``pairs_per_replicate`` pairs split across
    nodes by Neyman allocation on ``|w_j| * rms_i sd_ij``; each replicate returns
    ``sum_j w_j mean(fbar - c_ij g)``, unbiased because ``c`` comes from independent draws and
    ``E g = 0`` exactly (every Sobol point is marginally uniform).

    Memory: stage 2 keeps per point, node and replicate only the sums over its draws (not the
    draws), and with ``memory_budget`` (bytes) the points are processed in groups small enough
    that the per-point state of a group (pilot draws, stage-2 sums, coefficients) takes at most a
    quarter of it; the model calls themselves are bounded by ``chunk_size`` rows.  Only the
    results, ``(R + 3 J)`` floats per point (plus ``K R`` with ``extra_weights``), grow with ``n``.

    ``extra_weights`` ``(K, J)``: further weight vectors whose replicated sums over the same node
    estimates are returned too (``extra_replicates``); the allocation still follows ``weights``.

    ``cv_features="quadratic"``: the control variate is ``c_ij . phi(Z)`` with the ``m`` zero-mean
    features of :func:`_cv_features` (every ``Z_i Z_j - delta_ij`` and ``Z_i``), ``c_ij`` the
    least-squares fit on the pilot (a small ridge, ``1e-9`` of the mean feature variance), still
    exactly unbiased; it needs at least ``m + 2`` pilot draws (pairs) per node, and ``cv_coef`` is
    then ``(n, J, m)``.  ``"norm"`` (default): ``c_ij (||Z||^2 - d)`` as above.

    ``proposal=(tau, gamma)`` (only with the quadratic control variate): importance sampling of the
    noise by the change of variables of :func:`tail_transform` (every coordinate ``y = h(z)``, tails
    of ``N(0, tau^2)``), every value and feature weighted by its ``w``, with ``w - 1`` (mean 0) as
    one more feature, so that ``E[w (f(h(Z)) - c . phi)] = E_phi[f]`` exactly and the control variate
    stays exact for a one-Gaussian posterior (``w f = m + m (w - 1) + c . w phi``).  The heavier
    tails reach the rare draws that move ``x_lambda`` into another mixture component
    (docs/math.md I35).

    ``cross_fit=True`` (quadratic control variate only): replicate ``r``'s coefficients are the
    least-squares fit on the pilot and the stage-2 draws of all the OTHER replicates
    (``c_-r = Cov_-r(phi)^-1 Cov_-r(phi, f)``, from the per-replicate sums of ``phi phi^T`` and
    ``phi f``), independent of replicate ``r``'s draws, so every replicate stays exactly unbiased while
    the coefficients rest on ``(R - 1)/R`` of all draws instead of the pilot alone (measured on
    narrow-component mixtures at d = 2: the pilot's 16 draws per node left 1.5-2.5x the stderr).
    ``cv_coef`` is then the mean of the ``c_-r`` over the replicates.
    """
    if cv_features not in CV_FEATURES:
        raise ValueError(f"cv_features must be one of {CV_FEATURES}, got {cv_features!r}")
    proposal = check_proposal(proposal)
    if proposal is not None and not (control_variate and cv_features == "quadratic"):
        raise ValueError("proposal needs the quadratic control variate (control_variate='quadratic')")
    if not isinstance(cross_fit, bool):
        raise TypeError(f"cross_fit must be a bool, got {cross_fit!r}")
    cross_fit = cross_fit and bool(control_variate) and cv_features == "quadratic"
    J = weights.numel()
    w = weights.to(device=device, dtype=torch.float64)
    k = 2 if antithetic else 1
    d = int(np.prod(shape)) if len(shape) else 1
    v = None
    if extra_weights is not None:
        v = extra_weights.to(device=device, dtype=torch.float64)
        if v.ndim != 2 or v.shape[1] != J:
            raise ValueError(f"extra_weights must have shape (K, {J}), got {tuple(v.shape)}")
    max_points = max(1, chunk_size // (n_replicates * k))
    if memory_budget is not None:
        K = 0 if v is None else v.shape[0]
        per_point = 8 * (2 * J * max(pilot_pairs, 0) * k + 3 * n_replicates * J + 4 * J + n_replicates * (d + K))
        if cross_fit:  # the per-replicate sums of phi phi^T and phi f at every node
            m_cf = cv_feature_count(d, "quadratic", antithetic, proposal is not None)
            per_point += 8 * n_replicates * J * (m_cf * m_cf + 2 * m_cf)
        max_points = min(max_points, max(1, memory_budget // (4 * per_point)))
    if n > max_points:  # one draw for every point and replicate must fit a chunk: split the points
        parts = []
        for start in range(0, n, max_points):
            size = min(max_points, n - start)
            f_part = (lambda s0: (lambda j, i, z: f(j, i + s0, z)))(start)
            parts.append(
                weighted_noise_sum(
                    f_part, size, shape, weights, pairs_per_replicate=pairs_per_replicate,
                    n_replicates=n_replicates, pilot_pairs=pilot_pairs, noise=noise, antithetic=antithetic,
                    control_variate=control_variate, allocation=allocation, generator=generator, device=device,
                    chunk_size=chunk_size, progress=progress, memory_budget=memory_budget,
                    extra_weights=extra_weights, cv_features=cv_features, proposal=proposal,
                    cross_fit=cross_fit,
                )
            )
        extras = [p.extra_replicates for p in parts if p.extra_replicates is not None]
        return NoiseSumResult(
            replicates=torch.cat([p.replicates for p in parts], 1),
            node_means=torch.cat([p.node_means for p in parts], 0),
            allocation=parts[0].allocation,
            cv_coef=torch.cat([p.cv_coef for p in parts], 0),
            pilot_sd=torch.stack([p.pilot_sd for p in parts]).pow(2).mean(0).sqrt(),
            evals_per_point=parts[0].evals_per_point,
            info={"d": d, "point_groups": len(parts), "allocations": [p.allocation for p in parts]},
            extra_replicates=None if not extras else torch.cat(extras, 2),
        )
    evals = 0
    quadratic = cv_features == "quadratic" and control_variate
    m_feat = cv_feature_count(d, cv_features, antithetic, proposal is not None) if quadratic else 1
    if quadratic and pilot_pairs < m_feat + 2:
        raise ValueError(
            f"the quadratic control variate has {m_feat} coefficients per node: it needs n_pilot of at least "
            f"{m_feat + 2} draws (pairs) per node, got {pilot_pairs}"
        )
    cvq = torch.zeros(n, J, m_feat, dtype=torch.float64, device=device)
    cv = torch.zeros(n, J, dtype=torch.float64, device=device)
    sd = torch.ones(J, dtype=torch.float64, device=device)
    pilot_sums: Dict[int, Tuple[Tensor, Tensor, Tensor, Tensor]] = {}
    pilot_used = pilot_pairs > 0 and (control_variate or allocation == "neyman")
    if pilot_used:
        if pilot_pairs < 2:
            raise ValueError(f"n_pilot must give at least 2 pairs per node, got {pilot_pairs}")
        fb, gs = _run_stage(
            f, n, shape, torch.full((J,), pilot_pairs, dtype=torch.long), 1, noise=noise, antithetic=antithetic,
            generator=generator, device=device, chunk_size=chunk_size, progress=progress,
            cv_features="quadratic" if quadratic else "norm", proposal=proposal,
        )
        evals += J * pilot_pairs * k
        sds = []
        for j in range(J):
            y = fb[j][0]  # (n, P)
            g = gs[j][0]  # (n, P), or (n, P, m) for the quadratic features
            if quadratic:
                gc = g - g.mean(1, keepdim=True)
                yc = y - y.mean(1, keepdim=True)
                A = torch.einsum("npm,npk->nmk", gc, gc)
                ridge = 1e-9 * torch.diagonal(A, dim1=1, dim2=2).mean(1).clamp_min(1e-300)
                A = A + ridge[:, None, None] * torch.eye(m_feat, dtype=A.dtype, device=A.device)
                c = torch.linalg.solve(A, torch.einsum("npm,np->nm", gc, yc)[..., None])[..., 0]  # (n, m)
                cvq[:, j] = c
                r = y - (g * c[:, None, :]).sum(-1)
                if cross_fit:  # the pilot's sums join every replicate's fit
                    pilot_sums[j] = (
                        y.sum(1), g.sum(1), torch.einsum("npm,npk->nmk", g, g), torch.einsum("npm,np->nm", g, y)
                    )
            elif control_variate:
                gc = g - g.mean(1, keepdim=True)
                vg = (gc * gc).sum(1)
                cov = ((y - y.mean(1, keepdim=True)) * gc).sum(1)
                c = torch.where(vg > 0, cov / vg.clamp(min=1e-300), torch.zeros_like(vg))
                cv[:, j] = c
                r = y - c[:, None] * g
            else:
                r = y
            sds.append(r.var(1, unbiased=True).mean().sqrt())
        sd = torch.stack(sds)
    if allocation == "neyman" and pilot_used:
        alloc = allocate((w.abs() * sd).cpu(), pairs_per_replicate, 1)
    elif allocation in ("neyman", "uniform"):
        alloc = allocate(torch.ones(J, dtype=torch.float64), pairs_per_replicate, 1)
    else:
        raise ValueError(f"allocation must be 'neyman' or 'uniform', got {allocation!r}")
    moments: Optional[Dict[int, Dict[str, Tensor]]] = {} if cross_fit else None
    fb, gs = _run_stage(
        f, n, shape, alloc, n_replicates, noise=noise, antithetic=antithetic, generator=generator,
        device=device, chunk_size=chunk_size, progress=progress, keep_draws=False,
        cv_features="quadratic" if quadratic else "norm", proposal=proposal, moments=moments,
    )
    evals += int(alloc.sum()) * k * n_replicates
    reps = torch.zeros(n_replicates, n, dtype=torch.float64, device=device)
    node_means = torch.zeros(n, J, dtype=torch.float64, device=device)
    extra = None if v is None else torch.zeros(v.shape[0], n_replicates, n, dtype=torch.float64, device=device)
    for j in range(J):
        P_j = float(alloc[j])
        y = fb[j]  # (R, n): sums over the P_j draws
        g = gs[j]  # (R, n), or (R, n, m) for the quadratic features
        if quadratic and moments is not None:
            c_r = _cross_fit_coefficients(y, g, moments[j]["gg"], moments[j]["gf"], P_j, pilot_sums.get(j),
                                          pilot_pairs)
            cvq[:, j] = c_r.mean(0)
            est = y / P_j - (c_r * (g / P_j)).sum(-1)
        elif quadratic:
            est = y / P_j - (cvq[None, :, j, :] * (g / P_j)).sum(-1)
        else:
            est = y / P_j - cv[None, :, j] * (g / P_j)  # (R, n)
        reps += w[j] * est
        node_means[:, j] = est.mean(0)
        if extra is not None and v is not None:
            extra += v[:, j, None, None] * est[None]
    return NoiseSumResult(
        replicates=reps, node_means=node_means, allocation=alloc, cv_coef=cvq if quadratic else cv, pilot_sd=sd,
        evals_per_point=evals,
        info={"d": d, "proposal": proposal}, extra_replicates=extra,
    )
