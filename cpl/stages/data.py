"""Stage ``data``: the labeled dataset decoded (into memory, or with ``data.cache: disk`` into the cache on disk,
read back by row).

It checks and decodes the dataset (any format of :data:`cpl.data.formats.FORMATS`) and, by the plan of the run's
unlabeled source (:mod:`cpl.stages.unlabeled`), decides which training images are labeled (all of them, or all but
a holdout) and where the unlabeled images come from; it writes ``dataset.json``. Stage ``unlabeled``
(:mod:`cpl.stages.unlabeled`) then produces those images.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cpl import PROG
from cpl.runs import faults
from cpl.runs.atomic import write_json
from cpl.stages.context import RunContext, RunFailed
from cpl.stages.decoding import decode
from cpl.stages.products import LoadedData
from cpl.stages.unlabeled import BUILDS, empty_unlabeled

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
    ctx.unlabeled = empty_unlabeled(h, w)  # until the unlabeled stage, if the run has one, fills it
    if ctx.is_main:
        write_json(ctx.run.dataset, _dataset_record(ctx.data, root, report.warnings, cfg.uses_unlabeled))
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


def _split(ctx: RunContext, ds, labels: np.ndarray, train_imgs, query_imgs, gallery_imgs) -> LoadedData:
    """Which training images stay labeled, and where the unlabeled ones come from (the splits' images as
    :func:`decode` made them): the plan of the run's unlabeled source."""
    from cpl.data.unlabeled_sources import NONE

    cfg = ctx.cfg
    # A labeled-only method reads its source only as a control: holdout hides the rows a holdout run hides, and
    # train.epoch_length=union counts the source's images (Config.sets_aside_unlabeled); it trains on neither.
    src = cfg.unlabeled.source if cfg.uses_unlabeled or cfg.sets_aside_unlabeled else NONE
    plan = BUILDS[src].plan(cfg, labels)
    return LoadedData(ds=ds, labels=labels, keep=plan.keep, train_imgs=train_imgs, query_imgs=query_imgs,
                      gallery_imgs=gallery_imgs, source=src, hidden=plan.hidden, folder_files=plan.files,
                      num_unlabeled=plan.count)


def _dataset_record(d: LoadedData, root: Path, warnings: list[str], trained_on_unlabeled: bool) -> dict:
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
        "unlabeled_images": d.num_unlabeled, "unlabeled_trained": trained_on_unlabeled,
        "warnings": list(warnings),
    }
