"""The distributed exactly-once evaluator (densityformula.evaluation; issue 12).

Ground truths: the exact mixture log-density ``gmm.log_prob`` for the probability-flow values of an
``AnalyticModel``; a direct call of each estimator on one block with the per-point seed for the
evaluator's seeding; the single-process table for the 2- and 3-process (gloo) tables, compared
bit for bit (every column but ``seconds``).  Controls: the naive evaluation (the batch decides
which points share a call) is not bitwise batch-invariant on this BLAS; a wrong model fails the
ground-truth tolerance; a changed input is never served stale parts.
"""
from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from densityformula import elbo, schedules, targets
from densityformula.evaluation import (
    COLUMNS,
    ESTIMATORS,
    PartStore,
    blocks,
    evaluate,
    model_from_checkpoint,
    parse_schedule,
    point_seed,
    rank_blocks,
    work_items,
)
from densityformula.formula import density_formula
from densityformula.likelihood import probability_flow
from densityformula.models import AnalyticModel
from densityformula.neural import MLPDenoiser
from densityformula.training import DistributedContext, Trainer

D, N = 3, 20
PF = {"trace": "hutchinson", "n_probes": 2, "rtol": 1e-4, "atol": 1e-4}
DDPM = {"n_samples": 2, "steps": 20}


def _net() -> MLPDenoiser:
    """A float64 MLP with a non-zero output layer (a zero-initialised one is trivially batch-invariant)."""
    return MLPDenoiser(D, schedules.VPLinear(), width=32, depth=2, dtype=torch.float64, seed=1,
                       zero_init_output=False)


def _data(n: int = N) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, D, generator=g, dtype=torch.float64)


def _table(records: List[Dict[str, Any]]) -> List[tuple]:
    """The rows without the wall-clock column (the only one that is not reproducible)."""
    return [tuple(r[c] for c in COLUMNS if c != "seconds") for r in records]


def _run(**kw: Any) -> Any:
    args: Dict[str, Any] = dict(estimators=["pf_ode", "ddpm"], options={"pf_ode": PF, "ddpm": DDPM}, block=4,
                                seed=7, distributed=False)
    args.update(kw)
    return evaluate(_net(), _data(), **args)


# -- sharding ---------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 200), block=st.integers(1, 20), world=st.integers(1, 5), batch=st.integers(1, 70))
def test_blocks_are_split_over_ranks_exactly_once(n: int, block: int, world: int, batch: int) -> None:
    allb = blocks(n, block)
    assert [i for a, b in allb for i in range(a, b)] == list(range(n))
    assert all(0 < b - a <= block for a, b in allb) and all(a % block == 0 for a, _ in allb)
    per_rank = [rank_blocks(allb, r, world) for r in range(world)]
    assert [bl for part in per_rank for bl in part] == allb  # contiguous, in order, no padding or duplicate
    for part in per_rank:
        items = work_items(part, batch, block)
        assert [bl for it in items for bl in it] == part
        assert all(len(it) == max(1, -(-batch // block)) for it in items[:-1])


def test_point_seeds_depend_on_seed_and_index_only() -> None:
    seeds = {point_seed(s, i) for s in range(4) for i in range(500)}
    assert len(seeds) == 2000 and all(0 <= v < 2**63 for v in seeds)
    assert point_seed(0, 1) != point_seed(1, 0)  # not seed + index
    assert point_seed(5, 9) == point_seed(5, 9)


# -- bitwise invariance -----------------------------------------------------------------------------
def test_naive_batching_is_not_bitwise_invariant() -> None:
    """The control: probability-flow values of the same points in batches of 7 and of 20 differ in the
    last bits (MKL's float64 products depend on the number of rows), so the invariance below is not free."""
    net, x = _net(), _data()
    kw: Dict[str, Any] = dict(solver="per_point", trace="exact", rtol=1e-4, atol=1e-4)
    whole = probability_flow(net, x, **kw).value
    parts = torch.cat([probability_flow(net, x[i:i + 7], **kw).value for i in range(0, N, 7)])
    assert (parts - whole).abs().max() < 1e-9  # the same numbers ...
    if torch.equal(parts, whole):
        pytest.skip("this BLAS happens to be batch-invariant: the control has nothing to show")
    assert not torch.equal(parts, whole)  # ... but not the same bits


def test_bitwise_identical_for_batch_sizes_1_7_64() -> None:
    tables = {bs: _table(_run(batch_size=bs).records) for bs in (1, 7, 64)}
    assert tables[1] == tables[7] == tables[64]
    assert len(tables[1]) == 2 * N and [r[0] for r in tables[1][:N]] == list(range(N))
    # the run's options are what changes the numbers: another block changes some pf_ode bits
    other = _table(_run(batch_size=7, block=5).records)
    assert [r for r in other if r[1] == "ddpm"] == [r for r in tables[7] if r[1] == "ddpm"]  # ddpm: block 1 anyway
    assert {r[2] for r in other if r[1] == "pf_ode"} != {r[2] for r in tables[7] if r[1] == "pf_ode"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, port: int, out: str) -> None:
    """3 spawned processes: a world-3 run at batch size 64 (the default group, found from the torchrun
    variables), then a world-2 run at batch size 7 on the group of ranks 0 and 1 (rank 2 idle)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="3",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    d = Path(out)
    saved: Dict[str, Any] = {}
    res = _run(batch_size=64, distributed=None, out=d / "w3.csv")
    saved["w3"] = {"records": res.records, "computed": res.computed_blocks, "world": res.world_size,
                   "path": str(res.path)}
    pair = torch.distributed.new_group([0, 1])
    if rank < 2:
        res = _run(batch_size=7, distributed=DistributedContext(rank, 2, pair), out=d / "w2.csv")
        saved["w2"] = {"records": res.records, "computed": res.computed_blocks, "world": res.world_size,
                       "path": str(res.path)}
    torch.save(saved, d / f"rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_world_sizes_2_and_3_give_the_single_process_table_bitwise(tmp_path: Path) -> None:
    one = _run(batch_size=1, out=tmp_path / "one.csv")
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=3, join=True, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(3)]

    def body(path: Path) -> List[List[str]]:
        rows = [line.split(",") for line in path.read_text().splitlines()]
        col = rows[0].index("seconds")
        return [r[:col] + r[col + 1:] for r in rows]

    for name, world in (("w3", 3), ("w2", 2)):
        res = [r[name] for r in ranks[:world]]
        assert all(r["world"] == world for r in res)
        assert _table(res[0]["records"]) == _table(one.records)  # rank 0 gathered every row, bit for bit
        # each rank evaluated only its share: 5 pf_ode blocks of 4 and 20 ddpm points, split over the ranks
        assert sum(r["computed"] for r in res) == one.computed_blocks == 5 + N
        assert all(r["computed"] > 0 for r in res)
        assert all(len(r["records"]) < 2 * N for r in res[1:])  # the others hold only their own rows
        assert res[0]["path"] == str(tmp_path / f"{name}.csv") and all(r["path"] == "None" for r in res[1:])
        assert body(tmp_path / f"{name}.csv") == body(tmp_path / "one.csv")
        assert not (tmp_path / f"{name}.csv.parts").exists()  # parts removed once the table is written


# -- ground truth and seeding -----------------------------------------------------------------------
def test_pf_ode_of_the_exact_model_is_the_mixture_log_density() -> None:
    gmm = targets.random_gmm(D, 3, seed=2)
    x = gmm.sample(12, generator=torch.Generator().manual_seed(4))
    opts = {"pf_ode": {"rtol": 1e-7, "atol": 1e-7}}
    res = evaluate(AnalyticModel(gmm, schedules.LiYan()), x, "pf_ode", options=opts, data_scale=0.5,
                   block=5, distributed=False)
    ll = res.values("pf_ode")
    err = (ll - gmm.log_prob(x)).abs()
    assert float(err.max()) < 1e-4 and float(err.mean()) < 2e-5  # solver tolerance 1e-7 per unit log-SNR
    # control: a mixture with means moved by 0.05 is detected at that tolerance
    moved = targets.GaussianMixture(gmm.weights, gmm.means + 0.05, gmm.covs)
    wrong = evaluate(AnalyticModel(moved, schedules.LiYan()), x, "pf_ode", options=opts, block=5,
                     distributed=False).values("pf_ode")
    assert float((wrong - gmm.log_prob(x)).abs().mean()) > 1e-2
    # bits/dim with the data scaling explicit: -(log p + d log|dy/du|) / (d log 2)
    bpd = torch.tensor([r["bits_per_dim"] for r in res.records], dtype=torch.float64)
    assert torch.allclose(bpd, -(ll + D * math.log(0.5)) / (D * math.log(2.0)), rtol=0, atol=1e-12)
    assert {r["nfe"] for r in res.records} != {0} and all(r["stderr"] == 0.0 for r in res.records)


def test_each_estimator_is_the_direct_call_with_the_point_seed() -> None:
    """Every registered estimator, through the evaluator, equals the library call on the point's block with
    :func:`point_seed` bit for bit (the seeding contract)."""
    net, x = _net(), _data(3)
    small: Dict[str, Dict[str, Any]] = {
        "pf_ode": PF, "ddpm": DDPM, "iw": {"k": 2, "n_replicates": 2},
        "density_formula": {"n_nodes": 16, "n_replicates": 4, "n_noise": 2},
        "continuous": {"n_nodes": 16, "n_replicates": 4, "n_noise": 2},
    }
    assert set(small) == set(ESTIMATORS)
    res = evaluate(net, x, list(small), options=small, seed=11, block=2, distributed=False)
    got = {name: res.values(name) for name in small}
    s = [point_seed(11, i) for i in range(3)]

    def gen(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    pf = torch.cat([probability_flow(net, x[a:b], solver="per_point", seed=torch.tensor(s[a:b]), **PF).value
                    for a, b in ((0, 2), (2, 3))])
    direct = {
        "pf_ode": pf,
        "ddpm": torch.cat([elbo.ddpm(net, x[i:i + 1], generator=gen(s[i]), **DDPM).value for i in range(3)]),
        "iw": torch.cat([elbo.importance_weighted(net, x[i:i + 1], generator=gen(s[i]), **small["iw"]).value  # type: ignore[union-attr]
                         for i in range(3)]),
        "density_formula": torch.cat([density_formula(net, x[i:i + 1], seed=s[i], **small["density_formula"]).value
                                      for i in range(3)]),
        "continuous": torch.cat([elbo.continuous(net, x[i:i + 1], seed=s[i], **small["continuous"]).value
                                 for i in range(3)]),
    }
    for name in small:
        assert torch.equal(got[name], direct[name]), name
    # control: seed + index (the batch's own seeding) is another stream
    naive = torch.cat([elbo.ddpm(net, x[i:i + 1], generator=gen(11 + i), **DDPM).value for i in range(3)])
    assert not torch.equal(naive, got["ddpm"])


# -- resume -----------------------------------------------------------------------------------------
class _Crash(Exception):
    pass


def test_an_interrupted_run_resumes_without_recomputing_finished_blocks(tmp_path: Path, monkeypatch) -> None:
    from densityformula.evaluation import _estimators as E

    ref = _run(batch_size=8)
    calls = {"n": 0}
    real = E._pf_ode

    def crashing(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 3:  # dies inside the 4th pf_ode block (the 2nd work item of 2 blocks)
            raise _Crash
        return real(*args)

    spec = E.ESTIMATORS["pf_ode"]
    monkeypatch.setitem(E.ESTIMATORS, "pf_ode", E.EstimatorSpec(spec.name, spec.title, True, spec.options, crashing))
    out = tmp_path / "t.csv"
    with pytest.raises(_Crash):
        _run(batch_size=8, out=out)
    assert not out.exists()
    parts = sorted(p.name for p in (tmp_path / "t.csv.parts").rglob("part-*.json"))
    assert parts == ["part-000000000-000000008.json"]  # one finished item of 2 blocks; the next died
    monkeypatch.setitem(E.ESTIMATORS, "pf_ode", spec)
    res = _run(batch_size=8, out=out)
    assert res.reused_points == 8 and res.computed_blocks == (5 - 2) + N
    assert _table(res.records) == _table(ref.records)
    assert out.read_text().splitlines()[0].split(",") == list(COLUMNS)


def test_parts_of_other_inputs_are_never_reused(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    first = _run(batch_size=8, parts_dir=parts, keep_parts=True)
    assert first.computed_blocks == 5 + N
    again = _run(batch_size=3, parts_dir=parts, keep_parts=True)  # another batch size: same key, all reused
    assert again.computed_blocks == 0 and again.reused_points == 2 * N
    assert _table(again.records) == _table(first.records)
    other_seed = _run(batch_size=8, parts_dir=parts, keep_parts=True, seed=8)
    assert other_seed.computed_blocks == 5 + N  # control: another seed is another key
    other_opts = _run(batch_size=8, parts_dir=parts, keep_parts=True,
                      options={"pf_ode": {**PF, "rtol": 2e-4}, "ddpm": DDPM})
    assert other_opts.computed_blocks == 5  # only the changed estimator is recomputed
    # a damaged part is dropped and its blocks recomputed
    store = PartStore(parts, first.keys["pf_ode"])
    victim = store.parts()[0]
    victim.write_text(victim.read_text()[:-20])
    fixed = _run(batch_size=8, parts_dir=parts, keep_parts=True)
    assert fixed.computed_blocks == 2 and _table(fixed.records) == _table(first.records)
    payload = json.loads(store.parts()[0].read_text())
    assert payload["key"] == first.keys["pf_ode"]


def test_refuses_to_overwrite_and_names_bad_arguments(tmp_path: Path) -> None:
    out = tmp_path / "t.csv"
    out.write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        _run(out=out)
    assert out.read_text() == "keep me"
    _run(out=out, overwrite=True, estimators="ddpm", options={"ddpm": DDPM})
    assert out.read_text().startswith("index,estimator,log_likelihood")
    for kw, match in [({"batch_size": 0}, "batch_size"), ({"block": 0}, "block"), ({"seed": -1}, "seed"),
                      ({"estimators": ["pf_ode", "pf_ode"]}, "repeat"), ({"estimators": "exact"}, "estimator"),
                      ({"options": {"pf_ode": {"tol": 1}}}, "no option 'tol'"),
                      ({"options": {"pf_ode": {"rtol": "x"}}}, "rtol"), ({"dtype": torch.float16}, "dtype")]:
        with pytest.raises((ValueError, TypeError), match=match):
            _run(**kw)
    with pytest.raises(ValueError, match="data"):
        evaluate(_net(), torch.zeros(0, D, dtype=torch.float64), distributed=False)


# -- checkpoints ------------------------------------------------------------------------------------
def test_model_from_checkpoint_rebuilds_the_trained_network(tmp_path: Path) -> None:
    net = MLPDenoiser(D, schedules.VPLinear(beta_max=15.0), width=16, depth=2, seed=2)
    tr = Trainer(net, _data(64).float(), steps=5, batch_size=16, device="cpu", progress=False, ema_decay=0.5)
    tr.train()
    path = tr.save_checkpoint(tmp_path / "c.pt")
    x, t = _data(5), torch.full((5,), 0.3, dtype=torch.float64)
    for weights, module in (("ema", tr.ema), ("model", tr.model)):
        rebuilt, info = model_from_checkpoint(path, schedule=repr(net.schedule), weights=weights)
        assert info["weights"] == weights and info["step"] == 5 and len(info["digest"]) == 64
        assert rebuilt.valid_log_snr == module.valid_log_snr
        ref = module.double().denoise(x, t)  # type: ignore[union-attr, operator]
        assert torch.equal(rebuilt.denoise(x, t), ref)
    # the trainer records its schedule: it is read back, and a different one is refused
    rebuilt, info = model_from_checkpoint(path)
    assert info["schedule"] == repr(net.schedule)
    assert torch.equal(rebuilt.denoise(x, t), tr.ema.double().denoise(x, t))  # type: ignore[union-attr, operator]
    with pytest.raises(ValueError, match="differs from the checkpoint"):
        model_from_checkpoint(path, schedule="vp_cosine")
    # a checkpoint that does not record one (an older format) needs schedule=
    state = torch.load(path, weights_only=False)
    del state["config"]["schedule"]
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="does not record its schedule"):
        model_from_checkpoint(tmp_path / "old.pt")
    with pytest.raises(ValueError, match="weights"):
        model_from_checkpoint(path, schedule="vp", weights="best")


def test_parse_schedule_reads_reprs_and_short_names() -> None:
    for sched in (schedules.LiYan(), schedules.VPLinear(0.2, 12.0), schedules.SubVP(), schedules.VPCosine(0.01),
                  schedules.VE(0.02, 30.0)):
        assert repr(parse_schedule(repr(sched))) == repr(sched)
    assert repr(parse_schedule("vp_linear")) == repr(schedules.VPLinear())
    for bad in ("Discrete()", "VPLinear(beta_min=__import__('os'))", "VPLinear(1, 2)", "nope", "VE(foo=1)"):
        with pytest.raises(ValueError, match="schedule"):
            parse_schedule(bad)
