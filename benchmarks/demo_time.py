"""The first-start demo end to end, timed as a new user meets it: a fresh runs root and data root, the demo
started exactly as the app starts it (``app.demo.ensure_demo``), and the wall time until each page has
something to show and until every demo run has ended.

    python benchmarks/demo_time.py               # on this machine as it is (quiet, if nothing else runs)
    python benchmarks/demo_time.py --load 2      # beside 2 busy processes (one per core of a 2-core machine)
    python benchmarks/demo_time.py --json demo.json --keep /tmp/demo-bench

Prints the machine, its load average before and after, the time of each milestone, and what the demo produced
(rank-1 / mAP of each run, the held-out pseudo-label accuracy against chance, the GAN's Fréchet distance).
Exits 1 when a demo run did not finish. The runs are cancelled if the benchmark is interrupted or times out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from threads_load import _machine, competing_load  # noqa: E402  (benchmarks/ is not a package)

from app import demo  # noqa: E402
from cpl.runs.launch import cancel  # noqa: E402
from cpl.runs.rundir import RunDir  # noqa: E402
from cpl.runs.state import FINAL, State  # noqa: E402
from cpl.runs.status import read_status  # noqa: E402


def _epoch_records(run: RunDir) -> list[dict]:
    try:
        lines = run.metrics.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # the line being written
            continue
        if rec.get("type") == "epoch":
            out.append(rec)
    return out


def milestones(runs: dict[str, RunDir]) -> dict[str, bool]:
    """What a page can show now, by milestone name (the table's rows, in the order a user meets them)."""
    gan, held, ctrl, base = runs[demo.GAN], runs[demo.HELDOUT], runs[demo.CONTROL], runs[demo.BASE]
    return {
        "GAN page: DCGAN samples": gan.unlabeled.is_file(),
        "GAN page: their pseudo-labels (1st epoch)": bool(_epoch_records(gan)),
        "label accuracy on held-out images (1st epoch)": any("pl_acc" in r for r in _epoch_records(held)),
        "Compare: the control's result": ctrl.results.is_file(),
        "Compare: CPL on held-out images, result": held.results.is_file(),
        "Compare: the baseline's result": base.results.is_file(),
        "Retrieval: the GAN run's ranked lists": gan.retrieval.is_file(),
        "Compare: CPL on GAN images, result": gan.results.is_file(),
        "Embedding: the GAN run's UMAP": gan.embedding.is_file(),
    }


def outcome(runs: dict[str, RunDir]) -> dict:
    """What the demo produced: per run rank-1/mAP (%), the held-out run's last pseudo-label accuracy and its chance
    level (%), the DCGAN's Fréchet distance and floor."""
    out: dict = {}
    for key, run in runs.items():
        res = json.loads(run.results.read_text()) if run.results.is_file() else {}
        out[key] = {"run": run.id, "state": read_status(run).get("state"), "rank1": res.get("rank1"),
                    "mAP": res.get("mAP"), "train_time_s": res.get("train_time_s"),
                    "total_time_s": res.get("total_time_s"), "stage_times_s": res.get("stage_times_s")}
    acc = [r["pl_acc"] for r in _epoch_records(runs[demo.HELDOUT]) if "pl_acc" in r]
    info = runs[demo.HELDOUT].dataset
    k = json.loads(info.read_text()).get("num_classes") if info.is_file() else None
    out["heldout_pl_acc_by_epoch"] = [round(100 * a, 1) for a in acc]
    out["chance_pl_acc"] = round(100 / k, 2) if k else None
    gan_json = runs[demo.GAN].gan
    quality = json.loads(gan_json.read_text()).get("quality", {}) if gan_json.is_file() else {}
    out["gan_fd"], out["gan_fd_floor"] = quality.get("fd"), quality.get("fd_floor")
    return out


def watch(runs: dict[str, RunDir], t0: float, timeout_s: float, poll_s: float) -> tuple[dict, dict]:
    """Poll until every run has ended (or ``timeout_s``); returns the seconds at which each milestone was first
    reached and at which each run ended (None: not within the time)."""
    seen: dict[str, float | None] = dict.fromkeys(milestones(runs))
    ended: dict[str, float | None] = dict.fromkeys(runs)
    while time.time() - t0 < timeout_s:
        now = time.time() - t0
        for name, reached in milestones(runs).items():
            if reached and seen[name] is None:
                seen[name] = now
        for key, run in runs.items():
            if ended[key] is None and read_status(run).get("state") in FINAL:
                ended[key] = now
        if all(v is not None for v in ended.values()):
            break
        time.sleep(poll_s)
    return seen, ended


def _mmss(s: float | None) -> str:
    return "–" if s is None else f"{int(s // 60)} min {s % 60:04.1f} s"


def report(seen: dict, ended: dict, result: dict, load_before: tuple, load_after: tuple, args) -> None:
    """Print the timings and the outcome as a plain table."""
    print(f"machine: {_machine()}; competing load: {args.load} busy process(es)")
    print(f"load average (1/5/15 min) before: {'/'.join(f'{x:.2f}' for x in load_before)}, "
          f"after: {'/'.join(f'{x:.2f}' for x in load_after)}")
    for name, s in seen.items():
        print(f"  {name:<48} {_mmss(s)}")
    for key, s in ended.items():
        r = result[key]
        metrics = f"rank-1 {r['rank1']:.1f}, mAP {r['mAP']:.1f}" if r["rank1"] is not None else "no result"
        print(f"  run {key:<44} {_mmss(s)}  ({r['state']}; {metrics})")
    print(f"held-out pseudo-label accuracy by epoch (%): {result['heldout_pl_acc_by_epoch']} "
          f"(chance {result['chance_pl_acc']})")
    if result["gan_fd"] is not None:
        print(f"DCGAN Fréchet distance {result['gan_fd']:.0f} (real-vs-real floor {result['gan_fd_floor']:.0f})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--load", type=int, default=0, help="busy processes beside the demo (0: none)")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up (and cancel the runs) after this, s")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between looks at the run directories")
    p.add_argument("--keep", type=Path, help="work in this (new or empty) folder and keep it; default: a temp one")
    p.add_argument("--json", type=Path, help="also write the timings and outcome here")
    args = p.parse_args(argv)
    if args.load < 0 or args.timeout <= 0 or args.poll <= 0:
        p.error("--load must be >= 0, --timeout and --poll > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Start the demo in a fresh folder, watch it to the end, print (and optionally save) the timings."""
    args = parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="cpl-demo-time-"))
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        sys.exit(f"{work} is not empty: the demo must start in a fresh runs root")
    os.environ.pop("CPL_DEMO", None)  # the app's defaults: demo on, its packaged config
    os.environ.pop("CPL_DEMO_CONFIG", None)
    load_before = os.getloadavg()
    runs: dict[str, RunDir] = {}
    try:
        with competing_load(args.load, max_s=args.timeout + 60):
            t0 = time.time()
            runs = demo.ensure_demo(work / "runs", work / "data" / "synthetic")
            seen, ended = watch(runs, t0, args.timeout, args.poll)
            load_after = os.getloadavg()
    finally:
        for run in runs.values():
            if read_status(run).get("state") not in FINAL:
                cancel(run, grace_s=10)
    result = outcome(runs)
    report(seen, ended, result, load_before, load_after, args)
    if args.json:
        args.json.write_text(json.dumps({"machine": _machine(), "load": args.load, "loadavg_before": load_before,
                                         "loadavg_after": load_after, "milestones_s": seen, "ended_s": ended,
                                         "outcome": result}, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(result[k]["state"] == State.FINISHED for k in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
