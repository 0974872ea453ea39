"""k-reciprocal encoding and Jaccard distance (Zhong et al., CVPR 2017), on sparse neighbour sets.

The classic implementation holds an N x N dense encoding V (N = queries + gallery) and loops in
Python over every image. Here V is a list of (row, column, value) entries (about 30 per row),
built for all rows at once from the top-k neighbour lists, and the Jaccard overlap of every
query with every gallery image is accumulated column by column: only pairs of images that share
a non-zero column meet, which is what the reference's inverted index does, vectorised.

Everything below follows the reference (``re_ranking`` in zhunzhong07/person-re-ranking, as
vendored by torchreid) step for step; see method-notes.md section 4.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

# Work sizes: rows per step in the neighbour-set stages, pairs per step elsewhere.
_ROW_CHUNK = 4096
_PAIR_CHUNK = 1 << 20
_DENSE_CHUNK = 1 << 22  # elements of a dense [rows, ng] block in the Jaccard stage

PairValues = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def half_k(k1: int) -> int:
    """round(k1 / 2) as the reference computes it (numpy rounds halves to even, as Python does)."""
    return int(round(k1 / 2.0))


def jaccard_rerank(
    knn: torch.Tensor,
    knn_v: torch.Tensor,
    pair_v: PairValues,
    orig_qg: torch.Tensor,
    k1: int,
    k2: int,
    lambda_value: float,
) -> torch.Tensor:
    """Final re-ranked query x gallery distances, written into ``orig_qg``.

    knn, knn_v, pair_v, k1, k2: as for :class:`Jaccard`. orig_qg: [nq, ng] float32, the
    normalised squared query-gallery distances; overwritten with
    (1 - lambda) * jaccard + lambda * orig and returned.
    """
    Jaccard(knn, knn_v, pair_v, orig_qg.shape[0], k1, k2).apply(orig_qg, 0, lambda_value)
    return orig_qg


class Jaccard:
    """The Jaccard distances of queries to the gallery, applied to any block of query rows.

    knn: [N, L] int64, each row's nearest images (itself included), L >= min(N, max(k1 + 1, k2));
      rows 0..nq-1 are the queries, the rest the gallery. Only sets are read: for each cut
      c in {k1 + 1, round(k1 / 2) + 1, k2}, the first c entries must be the row's c nearest
      (ties broken by index); the order inside them does not matter.
    knn_v: [N, L] float32, the normalised squared distance of each listed neighbour.
    pair_v(rows, cols): the same normalised distance for arbitrary pairs ([M] int64 each -> [M]).

    Holds the sparse encoding V (O(N x L) entries), grouped for the overlap sums: gallery entries by
    column, query entries by row. A query row's result depends on that row's entries alone, so any
    split of the queries into blocks gives the same values, bit for bit.
    """

    def __init__(self, knn: torch.Tensor, knn_v: torch.Tensor, pair_v: PairValues, nq: int, k1: int,
                 k2: int) -> None:
        num = knn.shape[0]
        rows, cols, vals = _encode(knn, knn_v, pair_v, k1)
        if k2 != 1:
            rows, cols, vals = _expand_query(knn[:, : min(k2, num)], rows, cols, vals, num)
        self.nq, self.num_g = nq, num - nq
        # Gallery entries grouped by column: for a query entry in column j, its partners are the
        # gallery entries of column j.
        is_g = rows >= nq
        g_rows, g_cols, g_vals = rows[is_g] - nq, cols[is_g], vals[is_g]
        order = torch.sort(g_cols, stable=True).indices
        self.g_rows, self.g_vals = g_rows[order], g_vals[order]
        self.col_count = torch.bincount(g_cols, minlength=num)
        self.col_start = self.col_count.cumsum(0) - self.col_count
        self.q_rows, self.q_cols, self.q_vals = rows[~is_g], cols[~is_g], vals[~is_g]
        self.partners = self.col_count[self.q_cols]
        # Per query row: where its pairs and its entries end (cumulative counts).
        self.row_end = torch.zeros(nq, dtype=torch.int64, device=rows.device).index_add_(
            0, self.q_rows, self.partners).cumsum(0)
        self.entry_end = torch.bincount(self.q_rows, minlength=nq).cumsum(0)

    def apply(self, orig: torch.Tensor, first: int, lambda_value: float) -> None:
        """orig <- (1 - lambda) * (1 - m / (2 - m)) + lambda * orig, m = sum_j min(V_q, V_g).

        orig: [R, ng] float32, the normalised squared distances of queries first..first+R-1, in place.
        Its rows are handled in chunks: the pairs sharing a column are summed into a dense
        [rows, ng] block (an index_add, no sorting), then one fused pass applies the formula.
        """
        device, num_g = self.q_rows.device, self.num_g
        stop = first + orig.shape[0]
        max_rows = max(1, _DENSE_CHUNK // max(1, num_g))
        start = first
        while start < stop:
            # Query rows in groups whose pair count and dense block fit the chunk budgets.
            budget_end = (self.row_end[start - 1] if start else 0) + _PAIR_CHUNK
            last = int(torch.searchsorted(self.row_end, budget_end, right=True))
            last = min(max(start + 1, last), start + max_rows, stop)
            entries = slice(int(self.entry_end[start - 1]) if start else 0, int(self.entry_end[last - 1]))
            n = self.partners[entries]
            # Per pair: the query entry's values repeated, and the partner's position in g_*.
            g_entry = (self.col_start[self.q_cols[entries]] - (n.cumsum(0) - n)).repeat_interleave(n)
            g_entry += torch.arange(g_entry.numel(), device=device)
            target = ((self.q_rows[entries] - start) * num_g).repeat_interleave(n) + self.g_rows[g_entry]
            shared = torch.minimum(self.q_vals[entries].repeat_interleave(n), self.g_vals[g_entry])
            overlap = torch.zeros(last - start, num_g, dtype=self.q_vals.dtype, device=device)
            overlap.view(-1).index_add_(0, target, shared)
            # (1 - m / (2 - m)) * (1 - lambda) + orig * lambda, the reference's expression.
            jaccard = torch.div(overlap, overlap.neg().add_(2.0)).neg_().add_(1.0)
            orig[start - first : last - first].mul_(lambda_value).add_(jaccard.mul_(1.0 - lambda_value))
            start = last


def _reciprocal(knn: torch.Tensor, k: int, rows: torch.Tensor) -> torch.Tensor:
    """[len(rows), k] bool: is rows[r] among the first k neighbours of its p-th neighbour?"""
    fwd = knn[rows, :k]
    back = knn[fwd.flatten(), :k].view(len(rows), k, k)
    return (back == rows[:, None, None]).any(dim=2)


def _encode(
    knn: torch.Tensor, knn_v: torch.Tensor, pair_v: PairValues, k1: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sparse V: each row's expanded k-reciprocal set R*, weighted by exp(-d) and normalised.

    Returns COO entries (rows, cols, vals), row-major and sorted by column within a row.
    """
    num, device = knn.shape[0], knn.device
    k = min(k1 + 1, num)
    kh = min(half_k(k1) + 1, num)
    everyone = torch.arange(num, device=device)
    half = torch.cat([_reciprocal(knn, kh, everyone[s : s + _ROW_CHUNK]) for s in range(0, num, _ROW_CHUNK)])
    half_size = half.sum(dim=1).to(torch.float64)

    out_rows, out_cols = [], []
    for s in range(0, num, _ROW_CHUNK):
        idx = everyone[s : s + _ROW_CHUNK]
        fwd = knn[idx, :k]  # [r, k]
        recip = _reciprocal(knn, k, idx)  # R(i, k1) as a mask over fwd
        cand = knn[fwd, :kh]  # [r, k, kh]: top lists of each neighbour
        cand_ok = half[fwd]  # R(c, k1/2) as a mask over cand
        in_recip = (cand[..., None] == torch.where(recip, fwd, -1)[:, None, None, :]).any(dim=3)
        overlap = (in_recip & cand_ok).sum(dim=2).to(torch.float64)
        # Same float expression as the reference: |R(c) & R(i)| > 2/3 * |R(c)|.
        accept = recip & (overlap > (2.0 / 3) * half_size[fwd])
        members = torch.cat(
            [
                torch.where(recip, fwd, num),
                torch.where(accept[..., None] & cand_ok, cand, num).flatten(1),
            ],
            dim=1,
        ).sort(dim=1).values
        fresh = torch.ones_like(members, dtype=torch.bool)
        fresh[:, 1:] = members[:, 1:] != members[:, :-1]
        r, c = (fresh & (members < num)).nonzero(as_tuple=True)
        out_rows.append(idx[r])
        out_cols.append(members[r, c])
    rows, cols = torch.cat(out_rows), torch.cat(out_cols)

    dist = _lookup(knn, knn_v, rows, cols, pair_v)
    weight = torch.exp(-dist)
    total = torch.zeros(num, dtype=weight.dtype, device=device).index_add_(0, rows, weight)
    return rows, cols, weight / total[rows]


def _lookup(
    knn: torch.Tensor, knn_v: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, pair_v: PairValues
) -> torch.Tensor:
    """Distances of (rows, cols) pairs: from the neighbour lists where listed, else from pair_v."""
    out = torch.empty(rows.numel(), dtype=knn_v.dtype, device=knn.device)
    missing = []
    for s in range(0, rows.numel(), _PAIR_CHUNK // knn.shape[1]):
        r, c = rows[s : s + _PAIR_CHUNK // knn.shape[1]], cols[s : s + _PAIR_CHUNK // knn.shape[1]]
        hit = knn[r] == c[:, None]
        found = hit.any(dim=1)
        out[s : s + r.numel()] = knn_v[r, hit.to(torch.uint8).argmax(dim=1)]
        missing.append(s + (~found).nonzero().flatten())
    miss = torch.cat(missing)
    if miss.numel():
        out[miss] = pair_v(rows[miss], cols[miss]).to(out.dtype)
    return out


def _expand_query(
    top: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, num: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Local query expansion: V_qe[i] = mean of V over i's first k2 neighbours.

    That is (S @ V) / k2 with S the 0/1 neighbour matrix: one sparse product, done by scipy on
    the CPU whatever the device (a few million entries; scipy's product is far faster than
    torch's here). Returns row-major COO entries on V's device.
    """
    import scipy.sparse  # only re-ranking needs it; keeps `import cpl.evaluation` light

    k2 = top.shape[1]
    v = scipy.sparse.csr_matrix(
        (vals.cpu().numpy(), (rows.cpu().numpy(), cols.cpu().numpy())), shape=(num, num)
    )
    s = scipy.sparse.csr_matrix(
        (np.ones(num * k2, dtype=np.float32), (np.repeat(np.arange(num), k2), top.cpu().numpy().ravel())),
        shape=(num, num),
    )
    product = s @ v
    product.sort_indices()
    product = product.tocoo()
    device = rows.device
    return (
        torch.from_numpy(product.row.astype(np.int64)).to(device),
        torch.from_numpy(product.col.astype(np.int64)).to(device),
        torch.from_numpy(product.data / np.float32(k2)).to(device),
    )
