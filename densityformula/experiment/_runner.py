"""Finding experiments and running them into keyed, atomically written result folders."""
from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Optional, Sequence

import torch

from .._validation import resolve_device
from . import _store
from ._experiment import Context, Experiment

__all__ = ["find_experiments_dir", "discover", "run_experiments", "exit_code", "script_package"]

_HINT = (
    "run from inside a checkout of densityformula (it has an experiments/ folder) or pass "
    "--experiments-dir PATH to a folder of experiment scripts"
)


def find_experiments_dir(start: Optional[Path] = None) -> Path:
    """The ``experiments/`` folder of the checkout that contains ``start`` (default: the working directory).

    Looks in ``start`` and each of its parents for a folder holding both ``experiments/`` and
    ``densityformula/``.  Raises ``ValueError`` saying where it looked when there is none.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "experiments").is_dir() and (folder / "densityformula").is_dir():
            return folder / "experiments"
    raise ValueError(f"no densityformula checkout contains {here}; {_HINT}")


def _where(path: Path) -> str:
    return str(path) if path.is_absolute() else f"{path} (that is, {path.resolve()})"


def script_package(path: Any) -> str:
    """Register the experiments folder ``path`` (or the folder of the script ``path``) as a package; its name.

    The experiment scripts share helpers by relative import (``from . import _common``), whatever
    the folder's name or place; a script run alone sets ``__package__`` to this name first.
    """
    experiments_dir = Path(path).resolve()
    if experiments_dir.is_file():
        experiments_dir = experiments_dir.parent
    package = f"_densityformula_experiments_{abs(hash(str(experiments_dir)))}"
    if package not in sys.modules:
        pkg = ModuleType(package)
        pkg.__path__ = [str(experiments_dir)]
        sys.modules[package] = pkg
    return package


def discover(experiments_dir: Path) -> List[Experiment]:
    """Every :class:`Experiment` instance defined by an ``experiments_dir/*.py`` (not ``_*.py``), by file name.

    Raises ``ValueError`` naming ``experiments_dir`` if it is not a folder or defines no experiment.
    """
    experiments_dir = Path(experiments_dir)
    where = _where(experiments_dir)
    if not experiments_dir.is_dir():
        what = "is a file, not a folder" if experiments_dir.exists() else "does not exist"
        raise ValueError(f"experiments folder {where} {what}; {_HINT}")
    package = script_package(experiments_dir)
    # modules of an earlier discovery in this process (helpers imported by ``from . import _x``,
    # found again as attributes of the package) would be reused as they were: results keyed on the
    # edited files but made by the old code
    for stale in [m for m in sys.modules if m.startswith(f"{package}.")]:
        del sys.modules[stale]
        vars(sys.modules[package]).pop(stale[len(package) + 1:].split(".")[0], None)
    found: List[Experiment] = []
    for path in sorted(experiments_dir.glob("*.py")):
        if path.name.startswith("_"):
            continue
        spec = importlib.util.spec_from_file_location(f"{package}.{path.stem}", path)
        if spec is None or spec.loader is None:  # pragma: no cover
            continue
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        found.extend(v for v in vars(mod).values() if isinstance(v, Experiment))
    if not found:
        raise ValueError(f"no experiments in {where} (no *.py defining an Experiment, outside _*.py); {_HINT}")
    names = [e.name for e in found]
    if len(set(names)) != len(names):
        raise ValueError(f"experiment names in {where} must be unique, got {names}")
    return found


def check_only(only: Optional[Sequence[str]], experiments: Sequence[Experiment]) -> None:
    if not only:
        return
    known = [e.name for e in experiments]
    unknown = [n for n in only if n not in known]
    if unknown:
        raise ValueError(
            f"only: unknown experiment name(s) {', '.join(map(repr, unknown))}; known: {', '.join(known) or '(none)'}"
        )


def _say(name: str, text: str, *, err: bool = False) -> None:
    print(f"[{name}] {text}", file=sys.stderr if err else sys.stdout, flush=True)


def run_experiments(
    experiments: Sequence[Experiment],
    out: Path,
    *,
    quick: bool = True,
    seed: int = 0,
    device: Any = "cpu",
    force: bool = False,
    only: Optional[Sequence[str]] = None,
) -> List[Dict[str, Any]]:
    """Run each experiment whose results in ``out`` are missing, stale, crashed or forced; their summaries.

    Up-to-date results (same :func:`~densityformula.experiment._store.result_key`) are kept and
    returned as they are.  Stale ones are rerun and the old folder moved to ``out/.archive``.
    ``force`` reruns up-to-date results too and replaces them.  ``device``: ``"cpu"``, ``"cuda"``,
    ``"auto"`` or a ``torch.device``.  Raises ``ValueError`` naming ``only`` for an unknown
    experiment, ``out`` for an ``out`` that is not a writable folder, and ``device`` for one that
    is not available.
    """
    out = Path(out)
    check_only(only, experiments)
    _store.check_out(out)
    for name in _store.clean_leftovers(out):
        _say(name, "restored the previous results left by an interrupted run")
    dev = resolve_device(device, "device")
    selected = [e for e in experiments if not only or e.name in only]
    pending = _store.read_pending(out)
    if force:
        pending |= {e.name for e in selected}
        _store.write_pending(out, pending)
    summaries = []
    for exp in selected:
        name = exp.name
        final = out / name
        inputs = _store.result_key(exp.source_files(), quick=quick, seed=seed, device=dev.type)
        previous = _store.load_result(final / "summary.json")
        stale = previous is not None and previous.get("key") != inputs["key"]
        if previous is not None and not stale and name not in pending:
            _say(name, f"up to date (computed {previous.get('computed_at')}); pass --force to rerun")
            summaries.append(previous)
            continue
        if stale:
            _say(name, "inputs changed since the results were computed ("
                 + ", ".join(_changed(previous or {}, inputs)) + "); rerunning")
        elif name in pending and not force:
            _say(name, "an interrupted --force run had not replaced these results; rerunning")
        elif (final / "summary.json").exists() and previous is None:
            _say(name, "earlier run crashed or left an unreadable summary; rerunning")
        summaries.append(_run_one(exp, out, inputs, quick=quick, seed=seed, device=dev,
                                  previous=previous, stale=stale))
        if not summaries[-1].get("error") and name in pending:
            pending.discard(name)
            _store.write_pending(out, pending)
    return summaries


#: ``out/.cache/<name>/<key[:16]>/``: the parts an interrupted run computed (``Context.cached``)
CACHE = ".cache"
_CODE_INPUTS = ("experiment_code", "library_code", "version", "torch")


def _prune_caches(caches: Path, inputs: Dict[str, str]) -> None:
    """Remove cached parts computed by other code (they can never be reused); keep those of other
    modes, seeds and devices, and write this run's inputs beside its own."""
    if caches.is_dir():
        for folder in caches.iterdir():
            try:
                old = json.loads((folder / "inputs.json").read_text())
            except (OSError, ValueError):
                old = {}
            if any(str(old.get(k)) != str(inputs.get(k)) for k in _CODE_INPUTS):
                shutil.rmtree(folder, ignore_errors=True)
    cache = caches / inputs["key"][:16]
    cache.mkdir(parents=True, exist_ok=True)
    _store.write_atomic(cache / "inputs.json", json.dumps(inputs, indent=1))


def _changed(previous: Dict[str, Any], inputs: Dict[str, str]) -> List[str]:
    old = previous.get("inputs") or {}
    keys = ("experiment_code", "library_code", "version", "torch", "quick", "seed", "device")
    return [k.replace("_", " ") for k in keys if str(old.get(k)) != inputs[k]] or ["key"]


def _run_one(
    exp: Experiment, out: Path, inputs: Dict[str, str], *, quick: bool, seed: int, device: torch.device,
    previous: Optional[Dict[str, Any]], stale: bool,
) -> Dict[str, Any]:
    name = exp.name
    final = out / name
    tmp = out / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    caches = out / CACHE / name
    cache = caches / inputs["key"][:16]
    _prune_caches(caches, inputs)
    try:
        _say(name, f"running{' (quick)' if quick else ' (full)'} on {device}: {exp.title}")
        if any(cache.glob("*.pt")):
            _say(name, f"resuming: {len(list(cache.glob('*.pt')))} parts of an interrupted run are reused")
        start = time.perf_counter()
        try:
            summary = exp.run(Context(out_dir=tmp, quick=quick, seed=seed, device=device, cache_dir=cache))
            crashed = False
        except Exception:  # an experiment that crashes is reported, not hidden
            summary = {"claims": [], "error": traceback.format_exc()}
            crashed = True
            print(summary["error"], file=sys.stderr, flush=True)
        summary.update(
            name=name, title=exp.title, claim=exp.claim, quick=quick, seed=seed, device=str(device),
            key=inputs["key"], inputs=inputs,
            computed_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            seconds=round(time.perf_counter() - start, 2),
        )
        if crashed and previous is not None:
            # a crash is no result: the complete earlier results stay, and the next run retries
            summary["kept_previous"] = True
            _say(name, f"crashed; the previous results in {final} are kept", err=True)
        else:
            # a crash with nothing to keep is installed too (its traceback and partial files, for
            # inspection), but its summary's "error" makes the next run retry it
            _store.write_atomic(tmp / "summary.json", json.dumps(summary, indent=2, default=float))
            if stale and final.exists() and previous is not None:
                _say(name, f"stale results moved to {_store.archive(final, previous)}")
            _store.install(tmp, final)
            if not crashed:
                shutil.rmtree(cache, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if cache.is_dir() and not any(cache.glob("*.pt")):
            shutil.rmtree(cache, ignore_errors=True)
        for folder in (caches, caches.parent):  # no empty cache folders left behind
            try:
                folder.rmdir()
            except OSError:
                pass
    for c in summary["claims"]:
        mark = {"holds": "PASS", "fails": "FAIL"}.get(c.get("status", ""), "CONTROL PASSED")
        value = ", ".join(f"{k} {v['text']}" for k, v in c["value"].items())
        _say(name, f"{mark} {c['name']}: {value}")
    return summary


def exit_code(summaries: Sequence[Dict[str, Any]]) -> int:
    """0 when every claim holds (its control failing) and nothing crashed; else 1, listing what did not."""
    bad = [(s["name"], f"{c['name']} ({c.get('status')})") for s in summaries for c in s["claims"] if not c["passed"]]
    bad += [(s["name"], "crashed") for s in summaries if s.get("error")]
    if bad:
        print("claims that do not hold: " + "; ".join(f"{a}: {b}" for a, b in bad), file=sys.stderr)
        return 1
    return 0
