"""CMC, mAP and mINP under the Market-1501 protocol.

Only the ranks of a query's true matches enter these metrics. The rank of a match is the number
of valid gallery images ranked before it, which is (non-junk images before it) minus (excluded
same-camera images of the same identity before it). The first count is a binary search in the
query's distances sorted by value alone (no argsort), and on the CPU only the distances up to
the query's hardest match are sorted at all, since nothing farther can precede a match; the
second count involves just the handful of images of the query's own identity. The per-query
bookkeeping is vectorised over all queries.

Ties: the ranking is by distance, then by gallery index (what a stable sort of the row gives).
An image at exactly the same distance as a match counts as before it iff its index is smaller.
torchreid sorts with an unstable argsort, so on exact ties its order is arbitrary.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from cpl.evaluation._tensors import chunk_rows, float_matrix, label_vector


def protocol_keys(protocol: str, q_paths: Sequence[str], g_paths: Sequence[str], q_camids: Any,
                  g_camids: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(q_keys [Q] int64, g_keys [G] int64)`` to pass to :func:`evaluate` as cameras under ``protocol`` (a key of
    :data:`cpl.data.formats.PROTOCOLS`).

    cross-camera: the cameras themselves. leave-one-out (no cameras): each image is its own "camera", so only the
    query image itself (the same file in the gallery) is left out and every other image of its identity is a match.
    """
    from cpl.data.formats import LEAVE_ONE_OUT

    if protocol != LEAVE_ONE_OUT:
        return np.asarray(q_camids, dtype=np.int64), np.asarray(g_camids, dtype=np.int64)
    at = {p: i for i, p in enumerate(g_paths)}
    return np.array([at.get(p, -1 - i) for i, p in enumerate(q_paths)], dtype=np.int64), np.arange(len(g_paths))


def evaluate(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
) -> dict:
    """Market-1501 single-query evaluation of a query x gallery distance matrix.

    distmat: [Q, G] float (numpy array or torch tensor; on a CUDA tensor the work runs on that GPU),
    smaller = more similar. q_pids, q_camids: [Q] int; g_pids, g_camids: [G] int.
    For each query, gallery images of the same pid seen by the same camera are excluded (pass
    :func:`protocol_keys` as the cameras for another protocol), and gallery
    pid -1 (junk) is excluded; pid 0 (distractors) are ordinary negatives. Queries without a valid
    match are skipped in CMC, mAP and mINP.

    Returns a dict:
      cmc: [max_rank] float64, fraction of valid queries whose first match is within the top k
      mAP: float, mean non-interpolated average precision (torchreid's definition), a fraction
      mINP: float, mean inverse negative penalty (fast-reid: matches / rank of the hardest match)
      all_AP: [Q] float64, AP per query, NaN where the query has no valid match
      num_valid: int, number of queries with a valid match
      first_match: [Q] int64, 1-based rank of the query's first valid match, -1 where it has none
    Raises ValueError when no query has a valid match.
    """
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    dist = float_matrix(distmat, "distmat")
    device = dist.device
    num_q, num_g = dist.shape
    q_pids_t = label_vector(q_pids, num_q, "q_pids", device)
    q_cams_t = label_vector(q_camids, num_q, "q_camids", device)
    g_pids_t = label_vector(g_pids, num_g, "g_pids", device)
    g_cams_t = label_vector(g_camids, num_g, "g_camids", device)

    if not bool((g_pids_t != -1).any()):
        raise ValueError("no query has a valid match in the gallery")
    return _summary(*_block_ranks(dist, q_pids_t, q_cams_t, g_pids_t, g_cams_t), max_rank)


class BlockEvaluation:
    """:func:`evaluate` of a ``[Q, G]`` distance matrix that is never whole: its row blocks are fed one at a time
    (:meth:`add`), so memory holds one block (MSMT17's 11,659 x 82,161 float32 matrix alone is 3.8 GB). Only the
    ranks of each query's matches are kept, and the result is :func:`evaluate`'s on the whole matrix, bit for bit:
    a query's ranks depend on its own row only, and the summary runs once over all of them.

    q_pids, q_camids: [Q] int; g_pids, g_camids: [G] int, as for :func:`evaluate`.
    """

    def __init__(self, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any):
        self.q_pids, self.q_cams = np.asarray(q_pids), np.asarray(q_camids)
        num_q, num_g = len(self.q_pids), len(np.asarray(g_pids))
        cpu = torch.device("cpu")
        label_vector(self.q_cams, num_q, "q_camids", cpu)
        self.g_pids = label_vector(g_pids, num_g, "g_pids", cpu)
        self.g_cams = label_vector(g_camids, num_g, "g_camids", cpu)
        if not bool((self.g_pids != -1).any()):
            raise ValueError("no query has a valid match in the gallery")
        self.next_row = 0
        self.parts: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, block: Any) -> None:
        """The distances of the next queries: ``block`` [R, G] float (numpy or tensor, CPU or CUDA), the rows
        after those added so far."""
        dist = float_matrix(block, "block")
        rows = slice(self.next_row, self.next_row + dist.shape[0])
        if rows.stop > len(self.q_pids) or dist.shape[1] != len(self.g_pids):
            raise ValueError(f"block of shape {tuple(dist.shape)} at row {rows.start} does not fit the "
                             f"{len(self.q_pids)} x {len(self.g_pids)} matrix")
        dev = dist.device
        self.parts.append(_block_ranks(dist, label_vector(self.q_pids[rows], dist.shape[0], "q_pids", dev),
                                       label_vector(self.q_cams[rows], dist.shape[0], "q_camids", dev),
                                       self.g_pids.to(dev), self.g_cams.to(dev)))
        self.next_row = rows.stop

    def result(self, max_rank: int = 50) -> dict:
        """:func:`evaluate`'s dict, once every row has been added."""
        if max_rank < 1:
            raise ValueError(f"max_rank must be >= 1, got {max_rank}")
        if self.next_row != len(self.q_pids):
            raise ValueError(f"{self.next_row} of {len(self.q_pids)} query rows added")
        if not self.parts:
            raise ValueError("no query has a valid match in the gallery")
        width = max(r.shape[1] for r, _ in self.parts)  # the widest block's: the padding evaluate() has
        ranks = torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[1])) for r, _ in self.parts])
        return _summary(ranks, torch.cat([c for _, c in self.parts]), max_rank)


def _block_ranks(dist: torch.Tensor, q_pids: torch.Tensor, q_cams: torch.Tensor, g_pids: torch.Tensor,
                 g_cams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based rank of every valid match of the queries of ``dist`` [Q, G]: ([Q, P] int64, counts [Q] int64)."""
    groups = _identity_groups(dist, q_pids, q_cams, g_pids, g_cams)
    return _match_ranks(dist, g_pids != -1, *groups)


def _summary(ranks: torch.Tensor, counts: torch.Tensor, max_rank: int) -> dict:
    """:func:`evaluate`'s dict from the ranks [Q, P] of every query's matches and their counts [Q]."""
    device = ranks.device
    valid = counts > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError("no query has a valid match in the gallery")
    k = torch.arange(ranks.shape[1], device=device)
    is_match = k[None, :] < counts[:, None]
    precision = (k[None, :] + 1).to(torch.float64) / (ranks + 1).to(torch.float64)
    ap = torch.where(is_match, precision, 0.0).sum(dim=1) / counts.clamp(min=1)
    ap = torch.where(valid, ap, float("nan"))
    last = ranks.gather(1, (counts - 1).clamp(min=0)[:, None]).squeeze(1)
    inp = counts[valid].to(torch.float64) / (last[valid] + 1).to(torch.float64)
    first = ranks[valid, 0].clamp(max=max_rank)
    cmc = torch.bincount(first, minlength=max_rank + 1)[:max_rank].cumsum(0).to(torch.float64) / num_valid
    all_ap = ap.cpu().numpy()
    return {
        "cmc": cmc.cpu().numpy(),
        "mAP": float(np.mean(all_ap[valid.cpu().numpy()])),
        "mINP": float(inp.mean()),
        "all_AP": all_ap,
        "num_valid": num_valid,
        "first_match": torch.where(valid, ranks[:, 0] + 1, -1).cpu().numpy(),
    }


def _identity_groups(
    dist: torch.Tensor,
    q_pids: torch.Tensor,
    q_cams: torch.Tensor,
    g_pids: torch.Tensor,
    g_cams: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gallery images of each query's identity, split into matches and excluded ones.

    Needs at least one non-junk gallery image. Returns, padded to the most per query:
      match_d, match_g: [Q, P] distance and gallery index of the valid matches, sorted by
        (distance, index), padding after them; counts: [Q] int64 number of valid matches;
      excl_d, excl_g, excl_ok: [Q, E] same-pid same-camera images (excl_ok marks real entries).
    """
    device = dist.device
    num_q, num_g = dist.shape
    # Gallery indices grouped by pid (junk left out), ascending index inside each group.
    real = (g_pids != -1).nonzero().flatten()
    order = real[torch.sort(g_pids[real], stable=True).indices]
    pid_values, group_size = torch.unique_consecutive(g_pids[order], return_counts=True)
    group_start = group_size.cumsum(0) - group_size
    slot = torch.searchsorted(pid_values, q_pids).clamp(max=pid_values.numel() - 1)
    size = torch.where(pid_values[slot] == q_pids, group_size[slot], 0)
    width = max(int(size.max()) if num_q else 0, 1)

    col = torch.arange(width, device=device)
    inside = col[None, :] < size[:, None]
    pos = (group_start[slot][:, None] + col[None, :]).clamp(max=order.numel() - 1)
    g_idx = torch.where(inside, order[pos], 0)
    same_cam = inside & (g_cams[g_idx] == q_cams[:, None])
    is_match = inside & ~same_cam
    d = dist[torch.arange(num_q, device=device)[:, None], g_idx]

    # Matches first, by (distance, index): group entries are in index order, so a stable sort on
    # the distance and then a stable sort on "is padding" give exactly that.
    match_d, perm = torch.where(is_match, d, float("inf")).sort(dim=1, stable=True)
    match_g = g_idx.gather(1, perm)
    _, perm2 = (~is_match).gather(1, perm).to(torch.uint8).sort(dim=1, stable=True)
    counts = is_match.sum(dim=1)
    p = max(int(counts.max()), 1)
    match_d, match_g = match_d.gather(1, perm2)[:, :p], match_g.gather(1, perm2)[:, :p]
    # The excluded ones, compacted the same way (their order does not matter).
    _, perm = (~same_cam).to(torch.uint8).sort(dim=1, stable=True)
    excl_count = same_cam.sum(dim=1)
    e = max(int(excl_count.max()), 1)
    excl_d, excl_g = d.gather(1, perm)[:, :e], g_idx.gather(1, perm)[:, :e]
    excl_ok = torch.arange(e, device=device)[None, :] < excl_count[:, None]
    return match_d, match_g, counts, excl_d, excl_g, excl_ok


def _match_ranks(
    dist: torch.Tensor,
    keep_col: torch.Tensor,
    match_d: torch.Tensor,
    match_g: torch.Tensor,
    counts: torch.Tensor,
    excl_d: torch.Tensor,
    excl_g: torch.Tensor,
    excl_ok: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based rank of every match among the query's valid gallery images: ([Q, P], counts)."""
    if dist.is_cuda:
        before = _count_preceding_cuda(dist, keep_col, match_d, match_g, counts)
    else:
        before = _count_preceding_cpu(dist, keep_col, match_d, match_g, counts)

    # Same-identity same-camera images ranked before the match are not valid: take them out.
    precedes = (excl_d[:, None, :] < match_d[:, :, None]) | (
        (excl_d[:, None, :] == match_d[:, :, None]) & (excl_g[:, None, :] < match_g[:, :, None])
    )
    before -= (precedes & excl_ok[:, None, :]).sum(dim=2)
    return before, counts


def _count_preceding_cuda(
    dist: torch.Tensor,
    keep_col: torch.Tensor,
    match_d: torch.Tensor,
    match_g: torch.Tensor,
    counts: torch.Tensor,
) -> torch.Tensor:
    """Per match: kept images ranked before it by (distance, index). [Q, P] int64."""
    cols = keep_col.nonzero().flatten()
    before = torch.zeros(match_d.shape, dtype=torch.int64, device=dist.device)
    equal = torch.zeros_like(before)
    step = chunk_rows(cols.numel(), dist.device)
    for start in range(0, dist.shape[0], step):
        rows = slice(start, start + step)
        block = dist[rows][:, cols].sort(dim=1).values
        t = match_d[rows].contiguous()
        before[rows] = torch.searchsorted(block, t, right=False)
        equal[rows] = torch.searchsorted(block, t, right=True) - before[rows]
    # A match shares its distance with another kept image (rare): count those with smaller index.
    real = torch.arange(match_g.shape[1], device=dist.device)[None, :] < counts[:, None]
    r, k = (real & (equal > 1)).nonzero(as_tuple=True)
    for s in range(0, r.numel(), 1024):
        rr, kk = r[s : s + 1024], k[s : s + 1024]
        tied = (dist[rr][:, cols] == match_d[rr, kk][:, None]) & (cols < match_g[rr, kk][:, None])
        before[rr, kk] += tied.sum(dim=1)
    return before


def _count_preceding_cpu(
    dist: torch.Tensor,
    keep_col: torch.Tensor,
    match_d: torch.Tensor,
    match_g: torch.Tensor,
    counts: torch.Tensor,
) -> torch.Tensor:
    """CPU version of :func:`_count_preceding_cuda` that sorts only what can precede a match.

    Images farther than a query's hardest match never precede any of its matches, so each row is
    cut down to the images at most that far (a few percent of the gallery for useful features)
    before sorting. np.sort releases the GIL, so chunks of rows run on the intra-op threads.
    """
    dn = dist.numpy()
    keep = keep_col.numpy()
    all_kept = bool(keep.all())
    md, mg, cnt = match_d.numpy(), match_g.numpy(), counts.numpy()
    hardest = np.where(cnt > 0, md[np.arange(len(cnt)), np.maximum(cnt - 1, 0)], -np.inf)
    before = np.zeros(md.shape, dtype=np.int64)

    def work(rows: slice) -> None:
        block = dn[rows]
        mask = block <= hardest[rows, None]
        if not all_kept:
            mask &= keep
        vals = block[mask]  # row-major: the kept values of each row are contiguous
        ends = np.cumsum(mask.sum(axis=1))
        for i, row in enumerate(range(rows.start, rows.stop)):
            n = cnt[row]
            if n == 0:
                continue
            near = np.sort(vals[ends[i - 1] if i else 0 : ends[i]])
            t = md[row, :n]
            lo = np.searchsorted(near, t, side="left")
            before[row, :n] = lo
            # A match shares its distance with another kept image (rare): by index.
            for k in np.flatnonzero(np.searchsorted(near, t, side="right") - lo > 1):
                g = mg[row, k]
                tied = block[i, :g] == t[k]
                before[row, k] += np.count_nonzero(tied if all_kept else tied & keep[:g])

    step = chunk_rows(dn.shape[1], dist.device)
    chunks = [slice(s, min(s + step, dn.shape[0])) for s in range(0, dn.shape[0], step)]
    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        list(pool.map(work, chunks))
    return torch.from_numpy(before)
