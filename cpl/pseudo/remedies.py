"""Remedies for hub collapse, the math only: CSLS similarity, balanced assignment by Sinkhorn-Knopp, and
confidence selection. Each is off by default and documented in docs/methods.md (paper, formula, cost).

* CSLS (Conneau et al., "Word translation without parallel data", ICLR 2018):
  csls(u, c) = 2·cos(u, c) − r_C(u) − r_U(c), r_C(u) the mean cosine of u to its k nearest valid centers,
  r_U(c) the mean cosine of c to its k nearest reference features (the epoch's unlabeled features).
* Sinkhorn-Knopp (SeLa, Asano et al. ICLR 2020; SwAV, Caron et al. NeurIPS 2020): the assignment
  Q ∝ exp(S / ε) with every row summing to 1 and every valid class receiving the same mass N / K_valid.
* Selection (FixMatch, Sohn et al. NeurIPS 2020; FlexMatch, Zhang et al. NeurIPS 2021): an image whose score
  or margin to the runner-up is below a minimum is not trained on in that step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _mean_topk(sims: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the k largest finite entries of each row of sims [R, S] (all of them when fewer) → [R]."""
    finite = torch.isfinite(sims)
    k = max(1, min(k, sims.shape[1]))
    top = sims.masked_fill(~finite, float("-inf")).topk(k, dim=1).values
    ok = torch.isfinite(top)
    return torch.where(ok, top, torch.zeros_like(top)).sum(1) / ok.sum(1).clamp(min=1)


def csls(feats: torch.Tensor, centers: torch.Tensor, center_valid: torch.Tensor, reference: torch.Tensor,
         k: int) -> torch.Tensor:
    """CSLS scores [B, K] float32 of feats [B, D] against centers [K, D] (-inf for an invalid center).

    r_C(u) is taken over the valid centers only (an untouched center is not a neighbour); r_U(c) over
    ``reference`` [N, D] (any norm; the epoch's unlabeled features), k nearest on each side (fewer when a side
    has fewer). The score lies in [-4, 4]; a hub, close to many unlabeled features, pays a large r_U(c).
    """
    f = F.normalize(feats.float(), dim=1)
    c = F.normalize(centers.float(), dim=1)
    cos = (f @ c.T).masked_fill(~center_valid[None, :], float("-inf"))
    r_c = _mean_topk(cos, k)  # [B]
    r_u = _mean_topk(c @ F.normalize(reference.float(), dim=1).T, k)  # [K]
    return (2 * cos - r_c[:, None] - r_u[None, :]).masked_fill(~center_valid[None, :], float("-inf"))


def sinkhorn(scores: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """Balanced soft assignment Q [N, K] float32 of N images to the classes with a finite score.

    scores [N, K] float32, -inf for a class that takes no image (an invalid center). Entropic optimal transport
    with equal class marginals, solved in the log domain (exact for small ε): Q ∝ exp(scores / ε), then
    ``iters`` rounds of (every valid column sums to N / K_valid, every row sums to 1), ending on the rows, as
    SwAV's ``distributed_sinkhorn``. A row is a probability distribution; as ε → 0 and ``iters`` → ∞, argmax Q
    is the assignment that maximises the total score with every class taking N / K_valid images.
    Returns zeros when no class is valid.
    """
    valid = torch.isfinite(scores).any(0)
    n, kv = scores.shape[0], int(valid.sum())
    q = torch.zeros_like(scores, dtype=torch.float32)
    if kv == 0 or n == 0:
        return q
    log_q = scores[:, valid].double() / epsilon
    log_cols, log_rows = math.log(n / kv), 0.0
    for _ in range(iters):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) + log_cols
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) + log_rows
    q[:, valid] = log_q.exp().float()
    return q


def margin_of(scores: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """scores[i, label_i] − the best score of any other class, per row of scores [B, K] → [B] float32.

    ≥ 0 when the label is the row's argmax (the gap to the runner-up); negative when a balanced assignment gave
    an image another class than its best. 0 where either side is not finite (no runner-up, no label).
    """
    own = scores.gather(1, label.clamp(min=0)[:, None]).squeeze(1)
    others = scores.scatter(1, label.clamp(min=0)[:, None], float("-inf")).max(1).values
    return torch.nan_to_num(own - others, nan=0.0, posinf=0.0, neginf=0.0).float()


def select(score: torch.Tensor, margin: torch.Tensor, min_score: float, min_margin: float) -> torch.Tensor:
    """[B] bool: the images kept, those with score ≥ ``min_score`` and margin ≥ ``min_margin`` (score and
    margin [B] float32); a minimum of 0 is no minimum."""
    keep = torch.ones_like(score, dtype=torch.bool)
    if min_score > 0:
        keep &= score >= min_score
    if min_margin > 0:
        keep &= margin >= min_margin
    return keep
