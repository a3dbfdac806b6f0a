"""Benchmark: trace modes of the probability-flow likelihood (I12, I34, I46) of TRAINED MLPs (issue 12).

    .venv/bin/python benchmarks/pf_trace.py [--quick] [--threads 1] [--out docs/bench_pf_trace.md]

Two ``MLPDenoiser`` (width 128, depth 3, VP linear, float32 weights, eps-parameterized) are trained
here with :class:`~densityformula.training.Trainer` (seeded): at d = 64 on the dequantized digits
(4000 Adam steps, batch 256), at d = 2 on ``random_gmm(2, 5, seed=0)`` (3000 steps).  500 held-out
points (64 with ``--quick``; at d = 2 drawn from the mixture), float64, one torch thread by default.

Every mode integrates over the same interval, ``t`` from score_sde_pytorch's ``eps = 1e-5`` to 1,
with the ``N(0, sigma(1)^2 I)`` prior, and its error is against a reference solve of the same
integral (exact trace, per-point solver, ``rtol = atol = 1e-8``).  Modes:

- ``score_sde method``: a plain-torch reimplementation of score_sde_pytorch's ``get_likelihood_fn``
  (scipy ``solve_ivp(RK45)`` in the ``t`` clock on the flattened batch: one step sequence for all
  points; one Rademacher probe held fixed; ``rtol = atol = 1e-5``; ``drift = f x - g^2 s / 2``).
- ``probability_flow`` with ``trace`` in exact / Hutchinson (1, 4, 16 probes) / Hutch++, the default
  batch solver, the per-point solver, and ``trace_nodes=q`` (I46: ``q`` Gauss-Legendre traces per
  accepted step of the x-only per-point solve) at several tolerances.

Columns: wall seconds, the ratio to the one-probe Hutchinson solve of the default mode (the goal's
yardstick) and to the score_sde method, model evaluations per point (velocity and trace calls),
trace evaluations per point, mean and max |error| (nats) and the mean reported standard error.
Timings are on a shared machine: compare ratios within one table (one run).
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import time
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

import densityformula as df
from densityformula.likelihood import probability_flow

T_EPS = 1e-5  # score_sde_pytorch's likelihood eps for VP SDEs

MODES: List[Tuple[str, Dict[str, Any]]] = [
    ("hutchinson 1 probe, batch (default solver)", dict(trace="hutchinson", n_probes=1, seed=0)),
    ("hutchinson 1 probe, per_point", dict(trace="hutchinson", n_probes=1, seed=0, solver="per_point")),
    ("hutchinson 1 probe, per_point, trace_nodes=2", dict(trace="hutchinson", n_probes=1, seed=0, solver="per_point",
                                                          trace_nodes=2)),
    ("hutchinson 1 probe, per_point, trace_nodes=2, rtol=atol=1e-4",
     dict(trace="hutchinson", n_probes=1, seed=0, solver="per_point", trace_nodes=2, rtol=1e-4, atol=1e-4)),
    ("hutchinson 1 probe, per_point, trace_nodes=2, rtol=atol=1e-3",
     dict(trace="hutchinson", n_probes=1, seed=0, solver="per_point", trace_nodes=2, rtol=1e-3, atol=1e-3)),
    ("hutchinson 4 probes, batch", dict(trace="hutchinson", n_probes=4, seed=0)),
    ("hutchinson 16 probes, batch", dict(trace="hutchinson", n_probes=16, seed=0)),
    ("hutch++ sketch 8 + 8 probes, batch", dict(trace="hutchpp", n_probes=8, sketch_size=8, seed=0)),
    ("exact, batch (default)", dict(trace="exact")),
    ("exact, per_point", dict(trace="exact", solver="per_point")),
    ("exact, per_point, trace_nodes=2, rtol=atol=1e-4", dict(trace="exact", solver="per_point", trace_nodes=2,
                                                              rtol=1e-4, atol=1e-4)),
    ("exact, per_point, trace_nodes=3", dict(trace="exact", solver="per_point", trace_nodes=3)),
    ("exact, per_point, trace_nodes=3, rtol=atol=1e-6", dict(trace="exact", solver="per_point", trace_nodes=3,
                                                              rtol=1e-6, atol=1e-6)),
    ("exact, per_point, trace_nodes=2, rtol=atol=1e-6", dict(trace="exact", solver="per_point", trace_nodes=2,
                                                              rtol=1e-6, atol=1e-6)),
    ("exact, per_point, trace_nodes=2, rtol=atol=1e-7", dict(trace="exact", solver="per_point", trace_nodes=2,
                                                              rtol=1e-7, atol=1e-7)),
    ("exact, per_point, rtol=atol=1e-6", dict(trace="exact", solver="per_point", rtol=1e-6, atol=1e-6)),
]
YARDSTICK = MODES[0][0]


def train(d: int, steps: int) -> Tuple[df.models.MLPDenoiser, torch.Tensor]:
    """A trained 128x3 MLP and its held-out points (float64)."""
    S = df.schedules.VPLinear()
    net = df.models.MLPDenoiser(d, S, width=128, depth=3, seed=0)
    if d == 64:
        data = df.data.load_digits(dtype=torch.float32)
        train_x, held = data[:-500], data[-500:].double()
    else:
        g = df.targets.random_gmm(2, 5, seed=0)
        train_x = g.sample(20_000, generator=torch.Generator().manual_seed(0)).float()
        held = g.sample(500, generator=torch.Generator().manual_seed(1))
    tr = df.training.Trainer(net, train_x, steps=steps, batch_size=256, lr=2e-3, device="cpu", progress=False, seed=0)
    tr.train()
    return net, held


def score_sde_method(model: df.models.MLPDenoiser, x: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5,
                     seed: int = 0) -> Tuple[torch.Tensor, int]:
    """score_sde_pytorch's ``get_likelihood_fn`` in plain torch + scipy (see the module docstring).

    ``log p_eps(x) = log N(x_1; 0, sigma(1)^2 I) + int_eps^1 div f~ dt``, ``f~ = f x - g^2 s / 2``,
    the divergence by one Rademacher probe ``v``: ``v^T (d f~/dx) v`` (one vector-Jacobian product).
    """
    from scipy import integrate

    S = model.schedule
    n, d = x.shape
    v = (torch.randint(0, 2, (n, d), generator=torch.Generator().manual_seed(seed)) * 2 - 1).double()
    nfe = [0]

    def drift(z: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((n,), t, dtype=torch.float64)
        a, s2 = S.alpha(tt)[:, None], S.sigma2(tt)[:, None]
        score = (a * model.denoise(z, tt) - z) / s2
        return S.drift(tt)[:, None] * z - 0.5 * S.g2(tt)[:, None] * score

    def ode(t: float, y: np.ndarray) -> np.ndarray:
        nfe[0] += 1
        z = torch.from_numpy(y[: n * d].reshape(n, d)).requires_grad_(True)
        with torch.enable_grad():
            f = drift(z, t)
            (gz,) = torch.autograd.grad((f * v).sum(), z)
        div = (gz * v).sum(-1)
        return np.concatenate([f.detach().numpy().reshape(-1), div.numpy()])

    y0 = np.concatenate([x.numpy().reshape(-1), np.zeros(n)])
    sol = integrate.solve_ivp(ode, (T_EPS, 1.0), y0, rtol=rtol, atol=atol, method="RK45")
    z = torch.from_numpy(sol.y[: n * d, -1].reshape(n, d))
    delta = torch.from_numpy(sol.y[n * d :, -1])
    s2e = float(S.sigma2(torch.tensor(1.0, dtype=torch.float64)))
    prior = -0.5 * (d * math.log(2 * math.pi * s2e) + (z**2).sum(-1) / s2e)
    return prior + delta, nfe[0]


def run(d: int, n: int, steps: int) -> List[Tuple[str, float, float, float, float, float, float]]:
    t0 = time.perf_counter()
    model, held = train(d, steps)
    x = held[:n]
    print(f"d={d}: trained in {time.perf_counter() - t0:.1f} s", flush=True)
    common = dict(t_min=T_EPS, t_max=1.0)
    t0 = time.perf_counter()
    ref = probability_flow(model, x, trace="exact", solver="per_point", rtol=1e-8, atol=1e-8, **common).value
    print(f"d={d}: reference in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    t0 = time.perf_counter()
    val, nfe = score_sde_method(model, x)
    sec = time.perf_counter() - t0
    err = (val - ref).abs()
    rows.append(("score_sde method (scipy RK45, 1 Rademacher probe)", sec, float(nfe), float(nfe),
                 float(err.mean()), float(err.max()), math.inf))
    import warnings

    for name, kw in MODES:
        kw = {"rtol": 1e-5, "atol": 1e-5, **kw}
        with warnings.catch_warnings():  # t_min/t_max inside the trained range: no warning expected
            warnings.simplefilter("error", RuntimeWarning)
            t0 = time.perf_counter()
            est = probability_flow(model, x, **common, **kw)
            sec = time.perf_counter() - t0
        err = (est.value - ref).abs()
        n_tr = est.extras.get("trace_evals_per_point")
        nfe_pt = float(est.extras["nfe_per_point"].double().mean())
        tr_pt = float(n_tr.double().mean()) if n_tr is not None else nfe_pt
        rows.append((name, sec, nfe_pt, tr_pt, float(err.mean()), float(err.max()), float(est.stderr.mean())))
        print(f"d={d:3d} {name:52s} {sec:8.3f} s  evals/pt {nfe_pt:6.0f}  traces/pt {tr_pt:6.0f}  "
              f"mean|err| {float(err.mean()):.3g}  max {float(err.max()):.3g}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="64 points and shorter trainings")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    n = 64 if a.quick else 500
    load0 = os.getloadavg()[0]
    lines = [
        "# Probability-flow trace modes of trained MLPs (benchmarks/pf_trace.py)",
        "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {a.threads} thread(s); command "
        f"`.venv/bin/python benchmarks/pf_trace.py --threads {a.threads}{' --quick' if a.quick else ''}`.",
        "",
        f"MLPDenoiser width 128, depth 3, TRAINED (see the script's docstring), VP linear, {n} held-out points, "
        f"t from {T_EPS:g} to 1, rtol = atol = 1e-5 unless stated; error against an exact-trace per-point solve "
        "at 1e-8. "
        "The ratios are to the first row of each table's default-solver one-probe Hutchinson "
        f"(`{YARDSTICK}`) and to the score_sde method, measured in the same run.",
        "",
    ]
    summary = []
    for d, steps in ((2, 3000), (64, 4000)):
        rows = run(d, n, steps // (4 if a.quick else 1))
        h1 = next(r[1] for r in rows if r[0] == YARDSTICK)
        ss = rows[0][1]
        lines += [f"## d = {d}", "", "| mode | seconds | x one-probe Hutchinson | x score_sde method | evals/point | "
                  "traces/point | mean abs error (nats) | max abs error | mean reported se |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, sec, nfe, trp, err, mx, se in rows:
            lines.append(f"| {name} | {sec:.3f} | {sec / h1:.2f} | {sec / ss:.2f} | {nfe:.0f} | {trp:.0f} | "
                         f"{err:.3g} | {mx:.3g} | {se:.3g} |")
        lines.append("")
        default_err = next(r[4] for r in rows if r[0] == "exact, batch (default)")
        h1_err = next(r[4] for r in rows if r[0] == YARDSTICK)
        exact = [r for r in rows if r[0].startswith("exact")]
        fastest = min(exact, key=lambda r: r[1])
        as_good = min((r for r in exact if r[4] <= default_err), key=lambda r: r[1])
        for label, best in (("fastest exact mode", fastest),
                            ("fastest exact mode at least as accurate as the default exact solve", as_good)):
            summary.append(f"- d = {d}, {label}: `{best[0]}`, {best[1] / h1:.2f}x the one-probe Hutchinson solve, "
                           f"{best[1] / ss:.2f}x the score_sde method; mean |error| {best[4]:.2g} nats (default exact "
                           f"{default_err:.2g}, score_sde method {rows[0][4]:.2g}).")
        ss_err = rows[0][4]
        match = min((r for r in rows[1:] if r[4] <= ss_err), key=lambda r: r[1])
        summary.append(f"- d = {d}, fastest mode at least as accurate as the score_sde method (mean |error| <= "
                       f"{ss_err:.2g} nats): `{match[0]}`, {match[1] / ss:.2f}x its time "
                       f"({ss / match[1]:.1f}x faster), "
                       f"mean |error| {match[4]:.2g}.")
        summary.append(f"- d = {d}: one-probe Hutchinson (default solver) {h1 / ss:.2f}x the score_sde method's "
                       f"time at "
                       f"mean |error| {h1_err:.2g} vs {rows[0][4]:.2g} nats (the same probe law, different probes).")
    lines += ["## Summary", "", *summary, "",
              f"Load average (1 min) before / after: {load0:.2f} / {os.getloadavg()[0]:.2f}."]
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
