"""Input conversion and deterministic k-smallest selection shared by the evaluation modules."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

# Working-set size of one chunk, in matrix elements. Large enough to amortise per-call overhead,
# small enough that the handful of [chunk, G] temporaries stays far below the memory budget.
CPU_CHUNK_ELEMENTS = 1 << 22
CUDA_CHUNK_ELEMENTS = 1 << 26


def to_tensor(x: Any, device: torch.device | None = None) -> torch.Tensor:
    """A torch view of ``x`` (numpy array, tensor or sequence) without copying where possible.

    Read-only numpy arrays (e.g. memory-mapped features) are wrapped as they are: nothing in this
    package writes to its inputs, so torch's "not writable" warning does not apply.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = torch.from_numpy(arr) if arr.dtype != object else torch.as_tensor(arr.tolist())
    return t if device is None else t.to(device)


def float_matrix(x: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    """``x`` as a 2-D floating tensor: float32/float64 kept, half types and integers widened.

    Raises ``ValueError`` for a wrong rank or NaN entries (NaN has no place in a ranking).
    """
    t = to_tensor(x, device)
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    elif t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    # max() propagates NaN: one reduction instead of an isnan pass plus an any pass.
    if t.numel() and bool(torch.isnan(t.max())):
        raise ValueError(f"{name} contains NaN")
    return t


def label_vector(x: Any, n: int, name: str, device: torch.device) -> torch.Tensor:
    """``x`` as a 1-D int64 tensor of length ``n`` on ``device``."""
    t = to_tensor(x).reshape(-1)
    if t.numel() != n:
        raise ValueError(f"{name} has {t.numel()} entries, expected {n}")
    if t.is_floating_point() and bool((t != t.round()).any()):
        raise ValueError(f"{name} must hold integer labels")
    return t.to(device=device, dtype=torch.int64).contiguous()


def chunk_rows(num_cols: int, device: torch.device) -> int:
    """Rows per chunk so that a [rows, num_cols] temporary has about the chunk budget of elements."""
    budget = CUDA_CHUNK_ELEMENTS if device.type == "cuda" else CPU_CHUNK_ELEMENTS
    return max(1, budget // max(1, num_cols))


def smallest_k(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest entries of each row, ordered by (value, column index).

    ``values``: [R, C] float (no NaN). Returns (vals [R, k] same dtype, cols [R, k] int64), with
    k clamped to C. Equal values are ordered by column index, which makes the result independent
    of the selection algorithm: ``torch.topk`` alone leaves the order of ties unspecified.
    """
    k = min(k, values.shape[1])
    if k == 0:
        return values[:, :0], torch.empty(values.shape[0], 0, dtype=torch.int64, device=values.device)
    vals, cols = values.topk(k, dim=1, largest=False, sorted=True)
    # A row whose k-th value also occurs outside the selection has a tie across the cut: which of
    # the tied columns topk kept is arbitrary, so such rows are redone with a stable full sort.
    boundary_tie = (values <= vals[:, -1:]).sum(dim=1) > k
    cols, order = cols.sort(dim=1)
    vals = vals.gather(1, order)
    vals, order = vals.sort(dim=1, stable=True)
    cols = cols.gather(1, order)
    rows = boundary_tie.nonzero().flatten()
    if rows.numel():
        v, c = values[rows].sort(dim=1, stable=True)
        vals[rows] = v[:, :k]
        cols[rows] = c[:, :k]
    return vals, cols
