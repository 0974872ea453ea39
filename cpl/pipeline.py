"""The whole run, as a table of named stages: config → data → unlabeled (GAN) → train → evaluate → export, every
product in the run directory (docs/run-directory.md).

``execute(run_dir)`` runs (or resumes) a prepared run directory: it is what ``cpl run`` and ``cpl resume`` call,
in the foreground or as a detached process started by the app. The runner (:mod:`cpl.stages.runner`) walks
:data:`STAGES` and owns status, heartbeat, the device queue and stop handling; each stage does its work, writes its
files as soon as they exist (the app shows them while later stages run) and reports its progress.
"""

from __future__ import annotations

from cpl.config import Config
from cpl.data.unlabeled_sources import SOURCES
from cpl.runs.rundir import RunDir
from cpl.runs.state import Stage
from cpl.stages.context import RunFailed, StageSpec
from cpl.stages.data import load_data
from cpl.stages.evaluate import evaluate
from cpl.stages.export import export
from cpl.stages.runner import StopFlag, run_stages, stage_durations, summary_line
from cpl.stages.train import train
from cpl.stages.unlabeled import build_unlabeled


def _uses_gan(cfg: Config) -> bool:
    return cfg.uses_unlabeled and SOURCES[cfg.unlabeled.source].generates


STAGES: tuple[StageSpec, ...] = (
    StageSpec(Stage.DATA, load_data, weight=lambda cfg: 0.05, writes=("dataset",),
              resume="decoded again (deterministic)"),
    StageSpec(Stage.UNLABELED, build_unlabeled, weight=lambda cfg: 0.25 if _uses_gan(cfg) else 0.01,
              writes=("unlabeled",), when=lambda cfg: cfg.uses_unlabeled,
              resume="DCGAN and samples from the GAN cache (a killed DCGAN continues from its checkpoint)"),
    StageSpec(Stage.TRAIN, train, weight=lambda cfg: 0.6,
              writes=("checkpoints", "pseudo_history", "pseudo_stats", "pseudo_identities", "data_map"),
              resume="continues from the newest checkpoint, bit-identically on the CPU"),
    StageSpec(Stage.EVALUATE, evaluate, weight=lambda cfg: 0.05, writes=("results", "retrieval", "distances"),
              main_only=True, resume="recomputed from the final checkpoint"),
    StageSpec(Stage.EXPORT, export, weight=lambda cfg: 0.05, writes=("features", "pseudo_labels", "embedding"),
              main_only=True, resume="recomputed from the final checkpoint"),
)


def execute(run: RunDir, *, stop: StopFlag | None = None, progress_bar: bool = False) -> dict:
    """Run or resume the prepared run ``run``; returns results.json's content. Raises on failure after recording
    it in status.json (state failed / cancelled)."""
    return run_stages(run, STAGES, stop=stop, progress_bar=progress_bar)


__all__ = ["STAGES", "RunFailed", "execute", "stage_durations", "summary_line"]
