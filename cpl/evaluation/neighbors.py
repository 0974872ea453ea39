"""Exact nearest-neighbour lists of all N = queries + gallery features, without an N x N matrix.

The squared distances are produced block by block (float32 GEMM, n_i + n_j - 2 x_i.x_j) and
only what re-ranking reads is kept: each row's best few candidates and each row's largest
distance. Distance matrices are symmetric, so each block above the diagonal serves its rows and,
transposed, its columns. The query x gallery distances are not kept (MSMT17: 3.8 GB): a span of
queries has them recomputed when re-ranking reaches it (:meth:`FeatureNeighbors.qg_rows`), by the
same float32 expression on blocks of the same shapes, so they are bit-identical to the screening's
(BLAS results can depend on the matrix shape). Query spans are sized so that one span's row of
blocks is at most :data:`cpl.evaluation.blocks.BLOCK_ELEMENTS`.

float32 GEMM is not exact, so the lists are verified: re-ranking only asks which images are
inside the first k of a row for a few cut positions k (k1 + 1, round(k1 / 2) + 1, k2), never the
order inside. A row is accepted when, at every cut, the gap between the last image in and the
first image out exceeds the float32 error bound of both distances. The few rows that fail
(near-ties, duplicates) are redone exactly: the float32 row bounds a small window that must hold
the true list, its members are recomputed by direct float64 differences and ordered exactly like
``rerank`` orders float32 Euclidean distances, by (d^2 / max, index).

Error bound: |fl32(d^2) - d^2| <= ERROR_FACTOR * sqrt(D) * 2^-24 * (|x_i|^2 + |x_j|^2). Measured
worst cases over 8M pairs of Gaussian and non-negative (ReLU) features, D = 512 and 2048, stay
below 0.42 * sqrt(D) * 2^-24; the factor 2 leaves a 5x margin (about 25 standard deviations).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from cpl.evaluation.blocks import BLOCK_ELEMENTS

ERROR_FACTOR = 2.0
_MERGE_EVERY = 6  # per-block candidate pieces of a row block gathered before they are merged


class Stacked:
    """The rows of two matrices (queries, then gallery) seen as one, without concatenating them."""

    def __init__(self, top: torch.Tensor, bottom: torch.Tensor) -> None:
        self.top, self.bottom = top, bottom
        self.split = top.shape[0]
        self.num = top.shape[0] + bottom.shape[0]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop-1, which must lie on one side of the split (a view)."""
        if stop <= self.split:
            return self.top[start:stop]
        if start < self.split:
            raise ValueError("row range straddles the query/gallery split")
        return self.bottom[start - self.split : stop - self.split]

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """Rows at ``index`` (any shape of int64 indices) -> [*index.shape, D]."""
        flat = index.flatten()
        upper = flat < self.split
        out = torch.empty(flat.numel(), self.top.shape[1], dtype=self.top.dtype, device=self.top.device)
        at = upper.nonzero().flatten()
        out.index_copy_(0, at, self.top.index_select(0, flat[at]))
        at = (~upper).nonzero().flatten()
        out.index_copy_(0, at, self.bottom.index_select(0, flat[at] - self.split))
        return out.view(*index.shape, -1)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Stacked:
        """``fn`` applied to each half, e.g. a dtype or device change; the split stays where it was."""
        return Stacked(fn(self.top), fn(self.bottom))


@dataclass
class FeatureNeighbors:
    """What re-ranking needs from the features; distances are squared Euclidean, float32.

    norm: [N] float32 squared feature norms.
    knn: [N, L + 1] int64 neighbours of each row (itself included), exact as sets at every cut
      (the extra column is the first image after the list, kept for its distance).
    knn_d2: [N, L + 1] their squared distances; row_max: [N] each row's largest squared distance.
    x: the features as contiguous float32; spans: the row ranges the screening's blocks were cut by.
    """

    feats: Stacked
    norm: torch.Tensor
    knn: torch.Tensor
    knn_d2: torch.Tensor
    row_max: torch.Tensor
    x: Stacked
    spans: list[tuple[int, int]]

    def query_spans(self) -> list[tuple[int, int]]:
        """The screening's spans of query rows (start, stop)."""
        return [(s, e) for s, e in self.spans if e <= self.x.split]

    def qg_rows(self, start: int, stop: int) -> torch.Tensor:
        """Squared distances of queries start..stop-1 to the gallery, [stop - start, ng] float32, clamped at 0.

        Recomputed on the screening's blocks: each query span overlapping the rows is multiplied whole with each
        gallery span, so every value is the one the screening saw. Cheapest for whole query spans.
        """
        nq, x = self.x.split, self.x
        out = torch.empty(stop - start, x.num - nq, device=self.norm.device)
        gallery = [(s, e) for s, e in self.spans if s >= nq]
        with _full_fp32_matmul():
            for i0, i1 in self.query_spans():
                a, b = max(i0, start), min(i1, stop)
                if a >= b:
                    continue
                for js, je in gallery:
                    d2 = _block_d2(x, self.norm, i0, i1, js, je)
                    out[a - start : b - start, js - nq : je - nq] = d2[a - i0 : b - i0].clamp_(min=0.0)
        return out

    def pair_d2(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Squared distances of arbitrary pairs ([M] int64 each -> [M] float32).

        Same float32 expansion as the screening, so these agree with the listed distances.
        """
        # Distances are symmetric: a pair whose row is in the column's list is already known.
        hit = self.knn[cols] == rows[:, None]
        found = hit.any(dim=1)
        out = self.knn_d2[cols, hit.to(torch.uint8).argmax(dim=1)]
        miss = (~found).nonzero().flatten()
        step = max(1, (1 << 22) // self.feats.top.shape[1])
        for s in range(0, miss.numel(), step):
            at = miss[s : s + step]
            r, c = rows[at], cols[at]
            dot = torch.einsum("nd,nd->n", self.feats.take(r).float(), self.feats.take(c).float())
            out[at] = (self.norm[r] + self.norm[c] - 2.0 * dot).clamp_(min=0.0)
        return out


@contextlib.contextmanager
def _full_fp32_matmul() -> Iterator[None]:
    # TF32 / bf16 matmul (precision "high"/"medium", which training code may set) would break the
    # error bound; force true float32 here and restore the caller's setting afterwards.
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _spans(nq: int, num: int, size: int) -> list[tuple[int, int]]:
    """Row ranges of at most ``size``, never straddling the query/gallery boundary; a query span's row of the
    query x gallery matrix is at most BLOCK_ELEMENTS (what re-ranking holds at a time)."""
    q_size = min(size, max(1, BLOCK_ELEMENTS // max(1, num - nq)))
    out = [(s, min(s + q_size, nq)) for s in range(0, nq, q_size)]
    return out + [(s, min(s + size, num)) for s in range(nq, num, size)]


def _block_d2(x: Stacked, norm: torch.Tensor, i0: int, i1: int, js: int, je: int) -> torch.Tensor:
    """Squared distances of rows i0..i1-1 to rows js..je-1, [i1 - i0, je - js] float32 (n_i + n_j - 2 x_i.x_j)."""
    d2 = torch.addmm(norm[i0:i1, None], x.rows(i0, i1), x.rows(js, je).T, alpha=-2.0)
    return d2.add_(norm[None, js:je])


def feature_neighbors(
    qf: torch.Tensor, gf: torch.Tensor, length: int, cuts: list[int], block: int | None = None
) -> FeatureNeighbors:
    """Neighbour lists of ``length`` (+1) per row over the rows of qf [nq, D] then gf [ng, D].

    ``cuts`` are the list positions whose set membership must be exact (see module docstring).
    """
    for t in (qf, gf):
        if t.numel() and not all(bool(torch.isfinite(v)) for v in torch.aminmax(t)):
            raise ValueError("features must be finite")
    feats = Stacked(qf, gf)
    num, dim = feats.num, qf.shape[1]
    spans = _spans(feats.split, num, block or (8192 if qf.is_cuda else 4096))
    norm = torch.cat([feats.rows(s, e).double().square().sum(dim=1) for s, e in spans]).float()
    keep = min(length + 1, num)  # one more than the list, to see the gap after the last cut
    x = feats.map(lambda t: t.float().contiguous())
    with _full_fp32_matmul():
        cand_d, cand_i, row_max = _screen(x, norm, spans, keep)
        cand_d, order = cand_d.sort(dim=1)
        cand_i = cand_i.gather(1, order)
        tol_unit = ERROR_FACTOR * math.sqrt(dim) * 2.0**-24
        unsure = torch.zeros(num, dtype=torch.bool, device=qf.device)
        for cut in cuts:
            if cut >= keep:
                continue
            gap = cand_d[:, cut] - cand_d[:, cut - 1]
            tol = tol_unit * (2 * norm + norm[cand_i[:, cut]] + norm[cand_i[:, cut - 1]])
            unsure |= gap <= tol
        rows = unsure.nonzero().flatten()
        step = max(1, (1 << 23) // num)  # a [step, N] float32 block of 32 MB at most
        for s in range(0, rows.numel(), step):
            _exact_rows(feats, x, spans, norm, tol_unit, rows[s : s + step], cand_d, cand_i, row_max)
    return FeatureNeighbors(feats, norm, cand_i, cand_d, row_max, x, spans)


def _screen(
    x: Stacked, norm: torch.Tensor, spans: list[tuple[int, int]], keep: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over the blocks on and above the diagonal of the squared-distance matrix.

    Returns each row's ``keep`` smallest squared distances (unsorted) and their columns, and each
    row's largest squared distance.
    """
    num = x.num
    row_max = torch.zeros(num, device=norm.device)
    pieces: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in spans]
    for bj, (js, je) in enumerate(spans):
        for bi in range(bj + 1):
            i0, i1 = spans[bi]
            d2 = _block_d2(x, norm, i0, i1, js, je)
            if bi == bj:
                d2.fill_diagonal_(0.0)
            pieces[bi].append(_smallest(d2, keep, js))
            torch.maximum(row_max[i0:i1], d2.amax(dim=1), out=row_max[i0:i1])
            if bi != bj:
                # topk along rows of a contiguous copy beats topk down the columns in place.
                pieces[bj].append(_smallest(d2.T.contiguous(), keep, i0))
                torch.maximum(row_max[js:je], d2.amax(dim=0), out=row_max[js:je])
            for b in {bi, bj}:
                if len(pieces[b]) >= _MERGE_EVERY:
                    pieces[b] = [_merge(pieces[b], keep)]
    merged = [_merge(p, keep) for p in pieces]
    return torch.cat([m[0] for m in merged]), torch.cat([m[1] for m in merged]), row_max


def _smallest(d2: torch.Tensor, keep: int, col0: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A block's ``keep`` smallest entries per row (unsorted) and their global columns."""
    val, col = d2.topk(min(keep, d2.shape[1]), dim=1, largest=False, sorted=False)
    return val, col + col0


def _merge(pieces: list[tuple[torch.Tensor, torch.Tensor]], keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``keep`` smallest per row over several (values, columns) pieces of the same rows."""
    val = torch.cat([p[0] for p in pieces], dim=1)
    col = torch.cat([p[1] for p in pieces], dim=1)
    best, pos = val.topk(min(keep, val.shape[1]), dim=1, largest=False, sorted=False)
    return best, col.gather(1, pos)


def _exact_rows(
    feats: Stacked,
    x: Stacked,
    spans: list[tuple[int, int]],
    norm: torch.Tensor,
    tol_unit: float,
    rows: torch.Tensor,
    cand_d: torch.Tensor,
    cand_i: torch.Tensor,
    row_max: torch.Tensor,
) -> None:
    """Redo the lists of ``rows`` exactly, ordered by (fl32(d)^2 / max, index) as rerank() does.

    The float32 rows bound where the true top ``keep`` and the true maximum can be; only those
    windows (a few entries each) are recomputed exactly, by direct differences in float64.
    """
    keep = cand_d.shape[1]
    d2 = torch.empty(len(rows), feats.num, device=norm.device)
    xr = x.take(rows)
    for s, e in spans:
        d2[:, s:e] = torch.addmm(norm[rows, None], xr, x.rows(s, e).T, alpha=-2.0).add_(norm[None, s:e])
    tol = tol_unit * (norm[rows] + norm.max())[:, None]
    # Outside the windows an image is more than one error bound beyond the keep-th (resp. the
    # largest) exact value, so it can neither enter the list nor tie with its last member.
    near = d2 <= d2.kthvalue(keep, dim=1).values[:, None] + 3 * tol
    far = d2 >= d2.amax(dim=1, keepdim=True) - 2 * tol
    del d2
    rf, cf = far.nonzero(as_tuple=True)
    top = torch.zeros(len(rows), device=norm.device)
    top.scatter_reduce_(0, rf, _exact_squared(feats, rows[rf], cf), "amax")
    r, c = near.nonzero(as_tuple=True)  # row-major, ascending columns within a row
    sq = _exact_squared(feats, rows[r], c)
    v = sq / torch.where(top > 0, top, 1.0)[r]
    order = v.argsort(stable=True)  # by (v, column) ...
    order = order[r[order].argsort(stable=True)]  # ... within each row
    count = torch.bincount(r, minlength=len(rows))
    rank = torch.arange(order.numel(), device=r.device) - (count.cumsum(0) - count)[r[order]]
    take = order[rank < keep]
    cand_i[rows] = c[take].view(len(rows), keep)
    cand_d[rows] = sq[take].view(len(rows), keep)
    row_max[rows] = top


def _exact_squared(feats: Stacked, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The squared distances rerank() sees for these pairs: fl32(fl32(|x_i - x_j|))^2.

    Direct differences in float64 have no cancellation, so exact duplicates come out exactly 0.
    """
    out = torch.empty(rows.numel(), device=rows.device)
    step = max(1, (1 << 22) // feats.top.shape[1])
    for s in range(0, rows.numel(), step):
        diff = feats.take(rows[s : s + step]).double() - feats.take(cols[s : s + step]).double()
        out[s : s + step] = diff.square().sum(dim=1).sqrt().float().square()
    return out
