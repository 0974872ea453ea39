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
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def from_env() -> DistInfo:
    """Rank information from torchrun's environment variables (a single process when they are absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(spec: str, info: DistInfo) -> torch.device:
    """``auto`` → this rank's CUDA device when CUDA is available, else CPU; ``cuda`` → cuda:<local rank>."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        spec = f"cuda:{info.local_rank}"
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device: {spec} requested but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"device: {spec} requested but only {torch.cuda.device_count()} CUDA devices exist")
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
    if info.enabled and tdist.is_initialized():
        tdist.destroy_process_group()


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """In-place sum across ranks (no-op in a single process)."""
    if tdist.is_available() and tdist.is_initialized():
        for t in tensors:
            tdist.all_reduce(t, op=tdist.ReduceOp.SUM)


def all_reduce_max(*tensors: torch.Tensor) -> None:
    if tdist.is_available() and tdist.is_initialized():
        for t in tensors:
            tdist.all_reduce(t, op=tdist.ReduceOp.MAX)


def barrier() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s Python object on every rank."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]
