"""The unlabeled-source table (cpl/data/unlabeled_sources.py): every source has one plan and one build, a setting
only another source reads is refused by name, each source's plan splits the training rows as it says, and the
Launch form and the sweep write exactly the settings the chosen source reads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app import launching
from cpl.config import ConfigError, UnlabeledConfig, load_config
from cpl.data.unlabeled_sources import CAP, DRAWN, NONE, SOURCES
from cpl.stages.context import RunFailed
from cpl.stages.unlabeled import BUILDS
from cpl.sweep.grid import Cell, cell_config

SYNTH = Path("configs/synthetic.yaml")


def test_every_source_has_one_plan_and_one_build() -> None:
    assert list(BUILDS) == list(SOURCES)
    assert NONE in SOURCES and all(s.name == name for name, s in SOURCES.items())


def test_the_table_names_only_settings_that_exist() -> None:
    settings = {f.name for f in dataclasses.fields(UnlabeledConfig)}
    for s in SOURCES.values():
        assert set(s.options) <= settings and set(s.required) <= set(s.options), s.name
        assert s.num_images in ("", DRAWN, CAP), s.name
    assert [n for n, s in SOURCES.items() if s.hides_labeled] == ["holdout"]
    assert [n for n, s in SOURCES.items() if s.generates] == ["gan"]


@pytest.mark.parametrize("source, setting, owner", [
    ("gan", "unlabeled.holdout_fraction=0.3", "holdout"),
    ("none", "unlabeled.holdout_fraction=0.3", "holdout"),
    ("holdout", "unlabeled.folder=/some/images", "folder"),
    ("gan", "unlabeled.folder=/some/images", "folder"),
])
def test_a_setting_only_another_source_reads_is_refused_by_name(source: str, setting: str, owner: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(SYNTH, [f"unlabeled.source={source}", setting])
    key = setting.split("=")[0]
    assert str(exc.value) == (f"{key}: only used when unlabeled.source is {owner}, got unlabeled.source="
                              f"{source!r}; remove the setting")
    owned = load_config(SYNTH, [f"unlabeled.source={owner}", setting])  # its own source reads it
    assert str(getattr(owned.unlabeled, key.split(".")[1])) == setting.split("=")[1]


def test_a_source_that_needs_a_folder_names_it() -> None:
    with pytest.raises(ConfigError, match=r"^unlabeled\.folder: must name a folder of images when unlabeled\.source "
                                          r"is folder"):
        load_config(SYNTH, ["unlabeled.source=folder"])


def test_an_epoch_of_the_union_needs_images_only_where_they_are_drawn() -> None:
    union = ["train.method=baseline", "train.epoch_length=union", "unlabeled.num_images=0"]
    with pytest.raises(ConfigError, match="union counts the unlabeled images"):
        load_config(SYNTH, union)  # gan draws num_images: 0 is none
    capped = load_config(SYNTH, [*union, "unlabeled.source=folder", "unlabeled.folder=/x"])  # folder: 0 = all files
    assert capped.sets_aside_unlabeled


def _cfg(*overrides: str):
    return load_config(SYNTH, ["train.method=cpl", *overrides])


def test_each_plan_splits_the_training_rows(tmp_path: Path) -> None:
    labels = np.repeat(np.arange(5), 4)  # 5 identities x 4 images
    every = np.arange(20)
    none = BUILDS[NONE].plan(_cfg("unlabeled.source=none"), labels)
    assert np.array_equal(none.keep, every) and len(none.hidden) == 0 and none.files == [] and none.count == 0
    gan = BUILDS["gan"].plan(_cfg("unlabeled.num_images=37"), labels)
    assert np.array_equal(gan.keep, every) and gan.count == 37 and gan.files == []
    held = BUILDS["holdout"].plan(_cfg("unlabeled.source=holdout", "unlabeled.holdout_fraction=0.5"), labels)
    assert sorted([*held.keep, *held.hidden]) == list(every) and held.count == len(held.hidden) == 10
    assert all(np.sum(labels[held.hidden] == k) == 2 for k in range(5))  # half of each identity
    for i in range(3):
        Image.new("RGB", (8, 16), (i, 0, 0)).save(tmp_path / f"p{i}.jpg")
    folder = BUILDS["folder"].plan(_cfg("unlabeled.source=folder", f"unlabeled.folder={tmp_path}",
                                        "unlabeled.num_images=2"), labels)
    assert np.array_equal(folder.keep, every) and folder.count == 2
    assert folder.files == [str(tmp_path / "p0.jpg"), str(tmp_path / "p1.jpg")]  # capped by num_images
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunFailed, match="unlabeled.folder: no images in"):
        BUILDS["folder"].plan(_cfg("unlabeled.source=folder", f"unlabeled.folder={empty}"), labels)


@pytest.mark.parametrize("source", list(SOURCES))
def test_the_launch_form_writes_what_the_source_reads(tmp_path: Path, source: str) -> None:
    base = launching.base_defaults(SYNTH)
    choices = launching.RunChoices(data_root=tmp_path, synthetic=True, method="cpl", source=source,
                                   num_images=321, holdout_fraction=0.35, folder=tmp_path)
    overrides = launching.overrides_for(choices, base)
    keys = {o.split("=", 1)[0] for o in overrides if o.startswith("unlabeled.")}
    own = {f"unlabeled.{k}" for k in SOURCES[source].options}
    assert keys == {"unlabeled.source"} | own | ({"unlabeled.num_images"} if SOURCES[source].num_images == DRAWN
                                                  else set())
    cfg = launching.resolve(SYNTH, overrides, fast=False)
    assert cfg.unlabeled.source == source
    assert cfg.unlabeled.holdout_fraction == (0.35 if source == "holdout" else 0.5)
    assert cfg.unlabeled.folder == (str(tmp_path) if source == "folder" else "")


def test_a_folder_sweeps_reference_drops_the_folder() -> None:
    spec = {"id": "s", "config": {"data": {"root": "x"}, "unlabeled": {"source": "folder", "folder": "/imgs"}}}
    plain = cell_config(spec, Cell("baseline", 0, 0))  # an ordinary reference: source none refuses the folder
    assert (plain.unlabeled.source, plain.unlabeled.folder) == (NONE, "")
    matched = cell_config(spec, Cell("baseline", 50, 0))  # step-matched: counts the folder's (capped) images
    assert (matched.unlabeled.source, matched.unlabeled.folder, matched.unlabeled.num_images) == ("folder", "/imgs",
                                                                                                  50)
    assert cell_config(spec, Cell("cpl", 50, 0)).unlabeled.num_images == 50


@pytest.mark.parametrize("source", ["folder", "holdout"])
def test_both_stages_of_a_source_write_what_it_planned(tmp_path: Path, source: str) -> None:
    import csv
    import json

    from test_controls import _context

    from cpl.stages.data import load_data
    from cpl.stages.unlabeled import build_unlabeled

    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        Image.new("RGB", (20, 40), (40 * i, 90, 200 - 40 * i)).save(images / f"u{i}.png")
    sets = {"folder": [f"unlabeled.folder={images}", "unlabeled.num_images=4"], "holdout": []}[source]
    ctx = _context(tmp_path, "train.method=cpl", f"unlabeled.source={source}", *sets)
    load_data(ctx)
    planned = ctx.data.num_unlabeled
    assert planned == (4 if source == "folder" else len(ctx.data.hidden)) and planned > 0
    assert len(ctx.data.keep) == len(ctx.data.labels) - (planned if source == "holdout" else 0)
    record = json.loads(ctx.run.dataset.read_text())
    assert (record["unlabeled_source"], record["unlabeled_images"], record["unlabeled_trained"]) == (source, planned,
                                                                                                    True)
    build_unlabeled(ctx)
    u = ctx.unlabeled
    pixels = u.images.gather(torch.arange(len(u.images)))
    assert pixels.shape == (planned, 3, 32, 16) and pixels.dtype == torch.uint8 and len(u.paths) == planned
    rows = list(csv.DictReader(ctx.run.unlabeled.open()))
    assert [r["source"] for r in rows] == [source] * planned
    if source == "holdout":  # the hidden rows themselves, with their true classes
        assert np.array_equal(u.truth, ctx.data.labels[ctx.data.hidden])
        assert torch.equal(pixels, ctx.data.train_imgs[torch.from_numpy(ctx.data.hidden)])
    else:
        assert u.truth is None and u.paths == [str(images / f"u{i}.png") for i in range(4)]
        assert len(torch.unique(pixels[:, 0, 16, 8])) == 4  # four different images, decoded
