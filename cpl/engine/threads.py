"""How many CPU threads a ``cpl`` process computes with, and how its idle threads wait.

PyTorch starts one OpenMP thread per core it sees and lets idle threads spin between parallel regions. On a
machine where anything else runs (a laptop, a shared server, two runs side by side) the spinning threads compete
with the load for the same cores and a training step gets several times slower (docs/performance.md, "CPU
threads under load"). The policy, measured there:

* the thread count is the number of CPUs this process may really use: its affinity mask, capped by a cgroup CPU
  quota (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``; 1.5 CPUs give 1 thread), shared by the job's processes on
  this host (torchrun's local ranks); ``cpu_threads`` in the config, or ``OMP_NUM_THREADS`` set by the user or by
  a scheduler (Ray sets it to a sweep cell's ``--cpus-per-cell``; torchrun to 1 for jobs of several processes
  unless it is set, which ``cpu_threads`` overrides), overrides it. Other CPU runs need no share:
  the run queue (``cpl/runs/queue.py``) runs one CPU run at a time per runs root and a local sweep runs its cells
  one after the other, so each has the CPUs to itself; what else runs on the machine is outside our control,
  which is what the wait policy is for;
* idle threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``), unless the user set a policy. OpenMP
  reads that variable once, when torch loads it, so :func:`set_wait_policy` runs at the ``cpl`` entry point
  before torch is imported, and every process ``cpl`` starts inherits it.

Torch-free at import: the entry point calls it before torch exists.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
THREADS_ENV = "OMP_NUM_THREADS"
PASSIVE = "PASSIVE"
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count of a process and where it came from (``config``, ``OMP_NUM_THREADS`` or ``auto``)."""

    threads: int
    source: str
    cpus: float  # CPUs available to the process (affinity and cgroup quota), for the log line
    processes: int  # the job's processes sharing them on this host

    def describe(self) -> str:
        """One line for the run's log, e.g. ``2 CPU threads (auto: 2 CPUs / 1 process, OMP_WAIT_POLICY=PASSIVE)``."""
        why = (f"auto: {self.cpus:g} CPUs / {self.processes} process{'es' if self.processes > 1 else ''}"
               if self.source == "auto" else self.source)
        return f"{self.threads} CPU thread{'s' if self.threads > 1 else ''} ({why}, " \
               f"{WAIT_POLICY_ENV}={os.environ.get(WAIT_POLICY_ENV, 'unset')})"


def set_wait_policy(environ: MutableMapping[str, str] = os.environ) -> str:
    """Make idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``) unless ``environ`` already names a policy;
    returns the policy in force. Effective only before torch is imported (OpenMP reads it once, at load)."""
    return environ.setdefault(WAIT_POLICY_ENV, PASSIVE)


def affinity_cpus() -> int:
    """CPUs this process may run on (its ``sched_getaffinity`` mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _quota(folder: Path) -> float | None:
    """The CPU quota (in CPUs) set on one cgroup folder, v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``; None if none."""
    try:
        if (folder / "cpu.max").is_file():
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if (folder / "cpu.cfs_quota_us").is_file():
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            return None if quota <= 0 else quota / int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None


def _cgroup_folders(root: Path, proc_cgroup: Path) -> list[Path]:
    """The cgroup folders whose CPU quota applies to this process: its own and every ancestor up to the
    hierarchy's root (a container sees its own cgroup as the root), for v2 and the v1 ``cpu`` controller."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    folders = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            mounts = [root]  # v2: one unified hierarchy
        elif "cpu" in controllers.split(","):
            mounts = [root / controllers, root / "cpu", root / "cpu,cpuacct"]
        else:
            continue
        for mount in dict.fromkeys(mounts):
            rel = Path(path.lstrip("/"))
            folders += [mount / p for p in (rel, *rel.parents)]
    return folders


def cgroup_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The smallest CPU quota (in CPUs, e.g. 1.5) of the cgroups this process is in; None when unlimited."""
    quotas = [q for q in (_quota(f) for f in _cgroup_folders(root, proc_cgroup)) if q is not None]
    return min(quotas) if quotas else None


def available_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float:
    """CPUs this process may use: its affinity mask, capped by its cgroup quota."""
    quota = cgroup_cpus(root, proc_cgroup)
    cpus = affinity_cpus()
    return cpus if quota is None else min(cpus, quota)


def _env_threads(environ: Mapping[str, str]) -> int | None:
    """``OMP_NUM_THREADS`` when it is a positive integer (OpenMP also accepts lists; those are left alone)."""
    value = environ.get(THREADS_ENV, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def choose_threads(configured: int, processes: int, cpus: float, environ: Mapping[str, str] = os.environ
                   ) -> ThreadChoice:
    """The thread count for one of ``processes`` processes sharing ``cpus`` CPUs: ``configured`` when > 0 (the
    config's ``cpu_threads``), else ``OMP_NUM_THREADS`` from ``environ``, else ``floor(cpus / processes)``,
    at least 1."""
    processes = max(1, processes)
    if configured > 0:
        return ThreadChoice(configured, "cpu_threads in the config", cpus, processes)
    env = _env_threads(environ)
    if env is not None:
        return ThreadChoice(env, f"{THREADS_ENV}={env}", cpus, processes)
    return ThreadChoice(max(1, math.floor(cpus / processes)), "auto", cpus, processes)


@contextlib.contextmanager
def configured_threads(configured: int, processes: int = 1) -> Iterator[ThreadChoice]:
    """Compute with :func:`choose_threads`'s count (``torch.set_num_threads``) for the block, then restore the
    previous count (a run executed inside another program, e.g. a test, leaves it as it was)."""
    import torch

    choice = choose_threads(configured, processes, available_cpus())
    before = torch.get_num_threads()
    torch.set_num_threads(choice.threads)
    try:
        yield choice
    finally:
        torch.set_num_threads(before)
