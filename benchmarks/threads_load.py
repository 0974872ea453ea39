"""CPU threads under load: one training step and one feature extraction, quiet and beside a competing CPU load,
with torch's default threads against the policy of ``cpl/engine/threads.py``.

    python benchmarks/threads_load.py                 # Lite0, batch 32 at 128x64, 256 images extracted, 5 repeats
    python benchmarks/threads_load.py --repeats 3     # shorter
    python benchmarks/threads_load.py --quick         # CI size: batch 8 at 64x32, 1 repeat

Variants, each in a fresh child process (OpenMP reads its wait policy once, when torch loads, so the variants
cannot share a process): ``default`` (torch's one thread per core and OpenMP's spinning wait, what ``cpl`` did
before), ``one`` (a single thread, the obvious alternative) and ``ours`` (``set_wait_policy`` before torch is
imported, then ``configured_threads``: the thread count from affinity and cgroup quota, idle threads passive).
The step is ``Trainer.train_epoch`` of one iteration (CPL targets, center loss, batched augmentation, as a run
trains); the extraction is ``cpl.engine.features.extract``. Each child times its repeats quiet, then beside one
busy process per CPU it may use (started by the child, bounded in time, always killed), and prints JSON; the
parent prints medians, loaded/quiet ratios and ours/default ratios, with the machine and its load average.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("default", "one", "ours")
OMP_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")
# A busy loop that ends by itself after argv[1] seconds even if nobody kills it.
BUSY = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


@contextlib.contextmanager
def competing_load(n: int, max_s: float) -> Iterator[list[subprocess.Popen]]:
    """``n`` busy processes (one core each) for the block, killed at its end; each ends by itself after
    ``max_s`` seconds should this process die first."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY, str(max_s)]) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def worker_env(variant: str, environ: dict[str, str]) -> dict[str, str]:
    """The child's environment: the user's OpenMP settings removed, so that each variant is what it says."""
    env = {k: v for k, v in environ.items() if k not in OMP_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environ.get("PYTHONPATH")]))
    return env


def _exit_on_sigterm() -> None:
    """Turn SIGTERM (``timeout``, ``kill``) into SystemExit, so that the ``finally`` blocks stop the children."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def _timed(fn, repeats: int, what: str) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        print(f"  {what}: {times[-1]:.3f} s", file=sys.stderr, flush=True)
    return times


def _setup(args: argparse.Namespace):
    """The step and the extraction to time, on the CPU (torch is imported here, after the wait policy)."""
    import torch

    from cpl.config import Config
    from cpl.engine.features import extract
    from cpl.engine.trainer import TrainData, Trainer
    from cpl.methods import DEFAULT_METHOD
    from cpl.models.reid import ReIDNet
    from cpl.pseudo import get_strategy

    cfg = Config()
    cfg.data.root, cfg.data.height, cfg.data.width = "unused", args.height, args.width
    cfg.train.method, cfg.train.batch_size = DEFAULT_METHOD, args.batch
    cfg.train.max_iters_per_epoch = cfg.train.log_every = 1
    k, n_lab = 16, 4 * args.batch
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2 * n_lab, 3, args.height, args.width), dtype=torch.uint8, generator=g)
    data = TrainData(images=images, labels=torch.randint(0, k, (n_lab,), generator=g), num_labeled=n_lab,
                     num_classes=k)
    torch.manual_seed(0)
    model = ReIDNet(args.backbone, k, 0.75)
    trainer = Trainer(cfg, data, model, get_strategy(cfg.train), torch.device("cpu"))
    gallery = torch.randint(0, 256, (args.extract, 3, args.height, args.width), dtype=torch.uint8, generator=g)
    return (lambda: trainer.train_epoch(0)), (lambda: extract(model, gallery, torch.device("cpu"), batch_size=64))


def run_worker(args: argparse.Namespace) -> dict:
    """One variant in this process: threads and wait policy set as the variant says, then the timings (s)."""
    _exit_on_sigterm()
    if args.worker == "ours":
        from cpl.engine.threads import set_wait_policy

        set_wait_policy()  # before torch loads OpenMP, as the `cpl` entry point does
    import torch

    from cpl.engine.threads import configured_threads

    with contextlib.ExitStack() as stack:
        if args.worker == "one":
            torch.set_num_threads(1)
        elif args.worker == "ours":
            stack.enter_context(configured_threads(0))
        step, extraction = _setup(args)
        step(), extraction()  # warm-up: allocator, first-call overheads
        out = {"variant": args.worker, "threads": torch.get_num_threads(),
               "wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
               "quiet_step": _timed(step, args.repeats, f"{args.worker} quiet step"),
               "quiet_extract": _timed(extraction, args.repeats, f"{args.worker} quiet extraction")}
        with competing_load(args.load, max_s=args.max_load_s):
            time.sleep(0.5)  # the busy processes are running
            out |= {"loaded_step": _timed(step, args.repeats, f"{args.worker} loaded step"),
                    "loaded_extract": _timed(extraction, args.repeats, f"{args.worker} loaded extraction")}
    return out


def summarize(results: list[dict]) -> list[dict]:
    """Median seconds and ratios per variant (``results``: the children's JSON records)."""
    rows = []
    for r in results:
        med = {k: statistics.median(r[k]) for k in ("quiet_step", "loaded_step", "quiet_extract", "loaded_extract")}
        rows.append({"variant": r["variant"], "threads": r["threads"], "wait_policy": r["wait_policy"], **med,
                     "step_loaded_over_quiet": med["loaded_step"] / med["quiet_step"],
                     "extract_loaded_over_quiet": med["loaded_extract"] / med["quiet_extract"]})
    base = next((r for r in rows if r["variant"] == "default"), None)
    for r in rows:
        if base is not None:
            for k in ("quiet_step", "loaded_step", "quiet_extract", "loaded_extract"):
                r[f"{k}_vs_default"] = r[k] / base[k]
    return rows


def _machine() -> str:
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {len(os.sched_getaffinity(0))} CPUs usable, Python {platform.python_version()}"


def print_table(rows: list[dict]) -> None:
    """The medians (s) and ratios, one line per variant."""
    print(f"{'variant':<8} {'threads':>7} {'wait':>8} | {'step quiet':>10} {'loaded':>7} {'ratio':>6} | "
          f"{'extract quiet':>13} {'loaded':>7} {'ratio':>6} | vs default: step quiet / loaded")
    for r in rows:
        vs = (f"{r['quiet_step_vs_default']:.2f} / {r['loaded_step_vs_default']:.2f}"
              if "quiet_step_vs_default" in r else "")
        print(f"{r['variant']:<8} {r['threads']:>7} {r['wait_policy']:>8} | {r['quiet_step']:>10.3f} "
              f"{r['loaded_step']:>7.3f} {r['step_loaded_over_quiet']:>6.2f} | {r['quiet_extract']:>13.3f} "
              f"{r['loaded_extract']:>7.3f} {r['extract_loaded_over_quiet']:>6.2f} | {vs}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's settings (``--worker`` is how the parent starts a child)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI size: batch 8 at 64x32, 16 images, 1 repeat")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--extract", type=int, default=256, help="images in the timed feature extraction")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {','.join(VARIANTS)}")
    p.add_argument("--load", type=int, default=len(os.sched_getaffinity(0)),
                   help="busy processes beside the loaded timings (default: one per usable CPU)")
    p.add_argument("--max-load-s", type=float, default=300.0, help="a busy process ends by itself after this")
    p.add_argument("--json", help="also write the summary here")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    if p.parse_known_args(argv)[0].quick:  # CI-sized defaults; explicit options still win
        p.set_defaults(height=64, width=32, batch=8, extract=16, repeats=1)
    args = p.parse_args(argv)
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        p.error(f"--variants: unknown {','.join(sorted(unknown))}; choose from {','.join(VARIANTS)}")
    if args.repeats < 1 or args.load < 0:
        p.error("--repeats must be >= 1 and --load >= 0")
    return args


def child_argv(args: argparse.Namespace, variant: str) -> list[str]:
    """The command of one variant's child process: this script with the same settings and ``--worker``."""
    return [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--backbone", args.backbone,
            "--height", str(args.height), "--width", str(args.width), "--batch", str(args.batch),
            "--extract", str(args.extract), "--repeats", str(args.repeats), "--load", str(args.load),
            "--max-load-s", str(args.max_load_s)]


def _run_child(args: argparse.Namespace, variant: str) -> dict:
    """One variant's child process (its timings on stderr as they come); stopped with this process."""
    proc = subprocess.Popen(child_argv(args, variant), env=worker_env(variant, dict(os.environ)),
                            stdout=subprocess.PIPE, text=True)
    try:
        stdout, _ = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.terminate()  # the child kills its busy processes on SIGTERM
            proc.wait()
    if proc.returncode != 0:
        sys.exit(f"variant {variant} failed (exit code {proc.returncode})")
    return json.loads(stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every variant in its own child process; print and return :func:`summarize`'s rows."""
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return []
    print(f"machine: {_machine()}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.backbone}: one training step (batch {args.batch}, {args.height}x{args.width}) and the features of "
          f"{args.extract} images; {args.repeats} repeats quiet, then beside {args.load} busy processes")
    _exit_on_sigterm()
    results = [_run_child(args, variant) for variant in args.variants.split(",")]
    rows = summarize(results)
    print_table(rows)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
