"""Shared test fixtures.

Real research data is read from ``../shared/data`` next to the repository (or ``$CPL_SHARED_DATA``);
tests that need it skip cleanly when it is absent. It is never copied into the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cpl.engine.threads import set_wait_policy

# Before any test imports torch, as the `cpl` entry point does: idle OpenMP threads sleep instead of spinning
# against the other processes of a busy machine (docs/performance.md, "CPU threads under load").
set_wait_policy()

REPO = Path(__file__).resolve().parents[1]

# Session fixtures building real run directories for the app tests, shared by every test module.
from app_fixtures import app_env, app_run, app_sweep, app_world, holdout_run  # noqa: E402, F401
from messy_runs import messy_root  # noqa: E402, F401 - 300 fabricated run directories, 42 damaged


def shared_data_dir() -> Path:
    return Path(os.environ.get("CPL_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on the shared 2-core box, 2 OpenMP threads per process of the parallel
    suite run ~10x slower. Modules of small-model tests use it with ``pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def shared_data() -> Path:
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"real data not available at {root}")
    return root


@pytest.fixture(autouse=True, scope="session")
def _isolated_app_settings(tmp_path_factory: pytest.TempPathFactory):
    """Whatever a test forgets to set, the app never falls back to the repository's runs/ and data/ folders
    and never starts its first-start demo run (a detached training process that would outlive the suite).
    Tests that need those settings override them with monkeypatch."""
    base = tmp_path_factory.mktemp("app-defaults")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CPL_DEMO", "0")
        mp.setenv("CPL_RUNS_ROOT", str(base / "runs"))
        mp.setenv("CPL_DATA_ROOTS", str(base / "data"))
        yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the shared fixture runs (tests/app_fixtures.py) go last: the runs start at the first test
    (:func:`_start_app_world_early`) and train on one core while every other test runs on the other."""
    items.sort(key=lambda item: "app_world" in item.fixturenames)  # stable: the file order stays within each part


@pytest.fixture(autouse=True, scope="session")
def _start_app_world_early(request: pytest.FixtureRequest) -> None:
    """Start the fixture runs' processes at the first test when any selected test needs them (they run
    detached; the tests that need them wait for them)."""
    if any("app_world" in item.fixturenames for item in request.session.items):
        request.getfixturevalue("app_world")
