"""The `densityformula reproduce` driver and the experiment runner (issues 9 and 10).

Every test runs toy experiments -- small :class:`~densityformula.experiment.Experiment` subclasses
written to ``tmp_path/experiments`` -- never the real ones.  A toy's ``compute`` appends a line to
``tmp_path/calls.log`` (so a test sees exactly which experiments ran) and reads its behaviour from
``tmp_path/version.txt`` ("crash": it raises after writing a partial table).

Covered: summary and index; a failing claim and a claim whose negative control passes exit 1;
crashes reported, never cached, retried, and never replacing complete results; ``--force``
replaces a folder whole; leftovers of killed runs cleaned or restored; corrupt summaries rerun;
usage errors exit 2 with one line; results keyed on code, helpers, library, seed and mode (stale
ones archived, up-to-date ones kept without calling ``compute``); the experiments folder found
from anywhere inside a checkout; an experiment run alone as a script; figures as PNG and PDF.
(A killed ``--force`` is tests/test_cli_kill.py.)
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import browser
import pytest
import torch

from densityformula import cli
from densityformula.experiment import _store

REPO = Path(__file__).resolve().parents[1]

#: a toy experiment; __NAME__ and __CHECK__ are filled in by _toy
TOY = '''
from pathlib import Path

from densityformula.experiment import Claim, Control, Experiment, checks

from . import _helper

ROOT = Path(__file__).resolve().parent.parent
FACTOR = 1  # the line that tests edit


def _version():
    path = ROOT / "version.txt"
    return path.read_text().strip() if path.exists() else "1"


class Toy(Experiment):
    name = "__NAME__"
    title = "Toy experiment __NAME__"
    claim = "two plus two is four"

    def compute(self, ctx):
        with open(ROOT / "calls.log", "a") as log:
            log.write(f"{self.name} seed={ctx.seed} quick={ctx.quick}\\n")
        version = _version()
        if version == "crash":
            (ctx.out_dir / "table.csv").write_text("a\\ncrash\\n")
            raise RuntimeError("kaput")
        return {"sum": 2 + 2, "version": version}

    def claims(self, r, ctx):
        yield Claim("sum", "2 + 2 = 4", __CHECK__, Control("one added to the sum", 1.0, "units"))

    def tables(self, r, ctx):
        tables = {"table.csv": [{"a": r["version"]}]}
        if r["version"] == "1":
            tables["extra.csv"] = [{"b": 1}]
        return tables

    def notes(self, r, ctx):
        return [f"made by version {r['version']} with helper {_helper.LABEL} and factor {FACTOR}"]


EXPERIMENT = Toy()
'''
HOLDS = 'checks.within(r["sum"], 4, atol=0.5, unit="units")'


def _toy(exp: Path, name: str, check: str = HOLDS) -> Path:
    exp.mkdir(parents=True, exist_ok=True)
    if not (exp / "_helper.py").exists():
        (exp / "_helper.py").write_text('LABEL = "h1"\n')
    # a private module is no experiment: discovery must not import it
    (exp / "_unused.py").write_text("raise RuntimeError('private modules are not experiments')\n")
    path = exp / f"{name}.py"
    path.write_text(TOY.replace("__NAME__", name).replace("__CHECK__", check))
    return path


def _setup(tmp_path: Path, *names: str) -> Path:
    exp = tmp_path / "experiments"
    for name in names or ("toy",):
        _toy(exp, name)
    return exp


def _reproduce(exp: Path, out: Path, *extra: str) -> int:
    return cli.main(["reproduce", "--experiments-dir", str(exp), "--out", str(out), *extra])


def _calls(tmp_path: Path) -> list:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def _summary(out: Path, name: str) -> dict:
    return json.loads((out / name / "summary.json").read_text())


def _files(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones too) -> its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _usage_error(capsys, rc: int, *words: str) -> str:
    """The call failed with exit code 2 and one stderr line (no traceback) containing ``words``."""
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    return err


# --- summary, index, verdicts ----------------------------------------------------------------


def test_reproduce_writes_summary_and_index(tmp_path):
    exp = _setup(tmp_path)
    out = tmp_path / "results"
    assert _reproduce(exp, out) == 0
    s = _summary(out, "toy")
    assert (s["name"], s["title"], s["claim"]) == ("toy", "Toy experiment toy", "two plus two is four")
    assert (s["quick"], s["seed"], s["device"]) == (True, 0, "cpu") and "error" not in s
    assert s["notes"] == ["made by version 1 with helper h1 and factor 1"]
    assert sorted(s["tables"]) == ["extra.csv", "table.csv"] and (out / "toy" / "table.csv").read_text() == "a\n1\n"
    (claim,) = s["claims"]
    assert claim["name"] == "sum" and claim["status"] == "holds" and claim["passed"] is True
    assert claim["value"]["max |difference|"] == {"value": 0.0, "unit": "units", "text": "0 units"}
    assert claim["control"]["what"] == "one added to the sum" and claim["control"]["size"] == 1.0
    assert claim["control"]["passed"] is False and claim["control"]["value"]["max |difference|"]["value"] == 1.0
    # the check fails for defects above 0.5: the power search finds that to its resolution
    assert claim["power"]["relation"] == "=" and 0.5 < claim["power"]["size"] <= 0.5 * 1.03
    assert set(s["inputs"]) == {"key", "experiment_code", "library_code", "version", "torch", "quick", "seed",
                                "device"}
    assert s["key"] == s["inputs"]["key"] and len(s["key"]) == 64
    page = (out / "index.html").read_text()
    assert "Toy experiment toy" in page and "1 of 1 claims hold; 1 of 1 negative controls are detected" in page
    assert s["computed_at"] in page and s["key"][:12] in page
    rows = browser.parse(page)["claims"]
    assert [(r["experiment"], r["claim"]) for r in rows] == [("toy", "sum")]
    assert rows[0]["control"] == "one added to the sum (1 units)" and rows[0]["power"].endswith(" units")
    assert "detected" in page and "NOT detected" not in page


def test_index_lists_every_claim_with_control_and_power(tmp_path):
    exp = tmp_path / "experiments"
    _toy(exp, "a")
    (exp / "b.py").write_text(TOY.replace("__NAME__", "b").replace(
        '        yield Claim("sum", "2 + 2 = 4", __CHECK__, Control("one added to the sum", 1.0, "units"))\n',
        '        yield Claim("sum", "2 + 2 = 4", checks.within(r["sum"], 4, atol=0.5), Control("one added", 1.0))\n'
        '        yield Claim("bound", "sum <= 5", checks.below(r["sum"], 5.0), Control("raised", 3.0, search=False))\n'
        '        yield Claim("wrong", "sum = 5", checks.within(r["sum"], 5, atol=0.5), Control("one added", 1.0))\n'))
    out = tmp_path / "results"
    assert _reproduce(exp, out) == 1
    page = browser.parse((out / "index.html").read_text())
    rows = page["claims"]
    assert [(r["experiment"], r["claim"]) for r in rows] == [("a", "sum"), ("b", "sum"), ("b", "bound"), ("b", "wrong")]
    assert [r["control"] for r in rows] == [
        "one added to the sum (1 units)", "one added (1)", "raised (3)", "one added (1)"]
    power = [r["power"] for r in rows]
    assert power[2] == "<= 3" and power[3] == "n/a" and all(p and p != "n/a" for p in power[:2]), power
    assert [r["verdict"] for r in rows] == ["holds", "holds", "holds", "fails"]
    # what the browser test checks: all there but the load script's marks, which only a browser makes
    assert browser.report_problems(out, page) == ["the page's load script did not run (no body[data-loaded='1'])"]


def test_failed_claim_gives_exit_code_1(tmp_path, capsys):
    exp = tmp_path / "experiments"
    _toy(exp, "bad", 'checks.within(r["sum"], 5, atol=0.5)')
    out = tmp_path / "r"
    assert _reproduce(exp, out) == 1
    (claim,) = _summary(out, "bad")["claims"]
    assert claim["status"] == "fails" and claim["passed"] is False and claim["power"] is None
    captured = capsys.readouterr()
    assert "[bad] FAIL sum" in captured.out and "claims that do not hold: bad: sum (fails)" in captured.err
    assert "0 of 1 claims hold" in (out / "index.html").read_text()


def test_claim_whose_control_passes_is_a_failure(tmp_path, capsys):
    exp = tmp_path / "experiments"
    _toy(exp, "blind", 'checks.within(r["sum"], 4, atol=5.0)')  # a defect of 1 is within the tolerance
    out = tmp_path / "r"
    assert _reproduce(exp, out) == 1
    (claim,) = _summary(out, "blind")["claims"]
    assert claim["status"] == "control passed" and claim["passed"] is False
    assert claim["control"]["passed"] is True and claim["power"] is None
    captured = capsys.readouterr()
    assert "[blind] CONTROL PASSED sum" in captured.out
    assert "claims that do not hold: blind: sum (control passed)" in captured.err
    page = (out / "index.html").read_text()
    assert "NOT detected" in page and "0 of 1 claims hold; 0 of 1 negative controls are detected" in page
    (row,) = browser.parse(page)["claims"]
    assert row["verdict"] == "control passed" and row["power"] == "n/a"


def test_crashing_experiment_is_reported(tmp_path, capsys):
    exp = _setup(tmp_path)
    (tmp_path / "version.txt").write_text("crash")
    out = tmp_path / "r"
    assert _reproduce(exp, out) == 1
    s = _summary(out, "toy")
    assert "kaput" in s["error"] and "RuntimeError" in s["error"] and s["claims"] == []
    assert "kaput" in (out / "index.html").read_text()
    assert "toy: crashed" in capsys.readouterr().err


# --- crashes, --force, leftovers (issue 9) -----------------------------------------------------


def test_crashed_experiment_is_not_cached_but_retried(tmp_path):
    exp = _setup(tmp_path)
    (tmp_path / "version.txt").write_text("crash")
    out = tmp_path / "r"
    assert _reproduce(exp, out) == 1
    assert "kaput" in (out / "index.html").read_text()
    (tmp_path / "version.txt").write_text("2")  # the bug is fixed; a plain rerun (no --force) retries
    assert _reproduce(exp, out) == 0
    s = _summary(out, "toy")
    assert "error" not in s and s["notes"][0].startswith("made by version 2")
    assert (out / "toy" / "table.csv").read_text() == "a\n2\n"
    assert "kaput" not in (out / "index.html").read_text()
    assert _calls(tmp_path) == ["toy seed=0 quick=True"] * 2


def test_existing_results_are_kept_unless_forced(tmp_path, capsys):
    exp = _setup(tmp_path)
    out = tmp_path / "results"
    assert _reproduce(exp, out) == 0
    path = out / "toy" / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "marker": 1}))
    assert _reproduce(exp, out) == 0
    assert json.loads(path.read_text()).get("marker") == 1
    assert "[toy] up to date" in capsys.readouterr().out
    assert _reproduce(exp, out, "--force") == 0
    assert "marker" not in json.loads(path.read_text())
    assert len(_calls(tmp_path)) == 2
    assert not (out / ".archive").exists()  # replaced on request, not archived as stale


def test_crash_under_force_keeps_the_previous_results_whole(tmp_path):
    exp = _setup(tmp_path)
    out = tmp_path / "r"
    assert _reproduce(exp, out) == 0
    before = _files(out / "toy")
    (tmp_path / "version.txt").write_text("crash")
    assert _reproduce(exp, out, "--force") == 1
    assert _files(out / "toy") == before  # not the crash's table beside the old summary
    page = (out / "index.html").read_text()
    assert "kaput" in page and "previous complete results" in page
    # the forced rerun never completed, so the next plain run retries it
    (tmp_path / "version.txt").write_text("2")
    assert _reproduce(exp, out) == 0
    assert _summary(out, "toy")["notes"][0].startswith("made by version 2")
    assert not (out / _store.PENDING).exists()


def test_force_replaces_the_folder_whole(tmp_path):
    exp = _setup(tmp_path)
    out = tmp_path / "r"
    assert _reproduce(exp, out) == 0
    assert (out / "toy" / "extra.csv").exists()
    (tmp_path / "version.txt").write_text("2")
    assert _reproduce(exp, out, "--force") == 0
    assert sorted(p.name for p in (out / "toy").iterdir()) == ["summary.json", "table.csv"]  # no stale extra.csv
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "toy"]  # no temporary folders left


def test_leftovers_of_a_killed_run_are_cleaned_or_restored(tmp_path, capsys):
    exp = _setup(tmp_path)
    out = tmp_path / "r"
    assert _reproduce(exp, out) == 0
    results = _files(out / "toy")
    dead = 2**22 + 12345  # above Linux's pid_max: no live process has it
    # killed between the two renames of a replacement: the old results wait in the trash
    (out / "toy").rename(out / f".toy.trash-{dead}")
    (out / f".toy.tmp-{dead + 1}").mkdir()
    (out / f".toy.tmp-{dead + 1}" / "table.csv").write_text("a\npartial\n")
    (out / f".index.html.tmp-{dead}").write_text("<html>partial")
    (tmp_path / "version.txt").write_text("2")
    assert _reproduce(exp, out) == 0
    assert "[toy] restored the previous results" in capsys.readouterr().out
    assert _files(out / "toy") == results  # put back and kept (this run was not --force)
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "toy"]
    assert len(_calls(tmp_path)) == 1
    # a trash folder beside complete results is just removed
    (out / f".toy.trash-{dead}").mkdir()
    assert _reproduce(exp, out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "toy"]


def test_corrupt_summary_is_rerun(tmp_path, capsys):
    exp = _setup(tmp_path)
    out = tmp_path / "r"
    assert _reproduce(exp, out) == 0
    (out / "toy" / "summary.json").write_text('{"claims": [')  # a truncated file
    assert _reproduce(exp, out) == 0
    assert "unreadable summary; rerunning" in capsys.readouterr().out
    assert _summary(out, "toy")["claims"][0]["passed"] is True
    assert len(_calls(tmp_path)) == 2


# --- usage errors: exit 2 and one line ----------------------------------------------------------


def test_unknown_only_name_is_an_error_listing_known_names(tmp_path, capsys):
    exp = _setup(tmp_path)
    out = tmp_path / "results"
    _usage_error(capsys, _reproduce(exp, out, "--only", "toy", "nope"), "--only", "'nope'", "known: toy")
    assert not (out / "toy").exists()
    assert _reproduce(exp, out, "--only", "toy") == 0  # a known name still works
    with pytest.raises(ValueError, match="only"):  # the library function names its argument
        cli.run_experiments(cli.discover(exp), out, only=["nope"])


def test_only_runs_only_the_named_experiments(tmp_path):
    exp = _setup(tmp_path, "a", "b")
    out = tmp_path / "results"
    assert _reproduce(exp, out, "--only", "b") == 0
    assert _calls(tmp_path) == ["b seed=0 quick=True"] and not (out / "a").exists()


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


def test_missing_experiments_folder_is_an_error_saying_where_it_looked(tmp_path, capsys):
    missing = tmp_path / "nope"
    _usage_error(capsys, _reproduce(missing, tmp_path / "r"), str(missing), "does not exist", "--experiments-dir")
    assert not (tmp_path / "r").exists()
    (tmp_path / "file.py").write_text("")
    _usage_error(capsys, _reproduce(tmp_path / "file.py", tmp_path / "r"), "is a file", "--experiments-dir")
    rc = cli.main(["reproduce", "--list", "--experiments-dir", str(missing)])
    _usage_error(capsys, rc, "does not exist", "--experiments-dir")


def test_no_experiments(tmp_path, capsys):
    exp = tmp_path / "experiments"
    exp.mkdir()
    (exp / "_helper.py").write_text("")
    (exp / "not_an_experiment.py").write_text("X = 1\n")
    for extra in ([], ["--list"]):
        rc = cli.main(["reproduce", "--experiments-dir", str(exp), "--out", str(tmp_path / "r"), *extra])
        _usage_error(capsys, rc, "no experiments in", str(exp), "--experiments-dir")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here: --device cuda is valid")
def test_device_cuda_without_cuda_is_an_error(tmp_path, capsys):
    exp = _setup(tmp_path)
    out = tmp_path / "r"
    _usage_error(capsys, _reproduce(exp, out, "--device", "cuda"), "--device", "CUDA is not available")
    assert not out.exists() and _calls(tmp_path) == []


# --- freshness: results keyed on what made them ------------------------------------------------


def test_unchanged_rerun_does_not_compute_and_is_fast(tmp_path, capsys):
    exp = _setup(tmp_path, "a", "b")
    out = tmp_path / "r"
    assert _reproduce(exp, out) == 0
    assert _calls(tmp_path) == ["a seed=0 quick=True", "b seed=0 quick=True"]
    before = _files(out)
    capsys.readouterr()
    t0 = time.perf_counter()
    assert _reproduce(exp, out) == 0
    seconds = time.perf_counter() - t0
    assert _calls(tmp_path) == ["a seed=0 quick=True", "b seed=0 quick=True"]  # compute was not called
    text = capsys.readouterr().out
    assert "[a] up to date" in text and "[b] up to date" in text and "running" not in text
    after = _files(out)
    assert {k: v for k, v in after.items() if k != "index.html"} == {k: v for k, v in before.items()
                                                                     if k != "index.html"}
    assert seconds < 5.0, seconds  # about 0.1 s here: discovery and hashing the sources


def _archived(out: Path, name: str) -> list:
    folder = out / _store.ARCHIVE / name
    return sorted(folder.iterdir()) if folder.exists() else []


def test_editing_one_experiment_reruns_only_it_and_archives_its_results(tmp_path, capsys):
    exp = _setup(tmp_path, "a", "b")
    out = tmp_path / "r"
    assert _reproduce(exp, out) == 0
    old_a, old_b = _files(out / "a"), _files(out / "b")
    path = exp / "a.py"
    path.write_text(path.read_text().replace("FACTOR = 1  #", "FACTOR = 10  #"))  # one line of a.py
    capsys.readouterr()
    assert _reproduce(exp, out) == 0
    text = capsys.readouterr().out
    assert "[a] inputs changed since the results were computed (experiment code); rerunning" in text
    assert "[b] up to date" in text
    assert _calls(tmp_path)[2:] == ["a seed=0 quick=True"]
    a = _summary(out, "a")
    assert a["notes"] == ["made by version 1 with helper h1 and factor 10"]  # made by the edited code
    assert json.loads(old_a["summary.json"])["inputs"]["library_code"] == a["inputs"]["library_code"]
    assert _files(out / "b") == old_b
    # the stale results are moved aside whole, not deleted
    (archived,) = _archived(out, "a")
    assert _files(archived) == old_a and archived.name.endswith(json.loads(old_a["summary.json"])["key"][:10])
    assert _archived(out, "b") == []
    assert sorted(p.name for p in out.iterdir()) == [".archive", "a", "b", "index.html"]


def test_report_marks_results_not_rerun_but_stale(tmp_path):
    """An --only run still shows the other experiments' results; an edited one is marked stale, not current."""
    exp = _setup(tmp_path, "a", "b")
    out = tmp_path / "r"
    assert _reproduce(exp, out) == 0
    assert "stale" not in (out / "index.html").read_text()
    path = exp / "a.py"
    path.write_text(path.read_text().replace("FACTOR = 1  #", "FACTOR = 10  #"))
    assert _reproduce(exp, out, "--only", "b") == 0
    page = (out / "index.html").read_text()
    assert page.count("class='fail stale'") == 1 and "code or versions changed" in page
    assert "Toy experiment a" in page  # still shown, with its old verdicts, but marked
    (exp / "a.py").unlink()  # an experiment that no longer exists
    assert _reproduce(exp, out, "--only", "b") == 0
    assert "no experiment of this name" in (out / "index.html").read_text()


def test_editing_a_helper_reruns_every_experiment_of_the_folder(tmp_path, capsys):
    exp = _setup(tmp_path, "a", "b")
    out = tmp_path / "r"
    assert _reproduce(exp, out) == 0
    (exp / "_helper.py").write_text('LABEL = "h22"\n')
    assert _reproduce(exp, out) == 0
    assert _calls(tmp_path)[2:] == ["a seed=0 quick=True", "b seed=0 quick=True"]
    for name in "ab":
        # rerun with the new helper, not a copy cached by the earlier discovery in this process
        assert _summary(out, name)["notes"] == ["made by version 1 with helper h22 and factor 1"]
        assert len(_archived(out, name)) == 1
    assert capsys.readouterr().out.count("(experiment code); rerunning") == 2
    assert _reproduce(exp, out) == 0 and len(_calls(tmp_path)) == 4  # and now they are up to date


def test_changing_seed_or_mode_reruns(tmp_path, capsys):
    exp = _setup(tmp_path)
    out = tmp_path / "r"
    assert _reproduce(exp, out) == 0
    capsys.readouterr()
    assert _reproduce(exp, out, "--seed", "3") == 0
    assert "[toy] inputs changed since the results were computed (seed); rerunning" in capsys.readouterr().out
    assert _summary(out, "toy")["seed"] == 3 and _summary(out, "toy")["inputs"]["seed"] == "3"
    assert _reproduce(exp, out, "--seed", "3") == 0  # up to date for seed 3
    assert _reproduce(exp, out, "--seed", "3", "--full") == 0
    assert "(quick); rerunning" in capsys.readouterr().out
    assert _summary(out, "toy")["quick"] is False
    assert _calls(tmp_path) == ["toy seed=0 quick=True", "toy seed=3 quick=True", "toy seed=3 quick=False"]
    assert len(_archived(out, "toy")) == 2


def test_library_change_makes_results_stale(tmp_path, monkeypatch, capsys):
    lib = tmp_path / "lib"
    (lib / "Sub").mkdir(parents=True)
    files = sorted([lib / "core.py", lib / "Sub" / "util.py"])  # the first in a subfolder, as sorted() puts it
    for f in files:
        f.write_text("X = 1\n")
    monkeypatch.setattr(_store, "library_files", lambda: list(files))
    exp = _setup(tmp_path, "a", "b")
    out = tmp_path / "r"
    assert _reproduce(exp, out) == 0
    key = _summary(out, "a")["inputs"]["library_code"]
    assert _reproduce(exp, out) == 0 and len(_calls(tmp_path)) == 2  # unchanged library: up to date
    capsys.readouterr()
    files[0].write_text("X = 2\n")  # one line of one library file
    assert _reproduce(exp, out) == 0
    assert capsys.readouterr().out.count("(library code); rerunning") == 2
    assert len(_calls(tmp_path)) == 4 and _summary(out, "a")["inputs"]["library_code"] != key
    assert len(_archived(out, "a")) == len(_archived(out, "b")) == 1


# --- where the experiments are ------------------------------------------------------------------


def test_experiments_are_found_from_any_folder_of_a_checkout(tmp_path, monkeypatch, capsys):
    checkout = tmp_path / "checkout"
    _setup(checkout)
    (checkout / "densityformula").mkdir()
    deep = checkout / "docs" / "figures"
    deep.mkdir(parents=True)
    out = tmp_path / "r"
    monkeypatch.chdir(deep)
    assert cli.main(["reproduce", "--out", str(out)]) == 0
    assert _summary(out, "toy")["claims"][0]["passed"] is True
    capsys.readouterr()
    monkeypatch.chdir(checkout / "experiments")
    assert cli.main(["reproduce", "--list"]) == 0
    assert capsys.readouterr().out.strip() == "toy: Toy experiment toy"


def test_outside_a_checkout_the_cli_names_experiments_dir(tmp_path, monkeypatch, capsys):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "experiments").mkdir(parents=True)  # an experiments/ folder alone is no checkout
    monkeypatch.chdir(elsewhere)  # as for a pip-installed package run outside a checkout
    rc = cli.main(["reproduce", "--out", str(tmp_path / "r")])
    _usage_error(capsys, rc, "no densityformula checkout contains", str(elsewhere.resolve()), "--experiments-dir")
    assert not (tmp_path / "r").exists()
    _usage_error(capsys, cli.main(["reproduce", "--list"]), "no densityformula checkout", "--experiments-dir")


# --- an experiment run alone ---------------------------------------------------------------------

ALONE = '''
"""A toy experiment that runs alone: python alone.py --out DIR --seed N."""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run alone, as experiments/samplers.py
    import densityformula.experiment as _x

    __package__ = _x.script_package(__file__)

from densityformula.experiment import Claim, Control, Experiment, checks

from . import _helper


class Alone(Experiment):
    name = "alone"
    title = "An experiment run alone"
    claim = "its helper's value is seven"

    def compute(self, ctx):
        return {"value": _helper.VALUE, "seed": ctx.seed}

    def claims(self, r, ctx):
        yield Claim("seven", "value = 7", checks.within(r["value"], 7.0, atol=0.0), Control("one added", 1.0))

    def notes(self, r, ctx):
        return [f"seed {r['seed']}"]


EXPERIMENT = Alone()

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
'''


def _script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_samplers_script_shows_its_help():
    proc = _script(str(REPO / "experiments" / "samplers.py"), "--help", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    for option in ("--quick", "--full", "--out", "--device", "--seed", "--force"):
        assert option in proc.stdout


def test_an_experiment_runs_alone(tmp_path, capsys):
    exp = tmp_path / "experiments"
    exp.mkdir()
    (exp / "alone.py").write_text(ALONE)
    (exp / "_helper.py").write_text("VALUE = 7.0\n")
    out = tmp_path / "out"
    proc = _script(str(exp / "alone.py"), "--out", str(out), "--seed", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    s = _summary(out, "alone")
    assert s["seed"] == 3 and s["notes"] == ["seed 3"] and s["claims"][0]["status"] == "holds"
    assert (out / "index.html").exists() and "An experiment run alone" in (out / "index.html").read_text()
    # the script alone and the CLI key the results the same way
    capsys.readouterr()
    assert _reproduce(exp, out, "--seed", "3") == 0
    assert "[alone] up to date" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here: --device cuda is valid")
def test_an_experiment_alone_rejects_device_cuda_without_cuda(tmp_path):
    exp = tmp_path / "experiments"
    exp.mkdir()
    (exp / "alone.py").write_text(ALONE)
    (exp / "_helper.py").write_text("VALUE = 7.0\n")
    proc = _script(str(exp / "alone.py"), "--out", str(tmp_path / "out"), "--device", "cuda", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--device" in proc.stderr and "CUDA is not available" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


# --- figures ----------------------------------------------------------------------------------------

FIGURE = '''
    def figures(self, r, ctx):
        from densityformula.experiment import subplots

        fig, ax = subplots(figsize=(3, 2))
        ax.plot([0, 1, 2], [1, 0, 1])
        return {"curve": fig}


EXPERIMENT = Toy()
'''


def test_figures_are_saved_as_png_and_pdf(tmp_path):
    exp = tmp_path / "experiments"
    path = _toy(exp, "fig")
    path.write_text(path.read_text().replace("\n\nEXPERIMENT = Toy()\n", FIGURE))
    out = tmp_path / "r"
    assert _reproduce(exp, out) == 0
    assert _summary(out, "fig")["figures"] == [{"png": "curve.png", "pdf": "curve.pdf"}]
    png, pdf = (out / "fig" / "curve.png").read_bytes(), (out / "fig" / "curve.pdf").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert pdf.startswith(b"%PDF") and len(pdf) > 1000
    page = browser.parse((out / "index.html").read_text())
    assert page["images"] == {"fig/curve.png": None}  # (its width: only a browser running the page knows)
    assert "href='fig/curve.pdf'" in (out / "index.html").read_text()


def test_run_experiments_accepts_auto_and_names_a_bad_device(tmp_path):
    from densityformula.experiment import discover, run_experiments

    exp = _setup(tmp_path, "a")
    (summary,) = run_experiments(discover(exp), tmp_path / "r", device="auto")
    assert summary["device"] == ("cuda" if torch.cuda.is_available() else "cpu") or summary["device"].startswith("cuda")
    with pytest.raises(ValueError, match="device"):
        run_experiments(discover(exp), tmp_path / "r", device="meta")
