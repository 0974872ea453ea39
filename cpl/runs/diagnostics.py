"""The pseudo-label diagnostics files of a run directory (docs/run-directory.md): typed records, their writers and
their readers. Torch-free and pandas-free: the run writes them (:mod:`cpl.pseudo.diagnostics` computes them), the
app and ``tools/pseudo_label_stats.py`` read them.

* ``pseudo_stats.csv``       one :class:`EpochStats` row per training epoch (spread, stability, confidence, truth)
* ``pseudo_identities.npz``  :class:`IdentityUsage`: images per identity and accuracy per true identity, per epoch
* ``data_map.csv``           one :class:`DataMap` row per unlabeled image (Dataset Cartography)

A reader returns None for a missing, truncated or hand-damaged file (never raises), so a page says so.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from cpl.runs.atomic import write_npz, write_text

# What the app calls a collapse (documented in docs/run-directory.md): the 10 % most chosen identities hold at
# least half of the images of an epoch (5x their fair share), or fewer than a quarter of the identities get any.
COLLAPSE_TOP_SHARE = 0.5
COLLAPSE_USED_FRAC = 0.25
TOP_FRACTION = 0.1  # "the top 10 % identities"


def top_count(k: int) -> int:
    """How many identities "the top 10 %" of ``k`` is: ``max(1, k // 10)``."""
    return max(1, int(k * TOP_FRACTION))


@dataclass(frozen=True)
class EpochStats:
    """The pseudo-labels of one epoch: the label each unlabeled image got the last time the epoch drew it.

    Counts are images; shares are fractions in [0, 1]; NaN where a value is undefined (no image drawn, no
    previous epoch to compare with, no selection threshold set, no known truth)."""

    epoch: int  # 0-based
    seen: int  # unlabeled images drawn (and labeled) this epoch
    k: int  # identities (classes) a label can take
    used: int  # identities given at least one image
    used_frac: float  # used / k
    entropy: float  # entropy of the label histogram over the k identities / log k (1 = uniform, 0 = one identity)
    gini: float  # Gini coefficient of the k per-identity counts (0 = uniform, (k-1)/k = all on one)
    top_share: float  # share of the images on the top_count(k) most chosen identities
    max_count: int  # images on the most chosen identity
    changed: int  # images drawn in this and the previous epoch whose label differs
    changed_frac: float  # changed / images drawn in both epochs
    mean_conf: float  # mean score behind the label (cosine to the center for center-based methods)
    median_conf: float
    mean_margin: float  # mean cosine margin of the nearest center over the runner-up
    median_margin: float
    selected_frac: float  # share of the drawn images selected by the confidence threshold (NaN: none set)
    acc: float  # share of the drawn images whose label is their true identity (holdout)
    acc_selected: float  # the same among the selected images
    nmi: float  # normalised mutual information, labels vs true identities (scikit-learn, arithmetic mean)
    ari: float  # adjusted Rand index, labels vs true identities (scikit-learn)

    def collapsed(self) -> bool:
        """Whether this epoch's labels sit on a few identities (:data:`COLLAPSE_TOP_SHARE`,
        :data:`COLLAPSE_USED_FRAC`)."""
        return self.seen > 0 and (self.top_share >= COLLAPSE_TOP_SHARE or self.used_frac < COLLAPSE_USED_FRAC)


STATS_COLUMNS = tuple(f.name for f in fields(EpochStats))
_INT_COLUMNS = {f.name for f in fields(EpochStats) if f.type == "int"}


@dataclass
class IdentityUsage:
    """Per epoch and identity: ``counts [E, K] int32`` images labeled with the identity, ``accuracy [E, K]
    float32`` the share of the images whose true identity it is that got it as label (NaN: none drawn, or
    no truth)."""

    counts: np.ndarray
    accuracy: np.ndarray


@dataclass
class DataMap:
    """Per unlabeled image ``[N_u]``, across the epochs that drew it (Swayamdipta et al., EMNLP 2020)."""

    label: np.ndarray  # int64 its label in the last epoch that drew it, -1 never drawn
    confidence: np.ndarray  # float32 mean score behind its label (NaN: never drawn)
    variability: np.ndarray  # float32 population std of that score across those epochs
    epochs_seen: np.ndarray  # int64 epochs that drew it
    last_change: np.ndarray  # int64 last epoch whose label differs from the one before; -1 never
    correctness: np.ndarray  # float32 share of those epochs whose label was its true identity (NaN: no truth)

    COLUMNS = ("index", "label", "confidence", "variability", "epochs_seen", "last_change_epoch", "correctness")


def _num(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"


def write_epoch_stats(path: Path, rows: list[EpochStats]) -> None:
    """``pseudo_stats.csv``: a header of :data:`STATS_COLUMNS`, one row per epoch; empty cells are NaN."""
    buf = io.StringIO()
    wr = csv.writer(buf)
    wr.writerow(STATS_COLUMNS)
    for r in rows:
        wr.writerow([getattr(r, c) if c in _INT_COLUMNS else _num(getattr(r, c)) for c in STATS_COLUMNS])
    write_text(path, buf.getvalue())


def _parse_row(row: dict) -> EpochStats:
    out = {}
    for c in STATS_COLUMNS:
        text = row[c]
        out[c] = int(text) if c in _INT_COLUMNS else (float(text) if text != "" else math.nan)
    return EpochStats(**out)


def read_epoch_stats(path: Path) -> list[EpochStats] | None:
    """The rows of ``pseudo_stats.csv``; None when it is missing or damaged (columns or values wrong)."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != STATS_COLUMNS:
                return None
            return [_parse_row(row) for row in reader]
    except (OSError, ValueError, TypeError, KeyError, csv.Error):  # TypeError: a short row's missing cell
        return None


def write_identity_usage(path: Path, usage: IdentityUsage) -> None:
    """``pseudo_identities.npz``: ``counts [E, K] int32``, ``accuracy [E, K] float32``."""
    write_npz(path, counts=usage.counts.astype(np.int32), accuracy=usage.accuracy.astype(np.float32))


def read_identity_usage(path: Path) -> IdentityUsage | None:
    """``pseudo_identities.npz``; None when missing, truncated or of inconsistent shapes."""
    try:
        with np.load(path, allow_pickle=False) as z:
            counts, acc = z["counts"], z["accuracy"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if counts.ndim != 2 or acc.shape != counts.shape:
        return None
    return IdentityUsage(counts=counts, accuracy=acc)


def write_data_map(path: Path, m: DataMap) -> None:
    """``data_map.csv``: one row per unlabeled image, :attr:`DataMap.COLUMNS`; empty cells are NaN."""
    buf = io.StringIO()
    wr = csv.writer(buf)
    wr.writerow(DataMap.COLUMNS)
    for i in range(len(m.label)):
        wr.writerow([i, int(m.label[i]), _num(float(m.confidence[i])), _num(float(m.variability[i])),
                     int(m.epochs_seen[i]), int(m.last_change[i]), _num(float(m.correctness[i]))])
    write_text(path, buf.getvalue())


def read_data_map(path: Path) -> DataMap | None:
    """``data_map.csv``; None when missing or damaged."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            if tuple(next(reader, ())) != DataMap.COLUMNS:
                return None
            rows = list(reader)
    except (OSError, ValueError, csv.Error):
        return None
    if any(len(r) != len(DataMap.COLUMNS) for r in rows) or [r[0] for r in rows] != [str(i) for i in range(len(rows))]:
        return None

    def col(j: int, dtype) -> np.ndarray:
        return np.array([float(r[j]) if r[j] != "" else math.nan for r in rows], dtype=dtype)

    try:
        return DataMap(label=col(1, np.int64), confidence=col(2, np.float32), variability=col(3, np.float32),
                       epochs_seen=col(4, np.int64), last_change=col(5, np.int64), correctness=col(6, np.float32))
    except ValueError:
        return None


SWEEP_COLUMNS = ("pl_ids_used", "pl_top10", "pl_changed", "pl_nmi")


def sweep_columns(rows: list[EpochStats]) -> dict:
    """A sweep cell's pseudo-label columns of ``runs.csv`` from its ``pseudo_stats.csv`` rows: of the last epoch
    that drew unlabeled images, identities used and the share on the top 10 % identities (spread), labels
    changed (stability), in percent, and the NMI with the truth (0–1, NaN without); {} when no epoch drew any."""
    drawn = [r for r in rows if r.seen > 0]
    if not drawn:
        return {}
    last = drawn[-1]
    return dict(zip(SWEEP_COLUMNS, (100 * last.used_frac, 100 * last.top_share, 100 * last.changed_frac, last.nmi)))
