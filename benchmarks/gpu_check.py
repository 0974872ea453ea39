"""The one-command GPU check: training throughput, one CPL run end to end, evaluation + re-ranking at scale.

    benchmarks/gpu_check.sh                          # on a GPU: at most ~8 minutes
    benchmarks/gpu_check.sh --device cpu --tiny      # the same steps at tiny sizes, about a minute on a CPU
    benchmarks/gpu_check.sh --out DIR                # where report.json and report.md go (default gpu-check/)

1. Training throughput (train_throughput.py's loops: our CPL trainer and a bare PyTorch loop): ResNet-50 at
   256x128, batch 64, with autocast (bf16) and without; img/s and peak device memory of each.
2. One short CPL run (``cpl run``) on a Market-sized synthetic dataset: 12,936 training images, 3,368
   queries, 24,000 GAN images, DCGAN 1 epoch, 2 training epochs; its stage times, read from the run
   directory (results.json ``stage_times_s``, gan.json ``train_time_s``), and its rank-1/mAP.
3. Evaluation and k-reciprocal re-ranking on device tensors with random features of realistic difficulty
   (eval_common.py): Market-1501 (3,368 queries x 15,913 gallery) and MSMT17 (11,659 x 82,161), 2048-d.

Memory: on CUDA ``torch.cuda.max_memory_allocated`` of each step; on a CPU the process's peak resident size so
far (VmHWM), which only grows. ``--tiny`` shrinks every size (ResNet-18 at 128x64 in batches of 8, a
12-identity dataset with --fast-dev-run's caps and no UMAP, a few hundred queries of 64-d features) so that a
test can run all of it on a CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import train_throughput as tt
from eval_common import REPO, market_labels, msmt_labels, peak_rss_mb, synthetic_features

from cpl import PROG
from cpl.evaluation import evaluate, rerank_features
from cpl.runs.atomic import write_json, write_text

BUDGET_S = 480  # the GPU run's target: one short device lease

# `cpl run` settings of step 2 on top of configs/synthetic.yaml. 1,100 identities seen by 6 cameras give
# 13,193 training images, capped to Market-1501's 12,936; queries capped to Market's 3,368.
MARKET_RUN = ["data.synthetic.ids=1100", "data.synthetic.cameras=6", "data.max_train_images=12936",
              "data.max_query_images=3368", "unlabeled.num_images=24000", "gan.epochs=1", "train.epochs=2",
              "train.lr_milestones=[1]", "train.batch_size=64"]
TINY_RUN = ["data.synthetic.ids=12", "eval.umap=false"]  # plus --fast-dev-run's caps


# ---------------------------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """Peak device memory since the last reset (CUDA), or this process's peak resident size (CPU), MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# ---------------------------------------------------------------------------------------------- 1. throughput


def throughput(device: torch.device, tiny: bool) -> list[dict]:
    """Our trainer and the bare loop at each AMP setting: img/s (median of repeats) and peak memory (MiB)."""
    out = []
    for amp in ("off", "bf16"):
        argv = ["--device", str(device), "--amp", amp] + (["--quick", "--repeats", "1", "--iters", "1", "--batch", "8"]
                                                           if tiny else ["--repeats", "3"])
        args = tt.parse_args(argv)
        _reset_peak(device)
        res = tt.measure(f"re-ID step, AMP {amp}", tt.reid_setup(args, device), args.repeats)
        out.append({"amp": amp, "backbone": args.backbone, "input": f"{args.height}x{args.width}",
                    "batch": args.batch, "ours_img_s": res["ours"], "bare_img_s": res["bare"],
                    "bare_over_ours": res["ratio"], "peak_memory_mib": peak_memory_mib(device)})
    return out


# ---------------------------------------------------------------------------------------------- 2. one CPL run


def cpl_run(out: Path, device: torch.device, tiny: bool, timeout_s: float) -> dict:
    """``cpl run`` on the synthetic dataset (generated into ``out``), then its stage times from its files."""
    run_dir, data = out / "runs" / "cpl-check", out / "data" / ("synthetic-tiny" if tiny else "synthetic-market")
    sets = [f"device={device}", f"data.root={data}", *(TINY_RUN if tiny else MARKET_RUN)]
    argv = [sys.executable, "-m", PROG, "--runs-root", str(run_dir.parent), "run", "--config",
            str(REPO / "configs" / "synthetic.yaml"), "--run-dir", str(run_dir), *sum((["--set", s] for s in sets), [])]
    if tiny:
        argv.append("--fast-dev-run")
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"cpl run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return run_report(run_dir, wall, sets)


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def run_report(run_dir: Path, wall_s: float, sets: list[str]) -> dict:
    """What the run directory says about the run: stage seconds, DCGAN and training time, images, metrics."""
    res, gan = _read(run_dir / "results.json"), _read(run_dir / "gan.json")
    dataset = _read(run_dir / "dataset.json")
    return {"run_dir": str(run_dir), "overrides": sets, "wall_s": wall_s, "stage_times_s": res["stage_times_s"],
            "total_time_s": res["total_time_s"], "train_time_s": res["train_time_s"],
            "gan_train_time_s": gan.get("train_time_s"), "num_unlabeled": res["num_unlabeled"],
            "dataset": {k: dataset.get(k) for k in ("train", "query", "gallery") if k in dataset},
            "rank1": res["rank1"], "mAP": res["mAP"], "rr_rank1": (res.get("rerank") or {}).get("rank1"),
            "device": res["device"]}


# ---------------------------------------------------------------------------------------------- 3. retrieval


def _subset(labels: dict, n_ids: int, n_others: int) -> dict:
    """The queries and gallery images of the first ``n_ids`` query identities, plus ``n_others`` gallery images
    of other identities (distractors to them): a small case in which every query can have a match."""
    ids = np.unique(labels["q_pids"])[:n_ids]
    q = np.isin(labels["q_pids"], ids)
    g = np.isin(labels["g_pids"], ids)
    g[np.flatnonzero(~g)[:n_others]] = True
    return {k: v[q] if k.startswith("q_") else v[g] for k, v in labels.items()}


def retrieval_cases(tiny: bool) -> list[tuple[str, dict, int]]:
    """(name, labels, feature size) of each scale; tiny = a few hundred queries and a couple of thousand gallery
    images of each."""
    market = market_labels()[0]
    market = {**market, "g_pids": market["g_pids"][market["g_pids"] != -1],  # 15,913: without junk, as loaded
              "g_camids": market["g_camids"][market["g_pids"] != -1]}
    msmt = msmt_labels()
    if tiny:
        return [("Market-1501", _subset(market, 40, 500), 64), ("MSMT17", _subset(msmt, 60, 400), 64)]
    return [("Market-1501", market, 2048), ("MSMT17", msmt, 2048)]


def retrieval(name: str, labels: dict, dim: int, device: torch.device) -> dict:
    """Evaluation of the cosine distances and re-ranking from the features, both on ``device``: seconds, peak
    memory, rank-1 / mAP (percent) before and after re-ranking."""
    qf = torch.from_numpy(synthetic_features(labels["q_pids"], labels["q_camids"], dim, 0.5 * dim**0.25, seed=1))
    gf = torch.from_numpy(synthetic_features(labels["g_pids"], labels["g_camids"], dim, 0.5 * dim**0.25, seed=2))
    qf, gf = qf.to(device), gf.to(device)
    ids = (labels["q_pids"], labels["g_pids"], labels["q_camids"], labels["g_camids"])
    _reset_peak(device)
    _sync(device)
    t0 = time.perf_counter()
    base = evaluate(1.0 - qf @ gf.T, *ids)
    _sync(device)
    t_eval = time.perf_counter() - t0
    mem_eval = peak_memory_mib(device)
    _reset_peak(device)
    t0 = time.perf_counter()
    rr = rerank_features(qf, gf)  # [nq, ng] float32 numpy: the copy back to the host is part of the time
    t_rr = time.perf_counter() - t0
    mem_rr = peak_memory_mib(device)
    reranked = evaluate(torch.from_numpy(rr).to(device), *ids)
    return {"scale": name, "queries": int(qf.shape[0]), "gallery": int(gf.shape[0]), "dim": dim,
            "evaluate_s": t_eval, "evaluate_peak_memory_mib": mem_eval, "rerank_s": t_rr,
            "rerank_peak_memory_mib": mem_rr, "rank1": 100 * float(base["cmc"][0]), "mAP": 100 * base["mAP"],
            "rr_rank1": 100 * float(reranked["cmc"][0]), "rr_mAP": 100 * reranked["mAP"]}


# ---------------------------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    """The report as Markdown: one table per step."""
    mem = "peak GPU memory (MiB)" if report["device"].startswith("cuda") else "peak process RSS (MiB)"
    lines = [f"# GPU check: {report['device_name']}\n",
             f"{report['device']}, torch {report['torch']}, {'tiny sizes' if report['tiny'] else 'full sizes'}; "
             f"{report['total_s']:.0f} s in all (target {report['budget_s']} s).\n",
             "## Training throughput\n",
             f"| AMP | backbone | input | batch | ours (img/s) | bare loop (img/s) | {mem} |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['amp']} | {r['backbone']} | {r['input']} | {r['batch']} | {r['ours_img_s']:.1f} | "
              f"{r['bare_img_s']:.1f} | {r['peak_memory_mib']:.0f} |" for r in report["throughput"]]
    run = report["cpl_run"]
    lines += ["", "## One CPL run, end to end\n",
              f"`cpl run` with {', '.join(run['overrides'])}: {run['num_unlabeled']} GAN images; "
              f"rank-1 {run['rank1']:.2f}, mAP {run['mAP']:.2f}; {run['wall_s']:.0f} s for the whole command.\n",
              "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {s:.1f} |" for stage, s in run["stage_times_s"].items()]
    lines += [f"| (DCGAN training, within gan) | {run['gan_train_time_s']:.1f} |",
              f"| (training epochs, within train) | {run['train_time_s']:.1f} |", "",
              "## Evaluation and re-ranking on device tensors\n",
              f"| scale | queries x gallery | dim | evaluate (s) | {mem} | re-rank (s) | {mem} | rank-1 | mAP | "
              "rank-1 RR | mAP RR |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['scale']} | {r['queries']:,} x {r['gallery']:,} | {r['dim']} | {r['evaluate_s']:.2f} | "
              f"{r['evaluate_peak_memory_mib']:.0f} | {r['rerank_s']:.2f} | {r['rerank_peak_memory_mib']:.0f} | "
              f"{r['rank1']:.2f} | {r['mAP']:.2f} | {r['rr_rank1']:.2f} | {r['rr_mAP']:.2f} |"
              for r in report["retrieval"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: the same steps in about a minute on a CPU")
    p.add_argument("--out", type=Path, default=REPO / "gpu-check", help="folder of report.json and report.md")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device here (use --device cpu --tiny for the CPU form)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report: dict = {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
                    "tiny": args.tiny, "budget_s": BUDGET_S, "started": time.time()}
    print(f"GPU check on {report['device_name']} ({'tiny' if args.tiny else 'full'} sizes)", flush=True)
    report["throughput"] = throughput(device, args.tiny)
    report["cpl_run"] = cpl_run(args.out, device, args.tiny, timeout_s=BUDGET_S)
    print(f"CPL run: stages {report['cpl_run']['stage_times_s']}", flush=True)
    report["retrieval"] = [retrieval(name, labels, dim, device) for name, labels, dim in retrieval_cases(args.tiny)]
    report["total_s"] = time.perf_counter() - t0
    write_json(args.out / "report.json", report)
    write_text(args.out / "report.md", markdown(report))
    print(f"{report['total_s']:.0f} s; reports in {args.out}/report.json and report.md")
    return report


if __name__ == "__main__":
    main()
