"""Training throughput (samples/s) of MLP denoisers, and the 2-D quality check of issue 5.

    .venv/bin/python benchmarks/training.py [--quick] [--threads N] [--no-quality]

Throughput: ``Trainer.train_step`` (forward, loss, backward, AdamW, EMA) at batch 4096 for a
d = 2 MLP (width 128, depth 3) and a d = 64 MLP (width 512, depth 3; the digits size), data
from a fixed tensor dataset on the device, on CPU and -- when ``torch.cuda.is_available()`` --
on GPU (full precision and bf16 autocast).  Quality: a d = 2 mixture model trained on CPU;
its denoising loss relative to the exact denoiser's (the floor) on the same 200k evaluation
draws.  Prints Markdown tables; writes nothing.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from densityformula import schedules, targets  # noqa: E402
from densityformula.models import AnalyticModel  # noqa: E402
from densityformula.neural import MLPDenoiser  # noqa: E402
from densityformula.training import Trainer  # noqa: E402

BATCH = 4096
CONFIGS = [(2, 128, 3), (64, 512, 3)]


def throughput(d: int, width: int, depth: int, device: str, steps: int, amp: bool = False, repeats: int = 5):
    """Median and best samples/s over ``repeats`` timed blocks of ``steps`` steps."""
    sch = schedules.VPLinear()
    g = torch.Generator()
    g.manual_seed(0)
    data = torch.randn(4 * BATCH, d, generator=g)
    model = MLPDenoiser(d, sch, width=width, depth=depth, seed=0)
    tr = Trainer(model, data, steps=repeats * steps + 5, batch_size=BATCH, device=device, progress=False,
                 mixed_precision="bf16" if amp else False, time_sampling="truncated")
    for _ in range(5):  # warm-up (allocator, kernels)
        tr.train_step()
    rates = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            tr.train_step()
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(steps * BATCH / (time.perf_counter() - start))
    rates.sort()
    return rates[len(rates) // 2], rates[-1]


def quality(steps: int) -> dict:
    """The configuration of tests/test_training_slow.py."""
    sch = schedules.VPLinear()
    gmm = targets.random_gmm(2, 4, seed=0)
    model = MLPDenoiser(2, sch, width=128, depth=3, seed=0)
    tr = Trainer(model, gmm, steps=steps, batch_size=512, lr=2e-3, ema_decay=0.99, time_sampling="truncated",
                 device="cpu", seed=0, progress=False)
    start = time.perf_counter()
    tr.train()
    seconds = time.perf_counter() - start
    g = torch.Generator()
    g.manual_seed(123)
    n = 200_000
    x0 = gmm.sample(n, generator=g)
    t = tr.loss.sample_t(n, g)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        le = tr.loss(AnalyticModel(gmm, sch), x0, t=t, noise=eps)
        out = {"seconds": seconds, "exact": float(le.mean())}
        for name, m in (("raw", tr.model), ("ema", tr.ema)):
            lm = tr.loss(m, x0.float(), t=t, noise=eps.float()).double()
            diff = lm - le
            out[name] = (float(lm.mean()), float(diff.mean()) / float(le.mean()),
                         float(diff.std()) / math.sqrt(n) / float(le.mean()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer timed steps (CI smoke run)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for this run")
    ap.add_argument("--no-quality", action="store_true", help="skip the 2-D quality check")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps_cpu = 2 if args.quick else 8
    cpu_name = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    print(f"torch {torch.__version__}; CPU: {cpu_name}, {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}")
    devices = [("cpu", False)]
    if torch.cuda.is_available():
        devices += [("cuda", False), ("cuda", True)]
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    print("\n| d | MLP (width x depth) | device | precision | batch | samples/s (median of 5 blocks) | best block |\n"
          "|---|---|---|---|---|---|---|")
    results = {}
    for d, width, depth in CONFIGS:
        for dev, amp in devices:
            steps = steps_cpu if dev == "cpu" else (10 if args.quick else 50)
            sps, best = throughput(d, width, depth, dev, steps, amp)
            results[(d, dev, amp)] = sps
            precision = "bf16 autocast" if amp else "fp32"
            print(f"| {d} | {width} x {depth} | {dev} | {precision} | {BATCH} | {sps:,.0f} | {best:,.0f} |")
    if torch.cuda.is_available():
        for d, _, _ in CONFIGS:
            best = max(results[(d, "cuda", False)], results[(d, "cuda", True)])
            print(f"GPU / CPU throughput, d = {d}: {best / results[(d, 'cpu', False)]:.1f}x")
    if not args.no_quality:
        steps = 300 if args.quick else 1500
        q = quality(steps)
        print(f"\n2-D mixture (random_gmm(2, 4, seed=0)), VPLinear, eps loss, {steps} steps x 512 on CPU: "
              f"{q['seconds']:.1f} s")
        print("| weights | loss | exact loss | excess | std. error |\n|---|---|---|---|---|")
        for name in ("raw", "ema"):
            lm, gap, se = q[name]
            print(f"| {name} | {lm:.5f} | {q['exact']:.5f} | {100 * gap:+.2f}% | {100 * se:.2f}% |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
