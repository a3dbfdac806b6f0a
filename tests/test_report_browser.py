"""The report renders in a real browser: every image loads, every claim is listed with its control (issue 10).

A toy experiment (one figure, two claims) is run into a report, which headless Chromium opens;
the page's own load script marks each image with its natural width (``tests/browser.py``).
Negative control: with its PNG deleted, the same checks report the image as broken.

Chromium is Debian's ``chromium`` package; ``make test`` installs it when it is missing (as root,
with apt-get).  Only where it is still not found do these tests skip, saying so.  The real quick
report is rendered the same way by tests/test_experiments.py (``browser.render``).
"""
import re
import shutil

import browser
import pytest

from densityformula import cli

TOY = '''
from densityformula.experiment import Claim, Control, Experiment, checks, subplots


class Toy(Experiment):
    name = "toy"
    title = "Toy experiment with a figure"
    claim = "four is four, and at most five"

    def compute(self, ctx):
        return {"x": 4.0}

    def claims(self, r, ctx):
        yield Claim("equal", "x = 4 exactly", checks.within(r["x"], 4.0, atol=1e-9, unit="u"),
                    Control("one added to x", 1.0, "u"))
        yield Claim("bounded", "x <= 5", checks.below(r["x"], 5.0, unit="u"),
                    Control("x raised", 2.0, "u", search=False))

    def figures(self, r, ctx):
        fig, ax = subplots(figsize=(4, 3))
        ax.plot([0, 1, 2], [0, 1, 4], "o-")
        return {"curve": fig}


EXPERIMENT = Toy()
'''

needs_chromium = pytest.mark.skipif(browser.find_chromium() is None, reason=browser.MISSING)


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    exp = root / "experiments"
    exp.mkdir()
    (exp / "toy.py").write_text(TOY)
    out = root / "results"
    assert cli.main(["reproduce", "--experiments-dir", str(exp), "--out", str(out)]) == 0
    assert (out / "toy" / "curve.png").stat().st_size > 1000
    return out


@needs_chromium
def test_toy_report_renders_every_image_and_claim(toy_report):
    facts = browser.render(toy_report / "index.html")
    assert browser.report_problems(toy_report, facts) == []
    assert facts["loaded"] and facts["broken_count"] == 0
    assert list(facts["images"]) == ["toy/curve.png"] and facts["images"]["toy/curve.png"] > 0
    equal, bounded = facts["claims"]
    assert (equal["experiment"], equal["claim"], bounded["claim"]) == ("toy", "equal", "bounded")
    assert equal["control"] == "one added to x (1 u)" and equal["power"].endswith(" u")
    assert bounded["control"] == "x raised (2 u)" and bounded["power"] == "<= 2 u"
    assert equal["verdict"] == bounded["verdict"] == "holds"


@needs_chromium
def test_broken_image_is_reported(toy_report, tmp_path):
    out = tmp_path / "results"
    shutil.copytree(toy_report, out)
    (out / "toy" / "curve.png").unlink()
    facts = browser.render(out / "index.html")
    assert facts["images"] == {"toy/curve.png": 0} and facts["broken_count"] == 1
    problems = browser.report_problems(out, facts)
    assert "image toy/curve.png did not load (natural width 0)" in problems
    assert "#broken-images data-count is 1, not 0" in problems
    assert len(problems) == 2, problems  # the claims are still all there


def test_missing_claim_row_is_reported(toy_report):
    """Without a browser: the static page lists both claims; a page without one of them is caught."""
    text = (toy_report / "index.html").read_text()
    facts = browser.parse(text)
    assert [(r["experiment"], r["claim"]) for r in facts["claims"]] == [("toy", "equal"), ("toy", "bounded")]
    assert facts["images"] == {"toy/curve.png": None}  # only the load script sets the width
    start = re.search(r"<tr data-claim=[\"']bounded[\"']", text).start()
    cut = browser.parse(text[:start] + text[text.index("</tr>", start) + 5:])
    cut.update(loaded=True, broken_count=0, images={"toy/curve.png": 100})
    assert browser.report_problems(toy_report, cut) == ["claim toy: bounded has no row in the claims table"]

