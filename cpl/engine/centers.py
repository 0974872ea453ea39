"""The class centers of the re-ID loop: where they start, how they move, what a checkpoint keeps of them.

Two rules (docs/methods.md, "Center loss, two definitions"): Wen's (CPL, FAPL) starts at zero and moves each
center toward the labeled features of its class in the batch with rate α; BoT's starts from N(0, 1) and learns
the centers by plain SGD on the center term. Either way a center is *valid* once a labeled image of its class
has reached it; only valid centers take part in a center-based pseudo-label. Under torchrun the per-class
statistics are summed over ranks, so every rank holds the same centers as one process of the global batch.
"""

from __future__ import annotations

import torch

from cpl.config import TrainConfig
from cpl.engine import dist
from cpl.engine.losses import apply_center_update, center_update_stats
from cpl.engine.seeding import make_generator


class Centers:
    """K class centers ``value`` [K, D] float32 and their validity ``valid`` [K] bool, with their update rule.

    ``value`` requires grad under the SGD rule (the center term's gradient reaches it); it is a constant
    everywhere a pseudo-label is computed from it.
    """

    def __init__(self, train: TrainConfig, num_classes: int, dim: int, seed: int, device: torch.device):
        self.sgd = train.center_update == "sgd"
        self.alpha, self.lr, self.weight = train.center_alpha, train.center_lr, train.center_weight
        if self.sgd:  # BoT: N(0, 1), from its own stream so that the model's initial weights do not depend on it
            start = torch.randn(num_classes, dim, generator=make_generator(seed, "centers")).to(device)
        else:  # Wen / CPL Algorithm 1: zeros
            start = torch.zeros(num_classes, dim, device=device)
        self.value = start.requires_grad_(self.sgd)
        self.valid = torch.zeros(num_classes, dtype=torch.bool, device=device)

    @property
    def num_classes(self) -> int:
        """K."""
        return self.value.shape[0]

    def constant(self) -> torch.Tensor:
        """The centers [K, D] float32 detached: what targets and statistics are computed from."""
        return self.value.detach()

    def observe(self, feats: torch.Tensor, labels: torch.Tensor, labeled: torch.Tensor) -> None:
        """This step's labeled features feats [b, D] (labels [b] int64, labeled [b] bool) reach the centers:
        per-class sums and counts summed over ranks, Wen's move (the SGD rule moves in :meth:`sgd_step`
        instead), and a class seen for the first time becomes valid."""
        sums, counts = center_update_stats(feats, labels.clamp(min=0), labeled, self.num_classes)
        dist.all_reduce_sum(sums, counts)
        if not self.sgd:
            apply_center_update(self.value, sums, counts, self.alpha)
        self.valid |= counts > 0

    def zero_grad(self) -> None:
        """Forget the previous step's gradient (SGD rule; a no-op under Wen's)."""
        if self.sgd:
            self.value.grad = None

    def sgd_step(self, loss_scale: float, world_size: int) -> None:
        """BoT's center step after the backward pass: the gradient of λ·Σ||x − c||²/m rescaled by 1/λ (so the
        rate is λ-free), averaged over ``world_size`` ranks, then plain SGD at ``train.center_lr``.
        ``loss_scale``: the fp16 gradient scaler's factor. A no-op under Wen's rule."""
        c = self.value
        if not self.sgd or c.grad is None:
            return
        with torch.no_grad():
            g = c.grad / (self.weight * loss_scale)
            if world_size > 1:
                dist.all_reduce_sum(g)
                g /= world_size
            if bool(torch.isfinite(g).all()):  # an fp16 overflow step is skipped, as the scaler skips the model's
                c -= self.lr * g
        c.grad = None

    def rank_spread(self) -> float:
        """The largest difference of any center coordinate between ranks (0.0: identical everywhere)."""
        hi, lo = self.constant().clone(), -self.constant()
        dist.all_reduce_max(hi, lo)
        return float((hi + lo).abs().max())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``centers`` [K, D] float32 and ``center_valid`` [K] bool on the CPU, the checkpoint's keys."""
        return {"centers": self.constant().cpu(), "center_valid": self.valid.cpu()}

    def load_state_dict(self, ckpt: dict) -> None:
        """Take the centers and validity of a checkpoint (:meth:`state_dict`'s keys)."""
        device = self.value.device
        self.value = ckpt["centers"].to(device, torch.float32).requires_grad_(self.sgd)
        self.valid = ckpt["center_valid"].to(device, torch.bool)
