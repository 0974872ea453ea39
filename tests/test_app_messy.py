"""The app on a messy runs folder (tests/messy_runs.py): 300 fabricated run directories, 42 damaged in varied
ways. Every damaged run is marked with what is wrong (the ``problem`` field, from :mod:`app.health`), healthy
runs are not, and no page shows an exception: not the Runs table, not a damaged run's own view, not Compare,
and not the GAN, Embedding and Retrieval pages of a run that lacks any one of the artifacts they read (each of
them then says which file it misses).

Speed: each page render is timed in CPU seconds of this process (``time.process_time``: the render's own
work; AppTest runs the script in a thread of this process) and must stay under 3 s with cold caches. Wall
time is printed, not asserted: on a shared, loaded machine it measures the neighbours too.
"""

from __future__ import annotations

import time

import pytest
import streamlit as st
from app_fixtures import open_app
from messy_runs import ABSENT, RUNS, MessyRoot

from app import health
from cpl.runs.rundir import RunDir, list_runs

RENDER_CPU_S = 3.0


@pytest.fixture
def messy_env(messy_root: MessyRoot, monkeypatch: pytest.MonkeyPatch, tmp_path) -> MessyRoot:
    monkeypatch.setenv("CPL_RUNS_ROOT", str(messy_root.root))
    monkeypatch.setenv("CPL_DATA_ROOTS", str(tmp_path))
    monkeypatch.setenv("CPL_DEMO", "0")
    return messy_root


def _problems(messy: MessyRoot) -> dict[str, list[health.Problem]]:
    """What app.health finds for every entry of the messy root, listed runs and stray entries alike."""
    runs = list_runs(messy.root)
    found = {r.id: health.run_problems(r) for r in runs}
    stray = health.stray_entries(messy.root, set(found))
    return found | {name: [problem] for name, problem in stray.items()}


def _cold_render(at, page: str, **query: str) -> tuple[float, float]:
    """Run ``page`` with every cache of the app emptied; returns (CPU seconds, wall seconds) of that render."""
    st.cache_data.clear()
    for cached in (health._config, health._npy_shape, health._csv_rows, health._zip_ok):
        cached.cache_clear()
    at.switch_page(page)
    at.query_params.clear()
    at.query_params.update(query)
    cpu, wall = time.process_time(), time.perf_counter()
    at.run()
    return time.process_time() - cpu, time.perf_counter() - wall


def test_health_names_the_damaged_file_of_every_damaged_entry(messy_root: MessyRoot) -> None:
    problems = _problems(messy_root)
    assert len(problems) == RUNS  # every entry is accounted for: a run, or a stray entry with its problem
    for name, file in messy_root.checkable.items():
        assert file in {p.file for p in problems[name]}, (name, problems[name])
    healthy = {name: found for name, found in problems.items() if name not in messy_root.checkable}
    assert healthy == {name: [] for name in healthy}  # nothing flagged that is not damaged
    assert len(messy_root.checkable) >= 40  # 42, less the two permission cases when running as root


def test_runs_page_marks_every_damaged_run_fast(messy_env: MessyRoot) -> None:
    at = open_app()  # imports and the first script run out of the way
    cpu, wall = _cold_render(at, "pages/runs.py")
    print(f"Runs page, {RUNS} runs: {cpu:.2f} CPU s, {wall:.2f} s wall")
    assert not at.exception, [e.message for e in at.exception]
    table = at.dataframe[0].value
    shown = dict(zip(table["run"], table["problem"]))
    expected = {name: "; ".join(map(str, found)) for name, found in _problems(messy_env).items()}
    assert shown == expected  # every damaged entry with what is wrong, every healthy run with nothing
    assert all(shown[name] for name in messy_env.checkable)
    assert any(f"{len(messy_env.checkable)} with problems" in c.value for c in at.caption)
    assert cpu < RENDER_CPU_S


def test_compare_page_survives_and_marks_damaged_runs_fast(messy_env: MessyRoot) -> None:
    at = open_app()
    cpu, wall = _cold_render(at, "pages/compare.py")
    print(f"Compare page, {RUNS} runs: {cpu:.2f} CPU s, {wall:.2f} s wall")
    assert not at.exception, [e.message for e in at.exception]
    assert cpu < RENDER_CPU_S
    listed = {r.id for r in list_runs(messy_env.root)}
    damaged = [n for n in messy_env.checkable if n in listed][:2]
    at = open_app("pages/compare.py", run=damaged[0], run2=damaged[1])
    assert not at.exception, [e.message for e in at.exception]
    table = next(d.value for d in at.dataframe if "problem" in d.value.columns)
    expected = {r.id: "; ".join(map(str, health.run_problems(r))) for r in map(RunDir, (messy_env.root / n
                                                                                        for n in damaged))}
    assert dict(zip(table["run"], table["problem"])) == expected and all(expected.values())


# The damaged runs whose own view the default tier opens: a damaged status, results and config, and an entry
# that is no run at all. The slow tier opens every one.
SAMPLE = ("status-wrong-types", "results-a-folder", "config-a-list", "stray-a-file")


def _damaged_views(messy: MessyRoot, kinds: tuple[str, ...] | None) -> list[str]:
    """The damaged entries of the given kinds (all of them for None)."""
    return [n for n in messy.checkable if kinds is None or messy.kind[n] in kinds]


def _open_each_damaged_run(messy: MessyRoot, names: list[str]) -> None:
    listed = {r.id for r in list_runs(messy.root)}
    for name in names:
        at = open_app("pages/runs.py", run=name)
        assert not at.exception, (name, [e.message for e in at.exception])
        if name not in listed:  # a stray entry: no run to show, the id is refused
            assert any("no run with that id" in w.value for w in at.warning), name
        else:
            assert any("This run directory is damaged" in w.value for w in at.warning), name


def test_a_damaged_runs_own_view_shows_what_is_wrong(messy_env: MessyRoot) -> None:
    _open_each_damaged_run(messy_env, _damaged_views(messy_env, SAMPLE))


@pytest.mark.slow  # one page render per damaged run
def test_every_damaged_runs_own_view_shows_what_is_wrong(messy_env: MessyRoot) -> None:
    _open_each_damaged_run(messy_env, _damaged_views(messy_env, None))


# The inspection pages and the artifacts each names when it is absent (it reads the others too, for parts of
# its view, and must then still show the rest without an exception).
NAMED = {"pages/gan.py": ("pseudo_labels.csv", "unlabeled.csv", "pseudo_history.npz", "features/train.csv"),
         "pages/embedding.py": ("embedding.npz", "features/train.csv", "pseudo_labels.csv", "features/train.npy",
                                "unlabeled.npy", "centers.npy"),
         "pages/retrieval.py": ("retrieval.npz", "features/query.csv", "features/gallery.csv")}


def _messages(at) -> str:
    return " ".join(e.value for kind in ("info", "warning", "error", "caption", "markdown") for e in getattr(at, kind))


def test_inspection_pages_say_which_artifact_is_absent(messy_env: MessyRoot) -> None:
    assert sorted(messy_env.absent.values()) == sorted(ABSENT)  # each artifact absent on its own, once
    at = open_app()
    for name, artifact in messy_env.absent.items():
        for page, named in NAMED.items():
            at.switch_page(page)
            at.query_params.clear()
            at.query_params.update(run=name)
            at.run()
            assert not at.exception, (name, page, [e.message for e in at.exception])
            text = _messages(at)
            assert at.title and text, (name, page)
            if any(artifact.endswith(n) for n in named):
                assert artifact.split("/")[-1] in text, (name, page, text)


def _part_that_fails(damaged: bool) -> None:
    import streamlit as st

    from app.health import Problem, drawn_unless_damaged

    problems = [Problem("results.json", "not valid JSON")] if damaged else []
    with drawn_unless_damaged(problems, "results"):
        raise KeyError("rank1")  # a damage no check foresaw
    st.markdown("the rest of the view")


@pytest.mark.parametrize("damaged", [True, False])
def test_an_unforeseen_failure_is_a_note_on_a_damaged_run_and_an_error_on_a_healthy_one(damaged: bool) -> None:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_part_that_fails, args=(damaged,)).run()
    if damaged:
        assert not at.exception and [m.value for m in at.markdown] == ["the rest of the view"]
        assert at.caption[0].value == "results: not shown, the run directory is damaged (KeyError)."
    else:
        assert at.exception and not at.markdown  # the error surfaces (its text is redacted) and stops the view
