"""Open an experiment report (``<out>/index.html``) in headless Chromium and read back what it shows.

Used by ``tests/test_report_browser.py`` and meant for any test that has a real report to check:

    import browser                                 # tests/ is on sys.path under pytest
    assert browser.report_problems(out_dir) == []  # renders out_dir/index.html, compares summaries

    facts = browser.render(out_dir / "index.html")
    facts["images"]        # {src: natural width}  (0: did not load)
    facts["broken_count"]  # data-count of #broken-images (0 when every image loaded)
    facts["loaded"]        # the page's load script ran
    facts["claims"]        # [{"experiment", "claim", "control", "power", "verdict", "cells"}], in page order

:func:`render` loads the page in Debian's ``chromium`` (headless, fresh profile, no network
services), lets its load script run (``densityformula/experiment/_report.py`` sets
``data-natural-width`` on every ``<img>`` and ``data-count`` on ``#broken-images``) and parses the
dumped DOM into those facts; where chromium is not found it skips the calling test, saying so.
:func:`parse` reads the same facts from HTML text, so the static file can be checked without a
browser (its images then have width ``None``).  :func:`report_problems` compares a rendered page
with the ``summary.json`` files beside it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["CHROMIUM_FLAGS", "MISSING", "find_chromium", "dump_dom", "parse", "render", "report_problems"]

#: the flags of every run: headless, no sandbox (root in CI), no GPU, no network services, and
#: 5 s of virtual time for the page's load event and its script
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=5000",
)
_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: why a browser test skips
MISSING = (
    "chromium not found and not installed: `make test` installs Debian's chromium when run as root with apt-get "
    "(apt-get install chromium); the report's browser test cannot run here"
)

Facts = Dict[str, Any]


def find_chromium() -> Optional[str]:
    """The Chromium executable (Debian's ``/usr/bin/chromium`` first), or ``None``."""
    for name in _CANDIDATES:
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def dump_dom(index: Path, *, chromium: Optional[str] = None, timeout: float = 120.0) -> str:
    """The DOM of ``index`` after its load event, as headless Chromium serializes it.

    Without ``chromium`` and with none found, the calling test skips (:data:`MISSING`).
    """
    exe = chromium or find_chromium()
    if exe is None:
        import pytest

        pytest.skip(MISSING)
    url = Path(index).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="df-chromium-") as profile:
        proc = subprocess.run(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True, text=True, timeout=timeout, env={**os.environ, "HOME": profile},
        )
    if proc.returncode != 0 or "<html" not in proc.stdout.lower():
        raise RuntimeError(f"chromium failed on {url} (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: Dict[str, Optional[int]] = {}
        self.broken_count: Optional[int] = None
        self.loaded = False
        self.claims: List[Dict[str, Any]] = []
        self._experiment = ""
        self._headers: List[str] = []
        self._header: Optional[List[str]] = None
        self._row: Optional[Dict[str, Any]] = None
        self._cell: Optional[List[str]] = None
        self._cell_class = ""
        self._classes: List[str] = []

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag == "body":
            self.loaded = a.get("data-loaded") == "1"
        elif tag == "img":
            width = a.get("data-natural-width")
            self.images[a.get("src", "")] = int(float(width)) if width not in (None, "") else None
        elif a.get("id") == "broken-images":
            count = a.get("data-count")
            self.broken_count = int(count) if count not in (None, "") else None
        elif tag == "h2" and a.get("id"):
            self._experiment = a["id"]
        elif tag == "table":
            self._headers = []
        elif tag == "th":
            self._header = []
        elif tag == "tr" and "data-claim" in a:
            self._row = {"experiment": self._experiment, "claim": a["data-claim"], "cells": []}
            self._classes = []
        elif tag == "td" and self._row is not None:
            self._cell, self._cell_class = [], a.get("class", "")
        elif tag == "br" and self._cell is not None:
            self._cell.append("\n")

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        elif self._header is not None:
            self._header.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "th" and self._header is not None:
            self._headers.append("".join(self._header).strip().lower())
            self._header = None
        elif tag == "td" and self._cell is not None and self._row is not None:
            self._row["cells"].append("".join(self._cell).strip())
            self._classes.append(self._cell_class)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            row = self._row
            row["control"] = self._column(row["cells"], "control", "negative control")
            row["power"] = self._column(row["cells"], "power", "power")
            row["verdict"] = self._column(row["cells"], "verdict", "verdict")
            self.claims.append(row)
            self._row = None

    def _column(self, cells: List[str], css: str, header: str) -> str:
        """The cell of class ``css``, else the one under the first header that starts with ``header``."""
        for cls, text in zip(self._classes, cells):
            if css in cls.split():
                return text
        for i, h in enumerate(self._headers):
            if h.startswith(header) and i < len(cells):
                return cells[i]
        return ""


def parse(html_text: str) -> Facts:
    """The facts of a report page (a browser's dumped DOM, or the file itself)."""
    p = _Parser()
    p.feed(html_text)
    p.close()
    return {"images": p.images, "broken_count": p.broken_count, "loaded": p.loaded, "claims": p.claims}


def render(index_path: Path, *, chromium: Optional[str] = None) -> Facts:
    """Open ``index_path`` in headless Chromium; the facts of the page after its load script ran.

    Where chromium is not found the calling test skips, saying so.
    """
    return parse(dump_dom(Path(index_path), chromium=chromium))


def _summaries(out: Path) -> Dict[str, Dict[str, Any]]:
    found = {}
    for path in sorted(Path(out).glob("*/summary.json")):
        s = json.loads(path.read_text())
        found[s.get("name", path.parent.name)] = s
    return found


def report_problems(out: Path, facts: Optional[Facts] = None) -> List[str]:
    """Everything wrong with the rendered ``out/index.html`` (rendered here unless ``facts`` are given).

    The page must have run its load script, show every image (natural width > 0, and
    ``#broken-images`` counting 0), and have one claims row -- with a non-empty negative control
    and power -- for every claim of every ``out/*/summary.json``, and no other rows.
    """
    out = Path(out)
    facts = facts if facts is not None else render(out / "index.html")
    problems = []
    if not facts["loaded"]:
        problems.append("the page's load script did not run (no body[data-loaded='1'])")
    if facts["broken_count"] != 0:
        problems.append(f"#broken-images data-count is {facts['broken_count']!r}, not 0")
    problems += [f"image {src} did not load (natural width {w!r})" for src, w in facts["images"].items() if not w]
    expected = [(name, c["name"]) for name, s in _summaries(out).items() for c in s.get("claims", [])]
    shown = [(row["experiment"], row["claim"]) for row in facts["claims"]]
    problems += [f"claim {e}: {c} has no row in the claims table" for e, c in expected if (e, c) not in shown]
    problems += [f"row {e}: {c} is no claim of a summary.json" for e, c in shown if (e, c) not in expected]
    for row in facts["claims"]:
        if not row["control"]:
            problems.append(f"claim {row['experiment']}: {row['claim']} shows no negative control")
        if not row["power"]:
            problems.append(f"claim {row['experiment']}: {row['claim']} shows no power")
    return problems
