"""A run's state, its stage and why it waits: the typed vocabulary of ``status.json``. Torch-free.

The values are ``str`` enums: ``status.json`` holds their plain values (``"running"``, ``"train"``), and a value
read back from a file compares equal to its member (``State.RUNNING == "running"``), so readers never spell a
state or a stage as free text.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """Where a run (or a sweep) is in its life."""

    QUEUED = "queued"  # the process exists and has not started its stages (see QueueReason)
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"  # an error, or the process died (status.read_status marks it ``dead``)
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # status.json is damaged
    PENDING = "pending"  # a sweep cell whose run directory does not exist yet
    DAMAGED = "damaged"  # a runs-root entry that cannot be read as a run at all (the app lists it, marked)


ACTIVE = frozenset({State.QUEUED, State.RUNNING})
FINAL = frozenset({State.FINISHED, State.FAILED, State.CANCELLED})
RESUMABLE = frozenset({State.FAILED, State.CANCELLED, State.UNKNOWN})


class Stage(StrEnum):
    """The named stages of a run, in order (``cpl/pipeline.py`` walks them), plus the two ends."""

    QUEUED = "queued"
    DATA = "data"  # check and decode the dataset
    UNLABELED = "unlabeled"  # the unlabeled set: a DCGAN trained (or reused) and sampled, a folder, or a holdout
    TRAIN = "train"  # the re-ID network, checkpointed every epoch
    EVALUATE = "evaluate"  # query/gallery features, CMC/mAP, re-ranking → results.json, retrieval.npz
    EXPORT = "export"  # features, pseudo-labels and the UMAP map the inspection pages read
    DONE = "done"


TRAINED = frozenset({Stage.EVALUATE, Stage.EXPORT, Stage.DONE})  # stages after training: every epoch has run


class QueueReason(StrEnum):
    """Why a queued run has not started (``status.json`` ``queue_reason``)."""

    STARTING = "starting"  # the process is loading; nothing blocks it
    DEVICE = "device"  # another run holds its device (``waiting_for`` names it)


def parse(enum: type[StrEnum], value: object) -> StrEnum | None:
    """``value`` (as read from a file) as a member of ``enum``; None for anything else (a damaged or hand-edited
    file, or a value an older version wrote)."""
    try:
        return enum(value) if isinstance(value, str) else None
    except ValueError:
        return None
