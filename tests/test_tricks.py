"""The bag-of-tricks options, each on a tiny real model or tensor: what it changes, checked against a
brute-force or closed-form computation."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

from cpl.config import Config, ConfigError, load_config, tricks, validate
from cpl.engine import sampling
from cpl.engine.losses import batch_hard_triplet, center_loss_sgd, cross_entropy, soft_cross_entropy
from cpl.engine.optim import lr_at
from cpl.engine.trainer import Hooks, TrainData, Trainer, batch_augmentation
from cpl.methods import CENTER_LOSS_METHODS, METHODS
from cpl.models.reid import ReIDNet
from cpl.pseudo import STRATEGIES, get_strategy

# ---------------------------------------------------------------------------------------------- sampler


def test_pk_sampler_yields_p_identities_of_k_images_plus_unlabeled():
    labels = torch.arange(10).repeat_interleave(torch.tensor([4, 4, 5, 8, 2, 4, 4, 4, 6, 3]))
    n_l = len(labels)
    batches = sampling.pk_batches(labels, p=3, k=4, n_unlabeled=7, unlabeled_per_batch=5,
                                  generator=torch.Generator().manual_seed(0))
    assert len(batches) >= 3
    seen_unlabeled = []
    for b in batches:
        assert len(b) == 3 * 4 + 5
        lab, unl = b[:12], b[12:]
        assert bool((lab < n_l).all()) and bool((unl >= n_l).all())
        pids = labels[lab]
        assert len(torch.unique(pids)) == 3
        assert sorted(torch.bincount(pids).tolist())[-3:] == [4, 4, 4]
        seen_unlabeled += unl.tolist()
    # Unlabeled images cycle through one permutation: every one appears before any repeats.
    assert sorted(seen_unlabeled[:7]) == list(range(n_l, n_l + 7))


def test_pk_batches_are_rank_major_so_each_rank_holds_whole_identities():
    labels = torch.arange(8).repeat_interleave(4)
    (b, *_) = sampling.pk_batches(labels, p=4, k=4, n_unlabeled=6, unlabeled_per_batch=4,
                                  generator=torch.Generator().manual_seed(1))
    order = sampling.rank_major(16, 4, 4, 2)
    assert sorted(order.tolist()) == list(range(20)) and torch.equal(sampling.rank_major(16, 4, 4, 1), torch.arange(20))
    b = b[order]
    for rank in range(2):
        part = b[rank * 10:(rank + 1) * 10]  # 2 identities x 4 + 2 unlabeled
        pids = labels[part[:8]]
        assert torch.bincount(pids).max() == 4 and len(torch.unique(pids)) == 2
        assert bool((part[8:] >= 32).all())


def test_unlabeled_per_batch_keeps_the_natural_share_by_default():
    # 1,940 labeled + 1,000 GAN images: a P x K batch of 64 gets 33 GAN images (34 % of 97)
    assert sampling.unlabeled_per_batch(64, -1.0, 1940, 1000, 1) == 33
    assert sampling.unlabeled_per_batch(64, 0.5, 1940, 1000, 2) == 64
    assert sampling.unlabeled_per_batch(64, -1.0, 1940, 0, 1) == 0


# ---------------------------------------------------------------------------------------------- losses


def _brute_force_triplet(x: torch.Tensor, y: torch.Tensor, margin: float) -> float:
    terms = []
    for a in range(len(y)):
        pos = [torch.dist(x[a], x[p]).item() for p in range(len(y)) if p != a and y[p] == y[a]]
        neg = [torch.dist(x[a], x[n]).item() for n in range(len(y)) if y[n] != y[a]]
        if pos and neg:
            terms.append(max(0.0, max(pos) - min(neg) + margin))
    return sum(terms) / len(terms)


def test_batch_hard_triplet_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 5, generator=g)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4])  # identity 3 has no positive: skipped
    for margin in (0.3, 5.0):
        assert batch_hard_triplet(x, y, margin).item() == pytest.approx(_brute_force_triplet(x, y, margin), rel=1e-5)
    x.requires_grad_(True)
    batch_hard_triplet(x, y, 5.0).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert batch_hard_triplet(x, torch.zeros(12, dtype=torch.long), 0.3).item() == 0.0  # no negatives at all


def test_label_smoothing_target_sums_to_one_and_is_what_the_loss_uses():
    eps, c = 0.1, 7
    logits = torch.randn(5, c, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 3, 6, 2, 2])
    target = (1 - eps) * F.one_hot(y, c).float() + eps / c
    assert torch.allclose(target.sum(1), torch.ones(5))
    assert target[0, 0].item() == pytest.approx(1 - eps + eps / c)
    assert torch.allclose(cross_entropy(logits, y, eps), soft_cross_entropy(logits, target), atol=1e-6)
    assert not torch.allclose(cross_entropy(logits, y, eps), cross_entropy(logits, y))


def test_bot_center_step_is_sgd_on_the_squared_distance():
    """One step of BoT's rule: c ← c − lr · (1/λ) · ∂(λ Σ||x − c||² / m)/∂c = c − lr · 2 Σ_i (c − x_i) / m."""
    g = torch.Generator().manual_seed(3)
    x, c0 = torch.randn(6, 4, generator=g), torch.randn(3, 4, generator=g)
    y = torch.tensor([0, 0, 1, 1, 1, 0])
    mask = torch.tensor([True, True, True, True, False, True])  # image 4 is unlabeled
    lam, lr, m = 5e-4, 0.5, 6
    c = c0.clone().requires_grad_(True)
    (lam * center_loss_sgd(x, c, y, mask, m)).backward()
    stepped = c0 - lr * c.grad / lam
    expected = c0.clone()
    for j in range(3):
        sel = mask & (y == j)
        expected[j] -= lr * 2 * (c0[j] - x[sel]).sum(0) / m
    assert torch.allclose(stepped, expected, atol=1e-5)
    assert torch.equal(stepped[2], c0[2])  # a class absent from the batch does not move


# ---------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("backbone,stage", [("resnet18", "layer4"), ("efficientnet_lite0", "conv_head")])
def test_last_stride_one_doubles_the_final_feature_map(backbone, stage):
    shapes = {}
    for stride in (2, 1):
        model = ReIDNet(backbone, 5, 0.0, last_stride=stride).eval()
        module = getattr(model.trunk, stage)
        handle = module.register_forward_hook(lambda mod, inp, out, s=stride: shapes.__setitem__(s, out.shape))
        with torch.no_grad():
            feat, _ = model(torch.randn(1, 3, 128, 64))
        handle.remove()
        assert feat.shape == (1, model.feat_dim)
    assert shapes[2][2:] == (4, 2) and shapes[1][2:] == (8, 4)


def test_bnneck_separates_the_center_feature_from_the_classifier_and_retrieval_feature():
    torch.manual_seed(0)
    model = ReIDNet("resnet18", 6, 0.0, neck="bnneck")
    assert model.classifier.bias is None and not model.neck.bias.requires_grad
    x = torch.randn(8, 3, 64, 32)
    model.train()
    feat, logits = model(x)
    # Training: the classifier sees the batch-normalised pool5 feature (batch statistics, frozen zero shift).
    f_i = (feat - feat.mean(0)) / torch.sqrt(feat.var(0, unbiased=False) + model.neck.eps) * model.neck.weight
    assert torch.allclose(logits, f_i @ model.classifier.weight.T, atol=1e-4)
    model.eval()
    with torch.no_grad():
        feat, _ = model(x)
        ret = model.retrieval_features(feat)
    n = model.neck
    expected = (feat - n.running_mean) / torch.sqrt(n.running_var + n.eps) * n.weight
    assert torch.allclose(ret, expected, atol=1e-5) and not torch.allclose(ret, feat, atol=1e-2)
    plain = ReIDNet("resnet18", 6, 0.0)
    assert torch.equal(plain.retrieval_features(feat), feat)  # without a neck, one feature for everything
    trainable = {id(p) for g in model.param_groups(1.0, 10.0) for p in g["params"]}
    assert id(model.neck.weight) in trainable and id(model.neck.bias) not in trainable


# ---------------------------------------------------------------------------------------------- schedule + config


def test_lr_warmup_is_linear_from_the_factor_and_then_steps():
    cfg = Config()
    t = cfg.train
    t.lr, t.epochs, t.lr_warmup_epochs, t.lr_warmup_factor, t.lr_milestones = 3.5e-4, 120, 10, 0.01, [40, 70]
    assert lr_at(cfg, 0) == pytest.approx(3.5e-6)
    assert lr_at(cfg, 5) == pytest.approx(3.5e-4 * (0.01 * 0.5 + 0.5))
    assert lr_at(cfg, 5.5) == pytest.approx(3.5e-4 * (0.01 * 0.45 + 0.55))  # evaluated at every iteration
    assert [lr_at(cfg, e) for e in (10, 39)] == pytest.approx([3.5e-4] * 2)
    assert lr_at(cfg, 40) == pytest.approx(3.5e-5) and lr_at(cfg, 70) == pytest.approx(3.5e-6)


def test_center_loss_methods_are_the_strategies_with_a_center_term():
    assert set(CENTER_LOSS_METHODS) == {m for m in METHODS if STRATEGIES[m].center_loss}


@pytest.mark.parametrize("overrides,key", [
    (["train.triplet_weight=1"], "train.triplet_weight"),  # batch-hard needs the P x K sampler
    (["train.center_lr=0.3"], "train.center_lr"),  # Wen's rule has no learning rate
    (["train.method=baseline", "train.center_update=sgd"], "train.center_update"),
    (["train.center_update=sgd", "train.center_alpha=0.3"], "train.center_alpha"),
    (["train.pk_instances=3"], "train.pk_instances"),
    (["train.sampler=pk", "train.batch_size=30"], "train.batch_size"),
    (["train.lr_warmup_factor=0.1"], "train.lr_warmup_factor"),
    (["train.triplet_margin=0.5"], "train.triplet_margin"),
    (["augment.erasing_on_unlabeled=true"], "augment.erasing_on_unlabeled"),
    (["model.neck=bn"], "model.neck"),
    (["model.last_stride=3"], "model.last_stride"),
])
def test_unusable_or_bad_trick_settings_are_refused_by_name(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, ["data.root=x", *overrides])


@pytest.mark.parametrize("path", ["configs/market1501-bot.yaml", "configs/dukemtmc-bot.yaml",
                                  "configs/cuhk01-bot.yaml", "configs/msmt17-bot.yaml"])
def test_bot_configs_switch_every_trick_on(path):
    cfg = load_config(path)
    assert tricks(cfg) == ["lr-warmup", "erasing", "label-smoothing", "last-stride-1", "bnneck", "pk-sampler",
                           "triplet"]
    assert tricks(load_config("configs/market1501.yaml")) == []


# ---------------------------------------------------------------------------------------------- the loop


def _bot_cfg(method: str) -> Config:
    cfg = Config()
    cfg.data.root = "unused"
    t = cfg.train
    t.method, t.epochs, t.batch_size, t.lr, t.lr_milestones, t.log_every = method, 2, 8, 1e-3, [1], 1
    t.optimizer = "adam"
    t.sampler, t.pk_instances, t.triplet_weight, t.label_smoothing, t.lr_warmup_epochs = "pk", 4, 1.0, 0.1, 1
    cfg.model.neck, cfg.model.last_stride, cfg.model.dropout = "bnneck", 1, 0.0
    cfg.augment.pad, cfg.augment.random_erasing = 2, 0.5
    if method in CENTER_LOSS_METHODS:
        t.center_update, t.center_weight = "sgd", 5e-4
    validate(cfg)
    return cfg


def _data() -> TrainData:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(4)
    base = torch.randint(0, 256, (4, 3, 32, 16), generator=g)
    imgs = (base.repeat_interleave(4, 0).repeat(2, 1, 1, 1)[:24]
            + torch.randint(-20, 20, (24, 3, 32, 16), generator=g)).clamp(0, 255).to(torch.uint8)
    return TrainData(images=imgs, labels=labels, num_labeled=16, num_classes=4)


def _trainer(cfg: Config, hooks: Hooks | None = None) -> Trainer:
    torch.manual_seed(0)  # the same initial weights for every trainer of a test
    model = ReIDNet("resnet18", 4, cfg.model.dropout, cfg.model.last_stride, cfg.model.neck)
    return Trainer(cfg, _data(), model, get_strategy(cfg.train), torch.device("cpu"), hooks=hooks)


def _run(cfg: Config) -> tuple[Trainer, list[dict]]:
    records: list[dict] = []
    tr = _trainer(cfg, Hooks(on_record=records.append))
    tr.fit()
    return tr, records


def test_bot_cpl_trains_with_every_trick_and_resumes_bit_identically():
    cfg = _bot_cfg("cpl")
    full, records = _run(cfg)
    iters = [r for r in records if r["type"] == "iter"]
    assert all(r["loss_triplet"] > 0 for r in iters[:2])  # random features violate the margin
    # the warm-up epoch rises from 1 % of lr at its first iteration to 50.5 % at its second (of 2),
    assert [r["lr"] for r in iters[:3]] == pytest.approx([1e-5, 5.05e-4, 1e-4])  # then x0.1 at epoch 1
    # BoT's centers start from N(0, 1) and moved; every identity reached one; the GAN images got cosine labels.
    assert bool(full.state.center_valid.all())
    start = torch.randn(4, 512, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(full.state.centers.detach(), start)
    assert (full.state.history_labels[-1] >= 0).all()
    # 16 labeled images of 4 identities, P = 2: 2 batches of 2 x 4 labeled + 4 GAN images (8 of 24 = 1/3).
    # (the very first batch has no center to label against, so its GAN images weigh 0)
    assert full.iters_per_epoch(1) == 2 and iters[0]["loss_unlabeled"] == 0 < iters[-1]["loss_unlabeled"]
    saved = {}
    _trainer(cfg, Hooks(on_epoch_end=lambda e, s: saved.setdefault(e, copy.deepcopy(s)))).train_epoch(0)
    resumed = _trainer(cfg)
    resumed.load_state_dict(saved[0])
    resumed.fit()
    for (k, va), vb in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert torch.equal(full.state.centers.detach(), resumed.state.centers.detach())


@pytest.mark.parametrize("method", ["baseline", "lsro"])
def test_bot_without_center_loss_keeps_wen_centers_for_display(method):
    tr, records = _run(_bot_cfg(method))
    assert tr.state.center_valid.all() and tr.state.centers.abs().sum() > 0
    assert all(r["loss_center"] == 0 for r in records if r["type"] == "iter")


def test_erasing_reaches_labeled_images_only_unless_asked():
    cfg = _bot_cfg("cpl")
    cfg.augment.random_erasing = 1.0
    erased = {}
    for on_unlabeled in (False, True):
        cfg.augment.erasing_on_unlabeled = on_unlabeled
        validate(cfg)
        gen = torch.Generator().manual_seed(0)
        idx = torch.arange(24)
        params = batch_augmentation(idx, 16, cfg.augment, 32, 16, gen)
        erased[on_unlabeled] = params.erase[16:].tolist()
        assert params.erase[:16].all()
    assert erased[False] and not any(erased[False]) and all(erased[True])


def test_every_combination_of_samplers_and_necks_is_valid_for_every_method():
    for method, sampler, neck in itertools.product(METHODS, ("shuffle", "pk"), ("none", "bnneck")):
        cfg = load_config(None, ["data.root=x", f"train.method={method}", f"train.sampler={sampler}",
                                 f"model.neck={neck}"])
        assert tricks(cfg) == [t for t, on in (("bnneck", neck == "bnneck"), ("pk-sampler", sampler == "pk")) if on]
