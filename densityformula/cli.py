"""The ``densityformula`` command: ``densityformula reproduce [--quick | --full] [--out results]``.

``reproduce`` runs every experiment script in ``experiments/`` (one claim or figure each) and
writes ``results/<experiment>/summary.json`` (``{"claims": [{"name", "value", "expected",
"passed"}, ...], ...}``), the experiment's figures and tables, and ``results/index.html`` that
shows them all.  An experiment whose ``summary.json`` already exists is not rerun (so an
interrupted run resumes) unless ``--force`` is given: results are never overwritten unasked.

An experiment script is a module with ``NAME``, ``TITLE``, ``CLAIM`` (one sentence) and
``run(out_dir: pathlib.Path, *, quick: bool, seed: int) -> dict``; the dict has ``claims`` and
optionally ``figures`` (file names in ``out_dir``), ``tables`` (CSV file names) and ``notes``.
"""
from __future__ import annotations

import argparse
import html
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["main", "discover", "run_experiments", "write_index"]


def discover(experiments_dir: Path) -> List[ModuleType]:
    """Import every ``experiments/*.py`` that defines ``run`` and ``NAME`` (sorted by file name)."""
    if not experiments_dir.is_dir():
        raise ValueError(f"experiments_dir {experiments_dir} is not a directory")
    # the folder is loaded as a package (whatever its name or location) so that its scripts can
    # share helpers with relative imports: ``from . import _common``
    package = f"_densityformula_experiments_{abs(hash(str(experiments_dir.resolve())))}"
    if package not in sys.modules:
        pkg = ModuleType(package)
        pkg.__path__ = [str(experiments_dir)]
        sys.modules[package] = pkg
    mods = []
    for path in sorted(experiments_dir.glob("*.py")):
        if path.name.startswith("_"):
            continue
        spec = importlib.util.spec_from_file_location(f"{package}.{path.stem}", path)
        if spec is None or spec.loader is None:
            continue
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        if hasattr(mod, "run") and hasattr(mod, "NAME"):
            mods.append(mod)
    return mods


def _validate_summary(name: str, summary: Any) -> Dict[str, Any]:
    if not isinstance(summary, dict) or not isinstance(summary.get("claims"), list):
        raise ValueError(f"experiment {name} must return a dict with a 'claims' list")
    for c in summary["claims"]:
        missing = {"name", "value", "expected", "passed"} - set(c)
        if missing:
            raise ValueError(f"experiment {name}: claim {c} lacks {sorted(missing)}")
        c["passed"] = bool(c["passed"])
    return summary


def run_experiments(
    mods: Sequence[ModuleType],
    out: Path,
    *,
    quick: bool = True,
    seed: int = 0,
    force: bool = False,
    only: Optional[Sequence[str]] = None,
) -> List[Dict[str, Any]]:
    """Run (or reuse) each experiment and return the list of summaries."""
    out.mkdir(parents=True, exist_ok=True)
    summaries = []
    for mod in mods:
        name = mod.NAME
        if only and name not in only:
            continue
        exp_dir = out / name
        summary_path = exp_dir / "summary.json"
        if summary_path.exists() and not force:
            summary = json.loads(summary_path.read_text())
            if summary.get("quick") == quick:
                print(f"[{name}] kept existing results ({summary_path}); pass --force to rerun", flush=True)
                summaries.append(summary)
                continue
            print(f"[{name}] existing results were made with quick={summary.get('quick')}; rerunning", flush=True)
        exp_dir.mkdir(parents=True, exist_ok=True)
        print(f"[{name}] running{' (quick)' if quick else ''}: {getattr(mod, 'TITLE', name)}", flush=True)
        start = time.perf_counter()
        try:
            summary = _validate_summary(name, mod.run(exp_dir, quick=quick, seed=seed))
        except Exception:  # an experiment that crashes is reported, not hidden
            summary = {"claims": [], "error": traceback.format_exc()}
            print(summary["error"], file=sys.stderr, flush=True)
        summary.update(
            name=name,
            title=getattr(mod, "TITLE", name),
            claim=getattr(mod, "CLAIM", ""),
            quick=quick,
            seed=seed,
            seconds=round(time.perf_counter() - start, 2),
        )
        tmp = summary_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2, default=float))
        tmp.replace(summary_path)
        for c in summary["claims"]:
            mark = "PASS" if c["passed"] else "FAIL"
            print(f"  {mark} {c['name']}: {c['value']} (expected {c['expected']})", flush=True)
        summaries.append(summary)
    return summaries


def _table_html(path: Path) -> str:
    import pandas as pd

    frame = pd.read_csv(path)
    html: str = frame.to_html(index=False, float_format=lambda v: f"{v:.6g}", border=0, classes="table")
    return html


def write_index(summaries: Sequence[Dict[str, Any]], out: Path) -> Path:
    """Write ``out/index.html``: every experiment's claims, figures and tables."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>densityformula results</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{padding:2px 8px;border-bottom:1px solid #ddd}"
        ".pass{color:#080}.fail{color:#b00;font-weight:bold}img{max-width:100%;border:1px solid #eee}</style>",
        "</head><body><h1>densityformula: reproduced claims</h1>",
    ]
    n_claims = sum(len(s["claims"]) for s in summaries)
    n_pass = sum(c["passed"] for s in summaries for c in s["claims"])
    parts.append(f"<p>{n_pass} of {n_claims} claims hold, over {len(summaries)} experiments.</p><ul>")
    for s in summaries:
        parts.append(f"<li><a href='#{s['name']}'>{html.escape(s['title'])}</a></li>")
    parts.append("</ul>")
    for s in summaries:
        name = s["name"]
        parts.append(f"<h2 id='{name}'>{html.escape(s['title'])}</h2>")
        if s.get("claim"):
            parts.append(f"<p><em>{html.escape(s['claim'])}</em></p>")
        parts.append(
            f"<p>quick={s.get('quick')}, seed={s.get('seed')}, {s.get('seconds', 0):.1f} s. "
            f"<a href='{name}/summary.json'>summary.json</a></p>"
        )
        if s.get("error"):
            parts.append(f"<pre class='fail'>{html.escape(s['error'])}</pre>")
        if s["claims"]:
            parts.append("<table><tr><th>claim</th><th>value</th><th>expected</th><th></th></tr>")
            for c in s["claims"]:
                cls, word = ("pass", "holds") if c["passed"] else ("fail", "FAILS")
                parts.append(
                    f"<tr><td>{html.escape(str(c['name']))}</td><td>{html.escape(str(c['value']))}</td>"
                    f"<td>{html.escape(str(c['expected']))}</td><td class='{cls}'>{word}</td></tr>"
                )
            parts.append("</table>")
        for note in s.get("notes", []):
            parts.append(f"<p>{html.escape(note)}</p>")
        for fig in s.get("figures", []):
            parts.append(f"<p><img src='{name}/{fig}' alt='{html.escape(fig)}'></p>")
        for tab in s.get("tables", []):
            path = out / name / tab
            if path.exists():
                parts.append(f"<p><a href='{name}/{tab}'>{html.escape(tab)}</a></p>" + _table_html(path))
    parts.append("</body></html>")
    index = out / "index.html"
    index.write_text("\n".join(parts))
    return index


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="densityformula", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="run the experiments into a report")
    mode = rep.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", default=True, help="small budgets (default)")
    mode.add_argument("--full", action="store_true", help="the budgets behind the published tables")
    rep.add_argument("--out", type=Path, default=Path("results"), help="output folder (default: results)")
    rep.add_argument("--experiments-dir", type=Path, default=Path("experiments"))
    rep.add_argument("--seed", type=int, default=0)
    rep.add_argument("--force", action="store_true", help="rerun experiments whose results exist")
    rep.add_argument("--only", nargs="*", help="run only these experiments (by NAME)")
    rep.add_argument("--list", action="store_true", help="list the experiments and exit")
    args = parser.parse_args(argv)

    mods = discover(args.experiments_dir)
    if args.list or not mods:
        if not mods:
            print("no experiments yet")
        for m in mods:
            print(f"{m.NAME}: {getattr(m, 'TITLE', '')}")
        return 0
    summaries = run_experiments(
        mods, args.out, quick=not args.full, seed=args.seed, force=args.force, only=args.only
    )
    index = write_index(summaries, args.out)
    failed = [
        (s["name"], c["name"]) for s in summaries for c in s["claims"] if not c["passed"]
    ] + [(s["name"], "crashed") for s in summaries if s.get("error")]
    print(f"report: {index}")
    if failed:
        print("claims that do not hold: " + "; ".join(f"{a}: {b}" for a, b in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
