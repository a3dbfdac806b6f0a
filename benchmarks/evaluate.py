"""Cost of `densityformula.evaluation.evaluate` per point and estimator, and what the block size costs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evaluate.py [--quick] [--threads N]

A small digits model (``MLPDenoiser`` width 64, depth 2, VPLinear, 200 Adam steps: the numbers are
the evaluator's cost, not a good likelihood) is saved as a trainer checkpoint and its held-out
points (the dequantized digits) are evaluated from that checkpoint, one process, float64, by each
estimator of the registry, and by the probability-flow ODE at blocks of 1 and 16 points (the block is
the unit of work that makes the table bitwise batch- and world-size-invariant; a block of one point
per call is the price of that invariance for an estimator whose calls share noise).  Reported: CPU
seconds per point (``time.process_time``: other jobs on a shared machine do not count), model
evaluations per point, and the mean bits/dim with its standard error over the points.  Prints
Markdown.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

import densityformula as df
from densityformula.evaluation import evaluate


def _row(name: str, records: List[Dict[str, Any]], cpu: float) -> str:
    bpd = [float(r["bits_per_dim"]) for r in records]
    nfe = [int(r["nfe"]) for r in records]
    se = statistics.stdev(bpd) / len(bpd) ** 0.5 if len(bpd) > 1 else float("nan")
    return (f"| {name} | {cpu / len(records):.3f} | {statistics.mean(nfe):.0f} | "
            f"{statistics.mean(bpd):.3f} +- {se:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="8 points and a shorter training run")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = 8 if args.quick else 32
    steps = 50 if args.quick else 200
    net = df.models.MLPDenoiser(64, df.schedules.VPLinear(), width=64, depth=2, seed=0)
    trainer = df.training.Trainer(net, df.data.load_digits(dtype=torch.float32), steps=steps, batch_size=128,
                                  lr=3e-3, device="cpu", progress=False, seed=0)
    trainer.train()
    settings = [
        ("pf_ode, exact trace, block 16", ["pf_ode"], {}, 16),
        ("pf_ode, exact trace, block 1", ["pf_ode"], {}, 1),
        ("pf_ode, Hutchinson (2 probes), block 16", ["pf_ode"], {"pf_ode": {"trace": "hutchinson", "n_probes": 2}},
         16),
        ("ddpm (T = 1000, 1 sample)", ["ddpm"], {}, 16),
        ("continuous", ["continuous"], {}, 16),
        ("density_formula", ["density_formula"], {}, 16),
        ("iw (K = 16)", ["iw"], {}, 16),
    ]
    print(f"# evaluate(): CPU seconds per point ({platform.node()}, {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s), torch {torch.__version__}, {datetime.date.today()}; {n} points)\n")
    print("| estimator | CPU s / point | model evaluations / point | bits/dim (se over points) |")
    print("| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = trainer.save_checkpoint(Path(tmp) / "digits.pt")
        for k, (name, est, options, block) in enumerate(settings):
            t0 = time.process_time()
            res = evaluate(ckpt, "digits", est, options=options, limit=n, block=block, seed=0,
                           out=Path(tmp) / f"t{k}.csv", distributed=False, progress=False)
            cpu = time.process_time() - t0
            print(_row(name, res.records, cpu), flush=True)


if __name__ == "__main__":
    main()
