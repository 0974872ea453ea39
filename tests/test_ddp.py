"""Data parallelism on CPU (gloo): the sharded loop is the single-process loop of the same global batch.

1. Engine level, exact: with a network without batch statistics (GroupNorm) and no dropout, 2 ranks x 4
   images train to the same weights, centers and pseudo-labels as 1 process x 8 images (float tolerance
   from the order of the gradient all-reduce).
2. End to end: `torchrun --nproc-per-node 2 -m cpl run` finishes, rank 0 writes the run directory, the
   centers are identical on both ranks, and the metrics are within a stated tolerance of a single-process
   run (BatchNorm statistics are per rank: 8 images instead of 16, so the runs are not bit-identical).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch import nn

from cpl.config import Config
from cpl.engine.dist import DistInfo
from cpl.engine.trainer import TrainData, Trainer
from cpl.pseudo import get_strategy

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


def _cfg() -> Config:
    c = Config()
    c.data.root = "unused"
    c.train.epochs, c.train.batch_size, c.train.lr, c.train.log_every = 2, 8, 0.05, 1
    c.train.lr_milestones = [1]
    c.train.center_weight = 0.01
    c.augment.pad, c.augment.random_erasing = 2, 0.5
    return c


def _data() -> TrainData:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (40, 3, 16, 8), generator=g, dtype=torch.uint8)
    return TrainData(images=images, labels=torch.arange(24) % 4, num_labeled=24, num_classes=4)


def _train(info: DistInfo):
    torch.manual_seed(0)
    model = TinyNet(4)
    tr = Trainer(_cfg(), _data(), model, get_strategy(_cfg().train), torch.device("cpu"), info)
    tr.fit()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, tr.state


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    weights, state = _train(DistInfo(rank, world, rank))
    torch.save({"weights": weights, "centers": state.centers, "labels": np.stack(state.history_labels)},
               f"{out}.{rank}")
    tdist.destroy_process_group()


def test_two_ranks_equal_one_process_of_the_same_global_batch(tmp_path):
    torch.set_num_threads(1)
    ref_w, ref_state = _train(DistInfo())
    out = str(tmp_path / "rank")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]
    for r in ranks:
        for k, v in ref_w.items():
            assert torch.allclose(r["weights"][k], v, atol=1e-5, rtol=1e-4), k
        assert torch.allclose(r["centers"], ref_state.centers, atol=1e-5)
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
