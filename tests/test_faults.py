"""CPL_FAULT: the testing aid that kills (or freezes) a run at a named point (cpl/faults.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from cpl.faults import POINTS, parse

SCRIPT = "from cpl import faults; faults.point('train', epoch=0, iter=1); faults.point('eval'); print('alive')"


def test_parse():
    assert parse("") is None
    assert parse("kill:train:epoch=1:iter=2") == ("kill", "train", {"epoch": "1", "iter": "2"})
    assert parse("kill:results") == ("kill", "results", {})
    assert parse("stop:train:epoch=1") == ("stop", "train", {"epoch": "1"})
    for bad in ("kill", "freeze:train", "kill:nowhere", "kill:train:epoch"):
        with pytest.raises(ValueError, match="CPL_FAULT"):
            parse(bad)
    assert len(set(POINTS)) == 9


@pytest.mark.parametrize("fault, killed", [("kill:train:epoch=0:iter=1", True), ("kill:train:epoch=0:iter=2", False),
                                           ("kill:eval", True), ("", False)])
def test_point_kills_only_where_selected(fault, killed):
    env = {k: v for k, v in os.environ.items() if k != "CPL_FAULT"} | ({"CPL_FAULT": fault} if fault else {})
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == ((-9, "") if killed else (0, "alive"))


def _env(**extra: str) -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("CPL_FAULT", "CPL_FAULT_ONCE")} | extra


def test_once_fires_in_the_first_process_only(tmp_path):
    marker = tmp_path / "fired"
    env = _env(CPL_FAULT="kill:eval", CPL_FAULT_ONCE=str(marker))
    first = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == -9 and marker.read_text().strip().isdigit()
    second = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert (second.returncode, second.stdout.strip()) == (0, "alive")


def test_stop_freezes_the_process_at_the_point(tmp_path):
    marker = tmp_path / "fired"
    env = _env(CPL_FAULT="stop:train:epoch=0:iter=1", CPL_FAULT_ONCE=str(marker))
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE, text=True)
    try:
        # The marker is written right before SIGSTOP; waitpid(WUNTRACED) then returns once the stop is in effect.
        _, status = os.waitpid(proc.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGSTOP
        assert int(marker.read_text()) == proc.pid
        os.kill(proc.pid, signal.SIGCONT)  # it goes on from the point: nothing was lost
        assert proc.communicate(timeout=60)[0].strip() == "alive"
    finally:
        proc.kill()
