"""What is wrong with a run directory, as data: the Runs and Compare pages mark damaged runs with it.

A runs folder collects damage over the years: a copy interrupted half-way, a file edited by hand, a disk that
filled up under an old version, permissions of another user, an artifact deleted to save space. Every run is
checked on every render of the Runs page, so each check is cheap: a stat, a small JSON/YAML parse, a ``.npy``
header (never the array), a CSV row count (cached by the file's modification time and size).

A :class:`Problem` names the file (relative to the run directory; ``.`` for the directory itself) and what
is wrong with it in a few words. :func:`drawn_unless_damaged` keeps a damaged run's view free of tracebacks.
Torch-free.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st
import yaml

from cpl.runs.rundir import RESERVED, RunDir
from cpl.runs.state import ACTIVE, FINAL, State, parse

FEATURE_SPLITS = ("train", "query", "gallery")  # features/<split>.npy rows match features/<split>.csv rows


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file of a run directory; ``str()`` gives ``<file>: <what>``."""

    file: str  # relative to the run directory, "." for the directory itself
    what: str  # a few words: "missing", "not valid JSON", "unreadable (Permission denied)", ...

    def __str__(self) -> str:
        return f"{self.file}: {self.what}"


def _stamp(path: Path) -> tuple[float, int]:
    s = path.stat()
    return s.st_mtime, s.st_size


def _unreadable(exc: OSError) -> str:
    return f"unreadable ({exc.strerror or type(exc).__name__})"


def load_json(path: Path) -> tuple[object, str | None]:
    """(parsed content, None) or (None, what is wrong): missing, unreadable, not valid JSON."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, _unreadable(exc)
    try:
        return json.loads(text.decode("utf-8")), None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, "not valid JSON" if text else "empty"


def load_object(path: Path, required: bool) -> tuple[dict | None, Problem | None]:
    """A JSON file that must hold an object; a missing optional file is no problem."""
    data, what = load_json(path)
    if what == "missing" and not required:
        return None, None
    if what is None and not isinstance(data, dict):
        what = f"not a JSON object ({type(data).__name__})"
    return (data, None) if what is None else (None, Problem(path.name, what))


# libyaml's parser when PyYAML was built with it: a run's config parses ~10x faster, which is what lets the
# Runs page check hundreds of runs per render.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str):
    """``yaml.safe_load`` with the fastest safe loader available."""
    return yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a SafeLoader


@functools.lru_cache(maxsize=4096)
def _config(path: str, version: tuple) -> tuple[dict | None, str | None]:
    try:
        data = parse_yaml(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        return None, _unreadable(exc)
    except (ValueError, yaml.YAMLError):  # ValueError: not UTF-8
        return None, "not valid YAML"
    if not isinstance(data, dict):
        return None, f"not a mapping ({type(data).__name__})"
    return data, None


def load_config(path: Path) -> tuple[dict | None, Problem | None]:
    """config.yaml as a mapping, or what is wrong with it (parsed once per version of the file)."""
    try:
        data, what = _config(str(path), _stamp(path))
    except FileNotFoundError:
        return None, Problem(path.name, "missing")
    except OSError as exc:
        return None, Problem(path.name, _unreadable(exc))
    return (data, None) if what is None else (None, Problem(path.name, what))


def is_number(value: object) -> bool:
    """Whether ``value`` is a finite int or float (a bool, NaN or infinity is not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def status_problems(status: dict) -> list[Problem]:
    """Fields of status.json the app relies on, with the wrong type or value."""
    out = []
    if parse(State, status.get("state")) not in ACTIVE | FINAL:
        out.append(Problem("status.json", f"unknown state {str(status.get('state'))[:20]!r}"))
    for key in ("progress", "heartbeat", "pid"):
        if status.get(key) is not None and not is_number(status[key]):
            out.append(Problem("status.json", f"{key} is not a number"))
    return out


def results_problems(results: dict) -> list[Problem]:
    """The headline metrics of results.json must be numbers."""
    return [Problem("results.json", f"{key} is not a number") for key in ("rank1", "mAP")
            if not is_number(results.get(key))]


@functools.lru_cache(maxsize=8192)
def _npy_shape(path: str, version: tuple) -> tuple[int, ...] | str:
    """The shape in a .npy header (the array is not read), or what is wrong."""
    try:
        with open(path, "rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, _ = read(fh)
    except (ValueError, EOFError):
        return "not a .npy file"
    except OSError as exc:
        return _unreadable(exc)
    return tuple(shape)


@functools.lru_cache(maxsize=8192)
def _csv_rows(path: str, version: tuple) -> int | str:
    """Data rows of a CSV file with a header line, or what is wrong."""
    try:
        with open(path, "rb") as fh:
            return max(sum(1 for line in fh if line.strip()) - 1, 0)
    except OSError as exc:
        return _unreadable(exc)


@functools.lru_cache(maxsize=4096)
def _zip_ok(path: str, version: tuple) -> bool:
    return zipfile.is_zipfile(path)


def _cached(fn, path: Path):
    """``fn(path, version)`` cached by the file's modification time and size; 'missing' when it is absent."""
    try:
        return fn(str(path), _stamp(path))
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return _unreadable(exc)


def features_problems(run: RunDir) -> list[Problem]:
    """features/*.npy: readable headers, [N, D] with one D for all (centers [K, D] too), and as many rows as
    the split's CSV."""
    out, dims = [], {}
    for name in (*FEATURE_SPLITS, "unlabeled", "centers"):
        rel = f"features/{name}.npy"
        shape = _cached(_npy_shape, run.features / f"{name}.npy")
        if isinstance(shape, str):
            out.append(Problem(rel, shape))
        elif len(shape) != 2:
            out.append(Problem(rel, f"shape {shape}, expected [N, D]"))
        else:
            dims[name] = shape
    if len({shape[1] for shape in dims.values()}) > 1:
        out.append(Problem("features", "feature dimensions differ: " +
                           ", ".join(f"{n} {s[1]}" for n, s in dims.items())))
    for name in FEATURE_SPLITS:
        rows = _cached(_csv_rows, run.features / f"{name}.csv")
        if isinstance(rows, str):
            out.append(Problem(f"features/{name}.csv", rows))
        elif name in dims and dims[name][0] != rows:
            out.append(Problem(f"features/{name}.npy", f"{dims[name][0]} rows but {name}.csv has {rows}"))
    return out


def artifact_problems(run: RunDir, config: dict, results: dict) -> list[Problem]:
    """What a finished run must have written besides results.json (docs/run-directory.md)."""
    needed = [run.metrics, run.dataset, run.retrieval]
    if (config.get("eval") or {}).get("umap"):
        needed.append(run.embedding)
    if is_number(results.get("num_unlabeled")) and results["num_unlabeled"] > 0:
        needed.append(run.pseudo_labels)
    out = []
    for path in needed:
        if not path.exists():
            out.append(Problem(path.name, "missing"))
        elif not path.is_file():
            out.append(Problem(path.name, "not a file"))
    for path in (run.retrieval, run.embedding):
        if path.is_file() and _cached(_zip_ok, path) is False:
            out.append(Problem(path.name, "not a .npz file"))
    return out + features_problems(run)


def run_problems(run: RunDir) -> list[Problem]:
    """Everything wrong with a listed run directory (one holding a run.json); [] for a healthy one."""
    _, run_json = load_object(run.run_json, required=True)
    config, config_yaml = load_config(run.config)
    status, status_json = load_object(run.status, required=False)
    finished = (status or {}).get("state") == State.FINISHED
    results, results_json = load_object(run.results, required=finished)
    out = [p for p in (run_json, config_yaml, status_json, results_json) if p]
    if status is not None:
        out += status_problems(status)
    if results is not None:
        out += results_problems(results)
    out += [p for p in (load_object(path, required=False)[1] for path in (run.dataset, run.gan)) if p]
    if finished:
        out += artifact_problems(run, config or {}, results or {})
    return out


def stray_entries(runs_root: Path, listed: set[str]) -> dict[str, Problem]:
    """Entries of the runs root that should be runs but cannot be listed as one, by name: a file where a run
    directory belongs, a broken link, an unreadable folder, a folder without run.json. Hidden names and the
    reserved folders (_cache, _locks, sweeps) are not runs."""
    out = {}
    try:
        entries = list(runs_root.iterdir())
    except OSError:
        return out
    for path in entries:
        if path.name in listed or path.name in RESERVED or path.name.startswith("."):
            continue
        problem = _entry_problem(path)
        if problem is not None:
            out[path.name] = problem
    return dict(sorted(out.items()))


def _entry_problem(path: Path) -> Problem | None:
    if path.is_symlink() and not path.exists():
        return Problem(".", "broken link")
    if not path.is_dir():
        return Problem(".", "not a directory")
    try:
        (path / "run.json").stat()
    except FileNotFoundError:
        return Problem("run.json", "missing")
    except OSError as exc:
        return Problem(".", _unreadable(exc))
    return None


@contextlib.contextmanager
def drawn_unless_damaged(problems: list[Problem], part: str):
    """Draw one part of a run's view. On a damaged run (``problems`` non-empty) a part its files cannot feed is
    replaced by a note instead of a traceback, whatever the damage; on a healthy run an error still raises:
    that is a bug to see, not damage to tolerate."""
    if not problems:
        yield
        return
    try:
        yield
    except Exception as exc:  # any shape of damaged data; Streamlit's rerun/stop are BaseExceptions, not caught
        st.caption(f"{part}: not shown, the run directory is damaged ({type(exc).__name__}).")
