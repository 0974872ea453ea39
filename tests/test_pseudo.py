"""Each pseudo-labeling strategy's target distribution on a hand-made case."""

from __future__ import annotations

import math

import torch

from cpl.config import TrainConfig
from cpl.pseudo import STRATEGIES, cosine_to_centers, get_strategy

# Three classes in 2-D. Centers: class 0 along +x, class 1 along +y, class 2 untouched (zero).
CENTERS = torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.0, 0.0]])
VALID = torch.tensor([True, True, False])
FEATS = torch.tensor([[1.0, 0.2], [0.1, 5.0], [1.0, 1.0]])
LOGITS = torch.tensor([[0.0, 1.0, 2.0], [3.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def make(method: str, **kw):
    return get_strategy(TrainConfig(method=method, **kw))


def test_cpl_is_bruteforce_cosine_argmax_and_ignores_untouched_centers():
    torch.manual_seed(0)
    feats, centers = torch.randn(50, 8), torch.randn(6, 8)
    valid = torch.tensor([True, True, False, True, True, True])
    t = make("cpl").targets(feats, torch.zeros(50, 6), centers, valid, epoch=0)
    for i in range(50):
        best = max((j for j in range(6) if valid[j]),
                   key=lambda j: float(feats[i] @ centers[j]) / float(feats[i].norm() * centers[j].norm()))
        assert t.label[i] == best
        cos = float(feats[i] @ centers[best]) / float(feats[i].norm() * centers[best].norm())
        assert math.isclose(float(t.confidence[i]), cos, rel_tol=1e-5)
    assert torch.equal(t.probs.argmax(1), t.label) and torch.allclose(t.probs.sum(1), torch.ones(50))
    assert torch.all(t.weight == 1.0)


def test_cpl_with_all_centers_zero_trains_nothing():
    t = make("cpl").targets(FEATS, LOGITS, torch.zeros(3, 2), torch.zeros(3, dtype=torch.bool), epoch=0)
    assert torch.all(t.weight == 0) and torch.all(t.label == -1)


def test_fapl_soft_target_is_softmax_of_cosines_over_touched_centers():
    s = make("fapl", fapl_temperature=0.5)
    t = s.targets(FEATS, LOGITS, CENTERS, VALID, epoch=0)
    cos = cosine_to_centers(FEATS, CENTERS, VALID)
    expected = torch.softmax(cos[:, :2] / 0.5, dim=1)
    assert torch.allclose(t.probs[:, :2], expected, atol=1e-6)
    assert torch.all(t.probs[:, 2] == 0)  # untouched center gets no mass
    assert t.label.tolist() == [0, 1, 0]  # argmax center for the center term (tie at 45° → first)
    # Published T = 1 with cosines in [-1, 1]: the largest ratio between two entries is at most e².
    t1 = make("fapl").targets(FEATS, LOGITS, CENTERS, VALID, epoch=0)
    ratio = t1.probs[:, :2].max(1).values / t1.probs[:, :2].min(1).values
    assert torch.all(ratio <= math.e ** 2 + 1e-5)


def test_lsro_target_is_uniform():
    t = make("lsro").targets(FEATS, LOGITS, CENTERS, VALID, epoch=0)
    assert torch.allclose(t.probs, torch.full((3, 3), 1 / 3))
    assert torch.all(t.weight == 1.0)


def test_onehot_is_argmax_p_with_weight_after_warmup():
    s = make("onehot", warmup_epochs=20)
    t_early = s.targets(FEATS, LOGITS, CENTERS, VALID, epoch=19)
    t_late = s.targets(FEATS, LOGITS, CENTERS, VALID, epoch=20)
    assert t_late.label.tolist()[:2] == [2, 0]
    assert torch.equal(t_late.probs[0], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.all(t_early.weight == 0) and torch.all(t_late.weight == 0.1)


def test_mprl_rank_target():
    # p ∝ exp([0, 1, 2]) ascending: ranks 1, 2, 3 → q = 2 r / (K (K+1)) = [1, 2, 3] / 6
    t = make("mprl1").targets(FEATS, LOGITS, CENTERS, VALID, epoch=0)
    assert torch.allclose(t.probs[0], torch.tensor([1 / 6, 2 / 6, 3 / 6]))
    assert torch.allclose(t.probs[1], torch.tensor([3 / 6, 2 / 6, 1 / 6]))
    # p = [0.5, 0.2, 0.3] → ranks [3, 1, 2] (the paper's rank, not the released code's permutation bug)
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.3]]))
    t2 = make("mprl1").targets(FEATS[:1], logits, CENTERS, VALID, epoch=0)
    assert torch.allclose(t2.probs[0], torch.tensor([3 / 6, 1 / 6, 2 / 6]))
    assert torch.allclose(t.probs.sum(1), torch.ones(3))
    assert torch.all(t.weight == 1.0)
    s2 = make("mprl2", warmup_epochs=5)
    assert torch.all(s2.targets(FEATS, LOGITS, CENTERS, VALID, epoch=4).weight == 0)
    assert torch.all(s2.targets(FEATS, LOGITS, CENTERS, VALID, epoch=5).weight == 0.1)


def test_allinone_targets_the_extra_class():
    s = make("allinone")
    assert s.extra_class
    logits = torch.zeros(3, 4)  # K = 3 real classes + 1
    t = s.targets(FEATS, logits, CENTERS, VALID, epoch=0)
    assert torch.equal(t.probs, torch.tensor([[0.0, 0.0, 0.0, 1.0]] * 3))
    assert t.label.tolist() == [3, 3, 3]


def test_references_use_no_unlabeled_images():
    assert not STRATEGIES["baseline"]().uses_unlabeled and not STRATEGIES["baseline"]().center_loss
    assert not STRATEGIES["center"]().uses_unlabeled and STRATEGIES["center"]().center_loss
    assert STRATEGIES["cpl"]().center_loss and STRATEGIES["fapl"]().center_loss
    assert not any(STRATEGIES[m]().center_loss for m in ("lsro", "onehot", "mprl1", "mprl2", "allinone"))


def test_unlabeled_weight_override():
    assert make("onehot", unlabeled_weight=0.5).weight == 0.5
    assert make("onehot").weight == 0.1 and make("cpl").weight == 1.0
