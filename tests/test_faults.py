"""CPL_FAULT: the testing aid that kills a run at a named point (cpl/faults.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cpl.faults import POINTS, parse

SCRIPT = "from cpl import faults; faults.point('train', epoch=0, iter=1); faults.point('eval'); print('alive')"


def test_parse():
    assert parse("") is None
    assert parse("kill:train:epoch=1:iter=2") == ("train", {"epoch": "1", "iter": "2"})
    assert parse("kill:results") == ("results", {})
    for bad in ("kill", "stop:train", "kill:nowhere", "kill:train:epoch"):
        with pytest.raises(ValueError, match="CPL_FAULT"):
            parse(bad)
    assert len(set(POINTS)) == 9


@pytest.mark.parametrize("fault, killed", [("kill:train:epoch=0:iter=1", True), ("kill:train:epoch=0:iter=2", False),
                                           ("kill:eval", True), ("", False)])
def test_point_kills_only_where_selected(fault, killed):
    env = {k: v for k, v in os.environ.items() if k != "CPL_FAULT"} | ({"CPL_FAULT": fault} if fault else {})
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == ((-9, "") if killed else (0, "alive"))
