"""The Market-1501 layout: file-name parsing and the three flat split folders.

A dataset root holds three flat folders: ``bounding_box_train/`` (train), ``query/`` and
``bounding_box_test/`` (gallery). Every image is named ``PID_cCAM...`` (regex ``([-\\d]+)_c(\\d+)``):
Market-1501, DukeMTMC-reID, CUHK03-NP and any dataset laid out the same way. pid -1 is junk and pid 0
a distractor (see :mod:`cpl.data.dataset`). Camera ids are kept as written in the name (Market-1501: 1..6).
No torch import and no decoding here: the app lists datasets with this module.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from cpl.data.dataset import JUNK_PID, DatasetError, SplitScan, display_path, list_folder

SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
NAME_PATTERN = re.compile(r"([-\d]+)_c(\d+)")
NAME_RULE = "PID_cCAM (e.g. 0001_c1s1_000151_01.jpg)"
_INT64_MAX = np.iinfo(np.int64).max


def parse_name(name: str) -> tuple[int, int] | None:
    """``(pid, camid)`` of a Market-style file name, or None when it does not parse.

    ``'0001_c1s1_001051_00.jpg'`` -> ``(1, 1)``; ``'-1_c3s2_000001_00.jpg'`` -> ``(-1, 3)``.
    Only pids >= -1 and values that fit int64 parse; ``'--_c1.jpg'`` or ``'-7_c1.jpg'`` do not.
    """
    match = NAME_PATTERN.search(name)
    if match is None:
        return None
    try:
        pid, camid = int(match.group(1)), int(match.group(2))
    except ValueError:  # the pid group may be '-', '1-2', ...
        return None
    if pid < JUNK_PID or pid > _INT64_MAX or camid > _INT64_MAX:
        return None
    return pid, camid


def recognise(root: Path) -> bool:
    """Whether ``root`` looks like a Market-1501-layout folder: it has one of the split folders."""
    return any((root / folder).is_dir() for folder in SPLIT_FOLDERS.values())


def scan_split(root: str | os.PathLike, name: str) -> SplitScan:
    """List and parse the split ``name`` (``'train'``, ``'query'`` or ``'gallery'``) of ``root``.

    Only the folder itself is listed (the layout is flat). Raises :class:`DatasetError` when the folder is
    missing or cannot be listed.
    """
    folder = Path(os.path.abspath(root)) / SPLIT_FOLDERS[name]
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "is missing"
        raise DatasetError(
            f"{display_path(folder)}: split folder {what} (a Market-1501 layout needs "
            f"{', '.join(SPLIT_FOLDERS.values())})"
        )
    listing = list_folder(folder)
    paths, pids, camids, unparsed = [], [], [], []
    for path in listing.images:
        parsed = parse_name(os.path.basename(path))
        if parsed is None:
            unparsed.append(os.path.basename(path))
            continue
        paths.append(path)
        pids.append(parsed[0])
        camids.append(parsed[1])
    return SplitScan(name=name, folder=folder, paths=tuple(paths), pids=np.array(pids, dtype=np.int64),
                     camids=np.array(camids, dtype=np.int64), unparsed=tuple(unparsed), ignored=listing.ignored,
                     broken=listing.broken, rule=NAME_RULE)


def scan(root: Path) -> tuple[dict[str, SplitScan], list[str]]:
    """The scans of the split folders of ``root`` that could be listed, and one error per one that could not."""
    scans, errors = {}, []
    for name in SPLIT_FOLDERS:
        try:
            scans[name] = scan_split(root, name)
        except DatasetError as exc:
            errors.append(str(exc))
    return scans, errors
