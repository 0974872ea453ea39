"""Tiny datasets in every format of cpl.data.formats, written into a folder for the tests (random JPEGs, or the
built-in synthetic people re-laid out)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from cpl.data.market import parse_name


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (16, 8, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def put(path: Path, data: bytes | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg(len(str(path))) if data is None else data)
    return path


# ---------------------------------------------------------------------------------------------- builders

# (listed pid, camera) per image; MSMT17 numbers train and test identities from 0 each
MSMT_TRAIN = [(0, 1), (0, 2), (0, 3), (1, 1), (1, 4), (2, 2), (2, 5)]
MSMT_VAL = [(0, 7), (3, 1), (3, 2)]
MSMT_QUERY = [(0, 1), (1, 3)]
MSMT_GALLERY = [(0, 2), (0, 9), (1, 4), (2, 1)]


def msmt_name(pid: int, i: int, cam: int) -> str:
    return f"{pid:04d}/{pid:04d}_{i:03d}_{cam:02d}_0303morning_{i:04d}_0.jpg"


def make_msmt17(root: Path, version: str = "V1") -> Path:
    """A tiny MSMT17 folder: images in train/ + test/ (V2: mask_*_v2/) and the four list files."""
    train_dir, test_dir = ("train", "test") if version == "V1" else ("mask_train_v2", "mask_test_v2")
    offset = 0
    for list_name, folder, rows in (("list_train.txt", train_dir, MSMT_TRAIN), ("list_val.txt", train_dir, MSMT_VAL),
                                    ("list_query.txt", test_dir, MSMT_QUERY),
                                    ("list_gallery.txt", test_dir, MSMT_GALLERY)):
        lines = []
        for i, (pid, cam) in enumerate(rows, offset):
            rel = msmt_name(pid, i, cam)
            put(root / folder / rel)
            lines.append(f"{rel} {pid}\n")
        offset += len(rows)
        (root / list_name).write_text("".join(lines))
    return root


def make_folders(root: Path, counts: dict[str, int]) -> Path:
    """Identity folders ``root/<name>/NNN.jpg`` with ``counts[name]`` images each."""
    for name, n in counts.items():
        for i in range(n):
            put(root / name / f"{i:03d}.jpg")
    return root


def make_market(root: Path) -> Path:
    for folder, names in (("bounding_box_train", ["0001_c1s1_000001_00.jpg", "0001_c2s1_000002_00.jpg"]),
                          ("query", ["0005_c1s1_000003_00.jpg"]), ("bounding_box_test", ["0005_c2s1_000004_00.jpg"])):
        for name in names:
            put(root / folder / name)
    return root


PEOPLE = {f"person{i}": 2 + i % 3 for i in range(10)}


def relayout_synthetic(market_root: Path, out: Path, kind: str) -> Path:
    """The synthetic dataset at ``market_root`` (Market layout) re-laid out as ``kind`` (msmt17 or folders) in
    ``out``, its images symlinked: MSMT17 keeps train / query / gallery and cameras (every 4th training image in
    list_val.txt); identity folders pool every real person's images, one folder per identity, no cameras."""
    splits = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    images = {s: sorted((market_root / f).glob("*.jpg")) for s, f in splits.items()}
    if kind == "folders":
        for split in images.values():
            for path in split:
                pid = parse_name(path.name)[0]
                if pid > 0:
                    (out / f"person-{pid:04d}").mkdir(parents=True, exist_ok=True)
                    (out / f"person-{pid:04d}" / path.name).symlink_to(path)
        return out
    lists: dict[str, list[str]] = {"train": [], "val": [], "query": [], "gallery": []}
    for split, paths in images.items():
        folder = out / ("train" if split == "train" else "test")
        for i, path in enumerate(paths):
            pid, cam = parse_name(path.name)
            if pid <= 0:
                continue
            rel = msmt_name(pid - 1, i, cam)
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).symlink_to(path)
            key = "val" if split == "train" and i % 4 == 3 else split
            lists[key].append(f"{rel} {pid - 1}\n")
    for key, lines in lists.items():
        (out / f"list_{key}.txt").write_text("".join(lines))
    return out
