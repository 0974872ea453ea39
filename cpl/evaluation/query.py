"""``cpl query RUN_DIR IMAGE``: rank a finished run's gallery for one image file.

The image is read like an app upload (:func:`cpl.data.images.decode_upload`: type sniffed from the
content, size and pixel limits), resized to the run's input size exactly as the dataset images were,
and passed through the run's newest checkpoint; its L2-normalised pool5 feature is compared with
``features/gallery.npy`` by cosine distance, the distance the run's retrieval lists use.
Runs on the CPU: one image does not need a GPU that training runs may be using.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cpl.config import ConfigError, load_config
from cpl.engine.threads import configured_threads
from cpl.runs.atomic import write_text
from cpl.runs.rundir import RunDir


class QueryError(RuntimeError):
    """Why a query cannot be answered; one line for the person who asked."""


def image_tensor(path: Path, height: int, width: int):
    """The image file as uint8 [1, 3, height, width], resized like :func:`cpl.data.images.load_images`; raises
    :class:`QueryError`."""
    import torch
    from PIL import Image

    from cpl.data.images import UploadError, decode_upload

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise QueryError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        image = decode_upload(data)
    except UploadError as exc:
        raise QueryError(f"{path.name}: {exc}") from None
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())[None]


def run_model(run: RunDir, cfg):
    """(the run's network, a :class:`cpl.models.reid.ReIDNet` with the weights of its newest loadable checkpoint, on
    the CPU, in eval mode; that checkpoint's path); raises :class:`QueryError`."""
    from cpl.engine.checkpoints import TRAIN_PREFIX, CheckpointError, load_latest
    from cpl.models.reid import build_model

    try:
        found = load_latest(run.checkpoints, TRAIN_PREFIX, map_location="cpu")
    except CheckpointError as exc:
        raise QueryError(f"{run.id}: {exc}") from None
    if found is None:
        raise QueryError(f"{run.id}: no checkpoint in {run.checkpoints}")
    state = found[0]["model"]
    # The classifier's width (K, or K + 1 for all-in-one) is read from the checkpoint itself; it does not
    # affect the pool5 feature, but strict loading needs the same shapes.
    num_classes = int(state["classifier.weight"].shape[0])
    model, _ = build_model(cfg.model.backbone, num_classes, cfg.model.dropout, "none",
                           last_stride=cfg.model.last_stride, neck=cfg.model.neck)
    model.load_state_dict(state)
    return model.eval(), found[1]


def run_config(run: RunDir):
    """The run's :class:`cpl.config.Config` from its ``config.yaml``; raises :class:`QueryError`."""
    if not run.config.is_file():
        raise QueryError(f"{run.path}: not a run directory (no config.yaml)")
    try:
        return load_config(run.config)
    except ConfigError as exc:
        raise QueryError(f"{run.config}: {exc}") from None


def rank_gallery(run: RunDir, image: Path, topk: int = 20) -> dict:
    """Top-``topk`` gallery images of ``run`` for the image file ``image``.

    Returns ``{"topk": [{"row", "path", "pid", "camid", "dist"}, ...], "feature_dim": D}``: ``row`` is the
    gallery row (features/gallery.csv), ``path`` as stored there, ``dist`` the cosine distance (1 - cos),
    best first. Raises :class:`QueryError`.
    """
    import torch

    from cpl.engine.features import extract

    if topk < 1:
        raise QueryError(f"--topk must be at least 1, got {topk}")
    cfg = run_config(run)
    gallery_npy, gallery_csv = run.features / "gallery.npy", run.features / "gallery.csv"
    if not gallery_npy.is_file() or not gallery_csv.is_file():
        raise QueryError(f"{run.id}: no gallery features yet (they are written at the end of the run)")
    gallery = np.load(gallery_npy, allow_pickle=False).astype(np.float32)
    rows = pd.read_csv(gallery_csv)
    if len(rows) != len(gallery):
        raise QueryError(f"{run.id}: features/gallery.csv and gallery.npy disagree ({len(rows)} vs {len(gallery)})")
    images = image_tensor(image, cfg.data.height, cfg.data.width)
    model, _ = run_model(run, cfg)
    feat, _ = extract(model, images, torch.device("cpu"), flip=cfg.eval.flip, retrieval=True)
    if feat.shape[1] != gallery.shape[1]:
        raise QueryError(f"{run.id}: the checkpoint's feature has {feat.shape[1]} dimensions, the gallery's "
                         f"{gallery.shape[1]}")
    dist = 1.0 - gallery @ feat[0].numpy()
    order = np.argsort(dist, kind="stable")[:topk]  # ties by gallery row, like the run's lists
    hits = [{"row": int(i), "path": str(rows.path.iat[i]), "pid": int(rows.pid.iat[i]),
             "camid": int(rows.camid.iat[i]), "dist": float(dist[i])} for i in order]
    return {"topk": hits, "feature_dim": int(feat.shape[1])}


def query_main(args: argparse.Namespace) -> int:
    """The ``cpl query`` command: print the result as JSON, or write it to ``--out``; errors exit 2."""
    try:
        with configured_threads(0):
            result = rank_gallery(RunDir(Path(args.run_dir)), Path(args.image), topk=args.topk)
    except QueryError as exc:
        print(f"cpl: error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1)
    if args.out:
        write_text(Path(args.out), text + "\n")
    else:
        print(text)
    return 0
