"""Resume equivalence, for real: kill `cpl run` with SIGKILL at a named point (``CPL_FAULT``, cpl/runs/faults.py),
`cpl resume`, and get exactly the results, pseudo-labels and features of the same run left alone (CPU, fixed
seed). The kill points are deterministic: no polling, no race with the machine's speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# --fast-dev-run applies after --set (cpl.config.fast_dev_run): 2 training epochs of 3 iterations, one DCGAN
# epoch of 2 steps, whatever the overrides say about those.
SETTINGS = ["--config", "configs/synthetic.yaml", "--fast-dev-run", "--set", "eval.umap=false",
            "--set", "unlabeled.num_images=48", "--set", "data.synthetic.ids=12"]


def _env(fault: str = "") -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CPL_FAULT", None)
    return {**env, "CPL_FAULT": fault} if fault else env


def _args(runs: Path, data: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "cpl", "--runs-root", str(runs), "run", "--run-dir", str(run_dir), *SETTINGS,
            "--set", f"data.root={data}"]


def _status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def _killed(argv: list[str], fault: str) -> None:
    """Run ``argv`` with ``CPL_FAULT=fault``; it must die by SIGKILL at that point."""
    out = subprocess.run(argv, cwd=REPO, env=_env(fault), capture_output=True, text=True, timeout=600)
    assert out.returncode == -9, f"{fault}: rc {out.returncode}\n{out.stderr[-3000:]}"


def _resume_argv(runs: Path, run: Path) -> list[str]:
    return [sys.executable, "-m", "cpl", "--runs-root", str(runs), "resume", str(run)]


def _resume(runs: Path, run: Path) -> None:
    out = subprocess.run(_resume_argv(runs, run), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def _assert_whole(run: Path, resumed: bool = False) -> None:
    """Every file the run wrote is complete: JSON parses, arrays load; after a resume no temporary file of an
    interrupted atomic write is left (a kill can land inside the heartbeat's status.json write)."""
    for f in run.rglob("*"):
        if f.name.endswith(".tmp"):
            assert not resumed, f
            continue
        if f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix in (".npy", ".npz"):
            np.load(f)


def _assert_same(ref: Path, run: Path) -> None:
    a, b = json.loads((ref / "results.json").read_text()), json.loads((run / "results.json").read_text())
    for key in ("rank1", "rank5", "rank10", "mAP", "mINP"):
        assert a[key] == b[key], key
    assert a["rerank"] == b["rerank"]
    ref_pl = (ref / "pseudo_labels.csv").read_text().splitlines()
    got_pl = (run / "pseudo_labels.csv").read_text().splitlines()
    assert ref_pl == got_pl  # same labels, cosines, margins and sample file names
    for name in ("train", "query", "gallery", "unlabeled", "centers"):
        assert np.array_equal(np.load(ref / "features" / f"{name}.npy"), np.load(run / "features" / f"{name}.npy"))
    hist_a, hist_b = np.load(ref / "pseudo_history.npz"), np.load(run / "pseudo_history.npz")
    assert np.array_equal(hist_a["labels"], hist_b["labels"])
    assert _status(run)["state"] == "finished"


def _reference(tmp: Path, *extra: str) -> tuple[Path, Path]:
    """An uninterrupted run (its own runs root, hence its own GAN cache) and the synthetic data folder."""
    data, ref_root = tmp / "synthetic", tmp / "ref"
    out = subprocess.run(_args(ref_root, data, ref_root / "run") + list(extra), cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return ref_root / "run", data


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    return _reference(tmp_path_factory.mktemp("resume"))


@pytest.mark.timeout(900)
def test_killed_mid_gan_and_mid_epoch_then_resumed_equals_uninterrupted(reference, tmp_path):
    ref, data = reference
    root = tmp_path / "killed"
    run = root / "run"
    # 1. Killed inside DCGAN training, right after its first epoch's checkpoint.
    _killed(_args(root, data, run), "kill:gan-train:epoch=0")
    assert _status(run).get("stage") == "unlabeled"
    info = json.loads(next((root / "_cache" / "gan").glob("*/gan.json")).read_text())
    assert info["state"] == "training" and info["epochs_done"] == 1
    # 2. Resumed, killed again in the middle of the second training epoch.
    _killed(_resume_argv(root, run), "kill:train:epoch=1:iter=2")
    status = _status(run)
    assert (status["stage"], status["epoch"], status["iter"]) == ("train", 1, 3)
    assert not (run / "results.json").exists()
    _assert_whole(run)
    # 3. Resumed to the end.
    _resume(root, run)
    _assert_same(ref, run)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("fault", ["kill:data", "kill:gan-sample", "kill:train:epoch=0:iter=1",
                                   "kill:train-end", "kill:eval", "kill:rerank", "kill:results"])
def test_every_fault_point_resumes_to_the_same_run(reference, tmp_path, fault):
    ref, data = reference
    root = tmp_path / "killed"
    run = root / "run"
    _killed(_args(root, data, run), fault)
    assert _status(run)["state"] not in ("finished", "failed")
    _assert_whole(run)
    _resume(root, run)
    _assert_whole(run, resumed=True)
    _assert_same(ref, run)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_killed_in_the_umap_resumes_to_the_same_run_and_layout(tmp_path):
    """The one point the other runs skip (they turn the UMAP off): killed before the UMAP, resumed, the same
    run and the same 2-D layout (umap-learn with a fixed random_state runs single-threaded, deterministic)."""
    ref, data = _reference(tmp_path / "reference", "--set", "eval.umap=true")
    root = tmp_path / "killed"
    _killed(_args(root, data, root / "run") + ["--set", "eval.umap=true"], "kill:umap")
    assert not (root / "run" / "embedding.npz").exists()
    _assert_whole(root / "run")
    _resume(root, root / "run")
    _assert_whole(root / "run", resumed=True)
    _assert_same(ref, root / "run")
    a, b = np.load(ref / "embedding.npz"), np.load(root / "run" / "embedding.npz")
    assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)


# The remedies for hub collapse (docs/methods.md) after one labeled-only epoch: the second epoch's labels are
# Sinkhorn's over the epoch-start features with CSLS scores, and a selection drops the least similar images.
REMEDIES = ["--set", "train.warmup_epochs=1", "--set", "train.assignment=sinkhorn", "--set", "train.similarity=csls",
            "--set", "train.select_min_score=0.05"]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_run_with_the_remedies_killed_in_training_and_before_export_resumes_to_the_same_run(tmp_path):
    """Killed inside the first epoch with balanced labels (resumed from the warm-up's checkpoint, the labels are
    recomputed from it), and killed after training (the export's CSLS reference is the final features, not a
    state of the training loop): both resume to the run left alone."""
    ref, data = _reference(tmp_path / "reference", *REMEDIES)
    for fault in ("kill:train:epoch=1:iter=1", "kill:eval"):
        root = tmp_path / fault.replace(":", "-").replace("=", "")
        run = root / "run"
        _killed(_args(root, data, run) + REMEDIES, fault)
        _resume(root, run)
        _assert_same(ref, run)
