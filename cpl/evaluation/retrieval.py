"""Best-first retrieval lists (the gallery images shown for each query)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cpl.evaluation._tensors import chunk_rows, float_matrix, smallest_k


def topk(distmat: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` closest gallery images of every query, best first.

    distmat: [Q, G] float (numpy array or torch tensor, CPU or CUDA), smaller = more similar.
    Returns (index [Q, k] int32 gallery columns, dist [Q, k] float32 their distances), with k
    clamped to G. Equal distances are ordered by gallery index, as in :func:`evaluate`, so the list
    is the head of the ranking that evaluate scores (before its per-query exclusions).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    dist = float_matrix(distmat, "distmat")
    num_q, num_g = dist.shape
    k = min(k, num_g)
    index = np.empty((num_q, k), dtype=np.int32)
    values = np.empty((num_q, k), dtype=np.float32)
    step = chunk_rows(num_g, dist.device)
    for start in range(0, num_q, step):
        rows = slice(start, min(start + step, num_q))
        v, c = smallest_k(dist[rows], k)
        index[rows] = c.to(torch.int32).cpu().numpy()
        values[rows] = v.to(torch.float32).cpu().numpy()
    return index, values
