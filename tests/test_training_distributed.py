"""Data-parallel training (densityformula.training.distributed) on CPU with gloo, 2 spawned processes.

Ground truth: the single-process Trainer at the same global batch (float64 networks, so float
rounding is ~1e-15 and a tolerance of 1e-9 cannot hide a wrong shard, a wrong gradient weight or a
rank drawing other noise, each of which moves the weights by > 1e-4 after a few steps); and a bare
PyTorch loop (plain AdamW, clip_grad_norm_, lerp EMA, the same draws) for the single-process
Trainer's fused per-step path.
"""
from __future__ import annotations

import copy
import math
import os
import socket
from pathlib import Path
from typing import Dict, List

import pytest
import torch
import torch.multiprocessing as mp

from densityformula import schedules, targets
from densityformula.neural import MLPDenoiser
from densityformula.training import DistributedContext, SampledData, TensorData, Trainer
from densityformula.training import checkpoint as ckpt_mod
from densityformula.training.distributed import resolve_distributed, shard_bounds

STEPS, HALF, BATCH, N = 8, 4, 10, 24  # N not a multiple of BATCH: epochs wrap mid-run


def _data() -> torch.Tensor:
    g = torch.Generator()
    g.manual_seed(5)
    return torch.randn(N, 2, generator=g, dtype=torch.float64) * torch.tensor([1.0, 0.3], dtype=torch.float64)


def _trainer(data: object = None, **kw: object) -> Trainer:
    model = MLPDenoiser(2, schedules.VPLinear(), width=16, depth=2, dtype=torch.float64, seed=3)
    args: Dict[str, object] = dict(steps=STEPS, batch_size=BATCH, lr=3e-2, ema_decay=0.9, device="cpu", seed=11,
                                   progress=False, lr_schedule="cosine", warmup=2)
    args.update(kw)
    return Trainer(model, _data() if data is None else data, **args)  # type: ignore[arg-type]


def _with_unused_parameter() -> Trainer:
    """A network with a parameter no batch uses: one process gives it no gradient (AdamW skips it,
    weight decay included); on several it must not become a zero gradient."""
    model = MLPDenoiser(2, schedules.VPLinear(), width=16, depth=2, dtype=torch.float64, seed=3)
    model.unused = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    return Trainer(model, _data(), steps=3, batch_size=BATCH, lr=3e-2, weight_decay=0.1, ema_decay=0.9,
                   device="cpu", seed=11, progress=False)


def _weights(tr: Trainer) -> List[torch.Tensor]:
    out = [p.detach().clone() for p in tr.model.parameters()]
    assert tr.ema is not None
    return out + [p.detach().clone() for p in tr.ema.parameters()]


def _close(a: List[torch.Tensor], b: List[torch.Tensor], tol: float = 1e-9) -> float:
    worst = max(float((x - y).abs().max()) for x, y in zip(a, b))
    assert worst < tol, worst
    return worst


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    saves: List[str] = []
    real = ckpt_mod.atomic_save

    def counting(obj: object, path: object) -> Path:
        saves.append(str(path))
        return real(obj, path)  # type: ignore[arg-type]

    ckpt_mod.atomic_save = counting  # type: ignore[assignment]
    d = Path(out)
    res: Dict[str, object] = {}
    # (a) a fresh 2-process run (found from the torchrun variables), checkpointed at HALF and at the end
    tr = _trainer(checkpoint_path=d / "two.pt", checkpoint_every=HALF)
    res["world"] = tr.dist.world_size
    tr.train(until=HALF)
    tr.save_checkpoint(d / "two_half.pt")
    tr.train()
    res["fresh"] = _weights(tr)
    res["history"] = list(tr.history)
    # (b) resume on 2 processes from a 1-process checkpoint
    tr = _trainer(resume_from=d / "one_half.pt")
    tr.train()
    res["resumed_1to2"] = _weights(tr)
    # (c) fresh samples from a target (a SampledData source draws the global batch and keeps its slice)
    gmm = targets.random_gmm(2, 3, seed=1)
    tr = _trainer(data=SampledData.from_target(gmm, seed=4), steps=HALF)
    tr.train()
    res["sampled"] = _weights(tr)
    tr = _with_unused_parameter()
    tr.train()
    res["unused"] = _weights(tr)
    res["saves"] = saves
    torch.save(res, d / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_processes_equal_one_and_resume_across_world_sizes(tmp_path: Path) -> None:
    # single-process reference runs (in this process)
    ref = _trainer()
    ref.train(until=HALF)
    ref.save_checkpoint(tmp_path / "one_half.pt")
    ref.train()
    one = _weights(ref)
    gmm = targets.random_gmm(2, 3, seed=1)
    sampled = _trainer(data=SampledData.from_target(gmm, seed=4), steps=HALF)
    sampled.train()

    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    # replicas equal bitwise; 2 processes equal 1 process to float rounding
    for key in ("fresh", "resumed_1to2", "sampled", "unused"):
        assert all(torch.equal(a, b) for a, b in zip(r0[key], r1[key])), key
    _close(r0["fresh"], one)
    assert [s for s, _ in r0["history"]] == list(range(1, STEPS + 1))
    assert max(abs(a - b) for (_, a), (_, b) in zip(r0["history"], ref.history)) < 1e-9
    _close(r0["sampled"], _weights(sampled))
    unused = _with_unused_parameter()
    unused.train()
    assert torch.equal(unused.model.unused, torch.ones(3, dtype=torch.float64))  # skipped by AdamW
    _close(r0["unused"], _weights(unused))
    # the weights did move (the comparison is not trivially true)
    assert max(float((a - b).abs().max()) for a, b in zip(one, _weights(_trainer()))) > 1e-2
    # resume 1 -> 2 continues identically
    _close(r0["resumed_1to2"], one)
    # checkpoints written once: rank 0 wrote every file, rank 1 none, no temporary files left
    assert r1["saves"] == [] and len(r0["saves"]) >= 3
    assert {Path(p).name for p in r0["saves"]} == {"two.pt", "two_half.pt"}
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    # resume 2 -> 1 continues identically
    back = _trainer(resume_from=tmp_path / "two_half.pt")
    assert back.step == HALF and back.dist.world_size == 1
    back.train()
    _close(_weights(back), one)
    # the 2-process checkpoint at the end holds the 1-process state
    end = _trainer(resume_from=tmp_path / "two.pt", checkpoint_path=tmp_path / "two.pt")
    assert end.step == STEPS
    _close(_weights(end), one)


def test_shards_partition_the_global_batch() -> None:
    for n in (1, 7, 10, 64):
        for world in (1, 2, 3):
            if n < world:
                continue
            rows = [list(range(*shard_bounds(n, r, world))) for r in range(world)]
            assert sum(rows, []) == list(range(n)) and all(rows)
    x = _data()
    whole, parts = TensorData(x, seed=2), [TensorData(x, seed=2) for _ in range(3)]
    for _ in range(5):  # the union over ranks is the single-process batch, epoch wraps included
        full, _ = whole.next_batch(BATCH)
        got = torch.cat([p.next_shard(BATCH, r, 3)[0] for r, p in enumerate(parts)])
        assert torch.equal(full, got)
    with pytest.raises(ValueError, match="rank"):
        shard_bounds(4, 2, 2)


def test_distributed_argument() -> None:
    dev = torch.device("cpu")
    assert resolve_distributed(None, dev)[0].world_size == 1  # no group, no torchrun variables
    assert resolve_distributed(False, dev)[0].world_size == 1
    with pytest.raises(ValueError, match="distributed=True"):
        resolve_distributed(True, dev)
    with pytest.raises(TypeError, match="distributed"):
        resolve_distributed("yes", dev)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        _trainer(batch_size=1, distributed=DistributedContext(rank=0, world_size=2))


def test_trainer_step_equals_a_bare_torch_loop() -> None:
    """The fused per-step path (foreach AdamW, foreach clipping, foreach EMA) against plain torch."""
    x = _data()
    tr = _trainer(grad_clip=0.05)  # small: clipping active on every step
    model = MLPDenoiser(2, schedules.VPLinear(), width=16, depth=2, dtype=torch.float64, seed=3)
    ema = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=0.0, foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: (k + 1) / 2 if k < 2 else
                                              0.5 * (1 + math.cos(math.pi * min(1.0, (k - 2) / (STEPS - 2)))))
    gd, gn = torch.Generator(), torch.Generator()
    gd.manual_seed(11)
    gn.manual_seed(12)
    sch, lo, hi = model.schedule, tr.loss.lo, tr.loss.hi
    perm, pos = None, 0
    for k in range(1, STEPS + 1):
        if perm is None or pos + BATCH > N:
            perm, pos = torch.randperm(N, generator=gd), 0
        x0 = x[perm[pos:pos + BATCH]]
        pos += BATCH
        t = lo + (hi - lo) * torch.rand(BATCH, generator=gn, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
        eps = torch.randn(x0.shape, generator=gn, dtype=torch.float64)
        x_t = sch.alpha(t)[:, None] * x0 + sch.sigma(t)[:, None] * eps
        loss = ((model(x_t, t) - eps) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05, foreach=False)
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters()):
                pe.lerp_(p, 1 - min(0.9, (1 + k) / (10 + k)))
        assert abs(tr.train_step() - float(loss.detach())) < 1e-12
    bare = [p.detach() for p in model.parameters()] + [p.detach() for p in ema.parameters()]
    _close(_weights(tr), bare, 1e-12)


@pytest.mark.parametrize("weighting", ["eps", "elbo", "sigma2", "uniform"])
@pytest.mark.parametrize("time_sampling", ["uniform", "importance", "truncated"])
def test_unchecked_per_step_loss_equals_the_checked_loss(weighting: str, time_sampling: str) -> None:
    """After the first (checked) batch the trainer computes the loss without its per-batch checks:
    the same draws and the same numbers, bitwise, for every weighting and time sampler."""
    kw: Dict[str, object] = {"weighting": weighting, "time_sampling": time_sampling}
    discrete = schedules.Discrete(torch.linspace(1e-3, 0.2, 50, dtype=torch.float64))
    for schedule in (schedules.VPLinear(), discrete):
        model = MLPDenoiser(2, schedule, width=8, depth=2, dtype=torch.float64, seed=1, zero_init_output=False)
        tr = Trainer(model, _data(), steps=3, batch_size=BATCH, device="cpu", progress=False, ema_decay=None, **kw)
        tr.train_step()  # the checked batch
        assert tr._fast_loss and tr._checked_batches == 1
        x0 = _data()[:BATCH]
        state = tr.noise_generator.get_state()
        fast = tr._per_sample(x0, None, None, None)
        tr.noise_generator.set_state(state)
        checked = tr.loss(tr._denoiser, x0, generator=tr.noise_generator)
        assert torch.equal(fast, checked)
