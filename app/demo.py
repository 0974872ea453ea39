"""The first-start demo: four runs that answer "are the pseudo-labels any good, and does CPL help?".

When the app first sees a runs root with no runs, it starts, from one config (``cpl/configs/demo.yaml``, or
``$CPL_DEMO_CONFIG``) on the embedded synthetic dataset:

* ``gan``: CPL on DCGAN images, the papers' setting, labeling them by :data:`CPL_REMEDY` (the GAN page's samples and
  their pseudo-labels). A GAN image has no true identity, so this run alone cannot say whether a label is right;
* ``heldout``: CPL (the same labeling rule) with real training images whose labels are hidden as the unlabeled set
  (``holdout``): every pseudo-label is scored against the hidden identity (``pl_acc``), against a chance of 1 / K;
* ``control``: the baseline on exactly the labeled rows the ``heldout`` run keeps (the labeled-only control), so
  ``heldout`` minus ``control`` is what the pseudo-labels added;
* ``reference``: the baseline on every labeled image, the ``gan`` run's reference: ``gan`` minus ``reference`` is
  what the GAN images and their pseudo-labels did.

Each CPL run takes as many optimizer steps as its reference (step-matched): its epochs count the labeled images
(``train.epoch_length=labeled``), its batches drawn from labeled and unlabeled images alike. Without the step
matching a run with unlabeled images also trains longer (52 steps an epoch here against 33), and on this data that
alone was worth 14 rank-1 points (docs/results.md). Matching the CPL runs to their baselines' budget, rather than
the baselines to theirs, is as fair and keeps the demo within a few minutes on 2 cores.

The three runs without GAN images train while the DCGAN does: they wait for the device in the ordinary run queue
(one after the other), and the ``gan`` run is placed beside the queue by the demo, as a cluster
scheduler places a sweep cell (``CPL_SCHEDULER``, ``cpl/runs/queue.py``). Two runs then compute at a time, each
with half of the CPUs in this process's affinity mask (``cpu_threads``; one thread each on 2 cores), so they do not
oversubscribe them. The DCGAN and the ``gan`` run's training are the demo's critical path; the queued runs' work
is sized to end about when it does (docs/performance.md, "The first-start demo").

A marker file records the runs it started; it is created with O_EXCL before anything starts, so two sessions
opening a fresh app at once start one demo, and a user who deletes every run later gets no new one.
Torch-free: the app imports it.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cpl import PROG
from cpl.config import load_config, read_yaml
from cpl.methods import BASELINE
from cpl.runs.atomic import write_json
from cpl.runs.launch import launch_resume, prepare_run
from cpl.runs.queue import SCHEDULER_ENV
from cpl.runs.rundir import SWEEPS_DIR, RunDir, list_runs

from .launching import CONFIGS_DIR, cli_args
from .safety import safe_run

DEMO_CONFIG = CONFIGS_DIR / "demo.yaml"
DEMO_MARKER = ".studio-demo.json"
STREAMS = 2  # runs computing at once: the gan run, and the queued runs one after the other


@dataclass(frozen=True)
class Role:
    """One run of the demo: its key in the marker, what it is for, and its overrides of the demo config."""

    key: str
    title: str
    overrides: tuple[str, ...]
    queued: bool  # waits for its device in the run queue; False: placed beside the queue by the demo


GAN, HELDOUT, CONTROL, BASE = "gan", "heldout", "control", "reference"  # role keys, not method names
# How the demo's CPL runs label their unlabeled images: CPL with the balanced (Sinkhorn) assignment, the remedy
# issue 20's experiments favour on GAN images (docs/results.md: CUHK01, above the step-matched baseline on every
# seed, where CPL as published sends its GAN images to a few hub identities and ends below it). The held-out run
# uses the same rule, so it scores these labels. () gives the method of demo.yaml as published.
CPL_REMEDY: tuple[str, ...] = ("train.assignment=sinkhorn",)
STEP_MATCHED = "train.epoch_length=labeled"  # a CPL run takes its baseline's steps (module docstring)
NO_UMAP = "eval.umap=false"  # the Embedding page opens on the gan run: the others skip the map's cost


def roles(remedy: tuple[str, ...]) -> tuple[Role, ...]:
    """The demo's four runs, both CPL runs labeling with ``remedy`` (overrides; () = as published)."""
    return (
        Role(GAN, "CPL on DCGAN images", ("name=demo", STEP_MATCHED, *remedy), queued=False),
        Role(HELDOUT, "CPL on held-out real images, whose labels are scored",
             ("name=demo-heldout", "unlabeled.source=holdout", STEP_MATCHED, *remedy, NO_UMAP), queued=True),
        Role(CONTROL, "the labeled-only control: the baseline on the same labeled rows, for as many steps",
             ("name=demo-control", f"train.method={BASELINE}", "unlabeled.source=holdout", NO_UMAP), queued=True),
        Role(BASE, "the baseline: every labeled image, for as many steps as the GAN run",
             ("name=demo-baseline", f"train.method={BASELINE}", "unlabeled.source=none", NO_UMAP), queued=True),
    )


ROLES = roles(CPL_REMEDY)


def demo_enabled() -> bool:
    """``CPL_DEMO=0`` (or off/false/no) turns off the demo of a first start."""
    return os.environ.get("CPL_DEMO", "1").strip().lower() not in ("0", "off", "false", "no")


def demo_config() -> Path:
    """The demo's config: ``$CPL_DEMO_CONFIG`` or the packaged ``cpl/configs/demo.yaml``."""
    return Path(os.environ.get("CPL_DEMO_CONFIG") or DEMO_CONFIG)


def demo_marker(runs_root: Path) -> dict | None:
    """What the runs root's demo marker records (``runs``: role key → run id; empty when the root already held
    runs); None when there is none."""
    try:
        marker = json.loads((runs_root / DEMO_MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) else None


def demo_runs(runs_root: Path) -> dict[str, RunDir]:
    """The demo's runs that still exist, by role key (:data:`ROLES` order); {} without a demo."""
    ids = (demo_marker(runs_root) or {}).get("runs")
    if not isinstance(ids, dict):
        return {}
    found = {r.key: safe_run(runs_root, ids.get(r.key)) for r in ROLES}
    return {k: run for k, run in found.items() if run is not None}


def only_demo(runs_root: Path) -> dict[str, RunDir]:
    """:func:`demo_runs` while the runs root holds nothing else (the pages then open on them); {} otherwise."""
    runs = demo_runs(runs_root)
    ids = {r.id for r in runs.values()}
    return runs if runs and all(r.id in ids for r in list_runs(runs_root)) else {}


def threads_per_run(cpus: float) -> int:
    """CPU threads of each demo run: the CPUs shared by the :data:`STREAMS` runs computing at once, at least 1."""
    return max(1, math.floor(cpus / STREAMS))


def role_overrides(role: Role, synthetic: bool, synthetic_root: Path, threads: int) -> list[str]:
    """``key=value`` overrides of the demo config for ``role``: the dataset folder (the synthetic one in the first
    data root), the thread count and the role's own."""
    data = [f"data.root={json.dumps(str(synthetic_root))}"] if synthetic else []  # a YAML scalar: paths with ':'
    return [*data, f"cpu_threads={threads}", *role.overrides]


def _has_anything(runs_root: Path) -> bool:
    sweeps = runs_root / SWEEPS_DIR
    return bool(list_runs(runs_root)) or (sweeps.is_dir() and any(sweeps.iterdir()))


def _start(config_path: Path, runs_root: Path, synthetic_root: Path) -> dict[str, RunDir]:
    """Validate every role's config, then create and start the runs (the gan run first: it is the longest)."""
    synthetic = read_yaml(config_path).get("data", {}).get("kind") == "synthetic"
    threads = threads_per_run(len(os.sched_getaffinity(0)))  # the CPUs this app (and the runs it starts) may use
    plans = [(role, role_overrides(role, synthetic, synthetic_root, threads)) for role in ROLES]
    configs = [load_config(config_path, ov) for _, ov in plans]  # a bad config refuses the demo before any run
    started = {}
    for (role, ov), cfg in zip(plans, configs):
        run = prepare_run(cfg, runs_root, argv=[PROG, "run", *cli_args(config_path, ov, False)])
        launch_resume(run, env=None if role.queued else {SCHEDULER_ENV: "demo"})
        started[role.key] = run
    return started


def ensure_demo(runs_root: Path, synthetic_root: Path, config_path: Path | None = None) -> dict[str, RunDir]:
    """Start the demo's runs (:data:`ROLES`) the first time the app sees ``runs_root`` with no runs at all;
    returns them by role key, {} when nothing was started.

    The first look at a runs root leaves the marker, so a demo starts at most once per runs root. A demo that
    cannot start (a bad config, no weights) removes the marker, so the next start tries again.
    """
    if not demo_enabled() or (runs_root / DEMO_MARKER).exists():
        return {}
    config_path = config_path or demo_config()
    runs_root.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(runs_root / DEMO_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return {}
    os.close(fd)
    if _has_anything(runs_root):
        write_json(runs_root / DEMO_MARKER, {"runs": {}, "time": time.time(),
                                             "note": "the runs root already held runs: no demo"})
        return {}
    try:
        started = _start(config_path, runs_root, synthetic_root)
    except BaseException:
        (runs_root / DEMO_MARKER).unlink(missing_ok=True)  # let the next start try again
        raise
    write_json(runs_root / DEMO_MARKER, {"runs": {k: r.id for k, r in started.items()}, "time": time.time(),
                                         "config": str(config_path)})
    return started
