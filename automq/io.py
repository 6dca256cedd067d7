"""Atomic, crash-safe file writing and tolerant reading of result files.

A run killed at any moment must leave either the old or the new file, never a torn one: every write goes to
a temporary file in the same folder and is moved into place with ``os.replace``. Append-only logs
(``*.jsonl``) are written a whole line at a time; a torn last line is skipped on reading and repaired before the
next append, so a record appended after a crash never shares a line with the fragment.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from automq.errors import CheckpointError

_UMASK = os.umask(0)
os.umask(_UMASK)
_TAIL_CHUNK = 4096  # bytes read per step when looking back for the start of a torn last line
_log = logging.getLogger(__name__)


def _atomic_write(path: str | os.PathLike, write: Any, mode: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; results should read like any other file
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new content, never a mix."""
    _atomic_write(path, lambda handle: handle.write(text), "w")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never a mix."""
    _atomic_write(path, lambda handle: handle.write(data), "wb")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file, so a kill during the save keeps the previous checkpoint."""
    import torch

    _atomic_write(path, lambda handle: torch.save(obj, handle), "wb")


def safe_torch_load(path: str | os.PathLike) -> Any:
    """Load a checkpoint with ``weights_only=True``; any failure becomes a :class:`CheckpointError`."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file. Check the path, or train first.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(
            f"{path}: cannot be read as an automq checkpoint ({type(exc).__name__}: {exc}). "
            "The file is corrupt or was not written by automq; delete it and re-run, or resume from an "
            "earlier checkpoint."
        ) from exc


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON record as one line, flushed and fsynced so a crash loses no finished record.

    A last line left without its line end by an interrupted write is repaired first (:func:`_repair_torn_tail`):
    appended to as it is, the fragment and the new record would share one unreadable line and the new record
    would be lost too. Every appender of a log goes through here, so every log is repaired; the check costs one
    byte read. It assumes one writing process per file, which is how automq writes its logs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=False) + "\n").encode("utf-8")
    with open(path, "a+b") as handle:
        _repair_torn_tail(handle, path)
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def _repair_torn_tail(handle: BinaryIO, path: Path) -> None:
    """Make the log open in ``handle`` end with a line end, and say on stderr (one warning) what was repaired.

    A last line that still parses as a record lost only its line end and is completed; anything else is the
    fragment of a record whose write was interrupted and is cut off (that record never finished being written).
    """
    size = handle.seek(0, os.SEEK_END)
    if size == 0:
        return
    handle.seek(size - 1)
    if handle.read(1) == b"\n":
        return
    start = _last_line_start(handle, size)
    handle.seek(start)
    if _is_record(handle.read()):
        handle.write(b"\n")
        _log.warning("%s: its last record had no line end (an interrupted write); ended the line", path)
    else:
        handle.truncate(start)
        _log.warning("%s: cut off its torn last line (%d bytes of a record whose write was interrupted); the "
                     "records before it are kept", path, size - start)


def _last_line_start(handle: BinaryIO, size: int) -> int:
    """The offset just after the last line end before ``size`` (0 when there is none)."""
    end = size
    while end > 0:
        begin = max(0, end - _TAIL_CHUNK)
        handle.seek(begin)
        newline = handle.read(end - begin).rfind(b"\n")
        if newline >= 0:
            return begin + newline + 1
        end = begin
    return 0


def _is_record(text: bytes) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:  # a JSONDecodeError, or a UnicodeDecodeError for the garbage a power loss can leave
        return False


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the records of a JSON-lines file; a torn (partially written) or garbled line is skipped."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, encoding="utf-8", errors="replace") as handle:  # garbled bytes make that line unreadable only
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
