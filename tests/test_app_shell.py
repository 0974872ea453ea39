"""The entry script: navigation over every page, the first-start demo run, and the server settings."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest
from app_fixtures import open_app, wait_for

from app import demo
from cpl.methods import BASELINE
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
    """An empty runs root, demo on, with its packaged config (cpl/configs/demo.yaml)."""
    root = tmp_path / "runs"
    monkeypatch.setenv("CPL_RUNS_ROOT", str(root))
    monkeypatch.setenv("CPL_DATA_ROOTS", str(tmp_path / "data"))
    monkeypatch.delenv("CPL_DEMO_CONFIG", raising=False)
    monkeypatch.delenv("CPL_DEMO", raising=False)
    return root


def _state(run: RunDir) -> tuple:
    raw = read_raw(run) or {}
    return raw.get("state"), raw.get("queue_reason")


def test_the_demo_starts_once_on_a_fresh_runs_root(fresh: Path, tmp_path: Path) -> None:
    at = open_app()
    assert not at.exception, [e.message for e in at.exception]
    marker = json.loads((fresh / demo.DEMO_MARKER).read_text())
    runs = demo.demo_runs(fresh)
    assert list(runs) == [demo.GAN, demo.HELDOUT, demo.CONTROL, demo.BASE]
    assert marker["runs"] == {k: r.id for k, r in runs.items()}
    assert sorted(r.id for r in list_runs(fresh)) == sorted(r.id for r in runs.values())
    for key, run in runs.items():
        facts = run.read_json("run.json")
        assert facts["argv"][:4] == ["cpl", "run", "--config", str(demo.DEMO_CONFIG)], key
        assert facts["dataset"]["root"] == str((tmp_path / "data" / "synthetic").resolve())
        assert facts["controls"] == {demo.GAN: ["labeled-epochs"], demo.HELDOUT: ["labeled-epochs"],
                                     demo.CONTROL: ["labeled-only"]}.get(key, []), key
        assert run.read_json("launch.json")["pid"] > 0
    assert runs[demo.CONTROL].read_json("run.json")["method"] == runs[demo.BASE].read_json("run.json")["method"] \
        == BASELINE
    assert any("demo" in i.value and "labeled-only control" in i.value for i in at.sidebar.info)

    at.run()  # a rerun (or a second visitor) starts nothing new
    open_app()
    assert len(list_runs(fresh)) == 4

    # The GAN run computes beside the queue while the others take the device one after the other.
    try:
        queued = (demo.HELDOUT, demo.CONTROL, demo.BASE)
        wait_for(lambda: _state(runs[demo.GAN])[0] == "running"
                 and sorted(map(str, (_state(runs[k]) for k in queued))) == sorted(map(str, [
                     ("queued", "device"), ("queued", "device"), ("running", None)])), 300,
                 what="the GAN run and one other running, the two others queued for the device")
    finally:
        assert [cancel(run, grace_s=10) for run in runs.values()] == ["cancelled"] * 4

    # the user deletes every run: no surprise demo on the next start
    for run in runs.values():
        shutil.rmtree(run.path)
    at = open_app()
    assert list_runs(fresh) == []
    assert any("No runs yet" in i.value for i in at.info)


def test_no_demo_when_the_runs_root_already_has_runs(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (fresh / "sweeps" / "old").mkdir(parents=True)
    (fresh / "sweeps" / "old" / "sweep.json").write_text("{}")
    open_app()
    assert list_runs(fresh) == []
    assert json.loads((fresh / demo.DEMO_MARKER).read_text())["runs"] == {}
    assert demo.demo_runs(fresh) == {}


def test_demo_can_be_turned_off(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPL_DEMO", "0")
    at = open_app()
    assert not (fresh / demo.DEMO_MARKER).exists() and list_runs(fresh) == []
    assert any("No runs yet" in i.value for i in at.info)


def test_a_missing_demo_config_is_reported_and_retried(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPL_DEMO_CONFIG", str(fresh.parent / "nope.yaml"))
    at = open_app()
    assert any("Could not start the demo" in e.value and "nope.yaml" in e.value for e in at.sidebar.error)
    assert not (fresh / demo.DEMO_MARKER).exists()  # the next start tries again
    assert list_runs(fresh) == []


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

