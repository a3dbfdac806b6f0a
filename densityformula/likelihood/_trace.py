"""Traces of a network's Jacobian for the probability-flow likelihood (I12, I20) (private).

Everything here works on the denoiser ``D(x, t)`` of a batch ``x (n, d)`` whose rows are
independent (row ``i`` of ``D`` depends on row ``i`` of ``x`` only: true of every model in
:mod:`densityformula.models`; the autograd traces of :func:`densityformula.reverse.pf_velocity`
make the same assumption).  Then a vector-Jacobian product with the same covector ``u`` in every
row gives, in row ``i``, ``u^T dD_i/dx_i``, and the trace of each point's Jacobian follows from
the ``d`` basis covectors ``e_j`` (I12's ``div``):

    tr(dD/dx)_i = sum_j e_j^T (dD_i/dx_i) e_j.

- :func:`exact_trace`: the ``d`` products of one ``torch.func.vjp`` (one forward pass) batched
  with ``torch.func.vmap`` over the basis (in chunks, to bound memory): a few batched backward
  passes instead of ``d`` sequential ones.  Exact (equal to the ``d`` autograd passes to float
  rounding; tested).
- :func:`hutchpp_trace`: Hutch++ (Meyer, Musco, Musco & Woodruff 2021).  With a per-point sketch
  ``S (k, d)`` and residual probes ``G (m, d)``, ``Q = orth(J^T S)`` and ``P = Q Q^T``:

      tr J = tr(Q^T J Q) + E_g[(P_perp g)^T J (P_perp g)],   P_perp = I - P,        (H++)

  exact for every ``Q`` with orthonormal columns (``tr(P J P_perp) = tr(J P_perp P) = 0``), so
  each residual probe ``g_j`` gives an unbiased estimate (used with the control variate
  ``- mu (|P_perp g|^2 - (d - r))``, ``E|P_perp g|^2 = d - r`` for ``E[g g^T] = I``, ``r`` the
  rank of ``Q``, ``mu`` the mean Rayleigh quotient ``s^T J s / s^T s`` of the sketch, which
  removes the variance of an identity part of ``J``); the estimate's variance is that of the
  residual part only, whose spread over the ``m`` probes gives an honest standard error (the
  sketch part is exact given ``S``, so it adds no variance).  Cost per call: one forward pass
  and two vmapped backward passes (``k``, then ``k + m`` covectors).
- :func:`point_probes`: probes drawn from one generator per point, seeded by that point's seed,
  so a point's probes (hence its estimate with ``solver="per_point"``) are the same alone or in
  any batch.

The identity (H++) is the one to add to docs/math.md with the Hutchinson estimator.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch.func import vjp, vmap

Tensor = torch.Tensor
Fn = Callable[[Tensor], Tensor]

#: elements (basis covectors x points x d) handled by one vmapped backward pass
_CHUNK_ELEMENTS = 1 << 22

__all__ = ["exact_trace", "hutchpp_trace", "point_probes", "per_point_seeds"]


def _vjp_batched(pullback: Callable[[Tensor], Tuple[Tensor, ...]], cot: Tensor) -> Tensor:
    """``pullback`` applied to every ``cot[j]`` (``(k, n, d)``), vmapped in memory-bounded chunks."""
    k, n, d = cot.shape
    per = max(1, _CHUNK_ELEMENTS // max(1, n * d))
    outs = []
    for j0 in range(0, k, per):
        (g,) = vmap(pullback)(cot[j0 : j0 + per])
        outs.append(g)
    return outs[0] if len(outs) == 1 else torch.cat(outs, 0)


def exact_trace(fn: Fn, x: Tensor) -> Tuple[Tensor, Tensor]:
    """``(fn(x), tr(d fn_i / d x_i))`` per row, exactly, through ``torch.func`` (I12).

    ``tr_i = sum_j [e_j^T J]_{i j}`` from one ``torch.func.vjp`` of ``fn`` at ``x`` and the ``d``
    basis covectors (shared by all rows) pulled back in vmapped chunks.  Differentiable with
    respect to tensors ``fn`` closes over (a network's parameters) when autograd is enabled.
    """
    n, d = x.shape
    out, pullback = vjp(fn, x)[:2]  # (output, pullback); torch.func.vjp adds aux only when asked
    eye = torch.eye(d, dtype=out.dtype, device=out.device)
    basis = eye[:, None, :].expand(d, n, d)
    rows = _vjp_batched(pullback, basis)  # rows[j, i] = e_j^T J_i
    return out, torch.diagonal(rows, dim1=0, dim2=2).sum(-1)


def hutchpp_trace(fn: Fn, x: Tensor, sketch: Tensor, probes: Tensor) -> Tuple[Tensor, Tensor]:
    """``(fn(x), est (n, m))``: Hutch++ estimates (H++) of ``tr(d fn_i/d x_i)``, one per residual probe.

    Args:
        fn: a row-independent map ``(n, d) -> (n, d)``.
        x: ``(n, d)``.
        sketch: ``(k, n, d)`` sketch vectors ``S`` (``k`` per point).
        probes: ``(m, n, d)`` residual probes ``G``.

    Column ``j`` is ``tr(Q^T J Q) + (P_perp g_j)^T J (P_perp g_j) - mu (|P_perp g_j|^2 - (d - r))``
    with ``Q = orth(J^T S)`` (``r`` columns); each column is unbiased for the trace, and their mean
    is the Hutch++ estimate.
    """
    out, pullback = vjp(fn, x)[:2]  # (output, pullback); torch.func.vjp adds aux only when asked
    y = _vjp_batched(pullback, sketch.to(out.dtype))  # (k, n, d): rows of S^T J
    q, _ = torch.linalg.qr(y.permute(1, 2, 0))  # (n, d, r), r = min(d, k), orthonormal columns
    qs = q.permute(2, 0, 1)  # (r, n, d)
    g = probes.to(out.dtype)
    g_perp = g - torch.einsum("rnd,mnd,rne->mne", qs, g, qs)  # P_perp g
    both = _vjp_batched(pullback, torch.cat([qs, g_perp], 0))
    r, d = qs.shape[0], x.shape[1]
    sketch_part = (both[:r] * qs).sum(-1).sum(0)  # tr(Q^T J Q), (n,)
    # control variate for the identity part of J (a network's D is ~ x / alpha at low noise):
    # mu = the mean Rayleigh quotient s^T J s / s^T s of the sketch (free: S^T J is known; it does
    # not depend on G, so the estimate stays unbiased), and E|P_perp g|^2 = tr(P_perp) = d - r
    s_ = sketch.to(out.dtype)
    mu = ((y * s_).sum(-1) / (s_ * s_).sum(-1).clamp_min(1e-300)).mean(0)  # (n,)
    resid = (both[r:] * g_perp).sum(-1) - mu[None, :] * ((g_perp * g_perp).sum(-1) - (d - r))  # (m, n)
    return out, (sketch_part[None, :] + resid).transpose(0, 1)


SeedLike = Union[int, Sequence[int], Tensor]


def per_point_seeds(seed: SeedLike, n: int) -> list[int]:
    """The seed of each of ``n`` points: ``seed + i`` for an int, else the ``n`` given seeds.

    An int ``seed`` gives point ``i`` of the batch the seed ``seed + i``; so point ``i`` of a batch
    evaluated with ``seed = s`` is point ``0`` of a batch of one with ``seed = s + i``.
    """
    from .._validation import check_seed

    if isinstance(seed, Tensor):
        if seed.dtype.is_floating_point or seed.dtype.is_complex or seed.dtype == torch.bool:
            raise TypeError(f"seed must hold integers, got dtype {seed.dtype}")
        if seed.ndim != 1 or seed.shape[0] != n:
            raise ValueError(f"seed must be an int or have shape ({n},), got shape {tuple(seed.shape)}")
        return [check_seed(int(s), "seed") for s in seed.tolist()]
    if isinstance(seed, (list, tuple)):
        if len(seed) != n:
            raise ValueError(f"seed must be an int or hold {n} seeds (one per point), got {len(seed)}")
        return [check_seed(s, "seed") for s in seed]
    base = check_seed(seed, "seed")
    return [check_seed(base + i, "seed") for i in range(n)]


def point_probes(
    seeds: Sequence[int], shape: Tuple[int, ...], probe: str, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``(*shape, n, d)``-shaped probes whose slice ``[..., i, :]`` comes from a generator seeded by
    ``seeds[i]`` alone (``shape = (..., d)`` without the point axis; Rademacher or standard normal)."""
    *lead, d = shape
    cols = []
    for s in seeds:
        gen = torch.Generator(device="cpu")
        gen.manual_seed(int(s))
        if probe == "rademacher":
            v = torch.randint(0, 2, (*lead, d), generator=gen).to(torch.float64) * 2 - 1
        else:
            v = torch.randn((*lead, d), generator=gen, dtype=torch.float64)
        cols.append(v)
    if not cols:
        return torch.zeros((*lead, 0, d), dtype=dtype, device=device)
    return torch.stack(cols, -2).to(dtype=dtype, device=device)


def try_exact_trace(fn: Fn, x: Tensor) -> Optional[Tuple[Tensor, Tensor]]:
    """:func:`exact_trace`, or ``None`` when ``torch.func`` cannot transform ``fn`` (data-dependent
    control flow on the transformed values, random ops, unsupported operators, in-place writes to
    captured tensors): the caller then falls back to sequential autograd passes."""
    try:
        return exact_trace(fn, x)
    except (RuntimeError, NotImplementedError):
        return None
