"""Losses of CPL: softmax cross-entropy (hard and soft targets) and the center loss with Wen's update.

Normalisation: the papers sum both terms over the m images of a mini-batch,
L = -Σ log p + λ/2 Σ ||x - c||². We divide the whole loss by m, which keeps λ's meaning (the ratio of
the two terms) exactly while making the learning rate independent of the batch size.
All center arithmetic is float32, also under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample -Σ_k q_k log p_k. logits [B, C], target [B, C] rows summing to 1 → [B] float32."""
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1)


def center_loss(feats: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                batch_size: int) -> torch.Tensor:
    """λ-free center term ½ Σ_{i ∈ mask} ||x_i − c_{y_i}||² / m.

    feats [B, D] (gradient flows into them), centers [K, D] (treated as constants: they have their own
    update rule), labels [B] int64, mask [B] bool selects the images that carry the term, m = ``batch_size``.
    """
    if not bool(mask.any()):
        return feats.new_zeros((), dtype=torch.float32)
    x = feats[mask].float()
    c = centers.detach()[labels[mask]]
    return 0.5 * (x - c).pow(2).sum() / batch_size


def center_update_stats(feats: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                        num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums of the labeled features and their counts: (S [K, D] float32, n [K] float32).

    These are the only batch quantities Wen's update needs, so under data parallelism summing them across
    ranks (all-reduce) gives exactly the single-process update of the global batch.
    """
    x = feats.detach()[mask].float()
    y = labels[mask]
    sums = torch.zeros(num_classes, feats.shape[1], dtype=torch.float32, device=feats.device)
    sums.index_add_(0, y, x)
    counts = torch.zeros(num_classes, dtype=torch.float32, device=feats.device)
    counts.index_add_(0, y, torch.ones_like(y, dtype=torch.float32))
    return sums, counts


@torch.no_grad()
def apply_center_update(centers: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, alpha: float) -> None:
    """Wen et al.'s update, in place: Δc_j = Σ_i (c_j − x_i) / (1 + n_j);  c_j ← c_j − α Δc_j.

    Σ_i (c_j − x_i) = n_j c_j − S_j. Classes absent from the batch have n_j = 0 and do not move.
    (CPL's Algorithm 1 prints "+αΔc", a sign typo: that would push centers away from their features.)
    """
    delta = (counts[:, None] * centers - sums) / (1.0 + counts[:, None])
    centers.sub_(alpha * delta)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-sample hard-label cross-entropy: logits [B, C], labels [B] int64 → [B] float32.

    ``label_smoothing`` ε trains towards (1 − ε)·one-hot + ε/C (Szegedy et al. 2016; BoT: ε = 0.1).
    """
    return F.cross_entropy(logits.float(), labels, reduction="none", label_smoothing=label_smoothing)


def batch_hard_triplet(feats: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017, as in BoT): mean over anchors of
    max(0, max_p d(a, p) − min_n d(a, n) + margin), d the Euclidean distance of the raw features.

    feats [B, D] (gradient flows), labels [B] int64 → scalar float32. Anchors without a positive or a
    negative in the batch are skipped; 0 when no anchor has both.
    """
    x = feats.float()
    sq = x.pow(2).sum(1)
    # clamp before sqrt: rounding can make a self-distance slightly negative, and sqrt'(0) is infinite
    d = (sq[:, None] + sq[None, :] - 2.0 * x @ x.T).clamp(min=1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=feats.device)
    pos, neg = same & ~eye, ~same
    ok = pos.any(1) & neg.any(1)
    if not bool(ok.any()):
        return feats.new_zeros((), dtype=torch.float32)
    hardest_pos = d.masked_fill(~pos, float("-inf")).max(1).values
    hardest_neg = d.masked_fill(~neg, float("inf")).min(1).values
    return F.relu(hardest_pos - hardest_neg + margin)[ok].mean()


def center_loss_sgd(feats: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                    batch_size: int) -> torch.Tensor:
    """BoT's center term Σ_{i ∈ mask} ||x_i − c_{y_i}||² / m, λ-free, no ½, the gradient flowing into both
    feats [B, D] and centers [K, D] (which BoT learns by SGD). labels [B] int64, mask [B] bool → scalar."""
    if not bool(mask.any()):
        return feats.new_zeros((), dtype=torch.float32) + 0.0 * centers.sum()
    d = (feats[mask].float() - centers[labels[mask]]).pow(2).sum(1)
    return d.clamp(min=1e-12, max=1e12).sum() / batch_size
