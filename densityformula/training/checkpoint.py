"""Trainer checkpoints: atomic, checksummed writes, what they hold, and the rules for resuming.

A checkpoint is one ``torch.save`` archive (loadable with ``weights_only=True``) holding the
trainer's :meth:`~densityformula.training.Trainer.state_dict`:

==================  ===========================================================================
key                 content
==================  ===========================================================================
``format``          ``"densityformula.trainer/2"`` (``/1`` files, written before the parts had
                    their own state, load too)
``step``            optimisation steps done
``model``           the model's state dict (an ``MLPDenoiser``'s holds its ``valid_log_snr``)
``ema``             the EMA model's state dict, or ``None``
``optimizer``,      torch's state dicts
``lr_scheduler``,
``scaler``
``noise_generator`` state of the generator of times, noise and label dropout
``data``            the data source's state (generator, permutation, position)
``history``         ``[(step, loss)]``
``config``          the settings; a resume with other settings is refused
``valid_log_snr``   the log-SNR interval trained on (docs/math.md I24)
``torch_version``   for the record
==================  ===========================================================================

**Integrity.**  The archive is followed by a small trailer (torch ignores bytes after an
archive's end record, so ``torch.load(path, weights_only=True)`` still reads the file)::

    payload | meta (JSON) | SHA-256 hex of payload + meta (64 bytes) | len(meta) (8 bytes, big-endian) | MAGIC

The digest covers the payload, ``meta`` and the length field.  ``meta`` records the container
(``"densityformula.checkpoint/1"``), the payload's length, the
state's ``format``, ``densityformula.__version__`` and torch's version.  :func:`load_checkpoint`
verifies the digest before unpickling anything, so any changed byte of the file (payload, meta,
digest, length or magic) is a :class:`CheckpointError` naming the file; so is an empty,
truncated or garbage file, a foreign pickle, a torch file that is not a trainer checkpoint, and a
format this version cannot read.  A missing file is a ``FileNotFoundError`` naming it.

**Versions.**  Compatibility is decided by the state's ``format`` (:data:`READABLE_FORMATS`),
not by the library version: a checkpoint written by another ``densityformula`` version whose
format is readable loads with a ``UserWarning`` saying both versions; an unreadable format is a
:class:`CheckpointError` naming it and the version that wrote it.  Files written before
checksums existed (plain torch archives of format ``/1`` or ``/2``, ending in the archive's end
record) load as before, without a warning: they predate checksums, so their bytes cannot be
verified.

**Atomic writes.**  Writes go to a temporary file ``.<name>.tmp-<pid>-<host>-<token>`` in the
same folder, are fsynced and then ``os.replace``-d onto the target, so a run killed mid-write
leaves the previous checkpoint intact.  The temporary file such a kill leaves behind is removed
by the next save or load of that checkpoint (:func:`remove_stale_temp_files`: one of a process
of this host that is no longer running, or of another host and untouched for
:data:`STALE_AFTER_S` seconds).  An existing file is never replaced by a fresh run unless asked
(``overwrite=True``) or resumed from.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import socket
import struct
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

__all__ = [
    "FORMAT",
    "READABLE_FORMATS",
    "CONTAINER",
    "STALE_AFTER_S",
    "CheckpointError",
    "Checkpointer",
    "atomic_save",
    "load_checkpoint",
    "remove_stale_temp_files",
]

PathLike = Union[str, "os.PathLike[str]"]

FORMAT = "densityformula.trainer/2"
#: formats :func:`load_checkpoint` accepts
READABLE_FORMATS = ("densityformula.trainer/1", FORMAT)
#: the checksummed container written by :func:`atomic_save`
CONTAINER = "densityformula.checkpoint/1"
#: a temporary file of another host is stale once untouched for this long (seconds)
STALE_AFTER_S = 3600.0

_MAGIC = b"DFCKPT-SHA256/1\n"  # 16 bytes, the file's last
_DIGEST_LEN = 64  # SHA-256, hex
_LEN_BYTES = 8
_TAIL = _DIGEST_LEN + _LEN_BYTES + len(_MAGIC)
_MAX_META = 1 << 16
_EOCD = b"PK\x05\x06"  # a zip archive's end-of-central-directory record
_ZIP_START = b"PK\x03\x04"
_TMP_TAG = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: empty, truncated, corrupt (checksum mismatch), not a
    densityformula checkpoint, or of a format this version cannot read.  The message names the file."""


# -- temporary files ----------------------------------------------------------------------------------
def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{_TMP_TAG}{os.getpid()}-{_host_tag()}-{secrets.token_hex(4)}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":  # no cheap, harmless probe: trust the age rule only
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temp_files(path: PathLike) -> List[Path]:
    """Remove the temporary files a killed :func:`atomic_save` of ``path`` left next to it.

    A temporary file ``.<name>.tmp-<pid>[-<host>-<token>]`` is stale when ``<pid>`` is a process of
    this host that no longer runs, or (another host, or no way to probe processes) when it was last
    modified more than :data:`STALE_AFTER_S` seconds ago; files of running writers are left alone.
    Returns the files removed.
    """
    path = Path(path)
    prefix = f".{path.name}{_TMP_TAG}"
    try:
        names = os.listdir(path.parent if str(path.parent) else ".")
    except OSError:
        return []
    removed: List[Path] = []
    host = _host_tag()
    for name in names:
        if not name.startswith(prefix):
            continue
        fields = name[len(prefix):].split("-")
        if not fields[0].isdigit():
            continue
        candidate = path.with_name(name)
        try:
            age = max(0.0, _now() - candidate.stat().st_mtime)
        except OSError:
            continue
        local = len(fields) == 1 or (len(fields) >= 2 and fields[1] == host)
        stale = (local and not _pid_alive(int(fields[0]))) or age > STALE_AFTER_S
        if stale:
            try:
                candidate.unlink()
                removed.append(candidate)
            except OSError:
                pass
    return removed


def _now() -> float:
    return time.time()


# -- writing ----------------------------------------------------------------------------------------
def _library_version() -> str:
    from .. import __version__

    return str(__version__)


def _trailer(payload_digest: Any, payload_len: int, obj: object) -> bytes:
    fmt = obj.get("format") if isinstance(obj, dict) else None
    meta = json.dumps({
        "container": CONTAINER,
        "payload_bytes": payload_len,
        "format": fmt if isinstance(fmt, str) else None,
        "densityformula_version": _library_version(),
        "torch_version": str(torch.__version__),
    }, sort_keys=True).encode("utf-8")
    length = struct.pack(">Q", len(meta))
    payload_digest.update(meta)
    payload_digest.update(length)
    hexdigest: str = payload_digest.hexdigest()
    return meta + hexdigest.encode("ascii") + length + _MAGIC


def atomic_save(obj: object, path: PathLike) -> Path:
    """``torch.save(obj)`` plus a checksum trailer (see the module's docstring) to a temporary file
    next to ``path``, fsync, then ``os.replace`` onto ``path``.

    Stale temporary files of ``path`` left by a killed earlier write are removed first
    (:func:`remove_stale_temp_files`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    tmp = _temp_path(path)
    try:
        with open(tmp, "w+b") as fh:
            torch.save(obj, fh)
            fh.flush()
            size = fh.tell()
            fh.seek(0)
            digest = hashlib.sha256()
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
            fh.seek(size)
            fh.write(_trailer(digest, size, obj))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# -- reading ----------------------------------------------------------------------------------------
def _ends_like_zip(data: bytes) -> bool:
    """Whether ``data`` ends exactly with a zip end-of-central-directory record (a plain torch archive)."""
    start = data.rfind(_EOCD, max(0, len(data) - 22 - 0xFFFF))
    while start >= 0:
        if len(data) - start >= 22:
            (comment_len,) = struct.unpack("<H", data[start + 20:start + 22])
            if start + 22 + comment_len == len(data):
                return True
        start = data.rfind(_EOCD, max(0, len(data) - 22 - 0xFFFF), start)
    return False


def _split_checked(data: bytes, where: str) -> Optional[Tuple[bytes, Dict[str, Any]]]:
    """``(payload, meta)`` of a checksummed file, ``None`` if ``data`` has no trailer at all; a
    :class:`CheckpointError` if the trailer or the checksum is damaged."""
    if len(data) < _TAIL or data[-len(_MAGIC):] != _MAGIC:
        return None
    length = data[-len(_MAGIC) - _LEN_BYTES:-len(_MAGIC)]
    digest_end = len(data) - len(_MAGIC) - _LEN_BYTES
    stored = data[digest_end - _DIGEST_LEN:digest_end]
    body = data[:digest_end - _DIGEST_LEN]
    hasher = hashlib.sha256(body)
    hasher.update(length)
    actual = hasher.hexdigest().encode("ascii")
    if stored != actual:
        raise CheckpointError(
            f"checkpoint {where} is corrupt: its SHA-256 checksum does not match its contents "
            f"(stored {stored.decode('ascii', 'replace')}, computed {actual.decode('ascii')}); "
            "the file changed after it was written (a flipped byte, a partial copy)")
    (meta_len,) = struct.unpack(">Q", length)
    if meta_len > min(_MAX_META, len(body)):
        raise CheckpointError(f"checkpoint {where} is corrupt or not a densityformula checkpoint: its "
                              f"trailer's length {meta_len} does not fit the {len(data)}-byte file")
    payload, meta_bytes = body[:len(body) - meta_len], body[len(body) - meta_len:]
    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # checksummed, so written so: not ours
        raise CheckpointError(f"checkpoint {where} is corrupt or not a densityformula checkpoint: its "
                              f"checksum trailer is unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("container") != CONTAINER:
        container = meta.get("container") if isinstance(meta, dict) else meta
        raise CheckpointError(
            f"checkpoint {where} is in container format {container!r}, which this version of "
            f"densityformula ({_library_version()}) cannot read (it reads {CONTAINER!r})")
    if meta.get("payload_bytes") != len(payload):
        raise CheckpointError(f"checkpoint {where} is corrupt: its payload has {len(payload)} bytes, "
                              f"its trailer says {meta.get('payload_bytes')}")
    return payload, meta


def _unpickle(payload: bytes, where: str, what: str) -> object:
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (RuntimeError, UnpicklingError, EOFError, ...)
        raise CheckpointError(
            f"checkpoint {where} {what}: torch.load failed with {type(exc).__name__}: {exc}".rstrip()
        ) from exc


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """The state saved in ``path`` (``weights_only=True``, CPU), its checksum verified.

    Raises ``FileNotFoundError`` if ``path`` is missing, :class:`CheckpointError` (a ``ValueError``)
    naming the file and what is wrong if it is empty, truncated, corrupt, not a densityformula
    trainer checkpoint or of a format this version cannot read; warns (``UserWarning``) if another
    densityformula version wrote a readable format.  Stale temporary files of ``path``
    (:func:`remove_stale_temp_files`) are removed.
    """
    path = Path(path)
    where = str(path)
    remove_stale_temp_files(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {where} not found")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {where} is a directory, not a checkpoint file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {where} cannot be read: {type(exc).__name__}: {exc}") from exc
    if not data:
        raise CheckpointError(f"checkpoint {where} is empty (0 bytes): not a densityformula checkpoint "
                              "(a write that never completed?)")
    checked = _split_checked(data, where)
    meta: Optional[Dict[str, Any]] = None
    if checked is not None:
        payload, meta = checked
        state = _unpickle(payload, where, "passed its checksum but is not a torch file")
    elif _ends_like_zip(data):  # written before checksums existed
        state = _unpickle(data, where, "is corrupt (a torch archive without a checksum that does not load)")
    elif data[:4] == _ZIP_START:
        raise CheckpointError(
            f"checkpoint {where} is truncated or corrupt: a {len(data)}-byte torch archive that ends "
            "neither in a densityformula checksum trailer nor in the archive's end record")
    else:
        state = _unpickle(data, where, "is not a densityformula checkpoint (neither a checksummed "
                                       "checkpoint nor a torch archive)")
    if not isinstance(state, dict) or not isinstance(state.get("format"), str) \
            or not str(state.get("format")).startswith("densityformula.trainer/"):
        raise CheckpointError(f"{where} is not a densityformula trainer checkpoint "
                              f"(it holds a {type(state).__name__} without a densityformula.trainer format)")
    fmt = state["format"]
    written_by = meta.get("densityformula_version") if meta is not None else None
    if fmt not in READABLE_FORMATS:
        by = f"written by densityformula {written_by}" if written_by else "written by another densityformula"
        raise CheckpointError(
            f"checkpoint {where} has format {fmt!r} ({by}), which densityformula {_library_version()} "
            f"cannot read (it reads {', '.join(READABLE_FORMATS)})")
    if written_by is not None and written_by != _library_version():
        warnings.warn(
            f"checkpoint {where} was written by densityformula {written_by}, this is "
            f"{_library_version()}; its format {fmt!r} is readable, loading it", UserWarning, stacklevel=2)
    return state


class Checkpointer:
    """Where and how often a trainer saves.

    Args:
        path: the checkpoint file.
        every: save every that many steps (``0``: only when asked and at the end of training).
        overwrite: a fresh run may replace an existing ``path``.
    """

    def __init__(self, path: PathLike, *, every: int = 0, overwrite: bool = False) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"checkpoint_path must be a str or os.PathLike, got {type(path).__name__}")
        if not isinstance(every, int) or isinstance(every, bool) or every < 0:
            raise ValueError(f"checkpoint_every must be an int >= 0, got {every!r}")
        self.path = Path(path)
        self.every = every
        self.overwrite = bool(overwrite)

    def check_fresh_start(self, resume_from: Optional[PathLike]) -> None:
        """``FileExistsError`` if :attr:`path` exists, is not the file being resumed and ``overwrite`` is off."""
        if self.path.exists() and not self.overwrite:
            if resume_from is None or Path(resume_from).resolve() != self.path.resolve():
                raise FileExistsError(
                    f"checkpoint_path {self.path} exists; pass resume_from=it to continue, "
                    "or overwrite=True to replace it"
                )

    def due(self, step: int) -> bool:
        """Whether to save after ``step`` (every :attr:`every` steps)."""
        return bool(self.every) and step % self.every == 0

    def save(self, state: Dict[str, Any], path: Optional[PathLike] = None, *, overwrite: bool = False) -> Path:
        """Write ``state`` atomically, with its checksum, to :attr:`path`, or to ``path`` (an existing
        other file only with ``overwrite=True``); stale temporary files of the target are removed."""
        target = self.path if path is None else Path(path)
        if target != self.path and target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
        return atomic_save(state, target)

    def __repr__(self) -> str:
        return f"Checkpointer({str(self.path)!r}, every={self.every}, overwrite={self.overwrite})"
