"""Benchmark: wall time of the library's core operations, optionally against another checkout.

Each operation runs in a fresh process (one torch thread) and reports the median of ``--reps``
timed repetitions after a warm-up.  With ``--against DIR`` the same operations are timed with
the package of another checkout (for example a ``git worktree`` of an older commit), the two
processes alternating, and the ratio ``this / other`` is printed per pair: on a shared machine
compare these ratios, not absolute seconds.

    .venv/bin/python benchmarks/ops.py                       # this checkout
    git worktree add /tmp/old <commit>
    .venv/bin/python benchmarks/ops.py --against /tmp/old    # ratios this / old
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

ROOT = Path(__file__).resolve().parent.parent

OPS = ["ddim", "ddpm_sampler", "probability_flow", "elbo_ddpm", "density_formula", "train"]


def _operations() -> Dict[str, Callable[[], object]]:
    import torch

    import densityformula as df

    def gen(s: int) -> torch.Generator:
        return torch.Generator().manual_seed(s)

    gmm = df.targets.random_gmm(2, 3, seed=0)
    sched = df.schedules.VPLinear()
    model = df.models.AnalyticModel(gmm, sched)
    x = gmm.sample(2000, generator=gen(1))

    def train() -> object:
        net = df.neural.MLPDenoiser(2, sched, width=64, depth=3, seed=0)
        return df.training.Trainer(net, gmm, steps=300, batch_size=512, lr=3e-3, device="cpu", progress=False,
                                   seed=0).train()

    return {
        "ddim": lambda: df.sampling.ddim(model, n=10000, steps=100, generator=gen(2)),
        "ddpm_sampler": lambda: df.sampling.ddpm(model, n=5000, steps=200, generator=gen(2)),
        "probability_flow": lambda: df.likelihood.probability_flow(model, x, rtol=1e-5, atol=1e-5),
        "elbo_ddpm": lambda: df.elbo.ddpm(model, x[:512], generator=gen(3)),
        "density_formula": lambda: df.density_formula(model, x[:256], seed=0),
        "train": train,
    }


def _time_one(op: str, reps: int) -> float:
    """Median seconds of ``reps`` runs of ``op`` after one warm-up (in this process)."""
    import torch

    torch.set_num_threads(1)
    fn = _operations()[op]
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _in_process(tree: Path, op: str, reps: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, __file__, "--child", op, "--reps", str(reps)], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", type=Path, default=None, help="another checkout to compare with")
    ap.add_argument("--pairs", type=int, default=5, help="alternating process pairs per operation")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per process")
    ap.add_argument("--quick", action="store_true", help="one pair, one repetition, the fast operations")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(_time_one(args.child, args.reps))
        return
    ops = OPS[:4] if args.quick else OPS
    pairs, reps = (1, 1) if args.quick else (args.pairs, args.reps)
    print(f"{'operation':18s} {'this (s)':>10s}" + (f" {'other (s)':>10s} {'ratio median':>13s} {'min':>6s} {'max':>6s}"
                                                       if args.against else ""))
    for op in ops:
        mine: List[float] = []
        other: List[float] = []
        for i in range(pairs):
            order = [(ROOT, mine), (args.against, other)] if args.against else [(ROOT, mine)]
            for tree, acc in order if i % 2 == 0 else order[::-1]:
                acc.append(_in_process(tree, op, reps))
        line = f"{op:18s} {statistics.median(mine):10.3f}"
        if args.against:
            r = [a / b for a, b in zip(mine, other)]
            line += f" {statistics.median(other):10.3f} {statistics.median(r):13.3f} {min(r):6.3f} {max(r):6.3f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
