"""Training checkpoints: atomic writes, integrity check on load, fall back to the previous one.

A checkpoint is a plain dict of tensors / numbers / strings so that it loads with
``torch.load(weights_only=True)``: nothing in it can execute code. Each file carries a SHA-256 of its
payload; a truncated or corrupted file fails that check (or fails to unpickle) and the previous
checkpoint is used instead, with a message.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_bytes

log = logging.getLogger(__name__)

KEEP = 2
_NAME = re.compile(r"^epoch-(\d{4,})\.pt$")


class CheckpointError(RuntimeError):
    """No usable checkpoint (all candidates missing or corrupt)."""


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def save_checkpoint(folder: Path, epoch: int, state: dict[str, Any]) -> Path:
    """Write ``state`` as ``folder/epoch-NNNN.pt`` atomically and keep the newest :data:`KEEP` files.

    The file is ``{"sha256": hex, "payload": bytes-of-torch.save(state)}``, itself saved with torch.save.
    """
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    outer = io.BytesIO()
    torch.save({"sha256": _digest(payload), "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)},
               outer)
    path = folder / f"epoch-{epoch:04d}.pt"
    write_bytes(path, outer.getvalue())
    for old in list_checkpoints(folder)[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files of ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and verify one checkpoint; raises :class:`CheckpointError` if it is truncated or corrupt."""
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
        payload = outer["payload"].numpy().tobytes()
        if _digest(payload) != outer["sha256"]:
            raise CheckpointError(f"{path.name}: checksum mismatch")
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # any unpickling / zip error means the file is unusable
        raise CheckpointError(f"{path.name}: unreadable ({type(exc).__name__}: {exc})") from None


def load_latest(folder: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path] | None:
    """Newest loadable checkpoint of ``folder`` (state, path), skipping corrupt ones; None if there is none."""
    candidates = list_checkpoints(folder)
    problems = []
    for path in reversed(candidates):
        try:
            return read_checkpoint(path, map_location), path
        except CheckpointError as exc:
            log.warning("checkpoint %s is corrupt, trying the previous one", exc)
            problems.append(str(exc))
    if candidates:
        raise CheckpointError("no usable checkpoint: " + "; ".join(problems))
    return None
