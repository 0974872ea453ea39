"""The controls every claim about pseudo-labels needs (docs/methods.md, "Controls").

* the labeled-only control for ``holdout``: ``baseline``/``center`` with ``unlabeled.source=holdout`` train on exactly
  the labeled rows a holdout run of the same seed keeps, and no held-out image is ever in one of their batches;
* the step-matched control: ``train.epoch_length`` sets what an epoch counts, so a GAN run and its baseline take the
  same number of optimizer steps (either at the baseline's budget or at the GAN run's), resumes bit-identically and
  keeps the learning-rate schedule on the epochs it defines;
* every setting refused by name where it cannot act.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from test_engine import _cfg, _data, _trainer

from cpl.config import ConfigError, controls, controls_of, load_config, to_dict
from cpl.data.image_source import Rows
from cpl.engine.optim import lr_at
from cpl.engine.sampling import shuffled_batches
from cpl.engine.seeding import make_generator
from cpl.engine.trainer import Hooks, TrainData

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _load(*sets: str):
    return load_config(None, ["data.root=unused", *sets])


# ---------------------------------------------------------------------------------------------- config


def test_controls_are_named_from_the_config():
    assert controls(_load("train.method=baseline")) == []  # the default gan source is not read by a baseline
    assert controls(_load("train.method=baseline", "unlabeled.source=holdout")) == ["labeled-only"]
    assert controls(_load("train.method=center", "unlabeled.source=holdout", "train.epoch_length=union")) == [
        "labeled-only", "step-matched"]
    assert controls(_load("train.method=baseline", "unlabeled.num_images=1000", "train.epoch_length=union")) == [
        "step-matched"]
    assert controls(_load("train.method=cpl", "train.epoch_length=labeled")) == ["labeled-epochs"]
    assert controls(_load("train.method=cpl", "unlabeled.source=holdout")) == []  # the holdout run itself
    assert controls_of(to_dict(_load("train.method=baseline", "unlabeled.source=holdout"))) == ["labeled-only"]
    assert controls_of({}) is None


@pytest.mark.parametrize("sets, message", [
    (["train.epoch_length=steps"], "train.epoch_length: must be one of trained, labeled, union"),
    (["train.method=baseline", "train.epoch_length=labeled"], "labeled has no effect without unlabeled images"),
    (["train.method=cpl", "unlabeled.source=none", "train.epoch_length=labeled"], "labeled has no effect"),
    (["train.method=baseline", "unlabeled.source=none", "train.epoch_length=union"], "union counts the unlabeled"),
    (["train.method=baseline", "unlabeled.num_images=0", "train.epoch_length=union"], "gan with num_images 0"),
    (["train.method=cpl", "train.sampler=pk", "train.epoch_length=labeled"], "needs train.sampler=shuffle"),
    (["train.method=baseline", "unlabeled.source=holdout", "train.warmup_epochs=1"], "train.warmup_epochs: has no "
                                                                                       "effect"),
])
def test_a_control_setting_that_cannot_act_is_refused_by_name(sets, message):
    with pytest.raises(ConfigError, match=message):
        _load(*sets)


# ---------------------------------------------------------------------------------------------- sampling


def test_step_counted_batches_extend_one_pass_without_changing_it():
    one = shuffled_batches(10, 4, torch.Generator().manual_seed(1))
    assert [len(b) for b in one] == [4, 4]  # the ragged tail is dropped
    fewer = shuffled_batches(10, 4, torch.Generator().manual_seed(1), iters=1)
    assert len(fewer) == 1 and torch.equal(fewer[0], one[0])
    more = shuffled_batches(10, 4, torch.Generator().manual_seed(1), iters=7)
    assert len(more) == 7 and all(len(b) == 4 for b in more)
    flat = torch.cat(more)
    assert torch.equal(flat[:8], torch.cat(one))  # the first pass is the one an unmatched epoch draws
    assert sorted(flat[:10].tolist()) == list(range(10)) and sorted(flat[10:20].tolist()) == list(range(10))
    small = shuffled_batches(3, 4, torch.Generator().manual_seed(1), iters=1)  # fewer images than a batch
    assert [len(b) for b in small] == [3]


# ---------------------------------------------------------------------------------------------- step counts


def _labeled_only(data: TrainData, set_aside: int) -> TrainData:
    """``data`` as stage ``train`` hands it to a labeled-only method: the labeled images alone, the source's
    images counted aside."""
    n = data.num_labeled
    return TrainData(images=Rows(data.images, torch.arange(n)), labels=data.labels, num_labeled=n,
                     num_classes=data.num_classes, num_set_aside=set_aside)


def _steps(cfg, data) -> list[int]:
    tr = _trainer(cfg, data)
    return [tr.iters_per_epoch(e) for e in range(cfg.train.epochs)]


def test_step_counts_follow_what_an_epoch_counts():
    """16 labeled + 8 unlabeled images, batch 8: a GAN epoch is 3 steps, a labeled epoch 2."""
    cases = [("cpl", "trained", 0, [3, 3]), ("cpl", "labeled", 0, [2, 2]), ("cpl", "union", 0, [3, 3]),
             ("cpl", "trained", 1, [2, 3]), ("cpl", "labeled", 1, [2, 2]), ("cpl", "union", 1, [3, 3])]
    for method, length, warmup, expected in cases:
        cfg = _cfg(method)
        cfg.train.epoch_length, cfg.train.warmup_epochs = length, warmup
        assert _steps(cfg, _data()) == expected, (method, length, warmup)
    for length, expected in (("trained", [2, 2]), ("union", [3, 3])):
        cfg = _cfg("baseline")
        cfg.train.epoch_length = length
        assert _steps(cfg, _labeled_only(_data(), 8)) == expected, length
    cfg = _cfg("baseline")
    cfg.train.epoch_length, cfg.train.batch_size = "union", 4
    assert _steps(cfg, _labeled_only(_data(), 30)) == [(16 + 30) // 4] * 2  # several passes over L


def _fit_counting(cfg, data) -> tuple[object, list[torch.Tensor]]:
    """Train, keeping the index tensor of every batch; returns the trainer and the batches."""
    tr = _trainer(cfg, data)
    seen = []
    make = tr.make_batch
    tr.make_batch = lambda idx, gen: (seen.append(idx.clone()), make(idx, gen))[1]
    tr.fit()
    return tr, seen


def test_the_step_matched_baseline_takes_the_gan_runs_optimizer_steps():
    gan, gan_batches = _fit_counting(_cfg("cpl"), _data())
    cfg = _cfg("baseline")
    cfg.train.epoch_length = "union"
    base, base_batches = _fit_counting(cfg, _labeled_only(_data(), 8))
    plain, _ = _fit_counting(_cfg("baseline"), _labeled_only(_data(), 8))
    assert gan.scheduler.last_epoch == base.scheduler.last_epoch == len(base_batches) == len(gan_batches) == 6
    assert plain.scheduler.last_epoch == 4
    assert all(int(b.max()) < 16 for b in base_batches)  # it never trains on an image it only counts
    short = _cfg("cpl")
    short.train.epoch_length = "labeled"  # the other direction: the GAN run at the baseline's budget
    matched, batches = _fit_counting(short, _data())
    assert matched.scheduler.last_epoch == plain.scheduler.last_epoch == 4
    assert any(int(b.max()) >= 16 for b in batches)  # drawn from the shuffled union


def test_the_schedule_runs_on_the_epochs_the_steps_define():
    """The learning rate at the first step of each epoch is lr_at(epoch): the milestone falls on epoch 1 whatever
    an epoch counts (EpochClock follows the batches)."""
    cfg = _cfg("baseline")
    cfg.train.epoch_length, cfg.train.lr_warmup_epochs, cfg.train.log_every = "union", 1, 1
    lrs = []
    tr = _trainer(cfg, _labeled_only(_data(), 30), Hooks(on_record=lambda r: r["type"] == "iter" and lrs.append(r)))
    tr.fit()
    iters = tr.iters_per_epoch(0)
    assert iters == (16 + 30) // 8 and tr.clock.iters(1) == iters and len(lrs) == 2 * iters
    for rec in lrs:
        assert rec["lr"] == pytest.approx(lr_at(cfg, rec["epoch"] + (rec["iter"]) / iters), rel=1e-12)


def test_a_step_matched_baseline_resumes_bit_identically():
    cfg = _cfg("baseline")
    cfg.train.epoch_length = "union"
    data = _labeled_only(_data(), 30)
    full = _trainer(cfg, data)
    full.fit()
    saved = {}
    first = _trainer(cfg, data, Hooks(on_epoch_end=lambda e, s: saved.setdefault(e, copy.deepcopy(s))))
    first.train_epoch(0)
    resumed = _trainer(cfg, data)
    resumed.load_state_dict(saved[0])
    resumed.fit()
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert torch.equal(full.state.centers, resumed.state.centers)
    assert full.scheduler.last_epoch == resumed.scheduler.last_epoch


def test_an_unmatched_epoch_draws_the_batches_it_always_drew():
    """epoch_length=trained is the former sampler exactly: one permutation of the images an epoch trains on."""
    tr = _trainer(_cfg("cpl"), _data())
    got = tr.epoch_batches(0, make_generator(0, "epoch", 0))
    perm = torch.randperm(24, generator=make_generator(0, "epoch", 0))
    assert all(torch.equal(b, perm[i * 8:(i + 1) * 8]) for i, b in enumerate(got)) and len(got) == 3


# ---------------------------------------------------------------------------------------------- holdout control


def _context(tmp_path: Path, *sets: str):
    from cpl.engine.dist import DistInfo
    from cpl.runs.rundir import RunDir
    from cpl.stages.context import RunContext

    cfg = load_config(REPO / "configs" / "synthetic.yaml", [
        f"data.root={tmp_path / 'synthetic'}", "data.synthetic.ids=6", "data.height=32", "data.width=16",
        "model.backbone=resnet18", "model.pretrained=none", "unlabeled.source=holdout", "train.batch_size=4",
        "train.epochs=2", "train.lr_milestones=[1]", "augment.pad=2", *sets])
    run = tmp_path / f"r{len(list(tmp_path.glob('r*')))}"
    run.mkdir()
    return RunContext(run=RunDir(run), cfg=cfg, device=torch.device("cpu"), dist=DistInfo(),
                      should_stop=lambda: False, progress_bar=False)


@pytest.mark.parametrize("length", ["trained", "union"])
def test_the_labeled_only_control_trains_on_the_holdout_runs_labeled_rows_only(tmp_path, length):
    from cpl.engine.trainer import Trainer
    from cpl.pseudo import get_strategy
    from cpl.stages.data import load_data
    from cpl.stages.train import _build

    holdout = _context(tmp_path, "train.method=cpl", "seed=3")
    load_data(holdout)
    control = _context(tmp_path, "train.method=baseline", "seed=3", f"train.epoch_length={length}")
    load_data(control)
    other_seed = _context(tmp_path, "train.method=baseline", "seed=4")
    load_data(other_seed)
    h, c = holdout.data, control.data
    assert np.array_equal(c.keep, h.keep) and np.array_equal(c.hidden, h.hidden) and len(c.hidden) > 0
    assert not np.array_equal(other_seed.data.keep, h.keep)  # the split is the seed's
    assert c.source == "holdout" and control.unlabeled.paths == []  # nothing to train on beside the kept rows

    strategy = get_strategy(control.cfg.train)
    model, _, data = _build(control, strategy)
    assert torch.equal(data.images.gather(torch.arange(len(data.images))), c.train_imgs[c.keep])
    assert data.num_unlabeled == 0
    assert data.num_set_aside == len(c.hidden)  # counted only by an epoch of the union
    trainer = Trainer(control.cfg, data, model, strategy, torch.device("cpu"))
    rows = []
    make = trainer.make_batch
    trainer.make_batch = lambda idx, gen: (rows.append(c.keep[idx.numpy()]), make(idx, gen))[1]
    trainer.fit()
    trained_rows = np.concatenate(rows)
    assert np.isin(trained_rows, c.keep).all() and not np.isin(trained_rows, c.hidden).any()
    n_epoch = len(c.keep) + (len(c.hidden) if length == "union" else 0)
    assert len(rows) == 2 * (n_epoch // 4)
    assert set(trained_rows) == set(c.keep)  # every kept row is trained on


# ---------------------------------------------------------------------------------------------- from the CLI


def _cli_run(tmp_path: Path, name: str, *sets: str) -> Path:
    import json
    import os
    import subprocess
    import sys

    sets = ["train.method=baseline", f"data.root={tmp_path / 'synthetic'}", "data.synthetic.ids=6",
            "data.height=32", "data.width=16", "model.backbone=resnet18", "model.pretrained=none", "train.epochs=1",
            "train.lr_milestones=[1]", "train.batch_size=4", "augment.pad=2", "eval.umap=false", "eval.rerank=false",
            *sets]
    cmd = [sys.executable, "-m", "cpl", "--runs-root", str(tmp_path), "run", "--config", "configs/synthetic.yaml",
           "--run-dir", str(tmp_path / name), *sum((["--set", s] for s in sets), [])]
    out = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / name / "run.json").read_text())["controls"] == json.loads(
        (tmp_path / name / "results.json").read_text())["controls"]
    return tmp_path / name


@pytest.mark.slow  # two tiny runs end to end (~1 min)
def test_the_controls_run_from_the_cli_and_say_what_they_are(tmp_path):
    import json

    control = _cli_run(tmp_path, "control", "unlabeled.source=holdout", "train.epoch_length=union")
    res = json.loads((control / "results.json").read_text())
    data = json.loads((control / "dataset.json").read_text())
    n_train = data["splits"]["train"]["images"]
    assert res["controls"] == ["labeled-only", "step-matched"] and res["num_unlabeled"] == 0
    assert data["unlabeled_trained"] is False and data["unlabeled_source"] == "holdout"
    assert res["labeled_train_images"] == data["labeled_train_images"] == n_train - data["unlabeled_images"]
    assert res["train_steps"] == n_train // 4  # the steps of a holdout run: every training image counted
    matched = _cli_run(tmp_path, "matched", "unlabeled.source=gan", "unlabeled.num_images=40",
                       "train.epoch_length=union")
    res = json.loads((matched / "results.json").read_text())
    assert res["controls"] == ["step-matched"] and res["train_steps"] == (n_train + 40) // 4
    assert not (matched / "gan.json").exists()  # the GAN images are counted, never made


@pytest.mark.slow  # a DCGAN of 2 steps and three tiny cells (~1 min)
def test_a_step_matched_sweep_gives_the_baseline_the_gan_runs_steps(tmp_path):
    import json
    import os
    import subprocess
    import sys

    sets = [f"data.root={tmp_path / 'synthetic'}", "data.synthetic.ids=6", "data.height=32", "data.width=16",
            "model.backbone=resnet18", "model.pretrained=none", "train.epochs=1", "train.lr_milestones=[1]",
            "train.batch_size=4", "augment.pad=2", "eval.umap=false", "eval.rerank=false", "gan.epochs=1",
            "gan.max_steps_per_epoch=2", "gan.batch_size=8", "gan.base_channels=8"]
    cmd = [sys.executable, "-m", "cpl", "--runs-root", str(tmp_path), "sweep", "--config", "configs/synthetic.yaml",
           "--methods", "baseline,cpl", "--gan-images", "0,24", "--seeds", "0", "--sweep-id", "m", "--step-matched",
           *sum((["--set", s] for s in sets), [])]
    out = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    res = {c: json.loads((tmp_path / f"m--{c}-s0" / "results.json").read_text())
           for c in ("baseline-g0", "baseline-g24", "cpl-g24")}
    n_train = res["baseline-g0"]["labeled_train_images"]
    assert res["baseline-g0"]["train_steps"] == n_train // 4 and res["baseline-g0"]["controls"] == []
    assert res["baseline-g24"]["train_steps"] == res["cpl-g24"]["train_steps"] == (n_train + 24) // 4
    assert res["baseline-g24"]["controls"] == ["step-matched"] and res["baseline-g24"]["num_unlabeled"] == 0
    md = (tmp_path / "sweeps" / "m" / "results.md").read_text()
    assert "| #unlabeled | baseline (step-matched) rank-1 |" in md and "| over the step-matched baseline |" in md
    assert "| m--baseline-g24-s0 | baseline (step-matched) | 24 |" in md
