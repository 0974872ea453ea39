"""A sweep's grid: its cells (method × remedy variant × GAN-image count × seed), ``sweep.json``, and each cell's
run directory and command. Torch-free: the app creates sweeps with it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from cpl import PROG
from cpl.config import (
    Config,
    ConfigError,
    UnlabeledConfig,
    apply_overrides,
    fast_dev_run,
    from_dict,
    load_config,
    to_dict,
)
from cpl.data.dataset import DatasetError
from cpl.data.formats import AUTO, resolve
from cpl.data.unlabeled_sources import NONE, SOURCES, hides_labeled
from cpl.methods import BASELINE, METHOD_NAMES, has_own_zero_row, needs_unlabeled
from cpl.models.weights import resolve as resolve_weights
from cpl.remedy_table import PLAIN, Variant, variant_from_dict, variant_label
from cpl.runs.atomic import write_json
from cpl.runs.launch import prepare_run
from cpl.runs.rundir import SWEEPS_DIR, RunDir, new_run_id, slug, valid_id
from cpl.runs.status import read_status


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: a method trained with ``gan_images`` unlabeled images (0 = none) under one seed, with
    the remedy variant named ``variant`` (:data:`~cpl.remedy_table.PLAIN`: the published method)."""

    method: str
    gan_images: int
    seed: int
    variant: str = PLAIN

    def run_id(self, sweep_id: str) -> str:
        """The cell's run id, ``<sweep id>--<method>-g<gan_images>-s<seed>``, ``-<variant>`` appended for a
        remedy variant (``+`` written as ``-``)."""
        tail = "" if self.variant == PLAIN else "-" + slug(self.variant.replace("+", "-"))
        return f"{sweep_id}--{self.method}-g{self.gan_images}-s{self.seed}{tail}"

    @property
    def label(self) -> str:
        """The cell's method as the tables name it (``cpl + sinkhorn``)."""
        return variant_label(self.method, self.variant)


def plan_cells(methods: list[str], gan_images: list[int], seeds: list[int], step_matched: bool = False,
               variants: list[Variant] | None = None) -> list[Cell]:
    """Grid cells: the labeled-only methods (baseline, center) once per seed with 0 GAN images; the others per
    count > 0 and seed.

    A count of 0 for a pseudo-labeling method *is* the baseline, so it is not run again; the baseline row
    comes from :data:`~cpl.methods.BASELINE` (added to the grid when 0 is among the counts).
    ``step_matched``: each labeled-only method also runs once per count > 0 and seed, at the step budget of
    that count's runs (:func:`cell_config`: ``train.epoch_length=union``), the step-matched control.
    ``variants`` (default: the plain one): each method with unlabeled images runs once per variant that acts on
    it; a method no variant acts on (lsro, ...) runs once, plain, so its column is still there.
    """
    variants = variants or [Variant(PLAIN)]
    cells: list[Cell] = []
    want_baseline = 0 in gan_images or BASELINE in methods
    own_zero = [m for m in METHOD_NAMES if m in methods and has_own_zero_row(m)]  # table order, once each
    references = ([BASELINE] if want_baseline else []) + own_zero
    for seed in seeds:
        cells += [Cell(m, 0, seed) for m in references]
        for g in sorted(set(gan_images) - {0}):
            cells += [Cell(m, g, seed) for m in references if step_matched]
            for m in methods:
                if needs_unlabeled(m):
                    names = [v.name for v in variants if v.acts_on(m)] or [PLAIN]
                    cells += [Cell(m, g, seed, v) for v in names]
    return cells


def sweep_dir(runs_root: Path, sweep_id: str) -> Path:
    """The sweep's folder, ``<runs root>/sweeps/<sweep id>``."""
    return runs_root / SWEEPS_DIR / sweep_id


GRID_KEYS = ("methods", "gan_images", "seeds", "step_matched", "variants")  # what makes two sweeps the same grid
_GRID_DEFAULTS = {"step_matched": False, "variants": [Variant(PLAIN).to_dict()]}  # a sweep.json from before a key


def create_sweep(runs_root: Path, config_path: str, methods: list[str], gan_images: list[int], seeds: list[int],
                 overrides: list[str], sweep_id: str | None = None, fast: bool = False,
                 step_matched: bool = False, variants: list[Variant] | None = None) -> Path:
    """Validate the grid (every cell's config) and write ``sweep.json`` (torch-free; the app calls it). Returns
    the sweep folder. ``step_matched``, ``variants``: see :func:`plan_cells`."""
    variants = variants or [Variant(PLAIN)]
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
    cells = plan_cells(methods, gan_images, seeds, step_matched, variants)
    spec = {"id": sweep_id, "config": to_dict(base), "config_path": str(config_path), "overrides": overrides,
            "methods": methods, "gan_images": gan_images, "seeds": seeds, "fast_dev_run": fast,
            "step_matched": step_matched, "variants": [v.to_dict() for v in variants],
            "cells": [dict(c.__dict__, run_id=c.run_id(sweep_id)) for c in cells]}
    check_cells(spec, cells)
    existing = folder / "sweep.json"
    if existing.is_file():
        old = yaml.safe_load(existing.read_text())
        if {k: old.get(k, _GRID_DEFAULTS.get(k)) for k in GRID_KEYS} != {k: spec[k] for k in GRID_KEYS}:
            raise ConfigError(f"--sweep-id: {sweep_id} exists with a different grid; pick another id")
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    write_json(existing, spec)
    return folder


def check_grid(base: Config, methods: list[str], gan_images: list[int], seeds: list[int], step_matched: bool = False,
               variants: list[Variant] | None = None) -> list[Cell]:
    """The grid's cells for the resolved base config ``base``, each distinct one validated as :func:`create_sweep`
    validates it (the Launch page shows a refused cell before anything is written); raises :class:`ConfigError`."""
    variants = variants or [Variant(PLAIN)]
    cells = plan_cells(methods, gan_images, seeds, step_matched, variants)
    check_cells({"id": "check", "config": to_dict(base), "variants": [v.to_dict() for v in variants]}, cells)
    return cells


def check_cells(spec: dict, cells: list[Cell]) -> None:
    """Validate each distinct cell's config (seeds aside) before any runs; raises :class:`ConfigError` naming the
    cell (``cpl + sinkhorn with 1000 unlabeled images: train.assignment: ...``)."""
    for cell in dict.fromkeys(Cell(c.method, c.gan_images, 0, c.variant) for c in cells):
        try:
            cell_config(spec, cell)
        except ConfigError as exc:
            raise ConfigError(f"cell {cell.label} with {cell.gan_images} unlabeled images: {exc}") from None


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
    """The cell's run config (a :class:`cpl.config.Config`): the sweep's base config with the cell's method, seed,
    unlabeled-image count and its variant's remedy settings (applied last, validated with the rest).

    Baseline and center never train on unlabeled images. With 0 of them they run on every labeled image, or, in a
    ``holdout`` sweep, on the labeled rows the holdout runs keep (the labeled-only control); with a count > 0
    (a step-matched cell) their epochs count that many unlabeled images (``train.epoch_length=union``), so they
    take the optimizer steps of that row's runs."""
    data = to_dict(from_dict(spec["config"]))
    data["name"] = slug(f"{spec['id']}")
    data["seed"] = cell.seed
    data["train"]["method"] = cell.method
    unlabeled = data["unlabeled"]
    if not needs_unlabeled(cell.method):
        # the unlabeled-image knobs mean nothing here (and would be refused): the method defaults; a sweep's
        # epoch_length=labeled is for its runs with unlabeled images (a labeled-only epoch already counts that)
        data["train"].update(warmup_epochs=-1, unlabeled_ramp_epochs=0, unlabeled_weight=-1.0,
                             epoch_length="union" if cell.gan_images else "trained")
        if not cell.gan_images and not hides_labeled(unlabeled["source"]):
            # an ordinary reference; the source's own settings leave with it (source none refuses them)
            defaults = UnlabeledConfig()
            unlabeled.update({key: getattr(defaults, key) for key in SOURCES[unlabeled["source"]].options},
                             source=NONE)
    if SOURCES[unlabeled["source"]].num_images:  # drawn, or a cap on the files listed
        unlabeled["num_images"] = cell.gan_images
    return from_dict(apply_overrides(data, list(variant_of(spec, cell.variant).settings)))


def variant_of(spec: dict, name: str) -> Variant:
    """The variant named ``name`` in a sweep.json (the plain one for a sweep made before variants)."""
    if name == PLAIN:
        return Variant(PLAIN)
    for v in spec.get("variants") or []:
        if v.get("name") == name:
            return variant_from_dict(v)
    raise ConfigError(f"sweep {spec.get('id')}: no variant named {name!r} in its sweep.json")


def cell_state(run: RunDir) -> str | None:
    """The cell's state (status.json with liveness applied), or None before its run directory exists."""
    return read_status(run).get("state") if run.run_json.is_file() else None


def prepare_cell(spec: dict, c: dict, runs_root: Path) -> RunDir:
    """The cell's run directory (``c``: a sweep.json cell), created with its config on first use."""
    run = RunDir(runs_root / c["run_id"])
    if not run.run_json.is_file():
        cell = Cell(c["method"], c["gan_images"], c["seed"], c.get("variant", PLAIN))
        prepare_run(cell_config(spec, cell), runs_root, run.path, argv=[PROG, "sweep"], sweep=spec["id"])
    return run


def cell_argv(runs_root: Path, run: RunDir) -> list[str]:
    """The command that runs (or continues from its last checkpoint) one cell, whichever executor starts it."""
    return [sys.executable, "-m", PROG, "--runs-root", str(runs_root), "resume", str(run.path)]
