"""Atomic file writes: write a temporary file in the same folder, fsync, then rename over the target.

A reader (the app, a resumed run) therefore sees either the previous complete file or the new
complete file, never a half-written one, whatever moment the writer is killed at.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[BinaryIO]:
    """Open a temporary sibling of ``path`` for writing; on clean exit it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; files of a run are as readable as any other
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # Make the rename itself durable; not every filesystem allows opening a directory.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically, creating its folder if needed."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` as UTF-8, atomically."""
    write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Replace ``path`` with ``obj`` as JSON, atomically; numpy scalars/arrays and paths are converted, NaN and
    infinity raise ``ValueError`` (strict JSON, so any reader can parse it)."""
    write_text(path, json.dumps(obj, indent=indent, default=_json_default, allow_nan=False) + "\n")


def write_npy(path: str | Path, array: np.ndarray) -> None:
    """Replace ``path`` with ``array`` in ``.npy`` format (C-contiguous, no pickled objects), atomically."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    write_bytes(path, buf.getvalue())


def write_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Replace ``path`` with an uncompressed ``.npz`` holding ``arrays`` under their keyword names, atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes(path, buf.getvalue())


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line. A crash can at worst leave a truncated last line, which readers skip; the
    next append starts on a fresh line so the torn one does not swallow it."""
    line = json.dumps(record, default=_json_default) + "\n"
    with open(path, "ab") as fh:
        if fh.tell() > 0:
            with open(path, "rb") as rd:
                rd.seek(-1, os.SEEK_END)
                if rd.read(1) != b"\n":
                    line = "\n" + line
        fh.write(line.encode("utf-8"))
        fh.flush()


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a JSON-lines file, skipping a torn last line left by a killed writer and any line
    that is not an object; a missing or unreadable file (a directory, no permission) reads as empty."""
    out: list[dict] = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out
