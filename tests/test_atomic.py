"""Atomic writes: a writer killed at any moment leaves the previous complete file, never a torn one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cpl.runs.atomic import append_jsonl, read_jsonl, write_json


def test_exception_mid_write_keeps_previous_file_and_no_temp(tmp_path):
    target = tmp_path / "status.json"
    write_json(target, {"v": 1})
    with pytest.raises(TypeError):
        write_json(target, {"v": object()})  # fails while serialising
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_sigkill_during_rewrites_never_leaves_a_torn_file(tmp_path):
    target = tmp_path / "big.json"
    code = ("import sys, itertools; from cpl.runs.atomic import write_json\n"
            f"p = {str(target)!r}\n"
            "for i in itertools.count():\n"
            "    write_json(p, {'i': i, 'payload': 'x' * 2_000_000})\n"
            "    if i == 0: print('ready', flush=True)\n")
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        data = json.loads(target.read_text())  # always a complete document
        assert len(data["payload"]) == 2_000_000


def test_jsonl_reader_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"a": 1})
    append_jsonl(path, {"a": 2})
    with open(path, "a") as fh:
        fh.write('{"a": 3, "b"')  # a writer killed mid-line
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    append_jsonl(path, {"a": 4})  # a resumed writer: its record survives the torn line
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 4}]
