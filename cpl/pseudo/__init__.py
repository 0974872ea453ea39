"""Pseudo-labeling strategies for unlabeled images (cpl, fapl, lsro, onehot, allinone, mprl1/2) and the
no-unlabeled references (baseline, center)."""

from __future__ import annotations

from cpl.config import TrainConfig
from cpl.pseudo.base import Strategy, Targets, cosine_to_centers, top2
from cpl.pseudo.methods import STRATEGIES


def get_strategy(train: TrainConfig) -> Strategy:
    """The strategy named by ``train.method`` with its weight / warm-up / temperature settings."""
    cls = STRATEGIES[train.method]
    return cls(weight=train.unlabeled_weight, warmup_epochs=train.warmup_epochs, temperature=train.fapl_temperature,
               ramp_epochs=train.unlabeled_ramp_epochs, epochs=train.epochs)


__all__ = ["STRATEGIES", "Strategy", "Targets", "cosine_to_centers", "get_strategy", "top2"]
