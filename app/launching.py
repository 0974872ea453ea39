"""What the Launch page needs besides widgets: datasets, devices, form choices → config, starting runs.

Everything here is torch-free and Streamlit-free, so it is testable on its own: devices are found with
``nvidia-smi -L`` (or ``/proc/driver/nvidia/gpus``), datasets by listing the data roots, and a config
is always built by :func:`cpl.config.load_config` so a bad value is reported with its key named.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cpl.config import Config, ConfigError, fast_dev_run, load_config, packaged_configs_dir
from cpl.data import formats
from cpl.data.check import CheckReport
from cpl.data.unlabeled_sources import DRAWN, NONE, SOURCES
from cpl.remedy_table import PLAIN, Variant, format_variants, variant_from_dict
from cpl.runs.atomic import write_json
from cpl.runs.launch import cpl_command, launch_resume, prepare_run, spawn
from cpl.runs.rundir import RunDir
from cpl.sweep.grid import create_sweep
from cpl.sweep.runner import executor_argv

from .safety import safe_data_dir

CONFIGS_DIR = packaged_configs_dir()  # cpl/configs in the installed package (the checkout's configs/ links there)

# The sources a method with unlabeled images can train on (cpl/data/unlabeled_sources.py).
SOURCE_INFO = {s.name: s.description for s in SOURCES.values() if s.name != NONE}

# What a labeled-only method (baseline, center) does with each source: it never trains on the images. In order: the
# ordinary reference, the labeled-only control, then the step-matched ones.
CONTROL_SOURCE_INFO = {s.name: s.control for s in sorted(SOURCES.values(),
                                                         key=lambda s: (s.name != NONE, not s.hides_labeled))}

# train.epoch_length: what an epoch counts (docs/methods.md, "Controls").
EPOCH_LENGTH_INFO = {
    "trained": "trained: one pass over the images the epoch trains on (the papers)",
    "labeled": "labeled: ⌊N_l / B⌋ steps, drawn from the shuffled union (the baseline's step budget)",
    "union": "union: ⌊(N_l + N_u) / B⌋ steps, the unlabeled images counted even when not trained on "
             "(the budget of a run with them)",
}


# ---------------------------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class DeviceChoice:
    """A device the Launch page offers: the label shown, its config value and the torchrun process count."""

    label: str
    device: str  # the config's ``device`` value
    nproc: int = 1  # processes under torchrun (one per GPU)


def _visible(indices: list[int]) -> list[int]:
    """Apply ``CUDA_VISIBLE_DEVICES`` (integer form) to physical GPU indices; a run renumbers them from 0."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return indices
    wanted = [p.strip() for p in raw.split(",") if p.strip()]
    if not all(re.fullmatch(r"\d+", w) for w in wanted):  # UUID form: keep the count only
        return indices[: len(wanted)]
    return [int(w) for w in wanted if int(w) in indices]


def detect_gpus(timeout_s: float = 5.0) -> list[str]:
    """Names of the CUDA GPUs a run can use, in the order a run numbers them (cuda:0, cuda:1, ...).

    Asks ``nvidia-smi -L``; without it, reads the driver's ``/proc/driver/nvidia/gpus``. No torch import.
    """
    names: dict[int, str] = {}
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=timeout_s, check=False)
        for line in out.stdout.splitlines():
            m = re.match(r"GPU (\d+): (.+?)(?: \(UUID:.*)?$", line.strip())
            if m:
                names[int(m.group(1))] = m.group(2)
    except (OSError, subprocess.TimeoutExpired):
        proc = Path("/proc/driver/nvidia/gpus")
        if proc.is_dir():
            for i, gpu in enumerate(sorted(proc.iterdir())):
                try:
                    info = (gpu / "information").read_text()
                except OSError:
                    continue
                m = re.search(r"^Model:\s*(.+)$", info, flags=re.M)
                names[i] = m.group(1).strip() if m else gpu.name
    return [names[i] for i in _visible(sorted(names))]


def device_choices(gpus: list[str]) -> list[DeviceChoice]:
    """CPU, each GPU, and all GPUs under torchrun when there are several; the best one first."""
    each = [DeviceChoice(f"GPU {i}: {name}", f"cuda:{i}") for i, name in enumerate(gpus)]
    multi = [DeviceChoice(f"All {len(gpus)} GPUs (torchrun, one process per GPU)", "cuda", len(gpus))] \
        if len(gpus) > 1 else []
    return [*each, *multi, DeviceChoice("CPU", "cpu")]


# ---------------------------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class DatasetChoice:
    """The embedded synthetic dataset (``name`` empty) or a dataset folder ``root/name`` of format ``kind``."""

    label: str
    root_index: int = -1  # index into the data roots; -1 = the embedded synthetic dataset
    name: str = ""
    kind: str = formats.SYNTHETIC  # the value of data.kind: a name of cpl.data.formats.FORMATS, or synthetic

    @property
    def synthetic(self) -> bool:
        """Whether this is the embedded synthetic dataset (no data root)."""
        return self.root_index < 0


SYNTHETIC = DatasetChoice("Embedded synthetic dataset (generated by the run on first use)")


def discover_datasets(roots: list[Path], synthetic_root: Path) -> list[DatasetChoice]:
    """The embedded synthetic dataset, then every direct sub-folder of a data root that a dataset format of
    :data:`cpl.data.formats.FORMATS` recognises, labelled with its format."""
    found = [SYNTHETIC]
    for i, root in enumerate(roots):
        try:
            entries = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            continue
        for folder in entries:
            if folder.resolve() == synthetic_root.resolve():
                continue
            fmt = formats.detect(folder)
            if fmt is not None:
                where = f" — {root}" if len(roots) > 1 else ""
                found.append(DatasetChoice(f"{folder.name} ({fmt.label}){where}", i, folder.name, fmt.name))
    return found


def dataset_path(choice: DatasetChoice, roots: list[Path], synthetic_root: Path) -> Path | None:
    """The validated folder of a choice (through :func:`app.safety.safe_data_dir`); None when refused."""
    if choice.synthetic:
        return synthetic_root
    if not 0 <= choice.root_index < len(roots):
        return None
    return safe_data_dir(choice.name, [roots[choice.root_index]])


def split_table(report: CheckReport) -> pd.DataFrame:
    """The split statistics of a dataset check, one row per split (what ``cpl check`` prints)."""
    rows = [{"split": s.name, "folder": Path(s.folder).name, "images": s.images, "identities": s.identities,
             "cameras": s.cameras, "junk (-1)": s.junk, "distractors (0)": s.distractors, "ignored files": s.ignored,
             "unparsed names": s.unparsed} for s in report.splits.values()]
    return pd.DataFrame(rows)


def folder_stamp(path: Path) -> tuple:
    """Modification times of a dataset folder and of everything directly in it (split folders, list files,
    identity folders): a check result's cache key."""
    try:
        with os.scandir(path) as it:
            entries = sorted((e.name, e.stat().st_mtime_ns) for e in it)
        return path.stat().st_mtime_ns, tuple(entries)
    except OSError:
        return (0,)


# ---------------------------------------------------------------------------------------------- config


def config_files(folder: Path = CONFIGS_DIR) -> list[Path]:
    """The YAML configs a run can start from (the packaged ``cpl/configs/*.yaml``), sorted by name."""
    return sorted(p for p in folder.glob("*.yaml") if p.is_file())


def base_defaults(path: Path) -> Config:
    """The base config's values, to pre-fill the form (validated; the form always sets the dataset,
    so a config without ``data.root`` is fine here)."""
    return load_config(path, ["data.root=dataset-chosen-on-the-form"])


def _quote(value: str) -> str:
    """A string as a YAML scalar that survives ``key=value`` parsing (paths with ':' or '#')."""
    return json.dumps(value)


def scaled_epochs(base: Config, epochs: int) -> tuple[list[int], int]:
    """LR milestones and warm-up of ``base`` rescaled to ``epochs`` (they are fractions of the schedule).

    A warm-up of -1 (each method's published share of the schedule) scales by itself and stays -1.
    """
    warmup = base.train.warmup_epochs
    if epochs == base.train.epochs:
        return list(base.train.lr_milestones), warmup
    ratio = epochs / base.train.epochs
    milestones = sorted({min(max(1, round(m * ratio)), max(1, epochs - 1)) for m in base.train.lr_milestones})
    return milestones, warmup if warmup < 0 else min(round(warmup * ratio), max(0, epochs - 1))


@dataclass
class RunChoices:
    """The Launch form's values. ``extra`` holds free ``key=value`` overrides applied last."""

    data_root: Path  # resolved dataset folder (for the synthetic one: where it is generated)
    synthetic: bool
    method: str
    source: str = "gan"
    num_images: int = 1500
    holdout_fraction: float = 0.5
    folder: Path | None = None
    center_weight: float = 1e-4
    center_alpha: float = 0.5
    epochs: int = 12
    backbone: str = "efficientnet_lite0"
    pretrained: str = "auto"
    seed: int = 0
    device: str = "cpu"
    name: str = ""
    tricks: dict[str, object] = field(default_factory=dict)  # strong-baseline settings: dotted key -> value
    remedies: dict[str, object] = field(default_factory=dict)  # a run's hub-collapse remedies: dotted key -> value
    epoch_length: str = "trained"  # train.epoch_length (set when it differs from the base config)
    extra: list[str] = field(default_factory=list)
    kind: str = formats.AUTO  # data.kind of a dataset folder: its format (cpl.data.formats.FORMATS), or auto


def overrides_for(choices: RunChoices, base: Config, *, sweep: bool = False) -> list[str]:
    """``key=value`` overrides turning the base config into the chosen run.

    For a sweep, method, seed and unlabeled-image count are left out: every cell sets its own. A labeled-only
    method's source is its control (:data:`CONTROL_SOURCE_INFO`); ``none`` is an ordinary reference.
    """
    c = choices
    out = [f"data.kind={formats.SYNTHETIC if c.synthetic else c.kind}", f"data.root={_quote(str(c.data_root))}"]
    if c.name:
        out.append(f"name={_quote(c.name)}")
    if not sweep:
        out += [f"train.method={c.method}", f"seed={c.seed}"]
    out.append(f"unlabeled.source={c.source}")
    source = SOURCES[c.source]
    if source.num_images == DRAWN and not sweep:  # the form asks for the count only where it is drawn
        out.append(f"unlabeled.num_images={c.num_images}")
    out += [f"unlabeled.{key}={source_option(c, key)}" for key in source.options]
    if c.epoch_length != base.train.epoch_length:
        out.append(f"train.epoch_length={c.epoch_length}")
    out += [f"train.center_weight={c.center_weight}", f"train.center_alpha={c.center_alpha}",
            f"train.epochs={c.epochs}"]
    milestones, warmup = scaled_epochs(base, c.epochs)
    if c.epochs != base.train.epochs:
        out.append(f"train.lr_milestones={milestones}")
        if warmup >= 0:
            out.append(f"train.warmup_epochs={warmup}")
    out += [f"model.backbone={c.backbone}", f"model.pretrained={_quote(c.pretrained)}", f"device={c.device}"]
    out += trick_overrides(c.tricks, base) + trick_overrides(c.remedies, base)
    return out + [x.strip() for x in c.extra if x.strip()]


def source_option(choices: RunChoices, key: str) -> str:
    """The override value of the ``unlabeled.*`` option ``key`` (an option of a source's ``options``) in the form."""
    values = {"holdout_fraction": str(choices.holdout_fraction), "folder": _quote(str(choices.folder or ""))}
    return values[key]


def trick_overrides(tricks: dict[str, object], base: Config) -> list[str]:
    """``key=value`` for the strong-baseline (or remedy) settings that differ from the base config (the others stay
    implicit, so a paper config with every trick off launches exactly as written)."""
    out = []
    for key, value in tricks.items():
        section, name = key.split(".")
        if getattr(getattr(base, section), name) != value:
            out.append(f"{key}={_quote(value) if isinstance(value, str) else str(value).lower()}")
    return out


def parse_extra(text: str) -> list[str]:
    """Free-form overrides, one ``key=value`` per line (blank lines and ``#`` comments skipped)."""
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def resolve(base_path: Path, overrides: list[str], fast: bool) -> Config:
    """The config a launch would run; raises :class:`ConfigError` naming the bad key."""
    cfg = load_config(base_path, overrides)
    return fast_dev_run(cfg) if fast else cfg


def cli_args(base_path: Path, overrides: list[str], fast: bool) -> list[str]:
    """The ``cpl run`` arguments equivalent to a launch (recorded in run.json, shown on the page)."""
    args = ["--config", str(base_path)]
    for o in overrides:
        args += ["--set", o]
    return args + (["--fast-dev-run"] if fast else [])


def launch_run(cfg: Config, runs_root: Path, nproc: int, argv: list[str]) -> tuple[RunDir, int]:
    """Create the run directory and start it detached; returns the run and the launcher's pid."""
    run = prepare_run(cfg, runs_root, argv=argv)
    return run, launch_resume(run, nproc=nproc)


def sweep_argv(runs_root: Path, spec: dict) -> list[str]:
    """``cpl sweep`` for a sweep folder's ``sweep.json``: starts it, or resumes it (finished cells are skipped),
    with the executor it last ran with (local, or Ray and its cluster address)."""
    args = ["--runs-root", str(runs_root), "sweep", "--config", str(spec["config_path"]),
            "--methods", ",".join(spec["methods"]), "--gan-images", ",".join(map(str, spec["gan_images"])),
            "--seeds", ",".join(map(str, spec["seeds"])), "--sweep-id", str(spec["id"])]
    for o in spec.get("overrides") or []:
        args += ["--set", str(o)]
    variants = [variant_from_dict(v) for v in spec.get("variants") or []]
    if any(v.name != PLAIN for v in variants):
        args += ["--variants", format_variants(variants)]
    args += executor_argv(spec.get("executor"))
    flags = ["--fast-dev-run"] * bool(spec.get("fast_dev_run")) + ["--step-matched"] * bool(spec.get("step_matched"))
    return cpl_command(*args, *flags)


def start_sweep(runs_root: Path, folder: Path) -> int:
    """Run (or resume) the sweep in ``folder`` detached, logging to its log.txt; returns the pid."""
    spec = json.loads((folder / "sweep.json").read_text())
    argv = sweep_argv(runs_root, spec)
    pid = spawn(argv, folder / "log.txt")
    # read_status reads this pid until the sweep process writes its own status.json
    write_json(folder / "launch.json", {"argv": argv, "launched": time.time(), "pid": pid, "nproc": 1})
    return pid


def launch_sweep(runs_root: Path, base_path: Path, methods: list[str], gan_images: list[int], seeds: list[int],
                 overrides: list[str], fast: bool, step_matched: bool = False,
                 variants: list[Variant] | None = None) -> Path:
    """Validate the grid (``create_sweep``) and start it detached; returns the sweep folder."""
    folder = create_sweep(runs_root, str(base_path), methods, gan_images, seeds, overrides, None, fast, step_matched,
                          variants)
    start_sweep(runs_root, folder)
    return folder


def parse_int_list(text: str, what: str) -> list[int]:
    """``"0, 12000,24000"`` → [0, 12000, 24000]; raises :class:`ConfigError` naming ``what``."""
    try:
        values = [int(v.strip().replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated whole numbers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{what}: give at least one value")
    if any(v < 0 for v in values):
        raise ConfigError(f"{what}: values must be >= 0, got {text!r}")
    return sorted(set(values))
