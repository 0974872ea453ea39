"""`cpl sweep`: grid planning, the Table-1 layout with mean ± std and the improvement row, a real tiny
sweep on the synthetic dataset that is resumable (finished cells are skipped), and the same sweep killed
between and inside cells (``CPL_FAULT``) then run again: the very tables of the sweep never interrupted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_resume import _assert_whole

from cpl.sweep.grid import Cell, cell_config, plan_cells
from cpl.sweep.tables import aggregate, markdown_table, pl_accuracy_by_epoch, zero_row_label

REPO = Path(__file__).resolve().parents[1]


def test_plan_runs_references_once_per_seed():
    cells = plan_cells(["baseline", "center", "cpl", "lsro"], [0, 12000, 24000], [0, 1])
    assert Cell("baseline", 0, 0) in cells and Cell("center", 0, 1) in cells
    assert Cell("cpl", 0, 0) not in cells  # 0 GAN images for a pseudo-label method is the baseline itself
    assert sum(c.method == "lsro" for c in cells) == 4 and len(cells) == 2 * (2 + 2 * 2)


def test_table_mean_std_and_improvement():
    rows = [{"method": "baseline", "gan_images": 0, "rank1": r, "mAP": m} for r, m in ((50, 30), (52, 32))]
    rows += [{"method": "cpl", "gan_images": 100, "rank1": r, "mAP": m} for r, m in ((55, 33), (57, 35))]
    rows += [{"method": "cpl", "gan_images": 200, "rank1": 60.0, "mAP": 34.0}]
    agg = aggregate(rows)
    by = {(a["method"], a["gan_images"]): a for a in agg}
    assert by[("baseline", 0)]["rank1"] == 51 and by[("baseline", 0)]["rank1_std"] == pytest.approx(2 ** 0.5)
    md = markdown_table(agg, ["baseline", "cpl"])
    lines = md.strip().splitlines()
    assert lines[0] == "| #unlabeled | cpl rank-1 | cpl mAP |"
    assert lines[2].startswith("| 0 (baseline) | 51.00 ± 1.41 | 31.00 ± 1.41 |")
    assert lines[3].startswith("| 100 | 56.00 ± 1.41 | 34.00 ± 1.41 |")
    assert lines[4] == "| 200 | 60.00 | 34.00 |"
    assert lines[5] == "| improvement | +9.00 | +3.00 |"  # best count minus the baseline, as in the paper


@pytest.mark.timeout(900)
def test_holdout_accuracy_per_epoch_with_chance():
    nan = float("nan")
    rows = [{"method": "cpl", "gan_images": 970, "num_classes": 485, "pl_acc_epochs": [nan, 10.0, 20.0]},
            {"method": "cpl", "gan_images": 970, "num_classes": 485, "pl_acc_epochs": [nan, 12.0, 24.0]},
            {"method": "baseline", "gan_images": 0}]
    md = pl_accuracy_by_epoch(rows).splitlines()
    assert md[0] == "| method | #unlabeled | chance (1/K) | epoch 1 | epoch 2 | epoch 3 |"
    assert md[2] == "| cpl | 970 | 0.21 | – | 11.00 ± 1.41 | 22.00 ± 2.83 |"
    assert len(md) == 3


def test_reference_cells_drop_the_unlabeled_knobs():
    spec = {"id": "s", "config": {"data": {"root": "x"}, "train": {"warmup_epochs": 2, "unlabeled_ramp_epochs": 1}}}
    base = cell_config(spec, Cell("baseline", 0, 0))
    assert (base.unlabeled.source, base.train.warmup_epochs, base.train.unlabeled_ramp_epochs) == ("none", -1, 0)
    cpl = cell_config(spec, Cell("cpl", 100, 1))
    assert (cpl.train.warmup_epochs, cpl.unlabeled.num_images, cpl.seed) == (2, 100, 1)


@pytest.mark.slow  # two cells trained (~40 s); the app fixtures run a sweep in the default tier
def test_tiny_sweep_end_to_end_and_resumable(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cpl", "--runs-root", str(tmp_path), "sweep", "--config", "configs/synthetic.yaml",
           "--methods", "baseline,cpl", "--gan-images", "0,24", "--seeds", "0", "--sweep-id", "tiny",
           "--fast-dev-run", "--set", "eval.umap=false", "--set", f"data.root={tmp_path / 'synthetic'}",
           "--set", "data.synthetic.ids=12"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=800)
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp_path / "sweeps" / "tiny"
    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == "finished"
    md = (folder / "results.md").read_text()
    assert "2/2 cells finished" in md and "| 0 (baseline) |" in md and "| 24 |" in md and "| improvement |" in md
    csv_lines = (folder / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,gan_images,n,rank1") and len(csv_lines) == 3
    cpl_run = tmp_path / "tiny--cpl-g24-s0"
    assert json.loads((cpl_run / "results.json").read_text())["num_unlabeled"] == 24
    assert json.loads((tmp_path / "tiny--baseline-g0-s0" / "results.json").read_text())["num_unlabeled"] == 0
    before = (cpl_run / "results.json").stat().st_mtime
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and (cpl_run / "results.json").stat().st_mtime == before  # skipped


KILL_SWEEP = ["--config", "configs/synthetic.yaml", "--methods", "baseline,cpl", "--gan-images", "0,24", "--seeds", "0",
              "--sweep-id", "tiny", "--fast-dev-run", "--set", "eval.umap=false", "--set", "data.synthetic.ids=12"]
# --fast-dev-run: 2 training epochs of 3 iterations per cell, one DCGAN epoch of 2 steps (cpl.config.fast_dev_run)


def _run_sweep(runs: Path, data: Path, fault: str = "") -> subprocess.CompletedProcess:
    """``cpl sweep`` in its own process group (a ``killpg`` fault takes the sweep and its cell, not pytest)."""
    env = {k: v for k, v in os.environ.items() if k != "CPL_FAULT"} | {"OMP_NUM_THREADS": "1"}
    env |= {"CPL_FAULT": fault} if fault else {}
    cmd = [sys.executable, "-m", "cpl", "--runs-root", str(runs), "sweep", *KILL_SWEEP, "--set", f"data.root={data}"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=800, start_new_session=True)


@pytest.fixture(scope="module")
def reference_sweep(tmp_path_factory) -> tuple[Path, Path]:
    """The uninterrupted sweep's runs root (its own GAN cache) and the shared synthetic data folder."""
    tmp = tmp_path_factory.mktemp("sweep-ref")
    out = _run_sweep(tmp / "runs", tmp / "synthetic")
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "runs", tmp / "synthetic"


@pytest.mark.slow  # three cells' worth of training per case, plus the reference sweep
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("fault, where", [
    ("kill:sweep:cell=1", "between cells: the sweep dies after the baseline cell, before the cpl cell"),
    ("killpg:train:epoch=1:iter=1", "inside the baseline cell's second epoch, with the sweep (a power cut)"),
    ("killpg:gan-train:epoch=0", "inside the cpl cell's DCGAN training, with the sweep"),
])
def test_sweep_killed_then_run_again_equals_the_uninterrupted_sweep(reference_sweep, tmp_path, fault, where):
    ref_root, data = reference_sweep
    runs = tmp_path / "runs"
    killed = _run_sweep(runs, data, fault)
    assert killed.returncode == -9, (where, killed.stderr[-3000:])
    folder = runs / "sweeps" / "tiny"
    assert json.loads((folder / "status.json").read_text())["state"] == "running"  # died, nothing recorded an end
    _assert_whole(runs)
    again = _run_sweep(runs, data)
    assert again.returncode == 0, (where, again.stderr[-3000:])
    _assert_whole(runs, resumed=True)
    assert json.loads((folder / "status.json").read_text())["state"] == "finished"
    ref_folder = ref_root / "sweeps" / "tiny"
    for name in ("results.csv", "runs.csv", "results.md"):
        assert (folder / name).read_text() == (ref_folder / name).read_text(), (where, name)
    for cell in ("tiny--baseline-g0-s0", "tiny--cpl-g24-s0"):
        ref, got = (json.loads((r / cell / "results.json").read_text()) for r in (ref_root, runs))
        assert {k: got[k] for k in ("rank1", "mAP", "rerank")} == {k: ref[k] for k in ("rank1", "mAP", "rerank")}
    assert (runs / "tiny--cpl-g24-s0" / "pseudo_labels.csv").read_text() == \
        (ref_root / "tiny--cpl-g24-s0" / "pseudo_labels.csv").read_text()


def test_step_matched_cells_are_the_references_at_every_count():
    cells = plan_cells(["baseline", "center", "cpl"], [0, 1000], [0], step_matched=True)
    assert cells == [Cell("baseline", 0, 0), Cell("center", 0, 0), Cell("baseline", 1000, 0), Cell("center", 1000, 0),
                     Cell("cpl", 1000, 0)]
    assert plan_cells(["baseline", "cpl"], [0, 1000], [0]) == [Cell("baseline", 0, 0), Cell("cpl", 1000, 0)]


def test_cells_of_the_controls_get_their_settings():
    spec = {"id": "s", "config": {"data": {"root": "x"}, "train": {"epoch_length": "labeled"}}}
    matched = cell_config(spec, Cell("baseline", 1000, 0))  # the GAN runs' step budget, never their images
    assert (matched.unlabeled.source, matched.unlabeled.num_images, matched.train.epoch_length) == ("gan", 1000,
                                                                                                     "union")
    plain = cell_config(spec, Cell("baseline", 0, 0))
    assert (plain.unlabeled.source, plain.train.epoch_length) == ("none", "trained")
    assert cell_config(spec, Cell("cpl", 1000, 0)).train.epoch_length == "labeled"  # the sweep's setting
    holdout = {"id": "s", "config": {"data": {"root": "x"}, "unlabeled": {"source": "holdout"}}}
    control = cell_config(holdout, Cell("center", 0, 2))
    assert (control.unlabeled.source, control.seed) == ("holdout", 2)  # the labeled-only control


def test_create_sweep_refuses_a_step_matched_grid_without_unlabeled_images(tmp_path):
    from cpl.config import ConfigError
    from cpl.sweep.grid import create_sweep

    with pytest.raises(ConfigError, match="cell baseline with 100 unlabeled images: train.epoch_length: union"):
        create_sweep(tmp_path, "configs/synthetic.yaml", ["baseline", "cpl"], [0, 100], [0],
                     ["unlabeled.source=none", "model.pretrained=none"], "s", step_matched=True)
    folder = create_sweep(tmp_path, "configs/synthetic.yaml", ["baseline", "cpl"], [0, 100], [0],
                          ["model.pretrained=none"], "s", step_matched=True)
    spec = json.loads((folder / "sweep.json").read_text())
    assert spec["step_matched"] is True and [c["run_id"] for c in spec["cells"]] == [
        "s--baseline-g0-s0", "s--baseline-g100-s0", "s--cpl-g100-s0"]
    with pytest.raises(ConfigError, match="exists with a different grid"):
        create_sweep(tmp_path, "configs/synthetic.yaml", ["baseline", "cpl"], [0, 100], [0],
                     ["model.pretrained=none"], "s")


def test_table_names_the_step_matched_baseline_and_the_labeled_only_control():
    rows = [{"method": "baseline", "gan_images": 0, "rank1": 50.0, "mAP": 30.0},
            {"method": "baseline", "gan_images": 100, "rank1": 53.0, "mAP": 31.0},
            {"method": "baseline", "gan_images": 200, "rank1": 54.0, "mAP": 33.0},
            {"method": "cpl", "gan_images": 100, "rank1": 56.0, "mAP": 34.0},
            {"method": "cpl", "gan_images": 200, "rank1": 55.0, "mAP": 36.0}]
    lines = markdown_table(aggregate(rows), ["baseline", "cpl"]).strip().splitlines()
    assert lines[0] == ("| #unlabeled | baseline (step-matched) rank-1 | baseline (step-matched) mAP | cpl rank-1 "
                        "| cpl mAP |")
    assert lines[2] == "| 0 (baseline) | 50.00 | 30.00 | 50.00 | 30.00 |"
    assert lines[3] == "| 100 | 53.00 | 31.00 | 56.00 | 34.00 |"
    assert lines[5] == "| improvement | +4.00 | +3.00 | +6.00 | +6.00 |"  # more steps alone: +4 rank-1
    # cpl's best rank-1 (100 images) minus the baseline at 100 images' steps; best mAP (200) minus that at 200
    assert lines[6] == "| over the step-matched baseline |  |  | +3.00 | +3.00 |"
    control = markdown_table(aggregate(rows[:1] + rows[3:4]), ["baseline", "cpl"],
                             zero_label=zero_row_label("holdout")).splitlines()
    assert control[0] == "| #unlabeled | cpl rank-1 | cpl mAP |"
    assert control[2] == "| 0 (labeled-only control) | 50.00 | 30.00 |"
