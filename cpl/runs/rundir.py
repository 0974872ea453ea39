"""Run directory layout (docs/run-directory.md): paths, ids, creation and listing.

Torch-free: the Streamlit app imports this to find and read runs.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cpl.runs.atomic import _UMASK, write_json, write_text

CACHE_DIR = "_cache"
LOCKS_DIR = "_locks"
SWEEPS_DIR = "sweeps"
RESERVED = {CACHE_DIR, LOCKS_DIR, SWEEPS_DIR}
_ID_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def default_runs_root() -> Path:
    """``$CPL_RUNS_ROOT`` or ``./runs``."""
    return Path(os.environ.get("CPL_RUNS_ROOT", "runs"))


def valid_id(run_id: str) -> bool:
    """A run/sweep id is a single safe path component (no separators, no '..', not a reserved folder)."""
    return bool(_ID_OK.match(run_id)) and ".." not in run_id and run_id not in RESERVED


def slug(text: str) -> str:
    """``text`` reduced to a path-safe fragment of an id: at most 40 characters of ``[A-Za-z0-9._-]``, ``run`` if
    nothing is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:40] or "run"


def new_run_id(name: str, method: str, seed: int, now: float | None = None) -> str:
    """A fresh run id, ``<YYYYmmdd-HHMMSS>-<name>-<method>-s<seed>``, stamped in local time; ``now`` is unix time,
    the current time if not given."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now or time.time()))
    return f"{stamp}-{slug(name)}-{slug(method)}-s{seed}"


def _entry(name: str, doc: str) -> property:
    """A :class:`RunDir` attribute: the path of ``name`` in the run directory (docs/run-directory.md)."""
    return property(lambda self: self.path / name, doc=f"``{name}``: {doc}.")


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory."""

    path: Path

    @property
    def id(self) -> str:
        """The run id: the directory's name."""
        return self.path.name

    @property
    def runs_root(self) -> Path:
        """The runs root the run lives in (its parent folder)."""
        return self.path.parent

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    config = _entry("config.yaml", "the resolved config, the single source of truth of the run")
    run_json = _entry("run.json", "static facts: id, created, argv, method, dataset, sweep, backbone, weights")
    status = _entry("status.json", "live state, stage, progress and heartbeat (cpl.runs.status)")
    log = _entry("log.txt", "stdout + stderr of the run process")
    metrics = _entry("metrics.jsonl", "one JSON record per line: gan / iter / epoch / eval")
    dataset = _entry("dataset.json", "the splits' sizes, K and the dataset's warnings")
    results = _entry("results.json", "the final metrics (percent) and what produced them")
    gan = _entry("gan.json", "the DCGAN the run's unlabeled images came from")
    unlabeled = _entry("unlabeled.csv", "the unlabeled set, one row per image")
    pseudo_labels = _entry("pseudo_labels.csv", "the final assignment of every unlabeled image")
    pseudo_history = _entry("pseudo_history.npz", "each unlabeled image's label and confidence per epoch, [E, U]")
    pseudo_stats = _entry("pseudo_stats.csv", "the pseudo-label statistics of every epoch (cpl.runs.diagnostics)")
    pseudo_identities = _entry("pseudo_identities.npz", "images per identity and accuracy per identity, per epoch")
    data_map = _entry("data_map.csv", "each unlabeled image's mean confidence and variability across epochs")
    retrieval = _entry("retrieval.npz", "each query's top-k gallery rows, distances and AP")
    distances = _entry("distances.npz", "matching / non-matching pair distance histograms and the ROC curve")
    sheets = _entry("visrank", "ranked-list sheets written by `cpl visrank` (PNG)")
    actmaps = _entry("actmaps", "activation-map overlays written by `cpl actmap` (PNG + JSON)")
    onnx = _entry("onnx", "the retrieval feature extractor exported by `cpl export --format onnx`")
    embedding = _entry("embedding.npz", "the UMAP map of train + unlabeled features and the centers")
    features = _entry("features", "per split [N, D] float16 features and their tables, and the centers")
    checkpoints = _entry("checkpoints", "the last two training checkpoints")
    placement = _entry("placement.json", "a Ray sweep cell's attempts (cpl/sweep/on_ray.py)")

    def remove_stale_temp_files(self) -> int:
        """Delete temporary files an atomic write left behind when its process was killed mid-write
        (``.<name>.*.tmp``; the target itself is always whole). Returns how many were removed."""
        stale = [p for p in self.path.rglob(".*.tmp") if p.is_file()]
        for p in stale:
            p.unlink(missing_ok=True)
        return len(stale)

    @property
    def cache_root(self) -> Path:
        """``<runs root>/_cache``: what runs of one root share (trained DCGANs and their samples, compiled code)."""
        return self.runs_root / CACHE_DIR

    def rel(self, file: str | Path) -> str:
        """How a file path is stored in the run's CSV files: relative to the run when under the runs root."""
        p = Path(file).resolve()
        root = self.runs_root.resolve()
        if p.is_relative_to(root):
            return os.path.relpath(p, self.path.resolve())
        return str(p)

    def resolve(self, stored: str) -> Path:
        """Inverse of :meth:`rel`."""
        p = Path(stored)
        return p if p.is_absolute() else (self.path / p)

    def read_json(self, name: str) -> dict | None:
        """A JSON object file of the run; None when it is missing, unreadable, not JSON or not an object."""
        return _json_object(self.path / name)


def create_run(runs_root: Path, run_id: str | None, config_yaml: str, facts: dict) -> RunDir:
    """Make a fresh run directory with its config and ``run.json``; refuses an existing non-empty one.

    Atomic: both files are written into a hidden folder next to it (``.<id>.<random>.tmp``, a name no reader
    lists) that is then renamed to the run's name. The rename succeeds onto nothing or onto an empty folder and
    fails onto a non-empty one, so of two launches creating one id at the same moment (two browser tabs, the app
    and the CLI) exactly one gets it and the other gets :class:`FileExistsError` (:func:`cpl.runs.launch.prepare_run`
    then takes the next free id), and a reader never sees a run folder without its ``run.json``.
    """
    if run_id is not None and not valid_id(run_id):
        raise ValueError(f"run id {run_id!r}: use letters, digits, '.', '_' and '-' only")
    run = RunDir(runs_root / run_id) if run_id else None
    if run is None:
        raise ValueError("a run id is required")
    if _taken(run.path):  # the common case, refused before any work; the rename below decides a race
        raise _exists(run)
    runs_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run.id}.", suffix=".tmp", dir=runs_root))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; a run folder is as readable as any other
        write_text(tmp / run.config.name, config_yaml)
        write_json(tmp / run.run_json.name, {"id": run.id, "created": time.time(), **facts})
        try:
            os.rename(tmp, run.path)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise _exists(run) from None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run


def _taken(path: Path) -> bool:
    """Whether something other than nothing or an empty folder is at ``path``."""
    try:
        if not path.exists() and not path.is_symlink():
            return False
        return path.is_symlink() or not path.is_dir() or any(path.iterdir())
    except OSError:  # there, but unreadable
        return True


def _exists(run: RunDir) -> FileExistsError:
    return FileExistsError(f"{run.path}: run directory exists and is not empty (use `cpl resume` to continue it)")


def _json_object(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):  # ValueError: not UTF-8 or not JSON
        return None
    return data if isinstance(data, dict) else None


def _mtime(path: Path) -> float | None:
    """Modification time, None when the file cannot be stat'ed (absent, or a folder without permission)."""
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def list_runs(runs_root: Path) -> list[RunDir]:
    """Run directories under ``runs_root`` (folders holding a run.json), newest first. Folders that cannot be
    read are left out here (app/health.py reports them), and so are hidden ones (no run id starts with a dot:
    :func:`create_run` builds a run in one before renaming it into place)."""
    try:
        entries = list(runs_root.iterdir())
    except OSError:  # absent, not a folder, or unreadable
        return []
    found = []
    for p in entries:
        if p.name not in RESERVED and not p.name.startswith(".") and p.is_dir():
            mtime = _mtime(p / "run.json")
            if mtime is not None and (p / "run.json").is_file():
                found.append((mtime, RunDir(p)))
    return [run for _, run in sorted(found, key=lambda t: t[0], reverse=True)]
