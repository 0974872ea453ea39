"""``status.json``: written by the run process (with a heartbeat), read by the CLI and the app.

A reader never trusts a "running" state blindly: if the process is gone (pid not alive on this host,
a zombie, a recycled pid, or a heartbeat older than :data:`STALE_S`), the run is reported as failed so
it shows as resumable instead of running forever. Torch-free.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from pathlib import Path

from cpl.runs.atomic import write_json
from cpl.runs.rundir import RunDir
from cpl.runs.state import ACTIVE, FINAL, QueueReason, Stage, State

STALE_S = 60.0
HEARTBEAT_S = 5.0
__all__ = ["ACTIVE", "FINAL", "StatusWriter", "read_raw", "read_status", "pid_alive", "last_log_line", "elapsed_s"]


def proc_start_time(pid: int) -> int | None:
    """Kernel start time of ``pid`` in clock ticks (Linux), to tell a live process from a recycled pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":  # zombie: exited, parent has not reaped it yet
        return None
    return int(fields[19])


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """Whether process ``pid`` is running on this host (a zombie is not); given ``start_time`` (clock ticks, from
    :func:`proc_start_time`), also that it is the same process and not a recycled pid. Without ``/proc`` only a
    signal-0 probe is possible, and a pid we may not signal counts as alive."""
    if pid <= 0:
        return False
    if Path("/proc").is_dir():
        st = proc_start_time(pid)
        return st is not None and (start_time is None or st == start_time)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class StatusWriter:
    """Merges updates into ``status.json`` (atomically) and keeps a heartbeat while the process lives."""

    def __init__(self, run: RunDir, enabled: bool = True):
        self.run = run
        self.enabled = enabled
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        previous = read_raw(run) or {}
        pid = os.getpid()
        self.state: dict = {
            "state": State.QUEUED, "stage": Stage.QUEUED, "queue_reason": QueueReason.STARTING,
            "epoch": 0, "epochs": previous.get("epochs"),
            "iter": 0, "iters": None, "progress": previous.get("progress", 0.0), "eta_s": None,
            "pid": pid, "pgid": os.getpgid(pid), "proc_start": proc_start_time(pid), "host": socket.gethostname(),
            "device": None, "devices": None, "waiting_for": None,
            "heartbeat": time.time(), "started": time.time(), "updated": time.time(),
            "finished": None, "error": None, "hint": None, "message": "",
        }

    def update(self, **fields) -> None:
        """Merge ``fields`` into the state (non-finite floats become null), refresh ``updated`` and ``heartbeat``
        (unix time) and write ``status.json``."""
        with self._lock:
            self.state.update({k: _clean(v) for k, v in fields.items()})
            now = time.time()
            self.state["updated"] = now
            self.state["heartbeat"] = now
            if self.enabled:
                write_json(self.run.status, self.state)

    def start_heartbeat(self, interval: float = HEARTBEAT_S) -> None:
        """Rewrite the heartbeat (unix time) every ``interval`` seconds from a daemon thread until
        :meth:`stop_heartbeat`; a failed write is skipped, never fatal."""
        def beat() -> None:
            while not self._stop.wait(interval):
                with self._lock:
                    self.state["heartbeat"] = time.time()
                    if self.enabled:
                        try:
                            write_json(self.run.status, self.state)
                        except OSError:
                            pass  # a full disk must not kill the run from the heartbeat thread
        self._thread = threading.Thread(target=beat, name="cpl-heartbeat", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat thread, waiting up to 2 seconds for it to end."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)


def read_raw(run: RunDir) -> dict | None:
    """status.json as written; None when it is missing, unreadable or not a JSON object."""
    return run.read_json("status.json")


def _present(path: Path) -> bool:
    """Whether something sits at ``path`` (a broken link and an entry we may not stat count)."""
    try:
        path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def _number(value, default: float = 0.0) -> float:
    """A numeric field of a status file; ``default`` for anything else (a hand-edited or damaged file)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def read_status(run: RunDir, now: float | None = None) -> dict:
    """The run's status with liveness applied: a dead 'running'/'queued' run reads as failed.

    A run with no status file yet (just created) reads as queued; one whose status.json exists but is not a
    JSON object (damaged: the writer is atomic, so never a torn write) reads as ``unknown``, resumable.
    """
    st = read_raw(run)
    if st is None and _present(run.status):
        return {"state": State.UNKNOWN, "stage": None, "progress": 0.0, "damaged": True,
                "error": "status.json is damaged (not a readable JSON object)",
                "hint": "resume the run to rewrite it, or delete it"}
    if st is None:
        launch = run.read_json("launch.json") or {}
        pid = int(_number(launch.get("pid")))
        if pid and not pid_alive(pid):
            return {"state": State.FAILED, "stage": Stage.QUEUED, "progress": 0.0, "dead": True,
                    "error": last_log_line(run) or "the run process exited before it started",
                    "hint": "see log.txt"}
        return {"state": State.QUEUED, "stage": Stage.QUEUED, "queue_reason": QueueReason.STARTING, "progress": 0.0,
                "message": "starting", "error": None}
    if st.get("state") in ACTIVE:
        now = now or time.time()
        same_host = st.get("host") == socket.gethostname()
        alive = pid_alive(int(_number(st.get("pid"))), st.get("proc_start")) if same_host else True
        stale = now - _number(st.get("heartbeat")) > STALE_S
        if not alive or stale:
            why = "process is gone" if not alive else f"no heartbeat for {int(now - _number(st.get('heartbeat')))} s"
            st = dict(st, state=State.FAILED, stage=st.get("stage"), dead=True,
                      error=st.get("error") or f"the run process died ({why}): killed, out of memory or a reboot",
                      hint=st.get("hint") or "resume it with `cpl resume` (or Resume in the app)")
    return st


def elapsed_s(st: dict, now: float | None = None) -> float | None:
    """Seconds a run has been running (``st``: :func:`read_status`'s dict; ``now``: unix time, default the clock):
    from ``started`` to ``finished``, or while it is queued or running to ``now``, not to its last update (a stage
    may be silent for minutes); for a run whose process died, to its last heartbeat. None before it started."""
    started = _number(st.get("started"), 0.0)
    if started <= 0:
        return None
    if st.get("finished") is not None:
        end = _number(st.get("finished"), started)
    elif st.get("state") in ACTIVE:
        end = time.time() if now is None else now
    else:
        end = _number(st.get("heartbeat"), _number(st.get("updated"), started))
    return max(0.0, end - started)


def last_log_line(run: RunDir, max_bytes: int = 4096) -> str:
    """Last non-empty line of the run's log (where an early crash leaves its error)."""
    try:
        with open(run.log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""
