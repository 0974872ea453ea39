"""Session-wide run directories for the app tests, made by the real pipeline (no mocks of its files).

One temporary "world" per test session: a runs root and a data root (the embedded synthetic dataset is
generated there by the first run). Two pipeline processes start together the first time any of the
fixtures below is used (runs on the CPU queue for the device, so they run one after the other), and
each fixture waits only for its own:

* :func:`app_run`      ``r1``: CPL on DCGAN images, ``--fast-dev-run`` (every stage, UMAP included)
* :func:`app_sweep`    sweep ``tiny`` with the ``holdout`` source, no UMAP: cells baseline (0 unlabeled
                       images) and CPL ("64": with the holdout source the count is set by
                       ``unlabeled.holdout_fraction``, not by the grid), one seed
* :func:`holdout_run`  the sweep's CPL cell: its unlabeled images are hidden real ones, so
                       ``pseudo_labels.csv`` has ``true_label``/``correct`` and the epochs ``pl_acc``

Imported by tests/conftest.py, so every test module can use them (pytest puts
``tests/`` on ``sys.path``). The processes are started once per interpreter even when several modules
import the fixtures (each import registers its own fixture definition, hence the module-level cache).
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cpl.runs.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
SYNTH_CONFIG = REPO / "configs" / "synthetic.yaml"
RUN_TIMEOUT_S = 900.0
SWEEP_ID = "tiny"


def cpl_argv(runs_root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cpl", "--runs-root", str(runs_root), *args]


@dataclass
class AppWorld:
    """Where the fixture runs live, and the environment that points the app at them."""

    runs_root: Path
    data_root: Path
    procs: dict[str, tuple[subprocess.Popen, Path]] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    @property
    def synthetic_root(self) -> Path:
        return self.data_root / "synthetic"

    def env(self) -> dict[str, str]:
        """``CPL_RUNS_ROOT`` / ``CPL_DATA_ROOTS`` for the app, and no demo run in a fresh runs root."""
        return {"CPL_RUNS_ROOT": str(self.runs_root), "CPL_DATA_ROOTS": str(self.data_root), "CPL_DEMO": "0"}

    def start(self, name: str, argv: list[str]) -> None:
        log = self.runs_root.parent / f"{name}.out"
        with open(log, "wb") as fh:
            # Own process group: a sweep's cells are its children, and stop() must end them too.
            proc = subprocess.Popen(argv, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.procs[name] = (proc, log)

    def wait(self, name: str) -> None:
        """Block until the named process ends; fail with its output when it did not succeed."""
        proc, log = self.procs[name]
        try:
            rc = proc.wait(timeout=max(1.0, RUN_TIMEOUT_S - (time.time() - self.started)))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        if rc != 0:
            tail = log.read_text(errors="replace")[-3000:]
            pytest.fail(f"fixture process {name!r} exited with {rc}:\n{tail}", pytrace=False)

    def stop(self) -> None:
        """Kill whatever is still running (a session that never waited for a fixture)."""
        for proc, _ in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the sweep's cells too, even when the sweep is gone
            proc.wait()


_WORLD: AppWorld | None = None


def _common_sets(world: AppWorld) -> list[str]:
    return ["--set", f"data.root={world.synthetic_root}"]


def _build_world(tmp: Path) -> AppWorld:
    world = AppWorld(runs_root=tmp / "runs", data_root=tmp / "data")
    world.runs_root.mkdir(parents=True)
    world.data_root.mkdir(parents=True)
    base = ["--config", str(SYNTH_CONFIG), "--fast-dev-run", *_common_sets(world)]
    world.start("r1", cpl_argv(world.runs_root, "run", *base, "--run-dir", str(world.runs_root / "r1")))
    world.start("sweep", cpl_argv(world.runs_root, "sweep", "--config", str(SYNTH_CONFIG), "--fast-dev-run",
                                  *_common_sets(world), "--set", "eval.umap=false", "--set", "unlabeled.source=holdout",
                                  "--methods", "baseline,cpl", "--gan-images", "0,64", "--seeds", "0",
                                  "--sweep-id", SWEEP_ID))
    return world


@pytest.fixture(scope="session")
def app_world(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> AppWorld:
    """The shared runs root and data root; starts the three pipeline processes (see module doc)."""
    global _WORLD
    if _WORLD is None:
        _WORLD = _build_world(tmp_path_factory.mktemp("app-world"))
        request.addfinalizer(_WORLD.stop)
    return _WORLD


@pytest.fixture(scope="session")
def app_run(app_world: AppWorld) -> RunDir:
    """The finished fast-dev-run CPL run ``r1`` (GAN images, UMAP, re-ranking)."""
    app_world.wait("r1")
    return RunDir(app_world.runs_root / "r1")


@pytest.fixture(scope="session")
def app_sweep(app_world: AppWorld) -> Path:
    """The finished sweep folder ``<runs root>/sweeps/tiny`` (cells baseline g0 and cpl g64, seed 0)."""
    app_world.wait("sweep")
    return app_world.runs_root / "sweeps" / SWEEP_ID


@pytest.fixture(scope="session")
def holdout_run(app_sweep: Path, app_world: AppWorld) -> RunDir:
    """The sweep's finished CPL cell on the holdout source: hidden real images with known identities."""
    return RunDir(app_world.runs_root / f"{SWEEP_ID}--cpl-g64-s0")


@pytest.fixture
def app_env(app_world: AppWorld, monkeypatch: pytest.MonkeyPatch) -> AppWorld:
    """Point the in-process app (AppTest) at the shared world for one test."""
    for key, value in app_world.env().items():
        monkeypatch.setenv(key, value)
    return app_world


def os_env(world: AppWorld) -> dict[str, str]:
    """The current environment plus the world's app settings (for a ``streamlit run`` subprocess)."""
    return {**os.environ, **world.env()}


def open_app(page: str | None = None, timeout: float = 120, **query: str) -> AppTest:
    """Run the app through its entry script (as a browser would), then ``page`` (e.g. ``"pages/runs.py"``)
    with the given query parameters. The environment decides which runs root it reads."""
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=timeout)
    at.query_params.update(query)
    at.run()
    if page is not None:
        at.switch_page(page)
        at.query_params.clear()
        at.query_params.update(query)
        at.run()
    return at


def wait_for(predicate, timeout_s: float = 120.0, poll_s: float = 0.5, what: str = "condition"):
    """Poll ``predicate()`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def values(field) -> np.ndarray:
    """A plotly JSON array: a list, or numpy data as ``{"dtype", "bdata", "shape"}`` (base64)."""
    if isinstance(field, dict):
        shape = [int(n) for n in str(field.get("shape", "-1")).split(",")]
        return np.frombuffer(base64.b64decode(field["bdata"]), dtype=field["dtype"]).reshape(shape)
    return np.asarray(field)
