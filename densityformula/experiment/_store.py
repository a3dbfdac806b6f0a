"""Result folders: keyed on their inputs, written atomically, never overwritten unasked.

Layout of an output folder ``out``:

* ``out/<name>/`` -- an experiment's complete results: ``summary.json``, figures, tables.
  ``summary.json["key"]`` is the SHA-256 of everything the results depend on (:func:`result_key`):
  the experiment's source files, the library's source files, the package version, ``quick``,
  ``seed`` and the device type.  Results whose key matches are up to date; others are stale.
* ``out/.archive/<name>/<computed_at>-<key[:10]>/`` -- stale results, moved aside (not deleted)
  when a changed input reruns an experiment.
* ``out/.<name>.tmp-<pid>`` -- an experiment being run; renamed to ``out/<name>`` only once its
  ``summary.json`` is written.  ``out/.<name>.trash-<pid>`` -- old results being replaced.
  Either is what a killed run leaves; :func:`clean_leftovers` removes or restores them.
* ``out/.force-pending.json`` -- the experiments an interrupted ``--force`` had not replaced yet.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set

__all__ = [
    "library_files", "result_key", "check_out", "write_atomic", "clean_leftovers", "read_pending",
    "write_pending", "load_result", "install", "archive",
]

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|trash)-(?P<pid>[0-9]+)$")
PENDING = ".force-pending.json"
ARCHIVE = ".archive"


def library_files() -> List[Path]:
    """Every ``.py`` file of the installed ``densityformula`` package (sorted)."""
    root = Path(__file__).resolve().parent.parent
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _digest(files: Iterable[Path], root: Optional[Path] = None) -> str:
    h = hashlib.sha256()
    for path in files:
        rel = path.relative_to(root).as_posix() if root is not None else path.name
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def result_key(experiment_files: Iterable[Path], *, quick: bool, seed: int, device: str) -> Dict[str, str]:
    """The inputs an experiment's results depend on, and their SHA-256 ``key``.

    Returns ``{"key", "experiment_code", "library_code", "version", "torch", "quick", "seed",
    "device"}`` (all strings); ``device`` is the device *type* (``cpu``, ``cuda``).
    """
    import torch

    from .. import __version__

    lib = library_files()
    inputs = {
        "experiment_code": _digest(experiment_files),
        # relative to the folder holding them all (the first file's folder need not: a/Z/x.py < a/__init__.py)
        "library_code": _digest(lib, Path(os.path.commonpath([p.parent for p in lib])) if lib else None),
        "version": str(__version__),
        "torch": str(torch.__version__),
        "quick": str(bool(quick)),
        "seed": str(int(seed)),
        "device": str(device),
    }
    inputs["key"] = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return inputs


def check_out(out: Path) -> None:
    """Create ``out`` if needed and make sure it is a writable folder (else ``ValueError`` naming ``out``)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out {out} is a file, not a folder: pass --out a folder for the results")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=".write-probe-", dir=out)
        os.rmdir(probe)
    except OSError as err:
        raise ValueError(f"out {out} is not a writable folder ({err.strerror or err})") from None


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


def write_atomic(path: Path, text: str) -> None:
    """Write ``path`` via a temporary file in the same folder and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def clean_leftovers(out: Path) -> List[str]:
    """Remove the temporary and trash folders a killed run left in ``out``; the names restored.

    A trash folder whose experiment folder is missing holds complete old results caught between
    the two renames of a replacement: it is put back.  Folders of a run still alive are left be.
    """
    restored = []
    for entry in sorted(out.iterdir()):
        m = _LEFTOVER.match(entry.name)
        if m is None or _pid_alive(int(m["pid"])):
            continue
        final = out / m["name"]
        if entry.is_dir() and not entry.is_symlink():
            if m["kind"] == "trash" and not final.exists():
                os.replace(entry, final)
                restored.append(m["name"])
            else:
                shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink()
    return restored


def read_pending(out: Path) -> Set[str]:
    try:
        names = json.loads((out / PENDING).read_text()).get("names", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {str(n) for n in names} if isinstance(names, list) else set()


def write_pending(out: Path, names: Set[str]) -> None:
    if names:
        write_atomic(out / PENDING, json.dumps({"names": sorted(names)}, indent=2))
    else:
        (out / PENDING).unlink(missing_ok=True)


def load_result(path: Path) -> Optional[Dict[str, Any]]:
    """A complete earlier result at ``path`` (a ``summary.json``), or ``None`` if absent, unreadable or a crash."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("claims"), list) or summary.get("error"):
        return None
    return summary


def install(tmp: Path, final: Path) -> None:
    """Replace the folder ``final`` by the finished folder ``tmp`` (same file system).

    ``os.replace`` cannot rename a folder onto a non-empty one, so the old folder is first renamed
    to a trash name, then the new one into place, then the trash deleted: at every instant
    ``final`` is either the old complete folder, absent (old results in the trash, put back by
    :func:`clean_leftovers`), or the new complete folder.
    """
    trash = final.with_name(f".{final.name}.trash-{os.getpid()}")
    if trash.exists():
        shutil.rmtree(trash)
    if final.exists():
        os.replace(final, trash)
    os.replace(tmp, final)
    shutil.rmtree(trash, ignore_errors=True)


def archive(folder: Path, summary: Dict[str, Any]) -> Path:
    """Move the stale results ``folder`` to ``out/.archive/<name>/<computed_at>-<key[:10]>/``; the new path."""
    stamp = re.sub(r"[^0-9A-Za-z]", "", str(summary.get("computed_at", "unknown")))[:15] or "unknown"
    key = str(summary.get("key", "nokey"))[:10]
    dest = folder.parent / ARCHIVE / folder.name / f"{stamp}-{key}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    i = 1
    while dest.exists():
        dest = dest.with_name(f"{stamp}-{key}-{i}")
        i += 1
    os.replace(folder, dest)
    return dest
