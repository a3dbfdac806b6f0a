"""Benchmark: ``GaussianMixture.denoise`` throughput (points per second), docs/math.md I3.

For d in {2, 64, 512} and K in {3, 32} (full covariances from ``random_gmm``) and growing batch
sizes n, time ``gmm.denoise(x, t, LiYan())`` with a different time for every point (the way the
density-formula estimators call it) and report points per second.  A batch size whose predicted
time exceeds ``--budget`` seconds is skipped (shown as "-").

    .venv/bin/python benchmarks/targets.py            # full table, writes docs/bench_targets.md
    .venv/bin/python benchmarks/targets.py --quick    # small n only, prints the table

A CUDA device is benchmarked too when ``torch.cuda.is_available()``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from densityformula import schedules  # noqa: E402
from densityformula.targets import random_gmm  # noqa: E402

DS = (2, 64, 512)
LOAD = [0.0]
KS = (3, 32)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_denoise(d: int, K: int, n: int, device: torch.device, repeats: int) -> Tuple[float, float]:
    """Minimum wall time and minimum process CPU time (all threads) of one ``denoise`` call on ``n``
    points with per-point times (seconds).  CPU time is far less sensitive than wall time to other
    jobs sharing the machine."""
    gmm = random_gmm(d, K, seed=0, device=device)
    sch = schedules.LiYan()
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(n, d, generator=g, dtype=torch.float64, device=device)
    t = torch.rand(n, generator=g, dtype=torch.float64, device=device)
    with torch.no_grad():
        gmm.denoise(x[: min(n, 64)], t[: min(n, 64)], sch)  # warm-up
    _sync(device)
    times: List[float] = []
    cpu: List[float] = []
    # at least `repeats` calls and 0.3 s in total; the minimum is the least disturbed by other load
    while len(times) < repeats or (sum(times) < 0.3 and len(times) < 50):
        c0, t0 = time.process_time(), time.perf_counter()
        with torch.no_grad():
            gmm.denoise(x, t, sch)
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(times), min(cpu)


Table = Dict[Tuple[int, int], Dict[int, Optional[float]]]


def run(device: torch.device, ns: List[int], budget: float, repeats: int) -> Tuple[Table, Table]:
    """Points per wall-clock second and points per CPU second, per (d, K) and n."""
    wall: Table = {}
    cpu: Table = {}
    for d in DS:
        for K in KS:
            row_w: Dict[int, Optional[float]] = {}
            row_c: Dict[int, Optional[float]] = {}
            last: Optional[Tuple[int, float]] = None
            for n in ns:
                if last is not None and last[1] * n / last[0] > budget:
                    row_w[n] = row_c[n] = None
                    continue
                sec, csec = time_denoise(d, K, n, device, repeats)
                row_w[n] = n / sec
                row_c[n] = n / csec if csec > 0 else None
                last = (n, sec)
                print(
                    f"[{device.type}] d={d:4d} K={K:3d} n={n:7d}: {sec * 1e3:10.2f} ms wall {csec * 1e3:10.2f} ms cpu"
                    f"  {n / sec:12.4g} points/s",
                    flush=True,
                )
            wall[(d, K)] = row_w
            cpu[(d, K)] = row_c
    return wall, cpu


def fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:,.0f}"


def markdown(tables: Dict[str, Table], ns: List[int], cmd: str) -> str:
    lines = [
        "# Benchmark: `GaussianMixture.denoise` throughput",
        "",
        "Exact posterior mean (docs/math.md I3) of a `random_gmm(d, K)` mixture with full covariances, float64,",
        "one different LiYan time per point, `torch.no_grad()`; points per second = n / (minimum wall time",
        "over >= 3 calls and >= 0.3 s of calls).  \"-\" = skipped: one call was predicted to exceed the",
        "budget (`--budget`, seconds) from the previous n.",
        "",
        f"- command: `{cmd}`",
        f"- date (UTC): {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M')}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores (torch default threads = {torch.get_num_threads()})",
        f"- torch {torch.__version__}, Python {platform.python_version()}",
        f"- load average (1 min) at start / end: {LOAD[0]:.1f} / {os.getloadavg()[0]:.1f}"
        + ("  (shared machine: other jobs were running; numbers are lower bounds)" if LOAD[0] > 1.5 else ""),
    ]
    if torch.cuda.is_available():
        lines.append(f"- GPU: {torch.cuda.get_device_name(0)}")
    for dev, table in tables.items():
        lines += ["", f"## {dev}", ""]
        lines.append("| d | K | " + " | ".join(f"n = {n:,}" for n in ns) + " |")
        lines.append("|---:|---:|" + "---:|" * len(ns))
        for (d, K), row in table.items():
            lines.append(f"| {d} | {K} | " + " | ".join(fmt(row.get(n)) for n in ns) + " |")
    lines += [
        "",
        "On a machine shared with other jobs (load average above the core count) the multi-threaded",
        "numbers collapse: OpenMP threads wait for each other whenever one is descheduled.  The",
        "single-thread table is the stable one; compare runs only at similar load.",
        "",
        "Cost per point is O(K d^2) (two rotations into and out of each component's eigenbasis), so",
        "throughput falls roughly like 1/(K d^2) once d is large; at small d it is dominated by per-call",
        "overhead and grows with n until the batch saturates the cores.  Batches are processed in chunks of",
        "at most 2^23 / (K d) points, which bounds memory at any n.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="n in {1e2, 1e3} only, do not write the markdown")
    p.add_argument("--budget", type=float, default=6.0, help="skip n when one call is predicted to take longer (s)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "bench_targets.md"))
    p.add_argument("--cpu-only", action="store_true")
    p.add_argument("--threads", default="", help="comma-separated torch thread counts (default: 1 and torch's default)")
    args = p.parse_args(argv)
    LOAD[0] = os.getloadavg()[0]
    ns = [100, 1000] if args.quick else [100, 1000, 10_000, 100_000]
    repeats = 3
    tables: Dict[str, Table] = {}
    default_threads = torch.get_num_threads()
    threads = [int(v) for v in args.threads.split(",")] if args.threads else sorted({1, default_threads})
    for nt in threads:
        torch.set_num_threads(nt)  # this script's own process only
        wall, cpu = run(torch.device("cpu"), ns, args.budget, repeats)
        tables[f"CPU, {nt} thread{'s' if nt > 1 else ''}: points per second (wall clock)"] = wall
    torch.set_num_threads(default_threads)
    if torch.cuda.is_available() and not args.cpu_only:
        tables["CUDA, points per second (wall clock)"] = run(torch.device("cuda"), ns, args.budget, repeats)[0]
    cmd = " ".join([".venv/bin/python", "benchmarks/targets.py"] + (argv if argv is not None else sys.argv[1:]))
    text = markdown(tables, ns, cmd)
    print(text)
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
