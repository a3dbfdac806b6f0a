"""Run keys, part files (atomic, resumable) and the tidy CSV table (private).

- **key.**  :func:`run_key` is the SHA-256 of every input that can change a number: the model's
  content digest (a checkpoint file's SHA-256), the data's digest and spec, the estimator and
  its resolved options, the seed, the dtype, the evaluation block, the densityformula and torch
  versions.  Parts live in ``<parts_root>/<key[:24]>/``, so a rerun with any other input never
  reads them.
- **parts.**  A finished work item is one JSON file ``part-<start>-<stop>.json`` holding its key
  and rows ``[index, log_likelihood, stderr, nfe, seconds, point_seed]`` (floats as their
  ``repr``: they read back bit for bit), written to a temporary file, fsynced and ``os.replace``-d,
  so a killed run leaves whole parts or none.  :meth:`PartStore.finished` reads every part of
  the key (a file that does not parse or holds another key is ignored and removed).
- **table.**  :func:`write_csv` writes the gathered rows atomically; an existing file is replaced
  only with ``overwrite``.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple, Union

import torch

PathLike = Union[str, "os.PathLike[str]"]
#: ``(index, log_likelihood, stderr, nfe, seconds, point_seed)``
Row = Tuple[int, float, float, int, float, int]

__all__ = ["run_key", "PartStore", "write_csv", "atomic_write_text", "COLUMNS", "check_output"]

FORMAT = "densityformula.evaluation/1"
#: the table's columns, in order
COLUMNS = ("index", "estimator", "log_likelihood", "stderr", "nfe", "bits_per_dim", "seconds", "point_seed",
           "seed", "block", "dtype", "data", "model", "options", "run_key")


def run_key(inputs: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of ``inputs`` plus the format, library and torch versions."""
    from .. import __version__

    full = {"format": FORMAT, "densityformula": str(__version__), "torch": str(torch.__version__), **inputs}
    text = json.dumps(full, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, fsync, ``os.replace`` it onto ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class PartStore:
    """The part files of one run key under ``root``."""

    def __init__(self, root: PathLike, key: str) -> None:
        self.key = key
        self.dir = Path(root) / key[:24]

    def write(self, rows: Sequence[Row]) -> Path:
        """Write the rows of one finished work item atomically; returns the file."""
        if not rows:
            raise ValueError("a part holds at least one row")
        self.dir.mkdir(parents=True, exist_ok=True)
        first, last = rows[0][0], rows[-1][0]
        path = self.dir / f"part-{first:09d}-{last + 1:09d}.json"
        atomic_write_text(path, json.dumps({"key": self.key, "rows": [list(r) for r in rows]}))
        return path

    def parts(self) -> List[Path]:
        """The part files present (sorted)."""
        return sorted(self.dir.glob("part-*.json")) if self.dir.is_dir() else []

    def finished(self) -> Dict[int, Row]:
        """Every row of every readable part of this key, by index; unreadable or foreign parts and the
        temporary files of dead writers are removed."""
        out: Dict[int, Row] = {}
        if not self.dir.is_dir():
            return out
        for tmp in self.dir.glob(".part-*.tmp-*"):
            pid = tmp.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                tmp.unlink(missing_ok=True)
        for path in self.parts():
            try:
                payload = json.loads(path.read_text(encoding="utf-8"))
                if payload.get("key") != self.key:
                    raise ValueError("another key")
                rows = [(int(r[0]), float(r[1]), float(r[2]), int(r[3]), float(r[4]), int(r[5]))
                        for r in payload["rows"]]
            except (OSError, ValueError, KeyError, TypeError, IndexError):
                path.unlink(missing_ok=True)
                continue
            for row in rows:
                out[row[0]] = row
        return out

    def remove(self) -> None:
        """Delete this key's parts (after the table is written)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            self.dir.parent.rmdir()  # the parts root, when no other key is left in it
        except OSError:
            pass


def check_output(out: PathLike, overwrite: bool) -> Path:
    """``out`` as a path: ``FileExistsError`` if it exists and ``overwrite`` is off, ``ValueError`` if a folder."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"out {path} is a directory; give the CSV file to write")
    if path.exists() and not overwrite:
        raise FileExistsError(f"out {path} exists; pass overwrite=True (--force) to replace it")
    return path


def _cell(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def write_csv(path: Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """The tidy table (:data:`COLUMNS`), floats as ``repr`` (exact round trip), written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for rec in records:
        writer.writerow([_cell(rec[c]) for c in COLUMNS])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buf.getvalue())
    return path
