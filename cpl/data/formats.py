"""The dataset-format table: every folder layout the library reads, how to recognise it and how to list it.

This is the one place a format is spelled out. ``cpl check``, the data stage, the sweep and the app's dataset
picker all read :data:`FORMATS`. Each entry points at one module that lists a folder's train, query and
gallery splits as :class:`~cpl.data.dataset.SplitScan` objects (a pid and a camera per image); everything after
that (checking, junk rules, caps, relabelling, the dataset record) is shared. Adding a format is one entry here
and one module (plus, if it has options, a ``data.<name>`` section in :mod:`cpl.config`).
Torch-free and decode-free: the app lists and checks datasets with it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cpl.data import folders, market, msmt17
from cpl.data.dataset import DatasetError, ReidDataset, SplitScan, assemble, display_path, root_error


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol (``results.json``'s ``protocol``): which gallery images a query may not count."""

    name: str
    description: str


#: Every evaluation protocol by name. Runs written before protocols were recorded are cross-camera.
PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("cross-camera", "Market-1501: images of the query's identity from the query's camera are left out "
                             "(so are junk images, pid -1); every other image of its identity is a match."),
    Protocol("leave-one-out", "No cameras: every test image queries all test images; the query image itself is "
                              "left out and every other image of its identity is a match."),
)}
#: The protocol of a run whose results.json names none (written before protocols were recorded).
DEFAULT_PROTOCOL = PROTOCOLS["cross-camera"].name
LEAVE_ONE_OUT = PROTOCOLS["leave-one-out"].name


def protocol_of(results: dict | None) -> str:
    """The protocol a run's ``results.json`` was evaluated under (:data:`DEFAULT_PROTOCOL` for a run written before
    protocols were recorded), or ``''`` when there are no results (or an unreadable protocol field)."""
    if not isinstance(results, dict) or not results:
        return ""
    name = results.get("protocol", DEFAULT_PROTOCOL)
    return name if isinstance(name, str) else ""


@dataclass(frozen=True)
class DatasetFormat:
    """One dataset format (one value of ``data.kind``).

    Attributes:
        name: the value of ``data.kind``; also the name of the format's options section ``data.<name>``, if any.
        label: the format's name for people (the app, ``cpl check``).
        layout: the folder layout in one line, for help texts and the error on an unrecognised folder.
        protocol: the evaluation protocol of its test splits (a key of :data:`PROTOCOLS`).
        recognise: ``(root) -> bool``, cheap (a few stat calls): whether a folder has this layout.
        scan: ``(root, **options) -> (scans, errors)``: the split scans that could be read and one-line errors
            for what kept a split from being read at all.
    """

    name: str
    label: str
    layout: str
    protocol: str
    recognise: Callable[[Path], bool]
    scan: Callable[..., tuple[dict[str, SplitScan], list[str]]]


# Recognised in this order: identity folders last, since any folder of subfolders could look like them.
_TABLE = (
    DatasetFormat("market", "Market-1501 layout",
                  "bounding_box_train/, query/, bounding_box_test/ with PID_cCAM file names "
                  "(Market-1501, DukeMTMC-reID, CUHK03-NP)", "cross-camera", market.recognise, market.scan),
    DatasetFormat("msmt17", "MSMT17",
                  "list_train.txt, list_val.txt, list_query.txt, list_gallery.txt beside train/ + test/ (V1) or "
                  "mask_train_v2/ + mask_test_v2/ (V2)", "cross-camera", msmt17.recognise, msmt17.scan),
    DatasetFormat("folders", "Identity folders",
                  "one folder of images per identity, no cameras (optional split.txt)", "leave-one-out",
                  folders.recognise, folders.scan),
)

#: Every format by name, in the order they are recognised.
FORMATS: dict[str, DatasetFormat] = {f.name: f for f in _TABLE}
#: ``data.kind`` that recognises the format from the folder's layout.
AUTO = "auto"
#: ``data.kind`` of the built-in synthetic dataset: generated on first use, then read as the Market layout.
SYNTHETIC = "synthetic"
SYNTHETIC_FORMAT = FORMATS["market"].name
#: The valid values of ``data.kind``.
KINDS: tuple[str, ...] = (AUTO, *FORMATS, SYNTHETIC)


def detect(root: str | os.PathLike) -> DatasetFormat | None:
    """The first format whose layout ``root`` has, or None (also for a missing folder)."""
    path = Path(os.path.abspath(root))
    if not path.is_dir():
        return None
    return next((f for f in _TABLE if f.recognise(path)), None)


def unrecognised(root: str | os.PathLike) -> str:
    """The one-line error for a folder no format recognises."""
    layouts = "; ".join(f"{f.label}: {f.layout}" for f in _TABLE)
    return f"{display_path(os.path.abspath(root))}: not a dataset layout this library reads ({layouts})"


def resolve(root: str | os.PathLike, kind: str = AUTO) -> DatasetFormat:
    """The format of ``root`` for ``data.kind`` ``kind`` (named, or recognised for ``auto`` / ``synthetic``).
    Raises :class:`DatasetError` (one line) when the folder is missing or no format recognises it."""
    problem = root_error(root)
    if problem:
        raise DatasetError(problem)
    if kind == SYNTHETIC:
        return FORMATS[SYNTHETIC_FORMAT]
    if kind != AUTO:
        if kind not in FORMATS:
            raise DatasetError(f"unknown dataset format {kind!r} (choose from {', '.join(KINDS)})")
        return FORMATS[kind]
    found = detect(root)
    if found is None:
        raise DatasetError(unrecognised(root))
    return found


def scan_dataset(root: str | os.PathLike, fmt: DatasetFormat,
                 options: dict | None = None) -> tuple[dict[str, SplitScan], list[str]]:
    """``fmt.scan`` of ``root`` with its options; a folder that cannot be listed is an error, not an exception."""
    try:
        return fmt.scan(Path(os.path.abspath(root)), **(options or {}))
    except DatasetError as exc:
        return {}, [str(exc)]


def load_dataset(root: str | os.PathLike, kind: str = AUTO, options: dict | None = None, *, max_train: int = 0,
                 max_query: int = 0, max_gallery: int = 0, seed: int = 0) -> ReidDataset:
    """Scan the dataset at ``root`` (format ``kind``, ``options`` its ``data.<format>`` settings) into three
    splits, no image decoded; caps as :func:`cpl.data.dataset.assemble`. Raises :class:`DatasetError` (one line)
    for the first problem; run :func:`cpl.data.check.check_dataset` for every problem at once."""
    fmt = resolve(root, kind)
    scans, errors = scan_dataset(root, fmt, options)
    if errors:
        more = f" (and {len(errors) - 1} more problems: run `cpl check`)" if len(errors) > 1 else ""
        raise DatasetError(errors[0] + more)
    return assemble(root, scans, fmt.name, fmt.protocol, max_train=max_train, max_query=max_query,
                    max_gallery=max_gallery, seed=seed)
