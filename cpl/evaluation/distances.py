"""Distances of matching and non-matching query × gallery pairs, and the ROC curve they give (fast-reid's
distribution and ROC plots of a test set).

The pairs are those the Market-1501 protocol scores: for a query, a gallery image of the same identity seen by
another camera is a match; one of another identity (distractors, pid 0, included) is a non-match; junk (pid -1)
and the same identity seen by the same camera are left out. Under the leave-one-out protocol of camera-less data
the "cameras" are :func:`cpl.evaluation.metrics.protocol_keys`' (each image its own), so only the query image itself
is left out. The ROC treats "distance ≤ t" as the decision "same
person": true-positive rate over matches, false-positive rate over non-matches, for every threshold t.
"""

from __future__ import annotations

import numpy as np

BINS = 200


def pair_masks(q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray,
               g_camids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(match, non-match) masks [Q, G] bool of the pairs the protocol counts (see the module doc)."""
    same_pid = q_pids[:, None] == g_pids[None, :]
    same_cam = q_camids[:, None] == g_camids[None, :]
    real = (g_pids != -1)[None, :]
    return same_pid & ~same_cam & real, ~same_pid & real


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve of distances ``pos`` [P] (matches) and ``neg`` [N] (non-matches): the probability
    that a random match is closer than a random non-match, ties counting one half (Mann–Whitney)."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    neg_sorted = np.sort(neg, kind="stable")
    farther = len(neg) - np.searchsorted(neg_sorted, pos, side="right")
    tied = np.searchsorted(neg_sorted, pos, side="right") - np.searchsorted(neg_sorted, pos, side="left")
    return float((farther.sum(dtype=np.float64) + 0.5 * tied.sum(dtype=np.float64)) / (len(pos) * len(neg)))


def distance_summary(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray,
                     g_camids: np.ndarray, bins: int = BINS) -> dict[str, np.ndarray]:
    """Histograms and ROC of a query × gallery distance matrix ``distmat`` [Q, G] (smaller = more similar).

    Returns (what ``distances.npz`` holds): ``edges [bins + 1] float32`` spanning the smallest to the largest
    counted distance; ``match_hist``, ``nonmatch_hist`` ``[bins] int64`` pair counts per bin; ``fpr``, ``tpr``
    ``[bins + 1] float64`` the ROC at thresholds ``edges`` (0 before the first edge is added, so it starts at
    (0, 0) and ends at (1, 1)); ``auc`` ``[] float64`` exact (not from the bins); ``match_mean``,
    ``nonmatch_mean`` ``[] float64``. Raises ValueError when there are no matching or no non-matching pairs.
    """
    dist = np.asarray(distmat, dtype=np.float32)
    is_match, is_non = pair_masks(np.asarray(q_pids), np.asarray(g_pids), np.asarray(q_camids),
                                  np.asarray(g_camids))
    pos, neg = dist[is_match], dist[is_non]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"need matching and non-matching pairs, got {len(pos)} and {len(neg)}")
    lo, hi = float(min(pos.min(), neg.min())), float(max(pos.max(), neg.max()))
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1).astype(np.float32)
    match_hist = np.histogram(pos, edges)[0].astype(np.int64)
    nonmatch_hist = np.histogram(neg, edges)[0].astype(np.int64)
    tpr = np.concatenate([[0.0], np.cumsum(match_hist) / len(pos)])
    fpr = np.concatenate([[0.0], np.cumsum(nonmatch_hist) / len(neg)])
    return {"edges": edges, "match_hist": match_hist, "nonmatch_hist": nonmatch_hist, "fpr": fpr, "tpr": tpr,
            "auc": np.float64(auc(pos, neg)), "match_mean": np.float64(pos.mean(dtype=np.float64)),
            "nonmatch_mean": np.float64(neg.mean(dtype=np.float64))}
