"""Identity folders: ``ROOT/<identity>/*.jpg``, one folder per person, no camera information.

What people's own crops usually look like. Identities are numbered 1..N in the sorted order of their folder
names (the folder name itself is the identity's name). Train and test are disjoint sets of identities: those
a ``split.txt`` at the root assigns (one ``<identity folder> train|test`` per line, ``#`` comments), or, without
one, a seeded share ``test_fraction`` of the identities that have at least two images (``data.folders.*``).

Without cameras, the cross-camera protocol cannot drop same-camera matches. The test identities are evaluated
leave-one-out instead: every test image is a query against all test images, the query image itself excluded and
every other image of its identity a match (protocol ``leave-one-out`` in :data:`cpl.data.formats.PROTOCOLS`).
The query and gallery splits therefore hold the same images; cameras are :data:`~cpl.data.dataset.NO_CAMERA`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cpl.data.dataset import IMAGE_EXTENSIONS, NO_CAMERA, DatasetError, SplitScan, display_path, examples, list_folder

SPLIT_FILE = "split.txt"
_ROLES = ("train", "test")
# Identity folders looked into when recognising a layout: enough to tell, cheap on 10,000 identities.
_PEEK = 3


def _identity_folders(root: Path) -> list[os.DirEntry]:
    """The non-hidden subfolders of ``root``, sorted by name."""
    try:
        with os.scandir(root) as it:
            return sorted((e for e in it if not e.name.startswith(".") and e.is_dir()), key=lambda e: e.name)
    except OSError as exc:
        raise DatasetError(f"{display_path(root)}: cannot list the folder ({exc.strerror})") from None


def _has_image(folder: str) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and not e.name.startswith(".")
                       for e in it)
    except OSError:
        return False


def recognise(root: Path) -> bool:
    """Whether ``root`` looks like identity folders: one of its first subfolders holds image files directly."""
    try:
        folders = _identity_folders(root)[:_PEEK]
    except DatasetError:
        return False
    return any(_has_image(f.path) for f in folders)


def _read_split_file(path: Path, names: list[str]) -> tuple[dict[str, str], list[str]]:
    """``{identity: 'train' | 'test'}`` from a split file, and its one-line errors."""
    shown = display_path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return {}, [f"{shown}: not a UTF-8 text file"]
    except OSError as exc:
        return {}, [f"{shown}: cannot read the split file ({exc.strerror})"]
    roles: dict[str, str] = {}
    errors: list[str] = []
    known = set(names)
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, role = line.rpartition(" ")
        name = name.strip()
        if role not in _ROLES or not name:
            errors.append(f"{shown} line {number}: expected '<identity folder> train|test', got {display_path(line)!r}")
        elif name not in known:
            errors.append(f"{shown} line {number}: no identity folder {display_path(name)!r}")
        elif name in roles:
            errors.append(f"{shown} line {number}: {display_path(name)!r} is listed twice")
        else:
            roles[name] = role
    unlisted = [n for n in names if n not in roles]
    if unlisted and not errors:
        errors.append(f"{shown}: {len(unlisted)} identity folder(s) are not listed: {examples(unlisted)}")
    if not errors and not {"train", "test"} <= set(roles.values()):
        errors.append(f"{shown}: needs at least one train and one test identity")
    return roles, errors


def _seeded_roles(counts: dict[str, int], seed: int, test_fraction: float) -> tuple[dict[str, str], list[str]]:
    """``{identity: role}``: a seeded ``test_fraction`` of the identities with >= 2 images test, the rest train."""
    eligible = [n for n, c in counts.items() if c >= 2]
    if len(eligible) < 2:
        return {}, [f"identity folders need at least 2 identities with 2 or more images each, found {len(eligible)}"]
    n_test = min(max(1, round(test_fraction * len(eligible))), len(eligible) - 1)
    order = np.random.default_rng(seed).permutation(len(eligible))
    test = {eligible[i] for i in order[:n_test]}
    return {n: "test" if n in test else "train" for n in counts}, []


def scan(root: Path, *, seed: int = 0, test_fraction: float = 0.5) -> tuple[dict[str, SplitScan], list[str]]:
    """Train, query and gallery scans of identity folders (query and gallery: the same test images), and the
    errors that keep the identities from being split (a bad ``split.txt``, too few identities)."""
    folders = _identity_folders(root)
    if not folders:
        return {}, [f"{display_path(root)}: no identity folders (expected ROOT/<identity>/*.jpg)"]
    listings = {f.name: list_folder(Path(f.path)) for f in folders}
    counts = {name: len(listing.images) for name, listing in listings.items()}
    split_file = root / SPLIT_FILE
    people = [name for name, n in counts.items() if n]  # a folder without images is no identity
    roles, errors = (_read_split_file(split_file, people) if split_file.exists()
                     else _seeded_roles({n: counts[n] for n in people}, seed, test_fraction))
    if errors:
        return {}, [errors[0] if len(errors) == 1 else f"{errors[0]} (and {len(errors) - 1} more)"]
    rows: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    ignored: dict[str, list[str]] = {"train": [], "test": []}
    broken: dict[str, list[str]] = {"train": [], "test": []}
    for pid, (name, listing) in enumerate(listings.items(), 1):
        role = roles.get(name, "train")
        rows[role] += [(p, pid) for p in listing.images]
        ignored[role] += [f"{name}/{x}" for x in listing.ignored] + ([] if counts[name] else [f"{name}/ (no images)"])
        broken[role] += listing.broken
    try:
        with os.scandir(root) as it:
            ignored["train"] += sorted(e.name for e in it if not e.is_dir() and e.name != SPLIT_FILE)
    except OSError:
        pass

    def split(name: str, role: str) -> SplitScan:
        return SplitScan(name=name, folder=root, paths=tuple(p for p, _ in rows[role]),
                         pids=np.array([pid for _, pid in rows[role]], dtype=np.int64),
                         camids=np.full(len(rows[role]), NO_CAMERA, dtype=np.int64),
                         ignored=tuple(ignored[role]) if name != "gallery" else (),
                         broken=tuple(broken[role]) if name != "gallery" else ())

    return {"train": split("train", "train"), "query": split("query", "test"), "gallery": split("gallery", "test")}, []
