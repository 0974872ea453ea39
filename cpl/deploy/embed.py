"""``cpl embed MODEL_DIR IMAGES``: features of every image in a folder with an exported model (``cpl export``)
through ONNX Runtime. Imports numpy, PIL and onnxruntime only: no torch, no training code.

Writes ``OUT.npy`` ([N, D] float32, L2-normalised, one row per image) and ``OUT.csv`` (``row,path``, the image
order: sorted paths).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cpl.data.images import ImageError, decode_resized, list_images
from cpl.runs.atomic import write_npy, write_text

BATCH = 64


class EmbedError(RuntimeError):
    """Why a folder cannot be embedded; one line for the person who asked."""


def read_metadata(model_dir: Path) -> dict:
    """``model.json`` of an exported model folder; raises :class:`EmbedError`."""
    try:
        meta = json.loads((model_dir / "model.json").read_text())
    except (OSError, ValueError) as exc:
        raise EmbedError(f"{model_dir}: no readable model.json ({exc}); write one with `cpl export RUN`") from None
    missing = {"model", "input", "input_size", "mean", "std", "feature_dim"} - set(meta)
    if missing:
        raise EmbedError(f"{model_dir}/model.json lacks {', '.join(sorted(missing))}")
    return meta


def preprocess(path: Path, meta: dict) -> np.ndarray:
    """One image file → [3, H, W] float32 as ``model.json`` says (RGB, resized, /255, minus mean, over std)."""
    h, w = meta["input_size"]
    rgb = decode_resized(path, h, w).astype(np.float32) / 255.0
    mean, std = np.asarray(meta["mean"], np.float32), np.asarray(meta["std"], np.float32)
    return ((rgb - mean) / std).transpose(2, 0, 1)


def session(model_dir: Path, meta: dict):
    """An ONNX Runtime inference session (CPU) of the folder's model; raises :class:`EmbedError`."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise EmbedError("onnxruntime is not installed: pip install 'cpl-studio[onnx]'") from None
    return ort.InferenceSession(str(model_dir / meta["model"]), providers=["CPUExecutionProvider"])


def embed_paths(model_dir: Path, paths: list[Path], batch: int = BATCH) -> np.ndarray:
    """Features [N, D] float32 of the image files ``paths`` under the exported model in ``model_dir``."""
    meta = read_metadata(model_dir)
    sess = session(model_dir, meta)
    out = np.zeros((len(paths), int(meta["feature_dim"])), dtype=np.float32)
    for start in range(0, len(paths), batch):
        try:
            x = np.stack([preprocess(p, meta) for p in paths[start:start + batch]])
        except ImageError as exc:
            raise EmbedError(str(exc)) from None
        out[start:start + len(x)] = sess.run(None, {meta["input"]: x})[0]
    return out


def embed_main(args: argparse.Namespace) -> int:
    """The ``cpl embed`` command: write ``--out`` .npy and .csv and print a summary; errors exit 2."""
    model_dir, folder = Path(args.model_dir), Path(args.images)
    try:
        if not folder.is_dir():
            raise EmbedError(f"{folder}: not a folder")
        paths = list_images(folder)
        if not paths:
            raise EmbedError(f"{folder}: no images")
        feats = embed_paths(model_dir, paths, args.batch_size)
    except EmbedError as exc:
        print(f"cpl: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out).with_suffix("")
    write_npy(out.with_suffix(".npy"), feats)
    table = pd.DataFrame({"row": np.arange(len(paths)), "path": [str(p) for p in paths]})
    write_text(out.with_suffix(".csv"), table.to_csv(index=False))
    print(f"{len(paths)} images → {out.with_suffix('.npy')} [{feats.shape[0]}, {feats.shape[1]}] float32")
    return 0


def add_embed_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``cpl embed``."""
    p.add_argument("model_dir", help="a folder written by `cpl export` (model.onnx + model.json)")
    p.add_argument("images", help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="output name: writes OUT.npy (features) and OUT.csv (paths)")
    p.add_argument("--batch-size", type=int, default=BATCH)
