"""How a DCGAN's samples improve with training: the Fréchet distance to the real images at each of a list of epoch
counts, and a sheet of samples at each, for one dataset and config.

    python tools/gan_curve.py --config configs/cuhk01.yaml --set data.root=../shared/data/cuhk01 \
        --epochs 10,20,40,80 --runs-root runs --out docs/gan-curve-cuhk01

One GAN is trained once, extended epoch count after epoch count (``cpl.gan.train.train_gan`` continues a finished
training exactly as if the larger count had been asked for from the start), in the GAN cache folder of the *last*
count: a later ``cpl run``/``cpl sweep`` with ``--set gan.epochs=<last>`` and the same runs root reuses it instead of
training again. Writes ``OUT/curve.csv`` (epochs, steps, Fréchet distance, its real-vs-real floor, training seconds)
and ``OUT/samples-e<E>.png`` (the first 32 samples, at the GAN's native size), and prints the table as Markdown.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cpl.config import load_config
from cpl.data.images import load_images
from cpl.engine.threads import configured_threads
from cpl.gan import ensure_samples, gan_key
from cpl.gan.cache import TRAIN
from cpl.gan.quality import gan_quality
from cpl.gan.sample import draw
from cpl.gan.train import steps_per_epoch, train_gan
from cpl.runs.rundir import CACHE_DIR
from cpl.stages.data import open_dataset

SHEET = (4, 8)  # rows x columns of the sample sheet
QUALITY_SAMPLES = 1000


def _sheet(images: torch.Tensor, path: Path) -> None:
    """A ``SHEET`` grid of ``[n, 3, S, S] uint8`` images, 2 px apart, as a PNG."""
    rows, cols = SHEET
    s = images.shape[-1]
    canvas = np.full((rows * (s + 2), cols * (s + 2), 3), 255, np.uint8)
    for k, img in enumerate(images[: rows * cols]):
        r, c = divmod(k, cols)
        canvas[r * (s + 2): r * (s + 2) + s, c * (s + 2): c * (s + 2) + s] = img.permute(1, 2, 0).numpy()
    Image.fromarray(canvas).save(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--epochs", required=True, help="comma-separated, increasing, e.g. 10,20,40,80")
    ap.add_argument("--runs-root", default="runs", help="its _cache/gan keeps the GAN for later runs")
    ap.add_argument("--out", required=True, help="folder for curve.csv and the sample sheets")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    counts = sorted({int(e) for e in args.epochs.split(",")})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")

    ds = open_dataset(cfg)  # the run's listing: the same fingerprint, hence the same GAN cache key
    images = load_images(ds.train.paths, cfg.data.height, cfg.data.width)
    last = dataclasses.replace(cfg.gan, epochs=counts[-1])
    cache_root = Path(args.runs_root) / CACHE_DIR / "gan"
    work = cache_root / gan_key(ds.fingerprint(), last, cfg.gan.seed) / TRAIN
    rows = []
    with configured_threads(cfg.cpu_threads):
        spent = 0.0
        for e in counts:
            t0 = time.monotonic()
            g = train_gan(images, dataclasses.replace(cfg.gan, epochs=e), work, seed=cfg.gan.seed, device=device)
            spent += time.monotonic() - t0
            fake = draw(g, QUALITY_SAMPLES, seed=cfg.gan.seed, device=device)
            q = gan_quality(images, fake, device, seed=cfg.gan.seed)
            _sheet(fake, out / f"samples-e{e}.png")
            rows.append({"epochs": e, "steps": e * steps_per_epoch(len(images), cfg.gan), "fd": round(q["fd"], 1),
                         "fd_floor": round(q["fd_floor"], 1), "train_s": round(spent, 1)})
            print(f"epochs {e}: FD {q['fd']:.1f} (floor {q['fd_floor']:.1f}), {spent:.0f} s of training", flush=True)
        # Save the last generator and its samples where runs look for them (the checkpoint is already there).
        ensure_samples(images, ds.fingerprint(), last, cfg.unlabeled.num_images, cache_root, seed=cfg.gan.seed,
                       device=device)
    with open(out / "curve.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("\n| DCGAN epochs | steps | Fréchet distance | real-vs-real floor | training time (s) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['epochs']} | {r['steps']} | {r['fd']} | {r['fd_floor']} | {r['train_s']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
