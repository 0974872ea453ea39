"""The Ray executor of ``cpl sweep``: each cell is a Ray task that runs the cell's ordinary ``cpl resume``.

    cpl sweep --config F ... --executor ray                  # a local Ray instance on this machine
    cpl sweep --config F ... --executor ray --address auto   # the cluster this node joined (`ray start`)

The driver (this process) submits one task per unfinished cell with its resource request (one GPU for a
CUDA cell, ``--cpus-per-cell`` CPUs otherwise) and gathers the table as cells finish, exactly like the local
executor. A task creates the cell's run directory on the shared runs root when it starts (so cells Ray has not
started yet read as pending, as with the local executor) and runs ``cpl resume RUN_DIR``
(:func:`cpl.sweep.cell_argv`) as a child process on whichever node Ray picked, so a cell writes the same files
wherever it runs; the node's host name lands in the cell's status.json (``host``) and every attempt in its
``placement.json``.

Failures: a task whose worker process or node dies is retried by Ray (``max_retries``), and so is one whose
cell process was killed by SIGKILL (the OOM killer, ``CPL_FAULT=kill:...``). A retry is ``cpl resume`` again:
it continues from the cell's last checkpoint. The cell process dies with its worker (``PR_SET_PDEATHSIG``),
and a retry first waits until the previous attempt's status.json is no longer live, so two attempts never
write one run directory at once. Requires Linux on the worker nodes and a runs root every node sees at the
same path (NFS, Lustre, ...).

Cancelling: SIGTERM or SIGINT to the driver (``cpl cancel`` of the sweep, Ctrl-C) cancels the tasks; a running
cell then stops as under ``cpl cancel`` and records "cancelled", and the sweep does too.

Imports Ray at module level: :mod:`cpl.sweep` imports this module only for ``--executor ray``, after checking
that Ray is installed. Torch-free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import ray

from cpl.config import ConfigError, from_dict
from cpl.runs.atomic import write_json
from cpl.runs.queue import SCHEDULER_ENV
from cpl.runs.rundir import RunDir
from cpl.runs.state import State
from cpl.runs.status import ACTIVE, STALE_S, StatusWriter, read_status
from cpl.sweep.grid import cell_argv, cell_state, prepare_cell
from cpl.sweep.tables import write_tables

# Attempts after the first for a cell whose worker, node or process died; each one resumes from the last
# checkpoint, so a few cover preemptions and lost nodes without looping forever on a cell that always dies.
MAX_RETRIES = 3
POLL_S = 1.0  # how often the driver looks for finished cells and for a cancel


class CellKilled(RuntimeError):
    """The cell's process died by SIGKILL (OOM killer, a kill -9): retried like a lost worker."""


# ---------------------------------------------------------------------------------------------- worker side


def record_attempt(run: RunDir) -> dict:
    """Append this attempt (node, host, worker pid, time) to the cell's placement.json; returns the record.
    Ray runs one attempt of a task at a time, so the read-modify-write has no competitor."""
    ctx = ray.get_runtime_context()
    old = run.read_json(run.placement.name) or {}
    attempts = list(old.get("attempts") or [])
    record = {"attempt": len(attempts) + 1, "node_ip": ray.util.get_node_ip_address(), "node_id": ctx.get_node_id(),
              "host": socket.gethostname(), "worker_pid": os.getpid(), "started": time.time()}
    write_json(run.placement, {"executor": "ray", "attempts": [*attempts, record]})
    return record


def wait_until_free(run: RunDir, poll_s: float = 2.0) -> None:
    """Block while an earlier attempt of the cell still looks alive (status.json running, heartbeat fresh).

    A dead process on this host reads as dead at once; one on a lost node after :data:`STALE_S` seconds
    without a heartbeat. Gives up after twice that, and ``cpl resume`` then refuses a really live run itself.
    """
    deadline = time.time() + 2 * STALE_S
    while time.time() < deadline:
        st = read_status(run)
        if st.get("state") not in ACTIVE or not st.get("pid") or st.get("dead"):
            return
        time.sleep(poll_s)


def _pdeathsig() -> Callable[[], None]:
    """A ``preexec_fn`` making the child get SIGKILL when this worker dies (Linux ``prctl``), resolved before
    the fork so that the child only makes one system call."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1

    def arm() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)

    return arm


def _run_child(argv: list[str], log_path: Path, cwd: str | None) -> int:
    """Run the cell's command in its own session (``cpl cancel RUN_DIR`` signals that group), output appended
    to the sweep's log. A cancel of the task (``ray.cancel``) stops the cell as ``cpl cancel`` does."""
    env = {**os.environ, SCHEDULER_ENV: "ray"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd, start_new_session=True, preexec_fn=_pdeathsig())
        try:
            while True:  # a timed wait, so that ray.cancel()'s KeyboardInterrupt is raised here within a second
                try:
                    return proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    pass
        except KeyboardInterrupt:  # ray.cancel(): the cell finishes its iteration and records "cancelled"
            os.killpg(proc.pid, signal.SIGTERM)
            return proc.wait()


@ray.remote(max_retries=MAX_RETRIES, retry_exceptions=[CellKilled])
def run_cell(spec: dict, cell: dict, runs_root: str, log_path: str, cwd: str) -> int:
    """One cell (``cell``: a sweep.json cell of ``spec``) on a Ray worker: its run directory is created on first
    use, as the local executor does, then ``cpl resume RUN_DIR`` unless it already finished. Returns the exit
    code; raises :class:`CellKilled` (retried) when SIGKILL ended it."""
    # ray.cancel raises KeyboardInterrupt here through a simulated SIGINT, which Python drops while SIGINT is
    # ignored, as it is in a worker of a cluster started from a background job (`ray start ... &`, nohup).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    run = prepare_cell(spec, cell, Path(runs_root))
    if cell_state(run) == State.FINISHED:  # a retry of an attempt that finished just before its worker died
        return 0
    wait_until_free(run)
    where = record_attempt(run)
    with open(log_path, "ab") as log:
        log.write(f"--- {run.id} (attempt {where['attempt']} on {where['host']}, {where['node_ip']})\n".encode())
    rc = _run_child(cell_argv(Path(runs_root), run), Path(log_path), cwd if Path(cwd).is_dir() else None)
    if rc == -signal.SIGKILL:
        raise CellKilled(f"{run.id}: the cell process was killed (SIGKILL); resuming it from its last checkpoint")
    return rc


# ---------------------------------------------------------------------------------------------- driver side


def connect(address: str | None) -> None:
    """Join the cluster at ``address`` ('auto', HOST:PORT or ray://HOST:PORT), or start a local Ray instance on
    this machine's CPUs/GPUs when None. Cell output goes to the sweep's log.txt, not to this terminal.

    ray.init replaces the SIGTERM/SIGINT handlers with ones that exit at once, which would leave the cells to
    be killed with their owner; the sweep's own handlers (set by run_sweep: cancel the cells, record
    "cancelled") are put back."""
    sigs = (signal.SIGTERM, signal.SIGINT)
    ours = {sig: signal.getsignal(sig) for sig in sigs}
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False)
    if threading.current_thread() is threading.main_thread():
        for sig, handler in ours.items():
            signal.signal(sig, handler)


def cell_resources(device: str, cluster_gpus: float, cpus_per_cell: int) -> dict:
    """Ray resource request of a cell whose config says ``device``: one GPU for CUDA (``auto`` on a cluster with
    GPUs), ``cpus_per_cell`` CPUs otherwise. Refuses, by name, a device no task of this cluster could get."""
    if device.startswith("cuda:"):
        raise ConfigError(f"device: {device} cannot be used with --executor ray (each cell is given one GPU, "
                          "which it sees as cuda); use device=cuda or auto")
    if device == "cuda" and not cluster_gpus:
        raise ConfigError("device: cuda, but the Ray cluster has no GPU (use device=cpu or auto)")
    if device == "cuda" or (device == "auto" and cluster_gpus):
        return {"num_gpus": 1}
    return {"num_cpus": cpus_per_cell}


def _outcome(ref: ray.ObjectRef) -> int:
    """A finished task's exit code; a task Ray gave up on (retries spent, cancelled) counts as failed."""
    try:
        return int(ray.get(ref))
    except ray.exceptions.TaskCancelledError:
        return 130
    except ray.exceptions.RayError:
        return 1


def _cancel(refs: list[ray.ObjectRef]) -> None:
    """Stop every cell still in flight (each records "cancelled") and wait for them."""
    for ref in refs:
        ray.cancel(ref)
    for ref in refs:
        _outcome(ref)


def run_cells(spec: dict, folder: Path, runs_root: Path, status: StatusWriter, stop: threading.Event,
              executor: dict) -> int | None:
    """The Ray executor: every unfinished cell as a task, the tables rewritten as cells finish. Returns the
    number of failed cells, or None when the sweep was cancelled."""
    runs_root = runs_root.resolve()  # the tasks run elsewhere: the shared root by its absolute path
    connect(executor.get("address"))
    try:
        resources = cell_resources(from_dict(spec["config"]).device, ray.cluster_resources().get("GPU", 0),
                                   int(executor.get("cpus_per_cell") or 1))
        cells = spec["cells"]
        todo = [c for c in cells if cell_state(RunDir(runs_root / c["run_id"])) != State.FINISHED]
        log = str((folder / "log.txt").resolve())
        pending = [run_cell.options(**resources).remote(spec, c, str(runs_root), log, os.getcwd()) for c in todo]
        done, failed = len(cells) - len(todo), 0
        while pending:
            status.update(epoch=done, progress=done / len(cells),
                          message=f"{done}/{len(cells)} cells done, {len(pending)} on Ray (each {resources})")
            ready: list = []
            while not ready:
                if stop.is_set():
                    _cancel(pending)
                    return None
                ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
            for ref in ready:
                failed += _outcome(ref) != 0
                done += 1
            write_tables(folder, runs_root)
        return failed
    finally:
        ray.shutdown()
