"""Host memory and speed of the data path on an MSMT17-sized dataset: everything in memory against streaming from
the disk cache.

    python benchmarks/data_memory.py --scale 0.02 --steps 5 --extract 256     # 2 % of MSMT17, a few minutes
    python benchmarks/data_memory.py --scale 1 --workdir /big/disk            # MSMT17-sized: 126,441 images

Writes a dataset in the MSMT17 V1 layout (list files, train/ + test/, 15 cameras, MSMT17's split sizes and identity
counts times ``--scale``: 4,101 identities, 32,621 train / 11,659 query / 82,161 gallery images at 1). Every image
file is a hard link to one of 32 rendered 128 x 64 JPEG crops (only the layout and the sizes matter; decoding
costs what a real crop's does), so the full size is written in about a minute. Then, in a fresh process per
setting, it runs the stages' data path and measures each phase:

* ``decode``: load the dataset and decode its three splits as stage ``data`` does (resized to 256 x 128);
* ``train``: ``--steps`` training steps (``Trainer.train_epoch`` capped, baseline method, ``--backbone`` from random
  weights, batch ``--batch``, one thread) on the training split as stage ``train`` reads it; img/s per image;
* ``extract``: the network's features of the first ``--extract`` gallery images (img/s), then a pass over every
  query and gallery image with a probe network that reads each pixel and costs nothing (the data path alone);
* ``evaluate``: CMC/mAP, top-k and pair distances of random L2-normalised features of the network's size for
  every query against every gallery image, with the dataset's identities and cameras;
* ``rerank``: k-reciprocal re-ranking (``eval.rerank``, the reference's k1 = 20, k2 = 6, lambda = 0.3) of the same
  features, then CMC/mAP and top-k of the re-ranked distances.

Settings: ``memory`` (before: every split decoded into RAM, the training set as one concatenated tensor, the whole
query x gallery distance matrix, the whole re-ranked matrix) and ``disk`` (after: the disk cache, first use and
cache present, images read by row from its files, evaluation and re-ranking over blocks of queries). A setting
whose estimated memory exceeds ``--max-gib`` is reported as not run. Per phase: peak anonymous memory (``RssAnon``
sampled every 20 ms: what the kernel cannot drop) and the resident high-water mark (``VmHWM``, reset before each
phase; the disk cache is read with ``pread``, so its pages are page cache, not part of it).
"""

from __future__ import annotations

import argparse
import ctypes
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

# MSMT17's published split sizes and identities (Wei et al., CVPR 2018); train and val share their 1,041 identities
MSMT17 = {"train": (30_248, 1_041), "val": (2_373, 1_041), "query": (11_659, 3_060), "gallery": (82_161, 3_060)}
CAMERAS = 15
SETTINGS = ("memory", "disk", "disk")  # disk twice: first use decodes and writes the cache, then it is mapped


def write_msmt17(root: Path, scale: float, seed: int = 0) -> int:
    """An MSMT17-V1-layout dataset of MSMT17's split sizes x ``scale`` in ``root``, every file a hard link to one of
    32 rendered crops; returns its image count."""
    rng = np.random.default_rng(seed)
    crops = root / ".crops"
    crops.mkdir(parents=True)
    pool = []
    for i in range(32):  # distinct smooth pictures: decoding costs like a real crop's
        small = rng.integers(0, 255, (8, 4, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(small).resize((64, 128), Image.Resampling.BILINEAR).save(buf, "JPEG", quality=90)
        pool.append(crops / f"{i}.jpg")
        pool[-1].write_bytes(buf.getvalue())
    total = 0
    for split, (count, ids) in MSMT17.items():
        n, n_ids = max(2, round(count * scale)), max(2, round(ids * scale))
        folder = root / ("train" if split in ("train", "val") else "test")
        lines = []
        for i in range(n):
            # Every identity's images go round the cameras (query and gallery from different starting ones), so a
            # query has cross-camera matches whatever the identity count (i % CAMERAS would not when it divides it).
            pid = i % n_ids
            cam = 1 + (pid + i // n_ids + (7 if split == "gallery" else 0)) % CAMERAS
            rel = f"{pid:04d}/{pid:04d}_{split[0]}{i:06d}_{cam:02d}_0303morning_{i % 9999:04d}_0.jpg"
            path = folder / rel
            if i < n_ids:
                path.parent.mkdir(parents=True, exist_ok=True)
            os.link(pool[i % len(pool)], path)
            lines.append(f"{rel} {pid}\n")
        (root / f"list_{split}.txt").write_text("".join(lines))
        total += n
    return total


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


class Meter:
    """Per phase: wall seconds, peak ``RssAnon`` (sampled every 20 ms) and ``VmHWM`` (reset at the phase's start)."""

    def __init__(self) -> None:
        self.anon, self.done, self.phases = 0, threading.Event(), {}
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self.done.wait(0.02):
            self.anon = max(self.anon, _status_kib("RssAnon"))

    def phase(self, name: str, run, images: int) -> object:
        """Run ``run()`` as phase ``name`` over ``images`` images; returns its result."""
        # The heap an earlier phase freed goes back to the kernel (glibc keeps it otherwise, and it would count
        # as this phase's), and "5" resets the resident high-water mark (Linux >= 4.0).
        ctypes.CDLL(None).malloc_trim(0)
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        self.anon = _status_kib("RssAnon")
        t0 = time.perf_counter()
        out = run()
        s = time.perf_counter() - t0
        self.anon = max(self.anon, _status_kib("RssAnon"))
        self.phases[name] = {"s": s, "img_s": images / s if images else 0.0, "anon_mib": self.anon / 1024,
                             "hwm_mib": _status_kib("VmHWM") / 1024}
        return out


def child(args: argparse.Namespace, root: Path, cache: str, cache_dir: Path) -> dict:
    """One setting, measured in this (fresh) process."""
    import torch
    from torch import nn

    from cpl.config import Config
    from cpl.data.formats import load_dataset
    from cpl.data.image_cache import cached_images
    from cpl.data.image_source import Rows
    from cpl.data.images import load_images
    from cpl.engine.features import extract
    from cpl.engine.trainer import TrainData, Trainer
    from cpl.evaluation.metrics import protocol_keys
    from cpl.models.reid import ReIDNet
    from cpl.pseudo import get_strategy

    torch.set_num_threads(1)
    h, w = args.height, args.width
    meter = Meter()

    def decode() -> list[torch.Tensor]:
        if cache == "disk":
            return [cached_images(s.paths, h, w, cache_dir) for s in ds.splits]
        return [load_images(s.paths, h, w) for s in ds.splits]

    ds = load_dataset(root)
    train, query, gallery = meter.phase("decode", decode, sum(len(s) for s in ds.splits))
    keep = np.arange(len(train))
    # Stage train before the image source copied the labeled rows into one tensor; now it reads rows of the split.
    images = Rows(train, keep) if cache == "disk" else train[torch.from_numpy(keep)]
    cfg = Config()
    cfg.data.root, cfg.data.height, cfg.data.width = str(root), h, w
    cfg.train.method, cfg.train.batch_size, cfg.train.max_iters_per_epoch = "baseline", args.batch, args.steps
    cfg.train.log_every = args.steps
    labels = torch.tensor(ds.train_labels, dtype=torch.int64)
    data = TrainData(images=images, labels=labels, num_labeled=len(keep), num_classes=ds.num_classes)
    torch.manual_seed(0)
    model = ReIDNet(args.backbone, ds.num_classes, 0.5)
    trainer = Trainer(cfg, data, model, get_strategy(cfg.train), torch.device("cpu"))
    meter.phase("train", lambda: trainer.train_epoch(0), args.steps * args.batch)
    cpu = torch.device("cpu")
    n_ex = min(args.extract, len(gallery))
    meter.phase("extract", lambda: extract(model, Rows(gallery, torch.arange(n_ex)), cpu, batch_size=64), n_ex)

    class Probe(nn.Module):
        feat_dim = 3

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = x.mean(dim=(2, 3))
            return f, f

    meter.phase("read", lambda: [extract(Probe(), s, cpu, batch_size=256) for s in (query, gallery)],
                len(query) + len(gallery))
    g = torch.Generator().manual_seed(0)
    qf, gf = (torch.nn.functional.normalize(torch.randn(len(s), model.feat_dim, generator=g), dim=1)
              for s in (query, gallery))
    q, gs = ds.query, ds.gallery
    keys = protocol_keys(ds.protocol, q.paths, gs.paths, q.camids, gs.camids)
    meter.phase("evaluate", lambda: evaluate(cache, qf, gf, q.pids, gs.pids, *keys), len(query))
    meter.phase("rerank", lambda: rerank(cache, qf, gf, q.pids, gs.pids, *keys), len(query))
    meter.done.set()
    return {"cache": cache, "images": len(train) + len(query) + len(gallery), "phases": meter.phases,
            "decoded_mib": sum(int(np.prod(s.shape)) for s in (train, query, gallery)) / 2**20}


def evaluate(cache: str, qf, gf, q_pids, g_pids, q_keys, g_keys) -> None:
    """The evaluate stage's scoring: before (``memory``), on the whole distance matrix; after, over query blocks."""
    from cpl.evaluation import evaluate as protocol
    from cpl.evaluation import topk
    from cpl.evaluation.blocks import score
    from cpl.evaluation.distances import distance_summary

    if cache == "disk":
        score(qf, gf, q_pids, g_pids, q_keys, g_keys, 20)
        return
    dist = (1.0 - qf @ gf.T).numpy()
    protocol(dist, q_pids, g_pids, q_keys, g_keys)
    topk(dist, 20)
    distance_summary(dist, q_pids, g_pids, q_keys, g_keys)


def rerank(cache: str, qf, gf, q_pids, g_pids, q_keys, g_keys) -> None:
    """The evaluate stage's re-ranking: before (``memory``), the whole re-ranked matrix into the metrics and top-k;
    after, its blocks of queries into the same ranking, one block at a time."""
    from cpl.evaluation import evaluate as protocol
    from cpl.evaluation import rerank_feature_blocks, rerank_features, topk
    from cpl.evaluation.blocks import rank

    if cache == "disk":
        rank(rerank_feature_blocks(qf, gf), q_pids, g_pids, q_keys, g_keys, 20)
        return
    rr = rerank_features(qf, gf)
    protocol(rr, q_pids, g_pids, q_keys, g_keys)
    topk(rr, 20)


def memory_estimate_gib(root: Path, height: int, width: int) -> float:
    """What the ``memory`` setting needs: decoded pixels, the training set's copy, and the distance matrix with
    the masks and values taken out of it (~3x; the re-ranked matrix, in its own phase, needs no more), plus ~0.5 GiB
    for Python and torch."""
    from cpl.data.formats import load_dataset

    train, query, gallery = (len(s) for s in load_dataset(root).splits)
    pixels = (2 * train + query + gallery) * 3 * height * width
    return (pixels + 3 * 4 * query * gallery) / 2**30 + 0.5


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=0.02, help="share of MSMT17's split sizes (1 = 126,441 images)")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--backbone", default="efficientnet_lite0", help="the trained network (random weights)")
    p.add_argument("--batch", type=int, default=32, help="training batch size")
    p.add_argument("--steps", type=int, default=50, help="training steps timed")
    p.add_argument("--extract", type=int, default=1024, help="gallery images the network extracts features of")
    p.add_argument("--max-gib", type=float, default=16.0, help="a setting estimated above this is not run")
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, in order (memory, disk)")
    p.add_argument("--workdir", type=Path, help="where the dataset and the cache go (default: a temporary folder)")
    p.add_argument("--child", nargs=3, metavar=("ROOT", "CACHE", "CACHE_DIR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        root, cache, cache_dir = args.child
        print(json.dumps(child(args, Path(root), cache, Path(cache_dir))))
        return []
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root, cache_dir = Path(tmp) / "msmt17", Path(tmp) / "cache"
        t0 = time.perf_counter()
        n = write_msmt17(root, args.scale)
        print(f"MSMT17 layout x {args.scale}: {n:,} images written in {time.perf_counter() - t0:.1f} s")
        passthrough = ["--height", str(args.height), "--width", str(args.width), "--backbone", args.backbone,
                       "--batch", str(args.batch), "--steps", str(args.steps), "--extract", str(args.extract)]
        for cache in args.settings.split(","):
            need = memory_estimate_gib(root, args.height, args.width)
            if cache == "memory" and need > args.max_gib:
                print(f"data.cache=memory: not run, it needs about {need:.1f} GiB (--max-gib {args.max_gib:g})")
                continue
            out = subprocess.run([sys.executable, __file__, *passthrough, "--child", str(root), cache,
                                  str(cache_dir)], stdout=subprocess.PIPE, text=True, check=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"data.cache={cache} ({row['images']:,} images, {row['decoded_mib']:,.0f} MiB decoded), load "
                  f"average {os.getloadavg()[0]:.2f}:")
            for name, ph in row["phases"].items():
                print(f"  {name:9s} {ph['s']:8.1f} s {ph['img_s']:9.1f} img/s   RssAnon peak {ph['anon_mib']:7.0f} "
                      f"MiB   VmHWM {ph['hwm_mib']:7.0f} MiB")
    return rows


if __name__ == "__main__":
    main()
