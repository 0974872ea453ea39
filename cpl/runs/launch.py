"""Start, cancel, resume and delete runs as detached processes. Shared by the CLI and the app.

A launched run is an ordinary ``python -m cpl ...`` process in its own session
(``start_new_session=True``), so closing the terminal or restarting the app never kills it; its state
lives on disk (status.json), never in the launcher's memory. Torch-free.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from cpl import PROG
from cpl.config import Config, controls, dump_yaml
from cpl.runs.atomic import write_json
from cpl.runs.rundir import RunDir, create_run, new_run_id
from cpl.runs.state import State
from cpl.runs.status import ACTIVE, FINAL, StatusWriter, pid_alive, read_raw, read_status


def prepare_run(cfg: Config, runs_root: Path, run_dir: Path | None = None, argv: list[str] | None = None,
                sweep: str | None = None) -> RunDir:
    """Create a run directory holding the resolved config and ``run.json``; the run starts with
    :func:`launch_resume` (background) or ``cpl resume`` / ``cpl.pipeline.execute`` (foreground).

    Refuses (:class:`cpl.models.weights.WeightsNotFound`, a ValueError with one actionable line) a config whose
    ``model.pretrained`` names weights this machine does not have: no run directory is made then.
    """
    from cpl.models.weights import resolve

    weights = resolve(cfg.model.backbone, cfg.model.pretrained)
    facts = {"argv": argv or [], "method": cfg.train.method, "name": cfg.name, "sweep": sweep,
             "dataset": {"kind": cfg.data.kind, "root": str(Path(cfg.data.root).resolve())},
             "backbone": cfg.model.backbone, "weights": weights.to_dict(), "controls": controls(cfg)}
    if run_dir is not None:
        return create_run(run_dir.parent, run_dir.name, dump_yaml(cfg), facts)
    # Two launches of one form within the same second compute the same id: the first to create it keeps it
    # (create_run is atomic), the other takes the id with an "x" more, and so on.
    run_id = new_run_id(cfg.name, cfg.train.method, cfg.seed)
    while True:
        while (runs_root / run_id).exists():
            run_id += "x"
        try:
            return create_run(runs_root, run_id, dump_yaml(cfg), facts)
        except FileExistsError:
            if not (runs_root / run_id).exists():  # not another launch's run: e.g. the runs root is a file
                raise
            # else another launch created it since the check above: the loop takes the next id


def cpl_command(*args: str) -> list[str]:
    """The argv that runs ``cpl <args>`` with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", PROG, *args]


def spawn(argv: list[str], log_path: Path, cwd: Path | None = None, env: dict | None = None) -> int:
    """Start ``argv`` detached (own session), stdout/stderr appended to ``log_path``; returns the pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=cwd, env={**os.environ, **(env or {})},
                                close_fds=True)
    return proc.pid


def launch_resume(run: RunDir, nproc: int = 1, env: dict | None = None) -> int:
    """Start (or continue) a prepared run directory in the background: ``cpl resume RUN_DIR``, through
    ``torchrun --nproc-per-node nproc`` when ``nproc > 1`` (one process per GPU)."""
    args = ["--runs-root", str(run.runs_root), "resume", str(run.path)]
    if nproc > 1:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                "-m", PROG, *args]
    else:
        argv = cpl_command(*args)
    pid = spawn(argv, run.log, env=env)
    write_json(run.path / "launch.json", {"argv": argv, "launched": time.time(), "pid": pid, "nproc": nproc})
    return pid


def launch_cancel(run: RunDir) -> int:
    """Cancel in the background (graceful, then the process group): ``cpl cancel RUN_DIR``."""
    return spawn(cpl_command("cancel", str(run.path)), run.path / "cancel.log")


def cancel(run: RunDir, grace_s: float = 30.0, poll_s: float = 0.5) -> str:
    """Ask the run to stop (SIGTERM: it finishes its iteration and records 'cancelled'); after ``grace_s``
    kill its whole process group. Returns the final state."""
    st = read_status(run)
    if st.get("state") not in ACTIVE:
        return str(st.get("state"))
    pgid = int(st.get("pgid") or 0)
    pid = int(st.get("pid") or 0)
    if pgid <= 1 or pgid == os.getpgid(0):
        raise RuntimeError(f"{run.id}: refusing to signal process group {pgid}")
    _killpg(pgid, signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline:
        raw = read_raw(run) or {}
        if raw.get("state") in FINAL or not pid_alive(pid, raw.get("proc_start")):
            break
        time.sleep(poll_s)
    if pid_alive(pid, st.get("proc_start")):
        _killpg(pgid, signal.SIGKILL)
        time.sleep(poll_s)
    raw = read_raw(run) or {}
    if raw.get("state") not in FINAL:
        writer = StatusWriter(run)
        writer.state.update({k: v for k, v in raw.items() if k not in ("pid", "pgid", "proc_start", "host")})
        writer.update(state=State.CANCELLED, finished=time.time(), message="cancelled (process group killed)")
    return State.CANCELLED


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def delete(run: RunDir) -> None:
    """Remove a run directory; refuses while the run is queued or running."""
    if read_status(run).get("state") in ACTIVE:
        raise RuntimeError(f"{run.id}: is still active; cancel it first")
    shutil.rmtree(run.path)
