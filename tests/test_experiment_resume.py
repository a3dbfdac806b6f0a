"""A long experiment's parts survive a crash or a kill and are reused by the next run of the same inputs.

``Context.cached(key, compute)`` saves each part under ``out/.cache/<name>/<key>/``; a rerun with the
same inputs loads the saved parts instead of computing them, a run of other code never sees them,
and a successful run removes its own.
"""
from pathlib import Path
from typing import List

import pytest
import torch

from densityformula.experiment import Claim, Context, Control, Experiment, checks
from densityformula.experiment._runner import run_experiments


class Parts(Experiment):
    """Three parts, each computed through ``ctx.cached``; the part ``fail_at`` raises (a crash)."""

    name = "parts"
    title = "Three cached parts"
    claim = "the parts add up to three"

    def __init__(self, fail_at: int = -1) -> None:
        self.fail_at = fail_at
        self.computed: List[int] = []

    def compute(self, ctx: Context) -> dict:
        values = []
        for i in range(3):
            def part(i: int = i) -> dict:
                self.computed.append(i)
                if i == self.fail_at:
                    raise RuntimeError("killed in the middle")
                return {"value": torch.tensor([float(i)])}

            values.append(float(ctx.cached(f"part-{i}", part)["value"]))
        return {"total": sum(values)}

    def claims(self, r: dict, ctx: Context):
        yield Claim("total", "0 + 1 + 2 = 3", checks.within(r["total"], 3.0, atol=1e-12), Control("one added", 1.0))


def _run(exp: Experiment, out: Path, **kw) -> dict:
    (summary,) = run_experiments([exp], out, quick=True, seed=0, device="cpu", **kw)
    return summary


def test_a_crashed_run_resumes_from_its_saved_parts(tmp_path):
    out = tmp_path / "out"
    first = Parts(fail_at=2)
    assert _run(first, out).get("error")
    assert first.computed == [0, 1, 2]
    (cache,) = (out / ".cache" / "parts").iterdir()
    assert sorted(p.name for p in cache.glob("*.pt")) == ["part-0.pt", "part-1.pt"]
    second = Parts()
    s = _run(second, out)
    assert not s.get("error") and s["claims"][0]["status"] == "holds"
    assert second.computed == [2]  # parts 0 and 1 came from the first run
    assert not (out / ".cache" / "parts").exists() or not any((out / ".cache" / "parts").iterdir())


def test_saved_parts_are_not_reused_by_another_seed_or_mode(tmp_path):
    out = tmp_path / "out"
    assert _run(Parts(fail_at=2), out).get("error")
    other = Parts()
    (s,) = run_experiments([other], out, quick=False, seed=0, device="cpu")
    assert not s.get("error") and other.computed == [0, 1, 2]
    # the quick run's parts are kept for its own resume
    again = Parts()
    assert not _run(again, out).get("error") and again.computed == [2]


def test_parts_of_other_code_are_removed(tmp_path):
    out = tmp_path / "out"
    assert _run(Parts(fail_at=2), out).get("error")
    (cache,) = (out / ".cache" / "parts").iterdir()
    inputs = cache / "inputs.json"
    inputs.write_text(inputs.read_text().replace('"library_code": "', '"library_code": "edited-'))
    fresh = Parts()
    assert not _run(fresh, out).get("error")
    assert fresh.computed == [0, 1, 2] and not cache.exists()


def test_a_part_cut_short_is_recomputed(tmp_path):
    ctx = Context(out_dir=tmp_path, cache_dir=tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "a.pt").write_bytes(b"not a torch file")
    assert ctx.cached("a", lambda: 5) == 5
    assert ctx.cached("a", lambda: 6) == 5  # now saved whole


def test_without_a_cache_dir_parts_are_computed_every_time(tmp_path):
    ctx = Context(out_dir=tmp_path)
    calls = []
    for _ in range(2):
        ctx.cached("a", lambda: calls.append(1))
    assert len(calls) == 2


@pytest.mark.parametrize("key", ["", "a/b", "../x", "a b", 3])
def test_bad_keys_are_refused(tmp_path, key):
    ctx = Context(out_dir=tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="key"):
        ctx.cached(key, lambda: 1)
