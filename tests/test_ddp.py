"""Data parallelism on CPU (gloo): the sharded loop is the single-process loop of the same global batch.

1. Engine level, exact: with a network without batch statistics (GroupNorm) and no dropout, 2 ranks x 4
   images train to the same weights, centers and pseudo-labels as 1 process x 8 images (float tolerance
   from the order of the gradient all-reduce), also with the strong-baseline tricks and with the remedies for
   hub collapse (a balanced assignment over features whose extraction is shared by the ranks).
2. End to end: `torchrun --nproc-per-node 2 -m cpl run` finishes, rank 0 writes the run directory, the
   centers are identical on both ranks, and the metrics are within a stated tolerance of a single-process
   run (BatchNorm statistics are per rank: 8 images instead of 16, so the runs are not bit-identical).
3. The run queue: two torchrun launches on one device run one after the other (slow tier).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from app_fixtures import wait_for
from torch import nn

from cpl.config import Config, fast_dev_run, load_config
from cpl.engine.dist import DistInfo
from cpl.engine.trainer import TrainData, Trainer
from cpl.pseudo import get_strategy
from cpl.runs.launch import launch_resume, prepare_run
from cpl.runs.queue import lock_holder
from cpl.runs.status import FINAL, read_raw
from cpl.synth import ensure

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TinyNet(nn.Module):
    """Conv → GroupNorm → pool: no per-batch statistics, so sharding cannot change the math."""

    feat_dim = 16

    def __init__(self, k: int):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(16, k)

    def forward(self, x):
        f = self.trunk(x)
        return f, self.classifier(f)

    def param_groups(self, lr, mult):
        return [{"params": list(self.trunk.parameters()), "lr": lr, "name": "trunk"},
                {"params": list(self.classifier.parameters()), "lr": lr * mult, "name": "classifier"}]


def _cfg(tricks: bool = False, remedies: bool = False) -> Config:
    c = Config()
    c.data.root = "unused"
    c.train.epochs, c.train.batch_size, c.train.lr, c.train.log_every = 2, 8, 0.05, 1
    c.train.lr_milestones = [1]
    c.train.center_weight = 0.01
    c.augment.pad, c.augment.random_erasing = 2, 0.5
    if tricks:  # the strong-baseline options whose math sharding must not change (batch-hard mining is per rank)
        # share 0.5: 8 GAN images per batch for 1 and 2 processes alike (other shares round to a multiple of W)
        c.train.sampler, c.train.pk_instances, c.train.label_smoothing, c.train.unlabeled_share = "pk", 2, 0.1, 0.5
        c.train.center_update, c.train.lr_warmup_epochs = "sgd", 1
    if remedies:  # the epoch-start extraction is sharded over the ranks; the balanced labels must not notice
        c.train.warmup_epochs, c.train.assignment, c.train.similarity, c.train.csls_k = 1, "sinkhorn", "csls", 3
        c.train.select_min_margin, c.eval.batch_size = 0.001, 4  # 16 unlabeled images: 4 chunks, 2 per rank
    return c


def _data() -> TrainData:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (40, 3, 16, 8), generator=g, dtype=torch.uint8)
    return TrainData(images=images, labels=torch.arange(24) % 4, num_labeled=24, num_classes=4)


def _train(info: DistInfo, tricks: bool = False, remedies: bool = False):
    torch.manual_seed(0)
    model = TinyNet(4)
    cfg = _cfg(tricks, remedies)
    tr = Trainer(cfg, _data(), model, get_strategy(cfg.train), torch.device("cpu"), info)
    tr.fit()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, tr.state


def _worker(rank: int, world: int, init_file: str, out: str, tricks: bool, remedies: bool) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    weights, state = _train(DistInfo(rank, world, rank), tricks, remedies)
    torch.save({"weights": weights, "centers": state.centers.detach(), "labels": np.stack(state.history_labels)},
               f"{out}.{rank}")
    tdist.destroy_process_group()


@pytest.mark.parametrize("tricks,remedies", [(False, False), (True, False), (False, True)],
                         ids=["paper", "pk-sgd-centers-smoothing-warmup", "sinkhorn-csls-selection"])
def test_two_ranks_equal_one_process_of_the_same_global_batch(tmp_path, tricks, remedies):
    torch.set_num_threads(1)
    ref_w, ref_state = _train(DistInfo(), tricks, remedies)
    if remedies:  # the case exercises the balanced labels
        assert (ref_state.history_labels[1] >= 0).all()
    out = str(tmp_path / "rank")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), out, tricks, remedies), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]
    for r in ranks:
        for k, v in ref_w.items():
            assert torch.allclose(r["weights"][k], v, atol=1e-5, rtol=1e-4), k
        assert torch.allclose(r["centers"], ref_state.centers.detach(), atol=1e-5)
        assert np.array_equal(r["labels"], np.stack(ref_state.history_labels))  # same pseudo-labels
    assert torch.equal(ranks[0]["centers"], ranks[1]["centers"])  # bit-identical across ranks


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # three processes train two runs (~30 s); sharding is tested exactly in-process
@pytest.mark.timeout(900)
def test_torchrun_two_gloo_processes_end_to_end(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CPL_RUNS_ROOT": str(tmp_path)}
    common = ["--config", "configs/synthetic.yaml", "--fast-dev-run", "--set", "eval.umap=false",
              "--set", "unlabeled.num_images=32", "--set", f"data.root={tmp_path / 'synthetic'}",
              "--set", "data.synthetic.ids=12"]
    single = _run([sys.executable, "-m", "cpl", "run", "--run-dir", str(tmp_path / "single"), *common], env)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "cpl",
                "run", "--run-dir", str(tmp_path / "ddp"), *common], env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    res_single = json.loads((tmp_path / "single" / "results.json").read_text())
    res_ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert res_ddp["world_size"] == 2
    epochs = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
              if '"type": "epoch"' in line]
    assert len(epochs) == 2 and all(e["centers_rank_diff"] == 0.0 for e in epochs)
    # Same data, same global batch, same initial weights; only BatchNorm statistics differ (per rank).
    # Tolerance: 15 points of rank-1 and mAP on 48 queries after 6 iterations.
    assert abs(res_ddp["rank1"] - res_single["rank1"]) <= 15.0
    assert abs(res_ddp["mAP"] - res_single["mAP"]) <= 15.0
    files = lambda run: sorted(p.name for p in (tmp_path / run).iterdir())  # noqa: E731
    assert files("ddp") == files("single")  # rank 0 wrote the whole run directory


def _frozen_rank0(run) -> int | None:
    """The pid of the run's rank 0 (status.json) once it is stopped (SIGSTOP: state ``T`` in /proc), else None."""
    pid = (read_raw(run) or {}).get("pid")
    try:
        stat = Path(f"/proc/{pid}/stat").read_text() if pid else ""
    except OSError:
        return None
    return pid if stat and stat[stat.rindex(")") + 2] == "T" else None


def _waiting(run) -> dict | None:
    """The run's status once it waits in the queue for a device, else None."""
    raw = read_raw(run) or {}
    return raw if raw.get("waiting_for") else None


@pytest.mark.slow  # two torchrun jobs of two gloo processes each, one after the other
@pytest.mark.timeout(900)
def test_two_torchrun_launches_on_one_device_wait_for_each_other(tmp_path):
    """Job A (2 gloo processes on the CPU) is frozen after its training with the CPU claimed
    (``CPL_FAULT=stop:train-end:rank=0``: deterministic, no race with the machine's speed). Job B, launched the
    same way, must wait in the queue for the CPU (status ``queued``, ``waiting_for: cpu``, A still the lock's
    holder); once A continues, both finish, each with the CPU claimed for its two processes."""
    data = ensure(tmp_path / "synthetic", ids=12, seed=0, cameras=4)
    cfg = fast_dev_run(load_config(os.path.join(REPO, "configs/synthetic.yaml"), [
        f"data.root={data}", "data.synthetic.ids=12", "unlabeled.source=none", "train.method=baseline",
        "eval.umap=false", "device=cpu"]))
    a, b = (prepare_run(cfg, tmp_path, tmp_path / name) for name in ("a", "b"))
    env = {"OMP_NUM_THREADS": "1"}
    launch_resume(a, nproc=2, env={**env, "CPL_FAULT": "stop:train-end:rank=0"})
    pid_a = wait_for(lambda: _frozen_rank0(a), 600, what="job A to freeze after its training")
    assert read_raw(a)["devices"] == ["cpu"] and lock_holder(tmp_path, "cpu").endswith(" a")
    launch_resume(b, nproc=2, env=env)
    try:
        queued = wait_for(lambda: _waiting(b), 600, what="job B to queue for the CPU")
        assert (queued["state"], queued["waiting_for"], queued["devices"]) == ("queued", "cpu", None)
        assert lock_holder(tmp_path, "cpu").endswith(" a") and not b.results.exists()
    finally:
        os.kill(pid_a, signal.SIGCONT)
    for run in (a, b):
        wait_for(lambda r=run: (read_raw(r) or {}).get("state") in FINAL, 600, what=f"{run.id} to end")
    for run in (a, b):
        raw = read_raw(run)
        assert (raw["state"], raw["devices"], raw["waiting_for"]) == ("finished", ["cpu"], None), run.log.read_text()
        assert json.loads(run.results.read_text())["world_size"] == 2
