"""The ``holdout`` unlabeled source: hide a share of each identity's training images' labels.

Every identity keeps at least one labeled image, so its true class is among the K centers and the
pseudo-labels of the hidden images can be graded against the truth (FAPL's reduced-label setting).
"""

from __future__ import annotations

import numpy as np


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split training rows into (kept labeled rows, hidden rows), both sorted int64 index arrays.

    labels [N] int64 class per training image. For an identity with n images, round(fraction · n) are
    hidden, capped at n − 1. Deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    keep, hide = [], []
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        n_hide = min(int(round(fraction * len(rows))), len(rows) - 1)
        rows = rng.permutation(rows)
        hide.append(rows[:n_hide])
        keep.append(rows[n_hide:])
    return np.sort(np.concatenate(keep)).astype(np.int64), np.sort(np.concatenate(hide)).astype(np.int64)
