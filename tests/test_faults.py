"""CPL_FAULT: the testing aid that kills or freezes a run at a named point (cpl/runs/faults.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from cpl.runs.faults import POINTS, parse

SCRIPT = "from cpl.runs import faults; faults.point('train', epoch=0, iter=1); faults.point('eval'); print('alive')"


def test_parse():
    assert parse("") is None
    assert parse("kill:train:epoch=1:iter=2") == ("kill", "train", {"epoch": "1", "iter": "2"})
    assert parse("kill:results") == ("kill", "results", {})
    assert parse("stop:train-end:rank=0") == ("stop", "train-end", {"rank": "0"})
    for bad in ("kill", "freeze:train", "kill:nowhere", "kill:train:epoch"):
        with pytest.raises(ValueError, match="CPL_FAULT"):
            parse(bad)
    assert len(set(POINTS)) == 10


def _env(fault: str, **extra: str) -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("CPL_FAULT", "CPL_FAULT_ONCE", "RANK")} | (
        {"CPL_FAULT": fault} if fault else {}) | extra


@pytest.mark.parametrize("fault, killed", [("kill:train:epoch=0:iter=1", True), ("kill:train:epoch=0:iter=2", False),
                                           ("kill:eval", True), ("", False), ("kill:eval:rank=0", True),
                                           ("kill:eval:rank=1", False)])
def test_point_kills_only_where_selected(fault, killed):
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=_env(fault), capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == ((-9, "") if killed else (0, "alive"))


def test_rank_selects_one_torchrun_process():
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=_env("kill:eval:rank=1", RANK="1"), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == -9


def test_killpg_takes_the_whole_group_down():
    """A parent (a sweep) whose child (a cell) reaches the point dies with it."""
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {SCRIPT!r}]); print('parent alive')"
    out = subprocess.run([sys.executable, "-c", child], env=_env("killpg:eval"), capture_output=True, text=True,
                         timeout=60, start_new_session=True)
    assert (out.returncode, out.stdout) == (-9, "")


def test_stop_freezes_once_until_continued():
    script = "from cpl.runs import faults; faults.point('eval'); faults.point('eval'); print('alive', flush=True)"
    proc = subprocess.Popen([sys.executable, "-c", script], env=_env("stop:eval"), stdout=subprocess.PIPE, text=True)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)  # returns when the child stops itself
    assert os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGSTOP
    os.kill(proc.pid, signal.SIGCONT)
    assert proc.stdout.read().strip() == "alive"  # the second reach of the point does not stop it again
    assert proc.wait(timeout=60) == 0


def test_once_fires_in_the_first_process_only(tmp_path):
    marker = tmp_path / "fired"
    env = _env("kill:eval", CPL_FAULT_ONCE=str(marker))
    first = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == -9 and marker.read_text().strip().isdigit()
    second = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert (second.returncode, second.stdout.strip()) == (0, "alive")
