"""`cpl check`: every fault class built in a tmp folder, with the exact outcome asserted; CUHK01 statistics."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from cpl.data.check import CheckReport, DatasetError, check_dataset, raise_if_invalid
from cpl.data.market import SPLIT_FOLDERS

REPO = Path(__file__).resolve().parents[1]
TRAIN, QUERY, GALLERY = (SPLIT_FOLDERS[s] for s in ("train", "query", "gallery"))


def jpeg_bytes(color: tuple[int, int, int] = (120, 40, 200), size: tuple[int, int] = (16, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_bytes(mode: str, color: object, size: tuple[int, int] = (16, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def put(root: Path, folder: str, name: str, data: bytes | None = None) -> Path:
    path = root / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes() if data is None else data)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A clean dataset: 2 train ids x 2 cameras, 1 query id with a cross-camera match, 1 distractor."""
    ds = tmp_path / "ds"
    for name in ["0001_c1s1_000001_00.jpg", "0001_c2s1_000002_00.jpg", "0002_c1s1_000003_00.jpg",
                 "0002_c2s1_000004_00.jpg"]:
        put(ds, TRAIN, name)
    put(ds, QUERY, "0005_c1s1_000005_00.jpg")
    put(ds, GALLERY, "0005_c2s1_000006_00.jpg")
    put(ds, GALLERY, "0000_c1s1_000007_00.jpg")
    return ds


def single_line(report: CheckReport) -> None:
    for line in report.errors + report.warnings:
        assert "\n" not in line and line.strip() == line


def test_clean_dataset(root: Path) -> None:
    report = check_dataset(root)
    assert report.ok and report.errors == [] and report.warnings == []
    train, query, gallery = (report.splits[s] for s in ("train", "query", "gallery"))
    assert (train.images, train.identities, train.cameras, train.junk, train.distractors) == (4, 2, 2, 0, 0)
    assert (query.images, query.identities, query.cameras) == (1, 1, 1)
    assert (gallery.images, gallery.identities, gallery.cameras, gallery.distractors) == (2, 1, 2, 1)
    assert train.modes == {"RGB": 4}
    raise_if_invalid(report)  # no error


def test_format_table(root: Path) -> None:
    (root / TRAIN / "Thumbs.db").write_bytes(b"\0")
    put(root, QUERY, "0009_c1s1_000001_00.jpg")
    text = check_dataset(root).format()
    lines = text.splitlines()
    assert lines[0] == f"dataset {root} (market, protocol cross-camera)"
    assert lines[1].split() == ["split", "folder", "images", "ids", "cameras", "junk", "distractors", "ignored"]
    assert lines[2].split() == ["train", "bounding_box_train", "4", "2", "2", "0", "0", "1"]
    assert lines[3].split() == ["query", "query", "2", "2", "1", "0", "0", "0"]
    assert lines[4].split() == ["gallery", "bounding_box_test", "2", "1", "2", "0", "1", "0"]
    cells = [[(m.start(), m.end()) for m in re.finditer(r"\S+", line)] for line in lines[1:5]]
    assert len({tuple(start for start, _ in row[:2]) for row in cells}) == 1  # text columns left-aligned
    assert len({tuple(end for _, end in row[2:]) for row in cells}) == 1  # number columns right-aligned
    assert lines[5] == ("warning: 1 identities appear only in query, not in the gallery (pids 9); "
                        "their queries have no match")
    assert lines[6].startswith("OK: 8 images decoded in ")


def test_missing_root_and_file_root(tmp_path: Path) -> None:
    report = check_dataset(tmp_path / "nope")
    assert report.errors == [f"{tmp_path / 'nope'}: dataset folder not found"] and report.splits == {}
    (tmp_path / "file").write_text("x")
    report = check_dataset(tmp_path / "file")
    assert report.errors == [
        f"{tmp_path / 'file'}: not a folder (expected a dataset folder)"]
    with pytest.raises(DatasetError) as info:
        raise_if_invalid(report)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == (f"dataset {tmp_path / 'file'} is not usable: {report.errors[0]}")


def test_missing_split(root: Path) -> None:
    for p in (root / QUERY).iterdir():
        p.unlink()
    (root / QUERY).rmdir()
    report = check_dataset(root)
    assert report.errors == [
        f"{root / QUERY}: split folder is missing (a Market-1501 layout needs bounding_box_train, query, "
        "bounding_box_test)"]
    assert set(report.splits) == {"train", "gallery"}


def test_empty_split(root: Path) -> None:
    for p in (root / GALLERY).iterdir():
        p.unlink()
    (root / GALLERY / "README.txt").write_text("gallery goes here")
    report = check_dataset(root)
    assert report.errors == [f"{root / GALLERY}: no images (.bmp, .jpeg, .jpg, .png)"]
    assert report.splits["gallery"].ignored == 1
    assert report.warnings == ["1 identities appear only in query, not in the gallery (pids 5); "
                               "their queries have no match"]


def test_unparseable_names(root: Path) -> None:
    bad = sorted(f"person{i}.jpg" for i in range(7))
    for name in bad:
        put(root, TRAIN, name)
    report = check_dataset(root)
    assert report.errors == [
        f"{root / TRAIN}: 7 image name(s) do not match PID_cCAM (e.g. 0001_c1s1_000151_01.jpg): "
        f"{', '.join(bad[:5])} and 2 more"]
    assert report.splits["train"].unparsed == 7 and report.splits["train"].images == 4


def test_broken_files(root: Path) -> None:
    real = jpeg_bytes(size=(64, 128))
    truncated = put(root, TRAIN, "0003_c1s1_000001_00.jpg", real[: len(real) // 2])
    zero = put(root, TRAIN, "0003_c1s1_000002_00.jpg", b"")
    text = put(root, TRAIN, "0003_c1s1_000003_00.jpg", b"this is not a picture\n")
    corrupt = put(root, TRAIN, "0003_c1s1_000004_00.jpg", real[:20] + np.random.default_rng(0).bytes(200))
    report = check_dataset(root)
    assert report.errors == [
        f"{truncated}: truncated image (the file ends before the image data does)",
        f"{zero}: zero-byte file",
        f"{text}: not an image (the content is not JPEG, PNG, BMP, WEBP, GIF, TIFF)",
        f"{corrupt}: corrupt JPEG image (its header cannot be parsed)",
    ]
    assert report.splits["train"].unreadable == 4 and report.splits["train"].images == 8
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert check_dataset(root, decode=False).ok  # names and links only


def test_many_broken_files_are_summed_up(root: Path) -> None:
    for i in range(8):
        put(root, GALLERY, f"0005_c3s1_00001{i}_00.jpg", b"")
    report = check_dataset(root, workers=3)
    assert len(report.errors) == 6
    assert all(e.endswith(": zero-byte file") for e in report.errors[:5])
    assert report.errors[5] == f"{root / GALLERY}: 3 more image(s) cannot be decoded (8 in all)"


def test_png_named_jpg_is_fine_but_reported(root: Path) -> None:
    put(root, TRAIN, "0002_c3s1_000009_00.jpg", png_bytes("RGB", (1, 2, 3)))
    report = check_dataset(root)
    assert report.ok
    assert report.warnings == [
        f"{root / TRAIN}: 1 file(s) have an extension that does not match their content "
        "(0002_c3s1_000009_00.jpg is PNG); they decode fine"]


def test_symlinks(root: Path) -> None:
    loop = root / TRAIN / "0001_c3s1_000001_00.jpg"
    loop.symlink_to(loop.name)
    dangling = root / QUERY / "0005_c2s1_000001_00.jpg"
    missing = root.parent / "gone" / "x.jpg"  # never created: the link dangles
    dangling.symlink_to(missing)
    good = root / GALLERY / "0005_c3s1_000001_00.jpg"
    good.symlink_to(root / QUERY / "0005_c1s1_000005_00.jpg")
    report = check_dataset(root)
    assert report.errors == [
        f"{loop}: symlink loop",
        f"{dangling}: dangling symlink (its target {missing} does not exist)",
    ]
    assert report.splits["gallery"].images == 3 and report.splits["train"].unreadable == 1


def test_identity_warnings(root: Path) -> None:
    put(root, QUERY, "0006_c1s1_000001_00.jpg")          # only in query
    put(root, GALLERY, "0007_c1s1_000001_00.jpg")        # only in the gallery
    put(root, QUERY, "0008_c1s1_000001_00.jpg")          # same camera only
    put(root, GALLERY, "0008_c1s1_000002_00.jpg")
    put(root, GALLERY, "0001_c4s1_000001_00.jpg")        # a train identity in the test set
    put(root, QUERY, "0001_c3s1_000001_00.jpg")
    report = check_dataset(root, decode=False)
    assert report.ok
    assert report.warnings == [
        "1 identities appear only in query, not in the gallery (pids 6); their queries have no match",
        "1 identities appear only in the gallery, not in query (pids 7); they act as distractors",
        "1 query identities have no cross-camera match in the gallery (pids 8); those queries score no AP",
        "train and test share 1 identities (pids 1); the test is then not on unseen people",
    ]


def test_junk_and_distractors_outside_the_gallery(root: Path) -> None:
    put(root, TRAIN, "-1_c1s1_000001_00.jpg")
    put(root, TRAIN, "0000_c1s1_000001_00.jpg")
    put(root, GALLERY, "-1_c1s1_000001_00.jpg")
    report = check_dataset(root)
    assert report.ok
    assert (report.splits["train"].junk, report.splits["train"].distractors) == (1, 1)
    assert report.splits["gallery"].junk == 1
    assert report.warnings == [
        f"{root / TRAIN}: 1 junk (pid -1) and 1 distractor (pid 0) image(s) are left out of training; "
        "number real identities from 1"]


def test_grey_and_rgba_images(root: Path) -> None:
    put(root, TRAIN, "0003_c1s1_000001_00.png", png_bytes("L", 90))
    put(root, TRAIN, "0003_c2s1_000002_00.png", png_bytes("L", 91))
    put(root, TRAIN, "0004_c1s1_000001_00.png", png_bytes("RGBA", (1, 2, 3, 0)))
    put(root, TRAIN, "0004_c2s1_000001_00.png", png_bytes("RGB", (1, 2, 3)))
    report = check_dataset(root)
    assert report.ok
    assert report.splits["train"].modes == {"L": 2, "RGB": 5, "RGBA": 1}
    assert report.warnings == [
        f"{root / TRAIN}: 3 image(s) are not RGB (2 grey-scale L, 1 RGBA); they are converted to RGB"]


def test_odd_file_names_stay_on_one_line(root: Path) -> None:
    put(root, TRAIN, "0003_c1s1\n_000001_00.jpg", b"")
    raw = os.fsencode(root / TRAIN) + b"/0003_c1s1_\xff_00.jpg"
    with open(raw, "wb") as fh:
        fh.write(b"")
    report = check_dataset(root)
    single_line(report)
    assert report.errors == [f"{root / TRAIN}/0003_c1s1\\n_000001_00.jpg: zero-byte file",
                             f"{root / TRAIN}/0003_c1s1_\\xff_00.jpg: zero-byte file"]
    report.format().encode("ascii")  # printable on any terminal
    with pytest.raises(DatasetError) as info:
        raise_if_invalid(report)
    assert "\n" not in str(info.value) and str(info.value).endswith(f"(and 1 more: run `cpl check {root}`)")


def test_check_does_not_import_torch() -> None:
    code = "import sys, cpl.data.check, cpl.data.market; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_cuhk01(shared_data: Path) -> None:
    start = time.perf_counter()
    report = check_dataset(shared_data / "cuhk01")
    seconds = time.perf_counter() - start
    assert report.ok and report.warnings == [] and report.decoded
    got = {name: (s.images, s.identities, s.cameras, s.junk, s.distractors, s.ignored, s.modes)
           for name, s in report.splits.items()}
    assert got == {
        "train": (1940, 485, 2, 0, 0, 0, {"RGB": 1940}),
        "query": (972, 486, 2, 0, 0, 0, {"RGB": 972}),
        "gallery": (972, 486, 2, 0, 0, 0, {"RGB": 972}),
    }
    print(f"cpl check cuhk01: 3,884 images decoded in {seconds:.2f} s")  # a report, not a bound: data_speed.py
