"""Benchmark: ``density_formula(..., atol=...)`` on a broad random family of Gaussian mixtures.

Each member is drawn with a fixed seed (not the ``random_gmm(d, 3, seed=1)`` family the defaults
were tuned on): ``K`` in 2..6 components, mean separation log-uniform in [1, 30] (units of the
unit-scale component), condition number log-uniform in [1, 1000], and per component an overall
scale log-uniform in [0.02, 1] (narrow components), random rotations, softmax(N(0, 1)) weights.
The model is the exact denoiser (:class:`~densityformula.models.AnalyticModel`), so the truth
``GaussianMixture.log_prob`` is exact and the only error is the estimator's (docs/math.md I6).
Points are drawn from each member (seeded).

Per member: mean and worst |error| (nats), evaluations per point spent (mean, max), the share
of points flagged as not meeting ``atol``, and the coverage of ``value +- 1.96 stderr``; then the
worst member and the mean over members.

Usage::

    .venv/bin/python benchmarks/density_formula_broad.py          # full run, writes docs/bench_density_formula_broad.md
    .venv/bin/python benchmarks/density_formula_broad.py --quick  # small smoke run (prints only)
"""
from __future__ import annotations

import argparse
import datetime
import math
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densityformula.formula import density_formula  # noqa: E402
from densityformula.models import AnalyticModel  # noqa: E402
from densityformula.schedules import LiYan  # noqa: E402
from densityformula.targets import GaussianMixture  # noqa: E402


def member(d: int, seed: int) -> Tuple[GaussianMixture, Dict[str, float]]:
    """One member of the broad family (see the module docstring), fixed by ``(d, seed)``."""
    g = torch.Generator().manual_seed(1_000_003 * d + seed)
    K = int(torch.randint(2, 7, (1,), generator=g))
    sep = math.exp(math.log(30.0) * float(torch.rand(1, generator=g)))
    cond = math.exp(math.log(1000.0) * float(torch.rand(1, generator=g)))
    w = torch.softmax(torch.randn(K, generator=g, dtype=torch.float64), 0)
    means = sep / math.sqrt(2.0 * d) * torch.randn(K, d, generator=g, dtype=torch.float64)
    frac = torch.linspace(-0.5, 0.5, d, dtype=torch.float64) if d > 1 else torch.zeros(1, dtype=torch.float64)
    covs, scales = [], []
    for _ in range(K):
        sc = math.exp(math.log(0.02) * float(torch.rand(1, generator=g)))
        e = sc**2 * torch.exp(frac * math.log(cond))
        Q, R = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        Q = Q * torch.sign(torch.diagonal(R))[None, :]
        covs.append(Q @ torch.diag(e) @ Q.T)
        scales.append(sc)
    S = torch.stack(covs)
    S = 0.5 * (S + S.transpose(1, 2))
    return GaussianMixture(w, means, S), dict(K=K, separation=sep, condition=cond, min_scale=min(scales))


def run(members: List[Tuple[int, int]], n_points: int, atol: float, max_evals: int) -> List[dict]:
    rows = []
    for d, seed in members:
        gm, info = member(d, seed)
        model = AnalyticModel(gm, LiYan())
        x = gm.sample(n_points, generator=torch.Generator().manual_seed(seed + 7))
        truth = gm.log_prob(x)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the flags are counted below
            est = density_formula(model, x, atol=atol, max_evals=max_evals, seed=seed)
        secs = time.perf_counter() - t0
        err = (est.value - truth).abs()
        z = err / est.stderr
        spent = est.extras["evals_per_point"].double()
        met = est.extras["met_target"]
        row = dict(
            d=d, seed=seed, **info, n=n_points, atol=atol, max_evals=max_evals, mean_err=float(err.mean()),
            max_err=float(err.max()), frac_err_le_atol=float((err <= atol).double().mean()),
            evals_mean=float(spent.mean()), evals_max=float(spent.max()), flagged=int((~met).sum()),
            coverage=float((z <= 1.96).double().mean()), max_z=float(z.max()),
            rms_se=float(est.stderr.pow(2).mean().sqrt()), seconds=secs,
        )
        rows.append(row)
        print(
            f"d={d:3d} seed={seed:2d} K={info['K']} sep={info['separation']:5.1f} cond={info['condition']:6.1f} "
            f"min scale={info['min_scale']:.3f} atol={atol:g} max_evals={max_evals}: mean|err|={row['mean_err']:.2e} "
            f"max={row['max_err']:.2e} evals mean={row['evals_mean']:.0f} max={row['evals_max']:.0f} "
            f"flagged={row['flagged']}/{n_points} coverage={row['coverage']:.2f} max z={row['max_z']:.1f} "
            f"({secs:.0f} s)",
            flush=True,
        )
    return rows


def summary(rows: List[dict]) -> List[str]:
    out = []
    for key in sorted({(r["d"], r["atol"], r["max_evals"]) for r in rows}):
        d, atol, max_evals = key
        rs = [r for r in rows if (r["d"], r["atol"], r["max_evals"]) == key]
        all_met = all(r["flagged"] == 0 for r in rs)
        n_pts = sum(r["n"] for r in rs)
        cov_all = sum(r["coverage"] * r["n"] for r in rs) / n_pts
        out.append(
            f"- d = {d}, atol = {atol:g}, max_evals = {max_evals}: {len(rs)} members x {rs[0]['n']} points; "
            f"mean |error| over members {sum(r['mean_err'] for r in rs) / len(rs):.2e}, "
            f"worst member's mean |error| {max(r['mean_err'] for r in rs):.2e}, "
            f"worst point {max(r['max_err'] for r in rs):.2e}; "
            f"evaluations per point: mean {sum(r['evals_mean'] for r in rs) / len(rs):.0f}, worst member's mean "
            f"{max(r['evals_mean'] for r in rs):.0f}; points flagged {sum(r['flagged'] for r in rs)} of {n_pts} "
            f"(every point of every member met atol: {'yes' if all_met else 'no'}); "
            f"coverage of +-1.96 stderr: all points {cov_all:.3f}, worst member {min(r['coverage'] for r in rs):.2f}, "
            f"best {max(r['coverage'] for r in rs):.2f}; members with coverage in [0.93, 0.97]: "
            f"{sum(0.93 <= r['coverage'] <= 0.97 for r in rs)} of {len(rs)}"
        )
    return out


#: (dimension, members, points per member, atol, max_evals) of the full run; the atol of d = 10 and
#: d = 100 is the accuracy goal of issue 3 there (1e-2, 1e-1 nats at 1e5 evaluations per point)
FULL = [
    (2, 8, 64, 1e-3, 100_000),
    (2, 3, 8, 1e-3, 1_000_000),
    (1, 3, 64, 1e-3, 100_000),
    (10, 2, 16, 1e-2, 100_000),
    (100, 2, 4, 1e-1, 100_000),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run; prints only")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    t0 = time.perf_counter()
    if args.quick:
        rows = run([(2, 0), (2, 1)], 8, 1e-2, 50_000)
        print("\n".join(summary(rows)))
        return
    rows = []
    for d, n_members, n_points, atol, max_evals in FULL:
        rows += run([(d, s) for s in range(n_members)], n_points, atol, max_evals)
    lines = summary(rows)
    print("\n".join(lines))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    cpu = platform.processor() or platform.machine()
    doc = [
        "# Benchmark: density_formula with accuracy on demand (atol) on a broad family of mixtures",
        "",
        "Family, estimator and columns: see the docstring of `benchmarks/density_formula_broad.py` "
        "(K 2-6, separation 1-30, condition number 1-1000, component scales 0.02-1, exact denoiser, "
        "truth `GaussianMixture.log_prob`).",
        "",
        "- command: `.venv/bin/python benchmarks/density_formula_broad.py`",
        f"- date (UTC): {now}; machine: {torch.get_num_threads()} torch threads, CPU `{cpu}`, "
        f"torch {torch.__version__}, "
        f"Python {platform.python_version()} (shared machine: seconds indicative only)",
        f"- total wall time: {time.perf_counter() - t0:.0f} s",
        "- `density_formula(model, x, atol=atol, max_evals=max_evals, seed=member seed)`; (d, members, points, "
        f"atol, max_evals): {FULL}",
        "",
        "| d | seed | K | separation | condition | min scale | atol | max_evals | mean abs err | max abs err "
        "| share err <= atol "
        "| evals/pt mean | evals/pt max | flagged | coverage 1.96 se | max err/se | seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        doc.append(
            f"| {r['d']} | {r['seed']} | {r['K']} | {r['separation']:.1f} | {r['condition']:.0f} "
            f"| {r['min_scale']:.3f} | {r['atol']:g} | {r['max_evals']} "
            f"| {r['mean_err']:.2e} | {r['max_err']:.2e} | {r['frac_err_le_atol']:.2f} | {r['evals_mean']:.0f} "
            f"| {r['evals_max']:.0f} | {r['flagged']}/{r['n']} | {r['coverage']:.2f} | {r['max_z']:.1f} "
            f"| {r['seconds']:.0f} |"
        )
    doc += ["", "## Summary", ""] + lines + [""]
    out = ROOT / "docs" / "bench_density_formula_broad.md"
    out.write_text("\n".join(doc))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
