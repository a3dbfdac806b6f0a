"""Benchmark: trace modes of the probability-flow likelihood (I12) of an MLP (issue 12).

    .venv/bin/python benchmarks/pf_trace.py [--quick] [--threads 1] [--out docs/bench_pf_trace.md]

An ``MLPDenoiser`` (width 128, depth 3, VP linear, float32 weights) with RANDOM weights (seeded,
``zero_init_output=False``; not trained: training for the benchmark was left out for time) at
d = 2 and d = 64; 500 standard-normal points (64 with ``--quick``), rtol = atol = 1e-5,
``solver="batch"``.  Per trace mode: wall time, NFE, mean |error| against a reference solve
(exact trace, rtol = atol = 1e-7), the mean reported standard error, and the time relative to a
one-probe Hutchinson solve.  Modes: ``autograd`` (old exact trace: d sequential backward
passes), ``exact`` (torch.func: one vjp vmapped over the basis), Hutchinson with 1/4/16
Rademacher probes, Hutch++ (sketch 4 + 4 probes, sketch 8 + 8 probes).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import torch

import densityformula as df
from densityformula.likelihood import probability_flow

MODES = [
    ("autograd (old exact)", dict(trace="autograd")),
    ("exact (torch.func)", dict(trace="exact")),
    ("hutchinson, 1 probe", dict(trace="hutchinson", n_probes=1, seed=0)),
    ("hutchinson, 4 probes", dict(trace="hutchinson", n_probes=4, seed=0)),
    ("hutchinson, 16 probes", dict(trace="hutchinson", n_probes=16, seed=0)),
    ("hutch++, sketch 4 + 4 probes", dict(trace="hutchpp", n_probes=4, sketch_size=4, seed=0)),
    ("hutch++, sketch 8 + 8 probes", dict(trace="hutchpp", n_probes=8, sketch_size=8, seed=0)),
]


def run(d: int, n: int) -> list:
    S = df.schedules.VPLinear()
    m = df.models.MLPDenoiser(d, S, width=128, depth=3, seed=0, zero_init_output=False)
    x = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = probability_flow(m, x, trace="exact", rtol=1e-7, atol=1e-7).value
    rows = []
    for name, kw in MODES:
        t0 = time.perf_counter()
        est = probability_flow(m, x, rtol=1e-5, atol=1e-5, **kw)
        sec = time.perf_counter() - t0
        err = float((est.value - ref).abs().mean())
        se = float(est.stderr.mean())
        rows.append((name, sec, est.nfe, err, se))
        print(f"d={d:3d} {name:30s} {sec:8.3f} s  nfe {est.nfe:4d}  mean|err| {err:.3g}  mean se {se:.3g}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    n = 64 if a.quick else 500
    lines = [
        "# Probability-flow trace modes (benchmarks/pf_trace.py)",
        "",
        f"{datetime.date.today()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{a.threads} thread(s), load average {os.getloadavg()[0]:.2f}; command "
        f"`.venv/bin/python benchmarks/pf_trace.py --threads {a.threads}{' --quick' if a.quick else ''}`.",
        "",
        f"MLPDenoiser width 128, depth 3, random weights (seed 0, not trained), VP linear, {n} N(0, I) "
        "points, rtol = atol = 1e-5, solver='batch'; error against an exact-trace solve at 1e-7.",
        "",
    ]
    for d in (2, 64):
        rows = run(d, n)
        h1 = next(r[1] for r in rows if r[0].startswith("hutchinson, 1"))
        lines += [f"## d = {d}", "", "| trace | seconds | x one-probe Hutchinson | NFE | mean abs error (nats) "
                  "| mean reported se |", "|---|---|---|---|---|---|"]
        for name, sec, nfe, err, se in rows:
            lines.append(f"| {name} | {sec:.3f} | {sec / h1:.2f} | {nfe} | {err:.3g} | {se:.3g} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
