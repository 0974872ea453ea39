"""The MSMT17 layout (Wei et al., CVPR 2018): list files naming every image with its identity.

V1 keeps the images in ``train/`` and ``test/``, V2 (faces blurred) in ``mask_train_v2/`` and ``mask_test_v2/``;
both have ``list_train.txt`` and ``list_val.txt`` (images under the train folder) and ``list_query.txt`` and
``list_gallery.txt`` (under the test folder) beside them, one ``relpath pid`` per line, e.g.
``0000/0000_000_01_0303morning_0015_0.jpg 0``. The camera is the third ``_`` field of the file name (1..15).

The training set is train + val by default (32,621 images, the count every MSMT17 table reports, and what
fast-reid trains on); ``data.msmt17.with_val=false`` trains on list_train.txt alone (torchreid's default).
MSMT17 numbers identities from 0 in train and again from 0 in test, and they are different people: here a
train pid is the listed one + 1 (pid 0 means a distractor to this library) and a test pid is the listed
one + 1 + :data:`TEST_PID_OFFSET`, so that a train and a test identity never share a number.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cpl.data.dataset import IMAGE_EXTENSIONS, SplitScan, display_path, link_problem

VERSIONS = {"V1": ("train", "test"), "V2": ("mask_train_v2", "mask_test_v2")}
LISTS = {"train": "list_train.txt", "val": "list_val.txt", "query": "list_query.txt", "gallery": "list_gallery.txt"}
NAME_RULE = "PID_INDEX_CAM_..., e.g. 0000_000_01_0303morning_0015_0.jpg"
TEST_PID_OFFSET = 100_000
# Bad lines named one by one per list file; beyond this they are counted in one more line.
_MAX_LINE_ERRORS = 3


def recognise(root: Path) -> bool:
    """Whether ``root`` looks like MSMT17: one of its list files, or a V1 / V2 pair of image folders."""
    return any((root / name).is_file() for name in LISTS.values()) or any(
        (root / train).is_dir() and (root / test).is_dir() for train, test in VERSIONS.values())


def version(root: Path) -> str:
    """``'V2'`` when the V2 image folders are there, else ``'V1'``."""
    train, test = VERSIONS["V2"]
    return "V2" if (root / train).is_dir() or (root / test).is_dir() else "V1"


def camera_of(name: str) -> int | None:
    """The camera of an MSMT17 file name (its third ``_`` field), or None: ``'0000_000_01_0303morning_0015_0.jpg'``
    -> 1."""
    fields = os.path.basename(name).split("_")
    cam = fields[2] if len(fields) > 3 else ""
    return int(cam) if cam.isascii() and cam.isdigit() and len(cam) <= 3 else None  # '²'.isdigit() is True


def _parse_line(line: str, folder: Path) -> tuple[str, int, int] | str:
    """``(absolute path, listed pid, camera)`` of one list line, else why not (one line)."""
    parts = line.split()
    if len(parts) != 2 or not (parts[1].isascii() and parts[1].isdigit()) or len(parts[1]) > 9:
        return f"expected 'relpath pid', got {display_path(line.strip()[:80])!r}"
    rel, pid = parts[0], int(parts[1])
    if os.path.isabs(rel) or ".." in Path(rel).parts:
        return f"{display_path(rel)} is not a path inside {display_path(folder)}"
    if os.path.splitext(rel)[1].lower() not in IMAGE_EXTENSIONS:
        return f"{display_path(rel)} is not an image file ({', '.join(sorted(IMAGE_EXTENSIONS))})"
    camera = camera_of(rel)
    if camera is None:
        return f"{display_path(rel)}: no camera in the file name ({NAME_RULE})"
    path = str(folder / rel)
    if os.path.islink(path):
        problem = link_problem(path)
        if problem:
            return problem
    if not os.path.isfile(path):
        return f"{display_path(rel)} does not exist in {display_path(folder)}"
    return path, pid, camera


def _read_list(list_path: Path, folder: Path, offset: int) -> tuple[list[tuple[str, int, int]], list[str]]:
    """The images of one list file (pids shifted by ``offset``) and its one-line errors."""
    name = display_path(list_path)
    try:
        text = list_path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return [], [f"{name}: list file is missing (MSMT17 needs {', '.join(LISTS.values())})"]
    except UnicodeDecodeError:
        return [], [f"{name}: not a UTF-8 text file"]
    except OSError as exc:
        return [], [f"{name}: cannot read the list file ({exc.strerror})"]
    rows, bad = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parsed = _parse_line(line, folder)
        if isinstance(parsed, str):
            bad.append(f"{name} line {number}: {parsed}")
        else:
            rows.append((parsed[0], parsed[1] + 1 + offset, parsed[2]))
    if len(bad) > _MAX_LINE_ERRORS:
        bad = bad[:_MAX_LINE_ERRORS] + [f"{name}: {len(bad) - _MAX_LINE_ERRORS} more bad line(s) ({len(bad)} in all)"]
    if not rows and not bad:
        bad.append(f"{name}: the list file names no image")
    return rows, bad


def _split(name: str, folder: Path, rows: list[tuple[str, int, int]], problems: list[str]) -> SplitScan:
    rows = sorted(set(rows))
    return SplitScan(name=name, folder=folder, paths=tuple(r[0] for r in rows),
                     pids=np.array([r[1] for r in rows], dtype=np.int64),
                     camids=np.array([r[2] for r in rows], dtype=np.int64), problems=tuple(problems))


def scan(root: Path, *, with_val: bool = True) -> tuple[dict[str, SplitScan], list[str]]:
    """The train (list_train + list_val unless ``with_val`` is False), query and gallery scans of an MSMT17 folder,
    and one error per image folder that is missing (a bad list line is an error of its split's scan)."""
    train_dir, test_dir = (root / d for d in VERSIONS[version(root)])
    missing = [f"{display_path(d)}: image folder is missing (MSMT17 {version(root)} needs "
               f"{', '.join(VERSIONS[version(root)])}/)" for d in (train_dir, test_dir) if not d.is_dir()]
    if missing:
        return {}, missing
    scans = {}
    lists = {"train": ("train", "val") if with_val else ("train",), "query": ("query",), "gallery": ("gallery",)}
    for split, keys in lists.items():
        folder, offset = (train_dir, 0) if split == "train" else (test_dir, TEST_PID_OFFSET)
        rows, problems = [], []
        for key in keys:
            more, bad = _read_list(root / LISTS[key], folder, offset)
            rows += more
            problems += bad
        scans[split] = _split(split, folder, rows, problems)
    return scans, []

