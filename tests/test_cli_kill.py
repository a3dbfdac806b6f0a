"""`densityformula reproduce --force` killed (SIGKILL) midway, then rerun (issue 9).

Three fake experiments ``a``, ``b``, ``c`` (run in that order) write a table and a claim with the
version that ``<tmp>/version.txt`` holds; ``b`` writes its table first and then, when asked, says
it has started and sleeps, so that the run can be killed while ``b`` is halfway through.

Both tests fail on the cli.py before issue 9 (`git show 63cc42f:densityformula/cli.py`): it ran
``b`` into its final folder, so the kill left ``b``'s old ``summary.json`` beside its new
``table.csv``, and the rerun without ``--force`` kept that mix (and ``c``'s old results) as if
complete.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from densityformula import cli

REPO = Path(__file__).resolve().parents[1]
#: the command line that is killed (a fresh interpreter, as `densityformula reproduce` is)
COMMAND = [sys.executable, "-m", "densityformula.cli"]

EXPERIMENT = '''
import os, time
from pathlib import Path
NAME = "{name}"
TITLE = "Experiment {name}"

def run(out_dir, *, quick, seed):
    version = Path(os.environ["DF_TEST_VERSION_FILE"]).read_text().strip()
    (out_dir / "table.csv").write_text(f"name,version\\n{name},{{version}}\\n")
    started = os.environ.get("DF_TEST_STARTED_FILE")
    if {sleeps} and started:
        Path(started).write_text("started")
        time.sleep(120)
    return {{"claims": [{{"name": "version", "value": version, "expected": version, "passed": True}}],
            "tables": ["table.csv"], "notes": [f"made by version {{version}}"]}}
'''


def _experiments(tmp_path: Path) -> Path:
    exp = tmp_path / "experiments"
    exp.mkdir()
    for name in "abc":
        (exp / f"{name}.py").write_text(EXPERIMENT.format(name=name, sleeps=name == "b"))
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
            summary.pop("seconds")
            text = json.dumps(summary, sort_keys=True)
        elif path.name == "index.html":
            text = re.sub(r"seed=(\d+), [0-9.]+ s\.", r"seed=\1, ? s.", text)
        found[str(path.relative_to(out))] = text
    return found


def _run(exp: Path, out: Path, *extra: str) -> int:
    return cli.main(["reproduce", "--experiments-dir", str(exp), "--out", str(out), *extra])


@pytest.fixture
def killed_force(tmp_path, monkeypatch):
    """Results of version 1 in ``out``; then ``--force`` with version 2, SIGKILLed during ``b``."""
    exp = _experiments(tmp_path)
    version = tmp_path / "version.txt"
    monkeypatch.setenv("DF_TEST_VERSION_FILE", str(version))
    monkeypatch.delenv("DF_TEST_STARTED_FILE", raising=False)
    out = tmp_path / "results"
    version.write_text("1")
    assert _run(exp, out) == 0
    old = {name: _report(out / name) for name in "abc"}

    version.write_text("2")
    started = tmp_path / "b-started"
    env = {**os.environ, "DF_TEST_STARTED_FILE": str(started), "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(
        [*COMMAND, "reproduce", "--force", "--experiments-dir", str(exp), "--out", str(out)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline, "experiment b never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    return exp, out, old


def test_killed_force_leaves_old_results_intact(killed_force):
    exp, out, old = killed_force
    assert json.loads((out / "a" / "summary.json").read_text())["claims"][0]["value"] == "2"  # finished: replaced
    assert _report(out / "b") == old["b"]  # killed while running: the old results, whole
    assert _report(out / "c") == old["c"]  # not reached: untouched


def test_rerun_after_killed_force_equals_an_uninterrupted_run(killed_force, tmp_path):
    exp, out, _ = killed_force
    assert _run(exp, out) == 0  # without --force: the interrupted --force is finished
    reference = tmp_path / "reference"
    assert _run(exp, reference) == 0  # version 2, never interrupted
    assert _report(out) == _report(reference)
    assert "version 2" in (out / "index.html").read_text() and "version 1" not in (out / "index.html").read_text()
