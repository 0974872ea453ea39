"""The re-ID objective as a list of named terms, built once from the config and the method.

    loss = Σ_terms weight · term,   e.g.  CE + w·unlabeled soft CE + λ·center + γ·triplet   (docs/methods.md)

Each term reads what one step produced (:class:`StepInputs`) and returns its λ-free value; its ``key`` names
it in the step statistics and in the metrics records (``loss_ce`` …). The list holds only the terms a run
trains; a key whose term is absent is recorded as 0, so every run's records have the same columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from cpl.engine.losses import batch_hard_triplet, center_loss, center_loss_sgd, cross_entropy, soft_cross_entropy

if TYPE_CHECKING:
    from cpl.config import Config
    from cpl.engine.centers import Centers
    from cpl.pseudo.base import Strategy, Targets


@dataclass
class StepInputs:
    """What one step hands its loss terms: this rank's slice of b images (m = b)."""

    feats: torch.Tensor  # [b, D] float32 pool5 features (gradient flows)
    logits: torch.Tensor  # [b, C] float32 (gradient flows)
    y: torch.Tensor  # [b] int64 identity, -1 for an unlabeled image
    labeled: torch.Tensor  # [b] bool
    unlabeled: torch.Tensor  # [u] int64 positions in the slice of the unlabeled images that got targets
    targets: Targets | None  # their targets (rows in the order of ``unlabeled``), None when none were labeled
    center_labels: torch.Tensor  # [b] int64 the center each image's center term pulls to (-1: none)
    center_mask: torch.Tensor  # [b] bool the images that carry the center term

    @property
    def m(self) -> int:
        """b: the images of the slice, the divisor of every per-image term."""
        return len(self.y)


class Term:
    """One term of the objective: ``weight`` × :meth:`value`, recorded under ``key``."""

    key: str = ""
    weight: float = 1.0

    def value(self, s: StepInputs, centers: Centers) -> torch.Tensor:
        """The λ-free term of one step → 0-dim float32 (gradient flows)."""
        raise NotImplementedError


class LabeledCE(Term):
    """Σ_labeled CE_ε(z_i, y_i) / m, ε = ``train.label_smoothing``."""

    key = "loss_ce"

    def __init__(self, label_smoothing: float):
        self.label_smoothing = label_smoothing

    def value(self, s, centers):
        """Hard-label cross-entropy summed over the labeled images of the slice, per image of the slice."""
        return cross_entropy(s.logits[s.labeled], s.y[s.labeled], self.label_smoothing).sum() / s.m


class UnlabeledTargets(Term):
    """Σ_unlabeled w · Σ_k −q_k log p_k / m: each unlabeled image towards its strategy's target q, weight w."""

    key = "loss_unlabeled"

    def value(self, s, centers):
        """0 when the slice has no labeled-by-the-strategy unlabeled image."""
        if s.targets is None:
            return s.feats.new_zeros(())
        tg = s.targets
        return (soft_cross_entropy(s.logits[s.unlabeled], tg.probs) * tg.weight).sum() / s.m


class CenterTerm(Term):
    """λ · ½ Σ ||x − c_y||² / m over the images that carry it (Wen), or λ · Σ ||x − c_y||² / m (BoT's SGD)."""

    key = "loss_center"

    def __init__(self, weight: float, sgd: bool):
        self.weight = weight
        self.loss = center_loss_sgd if sgd else center_loss

    def value(self, s, centers):
        """The center term against the current centers, before their update."""
        return self.loss(s.feats, centers.value, s.center_labels.clamp(min=0), s.center_mask, s.m)


class TripletTerm(Term):
    """γ · batch-hard triplet over the labeled images: a GAN image has no identity to mine positives from."""

    key = "loss_triplet"

    def __init__(self, weight: float, margin: float):
        self.weight, self.margin = weight, margin

    def value(self, s, centers):
        """Mean over the labeled anchors with a positive and a negative in the slice."""
        return batch_hard_triplet(s.feats[s.labeled], s.y[s.labeled], self.margin)


#: Every term's key in the order the records have always listed them.
TERM_KEYS = (LabeledCE.key, CenterTerm.key, UnlabeledTargets.key, TripletTerm.key)


def build_terms(cfg: Config, strategy: Strategy) -> list[Term]:
    """The terms a run trains, in the order they are summed: the labeled CE, the strategy's own terms (the
    unlabeled targets for a method that uses unlabeled images), λ·center for a method with a center term and
    λ > 0, γ·triplet for γ > 0."""
    t = cfg.train
    terms: list[Term] = [LabeledCE(t.label_smoothing), *strategy.loss_terms()]
    if strategy.center_loss and t.center_weight > 0:
        terms.append(CenterTerm(t.center_weight, t.center_update == "sgd"))
    if t.triplet_weight > 0:
        terms.append(TripletTerm(t.triplet_weight, t.triplet_margin))
    return terms


def objective(terms: list[Term], s: StepInputs, centers: Centers) -> dict[str, torch.Tensor]:
    """Every term's value by key (0 for a key whose term is absent) and ``loss`` = Σ weight · value."""
    values = {key: s.feats.new_zeros(()) for key in TERM_KEYS}
    loss = None
    for term in terms:
        v = values[term.key] = term.value(s, centers)
        loss = term.weight * v if loss is None else loss + term.weight * v
    return {"loss": loss, **values}
