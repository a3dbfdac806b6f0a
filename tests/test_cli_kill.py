"""`densityformula reproduce --force` killed (SIGKILL) midway, then rerun (issues 9 and 10).

Three toy experiments ``a``, ``b``, ``c`` (run in that order) note the version that
``<tmp>/version.txt`` holds; ``b``'s ``compute`` first writes a partial table into its folder and
then, when asked (``DF_TEST_STARTED_FILE``), says it has started and sleeps, so that the run can be
killed while ``b`` is halfway through.

Before issue 9 the kill left ``b``'s old ``summary.json`` beside its new table, and a rerun
without ``--force`` kept that mix (and ``c``'s old results) as if complete.  Here: the killed run
leaves ``a`` replaced, ``b`` and ``c`` whole and old, and the next plain run finishes the
interrupted ``--force``, giving the same report as an uninterrupted run.
"""
import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from densityformula import cli

REPO = Path(__file__).resolve().parents[1]
#: the command line that is killed (a fresh interpreter, as `densityformula reproduce` is)
COMMAND = [sys.executable, "-m", "densityformula.cli"]

EXPERIMENT = '''
import os
import time
from pathlib import Path

from densityformula.experiment import Claim, Control, Experiment, checks

ROOT = Path(__file__).resolve().parent.parent


class Toy(Experiment):
    name = "__NAME__"
    title = "Experiment __NAME__"
    claim = "it knows its version"

    def compute(self, ctx):
        version = (ROOT / "version.txt").read_text().strip()
        (ctx.out_dir / "table.csv").write_text(f"name,version\\npartial,{version}\\n")
        started = os.environ.get("DF_TEST_STARTED_FILE")
        if __SLEEPS__ and started:
            Path(started).write_text("started")
            time.sleep(120)
        return {"version": version}

    def claims(self, r, ctx):
        v = float(r["version"])
        yield Claim("version", "the version is what version.txt says", checks.within(v, v, atol=0.1),
                    Control("version raised", 1.0, search=False))

    def tables(self, r, ctx):
        return {"table.csv": [{"name": self.name, "version": r["version"]}]}

    def notes(self, r, ctx):
        return [f"made by version {r['version']}"]


EXPERIMENT = Toy()
'''


def _experiments(tmp_path: Path) -> Path:
    exp = tmp_path / "experiments"
    exp.mkdir()
    for name in "abc":
        (exp / f"{name}.py").write_text(EXPERIMENT.replace("__NAME__", name).replace("__SLEEPS__", str(name == "b")))
    return exp


def _report(out: Path) -> dict:
    """Every file of the report (hidden ones too), without its timestamps and durations."""
    found = {}
    for path in sorted(out.rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text()
        if path.name == "summary.json":
            summary = json.loads(text)
            for key in ("seconds", "compute_seconds", "computed_at"):
                summary.pop(key)
            text = json.dumps(summary, sort_keys=True)
        elif path.name == "index.html":
            text = re.sub(r"computed \S+ in [0-9.]+ s;", "computed ? in ? s;", text)
        found[str(path.relative_to(out))] = text
    return found


def _run(exp: Path, out: Path, *extra: str) -> int:
    return cli.main(["reproduce", "--experiments-dir", str(exp), "--out", str(out), *extra])


def _version(out: Path, name: str) -> str:
    return json.loads((out / name / "summary.json").read_text())["notes"][0]


@pytest.fixture
def killed_force(tmp_path, monkeypatch, kill_when):
    """Results of version 1 in ``out``; then ``--force`` with version 2, SIGKILLed during ``b``."""
    exp = _experiments(tmp_path)
    version = tmp_path / "version.txt"
    monkeypatch.delenv("DF_TEST_STARTED_FILE", raising=False)
    out = tmp_path / "results"
    version.write_text("1")
    assert _run(exp, out) == 0
    old = {name: _report(out / name) for name in "abc"}

    version.write_text("2")
    started = tmp_path / "b-started"
    env = {**os.environ, "DF_TEST_STARTED_FILE": str(started), "OMP_NUM_THREADS": "1"}
    rc = kill_when([*COMMAND, "reproduce", "--force", "--experiments-dir", str(exp), "--out", str(out)],
                   started.exists, log=tmp_path / "killed.log", cwd=REPO, env=env, poll=0.05,
                   what="experiment b never started")
    assert rc == -signal.SIGKILL
    return exp, out, old


def test_killed_force_leaves_old_results_intact(killed_force):
    exp, out, old = killed_force
    assert _version(out, "a") == "made by version 2"  # finished before the kill: replaced
    assert _report(out / "b") == old["b"]  # killed while running: the old results, whole
    assert _report(out / "c") == old["c"]  # not reached: untouched
    # what the kill left: b's partial folder under a temporary name, and the list of what --force
    # had not replaced yet
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith(".b.tmp-"))
    assert len(leftovers) == 1 and (out / leftovers[0] / "table.csv").read_text() == "name,version\npartial,2\n"
    assert json.loads((out / ".force-pending.json").read_text()) == {"names": ["b", "c"]}


def test_rerun_after_killed_force_equals_an_uninterrupted_run(killed_force, tmp_path, capsys):
    exp, out, _ = killed_force
    capsys.readouterr()
    assert _run(exp, out) == 0  # without --force: the interrupted --force is finished
    said = capsys.readouterr().out
    assert "[a] up to date" in said
    assert "[b] an interrupted --force run had not replaced these results; rerunning" in said
    assert "[c] an interrupted --force run had not replaced these results; rerunning" in said
    reference = tmp_path / "reference"
    assert _run(exp, reference) == 0  # version 2, never interrupted
    assert _report(out) == _report(reference)
    page = (out / "index.html").read_text()
    assert page.count("made by version 2") == 3 and "version 1" not in page
