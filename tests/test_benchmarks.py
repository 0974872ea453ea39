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


def _load():
    spec = importlib.util.spec_from_file_location("train_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
