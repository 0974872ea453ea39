"""Stages ``data`` and ``unlabeled``: the labeled dataset decoded (into memory, or with ``data.cache: disk`` into the
cache on disk, read back by row), and the unlabeled set beside it.

``data`` checks and decodes the dataset (any format of :data:`cpl.data.formats.FORMATS`) and decides which
training images are labeled (all of them, or all but a holdout) and where the unlabeled images
come from; it writes ``dataset.json``.
``unlabeled`` produces those images: a DCGAN trained (or reused from the cache) and sampled, a folder decoded,
or the held-out training images; it writes ``unlabeled.csv`` and, for a GAN, ``gan.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from cpl import PROG
from cpl.runs import faults
from cpl.runs.artifacts import write_gan_record, write_unlabeled_csv
from cpl.runs.atomic import write_json
from cpl.stages.context import RunContext, RunFailed
from cpl.stages.products import LoadedData, Unlabeled

log = logging.getLogger(PROG)


def load_data(ctx: RunContext) -> None:
    """Stage ``data``: check, decode and split the dataset (``ctx.data``); write ``dataset.json``."""
    from cpl.config import format_options, unused_format_options
    from cpl.data.check import check_dataset, raise_if_invalid
    from cpl.data.formats import SYNTHETIC, resolve

    cfg = ctx.cfg
    ctx.progress(0.0, "checking the dataset")
    root = Path(cfg.data.root)
    if cfg.data.kind == SYNTHETIC:
        from cpl.synth import ensure

        s = cfg.data.synthetic
        log.info("synthetic dataset at %s (ids=%d, seed=%d)", root, s.ids, s.seed)
        ensure(root, ids=s.ids, seed=s.seed, cameras=s.cameras)
    fmt = resolve(root, cfg.data.kind).name
    unused = unused_format_options(cfg.data, fmt)
    if unused:
        raise RunFailed(f"{unused}: only used by that format, but {root} is read as {fmt}; remove the setting")
    options = format_options(cfg.data, fmt)
    report = check_dataset(root, kind=fmt, options=options, decode=False)
    raise_if_invalid(report)
    for w in report.warnings:
        log.warning("dataset: %s", w)
    ds = open_dataset(cfg, fmt)
    h, w = cfg.data.height, cfg.data.width
    ctx.progress(0.2, f"decoding {len(ds.train) + len(ds.query) + len(ds.gallery)} images")

    train_imgs = decode(ctx, ds.train.paths)
    ctx.progress(0.6)
    query_imgs = decode(ctx, ds.query.paths)
    gallery_imgs = query_imgs if ds.gallery.paths == ds.query.paths else decode(ctx, ds.gallery.paths)
    labels = np.asarray(ds.train_labels, dtype=np.int64)
    faults.point("data")
    ctx.data = _split(ctx, ds, labels, train_imgs, query_imgs, gallery_imgs)
    ctx.unlabeled = _empty(h, w)  # until the unlabeled stage, if the run has one, fills it
    if ctx.is_main:
        write_json(ctx.run.dataset, _dataset_record(ctx.data, root, report.warnings, cfg.unlabeled.num_images,
                                                        cfg.uses_unlabeled))
    ctx.progress(1.0)


def open_dataset(cfg, fmt: str | None = None):
    """The run's dataset as stage ``data`` lists it, no image decoded (a :class:`cpl.data.dataset.ReidDataset`): format
    ``fmt`` (default: ``data.kind``, recognised by layout for ``auto``), its ``data.<format>`` options, the split caps
    and the seed. Tools that must see the same images as a run (its GAN cache key is their fingerprint) call it too."""
    from cpl.config import format_options
    from cpl.data.formats import load_dataset, resolve

    fmt = fmt or resolve(cfg.data.root, cfg.data.kind).name
    return load_dataset(cfg.data.root, fmt, format_options(cfg.data, fmt), max_train=cfg.data.max_train_images,
                        max_query=cfg.data.max_query_images, max_gallery=cfg.data.max_gallery_images, seed=cfg.seed)


def decode(ctx: RunContext, paths):
    """``[N, 3, H, W] uint8`` of the image files ``paths`` at the run's input size: a tensor decoded into memory, or
    with ``data.cache: disk`` an image source on the runs root's cache (decoded and written there on first use,
    then read by row: cpl/data/image_cache.py)."""
    from cpl.data.image_cache import cached_images
    from cpl.data.images import load_images

    h, w = ctx.cfg.data.height, ctx.cfg.data.width
    if ctx.cfg.data.cache == "disk":
        return cached_images(paths, h, w, ctx.run.cache_root / "images")
    return load_images(paths, h, w)


def _split(ctx: RunContext, ds, labels: np.ndarray, train_imgs, query_imgs, gallery_imgs) -> LoadedData:
    """Which training images stay labeled, and where the unlabeled ones come from (the splits' images as
    :func:`decode` made them)."""
    from cpl.data.holdout import holdout_split
    from cpl.data.images import list_images

    cfg = ctx.cfg
    # A labeled-only method reads its source only as a control: holdout hides the rows a holdout run hides, and
    # train.epoch_length=union counts the source's images (Config.sets_aside_unlabeled); it trains on neither.
    src = cfg.unlabeled.source if cfg.uses_unlabeled or cfg.sets_aside_unlabeled else "none"
    keep, hidden, files = np.arange(len(labels)), np.zeros(0, dtype=np.int64), []
    if src == "holdout":
        keep, hidden = holdout_split(labels, cfg.unlabeled.holdout_fraction, cfg.seed)
    elif src == "folder":
        files = [str(p) for p in list_images(Path(cfg.unlabeled.folder), limit=cfg.unlabeled.num_images)]
        if not files:
            raise RunFailed(f"unlabeled.folder: no images in {cfg.unlabeled.folder}")
    return LoadedData(ds=ds, labels=labels, keep=keep, train_imgs=train_imgs, query_imgs=query_imgs,
                      gallery_imgs=gallery_imgs, source=src, hidden=hidden, folder_files=files)


def source_images(d: LoadedData, num_gan: int) -> int:
    """Images of the run's unlabeled source (``num_gan``: the GAN samples it draws), 0 without one."""
    return {"holdout": len(d.hidden), "folder": len(d.folder_files), "gan": num_gan}.get(d.source, 0)


def _dataset_record(d: LoadedData, root: Path, warnings: list[str], num_gan: int,
                    trained_on_unlabeled: bool) -> dict:
    """``dataset.json``: the splits, the labeled/unlabeled counts (``unlabeled_trained`` false: a control that sets
    its source aside) and the dataset's warnings."""
    ds = d.ds
    return {
        "root": str(root.resolve()), "format": ds.format, "protocol": ds.protocol, "num_classes": ds.num_classes,
        "fingerprint": ds.fingerprint(),
        "splits": {name: {"images": len(sp), "ids": int(len(np.unique(sp.pids))),
                          "cameras": len(sp.cameras)}
                   for name, sp in (("train", ds.train), ("query", ds.query), ("gallery", ds.gallery))},
        "labeled_train_images": int(len(d.keep)), "unlabeled_source": d.source,
        "unlabeled_images": source_images(d, num_gan), "unlabeled_trained": trained_on_unlabeled,
        "warnings": list(warnings),
    }


def build_unlabeled(ctx: RunContext) -> None:
    """Stage ``unlabeled``: the unlabeled images (``ctx.unlabeled``); write ``unlabeled.csv`` (+ ``gan.json``)."""
    from cpl.data.image_source import Rows, as_source

    d, cfg = ctx.data, ctx.cfg
    h, w = cfg.data.height, cfg.data.width
    images, paths, truth = _empty(h, w).images, [], None
    if d.source == "holdout":  # rows of the training images, not a copy of them
        images, truth = Rows(d.train_imgs, d.hidden), d.labels[d.hidden]
        paths = [d.ds.train.paths[i] for i in d.hidden]
    elif d.source == "folder":
        paths = d.folder_files
        images = as_source(decode(ctx, paths))
    elif d.source == "gan" and cfg.unlabeled.num_images > 0:
        paths = _gan_samples(ctx)
        images = as_source(decode(ctx, paths))
    ctx.unlabeled = Unlabeled(images=images, paths=paths, truth=truth)
    if ctx.is_main:
        write_unlabeled_csv(ctx.run, paths, d.source, truth, d.ds.label_to_pid)
    log.info("data: %d train (%d labeled, K=%d), %d query, %d gallery, %d unlabeled (%s)", len(d.labels),
             len(d.keep), d.ds.num_classes, len(d.ds.query), len(d.ds.gallery), len(paths), d.source)
    ctx.progress(1.0)


def _empty(h: int, w: int) -> Unlabeled:
    from cpl.data.image_source import Rows

    return Unlabeled(images=Rows(torch.zeros(0, 3, h, w, dtype=torch.uint8)), paths=[], truth=None)


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
