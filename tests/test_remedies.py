"""The remedies for hub collapse (docs/methods.md): each against a brute-force or closed-form reference on a
hand-made case, inside the real training loop on tiny real tensors, through a resume, and for Sinkhorn across
process counts (2 gloo processes give the labels of 1).

* Sinkhorn-Knopp: equal class marginals; as ε → 0 its argmax is the optimal balanced assignment that
  scipy's linear_sum_assignment finds on the columns repeated N / K times; the same labels for 1 and 2 ranks.
* CSLS: 2·cos(u, c) − r_C(u) − r_U(c), computed here with loops over plain Python floats.
* Confidence selection: exactly the images below the minimum get weight 0, their flag and the utilisation.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from scipy.optimize import linear_sum_assignment
from test_engine import _data as engine_data  # the 4 × 4 labeled + 8 unlabeled images, with truth

from cpl.config import Config, ConfigError, TrainConfig, load_config
from cpl.data.image_source import Rows
from cpl.engine.dist import DistInfo
from cpl.engine.features import extract_shared
from cpl.engine.losses import soft_cross_entropy
from cpl.engine.trainer import Hooks, Trainer
from cpl.methods import CENTER_LABEL_METHODS, METHODS, SCORED_LABEL_METHODS
from cpl.models.reid import ReIDNet
from cpl.pseudo import get_strategy
from cpl.pseudo.remedies import csls, margin_of, select, sinkhorn

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------- Sinkhorn


def test_sinkhorn_gives_every_valid_class_the_same_mass_and_each_image_one():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(12, 4, generator=g) * 2 - 1
    scores[:, 0] += 2.0  # a hub: every image's best class
    scores[:, 2] = float("-inf")  # an invalid center takes nothing
    q = sinkhorn(scores, epsilon=0.1, iters=500)  # converged: at ε = 0.05 500 rounds leave 0.1 % off
    assert torch.allclose(q.sum(1), torch.ones(12), atol=1e-6)
    assert torch.all(q[:, 2] == 0)
    assert torch.allclose(q[:, [0, 1, 3]].sum(0), torch.full((3,), 4.0), atol=1e-4)  # N / K_valid each
    assert bool((scores.argmax(1) == 0).all())  # per-image argmax: all on the hub
    assert torch.bincount(q.argmax(1), minlength=4).tolist() == [4, 4, 0, 4]  # balanced: 4 each


@pytest.mark.parametrize("seed", range(5))
def test_sinkhorn_at_small_epsilon_is_the_optimal_balanced_assignment(seed):
    """Brute force: the balanced assignment maximising the total score is a linear assignment of the N images
    to the K classes each repeated N / K times (scipy's Hungarian solver)."""
    n, k = 8, 4
    scores = torch.rand(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float() * 2 - 1
    rows, cols = linear_sum_assignment(np.repeat(scores.numpy(), n // k, axis=1), maximize=True)
    best = cols[np.argsort(rows)] // (n // k)
    q = sinkhorn(scores, epsilon=0.002, iters=5000)
    assert q.argmax(1).tolist() == best.tolist()
    assert np.bincount(best, minlength=k).tolist() == [n // k] * k


def test_sinkhorn_with_no_valid_class_assigns_nothing():
    assert torch.equal(sinkhorn(torch.full((3, 2), float("-inf")), 0.05, 10), torch.zeros(3, 2))


def test_balanced_targets_of_cpl_and_fapl():
    """cpl trains towards one-hot(argmax Q) (SeLa), fapl towards the row of Q (SwAV); both report the score and
    the margin of the label they were given, not of the image's best class."""
    g = torch.Generator().manual_seed(3)
    centers = torch.randn(3, 5, generator=g)
    feats = centers[0] + 0.3 * torch.randn(9, 5, generator=g)  # every image nearest to center 0: a hub
    valid = torch.ones(3, dtype=torch.bool)
    cos = torch.nn.functional.normalize(feats, dim=1) @ torch.nn.functional.normalize(centers, dim=1).T
    for method in CENTER_LABEL_METHODS:
        s = get_strategy(TrainConfig(method=method, assignment="sinkhorn", sinkhorn_iters=300, warmup_epochs=0))
        tg = s.set_targets(feats, torch.zeros(9, 3), centers, valid, epoch=0)
        q = sinkhorn(cos, 0.05, 300)
        assert torch.allclose(q.sum(0), torch.full((3,), 3.0), atol=1e-3)  # the soft marginals are equal
        assert bool((cos.argmax(1) == 0).all()) and torch.equal(tg.label, q.argmax(1))
        assert set(tg.label.tolist()) == {0, 1, 2}  # the hub's images spread over every class
        expected = torch.nn.functional.one_hot(tg.label, 3).float() if METHODS[method].name == "cpl" else q
        assert torch.allclose(tg.probs, expected, atol=1e-6)
        assert torch.allclose(tg.confidence, cos.gather(1, tg.label[:, None]).squeeze(1), atol=1e-6)
        assert torch.allclose(tg.margin, margin_of(cos, tg.label)) and bool((tg.margin < 0).any())


def _world_worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.save(_balanced_labels(DistInfo(rank, world, rank)), f"{out}.{rank}")
    tdist.destroy_process_group()


def _balanced_labels(info: DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """The features of 21 images extracted in chunks of 4 shared over ``info``'s ranks, and the balanced
    labels cpl gives them against 3 fixed centers."""
    torch.manual_seed(0)
    model = ReIDNet("resnet18", 3, 0.5)
    images = torch.randint(0, 256, (21, 3, 32, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    feats = extract_shared(model, images, torch.device("cpu"), info.rank, info.world_size, batch_size=4)
    centers = feats[[0, 7, 14]] + 0.01
    s = get_strategy(TrainConfig(method="cpl", assignment="sinkhorn", warmup_epochs=0))
    return feats, s.set_targets(feats, None, centers, torch.ones(3, dtype=torch.bool), epoch=0).label


def test_the_balanced_labels_do_not_depend_on_the_number_of_processes(tmp_path):
    feats1, labels1 = _balanced_labels(DistInfo())
    out = str(tmp_path / "rank")
    mp.spawn(_world_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    for r in range(2):
        feats2, labels2 = torch.load(f"{out}.{r}")
        assert torch.equal(feats2, feats1)  # bit-identical, not merely close
        assert torch.equal(labels2, labels1)
    assert set(labels1.tolist()) == {0, 1, 2}


# ---------------------------------------------------------------------------------------------- CSLS


def test_csls_is_its_formula_computed_by_hand():
    feats = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 1.0]])
    centers = torch.tensor([[2.0, 0.1], [0.0, 1.0], [0.0, 0.0], [-1.0, -1.0]])
    valid = torch.tensor([True, True, False, True])
    reference = torch.tensor([[1.0, 0.1], [0.9, 0.0], [0.0, 2.0], [-0.5, 0.5], [1.0, 1.0]])
    k = 2

    def cos(a, b):
        a, b = a.tolist(), b.tolist()
        return (a[0] * b[0] + a[1] * b[1]) / ((a[0] ** 2 + a[1] ** 2) ** 0.5 * (b[0] ** 2 + b[1] ** 2) ** 0.5)

    def mean_top(values):
        return sum(sorted(values, reverse=True)[:k]) / k

    got = csls(feats, centers, valid, reference, k)
    for i, u in enumerate(feats):
        r_c = mean_top([cos(u, centers[j]) for j in range(4) if valid[j]])
        for j, c in enumerate(centers):
            if not valid[j]:
                assert got[i, j] == float("-inf")
                continue
            r_u = mean_top([cos(c, v) for v in reference])
            assert float(got[i, j]) == pytest.approx(2 * cos(u, c) - r_c - r_u, abs=1e-6)


def test_csls_takes_the_hub_away():
    """A center near many unlabeled features (a hub) loses to a center that is nearly as close to the image and
    close to few others; the cosine alone picks the hub."""
    hub, lone = torch.tensor([1.0, 0.0]), torch.tensor([0.8, 0.6])
    reference = torch.cat([hub + 0.01 * torch.randn(20, 2, generator=torch.Generator().manual_seed(0)),
                           torch.tensor([[0.8, 0.6]])])
    u = torch.tensor([[0.95, 0.31]])  # cos 0.950 to the hub, 0.946 to the lone center
    centers, valid = torch.stack([hub, lone]), torch.ones(2, dtype=torch.bool)
    s = get_strategy(TrainConfig(method="cpl", similarity="csls", csls_k=3))
    s.similarity.fit(reference)
    assert get_strategy(TrainConfig(method="cpl")).targets(u, torch.zeros(1, 2), centers, valid, 0).label == 0
    assert s.targets(u, torch.zeros(1, 2), centers, valid, 0).label == 1


# ---------------------------------------------------------------------------------------------- selection


def test_select_drops_exactly_the_images_below_either_minimum():
    score = torch.tensor([0.1, 0.3, 0.3, 0.5, 0.9])
    margin = torch.tensor([0.2, 0.0, 0.05, 0.049, 0.5])
    assert select(score, margin, 0.3, 0.0).tolist() == [False, True, True, True, True]
    assert select(score, margin, 0.0, 0.05).tolist() == [True, False, True, False, True]
    assert select(score, margin, 0.3, 0.05).tolist() == [False, False, True, False, True]
    assert select(score, margin, 0.0, 0.0).all()


# ---------------------------------------------------------------------------------------------- in the loop


def _cfg(method="cpl", epochs=3, **train) -> Config:
    cfg = Config()
    cfg.data.root = "unused"
    cfg.train.method, cfg.train.epochs, cfg.train.batch_size, cfg.train.lr = method, epochs, 8, 0.01
    cfg.train.lr_milestones, cfg.train.log_every, cfg.train.warmup_epochs = [1], 1, 1
    cfg.augment.pad = 2
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def _trainer(cfg: Config, hooks: Hooks | None = None) -> Trainer:
    torch.manual_seed(0)
    return Trainer(cfg, engine_data(truth=True), ReIDNet("resnet18", 4, 0.5), get_strategy(cfg.train),
                   torch.device("cpu"), hooks=hooks)


def test_selection_in_the_loop_trains_exactly_the_images_at_or_above_the_minimum():
    """The strategy's targets (spied before the selection) against what the step trained: weight 0 exactly below
    the minimum margin, the logged unlabeled loss over the kept images only, the per-image flag and the share
    kept in the epoch record."""
    # The minimum: the median margin of the first batch with pseudo-labels (the same in a run without a selection:
    # nothing differs before it), so that both sides of it occur.
    probe = _trainer(_cfg(epochs=2))
    first = []
    inner = probe.strategy.targets
    probe.strategy.targets = lambda *a: first.append(inner(*a)) or first[-1]
    probe.fit()
    threshold = float(first[0].margin.median())
    records, calls = [], []
    tr = _trainer(_cfg(select_min_margin=threshold), Hooks(on_record=records.append))
    inner = tr.strategy.targets

    def spy(feats, logits, centers, valid, epoch):
        tg = inner(feats, logits, centers, valid, epoch)
        calls.append((epoch, logits.clone(), tg, tg.weight.clone(), tg.margin.clone()))
        return tg

    tr.strategy.targets = spy
    tr.fit()
    iters = [r for r in records if r["type"] == "iter" and r["epoch"] >= 1]
    assert len(iters) == len(calls)  # every batch after the warm-up had unlabeled images
    kept = dropped = 0
    for rec, (epoch, logits, tg, before, margin) in zip(iters, calls):
        keep = margin >= threshold
        assert torch.equal(tg.weight, before * keep)
        kept, dropped = kept + int(keep.sum()), dropped + int((~keep).sum())
        expected = float((soft_cross_entropy(logits, tg.probs) * before * keep).sum()) / 8
        assert rec["loss_unlabeled"] == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert kept > 0 and dropped > 0  # the case exercises both sides of the minimum
    epochs = [r for r in records if r["type"] == "epoch"]
    last = [c for c in calls if c[0] == 2]
    share = sum(int((c[4] >= threshold).sum()) for c in last) / sum(len(c[4]) for c in last)
    assert epochs[2]["pl_selected_frac"] == pytest.approx(share)
    # The per-image flags reach the history (and so the diagnostics' utilisation and accuracy among the selected)
    from cpl.pseudo import diagnostics

    st = tr.state
    hist = diagnostics.History(labels=np.stack(st.history_labels), conf=np.stack(st.history_conf),
                               margin=np.stack(st.history_margin), selected=np.stack(st.history_selected))
    drawn = st.history_labels[2] >= 0
    assert not st.history_selected[2][~drawn].any()
    assert st.history_selected[2][drawn].mean() == pytest.approx(share)
    assert diagnostics.epoch_stats(hist, 4, 2).selected_frac == pytest.approx(share)


REMEDY_RUNS = {
    "cpl-sinkhorn-csls-select": dict(method="cpl", assignment="sinkhorn", similarity="csls", csls_k=2,
                                     select_min_score=0.01),
    "fapl-sinkhorn": dict(method="fapl", assignment="sinkhorn", sinkhorn_epsilon=0.1),
    "onehot-select": dict(method="onehot", select_min_score=0.26),
}


@pytest.mark.parametrize("run", list(REMEDY_RUNS))
def test_resume_through_a_run_with_remedies_is_bit_identical(run):
    """Checkpoint after epoch 1 of 3 (the first epoch with pseudo-labels), resume in a new trainer: the same
    weights, centers, pseudo-labels and records as the run left alone."""
    train = REMEDY_RUNS[run]
    full_records: list[dict] = []
    full = _trainer(_cfg(**train), Hooks(on_record=full_records.append))
    full.fit()
    saved: dict = {}
    first = _trainer(_cfg(**train), Hooks(on_epoch_end=lambda e, s: saved.setdefault(e, copy.deepcopy(s))))
    first.train_epoch(0)
    first.train_epoch(1)
    resumed_records: list[dict] = []
    resumed = _trainer(_cfg(**train), Hooks(on_record=resumed_records.append))
    resumed.load_state_dict(saved[1])
    resumed.fit()
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert torch.equal(full.state.centers, resumed.state.centers)
    assert all(np.array_equal(a, b) for a, b in zip(full.state.history_labels, resumed.state.history_labels))
    skip = {"time", "imgs_per_s", "epoch_time_s"}
    tail = [{k: v for k, v in r.items() if k not in skip} for r in full_records if r["epoch"] == 2]
    assert tail == [{k: v for k, v in r.items() if k not in skip} for r in resumed_records]
    assert (full.state.history_labels[2] >= 0).all() and "pl_selected_frac" in full_records[-1]


def test_a_balanced_epoch_trains_on_sinkhorns_labels_of_the_epoch_start_features():
    """Each epoch after the warm-up starts by extracting the 8 unlabeled images' features (eval mode, no
    augmentation): the labels every batch of that epoch then trains on are Sinkhorn's over those features and
    the epoch-start centers, recomputed here from the extracted features."""
    from cpl.engine.features import extract

    tr = _trainer(_cfg(assignment="sinkhorn"))
    starts = []
    inner = tr.strategy.epoch_targets

    def spy(feats, centers, valid, epoch):
        unlabeled = Rows(tr.images, torch.arange(16, len(tr.images)))
        ref, _ = extract(tr.model, unlabeled, torch.device("cpu"), batch_size=256)
        starts.append((feats.clone(), ref, centers.clone(), valid.clone()))
        return inner(feats, centers, valid, epoch)

    tr.strategy.epoch_targets = spy
    tr.fit()
    assert len(starts) == 2  # epochs 1 and 2 (epoch 0 is the warm-up)
    for epoch, (feats, ref, centers, valid) in zip((1, 2), starts):
        assert torch.equal(feats, ref)
        cos = torch.nn.functional.normalize(feats, dim=1) @ torch.nn.functional.normalize(centers, dim=1).T
        q = sinkhorn(cos.masked_fill(~valid, float("-inf")), 0.05, 100)
        assert np.array_equal(tr.state.history_labels[epoch], q.argmax(1).numpy())


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("key,value", [("assignment", "sinkhorn"), ("similarity", "csls"),
                                       ("select_min_score", 0.5), ("select_min_margin", 0.1)])
def test_a_remedy_is_refused_by_name_where_it_cannot_act(key, value):
    can_act = CENTER_LABEL_METHODS if key in ("assignment", "similarity") else SCORED_LABEL_METHODS
    for name in METHODS:
        overrides = ["data.root=x", f"train.method={name}", f"train.{key}={value}"]
        if name in can_act:
            assert getattr(load_config(None, overrides).train, key) == value
            with pytest.raises(ConfigError, match=rf"train\.{key}: acts on the label.*unlabeled.source none"):
                load_config(None, [*overrides, "unlabeled.source=none"])
        else:
            with pytest.raises(ConfigError, match=rf"train\.{key}: acts on the label.*method {name}"):
                load_config(None, overrides)


@pytest.mark.parametrize("override,message", [
    ("train.assignment=hungarian", r"train\.assignment: must be argmax or sinkhorn"),
    ("train.similarity=dot", r"train\.similarity: must be cosine or csls"),
    ("train.sinkhorn_epsilon=0.1", r"train\.sinkhorn_epsilon: has no effect without train\.assignment=sinkhorn"),
    ("train.sinkhorn_iters=5", r"train\.sinkhorn_iters: has no effect without train\.assignment=sinkhorn"),
    ("train.csls_k=5", r"train\.csls_k: has no effect without train\.similarity=csls"),
    ("train.assignment=sinkhorn train.method=fapl train.fapl_temperature=0.5",
     r"train\.fapl_temperature: has no effect with train\.assignment=sinkhorn"),
    ("train.select_min_score=-0.1", r"train\.select_min_score: must be >= 0"),
    ("train.select_min_margin=-1", r"train\.select_min_margin: must be >= 0"),
])
def test_remedy_settings_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["data.root=x", *override.split()])


def test_the_remedies_are_off_by_default_and_in_no_published_config():
    t = TrainConfig()
    assert (t.assignment, t.similarity, t.select_min_score, t.select_min_margin) == ("argmax", "cosine", 0.0, 0.0)
    s = get_strategy(t)
    assert s.balance is None and not s.needs_set_features


@pytest.mark.parametrize("name", SCORED_LABEL_METHODS)
def test_the_score_and_margin_a_selection_reads_are_the_labels_own(name):
    """label_from = centers: the cosine of the nearest valid center and its gap to the runner-up; softmax: p."""
    g = torch.Generator().manual_seed(4)
    feats, centers, logits = torch.randn(6, 5, generator=g), torch.randn(3, 5, generator=g), torch.randn(6, 3)
    valid = torch.tensor([True, False, True])
    tg = get_strategy(TrainConfig(method=name, warmup_epochs=0)).targets(feats, logits, centers, valid, 0)
    if METHODS[name].label_from == "centers":
        scores = torch.nn.functional.normalize(feats, dim=1) @ torch.nn.functional.normalize(centers, dim=1).T
        scores = scores.masked_fill(~valid, float("-inf"))
    else:
        scores = torch.softmax(logits, dim=1)
    top = scores.topk(2, dim=1).values
    assert torch.equal(tg.label, scores.argmax(1))
    assert torch.allclose(tg.confidence, top[:, 0]) and torch.allclose(tg.margin, top[:, 0] - top[:, 1])
