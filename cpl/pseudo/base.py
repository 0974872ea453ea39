"""The pseudo-labeling strategy interface: what target an unlabeled image is trained towards.

A strategy sees the current mini-batch's unlabeled features and logits (detached), the class centers
and the epoch, and returns a target distribution, a loss weight, a hard label and a confidence per
image. The engine does the rest (loss, center term, statistics), so a strategy is a few lines and can
be tested on a hand-made case.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cpl.engine.terms import Term, UnlabeledTargets
from cpl.methods import METHODS
from cpl.pseudo import remedies


@dataclass
class Targets:
    """Per unlabeled image of a batch (B images, C classifier outputs)."""

    probs: torch.Tensor  # [B, C] float32, rows sum to 1 (rows of ignored images may be anything)
    weight: torch.Tensor  # [B] float32 loss weight; 0 = not trained on this step
    label: torch.Tensor  # [B] int64 the class the target favours (center of the center term); -1 = none
    confidence: torch.Tensor  # [B] float32 score behind `label` (cosine for center-based methods, p otherwise)
    # [B] float32 the label's score minus the best other class's (remedies.margin_of); None for a method whose
    # label has no score of its own (Method.label_from == "")
    margin: torch.Tensor | None = None

    def take(self, rows: torch.Tensor) -> Targets:
        """The targets of ``rows`` [b] int64 of this set, as a new :class:`Targets` of b images."""
        return Targets(self.probs[rows], self.weight[rows], self.label[rows], self.confidence[rows],
                       None if self.margin is None else self.margin[rows])


class Similarity:
    """The score a center-based strategy labels with: the cosine (CPL Eq. 2), or CSLS with k neighbours
    against a reference set of unlabeled features that :meth:`fit` sets (``csls_k`` > 0)."""

    def __init__(self, csls_k: int = 0):
        self.csls_k = csls_k
        self.reference: torch.Tensor | None = None

    @property
    def needs_reference(self) -> bool:
        """Whether :meth:`fit` must see the unlabeled features before the scores can be computed (CSLS)."""
        return self.csls_k > 0

    def fit(self, unlabeled: torch.Tensor) -> None:
        """Take the unlabeled features [N, D] over which CSLS's r_U(c) is computed (a no-op for the cosine)."""
        if self.needs_reference:
            self.reference = unlabeled

    def __call__(self, feats: torch.Tensor, centers: torch.Tensor, center_valid: torch.Tensor) -> torch.Tensor:
        """Scores [B, K] float32 of feats [B, D] against centers [K, D], -inf for an invalid center."""
        if not self.needs_reference:
            return cosine_to_centers(feats, centers, center_valid)
        if self.reference is None:
            raise RuntimeError("CSLS scores before fit(): the unlabeled reference features are not set")
        return remedies.csls(feats, centers, center_valid, self.reference, self.csls_k)


@dataclass(frozen=True)
class Balance:
    """Balanced assignment settings: Sinkhorn's entropy ε (in units of the score) and its iteration count."""

    epsilon: float
    iters: int


class Strategy:
    """Base class. A subclass sets ``name`` to a method of the table (:data:`cpl.methods.METHODS`), which sets
    its flags below (see :meth:`__init_subclass__`), and implements :meth:`targets`."""

    name: str = ""
    uses_unlabeled: bool = True  # False: the method trains on labeled images only
    extra_class: bool = False  # True: the classifier has K + 1 outputs, the last one for unlabeled images
    center_loss: bool = False  # True: L = CE + λ·center term on labeled images
    default_weight: float = 1.0  # loss weight of an unlabeled image (published value)
    # Published labeled-only warm-up as a share of the schedule (LSRO/MpRL: 20 of 50 epochs = 0.4), so that a
    # shorter run keeps the published proportion; train.warmup_epochs >= 0 overrides it.
    default_warmup_fraction: float = 0.0
    label_from: str = ""  # what the hard label is the argmax of (Method.label_from): the remedies it admits

    def __init_subclass__(cls, **kwargs):
        """Take the flags of a subclass named after a method from the method table, the one place they are
        written (a subclass with another name, e.g. a test's, keeps what it sets)."""
        super().__init_subclass__(**kwargs)
        method = METHODS.get(cls.__dict__.get("name", ""))
        if method is not None:
            cls.uses_unlabeled = method.needs_unlabeled
            cls.extra_class = method.extra_class
            cls.center_loss = method.center_loss
            cls.default_weight = method.unlabeled_weight
            cls.default_warmup_fraction = method.warmup_fraction
            cls.label_from = method.label_from

    def __init__(self, weight: float = -1.0, warmup_epochs: int = -1, temperature: float = 1.0,
                 ramp_epochs: int = 0, epochs: int = 50, similarity: Similarity | None = None,
                 balance: Balance | None = None):
        self.weight = self.default_weight if weight < 0 else weight
        self.start_epoch = round(self.default_warmup_fraction * epochs) if warmup_epochs < 0 else warmup_epochs
        self.ramp_epochs = ramp_epochs
        self.temperature = temperature
        self.similarity = similarity or Similarity()
        self.balance = balance  # None: each image's own argmax, every mini-batch (the papers)

    @property
    def needs_set_features(self) -> bool:
        """Whether an epoch starts by extracting every unlabeled image's feature: CSLS's reference set, or the
        set a balanced assignment is taken over."""
        return self.similarity.needs_reference or self.balance is not None

    def set_targets(self, feats: torch.Tensor, logits: torch.Tensor, centers: torch.Tensor,
                    center_valid: torch.Tensor, epoch: int) -> Targets:
        """Targets of a whole set of unlabeled images at once (feats [N, D], logits [N, C]): the set is CSLS's
        reference, and with a balanced assignment the labels are Sinkhorn's over the set; without one, each
        image's own :meth:`targets`."""
        tg = self.epoch_targets(feats, centers, center_valid, epoch)
        return tg if tg is not None else self.targets(feats, logits, centers, center_valid, epoch)

    def epoch_targets(self, feats: torch.Tensor, centers: torch.Tensor, center_valid: torch.Tensor,
                      epoch: int) -> Targets | None:
        """Take the set feats [N, D] as the reference of the similarity (CSLS) and, with a balanced assignment,
        return its targets [N]: Q = Sinkhorn(scores / ε) over the valid centers [K, D], label = argmax Q, the
        training target :meth:`balanced_probs`, the score and margin of the label. None without one."""
        self.similarity.fit(feats)
        if self.balance is None:
            return None
        scores = self.similarity(feats, centers, center_valid)
        q = remedies.sinkhorn(scores, self.balance.epsilon, self.balance.iters)
        label = q.argmax(1)
        weight = self._weights(len(feats), epoch, feats.device)
        if not bool(center_valid.any()):  # no center to assign to yet
            weight.zero_()
            label = torch.full_like(label, -1)
        conf = scores.gather(1, label.clamp(min=0)[:, None]).squeeze(1)
        return Targets(self.balanced_probs(q, label), weight, label, torch.where(label >= 0, conf, 0.0),
                       remedies.margin_of(scores, label))

    def balanced_probs(self, q: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The training target [N, K] of a balanced assignment q [N, K] (rows sum to 1) and its argmax label
        [N] int64; only a strategy whose label is the nearest center has one (config validation)."""
        raise NotImplementedError(f"method {self.name} has no balanced assignment")

    def active(self, epoch: int) -> bool:
        """Whether unlabeled images are trained on in ``epoch`` (0-based): before ``start_epoch`` the epoch is
        labeled-only (its batches hold no unlabeled image; the centers still move)."""
        return self.uses_unlabeled and epoch >= self.start_epoch

    def weight_at(self, epoch: int) -> float:
        """The unlabeled loss weight in ``epoch``: 0 during the warm-up, then rising linearly to ``weight`` over
        ``ramp_epochs`` epochs (the first active epoch gets weight / ramp_epochs)."""
        if not self.active(epoch):
            return 0.0
        if self.ramp_epochs <= 0:
            return self.weight
        return self.weight * min(1.0, (epoch - self.start_epoch + 1) / self.ramp_epochs)

    def loss_terms(self) -> list[Term]:
        """The terms of the objective this strategy brings (built once per run, :func:`cpl.engine.terms.build_terms`):
        the soft cross-entropy towards its targets for a method that trains on unlabeled images, none otherwise.
        A strategy with a loss of its own overrides this."""
        return [UnlabeledTargets()] if self.uses_unlabeled else []

    def targets(self, feats: torch.Tensor, logits: torch.Tensor, centers: torch.Tensor,
                center_valid: torch.Tensor, epoch: int) -> Targets:
        """feats [B, D], logits [B, C], centers [K, D] float32, center_valid [K] bool → :class:`Targets`."""
        raise NotImplementedError

    def _weights(self, n: int, epoch: int, device: torch.device) -> torch.Tensor:
        return torch.full((n,), self.weight_at(epoch), dtype=torch.float32, device=device)


def cosine_to_centers(feats: torch.Tensor, centers: torch.Tensor, center_valid: torch.Tensor) -> torch.Tensor:
    """cos(x_i, c_k) [B, K] float32, with -inf for centers no labeled image has touched yet.

    Centers start at zero, where the cosine is undefined; a zero center carries no information, so it is
    excluded from the argmax rather than given an arbitrary score.
    """
    sims = F.normalize(feats.float(), dim=1) @ F.normalize(centers.float(), dim=1).T
    return sims.masked_fill(~center_valid[None, :], float("-inf"))


def top2(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best and runner-up of each row of scores [B, K]: (label, value, runner_label, runner_value)."""
    k = min(2, scores.shape[1])
    vals, idx = scores.topk(k, dim=1)
    if k == 1:
        return idx[:, 0], vals[:, 0], idx[:, 0], vals[:, 0]
    return idx[:, 0], vals[:, 0], idx[:, 1], vals[:, 1]
