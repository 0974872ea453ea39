"""How hard a Market-layout dataset is for hand-crafted features: no CNN, numpy only.

Hand-crafted features, each ranked by Euclidean distance under the Market-1501 protocol:

* ``pixels``: the whole image shrunk to 16 x 8 RGB, i.e. the layout of colours;
* ``histogram``: a joint 8 x 8 x 8 RGB colour histogram of the central region (the middle half of
  the width, all but the top and bottom 1/16 of the height), where a detector puts the person:
  the foreground prior of classic descriptors such as SDALF;
* ``histogram_full``: the same histogram over the whole crop, dominated by each camera's background.

Used by the tests and ``docs/synthetic-dataset.md`` to show that the synthetic dataset is neither
trivial nor random. Run ``python tools/synth_difficulty.py DIR`` to print the table for a folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from cpl.data.market import parse_name


def load_folder(folder: str | Path, size: tuple[int, int] = (64, 128)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, pids and camera ids of one folder, sorted by file name.

    Returns ``images [N, H, W, 3] uint8`` resized to ``size`` = (width, height), ``pids [N] int64``,
    ``cams [N] int64``.
    """
    files = sorted(Path(folder).glob("*.jpg"))
    images = np.stack([np.asarray(Image.open(f).convert("RGB").resize(size, Image.BILINEAR)) for f in files])
    labels = np.array([parse_name(f.name) for f in files], dtype=np.int64)
    return images, labels[:, 0], labels[:, 1]


def pixel_features(images: np.ndarray) -> np.ndarray:
    """[N, 384] float32: 16 x 8 block means of ``images [N, H, W, 3] uint8`` (H, W multiples of 16, 8), in [0, 1]."""
    n, h, w, _ = images.shape
    blocks = images.reshape(n, 16, h // 16, 8, w // 8, 3).astype(np.float32).mean(axis=(2, 4))
    return blocks.reshape(n, -1) / 255.0


def histogram_features(images: np.ndarray, bins: int = 8) -> np.ndarray:
    """[N, bins**3] float32: joint RGB histogram of each image, normalised to sum to 1."""
    n = images.shape[0]
    images = np.ascontiguousarray(images)
    q = (images.astype(np.int64) * bins) // 256
    code = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    offsets = np.arange(n, dtype=np.int64)[:, None] * bins ** 3
    counts = np.bincount((code.reshape(n, -1) + offsets).ravel(), minlength=n * bins ** 3)
    hist = counts.reshape(n, bins ** 3).astype(np.float32)
    return hist / hist.sum(axis=1, keepdims=True)


def centre_histogram_features(images: np.ndarray, bins: int = 8) -> np.ndarray:
    """[N, bins**3] float32: :func:`histogram_features` of the central region of ``images [N, H, W, 3]``."""
    _, h, w, _ = images.shape
    return histogram_features(images[:, h // 16:h - h // 16, w // 4:w - w // 4], bins)


def market_rank1_map(qf: np.ndarray, q_pids: np.ndarray, q_cams: np.ndarray, gf: np.ndarray, g_pids: np.ndarray,
                     g_cams: np.ndarray) -> dict[str, float]:
    """Rank-1, mAP (via :func:`cpl.evaluation.evaluate`, Market-1501 protocol) and the chance rank-1, in
    percent, of Euclidean retrieval with ``qf [Q, D]`` and ``gf [G, D]``.

    ``chance_rank1`` is the expected rank-1 of a random ranking: per query, the share of valid gallery
    images (not junk, not same identity and camera) that match, averaged over queries with a match.
    """
    from cpl.evaluation import evaluate

    d = (qf ** 2).sum(1)[:, None] + (gf ** 2).sum(1)[None, :] - 2.0 * qf @ gf.T
    res = evaluate(d.astype(np.float32), q_pids, g_pids, q_cams, g_cams)
    valid = ~((g_pids[None, :] == q_pids[:, None]) & (g_cams[None, :] == q_cams[:, None])) & (g_pids[None, :] != -1)
    match = (g_pids[None, :] == q_pids[:, None]) & valid
    has = match.any(1)
    chance = match[has].sum(1) / valid[has].sum(1)
    return {"rank1": 100 * float(res["cmc"][0]), "mAP": 100 * float(res["mAP"]),
            "chance_rank1": 100 * float(chance.mean()), "queries": int(has.sum())}


def difficulty(root: str | Path) -> dict[str, dict[str, float]]:
    """``{feature name: market_rank1_map(...)}`` for the query and bounding_box_test folders of ``root``."""
    q_img, q_pid, q_cam = load_folder(Path(root) / "query")
    g_img, g_pid, g_cam = load_folder(Path(root) / "bounding_box_test")
    return {name: market_rank1_map(fn(q_img), q_pid, q_cam, fn(g_img), g_pid, g_cam)
            for name, fn in (("pixels", pixel_features), ("histogram", centre_histogram_features),
                             ("histogram_full", histogram_features))}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tools/synth_difficulty.py DATASET_DIR", file=sys.stderr)
        return 2
    for name, r in difficulty(argv[0]).items():
        print(f"{name:14s} rank-1 {r['rank1']:5.1f}%  mAP {r['mAP']:5.1f}%  "
              f"(chance {r['chance_rank1']:.1f}%, {r['queries']} queries)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
