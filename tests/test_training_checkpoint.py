"""Checkpoint integrity (issue 9): a checksum and the library version in every checkpoint, verified
on load; one clear ``CheckpointError`` naming the file for every unreadable file; temporary files of
a killed write removed by the next save or load; exact resume after a kill during a write.

Each test fails on the code before the checksum: there, ``CheckpointError`` did not exist, a flipped
byte inside the tensors loaded silently, an empty file raised ``EOFError``/``RuntimeError``, garbage an
``UnpicklingError`` that did not name the file, and a stale ``.<name>.tmp-<pid>`` was never removed.
"""
from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from densityformula import schedules
from densityformula.neural import MLPDenoiser
from densityformula.training import Checkpointer, Trainer, atomic_save, load_checkpoint
from densityformula.training import checkpoint as ckmod
from densityformula.training.checkpoint import CheckpointError, remove_stale_temp_files

VP = schedules.VPLinear()
KW = dict(steps=10, batch_size=32, lr=3e-3, ema_decay=0.9, device="cpu", seed=2, progress=False)


def _data() -> torch.Tensor:
    return torch.randn(100, 2, generator=torch.Generator().manual_seed(0))


def _trainer(path: Path | None = None, **kw: object) -> Trainer:
    args = dict(KW, **kw)
    if path is not None:
        args.setdefault("checkpoint_path", path)
    return Trainer(MLPDenoiser(2, VP, width=16, depth=2), _data(), **args)  # type: ignore[arg-type]


def _same(a: Trainer, b: Trainer) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert (torch.equal(sa[k], sb[k]) if isinstance(sa[k], torch.Tensor) else sa[k] == sb[k]), k
    assert all(torch.equal(p, q) for p, q in zip(a.ema.parameters(), b.ema.parameters()))
    assert a.history == b.history and a.step == b.step
    assert torch.equal(a.noise_generator.get_state(), b.noise_generator.get_state())


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a real trainer checkpoint (5 steps, EMA, AdamW state)."""
    path = tmp_path_factory.mktemp("ck") / "ck.pt"
    tr = _trainer(path, steps=5)
    tr.train()
    return path.read_bytes()


def _named(path: Path) -> str:
    return re.escape(str(path))


# -- flipped bytes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["first", "header", "middle", "quarter3", "payload_end", "meta", "digest",
                                   "length", "last"])
def test_a_flipped_byte_anywhere_is_a_checkpoint_error_naming_the_file(tmp_path, saved, where):
    # before: no checksum, a flipped byte in the tensors' data (middle, quarter3) loaded silently
    n = len(saved)
    payload = n - (saved[::-1].find(b"\x06\x05KP") + 4) + 22  # the torch archive ends with its 22-byte end record
    pos = {"first": 0, "header": 40, "middle": n // 2, "quarter3": 3 * n // 4, "payload_end": payload - 5,
           "meta": payload + 10, "digest": n - 16 - 8 - 30, "length": n - 16 - 1, "last": n - 1}[where]
    data = bytearray(saved)
    data[pos] ^= 0x20
    path = tmp_path / "ck.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=_named(path)) as info:
        load_checkpoint(path)
    assert re.search("corrupt|not a densityformula", str(info.value))
    with pytest.raises(CheckpointError, match=_named(path)):
        _trainer(resume_from=path)
    path.write_bytes(saved)  # the intact file loads
    assert load_checkpoint(path)["step"] == 5


def test_every_byte_flip_is_detected_on_a_small_checkpoint(tmp_path):
    # a small file: flip every byte, each one must be caught (before: most loaded silently)
    path = tmp_path / "small.pt"
    atomic_save({"format": ckmod.FORMAT, "x": torch.arange(4.0)}, path)
    good = path.read_bytes()
    caught = 0
    for pos in range(len(good)):
        data = bytearray(good)
        data[pos] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match=_named(path)):
            load_checkpoint(path)
        caught += 1
    assert caught == len(good)


# -- unreadable files ------------------------------------------------------------------------------
def test_unreadable_files_give_one_clear_checkpoint_error(tmp_path, saved):
    # before: EOFError / RuntimeError / UnpicklingError, most without the file's name
    cases = {
        "empty.pt": (b"", "empty"),
        "half.pt": (saved[: len(saved) // 2], "truncated"),
        "short.pt": (saved[:-1], "corrupt|truncated"),
        "tiny.pt": (saved[:3], "not a densityformula|truncated"),
        "garbage.pt": (bytes(range(256)) * 40, "not a densityformula"),
        "text.pt": (b"hello, world\n", "not a densityformula"),
        "pickle.pt": (pickle.dumps({"format": ckmod.FORMAT, "step": 1}), "not a densityformula"),
    }
    for name, (content, what) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=_named(path)) as info:
            load_checkpoint(path)
        assert re.search(what, str(info.value)), (name, str(info.value))
        assert isinstance(info.value, ValueError)
    # a torch file that is not a trainer checkpoint, checksummed or not
    for name, obj in (("other.pt", {"format": "other"}), ("list.pt", [1, 2]), ("nofmt.pt", {"step": 1})):
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointError, match=_named(tmp_path / name) + ".*not a densityformula"):
            load_checkpoint(tmp_path / name)
        atomic_save(obj, tmp_path / ("c" + name))
        with pytest.raises(CheckpointError, match=_named(tmp_path / ("c" + name)) + ".*not a densityformula"):
            load_checkpoint(tmp_path / ("c" + name))
    # a format this version cannot read
    atomic_save({"format": "densityformula.trainer/3", "step": 1}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=_named(tmp_path / "future.pt") + ".*format 'densityformula.trainer/3'"):
        load_checkpoint(tmp_path / "future.pt")
    # a directory, a missing file
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(CheckpointError, match=_named(tmp_path / "dir.pt") + ".*directory"):
        load_checkpoint(tmp_path / "dir.pt")
    with pytest.raises(FileNotFoundError, match=_named(tmp_path / "missing.pt")):
        load_checkpoint(tmp_path / "missing.pt")


def test_an_incomplete_trainer_state_is_a_checkpoint_error(tmp_path):
    # before: KeyError('config') from Trainer.load_state_dict
    path = tmp_path / "partial.pt"
    atomic_save({"format": ckmod.FORMAT, "step": 3}, path)
    with pytest.raises(CheckpointError, match=_named(path) + ".*lacks"):
        _trainer(resume_from=path)


# -- versions, old files ---------------------------------------------------------------------------
def test_another_library_version_loads_with_a_warning(tmp_path, saved, monkeypatch):
    path = tmp_path / "old.pt"
    monkeypatch.setattr(ckmod, "_library_version", lambda: "0.0.1")
    tr = _trainer(path, steps=5)
    tr.train()
    monkeypatch.undo()
    with pytest.warns(UserWarning, match=_named(path) + ".*densityformula 0.0.1.*readable"):
        state = load_checkpoint(path)
    assert state["step"] == 5
    # same version: no warning
    path.write_bytes(saved)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(path)


def test_checkpoints_without_a_checksum_still_load_and_resume_exactly(tmp_path):
    """Format /2 files written by plain ``torch.save`` (before checksums) load without a warning and
    resume bitwise."""
    full = _trainer()
    full.train()
    part = _trainer()
    part.train(until=5)
    torch.save(part.state_dict(), tmp_path / "plain.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed = _trainer(tmp_path / "plain.pt", resume_from=tmp_path / "plain.pt")
    resumed.train()
    _same(full, resumed)
    # torch alone still reads the checksummed file
    assert torch.load(tmp_path / "plain.pt", map_location="cpu", weights_only=True)["step"] == 10
    assert load_checkpoint(tmp_path / "plain.pt")["step"] == 10


# -- temporary files -------------------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_are_removed_by_the_next_save_and_load(tmp_path, saved):
    # before: a `.ck.pt.tmp-<pid>` left by a killed write stayed forever
    target = tmp_path / "ck.pt"
    stale = tmp_path / f".ck.pt.tmp-{_dead_pid()}"  # the name the old code used
    stale.write_bytes(saved[: len(saved) // 2])
    live = tmp_path / f".ck.pt.tmp-{os.getppid()}"  # a running writer's: left alone
    live.write_bytes(b"partial")
    other = tmp_path / f".other.pt.tmp-{_dead_pid()}"  # another checkpoint's: left alone
    other.write_bytes(b"partial")
    Checkpointer(target).save({"format": ckmod.FORMAT, "x": 1})
    assert sorted(os.listdir(tmp_path)) == sorted(["ck.pt", live.name, other.name])
    # the new names (pid, host, token) too, removed by a load
    stale2 = tmp_path / f".ck.pt.tmp-{_dead_pid()}-{ckmod._host_tag()}-0123abcd"
    stale2.write_bytes(b"partial")
    assert load_checkpoint(target)["x"] == 1
    assert not stale2.exists() and live.exists()
    # another host's: only once old
    foreign = tmp_path / f".ck.pt.tmp-{_dead_pid()}-ffffffff-0123abcd"
    foreign.write_bytes(b"partial")
    assert remove_stale_temp_files(target) == [] and foreign.exists()
    old = os.path.getmtime(foreign) - ckmod.STALE_AFTER_S - 10
    os.utime(foreign, (old, old))
    assert remove_stale_temp_files(target) == [foreign] and not foreign.exists()


_KILLED_WRITER = textwrap.dedent("""
    import sys, time, torch
    from densityformula import schedules
    from densityformula.neural import MLPDenoiser
    from densityformula.training import Trainer
    real_save, calls = torch.save, []
    def hanging_save(obj, f, *a, **k):
        calls.append(1)
        real_save(obj, f, *a, **k)
        if len(calls) == 2:  # the second checkpoint (step 10): payload written, no trailer, no rename
            f.flush()
            print("WRITING", flush=True)
            time.sleep(600)
    torch.save = hanging_save
    data = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    Trainer(MLPDenoiser(2, schedules.VPLinear(), width=16, depth=2), data, steps=10, batch_size=32, lr=3e-3,
            ema_decay=0.9, device="cpu", seed=2, progress=False, checkpoint_path=sys.argv[1],
            checkpoint_every=5).train()
""")


def test_a_kill_during_the_write_then_resume_is_exact_and_leaves_no_temp_file(tmp_path):
    # before: the killed write's temp file stayed beside the checkpoint after the resume
    path = tmp_path / "ck.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "WRITING", proc.stderr.read() if proc.stderr else ""
        temps = [p for p in os.listdir(tmp_path) if p.startswith(".ck.pt.tmp-")]
        assert len(temps) == 1 and os.path.getsize(tmp_path / temps[0]) > 1000
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert any(p.startswith(".ck.pt.tmp-") for p in os.listdir(tmp_path))  # the kill left it behind
    assert load_checkpoint(path)["step"] == 5  # the previous checkpoint is intact
    full = _trainer()
    full.train()
    resumed = _trainer(path, resume_from=path, checkpoint_every=5)
    resumed.train()
    _same(full, resumed)
    assert os.listdir(tmp_path) == ["ck.pt"]
    assert load_checkpoint(path)["step"] == 10
