"""The first-start demo (app/demo.py): what each of its runs is, and that the pages open on them.

Starting the demo for real (processes, the run queue) is tested through the app in tests/test_app_shell.py; the
whole demo is too slow for a test (benchmarks/demo_time.py times it).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from app_fixtures import SWEEP_ID, AppWorld, open_app

from app import demo
from cpl.config import controls, load_config
from cpl.methods import BASELINE, DEFAULT_METHOD
from cpl.runs.rundir import list_runs

REPO = Path(__file__).resolve().parents[1]


def _configs(tmp_path: Path, threads: int = 1) -> dict:
    synth = tmp_path / "data" / "synthetic"
    return {r.key: load_config(demo.DEMO_CONFIG, demo.role_overrides(r, True, synth, threads)) for r in demo.ROLES}


def test_the_demo_runs_cpl_on_gan_and_held_out_images_each_beside_its_reference(tmp_path: Path) -> None:
    cfg = _configs(tmp_path, threads=3)
    gan, held, ctrl, base = cfg[demo.GAN], cfg[demo.HELDOUT], cfg[demo.CONTROL], cfg[demo.BASE]
    assert (gan.train.method, gan.unlabeled.source, gan.unlabeled.num_images) == (DEFAULT_METHOD, "gan", 600)
    assert (held.train.method, held.unlabeled.source) == (DEFAULT_METHOD, "holdout")
    assert (ctrl.train.method, ctrl.unlabeled.source) == (BASELINE, "holdout")
    assert (base.train.method, base.unlabeled.source) == (BASELINE, "none")
    assert [controls(c) for c in (gan, held, ctrl, base)] == [["labeled-epochs"], ["labeled-epochs"],
                                                              ["labeled-only"], []]
    # step-matched: a CPL run's epochs count its labeled images, as its reference's do (tests/test_controls.py)
    assert [c.train.epoch_length for c in (gan, held, ctrl, base)] == ["labeled", "labeled", "trained", "trained"]
    # each reference differs from its CPL run in the unlabeled images alone: same split (seed, fraction), same
    # schedule and network
    assert held.seed == ctrl.seed == gan.seed == base.seed == 0
    assert held.unlabeled.holdout_fraction == ctrl.unlabeled.holdout_fraction
    for a, b in ((held, ctrl), (held, gan), (gan, base)):
        assert (a.train.epochs, a.train.lr, a.train.lr_milestones, a.train.batch_size) == \
               (b.train.epochs, b.train.lr, b.train.lr_milestones, b.train.batch_size)
        assert (a.model.backbone, a.data.root, a.data.synthetic) == (b.model.backbone, b.data.root, b.data.synthetic)
    assert {c.cpu_threads for c in cfg.values()} == {3}
    assert len({c.name for c in cfg.values()}) == 4  # four run ids a user can tell apart
    assert [c.eval.umap for c in (gan, held, ctrl, base)] == [True, False, False, False]  # the Embedding page's


def test_both_cpl_runs_label_with_the_remedy_the_demo_names(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """demo.CPL_REMEDY is the one place that chooses how the demo's CPL runs label (the baselines have no labels)."""
    assert demo.ROLES == demo.roles(demo.CPL_REMEDY)
    monkeypatch.setattr(demo, "ROLES", demo.roles(("train.assignment=sinkhorn",)))
    cfg = _configs(tmp_path)
    assert {k: c.train.assignment for k, c in cfg.items()} == {demo.GAN: "sinkhorn", demo.HELDOUT: "sinkhorn",
                                                               demo.CONTROL: "argmax", demo.BASE: "argmax"}


@pytest.mark.parametrize(("cpus", "threads"), [(1, 1), (1.5, 1), (2, 1), (3, 1), (4, 2), (16, 8)])
def test_two_demo_runs_compute_at_a_time_and_share_the_cpus(cpus: float, threads: int) -> None:
    assert demo.threads_per_run(cpus) == threads


def test_only_the_gan_run_skips_the_run_queue() -> None:
    assert [r.key for r in demo.ROLES if not r.queued] == [demo.GAN]
    assert demo.ROLES[0].key == demo.GAN  # started first: it is the longest


@pytest.fixture
def demo_root(app_world: AppWorld, app_run, holdout_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A runs root holding what a finished demo leaves (but its baseline run, which the fixture world lacks): the
    world's CPL-on-GAN run, its holdout sweep's CPL and baseline cells (the labeled-only control), copied under demo
    ids, with the demo's marker. The GAN run is the oldest, so a page that opens on it does so because it is the
    demo's."""
    root = tmp_path / "runs"
    shutil.copytree(app_world.runs_root / "_cache" / "gan", root / "_cache" / "gan")  # the GAN samples' files
    ids = {demo.GAN: "d-gan", demo.HELDOUT: "d-heldout", demo.CONTROL: "d-control"}
    sources = {demo.GAN: app_run.path, demo.HELDOUT: holdout_run.path,
               demo.CONTROL: app_world.runs_root / f"{SWEEP_ID}--{BASELINE}-g0-s0"}
    for age, (key, rid) in enumerate(ids.items()):
        shutil.copytree(sources[key], root / rid)
        os.utime(root / rid / "run.json", (1e9 + age, 1e9 + age))
    (root / demo.DEMO_MARKER).write_text(json.dumps({"runs": ids}))
    monkeypatch.setenv("CPL_RUNS_ROOT", str(root))
    monkeypatch.setenv("CPL_DATA_ROOTS", str(app_world.data_root))
    monkeypatch.setenv("CPL_DEMO", "0")
    return {"root": root, **ids}


def test_pages_open_on_the_demo_runs(demo_root: dict) -> None:
    assert [r.id for r in list_runs(demo_root["root"])][0] == demo_root[demo.CONTROL]  # the newest
    at = open_app("pages/gan.py")
    assert not at.exception, [e.message for e in at.exception]
    assert at.sidebar.selectbox[0].value == demo_root[demo.GAN]
    held = demo_root["root"] / demo_root[demo.HELDOUT]
    records = [json.loads(ln) for ln in (held / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r.get("type") == "epoch" and "pl_acc" in r][-1]
    chance = 100 / json.loads((held / "dataset.json").read_text())["num_classes"]
    note = next(i.value for i in at.info if "labels are right" in i.value)
    assert f"**{100 * last['pl_acc']:.1f}%** of its labels are right (chance: {chance:.1f}%)" in note, note

    at.switch_page("pages/embedding.py").run()
    assert at.sidebar.selectbox[0].value == demo_root[demo.GAN]

    at = open_app("pages/compare.py")
    assert not at.exception, [e.message for e in at.exception]
    assert at.multiselect(key="compare-runs").value == [demo_root[k] for k in (demo.GAN, demo.HELDOUT, demo.CONTROL)]
    assert any("labeled-only control" in c.value for c in at.caption)


def test_pages_open_on_the_newest_run_once_the_user_has_runs_of_their_own(demo_root: dict) -> None:
    root = demo_root["root"]
    shutil.copytree(root / demo_root[demo.GAN], root / "mine")
    os.utime(root / "mine" / "run.json")  # now: the newest run
    at = open_app("pages/gan.py")
    assert at.sidebar.selectbox[0].value == "mine"
    assert not any("labels are right" in i.value for i in at.info)
    at = open_app("pages/compare.py")
    assert demo_root[demo.HELDOUT] not in at.multiselect(key="compare-runs").value
