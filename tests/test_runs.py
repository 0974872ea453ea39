"""Run directories: status liveness, the device queue, launching and cancelling real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from cpl.runs.queue import device_busy, device_slot
from cpl.runs.rundir import RunDir, create_run, list_runs, valid_id
from cpl.runs.status import StatusWriter, read_status


def test_valid_ids_reject_path_tricks():
    assert valid_id("20250101-000000-synthetic-cpl-s0")
    for bad in ("../x", "a/b", "/abs", "..", ".hidden", "", "a\\b", "_cache", "sweeps", "a" * 200, "x\x00y"):
        assert not valid_id(bad), bad


def test_create_and_list(tmp_path):
    run = create_run(tmp_path, "r1", "name: x\n", {"method": "cpl"})
    assert run.config.read_text() == "name: x\n" and run.read_json("run.json")["method"] == "cpl"
    with pytest.raises(FileExistsError):
        create_run(tmp_path, "r1", "name: x\n", {})
    (tmp_path / "_cache").mkdir()
    assert [r.id for r in list_runs(tmp_path)] == ["r1"]


def test_status_of_live_and_dead_processes(tmp_path):
    run = create_run(tmp_path, "r", "", {})
    w = StatusWriter(run)
    w.update(state="running", stage="train")
    assert read_status(run)["state"] == "running"  # this very process: alive
    # A process that has exited: its pid is gone → failed, resumable.
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    w.state.update(pid=proc.pid, proc_start=None)
    w.update()
    st = read_status(run)
    assert st["state"] == "failed" and st["dead"] and "resume" in st["hint"]
    # A live pid but a stale heartbeat (e.g. a hung or frozen machine) → failed too.
    w.state.update(pid=os.getpid(), proc_start=None)
    w.update()
    assert read_status(run, now=time.time() + 120)["state"] == "failed"


def test_queue_serialises_runs_on_one_device(tmp_path):
    waited = []
    with device_slot(tmp_path, "cpu"):
        assert device_busy(tmp_path, "cpu")
        # A second process cannot take the slot while we hold it.
        code = ("import sys; from pathlib import Path; from cpl.runs.queue import device_busy; "
                f"sys.exit(0 if device_busy(Path({str(tmp_path)!r}), 'cpu') else 3)")
        assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    assert not device_busy(tmp_path, "cpu")
    with device_slot(tmp_path, "cuda:0", on_wait=lambda: waited.append(1)):
        pass
    assert waited == []


def test_lock_is_released_when_holder_is_killed(tmp_path):
    code = ("import time; from pathlib import Path; from cpl.runs.queue import device_slot\n"
            f"with device_slot(Path({str(tmp_path)!r}), 'cpu'):\n    print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    assert device_busy(tmp_path, "cpu")
    proc.kill()
    proc.wait()
    assert not device_busy(tmp_path, "cpu")


def test_cancel_while_queued(tmp_path):
    with device_slot(tmp_path, "cpu"):
        code = ("import sys, signal, threading; from pathlib import Path; from cpl.runs.queue import device_slot\n"
                "ev = threading.Event(); signal.signal(signal.SIGTERM, lambda *a: ev.set())\n"
                "try:\n"
                f"    with device_slot(Path({str(tmp_path)!r}), 'cpu', on_wait=lambda: print('queued', flush=True),"
                " should_stop=ev.is_set, poll_s=0.05):\n        sys.exit(1)\n"
                "except InterruptedError:\n    sys.exit(7)")
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "queued"
        proc.terminate()
        assert proc.wait(timeout=20) == 7


def test_rel_paths(tmp_path):
    run = RunDir(tmp_path / "runs" / "r")
    run.path.mkdir(parents=True)
    cached = tmp_path / "runs" / "_cache" / "gan" / "k" / "0001.png"
    assert run.rel(cached) == os.path.join("..", "_cache", "gan", "k", "0001.png")
    assert run.resolve(run.rel(cached)).resolve() == cached.resolve()
    outside = tmp_path / "data" / "img.jpg"
    assert run.rel(outside) == str(outside.resolve())
