"""Faults a run must survive or refuse cleanly (docs/reliability.md): non-finite loss, a full disk, bad
data and bad settings refused before any work, concurrent launches on one device."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest

from cpl.config import load_config
from cpl.runs.launch import launch_resume, prepare_run
from cpl.runs.status import read_status

REPO = Path(__file__).resolve().parents[1]
TINY = ["--fast-dev-run", "--set", "eval.umap=false", "--set", "unlabeled.num_images=16",
        "--set", "data.synthetic.ids=12"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from cpl.synth import ensure

    return ensure(tmp_path_factory.mktemp("data") / "synthetic", ids=12, seed=0, cameras=4)


def _cpl(runs: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cpl", "--runs-root", str(runs), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # a whole CLI run (~25 s); tests/test_engine.py covers the loop fast
def test_non_finite_loss_stops_the_run_with_its_position_and_a_hint(tmp_path, synth):
    out = _cpl(tmp_path, "run", "--config", "configs/synthetic.yaml", "--run-dir", str(tmp_path / "nan"), *TINY,
               "--set", f"data.root={synth}", "--set", "train.lr=1e30", "--set", "unlabeled.source=none")
    assert out.returncode == 1
    st = json.loads((tmp_path / "nan" / "status.json").read_text())
    assert st["state"] == "failed" and "non-finite loss at epoch 1/2, iteration" in st["error"]
    assert "train.lr" in st["hint"]
    assert "Traceback" not in out.stderr
    assert not list((tmp_path / "nan" / "checkpoints").glob("*.pt"))  # nothing trained on NaN was saved


def test_full_disk_fails_before_writing_gan_samples(tmp_path, synth, monkeypatch):
    from cpl import pipeline
    from cpl.stages import context

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(context.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6))
    cfg = load_config(REPO / "configs/synthetic.yaml", [f"data.root={synth}", "data.synthetic.ids=12",
                                                       "unlabeled.num_images=5000"])
    run = prepare_run(cfg, tmp_path)
    with pytest.raises(pipeline.RunFailed, match="not enough disk space for 5000 GAN samples"):
        pipeline.execute(run)
    st = read_status(run)
    assert st["state"] == "failed" and "free disk space" in st["hint"]
    assert not (tmp_path / "_cache" / "gan").exists() or not list((tmp_path / "_cache" / "gan").rglob("*.png"))


def test_corrupt_image_is_refused_before_training_with_its_name(tmp_path, synth):
    data = tmp_path / "broken"
    shutil.copytree(synth, data)
    victim = sorted((data / "bounding_box_train").glob("*.jpg"))[3]
    victim.write_bytes(victim.read_bytes()[:200])  # a truncated JPEG: valid header, missing data
    out = _cpl(tmp_path, "run", "--config", "configs/synthetic.yaml", "--run-dir", str(tmp_path / "r"), *TINY,
               "--set", "data.kind=market", "--set", f"data.root={data}")
    assert out.returncode == 1 and victim.name in out.stderr and "Traceback" not in out.stderr
    st = json.loads((tmp_path / "r" / "status.json").read_text())
    assert st["state"] == "failed" and st["stage"] == "data" and victim.name in st["error"]
    assert not (tmp_path / "r" / "checkpoints").exists() and not (tmp_path / "r" / "metrics.jsonl").exists()


@pytest.mark.parametrize("override, key", [("train.center_weight=-1", "train.center_weight"),
                                           ("train.epochs=0", "train.epochs"), ("train.nope=3", "train.nope")])
def test_bad_settings_are_refused_naming_the_key(tmp_path, override, key):
    out = _cpl(tmp_path, "run", "--config", "configs/synthetic.yaml", "--set", override, timeout=60)
    assert out.returncode == 2 and out.stderr.startswith(f"cpl: error: {key}:") and "Traceback" not in out.stderr
    assert not any(tmp_path.iterdir())  # no half-made run directory


@pytest.mark.slow  # two runs trained (~25 s); tests/test_runs.py covers the queue fast
def test_two_runs_launched_at_once_queue_for_the_device_and_both_finish(tmp_path, synth):
    cfg = load_config(REPO / "configs/synthetic.yaml", [f"data.root={synth}", "data.synthetic.ids=12",
                                                       "unlabeled.source=none", "train.method=baseline",
                                                       "eval.umap=false", "device=cpu"])
    from cpl.config import fast_dev_run

    runs = [prepare_run(fast_dev_run(cfg), tmp_path, tmp_path / f"r{i}") for i in range(2)]
    for r in runs:
        launch_resume(r, env={"OMP_NUM_THREADS": "1"})
    seen_queued = False
    deadline = time.time() + 600
    while time.time() < deadline:
        states = [read_status(r)["state"] for r in runs]
        seen_queued |= "queued" in states and "running" in states
        if all(s in ("finished", "failed", "cancelled") for s in states):
            break
        time.sleep(0.2)
    assert [read_status(r)["state"] for r in runs] == ["finished", "finished"], [r.log.read_text()[-500:]
                                                                               for r in runs]
    assert seen_queued  # one waited for the other instead of both running on the CPU at once
