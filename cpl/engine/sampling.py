"""Which images make up each mini-batch of an epoch: shuffled union, or P identities × K images (+ unlabeled).

Indices address the trainer's image tensor: 0..N_l-1 labeled, N_l..N_l+N_u-1 unlabeled. Every draw comes
from the epoch's generator, so a resumed run replays the same batches.
"""

from __future__ import annotations

import torch


def shuffled_batches(n_images: int, batch_size: int, generator: torch.Generator,
                     iters: int = 0) -> list[torch.Tensor]:
    """Global batches [batch_size] int64 of one pass over a random permutation of ``n_images`` (the ragged
    tail is dropped; at least one batch, possibly shorter, when there are fewer images than a batch).

    ``iters`` > 0 sets the number of batches (a step-matched epoch): fewer than a pass takes the first ones;
    more draws further permutations after the first, so a pass's batches come out as they would alone."""
    perm = torch.randperm(n_images, generator=generator)
    one_pass = max(1, n_images // batch_size)
    iters = iters or one_pass
    while iters > max(1, len(perm) // batch_size):
        perm = torch.cat([perm, torch.randperm(n_images, generator=generator)])
    return [perm[i * batch_size:(i + 1) * batch_size] for i in range(iters)]


def pk_groups(labels: torch.Tensor, k: int, generator: torch.Generator) -> list[list[torch.Tensor]]:
    """Per identity, its images shuffled and cut into groups of ``k`` (an identity with fewer than k images
    is sampled with replacement up to k; a ragged tail is dropped), as in reid-strong-baseline's
    RandomIdentitySampler. labels [N_l] int64 → one list of [k] index tensors per identity present."""
    groups = []
    for pid in torch.unique(labels):
        idx = (labels == pid).nonzero().squeeze(1)
        if len(idx) < k:
            idx = idx[torch.randint(len(idx), (k,), generator=generator)]
        idx = idx[torch.randperm(len(idx), generator=generator)]
        groups.append([idx[i * k:(i + 1) * k] for i in range(len(idx) // k)])
    return groups


def pk_batches(labels: torch.Tensor, p: int, k: int, n_unlabeled: int, unlabeled_per_batch: int,
               generator: torch.Generator) -> list[torch.Tensor]:
    """Global batches of P distinct identities × K images each, then ``unlabeled_per_batch`` unlabeled images.

    Identities are drawn as BoT does: P at random among those with groups left, one group each, until fewer
    than P remain. Unlabeled images follow one random permutation, restarted when used up.
    labels [N_l] int64 → list of [P·K + unlabeled_per_batch] int64 (the P groups of K in order, then U).
    """
    n_l = len(labels)
    left = pk_groups(labels, k, generator)
    u_perm = torch.randperm(n_unlabeled, generator=generator) + n_l if n_unlabeled else torch.zeros(0, dtype=torch.long)
    u_pos = 0
    batches = []
    while sum(1 for g in left if g) >= p:
        avail = torch.tensor([i for i, g in enumerate(left) if g])
        chosen = avail[torch.randperm(len(avail), generator=generator)[:p]].tolist()
        ids = [left[i].pop() for i in chosen]
        unl = []
        if unlabeled_per_batch and n_unlabeled:
            take = (u_pos + torch.arange(unlabeled_per_batch)) % n_unlabeled
            unl = [u_perm[take]]
            u_pos = (u_pos + unlabeled_per_batch) % n_unlabeled
        batches.append(torch.cat([*ids, *unl]))
    return batches


def rank_major(num_labeled: int, k: int, num_unlabeled: int, world_size: int) -> torch.Tensor:
    """Permutation [L + U] int64 of a P×K batch (L = P·K labeled positions, then U unlabeled) so that rank r's
    contiguous slice holds P/W whole identities followed by U/W unlabeled images (the caller checks that P
    and U are multiples of W). The identity permutation for one process."""
    p_r, u_r = num_labeled // k // world_size, num_unlabeled // world_size
    parts = []
    for r in range(world_size):
        parts.append(torch.arange(r * p_r * k, (r + 1) * p_r * k))
        parts.append(num_labeled + torch.arange(r * u_r, (r + 1) * u_r))
    return torch.cat(parts)


def unlabeled_per_batch(labeled_per_batch: int, share: float, n_labeled: int, n_unlabeled: int,
                        world_size: int) -> int:
    """Unlabeled images to add to a P×K batch so they make up ``share`` of it (-1: their share of all images),
    rounded to a multiple of ``world_size``."""
    if n_unlabeled == 0:
        return 0
    s = n_unlabeled / (n_labeled + n_unlabeled) if share < 0 else share
    m = round(labeled_per_batch * s / (1.0 - s) / world_size) * world_size
    return max(world_size, m)
