"""The dataset-format table: each format built tiny in a tmp folder (clean and hostile), recognised by its layout,
checked with the same summary, loaded with the right pids and cameras; the leave-one-out protocol of camera-less
identity folders; config, sweep and CLI reading the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dataset_builders import (
    MSMT_GALLERY,
    MSMT_TRAIN,
    MSMT_VAL,
    PEOPLE,
    jpeg,
    make_folders,
    make_market,
    make_msmt17,
    msmt_name,
    put,
    relayout_synthetic,
)

from cpl.config import ConfigError, format_options, load_config
from cpl.data.check import check_dataset
from cpl.data.dataset import NO_CAMERA, DatasetError
from cpl.data.formats import AUTO, FORMATS, KINDS, LEAVE_ONE_OUT, detect, load_dataset, protocol_of
from cpl.data.msmt17 import TEST_PID_OFFSET
from cpl.evaluation import evaluate
from cpl.evaluation.metrics import protocol_keys
from cpl.sweep.grid import pin_format

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- the table


def test_every_layout_is_recognised_by_its_own_format(tmp_path: Path) -> None:
    assert KINDS == (AUTO, "market", "msmt17", "folders", "synthetic")
    assert detect(make_market(tmp_path / "m")).name == "market"
    assert detect(make_msmt17(tmp_path / "v1")).name == "msmt17"
    assert detect(make_msmt17(tmp_path / "v2", "V2")).name == "msmt17"
    assert detect(make_folders(tmp_path / "f", PEOPLE)).name == "folders"
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes" / "sub").mkdir(parents=True)
    (tmp_path / "notes" / "sub" / "readme.txt").write_text("x")
    assert detect(tmp_path / "empty") is None and detect(tmp_path / "notes") is None
    assert detect(tmp_path / "missing") is None
    with pytest.raises(DatasetError) as info:
        load_dataset(tmp_path / "notes")
    message = str(info.value)
    assert "\n" not in message and "not a dataset layout this library reads" in message
    assert all(f.label in message for f in FORMATS.values())


@pytest.mark.parametrize("build, kind, protocol", [
    (make_market, "market", "cross-camera"),
    (make_msmt17, "msmt17", "cross-camera"),
    (lambda root: make_folders(root, PEOPLE), "folders", LEAVE_ONE_OUT),
])
def test_check_prints_the_same_summary_for_every_format(tmp_path: Path, build, kind: str, protocol: str) -> None:
    root = build(tmp_path / "ds")
    report = check_dataset(root)
    assert report.ok, report.errors
    assert (report.kind, report.protocol) == (kind, protocol)
    lines = report.format().splitlines()
    assert lines[0] == f"dataset {root} ({kind}, protocol {protocol})"
    assert lines[1].split() == ["split", "folder", "images", "ids", "cameras", "junk", "distractors", "ignored"]
    assert [line.split()[0] for line in lines[2:5]] == ["train", "query", "gallery"]
    assert lines[-1].startswith("OK: ")
    out = subprocess.run([sys.executable, "-m", "cpl", "check", str(root), "--no-decode"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:5] == check_dataset(root, decode=False).format().splitlines()[:5]
    forced = subprocess.run([sys.executable, "-m", "cpl", "check", str(root), "--no-decode", "--kind",
                             "market" if kind != "market" else "msmt17"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert forced.returncode == 2 and "error: " in forced.stdout


# ---------------------------------------------------------------------------------------------- MSMT17


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_msmt17_loads_train_plus_val_with_shifted_pids(tmp_path: Path, version: str) -> None:
    root = make_msmt17(tmp_path / "msmt", version)
    ds = load_dataset(root)
    assert (ds.format, ds.protocol) == ("msmt17", "cross-camera")
    assert len(ds.train) == len(MSMT_TRAIN) + len(MSMT_VAL)
    # train pids are the listed ones + 1 (pid 0 means a distractor here); test ones are moved past the offset
    assert sorted(ds.train.pids.tolist()) == sorted(p + 1 for p, _ in MSMT_TRAIN + MSMT_VAL)
    assert ds.label_to_pid.tolist() == [1, 2, 3, 4] and ds.num_classes == 4
    assert sorted(ds.query.pids.tolist()) == [TEST_PID_OFFSET + 1, TEST_PID_OFFSET + 2]
    assert sorted(zip(ds.gallery.pids.tolist(), ds.gallery.camids.tolist())) == sorted(
        (p + 1 + TEST_PID_OFFSET, c) for p, c in MSMT_GALLERY)
    assert ds.train.cameras == (1, 2, 3, 4, 5, 7)
    folder = "train" if version == "V1" else "mask_train_v2"
    assert all(p.startswith(str(root / folder) + os.sep) for p in ds.train.paths)
    only_train = load_dataset(root, "msmt17", {"with_val": False})
    assert sorted(only_train.train.pids.tolist()) == sorted(p + 1 for p, _ in MSMT_TRAIN)
    assert only_train.num_classes == 3
    report = check_dataset(root)
    # train and test pids never collide (no "train and test share" warning); test pid 2 is gallery-only
    assert report.ok and report.warnings == [f"1 identities appear only in the gallery, not in query (pids "
                                             f"{TEST_PID_OFFSET + 3}); they act as distractors"]
    assert [s.cameras for s in report.splits.values()] == [6, 2, 4]


@pytest.mark.parametrize("fault, message", [
    ("missing list", "list_query.txt: list file is missing (MSMT17 needs list_train.txt, list_val.txt"),
    ("bad line", "list_train.txt line 2: expected 'relpath pid', got 'just-a-path'"),
    ("unicode digits", "list_train.txt line 1: expected 'relpath pid', got '0000/x.jpg \u00b2'"),
    ("unicode camera", "list_train.txt line 1: 0000/0000_000_\u00b2_x_0.jpg: no camera in the file name"),
    ("missing image", "list_gallery.txt line 1: 0000/0000_012_02_0303morning_0012_0.jpg does not exist in"),
    ("escape", "list_val.txt line 1: ../../etc/x.jpg is not a path inside"),
    ("no camera", "list_train.txt line 1: 0000/oops.jpg: no camera in the file name"),
    ("not utf-8", "list_val.txt: not a UTF-8 text file"),
    ("no test folder", "test: image folder is missing (MSMT17 V1 needs train, test/)"),
    ("dangling link", "dangling symlink"),
    ("empty list", "list_query.txt: the list file names no image"),
])
def test_msmt17_hostile_inputs(tmp_path: Path, fault: str, message: str) -> None:
    root = make_msmt17(tmp_path / "msmt")
    listing = root / "list_train.txt"
    if fault == "missing list":
        (root / "list_query.txt").unlink()
    elif fault == "bad line":
        lines = listing.read_text().splitlines(keepends=True)
        listing.write_text(lines[0] + "just-a-path\n" + "".join(lines[2:]))
    elif fault == "unicode digits":
        listing.write_text("0000/x.jpg \u00b2\n" + listing.read_text())
    elif fault == "unicode camera":
        listing.write_text("0000/0000_000_\u00b2_x_0.jpg 0\n" + listing.read_text())
    elif fault == "missing image":
        (root / "test" / msmt_name(0, 12, 2)).unlink()
    elif fault == "escape":
        (root / "list_val.txt").write_text("../../etc/x.jpg 3\n")
    elif fault == "no camera":
        put(root / "train" / "0000" / "oops.jpg")
        listing.write_text("0000/oops.jpg 0\n" + listing.read_text())
    elif fault == "not utf-8":
        (root / "list_val.txt").write_bytes(b"\xff\xfe0000/x.jpg 0\n")
    elif fault == "no test folder":
        (root / "test").rename(root / "elsewhere")
    elif fault == "dangling link":
        target = root / "train" / msmt_name(0, 0, 1)
        target.unlink()
        target.symlink_to(root / "nowhere.jpg")
    elif fault == "empty list":
        (root / "list_query.txt").write_text("\n\n")
    report = check_dataset(root, decode=False)
    assert not report.ok
    assert any(message in e for e in report.errors), report.errors
    for line in report.errors + report.warnings:
        assert "\n" not in line
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    assert "\n" not in str(info.value) and str(info.value).split(" (and ")[0] in report.errors


def test_msmt17_many_bad_lines_are_summed_up(tmp_path: Path) -> None:
    root = make_msmt17(tmp_path / "msmt")
    (root / "list_train.txt").write_text("".join(f"bad line {i}\n" for i in range(8)))
    errors = check_dataset(root, decode=False).errors
    train_errors = [e for e in errors if "list_train.txt" in e]
    assert len(train_errors) == 4 and train_errors[-1].endswith("5 more bad line(s) (8 in all)")


def test_msmt17_decode_failure_names_the_file(tmp_path: Path) -> None:
    root = make_msmt17(tmp_path / "msmt")
    broken = root / "test" / msmt_name(1, 11, 3)
    broken.write_bytes(jpeg(0)[:40])
    report = check_dataset(root, workers=1)
    assert report.errors == [f"{broken}: truncated image (the file ends before the image data does)"]


# ---------------------------------------------------------------------------------------------- identity folders


def test_identity_folders_seeded_split(tmp_path: Path) -> None:
    counts = {**PEOPLE, "loner": 1}
    root = make_folders(tmp_path / "people", counts)
    (root / "notes.txt").write_text("not an image")
    (root / "person3" / "thumbs.db").write_bytes(b"x")
    ds = load_dataset(root)
    assert (ds.format, ds.protocol) == ("folders", LEAVE_ONE_OUT)
    names = sorted(counts)
    train_ids = {names[p - 1] for p in ds.train.pids.tolist()}
    test_ids = {names[p - 1] for p in ds.query.pids.tolist()}
    assert len(test_ids) == 5 and not train_ids & test_ids and train_ids | test_ids == set(counts)
    assert "loner" in train_ids  # a single image cannot be queried: it trains
    assert ds.query.paths == ds.gallery.paths and len(ds.query) == sum(counts[n] for n in test_ids)
    assert set(ds.train.camids.tolist()) == set(ds.query.camids.tolist()) == {NO_CAMERA}
    assert ds.train.cameras == ()
    again = load_dataset(root, "folders", {"seed": 0, "test_fraction": 0.5})
    assert again.query.paths == ds.query.paths
    other = load_dataset(root, "folders", {"seed": 1, "test_fraction": 0.5})
    assert other.query.paths != ds.query.paths
    assert len(set(load_dataset(root, "folders", {"seed": 0, "test_fraction": 0.2}).query.pids.tolist())) == 2
    report = check_dataset(root)
    assert report.ok and report.warnings == []
    stats = report.splits
    assert stats["train"].cameras == stats["query"].cameras == 0
    assert stats["train"].ignored + stats["query"].ignored == 2  # notes.txt, person3/thumbs.db
    assert stats["query"].images == stats["gallery"].images == len(ds.query)
    assert report.images == len(ds.train) + len(ds.query)  # query and gallery are one set of files
    assert report.format().splitlines()[-1].startswith(f"OK: {report.images:,} images decoded")


def test_identity_folders_split_file(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "people", {"ann": 3, "bob": 2, "cy": 2, "dee": 4})
    (root / "split.txt").write_text("# who is tested\nann train\nbob test\ncy train  # comment\ndee test\n")
    (root / "empty").mkdir()  # no images: no identity, so the split file need not list it
    ds = load_dataset(root)
    assert ds.label_to_pid.tolist() == [1, 3] and sorted(set(ds.query.pids.tolist())) == [2, 4]
    assert len(ds.train) == 5 and len(ds.query) == len(ds.gallery) == 6
    report = check_dataset(root)
    assert report.ok and report.splits["train"].ignored == 1


@pytest.mark.parametrize("split, message", [  # message: what follows the split file's path
    ("ann train\nbob test\ncy\n", " line 3: expected '<identity folder> train|test', got 'cy'"),
    ("ann train\nbob test\neve test\ncy train\n", " line 3: no identity folder 'eve'"),
    ("ann train\nbob test\nann test\ncy train\n", " line 3: 'ann' is listed twice"),
    ("ann train\nbob test\n", ": 1 identity folder(s) are not listed: cy"),
    ("ann train\nbob train\ncy train\n", ": needs at least one train and one test identity"),
])
def test_identity_folders_hostile_split_file(tmp_path: Path, split: str, message: str) -> None:
    root = make_folders(tmp_path / "people", {"ann": 2, "bob": 2, "cy": 2})
    (root / "split.txt").write_text(split)
    report = check_dataset(root, decode=False)
    assert report.errors == [f"{root / 'split.txt'}{message}"]
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    assert str(info.value) == report.errors[0]


def test_identity_folders_hostile_images(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "people", {"ann": 2, "bob": 2, "cy": 2, "dee": 2})
    (root / "bob" / "002.jpg").symlink_to(root / "gone.jpg")
    put(root / "cy" / "002.jpg", b"")
    report = check_dataset(root, workers=1)
    assert any(e.startswith(f"{root / 'bob' / '002.jpg'}: dangling symlink") for e in report.errors)
    assert f"{root / 'cy' / '002.jpg'}: zero-byte file" in report.errors
    assert len(report.errors) == len(set(report.errors)) == 2  # query = gallery: each problem said once
    with pytest.raises(DatasetError, match="dangling symlink"):
        load_dataset(root)


def test_identity_folders_need_two_identities_with_two_images(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "people", {"ann": 3, "bob": 1})
    report = check_dataset(root)
    assert report.errors == ["identity folders need at least 2 identities with 2 or more images each, found 1"]
    with pytest.raises(DatasetError, match="found 1"):
        load_dataset(root)


# ---------------------------------------------------------------------------------------------- the protocol


def test_leave_one_out_excludes_only_the_query_itself() -> None:
    paths = ["a0", "a1", "b0", "b1", "b2"]
    pids = np.array([1, 1, 2, 2, 2])
    cams = np.full(5, NO_CAMERA)
    dist = np.array([[0.0, 0.5, 0.2, 0.9, 0.8],   # a0: b0 comes first, its one match a1 second -> AP 1/2
                     [0.5, 0.0, 0.9, 0.9, 0.9],   # a1: a0 first -> AP 1
                     [0.3, 0.9, 0.0, 0.1, 0.4],   # b0: b1, a0, b2 -> AP (1/1 + 2/3) / 2
                     [0.9, 0.9, 0.1, 0.0, 0.2],   # b1: b0, b2 -> AP 1
                     [0.9, 0.1, 0.4, 0.2, 0.0]])  # b2: a1, b1, b0 -> AP (1/2 + 2/3) / 2
    q_keys, g_keys = protocol_keys(LEAVE_ONE_OUT, paths, paths, cams, cams)
    assert q_keys.tolist() == g_keys.tolist() == [0, 1, 2, 3, 4]
    res = evaluate(dist, pids, pids, q_keys, g_keys, max_rank=3)
    expected = [1 / 2, 1.0, (1 + 2 / 3) / 2, 1.0, (1 / 2 + 2 / 3) / 2]
    np.testing.assert_allclose(res["all_AP"], expected)
    np.testing.assert_allclose(res["cmc"], [3 / 5, 1.0, 1.0])
    assert res["num_valid"] == 5
    # the cameras themselves (all unknown) would exclude every match: the keys are what makes the protocol
    with pytest.raises(ValueError, match="no query has a valid match"):
        evaluate(dist, pids, pids, cams, cams)
    # cross-camera keeps the cameras as they are
    q_cam, g_cam = protocol_keys("cross-camera", paths, paths, [1, 2, 1, 2, 3], [1, 2, 1, 2, 3])
    assert q_cam.tolist() == g_cam.tolist() == [1, 2, 1, 2, 3]


def test_protocol_of_results() -> None:
    assert protocol_of({"rank1": 50.0}) == "cross-camera"  # a run from before protocols were recorded
    assert protocol_of({"rank1": 50.0, "protocol": LEAVE_ONE_OUT}) == LEAVE_ONE_OUT
    assert protocol_of(None) == protocol_of({}) == protocol_of({"protocol": 3}) == ""


# ---------------------------------------------------------------------------------------------- config and sweep


def test_config_kinds_and_format_options(tmp_path: Path) -> None:
    cfg = load_config(None, ["data.root=x"])
    assert cfg.data.kind == AUTO and format_options(cfg.data, "msmt17") == {"with_val": True}
    assert format_options(cfg.data, "market") == {}
    assert format_options(cfg.data, "folders") == {"test_fraction": 0.5, "seed": 0}
    with pytest.raises(ConfigError, match=r"^data\.kind: must be one of auto, market, msmt17, folders, synthetic"):
        load_config(None, ["data.root=x", "data.kind=duke"])
    with pytest.raises(ConfigError, match=r"^data\.msmt17: only used when data\.kind is msmt17 .*'market'"):
        load_config(None, ["data.root=x", "data.kind=market", "data.msmt17.with_val=false"])
    with pytest.raises(ConfigError, match=r"^data\.folders: only used when data\.kind is folders"):
        load_config(None, ["data.root=x", "data.kind=synthetic", "data.folders.seed=3"])
    with pytest.raises(ConfigError, match=r"^data\.folders\.test_fraction: must be strictly between 0 and 1"):
        load_config(None, ["data.root=x", "data.folders.test_fraction=1"])
    load_config(None, ["data.root=x", "data.msmt17.with_val=false"])  # auto: refused later if not MSMT17


def test_sweep_pins_the_format_once(tmp_path: Path) -> None:
    cfg = load_config(None, [f"data.root={make_msmt17(tmp_path / 'msmt')}", "data.msmt17.with_val=false"])
    pin_format(cfg)
    assert cfg.data.kind == "msmt17"
    odd = load_config(None, [f"data.root={make_folders(tmp_path / 'f', PEOPLE)}", "data.msmt17.with_val=false"])
    with pytest.raises(ConfigError, match=r"^data\.msmt17: only used when data\.kind is msmt17"):
        pin_format(odd)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ConfigError, match="^data.root: .*not a dataset layout"):
        pin_format(load_config(None, [f"data.root={tmp_path / 'nothing'}"]))


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def synthetic_people(tmp_path_factory) -> Path:
    from cpl.synth import ensure

    return ensure(tmp_path_factory.mktemp("data") / "synthetic", ids=12, seed=0, cameras=4)


@pytest.mark.slow  # a whole CLI fast-dev-run per format (~25 s each)
@pytest.mark.parametrize("kind", ["market", "msmt17", "folders"])
def test_fast_dev_run_trains_and_evaluates_every_format(tmp_path: Path, synthetic_people: Path, kind: str) -> None:
    root = synthetic_people if kind == "market" else relayout_synthetic(synthetic_people, tmp_path / kind, kind)
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "cpl", "--runs-root", str(tmp_path), "run", "--config", "configs/synthetic.yaml",
         "--run-dir", str(run), "--fast-dev-run", "--set", "data.kind=auto", "--set", f"data.root={root}",
         "--set", "eval.umap=false", "--set", "train.method=baseline", "--set", "unlabeled.source=none"],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    dataset = json.loads((run / "dataset.json").read_text())
    results = json.loads((run / "results.json").read_text())
    protocol = LEAVE_ONE_OUT if kind == "folders" else "cross-camera"
    assert (dataset["format"], dataset["protocol"], results["protocol"]) == (kind, protocol, protocol)
    # the headline mAP is the protocol's, recomputed here from the written features and splits
    q = np.load(run / "features" / "query.npy").astype(np.float32)
    g = np.load(run / "features" / "gallery.npy").astype(np.float32)
    qs = [line.split(",") for line in (run / "features" / "query.csv").read_text().splitlines()[1:]]
    gs = [line.split(",") for line in (run / "features" / "gallery.csv").read_text().splitlines()[1:]]
    q_pids, g_pids = np.array([int(r[1]) for r in qs]), np.array([int(r[1]) for r in gs])
    q_cams, g_cams = np.array([int(r[2]) for r in qs]), np.array([int(r[2]) for r in gs])
    keys = protocol_keys(protocol, [r[0] for r in qs], [r[0] for r in gs], q_cams, g_cams)
    res = evaluate(1.0 - q @ g.T, q_pids, g_pids, *keys)
    assert res["num_valid"] == results["num_valid_queries"]
    assert 100 * res["mAP"] == pytest.approx(results["mAP"], abs=0.5)  # features are stored as float16
    if kind == "folders":
        # the fast-dev-run caps keep 48 queries, each with every image of its identity in the gallery
        assert set(q_cams.tolist()) == {NO_CAMERA} and {r[0] for r in qs} <= {r[0] for r in gs}
        assert res["num_valid"] == len(qs) == 48
    # the distance plot counts the protocol's pairs: under leave-one-out every other image of the identity matches
    same_pid = q_pids[:, None] == g_pids[None, :]
    counted = same_pid & (keys[0][:, None] != keys[1][None, :]) & (g_pids != -1)[None, :]
    with np.load(run / "distances.npz") as d:
        assert int(d["match_hist"].sum()) == int(counted.sum()) > 0


def test_a_run_refuses_options_of_a_format_its_folder_is_not(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "people", PEOPLE)
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "cpl", "--runs-root", str(tmp_path), "run", "--config", "configs/synthetic.yaml",
         "--run-dir", str(run), "--fast-dev-run", "--set", "data.kind=auto", "--set", f"data.root={root}",
         "--set", "data.msmt17.with_val=false"],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and status["error"] == (
        f"data.msmt17: only used by that format, but {root} is read as folders; remove the setting")
    assert not (run / "dataset.json").exists()
