"""The built-in synthetic re-ID dataset: determinism, Market layout, difficulty, speed and ensure()."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import multiprocessing
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cpl.synth import GALLERY, MARKER, QUERY, TRAIN, ensure, generate
from cpl.synth import dataset as synth
from cpl.synth.people import Pose, distinct, draw_person, near_duplicate, random_identity


def _load_difficulty():
    # tools/ is a folder of scripts, not a package: load the analysis script by path
    path = Path(__file__).resolve().parents[1] / "tools" / "synth_difficulty.py"
    spec = importlib.util.spec_from_file_location("synth_difficulty", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_difficulty = _load_difficulty()
difficulty, histogram_features = _difficulty.difficulty, _difficulty.histogram_features
market_rank1_map, pixel_features = _difficulty.market_rank1_map, _difficulty.pixel_features

MARKET_NAME = re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")
LOADER_NAME = re.compile(r"([-\d]+)_c(\d+)")  # what the Market loader parses


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _labels(folder: Path) -> list[tuple[int, int]]:
    out = []
    for f in sorted(folder.glob("*.jpg")):
        m = LOADER_NAME.match(f.name)
        assert m, f.name
        out.append((int(m.group(1)), int(m.group(2))))
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "small"
    generate(root, ids=8, seed=3)
    return root


@pytest.fixture(scope="module")
def default_size(tmp_path_factory) -> tuple[Path, dict]:
    """The default dataset (120 ids per split) and its statistics (its generation time: benchmarks/data_speed.py)."""
    root = tmp_path_factory.mktemp("synth") / "default"
    return root, generate(root)


# --------------------------------------------------------------------------------------------
# determinism


def test_same_seed_gives_identical_bytes(tmp_path):
    generate(tmp_path / "a", ids=4, seed=7)
    generate(tmp_path / "b", ids=4, seed=7)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) > 40
    assert a == b


def test_different_seed_gives_different_images(tmp_path):
    generate(tmp_path / "a", ids=4, seed=7)
    generate(tmp_path / "b", ids=4, seed=8)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert set(a) != set(b)  # names carry the random frame numbers
    images_a = {v for k, v in a.items() if k.endswith(".jpg")}
    images_b = {v for k, v in b.items() if k.endswith(".jpg")}
    assert len(images_a) == sum(k.endswith(".jpg") for k in a)  # every image is unique...
    assert not images_a & images_b  # ...and none comes back with another seed


# --------------------------------------------------------------------------------------------
# Market layout


def test_market_layout_and_names(small):
    for folder in (TRAIN, GALLERY, QUERY):
        files = sorted((small / folder).iterdir())
        assert files and all(MARKET_NAME.match(f.name) for f in files), folder
    names = [f.name for folder in (TRAIN, GALLERY, QUERY) for f in (small / folder).iterdir()]
    assert len(names) == len(set(names))
    img = Image.open(next((small / QUERY).iterdir()))
    assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (64, 128))


def test_splits_queries_and_junk_follow_the_market_protocol(small):
    train, query, gallery = (_labels(small / f) for f in (TRAIN, QUERY, GALLERY))
    train_ids = {p for p, _ in train}
    test_ids = {p for p, _ in query}
    assert train_ids == set(range(1, 9)) and test_ids == set(range(9, 17))
    assert {p for p, _ in gallery} == test_ids | {0, -1}  # distractors and junk only in the gallery
    assert 0 not in train_ids | test_ids and -1 not in train_ids | test_ids
    # exactly one query per (test identity, camera it appears in)
    assert len(query) == len(set(query))
    cams_of = defaultdict(set)
    for p, c in query + gallery:
        if p > 0:
            cams_of[p].add(c)
    assert set(query) == {(p, c) for p, cams in cams_of.items() for c in cams}
    assert all(len(cams) >= 2 for cams in cams_of.values())
    # every query has a match in another camera
    for p, c in query:
        assert any(gp == p and gc != c for gp, gc in gallery), (p, c)
    # the statistics returned and stored describe what is on disk
    marker = json.loads((small / MARKER).read_text())
    assert marker["generator"] == synth.GENERATOR and marker["version"] == synth.GENERATOR_VERSION
    assert marker["params"]["ids"] == 8 and marker["params"]["seed"] == 3
    stats = marker["stats"]
    assert stats[QUERY]["images"] == len(query) and stats[GALLERY]["images"] == len(gallery)
    assert stats["distractors"] == sum(p == 0 for p, _ in gallery) >= 1
    assert stats["junk"] == sum(p == -1 for p, _ in gallery) >= 1


def test_custom_image_size_and_camera_count(tmp_path):
    stats = generate(tmp_path / "d", ids=3, cameras=2, height=64, width=32, images_per_camera=(2, 2))
    imgs = list((tmp_path / "d").rglob("*.jpg"))
    assert {Image.open(f).size for f in imgs} == {(32, 64)}
    assert {c for _, c in _labels(tmp_path / "d" / TRAIN)} == {1, 2}
    assert stats[TRAIN]["images"] == 3 * 2 * 2  # 2 cameras x 2 images for each of 3 identities


@pytest.mark.parametrize("kwargs", [{"images_per_camera": (1, 3)}, {"cameras": 1}, {"ids": 0}, {"height": 8}])
def test_invalid_parameters_are_refused(tmp_path, kwargs):
    with pytest.raises(ValueError, match="synthetic dataset"):
        generate(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------
# what is modelled


def _count(img: Image.Image, colour: tuple[int, int, int]) -> int:
    return int((np.asarray(img)[..., :3] == np.array(colour)).all(axis=-1).sum())


def test_view_decides_what_is_visible():
    rng = np.random.default_rng(0)
    base = random_identity(rng)
    pack, logo = (201, 13, 77), (13, 201, 77)
    ident = dataclasses.replace(base, backpack=pack, pattern="logo", top2=logo, logo_shape="square", bag=None,
                                carry=None)
    seen = {}
    for view in ("front", "back", "side"):
        pose = Pose(view=view, facing=1, arm_swing=0.0, stride=0.0, arm_spread=0.1, tilt=0.0)
        layer = draw_person((128, 256), ident, pose, 64.0, 240.0, 220.0)
        seen[view] = (_count(layer, pack), _count(layer, logo), int((np.asarray(layer)[..., 3] > 0).sum()))
    assert seen["back"][0] > 400 and seen["front"][0] == 0  # the pack body only shows from behind
    assert seen["front"][1] > 50 and seen["back"][1] == seen["side"][1] == 0  # the logo only from the front
    assert 0 < seen["side"][0] < seen["back"][0]  # in profile the pack sticks out behind
    assert seen["side"][2] < 0.8 * seen["front"][2]  # a side view is narrower


def test_near_duplicates_differ_in_exactly_one_visible_attribute():
    rng = np.random.default_rng(1)
    for _ in range(100):
        parent = random_identity(rng)
        child = near_duplicate(rng, parent)
        diff = [f.name for f in dataclasses.fields(parent) if getattr(parent, f.name) != getattr(child, f.name)]
        assert len(diff) == 1, diff
        name = diff[0]
        assert distinct(getattr(parent, name), getattr(child, name)), (name, parent, child)
        assert not (name == "top2" and parent.pattern == "solid")  # an invisible change is label noise
        assert not (name == "hair" and parent.hair_style == "bald")


# --------------------------------------------------------------------------------------------
# retrieval metric and difficulty


def test_market_rank1_map_on_a_hand_computed_case():
    # query pid 1 in camera 1; gallery ranked by distance to q = 0:
    #   d=1 pid 1 cam 1 (same camera: ignored), d=2 pid -1 (junk: ignored), d=3 pid 2 (wrong),
    #   d=4 pid 1 cam 2 (hit at valid rank 2), d=5 pid 0 (distractor, wrong), d=6 pid 1 cam 3 (hit at rank 4)
    g = np.array([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]])
    g_pids, g_cams = np.array([1, -1, 2, 1, 0, 1]), np.array([1, 2, 2, 2, 3, 3])
    r = market_rank1_map(np.zeros((1, 1)), np.array([1]), np.array([1]), g, g_pids, g_cams)
    assert r["rank1"] == 0.0
    assert r["mAP"] == pytest.approx(100 * (1 / 2 + 2 / 4) / 2)
    assert r["chance_rank1"] == pytest.approx(100 * 2 / 4)
    # a second query whose nearest valid image matches; a third with no valid match is skipped
    q = np.array([[0.0], [3.9], [0.0]])
    r = market_rank1_map(q, np.array([1, 1, 9]), np.array([1, 1, 1]), g, g_pids, g_cams)
    assert (r["rank1"], r["queries"]) == (50.0, 2)


def test_hand_crafted_features_shapes():
    imgs = np.random.default_rng(0).integers(0, 256, (3, 128, 64, 3), dtype=np.uint8)
    assert pixel_features(imgs).shape == (3, 384)
    h = histogram_features(imgs)
    assert h.shape == (3, 512) and np.allclose(h.sum(1), 1.0)


def test_default_dataset_size(default_size):
    _, stats = default_size
    assert stats[TRAIN]["ids"] == stats[QUERY]["ids"] == 120
    assert 2000 < stats["images"] < 3000


def test_default_dataset_is_neither_trivial_nor_random(default_size):
    root = default_size[0]
    r = difficulty(root)
    pix, hist, full = r["pixels"], r["histogram"], r["histogram_full"]
    chance = hist["chance_rank1"]
    assert chance < 1.0
    assert 10.0 <= hist["rank1"] <= 60.0, hist
    assert 5 * chance <= pix["rank1"] <= 60.0, pix
    assert hist["mAP"] > 5 * chance and pix["mAP"] > 5 * chance
    # a whole-crop histogram mostly sees the camera's background: same-camera strangers win
    assert full["rank1"] < hist["rank1"] / 3


# --------------------------------------------------------------------------------------------
# generate() over existing folders, ensure()


def test_generate_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a synthetic dataset"):
        generate(tmp_path / "mine", ids=2)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="refusing"):
        ensure(tmp_path / "file", ids=2)


def test_ensure_is_idempotent_and_guards_other_parameters(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    root.mkdir()  # an empty folder is fine to fill
    assert ensure(root, ids=2, seed=1, cameras=3) == root.absolute()
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    with monkeypatch.context() as mp:  # the second call must not generate at all
        mp.setattr(synth, "generate", lambda *a, **k: pytest.fail("ensure() regenerated a current dataset"))
        ensure(root, ids=2, seed=1, cameras=3)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # nothing rewritten
    with pytest.raises(ValueError, match="other parameters"):
        ensure(root, ids=3, seed=1, cameras=3)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    # generate() over the same parameters regenerates the very same bytes
    content = _files(root)
    generate(root, ids=2, seed=1, cameras=3)
    assert _files(root) == content
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary folders left behind


def test_ensure_regenerates_a_dataset_of_an_older_generator(tmp_path):
    root = tmp_path / "ds"
    ensure(root, ids=2)
    content = _files(root)
    marker = json.loads((root / MARKER).read_text())
    (root / MARKER).write_text(json.dumps({**marker, "version": synth.GENERATOR_VERSION - 1}))
    (root / QUERY / "stale.jpg").write_bytes(b"old")
    ensure(root, ids=2)
    assert _files(root) == content
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_ensure_is_safe_when_two_processes_race(tmp_path):
    root = tmp_path / "ds"
    # spawn, not fork: a fork copies whatever lock another thread of the test process (Streamlit's, an
    # AppTest's) holds at that instant, and the child can wait on it forever
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        paths = pool.starmap(ensure, [(root, 3, 5, 2), (root, 3, 5, 2)])
    assert paths == [root.absolute()] * 2
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # the loser's copy is gone
    generate(tmp_path / "ref", ids=3, seed=5, cameras=2)
    assert _files(root) == _files(tmp_path / "ref")
