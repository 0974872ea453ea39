"""``cpl actmap RUN --query Q``: activation maps (:mod:`cpl.models.actmap`) of a query and its top-k gallery images
under the run's final network, written as one PNG strip: the query (blue frame), then its top-k framed green
(true match) or red, as on the ranked-list sheet (protocol-excluded gallery images skipped). CPU only."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cpl.runs.atomic import write_bytes
from cpl.runs.rundir import RunDir
from cpl.views.sheet import BLUE, GREEN, RED, SPACING, SheetError, lists_of, load_lists, protocol_row


def overlays(run: RunDir, paths: list[str]) -> list[np.ndarray]:
    """torchreid-style overlays [H, W, 3] uint8 of the images ``paths`` (as stored in the run's tables), at the
    run's input size, under its newest checkpoint."""
    import torch

    from cpl.data.transforms import normalize
    from cpl.evaluation.query import image_tensor, run_config, run_model
    from cpl.models.actmap import activation_maps, last_feature_map, overlay

    cfg = run_config(run)
    model, _ = run_model(run, cfg)
    images = torch.cat([image_tensor(run.resolve(p), cfg.data.height, cfg.data.width) for p in paths])
    maps = activation_maps(last_feature_map(model, normalize(images)), cfg.data.height, cfg.data.width)
    return [overlay(img.permute(1, 2, 0).numpy(), am.numpy()) for img, am in zip(images, maps)]


def strip(run: RunDir, qi: int, topk: int, rerank: bool = False) -> Image.Image:
    """The PNG strip of query row ``qi`` and its ``topk`` protocol-ranked gallery images (RGB)."""
    ret, query, gallery = load_lists(run)
    if not 0 <= qi < len(query):
        raise SheetError(f"no query {qi} (the run has {len(query)}, rows 0..{len(query) - 1})")
    index, _, _ = lists_of(ret, rerank)
    q = query.iloc[qi]
    hits = protocol_row(q, index[qi], gallery, topk)
    pictures = overlays(run, [q.path] + [gallery.path.iat[g] for g, _ in hits])
    colours = [BLUE] + [GREEN if match else RED for _, match in hits]
    tiles = [ImageOps.expand(Image.fromarray(p), border=4, fill=c) for p, c in zip(pictures, colours)]
    w, h = tiles[0].size
    out = Image.new("RGB", (len(tiles) * (w + SPACING), h), "white")
    for i, tile in enumerate(tiles):
        out.paste(tile, (i * (w + SPACING), 0))
    return out


def actmap_path(run: RunDir, qi: int, topk: int, rerank: bool) -> Path:
    """Where ``cpl actmap`` writes by default: ``actmaps/q<Q>-top<k>[-rr].png``."""
    return run.actmaps / f"q{qi}-top{topk}{'-rr' if rerank else ''}.png"


def actmap_main(args: argparse.Namespace) -> int:
    """The ``cpl actmap`` command: write the strip and print its path; errors exit 2."""
    from cpl.evaluation.query import QueryError

    run = RunDir(Path(args.run_dir))
    try:
        if args.topk < 0:
            raise SheetError(f"--topk must be at least 0, got {args.topk}")
        buf = io.BytesIO()
        strip(run, args.query, args.topk, args.rerank).save(buf, format="PNG")
    except (SheetError, QueryError) as exc:
        print(f"cpl: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else actmap_path(run, args.query, args.topk, args.rerank)
    write_bytes(out, buf.getvalue())
    print(out)
    return 0


def add_actmap_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``cpl actmap``."""
    p.add_argument("run_dir")
    p.add_argument("--query", type=int, required=True, help="query row (features/query.csv)")
    p.add_argument("--topk", type=int, default=5, help="gallery images after the query (default 5)")
    p.add_argument("--rerank", action="store_true", help="the top-k of the k-reciprocal re-ranked list")
    p.add_argument("--out", help="PNG to write (default: RUN/actmaps/q<Q>-top<k>.png)")
