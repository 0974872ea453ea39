"""k-reciprocal re-ranking: from three distance matrices, or straight from features.

Semantics are those of the reference ``re_ranking(q_g_dist, q_q_dist, g_g_dist)``
(zhunzhong07/person-re-ranking ``re_ranking_ranklist.py``, as vendored by torchreid): with
D = [[q_q, q_g], [q_g^T, g_g]] (N x N, N = queries + gallery), the working distance is
d[i, j] = D[j, i]^2 / max_k D[k, i]^2 in float32 (squared, each column divided by its maximum,
then transposed), neighbour lists come from sorting the rows of d, and the result is
(1 - lambda) * Jaccard + lambda * d on the query x gallery block.

Deliberate differences, both documented in docs/performance.md:
  * ties in d are broken by column index (the reference's unstable argsort leaves them arbitrary);
  * a column whose maximum is 0 (all its distances zero) is left at 0 instead of 0/0 = NaN.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from cpl.evaluation._tensors import float_matrix, smallest_k
from cpl.evaluation.blocks import BLOCK_ELEMENTS
from cpl.evaluation.kreciprocal import Jaccard, half_k, jaccard_rerank
from cpl.evaluation.neighbors import feature_neighbors


def _check_params(k1: int, k2: int, lambda_value: float) -> None:
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")


def list_length(num: int, k1: int, k2: int) -> int:
    """How many neighbours per row the algorithm reads: max(k1 + 1, k2), at most N."""
    return min(num, max(k1 + 1, k2))


def decision_cuts(num: int, k1: int, k2: int) -> list[int]:
    """List positions where set membership is decided (the order inside a set never matters)."""
    cuts = {k1 + 1, half_k(k1) + 1} | ({k2} if k2 != 1 else set())
    return sorted(c for c in cuts if c < num)


def rerank(
    q_g_dist: Any,
    q_q_dist: Any,
    g_g_dist: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Re-ranked query x gallery distances from the three distance matrices.

    q_g_dist: [nq, ng], q_q_dist: [nq, nq], g_g_dist: [ng, ng] float distances (numpy arrays or
    torch tensors; CUDA tensors are processed on their GPU). Returns [nq, ng] float32.
    """
    _check_params(k1, k2, lambda_value)
    qg = float_matrix(q_g_dist, "q_g_dist")
    device = qg.device
    qq = float_matrix(q_q_dist, "q_q_dist", device)
    gg = float_matrix(g_g_dist, "g_g_dist", device)
    nq, ng = qg.shape
    if qq.shape != (nq, nq) or gg.shape != (ng, ng):
        raise ValueError(
            f"shapes do not fit: q_g {tuple(qg.shape)}, q_q {tuple(qq.shape)}, g_g {tuple(gg.shape)}"
        )
    num = nq + ng
    length = list_length(num, k1, k2)

    def squared_rows(start: int, stop: int) -> torch.Tensor:
        """Rows start..stop-1 of D^T (on one side of nq), squared in the input precision, float32."""
        if stop <= nq:
            block = torch.cat([qq[:, start:stop].T, qg[start:stop]], dim=1)
        else:
            g = slice(start - nq, stop - nq)
            block = torch.cat([qg[:, g].T, gg[:, g].T], dim=1)
        return block.square_().float()

    knn = torch.empty(num, length, dtype=torch.int64, device=device)
    knn_v = torch.empty(num, length, dtype=torch.float32, device=device)
    col_max = torch.empty(num, dtype=torch.float32, device=device)
    orig_qg = torch.empty(nq, ng, dtype=torch.float32, device=device)
    step = max(1, (1 << 24) // num)
    ranges = [(s, min(s + step, nq)) for s in range(0, nq, step)]
    ranges += [(s, min(s + step, num)) for s in range(nq, num, step)]  # never straddling nq
    for start, stop in ranges:
        d = squared_rows(start, stop)
        top = d.amax(dim=1)
        col_max[start:stop] = top
        d /= torch.where(top > 0, top, 1.0)[:, None]
        knn_v[start:stop], knn[start:stop] = smallest_k(d, length)
        if stop <= nq:
            orig_qg[start:stop] = d[:, nq:]

    def pair_v(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        # d[i, j] = D[j, i]^2 / max: look D[j, i] up in whichever block holds it.
        out = torch.empty(rows.numel(), dtype=torch.float32, device=device)
        for rq in (True, False):
            for cq in (True, False):
                sel = ((rows < nq) == rq) & ((cols < nq) == cq)
                i = rows[sel] - (0 if rq else nq)
                j = cols[sel] - (0 if cq else nq)
                block = qq if (rq and cq) else gg if not (rq or cq) else None
                if block is not None:
                    val = block[j, i]
                elif rq:  # D[j, i] with j in the gallery, i a query = q_g[i, j]
                    val = qg[i, j]
                else:  # j a query, i in the gallery = q_g[j, i]
                    val = qg[j, i]
                out[sel] = val.square().float()
        top = col_max[rows]
        return out / torch.where(top > 0, top, 1.0)

    final = jaccard_rerank(knn, knn_v, pair_v, orig_qg, k1, k2, lambda_value)
    return final.cpu().numpy()


def rerank_features(
    qf: Any,
    gf: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Re-ranked query x gallery distances straight from features, without N x N matrices.

    qf: [nq, D], gf: [ng, D] float features (numpy arrays or torch tensors; CUDA tensors are
    processed on their GPU). Equal to ``rerank(e(qf, gf), e(qf, qf), e(gf, gf))`` with e the
    plain Euclidean distance: neighbour sets are exact (see cpl.evaluation.neighbors for how the
    float32 search is verified), distances agree to float32 rounding. Returns [nq, ng] float32,
    the blocks of :func:`rerank_feature_blocks` put together.
    """
    blocks = list(rerank_feature_blocks(qf, gf, k1, k2, lambda_value))
    return np.concatenate(blocks) if blocks else np.zeros((0, len(gf)), np.float32)


def rerank_feature_blocks(
    qf: Any,
    gf: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    elements: int = BLOCK_ELEMENTS,
) -> Iterator[np.ndarray]:
    """:func:`rerank_features`' result as consecutive row blocks ``[<= elements / ng, ng] float32`` (numpy), never
    the whole [nq, ng] matrix (MSMT17: 3.8 GB).

    What the whole computation keeps is O(N x L): the neighbour lists, each row's largest distance and the sparse
    encoding. A block's original distances are recomputed when it is produced, exactly as the neighbour search
    computed them, and its Jaccard distances depend on its own rows only, so the values do not depend on
    ``elements``. Arguments are checked on the call, before the first block.
    """
    _check_params(k1, k2, lambda_value)
    q = float_matrix(qf, "qf")
    g = float_matrix(gf, "gf", q.device)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"qf and gf differ in feature size: {q.shape[1]} vs {g.shape[1]}")
    return _blocks(q, g, k1, k2, lambda_value, max(1, elements // max(1, g.shape[0])))


def _blocks(q: torch.Tensor, g: torch.Tensor, k1: int, k2: int, lambda_value: float,
            step: int) -> Iterator[np.ndarray]:
    """The re-ranked distances by blocks of at most ``step`` queries, none straddling the neighbour search's query
    spans. A block recomputes the products of its whole span, so blocks smaller than the spans (an ``elements``
    below :data:`BLOCK_ELEMENTS`, which sizes the spans) repeat that work; by default each span is one block."""
    num = q.shape[0] + g.shape[0]
    found = feature_neighbors(q, g, list_length(num, k1, k2), decision_cuts(num, k1, k2))
    top = found.row_max
    scale = torch.where(top > 0, top, 1.0)

    def pair_v(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return found.pair_d2(rows, cols) / scale[rows]

    jaccard = Jaccard(found.knn, found.knn_d2 / scale[:, None], pair_v, q.shape[0], k1, k2)
    for s, e in found.query_spans():
        for start in range(s, e, step):
            stop = min(start + step, e)
            orig = found.qg_rows(start, stop).div_(scale[start:stop, None])
            jaccard.apply(orig, start, lambda_value)
            yield orig.cpu().numpy()
