"""Pseudo-label diagnostics from a run's label history: how the labels spread over the identities, how stable they
are, how confident, and (with known truth) how accurate, per epoch; and per unlabeled image its Dataset
Cartography coordinates (Swayamdipta et al., "Dataset Cartography", EMNLP 2020). numpy + scikit-learn only.

The history is what the trainer keeps (``pseudo_history.npz``): per epoch ``e`` and unlabeled image ``i`` the
label it got the last time epoch ``e`` drew it (``labels [E, N_u] int``, -1 = not drawn), the score behind it
(``conf [E, N_u]``) and its margin to the runner-up (``margin [E, N_u]``). Labels outside 0..K-1 (all-in-one's
extra class) count as drawn but on no identity. Records: :mod:`cpl.runs.diagnostics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from cpl.runs.diagnostics import (
    DataMap,
    EpochStats,
    IdentityUsage,
    top_count,
    write_data_map,
    write_epoch_stats,
    write_identity_usage,
)
from cpl.runs.rundir import RunDir

NAN = math.nan


@dataclass
class History:
    """A label history: ``labels [E, N_u] int`` (-1 = not drawn), ``conf`` and ``margin`` ``[E, N_u]`` float
    (read where drawn only; NaN for a margin not recorded), optional ``selected [E, N_u] bool`` (the images the
    confidence selection kept) and ``truth [N_u] int`` (true identity, holdout source)."""

    labels: np.ndarray
    conf: np.ndarray
    margin: np.ndarray
    selected: np.ndarray | None = None
    truth: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------- spread


def identity_counts(labels: np.ndarray, k: int) -> np.ndarray:
    """Images per identity ``[K] int64`` of one epoch's ``labels [N_u]`` (labels outside 0..K-1 ignored)."""
    on = labels[(labels >= 0) & (labels < k)]
    return np.bincount(on.astype(np.int64), minlength=k)[:k]


def normalised_entropy(counts: np.ndarray) -> float:
    """Entropy of the histogram ``counts [K]`` divided by log K: 1 uniform, 0 all on one; NaN when empty or K < 2."""
    total, k = counts.sum(), len(counts)
    if total == 0 or k < 2:
        return NAN
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum() / math.log(k))


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of ``counts [K]`` (zeros included): 0 uniform, (K-1)/K all on one; NaN when empty."""
    total, k = counts.sum(), len(counts)
    if total == 0:
        return NAN
    x = np.sort(counts).astype(np.float64)
    return float(2 * (np.arange(1, k + 1) * x).sum() / (k * total) - (k + 1) / k)


def top_share(counts: np.ndarray) -> float:
    """Share of the images on the 10 % most chosen identities (``top_count(K)`` of them); NaN when empty."""
    total = counts.sum()
    if total == 0:
        return NAN
    return float(np.sort(counts)[::-1][: top_count(len(counts))].sum() / total)


def lorenz(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Lorenz curve of ``counts [K]``: share of identities (x, ascending by count) against the cumulative share
    of images they hold (y); both ``[K + 1]`` float64 from (0, 0) to (1, 1). The diagonal is a uniform spread."""
    k, total = len(counts), max(int(counts.sum()), 1)
    x = np.arange(k + 1) / max(k, 1)
    y = np.concatenate([[0.0], np.cumsum(np.sort(counts)) / total])
    return x, y


# ---------------------------------------------------------------------------------------------- stability


def changed(prev: np.ndarray, cur: np.ndarray) -> tuple[int, float]:
    """Images drawn in both epochs (``[N_u]`` labels each) whose label differs: (count, share of those drawn in
    both; NaN when none was)."""
    both = (prev >= 0) & (cur >= 0)
    n = int(both.sum())
    flips = int((prev[both] != cur[both]).sum())
    return flips, (flips / n if n else NAN)


def last_change_epoch(labels: np.ndarray) -> np.ndarray:
    """Per image ``[N_u] int64``: the last epoch whose label differs from the one before (both drawn); -1 never."""
    last = np.full(labels.shape[1], -1, dtype=np.int64)
    for e in range(1, len(labels)):
        flip = (labels[e] >= 0) & (labels[e - 1] >= 0) & (labels[e] != labels[e - 1])
        last[flip] = e
    return last


# ---------------------------------------------------------------------------------------------- per epoch


def _median(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else NAN


def _mean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else NAN


def _truth_stats(label: np.ndarray, truth: np.ndarray, selected: np.ndarray | None) -> dict:
    """Accuracy (among all and among the selected), NMI and ARI of the drawn images' ``label`` vs ``truth``."""
    if not len(label):
        return {"acc": NAN, "acc_selected": NAN, "nmi": NAN, "ari": NAN}
    right = label == truth
    sel = right[selected] if selected is not None else np.zeros(0)
    return {"acc": float(right.mean()), "acc_selected": float(sel.mean()) if len(sel) else NAN,
            "nmi": float(normalized_mutual_info_score(truth, label)), "ari": float(adjusted_rand_score(truth, label))}


def epoch_stats(h: History, k: int, e: int) -> EpochStats:
    """The statistics of epoch ``e`` of history ``h`` over ``k`` identities (docs on :class:`EpochStats`)."""
    lab = h.labels[e]
    seen = lab >= 0
    counts = identity_counts(lab, k)
    n_seen = int(seen.sum())
    flips, flip_frac = changed(h.labels[e - 1], lab) if e > 0 else (0, NAN)
    sel = h.selected[e][seen] if h.selected is not None else None
    truth = _truth_stats(lab[seen], h.truth[seen], sel) if h.truth is not None else \
        {"acc": NAN, "acc_selected": NAN, "nmi": NAN, "ari": NAN}
    conf, margin = h.conf[e][seen].astype(np.float64), h.margin[e][seen].astype(np.float64)
    return EpochStats(
        epoch=e, seen=n_seen, k=k, used=int((counts > 0).sum()), used_frac=float((counts > 0).sum() / k) if k else NAN,
        entropy=normalised_entropy(counts), gini=gini(counts), top_share=top_share(counts),
        max_count=int(counts.max()) if k else 0, changed=flips, changed_frac=flip_frac,
        mean_conf=_mean(conf), median_conf=_median(conf), mean_margin=_mean(margin), median_margin=_median(margin),
        selected_frac=float(sel.mean()) if sel is not None and n_seen else NAN, **truth)


def all_epoch_stats(h: History, k: int) -> list[EpochStats]:
    """:func:`epoch_stats` of every epoch of ``h``, in order."""
    return [epoch_stats(h, k, e) for e in range(len(h.labels))]


def identity_usage(h: History, k: int) -> IdentityUsage:
    """Per epoch: images per identity, and per true identity the share of its drawn images labeled with it (NaN
    without truth or without a drawn image of it)."""
    n_e = len(h.labels)
    counts = np.stack([identity_counts(h.labels[e], k) for e in range(n_e)]) if n_e else np.zeros((0, k), np.int64)
    acc = np.full((n_e, k), np.nan, dtype=np.float32)
    if h.truth is not None:
        for e in range(n_e):
            seen = h.labels[e] >= 0
            t = h.truth[seen].astype(np.int64)
            drawn = np.bincount(t, minlength=k)[:k]
            right = np.bincount(t[h.labels[e][seen] == t], minlength=k)[:k]
            with np.errstate(invalid="ignore", divide="ignore"):
                acc[e] = np.where(drawn > 0, right / np.maximum(drawn, 1), np.nan)
    return IdentityUsage(counts=counts, accuracy=acc)


# ---------------------------------------------------------------------------------------------- per image


def data_map(h: History) -> DataMap:
    """Per unlabeled image, over the epochs that drew it: mean and (population) std of the score behind its label,
    how many epochs, its last label and last change, and the share of those epochs it was right (with truth)."""
    seen = h.labels >= 0
    n = seen.sum(0)
    conf = np.where(seen, h.conf.astype(np.float64), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, conf.sum(0) / np.maximum(n, 1), np.nan)
        var = np.where(seen, (h.conf.astype(np.float64) - mean) ** 2, 0.0).sum(0) / np.maximum(n, 1)
    n_u = h.labels.shape[1]
    last_epoch = np.where(n > 0, len(h.labels) - 1 - np.argmax(seen[::-1], axis=0), -1) if len(h.labels) else \
        np.full(n_u, -1)
    label = np.where(last_epoch >= 0, h.labels[np.maximum(last_epoch, 0), np.arange(n_u)], -1) if len(h.labels) \
        else np.full(n_u, -1)
    correct = np.full(n_u, np.nan)
    if h.truth is not None:
        right = (seen & (h.labels == h.truth[None, :])).sum(0)
        correct = np.where(n > 0, right / np.maximum(n, 1), np.nan)
    return DataMap(label=label.astype(np.int64), confidence=mean.astype(np.float32),
                   variability=np.where(n > 0, np.sqrt(var), np.nan).astype(np.float32),
                   epochs_seen=n.astype(np.int64), last_change=last_change_epoch(h.labels),
                   correctness=correct.astype(np.float32))


def write(run: RunDir, h: History, k: int, known: list[EpochStats] = ()) -> list[EpochStats]:
    """Compute every diagnostic of ``h`` over ``k`` identities and write the run's ``pseudo_stats.csv``,
    ``pseudo_identities.npz`` and ``data_map.csv`` (:mod:`cpl.runs.diagnostics`). An epoch's statistics depend on
    that epoch and the one before only, so the rows ``known`` from an earlier call on the same history are kept and
    only the epochs after them computed. Returns every epoch's rows."""
    rows = list(known[: len(h.labels)]) + [epoch_stats(h, k, e) for e in range(len(known), len(h.labels))]
    write_epoch_stats(run.pseudo_stats, rows)
    write_identity_usage(run.pseudo_identities, identity_usage(h, k))
    write_data_map(run.data_map, data_map(h))
    return rows
