"""cpl.evaluation.rerank_features against the classic numpy k-reciprocal re-ranking.

    .bench-venv/bin/python benchmarks/rerank_speed.py [--dim 2048] [--repeat 3] [--ref-repeat 1]
    .bench-venv/bin/python benchmarks/rerank_speed.py --msmt [--dim 2048]   # ours only

Market-1501 scale: 3,368 queries + 15,913 gallery (the real labels without junk, as torchreid
loads them) with synthetic features of realistic difficulty. Ours starts from the features; the
reference (torchreid's ``re_ranking``, the zhunzhong07 numpy code) is given the three Euclidean
distance matrices, whose computation is not timed. Both run in this process and the outputs are
compared; peak memory of ours is measured on a separate process that runs only ours.
The MSMT17-shaped run (11,659 + 82,161) needs an N x N matrix of 35 GB for the reference, so it
runs ours alone.
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

from cpl.evaluation import evaluate, rerank, rerank_features
from cpl.runs.atomic import write_json


def only_ours(folder: str) -> None:
    """Child process: re-rank the saved features once, report time and memory as JSON."""
    qf, gf = np.load(Path(folder) / "qf.npy"), np.load(Path(folder) / "gf.npy")
    loaded = current_rss_mb()
    seconds, cpu, out = timed(lambda: rerank_features(qf, gf))
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "rss_before_mb": loaded, "peak_rss_mb": peak_rss_mb()}))


def scores(dist: np.ndarray, labels: dict) -> dict:
    out = evaluate(dist, labels["q_pids"], labels["g_pids"], labels["q_camids"], labels["g_camids"])
    return {"rank1": float(out["cmc"][0]), "mAP": out["mAP"], "all_AP": out["all_AP"]}


def tied_cuts(q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, ours: np.ndarray, ref: np.ndarray) -> list:
    """Where the reference's unstable argsort is free to differ: exact ties at a cut position.

    Walks from the queries whose outputs differ to their neighbours and theirs (the rows whose
    neighbour sets feed those outputs) and reports (row, cut) where the working distances at
    positions cut - 1 and cut are equal. The distance matrices here are symmetric.
    """
    nq = q_g.shape[0]
    cuts = (6, 11, 21)  # k2, round(k1 / 2) + 1, k1 + 1 for the defaults k1 = 20, k2 = 6
    frontier = list(np.unique(np.nonzero(np.abs(ours - ref) > 1e-5)[0]))
    seen: set = set()
    found = []
    for _ in range(3):
        following = []
        for i in frontier:
            if i in seen:
                continue
            seen.add(i)
            d = np.concatenate([q_q[i], q_g[i]]) if i < nq else np.concatenate([q_g[:, i - nq], g_g[i - nq]])
            squared = np.power(d, 2).astype(np.float32)
            v = squared / squared.max()
            order = np.argsort(v, kind="stable")
            found += [(int(i), c) for c in cuts if v[order[c - 1]] == v[order[c]]]
            following += order[:21].tolist()
        frontier = following
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=2048, help="feature size (2048 pool5, 512 ...)")
    parser.add_argument("--noise", type=float, help="feature noise (default 0.5 * dim ** 0.25: rank-1 60-85 %%)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of ours")
    parser.add_argument("--ref-repeat", type=int, default=1, help="timed runs of the reference (minutes each)")
    parser.add_argument("--msmt", action="store_true", help="MSMT17-sized random labels, ours only")
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
        real = labels["g_pids"] != -1
        labels = {**labels, "g_pids": labels["g_pids"][real], "g_camids": labels["g_camids"][real]}
    qf = synthetic_features(labels["q_pids"], labels["q_camids"], args.dim, args.noise, seed=1)
    gf = synthetic_features(labels["g_pids"], labels["g_camids"], args.dim, args.noise, seed=2)
    print(f"machine: {machine()}")
    print(f"labels: {source}; {len(qf)} queries + {len(gf)} gallery, {args.dim}-d features")
    results: dict = {"machine": machine(), "labels": source, "queries": len(qf), "gallery": len(gf), "dim": args.dim}

    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "qf.npy", qf)
        np.save(Path(tmp) / "gf.npy", gf)
        iso = run_isolated("rerank_speed.py", ["--only-ours", tmp])
    print(f"ours alone in a fresh process: {iso['seconds']:.1f} s (CPU {iso['cpu_seconds']:.1f} s), "
          f"peak RSS {iso['peak_rss_mb']:.0f} MiB "
          f"for the whole process ({iso['rss_before_mb']:.0f} MiB before the call: Python, torch and "
          f"{(qf.nbytes + gf.nbytes) / 2**20:.0f} MiB of features)")
    results["isolated"] = iso
    if args.msmt:
        _finish(results, args.json)
        return

    t_ours, c_ours = [], []
    for _ in range(args.repeat):
        t, c, ours = timed(lambda: rerank_features(qf, gf))
        t_ours.append(t)
        c_ours.append(c)
    print(f"cpl rerank_features: median {median(t_ours):.1f} s (CPU {median(c_ours):.1f} s)  "
          f"runs {[round(t, 1) for t in t_ours]}")

    re_ranking = reference_module("utils/rerank").re_ranking
    q_g, q_q, g_g = euclidean(qf, gf), euclidean(qf, qf), euclidean(gf, gf)
    plain = scores(q_g, labels)
    t_ref, c_ref = [], []
    for _ in range(args.ref_repeat):
        t, c, ref = timed(lambda: re_ranking(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3))
        t_ref.append(t)
        c_ref.append(c)
    print(f"reference re_ranking (numpy, given the 3 matrices): median {median(t_ref):.1f} s "
          f"(CPU {median(c_ref):.1f} s)  runs {[round(t, 1) for t in t_ref]}")
    print(f"speed-up: {median(t_ref) / median(t_ours):.1f}x (ratio of medians; of CPU time "
          f"{median(c_ref) / median(c_ours):.1f}x)")
    ties = tied_cuts(q_g, q_q, g_g, ours, ref)
    # The same algorithm given the three matrices, as the reference is: no distance computation.
    t_dense = []
    for _ in range(args.repeat):
        t, _, dense = timed(lambda: rerank(q_g, q_q, g_g))
        t_dense.append(t)
    q_q = g_g = None  # free 1.6 GB before scoring
    print(f"cpl rerank (given the 3 matrices): median {median(t_dense):.1f} s, "
          f"{median(t_ref) / median(t_dense):.1f}x the reference; max |rerank - rerank_features| "
          f"{float(np.abs(dense - ours).max()):.2e}")

    diff = np.abs(ours - ref)
    s_ours, s_ref = scores(ours, labels), scores(ref, labels)
    d_ap = float(np.nanmax(np.abs(s_ours["all_AP"] - s_ref["all_AP"])))
    print(f"max |ours - reference| {diff.max():.2e}; entries above 1e-5: {int((diff > 1e-5).sum())} of {diff.size}")
    if ties:
        print(f"  exact float32 ties straddling a cut (k2, round(k1/2)+1, k1+1) in the rows behind the "
              f"differing queries, (row, cut): {ties}")
    print(f"without re-ranking: rank-1 {plain['rank1']:.4f} mAP {plain['mAP']:.4f}")
    print(f"re-ranked, ours:      rank-1 {s_ours['rank1']:.6f} mAP {s_ours['mAP']:.6f}")
    print(f"re-ranked, reference: rank-1 {s_ref['rank1']:.6f} mAP {s_ref['mAP']:.6f}")
    print(f"|d rank-1| {abs(s_ours['rank1'] - s_ref['rank1']):.1e}, |d mAP| {abs(s_ours['mAP'] - s_ref['mAP']):.1e}, "
          f"max |d AP| of a query {d_ap:.1e}")
    results.update(
        ours={"seconds": t_ours, "cpu_seconds": c_ours, **{k: v for k, v in s_ours.items() if k != "all_AP"}},
        reference={"seconds": t_ref, "cpu_seconds": c_ref, **{k: v for k, v in s_ref.items() if k != "all_AP"}},
        plain={k: v for k, v in plain.items() if k != "all_AP"},
        max_abs_diff=float(diff.max()),
        above_1e5=int((diff > 1e-5).sum()),
        max_abs_query_ap=d_ap,
        speedup=median(t_ref) / median(t_ours),
        tied_cuts=ties,
        dense_seconds=t_dense,
    )
    _finish(results, args.json)


def _finish(results: dict, path: Path | None) -> None:
    print(f"peak RSS of this process: {peak_rss_mb():.0f} MiB")
    if path:
        write_json(path, results)


if __name__ == "__main__":
    main()
