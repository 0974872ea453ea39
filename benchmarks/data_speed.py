"""Data-stage speed: generating the embedded synthetic dataset and `cpl check` decoding a dataset.

    python benchmarks/data_speed.py                  # the default synthetic dataset (120 ids per split)
    python benchmarks/data_speed.py --cuhk01 PATH    # also `cpl check` on CUHK01 (3,884 images)

These numbers used to be bounds inside tests (tests/test_synth.py, tests/test_check.py); a bound on seconds
fails on a loaded machine without anything being wrong, so they are measured here instead and quoted with
the machine they ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from cpl.data.check import check_dataset
from cpl.synth import generate


def timed(fn, *args, **kwargs) -> tuple[object, float, float]:
    """(result, wall seconds, CPU seconds of this process) of ``fn(*args, **kwargs)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ids", type=int, default=120, help="identities per split of the synthetic dataset")
    p.add_argument("--cuhk01", type=Path, help="a CUHK01 folder in Market layout, checked as well")
    args = p.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        stats, wall, cpu = timed(generate, Path(tmp) / "synthetic", ids=args.ids)
        print(f"synthetic dataset, {stats['images']:,} images: generated in {wall:.2f} s ({cpu:.2f} CPU s)")
        out["generate"] = {"images": stats["images"], "wall_s": wall, "cpu_s": cpu}
        report, wall, cpu = timed(check_dataset, Path(tmp) / "synthetic")
        print(f"cpl check synthetic: ok={report.ok}, decoded in {wall:.2f} s ({cpu:.2f} CPU s)")
        out["check_synthetic"] = {"wall_s": wall, "cpu_s": cpu}
    if args.cuhk01:
        report, wall, cpu = timed(check_dataset, args.cuhk01)
        print(f"cpl check cuhk01: ok={report.ok}, decoded in {wall:.2f} s ({cpu:.2f} CPU s)")
        out["check_cuhk01"] = {"wall_s": wall, "cpu_s": cpu}
    return out


if __name__ == "__main__":
    main()
