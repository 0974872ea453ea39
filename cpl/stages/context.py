"""What the stages of a run share: the row type of the stage table, the context the runner hands every stage,
and the one error a stage raises with a hint for the user.

A stage is a function ``run(ctx)``: it reads what earlier stages left on the context, writes its files into
the run directory, leaves its own product on the context, and reports progress through :meth:`RunContext.progress`
(the runner turns that into ``status.json``; no stage writes status itself).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cpl.config import Config
from cpl.runs.atomic import append_jsonl
from cpl.runs.rundir import RunDir
from cpl.runs.state import Stage
from cpl.stages.products import Evaluated, LoadedData, Trained, Unlabeled

if TYPE_CHECKING:
    import torch

    from cpl.engine.dist import DistInfo


class RunFailed(RuntimeError):
    """A failure with a one-line message and a hint for the user (no traceback needed)."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class StageSpec:
    """One row of the stage table (``cpl/pipeline.py``)."""

    name: Stage
    run: Callable[[RunContext], None]
    weight: Callable[[Config], float]  # its share of the run's progress bar (relative to the other stages)
    writes: tuple[str, ...]  # the run-directory files it writes (:class:`RunDir` attributes), on rank 0
    resume: str  # how a resumed run gets through it again
    when: Callable[[Config], bool] = lambda cfg: True  # whether the run has this stage at all
    main_only: bool = False  # rank 0 alone (a torchrun job's other ranks are done after training)


Report = Callable[[float, "str | None", dict[str, Any]], None]


@dataclass
class RunContext:
    """Everything a stage may use. The runner fills the first block; the stages fill the second, in order."""

    run: RunDir
    cfg: Config
    device: torch.device
    dist: DistInfo
    should_stop: Callable[[], bool]
    progress_bar: bool  # a tqdm bar on stderr (``cpl run`` in a terminal)
    report: Report = field(repr=False, default=lambda frac, message, fields: None)

    data: LoadedData | None = None  # Stage.DATA
    unlabeled: Unlabeled | None = None  # Stage.UNLABELED (an empty set when the run has none)
    trained: Trained | None = None  # Stage.TRAIN
    evaluated: Evaluated | None = None  # Stage.EVALUATE

    @property
    def is_main(self) -> bool:
        """Whether this process is rank 0, the one that writes the run's files."""
        return self.dist.is_main

    def progress(self, frac: float, message: str | None = None, **fields: Any) -> None:
        """Report the current stage ``frac`` (0..1) done; ``fields`` are further status.json fields
        (``epoch``, ``eta_s``, ...)."""
        self.report(frac, message, fields)

    def record(self, rec: dict) -> None:
        """Append one record to ``metrics.jsonl`` (rank 0; non-finite floats become null)."""
        if self.is_main:
            append_jsonl(self.run.metrics, {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                            for k, v in rec.items()})

    def check_disk(self, need_bytes: int, what: str) -> None:
        """Refuse, with a hint, to start writing ``what`` (~``need_bytes`` bytes) into a nearly full disk."""
        free = shutil.disk_usage(self.run.path).free
        if free < need_bytes * 1.2 + 50 * 2**20:
            raise RunFailed(f"not enough disk space for {what}: need ~{need_bytes / 2**20:.0f} MiB, "
                            f"{free / 2**20:.0f} MiB free in {self.run.path}", "free disk space, then resume")
