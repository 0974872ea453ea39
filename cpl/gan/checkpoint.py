"""GAN training checkpoints: atomic, self-verifying, the last two kept.

A checkpoint is ``gan-e<EPOCH>-s<STEP>-<SHA>.pt``: EPOCH epochs are complete and STEP steps of the
next one are done; SHA is the first 16 hex digits of the file's SHA-256, so a file damaged after it
was written (or a half-copied one) is recognised without a second file that could get out of step.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from pathlib import Path
from typing import Any

import torch

from cpl import atomic

log = logging.getLogger(__name__)

_NAME = re.compile(r"^gan-e(\d{4,})-s(\d{6,})-([0-9a-f]{16})\.pt$")
KEEP = 2


def _position(path: Path) -> tuple[int, int]:
    m = _NAME.match(path.name)
    assert m is not None
    return int(m.group(1)), int(m.group(2))


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files in ``folder``, oldest first by (epoch, step)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: (_position(p), p.stat().st_mtime))


def save_checkpoint(folder: Path, state: dict[str, Any], epoch: int, step: int) -> Path:
    """Write ``state`` atomically as the checkpoint at (epoch, step), then prune to the newest two."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()[:16]
    path = folder / f"gan-e{epoch:04d}-s{step:06d}-{digest}.pt"
    atomic.write_bytes(path, data)
    others = [p for p in list_checkpoints(folder) if p != path]
    older = [p for p in others if _position(p) < (epoch, step)]
    # Files at or after this position are ones we fell back from (damaged) or replayed past: superseded.
    stale = [p for p in others if _position(p) >= (epoch, step)]
    for p in stale + older[: max(0, len(older) - (KEEP - 1))]:
        p.unlink(missing_ok=True)
    return path


def _verified_load(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    expected = _NAME.match(path.name).group(3)  # type: ignore[union-attr]
    if hashlib.sha256(data).hexdigest()[:16] != expected:
        raise ValueError("checksum mismatch")
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError("not a checkpoint dictionary")
    return state


def load_latest_checkpoint(folder: Path) -> tuple[dict[str, Any], Path] | None:
    """The newest intact checkpoint in ``folder`` and its path, or None when there is none.

    A damaged newest file is skipped with a warning and the previous one is used.
    """
    for path in reversed(list_checkpoints(folder)):
        try:
            return _verified_load(path), path
        except Exception as exc:  # any failure to read means "not usable": fall back
            log.warning("GAN checkpoint %s is unreadable (%s); trying the previous one", path, exc)
    return None
