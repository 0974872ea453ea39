"""The training-throughput benchmark runs in its CI-sized form and reports sane numbers.

No bound on its speed ratio: a timing measured on a shared, loaded machine is not a test (the ratios with
the machine they ran on are in docs/performance.md).

The evaluation benchmarks need the reference implementations (benchmarks/requirements.txt, a separate
virtualenv), so they are not run here; their agreement is covered by test_evaluation / test_rerank.
"""

import importlib.util
import math
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
