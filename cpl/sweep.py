"""``cpl sweep``: the CPL paper's Table 1 as a grid of ordinary runs, and its results table.

A sweep is a folder ``<runs root>/sweeps/<id>/`` (``sweep.json``, ``status.json``, ``results.csv``,
``results.md``, ``log.txt``) plus one ordinary run directory per cell, named
``<id>--<method>-g<N>-s<seed>`` in the runs root. Each cell is a ``cpl resume`` subprocess (a crash of one
cell does not take the sweep down); finished cells are skipped, so a sweep is resumed by running the same
command again. All cells share one trained GAN (the GAN cache is keyed by dataset + GAN settings, and
``gan.seed`` is separate from the run seed).

Executors: ``local`` (the default) runs the cells one after the other on this machine; ``ray`` runs each cell
as a Ray task on a Ray cluster whose nodes share the runs root (``cpl/sweep_ray.py``, ``pip install .[ray]``).
Both run the same ``cpl resume`` command for a cell and write the same files.

Table layout: rows are GAN-image counts (0 = the baseline row, shared by every column), columns are
methods, each cell ``rank-1 / mAP`` as mean ± std over seeds, and an "improvement" row (best count
minus the baseline), as in the paper.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import faults
from .atomic import write_json, write_text
from .backbones import resolve as resolve_weights
from .config import METHODS, ConfigError, fast_dev_run, from_dict, load_config, to_dict
from .runs.launch import prepare_run
from .runs.rundir import SWEEPS_DIR, RunDir, new_run_id, slug, valid_id
from .runs.status import StatusWriter, read_status

NO_UNLABELED = ("baseline", "center")
EXECUTORS = ("local", "ray")
RAY_MISSING = "--executor ray needs Ray, an optional extra: pip install .[ray]"


@dataclass(frozen=True)
class Cell:
    method: str
    gan_images: int
    seed: int

    def run_id(self, sweep_id: str) -> str:
        return f"{sweep_id}--{self.method}-g{self.gan_images}-s{self.seed}"


def plan_cells(methods: list[str], gan_images: list[int], seeds: list[int]) -> list[Cell]:
    """Grid cells: baseline/center once per seed (0 GAN images); the others per count > 0 and seed.

    A count of 0 for a pseudo-labeling method *is* the baseline, so it is not run again; the baseline row
    comes from ``baseline`` (added to the grid when 0 is among the counts).
    """
    cells: list[Cell] = []
    want_baseline = 0 in gan_images or "baseline" in methods
    for seed in seeds:
        if want_baseline:
            cells.append(Cell("baseline", 0, seed))
        if "center" in methods:
            cells.append(Cell("center", 0, seed))
        for g in sorted(set(gan_images) - {0}):
            for m in methods:
                if m not in NO_UNLABELED:
                    cells.append(Cell(m, g, seed))
    return cells


def _parse_list(text: str, kind: type, name: str) -> list:
    try:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{name}: expected a comma-separated list, got {text!r}") from None
    if not values:
        raise ConfigError(f"--{name}: empty list")
    return values


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True)
    p.add_argument("--methods", default="baseline,cpl", help=f"comma-separated, from {','.join(METHODS)}")
    p.add_argument("--gan-images", default="0,12000", help="comma-separated unlabeled-image counts")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
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


def sweep_dir(runs_root: Path, sweep_id: str) -> Path:
    return runs_root / SWEEPS_DIR / sweep_id


def create_sweep(runs_root: Path, config_path: str, methods: list[str], gan_images: list[int], seeds: list[int],
                 overrides: list[str], sweep_id: str | None = None, fast: bool = False) -> Path:
    """Validate the grid and write ``sweep.json`` (torch-free; the app calls it). Returns the sweep folder."""
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"--methods: unknown method {m!r} (choose from {', '.join(METHODS)})")
    for g in gan_images:
        if g < 0:
            raise ConfigError(f"--gan-images: counts must be >= 0, got {g}")
    base = load_config(config_path, overrides)
    if fast:
        base = fast_dev_run(base)
    resolve_weights(base.model.backbone, base.model.pretrained)  # refuse the whole grid up front, in one line
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


def cell_config(spec: dict, cell: Cell):
    data = to_dict(from_dict(spec["config"]))
    data["name"] = slug(f"{spec['id']}")
    data["seed"] = cell.seed
    data["train"]["method"] = cell.method
    if cell.method in NO_UNLABELED:
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
        prepare_run(cell_config(spec, cell), runs_root, run.path, argv=["cpl", "sweep"], sweep=spec["id"])
    return run


def cell_argv(runs_root: Path, run: RunDir) -> list[str]:
    """The command that runs (or continues from its last checkpoint) one cell, whichever executor starts it."""
    return [sys.executable, "-m", "cpl", "--runs-root", str(runs_root), "resume", str(run.path)]


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
        if cell_state(run) == "finished":
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
    status.update(state="running", stage="train", epoch=0, epochs=len(spec["cells"]), message="starting")
    status.start_heartbeat()
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        # The running cell (same process group) gets the same signal and stops cleanly; then so do we.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    try:
        if executor and executor.get("kind") == "ray":
            from . import sweep_ray

            failed = sweep_ray.run_cells(spec, folder, runs_root, status, stop, executor)
        else:
            failed = run_local(spec, folder, runs_root, status, stop)
        write_tables(folder, runs_root)
        if failed is None or stop.is_set():
            status.update(state="cancelled", finished=time.time(), message="cancelled")
            return failed or 0
        status.update(state="finished" if not failed else "failed", stage="done", progress=1.0,
                      finished=time.time(), epoch=len(spec["cells"]),
                      error=f"{failed} cell(s) failed" if failed else None,
                      message=f"{len(spec['cells']) - failed}/{len(spec['cells'])} cells finished")
        return failed
    except BaseException as exc:
        status.update(state="failed", finished=time.time(), error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        status.stop_heartbeat()


# ---------------------------------------------------------------------------------------------- tables


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def collect(folder: Path, runs_root: Path) -> list[dict]:
    """One row per cell with its finished results (or its state)."""
    spec = yaml.safe_load((folder / "sweep.json").read_text())
    rows = []
    for c in spec["cells"]:
        run = RunDir(runs_root / c["run_id"])
        res = run.read_json("results.json") or {}
        status = read_status(run) if run.run_json.is_file() else {"state": "pending"}
        st = status.get("state")
        weights = (run.read_json("run.json") or {}).get("weights") or {}
        row = {"method": c["method"], "gan_images": c["gan_images"], "seed": c["seed"], "run_id": c["run_id"],
               "state": st, "weights": weights.get("source", ""), **where_ran(run, status)}
        if "rank1" in res and st == "finished":
            row.update(rank1=res["rank1"], mAP=res["mAP"])
            if res.get("rerank"):
                row.update(rr_rank1=res["rerank"]["rank1"], rr_mAP=res["rerank"]["mAP"])
            epochs = _epoch_records(run)
            last = epochs[-1] if epochs else {}
            if "pl_acc" in last:
                row.update(pl_acc=100 * last["pl_acc"], pl_true_mass=100 * last.get("pl_true_mass", math.nan),
                           pl_acc_epochs=[100 * r["pl_acc"] if "pl_acc" in r else math.nan for r in epochs],
                           num_classes=res.get("num_classes"))
        rows.append(row)
    return rows


def where_ran(run: RunDir, status: dict) -> dict:
    """Where a cell ran: ``host`` (its status.json, written by the cell process on its machine) and ``attempts``
    (how many times a Ray task started it, from placement.json; None for the local executor)."""
    placement = run.read_json(run.placement.name)
    attempts = placement.get("attempts") if isinstance(placement, dict) else None
    return {"host": str(status.get("host") or ""), "attempts": len(attempts) if isinstance(attempts, list) and attempts
            else None}


def _epoch_records(run: RunDir) -> list[dict]:
    from .atomic import read_jsonl

    return [r for r in read_jsonl(run.metrics) if r.get("type") == "epoch"]


def pl_accuracy_by_epoch(rows: list[dict]) -> str:
    """Markdown: per (method, #unlabeled), the holdout pseudo-label accuracy of every epoch (mean ± std over
    seeds, percent; "–" for a warm-up epoch without pseudo-labels) next to chance, 1/K."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        if r.get("pl_acc_epochs"):
            groups.setdefault((r["method"], r["gan_images"]), []).append(r)
    if not groups:
        return ""
    n_ep = max(len(r["pl_acc_epochs"]) for rs in groups.values() for r in rs)
    lines = ["| method | #unlabeled | chance (1/K) | " + " | ".join(f"epoch {e + 1}" for e in range(n_ep)) + " |",
             "|" + "---|" * (3 + n_ep)]
    for (method, g), rs in sorted(groups.items()):
        k = rs[0].get("num_classes") or 0
        cells = []
        for e in range(n_ep):
            vals = [r["pl_acc_epochs"][e] for r in rs if e < len(r["pl_acc_epochs"])]
            vals = [v for v in vals if not math.isnan(v)]
            mean, std = _mean_std(vals)
            cells.append("–" if not vals else f"{mean:.2f} ± {std:.2f}" if len(vals) > 1 else f"{mean:.2f}")
        chance = f"{100 / k:.2f}" if k else "?"
        lines.append(f"| {method} | {g} | {chance} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean ± std over seeds per (method, gan_images)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        if "rank1" in r:
            groups.setdefault((r["method"], r["gan_images"]), []).append(r)
    out = []
    for (method, g), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        agg = {"method": method, "gan_images": g, "n": len(rs)}
        for key in ("rank1", "mAP", "rr_rank1", "rr_mAP", "pl_acc", "pl_true_mass"):
            vals = [r[key] for r in rs if key in r and not math.isnan(r[key])]
            if vals:
                agg[key], agg[key + "_std"] = _mean_std(vals)
        out.append(agg)
    return out


def _fmt(a: dict, key: str) -> str:
    if key not in a:
        return "–"
    return f"{a[key]:.2f} ± {a[key + '_std']:.2f}" if a["n"] > 1 else f"{a[key]:.2f}"


def markdown_table(agg: list[dict], methods: list[str], rerank: bool = False) -> str:
    """Table 1 layout: rows = GAN-image counts (0 = baseline), columns = methods (rank-1 | mAP)."""
    r1, mp = ("rr_rank1", "rr_mAP") if rerank else ("rank1", "mAP")
    cols = [m for m in methods if m != "baseline"] or ["baseline"]
    by = {(a["method"], a["gan_images"]): a for a in agg}
    counts = sorted({a["gan_images"] for a in agg})
    head = "| #unlabeled | " + " | ".join(f"{m} rank-1 | {m} mAP" for m in cols) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(cols))]
    base = by.get(("baseline", 0))
    for g in counts:
        cells = []
        for m in cols:
            a = by.get((m, g)) or (base if g == 0 and m not in ("center",) else None)
            cells += [_fmt(a, r1), _fmt(a, mp)] if a else ["", ""]
        label = "0 (baseline)" if g == 0 else str(g)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if base and r1 in base:
        imp = []
        for m in cols:
            cand = [a for (mm, g), a in by.items() if mm == m and (g > 0 or m == "center") and r1 in a]
            if cand:
                best1 = max(a[r1] for a in cand)
                bestm = max(a[mp] for a in cand)
                imp += [f"{best1 - base[r1]:+.2f}", f"{bestm - base[mp]:+.2f}"]
            else:
                imp += ["", ""]
        lines.append("| improvement | " + " | ".join(imp) + " |")
    return "\n".join(lines) + "\n"


def write_tables(folder: Path, runs_root: Path) -> list[dict]:
    spec = yaml.safe_load((folder / "sweep.json").read_text())
    rows = collect(folder, runs_root)
    agg = aggregate(rows)
    keys = ["method", "gan_images", "n", "rank1", "rank1_std", "mAP", "mAP_std", "rr_rank1", "rr_rank1_std",
            "rr_mAP", "rr_mAP_std", "pl_acc", "pl_acc_std", "pl_true_mass", "pl_true_mass_std"]
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    wr.writeheader()
    for a in agg:
        wr.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in a.items()})
    write_text(folder / "results.csv", buf.getvalue())
    runs_buf = io.StringIO()
    wr = csv.DictWriter(runs_buf, fieldnames=["run_id", "method", "gan_images", "seed", "state", "weights", "host",
                                              "attempts", "rank1", "mAP", "rr_rank1", "rr_mAP", "pl_acc",
                                              "pl_true_mass"],
                        extrasaction="ignore")
    wr.writeheader()
    wr.writerows(rows)
    write_text(folder / "runs.csv", runs_buf.getvalue())
    done = sum("rank1" in r for r in rows)
    md = [f"# Sweep {spec['id']}\n\n", f"{done}/{len(rows)} cells finished; mean ± std over seeds "
          f"{','.join(map(str, spec['seeds']))}; rank-1 and mAP in percent.\n\n",
          "## Without re-ranking\n\n", markdown_table(agg, spec["methods"])]
    if any("rr_rank1" in a for a in agg):
        md += ["\n## With k-reciprocal re-ranking\n\n", markdown_table(agg, spec["methods"], rerank=True)]
    if any("pl_acc" in a for a in agg):
        md.append("\n## Pseudo-label accuracy on held-out labeled images (last epoch)\n\n")
        md.append("| method | #unlabeled | accuracy | mass on true class |\n|---|---|---|---|\n")
        for a in agg:
            if "pl_acc" in a:
                md.append(f"| {a['method']} | {a['gan_images']} | {_fmt(a, 'pl_acc')} | {_fmt(a, 'pl_true_mass')} |\n")
    by_epoch = pl_accuracy_by_epoch(rows)
    if by_epoch:
        md += ["\n## Pseudo-label accuracy per epoch (held-out labeled images, percent)\n\n", by_epoch]
    md.append("\n## Cells\n\n| run | method | #unlabeled | seed | state | weights | host | rank-1 | mAP |\n"
              "|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        md.append(f"| {r['run_id']} | {r['method']} | {r['gan_images']} | {r['seed']} | {r['state']} | "
                  f"{r['weights'] or '?'} | {r['host'] or '–'} | {r.get('rank1', float('nan')):.2f} | "
                  f"{r.get('mAP', float('nan')):.2f} |\n")
    write_text(folder / "results.md", "".join(md))
    return agg


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
    runs_root = Path(args.runs_root)
    try:
        executor = executor_options(args)
        if executor["kind"] == "ray" and not ray_available():
            raise ConfigError(RAY_MISSING)
        folder = create_sweep(runs_root, args.config, _parse_list(args.methods, str, "methods"),
                              _parse_list(args.gan_images, int, "gan-images"), _parse_list(args.seeds, int, "seeds"),
                              args.set, args.sweep_id, args.fast_dev_run)
    except ConfigError as exc:
        print(f"cpl: error: {exc}", file=sys.stderr)
        return 2
    record_executor(folder, executor)
    if args.detach:
        from .runs.launch import spawn

        argv = [sys.executable, "-m", "cpl", "--runs-root", str(runs_root), "sweep", "--config", args.config,
                "--methods", args.methods, "--gan-images", args.gan_images, "--seeds", args.seeds,
                "--sweep-id", folder.name] + sum((["--set", s] for s in args.set), []) + executor_argv(executor)
        if args.fast_dev_run:
            argv.append("--fast-dev-run")
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
