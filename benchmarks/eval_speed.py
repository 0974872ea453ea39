"""cpl.evaluation.evaluate against torchreid's Cython evaluator at Market-1501 scale.

    .bench-venv/bin/python benchmarks/eval_speed.py [--repeat 5] [--json out.json]
    .bench-venv/bin/python benchmarks/eval_speed.py --msmt        # MSMT17 shape, ours only

Both run in this process on the same distance matrix (3,368 x 15,913 after dropping the junk
images, which torchreid's dataset loader drops); ours also runs on the full 19,732-image gallery
with junk to show the exclusion gives the same numbers. Peak memory is measured on a separate
process that runs only ours.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from eval_common import (
    current_rss_mb,
    euclidean,
    machine,
    market_labels,
    median,
    msmt_labels,
    peak_rss_mb,
    reference_module,
    run_isolated,
    synthetic_features,
    timed,
)

from cpl.evaluation import evaluate
from cpl.runs.atomic import write_json


def only_ours(folder: str) -> None:
    """Child process: evaluate the saved case once, report time and memory as JSON."""
    dist = np.load(Path(folder) / "dist.npy")
    with np.load(Path(folder) / "labels.npz") as z:
        labels = {k: z[k] for k in z.files}
    loaded = current_rss_mb()
    seconds, cpu, out = timed(
        lambda: evaluate(dist, labels["q_pids"], labels["g_pids"], labels["q_camids"], labels["g_camids"])
    )
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "rss_before_mb": loaded, "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each implementation")
    parser.add_argument("--dim", type=int, default=256, help="synthetic feature size")
    parser.add_argument("--noise", type=float, help="feature noise (default 0.5 * dim ** 0.25: rank-1 60-85 %%)")
    parser.add_argument("--msmt", action="store_true", help="MSMT17-sized random labels, ours only")
    parser.add_argument("--skip-python", action="store_true", help="skip torchreid's slow Python evaluator")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--only-ours", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.noise = args.noise or 0.5 * args.dim**0.25
    if args.only_ours:
        only_ours(args.only_ours)
        return

    if args.msmt:
        labels, source = msmt_labels(), "random labels of MSMT17's test shape"
    else:
        labels, source = market_labels()
    q_pids, q_cams, g_pids, g_cams = (labels[k] for k in ("q_pids", "q_camids", "g_pids", "g_camids"))
    qf = synthetic_features(q_pids, q_cams, args.dim, args.noise, seed=1)
    gf = synthetic_features(g_pids, g_cams, args.dim, args.noise, seed=2)
    dist = euclidean(qf, gf)
    del qf, gf
    real = g_pids != -1
    print(f"machine: {machine()}")
    print(f"labels: {source}; {len(q_pids)} queries x {len(g_pids)} gallery ({int((~real).sum())} junk)")
    results: dict = {"machine": machine(), "labels": source, "queries": len(q_pids), "gallery": len(g_pids)}

    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "dist.npy", dist)
        np.savez(Path(tmp) / "labels.npz", q_pids=q_pids, q_camids=q_cams, g_pids=g_pids, g_camids=g_cams)
        iso = run_isolated("eval_speed.py", ["--only-ours", tmp])
    print(f"ours alone in a fresh process: {iso['seconds']:.2f} s, peak RSS {iso['peak_rss_mb']:.0f} MiB "
          f"for the whole process ({iso['rss_before_mb']:.0f} MiB before the call: Python, torch and the "
          f"{dist.nbytes / 2**20:.0f} MiB distance matrix)")
    results["isolated"] = iso

    full = evaluate(dist, q_pids, g_pids, q_cams, g_cams)
    print(f"ours, full gallery: rank-1 {full['cmc'][0]:.4f} rank-5 {full['cmc'][4]:.4f} "
          f"mAP {full['mAP']:.4f} mINP {full['mINP']:.4f} ({full['num_valid']} valid queries)")
    results["metrics"] = {"rank1": full["cmc"][0], "rank5": full["cmc"][4], "mAP": full["mAP"], "mINP": full["mINP"]}
    if args.msmt:
        _finish(results, args.json)
        return

    # torchreid's view: junk images removed from the gallery by its dataset loader.
    d_tr = np.ascontiguousarray(dist[:, real])
    g_pids_tr, g_cams_tr = g_pids[real], g_cams[real]
    evaluate_cy = reference_module("metrics/rank_cylib/rank_cy").evaluate_cy
    tr_args = (d_tr, q_pids, g_pids_tr, q_cams, g_cams_tr, 50)

    ours_tr = evaluate(d_tr, q_pids, g_pids_tr, q_cams, g_cams_tr)
    same = np.array_equal(ours_tr["cmc"], full["cmc"]) and ours_tr["mAP"] == full["mAP"]
    print(f"ours with junk columns == ours without them: {same}")
    results["junk_exclusion_identical"] = same

    t_ref, t_ours, c_ref, c_ours = [], [], [], []
    evaluate_cy(*tr_args)  # warm-up
    for _ in range(args.repeat):
        t, c, (cmc_cy, map_cy) = timed(lambda: evaluate_cy(*tr_args))
        t_ref.append(t)
        c_ref.append(c)
        t, c, ours = timed(lambda: evaluate(*tr_args))
        t_ours.append(t)
        c_ours.append(c)
    ratios = [r / o for r, o in zip(t_ref, t_ours)]
    d_cmc = float(np.abs(ours["cmc"] - cmc_cy).max())
    d_map = abs(ours["mAP"] - float(map_cy))
    print(f"torchreid evaluate_cy (Cython): median {median(t_ref):.3f} s (CPU {median(c_ref):.2f} s)  "
          f"runs {[round(t, 3) for t in t_ref]}")
    print(f"cpl evaluate:                   median {median(t_ours):.3f} s (CPU {median(c_ours):.2f} s)  "
          f"runs {[round(t, 3) for t in t_ours]}")
    print(f"speed-up: median of per-run ratios {median(ratios):.1f}x (ratio of medians "
          f"{median(t_ref) / median(t_ours):.1f}x; of CPU time {median(c_ref) / median(c_ours):.1f}x)")
    print(f"agreement with evaluate_cy: max |d cmc| {d_cmc:.2e}, |d mAP| {d_map:.2e} "
          "(evaluate_cy sums in float32)")
    results["cython"] = {"seconds": t_ref, "cpu_seconds": c_ref, "max_abs_cmc": d_cmc, "abs_mAP": d_map}
    results["ours"] = {"seconds": t_ours, "cpu_seconds": c_ours}
    results["speedup_median"] = median(ratios)

    if not args.skip_python:
        eval_py = reference_module("metrics/rank").eval_market1501
        t, _, (cmc_py, map_py) = timed(lambda: eval_py(*tr_args))
        d_cmc = float(np.abs(ours["cmc"] - cmc_py).max())
        d_map = abs(ours["mAP"] - float(map_py))
        print(f"torchreid eval_market1501 (Python): {t:.1f} s; agreement max |d cmc| {d_cmc:.2e}, "
              f"|d mAP| {d_map:.2e} (it returns the CMC as float32)")
        results["python"] = {"seconds": t, "max_abs_cmc": d_cmc, "abs_mAP": d_map}
    _finish(results, args.json)


def _finish(results: dict, path: Path | None) -> None:
    print(f"peak RSS of this process: {peak_rss_mb():.0f} MiB")
    if path:
        write_json(path, results)


if __name__ == "__main__":
    main()
