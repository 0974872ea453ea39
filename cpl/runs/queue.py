"""The run queue: one run per device at a time, by an exclusive lock file per device.

A run takes ``<runs root>/_locks/<device>.lock`` with ``fcntl.flock`` before its heavy stages and holds
it until it ends; a second run for the same device blocks (its status says ``queued``). The kernel
drops the lock when the process dies, however it dies, so a crashed run never blocks the queue.

A multi-process (torchrun) run claims every device its processes use (:func:`device_slots`, rank 0 on
behalf of the job), so an "all GPUs" run and a ``cuda:0`` run wait for each other. Locks are always taken in
sorted order: two jobs sharing devices can never each hold one the other waits for. The holder's pid and run
id are written into the lock file while it is held (:func:`lock_holder`), so the other ranks of the job can
wait for the claim (:func:`wait_until_held`) without a process-group timeout running.

A run started by a cluster scheduler (a sweep cell on Ray, ``cpl/sweep/on_ray.py``) skips the lock: the scheduler
already gave it its device (Ray sets ``CUDA_VISIBLE_DEVICES`` per task, so every such run sees ``cuda:0``, and
the runs root is shared by all nodes), and a lock on it would serialise the whole cluster. The scheduler says so
with ``CPL_SCHEDULER=<name>`` in the run's environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cpl.runs.rundir import LOCKS_DIR

SCHEDULER_ENV = "CPL_SCHEDULER"


def scheduled() -> bool:
    """Whether a cluster scheduler placed this process on its device (``CPL_SCHEDULER`` set): no device lock."""
    return bool(os.environ.get(SCHEDULER_ENV))


def lock_name(device: str) -> str:
    """File name of ``device``'s lock under ``_locks/`` (``cuda:0`` -> ``cuda-0.lock``)."""
    return device.replace(":", "-").replace("/", "-") + ".lock"


@contextlib.contextmanager
def device_slot(runs_root: Path, device: str, *, on_wait: Callable[[], None] = lambda: None,
                should_stop: Callable[[], bool] = lambda: False, poll_s: float = 1.0,
                holder: str = "") -> Iterator[None]:
    """Hold the device's lock for the duration of the block; calls ``on_wait`` once if it must wait.

    ``holder`` (a run id) is written into the lock file with the pid while the lock is held. Raises
    ``InterruptedError`` if ``should_stop()`` turns true while waiting (a cancelled queued run).
    """
    folder = runs_root / LOCKS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / lock_name(device), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    on_wait()
                    waited = True
                if should_stop():
                    raise InterruptedError("cancelled while queued") from None
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {holder}".strip().encode() + b"\n")
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # still held: a later reader never takes a finished run for the holder
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def device_slots(runs_root: Path, devices: list[str], *, on_wait: Callable[[str], None] = lambda device: None,
                 should_stop: Callable[[], bool] = lambda: False, poll_s: float = 1.0,
                 holder: str = "") -> Iterator[None]:
    """Hold the locks of every device in ``devices`` (each once, in sorted order) for the block.

    ``on_wait(device)`` is called once per device the claim has to wait for; the rest as :func:`device_slot`.
    """
    with contextlib.ExitStack() as stack:
        for device in sorted(set(devices)):
            stack.enter_context(device_slot(runs_root, device, on_wait=lambda d=device: on_wait(d),
                                            should_stop=should_stop, poll_s=poll_s, holder=holder))
        yield


def lock_holder(runs_root: Path, device: str) -> str | None:
    """``"<pid> <run id>"`` of the process holding the device's lock now; None when nobody holds it."""
    path = runs_root / LOCKS_DIR / lock_name(device)
    if not device_busy(runs_root, device):
        return None
    try:
        return path.read_text().strip()
    except OSError:
        return None


def wait_until_held(runs_root: Path, devices: list[str], holder: str, *,
                    should_stop: Callable[[], bool] = lambda: False, poll_s: float = 1.0) -> None:
    """Block until every device's lock is held on behalf of ``holder`` (the other ranks of a torchrun job
    wait here while rank 0 claims the job's devices). Raises ``InterruptedError`` when ``should_stop()``."""
    while not all((lock_holder(runs_root, d) or "").split(" ", 1)[-1] == holder for d in devices):
        if should_stop():
            raise InterruptedError("cancelled while queued")
        time.sleep(poll_s)


def device_busy(runs_root: Path, device: str) -> bool:
    """Whether some process holds the device's lock right now."""
    path = runs_root / LOCKS_DIR / lock_name(device)
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
