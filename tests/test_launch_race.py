"""Launches at the same moment (two browser tabs, the app and the CLI): each gets a run directory of its own,
and a reader listing the runs root while a launch is creating its directory never sees a half-made run.

Deterministic: the racers are threads held at a barrier inside the launch, at the point where the old code's
check-then-create let two launches of one id both through (each had checked that the id was free, neither had
created it yet); no test here depends on how fast anything runs.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from app import health
from cpl.config import fast_dev_run, load_config
from cpl.runs import launch, rundir
from cpl.runs.launch import prepare_run
from cpl.runs.rundir import create_run, list_runs

REPO = Path(__file__).resolve().parents[1]
SAME_SECOND = "20250101-000000-twin-cpl-s0"  # what new_run_id returns for two launches of one form in one second


def _cfg(tmp_path: Path):
    return fast_dev_run(load_config(REPO / "configs" / "synthetic.yaml", [f"data.root={tmp_path / 'synthetic'}"]))


def _hold_first_call(module, name: str, parties: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make each racing thread wait at a barrier the first time it calls ``module.name``, until all have."""
    barrier = threading.Barrier(parties, timeout=60)
    real = getattr(module, name)
    seen: set[int] = set()

    def held(*args, **kwargs):
        if threading.get_ident() not in seen:
            seen.add(threading.get_ident())
            barrier.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, held)


def _race(target, n: int) -> tuple[list, list[BaseException]]:
    results: list = [None] * n
    errors: list[BaseException] = []

    def go(i: int) -> None:
        try:
            results[i] = target(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    return results, errors


def test_two_launches_of_one_id_at_the_same_moment_get_a_run_each(tmp_path, monkeypatch):
    # Both launches have computed the same id and checked that it is free before either creates anything:
    # the barrier sits in the config's serialisation, between prepare_run's check and the directory's creation.
    monkeypatch.setattr(launch, "new_run_id", lambda *a, **k: SAME_SECOND)
    _hold_first_call(launch, "dump_yaml", 2, monkeypatch)
    cfg = _cfg(tmp_path)
    runs, errors = _race(lambda i: prepare_run(cfg, tmp_path / "runs", argv=[f"tab{i}"]), 2)
    assert not errors, errors  # neither launch is refused ("exists and is not empty")
    assert sorted(r.id for r in runs) == [SAME_SECOND, SAME_SECOND + "x"]
    for i, run in enumerate(runs):  # each launch's own run.json, not the other's written over it
        assert run.read_json("run.json")["argv"] == [f"tab{i}"]
        assert run.config.is_file()
    assert sorted(r.id for r in list_runs(tmp_path / "runs")) == sorted(r.id for r in runs)
    assert not [p for p in (tmp_path / "runs").iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_many_launches_of_one_id_at_once_all_get_distinct_runs(tmp_path, monkeypatch):
    n = 6
    monkeypatch.setattr(launch, "new_run_id", lambda *a, **k: SAME_SECOND)
    _hold_first_call(launch, "dump_yaml", n, monkeypatch)
    cfg = _cfg(tmp_path)
    runs, errors = _race(lambda i: prepare_run(cfg, tmp_path / "runs", argv=[f"tab{i}"]), n)
    assert not errors, errors
    assert len({r.id for r in runs}) == n
    assert {tuple(r.read_json("run.json")["argv"]) for r in runs} == {(f"tab{i}",) for i in range(n)}
    assert len(list_runs(tmp_path / "runs")) == n


def test_one_explicit_run_dir_created_twice_at_once_is_created_once(tmp_path, monkeypatch):
    # `cpl run --run-dir X` twice at once: exactly one wins, the other is refused, and the winner's files are
    # all its own (the loser wrote nothing into the run directory)
    _hold_first_call(rundir, "write_text", 2, monkeypatch)
    runs, errors = _race(lambda i: create_run(tmp_path, "r1", f"name: racer{i}\n", {"racer": i}), 2)
    assert len(errors) == 1 and isinstance(errors[0], FileExistsError), errors
    (run,) = [r for r in runs if r is not None]
    racer = run.read_json("run.json")["racer"]
    assert run.config.read_text() == f"name: racer{racer}\n"
    assert [r.id for r in list_runs(tmp_path)] == ["r1"]


def test_a_run_directory_being_created_is_never_listed_half_made(tmp_path, monkeypatch):
    # The Runs page lists the runs root (list_runs, and health.stray_entries for entries that are not runs):
    # looked at between the two files create_run writes, it must show nothing, not a "run.json: missing" row.
    seen = []
    real = rundir.write_text

    def look_then_write(path, text):
        seen.append(([r.id for r in list_runs(tmp_path)], health.stray_entries(tmp_path, set())))
        real(path, text)

    monkeypatch.setattr(rundir, "write_text", look_then_write)
    create_run(tmp_path, "r1", "name: x\n", {"method": "cpl"})
    assert seen and all(listed == [] and stray == {} for listed, stray in seen), seen
    assert [r.id for r in list_runs(tmp_path)] == ["r1"] and health.stray_entries(tmp_path, {"r1"}) == {}


def test_an_existing_empty_folder_can_still_be_the_run_directory(tmp_path):
    (tmp_path / "r1").mkdir()  # made beforehand (a scheduler, a user): still accepted, as before
    run = create_run(tmp_path, "r1", "name: x\n", {"method": "cpl"})
    assert run.read_json("run.json")["method"] == "cpl" and run.config.read_text() == "name: x\n"
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        create_run(tmp_path, "r2", "name: x\n", {})
    assert (tmp_path / "r2" / "keep.txt").read_text() == "mine" and not (tmp_path / "r2" / "run.json").exists()
