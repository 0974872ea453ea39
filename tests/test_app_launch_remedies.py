"""The Launch page's "Pseudo-label remedies": offered only where a remedy acts on the method (the method table),
each choice a ``--set`` override through the config validation, a run whose config.yaml has it, and a sweep's
remedy variants as a grid axis."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml
from app_fixtures import open_app, wait_for
from test_app_launch import data_roots  # noqa: F401 - the fixture: a data root, an empty runs root, no demo

from app.launching import sweep_argv
from cpl.config import parse_override
from cpl.methods import METHODS
from cpl.remedy_table import REMEDIES, acting_remedies
from cpl.runs.launch import cancel
from cpl.runs.rundir import RunDir, list_runs
from cpl.runs.status import read_raw

HEADING = "Pseudo-label remedies"
RUN = "synthetic-run"  # the widget keys' suffix: base config synthetic.yaml, one run
REMEDY_KEYS = {k for r in REMEDIES.values() for k in r.keys}


def _page():
    at = open_app("pages/launch.py")
    assert not at.exception, [e.message for e in at.exception]
    return at


def _command(at) -> str:
    return next(c.value for c in at.code if c.value.startswith("cpl "))


def _sets(at) -> dict:
    """The command's ``--set`` overrides, dotted key → parsed value."""
    args = shlex.split(_command(at))
    pairs = (parse_override(v) for k, v in zip(args, args[1:]) if k == "--set")
    return {".".join(path): value for path, value in pairs}


def _config(at) -> dict:
    return yaml.safe_load(next(c.value for c in at.code if c.value.startswith("name:")))


def _sections(at) -> list[str]:
    return [e.label for e in at.expander if e.label.startswith(HEADING)]


def _launch(at):
    return next(b for b in at.button if b.label in ("Launch run", "Launch sweep"))


def _method(at, name: str) -> None:
    next(s for s in at.selectbox if s.label == "Method").select(name).run()


def test_the_section_follows_the_method_table(data_roots: Path) -> None:  # noqa: F811
    at = _page()
    for name in METHODS:
        _method(at, name)
        acting = acting_remedies(name)
        assert _sections(at) == ([f"{HEADING} (hub collapse): off"] if acting else []), name
        shown = {c.value for c in at.caption}
        for remedy in REMEDIES.values():  # each remedy's explanation and paper, only where it acts
            assert (f"{remedy.description} — {remedy.reference}" in shown) == (remedy in acting), (name, remedy)
    assert not acting_remedies("baseline") and not acting_remedies("lsro")  # the section was absent for both


def test_each_remedy_becomes_its_override(data_roots: Path) -> None:  # noqa: F811
    at = _page()
    assert "assignment" not in _command(at)  # off: the published config, nothing added
    at.checkbox(key=f"sinkhorn-{RUN}").check().run()
    at.number_input(key=f"sinkhorn-eps-{RUN}").set_value(0.1).run()
    at.checkbox(key=f"csls-{RUN}").check().run()
    at.number_input(key=f"csls-k-{RUN}").set_value(5).run()
    at.number_input(key=f"select-margin-{RUN}").set_value(0.05).run()
    sets, train = _sets(at), _config(at)["train"]
    assert {k: v for k, v in sets.items() if k in REMEDY_KEYS} == {
        "train.assignment": "sinkhorn", "train.sinkhorn_epsilon": 0.1, "train.similarity": "csls", "train.csls_k": 5,
        "train.select_min_margin": 0.05}  # sinkhorn_iters and select_min_score unchanged: left implicit
    assert (train["assignment"], train["sinkhorn_epsilon"], train["similarity"], train["csls_k"],
            train["select_min_margin"]) == ("sinkhorn", 0.1, "csls", 5, 0.05)
    assert not _launch(at).disabled
    _method(at, "onehot")  # only selection acts on a softmax label: the other two are gone with their widgets
    assert not any(c.key in (f"sinkhorn-{RUN}", f"csls-{RUN}") for c in at.checkbox)
    at.number_input(key=f"select-score-{RUN}").set_value(0.95).run()
    assert {k: v for k, v in _sets(at).items() if k in REMEDY_KEYS} == {"train.select_min_score": 0.95,
                                                                         "train.select_min_margin": 0.05}
    assert not at.error and not _launch(at).disabled


def test_a_refused_combination_shows_the_validation_message(data_roots: Path) -> None:  # noqa: F811
    at = _page()
    _method(at, "fapl")
    at.checkbox(key=f"sinkhorn-{RUN}").check().run()
    at.text_area[0].input("train.fapl_temperature=0.5").run()
    assert any(e.value.startswith("train.fapl_temperature:") and "train.assignment=sinkhorn" in e.value
               for e in at.error)
    assert _launch(at).disabled


def test_a_launched_run_has_the_remedies_in_its_config(data_roots: Path) -> None:  # noqa: F811
    at = _page()
    at.toggle(key="fast").set_value(True).run()
    at.checkbox(key=f"sinkhorn-{RUN}").check().run()
    at.number_input(key=f"select-score-{RUN}").set_value(0.2).run()
    _launch(at).click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    (run,) = list_runs(data_roots.parent / "runs")
    train = yaml.safe_load(run.config.read_text())["train"]
    assert (train["assignment"], train["select_min_score"], train["similarity"]) == ("sinkhorn", 0.2, "cosine")
    argv = run.read_json("run.json")["argv"]
    assert 'train.assignment="sinkhorn"' in argv and "train.select_min_score=0.2" in argv
    wait_for(lambda: (read_raw(run) or {}).get("pgid"), 120, what="the run to start")
    assert cancel(run, grace_s=30) == "cancelled"


@pytest.mark.parametrize("methods, shown", [(["baseline", "cpl"], True), (["baseline", "lsro"], False)])
def test_a_sweep_offers_variants_only_for_methods_they_act_on(data_roots: Path, methods, shown) -> None:  # noqa: F811
    at = _page()
    at.radio(key="mode").set_value("sweep").run()
    at.multiselect(key="methods-synthetic-sweep").set_value(methods).run()
    assert bool(_sections(at)) == shown
    assert "--variants" not in _command(at)


def test_sweep_variants_reach_the_grid_and_are_validated(data_roots: Path) -> None:  # noqa: F811
    at = _page()
    at.radio(key="mode").set_value("sweep").run()
    assert any(c.value.startswith("2 runs, one after the other") for c in at.caption)  # baseline, cpl at 1500
    at.multiselect(key="variants-synthetic-sweep").set_value(["none", "sinkhorn", "csls"]).run()
    assert any(c.value.startswith("4 runs, one after the other") for c in at.caption)  # + cpl + sinkhorn, + csls
    assert "--variants 'none;sinkhorn:train.assignment=sinkhorn;csls:train.similarity=csls'" in _command(at)
    at.text_input(key="variants-more-synthetic-sweep").input("eps:train.sinkhorn_epsilon=0.1").run()
    assert any(e.value.startswith("cell cpl + eps with 1500 unlabeled images: train.sinkhorn_epsilon")
               for e in at.error)
    assert _launch(at).disabled
    at.text_input(key="variants-more-synthetic-sweep").input("hub").run()
    assert any(e.value.startswith("variants: 'hub' has no preset") for e in at.error)
    at.text_input(key="variants-more-synthetic-sweep").input("sel:train.select_min_margin=0.05").run()
    assert not at.error and not _launch(at).disabled
    at.toggle(key="fast").set_value(True).run()
    _launch(at).click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    (folder,) = (data_roots.parent / "runs" / "sweeps").iterdir()
    spec = json.loads((folder / "sweep.json").read_text())
    assert [v["name"] for v in spec["variants"]] == ["none", "sinkhorn", "csls", "sel"]
    assert sorted(c["variant"] for c in spec["cells"] if c["method"] == "cpl") == ["csls", "none", "sel", "sinkhorn"]
    argv = sweep_argv(data_roots.parent / "runs", spec)
    assert argv[argv.index("--variants") + 1] == ("none;sinkhorn:train.assignment=sinkhorn;csls:train.similarity=csls;"
                                                  "sel:train.select_min_margin=0.05")
    sweep = RunDir(folder)
    wait_for(lambda: (read_raw(sweep) or {}).get("pgid"), 120, what="the sweep process to start")
    assert cancel(sweep, grace_s=30) == "cancelled"
