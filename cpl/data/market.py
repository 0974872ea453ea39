"""Market-1501-layout datasets: file-name parsing, folder scanning, identity relabelling and capped splits.

A dataset root holds three flat folders: ``bounding_box_train/`` (train), ``query/`` and
``bounding_box_test/`` (gallery). Every image is named ``PID_cCAM...`` (regex ``([-\\d]+)_c(\\d+)``):
Market-1501, DukeMTMC-reID, CUHK03-NP and any dataset laid out the same way.

Special identities (the Market-1501 convention):

* pid -1 is *junk*. It is dropped from every split at load. In the gallery this is equivalent to
  keeping it: the Market-1501 protocol skips junk in the ranking, so rank-k and mAP are unchanged,
  and the retrieval lists never show an image that does not count.
* pid 0 is a *distractor*, a detection of no one in particular. It stays in the gallery, where it
  is an ordinary negative; it is dropped from train (not a person to learn) and from query (it has
  no true match). ``cpl check`` warns when train or query hold pid 0 or -1.

Camera ids are kept as written in the name (Market-1501: 1..6). This module does not decode
images (see ``images.py``) and does not import torch, so the app can use it cheaply.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
NAME_PATTERN = re.compile(r"([-\d]+)_c(\d+)")
JUNK_PID = -1
DISTRACTOR_PID = 0
_INT64_MAX = np.iinfo(np.int64).max


class DatasetError(ValueError):
    """A dataset problem a user can act on. The message is one line naming the file or folder."""


def display_path(path: str | os.PathLike) -> str:
    """``path`` as one printable line: undecodable bytes and control characters are escaped.

    File names may contain newlines or bytes that are not UTF-8; a message naming them must still be
    one line and must print on any terminal.
    """
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch)[0] in "CZ" and ch != " " else ch
        for ch in text
    )


def examples(items: list[str] | tuple[str, ...], limit: int = 5) -> str:
    """``'a, b, c, d, e and 7 more'``: at most ``limit`` items of a list for a one-line message."""
    shown = ", ".join(display_path(s) for s in items[:limit])
    rest = len(items) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown


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


@dataclass(frozen=True, eq=False)
class Split:
    """One split: ``paths`` (absolute, sorted), ``pids`` and ``camids`` (``[N] int64``, read-only)."""

    name: str
    paths: tuple[str, ...]
    pids: np.ndarray
    camids: np.ndarray

    def __post_init__(self) -> None:
        for key in ("pids", "camids"):
            arr = np.array(getattr(self, key), dtype=np.int64).reshape(-1)
            arr.setflags(write=False)
            object.__setattr__(self, key, arr)
        object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))
        if not len(self.paths) == len(self.pids) == len(self.camids):
            raise ValueError(f"{self.name}: {len(self.paths)} paths, {len(self.pids)} pids, {len(self.camids)} camids")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_ids(self) -> int:
        """Distinct identities, not counting junk (-1) and distractors (0)."""
        return int(np.unique(self.pids[self.pids > DISTRACTOR_PID]).size)

    @property
    def cameras(self) -> tuple[int, ...]:
        """Distinct camera ids, sorted (``len(split.cameras)`` is the camera count)."""
        return tuple(int(c) for c in np.unique(self.camids))

    def subset(self, index: np.ndarray) -> Split:
        """The rows ``index`` (``[M] int``), kept in path order."""
        index = np.sort(np.asarray(index, dtype=np.int64))
        return Split(self.name, tuple(self.paths[i] for i in index), self.pids[index], self.camids[index])


@dataclass(frozen=True, eq=False)
class MarketDataset:
    """A loaded dataset. ``train_labels`` ``[N_train] int64`` are classes 0..K-1 in sorted pid order;
    ``label_to_pid`` ``[K] int64`` maps a class back to its pid."""

    root: Path
    train: Split
    query: Split
    gallery: Split
    train_labels: np.ndarray
    label_to_pid: np.ndarray

    @property
    def num_classes(self) -> int:
        """K, the number of training identities (classes 0..K-1)."""
        return int(len(self.label_to_pid))

    @property
    def splits(self) -> tuple[Split, Split, Split]:
        """(train, query, gallery)."""
        return self.train, self.query, self.gallery

    def fingerprint(self) -> str:
        """16 hex digits identifying the loaded images: relative paths, sizes and mtimes of every
        file of the three splits (after caps). Stable across processes; a cache key."""
        digest = hashlib.sha256()
        for split in self.splits:
            digest.update(f"[{split.name}]\n".encode())
            for path in split.paths:
                st = os.stat(path)
                rel = os.fsencode(os.path.relpath(path, self.root))
                digest.update(rel + f"\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class SplitScan:
    """What one split folder holds, before any filtering.

    ``paths`` / ``pids`` / ``camids``: image files whose names parse (sorted; all pids, junk
    included). ``unparsed``: image files whose names do not parse. ``ignored``: names of everything
    else (non-image files, hidden files, subfolders). ``broken``: one-line messages for dangling
    symlinks and symlink loops.
    """

    name: str
    folder: Path
    paths: tuple[str, ...]
    pids: np.ndarray
    camids: np.ndarray
    unparsed: tuple[str, ...]
    ignored: tuple[str, ...]
    broken: tuple[str, ...]


def _link_problem(path: str) -> str | None:
    """A one-line message if ``path`` is a symlink that does not resolve, else None."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return f"{display_path(path)}: dangling symlink (its target {display_path(os.readlink(path))} does not exist)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{display_path(path)}: symlink loop"
        return f"{display_path(path)}: cannot follow symlink ({exc.strerror})"
    return None


def scan_split(root: str | os.PathLike, name: str) -> SplitScan:
    """List and parse the split ``name`` (``'train'``, ``'query'`` or ``'gallery'``) of ``root``.

    Only the folder itself is listed (the layout is flat). Image files are recognised by extension
    (``IMAGE_EXTENSIONS``, case-insensitive); hidden files (``.DS_Store``, macOS ``._x.jpg``) are
    ignored. Raises :class:`DatasetError` when the folder is missing or cannot be listed.
    """
    folder = Path(os.path.abspath(root)) / SPLIT_FOLDERS[name]
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "is missing"
        raise DatasetError(
            f"{display_path(folder)}: split folder {what} (a Market-1501 layout needs "
            f"{', '.join(SPLIT_FOLDERS.values())})"
        )
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise DatasetError(f"{display_path(folder)}: cannot list the folder ({exc.strerror})") from None

    paths, pids, camids, unparsed, ignored, broken = [], [], [], [], [], []
    for entry in entries:
        if entry.name.startswith("."):
            ignored.append(entry.name)
            continue
        if entry.is_symlink():
            problem = _link_problem(entry.path)
            if problem:
                broken.append(problem)
                continue
        if not entry.is_file() or os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
            ignored.append(entry.name)
            continue
        parsed = parse_name(entry.name)
        if parsed is None:
            unparsed.append(entry.name)
            continue
        paths.append(entry.path)
        pids.append(parsed[0])
        camids.append(parsed[1])
    return SplitScan(
        name=name,
        folder=folder,
        paths=tuple(paths),
        pids=np.array(pids, dtype=np.int64),
        camids=np.array(camids, dtype=np.int64),
        unparsed=tuple(unparsed),
        ignored=tuple(ignored),
        broken=tuple(broken),
    )


def scan_errors(scan: SplitScan) -> list[str]:
    """One-line errors of a scan that stop a dataset from loading (names, links, emptiness)."""
    errors = []
    folder = display_path(scan.folder)
    if not scan.paths and not scan.unparsed:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        errors.append(f"{folder}: no images ({exts})")
    if scan.unparsed:
        errors.append(
            f"{folder}: {len(scan.unparsed)} image name(s) do not match PID_cCAM (e.g. 0001_c1s1_000151_01.jpg): "
            f"{examples(scan.unparsed)}"
        )
    errors.extend(scan.broken)
    if scan.paths and not np.any(_usable(scan.name, scan.pids)):
        errors.append(f"{folder}: no usable images: all {len(scan.paths)} are junk (-1) or distractors (0)")
    return errors


def _usable(split: str, pids: np.ndarray) -> np.ndarray:
    """Mask of the images a split keeps (see the module docstring for the rules)."""
    if split == "gallery":
        return pids != JUNK_PID
    return pids > DISTRACTOR_PID


def usable_split(scan: SplitScan) -> Split:
    """The split a scan loads as: junk (and, outside the gallery, distractors) removed."""
    keep = _usable(scan.name, scan.pids)
    return Split(scan.name, tuple(p for p, k in zip(scan.paths, keep) if k), scan.pids[keep], scan.camids[keep])


def root_error(root: str | os.PathLike) -> str | None:
    """A one-line error when ``root`` is not an existing folder, else None."""
    path = Path(os.path.abspath(root))
    if not path.exists():
        return f"{display_path(path)}: dataset folder not found"
    if not path.is_dir():
        folders = ", ".join(SPLIT_FOLDERS.values())
        return f"{display_path(path)}: not a folder (expected a dataset folder with {folders})"
    return None


# --------------------------------------------------------------------------------------------
# caps


def _cap_train(split: Split, cap: int, rng: np.random.Generator) -> Split:
    """At most ``cap`` images, whole identities first so that each kept identity has >= 2 images.

    Identities are visited in a seeded random order, those with >= 2 images first; one identity may
    be cut short to fill the cap exactly, but never below 2 images.
    """
    ids, counts = np.unique(split.pids, return_counts=True)
    order = rng.permutation(len(ids))
    order = np.concatenate([order[counts[order] >= 2], order[counts[order] < 2]])
    keep: list[np.ndarray] = []
    room = cap
    for i in order:
        if room == 0:
            break
        rows = np.flatnonzero(split.pids == ids[i])
        take = min(len(rows), room)
        if take < 2 and take < len(rows):
            continue
        keep.append(rng.permutation(rows)[:take])
        room -= take
    return split.subset(np.concatenate(keep) if keep else np.zeros(0, np.int64))


def _has_cross_camera_match(query: Split, gallery: Split) -> np.ndarray:
    """``[Q] bool``: the query has a gallery image of its pid from another camera."""
    pairs = set(zip(gallery.pids.tolist(), gallery.camids.tolist()))
    cams_of: dict[int, set[int]] = {}
    for pid, cam in pairs:
        cams_of.setdefault(pid, set()).add(cam)
    return np.array(
        [bool(cams_of.get(p, set()) - {c}) for p, c in zip(query.pids.tolist(), query.camids.tolist())], dtype=bool
    )


def _cap_test(query: Split, gallery: Split, max_query: int, max_gallery: int,
              rng: np.random.Generator) -> tuple[Split, Split]:
    """Cap query and gallery together so that every kept query keeps its gallery matches.

    Query identities are visited in a seeded random order (those with a cross-camera match first).
    An identity is kept when its gallery images fit in the gallery cap; its queries are kept up to
    the query cap. The rest of the gallery cap is filled with distractors, then with images of
    identities that are not queried. A gallery cap can therefore also drop queries.
    """
    q_room = max_query or len(query)
    g_room = max_gallery or len(gallery)
    valid = _has_cross_camera_match(query, gallery)
    ids, inverse = np.unique(query.pids, return_inverse=True)
    order = rng.permutation(len(ids))
    id_valid = np.zeros(len(ids), dtype=bool)
    np.logical_or.at(id_valid, inverse.reshape(-1), valid)
    order = np.concatenate([order[id_valid[order]], order[~id_valid[order]]])

    q_keep: list[np.ndarray] = []
    g_keep: list[np.ndarray] = []
    for i in order:
        if q_room == 0:
            break
        g_rows = np.flatnonzero(gallery.pids == ids[i])
        if len(g_rows) > g_room:
            continue
        q_rows = rng.permutation(np.flatnonzero(query.pids == ids[i]))[:q_room]
        q_keep.append(q_rows)
        g_keep.append(g_rows)
        q_room -= len(q_rows)
        g_room -= len(g_rows)

    q_index = np.concatenate(q_keep) if q_keep else np.zeros(0, np.int64)
    rest = np.flatnonzero(~np.isin(gallery.pids, query.pids[q_index]))
    distractors = rest[gallery.pids[rest] == DISTRACTOR_PID]
    others = rest[gallery.pids[rest] != DISTRACTOR_PID]
    g_keep.append(np.concatenate([rng.permutation(distractors), rng.permutation(others)])[:g_room])
    return query.subset(q_index), gallery.subset(np.concatenate(g_keep))


# --------------------------------------------------------------------------------------------
# loading


def relabel(pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(labels [N] int64 in 0..K-1, label_to_pid [K] int64)``, classes in sorted pid order."""
    label_to_pid, labels = np.unique(np.asarray(pids, dtype=np.int64), return_inverse=True)
    return labels.astype(np.int64).reshape(-1), label_to_pid.astype(np.int64)


def load_market(root: str | os.PathLike, *, max_train: int = 0, max_query: int = 0, max_gallery: int = 0,
                seed: int = 0) -> MarketDataset:
    """Scan a Market-1501-layout folder into three splits (no image is decoded).

    ``max_*`` cap a split's image count for quick runs (0 = all); the subset is deterministic
    given ``seed``. Train keeps whole identities (each kept identity has >= 2 images). Query keeps
    whole identities too, and the gallery keeps every image of the kept query identities, then
    fills its cap with distractors, then with other people; a gallery cap may thus drop queries.
    Raises :class:`DatasetError` (one line) when the root or a split folder is missing, a split is
    empty, a name does not parse or a symlink is broken. Run :func:`cpl.data.check.check_dataset`
    for every problem at once, including undecodable images.
    """
    problem = root_error(root)
    if problem:
        raise DatasetError(problem)
    scans = {name: scan_split(root, name) for name in SPLIT_FOLDERS}
    for scan in scans.values():
        errors = scan_errors(scan)
        if errors:
            more = f" (and {len(errors) - 1} more problems: run `cpl check`)" if len(errors) > 1 else ""
            raise DatasetError(errors[0] + more)

    rng = np.random.default_rng(seed)
    train = usable_split(scans["train"])
    if max_train and len(train) > max_train:
        train = _cap_train(train, max_train, rng)
        if len(train) == 0:
            raise DatasetError(f"max_train={max_train} keeps no identity with at least 2 images; raise the cap")
    query, gallery = usable_split(scans["query"]), usable_split(scans["gallery"])
    if (max_query and len(query) > max_query) or (max_gallery and len(gallery) > max_gallery):
        query, gallery = _cap_test(query, gallery, max_query, max_gallery, rng)
        if len(query) == 0:
            raise DatasetError(
                f"max_gallery={max_gallery} is too small to hold the gallery images of any queried identity"
            )
    labels, label_to_pid = relabel(train.pids)
    labels.setflags(write=False)
    label_to_pid.setflags(write=False)
    return MarketDataset(Path(os.path.abspath(root)), train, query, gallery, labels, label_to_pid)
