"""A sweep's grid: its cells (method × GAN-image count × seed), ``sweep.json``, and each cell's run directory
and command. Torch-free: the app creates sweeps with it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from cpl import PROG
from cpl.config import Config, ConfigError, fast_dev_run, from_dict, load_config, to_dict
from cpl.data.dataset import DatasetError
from cpl.data.formats import AUTO, resolve
from cpl.methods import BASELINE, METHOD_NAMES, has_own_zero_row, needs_unlabeled
from cpl.models.weights import resolve as resolve_weights
from cpl.runs.atomic import write_json
from cpl.runs.launch import prepare_run
from cpl.runs.rundir import SWEEPS_DIR, RunDir, new_run_id, slug, valid_id
from cpl.runs.status import read_status


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: a method trained with ``gan_images`` unlabeled images (0 = none) under one seed."""

    method: str
    gan_images: int
    seed: int

    def run_id(self, sweep_id: str) -> str:
        """The cell's run id, ``<sweep id>--<method>-g<gan_images>-s<seed>``."""
        return f"{sweep_id}--{self.method}-g{self.gan_images}-s{self.seed}"


def plan_cells(methods: list[str], gan_images: list[int], seeds: list[int]) -> list[Cell]:
    """Grid cells: the labeled-only methods (baseline, center) once per seed with 0 GAN images; the others per
    count > 0 and seed.

    A count of 0 for a pseudo-labeling method *is* the baseline, so it is not run again; the baseline row
    comes from :data:`~cpl.methods.BASELINE` (added to the grid when 0 is among the counts).
    """
    cells: list[Cell] = []
    want_baseline = 0 in gan_images or BASELINE in methods
    own_zero = [m for m in METHOD_NAMES if m in methods and has_own_zero_row(m)]  # table order, once each
    for seed in seeds:
        if want_baseline:
            cells.append(Cell(BASELINE, 0, seed))
        for m in own_zero:
            cells.append(Cell(m, 0, seed))
        for g in sorted(set(gan_images) - {0}):
            for m in methods:
                if needs_unlabeled(m):
                    cells.append(Cell(m, g, seed))
    return cells


def sweep_dir(runs_root: Path, sweep_id: str) -> Path:
    """The sweep's folder, ``<runs root>/sweeps/<sweep id>``."""
    return runs_root / SWEEPS_DIR / sweep_id


def create_sweep(runs_root: Path, config_path: str, methods: list[str], gan_images: list[int], seeds: list[int],
                 overrides: list[str], sweep_id: str | None = None, fast: bool = False) -> Path:
    """Validate the grid and write ``sweep.json`` (torch-free; the app calls it). Returns the sweep folder."""
    for m in methods:
        if m not in METHOD_NAMES:
            raise ConfigError(f"--methods: unknown method {m!r} (choose from {', '.join(METHOD_NAMES)})")
    for g in gan_images:
        if g < 0:
            raise ConfigError(f"--gan-images: counts must be >= 0, got {g}")
    base = load_config(config_path, overrides)
    if fast:
        base = fast_dev_run(base)
    resolve_weights(base.model.backbone, base.model.pretrained)  # refuse the whole grid up front, in one line
    pin_format(base)
    sweep_id = sweep_id or new_run_id(f"sweep-{base.name}", "grid", seeds[0])
    if not valid_id(sweep_id):
        raise ConfigError(f"--sweep-id: {sweep_id!r} is not a valid folder name")
    folder = sweep_dir(runs_root, sweep_id)
    spec = {"id": sweep_id, "config": to_dict(base), "config_path": str(config_path), "overrides": overrides,
            "methods": methods, "gan_images": gan_images, "seeds": seeds, "fast_dev_run": fast,
            "cells": [dict(c.__dict__, run_id=c.run_id(sweep_id))
                      for c in plan_cells(methods, gan_images, seeds)]}
    existing = folder / "sweep.json"
    if existing.is_file():
        old = yaml.safe_load(existing.read_text())
        if {k: old.get(k) for k in ("methods", "gan_images", "seeds")} != {k: spec[k] for k in
                                                                         ("methods", "gan_images", "seeds")}:
            raise ConfigError(f"--sweep-id: {sweep_id} exists with a different grid; pick another id")
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    write_json(existing, spec)
    return folder


def pin_format(base: Config) -> None:
    """Resolve ``data.kind: auto`` once for the whole grid (every cell then reads the dataset as the same format,
    and sweep.json says which); a folder no format recognises refuses the grid, naming ``data.root``."""
    if base.data.kind != AUTO:
        return
    try:
        base.data.kind = resolve(base.data.root).name
    except DatasetError as exc:
        raise ConfigError(f"data.root: {exc}") from None
    from_dict(to_dict(base))  # the pinned kind may make a data.<format> section unusable: refuse it by name


def cell_config(spec: dict, cell: Cell):
    """The cell's run config (a :class:`cpl.config.Config`): the sweep's base config with the cell's method, seed
    and unlabeled-image count; baseline and center run without unlabeled images."""
    data = to_dict(from_dict(spec["config"]))
    data["name"] = slug(f"{spec['id']}")
    data["seed"] = cell.seed
    data["train"]["method"] = cell.method
    if not needs_unlabeled(cell.method):
        data["unlabeled"]["source"] = "none"
        # the unlabeled-image knobs mean nothing here (and would be refused): the method defaults
        data["train"].update(warmup_epochs=-1, unlabeled_ramp_epochs=0, unlabeled_weight=-1.0)
    elif data["unlabeled"]["source"] in ("gan", "folder"):
        data["unlabeled"]["num_images"] = cell.gan_images
    return from_dict(data)


def cell_state(run: RunDir) -> str | None:
    """The cell's state (status.json with liveness applied), or None before its run directory exists."""
    return read_status(run).get("state") if run.run_json.is_file() else None


def prepare_cell(spec: dict, c: dict, runs_root: Path) -> RunDir:
    """The cell's run directory (``c``: a sweep.json cell), created with its config on first use."""
    run = RunDir(runs_root / c["run_id"])
    if not run.run_json.is_file():
        cell = Cell(c["method"], c["gan_images"], c["seed"])
        prepare_run(cell_config(spec, cell), runs_root, run.path, argv=[PROG, "sweep"], sweep=spec["id"])
    return run


def cell_argv(runs_root: Path, run: RunDir) -> list[str]:
    """The command that runs (or continues from its last checkpoint) one cell, whichever executor starts it."""
    return [sys.executable, "-m", PROG, "--runs-root", str(runs_root), "resume", str(run.path)]
