"""The training loop on tiny real tensors: centers, pseudo-labels, determinism, resume, non-finite loss."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from cpl.config import Config
from cpl.engine.control import NonFiniteLoss, Stopped
from cpl.engine.losses import soft_cross_entropy
from cpl.engine.trainer import Hooks, TrainData, Trainer
from cpl.models.reid import ReIDNet
from cpl.pseudo import Targets, get_strategy


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


def resumed_after_first_epoch(cfg: Config, data: Callable[[], TrainData]) -> Trainer:
    """A trainer on ``data()`` stopped after epoch 0, its checkpoint loaded into a fresh one, trained to the end."""
    saved = {}
    first = _trainer(cfg, data(), Hooks(on_epoch_end=lambda e, s: saved.setdefault(e, copy.deepcopy(s))))
    first.train_epoch(0)
    resumed = _trainer(cfg, data())
    resumed.load_state_dict(saved[0])
    resumed.fit()
    return resumed


def assert_same_training(a: Trainer, b: Trainer) -> None:
    """Bit-identical weights, centers and pseudo-label history (labels, confidences, margins) of two trainers."""
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert torch.equal(a.state.centers, b.state.centers)
    for name in ("history_labels", "history_conf", "history_margin", "history_selected"):
        x, y = getattr(a.state, name), getattr(b.state, name)
        assert len(x) == len(y) and all(np.array_equal(u, v, equal_nan=u.dtype != bool) for u, v in zip(x, y)), name


def test_resume_from_epoch_checkpoint_is_bit_identical():
    full = _trainer(_cfg(), _data())
    full.fit()
    assert_same_training(full, resumed_after_first_epoch(_cfg(), _data))


def test_margin_history_and_checkpoints_written_before_it():
    """Margins are kept per epoch (finite where an image was drawn); a checkpoint without them (written before
    they were kept) resumes with NaN rows for its epochs, aligned with the labels."""
    saved = {}
    first = _trainer(_cfg(), _data(), Hooks(on_epoch_end=lambda e, s: saved.setdefault(e, copy.deepcopy(s))))
    first.train_epoch(0)
    first.train_epoch(1)
    st = first.state
    assert len(st.history_margin) == 2 and st.history_margin[1].dtype == np.float16
    seen = st.history_labels[1] >= 0
    assert seen.any() and np.isfinite(st.history_margin[1][seen]).all() and (st.history_margin[1][seen] >= 0).all()
    assert np.array_equal(saved[1]["history_margin"].numpy(), np.stack(st.history_margin).astype(np.float32))
    old = {k: v for k, v in saved[0].items() if k != "history_margin"}
    resumed = _trainer(_cfg(), _data())
    resumed.load_state_dict(old)
    assert len(resumed.state.history_margin) == 1 and np.isnan(resumed.state.history_margin[0]).all()
    resumed.train_epoch(1)
    assert len(resumed.state.history_margin) == 2 and np.isfinite(resumed.state.history_margin[1][seen]).all()


@dataclass
class _Call:
    """One call of a strategy inside the training loop: its inputs (copied: the centers move in place) and
    what it returned. B unlabeled images of the batch, K = 4 identities, C classifier outputs."""

    epoch: int
    feats: torch.Tensor  # [B, D]
    logits: torch.Tensor  # [B, C]
    centers: torch.Tensor  # [K, D]
    valid: torch.Tensor  # [K] bool
    targets: Targets


def _spied_fit(method: str, warmup: int, epochs: int) -> tuple[Trainer, list[tuple[dict, _Call | None]]]:
    """Train ``method`` with every iteration logged; returns the trainer and, per iteration record, the
    strategy call of that iteration (None when the batch had no unlabeled image or the method is inactive)."""
    cfg = _cfg(method, epochs=epochs)
    cfg.train.warmup_epochs = warmup
    cfg.train.log_every = 1
    pending: list[_Call] = []
    pairs: list[tuple[dict, _Call | None]] = []

    def on_record(rec: dict) -> None:
        if rec["type"] == "iter":
            pairs.append((rec, pending.pop() if pending else None))

    tr = _trainer(cfg, _data(truth=True), Hooks(on_record=on_record))
    inner = tr.strategy.targets

    def spy(feats, logits, centers, valid, epoch):
        tg = inner(feats, logits, centers, valid, epoch)
        pending.append(_Call(epoch, feats.clone(), logits.clone(), centers.clone(), valid.clone(), tg))
        return tg

    tr.strategy.targets = spy
    tr.fit()
    return tr, pairs


def _expected_probs(method: str, call: _Call) -> torch.Tensor:
    """The target each method must produce, computed independently of cpl.pseudo (docs/methods.md)."""
    k, c = call.centers.shape[0], call.logits.shape[1]
    cos = torch.nn.functional.normalize(call.feats, dim=1) @ torch.nn.functional.normalize(call.centers, dim=1).T
    cos = cos.masked_fill(~call.valid, float("-inf"))
    if method == "cpl":  # one-hot at the nearest center by cosine
        return torch.nn.functional.one_hot(cos.argmax(1), c).float()
    if method == "fapl":  # softmax of the cosines (T = 1), nothing on untouched centers
        return torch.softmax(cos, dim=1)
    if method == "lsro":  # uniform over the identities
        return torch.full((len(cos), c), 1.0 / c)
    if method == "onehot":  # one-hot at the classifier's own argmax
        return torch.nn.functional.one_hot(call.logits.argmax(1), c).float()
    if method in ("mprl1", "mprl2"):  # 2 r / (K (K + 1)), r the ascending rank of p_k
        ranks = call.logits.argsort(1).argsort(1).float() + 1
        return 2 * ranks / (k * (k + 1))
    if method == "allinone":  # every unlabeled image in the extra class K + 1
        return torch.nn.functional.one_hot(torch.full((len(cos),), k), c).float()
    raise AssertionError(method)


# (warm-up epochs, epochs, the unlabeled weight after the warm-up): onehot and mprl2 are the published
# warm-up methods with weight 0.1; the others start at once with weight 1.
METHOD_RUNS = {"cpl": (0, 1, 1.0), "fapl": (0, 1, 1.0), "lsro": (0, 1, 1.0), "onehot": (1, 2, 0.1),
               "mprl1": (0, 1, 1.0), "mprl2": (1, 2, 0.1), "allinone": (0, 1, 1.0)}


@pytest.mark.parametrize("method", list(METHOD_RUNS))
def test_every_method_trains_towards_its_own_target(method):
    """Inside the real loop, each method's targets are its published rule applied to the batch's own features,
    logits and centers, with its own weight from the end of its warm-up; and the logged unlabeled loss is
    exactly the weighted soft cross-entropy towards them, so the targets reach the gradient."""
    warmup, epochs, weight = METHOD_RUNS[method]
    tr, pairs = _spied_fit(method, warmup, epochs)
    assert tr.model.classifier.out_features == (5 if method == "allinone" else 4)
    assert tr.num_train_images(epochs - 1) == 24
    calls = [(rec, call) for rec, call in pairs if call is not None]
    assert calls and all(call.epoch >= warmup for _, call in calls)  # nothing during the warm-up
    assert all(rec["loss_unlabeled"] == 0 for rec, call in pairs if call is None)
    for rec, call in calls:
        tg = call.targets
        if method in ("cpl", "fapl") and not call.valid.any():  # the very first batch: no center yet
            assert torch.all(tg.weight == 0) and torch.all(tg.label == -1)
            continue
        assert torch.allclose(tg.probs, _expected_probs(method, call), atol=1e-6)
        assert torch.allclose(tg.probs.sum(1), torch.ones(len(tg.probs)), atol=1e-6)
        assert torch.all(tg.weight == weight)
        m = tr.cfg.train.batch_size
        expected_loss = float((soft_cross_entropy(call.logits, tg.probs) * tg.weight).sum()) / m
        assert rec["loss_unlabeled"] == pytest.approx(expected_loss, rel=1e-5, abs=1e-7)
    assert any(rec["loss_unlabeled"] > 0 for rec, _ in calls)


@pytest.mark.parametrize("method", ["baseline", "center"])
def test_reference_methods_train_on_labeled_images_only(method):
    """baseline: cross-entropy alone; center: plus λ times a center term that is positive from the start."""
    tr, pairs = _spied_fit(method, warmup=0, epochs=1)
    assert tr.num_train_images(0) == 16 and tr.state.history_labels[0].max() == -1
    assert all(call is None and rec["loss_unlabeled"] == 0 for rec, call in pairs)
    lam = tr.cfg.train.center_weight
    for rec, _ in pairs:
        assert (rec["loss_center"] > 0) == (method == "center")
        assert rec["loss"] == pytest.approx(rec["loss_ce"] + lam * rec["loss_center"], rel=1e-5)


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
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at epoch 1/2, iteration \d/3") as err:
        tr.fit()
    assert (err.value.stage, err.value.epoch, err.value.steps) == ("train", 0, 3) and 0 <= err.value.step < 3
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
