"""Stage ``unlabeled``, and the two steps of every unlabeled source of :data:`cpl.data.unlabeled_sources.SOURCES`.

A source's ``plan`` runs in stage ``data``: ``(cfg, labels [N_train] int64) -> Plan``, which training rows stay
labeled, which rows or files become the unlabeled images and how many there will be (``dataset.json`` records the
count before any image exists). Its ``build`` runs in stage ``unlabeled``: ``(ctx) -> Unlabeled``, the images, their
files and, where known, their true classes. :data:`BUILDS` holds both steps of each source, by the table's names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cpl import PROG
from cpl.config import Config
from cpl.data.unlabeled_sources import NONE
from cpl.runs.artifacts import write_gan_record, write_unlabeled_csv
from cpl.stages.context import RunContext, RunFailed
from cpl.stages.decoding import decode
from cpl.stages.products import Unlabeled

log = logging.getLogger(PROG)


@dataclass(frozen=True)
class Plan:
    """What stage ``data`` decides for a source: ``keep`` ``[N_l] int64``, the training rows that stay labeled;
    ``hidden`` ``[N_h] int64``, the training rows whose labels are hidden (holdout); ``files``, the image files to
    decode (folder); ``count``, the unlabeled images the source will provide (a GAN's before they are drawn)."""

    keep: np.ndarray
    hidden: np.ndarray
    files: list[str]
    count: int


@dataclass(frozen=True)
class SourceBuild:
    """Both steps of one source: ``plan(cfg, labels) -> Plan`` (stage ``data``) and ``build(ctx) -> Unlabeled``
    (stage ``unlabeled``, after ``ctx.data`` holds the plan)."""

    plan: Callable[[Config, np.ndarray], Plan]
    build: Callable[[RunContext], Unlabeled]


def build_unlabeled(ctx: RunContext) -> None:
    """Stage ``unlabeled``: the unlabeled images (``ctx.unlabeled``); write ``unlabeled.csv`` (+ ``gan.json``)."""
    d = ctx.data
    u = ctx.unlabeled = BUILDS[d.source].build(ctx)
    if ctx.is_main:
        write_unlabeled_csv(ctx.run, u.paths, d.source, u.truth, d.ds.label_to_pid)
    log.info("data: %d train (%d labeled, K=%d), %d query, %d gallery, %d unlabeled (%s)", len(d.labels),
             len(d.keep), d.ds.num_classes, len(d.ds.query), len(d.ds.gallery), len(u.paths), d.source)
    ctx.progress(1.0)


def empty_unlabeled(h: int, w: int) -> Unlabeled:
    """No unlabeled images (``[0, 3, h, w] uint8``): a run without a source, or before stage ``unlabeled``."""
    from cpl.data.image_source import Rows

    return Unlabeled(images=Rows(torch.zeros(0, 3, h, w, dtype=torch.uint8)), paths=[], truth=None)


def _every_row(labels: np.ndarray, count: int = 0, files: list[str] | None = None) -> Plan:
    """A plan that keeps every training row labeled."""
    return Plan(keep=np.arange(len(labels)), hidden=np.zeros(0, dtype=np.int64), files=files or [], count=count)


def _plan_none(cfg: Config, labels: np.ndarray) -> Plan:
    return _every_row(labels)


def _build_none(ctx: RunContext) -> Unlabeled:
    return empty_unlabeled(ctx.cfg.data.height, ctx.cfg.data.width)


def _plan_gan(cfg: Config, labels: np.ndarray) -> Plan:
    return _every_row(labels, count=cfg.unlabeled.num_images)


def _build_gan(ctx: RunContext) -> Unlabeled:
    """``unlabeled.num_images`` DCGAN samples (none for 0), decoded like the dataset's images."""
    if ctx.cfg.unlabeled.num_images == 0:
        return _build_none(ctx)
    return _decoded(ctx, _gan_samples(ctx))


def _plan_folder(cfg: Config, labels: np.ndarray) -> Plan:
    """The folder's image files (at most ``unlabeled.num_images``, 0 = all); a folder without any is an error."""
    from cpl.data.images import list_images

    files = [str(p) for p in list_images(Path(cfg.unlabeled.folder), limit=cfg.unlabeled.num_images)]
    if not files:
        raise RunFailed(f"unlabeled.folder: no images in {cfg.unlabeled.folder}")
    return _every_row(labels, count=len(files), files=files)


def _build_folder(ctx: RunContext) -> Unlabeled:
    return _decoded(ctx, ctx.data.folder_files)


def _decoded(ctx: RunContext, paths: list[str]) -> Unlabeled:
    """The image files ``paths`` decoded like the dataset's images (:func:`cpl.stages.decoding.decode`), no true
    class."""
    from cpl.data.image_source import as_source

    return Unlabeled(images=as_source(decode(ctx, paths)), paths=paths, truth=None)


def _plan_holdout(cfg: Config, labels: np.ndarray) -> Plan:
    """``unlabeled.holdout_fraction`` of each identity's training rows hidden (seeded by the run seed)."""
    from cpl.data.holdout import holdout_split

    keep, hidden = holdout_split(labels, cfg.unlabeled.holdout_fraction, cfg.seed)
    return Plan(keep=keep, hidden=hidden, files=[], count=len(hidden))


def _build_holdout(ctx: RunContext) -> Unlabeled:
    """The hidden training rows (rows of the decoded training images, not a copy of them) and their true classes."""
    from cpl.data.image_source import Rows

    d = ctx.data
    return Unlabeled(images=Rows(d.train_imgs, d.hidden), paths=[d.ds.train.paths[i] for i in d.hidden],
                     truth=d.labels[d.hidden])


def _gan_samples(ctx: RunContext) -> list[str]:
    """Train (or reuse) the DCGAN and sample ``unlabeled.num_images`` images; returns their files (every rank)."""
    from cpl.engine import dist
    from cpl.gan import ensure_samples, list_samples
    from cpl.gan.cache import read_info

    cfg = ctx.cfg
    n = cfg.unlabeled.num_images
    ctx.check_disk(n * 3 * cfg.gan.image_size ** 2, f"{n} GAN samples")
    ctx.progress(0.0, "DCGAN: training or reusing a cached one")

    def on_progress(rec: dict) -> None:
        import time

        rec = {"type": "gan", **rec, "time": time.time()}
        ctx.record(rec)
        if rec["type"] == "sampling":
            done = rec.get("done", 0) / max(1, rec.get("total", n))
            ctx.progress(0.9 + 0.1 * done, f"sampling GAN images: {rec.get('done', 0)}/{n}")
            return
        frac = (rec.get("epoch", 0) + rec.get("step", 0) / max(1, rec.get("steps", 1))) / cfg.gan.epochs
        ctx.progress(0.9 * min(1.0, frac), f"DCGAN epoch {rec.get('epoch', 0) + 1}/{cfg.gan.epochs}",
                     epoch=rec.get("epoch", 0), epochs=cfg.gan.epochs)

    folder = None
    if ctx.is_main:
        folder = ensure_samples(ctx.data.train_imgs, ctx.data.ds.fingerprint(), cfg.gan, n,
                                ctx.run.cache_root / "gan", seed=cfg.gan.seed, device=ctx.device,
                                on_progress=on_progress, should_stop=ctx.should_stop)
        info = write_gan_record(ctx.run, read_info(folder.parent) or {})
        q = info.get("quality")
        if q:
            log.info("DCGAN %s: Fréchet distance %.1f to the real images (real-vs-real floor %.1f, %d images a side)",
                     info.get("key"), q["fd"], q["fd_floor"], q["n"])
    dist.barrier()
    folder = dist.broadcast_object(str(folder) if folder else None)
    return [str(p) for p in list_samples(Path(folder), n)]


#: Both steps of every source, by the names of :data:`cpl.data.unlabeled_sources.SOURCES`.
BUILDS: dict[str, SourceBuild] = {
    "gan": SourceBuild(_plan_gan, _build_gan),
    "folder": SourceBuild(_plan_folder, _build_folder),
    "holdout": SourceBuild(_plan_holdout, _build_holdout),
    NONE: SourceBuild(_plan_none, _build_none),
}
