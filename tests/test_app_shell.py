"""The entry script: navigation over every page, the first-start demo run, and the server settings."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest
from app_fixtures import open_app, wait_for

from app import launching
from cpl.runs.launch import cancel
from cpl.runs.rundir import RunDir, list_runs
from cpl.runs.status import read_raw

REPO = Path(__file__).resolve().parents[1]
PAGES = {"pages/runs.py": "Runs", "pages/launch.py": "Launch", "pages/gan.py": "GAN samples & pseudo-labels",
         "pages/embedding.py": "Embedding", "pages/retrieval.py": "Retrieval", "pages/compare.py": "Compare"}


def test_every_page_renders_through_the_shell(app_env, app_run: RunDir) -> None:
    at = open_app(run="r1")
    assert any(str(app_env.runs_root) in c.value for c in at.sidebar.caption)
    for page, title in PAGES.items():
        at.switch_page(page)
        at.query_params.update(run="r1")
        at.run()
        assert not at.exception, (page, [e.message for e in at.exception])
        assert at.title[0].value == title, page


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty runs root, demo on, the demo config pointed at the synthetic config."""
    root = tmp_path / "runs"
    monkeypatch.setenv("CPL_RUNS_ROOT", str(root))
    monkeypatch.setenv("CPL_DATA_ROOTS", str(tmp_path / "data"))
    monkeypatch.setenv("CPL_DEMO_CONFIG", str(REPO / "configs" / "synthetic.yaml"))
    monkeypatch.delenv("CPL_DEMO", raising=False)
    return root


def test_demo_run_starts_once_on_a_fresh_runs_root(fresh: Path, tmp_path: Path) -> None:
    at = open_app()
    assert not at.exception, [e.message for e in at.exception]
    runs = list_runs(fresh)
    assert len(runs) == 1
    demo = runs[0]
    marker = json.loads((fresh / launching.DEMO_MARKER).read_text())
    assert marker["demo_run"] == demo.id
    facts = demo.read_json("run.json")
    assert facts["argv"][:4] == ["cpl", "run", "--config", str(REPO / "configs" / "synthetic.yaml")]
    assert facts["dataset"]["root"] == str((tmp_path / "data" / "synthetic").resolve())
    assert any("demo run" in i.value for i in at.sidebar.info)
    pid = demo.read_json("launch.json")["pid"]
    assert pid > 0

    at.run()  # a rerun (or a second visitor) starts nothing new
    open_app()
    assert [r.id for r in list_runs(fresh)] == [demo.id]

    wait_for(lambda: (read_raw(demo) or {}).get("pgid"), 120, what="the demo process to start")
    assert cancel(demo, grace_s=10) == "cancelled"

    # the user deletes every run: no surprise demo on the next start
    shutil.rmtree(demo.path)
    at = open_app()
    assert list_runs(fresh) == []
    assert any("No runs yet" in i.value for i in at.info)


def test_no_demo_when_the_runs_root_already_has_runs(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (fresh / "sweeps" / "old").mkdir(parents=True)
    (fresh / "sweeps" / "old" / "sweep.json").write_text("{}")
    open_app()
    assert list_runs(fresh) == []
    assert json.loads((fresh / launching.DEMO_MARKER).read_text())["demo_run"] is None


def test_demo_can_be_turned_off(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPL_DEMO", "0")
    at = open_app()
    assert not (fresh / launching.DEMO_MARKER).exists() and list_runs(fresh) == []
    assert any("No runs yet" in i.value for i in at.info)


def test_a_missing_demo_config_is_reported_and_retried(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPL_DEMO_CONFIG", str(fresh.parent / "nope.yaml"))
    at = open_app()
    assert any("Could not start the demo run" in e.value and "nope.yaml" in e.value for e in at.sidebar.error)
    assert not (fresh / launching.DEMO_MARKER).exists()  # the next start tries again


def test_folders_are_shown_without_the_machines_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.settings import shown

    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    assert shown(work / "runs") == "runs" and shown(work) == "."  # as the app was started: `make run` shows runs
    assert shown(home / "data" / "market") == "~/data/market"
    assert shown(tmp_path / "elsewhere") == str(tmp_path / "elsewhere")  # anywhere else: where it is


def test_server_settings_are_safe_defaults() -> None:
    conf = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert conf["server"]["address"] == "127.0.0.1"
    assert conf["server"]["headless"] is True
    assert conf["server"]["fileWatcherType"] == "none"
    assert conf["client"]["toolbarMode"] == "viewer"
    assert conf["browser"]["gatherUsageStats"] is False

