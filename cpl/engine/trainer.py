"""The re-ID training loop: softmax + λ·center loss on labeled images, pseudo-labeled unlabeled images.

One iteration (CPL Algorithm 1, with the sign of the center update corrected):
  1. draw the next global mini-batch from the shuffled union L ∪ U (this rank takes its slice);
  2. augment on the device, forward → pool5 features x and logits;
  3. the strategy labels the unlabeled members from the *current* centers and logits;
  4. loss = [Σ_labeled CE + Σ_unlabeled w·softCE + λ·½ Σ_labeled ||x − c_y||²] / m, the sum of the run's terms
     built once from config and method (cpl/engine/terms.py);
  5. centers move toward this batch's labeled features (Wen's rule, statistics all-reduced across ranks);
  6. backward, optimizer step, learning-rate schedule step.
:meth:`Trainer.train_epoch` is the loop over batches; :meth:`Trainer.train_step` is steps 2-6 on one batch. The
optimizer and the schedule come from cpl/engine/optim.py; stop requests, the non-finite guard, mixed precision,
the summed statistics and the checkpoint state helpers are cpl/engine/control.py's, shared with the DCGAN loop.
Centers (cpl/engine/centers.py) start at zero and only labeled images move them. They are maintained for every
method (they cost nothing) so that every run can show its class centers and a center-based assignment; only
methods with ``center_loss`` put them into the loss.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from cpl.config import AugmentConfig, Config
from cpl.data.image_source import ImageSource, Rows, as_source, on_device
from cpl.data.transforms import AugmentParams, augment, draw_params
from cpl.engine import dist, sampling
from cpl.engine.centers import Centers
from cpl.engine.control import (
    LoopControl,
    Precision,
    Sums,
    autocast_dtype,
    capture,
    field_names,
    restore,
    restore_rng,
    rng_state,
)
from cpl.engine.dist import DistInfo
from cpl.engine.features import extract_shared
from cpl.engine.optim import EpochClock, build_optimizer, build_scheduler, seek
from cpl.engine.seeding import derive_seed, make_generator
from cpl.engine.terms import TERM_KEYS, StepInputs, build_terms, objective
from cpl.pseudo import Strategy, Targets, cosine_to_centers, top2
from cpl.pseudo.remedies import select
from cpl.runs import faults


@dataclass
class TrainData:
    """Everything the loop trains on. The images are a source read by row (cpl/data/image_source.py): in memory or
    the disk cache, never one concatenated copy; a tensor given here is wrapped, not copied."""

    images: ImageSource  # [N_l + N_u, 3, H, W] uint8: labeled images first, then unlabeled
    labels: torch.Tensor  # [N_l] int64 in 0..K-1
    num_labeled: int
    num_classes: int  # K real identities
    unlabeled_truth: torch.Tensor | None = None  # [N_u] int64 hidden class (holdout source) or None
    # Unlabeled images of the source that are not in ``images`` (a labeled-only control never trains on them);
    # an epoch of train.epoch_length=union counts them.
    num_set_aside: int = 0

    def __post_init__(self) -> None:
        self.images = as_source(self.images)

    @property
    def num_unlabeled(self) -> int:
        """N_u: the images after the labeled ones."""
        return len(self.images) - self.num_labeled


@dataclass
class Hooks:
    """Callbacks into the run directory (all optional)."""

    on_record: Callable[[dict], None] = lambda rec: None  # a metrics record (iter / epoch)
    on_epoch_end: Callable[[int, dict], None] = lambda epoch, state: None  # checkpoint + history
    on_progress: Callable[[int, int, int], None] = lambda epoch, it, iters: None
    should_stop: Callable[[], bool] = lambda: False  # polled before every iteration: True raises Stopped


@dataclass
class TrainState:
    """What a checkpoint restores besides model/optimizer weights."""

    center_set: Centers  # the class centers and their update rule
    epoch: int = 0  # next epoch to run
    history_labels: list[np.ndarray] = field(default_factory=list)  # per epoch [N_u] int32
    history_conf: list[np.ndarray] = field(default_factory=list)  # per epoch [N_u] float16
    history_margin: list[np.ndarray] = field(default_factory=list)  # per epoch [N_u] float16, NaN: not recorded
    history_selected: list[np.ndarray] = field(default_factory=list)  # per epoch [N_u] bool: kept by the selection

    @property
    def centers(self) -> torch.Tensor:
        """The class centers [K, D] float32 (requires grad under the SGD rule)."""
        return self.center_set.value

    @property
    def center_valid(self) -> torch.Tensor:
        """[K] bool: the centers touched by at least one labeled image."""
        return self.center_set.valid


@dataclass
class Batch:
    """This rank's slice of one global mini-batch, on the device (b images)."""

    idx: torch.Tensor  # [b] int64 rows of the image source: < N_l labeled, else unlabeled
    x: torch.Tensor  # [b, 3, H, W] float32, augmented
    labeled: torch.Tensor  # [b] bool
    y: torch.Tensor  # [b] int64 identity in 0..K-1, -1 for an unlabeled image


@dataclass
class StepStats:
    """One iteration on this rank: 0-dim tensors on the device (reading one is a host sync)."""

    # "loss", the objective optimised (Σ weight · term), and each term's λ-free value (cpl/engine/terms.py:
    # loss_ce, loss_center, loss_unlabeled, loss_triplet; 0 for a term the run does not train), per image
    losses: dict[str, torch.Tensor]
    correct: torch.Tensor  # labeled images whose arg-max over the K identities is right (float32)
    n_labeled: torch.Tensor  # labeled images in the slice (float32)
    n: int  # images in the slice (b)

    @property
    def loss(self) -> torch.Tensor:
        """The objective of the step, per image (0-dim)."""
        return self.losses["loss"]

    def sums(self) -> dict[str, torch.Tensor | float]:
        """What adds up over iterations and ranks, by the names of :data:`STATS`: each loss × b, the counts."""
        out: dict[str, torch.Tensor | float] = {k: self.losses[k] * self.n for k in LOSSES}
        out.update(correct=self.correct, n_labeled=self.n_labeled, n=float(self.n))
        return out


LOSSES = ("loss", *TERM_KEYS)
STATS = (*LOSSES, *(f for f in field_names(StepStats) if f != "losses"))  # the summed statistics, by name


@dataclass
class EpochLabels:
    """Per unlabeled image ([N_u] on the device), what the strategy gave it the last time this epoch drew it."""

    label: torch.Tensor  # int32 hard label, -1: not drawn (or not labeled) this epoch
    conf: torch.Tensor  # float32 confidence of the target
    margin: torch.Tensor  # float32 cosine to the nearest valid center minus the second nearest
    true_mass: torch.Tensor  # float32 target probability of the hidden true class (holdout source), else 0
    selected: torch.Tensor  # bool: passed the confidence selection (train.select_min_*), i.e. trained on

    @classmethod
    def empty(cls, n_u: int, device: torch.device) -> EpochLabels:
        """The record at the start of an epoch: no image labeled yet."""
        z = torch.zeros(n_u, dtype=torch.float32, device=device)
        return cls(torch.full((n_u,), -1, dtype=torch.int32, device=device), z, z.clone(), z.clone(),
                   torch.zeros(n_u, dtype=torch.bool, device=device))

    def store(self, rows: torch.Tensor, tg: Targets, keep: torch.Tensor, feats: torch.Tensor, centers: torch.Tensor,
              center_valid: torch.Tensor, truth: torch.Tensor | None) -> None:
        """Record the targets ``tg`` of the unlabeled images ``rows`` [u] int64 (0-based among the unlabeled),
        whether the selection kept them (``keep`` [u] bool), their features feats [u, D] and the cosine margin
        to the centers [K, D] (``center_valid`` [K] bool); ``truth`` [N_u] int64 the hidden classes or None."""
        self.label[rows] = tg.label.to(torch.int32)
        self.selected[rows] = keep
        self.conf[rows] = tg.confidence.float()
        _, c1, _, c2 = top2(cosine_to_centers(feats, centers, center_valid))
        self.margin[rows] = torch.nan_to_num(c1 - c2, nan=0.0, posinf=0.0, neginf=0.0)
        if truth is not None:
            self.true_mass[rows] = tg.probs.gather(1, truth[rows, None]).squeeze(1)

    def all_reduce(self) -> None:
        """Gather the records of every rank (each image is on one rank per draw)."""
        selected = self.selected.float()
        dist.all_reduce_max(self.label, selected)
        dist.all_reduce_sum(self.conf, self.margin, self.true_mass)
        self.selected = selected > 0


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
    """The re-ID loop's autocast dtype for ``train.amp`` (also the evaluation's): bf16 on CUDA devices that
    support it (``auto``), never on CPU unless asked; the rule is :func:`cpl.engine.control.autocast_dtype`."""
    return autocast_dtype(cfg.train.amp, device)


class Trainer:
    """Runs epochs of the CPL loop on one rank. ``model`` is the bare network (DDP wrapping happens here).

    :meth:`train_epoch` is the loop (batches, stop requests, the non-finite guard, reports, the epoch's
    record and checkpoint hand-off); :meth:`train_step` is one optimisation step on one batch.
    """

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
        self.optimizer = build_optimizer(cfg, model)
        self.precision = Precision.choose(t.amp, device)
        self.scaler = self.precision.grad_scaler()
        net: nn.Module = self.model
        if info.enabled:
            if t.sync_bn:
                net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        self.net = torch.compile(net) if t.compile else net
        self.images = on_device(data.images, device)
        self.labels = data.labels.to(device)
        self.truth = data.unlabeled_truth.to(device) if data.unlabeled_truth is not None else None
        self.state = TrainState(Centers(t, data.num_classes, model.feat_dim, cfg.seed, device))
        self.terms = build_terms(cfg, strategy)
        self.set_targets: Targets | None = None  # the current epoch's balanced targets of every unlabeled image
        self.unlabeled_per_batch = 0
        if t.sampler == "pk":
            p = t.batch_size // t.pk_instances
            if p % info.world_size:
                raise ValueError(f"train.batch_size: its {p} identities per batch do not split over the "
                                 f"{info.world_size} ranks")
            self.unlabeled_per_batch = sampling.unlabeled_per_batch(
                t.batch_size, t.unlabeled_share, data.num_labeled, data.num_unlabeled, info.world_size)
        self.control = LoopControl("train", t.epochs, self.hooks.should_stop, t.log_every, unit="iteration")
        self.clock = EpochClock(self.iters_per_epoch, t.epochs)  # epochs differ in length: see EpochClock
        self.scheduler = build_scheduler(cfg, self.optimizer, self.clock)

    # ---------------------------------------------------------------- checkpoint state
    def _parts(self) -> dict:
        """What a checkpoint holds by its ``state_dict``, under the checkpoint's keys."""
        return {"model": self.model, "optimizer": self.optimizer, "scaler": self.scaler, "scheduler": self.scheduler}

    def state_dict(self) -> dict:
        """The checkpoint after the last completed epoch: ``epoch`` (the next one to run), model, optimizer,
        grad scaler (``{}`` without fp16), LR scheduler (its iteration count), centers [K, D] float32 and
        their validity [K] bool, the pseudo-label history (``history_labels`` [E, N_u] int32,
        ``history_conf`` and ``history_margin`` [E, N_u] float32, ``history_selected`` [E, N_u] bool, or empty)
        and the global random streams."""
        s = self.state
        return {
            "epoch": s.epoch,
            **capture(self._parts()),
            **s.center_set.state_dict(),
            "history_labels": torch.from_numpy(np.stack(s.history_labels)) if s.history_labels else torch.zeros(0),
            "history_conf": torch.from_numpy(np.stack(s.history_conf).astype(np.float32)) if s.history_conf
            else torch.zeros(0),
            "history_margin": torch.from_numpy(np.stack(s.history_margin).astype(np.float32)) if s.history_margin
            else torch.zeros(0),
            "history_selected": torch.from_numpy(np.stack(s.history_selected)) if s.history_selected
            else torch.zeros(0, dtype=torch.bool),
            **rng_state(self.device),
        }

    def load_state_dict(self, ckpt: dict) -> None:
        """Resume from :meth:`state_dict`'s output: the next :meth:`fit` continues bit-identically."""
        parts = self._parts()
        if "base_lrs" not in (ckpt.get("scheduler") or {}):  # written before the schedule was saved
            del parts["scheduler"]
        restore(parts, ckpt)
        s = self.state
        s.epoch = int(ckpt["epoch"])
        if "scheduler" not in parts:
            seek(self.scheduler, self.clock.start(s.epoch))
        s.center_set.load_state_dict(ckpt)
        hl, hc = ckpt["history_labels"], ckpt["history_conf"]
        s.history_labels = [r.numpy().astype(np.int32) for r in hl] if hl.numel() else []
        s.history_conf = [r.numpy().astype(np.float16) for r in hc] if hc.numel() else []
        s.history_margin = _margins(ckpt.get("history_margin"), s.history_conf)
        s.history_selected = _selected(ckpt.get("history_selected"), s.history_labels)
        restore_rng(ckpt, self.device)

    # ---------------------------------------------------------------- the loop
    def iters_per_epoch(self, epoch: int | None = None) -> int:
        """Iterations of ``epoch`` (default: the current one): its batches, capped by
        ``train.max_iters_per_epoch``."""
        epoch = self.state.epoch if epoch is None else epoch
        return len(self.epoch_batches(epoch, make_generator(self.cfg.seed, "epoch", epoch)))

    def epoch_batches(self, epoch: int, gen: torch.Generator) -> list[torch.Tensor]:
        """The global batches of ``epoch`` (index tensors into the image source), drawn from ``gen``: one pass
        over the shuffled images, or BoT's P×K identity batches plus unlabeled images."""
        t, data = self.cfg.train, self.data
        if t.sampler == "pk":
            n_u = data.num_unlabeled if self.strategy.active(epoch) else 0
            batches = sampling.pk_batches(self.labels.cpu(), t.batch_size // t.pk_instances, t.pk_instances, n_u,
                                          self.unlabeled_per_batch if n_u else 0, gen)
        else:
            iters = max(1, self.num_epoch_images(epoch) // t.batch_size)
            batches = sampling.shuffled_batches(self.num_train_images(epoch), t.batch_size, gen, iters)
        cap = t.max_iters_per_epoch
        return batches[:cap] if cap else batches

    def num_train_images(self, epoch: int) -> int:
        """Images an epoch draws from: L ∪ U once the strategy is active, L alone before (warm-up)."""
        return len(self.data.images) if self.strategy.active(epoch) else self.data.num_labeled

    def num_epoch_images(self, epoch: int) -> int:
        """Images an epoch counts (its steps are this // batch size), by ``train.epoch_length``: those it draws
        from (``trained``), N_l (``labeled``), or N_l + N_u with N_u also counting the images a labeled-only
        control sets aside (``union``, in every epoch, warm-up included)."""
        d = self.data
        return {"trained": self.num_train_images(epoch), "labeled": d.num_labeled,
                "union": len(d.images) + d.num_set_aside}[self.cfg.train.epoch_length]

    def fit(self) -> TrainState:
        """Train from ``state.epoch`` to ``train.epochs``; returns the final state."""
        while self.state.epoch < self.cfg.train.epochs:
            self.train_epoch(self.state.epoch)
        return self.state

    def train_epoch(self, epoch: int) -> dict:
        """One epoch (0-based): the unlabeled set's features when the strategy needs them (CSLS, balanced
        assignment: :meth:`_set_targets`), every batch through :meth:`train_step`, a metrics record every
        ``log_every`` iterations, then the epoch's record and checkpoint (``Hooks.on_epoch_end``). Returns the
        epoch record.

        Raises :class:`~cpl.engine.control.Stopped` before an iteration when a stop is requested, and
        :class:`~cpl.engine.control.NonFiniteLoss` (on every rank) before anything trained on NaN is saved."""
        cfg, info, dev, ctl = self.cfg, self.info, self.device, self.control
        self.net.train()
        # Every random choice of the epoch derives from (seed, epoch): a resumed run replays it exactly.
        torch.manual_seed(derive_seed(cfg.seed, "dropout", epoch, info.rank))
        gen = make_generator(cfg.seed, "epoch", epoch)
        batches = self.epoch_batches(epoch, gen)
        iters = len(batches)
        if self.scheduler.last_epoch != self.clock.start(epoch):  # an epoch run again (a benchmark)
            seek(self.scheduler, self.clock.start(epoch))
        labels = EpochLabels.empty(self.data.num_unlabeled, dev)
        self.set_targets = self._set_targets(epoch)
        window = Sums(STATS, dev)  # read back every log_every iterations (device syncs are rare on GPU)
        totals = dict.fromkeys(STATS, 0.0)
        check = ctl.finite_check(dev, advice="lower train.lr, check the data, or set train.amp=off; the last "
                                             "checkpoint is intact")
        t0 = tw = time.time()
        lr = self._lr()
        for it, idx in enumerate(batches):
            ctl.raise_if_stopped(epoch, it, iters)
            lr = self._lr()
            step = self.train_step(self.make_batch(idx, gen), epoch, labels)
            window.add(step.sums())
            check.observe(it, loss=step.loss)
            if check.due(it + 1, iters):
                check.check(epoch, iters)
            if ctl.log_due(it + 1, iters):
                w = window.take()
                now = time.time()
                rec = _means(w)
                rec.update(type="iter", epoch=epoch, iter=it, global_iter=epoch * iters + it, lr=lr,
                           imgs_per_s=w["n"] / max(now - tw, 1e-9), time=now)
                self.hooks.on_record(rec)
                totals = {k: totals[k] + w[k] for k in STATS}
                tw = now
                self.hooks.on_progress(epoch, it + 1, iters)
            faults.point("train", epoch=epoch, iter=it)
        return self._end_epoch(epoch, labels, totals, lr, t0)

    def _set_targets(self, epoch: int) -> Targets | None:
        """At the start of an active epoch whose strategy needs them (CSLS, balanced assignment), the features of
        every unlabeled image, unaugmented, in eval mode, the same for any number of ranks; the strategy takes
        them as its reference set. Returns the epoch's fixed balanced targets of every unlabeled image [N_u]
        (``train.assignment=sinkhorn``), else None (each batch labels its own images)."""
        s, n_l = self.strategy, self.data.num_labeled
        if not (s.active(epoch) and self.data.num_unlabeled and s.needs_set_features):
            return None
        unlabeled = Rows(self.images, torch.arange(n_l, len(self.images)))
        feats = extract_shared(self.model, unlabeled, self.device, self.info.rank, self.info.world_size,
                               batch_size=self.cfg.eval.batch_size, dtype=amp_dtype(self.cfg, self.device))
        center_set = self.state.center_set
        return s.epoch_targets(feats, center_set.constant(), center_set.valid, epoch)

    def _lr(self) -> float:
        """The backbone's learning rate for the next step (the first group is the trunk's)."""
        return self.optimizer.param_groups[0]["lr"]

    def make_batch(self, idx: torch.Tensor, gen: torch.Generator) -> Batch:
        """This rank's slice of the global batch ``idx`` [B] int64, augmented on the device; the augmentation is
        drawn from the epoch's generator ``gen`` for the whole global batch, so it is the same for any world size."""
        cfg, t, info, dev = self.cfg, self.cfg.train, self.info, self.device
        n_l = self.data.num_labeled
        h, w = self.data.images.shape[2:]
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
        x = augment(self.images.gather(idx_d).to(dev, non_blocking=True), params, cfg.augment.pad)
        if t.channels_last and dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        lab = idx_d < n_l
        y = torch.where(lab, self.labels[idx_d.clamp(max=n_l - 1)], torch.full_like(idx_d, -1))
        return Batch(idx=idx_d, x=x, labeled=lab, y=y)

    def train_step(self, batch: Batch, epoch: int, labels: EpochLabels | None = None) -> StepStats:
        """One optimisation step on ``batch`` in ``epoch``: forward, pseudo-labels for its unlabeled images
        (stored in ``labels``), the loss, the centers' update, backward, optimizer and schedule step.

        Every step of the loop, in order (CPL Algorithm 1): the strategy labels the unlabeled images from the
        current centers and logits; the objective is the sum of the run's terms (:attr:`terms`: CE, the
        unlabeled targets, λ·center, triplet) against the current centers; the centers take Wen's step toward
        this batch's labeled features (statistics summed over ranks), or BoT's SGD step after the backward pass.
        """
        center_set = self.state.center_set
        with self.precision.autocast():
            feats, logits = self.net(batch.x)
        s = self._step_inputs(batch, feats.float(), logits.float(), epoch, labels)
        losses = objective(self.terms, s, center_set)
        center_set.observe(s.feats, batch.y, batch.labeled)

        self.optimizer.zero_grad(set_to_none=True)
        center_set.zero_grad()
        scale = 1.0
        loss = losses["loss"]
        if self.scaler:
            scale = float(self.scaler.get_scale())
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        center_set.sgd_step(scale, self.info.world_size)
        self.scheduler.step()
        lab, k = batch.labeled, self.data.num_classes
        with torch.no_grad():
            return StepStats(losses={key: v.detach() for key, v in losses.items()},
                             correct=(s.logits[lab, :k].argmax(1) == batch.y[lab]).sum().float(),
                             n_labeled=lab.sum().float(), n=s.m)

    def _step_inputs(self, batch: Batch, feats: torch.Tensor, logits: torch.Tensor, epoch: int,
                     labels: EpochLabels | None) -> StepInputs:
        """The strategy's targets for the batch's unlabeled images (from the current centers, detached) and what
        the loss terms read; the targets are stored per image in ``labels``. With ``train.center_on_unlabeled``
        an unlabeled image with a label and a positive weight also carries the center term."""
        t, center_set, data = self.cfg.train, self.state.center_set, self.data
        lab, y = batch.labeled, batch.y
        s = StepInputs(feats=feats, logits=logits, y=y, labeled=lab, unlabeled=(~lab).nonzero().squeeze(1),
                       targets=None, center_labels=y.clone(), center_mask=lab.clone())
        if not (self.strategy.active(epoch) and data.num_unlabeled and len(s.unlabeled)):
            return s
        u_pos = s.unlabeled
        rows = batch.idx[u_pos] - data.num_labeled
        fu, lu = feats[u_pos].detach(), logits[u_pos].detach()
        centers = center_set.constant()  # a constant for the targets, also when SGD learns it
        if self.set_targets is not None:  # the epoch's balanced assignment
            tg = self.set_targets.take(rows)
        else:
            tg = self.strategy.targets(fu, lu, centers, center_set.valid, epoch)
        keep = torch.ones_like(tg.weight, dtype=torch.bool)
        if t.select_min_score > 0 or t.select_min_margin > 0:
            keep = select(tg.confidence, tg.margin, t.select_min_score, t.select_min_margin)
            tg.weight = tg.weight * keep
        s.targets = tg
        if labels is not None:  # statistics of this batch's labels, stored per unlabeled image
            labels.store(rows, tg, keep, fu, centers, center_set.valid, self.truth)
        if t.center_on_unlabeled:
            use = (tg.label >= 0) & (tg.label < data.num_classes) & (tg.weight > 0)
            s.center_labels[u_pos] = torch.where(use, tg.label, s.center_labels[u_pos])
            s.center_mask[u_pos] = use
        return s

    def _end_epoch(self, epoch: int, labels: EpochLabels, totals: dict[str, float], lr: float, t0: float) -> dict:
        """The epoch's record (mean losses, pseudo-label statistics), its history entry and checkpoint."""
        st, info = self.state, self.info
        labels.all_reduce()
        rec = _means(totals)
        rec.update(type="epoch", epoch=epoch, lr=lr, epoch_time_s=time.time() - t0, time=time.time())
        if self.data.num_unlabeled and self.strategy.uses_unlabeled:
            rec.update(self._pseudo_stats(labels))
        if info.enabled:  # the centers must be identical on every rank: record the largest difference
            rec["centers_rank_diff"] = st.center_set.rank_spread()
        st.history_labels.append(labels.label.cpu().numpy().astype(np.int32))
        st.history_conf.append(labels.conf.cpu().numpy().astype(np.float16))
        st.history_margin.append(labels.margin.cpu().numpy().astype(np.float16))
        st.history_selected.append(labels.selected.cpu().numpy().astype(bool))
        st.epoch = epoch + 1
        self.hooks.on_record(rec)
        self.hooks.on_epoch_end(epoch, self.state_dict())
        return rec

    def _pseudo_stats(self, labels: EpochLabels) -> dict:
        st = self.state
        truth = self.truth
        seen = labels.label >= 0
        n_seen = int(seen.sum())
        out: dict = {"pl_seen": n_seen, "centers_valid": int(st.center_valid.sum())}
        if n_seen == 0:
            return out
        out["pl_mean_conf"] = float(labels.conf[seen].mean())
        out["pl_mean_margin"] = float(labels.margin[seen].mean())
        out["pl_selected_frac"] = float(labels.selected[seen].float().mean())  # utilisation
        out["pl_classes_used"] = int(torch.unique(labels.label[seen]).numel())
        if st.history_labels:
            prev = torch.from_numpy(st.history_labels[-1]).to(labels.label.device)
            both = seen & (prev >= 0)
            changed = int((labels.label[both] != prev[both]).sum())
            out["pl_changed"] = changed
            out["pl_changed_frac"] = changed / max(1, int(both.sum()))
        if truth is not None:
            out["pl_acc"] = float((labels.label[seen].long() == truth[seen]).float().mean())
            out["pl_true_mass"] = float(labels.true_mass[seen].mean())
        return out


def _margins(saved: torch.Tensor | None, conf: list[np.ndarray]) -> list[np.ndarray]:
    """The margin history of a checkpoint, ``[E, N_u]`` rows float16; a checkpoint written before margins were
    kept has none: NaN rows, one per epoch of ``conf``, so the history stays aligned."""
    if saved is not None and saved.numel():
        return [r.numpy().astype(np.float16) for r in saved]
    return [np.full_like(c, np.nan) for c in conf]


def _selected(saved: torch.Tensor | None, labels: list[np.ndarray]) -> list[np.ndarray]:
    """The selection history of a checkpoint, ``[E, N_u]`` rows bool; a checkpoint written before it was kept
    comes from a run without selection, where every image drawn was trained on: its rows are ``labels >= 0``."""
    if saved is not None and saved.numel():
        return [r.numpy().astype(bool) for r in saved]
    return [lab >= 0 for lab in labels]


def _means(s: dict[str, float]) -> dict:
    """Mean per-image losses and labeled accuracy from a window's sums (:meth:`StepStats.sums`, over ranks)."""
    n = max(1.0, s["n"])
    out = {key: s[key] / n for key in LOSSES}
    out["acc"] = s["correct"] / max(1.0, s["n_labeled"])
    return out

