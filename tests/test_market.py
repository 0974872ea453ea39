"""Market-1501 layout: name parsing, scanning, relabelling, junk/distractor rules, caps, fingerprint."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cpl.data.dataset import DatasetError, relabel
from cpl.data.formats import load_dataset
from cpl.data.market import SPLIT_FOLDERS, parse_name, scan_split

MARKET_SAMPLES = {  # the 7 real Market-1501 crops in the shared data, with the (pid, camera) of each
    "0001_c1s1_001051_00.jpg": (1, 1),
    "0001_c6s1_009601_00.jpg": (1, 6),
    "0022_c6s1_002976_01.jpg": (22, 6),
    "0027_c2s2_091032_02.jpg": (27, 2),
    "0032_c6s1_002851_01.jpg": (32, 6),
    "0048_c1s1_005351_01.jpg": (48, 1),
    "0065_c6s1_009501_02.jpg": (65, 6),
}


def write_image(path: Path, color: tuple[int, int, int] = (200, 30, 60)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), color).save(path)


def make_dataset(root: Path, **splits: list[str]) -> Path:
    """Write tiny images named ``splits[name]`` into each split folder (all three folders exist)."""
    for split, folder in SPLIT_FOLDERS.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in splits.get(split, []):
            write_image(root / folder / name)
    return root


def names(pid_cams: list[tuple[int, int]]) -> list[str]:
    return [f"{pid:04d}_c{cam}s1_{i:06d}_00.jpg" if pid >= 0 else f"-1_c{cam}s1_{i:06d}_00.jpg"
            for i, (pid, cam) in enumerate(pid_cams)]


def test_parse_real_market_names(shared_data: Path) -> None:
    folder = shared_data / "market1501_samples"
    assert sorted(os.listdir(folder)) == sorted(MARKET_SAMPLES)
    for name, expected in MARKET_SAMPLES.items():
        assert parse_name(name) == expected


@pytest.mark.parametrize("name, expected", [
    ("-1_c3s2_000151_00.jpg", (-1, 3)),            # Market junk
    ("0000_c1s1_000151_01.jpg", (0, 1)),           # Market distractor
    ("0005_c2_f0046985.jpg", (5, 2)),              # DukeMTMC-reID
    ("0001_c1_1.png", (1, 1)),                     # CUHK03-NP
    ("1501_c6s4_001902_01.JPG", (1501, 6)),
    ("cam_0007_c2.bmp", (7, 2)),                   # the pattern is searched, not anchored
    ("readme.jpg", None),
    ("0001c1.jpg", None),
    ("--_c1.jpg", None),
    ("1-2_c1.jpg", None),
    ("-2_c1.jpg", None),                           # only -1 is a special negative id
    ("99999999999999999999_c1.jpg", None),         # does not fit int64
])
def test_parse_name(name: str, expected: tuple[int, int] | None) -> None:
    assert parse_name(name) == expected


def test_scan_extensions_ignored_files_and_order(tmp_path: Path) -> None:
    folder = tmp_path / "bounding_box_train"
    for name in ["0002_c1s1_000001_00.JPG", "0001_c2s1_000001_00.Jpeg", "0001_c1s1_000001_00.png",
                 "0003_c1s1_000001_00.BMP", "._0001_c1s1_000009_00.jpg"]:
        write_image(folder / name) if not name.startswith(".") else (folder / name).write_bytes(b"\0" * 10)
    (folder / "Thumbs.db").write_bytes(b"x")
    (folder / ".DS_Store").write_bytes(b"x")
    (folder / "README").write_text("hello")
    (folder / "0004_c1s1_000001_00.gif").write_bytes(b"GIF89a")
    (folder / "sub").mkdir()
    write_image(folder / "sub" / "0005_c1s1_000001_00.jpg")

    scan = scan_split(tmp_path, "train")
    assert [os.path.basename(p) for p in scan.paths] == [
        "0001_c1s1_000001_00.png", "0001_c2s1_000001_00.Jpeg", "0002_c1s1_000001_00.JPG", "0003_c1s1_000001_00.BMP"]
    assert all(os.path.isabs(p) for p in scan.paths)
    assert scan.pids.tolist() == [1, 1, 2, 3] and scan.camids.tolist() == [1, 2, 1, 1]
    assert sorted(scan.ignored) == sorted(["._0001_c1s1_000009_00.jpg", ".DS_Store", "0004_c1s1_000001_00.gif",
                                          "README", "Thumbs.db", "sub"])
    assert scan.unparsed == () and scan.broken == ()


def test_load_relabels_in_sorted_pid_order(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, train=names([(30, 1), (7, 2), (30, 2), (2, 1), (7, 1), (2, 3)]),
                        query=names([(5, 1)]), gallery=names([(5, 2)]))
    ds = load_dataset(root)
    assert ds.train.pids.tolist() == [2, 2, 7, 7, 30, 30]  # path order: names start with the pid
    assert ds.train.camids.tolist() == [1, 3, 1, 2, 1, 2]
    assert ds.label_to_pid.tolist() == [2, 7, 30]
    assert ds.train_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.num_classes == 3 and ds.train.num_ids == 3
    assert ds.train_labels.dtype == np.int64 and ds.train.pids.dtype == np.int64 and ds.train.camids.dtype == np.int64
    assert ds.train.cameras == (1, 2, 3)
    assert list(ds.train.paths) == sorted(ds.train.paths)
    with pytest.raises(ValueError):
        ds.train.pids[0] = 99  # the arrays of a frozen split are read-only
    labels, l2p = relabel(np.array([9, 3, 9, 4]))
    assert labels.tolist() == [2, 0, 2, 1] and l2p.tolist() == [3, 4, 9]


def test_junk_and_distractors(tmp_path: Path) -> None:
    root = make_dataset(
        tmp_path,
        train=names([(1, 1), (1, 2), (-1, 1), (0, 2), (2, 1)]),
        query=names([(3, 1), (-1, 2), (0, 1)]),
        gallery=names([(3, 2), (-1, 1), (0, 1), (0, 3), (4, 2)]),
    )
    ds = load_dataset(root)
    assert ds.train.pids.tolist() == [1, 1, 2]  # junk and distractors are not people to learn
    assert ds.label_to_pid.tolist() == [1, 2]
    assert ds.query.pids.tolist() == [3]  # neither has a true match
    assert sorted(ds.gallery.pids.tolist()) == [0, 0, 3, 4]  # distractors stay, junk goes
    assert ds.gallery.num_ids == 2 and len(ds.gallery) == 4


def _toy_market(root: Path, rng: np.random.Generator) -> Path:
    """40 train ids with 1..6 images, 30 test ids (1..2 queries, 1..4 gallery images), 25 distractors."""
    train = [(pid, int(rng.integers(1, 7))) for pid in range(1, 41) for _ in range(int(rng.integers(1, 7)))]
    query, gallery = [], []
    for pid in range(100, 130):
        query += [(pid, 1 + k) for k in range(int(rng.integers(1, 3)))]
        gallery += [(pid, 3 + k % 3) for k in range(int(rng.integers(1, 5)))]
    gallery += [(0, int(rng.integers(1, 7))) for _ in range(25)]
    return make_dataset(root, train=names(train), query=names(query), gallery=names(gallery))


def test_train_cap_keeps_identities_whole(tmp_path: Path) -> None:
    root = _toy_market(tmp_path, np.random.default_rng(0))
    full = load_dataset(root)
    ds = load_dataset(root, max_train=37, seed=3)
    assert len(ds.train) == 37
    _, counts = np.unique(ds.train.pids, return_counts=True)
    assert counts.min() >= 2
    full_counts = dict(zip(*np.unique(full.train.pids, return_counts=True)))
    partial = [pid for pid, n in zip(*np.unique(ds.train.pids, return_counts=True)) if n < full_counts[pid]]
    assert len(partial) <= 1  # at most one identity is cut to fill the cap
    assert set(ds.train.paths) <= set(full.train.paths) and list(ds.train.paths) == sorted(ds.train.paths)
    assert ds.label_to_pid.tolist() == sorted(set(ds.train.pids.tolist()))
    assert ds.train_labels.max() == ds.num_classes - 1
    again = load_dataset(root, max_train=37, seed=3)
    other = load_dataset(root, max_train=37, seed=4)
    assert again.train.paths == ds.train.paths
    assert other.train.paths != ds.train.paths
    assert len(load_dataset(root, max_train=10_000).train) == len(full.train)


def test_test_caps_keep_matches_and_distractors(tmp_path: Path) -> None:
    root = _toy_market(tmp_path, np.random.default_rng(1))
    full = load_dataset(root)
    ds = load_dataset(root, max_query=12, max_gallery=40, seed=0)
    assert 0 < len(ds.query) <= 12 and len(ds.gallery) == 40
    for pid in set(ds.query.pids.tolist()):
        # every gallery image of a kept query identity is kept
        assert np.sum(ds.gallery.pids == pid) == np.sum(full.gallery.pids == pid)
    assert np.sum(ds.gallery.pids == 0) == 40 - np.isin(ds.gallery.pids, ds.query.pids).sum()
    only_query = load_dataset(root, max_query=5)
    assert len(only_query.query) == 5 and only_query.gallery.paths == full.gallery.paths
    assert load_dataset(root, max_query=5, seed=9).query.paths != only_query.query.paths


def test_gallery_cap_too_small(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, train=names([(1, 1), (1, 2)]), query=names([(5, 1)]),
                        gallery=names([(5, 2), (5, 3), (0, 1)]))
    with pytest.raises(DatasetError, match="max_gallery=1"):
        load_dataset(root, max_gallery=1)
    ds = load_dataset(root, max_gallery=2)
    assert sorted(ds.gallery.pids.tolist()) == [5, 5]


def test_fingerprint(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, train=names([(1, 1), (1, 2), (2, 1), (2, 2)]), query=names([(5, 1)]),
                        gallery=names([(5, 2)]))
    fp = load_dataset(root).fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    # a copy of the dataset elsewhere (same names, sizes, mtimes) has the same fingerprint: paths are relative
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, copy_function=shutil.copy2)
    assert load_dataset(copy).fingerprint() == fp
    assert load_dataset(str(root)).fingerprint() == fp
    assert load_dataset(root, max_train=2).fingerprint() != fp
    first = Path(load_dataset(root).train.paths[0])
    st = first.stat()
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    fp_touched = load_dataset(root).fingerprint()
    assert fp_touched != fp
    with first.open("ab") as fh:
        fh.write(b"\0")
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert load_dataset(root).fingerprint() != fp_touched  # size changed, mtime restored


@pytest.mark.parametrize("fault, message", [
    ("missing root", "dataset folder not found"),
    ("missing query", "query: split folder is missing"),
    ("empty gallery", "bounding_box_test: no images"),
    ("bad name", "1 image name(s) do not match PID_cCAM"),
    ("all junk train", "no usable images: all 2 are junk (-1) or distractors (0)"),
])
def test_load_errors(tmp_path: Path, fault: str, message: str) -> None:
    root = make_dataset(tmp_path / "ds", train=names([(1, 1), (1, 2)]), query=names([(5, 1)]),
                        gallery=names([(5, 2)]))
    if fault == "missing root":
        root = tmp_path / "nowhere"
    elif fault == "missing query":
        (root / "query" / names([(5, 1)])[0]).unlink()
        (root / "query").rmdir()
    elif fault == "empty gallery":
        (root / "bounding_box_test" / names([(5, 2)])[0]).unlink()
    elif fault == "bad name":
        write_image(root / "bounding_box_train" / "person.jpg")
    elif fault == "all junk train":
        for p in (root / "bounding_box_train").iterdir():
            p.rename(p.with_name("-1" + p.name[4:]))
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_load_real_market_samples(shared_data: Path, tmp_path: Path) -> None:
    # Lay the real crops out as a dataset by symlinking (the data itself stays in shared/).
    src = shared_data / "market1501_samples"
    layout = {"train": ["0022_c6s1_002976_01.jpg", "0027_c2s2_091032_02.jpg", "0032_c6s1_002851_01.jpg"],
              "query": ["0001_c1s1_001051_00.jpg"],
              "gallery": ["0001_c6s1_009601_00.jpg", "0048_c1s1_005351_01.jpg", "0065_c6s1_009501_02.jpg"]}
    for split, files in layout.items():
        folder = tmp_path / SPLIT_FOLDERS[split]
        folder.mkdir()
        for name in files:
            (folder / name).symlink_to(src / name)
    ds = load_dataset(tmp_path)
    assert ds.label_to_pid.tolist() == [22, 27, 32] and ds.train.cameras == (2, 6)
    assert ds.query.pids.tolist() == [1] and ds.query.camids.tolist() == [1]
    assert ds.gallery.pids.tolist() == [1, 48, 65] and ds.gallery.camids.tolist() == [6, 1, 6]


def test_load_cuhk01(shared_data: Path) -> None:
    ds = load_dataset(shared_data / "cuhk01")
    assert (len(ds.train), ds.num_classes, len(ds.query), ds.query.num_ids, len(ds.gallery), ds.gallery.num_ids) == (
        1940, 485, 972, 486, 972, 486)
    assert ds.label_to_pid.tolist() == list(range(1, 486))
    assert np.bincount(ds.train_labels).tolist() == [4] * 485
    assert ds.train.cameras == ds.query.cameras == ds.gallery.cameras == (1, 2)
    # README: every query has exactly one cross-camera match
    for pid, cam in zip(ds.query.pids, ds.query.camids):
        assert np.sum((ds.gallery.pids == pid) & (ds.gallery.camids != cam)) == 1
    small = load_dataset(shared_data / "cuhk01", max_train=64, max_query=20, max_gallery=30, seed=1)
    assert len(small.train) == 64 and small.num_classes == 16
    assert len(small.query) == 20 and len(small.gallery) == 30
    assert set(small.query.pids.tolist()) <= set(small.gallery.pids.tolist())
