"""`densityformula reproduce --quick` runs every experiment and every claim holds."""
import json
from pathlib import Path

import pytest

from densityformula import cli

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


@pytest.mark.slow
def test_reproduce_quick_all_claims_hold(tmp_path):
    rc = cli.main(["reproduce", "--quick", "--experiments-dir", str(EXPERIMENTS), "--out", str(tmp_path)])
    summaries = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/summary.json"))]
    names = {s["name"] for s in summaries}
    assert names == {m.NAME for m in cli.discover(EXPERIMENTS)}
    failed = [(s["name"], c["name"], c["value"], c["expected"])
              for s in summaries for c in s["claims"] if not c["passed"]]
    crashed = [(s["name"], s["error"][-500:]) for s in summaries if s.get("error")]
    assert not failed and not crashed, (failed, crashed)
    assert rc == 0
    for s in summaries:
        assert s["claims"], s["name"]
        for fig in s.get("figures", []):
            assert (tmp_path / s["name"] / fig).stat().st_size > 1000
    assert (tmp_path / "index.html").exists()
