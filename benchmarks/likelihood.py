"""Benchmark: probability-flow likelihoods and ELBO costs (issue 4).

    .venv/bin/python benchmarks/likelihood.py [--quick] [--threads N] [--out docs/bench_likelihood.md]

1. Probability-flow log-likelihood of 10,000 points of a 2-D Gaussian mixture
   (``random_gmm(2, 5, seed=0)``) at rtol = atol = 1e-5: exact score, exact trace (closed form,
   I4), exact prior ``q_{t_end}``; wall time, NFE and mean/max |error| against the exact
   ``log q_0``, for each solver mode, plus a reference-like configuration (one Rademacher probe,
   N(0, I) prior).
2. d = 64 (``random_gmm(64, 4, seed=0)``): Hutchinson error against the number of probes, and time.
3. Cost per point of each ELBO (DDPM T = 1000, step-subsampled DDPM, importance-weighted,
   continuous-time / density formula).

Timings are wall-clock on whatever else the machine is running; the load average is recorded,
and so is the CPU time of this process.  On a 2-core machine shared with other jobs, use
``--threads 1``: with 2 intra-op threads every small torch op waits at an OpenMP barrier for a
descheduled thread (measured: a 50k-element division taking 6 ms instead of 20 us).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import time

import torch

import densityformula as df
from densityformula import elbo
from densityformula.likelihood import probability_flow


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def timed_cpu(fn):
    """(result, wall seconds, CPU seconds of this process): CPU time is the fairer number when
    other jobs compete for the cores."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def pf_section(n: int, repeats: int) -> list:
    g = df.targets.random_gmm(2, 5, seed=0)
    x = g.sample(n, generator=torch.Generator().manual_seed(0))
    exact = g.log_prob(x)
    rows = []
    warm = df.models.AnalyticModel(g, df.schedules.VPLinear())
    probability_flow(warm, x[:100])  # warm-up (first-call allocations, thread pool start)
    configs = [
        ("VPLinear", "batch", "max", "exact", "exact q_T"),
        ("VPLinear", "batch", "rms", "exact", "exact q_T"),
        ("VPLinear", "per_point", "-", "exact", "exact q_T"),
        ("LiYan", "batch", "max", "exact", "exact q_T"),
        ("LiYan", "batch", "rms", "exact", "exact q_T"),
        ("LiYan", "per_point", "-", "exact", "exact q_T"),
        ("VPLinear", "batch", "rms", "hutchinson(1)", "N(0,I)"),
    ]
    for sname, solver, norm, trace, prior_name in configs:
        S = getattr(df.schedules, sname)()
        m = df.models.AnalyticModel(g, S)
        prior = (lambda xe, te, S=S: g.log_prob(xe, te, S)) if prior_name.startswith("exact") else "gaussian"
        kw = dict(rtol=1e-5, atol=1e-5, solver=solver, prior=prior)
        if solver == "batch":
            kw["error_norm"] = norm
        if trace.startswith("hutchinson"):
            kw.update(trace="hutchinson", n_probes=1, generator=torch.Generator().manual_seed(1))
        best = None
        for _ in range(repeats):
            est, sec, cpu = timed_cpu(lambda m=m, kw=kw: probability_flow(m, x, **kw))
            if best is None or sec < best[1]:
                best = (est, sec, cpu)
        est, sec, cpu = best
        err = (est.value - exact).abs()
        nfe_mean = float(est.extras["nfe_per_point"].double().mean())
        rows.append((sname, solver, norm, trace, prior_name, sec, cpu, est.nfe, nfe_mean, float(err.mean()),
                     float(err.max())))
        print(rows[-1], flush=True)
    return rows


def hutchinson_section(n: int) -> list:
    g = df.targets.random_gmm(64, 4, seed=0)
    S = df.schedules.VPLinear()
    m = df.models.AnalyticModel(g, S)
    x = g.sample(n, generator=torch.Generator().manual_seed(0))
    exact = g.log_prob(x)
    prior = lambda xe, te: g.log_prob(xe, te, S)  # noqa: E731
    rows = []
    ref, sec = timed(lambda: probability_flow(m, x, rtol=1e-5, atol=1e-5, prior=prior))
    err = (ref.value - exact).abs()
    rows.append(("exact (closed-form I4)", sec, ref.nfe, float(err.mean()), float("nan")))
    print(rows[-1], flush=True)
    ag, sec = timed(lambda: probability_flow(m, x, rtol=1e-5, atol=1e-5, prior=prior, trace="autograd"))
    err = (ag.value - exact).abs()
    rows.append(("exact (autograd, 64 rows)", sec, ag.nfe, float(err.mean()), float("nan")))
    print(rows[-1], flush=True)
    for p in (1, 4, 16, 64):
        est, sec = timed(lambda p=p: probability_flow(m, x, rtol=1e-5, atol=1e-5, prior=prior, trace="hutchinson",
                                                      n_probes=p, generator=torch.Generator().manual_seed(p)))
        err = (est.value - exact).abs()
        se = float(est.stderr.mean()) if p > 1 else float("nan")
        rows.append((f"hutchinson, {p} Rademacher probe(s)", sec, est.nfe, float(err.mean()), se))
        print(rows[-1], flush=True)
    return rows


def elbo_section(n: int, quick: bool) -> list:
    g = df.targets.random_gmm(2, 5, seed=0)
    x = g.sample(n, generator=torch.Generator().manual_seed(0))
    T1000 = df.schedules.Discrete.ddpm_linear(T=1000)
    m = df.models.AnalyticModel(g, T1000)
    mc = df.models.AnalyticModel(g, df.schedules.LiYan())
    exact = g.log_prob(x)
    rows = []
    def g0() -> torch.Generator:
        return torch.Generator().manual_seed(0)

    few = x[: max(1, n // 10)]
    cases = [
        ("elbo.ddpm, T=1000, all steps, n_samples=2", lambda: elbo.ddpm(m, x, n_samples=2, generator=g0())),
        ("elbo.ddpm, T=1000, all steps, n_samples=2, cv_data_var=None",
         lambda: elbo.ddpm(m, x, n_samples=2, cv_data_var=None, generator=g0())),
        ("elbo.ddpm, T=1000, 100 sampled steps (+ L_0)",
         lambda: elbo.ddpm(m, x, steps=100, n_samples=2, generator=g0())),
        ("elbo.importance_weighted, T=1000, k=16 (n_replicates=4)",
         lambda: elbo.importance_weighted(m, few, 16, n_replicates=4, generator=g0())),
        ("elbo.continuous (density_formula defaults)", lambda: elbo.continuous(mc, few, generator=g0())),
    ]
    for name, fn in cases:
        est, sec = timed(fn)
        npts = len(est)
        gap = float((exact[:npts] - est.value).mean())
        rows.append((name, npts, sec / npts * 1e3, est.nfe, float(est.stderr.mean()), gap))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_pf = 1000 if args.quick else 10_000
    repeats = 1 if args.quick else args.repeats
    load0 = os.getloadavg()
    pf = pf_section(n_pf, repeats)
    hu = hutchinson_section(20 if args.quick else 200)
    el = elbo_section(20 if args.quick else 200, args.quick)
    load1 = os.getloadavg()
    lines = [
        "# Benchmark: likelihoods and ELBOs (issue 4)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads",
        f"- load average (1 min) before/after: {load0[0]:.1f} / {load1[0]:.1f} "
        f"(other jobs share this machine; times are best of {repeats})",
        f"- command: `.venv/bin/python benchmarks/likelihood.py{' --quick' if args.quick else ''}"
        f"{f' --threads {args.threads}' if args.threads else ''}`",
        "",
        f"## Probability-flow log-likelihood, {n_pf} points of a 2-D mixture, rtol = atol = 1e-5",
        "",
        "Reference (issue 4): scipy RK45 through numpy, one Rademacher probe, N(0, I) prior: 1.1 s, 74 NFE, "
        "mean |error| 0.34 nats.",
        "",
        "| schedule | solver | error norm | trace | prior | wall s | CPU s | NFE (max) | NFE (mean) | "
        "mean abs err | max abs err |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in pf:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.2f} | {r[6]:.2f} | {r[7]} | {r[8]:.0f} | "
                     f"{r[9]:.2e} | {r[10]:.2e} |")
    lines += [
        "",
        f"## d = 64 mixture (`random_gmm(64, 4)`), VPLinear, {20 if args.quick else 200} points, rtol = atol = 1e-5",
        "",
        "| trace | wall s | NFE | mean abs err (nats) | mean reported stderr |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in hu:
        lines.append(f"| {r[0]} | {r[1]:.2f} | {r[2]} | {r[3]:.3g} | {r[4]:.3g} |")
    lines += [
        "",
        "## Cost of each ELBO (2-D mixture)",
        "",
        "| estimator | points | ms per point | NFE per point | mean stderr | mean (log q - value) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in el:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]} | {r[4]:.3g} | {r[5]:.4f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
