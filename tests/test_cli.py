"""The `densityformula reproduce` driver: discovery, summaries, resume, no silent overwrite."""
import json
from pathlib import Path

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


def test_no_experiments(tmp_path, capsys):
    (tmp_path / "experiments").mkdir()
    assert cli.main(["reproduce", "--experiments-dir", str(tmp_path / "experiments")]) == 0
    assert "no experiments yet" in capsys.readouterr().out
