"""Deterministic fault injection for tests: SIGKILL (or freeze) this process at a named point of a run.

Off unless ``CPL_FAULT`` is set (read once, at the first point reached). Its form is
``<action>:<point>[:key=value[:key=value...]]``, e.g. ``CPL_FAULT=kill:train:epoch=1:iter=2``. The first time
the process reaches ``<point>`` with every given key equal to the value passed there (``rank``, torchrun's
RANK, 0 in a single process, is always given), the action happens:

* ``kill``: SIGKILL this process (no cleanup, no atexit, exactly like the OOM killer);
* ``killpg``: SIGKILL this process's whole group (a sweep and the cell it runs: a power cut);
* ``stop``: SIGSTOP this process, frozen with everything it holds (its device in the run queue) until the
  test sends SIGCONT.

With ``CPL_FAULT_ONCE=PATH`` the fault fires only in the process that creates ``PATH`` first (it writes its
pid there): of several runs sharing one environment (the cells of a sweep, a retried cell), exactly one is hit.

Points (docs/reliability.md):

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
``sweep``               in ``cpl sweep``, before a cell starts (``cell``: its index, from 0)
======================  =================================================================

A testing aid only: nothing in the product sets it.
"""

from __future__ import annotations

import os
import signal

POINTS = ("data", "gan-train", "gan-sample", "train", "train-end", "eval", "rerank", "umap", "results", "sweep")
ACTIONS = ("kill", "killpg", "stop")
_UNREAD = object()
_spec: object = _UNREAD


def parse(text: str) -> tuple[str, str, dict[str, str]] | None:
    """``'kill:train:epoch=1:iter=2'`` → ``('kill', 'train', {'epoch': '1', 'iter': '2'})``; '' → None."""
    if not text:
        return None
    parts = text.split(":")
    if len(parts) < 2 or parts[0] not in ACTIONS or parts[1] not in POINTS:
        raise ValueError(f"CPL_FAULT: expected {'|'.join(ACTIONS)}:<point>[:key=value...] with a point from "
                         f"{', '.join(POINTS)}, got {text!r}")
    conds = {}
    for item in parts[2:]:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"CPL_FAULT: {item!r} is not key=value")
        conds[key] = value
    return parts[0], parts[1], conds


def _claim(marker: str) -> bool:
    """Whether this process is the first to reach the fault under ``CPL_FAULT_ONCE`` (creates ``marker``)."""
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{os.getpid()}\n")
    return True


def point(name: str, **where: object) -> None:
    """Mark fault point ``name`` (one of :data:`POINTS`); acts when ``CPL_FAULT`` selects it."""
    global _spec
    if _spec is _UNREAD:
        _spec = parse(os.environ.get("CPL_FAULT", ""))
    if _spec is None:
        return
    action, target, conds = _spec  # type: ignore[misc]
    where = {"rank": os.environ.get("RANK", "0"), **where}
    if target != name or not all(str(where.get(k)) == v for k, v in conds.items()):
        return
    marker = os.environ.get("CPL_FAULT_ONCE")
    if marker and not _claim(marker):
        return
    _spec = None  # fires once: a stopped process continues past this point after SIGCONT
    if action == "killpg":
        os.killpg(os.getpgid(0), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGSTOP if action == "stop" else signal.SIGKILL)
