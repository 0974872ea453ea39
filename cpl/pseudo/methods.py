"""Every pseudo-labeling method of the CPL paper's Table 1, FAPL, and the no-unlabeled references.

Notation: p = softmax(logits) over the K real identities, c_k the class centers, cos the cosine.
Sources and published defaults are in docs/methods.md and method-notes §3. Each class names its method;
its flags (unlabeled images, center loss, extra class, default weight and warm-up) come from that
method's entry in the method table, cpl/methods.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cpl.pseudo.base import Strategy, Targets
from cpl.pseudo.remedies import margin_of


def _onehot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(label.clamp(min=0), num_classes).float()


class Baseline(Strategy):
    """Softmax only, labeled images only (the papers' baseline)."""

    name = "baseline"


class Center(Baseline):
    """Softmax + center loss, labeled images only (CPL Table 4, "center")."""

    name = "center"


class CPL(Strategy):
    """One-hot label argmax_k cos(x, c_k) over the current centers, every mini-batch (CPL Eq. 2-3)."""

    name = "cpl"

    def targets(self, feats, logits, centers, center_valid, epoch):
        sims = self.similarity(feats, centers, center_valid)
        conf, label = sims.max(dim=1)
        weight = self._weights(len(feats), epoch, feats.device)
        if not bool(center_valid.any()):  # very first batch: no center carries information yet
            weight.zero_()
            label = torch.full_like(label, -1)
            conf = torch.zeros_like(conf)
        return Targets(_onehot(label, logits.shape[1]), weight, label, conf, margin_of(sims, label))

    def balanced_probs(self, q, label):
        """SeLa: one-hot at the balanced assignment's argmax."""
        return _onehot(label, q.shape[1])


class FAPL(Strategy):
    """Soft label q_k = softmax_k(cos(x, c_k) / T) (FAPL-d, Eq. 7; published T = 1).

    The center term uses the argmax center (FAPL §IV-C). With hundreds of classes and T = 1 the target is
    close to uniform (cosines lie in [-1, 1], so no two entries differ by more than e²); see docs/methods.md.
    """

    name = "fapl"

    def targets(self, feats, logits, centers, center_valid, epoch):
        sims = self.similarity(feats, centers, center_valid)
        weight = self._weights(len(feats), epoch, feats.device)
        if not bool(center_valid.any()):
            weight.zero_()
            uniform = torch.full_like(logits, 1.0 / logits.shape[1], dtype=torch.float32)
            zeros = torch.zeros(len(feats), device=feats.device)
            return Targets(uniform, weight, torch.full((len(feats),), -1, dtype=torch.long, device=feats.device),
                           zeros, zeros.clone())
        probs = torch.softmax(sims / self.temperature, dim=1)  # -inf (untouched centers) -> probability 0
        conf, label = sims.max(dim=1)
        return Targets(probs, weight, label, conf, margin_of(sims, label))

    def balanced_probs(self, q, label):
        """SwAV: the balanced assignment's row itself, a soft target (the balanced counterpart of Eq. 7)."""
        return q


class LSRO(Strategy):
    """Label smoothing regularisation for outliers: uniform target 1/K (Zheng et al. ICCV'17, Eq. 6-7)."""

    name = "lsro"

    def targets(self, feats, logits, centers, center_valid, epoch):
        k = logits.shape[1]
        conf, label = torch.softmax(logits.float(), dim=1).max(dim=1)  # reported only: the target has no argmax
        probs = torch.full((len(feats), k), 1.0 / k, dtype=torch.float32, device=feats.device)
        return Targets(probs, self._weights(len(feats), epoch, feats.device), label, conf)


class OneHot(Strategy):
    """Classic pseudo-label (Lee 2013) as run by LSRO/MpRL: argmax p, weight 0.1, after a warm-up."""

    name = "onehot"

    def targets(self, feats, logits, centers, center_valid, epoch):
        p = torch.softmax(logits.float(), dim=1)
        conf, label = p.max(dim=1)
        return Targets(_onehot(label, logits.shape[1]), self._weights(len(feats), epoch, feats.device), label, conf,
                       margin_of(p, label))


class MpRL(Strategy):
    """Dynamic multi-pseudo regularised label (Huang et al. TIP'19): q_k = 2 r_k / (K (K + 1)).

    r_k is the rank of p_k in ascending order (the least likely class gets 1, the most likely K), i.e. the
    inverse of the sort permutation, as the paper describes (the released code applies the permutation
    itself, a bug: method-notes §3.4). Ties keep class order (stable sort).
    """

    name = "mprl1"

    def targets(self, feats, logits, centers, center_valid, epoch):
        p = torch.softmax(logits.float(), dim=1)
        k = p.shape[1]
        order = torch.sort(p, dim=1, stable=True).indices  # ascending
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(1, k + 1, device=p.device).expand_as(order))
        probs = 2.0 * ranks.float() / (k * (k + 1))
        conf, label = p.max(dim=1)
        return Targets(probs, self._weights(len(feats), epoch, feats.device), label, conf)


class MpRL2(MpRL):
    """dMpRL-II: MpRL switched on after the warm-up, with unlabeled weight 0.1."""

    name = "mprl2"


class AllInOne(Strategy):
    """Every unlabeled image in one extra class K + 1 (Odena 2016; Salimans et al. 2016): loss -log p_{K+1}."""

    name = "allinone"

    def targets(self, feats, logits, centers, center_valid, epoch):
        n, c = len(feats), logits.shape[1]
        label = torch.full((n,), c - 1, dtype=torch.long, device=feats.device)
        conf = torch.softmax(logits.float(), dim=1)[:, -1]
        return Targets(_onehot(label, c), self._weights(n, epoch, feats.device), label, conf)


STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (Baseline, Center, CPL, FAPL, LSRO, OneHot, MpRL, MpRL2, AllInOne)
}
