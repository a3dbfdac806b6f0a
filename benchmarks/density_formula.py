"""Benchmark: error of the density-formula estimators against denoiser evaluations per point.

Compares, on ``random_gmm(d, 3, seed=1)`` targets with the exact (analytic) denoiser, so that the
only error is the estimator's (ground truth ``GaussianMixture.log_prob``):

(a) ``df.density_formula`` (sinh-mapped Gauss-Legendre in log-SNR, tail nodes, scrambled Sobol
    with per-point digital shifts, pilot-fitted control variate, Neyman allocation, replicates);
(b) plain Monte Carlo: 64 equally spaced (midpoint) nodes in log-SNR on [-20, 20], pseudo-random
    noise, no control variate, equal draws per node;
(c) joint Monte Carlo over (log-SNR, noise) with log-SNR drawn from a truncated logistic density
    (location 0, scale 2, clipped at 6 scales = [-12, 12]) and importance weights, as in
    Information-Theoretic Diffusion (Kong, Brekelmans & Ver Steeg 2023); one noise draw per
    log-SNR sample, no control variate.

All three use the same integrand ``d sigmoid(lambda) - ||Z - eps_hat(x_lambda)||^2`` (docs/math.md I6).

Usage::

    .venv/bin/python benchmarks/density_formula.py            # full run, writes docs/bench_density_formula.md
    .venv/bin/python benchmarks/density_formula.py --quick    # small smoke run (prints only)
"""
from __future__ import annotations

import argparse
import datetime
import math
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import densityformula as df  # noqa: E402
from densityformula.formula import density_formula  # noqa: E402
from densityformula.models import AnalyticModel  # noqa: E402
from densityformula.schedules import LiYan  # noqa: E402

LOG_2PI_E = math.log(2 * math.pi) + 1.0
ROWS = 1 << 18  # rows per model call in the baselines


def integrand(model, x: torch.Tensor, lam: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``d sigmoid(lam) - ||z - eps_hat(alpha x + sigma z)||^2`` row by row (docs/math.md I6)."""
    sched = model.schedule
    t = sched.t_from_log_snr(lam)
    a, s = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
    eps = model.eps(a * x + s * z, t)
    return x.shape[1] * torch.sigmoid(lam) - ((z - eps) ** 2).sum(1)


def plain_mc(model, x: torch.Tensor, budget: int, gen: torch.Generator, n_nodes: int = 64, L: float = 20.0):
    """(b): midpoint rule on [-L, L] with budget / n_nodes pseudo-random draws per node."""
    n, d = x.shape
    m = max(1, budget // n_nodes)
    h = 2 * L / n_nodes
    nodes = -L + h * (torch.arange(n_nodes, dtype=torch.float64) + 0.5)
    sums = torch.zeros(n, n_nodes, dtype=torch.float64)
    sq = torch.zeros_like(sums)
    per_call = max(1, ROWS // (n * n_nodes))
    done = 0
    while done < m:
        k = min(per_call, m - done)
        z = torch.randn(n, n_nodes, k, d, generator=gen, dtype=torch.float64)
        lam = nodes[None, :, None].expand(n, n_nodes, k).reshape(-1)
        xs = x[:, None, None, :].expand(n, n_nodes, k, d).reshape(-1, d)
        f = integrand(model, xs, lam, z.reshape(-1, d)).reshape(n, n_nodes, k)
        sums += f.sum(2)
        sq += (f * f).sum(2)
        done += k
    mean = sums / m
    var = (sq / m - mean**2) * m / max(m - 1, 1)
    value = -0.5 * d * LOG_2PI_E + 0.5 * h * mean.sum(1)
    se = 0.5 * h * torch.sqrt((var / m).sum(1))
    return value, se, m * n_nodes


def logistic_mc(
    model, x: torch.Tensor, budget: int, gen: torch.Generator, loc: float = 0.0, scale: float = 2.0, clip: float = 6.0
):
    """(c): lambda ~ logistic(loc, scale) truncated to loc +- clip scale, one Z per lambda."""
    n, d = x.shape
    lo_c = torch.sigmoid(torch.tensor(-clip, dtype=torch.float64))
    hi_c = torch.sigmoid(torch.tensor(clip, dtype=torch.float64))
    mass = float(hi_c - lo_c)
    total = torch.zeros(n, dtype=torch.float64)
    total2 = torch.zeros_like(total)
    per_call = max(1, ROWS // n)
    done = 0
    while done < budget:
        k = min(per_call, budget - done)
        u = lo_c + (hi_c - lo_c) * torch.rand(n, k, generator=gen, dtype=torch.float64)
        lam = loc + scale * torch.logit(u)
        pdf = torch.sigmoid((lam - loc) / scale) * torch.sigmoid(-(lam - loc) / scale) / scale / mass
        z = torch.randn(n, k, d, generator=gen, dtype=torch.float64)
        xs = x[:, None, :].expand(n, k, d).reshape(-1, d)
        f = integrand(model, xs, lam.reshape(-1), z.reshape(-1, d)).reshape(n, k) / pdf
        total += f.sum(1)
        total2 += (f * f).sum(1)
        done += k
    mean = total / budget
    var = (total2 / budget - mean**2) * budget / max(budget - 1, 1)
    return -0.5 * d * LOG_2PI_E + 0.5 * mean, 0.5 * torch.sqrt(var / budget), budget


def ours(model, x: torch.Tensor, budget: int, seed: int):
    """(a): df.density_formula with settings scaled to the budget."""
    if budget < 10_000:
        kw = dict(n_nodes=24, n_replicates=8, n_pilot=4)
    elif budget < 30_000:
        kw = dict(n_nodes=48, n_replicates=16, n_pilot=8)
    else:
        kw = dict(n_nodes=64, n_replicates=16, n_pilot=16)
    est = density_formula(model, x, budget=budget, seed=seed, **kw)
    return est.value, est.stderr, est.nfe


def run(dims: List[int], budgets: Dict[str, Dict[int, List[int]]], n_points: Dict[int, int]) -> List[dict]:
    rows = []
    for d in dims:
        g = df.targets.random_gmm(d, 3, seed=1)
        model = AnalyticModel(g, LiYan())
        x = g.sample(n_points[d], generator=torch.Generator().manual_seed(3))
        truth = g.log_prob(x)
        for method, fn in (("(a) density_formula", "a"), ("(b) plain MC", "b"), ("(c) logistic joint MC", "c")):
            for budget in budgets[fn][d]:
                gen = torch.Generator().manual_seed(1000 + budget)
                t0 = time.perf_counter()
                if fn == "a":
                    value, se, nfe = ours(model, x, budget, seed=budget)
                elif fn == "b":
                    value, se, nfe = plain_mc(model, x, budget, gen)
                else:
                    value, se, nfe = logistic_mc(model, x, budget, gen)
                secs = time.perf_counter() - t0
                err = (value - truth).abs()
                row = dict(
                    d=d, method=method, nfe=int(nfe), mean_abs_err=float(err.mean()), max_abs_err=float(err.max()),
                    rms_se=float(se.pow(2).mean().sqrt()), max_z=float((err / se).max()), seconds=secs, n=len(x),
                )
                rows.append(row)
                print(
                    f"d={d:4d} {method:24s} nfe/pt={row['nfe']:>8d}  mean|err|={row['mean_abs_err']:.2e}  "
                    f"rms se={row['rms_se']:.2e}  max|err|/se={row['max_z']:.2f}  {secs:6.1f}s",
                    flush=True,
                )
    return rows


def equal_error_ratio(rows: List[dict], d: int) -> Tuple[float, float, float, str]:
    """Evaluations (b) needs for the error of (a) at its largest budget, from (b)'s 1/sqrt(N) law."""
    a = max((r for r in rows if r["d"] == d and r["method"].startswith("(a)")), key=lambda r: r["nfe"])
    bs = [r for r in rows if r["d"] == d and r["method"].startswith("(b)")]
    b = max(bs, key=lambda r: r["nfe"])
    # MC error ~ C / sqrt(N); use the measured rms se of (b) (its error is noise-dominated)
    n_needed = b["nfe"] * (b["rms_se"] / a["rms_se"]) ** 2
    return a["nfe"], a["rms_se"], n_needed, f"extrapolated from (b) at {b['nfe']} evals (rms se {b['rms_se']:.2e})"


def cost_growth(rows: List[dict], d: int, method: str = "(a)") -> Tuple[float, float]:
    """Least-squares fit ``rms_se = C N^-p`` over a method's budgets at ``d``: returns (p, N for 1e-2)."""
    pts = [(math.log(r["nfe"]), math.log(r["rms_se"])) for r in rows if r["d"] == d and r["method"].startswith(method)]
    if len(pts) < 2:
        return float("nan"), float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    slope = sum((px - mx) * (py - my) for px, py in pts) / sum((px - mx) ** 2 for px, _ in pts)
    n_at = math.exp(mx + (math.log(1e-2) - my) / slope)
    return -slope, n_at


def to_markdown(rows: List[dict], command: str, elapsed: float, date: str = "") -> str:
    cpu = "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:  # pragma: no cover
        pass
    lines = [
        "# Benchmark: the score-based density formula estimator",
        "",
        "Estimator (a) in brief: `log q_0(x) = -(d/2) log(2 pi e) + 1/2 int [d sigmoid(l) - E||Z - eps_hat||^2] dl`"
        " (docs/math.md I6) by Gauss-Legendre in u with l = 3 sinh(u) on [-25, 25] (dense where the integrand has"
        " structure, sparse in its exponential tails), one extra node per end that integrates the asymptotic"
        " e^{-|l|} tail beyond the range exactly (its size is reported as the truncation bound), scrambled Sobol"
        " normal draws with an independent digital shift per point (uncorrelated errors across points), the"
        " control variate c(||Z||^2 - d) with c fitted per point and node on an independent pilot (this removes"
        " the O(d) noise that does not cancel at large l), Neyman allocation of draws across nodes from the"
        " pilot's residual spread, and independent replicates for the standard error.",
        "",
        f"- command: `{command}`",
        f"- date (UTC): {date or f'{datetime.datetime.utcnow():%Y-%m-%d %H:%M}'}",
        f"- machine: {torch.get_num_threads()} torch threads, CPU `{cpu}`, torch {torch.__version__}, "
        f"Python {platform.python_version()} (machine shared with other jobs: seconds are indicative only)",
        f"- total wall time: {elapsed:.0f} s",
        "- targets: `random_gmm(d, K=3, seed=1)`, exact analytic denoiser (LiYan schedule), points drawn from the"
        " target (seed 3); truth `GaussianMixture.log_prob`",
        "- (a) `df.density_formula(model, x, budget=N)` (n_nodes 24/48/64, replicates 8/16/16, pilot 4/8/16 for"
        " N < 1e4 / < 3e4 / larger); (b) plain MC: 64 midpoint nodes on [-20, 20], pseudo-random noise, no control"
        " variate; (c) Kong et al. joint MC: log-SNR ~ logistic(0, 2) truncated to [-12, 12], one noise draw per"
        " log-SNR sample, importance weights",
        "- (c) uses a logistic centred where these unit-scale targets have their structure (location 0, scale 2)"
        " with ITD's clipping; the issue's measurement of 1-7 nats error at 4000 evaluations was made with other"
        " settings, so (c) here is a stronger baseline than that",
        "- (a)'s settings change with the budget (see above), so its fitted rate p below mixes the QMC rate with"
        " the change of settings",
        "- columns: evaluations of the denoiser per point; mean and max |error| over the points (nats); rms of the"
        " reported standard errors; max |error|/stderr",
        "",
        "| d | method | evals/point | mean abs error | max abs error | rms stderr | max abs err/se | seconds "
        "| points |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['d']} | {r['method']} | {r['nfe']} | {r['mean_abs_err']:.2e} | {r['max_abs_err']:.2e} | "
            f"{r['rms_se']:.2e} | {r['max_z']:.2f} | {r['seconds']:.1f} | {r['n']} |"
        )
    lines += ["", "## Evaluations for equal error, (b) plain MC versus (a)", ""]
    for d in sorted({r["d"] for r in rows}):
        if not any(r["d"] == d and r["method"].startswith("(b)") for r in rows):
            continue
        na, sa, nb, how = equal_error_ratio(rows, d)
        lines.append(
            f"- d = {d}: (a) reaches rms stderr {sa:.2e} with {na} evaluations; (b) would need about "
            f"{nb:.2e} ({nb / na:.0f}x more), {how}."
        )
    lines += ["", "## The issue's goals", ""]
    goal = {2: 1e-3, 10: 1e-2, 100: 1e-1}
    for d in sorted({r["d"] for r in rows}):
        a_rows = [r for r in rows if r["d"] == d and r["method"].startswith("(a)") and r["nfe"] <= 100_000]
        if a_rows and d in goal:
            best = max(a_rows, key=lambda r: r["nfe"])
            ok = "met" if best["mean_abs_err"] <= goal[d] else "NOT met"
            lines.append(
                f"- d = {d}: mean |error| {best['mean_abs_err']:.2e} nats with {best['nfe']} evaluations per point "
                f"(goal <= {goal[d]:g} with <= 1e5): {ok}."
            )
        b_rows = [r for r in rows if r["d"] == d and r["method"].startswith("(b)")]
        if a_rows and b_rows:
            b = max(b_rows, key=lambda r: r["nfe"])
            better = [r for r in a_rows if r["mean_abs_err"] <= b["mean_abs_err"]]
            if better:
                a = min(better, key=lambda r: r["nfe"])
                lines.append(
                    f"  Measured directly: (a) with {a['nfe']} evaluations "
                    f"(mean |error| {a['mean_abs_err']:.1e}) beats "
                    f"(b) with {b['nfe']} ({b['mean_abs_err']:.1e}): "
                    f"at least {b['nfe'] / a['nfe']:.0f}x fewer evaluations "
                    f"for a smaller error."
                )
    lines += ["", "## How the cost grows with d", "",
              "Fit of rms stderr = C N^-p over the budgets of each method (N = evaluations per point):", "",
              "| d | method | p | N for rms stderr 1e-2 |", "|---:|---|---:|---:|"]
    for d in sorted({r["d"] for r in rows}):
        for m in ("(a)", "(b)", "(c)"):
            p, n_at = cost_growth(rows, d, m)
            if math.isfinite(p):
                lines.append(f"| {d} | {m} | {p:.2f} | {n_at:.2e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke run; prints the table, writes nothing")
    parser.add_argument("--dims", type=int, nargs="*", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_density_formula.md")
    parser.add_argument("--from-json", type=Path, default=None, help="re-render the table from saved rows")
    args = parser.parse_args()
    if args.from_json is not None:
        import json

        data = json.loads(args.from_json.read_text())
        if isinstance(data, list):  # rows only
            data = {
                "rows": data,
                "command": ".venv/bin/python benchmarks/density_formula.py",
                "elapsed": float("nan"),
                "date": "",
            }
        md = to_markdown(data["rows"], data["command"], data["elapsed"], data["date"])
        args.out.write_text(md)
        print(md)
        return
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.quick:
        dims = args.dims or [2, 10]
        budgets = {k: {d: [2_000, 20_000] for d in dims} for k in "abc"}
        n_points = {d: 4 for d in dims}
    else:
        dims = args.dims or [2, 10, 100]
        budgets = {
            "a": {
                2: [2_000, 10_000, 30_000, 100_000],
                10: [2_000, 10_000, 30_000, 100_000],
                100: [10_000, 30_000, 100_000],
            },
            "b": {
                2: [2_000, 10_000, 100_000, 1_000_000],
                10: [2_000, 10_000, 100_000, 300_000],
                100: [10_000, 100_000],
            },
            "c": {
                2: [2_000, 10_000, 100_000, 1_000_000],
                10: [2_000, 10_000, 100_000, 300_000],
                100: [10_000, 100_000],
            },
        }
        n_points = {2: 16, 10: 16, 100: 4}
    rows = run(dims, budgets, n_points)
    if not args.quick:
        import json

        (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
        (ROOT / "benchmarks" / "results" / "density_formula.json").write_text(
            json.dumps({"rows": rows, "command": ".venv/bin/python benchmarks/density_formula.py",
                        "elapsed": time.perf_counter() - t0, "date": f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M}"},
                       indent=1)
        )
    elapsed = time.perf_counter() - t0
    command = "benchmarks/density_formula.py" + (" --quick" if args.quick else "")
    md = to_markdown(rows, ".venv/bin/python " + command, elapsed)
    print(md)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(md)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
