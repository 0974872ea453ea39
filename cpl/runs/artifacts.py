"""Writers of the run directory's tables (docs/run-directory.md): what the stages hand over, in the files the app
reads. numpy in, CSV/JSON/NPY out, every file written atomically; torch-free.

Paths inside the tables are relative to the runs root where possible (:meth:`RunDir.rel`), so a runs root can move.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from cpl.runs.atomic import write_json, write_npy, write_text
from cpl.runs.rundir import RunDir

GAN_RECORD_KEYS = ("key", "config", "seed", "epochs_done", "train_time_s", "num_images", "samples", "quality")


def _csv(header: list[str], rows) -> str:
    buf = io.StringIO()
    wr = csv.writer(buf)
    wr.writerow(header)
    wr.writerows(rows)
    return buf.getvalue()


def write_gan_record(run: RunDir, info: dict) -> dict:
    """``gan.json``: the run's copy of its DCGAN's cache record (the app reads run directories only). Returns it."""
    record = {k: info[k] for k in GAN_RECORD_KEYS if k in info}
    write_json(run.gan, record)
    return record


def write_unlabeled_csv(run: RunDir, paths: list[str], source: str, truth: np.ndarray | None,
                        label_to_pid: np.ndarray) -> None:
    """``unlabeled.csv``: one row per unlabeled image; ``truth`` ``[M] int64`` is its true class (holdout only),
    ``label_to_pid`` ``[K]`` maps a class index to the dataset's person id."""
    rows = []
    for i, p in enumerate(paths):
        t = int(truth[i]) if truth is not None else -1
        rows.append([i, run.rel(p), source, t, int(label_to_pid[t]) if t >= 0 else ""])
    write_text(run.unlabeled, _csv(["index", "path", "source", "true_label", "true_pid"], rows))


def write_split(run: RunDir, name: str, paths: list[str], pids: np.ndarray, camids: np.ndarray,
                features: np.ndarray, labels: np.ndarray | None = None) -> None:
    """``features/<name>.npy`` (``[N, D]`` float16, L2-normalised) and ``features/<name>.csv`` (path, pid, camid
    and, for the training split, the class index ``label``), row for row."""
    write_npy(run.features / f"{name}.npy", features.astype(np.float16))
    rows = [[run.rel(p), int(pids[i]), int(camids[i])] + ([int(labels[i])] if labels is not None else [])
            for i, p in enumerate(paths)]
    write_text(run.features / f"{name}.csv", _csv(["path", "pid", "camid"] + (["label"] if labels is not None
                                                                                else []), rows))


@dataclass
class PseudoLabels:
    """The final assignment of every unlabeled image, ``[M]`` arrays. Class indices are 0..K-1; -1 = none."""

    paths: list[str]
    nearest: np.ndarray  # int64: the nearest class center by cosine (CPL's label)
    cos: np.ndarray  # float32: its cosine (NaN when there is no valid center)
    runner_up: np.ndarray  # int64: the second-nearest center
    runner_up_cos: np.ndarray  # float32
    last_change: np.ndarray  # int64: the last epoch whose training-time label differed from the one before; -1 never
    method_label: np.ndarray  # int64: the method's own target (its argmax); K = the extra "GAN" class, -1 none
    method_conf: np.ndarray  # float32: the method's target probability of that label
    truth: np.ndarray | None  # int64: the true class (holdout only)


def write_pseudo_labels(run: RunDir, p: PseudoLabels, label_to_pid: np.ndarray) -> None:
    """``pseudo_labels.csv``: one row per unlabeled image (docs/run-directory.md lists the columns)."""
    k = len(label_to_pid)
    rows = []
    for i, path in enumerate(p.paths):
        c1, c2 = float(p.cos[i]), float(p.runner_up_cos[i])
        ok, ok2 = np.isfinite(c1), np.isfinite(c2)
        t = int(p.truth[i]) if p.truth is not None else -1
        ml = int(p.method_label[i])
        nearest = int(p.nearest[i])
        rows.append([i, run.rel(path), nearest if ok else -1, int(label_to_pid[nearest]) if ok else "",
                     f"{c1:.5f}" if ok else "", int(p.runner_up[i]) if ok2 else -1,
                     int(label_to_pid[p.runner_up[i]]) if ok2 else "", f"{c2:.5f}" if ok2 else "",
                     f"{c1 - c2:.5f}" if ok and ok2 else "", int(p.last_change[i]),
                     ml if 0 <= ml < k else (-2 if ml == k else -1), f"{float(p.method_conf[i]):.5f}",
                     t if t >= 0 else "", (int(nearest == t) if ok else 0) if t >= 0 else ""])
    header = ["index", "path", "label", "pid", "cos", "runner_up", "runner_up_pid", "runner_up_cos", "margin",
              "last_change_epoch", "method_label", "method_conf", "true_label", "correct"]
    write_text(run.pseudo_labels, _csv(header, rows))
