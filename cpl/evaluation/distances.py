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
    pairs = PairDistances(q_pids, g_pids, q_camids, g_camids, bins)
    for step in (pairs.first, pairs.second):
        step(distmat)
    return pairs.result()


class PairDistances:
    """:func:`distance_summary` of a [Q, G] matrix fed as consecutive row blocks, one block in memory at a time, in
    two passes over the same blocks (:meth:`first`: every block, then :meth:`second`: every block again), since the
    histogram's edges span all the distances. The match distances are few (a handful per query) and kept; the
    non-match ones (almost the whole matrix) are only counted: their histogram, their minimum, maximum and sum, and
    per block how many matches each one is farther than, which sums to the Mann–Whitney count of :func:`auc`, so the
    AUC is exact. Everything equals :func:`distance_summary` of the whole matrix except ``nonmatch_mean``, a sum
    taken in another order (agrees to ~1e-15 relative)."""

    def __init__(self, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray, g_camids: np.ndarray,
                 bins: int = BINS):
        self.q_pids, self.q_cams = np.asarray(q_pids), np.asarray(q_camids)
        self.g_pids, self.g_cams = np.asarray(g_pids), np.asarray(g_camids)
        self.bins, self.row, self.passes = bins, 0, 0
        self.pos: list[np.ndarray] = []
        self.neg_n, self.neg_sum, self.lo, self.hi = 0, 0.0, np.inf, -np.inf
        self.nonmatch_hist = np.zeros(bins, dtype=np.int64)
        self.farther, self.tied = 0, 0

    def _masks(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dist = np.asarray(block, dtype=np.float32)
        rows = slice(self.row, self.row + dist.shape[0])
        self.row = rows.stop
        return (dist, *pair_masks(self.q_pids[rows], self.g_pids, self.q_cams[rows], self.g_cams))

    def first(self, block: np.ndarray) -> None:
        """The next rows ``block`` [R, G], first pass: keep the match distances, count the non-match ones."""
        dist, is_match, is_non = self._masks(block)
        self.pos.append(dist[is_match])
        neg = dist[is_non]
        if len(neg):
            self.neg_n += len(neg)
            self.neg_sum += float(neg.sum(dtype=np.float64))
            self.lo, self.hi = min(self.lo, float(neg.min())), max(self.hi, float(neg.max()))

    def second(self, block: np.ndarray) -> None:
        """The same rows again, second pass: the non-match histogram and the AUC's counts."""
        if self.passes == 0:  # the first block of the second pass
            if self.row != len(self.q_pids):
                raise ValueError(f"PairDistances: the first pass stopped at row {self.row} of {len(self.q_pids)}")
            self.row, self.passes = 0, 1
            self._edges()
        dist, _, is_non = self._masks(block)
        # Sorting the block's non-match distances and looking the few matches up in them counts the same pairs as
        # looking every non-match up among the matches, and is far faster: a vectorised sort instead of a
        # cache-missing binary search per non-match (MSMT17's evaluation: 321 s before, 94 s after;
        # docs/performance.md).
        neg = np.sort(dist[is_non])
        self.nonmatch_hist += np.histogram(neg, self.edges)[0]
        right = np.searchsorted(neg, self.pos, side="right")  # non-matches no farther than each match
        self.farther += int((len(neg) - right).sum(dtype=np.int64))
        self.tied += int((right - np.searchsorted(neg, self.pos, side="left")).sum(dtype=np.int64))

    def _edges(self) -> None:
        pos = np.concatenate(self.pos) if self.pos else np.zeros(0, dtype=np.float32)
        if len(pos) == 0 or self.neg_n == 0:
            raise ValueError(f"need matching and non-matching pairs, got {len(pos)} and {self.neg_n}")
        self.pos = pos
        lo, hi = float(min(pos.min(), self.lo)), float(max(pos.max(), self.hi))
        self.edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, self.bins + 1).astype(np.float32)

    def result(self) -> dict[str, np.ndarray]:
        """:func:`distance_summary`'s dict, after both passes."""
        if self.passes != 1 or self.row != len(self.q_pids):
            raise ValueError("PairDistances: both passes over every row are needed")
        pos, edges = self.pos, self.edges
        match_hist = np.histogram(pos, edges)[0].astype(np.int64)
        tpr = np.concatenate([[0.0], np.cumsum(match_hist) / len(pos)])
        fpr = np.concatenate([[0.0], np.cumsum(self.nonmatch_hist) / self.neg_n])
        auc_value = (float(self.farther) + 0.5 * float(self.tied)) / (len(pos) * self.neg_n)
        return {"edges": edges, "match_hist": match_hist, "nonmatch_hist": self.nonmatch_hist, "fpr": fpr,
                "tpr": tpr, "auc": np.float64(auc_value), "match_mean": np.float64(pos.mean(dtype=np.float64)),
                "nonmatch_mean": np.float64(self.neg_sum / self.neg_n)}
