"""The general re-ID dataset record and what every format shares: splits, scans, junk rules, caps, relabelling.

A format module (``market.py``, ``msmt17.py``, ``folders.py``; the table is ``formats.py``) lists a folder's
three splits as :class:`SplitScan` objects (image paths with a pid and camera each, plus whatever it could
not use); :func:`assemble` turns them into a :class:`ReidDataset`. Nothing here decodes an image or
imports torch, so the app can use it cheaply.

Special identities (the Market-1501 convention, which every format maps onto):

* pid -1 is *junk*. It is dropped from every split at load. In the gallery this is equivalent to
  keeping it: the Market-1501 protocol skips junk in the ranking, so rank-k and mAP are unchanged,
  and the retrieval lists never show an image that does not count.
* pid 0 is a *distractor*, a detection of no one in particular. It stays in the gallery, where it
  is an ordinary negative; it is dropped from train (not a person to learn) and from query (it has
  no true match). ``cpl check`` warns when train or query hold pid 0 or -1.

Camera id :data:`NO_CAMERA` (-1) marks an image whose camera is unknown (identity folders).
"""

from __future__ import annotations

import errno
import hashlib
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
JUNK_PID = -1
DISTRACTOR_PID = 0
NO_CAMERA = -1


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
        """Distinct camera ids, sorted (``len(split.cameras)`` is the camera count; unknown cameras not counted)."""
        return tuple(int(c) for c in np.unique(self.camids) if c != NO_CAMERA)

    def subset(self, index: np.ndarray) -> Split:
        """The rows ``index`` (``[M] int``), kept in path order."""
        index = np.sort(np.asarray(index, dtype=np.int64))
        return Split(self.name, tuple(self.paths[i] for i in index), self.pids[index], self.camids[index])


@dataclass(frozen=True, eq=False)
class ReidDataset:
    """A loaded re-ID dataset of any format. ``train_labels`` ``[N_train] int64`` are classes 0..K-1 in sorted
    pid order; ``label_to_pid`` ``[K] int64`` maps a class back to its pid. ``format`` names its entry in
    :data:`cpl.data.formats.FORMATS`; ``protocol`` its evaluation protocol (a key of
    :data:`cpl.data.formats.PROTOCOLS`)."""

    root: Path
    train: Split
    query: Split
    gallery: Split
    train_labels: np.ndarray
    label_to_pid: np.ndarray
    format: str
    protocol: str

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
    """What one split of a dataset holds, before any filtering.

    ``paths`` / ``pids`` / ``camids``: the images the format could read a pid and camera for (all pids, junk
    included). ``folder``: where the split's images live. ``unparsed``: image files whose names do not follow
    ``rule`` (the naming rule, for the message). ``ignored``: names of everything else (non-image files,
    hidden files, stray subfolders). ``broken``: one-line messages for dangling symlinks and symlink loops.
    ``problems``: other one-line errors of the format (a bad line of a list file, a listed file missing).
    """

    name: str
    folder: Path
    paths: tuple[str, ...]
    pids: np.ndarray
    camids: np.ndarray
    unparsed: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    broken: tuple[str, ...] = ()
    rule: str = ""
    problems: tuple[str, ...] = ()


def link_problem(path: str) -> str | None:
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


@dataclass(frozen=True)
class Listing:
    """One folder listed flat: ``images`` (absolute paths of image files, sorted by name), ``ignored`` (names of
    everything else), ``broken`` (one-line messages for symlinks that do not resolve)."""

    images: tuple[str, ...]
    ignored: tuple[str, ...]
    broken: tuple[str, ...]


def list_folder(folder: Path) -> Listing:
    """List the image files directly in ``folder`` (by extension, ``IMAGE_EXTENSIONS``, case-insensitive);
    hidden files (``.DS_Store``, macOS ``._x.jpg``) and subfolders are ignored.
    Raises :class:`DatasetError` when the folder cannot be listed."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise DatasetError(f"{display_path(folder)}: cannot list the folder ({exc.strerror})") from None
    images, ignored, broken = [], [], []
    for entry in entries:
        if entry.name.startswith("."):
            ignored.append(entry.name)
            continue
        if entry.is_symlink():
            problem = link_problem(entry.path)
            if problem:
                broken.append(problem)
                continue
        if not entry.is_file() or os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
            ignored.append(entry.name)
            continue
        images.append(entry.path)
    return Listing(tuple(images), tuple(ignored), tuple(broken))


def scan_errors(scan: SplitScan) -> list[str]:
    """One-line errors of a scan that stop a dataset from loading (names, links, list files, emptiness)."""
    errors = list(scan.problems)
    folder = display_path(scan.folder)
    if not scan.paths and not scan.unparsed and not scan.problems:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        errors.append(f"{folder}: no images ({exts})")
    if scan.unparsed:
        errors.append(f"{folder}: {len(scan.unparsed)} image name(s) do not match {scan.rule}: "
                      f"{examples(scan.unparsed)}")
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
        return f"{display_path(path)}: not a folder (expected a dataset folder)"
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


def has_valid_match(query: Split, gallery: Split) -> np.ndarray:
    """``[Q] bool``: the query has a gallery image of its pid from another camera; for a query with no camera,
    any gallery image of its pid other than the query image itself."""
    cams_of: dict[int, set[int]] = {}
    paths_of: dict[int, set[str]] = {}
    for pid, cam, path in zip(gallery.pids.tolist(), gallery.camids.tolist(), gallery.paths):
        cams_of.setdefault(pid, set()).add(cam)
        paths_of.setdefault(pid, set()).add(path)
    return np.array([bool(paths_of.get(p, set()) - {path}) if c == NO_CAMERA else bool(cams_of.get(p, set()) - {c})
                     for p, c, path in zip(query.pids.tolist(), query.camids.tolist(), query.paths)], dtype=bool)


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
    valid = has_valid_match(query, gallery)
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


def assemble(root: str | os.PathLike, scans: dict[str, SplitScan], fmt: str, protocol: str, *, max_train: int = 0,
             max_query: int = 0, max_gallery: int = 0, seed: int = 0) -> ReidDataset:
    """The dataset the three scans of ``root`` load as (no image is decoded).

    ``max_*`` cap a split's image count for quick runs (0 = all); the subset is deterministic
    given ``seed``. Train keeps whole identities (each kept identity has >= 2 images). Query keeps
    whole identities too, and the gallery keeps every image of the kept query identities, then
    fills its cap with distractors, then with other people; a gallery cap may thus drop queries.
    Raises :class:`DatasetError` (one line) for the first error of a scan.
    """
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
    return ReidDataset(Path(os.path.abspath(root)), train, query, gallery, labels, label_to_pid, fmt, protocol)
