"""Deterministic fault injection for tests: SIGKILL this process at a named point of a run.

Off unless ``CPL_FAULT`` is set (read once, at the first point reached). Its form is
``kill:<point>[:key=value[:key=value...]]``, e.g. ``CPL_FAULT=kill:train:epoch=1:iter=2``: the process kills
itself with SIGKILL (no cleanup, no atexit, exactly like the OOM killer or a power cut) the first time it
reaches ``<point>`` with every given key equal to the value passed there. Points (docs/reliability.md):

======================  =================================================================
``data``                dataset loaded and decoded, before the unlabeled images
``gan-train``           inside DCGAN training, after a step's checkpoint (``epoch``, ``step``)
``gan-sample``          inside GAN sampling, after a chunk is on disk (``done``)
``train``               inside a training epoch, after an iteration (``epoch``, ``iter``)
``train-end``           after the last epoch's checkpoint, before evaluation
``eval``                after feature extraction, before the metrics
``rerank``              before re-ranking
``umap``                before the UMAP
``results``             after results.json and every artifact, before the final status
======================  =================================================================

A testing aid only: nothing in the product sets it.
"""

from __future__ import annotations

import os
import signal

POINTS = ("data", "gan-train", "gan-sample", "train", "train-end", "eval", "rerank", "umap", "results")
_UNREAD = object()
_spec: object = _UNREAD


def parse(text: str) -> tuple[str, dict[str, str]] | None:
    """``'kill:train:epoch=1:iter=2'`` → ``('train', {'epoch': '1', 'iter': '2'})``; '' → None."""
    if not text:
        return None
    parts = text.split(":")
    if len(parts) < 2 or parts[0] != "kill" or parts[1] not in POINTS:
        raise ValueError(f"CPL_FAULT: expected kill:<point>[:key=value...] with a point from {', '.join(POINTS)}, "
                         f"got {text!r}")
    conds = {}
    for item in parts[2:]:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"CPL_FAULT: {item!r} is not key=value")
        conds[key] = value
    return parts[1], conds


def point(name: str, **where: object) -> None:
    """Mark fault point ``name`` (one of :data:`POINTS`); kills the process when ``CPL_FAULT`` selects it."""
    global _spec
    if _spec is _UNREAD:
        _spec = parse(os.environ.get("CPL_FAULT", ""))
    if _spec is None:
        return
    target, conds = _spec  # type: ignore[misc]
    if target == name and all(str(where.get(k)) == v for k, v in conds.items()):
        os.kill(os.getpid(), signal.SIGKILL)
