"""Validation of everything a URL or a widget can name: run ids and image paths.

A run id from ``?run=`` must be one plain folder name inside the runs root; an image path read from a
run's CSV must resolve (symlinks followed) to a file inside an allowed root. Anything else is refused,
so a hostile query string (``?run=../../etc``) or a crafted CSV cannot make the app read outside.
"""

from __future__ import annotations

from pathlib import Path

from cpl.runs.rundir import SWEEPS_DIR, RunDir, valid_id


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(r) for r in roots)


def safe_run(runs_root: Path, run_id: str | None) -> RunDir | None:
    """The run directory named ``run_id`` under ``runs_root``, or None if the id is invalid or absent."""
    if not run_id or not isinstance(run_id, str) or not valid_id(run_id):
        return None
    root = runs_root.resolve()
    path = (root / run_id).resolve()
    if path.parent != root or not (path / "run.json").is_file():
        return None
    return RunDir(path)


def safe_sweep(runs_root: Path, sweep_id: str | None) -> Path | None:
    """The sweep folder named ``sweep_id``, or None."""
    if not sweep_id or not isinstance(sweep_id, str) or not valid_id(sweep_id):
        return None
    root = (runs_root / SWEEPS_DIR).resolve()
    path = (root / sweep_id).resolve()
    if path.parent != root or not (path / "sweep.json").is_file():
        return None
    return path


def safe_file(run: RunDir, stored: str, roots: list[Path]) -> Path | None:
    """Resolve a path stored in a run's CSV (see run-directory.md) and accept it only inside ``roots``."""
    if not stored or "\x00" in stored:
        return None
    try:
        path = run.resolve(stored).resolve(strict=True)
    except (OSError, RuntimeError):  # missing file, symlink loop
        return None
    resolved_roots = [r.resolve() for r in roots]
    return path if path.is_file() and _inside(path, resolved_roots) else None


def safe_data_dir(name: str | None, roots: list[Path]) -> Path | None:
    """A dataset folder chosen on the Launch page: a direct sub-folder of one of the data roots."""
    if not name or not isinstance(name, str) or "\x00" in name:
        return None
    for root in roots:
        root = root.resolve()
        try:
            path = (root / name).resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if path.is_dir() and path.is_relative_to(root) and path != root:
            return path
    return None
