"""The `densityformula reproduce` driver: discovery, summaries, resume, no silent overwrite."""
import json
import tempfile
from pathlib import Path

import pytest

from densityformula import cli

EXPERIMENT = '''
NAME = "toy"
TITLE = "Toy experiment"
CLAIM = "two plus two is four"
CALLS = []

def run(out_dir, *, quick, seed):
    CALLS.append(seed)
    (out_dir / "table.csv").write_text("a,b\\n1,2\\n")
    return {"claims": [{"name": "sum", "value": 2 + 2, "expected": 4, "passed": 2 + 2 == 4}],
            "tables": ["table.csv"]}
'''


def _setup(tmp_path: Path) -> Path:
    exp = tmp_path / "experiments"
    exp.mkdir()
    (exp / "toy.py").write_text(EXPERIMENT)
    (exp / "_helper.py").write_text("raise RuntimeError('private modules are not experiments')")
    return exp


def test_reproduce_writes_summary_and_index(tmp_path):
    exp = _setup(tmp_path)
    out = tmp_path / "results"
    rc = cli.main(["reproduce", "--experiments-dir", str(exp), "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "toy" / "summary.json").read_text())
    assert summary["claims"] == [{"name": "sum", "value": 4, "expected": 4, "passed": True}]
    assert summary["quick"] is True
    page = (out / "index.html").read_text()
    assert "Toy experiment" in page and "1 of 1 claims hold" in page


def test_existing_results_are_kept_unless_forced(tmp_path, capsys):
    exp = _setup(tmp_path)
    out = tmp_path / "results"
    cli.main(["reproduce", "--experiments-dir", str(exp), "--out", str(out)])
    path = out / "toy" / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "marker": 1}))
    cli.main(["reproduce", "--experiments-dir", str(exp), "--out", str(out)])
    assert json.loads(path.read_text()).get("marker") == 1
    assert "kept existing results" in capsys.readouterr().out
    cli.main(["reproduce", "--experiments-dir", str(exp), "--out", str(out), "--force"])
    assert "marker" not in json.loads(path.read_text())


def test_failed_claim_gives_nonzero_exit(tmp_path):
    exp = tmp_path / "experiments"
    exp.mkdir()
    (exp / "bad.py").write_text(
        'NAME="bad"\ndef run(out_dir, *, quick, seed):\n'
        '    return {"claims": [{"name": "x", "value": 1, "expected": 2, "passed": False}]}\n'
    )
    assert cli.main(["reproduce", "--experiments-dir", str(exp), "--out", str(tmp_path / "r")]) == 1


def test_crashing_experiment_is_reported(tmp_path):
    exp = tmp_path / "experiments"
    exp.mkdir()
    (exp / "boom.py").write_text('NAME="boom"\ndef run(out_dir, *, quick, seed):\n    raise ValueError("kaput")\n')
    assert cli.main(["reproduce", "--experiments-dir", str(exp), "--out", str(tmp_path / "r")]) == 1
    summary = json.loads((tmp_path / "r" / "boom" / "summary.json").read_text())
    assert "kaput" in summary["error"]


# --- issue 9: atomic result folders, crashes retried, clear usage errors ------------------------
#
# Each test below fails on the cli.py before issue 9 (checked by running this file against
# `git show 63cc42f:densityformula/cli.py`): there, an unknown --only exited 0, an unusable --out or
# experiments folder raised a raw exception, a crash was cached, --force merged folders, a corrupt
# summary raised, leftovers stayed, and a result of another seed was kept.

VERSIONED = '''
import os
NAME = "ver"
TITLE = "Versioned"

def run(out_dir, *, quick, seed):
    version = (out_dir.parent.parent / "version.txt").read_text().strip()
    if version == "crash":
        (out_dir / "table.csv").write_text("a\\ncrash\\n")
        raise RuntimeError("kaput")
    (out_dir / "table.csv").write_text(f"a\\n{version}\\n")
    if version == "1":
        (out_dir / "extra.csv").write_text("b\\n1\\n")
    return {"claims": [{"name": "v", "value": version, "expected": version, "passed": True}],
            "tables": ["table.csv"]}
'''


def _versioned(tmp_path: Path, version: str) -> Path:
    """An experiment folder whose one experiment writes what ``tmp_path/version.txt`` says."""
    exp = tmp_path / "experiments"
    exp.mkdir(exist_ok=True)
    (exp / "ver.py").write_text(VERSIONED)
    (tmp_path / "version.txt").write_text(version)
    return exp


def _reproduce(exp: Path, out: Path, *extra: str) -> int:
    return cli.main(["reproduce", "--experiments-dir", str(exp), "--out", str(out), *extra])


def _files(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones too) -> its bytes, ``seconds`` left out of summaries."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.name == "summary.json":
                summary = json.loads(data)
                summary.pop("seconds", None)
                data = json.dumps(summary, sort_keys=True).encode()
            found[str(path.relative_to(folder))] = data
    return found


def _usage_error(capsys, rc: int, *words: str) -> str:
    """The call failed with exit code 2 and one stderr line (no traceback) containing ``words``."""
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    return err


def test_unknown_only_name_is_an_error_listing_known_names(tmp_path, capsys):
    exp = _setup(tmp_path)
    out = tmp_path / "results"
    _usage_error(capsys, _reproduce(exp, out, "--only", "toy", "nope"), "--only", "'nope'", "known: toy")
    assert not (out / "toy").exists()
    assert _reproduce(exp, out, "--only", "toy") == 0  # a known name still works
    with pytest.raises(ValueError, match="only"):  # the library function names its argument
        cli.run_experiments(cli.discover(exp), out, only=["nope"])


def test_out_that_is_a_file_is_an_error(tmp_path, capsys):
    exp = _setup(tmp_path)
    out = tmp_path / "results"
    out.write_text("not a folder")
    _usage_error(capsys, _reproduce(exp, out), "--out", str(out), "is a file")
    assert out.read_text() == "not a folder"


def test_out_that_cannot_be_created_is_an_error(tmp_path, capsys):
    exp = _setup(tmp_path)
    (tmp_path / "file").write_text("")
    _usage_error(capsys, _reproduce(exp, tmp_path / "file" / "results"), "--out", "not a writable folder")


def test_out_that_is_not_writable_is_an_error(tmp_path, capsys, monkeypatch):
    exp = _setup(tmp_path)
    out = tmp_path / "results"
    out.mkdir()
    # a read-only folder (chmod is no obstacle for root, who runs CI here): writing into it fails
    real_mkdtemp = tempfile.mkdtemp

    def read_only(*args, **kwargs):
        if Path(kwargs.get("dir") or args[2]).resolve() == out.resolve():
            raise PermissionError(13, "Permission denied")
        return real_mkdtemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    _usage_error(capsys, _reproduce(exp, out), "--out", "not a writable folder", "Permission denied")
    assert list(out.iterdir()) == []


def test_missing_experiments_folder_is_an_error_saying_where_it_looked(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as for a pip-installed package run outside a checkout
    rc = cli.main(["reproduce", "--out", str(tmp_path / "r")])
    _usage_error(capsys, rc, str(tmp_path / "experiments"), "does not exist", "--experiments-dir")
    assert not (tmp_path / "r").exists()
    _usage_error(capsys, cli.main(["reproduce", "--list"]), "does not exist", "--experiments-dir")


def test_no_experiments(tmp_path, capsys):
    exp = tmp_path / "experiments"
    exp.mkdir()
    (exp / "_helper.py").write_text("")
    for extra in ([], ["--list"]):
        rc = cli.main(["reproduce", "--experiments-dir", str(exp), "--out", str(tmp_path / "r"), *extra])
        _usage_error(capsys, rc, "no experiments in", str(exp), "--experiments-dir")


def test_crashed_experiment_is_not_cached_but_retried(tmp_path, capsys):
    exp = _versioned(tmp_path, "crash")
    out = tmp_path / "r"
    assert _reproduce(exp, out) == 1
    assert "kaput" in (out / "index.html").read_text()
    (tmp_path / "version.txt").write_text("2")  # the bug is fixed; a plain rerun (no --force) retries
    assert _reproduce(exp, out) == 0
    summary = json.loads((out / "ver" / "summary.json").read_text())
    assert "error" not in summary and summary["claims"][0]["value"] == "2"
    assert (out / "ver" / "table.csv").read_text() == "a\n2\n"
    assert "kaput" not in (out / "index.html").read_text()


def test_crash_under_force_keeps_the_previous_results_whole(tmp_path):
    exp = _versioned(tmp_path, "1")
    out = tmp_path / "r"
    assert _reproduce(exp, out) == 0
    before = _files(out / "ver")
    (tmp_path / "version.txt").write_text("crash")
    assert _reproduce(exp, out, "--force") == 1
    assert _files(out / "ver") == before  # not the crash's table beside the old summary
    page = (out / "index.html").read_text()
    assert "kaput" in page and "previous complete results" in page
    # the forced rerun never completed, so the next plain run retries it
    (tmp_path / "version.txt").write_text("2")
    assert _reproduce(exp, out) == 0
    assert json.loads((out / "ver" / "summary.json").read_text())["claims"][0]["value"] == "2"


def test_force_replaces_the_folder_whole(tmp_path):
    exp = _versioned(tmp_path, "1")
    out = tmp_path / "r"
    assert _reproduce(exp, out) == 0
    assert (out / "ver" / "extra.csv").exists()
    (tmp_path / "version.txt").write_text("2")
    assert _reproduce(exp, out, "--force") == 0
    assert sorted(p.name for p in (out / "ver").iterdir()) == ["summary.json", "table.csv"]  # no stale extra.csv
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "ver"]  # no temporary folders left


def test_leftovers_of_a_killed_run_are_cleaned_or_restored(tmp_path):
    exp = _versioned(tmp_path, "1")
    out = tmp_path / "r"
    assert _reproduce(exp, out) == 0
    results = _files(out / "ver")
    dead = 2**22 + 12345  # above Linux's pid_max: no live process has it
    # killed between the two renames of a replacement: the old results wait in the trash
    (out / "ver").rename(out / f".ver.trash-{dead}")
    (out / f".ver.tmp-{dead + 1}").mkdir()
    (out / f".ver.tmp-{dead + 1}" / "table.csv").write_text("a\npartial\n")
    (out / f".index.html.tmp-{dead}").write_text("<html>partial")
    (tmp_path / "version.txt").write_text("2")
    assert _reproduce(exp, out) == 0
    assert _files(out / "ver") == results  # put back and kept (this run was not --force)
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "ver"]
    # a trash folder beside complete results is just removed
    (out / f".ver.trash-{dead}").mkdir()
    assert _reproduce(exp, out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "ver"]


def test_corrupt_summary_is_rerun(tmp_path):
    exp = _setup(tmp_path)
    out = tmp_path / "r"
    assert _reproduce(exp, out) == 0
    (out / "toy" / "summary.json").write_text('{"claims": [')  # a truncated file
    assert _reproduce(exp, out) == 0
    assert json.loads((out / "toy" / "summary.json").read_text())["claims"][0]["passed"] is True


def test_result_of_another_seed_is_rerun(tmp_path, capsys):
    exp = _setup(tmp_path)
    out = tmp_path / "r"
    assert _reproduce(exp, out) == 0
    assert _reproduce(exp, out, "--seed", "3") == 0
    assert json.loads((out / "toy" / "summary.json").read_text())["seed"] == 3
    assert "seed=0; rerunning" in capsys.readouterr().out
