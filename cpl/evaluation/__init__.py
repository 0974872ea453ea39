"""Evaluation: Market-1501 CMC/mAP/mINP, retrieval lists and k-reciprocal re-ranking.

Imports only numpy and torch, so the app can load it cheaply. Public API:
  evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50) -> dict
  topk(distmat, k) -> (index [Q, k] int32, dist [Q, k] float32)
  rerank(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3) -> [nq, ng] float32
  rerank_features(qf, gf, k1=20, k2=6, lambda_value=0.3) -> [nq, ng] float32
  rerank_feature_blocks(qf, gf, k1=20, k2=6, lambda_value=0.3) -> row blocks [R, ng] float32 of the same
"""

from __future__ import annotations

from cpl.evaluation.metrics import evaluate
from cpl.evaluation.reranking import rerank, rerank_feature_blocks, rerank_features
from cpl.evaluation.retrieval import topk

__all__ = ["evaluate", "rerank", "rerank_feature_blocks", "rerank_features", "topk"]
