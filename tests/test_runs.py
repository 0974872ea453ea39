"""Run directories: status liveness, the device queue, launching and cancelling real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from cpl.engine.dist import DistInfo, device_name, job_devices
from cpl.runs.queue import device_busy, device_slot, device_slots, lock_holder, wait_until_held
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


def test_a_job_claims_the_device_of_every_local_process():
    """What the queue locks: a torchrun job on CUDA one GPU per process, gloo processes the one CPU."""
    assert [device_name("cuda", r, True) for r in range(3)] == ["cuda:0", "cuda:1", "cuda:2"]
    assert device_name("auto", 1, True) == "cuda:1" and device_name("auto", 1, False) == "cpu"
    assert device_name("cuda:1", 0, True) == "cuda:1" and device_name("cpu", 3, True) == "cpu"
    assert job_devices("cpu", DistInfo(0, 4, 0, 4)) == ["cpu"]
    assert job_devices("cpu", DistInfo()) == ["cpu"]


def test_a_multi_device_claim_waits_for_a_busy_device_in_sorted_order(tmp_path):
    """An "all GPUs" claim (cuda:1 + cuda:0) against a single-GPU run holding cuda:1: it takes cuda:0 first (the
    sorted order every claim uses, so two claims can never each hold what the other waits for), waits for cuda:1
    with the device named, and holds both once it is free."""
    waiting, holding, done = threading.Event(), threading.Event(), threading.Event()
    seen: list[str] = []

    def job() -> None:
        def on_wait(device: str) -> None:
            seen.append(device)
            waiting.set()

        with device_slots(tmp_path, ["cuda:1", "cuda:0"], on_wait=on_wait, poll_s=0.05, holder="all-gpus"):
            holding.set()
            done.wait(60)

    with device_slot(tmp_path, "cuda:1", holder="single"):
        thread = threading.Thread(target=job)
        thread.start()
        assert waiting.wait(60)
        assert seen == ["cuda:1"] and not holding.is_set()
        assert lock_holder(tmp_path, "cuda:0").endswith(" all-gpus")
        assert lock_holder(tmp_path, "cuda:1").endswith(" single")
    assert holding.wait(60)
    assert [lock_holder(tmp_path, d).split(" ")[1] for d in ("cuda:0", "cuda:1")] == ["all-gpus", "all-gpus"]
    done.set()
    thread.join(60)
    assert lock_holder(tmp_path, "cuda:0") is None and lock_holder(tmp_path, "cuda:1") is None


def test_other_ranks_wait_until_the_claim_is_held(tmp_path):
    stop = threading.Event()
    stop.set()
    with pytest.raises(InterruptedError):  # nobody holds it yet: a cancelled rank stops waiting
        wait_until_held(tmp_path, ["cpu"], "job", should_stop=stop.is_set, poll_s=0.01)
    with device_slot(tmp_path, "cpu", holder="other"):
        with pytest.raises(InterruptedError):  # held, but by another run
            wait_until_held(tmp_path, ["cpu"], "job", should_stop=stop.is_set, poll_s=0.01)
    with device_slot(tmp_path, "cpu", holder="job"):
        wait_until_held(tmp_path, ["cpu"], "job", should_stop=stop.is_set)  # returns at once


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


def test_elapsed_time_runs_to_the_clock_while_active_and_stops_at_the_end() -> None:
    from cpl.runs.status import elapsed_s

    base = {"started": 1000.0, "updated": 1005.0, "heartbeat": 1040.0}
    assert elapsed_s({**base, "state": "running"}, now=1070.0) == 70.0  # not 5 s: the stage is just silent
    assert elapsed_s({**base, "state": "queued"}, now=1010.0) == 10.0
    assert elapsed_s({**base, "state": "finished", "finished": 1500.0}, now=9999.0) == 500.0
    assert elapsed_s({**base, "state": "failed", "dead": True}, now=9999.0) == 40.0  # to its last heartbeat
    assert elapsed_s({"state": "running"}, now=5.0) is None
