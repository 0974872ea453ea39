"""Pseudo-labeling strategies for unlabeled images (cpl, fapl, lsro, onehot, allinone, mprl1/2) and the
no-unlabeled references (baseline, center)."""

from __future__ import annotations

from cpl.config import TrainConfig
from cpl.pseudo.base import Balance, Similarity, Strategy, Targets, cosine_to_centers, top2
from cpl.pseudo.methods import STRATEGIES


def get_strategy(train: TrainConfig) -> Strategy:
    """The strategy named by ``train.method`` with its weight / warm-up / temperature settings, its similarity
    (``train.similarity``) and its assignment (``train.assignment``)."""
    cls = STRATEGIES[train.method]
    similarity = Similarity(train.csls_k if train.similarity == "csls" else 0)
    balance = Balance(train.sinkhorn_epsilon, train.sinkhorn_iters) if train.assignment == "sinkhorn" else None
    return cls(weight=train.unlabeled_weight, warmup_epochs=train.warmup_epochs, temperature=train.fapl_temperature,
               ramp_epochs=train.unlabeled_ramp_epochs, epochs=train.epochs, similarity=similarity, balance=balance)


__all__ = ["STRATEGIES", "Balance", "Similarity", "Strategy", "Targets", "cosine_to_centers", "get_strategy", "top2"]
