"""Shared by eval_speed.py and rerank_speed.py: labels, synthetic features, references, measuring.

Run the benchmarks with the benchmark environment's interpreter (see benchmarks/README.md): it
holds the reference implementations (torchreid's Cython evaluator and numpy re-ranking, from the
``pyppbox-torchreid`` package, which packages torchreid with its Cython extension) next to
CPL Studio's own runtime.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

REFERENCE_PACKAGE = "pyppbox-torchreid"
MARKET_LABELS = "market1501_test_labels.npz"
MSMT_SHAPE = {"queries": 11659, "gallery": 82161, "ids": 3060, "cameras": 15}


def shared_data_dir() -> Path:
    return Path(os.environ.get("CPL_SHARED_DATA", REPO.parent / "shared" / "data"))


def market_labels(seed: int = 0) -> tuple[dict[str, np.ndarray], str]:
    """The real Market-1501 test labels, or random ones of the same shape when absent."""
    path = shared_data_dir() / MARKET_LABELS
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k].astype(np.int64) for k in ("q_pids", "q_camids", "g_pids", "g_camids")}, str(path)
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, 751, 3368)
    g_pids = np.concatenate([rng.integers(1, 751, 13115), np.zeros(2798, np.int64), np.full(3819, -1)])
    labels = {
        "q_pids": q_pids,
        "q_camids": rng.integers(1, 7, 3368),
        "g_pids": g_pids,
        "g_camids": rng.integers(1, 7, g_pids.size),
    }
    return labels, "random labels of Market-1501's shape (real labels not found)"


def msmt_labels(seed: int = 0) -> dict[str, np.ndarray]:
    """Random labels of MSMT17's test shape: 11,659 queries, 82,161 gallery, 3,060 ids, 15 cameras."""
    rng = np.random.default_rng(seed)
    ids, cams = MSMT_SHAPE["ids"], MSMT_SHAPE["cameras"]
    return {
        "q_pids": rng.integers(0, ids, MSMT_SHAPE["queries"]),
        "q_camids": rng.integers(0, cams, MSMT_SHAPE["queries"]),
        "g_pids": rng.integers(0, ids, MSMT_SHAPE["gallery"]),
        "g_camids": rng.integers(0, cams, MSMT_SHAPE["gallery"]),
    }


def synthetic_features(
    pids: np.ndarray, camids: np.ndarray, dim: int, noise: float, seed: int
) -> np.ndarray:
    """[N, dim] float32 L2-normalised features: identity prototype + camera bias + noise.

    Junk (-1) and distractor (0) images get their own random prototype each, like unrelated
    people. ``noise`` sets the difficulty; 0.5 * dim ** 0.25 gives rank-1 of 60-85 % on Market.
    """
    rng = np.random.default_rng(seed)
    # Prototypes and camera biases are seeded by their own id, so queries and gallery agree.
    uniq, inverse = np.unique(pids, return_inverse=True)
    protos = np.stack([np.random.default_rng([12345, int(p) + 1]).standard_normal(dim) for p in uniq])
    cams = np.unique(camids)
    cam_bias = np.zeros((int(cams.max()) + 1, dim), dtype=np.float32)
    for c in cams:
        cam_bias[c] = 0.5 * np.random.default_rng([777, int(c)]).standard_normal(dim)
    protos = protos.astype(np.float32)
    out = np.empty((pids.size, dim), dtype=np.float32)
    for s in range(0, pids.size, 8192):
        sl = slice(s, s + 8192)
        base = protos[inverse[sl]]
        loners = pids[sl] <= 0
        base[loners] = rng.standard_normal((int(loners.sum()), dim)).astype(np.float32)
        f = base + cam_bias[camids[sl]] + noise * rng.standard_normal((base.shape[0], dim)).astype(np.float32)
        out[sl] = f / np.linalg.norm(f, axis=1, keepdims=True)
    return out


def euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] float32 Euclidean distances, accumulated in float64 (blockwise)."""
    import torch

    out = np.empty((a.shape[0], b.shape[0]), dtype=np.float32)
    bt = torch.from_numpy(b).double()
    nb = bt.square().sum(dim=1)
    for s in range(0, a.shape[0], 1024):
        at = torch.from_numpy(a[s : s + 1024]).double()
        d2 = at.square().sum(dim=1)[:, None] + nb[None, :] - 2.0 * at @ bt.T
        out[s : s + 1024] = d2.clamp_(min=0.0).sqrt_().float().numpy()
    return out


def reference_module(relative_path: str) -> ModuleType:
    """Load one module file of the installed reference package, e.g. ``"metrics/rank"``.

    ``relative_path`` has no extension: a compiled extension or a .py file both match. The file
    is loaded on its own, without importing ``pyppbox_torchreid`` as a package, which would pull
    in its whole training stack (tensorboard, matplotlib, ...) for two numpy-only files.
    """
    try:
        dist = importlib.metadata.distribution(REFERENCE_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        sys.exit(
            f"the reference package {REFERENCE_PACKAGE} is not installed in {sys.executable}; "
            "set up the benchmark environment as benchmarks/README.md describes"
        )
    suffixes = [*importlib.machinery.EXTENSION_SUFFIXES, ".py"]
    for file in dist.files or []:
        name = str(file).replace("\\", "/")
        for suffix in suffixes:
            if name.endswith(suffix) and name[: -len(suffix)].endswith("/" + relative_path):
                path = Path(dist.locate_file(file))
                spec = importlib.util.spec_from_file_location(path.name.split(".")[0], path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                return module
    sys.exit(f"{relative_path} not found in {REFERENCE_PACKAGE} (was its Cython extension built?)")


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process over all its threads, fn's result)."""
    cpu, start = time.process_time(), time.perf_counter()
    result = fn()
    return time.perf_counter() - start, time.process_time() - cpu, result


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def _status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def current_rss_mb() -> float:
    """Resident set size of this process now, MiB."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident set size of this process, MiB.

    VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork + exec, so a child
    started from a big parent would report the parent's size.
    """
    return _status_mb("VmHWM")


def run_isolated(script: str, args: list[str]) -> dict:
    """Run ``python benchmarks/<script> args`` in a fresh process; it prints one JSON line last."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name(script)), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"isolated run failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    import torch

    model = platform.processor() or "unknown CPU"
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{model}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), numpy {np.__version__}, Python {platform.python_version()}"
    )
