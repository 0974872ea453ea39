"""The training-throughput benchmark runs in its CI-sized form and reports sane numbers; the GPU check runs in its
CPU form (``--device cpu --tiny``) and writes its reports.

No bound on its speed ratio: a timing measured on a shared, loaded machine is not a test (the ratios with
the machine they ran on are in docs/performance.md).

The evaluation benchmarks need the reference implementations (benchmarks/requirements.txt, a separate
virtualenv), so they are not run here; their agreement is covered by test_evaluation / test_rerank.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"


def _benchmark(path: Path):
    """The benchmark script ``path`` imported as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load():
    return _benchmark(BENCH)


@pytest.mark.slow  # ~50 s: two training loops timed; the engine has its own fast tests
def test_train_throughput_quick_on_cpu(capsys):
    out = _load().main(["--quick", "--device", "cpu", "--repeats", "1", "--gan-steps", "1"])
    printed = capsys.readouterr().out
    assert "bare/ours" in printed and "device: CPU" in printed
    for part in ("reid", "gan"):
        r = out[part]
        assert r["ours"] > 0 and r["bare"] > 0 and math.isfinite(r["ratio"]) and r["ratio"] > 0


GPU_CHECK = BENCH.parent / "gpu_check.sh"


@pytest.mark.slow  # about a minute
@pytest.mark.timeout(600)
def test_gpu_check_tiny_on_cpu(tmp_path):
    """The GPU check's CPU form runs every step and writes both reports with positive numbers."""
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run([str(GPU_CHECK), "--device", "cpu", "--tiny", "--out", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["device"], report["tiny"]) == ("cpu", True) and report["total_s"] > 0
    assert [r["amp"] for r in report["throughput"]] == ["off", "bf16"]
    for r in report["throughput"]:
        assert r["ours_img_s"] > 0 and r["bare_img_s"] > 0 and r["peak_memory_mib"] > 0
    run = report["cpl_run"]
    # the stages, in the order they ran
    assert list(run["stage_times_s"]) == ["data", "unlabeled", "train", "evaluate", "export"]
    assert all(s > 0 for s in run["stage_times_s"].values()) and run["gan_train_time_s"] > 0
    assert run["train_time_s"] > 0 and run["num_unlabeled"] > 0 and 0 <= run["rank1"] <= 100
    assert [r["scale"] for r in report["retrieval"]] == ["Market-1501", "MSMT17"]
    for r in report["retrieval"]:
        assert r["evaluate_s"] > 0 and r["rerank_s"] > 0 and r["rerank_peak_memory_mib"] > 0
        assert 0 < r["rank1"] <= 100 and 0 < r["rr_mAP"] <= 100
    md = (tmp_path / "report.md").read_text()
    for heading in ("## Training throughput", "## One CPL run, end to end", "## Evaluation and re-ranking"):
        assert heading in md
    assert "| train |" in md and "| MSMT17 |" in md


THREADS = BENCH.parent / "threads_load.py"


def _load_threads():
    return _benchmark(THREADS)


def test_threads_benchmark_load_is_always_killed_and_its_arguments_checked():
    """The competing load is one live busy process per requested core inside the block and none after it, also
    when the block fails; the options are checked and handed to each variant's child."""
    bench = _load_threads()
    with pytest.raises(RuntimeError), bench.competing_load(2, max_s=60) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
        raise RuntimeError("a failing timing")
    assert all(p.poll() is not None for p in procs)
    args = bench.parse_args(["--quick", "--repeats", "2", "--variants", "default,ours"])
    assert (args.batch, args.height, args.width, args.repeats) == (8, 64, 32, 2)
    argv = bench.child_argv(args, "ours")
    assert argv[argv.index("--worker") + 1] == "ours" and argv[argv.index("--repeats") + 1] == "2"
    with pytest.raises(SystemExit):
        bench.parse_args(["--variants", "default,fastest"])
    env = bench.worker_env("ours", {"OMP_NUM_THREADS": "7", "OMP_WAIT_POLICY": "ACTIVE", "HOME": "/h"})
    assert "OMP_NUM_THREADS" not in env and "OMP_WAIT_POLICY" not in env and env["HOME"] == "/h"


def test_threads_benchmark_summary_takes_medians_and_ratios():
    bench = _load_threads()
    rec = {"threads": 2, "wait_policy": "default", "quiet_step": [1.0, 3.0, 2.0], "loaded_step": [6.0, 4.0, 5.0],
           "quiet_extract": [1.0], "loaded_extract": [3.0]}
    rows = bench.summarize([{**rec, "variant": "default"},
                            {**rec, "variant": "ours", "loaded_step": [2.5, 2.5, 3.0], "wait_policy": "PASSIVE"}])
    default, ours = rows
    assert (default["quiet_step"], default["loaded_step"], default["step_loaded_over_quiet"]) == (2.0, 5.0, 2.5)
    assert (ours["step_loaded_over_quiet"], ours["loaded_step_vs_default"], ours["quiet_step_vs_default"]) == \
        (1.25, 0.5, 1.0)
    assert default["extract_loaded_over_quiet"] == 3.0


@pytest.mark.slow  # ~50 s: three child processes, each builds Lite0 and times quiet and loaded
def test_threads_benchmark_quick_runs_every_variant(capsys):
    rows = _load_threads().main(["--quick", "--load", "1", "--max-load-s", "120"])
    assert [r["variant"] for r in rows] == ["default", "one", "ours"]
    assert [r["wait_policy"] for r in rows] == ["default", "default", "PASSIVE"]
    assert rows[1]["threads"] == 1 and rows[2]["threads"] >= 1
    for r in rows:
        assert all(r[k] > 0 for k in ("quiet_step", "loaded_step", "quiet_extract", "loaded_extract"))
    assert "vs default" in capsys.readouterr().out


def test_data_memory_writes_an_msmt17_layout_of_the_scaled_split_sizes(tmp_path):
    """The MSMT17-scale benchmark's dataset: read as MSMT17 by the format table, MSMT17's split sizes and identity
    counts times the scale, every image a hard link to one of the rendered crops."""
    from cpl.data.formats import load_dataset, resolve

    bench = _benchmark(BENCH.parent / "data_memory.py")
    root = tmp_path / "msmt17"
    n = bench.write_msmt17(root, 0.01)
    assert resolve(root, "auto").name == "msmt17"
    ds = load_dataset(root)
    sizes = {name: round(count * 0.01) for name, (count, _) in bench.MSMT17.items()}
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (sizes["train"] + sizes["val"], sizes["query"],
                                                                sizes["gallery"]) and n == sum(sizes.values())
    assert ds.num_classes == round(1_041 * 0.01)
    assert {os.stat(p).st_nlink > 1 for p in ds.gallery.paths} == {True}


@pytest.mark.slow  # ~1-2 min: three child processes, each trains a step, evaluates and re-ranks
@pytest.mark.timeout(900)
def test_data_memory_runs_every_setting_at_a_tiny_size(tmp_path, capsys):
    bench = _benchmark(BENCH.parent / "data_memory.py")
    rows = bench.main(["--scale", "0.002", "--height", "32", "--width", "16", "--backbone", "resnet18", "--batch", "4",
                       "--steps", "1", "--extract", "8", "--workdir", str(tmp_path)])
    assert [r["cache"] for r in rows] == ["memory", "disk", "disk"]
    for row in rows:
        assert list(row["phases"]) == ["decode", "train", "extract", "read", "evaluate", "rerank"]
        assert all(ph["img_s"] > 0 and ph["anon_mib"] > 0 and ph["hwm_mib"] > 0 for ph in row["phases"].values())
    capsys.readouterr()
    too_big = ["--scale", "0.002", "--settings", "memory", "--max-gib", "0.1", "--workdir", str(tmp_path)]
    assert bench.main(too_big) == []
    assert "data.cache=memory: not run" in capsys.readouterr().out


def test_batch_gather_benchmark_gathers_the_same_bytes_three_ways(capsys):
    """benchmarks/batch_gather.py: the reference (one concatenated tensor), the in-memory source and the disk cache
    gather equal batches (the script asserts it per batch) and each gets a positive time."""
    ms = _benchmark(BENCH.parent / "batch_gather.py").main(["--batches", "3", "--labeled", "20", "--unlabeled", "7",
                                                            "--height", "16", "--width", "8", "--batch", "8"])
    assert set(ms) == {"reference", "memory", "disk"} and all(v > 0 for v in ms.values())
    assert "x the reference" in capsys.readouterr().out
