"""The ``densityformula`` command: ``densityformula reproduce [--quick | --full] [--out results]``.

``reproduce`` runs every experiment script in ``experiments/`` (one claim or figure each) and
writes ``results/<experiment>/summary.json`` (``{"claims": [{"name", "value", "expected",
"passed"}, ...], ...}``), the experiment's figures and tables, and ``results/index.html`` that
shows them all.  An experiment whose ``summary.json`` already exists (made with the same
``quick`` and ``seed``, and not a crash) is not rerun (so an interrupted run resumes) unless
``--force`` is given: results are never overwritten unasked.

Result folders are written atomically: an experiment runs into ``<out>/.<name>.tmp-<pid>`` and
only once it has finished (its ``summary.json`` written) is that folder renamed to
``<out>/<name>``, replacing the old one whole.  A run killed midway therefore leaves every
experiment's old complete results (or none), never a mix; its leftover folders are removed (or,
for old results caught between the two renames, put back) at the start of the next run, and the
experiments an interrupted ``--force`` had not finished are rerun by the next run even without
``--force`` (they are listed in ``<out>/.force-pending.json``).  An experiment whose ``run``
raised is reported (in ``index.html``, its summary's ``error``, and the exit code) but is not a
result: the next run retries it, and it never replaces complete earlier results.

Unusable arguments (an unknown ``--only`` name, an ``--out`` that is a file or not writable, a
missing or empty experiments folder) print one line to stderr and exit with code 2.

An experiment script is a module with ``NAME``, ``TITLE``, ``CLAIM`` (one sentence) and
``run(out_dir: pathlib.Path, *, quick: bool, seed: int) -> dict``; the dict has ``claims`` and
optionally ``figures`` (file names in ``out_dir``), ``tables`` (CSV file names) and ``notes``.
"""
from __future__ import annotations

import argparse
import html
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Optional, Sequence, Set

from ._validation import check_seed

__all__ = ["main", "discover", "run_experiments", "write_index"]

#: ``<out>/.<name>.tmp-<pid>`` (an experiment being run) and ``<out>/.<name>.trash-<pid>`` (old
#: results being replaced): what a killed run can leave behind.
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|trash)-(?P<pid>[0-9]+)$")
#: the experiments an unfinished ``--force`` run still has to replace
_PENDING = ".force-pending.json"


def discover(experiments_dir: Path) -> List[ModuleType]:
    """Import every ``experiments/*.py`` that defines ``run`` and ``NAME`` (sorted by file name).

    Raises ``ValueError`` naming ``experiments_dir`` (and where it looked) if it is not a folder.
    """
    if not experiments_dir.is_dir():
        what = "is a file, not a folder" if experiments_dir.exists() else "does not exist"
        raise ValueError(f"experiments_dir {_where(experiments_dir)} {what}")
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


def _where(path: Path) -> str:
    """``path``, followed by its absolute form if it is relative (where it was looked for)."""
    return str(path) if path.is_absolute() else f"{path} (that is, {path.resolve()})"


def _validate_summary(name: str, summary: Any) -> Dict[str, Any]:
    if not isinstance(summary, dict) or not isinstance(summary.get("claims"), list):
        raise ValueError(f"experiment {name} must return a dict with a 'claims' list")
    for c in summary["claims"]:
        missing = {"name", "value", "expected", "passed"} - set(c)
        if missing:
            raise ValueError(f"experiment {name}: claim {c} lacks {sorted(missing)}")
        c["passed"] = bool(c["passed"])
    return summary


def _check_out(out: Path) -> None:
    """Create ``out`` if needed and make sure it is a writable folder (else ``ValueError`` naming ``out``)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out {out} is a file, not a folder: pass --out a folder for the results")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=".write-probe-", dir=out)
        os.rmdir(probe)
    except OSError as err:
        raise ValueError(f"out {out} is not a writable folder ({err.strerror or err})") from None


def _check_only(only: Optional[Sequence[str]], mods: Sequence[ModuleType]) -> None:
    if not only:
        return
    known = [str(m.NAME) for m in mods]
    unknown = [n for n in only if n not in known]
    if unknown:
        raise ValueError(
            f"only: unknown experiment name(s) {', '.join(map(repr, unknown))}; known: {', '.join(known) or '(none)'}"
        )


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers (a folder name reused from an earlier process)
    if os.name != "posix":  # pragma: no cover - no cheap liveness probe: treat as dead
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_atomic(path: Path, text: str) -> None:
    """Write ``path`` via a temporary file in the same folder and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _clean_leftovers(out: Path) -> None:
    """Remove the temporary and trash folders a killed run left in ``out``.

    A trash folder whose experiment folder is missing holds complete old results caught between
    the two renames of a replacement: it is put back.  Folders of a run still alive are left be.
    """
    for entry in sorted(out.iterdir()):
        m = _LEFTOVER.match(entry.name)
        if m is None or _pid_alive(int(m["pid"])):
            continue
        final = out / m["name"]
        if entry.is_dir() and not entry.is_symlink():
            if m["kind"] == "trash" and not final.exists():
                os.replace(entry, final)
                print(f"[{m['name']}] restored the previous results left by an interrupted run", flush=True)
            else:
                shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink()


def _read_pending(out: Path) -> Set[str]:
    try:
        names = json.loads((out / _PENDING).read_text()).get("names", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {str(n) for n in names} if isinstance(names, list) else set()


def _write_pending(out: Path, names: Set[str]) -> None:
    if names:
        _write_atomic(out / _PENDING, json.dumps({"names": sorted(names)}, indent=2))
    else:
        (out / _PENDING).unlink(missing_ok=True)


def _load_result(path: Path) -> Optional[Dict[str, Any]]:
    """A complete earlier result at ``path`` (a ``summary.json``), or ``None`` if absent, unreadable or a crash."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("claims"), list) or summary.get("error"):
        return None
    return summary


def _install(tmp: Path, final: Path) -> None:
    """Replace the folder ``final`` by the finished folder ``tmp`` (same file system).

    ``os.replace`` cannot rename a folder onto a non-empty one, so the old folder is first renamed
    to a trash name, then the new one into place, then the trash deleted: at every instant
    ``final`` is either the old complete folder, absent (old results in the trash, put back by
    :func:`_clean_leftovers`), or the new complete folder.
    """
    trash = final.with_name(f".{final.name}.trash-{os.getpid()}")
    if trash.exists():
        shutil.rmtree(trash)
    if final.exists():
        os.replace(final, trash)
    os.replace(tmp, final)
    shutil.rmtree(trash, ignore_errors=True)


def run_experiments(
    mods: Sequence[ModuleType],
    out: Path,
    *,
    quick: bool = True,
    seed: int = 0,
    force: bool = False,
    only: Optional[Sequence[str]] = None,
) -> List[Dict[str, Any]]:
    """Run (or reuse) each experiment and return the list of summaries.

    Each experiment runs into a temporary folder beside its final one, renamed into place once it
    has finished (see the module docstring).  Raises ``ValueError`` naming ``only`` for an unknown
    experiment name and naming ``out`` for an ``out`` that is not a writable folder.
    """
    _check_only(only, mods)
    _check_out(out)
    _clean_leftovers(out)
    selected = [m for m in mods if not only or m.NAME in only]
    pending = _read_pending(out)
    if force:
        pending |= {str(m.NAME) for m in selected}
        _write_pending(out, pending)
    summaries = []
    for mod in selected:
        name = str(mod.NAME)
        exp_dir = out / name
        summary_path = exp_dir / "summary.json"
        previous = _load_result(summary_path)
        if previous is not None and name not in pending:
            if previous.get("quick") == quick and previous.get("seed", seed) == seed:
                print(f"[{name}] kept existing results ({summary_path}); pass --force to rerun", flush=True)
                summaries.append(previous)
                continue
            print(
                f"[{name}] existing results were made with quick={previous.get('quick')}, "
                f"seed={previous.get('seed')}; rerunning",
                flush=True,
            )
        elif name in pending and not force:
            print(f"[{name}] an interrupted --force run had not replaced these results; rerunning", flush=True)
        elif summary_path.exists() and previous is None:
            print(f"[{name}] earlier run crashed or left an unreadable summary; rerunning", flush=True)
        tmp = out / f".{name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            print(f"[{name}] running{' (quick)' if quick else ''}: {getattr(mod, 'TITLE', name)}", flush=True)
            start = time.perf_counter()
            try:
                summary = _validate_summary(name, mod.run(tmp, quick=quick, seed=seed))
                crashed = False
            except Exception:  # an experiment that crashes is reported, not hidden
                summary = {"claims": [], "error": traceback.format_exc()}
                crashed = True
                print(summary["error"], file=sys.stderr, flush=True)
            summary.update(
                name=name,
                title=getattr(mod, "TITLE", name),
                claim=getattr(mod, "CLAIM", ""),
                quick=quick,
                seed=seed,
                seconds=round(time.perf_counter() - start, 2),
            )
            if crashed and previous is not None:
                # a crash is no result: the complete earlier results stay, and the next run retries
                summary["kept_previous"] = True
                print(f"[{name}] crashed; the previous results in {exp_dir} are kept", file=sys.stderr, flush=True)
            else:
                # a crash with nothing to keep is installed too (its traceback and partial files, for
                # inspection), but its summary's "error" makes the next run retry it
                _write_atomic(tmp / "summary.json", json.dumps(summary, indent=2, default=float))
                _install(tmp, exp_dir)
            if not crashed and name in pending:
                pending.discard(name)
                _write_pending(out, pending)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
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
            parts.append("<p class='fail'>crashed: not a result; the next run retries it.</p>")
            if s.get("kept_previous"):
                parts.append(f"<p>The previous complete results in <a href='{name}/'>{name}/</a> were kept.</p>")
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
    _write_atomic(index, "\n".join(parts))
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

    try:
        seed = check_seed(args.seed, "--seed")
        mods = _discover_for_cli(args.experiments_dir)
        if args.list:
            for m in mods:
                print(f"{m.NAME}: {getattr(m, 'TITLE', '')}")
            return 0
        _check_only(args.only, mods)
        _check_out(args.out)
    except (ValueError, TypeError) as err:
        print(f"densityformula reproduce: error: {_for_cli(str(err))}", file=sys.stderr)
        return 2
    summaries = run_experiments(mods, args.out, quick=not args.full, seed=seed, force=args.force, only=args.only)
    index = write_index(summaries, args.out)
    failed = [
        (s["name"], c["name"]) for s in summaries for c in s["claims"] if not c["passed"]
    ] + [(s["name"], "crashed") for s in summaries if s.get("error")]
    print(f"report: {index}")
    if failed:
        print("claims that do not hold: " + "; ".join(f"{a}: {b}" for a, b in failed), file=sys.stderr)
        return 1
    return 0


def _for_cli(message: str) -> str:
    """An argument error's message with the command line's option names (``only`` -> ``--only``)."""
    for arg in ("only", "out"):
        if message.startswith(f"{arg} ") or message.startswith(f"{arg}:"):
            return "--" + message
    return message


def _discover_for_cli(experiments_dir: Path) -> List[ModuleType]:
    """:func:`discover`, with an error saying where it looked if there is nothing to run."""
    hint = (
        "run from a checkout of densityformula (its experiments/ folder) or pass "
        "--experiments-dir PATH to the folder of experiment scripts"
    )
    where = _where(experiments_dir)
    if not experiments_dir.is_dir():
        what = "is a file, not a folder" if experiments_dir.exists() else "does not exist"
        raise ValueError(f"experiments folder {where} {what}; {hint}")
    mods = discover(experiments_dir)
    if not mods:
        raise ValueError(
            f"no experiments in {where} (no *.py defining NAME and run, outside _*.py); {hint}"
        )
    return mods

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
