"""The runner: walks a run's stage table and owns everything around the stages. ``status.json`` (state, stage,
progress, heartbeat), the device queue, SIGTERM/SIGINT, the log file, torchrun's process group, and turning an
exception into a one-line error with a hint. Stages only do their work and report progress."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from cpl import PROG
from cpl import config as cfgmod
from cpl.engine.threads import configured_threads
from cpl.runs import faults
from cpl.runs.atomic import write_json
from cpl.runs.queue import device_slots, scheduled, wait_until_held
from cpl.runs.rundir import RunDir
from cpl.runs.state import QueueReason, Stage, State
from cpl.runs.status import StatusWriter
from cpl.stages.context import RunContext, RunFailed, StageSpec

log = logging.getLogger(PROG)


class StopFlag:
    """SIGTERM/SIGINT → a flag the loops poll, so a cancel ends at an iteration boundary, cleanly."""

    def __init__(self) -> None:
        self.flag = threading.Event()

    def install(self) -> None:
        """Make SIGTERM and SIGINT set the flag; only possible from the main thread, elsewhere a no-op."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.flag.set())

    def __call__(self) -> bool:
        return self.flag.is_set()


def run_stages(run: RunDir, stages: Sequence[StageSpec], *, stop: StopFlag | None = None,
               progress_bar: bool = False) -> dict:
    """Run or resume the prepared run ``run`` through ``stages``; returns results.json's content ({} on the
    ranks other than 0). Raises on failure after recording it in status.json (state failed / cancelled)."""
    from cpl.engine import dist

    info = dist.from_env()
    cfg = cfgmod.load_config(run.config)
    if info.is_main:
        run.remove_stale_temp_files()  # a killed predecessor's; its targets are whole (cpl/runs/atomic.py)
    stop = stop or StopFlag()
    stop.install()
    status = StatusWriter(run, enabled=info.is_main)
    handler = _setup_logging(run, info.is_main)
    status.update(state=State.QUEUED, stage=Stage.QUEUED, queue_reason=QueueReason.STARTING, error=None, hint=None,
                  finished=None, message="waiting to start")
    status.start_heartbeat()
    try:
        device = dist.resolve_device(cfg.device, info)
        status.update(device=str(device) if not info.enabled else f"{device.type} x{info.world_size}")
        with ExitStack() as stack:
            threads = stack.enter_context(configured_threads(cfg.cpu_threads, info.local_world_size))
            log.info("computing with %s", threads.describe())
            status.update(cpu_threads=threads.threads)
            if not scheduled():  # a cluster scheduler (Ray) already placed the run on its device
                _claim_devices(stack, run, dist.job_devices(cfg.device, info), info, status, stop)
            dist.init(info, device)
            stack.callback(dist.shutdown, info)
            status.update(state=State.RUNNING, queue_reason=None, message="started")
            ctx = RunContext(run=run, cfg=cfg, device=device, dist=info, should_stop=stop,
                             progress_bar=progress_bar and info.is_main)
            results = _walk(ctx, stages, status)
            faults.point("results")
        status.update(state=State.FINISHED, stage=Stage.DONE, progress=1.0, eta_s=0, finished=time.time(),
                      message=summary_line(results) if results else "")
        return results
    except (InterruptedError, *_stopped_types()) as exc:
        status.update(state=State.CANCELLED, finished=time.time(), message=f"cancelled: {exc}")
        log.info("cancelled: %s", exc)
        raise
    except BaseException as exc:
        msg, hint = describe(exc)
        status.update(state=State.FAILED, finished=time.time(), error=msg, hint=hint, message=msg)
        log.error("failed: %s%s", msg, f" ({hint})" if hint else "")
        raise
    finally:
        status.stop_heartbeat()
        if handler:
            log.removeHandler(handler)
            handler.close()


@dataclass
class Pace:
    """Seconds left in the run at the pace measured since a starting point: the first report past the start of
    what it measures (a resumed stage starts past 0, so its first report is not counted as work done). The stage
    weights stand in for the durations of the stages still to come."""

    since: tuple[float, float] | None = None  # (unix s, run progress) of the starting point

    def eta(self, frac: float, progress: float, now: float) -> float | None:
        """Seconds left after a report of ``frac`` of a stage (``progress`` of the run, at unix time ``now``);
        None until there are two points to measure between."""
        if frac <= 0:
            return None
        if self.since is None:
            self.since = (now, progress)
            return None
        t0, p0 = self.since
        return (now - t0) / (progress - p0) * (1.0 - progress) if progress > p0 and now > t0 else None


def _walk(ctx: RunContext, stages: Sequence[StageSpec], status: StatusWriter) -> dict:
    """Each stage of the run in order; the progress bar is split by the stages' weights. Returns results.json."""
    t_start = time.time()
    planned = [s for s in stages if s.when(ctx.cfg)]
    weights = [s.weight(ctx.cfg) for s in planned]
    total = sum(weights) or 1.0
    entered: dict[str, float] = {}
    run_pace = Pace()
    for i, spec in enumerate(planned):
        if spec.main_only and not ctx.is_main:
            continue
        start, width = sum(weights[:i]) / total, weights[i] / total
        stage_pace = Pace()

        def report(frac: float, message: str | None, fields: dict, name: Stage = spec.name, start: float = start,
                   width: float = width, stage_pace: Pace = stage_pace) -> None:
            progress = min(1.0, start + width * frac)
            now = time.time()
            stage_eta, run_eta = stage_pace.eta(frac, progress, now), run_pace.eta(frac, progress, now)
            eta = stage_eta if stage_eta is not None else run_eta  # the stage's own pace once it has one
            extra = {"message": message} if message is not None else {}
            if eta is not None:
                extra["eta_s"] = eta
            status.update(stage=name, progress=progress, **extra, **fields)

        ctx.report = report
        entered[spec.name.value] = time.time()
        ctx.progress(0.0)
        spec.run(ctx)
    if not ctx.is_main:
        return {}
    end = time.time()
    results = dict(ctx.evaluated.results, total_time_s=end - t_start, stage_times_s=stage_durations(entered, end))
    write_json(ctx.run.results, results)
    return results


def _setup_logging(run: RunDir, is_main: bool) -> logging.Handler | None:
    """Log to stderr, and to the run's log.txt unless stdout already goes there (a detached launch)."""
    log.setLevel(logging.INFO if is_main else logging.ERROR)  # one voice under torchrun
    if not any(isinstance(h, logging.StreamHandler) and getattr(h, "_cpl", False) for h in log.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        h._cpl = True  # type: ignore[attr-defined]
        log.addHandler(h)
    if not is_main:
        return None
    try:
        same = run.log.exists() and os.path.samefile(run.log, f"/proc/self/fd/{sys.stderr.fileno()}")
    except (OSError, ValueError):
        same = False
    if same:
        return None
    fh = logging.FileHandler(run.log, encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(fh)
    return fh


def _claim_devices(stack: ExitStack, run: RunDir, devices: list[str], info, status: StatusWriter,
                   stop: StopFlag) -> None:
    """Take the run queue's slot of every device the job uses (cpl/runs/queue.py) for the rest of ``stack``.

    Rank 0 claims them all on behalf of a torchrun job, so a multi-GPU run and a single-GPU run on one of its
    GPUs wait for each other; the other ranks wait until the claim is held before they join the process group
    (so a long wait in the queue never runs into the group's timeout). status.json says ``queue_reason: device``
    and ``waiting_for`` (the device the claim is blocked on) while queued, and ``devices`` (all of them) once
    they are held.
    """
    if not info.is_main:
        wait_until_held(run.runs_root, devices, run.id, should_stop=stop)
        return

    def waiting(device: str) -> None:
        status.update(state=State.QUEUED, queue_reason=QueueReason.DEVICE, waiting_for=device,
                      message=f"waiting for {device} (another run)")

    stack.enter_context(device_slots(run.runs_root, devices, on_wait=waiting, should_stop=stop, holder=run.id))
    status.update(devices=devices, waiting_for=None)


def _stopped_types() -> tuple[type, ...]:
    from cpl.engine.control import Stopped

    return (Stopped,)


def describe(exc: BaseException) -> tuple[str, str]:
    """One-line message + hint for the status file."""
    import torch

    from cpl.engine.control import NonFiniteLoss

    if isinstance(exc, RunFailed):
        return str(exc), exc.hint
    if isinstance(exc, NonFiniteLoss):
        return str(exc), exc.hint  # per stage: train.lr / gan.lr
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "CUDA out of memory", "lower train.batch_size or use a smaller model.backbone"
    if isinstance(exc, MemoryError):
        return "out of memory", "lower data sizes or unlabeled.num_images"
    if isinstance(exc, OSError) and exc.errno == 28:
        return "disk full while writing the run", "free disk space, then resume"
    if isinstance(exc, (cfgmod.ConfigError, ValueError, FileNotFoundError)):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__, ""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", "resume it with `cpl resume`"
    return f"{type(exc).__name__}: {exc}".splitlines()[0], "see log.txt for the traceback"


def summary_line(results: dict) -> str:
    """One-line summary of results.json (rank-1 / mAP, and re-ranked when present)."""
    s = f"rank-1 {results['rank1']:.2f}  mAP {results['mAP']:.2f}"
    if results.get("rerank"):
        s += f"  (re-ranked: rank-1 {results['rerank']['rank1']:.2f}  mAP {results['rerank']['mAP']:.2f})"
    return s


def stage_durations(entered: dict[str, float], end: float) -> dict[str, float]:
    """Seconds spent in each stage: from entering it (unix time) to entering the next one, the last to ``end``.
    ``entered`` is in the order the stages ran."""
    times = [*entered.values(), end]
    return {stage: times[i + 1] - t for i, (stage, t) in enumerate(entered.items())}
