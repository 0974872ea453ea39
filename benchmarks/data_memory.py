"""Host memory and speed of the data path on an MSMT17-sized dataset: decoding into memory vs the disk cache.

    python benchmarks/data_memory.py --scale 0.05          # 5 % of MSMT17 (6,322 images), a minute
    python benchmarks/data_memory.py --scale 1 --workdir /big/disk   # MSMT17-sized: 126,441 images

Writes a synthetic dataset in the MSMT17 V1 layout (list files, train/ + test/, 15 cameras; the split sizes of
MSMT17 times ``--scale``; JPEGs of 128 x 64 pixels, decoded and resized to 256 x 128 like the real crops), then in
a fresh process per setting runs what the data stage does (load the dataset, decode the three splits) followed by a
feature-extraction pass over query and gallery (cpl.engine.features.extract with a probe network that reads every
pixel and costs nothing, so the data path is what is timed). Settings: ``data.cache: memory`` and ``data.cache:
disk`` twice (first use decodes and writes the cache, later runs map it).

Memory is reported as the process's anonymous resident memory (``RssAnon``, sampled every 20 ms; what the
kernel cannot drop) and its peak resident set (``ru_maxrss``, which also counts pages of the mapped cache file
while they are resident: those are page cache the kernel reclaims under pressure).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

# MSMT17's published split sizes (Wei et al., CVPR 2018)
MSMT17 = {"train": (30_248, 1_041), "val": (2_373, 1_041), "query": (11_659, 3_060), "gallery": (82_161, 3_060)}
CAMERAS = 15


def write_msmt17(root: Path, scale: float, seed: int = 0) -> int:
    """An MSMT17-V1-layout dataset of MSMT17's split sizes x ``scale`` in ``root``; returns its image count."""
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(32):  # distinct smooth pictures: decoding cost like a real crop's, written fast
        small = rng.integers(0, 255, (8, 4, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(small).resize((64, 128), Image.Resampling.BILINEAR).save(buf, "JPEG", quality=90)
        pool.append(buf.getvalue())
    total = 0
    for split, (count, ids) in MSMT17.items():
        n, n_ids = max(2, round(count * scale)), max(2, round(ids * scale))
        folder = root / ("train" if split in ("train", "val") else "test")
        lines = []
        for i in range(n):
            pid, cam = i % n_ids, 1 + (i * 7) % CAMERAS
            rel = f"{pid:04d}/{pid:04d}_{split[0]}{i:06d}_{cam:02d}_0303morning_{i % 9999:04d}_0.jpg"
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(pool[i % len(pool)])
            lines.append(f"{rel} {pid}\n")
        (root / f"list_{split}.txt").write_text("".join(lines))
        total += n
    return total


def _rss_anon_kib() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("RssAnon:"))


def child(root: Path, cache: str, cache_dir: Path, height: int, width: int) -> dict:
    """One setting, measured in this (fresh) process: the data stage's decode, then feature extraction."""
    import torch
    from torch import nn

    from cpl.data.formats import load_dataset
    from cpl.data.image_cache import cached_images
    from cpl.data.images import load_images
    from cpl.engine.features import extract

    torch.set_num_threads(1)
    peak = {"anon": _rss_anon_kib()}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak["anon"] = max(peak["anon"], _rss_anon_kib())

    threading.Thread(target=sample, daemon=True).start()

    class Probe(nn.Module):
        feat_dim = 3

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = x.mean(dim=(2, 3))
            return f, f

    def decode(paths: tuple[str, ...]) -> torch.Tensor:
        return cached_images(paths, height, width, cache_dir) if cache == "disk" else load_images(paths, height, width)

    t0 = time.perf_counter()
    ds = load_dataset(root)
    splits = [decode(s.paths) for s in ds.splits]
    t_decode = time.perf_counter() - t0
    anon_decode = peak["anon"]
    t1 = time.perf_counter()
    feats = [extract(Probe(), imgs, torch.device("cpu"), batch_size=256)[0] for imgs in splits[1:]]
    t_extract = time.perf_counter() - t1
    done.set()
    n = sum(len(s) for s in ds.splits)
    return {"cache": cache, "images": n, "decode_s": t_decode, "decode_img_s": n / t_decode,
            "extract_img_s": sum(len(f) for f in feats) / t_extract,
            "peak_anon_mib_after_decode": anon_decode / 1024, "peak_anon_mib": peak["anon"] / 1024,
            "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "decoded_mib": sum(s.numel() for s in splits) / 2**20}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=0.05, help="share of MSMT17's split sizes (1 = 126,441 images)")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--workdir", type=Path, help="where the dataset and the cache go (default: a temporary folder)")
    p.add_argument("--child", nargs=3, metavar=("ROOT", "CACHE", "CACHE_DIR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        root, cache, cache_dir = args.child
        print(json.dumps(child(Path(root), cache, Path(cache_dir), args.height, args.width)))
        return []
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root, cache_dir = Path(tmp) / "msmt17", Path(tmp) / "cache"
        t0 = time.perf_counter()
        n = write_msmt17(root, args.scale)
        print(f"MSMT17 layout x {args.scale}: {n:,} images written in {time.perf_counter() - t0:.1f} s")
        for cache in ("memory", "disk", "disk"):
            out = subprocess.run([sys.executable, __file__, "--height", str(args.height), "--width", str(args.width),
                                  "--child", str(root), cache, str(cache_dir)], capture_output=True, text=True,
                                 check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"data.cache={row['cache']:6s}: decode {row['decode_img_s']:7.0f} img/s, extract "
                  f"{row['extract_img_s']:7.0f} img/s; anonymous memory after decode "
                  f"{row['peak_anon_mib_after_decode']:7.0f} MiB, peak {row['peak_anon_mib']:7.0f} MiB; "
                  f"ru_maxrss {row['maxrss_mib']:7.0f} MiB (decoded pixels: {row['decoded_mib']:.0f} MiB)")
    return rows


if __name__ == "__main__":
    main()
