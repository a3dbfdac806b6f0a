"""A batched Dormand--Prince 5(4) solver whose step size is chosen per point (private).

Why this exists (docs/architecture.md, "Adaptive solvers that do not couple points of a batch").
``torchdiffeq.odeint`` integrates the whole batch with ONE step sequence: the error norm
is a single number for the whole state, so one hard point shrinks every point's steps and,
worse, the accepted steps (hence every point's result) depend on which other points share
the batch.  A custom ``norm`` cannot fix that -- it can only make the shared step
conservative (the maximum over points of each point's error ratio, which is what
``probability_flow(..., solver="batch")`` uses).

This solver runs the same method as ``torchdiffeq``'s ``dopri5`` (same Butcher tableau and
embedded error estimate, same Hairer initial-step rule, same step-size controller with
``safety=0.9, ifactor=10, dfactor=0.2``, same mixed error tolerance
``atol + rtol * max(|y0|, |y1|)`` and RMS norm) but keeps one time, one step size and one
accept/reject decision PER POINT, evaluating all still-active points in one batched call per
stage.  A point's steps therefore depend on that point alone: solving it alone or inside any
batch gives the same steps (tested).  Unlike ``torchdiffeq`` the final step is shortened to
land exactly on the end time, instead of stepping past it and interpolating.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch

Tensor = torch.Tensor

# Dormand--Prince tableau, as in torchdiffeq/_impl/dopri5.py (Shampine's error estimate).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_E = (
    35 / 384 - 1951 / 21600,
    0.0,
    500 / 1113 - 22642 / 50085,
    125 / 192 - 451 / 720,
    -2187 / 6784 - -12231 / 42400,
    11 / 84 - 649 / 6300,
    -1.0 / 60.0,
)
_SAFETY, _IFACTOR, _DFACTOR, _ORDER = 0.9, 10.0, 0.2, 5
# Shampine's midpoint weights of the dense output (as torchdiffeq's DPS_C_MID): y(t0 + h/2)
_C_MID = (
    6025192743 / 30085553152 / 2,
    0.0,
    51252292925 / 65400821598 / 2,
    -2691868925 / 45128329728 / 2,
    187940372067 / 1594534317056 / 2,
    -1776094331 / 19743644256 / 2,
    11237099 / 235043384 / 2,
)

Func = Callable[[Tensor, Tensor, Tensor], Tensor]
#: ``on_accept(idx (k,), t0 (k,), dt (k,), dense)`` with ``dense(theta (q,)) -> (q, k, m)``
OnAccept = Callable[[Tensor, Tensor, Tensor, Callable[[Tensor], Tensor]], None]


def dense_output(
    y0: Tensor, y1: Tensor, f0: Tensor, f1: Tensor, ks: List[Tensor], dt: Tensor
) -> Callable[[Tensor], Tensor]:
    """The order-4 continuous extension of one Dormand--Prince step (Shampine; as ``torchdiffeq``).

    The quartic in ``theta = (t - t0)/dt`` through ``y0``, ``y1``, the midpoint value
    ``y0 + dt sum_i c_mid_i k_i`` and the end slopes ``f0, f1``; returns ``theta (q,) -> (q, k, m)``.
    """
    dty = dt.to(y0.dtype)[:, None]
    y_mid = y0 + dty * sum(c * kk for c, kk in zip(_C_MID, ks) if c != 0.0)
    a = 2 * dty * (f1 - f0) - 8 * (y1 + y0) + 16 * y_mid
    b = dty * (5 * f0 - 3 * f1) + 18 * y0 + 14 * y1 - 32 * y_mid
    c = dty * (f1 - 4 * f0) - 11 * y0 - 5 * y1 + 16 * y_mid
    d = dty * f0

    def at(theta: Tensor) -> Tensor:
        th = theta.to(y0.dtype)[:, None, None]
        out: Tensor = y0 + th * (d + th * (c + th * (b + th * a)))
        return out

    return at


def initial_h0(d0: Tensor, d1: Tensor, span: Tensor) -> Tensor:
    """First trial step of Hairer's rule (Hairer, Norsett & Wanner, Sec. II.4), ``0.01 d0/d1``.

    Hairer (and ``torchdiffeq``) fall back to ``1e-6`` when the state or the velocity is tiny
    (``< 1e-5`` in tolerance units); in the log-SNR clock the velocity is tiny exactly at the
    clean end where every solve starts, and ``1e-6`` would cost ~6 wasted steps of growth.
    Here the fallback is ``1%`` of the interval, a scale on which these ODEs vary (the second
    trial evaluation then bounds the step by the observed change of the velocity).
    """
    fallback = 0.01 * span
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), fallback, 0.01 * d0 / d1.clamp_min(1e-300))
    return torch.minimum(h0, span)


def _rms(v: Tensor, cols: Tensor) -> Tensor:
    """Per-row RMS over the columns selected by the boolean mask ``cols``."""
    return torch.sqrt((v[:, cols] ** 2).mean(-1))


def dopri5_per_point(
    func: Func,
    y0: Tensor,
    t0: Tensor,
    t1: Tensor,
    *,
    rtol: float,
    atol: float,
    err_cols: Tensor,
    max_steps: int = 100_000,
    on_accept: Optional[OnAccept] = None,
) -> Tuple[Tensor, Tensor, int]:
    """Integrate ``dy/dt = func(t, y, idx)`` from ``t0`` to ``t1`` independently for each row.

    Args:
        func: ``func(t (k,), y (k, m), idx (k,)) -> (k, m)``; ``idx`` are the rows' indices in
            ``y0`` (so that per-point data, e.g. Hutchinson probes, can be looked up).
        y0: ``(n, m)`` initial states.
        t0, t1: ``(n,)`` float64 start and end times; all ``t1 - t0`` must share one sign
            (zero allowed).
        rtol, atol: tolerances of the mixed error test ``|err| <= atol + rtol max(|y0|, |y1|)``.
        err_cols: boolean ``(m,)``: the components that enter the error norm.
        max_steps: attempts per point before ``RuntimeError``.
        on_accept: called once per iteration with the rows whose step was accepted:
            ``on_accept(idx, t0, dt, dense)``, ``t0``/``dt`` the steps' starts and signed lengths,
            ``dense(theta)`` the steps' order-4 dense output (:func:`dense_output`) at the
            fractions ``theta`` (``(q,) -> (q, k, m)``).  Used to integrate a function along the
            path by quadrature within each accepted step (``probability_flow(trace_nodes=...)``).

    Returns:
        ``(y1 (n, m), nfe (n,) int64, n_iterations)``.
    """
    n, m = y0.shape
    dev, dt_ = y0.device, y0.dtype
    span = t1 - t0
    direction = 1.0 if bool((span >= 0).all()) else -1.0
    if not bool((span * direction >= 0).all()):
        raise ValueError("t1 - t0 must have the same sign for every point")
    err_cols = err_cols.to(dev)
    y = y0.clone()
    tau = t0.clone()
    nfe = torch.zeros(n, dtype=torch.int64, device=dev)
    active = span.abs() > 0
    idx_all = torch.arange(n, device=dev)
    k1 = torch.zeros_like(y)
    h = torch.zeros(n, dtype=torch.float64, device=dev)
    if bool(active.any()):
        A = idx_all[active]
        yA, tA = y[A], tau[A]
        f0 = func(tA, yA, A)
        # Hairer's initial step (torchdiffeq _select_initial_step, with the per-point norm)
        scale = atol + yA.abs() * rtol
        d0 = _rms(yA / scale, err_cols).double()
        d1 = _rms(f0 / scale, err_cols).double()
        h0 = initial_h0(d0, d1, span[A].abs())
        f1 = func(tA + direction * h0, yA + (direction * h0).to(dt_)[:, None] * f0, A)
        d2 = (_rms((f1 - f0) / scale, err_cols).double() / h0).abs()
        dmax = torch.maximum(d1, d2)
        h1 = torch.where(
            dmax <= 1e-15,
            torch.clamp(h0 * 1e-3, min=1e-6),
            (0.01 / dmax.clamp_min(1e-300)) ** (1.0 / _ORDER),
        )
        h[A] = torch.minimum(100 * h0, h1)
        k1[A] = f0
        nfe[A] += 2
    iterations = 0
    attempts = torch.zeros(n, dtype=torch.int64, device=dev)
    while bool(active.any()):
        iterations += 1
        A = idx_all[active]
        yA, tA, kA = y[A], tau[A], k1[A]
        remaining = (t1[A] - tA).abs()
        hA = torch.minimum(h[A], remaining)
        last = hA >= remaining
        dt = direction * hA
        dty = dt.to(dt_)[:, None]
        ks = [kA]
        for i in range(1, 7):
            incr = sum(a * kk for a, kk in zip(_A[i], ks) if a != 0.0)
            ks.append(func(tA + _C[i] * dt, yA + dty * incr, A))
        y5 = yA + dty * sum(b * kk for b, kk in zip(_A[6], ks[:6]) if b != 0.0)
        # stage 7 was evaluated at (tA + dt, y5): FSAL
        err = dty * sum(e * kk for e, kk in zip(_E, ks) if e != 0.0)
        tol = atol + rtol * torch.maximum(yA.abs(), y5.abs())
        ratio = _rms(err / tol, err_cols).double()
        nfe[A] += 6
        attempts[A] += 1
        accept = ratio <= 1.0
        # step-size controller (torchdiffeq _optimal_step_size)
        safe = torch.where(
            ratio > 0, _SAFETY / ratio.clamp_min(1e-300) ** (1.0 / _ORDER), torch.full_like(ratio, _IFACTOR)
        )
        lower = torch.where(accept, torch.ones_like(ratio), torch.full_like(ratio, _DFACTOR))
        factor = torch.minimum(torch.full_like(ratio, _IFACTOR), torch.maximum(safe, lower))
        h[A] = hA * factor
        acc = A[accept]
        if on_accept is not None and bool(accept.any()):
            on_accept(
                acc, tA[accept], dt[accept],
                dense_output(yA[accept], y5[accept], kA[accept], ks[6][accept], [kk[accept] for kk in ks], dt[accept]),
            )
        y[acc] = y5[accept]
        k1[acc] = ks[6][accept]
        new_tau = tA + dt
        new_tau = torch.where(last, t1[A], new_tau)
        tau[acc] = new_tau[accept]
        finished = accept & last
        active[A[finished]] = False
        if bool((attempts[A] >= max_steps).any()):
            raise RuntimeError(f"dopri5_per_point: more than max_steps={max_steps} steps for some point")
        tiny = h[A] <= 1e-14 * span[A].abs().clamp_min(1e-300)
        if bool((tiny & active[A]).any()):
            raise RuntimeError("dopri5_per_point: step size underflow (the ODE is too stiff or not finite)")
    return y, nfe, iterations
