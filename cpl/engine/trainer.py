"""The re-ID training loop: softmax + λ·center loss on labeled images, pseudo-labeled unlabeled images.

One iteration (CPL Algorithm 1, with the sign of the center update corrected):
  1. draw the next global mini-batch from the shuffled union L ∪ U (this rank takes its slice);
  2. augment on the device, forward → pool5 features x and logits;
  3. the strategy labels the unlabeled members from the *current* centers and logits;
  4. loss = [Σ_labeled CE + Σ_unlabeled w·softCE + λ·½ Σ_labeled ||x − c_y||²] / m;
  5. centers move toward this batch's labeled features (Wen's rule, statistics all-reduced across ranks);
  6. backward, SGD step.
Centers start at zero and only labeled images move them. They are maintained for every method (they
cost nothing) so that every run can show its class centers and a center-based assignment; only
methods with ``center_loss`` put them into the loss.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from cpl.config import AugmentConfig, Config
from cpl.data.transforms import AugmentParams, augment, draw_params
from cpl.engine import dist, sampling
from cpl.engine.dist import DistInfo
from cpl.engine.losses import (
    apply_center_update,
    batch_hard_triplet,
    center_loss,
    center_loss_sgd,
    center_update_stats,
    cross_entropy,
    soft_cross_entropy,
)
from cpl.engine.seeding import derive_seed, make_generator
from cpl.pseudo import Strategy, cosine_to_centers, top2
from cpl.runs import faults


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/inf loss; the run stops and nothing trained on it is saved."""


class Stopped(Exception):
    """A stop was requested (cancel); the last completed epoch's checkpoint is the resume point."""


@dataclass
class TrainData:
    """Everything the loop trains on, decoded once and held in memory."""

    images: torch.Tensor  # [N_l + N_u, 3, H, W] uint8: labeled images first, then unlabeled
    labels: torch.Tensor  # [N_l] int64 in 0..K-1
    num_labeled: int
    num_classes: int  # K real identities
    unlabeled_truth: torch.Tensor | None = None  # [N_u] int64 hidden class (holdout source) or None

    @property
    def num_unlabeled(self) -> int:
        return self.images.shape[0] - self.num_labeled


@dataclass
class Hooks:
    """Callbacks into the run directory (all optional)."""

    on_record: Callable[[dict], None] = lambda rec: None  # a metrics record (iter / epoch)
    on_epoch_end: Callable[[int, dict], None] = lambda epoch, state: None  # checkpoint + history
    on_progress: Callable[[int, int, int], None] = lambda epoch, it, iters: None
    should_stop: Callable[[], bool] = lambda: False


@dataclass
class TrainState:
    """What a checkpoint restores besides model/optimizer weights."""

    epoch: int = 0  # next epoch to run
    centers: torch.Tensor | None = None  # [K, D] float32
    center_valid: torch.Tensor | None = None  # [K] bool: touched by at least one labeled image
    history_labels: list[np.ndarray] = field(default_factory=list)  # per epoch [N_u] int32
    history_conf: list[np.ndarray] = field(default_factory=list)  # per epoch [N_u] float16


def lr_at(cfg: Config, epoch: float) -> float:
    """Backbone learning rate at ``epoch`` (0-based; fractional inside an epoch): step decay at the milestones,
    times the linear warm-up factor (``lr_warmup_factor`` at 0, rising to 1 at ``lr_warmup_epochs``).

    BoT steps the warm-up once per epoch over 10 of 120 epochs; the trainer evaluates it at every iteration
    (epoch + it/iters), which is the same line sampled finer and keeps a short schedule's one warm-up epoch
    from being spent at 1 % of the rate."""
    t = cfg.train
    lr = t.lr * t.lr_gamma ** sum(epoch >= m for m in t.lr_milestones)
    if epoch < t.lr_warmup_epochs:
        a = epoch / t.lr_warmup_epochs
        lr *= t.lr_warmup_factor * (1 - a) + a
    return lr


def batch_augmentation(idx: torch.Tensor, num_labeled: int, aug: AugmentConfig, height: int, width: int,
                       generator: torch.Generator) -> AugmentParams:
    """Augmentation parameters of the global batch ``idx`` [B] int64: random erasing reaches the labeled images
    (index < num_labeled) only, unless ``aug.erasing_on_unlabeled``."""
    params = draw_params(len(idx), height, width, flip=aug.flip, pad=aug.pad, erasing=aug.random_erasing,
                         generator=generator)
    if not aug.erasing_on_unlabeled:
        params.erase &= idx < num_labeled
    return params


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 on CUDA devices that support it (``auto``), never on CPU unless asked."""
    mode = cfg.train.amp
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "fp16":
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16 if mode == "auto" else None
    return torch.bfloat16


class Trainer:
    """Runs epochs of the CPL loop on one rank. ``model`` is the bare network (DDP wrapping happens here)."""

    def __init__(self, cfg: Config, data: TrainData, model: nn.Module, strategy: Strategy, device: torch.device,
                 info: DistInfo = DistInfo(), hooks: Hooks | None = None):
        self.cfg, self.data, self.strategy, self.device, self.info = cfg, data, strategy, device, info
        self.hooks = hooks or Hooks()
        t = cfg.train
        if t.batch_size % info.world_size:
            raise ValueError(f"train.batch_size: {t.batch_size} is not divisible by the {info.world_size} ranks")
        self.model = model.to(device)
        if t.channels_last and device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        groups = model.param_groups(t.lr, t.classifier_lr_mult)
        if t.optimizer == "adam":
            self.optimizer = torch.optim.Adam(groups, lr=t.lr, weight_decay=t.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                                             nesterov=t.nesterov)
        self.dtype = amp_dtype(cfg, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None
        net: nn.Module = self.model
        if info.enabled:
            if t.sync_bn:
                net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        self.net = torch.compile(net) if t.compile else net
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        k, d = data.num_classes, model.feat_dim
        self.sgd_centers = t.center_update == "sgd"
        self.state = TrainState(centers=self._initial_centers(k, d).requires_grad_(self.sgd_centers),
                                center_valid=torch.zeros(k, dtype=torch.bool, device=device))
        self.unlabeled_per_batch = 0
        if t.sampler == "pk":
            p = t.batch_size // t.pk_instances
            if p % info.world_size:
                raise ValueError(f"train.batch_size: its {p} identities per batch do not split over the "
                                 f"{info.world_size} ranks")
            self.unlabeled_per_batch = sampling.unlabeled_per_batch(
                t.batch_size, t.unlabeled_share, data.num_labeled, data.num_unlabeled, info.world_size)

    def _initial_centers(self, k: int, d: int) -> torch.Tensor:
        """Centers [K, D] float32: zeros for Wen's rule (CPL), N(0, 1) for BoT's SGD-learned centers."""
        if self.cfg.train.center_update == "wen":
            return torch.zeros(k, d, device=self.device)
        return torch.randn(k, d, generator=make_generator(self.cfg.seed, "centers")).to(self.device)

    # ---------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict:
        s = self.state
        return {
            "epoch": s.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "scheduler": {"milestones": list(self.cfg.train.lr_milestones), "gamma": self.cfg.train.lr_gamma,
                          "last_epoch": s.epoch - 1},
            "centers": s.centers.detach().cpu(),
            "center_valid": s.center_valid.cpu(),
            "history_labels": torch.from_numpy(np.stack(s.history_labels)) if s.history_labels else torch.zeros(0),
            "history_conf": torch.from_numpy(np.stack(s.history_conf).astype(np.float32)) if s.history_conf
            else torch.zeros(0),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.zeros(0),
        }

    def load_state_dict(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        s = self.state
        s.epoch = int(ckpt["epoch"])
        s.centers = ckpt["centers"].to(self.device, torch.float32).requires_grad_(self.sgd_centers)
        s.center_valid = ckpt["center_valid"].to(self.device, torch.bool)
        hl, hc = ckpt["history_labels"], ckpt["history_conf"]
        s.history_labels = [r.numpy().astype(np.int32) for r in hl] if hl.numel() else []
        s.history_conf = [r.numpy().astype(np.float16) for r in hc] if hc.numel() else []
        torch.set_rng_state(ckpt["rng_cpu"])
        if self.device.type == "cuda" and ckpt["rng_cuda"].numel():
            torch.cuda.set_rng_state(ckpt["rng_cuda"], self.device)

    # ---------------------------------------------------------------- the loop
    def iters_per_epoch(self, epoch: int | None = None) -> int:
        """Iterations of ``epoch`` (default: the current one): its batches, capped by
        ``train.max_iters_per_epoch``."""
        epoch = self.state.epoch if epoch is None else epoch
        return len(self.epoch_batches(epoch, make_generator(self.cfg.seed, "epoch", epoch)))

    def epoch_batches(self, epoch: int, gen: torch.Generator) -> list[torch.Tensor]:
        """The global batches of ``epoch`` (index tensors into the image tensor), drawn from ``gen``: one pass
        over the shuffled images, or BoT's P×K identity batches plus unlabeled images."""
        t, data = self.cfg.train, self.data
        if t.sampler == "pk":
            n_u = data.num_unlabeled if self.strategy.active(epoch) else 0
            batches = sampling.pk_batches(self.labels.cpu(), t.batch_size // t.pk_instances, t.pk_instances, n_u,
                                          self.unlabeled_per_batch if n_u else 0, gen)
        else:
            batches = sampling.shuffled_batches(self.num_train_images(epoch), t.batch_size, gen)
        cap = t.max_iters_per_epoch
        return batches[:cap] if cap else batches

    def num_train_images(self, epoch: int) -> int:
        """Images an epoch draws from: L ∪ U once the strategy is active, L alone before (warm-up)."""
        return self.data.images.shape[0] if self.strategy.active(epoch) else self.data.num_labeled

    def fit(self) -> TrainState:
        """Train from ``state.epoch`` to ``train.epochs``; returns the final state."""
        while self.state.epoch < self.cfg.train.epochs:
            self.train_epoch(self.state.epoch)
        return self.state

    def _set_lr(self, epoch: float) -> float:
        lr = lr_at(self.cfg, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * (self.cfg.train.classifier_lr_mult if group.get("name") == "classifier" else 1.0)
        return lr

    def train_epoch(self, epoch: int) -> dict:
        cfg, data, info, dev = self.cfg, self.data, self.info, self.device
        t = cfg.train
        st = self.state
        lr = self._set_lr(epoch)
        self.net.train()
        # Every random choice of the epoch derives from (seed, epoch): a resumed run replays it exactly.
        torch.manual_seed(derive_seed(cfg.seed, "dropout", epoch, info.rank))
        gen = make_generator(cfg.seed, "epoch", epoch)
        batches = self.epoch_batches(epoch, gen)
        iters = len(batches)
        n_l, n_u, k = data.num_labeled, data.num_unlabeled, data.num_classes
        h, w = data.images.shape[2:]
        ep_labels = torch.full((n_u,), -1, dtype=torch.int32, device=dev)
        ep_conf = torch.zeros(n_u, dtype=torch.float32, device=dev)
        ep_margin = torch.zeros(n_u, dtype=torch.float32, device=dev)
        ep_true_mass = torch.zeros(n_u, dtype=torch.float32, device=dev)
        truth = data.unlabeled_truth.to(dev) if data.unlabeled_truth is not None else None
        # Running sums, read back every log_every iterations (device syncs are rare on GPU).
        # loss, ce, center, unl, triplet (× m), correct, n_lab, n
        sums = torch.zeros(len(_STATS), dtype=torch.float64, device=dev)
        window = torch.zeros_like(sums)
        bad_iter = torch.full((), -1, dtype=torch.long, device=dev)
        check_every = 1 if dev.type == "cpu" else t.log_every
        ctx = torch.autocast(dev.type, dtype=self.dtype) if self.dtype else contextlib.nullcontext()
        t0 = time.time()
        tw = t0
        for it in range(iters):
            if self.hooks.should_stop():
                raise Stopped(f"stopped at epoch {epoch + 1}, iteration {it}")
            if epoch < t.lr_warmup_epochs:
                lr = self._set_lr(epoch + it / iters)
            idx = batches[it]
            params = batch_augmentation(idx, n_l, cfg.augment, h, w, gen)
            if t.sampler == "pk" and info.enabled:
                # Each rank's slice must hold whole identities (the triplet term mines within it); the
                # augmentation stays attached to its image, so the global batch is the same for any world size.
                order = sampling.rank_major(t.batch_size, t.pk_instances, len(idx) - t.batch_size, info.world_size)
                idx, params = idx[order], params.take(order)
            b_local = len(idx) // info.world_size
            lo, hi = info.rank * b_local, (info.rank + 1) * b_local
            idx, params = idx[lo:hi], params.slice(lo, hi)
            idx_d = idx.to(dev, non_blocking=True)
            x = augment(self.images[idx_d], params, cfg.augment.pad)
            if t.channels_last and dev.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            lab = idx_d < n_l
            unl = ~lab
            y = torch.where(lab, self.labels[idx_d.clamp(max=n_l - 1)], torch.full_like(idx_d, -1))
            with ctx:
                feats, logits = self.net(x)
            feats = feats.float()
            logits = logits.float()
            m = len(idx)
            ce_lab = cross_entropy(logits[lab], y[lab], t.label_smoothing)
            loss_ce = ce_lab.sum() / m
            loss_unl = feats.new_zeros(())
            center_labels = y.clone()
            center_mask = lab.clone()
            if self.strategy.active(epoch) and n_u:
                u_pos = unl.nonzero().squeeze(1)
                if len(u_pos):
                    fu, lu = feats[u_pos].detach(), logits[u_pos].detach()
                    centers = st.centers.detach()  # a constant for the targets, also when SGD learns it
                    tg = self.strategy.targets(fu, lu, centers, st.center_valid, epoch)
                    loss_unl = (soft_cross_entropy(logits[u_pos], tg.probs) * tg.weight).sum() / m
                    # Statistics of this batch's labels, stored per unlabeled image.
                    u_idx = idx_d[u_pos] - n_l
                    ep_labels[u_idx] = tg.label.to(torch.int32)
                    ep_conf[u_idx] = tg.confidence.float()
                    _, c1, _, c2 = top2(cosine_to_centers(fu, centers, st.center_valid))
                    ep_margin[u_idx] = torch.nan_to_num(c1 - c2, nan=0.0, posinf=0.0, neginf=0.0)
                    if truth is not None:
                        ep_true_mass[u_idx] = tg.probs.gather(1, truth[u_idx, None]).squeeze(1)
                    if t.center_on_unlabeled:
                        use = (tg.label >= 0) & (tg.label < k) & (tg.weight > 0)
                        center_labels[u_pos] = torch.where(use, tg.label, center_labels[u_pos])
                        center_mask[u_pos] = use
            loss_center = feats.new_zeros(())
            if self.strategy.center_loss and t.center_weight > 0:
                loss_center = (center_loss_sgd if self.sgd_centers else center_loss)(
                    feats, st.centers, center_labels.clamp(min=0), center_mask, m)
            loss_triplet = feats.new_zeros(())
            if t.triplet_weight > 0:  # labeled images only: a GAN image has no identity to mine positives from
                loss_triplet = batch_hard_triplet(feats[lab], y[lab], t.triplet_margin)
            loss = loss_ce + loss_unl + t.center_weight * loss_center + t.triplet_weight * loss_triplet
            # Centers (identical on every rank): Wen's update from this batch's labeled features, or BoT's
            # SGD step after the backward pass; either way "valid" once a labeled image has reached them.
            c_sums, c_counts = center_update_stats(feats, y.clamp(min=0), lab, k)
            dist.all_reduce_sum(c_sums, c_counts)
            if not self.sgd_centers:
                apply_center_update(st.centers, c_sums, c_counts, t.center_alpha)
            st.center_valid |= c_counts > 0

            self.optimizer.zero_grad(set_to_none=True)
            if self.sgd_centers:
                st.centers.grad = None
            finite = torch.isfinite(loss)
            bad_iter = torch.where((bad_iter < 0) & ~finite, torch.tensor(it, device=dev), bad_iter)
            scale = 1.0
            if self.scaler:
                scale = float(self.scaler.get_scale())
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            if self.sgd_centers:
                self._center_sgd_step(scale)
            with torch.no_grad():
                correct = (logits[lab, :k].argmax(1) == y[lab]).sum()
                step = torch.stack([loss.detach() * m, loss_ce.detach() * m, loss_center.detach() * m,
                                    loss_unl.detach() * m, loss_triplet.detach() * m, correct.float(),
                                    lab.sum().float(), torch.tensor(float(m), device=dev)]).double()
                window += step
            if (it + 1) % check_every == 0 or it + 1 == iters:
                dist.all_reduce_max(bad_iter)  # every rank stops together
                if int(bad_iter) >= 0:
                    raise NonFiniteLoss(
                        f"non-finite loss at epoch {epoch + 1}, iteration {int(bad_iter) + 1}: lower train.lr, "
                        f"check the data, or set train.amp=off; the last checkpoint is intact")
            if (it + 1) % t.log_every == 0 or it + 1 == iters:
                dist.all_reduce_sum(window)
                wv = window.tolist()
                now = time.time()
                rec = _means(wv)
                rec.update(type="iter", epoch=epoch, iter=it, global_iter=epoch * iters + it, lr=lr,
                           imgs_per_s=wv[_STATS.index("n")] / max(now - tw, 1e-9), time=now)
                self.hooks.on_record(rec)
                sums += window
                window.zero_()
                tw = now
                self.hooks.on_progress(epoch, it + 1, iters)
            faults.point("train", epoch=epoch, iter=it)

        # ---- end of epoch: gather per-image pseudo-label records from all ranks (each image is on one rank)
        dist.all_reduce_max(ep_labels)
        dist.all_reduce_sum(ep_conf, ep_margin, ep_true_mass)
        rec = _means(sums.tolist())
        rec.update(type="epoch", epoch=epoch, lr=lr, epoch_time_s=time.time() - t0, time=time.time())
        if n_u and self.strategy.uses_unlabeled:
            rec.update(self._pseudo_stats(ep_labels, ep_conf, ep_margin, ep_true_mass, truth))
        if info.enabled:  # the centers must be identical on every rank: record the largest difference
            hi_c, lo_c = st.centers.detach().clone(), -st.centers.detach()
            dist.all_reduce_max(hi_c, lo_c)
            rec["centers_rank_diff"] = float((hi_c + lo_c).abs().max())
        st.history_labels.append(ep_labels.cpu().numpy().astype(np.int32))
        st.history_conf.append(ep_conf.cpu().numpy().astype(np.float16))
        st.epoch = epoch + 1
        self.hooks.on_record(rec)
        self.hooks.on_epoch_end(epoch, self.state_dict())
        return rec

    def _center_sgd_step(self, loss_scale: float) -> None:
        """BoT's center step: the gradient of λ·Σ||x − c||²/m rescaled by 1/λ (so the rate is λ-free), averaged
        over ranks, then plain SGD at ``train.center_lr``. ``loss_scale``: the fp16 gradient scaler's factor."""
        c = self.state.centers
        if c.grad is None:
            return
        with torch.no_grad():
            g = c.grad / (self.cfg.train.center_weight * loss_scale)
            if self.info.enabled:
                dist.all_reduce_sum(g)
                g /= self.info.world_size
            if bool(torch.isfinite(g).all()):  # an fp16 overflow step is skipped, as the scaler skips the model's
                c -= self.cfg.train.center_lr * g
        c.grad = None

    def _pseudo_stats(self, labels, conf, margin, true_mass, truth) -> dict:
        st = self.state
        seen = labels >= 0
        n_seen = int(seen.sum())
        out: dict = {"pl_seen": n_seen, "centers_valid": int(st.center_valid.sum())}
        if n_seen == 0:
            return out
        out["pl_mean_conf"] = float(conf[seen].mean())
        out["pl_mean_margin"] = float(margin[seen].mean())
        out["pl_classes_used"] = int(torch.unique(labels[seen]).numel())
        if st.history_labels:
            prev = torch.from_numpy(st.history_labels[-1]).to(labels.device)
            both = seen & (prev >= 0)
            changed = int((labels[both] != prev[both]).sum())
            out["pl_changed"] = changed
            out["pl_changed_frac"] = changed / max(1, int(both.sum()))
        if truth is not None:
            out["pl_acc"] = float((labels[seen].long() == truth[seen]).float().mean())
            out["pl_true_mass"] = float(true_mass[seen].mean())
        return out


_STATS = ("loss", "loss_ce", "loss_center", "loss_unlabeled", "loss_triplet", "correct", "n_labeled", "n")


def _means(v: list[float]) -> dict:
    """Mean per-image losses and labeled accuracy from a window's sums, in the order of ``_STATS`` (losses
    summed × batch size, correct labeled predictions, labeled images, images)."""
    s = dict(zip(_STATS, v))
    n = max(1.0, s["n"])
    out = {key: s[key] / n for key in _STATS[:5]}
    out["acc"] = s["correct"] / max(1.0, s["n_labeled"])
    return out
