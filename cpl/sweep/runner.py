"""``cpl sweep``: the CPL paper's Table 1 as a grid of ordinary runs, and its results table.

A sweep is a folder ``<runs root>/sweeps/<id>/`` (``sweep.json``, ``status.json``, ``results.csv``,
``results.md``, ``log.txt``) plus one ordinary run directory per cell, named
``<id>--<method>-g<N>-s<seed>`` in the runs root. Each cell is a ``cpl resume`` subprocess (a crash of one
cell does not take the sweep down); finished cells are skipped, so a sweep is resumed by running the same
command again. All cells share one trained GAN (the GAN cache is keyed by dataset + GAN settings, and
``gan.seed`` is separate from the run seed).

Executors: ``local`` (the default) runs the cells one after the other on this machine; ``ray`` runs each cell
as a Ray task on a Ray cluster whose nodes share the runs root (``cpl/sweep/on_ray.py``, ``pip install .[ray]``).
Both run the same ``cpl resume`` command for a cell and write the same files.

Table layout: rows are GAN-image counts (0 = the baseline row, shared by every column), columns are
methods, each cell ``rank-1 / mAP`` as mean ± std over seeds, and an "improvement" row (best count
minus the baseline), as in the paper.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from cpl import PROG
from cpl.config import ConfigError
from cpl.methods import BASELINE, DEFAULT_METHOD, METHOD_NAMES
from cpl.remedy_table import PLAIN, Variant, parse_variants
from cpl.runs import faults
from cpl.runs.atomic import write_json
from cpl.runs.rundir import RunDir
from cpl.runs.state import Stage, State
from cpl.runs.status import StatusWriter
from cpl.sweep.grid import cell_argv, cell_state, create_sweep, prepare_cell
from cpl.sweep.tables import write_tables

EXECUTORS = ("local", "ray")
RAY_MISSING = "--executor ray needs Ray, an optional extra: pip install .[ray]"


def _parse_list(text: str, kind: type, name: str) -> list:
    try:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{name}: expected a comma-separated list, got {text!r}") from None
    if not values:
        raise ConfigError(f"--{name}: empty list")
    return values


def parse_variants_arg(text: str) -> list[Variant]:
    """``--variants`` → :class:`~cpl.remedy_table.Variant` list; a bad entry raises :class:`ConfigError`."""
    try:
        return parse_variants(text)
    except ValueError as exc:
        raise ConfigError(f"--variants: {exc}") from None


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of ``cpl sweep`` to ``p``."""
    p.add_argument("--config", required=True)
    p.add_argument("--methods", default=f"{BASELINE},{DEFAULT_METHOD}",
                   help=f"comma-separated, from {','.join(METHOD_NAMES)}")
    p.add_argument("--gan-images", default="0,12000", help="comma-separated unlabeled-image counts")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--step-matched", action="store_true",
                   help="also run baseline (and center, if listed) at every count > 0 with as many optimizer steps "
                        "as that count's runs (train.epoch_length=union): the step-matched control")
    p.add_argument("--variants", default=PLAIN,
                   help="remedy variants, ';'-separated, each a grid axis value: none, a remedy preset (sinkhorn, "
                        "csls, sinkhorn+csls) or NAME:key=value,... with remedy keys only (e.g. "
                        "'select:train.select_min_margin=0.05'); each method runs once per variant that acts on it "
                        "(docs/methods.md, \"Remedies\")")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--sweep-id", help="sweep folder name (default: a new one); reuse it to resume a sweep")
    p.add_argument("--fast-dev-run", action="store_true", help="shrink every cell to a ~1 minute CPU run")
    p.add_argument("--detach", action="store_true", help="run the sweep in the background")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: the cells one after the other on this machine (default); ray: each cell a Ray task "
                        "on a Ray cluster sharing the runs root (pip install .[ray])")
    p.add_argument("--address", help="with --executor ray: the cluster, 'auto' (joined with `ray start` on this "
                                     "machine) or ray://HOST:PORT; default: a local Ray instance on this machine")
    p.add_argument("--cpus-per-cell", type=int, help="with --executor ray: CPUs a CPU cell asks for (default 1); "
                                                      "a CUDA cell asks for one GPU")


def executor_options(args: argparse.Namespace) -> dict:
    """The executor settings of ``cpl sweep`` as recorded in sweep.json (``executor``); refuses, by name, the
    Ray-only options without ``--executor ray``."""
    if args.executor != "ray":
        for name, value in (("--address", args.address), ("--cpus-per-cell", args.cpus_per_cell)):
            if value is not None:
                raise ConfigError(f"{name}: only with --executor ray")
        return {"kind": "local"}
    cpus = 1 if args.cpus_per_cell is None else args.cpus_per_cell
    if cpus < 1:
        raise ConfigError(f"--cpus-per-cell: must be >= 1, got {cpus}")
    return {"kind": "ray", "address": args.address, "cpus_per_cell": cpus}


def executor_argv(executor: dict | None) -> list[str]:
    """The ``cpl sweep`` options that select ``executor`` (a sweep.json ``executor`` record; None = local)."""
    if not executor or executor.get("kind") != "ray":
        return []
    argv = ["--executor", "ray", "--cpus-per-cell", str(executor.get("cpus_per_cell") or 1)]
    return argv + (["--address", str(executor["address"])] if executor.get("address") else [])


def run_local(spec: dict, folder: Path, runs_root: Path, status: StatusWriter, stop: threading.Event) -> int | None:
    """The local executor: every unfinished cell in order, in this process group. Returns the number of failed
    cells, or None when the sweep was cancelled."""
    failed = 0
    cells = spec["cells"]
    for i, c in enumerate(cells):
        if stop.is_set():
            return None
        faults.point("sweep", cell=i)  # between cells: the previous one finished and its tables are written
        run = RunDir(runs_root / c["run_id"])
        status.update(epoch=i, progress=i / len(cells), message=f"cell {i + 1}/{len(cells)}: "
                      f"{c['method']}, {c['gan_images']} unlabeled, seed {c['seed']}")
        if cell_state(run) == State.FINISHED:
            continue
        run = prepare_cell(spec, c, runs_root)
        with open(folder / "log.txt", "ab") as logf:
            logf.write(f"--- {c['run_id']}\n".encode())
            logf.flush()
            rc = subprocess.call(cell_argv(runs_root, run), stdout=logf, stderr=subprocess.STDOUT)
        if rc == 130 or stop.is_set():
            return None
        failed += rc != 0
        write_tables(folder, runs_root)
    return failed


def run_sweep(folder: Path, runs_root: Path, executor: dict | None = None) -> int:
    """Run every unfinished cell with ``executor`` (a sweep.json ``executor`` record; None = local), then write
    the tables. Returns the number of failed cells."""
    spec = yaml.safe_load((folder / "sweep.json").read_text())
    sweep_run = RunDir(folder)  # reuses the status writer: a sweep has a status.json like a run
    sweep_run.remove_stale_temp_files()  # a killed sweep's heartbeat may have died inside a status.json write
    status = StatusWriter(sweep_run)
    status.update(state=State.RUNNING, stage=Stage.TRAIN, epoch=0, epochs=len(spec["cells"]), message="starting")
    status.start_heartbeat()
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        # The running cell (same process group) gets the same signal and stops cleanly; then so do we.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    try:
        if executor and executor.get("kind") == "ray":
            from cpl.sweep import on_ray

            failed = on_ray.run_cells(spec, folder, runs_root, status, stop, executor)
        else:
            failed = run_local(spec, folder, runs_root, status, stop)
        write_tables(folder, runs_root)
        if failed is None or stop.is_set():
            status.update(state=State.CANCELLED, finished=time.time(), message="cancelled")
            return failed or 0
        status.update(state=State.FINISHED if not failed else State.FAILED, stage=Stage.DONE, progress=1.0,
                      finished=time.time(), epoch=len(spec["cells"]),
                      error=f"{failed} cell(s) failed" if failed else None,
                      message=f"{len(spec['cells']) - failed}/{len(spec['cells'])} cells finished")
        return failed
    except BaseException as exc:
        status.update(state=State.FAILED, finished=time.time(), error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        status.stop_heartbeat()


# ---------------------------------------------------------------------------------------------- tables


def record_executor(folder: Path, executor: dict) -> None:
    """Keep the executor in sweep.json, so that resuming the sweep (the app's Resume) uses the same one."""
    spec = yaml.safe_load((folder / "sweep.json").read_text())
    if spec.get("executor") != executor:
        write_json(folder / "sweep.json", {**spec, "executor": executor})


def ray_available() -> bool:
    """Whether the optional Ray extra is installed (checked before any sweep file is written)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def sweep_main(args: argparse.Namespace) -> int:
    """``cpl sweep``: create (or reuse) the sweep folder, then run its cells here or detach into the background.
    Returns the exit code: 0 all cells finished (or detached), 1 some cell failed, 2 a configuration error."""
    runs_root = Path(args.runs_root)
    try:
        executor = executor_options(args)
        if executor["kind"] == "ray" and not ray_available():
            raise ConfigError(RAY_MISSING)
        folder = create_sweep(runs_root, args.config, _parse_list(args.methods, str, "methods"),
                              _parse_list(args.gan_images, int, "gan-images"), _parse_list(args.seeds, int, "seeds"),
                              args.set, args.sweep_id, args.fast_dev_run, args.step_matched,
                              parse_variants_arg(args.variants))
    except ConfigError as exc:
        print(f"cpl: error: {exc}", file=sys.stderr)
        return 2
    record_executor(folder, executor)
    if args.detach:
        from cpl.runs.launch import spawn

        argv = [sys.executable, "-m", PROG, "--runs-root", str(runs_root), "sweep", "--config", args.config,
                "--methods", args.methods, "--gan-images", args.gan_images, "--seeds", args.seeds,
                "--sweep-id", folder.name, "--variants", args.variants]
        argv += sum((["--set", s] for s in args.set), []) + executor_argv(executor)
        argv += ["--fast-dev-run"] * args.fast_dev_run + ["--step-matched"] * args.step_matched
        print(f"{folder} (pid {spawn(argv, folder / 'log.txt')})")
        return 0
    print(f"sweep folder: {folder}", file=sys.stderr)
    try:
        failed = run_sweep(folder, runs_root, executor)
    except ConfigError as exc:  # the Ray cluster cannot run these cells (e.g. CUDA cells, no GPU in it)
        print(f"cpl: error: {exc}", file=sys.stderr)
        return 2
    print((folder / "results.md").read_text())
    return 1 if failed else 0
