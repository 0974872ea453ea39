"""Resume equivalence, for real: start `cpl run`, SIGKILL it mid-GAN and again mid-epoch, `cpl resume`,
and get exactly the results, pseudo-labels and features of the same run left alone (CPU, fixed seed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# gan.batch_size=16 gives the DCGAN several steps per epoch, so its checkpoint (the first kill point) exists for
# seconds even on a fast idle machine; with one or two steps per epoch the poll could miss it.
SETTINGS = ["--config", "configs/synthetic.yaml", "--fast-dev-run", "--set", "eval.umap=false",
            "--set", "train.max_iters_per_epoch=5", "--set", "gan.max_steps_per_epoch=6", "--set", "gan.epochs=3",
            "--set", "gan.batch_size=16", "--set", "unlabeled.num_images=48", "--set", "data.synthetic.ids=12"]


def _env(tmp: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _args(runs: Path, data: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "cpl", "--runs-root", str(runs), "run", "--run-dir", str(run_dir), *SETTINGS,
            "--set", f"data.root={data}"]


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before the kill point")
        time.sleep(0.05)
    raise AssertionError("kill point not reached in time")


def _status(run: Path) -> dict:
    try:
        return json.loads((run / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _resume(runs: Path, run: Path, env: dict) -> None:
    out = subprocess.run([sys.executable, "-m", "cpl", "--runs-root", str(runs), "resume", str(run)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.timeout(900)
def test_sigkill_mid_gan_and_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    data = tmp_path / "synthetic"
    env = _env(tmp_path)
    # Reference: the same run, never interrupted (its own runs root, hence its own GAN cache).
    ref_root = tmp_path / "ref"
    ref = ref_root / "run"
    out = subprocess.run(_args(ref_root, data, ref), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

    root = tmp_path / "killed"
    run = root / "run"
    gan_ckpts = lambda: list((root / "_cache" / "gan").glob("*/train/*.pt"))  # noqa: E731
    # 1. Kill while the DCGAN trains (after its first checkpoint, so the resume has something to continue).
    proc = subprocess.Popen(_args(root, data, run), cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: bool(gan_ckpts()), proc)
    _kill(proc)
    assert _status(run).get("stage") == "gan"
    info = json.loads(next((root / "_cache" / "gan").glob("*/gan.json")).read_text())
    assert info["state"] == "training"
    # 2. Resume in the background and kill it again in the middle of the second training epoch.
    proc = subprocess.Popen([sys.executable, "-m", "cpl", "--runs-root", str(root), "resume", str(run)], cwd=REPO,
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: _status(run).get("stage") == "train" and _status(run).get("epoch") == 1
              and (_status(run).get("iter") or 0) >= 2, proc)
    _kill(proc)
    assert not (run / "results.json").exists()
    # 3. Resume to the end.
    _resume(root, run, env)

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
