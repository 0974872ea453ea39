"""`cpl sweep --executor ray`: its settings are refused by name where they cannot apply, a missing Ray gives the
install line, and on a local Ray cluster of two CPU workers a 2x2 fast-dev-run sweep ends with the local
executor's table, also when one worker is killed in the middle of a cell (the cell is retried by Ray and resumes
from its checkpoint). The kill point is deterministic: the cell freezes itself there (``CPL_FAULT=stop:...``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cpl import cli
from cpl.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
GRID = ["--config", "configs/synthetic.yaml", "--methods", "baseline,cpl", "--gan-images", "0,24", "--seeds", "0,1",
        "--sweep-id", "grid", "--fast-dev-run", "--set", "eval.umap=false", "--set", "data.synthetic.ids=12"]
CELLS = ["grid--baseline-g0-s0", "grid--cpl-g24-s0", "grid--baseline-g0-s1", "grid--cpl-g24-s1"]
# A local Ray instance with two CPUs, alive until its stdin closes; prints the address drivers join.
CLUSTER = ("import sys, ray; ray.init(num_cpus=2, include_dashboard=False); "
           "print(ray.get_runtime_context().gcs_address, flush=True); sys.stdin.read(); ray.shutdown()")
# Ray's token authentication with a token of this test session, shared by the cluster and the sweep's driver (a
# driver joining a cluster reads the mode and the token from its environment, as on a real cluster); and Ray's
# single-machine mode (the loopback address instead of the machine's network address: nothing leaves the host).
RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(16).hex(), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CPL_FAULT", "CPL_FAULT_ONCE", "RAY_ADDRESS")}
    return {**env, "OMP_NUM_THREADS": "1", **RAY_ENV, **extra}


def _sweep_argv(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cpl", "--runs-root", str(root), "sweep", *GRID,
            "--set", f"data.root={root.parent / 'synthetic'}", *extra]


@contextmanager
def ray_cluster(env: dict[str, str]) -> Iterator[str]:
    """A two-CPU local Ray cluster whose workers get ``env``; yields its address."""
    proc = subprocess.Popen([sys.executable, "-c", CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        address = proc.stdout.readline().strip()
        assert address, "the Ray cluster did not start"
        yield address
    finally:
        proc.stdin.close()
        try:  # the cluster shuts down when its stdin closes; a slow shutdown on a busy machine is not a failure
            proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _table(root: Path) -> str:
    return (root / "sweeps" / "grid" / "results.csv").read_text()


def _state(run: Path) -> str:
    return json.loads((run / "status.json").read_text())["state"]


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory) -> Path:
    """The same grid on the local executor: the reference table."""
    root = tmp_path_factory.mktemp("ray-sweep") / "local"
    out = subprocess.run(_sweep_argv(root), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return root


# ---------------------------------------------------------------------------------------------- settings


def _sweep(tmp_path: Path, capsys, *extra: str) -> tuple[int, str]:
    rc = cli.main(["--runs-root", str(tmp_path), "sweep", *GRID, "--set", f"data.root={tmp_path / 'data'}", *extra])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--address", "auto"], "--address: only with --executor ray"),
    (["--cpus-per-cell", "2"], "--cpus-per-cell: only with --executor ray"),
    (["--executor", "ray", "--cpus-per-cell", "0"], "--cpus-per-cell: must be >= 1, got 0"),
])
def test_settings_that_cannot_apply_are_refused_by_name(tmp_path, capsys, extra, message):
    rc, err = _sweep(tmp_path, capsys, *extra)
    assert rc == 2 and err.strip() == f"cpl: error: {message}"
    assert not (tmp_path / "sweeps").exists()


def test_without_ray_one_line_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without the extra finds
    rc, err = _sweep(tmp_path, capsys, "--executor", "ray")
    assert rc == 2 and err.splitlines() == ["cpl: error: --executor ray needs Ray, an optional extra: "
                                            "pip install .[ray]"]
    assert not (tmp_path / "sweeps").exists()


def test_cell_resources():
    from cpl.sweep.on_ray import cell_resources

    assert cell_resources("cpu", 8, 3) == {"num_cpus": 3}
    assert cell_resources("auto", 0, 2) == {"num_cpus": 2}
    assert cell_resources("auto", 4, 2) == {"num_gpus": 1}
    assert cell_resources("cuda", 1, 2) == {"num_gpus": 1}
    with pytest.raises(ConfigError, match="device: cuda, but the Ray cluster has no GPU"):
        cell_resources("cuda", 0, 1)
    with pytest.raises(ConfigError, match="device: cuda:1 cannot be used with --executor ray"):
        cell_resources("cuda:1", 8, 1)


def test_resuming_from_the_app_keeps_the_executor(tmp_path):
    from app.launching import sweep_argv

    spec = {"config_path": "c.yaml", "methods": ["cpl"], "gan_images": [24], "seeds": [0], "id": "g",
            "executor": {"kind": "ray", "address": "ray://head:10001", "cpus_per_cell": 4}}
    argv = sweep_argv(tmp_path, spec)
    assert argv[argv.index("--executor"):] == ["--executor", "ray", "--cpus-per-cell", "4",
                                               "--address", "ray://head:10001"]
    assert "--executor" not in sweep_argv(tmp_path, {**spec, "executor": {"kind": "local"}})


# ---------------------------------------------------------------------------------------------- on a cluster


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_ray_sweep_matches_the_local_executor_and_resumes(local_sweep, tmp_path):
    root = tmp_path / "ray"
    with ray_cluster(_env()) as address:
        out = subprocess.run(_sweep_argv(root, "--executor", "ray", "--address", address), cwd=REPO, env=_env(),
                             capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        assert _table(root) == _table(local_sweep)
        for cell in CELLS:
            placement = json.loads((root / cell / "placement.json").read_text())
            assert [a["attempt"] for a in placement["attempts"]] == [1]
        runs_csv = (root / "sweeps" / "grid" / "runs.csv").read_text().splitlines()
        header = runs_csv[0].split(",")
        assert header[:9] == ["run_id", "method", "variant", "gan_images", "seed", "state", "weights", "host",
                              "attempts"]
        assert all(line.split(",")[header.index("host")] == placement["attempts"][0]["host"] for line in runs_csv[1:])
        spec = json.loads((root / "sweeps" / "grid" / "sweep.json").read_text())
        assert spec["executor"] == {"kind": "ray", "address": address, "cpus_per_cell": 1}
        # The same command again: every cell is finished, none runs again. What shows it is state, not a clock: a
        # cell that ran again would add an attempt to its placement and replace its results.json (written by an
        # atomic rename: a new inode), however fast it ran.
        before = {c: _written(root / c / "results.json") for c in CELLS}
        again = subprocess.run(_sweep_argv(root, "--executor", "ray", "--address", address), cwd=REPO, env=_env(),
                               capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert {c: _written(root / c / "results.json") for c in CELLS} == before
        for cell in CELLS:
            assert [a["attempt"] for a in json.loads((root / cell / "placement.json").read_text())["attempts"]] == [1]


def _written(path: Path) -> tuple[int, int]:
    """Which write of ``path`` is there: its inode (a replacement is a new file) and modification time."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def _wait(predicate, what: str, timeout_s: float = 600.0):
    """Poll for a state that is bound to come (the test fails, not hangs, if it never does); the deadline is a
    generous bound for a loaded machine, never the expected time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _frozen_pid(marker: Path) -> int | None:
    """The pid written by the cell that hit the fault, once SIGSTOP has taken effect."""
    text = marker.read_text().strip() if marker.is_file() else ""
    if not text:
        return None
    stat = Path(f"/proc/{text}/stat").read_text()
    return int(text) if stat[stat.rindex(")") + 2] == "T" else None


@contextmanager
def _frozen_ray_sweep(root: Path, marker: Path, fault: str):
    """A Ray sweep on a local 2-CPU cluster whose first cell to reach ``fault`` (a ``stop:`` point) is frozen
    there; yields (the sweep process, the frozen cell's pid)."""
    with ray_cluster(_env(CPL_FAULT=fault, CPL_FAULT_ONCE=str(marker))) as address:
        sweep = subprocess.Popen(_sweep_argv(root, "--executor", "ray", "--address", address), cwd=REPO, env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        yield sweep, _wait(lambda: _frozen_pid(marker), "a cell to freeze at the fault point")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_worker_killed_mid_cell_is_retried_from_its_checkpoint(local_sweep, tmp_path):
    root, marker = tmp_path / "ray", tmp_path / "fault-fired"
    # The first cell to reach the 2nd iteration of its 2nd epoch (after the epoch-1 checkpoint) freezes there.
    with _frozen_ray_sweep(root, marker, "stop:train:epoch=1:iter=1") as (sweep, pid):
        try:
            cell = next(p for p in root.iterdir() if (p / "status.json").is_file()
                        and json.loads((p / "status.json").read_text())["pid"] == pid)
            worker = json.loads((cell / "placement.json").read_text())["attempts"][-1]["worker_pid"]
            os.kill(worker, signal.SIGKILL)  # the Ray worker running the cell dies; the cell dies with it
            _, err = sweep.communicate(timeout=900)
        finally:
            sweep.kill()
    assert sweep.returncode == 0, err[-3000:]
    assert all(_state(root / c) == "finished" for c in CELLS)
    attempts = json.loads((cell / "placement.json").read_text())["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2]
    assert attempts[0]["worker_pid"] == worker != attempts[1]["worker_pid"]
    epochs = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["type"] == "epoch"] == [0, 1]  # resumed after epoch 0, not from scratch
    assert _table(root) == _table(local_sweep)


def _pending_signal(pid: int, sig: int) -> bool:
    """Whether ``sig`` waits, undelivered, for the (stopped) process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("ShdPnd:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_to_the_driver_cancels_the_cells(tmp_path):
    root, marker = tmp_path / "ray", tmp_path / "fault-fired"
    # Frozen after its first training iteration: five iterations are left in which to see the stop request.
    with _frozen_ray_sweep(root, marker, "stop:train:epoch=0:iter=0") as (sweep, pid):
        try:
            sweep.send_signal(signal.SIGTERM)  # what `cpl cancel SWEEP` sends
            # The driver cancels the task, the task passes SIGTERM on to its cell: once it is pending at the frozen
            # cell, let the cell go on; it stops at its next iteration.
            _wait(lambda: _pending_signal(pid, signal.SIGTERM), "SIGTERM to reach the cell", timeout_s=400)
            os.kill(pid, signal.SIGCONT)
            _, err = sweep.communicate(timeout=300)
        finally:
            sweep.kill()
    assert sweep.returncode == 0, err[-3000:]
    cell = next(p for p in root.iterdir() if (p / "status.json").is_file()
                and json.loads((p / "status.json").read_text())["pid"] == pid)
    assert _state(cell) == "cancelled"
    assert json.loads((root / "sweeps" / "grid" / "status.json").read_text())["state"] == "cancelled"
    # Nothing is left running: every other cell finished, was cancelled too, or never started (no run directory;
    # how many got that far depends on the other worker's speed, so no count is asserted).
    others = [_state(root / c) if (root / c / "status.json").is_file() else "pending" for c in CELLS if c != cell.name]
    assert set(others) <= {"finished", "cancelled", "pending"}
