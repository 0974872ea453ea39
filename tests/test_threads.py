"""The CPU thread policy (cpl/engine/threads.py): CPUs from affinity and cgroup quotas (fake cgroup trees under
tmp_path), shared by a job's processes, overridden by the config and by OMP_NUM_THREADS; the passive wait policy
set at the ``cpl`` entry point before torch loads; the count applied and restored around a block."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cpl.config import ConfigError, load_config
from cpl.engine import threads
from cpl.engine.threads import available_cpus, cgroup_cpus, choose_threads, configured_threads, set_wait_policy

REPO = Path(__file__).resolve().parents[1]


def _tree(tmp_path: Path, proc_lines: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A fake ``/sys/fs/cgroup`` (``files``: relative path -> content) and ``/proc/self/cgroup``."""
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(proc_lines)
    return root, proc


def test_a_v2_quota_of_one_and_a_half_cpus_gives_one_thread(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, "0::/user.slice/job\n", {"user.slice/job/cpu.max": "150000 100000\n"})
    assert cgroup_cpus(root, proc) == 1.5
    cpus = available_cpus(root, proc)
    assert cpus == min(1.5, len(os.sched_getaffinity(0)))
    assert choose_threads(0, 1, cpus, environ={}).threads == 1


def test_an_unlimited_v2_cgroup_leaves_the_affinity_mask(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, "0::/job\n", {"job/cpu.max": "max 100000\n", "cpu.max": "max 100000\n"})
    assert cgroup_cpus(root, proc) is None
    assert available_cpus(root, proc) == len(os.sched_getaffinity(0))


def test_the_smallest_quota_on_the_way_to_the_root_applies(tmp_path: Path) -> None:
    """A container limited at its parent cgroup: the child's larger quota does not lift the parent's."""
    root, proc = _tree(tmp_path, "0::/pod/box\n", {"pod/cpu.max": "300000 100000\n",
                                                      "pod/box/cpu.max": "800000 100000\n"})
    assert cgroup_cpus(root, proc) == 3.0


def test_a_v1_cfs_quota_counts_and_minus_one_means_none(tmp_path: Path) -> None:
    lines = "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n"
    root, proc = _tree(tmp_path, lines, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n",
                                          "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
                                          "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
                                          "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpus(root, proc) == 2.5
    root2, proc2 = _tree(tmp_path / "b", "1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n",
                                                        "cpu/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpus(root2, proc2) is None


def test_no_cgroup_files_and_damaged_ones_mean_no_quota(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, "0::/job\n", {"job/cpu.max": "garbage\n"})
    assert cgroup_cpus(root, proc) is None
    assert cgroup_cpus(tmp_path / "nothing", tmp_path / "no-proc-file") is None


@pytest.mark.parametrize(("configured", "processes", "cpus", "environ", "threads_", "source"), [
    (0, 1, 2.0, {}, 2, "auto"),
    (0, 2, 2.0, {}, 1, "auto"),  # two local ranks share two CPUs
    (0, 2, 3.0, {}, 1, "auto"),  # floor(3 / 2)
    (0, 4, 16.0, {}, 4, "auto"),
    (0, 1, 0.5, {}, 1, "auto"),  # never below one thread
    (0, 1, 8.0, {"OMP_NUM_THREADS": "3"}, 3, "OMP_NUM_THREADS=3"),  # the user's or Ray's setting
    (0, 1, 8.0, {"OMP_NUM_THREADS": "4,2"}, 8, "auto"),  # a nested-levels list is not a count
    (0, 1, 8.0, {"OMP_NUM_THREADS": "0"}, 8, "auto"),
    (5, 1, 2.0, {"OMP_NUM_THREADS": "1"}, 5, "cpu_threads in the config"),  # the config beats the environment
])
def test_choose_threads(configured, processes, cpus, environ, threads_, source) -> None:
    choice = choose_threads(configured, processes, cpus, environ)
    assert (choice.threads, choice.source) == (threads_, source)


def test_the_log_line_names_the_count_and_why() -> None:
    line = choose_threads(0, 2, 4.0, {}).describe()
    assert line.startswith("2 CPU threads (auto: 4 CPUs / 2 processes, OMP_WAIT_POLICY=")


def test_the_wait_policy_is_passive_unless_the_user_chose_one() -> None:
    env: dict[str, str] = {}
    assert set_wait_policy(env) == "PASSIVE" and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert set_wait_policy(env) == "ACTIVE" and env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_the_cpl_entry_point_sets_the_policy_before_torch_is_imported() -> None:
    """``cpl`` imports torch only inside a command: the policy is in the environment by then (and inherited by
    every process it starts)."""
    code = ("import os, sys; from cpl import cli; assert 'torch' not in sys.modules; cli.main(['ls']); "
            "print(os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | {"PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "PASSIVE"


def test_configured_threads_applies_the_count_and_restores_the_previous_one(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(threads, "available_cpus", lambda: 1.0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    with configured_threads(3) as choice:
        assert choice.threads == 3 and torch.get_num_threads() == 3
    assert torch.get_num_threads() == before
    with configured_threads(0) as choice:
        assert (choice.threads, choice.source) == (1, "auto") and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_cpu_threads_is_a_validated_config_key() -> None:
    assert load_config(None, ["data.root=x", "cpu_threads=3"]).cpu_threads == 3
    with pytest.raises(ConfigError, match="cpu_threads"):
        load_config(None, ["data.root=x", "cpu_threads=-1"])


def test_a_run_computes_with_the_chosen_count_and_records_it(tmp_path: Path) -> None:
    """The runner applies the policy for the stages (they see the count), writes it to status.json and the log,
    and leaves the calling process's count as it was."""
    import torch

    from cpl.config import dump_yaml
    from cpl.runs.rundir import create_run
    from cpl.runs.state import Stage
    from cpl.stages.context import StageSpec
    from cpl.stages.runner import run_stages

    cfg = load_config(REPO / "configs" / "synthetic.yaml", ["device=cpu", "cpu_threads=3"])
    run = create_run(tmp_path, "t", dump_yaml(cfg), {"argv": [], "method": "cpl", "sweep": None})
    seen = []

    def stage(ctx) -> None:
        seen.append(torch.get_num_threads())
        ctx.evaluated = type("E", (), {"results": {"rank1": 1.0, "mAP": 1.0}})()

    before = torch.get_num_threads()
    run_stages(run, [StageSpec(Stage.EVALUATE, stage, weight=lambda c: 1.0, writes=(), resume="-")])
    assert seen == [3] and torch.get_num_threads() == before
    assert json.loads(run.status.read_text())["cpu_threads"] == 3
    assert "computing with 3 CPU threads (cpu_threads in the config, OMP_WAIT_POLICY=" in run.log.read_text()
