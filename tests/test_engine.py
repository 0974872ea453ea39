"""The training loop on tiny real tensors: centers, pseudo-labels, determinism, resume, non-finite loss."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cpl.config import Config
from cpl.engine.trainer import Hooks, NonFiniteLoss, Stopped, TrainData, Trainer
from cpl.models.reid import ReIDNet
from cpl.pseudo import get_strategy


def _cfg(method="cpl", epochs=2) -> Config:
    cfg = Config()
    cfg.data.root = "unused"
    cfg.train.method = method
    cfg.train.epochs = epochs
    cfg.train.batch_size = 8
    cfg.train.lr = 0.01
    cfg.train.lr_milestones = [1]
    cfg.train.log_every = 2
    cfg.train.warmup_epochs = 0
    cfg.augment.pad = 2
    return cfg


def _data(truth=False) -> TrainData:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(4)  # 4 classes x 4 images
    base = torch.randint(0, 256, (4, 3, 32, 16), generator=g)
    lab = (base[labels] + torch.randint(-20, 20, (16, 3, 32, 16), generator=g)).clamp(0, 255).to(torch.uint8)
    unl_cls = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    unl = (base[unl_cls] + torch.randint(-20, 20, (8, 3, 32, 16), generator=g)).clamp(0, 255).to(torch.uint8)
    return TrainData(images=torch.cat([lab, unl]), labels=labels, num_labeled=16, num_classes=4,
                     unlabeled_truth=unl_cls if truth else None)


def _trainer(cfg, data, hooks=None):
    torch.manual_seed(0)
    s = get_strategy(cfg.train)
    model = ReIDNet("resnet18", data.num_classes + (1 if s.extra_class else 0), 0.5)
    return Trainer(cfg, data, model, s, torch.device("cpu"), hooks=hooks)


def test_cpl_epoch_records_pseudo_labels_and_moves_centers():
    records = []
    tr = _trainer(_cfg(), _data(truth=True), Hooks(on_record=records.append))
    tr.fit()
    epochs = [r for r in records if r["type"] == "epoch"]
    assert len(epochs) == 2 and all(np.isfinite(r["loss"]) for r in epochs)
    st = tr.state
    assert st.center_valid.all() and st.centers.abs().sum() > 0
    # Centers are Wen-updated means of labeled pool5 features: each lies near its class's features.
    assert len(st.history_labels) == 2 and st.history_labels[1].shape == (8,)
    seen = st.history_labels[1] >= 0
    assert seen.sum() > 0 and set(st.history_labels[1][seen]) <= {0, 1, 2, 3}
    assert "pl_changed" in epochs[1] and 0 <= epochs[1]["pl_acc"] <= 1
    assert [r for r in records if r["type"] == "iter"][0]["imgs_per_s"] > 0


def test_deterministic_on_cpu():
    a, b = _trainer(_cfg(), _data()), _trainer(_cfg(), _data())
    a.fit()
    b.fit()
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert torch.equal(a.state.centers, b.state.centers)


def test_resume_from_epoch_checkpoint_is_bit_identical():
    full = _trainer(_cfg(), _data())
    full.fit()
    saved = {}
    first = _trainer(_cfg(), _data(), Hooks(on_epoch_end=lambda e, s: saved.setdefault(e, copy.deepcopy(s))))
    first.train_epoch(0)
    resumed = _trainer(_cfg(), _data())
    resumed.load_state_dict(saved[0])
    resumed.fit()
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert torch.equal(full.state.centers, resumed.state.centers)
    assert all(np.array_equal(x, y) for x, y in zip(full.state.history_labels, resumed.state.history_labels))


@pytest.mark.parametrize("method", ["baseline", "center", "cpl", "fapl", "lsro", "onehot", "mprl1", "mprl2",
                                    "allinone"])
def test_every_method_trains(method):
    cfg = _cfg(method, epochs=1)
    cfg.train.warmup_epochs = 0  # onehot / mprl2 count unlabeled images from the start
    tr = _trainer(cfg, _data(truth=True))
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.fit()
    after = tr.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())
    n_out = tr.model.classifier.out_features
    assert n_out == (5 if method == "allinone" else 4)
    if method in ("baseline", "center"):
        assert tr.num_train_images(0) == 16 and tr.state.history_labels[0].max() == -1
    else:
        assert tr.num_train_images(0) == 24


@pytest.mark.parametrize("method", ["cpl", "fapl", "lsro", "onehot"])
def test_warmup_delays_the_first_pseudo_label_for_every_method(method):
    """train.warmup_epochs = N: N labeled-only epochs (no unlabeled image in a batch, centers still move),
    then pseudo-labels. The same knob for every method that uses unlabeled images."""
    seen = {}
    for warmup in (0, 1):
        records = []
        cfg = _cfg(method, epochs=2)
        cfg.train.warmup_epochs = warmup
        tr = _trainer(cfg, _data(truth=True), Hooks(on_record=records.append))
        tr.fit()
        epochs = [r for r in records if r["type"] == "epoch"]
        seen[warmup] = [r.get("pl_seen", 0) for r in epochs]
        if warmup:
            assert tr.iters_per_epoch(0) == 16 // 8 and tr.iters_per_epoch(1) == 24 // 8
            assert int(tr.state.history_labels[0].max()) == -1 and tr.state.center_valid.all()
    assert seen[0][0] > 0 and seen[0][1] > 0
    assert seen[1][0] == 0 and seen[1][1] > 0


def test_method_default_warmup_keeps_the_published_share_of_the_schedule():
    from cpl.config import TrainConfig

    for method, epochs, start in (("onehot", 50, 20), ("onehot", 8, 3), ("mprl2", 10, 4), ("cpl", 50, 0),
                                  ("fapl", 50, 0), ("lsro", 50, 0)):
        assert get_strategy(TrainConfig(method=method, epochs=epochs)).start_epoch == start, (method, epochs)
    assert get_strategy(TrainConfig(method="onehot", epochs=50, warmup_epochs=0)).start_epoch == 0


def test_unlabeled_weight_ramps_linearly_after_the_warmup():
    from cpl.config import TrainConfig

    s = get_strategy(TrainConfig(method="cpl", epochs=10, warmup_epochs=2, unlabeled_ramp_epochs=4,
                                 unlabeled_weight=0.5))
    assert [s.weight_at(e) for e in range(8)] == [0.0, 0.0, 0.125, 0.25, 0.375, 0.5, 0.5, 0.5]


def test_non_finite_loss_stops_the_run():
    cfg = _cfg()
    cfg.train.lr = 1e30
    saved = []
    tr = _trainer(cfg, _data(), Hooks(on_epoch_end=lambda e, s: saved.append(e)))
    with pytest.raises(NonFiniteLoss, match="epoch 1, iteration"):
        tr.fit()
    assert saved == []  # nothing trained on NaN was handed to the checkpoint writer


def test_stop_request_raises_before_the_next_iteration():
    calls = []
    tr = _trainer(_cfg(), _data(), Hooks(should_stop=lambda: len(calls) > 0, on_record=calls.append))
    with pytest.raises(Stopped):
        tr.fit()
    assert tr.state.epoch == 0


def test_lambda_weights_the_center_term_in_the_loss():
    """loss = CE + unlabeled + λ·center: from the same weights and batch, the first iteration's loss under λ
    exceeds the λ = 0 loss by exactly λ times the center term (½‖x − c‖² / m, zero centers)."""
    first = {}
    for lam in (0.0, 0.5):
        records = []
        cfg = _cfg("center", epochs=1)
        cfg.train.center_weight = lam
        cfg.train.log_every = 1
        _trainer(cfg, _data(), Hooks(on_record=records.append)).fit()
        first[lam] = next(r for r in records if r["type"] == "iter")
    a, b = first[0.0], first[0.5]
    assert a["loss_center"] == 0 and b["loss_center"] > 1.0
    assert a["loss_ce"] == pytest.approx(b["loss_ce"], rel=1e-6)
    assert b["loss"] - a["loss"] == pytest.approx(0.5 * b["loss_center"], rel=1e-5)
