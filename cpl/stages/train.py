"""Stage ``train``: the re-ID network trained with the run's method, checkpointed every epoch.

A resumed run continues from its newest checkpoint (model, optimizer, centers, RNG states, pseudo-label
history): the result is bit-identical to an uninterrupted run on the CPU (tests/test_faults.py).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from cpl import PROG
from cpl.runs import faults
from cpl.runs.atomic import write_npz
from cpl.stages.context import RunContext, RunFailed
from cpl.stages.products import Trained

log = logging.getLogger(PROG)


def _state_bytes(state: dict) -> int:
    """Bytes of every tensor in a (nested) state dict: what a checkpoint of it will take on disk."""
    total = 0
    for v in state.values():
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, dict):
            total += _state_bytes(v)
    return total


def _build(ctx: RunContext, strategy):
    """The network (identical initial weights on every rank and every resume) and its training data."""
    from cpl.data.image_source import Concat, Rows
    from cpl.engine.trainer import TrainData
    from cpl.models.reid import build_model
    from cpl.models.weights import WeightsNotFound

    cfg, d, u = ctx.cfg, ctx.data, ctx.unlabeled
    k = d.ds.num_classes
    torch.manual_seed(cfg.seed)
    try:
        model, weights = build_model(cfg.model.backbone, k + (1 if strategy.extra_class else 0), cfg.model.dropout,
                                     cfg.model.pretrained, last_stride=cfg.model.last_stride, neck=cfg.model.neck)
    except WeightsNotFound as exc:  # the weights were there at launch and are gone now
        raise RunFailed(str(exc), "install the weights or set model.pretrained=none, then resume") from None
    log.info("model: %s, %s", cfg.model.backbone, weights.describe())
    # Rows of the decoded splits, read per batch: no copy of the training set (with data.cache=disk each batch is read
    # from the cache file, so host memory does not grow with the dataset).
    labeled = Rows(d.train_imgs, d.keep)
    images = Concat([labeled, u.images]) if strategy.uses_unlabeled else labeled
    truth = torch.from_numpy(u.truth) if u.truth is not None and strategy.uses_unlabeled else None
    # A labeled-only control still counts its source's images into an epoch of train.epoch_length=union.
    set_aside = 0 if strategy.uses_unlabeled else d.num_unlabeled
    data = TrainData(images=images, labels=torch.from_numpy(d.labels[d.keep]), num_labeled=len(d.keep),
                     num_classes=k, unlabeled_truth=truth, num_set_aside=set_aside)
    return model, weights, data


def train(ctx: RunContext) -> None:
    """Stage ``train``: build, resume from the newest checkpoint if any, fit (``ctx.trained``); write
    ``checkpoints/``, ``pseudo_history.npz`` and the pseudo-label diagnostics every epoch."""
    from cpl.engine.checkpoints import TRAIN_PREFIX, load_latest, save_checkpoint
    from cpl.engine.trainer import Hooks, Trainer
    from cpl.pseudo import get_strategy

    cfg, run = ctx.cfg, ctx.run
    strategy = get_strategy(cfg.train)
    model, weights, data = _build(ctx, strategy)
    epochs = cfg.train.epochs
    t_start = time.time()
    bar = None

    def on_progress(epoch: int, it: int, iters: int) -> None:
        done = (epoch + it / iters) / epochs
        ctx.progress(done, f"epoch {epoch + 1}/{epochs}, iteration {it}/{iters}", epoch=epoch, epochs=epochs,
                     iter=it, iters=iters)
        if bar is not None:
            bar.n = round(done * bar.total, 2)
            bar.refresh()

    stats: list = []  # the diagnostics rows of the epochs so far (each is computed once)

    def on_epoch_end(epoch: int, state: dict) -> None:
        if ctx.is_main:
            ctx.check_disk(_state_bytes(state), "a checkpoint")
            save_checkpoint(run.checkpoints, TRAIN_PREFIX, state, epoch + 1)
            if trainer.state.history_labels:
                stats[:] = write_history(ctx, trainer.state, data.num_classes, strategy.uses_unlabeled, stats)

    trainer = Trainer(cfg, data, model, strategy, ctx.device, ctx.dist,
                      Hooks(on_record=ctx.record, on_epoch_end=on_epoch_end, on_progress=on_progress,
                            should_stop=ctx.should_stop))
    found = load_latest(run.checkpoints, TRAIN_PREFIX, map_location=ctx.device)
    if found:
        state, path = found
        trainer.load_state_dict(state)
        log.info("resuming from %s (epoch %d/%d)", path.name, trainer.state.epoch, epochs)
    done0 = trainer.state.epoch / epochs
    if ctx.progress_bar:
        from tqdm import tqdm

        bar = tqdm(total=epochs, initial=trainer.state.epoch, desc=f"train {cfg.train.method}", unit="epoch",
                   bar_format="{l_bar}{bar}| {n:.1f}/{total} epochs [{elapsed}<{remaining}]")
    ctx.progress(done0, f"training {cfg.train.method} on {ctx.device}", epochs=epochs)
    _log_plan(cfg, data, strategy, trainer)
    try:
        trainer.fit()
    finally:
        if bar is not None:
            bar.close()
    ctx.trained = Trained(trainer=trainer, strategy=strategy, weights=weights, time_s=time.time() - t_start)
    faults.point("train-end")


def write_history(ctx: RunContext, state, k: int, uses_unlabeled: bool, known: list) -> list:
    """``pseudo_history.npz`` from the trainer's ``state`` (TrainState) and, for a method that trains on unlabeled
    images, the diagnostics of that history over ``k`` identities (``pseudo_stats.csv``, ``pseudo_identities.npz``,
    ``data_map.csv``): rewritten every epoch, so the app follows them live. ``known``: the per-epoch rows of the
    previous call (only new epochs are computed); returns them all."""
    from cpl.pseudo import diagnostics

    labels, conf, margin, selected = (np.stack(state.history_labels), np.stack(state.history_conf),
                                      np.stack(state.history_margin), np.stack(state.history_selected))
    write_npz(ctx.run.pseudo_history, labels=labels, confidence=conf, margin=margin, selected=selected)
    if not (uses_unlabeled and labels.shape[1]):
        return []
    t = ctx.cfg.train
    selecting = t.select_min_score > 0 or t.select_min_margin > 0  # else "selected" is every image drawn
    history = diagnostics.History(labels=labels, conf=conf, margin=margin, truth=ctx.unlabeled.truth,
                                  selected=selected if selecting else None)
    return diagnostics.write(ctx.run, history, k, known)


def _log_plan(cfg, data, strategy, trainer) -> None:
    t = cfg.train
    batch = (f"batch {t.batch_size // t.pk_instances} identities x {t.pk_instances} + "
             f"{trainer.unlabeled_per_batch} unlabeled" if t.sampler == "pk" else f"batch {t.batch_size}")
    log.info("training %s: %d labeled + %d unlabeled images, %d epochs x %d iterations, %s", t.method,
             data.num_labeled, data.num_unlabeled if strategy.uses_unlabeled else 0, t.epochs,
             trainer.iters_per_epoch(), batch)
