"""Checkpoints of the re-ID training and of the GAN: atomic, self-verifying, the last two kept.

A checkpoint is ``<prefix>-e<EPOCH>-s<STEP>-<SHA>.pt``: EPOCH epochs are complete and STEP steps of the
next one are done; SHA is the first 16 hex digits of the file's SHA-256, so a truncated or damaged file
(a kill during a copy, a bad disk) is recognised without a second file that could get out of step. The
content is a plain dict of tensors, numbers and strings, loaded with ``torch.load(weights_only=True)``:
nothing in a checkpoint can execute code.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from pathlib import Path
from typing import Any

import torch

from cpl import PROG
from cpl.runs import atomic

log = logging.getLogger(PROG)

KEEP = 2
TRAIN_PREFIX = "train"  # re-ID training checkpoints: <run>/checkpoints/train-eNNNN-s000000-<sha>.pt


class CheckpointError(RuntimeError):
    """Checkpoints exist but none is usable (all truncated or corrupt)."""


def _pattern(prefix: str) -> re.Pattern:
    return re.compile(rf"^{re.escape(prefix)}-e(\d{{4,}})-s(\d{{6,}})-([0-9a-f]{{16}})\.pt$")


def _position(path: Path, prefix: str) -> tuple[int, int]:
    m = _pattern(prefix).match(path.name)
    assert m is not None
    return int(m.group(1)), int(m.group(2))


def list_checkpoints(folder: Path, prefix: str) -> list[Path]:
    """Checkpoint files in ``folder``, oldest first by (epoch, step)."""
    if not folder.is_dir():
        return []
    pat = _pattern(prefix)
    found = [p for p in folder.iterdir() if pat.match(p.name)]
    return sorted(found, key=lambda p: (_position(p, prefix), p.stat().st_mtime))


def save_checkpoint(folder: Path, prefix: str, state: dict[str, Any], epoch: int, step: int = 0) -> Path:
    """Write ``state`` atomically as the checkpoint at (epoch, step), then prune to the newest :data:`KEEP`.

    Files at or after this position are ones a resume fell back from (damaged) or replayed past: superseded.
    """
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{prefix}-e{epoch:04d}-s{step:06d}-{digest}.pt"
    atomic.write_bytes(path, data)
    others = [p for p in list_checkpoints(folder, prefix) if p != path]
    older = [p for p in others if _position(p, prefix) < (epoch, step)]
    stale = [p for p in others if _position(p, prefix) >= (epoch, step)]
    for p in stale + older[: max(0, len(older) - (KEEP - 1))]:
        p.unlink(missing_ok=True)
    return path


def read_checkpoint(path: Path, prefix: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint after checking its digest; raises :class:`CheckpointError` when unusable."""
    m = _pattern(prefix).match(path.name)
    if m is None:
        raise CheckpointError(f"{path.name}: not a {prefix} checkpoint name")
    try:
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest()[:16] != m.group(3):
            raise CheckpointError(f"{path.name}: checksum mismatch (truncated or damaged)")
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # any unpickling / zip / IO error means the file is unusable
        raise CheckpointError(f"{path.name}: unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path.name}: not a checkpoint dictionary")
    return state


def load_latest(folder: Path, prefix: str,
                map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path] | None:
    """The newest intact checkpoint (state, path), skipping damaged ones with a warning; None if there is
    none; :class:`CheckpointError` if there are checkpoints but none is usable."""
    candidates = list_checkpoints(folder, prefix)
    problems = []
    for path in reversed(candidates):
        try:
            return read_checkpoint(path, prefix, map_location), path
        except CheckpointError as exc:
            log.warning("checkpoint %s; using the previous one", exc)
            problems.append(str(exc))
    if candidates:
        raise CheckpointError("no usable checkpoint in " + str(folder) + ": " + "; ".join(problems))
    return None
