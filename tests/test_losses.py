"""Center loss and Wen's center update against hand computations."""

from __future__ import annotations

import torch

from cpl.engine.losses import apply_center_update, center_loss, center_update_stats, soft_cross_entropy


def test_center_update_matches_hand_computation():
    # 3 classes in 2-D; class 0 has two labeled images, class 1 one, class 2 none; one unlabeled image.
    centers = torch.tensor([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    feats = torch.tensor([[3.0, 0.0], [1.0, 2.0], [0.0, 4.0], [100.0, 100.0]])
    labels = torch.tensor([0, 0, 1, 2])
    labeled = torch.tensor([True, True, True, False])  # the unlabeled image must not move class 2
    sums, counts = center_update_stats(feats, labels, labeled, 3)
    apply_center_update(centers, sums, counts, alpha=0.5)
    # Δc0 = ((1,0)-(3,0) + (1,0)-(1,2)) / (1+2) = (-2,-2)/3 ; c0 - 0.5·Δc0 = (1+1/3, 1/3)
    # Δc1 = ((0,2)-(0,4)) / 2 = (0,-1) ; c1 - 0.5·Δc1 = (0, 2.5)
    expected = torch.tensor([[1 + 1 / 3, 1 / 3], [0.0, 2.5], [5.0, 5.0]])
    assert torch.allclose(centers, expected, atol=1e-6)
    assert counts.tolist() == [2.0, 1.0, 0.0]


def test_center_update_moves_centers_toward_features_from_zero():
    centers = torch.zeros(1, 3)
    x = torch.tensor([[2.0, -4.0, 6.0]])
    for _ in range(30):
        s, n = center_update_stats(x, torch.tensor([0]), torch.tensor([True]), 1)
        apply_center_update(centers, s, n, alpha=0.5)
    # Each step closes a quarter of the gap (α/(1+n) = 0.25): after 30 steps the gap is 0.75^30 of x.
    assert torch.allclose(x - centers, x * 0.75**30, rtol=1e-4)


def test_center_loss_value_and_gradient_only_from_masked_images():
    feats = torch.tensor([[1.0, 1.0], [3.0, 0.0], [0.0, 0.0]], requires_grad=True)
    centers = torch.tensor([[0.0, 0.0], [1.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 1, 1])
    mask = torch.tensor([True, True, False])
    loss = center_loss(feats, centers, labels, mask, batch_size=3)
    # ½ (|(1,1)|² + |(2,0)|²) / 3 = ½ (2 + 4) / 3 = 1
    assert abs(loss.item() - 1.0) < 1e-6
    loss.backward()
    assert torch.allclose(feats.grad, torch.tensor([[1 / 3, 1 / 3], [2 / 3, 0.0], [0.0, 0.0]]))
    assert centers.grad is None  # centers follow their own rule, not SGD


def test_soft_cross_entropy_equals_hard_for_one_hot():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    hard = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2]), reduction="none")
    assert torch.allclose(soft_cross_entropy(logits, target), hard)
