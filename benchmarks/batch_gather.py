"""The trainer's data path for one batch (gather the rows, then augment), three ways in one process, interleaved:

* reference: indexing one concatenated ``[N_l + N_u, 3, H, W] uint8`` tensor, as the trainer did before image
  sources (``torch.cat([train[keep], unlabeled])[idx]``);
* memory: :class:`cpl.data.image_source.Concat` of ``Rows(train, keep)`` and the unlabeled tensor (``data.cache:
  memory``);
* disk: the same over two cache files read by row (:class:`cpl.data.image_cache.CachedImages`, ``data.cache: disk``).

Default shape: the demo's (128 x 64, batch 32, 1,075 labeled and 600 unlabeled images), one
thread. Prints the median milliseconds per batch of each and the ratios to the reference, and checks that all three
gather the same bytes.

    .venv/bin/python benchmarks/batch_gather.py [--batches 300] [--labeled 1075] [--unlabeled 600]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cpl.data.image_cache import CachedImages
from cpl.data.image_source import Concat, Rows
from cpl.data.transforms import augment, draw_params


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--labeled", type=int, default=1075)
    p.add_argument("--unlabeled", type=int, default=600)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the demo's; restored after, for a caller in the same process (a test)
    try:
        return _timed(args)
    finally:
        torch.set_num_threads(threads)


def _timed(args: argparse.Namespace) -> dict[str, float]:
    """Median ms a batch of each way (see the module docstring), printed with the ratios to the reference."""
    g = torch.Generator().manual_seed(0)
    shape = (3, args.height, args.width)
    train = torch.randint(0, 256, (args.labeled + 50, *shape), generator=g, dtype=torch.uint8)  # + 50 held out
    keep = torch.randperm(len(train), generator=g)[:args.labeled]
    unl = torch.randint(0, 256, (args.unlabeled, *shape), generator=g, dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "train.npy", train.numpy())
        np.save(Path(tmp) / "unl.npy", unl.numpy())
        ways = {
            "reference": torch.cat([train[keep], unl]).__getitem__,
            "memory": Concat([Rows(train, keep), Rows(unl)]).gather,
            "disk": Concat([Rows(CachedImages(Path(tmp) / "train.npy"), keep),
                            Rows(CachedImages(Path(tmp) / "unl.npy"))]).gather,
        }
        n = args.labeled + args.unlabeled
        times: dict[str, list[float]] = {k: [] for k in ways}
        for _ in range(args.batches):
            idx = torch.randint(0, n, (args.batch,), generator=g)
            params = draw_params(args.batch, args.height, args.width, flip=True, pad=8, erasing=0.0, generator=g)
            got = {}
            for name, gather in ways.items():
                t0 = time.perf_counter()
                got[name] = gather(idx)
                augment(got[name], params, 8)
                times[name].append(time.perf_counter() - t0)
            assert torch.equal(got["memory"], got["reference"]) and torch.equal(got["disk"], got["reference"])
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    for name, value in ms.items():
        print(f"{name:9s} {value:7.2f} ms a batch  ({value / ms['reference']:.2f}x the reference)")
    return ms


if __name__ == "__main__":
    main()
