"""Trainer overhead against a bare PyTorch loop, and data-parallel training throughput (gloo, CPU).

    .venv/bin/python benchmarks/trainer_overhead.py [--quick] [--threads N]

Overhead: ``Trainer.train_step`` against a bare loop of the same network (``MLPDenoiser``'s
``forward``), the same loss (eps-prediction, uniform time, the same draws from the same
generators), AdamW (lr 1e-3, no weight decay), cosine learning rate (``LambdaLR``),
``clip_grad_norm_(1.0)`` and the EMA ``lerp_`` with decay ``min(0.999, (1 + k) / (10 + k))``.
The bare loop is timed twice: with torch's defaults (what a user writes: on CPU the
single-tensor AdamW and clipping) and with ``foreach=True`` (the kernels the Trainer uses).
Timed blocks of the trainer and the loops alternate in one process (order reversed every
round), timed in CPU time of the process (``time.process_time``, one torch thread: the time
slices other jobs of a shared machine take do not count); the ratio is per block (trainer /
adjacent bare block), median and spread over blocks, and fastest over fastest.  Before timing,
each pair runs a few steps from the same weights and the weights are compared (they agree to
float rounding: the semantics are the same).

Throughput: samples/s of ``Trainer.train`` with 1 and 2 processes (``torch.multiprocessing``
spawn, gloo, one thread each) at the same global batch.

``--against DIR``: also time ``Trainer.train_step`` of the package in another checkout ``DIR``
(e.g. ``git archive HEAD densityformula | tar -x -C DIR``) against this one, in fresh processes
alternating the two, CPU time per step.

Prints Markdown; without ``--quick`` also writes docs/bench_trainer.md.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from densityformula import schedules  # noqa: E402
from densityformula.neural import MLPDenoiser  # noqa: E402
from densityformula.training import Trainer  # noqa: E402
from densityformula.training.time_sampling import U_EPS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_DATA = 8192


def _data(d: int) -> torch.Tensor:
    g = torch.Generator()
    g.manual_seed(0)
    return torch.randn(N_DATA, d, generator=g)


def _model(d: int, width: int, depth: int) -> MLPDenoiser:
    return MLPDenoiser(d, schedules.VPLinear(), width=width, depth=depth, seed=0)


def _trainer(d: int, width: int, depth: int, batch: int, steps: int) -> Trainer:
    return Trainer(_model(d, width, depth), _data(d), steps=steps, batch_size=batch, device="cpu", seed=0,
                   progress=False, distributed=False)


def bare_loop(d: int, width: int, depth: int, batch: int, steps: int, foreach: bool) -> Tuple[Callable[[], float],
                                                                                            List[torch.Tensor]]:
    """A plain-torch step of the Trainer's default recipe; returns ``(step, parameters + EMA parameters)``."""
    model = _model(d, width, depth)
    x = _data(d)
    ema = copy.deepcopy(model)
    params, ema_params = list(model.parameters()), list(ema.parameters())
    kw = {"foreach": True} if foreach else {}
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0, **kw)  # type: ignore[arg-type]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(1.0, k / steps))))
    gd, gn = torch.Generator(), torch.Generator()
    gd.manual_seed(0)
    gn.manual_seed(1)
    sch = model.schedule
    state: Dict[str, object] = {"perm": None, "pos": 0, "k": 0}

    def step() -> float:
        perm, pos = state["perm"], int(state["pos"])  # type: ignore[call-overload]
        if perm is None or pos + batch > N_DATA:
            perm, pos = torch.randperm(N_DATA, generator=gd), 0
        x0 = x[perm[pos:pos + batch]]  # type: ignore[index]
        state["perm"], state["pos"] = perm, pos + batch
        t = torch.rand(batch, generator=gn, dtype=torch.float64).clamp(U_EPS, 1 - U_EPS)
        eps = torch.randn(x0.shape, generator=gn)
        x_t = sch.alpha(t).float()[:, None] * x0 + sch.sigma(t).float()[:, None] * eps
        loss = ((model(x_t, t) - eps) ** 2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, **kw)  # type: ignore[arg-type]
        opt.step()
        sched.step()
        k = int(state["k"]) + 1  # type: ignore[call-overload]
        state["k"] = k
        with torch.no_grad():
            w = 1.0 - min(0.999, (1.0 + k) / (10.0 + k))
            for pe, p in zip(ema_params, params):
                pe.lerp_(p, w)
        return float(loss.detach())

    return step, params + ema_params


def overhead(d: int, width: int, depth: int, batch: int, steps: int, blocks: int) -> Dict[str, object]:
    total = (blocks + 2) * steps + 10
    tr = _trainer(d, width, depth, batch, total)
    loops = {name: bare_loop(d, width, depth, batch, total, fe) for name, fe in (("default", False),
                                                                                ("foreach", True))}
    # same semantics: the first steps from the same weights agree to float rounding
    for _ in range(5):
        value = tr.train_step()
        for step, _ in loops.values():
            assert abs(step() - value) < 1e-4 * max(1.0, abs(value))
    mine = [p.detach() for p in tr.model.parameters()] + [p.detach() for p in tr.ema.parameters()]  # type: ignore[union-attr]
    agree = max(max(float((a - b.detach()).abs().max()) for a, b in zip(mine, ps)) for _, ps in loops.values())
    times: Dict[str, List[float]] = {"trainer": [], "default": [], "foreach": []}
    order = ["trainer", "default", "foreach"]
    for _ in range(blocks + 1):  # the first block is a warm-up; the order alternates (drift cancels)
        order.reverse()
        for name in order:
            fn = tr.train_step if name == "trainer" else loops[name][0]
            start = time.process_time()  # CPU time: a shared machine's other jobs do not count
            for _ in range(steps):
                fn()
            times[name].append((time.process_time() - start) / steps)
    ratios = {name: sorted(a / b for a, b in zip(times["trainer"][1:], times[name][1:])) for name in ("default",
                                                                                                    "foreach")}
    med = {name: sorted(v[1:])[len(v[1:]) // 2] for name, v in times.items()}
    best = {name: min(times["trainer"][1:]) / min(times[name][1:]) for name in ("default", "foreach")}
    return {"d": d, "width": width, "depth": depth, "batch": batch, "ms": {k: 1e3 * v for k, v in med.items()},
            "ratios": ratios, "best": best, "agree": agree}


_AGAINST = r'''
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
import densityformula
assert densityformula.__file__.startswith(sys.argv[1]), densityformula.__file__
from densityformula import schedules
from densityformula.neural import MLPDenoiser
from densityformula.training import Trainer
d, w, blocks, steps = (int(v) for v in sys.argv[2:6])
g = torch.Generator(); g.manual_seed(0)
tr = Trainer(MLPDenoiser(d, schedules.VPLinear(), width=w, depth=3, seed=0), torch.randn(8192, d, generator=g),
             steps=10**6, batch_size=256, device="cpu", progress=False)
for _ in range(10): tr.train_step()
out = []
for _ in range(blocks):
    t = time.process_time()
    for _ in range(steps): tr.train_step()
    out.append((time.process_time() - t) / steps)
print(json.dumps(out))
'''


def against(other: str, d: int, width: int, rounds: int, steps: int) -> Dict[str, List[float]]:
    """CPU seconds per ``train_step`` of this checkout and ``other``, fresh processes alternating."""
    res: Dict[str, List[float]] = {"this": [], "other": []}
    for _ in range(rounds):
        for name, root in (("this", str(ROOT)), ("other", str(Path(other).resolve()))):
            run = subprocess.run([sys.executable, "-c", _AGAINST, root, str(d), str(width), "4", str(steps)],
                                 capture_output=True, text=True, check=True)
            res[name] += json.loads(run.stdout)
    return {k: sorted(v) for k, v in res.items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, cfg: Tuple[int, int, int, int, int], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    d, width, depth, batch, steps = cfg
    warm = 3
    tr = Trainer(_model(d, width, depth), _data(d), steps=steps + warm, batch_size=batch, device="cpu", seed=0,
                 progress=False, distributed=None if world > 1 else False)
    tr.train(until=warm)
    tr.dist.barrier()
    start, cpu = time.perf_counter(), time.process_time()
    tr.train()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if rank == 0:
        Path(out).write_text(json.dumps([steps * batch / seconds, 1e3 * cpu / steps]))
    if world > 1:
        torch.distributed.destroy_process_group()


def throughput(world: int, cfg: Tuple[int, int, int, int, int]) -> Tuple[float, float]:
    """Wall-clock samples/s and rank 0's CPU ms per step."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rate")
        mp.start_processes(_worker, args=(world, _free_port(), cfg, out), nprocs=world, join=True,
                           start_method="spawn")
        rate, cpu = json.loads(Path(out).read_text())
        return float(rate), float(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short run for make bench (writes nothing)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--against", default=None, help="another checkout whose Trainer to time against this one")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps, blocks = (20, 3) if args.quick else (40, 25)
    configs = [(2, 32, 3, 256), (64, 128, 3, 256)]
    lines = ["| network | batch | Trainer CPU ms/step | bare (torch defaults) CPU ms/step | "
             "bare (foreach) CPU ms/step | "
             "Trainer / bare defaults: per-block median (min-max); best/best | "
             "Trainer / bare foreach: the same | "
             "weights agree to |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for d, width, depth, batch in configs:
        r = overhead(d, width, depth, batch, steps, blocks)
        ms, rat = r["ms"], r["ratios"]
        cells = [f"{v[len(v) // 2]:.3f} ({v[0]:.3f}-{v[-1]:.3f}); best/best {r['best'][k]:.3f}"  # type: ignore[index]
                 for k, v in (("default", rat["default"]), ("foreach", rat["foreach"]))]  # type: ignore[index]
        lines.append(f"| d={d}, {width}x{depth} | {batch} | {ms['trainer']:.2f} | {ms['default']:.2f} | "  # type: ignore[index]
                     f"{ms['foreach']:.2f} | {cells[0]} | {cells[1]} | {r['agree']:.1e} |")  # type: ignore[index]
        print(lines[-1], flush=True)
    tp_cfg = (64, 128, 3, 1024, 10 if args.quick else 60)
    tp = ["| processes (gloo, 1 thread each) | samples/s (wall clock) | vs 1 process | rank 0 CPU ms/step |",
          "| --- | --- | --- | --- |"]
    base = None
    for world in (1, 2):
        rate, cpu = throughput(world, tp_cfg)
        base = base or rate
        tp.append(f"| {world} | {rate:,.0f} | {rate / base:.2f}x | {cpu:.1f} |")
        print(tp[-1], flush=True)
    vs: List[str] = []
    if args.against:
        vs = ["| network | this checkout, CPU ms/step: median (min) | the other checkout: median (min) | "
              "ratio of medians | ratio of minima |", "| --- | --- | --- | --- | --- |"]
        for d, width, _, _ in configs:
            a = against(args.against, d, width, 2 if args.quick else 6, steps)
            m = {k: v[len(v) // 2] for k, v in a.items()}
            vs.append(f"| d={d}, {width}x3, batch 256 | {1e3 * m['this']:.2f} ({1e3 * a['this'][0]:.2f}) | "
                      f"{1e3 * m['other']:.2f} ({1e3 * a['other'][0]:.2f}) | {m['this'] / m['other']:.3f} | "
                      f"{a['this'][0] / a['other'][0]:.3f} |")
            print(vs[-1], flush=True)
        vs = [f"## Against another checkout (`--against`; fresh processes alternating, {steps}-step blocks)", "",
              *vs, ""]
    stamp = (f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"torch {torch.__version__}, "
             f"Python {platform.python_version()}, {datetime.date.today().isoformat()}, torch threads {args.threads}, "
             f"load average {os.getloadavg()[0]:.1f}.")
    text = "\n".join([
        "# Trainer overhead and data-parallel throughput", "",
        "Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/trainer_overhead.py`. " + stamp, "",
        f"## Overhead against a bare loop ({blocks} alternating blocks of {steps} steps)", "",
        "Trainer / bare < 1.10 is the goal (issue 12). The bare loop with torch defaults is what a user writes "
        "(single-tensor AdamW and clipping on CPU); the foreach loop uses the Trainer's kernels. "
        "Per-block ratio: a Trainer block over the adjacent bare block; best/best: the fastest Trainer "
        "block over the fastest bare block (the least loaded moments). "
        "'weights agree to': max abs difference of weights and EMA weights after 5 steps from the same "
        "initialisation and draws.", "", *lines, "",
        f"## Training throughput, d = {tp_cfg[0]} MLP ({tp_cfg[1]}x{tp_cfg[2]}), global batch {tp_cfg[3]}, "
        f"{tp_cfg[4]} steps", "", *tp, "", *vs,
    ])
    print(text if args.quick else "")
    if not args.quick:
        (ROOT / "docs" / "bench_trainer.md").write_text(text)
        print(f"wrote {ROOT / 'docs' / 'bench_trainer.md'}")


if __name__ == "__main__":
    main()
