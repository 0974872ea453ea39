"""The 2-D map of a run (UMAP of train + unlabeled features and the class centers), computed in the run
process so the app only reads it."""

from __future__ import annotations

import os
import warnings

import numpy as np

TRAIN, UNLABELED, CENTER = 0, 1, 2


def umap_layout(train: np.ndarray, train_labels: np.ndarray, unlabeled: np.ndarray, unlabeled_labels: np.ndarray,
                centers: np.ndarray, *, neighbors: int, min_dist: float, max_points: int, seed: int,
                cache_dir: str | None = None) -> dict[str, np.ndarray]:
    """UMAP of L2-normalised features and centers.

    train [N_t, D], unlabeled [N_u, D] normalised float; centers [K, D] raw (normalised here, so they sit on
    the same sphere as the features). Beyond ``max_points`` train + unlabeled points a seeded random subset
    is embedded. Features are first reduced to 50 dimensions with PCA (standard before UMAP; it changes
    little and makes 2048-d features tractable).
    Returns ``xy [N, 2] float32, kind [N] int8, row [N] int32, label [N] int32`` (see run-directory.md).
    """
    if cache_dir:
        os.environ.setdefault("NUMBA_CACHE_DIR", cache_dir)
    rng = np.random.default_rng(seed)
    n_t, n_u = len(train), len(unlabeled)
    rows_t, rows_u = np.arange(n_t), np.arange(n_u)
    if n_t + n_u > max_points:
        share = max_points / (n_t + n_u)
        rows_t = np.sort(rng.choice(n_t, int(n_t * share), replace=False))
        rows_u = np.sort(rng.choice(n_u, int(n_u * share), replace=False)) if n_u else rows_u
    c = centers / np.maximum(np.linalg.norm(centers, axis=1, keepdims=True), 1e-12)
    x = np.concatenate([train[rows_t], unlabeled[rows_u], c]).astype(np.float32)
    kind = np.concatenate([np.full(len(rows_t), TRAIN), np.full(len(rows_u), UNLABELED),
                           np.full(len(c), CENTER)]).astype(np.int8)
    row = np.concatenate([rows_t, rows_u, np.arange(len(c))]).astype(np.int32)
    label = np.concatenate([train_labels[rows_t], unlabeled_labels[rows_u], np.arange(len(c))]).astype(np.int32)
    if x.shape[1] > 50 and len(x) > 50:
        from sklearn.decomposition import PCA
        x = PCA(n_components=50, random_state=seed).fit_transform(x).astype(np.float32)
    import umap  # heavy import (numba): only in the run process, only here

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_neighbors=min(neighbors, len(x) - 1), min_dist=min_dist, random_state=seed,
                            metric="euclidean", n_jobs=1)
        xy = reducer.fit_transform(x).astype(np.float32)
    return {"xy": xy, "kind": kind, "row": row, "label": label}
