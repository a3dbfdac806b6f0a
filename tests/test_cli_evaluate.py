"""`densityformula evaluate`: the tidy CSV, argument errors, and a SIGKILLed run that resumes (issue 12).

Ground truths: the library's :func:`densityformula.evaluation.evaluate` for the table's numbers (read
back from the CSV bit for bit), the digits' change of variables for bits/dim, and an uninterrupted
run for the resumed one (every column but ``seconds``); the resumed run's count of estimator calls
is checked against the parts the killed run left.
"""
from __future__ import annotations

import csv
import math
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch

from densityformula import cli, schedules
from densityformula.data import load_digits
from densityformula.evaluation import evaluate
from densityformula.neural import MLPDenoiser
from densityformula.training import Trainer

REPO = Path(__file__).resolve().parents[1]
SCHEDULE = repr(schedules.VPLinear())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small digits model (64 dims), 30 training steps."""
    net = MLPDenoiser(64, schedules.VPLinear(), width=32, depth=2, seed=0)
    tr = Trainer(net, load_digits(dtype=torch.float32), steps=30, batch_size=64, lr=3e-3, device="cpu",
                 progress=False, seed=0)
    tr.train()
    return tr.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "digits.pt")


def _read(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _no_seconds(rows: List[Dict[str, str]]) -> List[Dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_cli_writes_the_library_table(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "t.csv"
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--schedule", SCHEDULE, "--data", "digits",
            "--estimator", "pf_ode", "ddpm", "--option", "pf_ode.trace=hutchinson", "--option", "n_probes=2",
            "--option", "ddpm.steps=10", "--limit", "10", "--block", "4", "--batch-size", "5", "--seed", "3",
            "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    assert "table:" in capsys.readouterr().out
    rows = _read(out)
    assert len(rows) == 20 and [r["estimator"] for r in rows] == ["pf_ode"] * 10 + ["ddpm"] * 10
    lib = evaluate(checkpoint, "digits", ["pf_ode", "ddpm"], schedule=SCHEDULE, limit=10, block=4, seed=3,
                   options={"pf_ode": {"trace": "hutchinson", "n_probes": 2}, "ddpm": {"steps": 10}},
                   distributed=False)
    for row, rec in zip(rows, lib.records):
        assert int(row["index"]) == rec["index"] and row["estimator"] == rec["estimator"]
        for col in ("log_likelihood", "stderr", "bits_per_dim"):
            assert float(row[col]) == rec[col], col  # floats round-trip exactly
        assert int(row["nfe"]) == rec["nfe"] and int(row["point_seed"]) == rec["point_seed"]
        # bits/dim of the dequantized counts: x = -1 + 2 c / 17, so log|dx/dc| = 64 log(2/17)
        expect = -(float(row["log_likelihood"]) + 64 * math.log(2 / 17)) / (64 * math.log(2))
        assert abs(float(row["bits_per_dim"]) - expect) < 1e-12
    assert {r["block"] for r in rows} == {"4", "1"} and {r["dtype"] for r in rows} == {"float64"}
    assert '"trace":"hutchinson"' in rows[0]["options"] and '"steps":10' in rows[-1]["options"]
    assert "sha256:" in rows[0]["model"] and '"name":"digits"' in rows[0]["data"]
    # the flag repeated is the same as one flag with several names (argparse's plain nargs="+" kept the last)
    again = tmp_path / "again.csv"
    argv2 = [a if a != str(out) else str(again) for a in argv]
    i = argv2.index("ddpm")
    argv2[i:i + 1] = ["--estimator", "ddpm"]
    assert cli.main(argv2) == 0
    assert _no_seconds(_read(again)) == _no_seconds(rows)


@pytest.mark.parametrize("extra,message", [
    (["--out", "EXISTING"], "exists; pass --force"),
    (["--schedule", "vp_cosine"], "differs from the checkpoint's"),
    (["--estimator", "exact"], "--estimator must be one of"),
    (["--option", "tol=1"], "no estimator among pf_ode has option 'tol'"),
    (["--option", "ddpm.steps=2"], "names estimator 'ddpm', which is not among --estimator"),
    (["--option", "rtol=fast"], "option 'rtol' of estimator 'pf_ode' must be float"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--block", "0"], "--block must be >= 1"),
    (["--dtype", "float16"], "--dtype must be float64 or float32"),
    (["--checkpoint", "MISSING"], "--checkpoint .* is not a file"),
    (["--data", "MISSING"], "--data must be 'digits' or an existing .npy / .csv file"),
    (["--schedule", "Discrete()"], "--schedule must be one of"),
    (["--weights", "best"], "--weights must be 'ema' or 'model'"),
])
def test_bad_arguments_exit_2_with_one_line(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                            extra: List[Any], message: str) -> None:
    existing = tmp_path / "existing.csv"
    existing.write_text("keep")
    args: Dict[str, Any] = {"--checkpoint": str(checkpoint), "--schedule": SCHEDULE, "--out": str(tmp_path / "t.csv"),
                            "--limit": "2"}
    extras: List[str] = []
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in args:
            args[flag] = {"EXISTING": str(existing), "MISSING": str(tmp_path / "missing.npy")}.get(value, value)
        else:
            extras += [flag, {"MISSING": str(tmp_path / "missing.npy")}.get(value, value)]
    argv = ["evaluate", "--no-progress"] + [s for k, v in args.items() if v is not None for s in (k, v)] + extras
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("densityformula evaluate: error: ") and re.search(message, err), err
    assert existing.read_text() == "keep" and not (tmp_path / "t.csv").exists()


def test_a_checkpoint_without_its_schedule_needs_schedule(checkpoint: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """The trainer records its schedule; a checkpoint of the older format (none recorded) needs --schedule."""
    state = torch.load(checkpoint, weights_only=False)
    assert state["config"]["schedule"] == SCHEDULE
    del state["config"]["schedule"]
    old = tmp_path / "old.pt"
    torch.save(state, old)
    argv = ["evaluate", "--no-progress", "--checkpoint", str(old), "--out", str(tmp_path / "t.csv"), "--limit", "1"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("densityformula evaluate: error: ") and "does not record its schedule; pass --schedule" in err
    assert not (tmp_path / "t.csv").exists()


def test_killed_evaluation_resumes_without_recomputing_finished_shards(checkpoint: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture,
                                                                       kill_when: Any) -> None:
    n, block = 32, 2
    out = tmp_path / "t.csv"
    common = ["evaluate", "--checkpoint", str(checkpoint), "--schedule", SCHEDULE, "--limit", str(n),
              "--block", str(block), "--batch-size", str(block), "--option", "trace=hutchinson",
              "--option", "n_probes=2", "--no-progress"]
    parts = tmp_path / "t.csv.parts"
    rc = kill_when([sys.executable, "-m", "densityformula.cli", *common, "--out", str(out)],
                   lambda: len(list(parts.rglob("part-*.json"))) >= 2, log=tmp_path / "killed.log", cwd=REPO,
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, what="the evaluation never wrote two parts")
    assert rc == -signal.SIGKILL
    assert not out.exists()  # no table from a killed run
    finished = len(list(parts.rglob("part-*.json")))
    assert 2 <= finished < n // block
    # the rerun evaluates only the blocks without a part, and gives the uninterrupted table
    assert cli.main([*common, "--out", str(out)]) == 0
    said = capsys.readouterr().out
    calls = int(re.search(r"(\d+) estimator calls", said).group(1))  # type: ignore[union-attr]
    resumed = int(re.search(r"(\d+) points resumed", said).group(1))  # type: ignore[union-attr]
    assert calls == n // block - finished and resumed == block * finished, said
    assert not parts.exists()
    assert cli.main([*common, "--out", str(tmp_path / "whole.csv")]) == 0
    assert _no_seconds(_read(out)) == _no_seconds(_read(tmp_path / "whole.csv"))
