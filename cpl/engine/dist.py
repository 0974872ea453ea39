"""Process-group helpers: one code path for a single process and for ``torchrun`` (DDP).

Under torchrun every rank runs the same pipeline; the global batch is split across ranks, the center
statistics are all-reduced so every rank holds identical centers, and only rank 0 writes files.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (rank, world size, local rank); a lone process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # processes of the job on this host (torchrun's LOCAL_WORLD_SIZE)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, evaluates and writes the run directory."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether the job has several processes (a process group to join)."""
        return self.world_size > 1


def from_env() -> DistInfo:
    """Rank information from torchrun's environment variables (a single process when they are absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")),
                    int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))


def device_name(spec: str, local_rank: int, cuda_available: bool) -> str:
    """The device a process of local rank ``local_rank`` uses for the config's ``device``: ``auto`` → CUDA when
    available, else ``cpu``; ``cuda`` → ``cuda:<local rank>``; anything else as written (``cpu``, ``cuda:1``)."""
    if spec == "auto":
        spec = "cuda" if cuda_available else "cpu"
    return f"cuda:{local_rank}" if spec == "cuda" else spec


def job_devices(spec: str, info: DistInfo) -> list[str]:
    """Every device the job's processes on this host use (sorted, each once): what the run queue must claim.
    A 4-process ``cuda`` job → cuda:0..cuda:3; any number of gloo processes on ``cpu`` → [cpu]."""
    available = torch.cuda.is_available()
    return sorted({device_name(spec, r, available) for r in range(info.local_world_size)})


def resolve_device(spec: str, info: DistInfo) -> torch.device:
    """This rank's device (:func:`device_name`), checked against the machine; selects it for CUDA."""
    dev = torch.device(device_name(spec, info.local_rank, torch.cuda.is_available()))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device: {dev} requested but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"device: {dev} requested but only {torch.cuda.device_count()} CUDA devices exist")
        torch.cuda.set_device(dev)
    return dev


def init(info: DistInfo, device: torch.device) -> None:
    """Join the process group (NCCL on GPU, gloo on CPU) when running under torchrun."""
    if info.enabled and not tdist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # Long timeout: the other ranks wait at a barrier while rank 0 trains the GAN.
        minutes = float(os.environ.get("CPL_DIST_TIMEOUT_MIN", "240"))
        tdist.init_process_group(backend, timeout=datetime.timedelta(minutes=minutes),
                                 device_id=device if device.type == "cuda" else None)


def shutdown(info: DistInfo) -> None:
    """Leave the process group (a no-op for a lone process)."""
    if info.enabled and tdist.is_initialized():
        tdist.destroy_process_group()


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """In-place sum across ranks (no-op in a single process)."""
    if tdist.is_available() and tdist.is_initialized():
        for t in tensors:
            tdist.all_reduce(t, op=tdist.ReduceOp.SUM)


def all_reduce_max(*tensors: torch.Tensor) -> None:
    """Element-wise maximum of ``tensors`` across ranks, in place (a no-op for a lone process)."""
    if tdist.is_available() and tdist.is_initialized():
        for t in tensors:
            tdist.all_reduce(t, op=tdist.ReduceOp.MAX)


def barrier() -> None:
    """Wait for every rank (a no-op for a lone process)."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s Python object on every rank."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]
