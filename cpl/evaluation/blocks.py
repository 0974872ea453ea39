"""Evaluation of query and gallery features without the whole distance matrix: the cosine distances are computed a
block of queries at a time and each block feeds the metrics (:class:`cpl.evaluation.metrics.BlockEvaluation`), the
top-k lists and the pair-distance summary (:class:`cpl.evaluation.distances.PairDistances`), then is dropped. At
MSMT17's size the matrix would be 11,659 x 82,161 float32, 3.8 GB; a block is at most :data:`BLOCK_ELEMENTS`. The
re-ranked distances (:func:`cpl.evaluation.reranking.rerank_feature_blocks`) come by the same blocks and are
ranked the same way (:func:`rank`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from cpl.evaluation.distances import PairDistances
from cpl.evaluation.metrics import BlockEvaluation
from cpl.evaluation.retrieval import topk

# Distances per block (64 MiB of float32): with the block's masks and the non-match values taken out of it, a few
# hundred MiB at the most, whatever the gallery's size.
BLOCK_ELEMENTS = 1 << 24


def cosine_blocks(qf: torch.Tensor, gf: torch.Tensor, elements: int = BLOCK_ELEMENTS) -> Iterator[np.ndarray]:
    """``1 - qf @ gf.T`` of L2-normalised features qf [Q, D], gf [G, D] float32, as consecutive row blocks
    ``[<= elements / G, G] float32`` (numpy): the cosine distance, which ranks as the Euclidean one does. A block's
    product can differ from the same rows of one whole product in the last bit (BLAS picks its kernel by shape);
    the blocks depend only on G, so the distances are a fixed function of the features."""
    rows = max(1, elements // max(1, len(gf)))
    for start in range(0, len(qf), rows):
        yield (1.0 - qf[start:start + rows] @ gf.T).numpy()


@dataclass
class Ranked:
    """Metrics and top-k lists of a distance matrix seen by blocks: :func:`cpl.evaluation.evaluate`'s dict
    (``metrics``), ``index`` [Q, k] int32 and ``dist`` [Q, k] float32."""

    metrics: dict
    index: np.ndarray
    dist: np.ndarray


def rank(blocks: Iterable[np.ndarray], q_pids: np.ndarray, g_pids: np.ndarray, q_keys: np.ndarray,
         g_keys: np.ndarray, k: int) -> Ranked:
    """Metrics and top-``k`` lists of a [Q, G] distance matrix given as consecutive row blocks ``[R, G]`` (float,
    numpy or tensor), one block in memory at a time: those of the whole matrix, bit for bit. Any distances: the
    cosine ones of :func:`cosine_blocks` or the re-ranked ones of
    :func:`cpl.evaluation.reranking.rerank_feature_blocks`."""
    ev = BlockEvaluation(q_pids, g_pids, q_keys, g_keys)
    index, dist = [], []
    for block in blocks:
        ev.add(block)
        i, d = topk(block, k)
        index.append(i)
        dist.append(d)
    k = min(k, len(g_pids))
    return Ranked(metrics=ev.result(), index=np.concatenate(index) if index else np.zeros((0, k), np.int32),
                  dist=np.concatenate(dist) if dist else np.zeros((0, k), np.float32))


@dataclass
class Scores:
    """What the evaluate stage writes from the distances: :func:`cpl.evaluation.evaluate`'s dict (``metrics``), the
    top-k lists (``index`` [Q, k] int32, ``dist`` [Q, k] float32) and ``distances.npz``'s summary (``pairs``)."""

    metrics: dict
    index: np.ndarray
    dist: np.ndarray
    pairs: dict


def score(qf: torch.Tensor, gf: torch.Tensor, q_pids: np.ndarray, g_pids: np.ndarray, q_keys: np.ndarray,
          g_keys: np.ndarray, k: int, elements: int = BLOCK_ELEMENTS) -> Scores:
    """Metrics, top-``k`` lists and pair distances of queries qf [Q, D] against the gallery gf [G, D] (L2-normalised
    float32) under the protocol keys (:func:`cpl.evaluation.metrics.protocol_keys`), in two passes over the
    distance blocks (the pair histogram's edges need every distance first), one block in memory at a time."""
    pairs = PairDistances(q_pids, g_pids, q_keys, g_keys)

    def first_pass() -> Iterator[np.ndarray]:
        for block in cosine_blocks(qf, gf, elements):
            pairs.first(block)
            yield block

    ranked = rank(first_pass(), q_pids, g_pids, q_keys, g_keys, k)
    for block in cosine_blocks(qf, gf, elements):
        pairs.second(block)
    return Scores(metrics=ranked.metrics, index=ranked.index, dist=ranked.dist, pairs=pairs.result())
