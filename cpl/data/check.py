"""``cpl check``: validate a dataset of any format before any work starts, and report its statistics.

Errors stop a run (training calls :func:`raise_if_invalid` first); warnings describe data that
works but may not be what the user meant. Every message is one line naming the file or folder.
No torch import here: the app validates datasets with this module before launching a run.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from cpl.data.dataset import (
    DISTRACTOR_PID,
    JUNK_PID,
    NO_CAMERA,
    DatasetError,
    Split,
    SplitScan,
    display_path,
    examples,
    has_valid_match,
    scan_errors,
    usable_split,
)
from cpl.data.formats import AUTO, resolve, scan_dataset
from cpl.data.images import ImageError, probe_file, workers_for

__all__ = ["CheckReport", "DatasetError", "SplitStats", "check_dataset", "raise_if_invalid"]

# Decoding failures listed one per line per split; beyond this they are summed up in one line.
_MAX_FILE_ERRORS = 5
# The format PIL finds for content that matches each extension.
_EXTENSION_FORMATS = {".jpg": ("JPEG", "MPO"), ".jpeg": ("JPEG", "MPO"), ".png": ("PNG",), ".bmp": ("BMP",)}
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


@dataclass
class SplitStats:
    """Counts for one split folder. ``images`` counts image files whose names parse, junk and
    distractors included; ``identities`` counts distinct pids > 0; ``ignored`` counts everything
    that is not an image file (other files, hidden files, subfolders)."""

    name: str
    folder: str
    images: int = 0
    identities: int = 0
    cameras: int = 0
    junk: int = 0
    distractors: int = 0
    ignored: int = 0
    unparsed: int = 0
    unreadable: int = 0
    modes: dict[str, int] = field(default_factory=dict)  # image mode as stored -> count (decoded only)


@dataclass
class CheckReport:
    """The outcome of :func:`check_dataset`. ``splits`` has an entry for every split that could be read;
    ``kind`` is the dataset format's name (empty when the folder is not a dataset) and ``protocol`` its evaluation
    protocol."""

    root: str
    kind: str = ""
    protocol: str = ""
    splits: dict[str, SplitStats] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    decoded: bool = False
    images: int = 0  # distinct image files listed (identity folders' query and gallery share theirs)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the dataset is usable: no errors (warnings allowed)."""
        return not self.errors

    def format(self) -> str:
        """What ``cpl check`` prints: a table of split statistics, then one line per warning and error."""
        lines = [f"dataset {self.root}" + (f" ({self.kind}, protocol {self.protocol})" if self.kind else "")]
        if self.splits:
            header = ("split", "folder", "images", "ids", "cameras", "junk", "distractors", "ignored")
            rows = [header] + [
                (s.name, os.path.basename(s.folder), s.images, s.identities, s.cameras, s.junk, s.distractors,
                 s.ignored)
                for s in self.splits.values()
            ]
            widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
            for row in rows:
                cells = [str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
                lines.append("  ".join(cells).rstrip())
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"error: {e}" for e in self.errors]
        total = self.images
        how = "decoded" if self.decoded else "listed (not decoded)"
        if self.ok:
            lines.append(f"OK: {total:,} images {how} in {self.seconds:.1f} s")
        else:
            lines.append(f"FAILED: {len(self.errors)} error(s); {total:,} images {how} in {self.seconds:.1f} s")
        return "\n".join(lines)


def raise_if_invalid(report: CheckReport) -> None:
    """Raise :class:`DatasetError` with a one-line summary when ``report`` has errors."""
    if report.ok:
        return
    more = f" (and {len(report.errors) - 1} more: run `cpl check {report.root}`)" if len(report.errors) > 1 else ""
    raise DatasetError(f"dataset {report.root} is not usable: {report.errors[0]}{more}")


def _split_stats(scan: SplitScan) -> SplitStats:
    pids = scan.pids
    return SplitStats(
        name=scan.name,
        folder=display_path(scan.folder),
        images=len(scan.paths),
        identities=int(np.unique(pids[pids > DISTRACTOR_PID]).size),
        cameras=int(np.unique(scan.camids[scan.camids != NO_CAMERA]).size),
        junk=int(np.sum(pids == JUNK_PID)),
        distractors=int(np.sum(pids == DISTRACTOR_PID)),
        ignored=len(scan.ignored),
        unparsed=len(scan.unparsed),
        unreadable=len(scan.broken),
    )


def _mode_label(mode: str) -> str:
    if mode in _GREY_MODES:
        return f"grey-scale {mode}"
    return f"palette {mode}" if mode in ("P", "PA") else mode


def _probe(path: str) -> tuple[str, str] | str:
    """``(format, mode)`` of a decodable image, else the one-line error."""
    try:
        return probe_file(path)
    except ImageError as exc:
        return str(exc)


def _decode_split(scan: SplitScan, results: list[tuple[str, str] | str], stats: SplitStats,
                  report: CheckReport) -> None:
    """Fold the decode results of one split into its stats, errors and warnings."""
    failures = [r for r in results if isinstance(r, str)]
    stats.unreadable += len(failures)
    report.errors += failures[:_MAX_FILE_ERRORS]
    if len(failures) > _MAX_FILE_ERRORS:
        report.errors.append(
            f"{stats.folder}: {len(failures) - _MAX_FILE_ERRORS} more image(s) cannot be decoded "
            f"({len(failures)} in all)"
        )
    decoded = [(p, r) for p, r in zip(scan.paths, results) if not isinstance(r, str)]
    stats.modes = dict(sorted(Counter(mode for _, (_, mode) in decoded).items()))
    converted = {m: n for m, n in stats.modes.items() if m != "RGB"}
    if converted:
        kinds = ", ".join(f"{n} {_mode_label(m)}" for m, n in converted.items())
        report.warnings.append(
            f"{stats.folder}: {sum(converted.values())} image(s) are not RGB ({kinds}); they are converted to RGB"
        )
    lying = [
        (os.path.basename(p), fmt) for p, (fmt, _) in decoded
        if fmt not in _EXTENSION_FORMATS[os.path.splitext(p)[1].lower()]
    ]
    if lying:
        shown = examples([f"{name} is {fmt}" for name, fmt in lying], 3)
        report.warnings.append(
            f"{stats.folder}: {len(lying)} file(s) have an extension that does not match their content "
            f"({shown}); they decode fine"
        )


def _dropped_warnings(scan: SplitScan, stats: SplitStats) -> list[str]:
    if scan.name == "gallery" or not (stats.junk or stats.distractors):
        return []
    use = "training" if scan.name == "train" else "the queries"
    return [
        f"{stats.folder}: {stats.junk} junk (pid -1) and {stats.distractors} distractor (pid 0) image(s) are left "
        f"out of {use}; number real identities from 1"
    ]


def _identity_warnings(splits: dict[str, Split]) -> list[str]:
    """Warnings about how identities spread over the splits that loaded."""
    warnings = []

    def ids(name: str) -> set[int]:
        return set(splits[name].pids[splits[name].pids > DISTRACTOR_PID].tolist()) if name in splits else set()

    def listed(values: set[int]) -> str:
        return examples([str(v) for v in sorted(values)])

    train, query, gallery = ids("train"), ids("query"), ids("gallery")
    if "query" in splits and "gallery" in splits:
        only_query, only_gallery = query - gallery, gallery - query
        if only_query:
            warnings.append(
                f"{len(only_query)} identities appear only in query, not in the gallery (pids {listed(only_query)}); "
                "their queries have no match"
            )
        if only_gallery:
            warnings.append(
                f"{len(only_gallery)} identities appear only in the gallery, not in query (pids "
                f"{listed(only_gallery)}); they act as distractors"
            )
        q = splits["query"]
        valid = has_valid_match(q, splits["gallery"])
        unmatched = {p for p, ok in zip(q.pids.tolist(), valid.tolist()) if p in gallery and not ok}
        if unmatched and bool(np.all(q.camids == NO_CAMERA)):
            warnings.append(
                f"{len(unmatched)} query identities have no other image in the gallery (pids {listed(unmatched)}); "
                "those queries score no AP"
            )
        elif unmatched:
            warnings.append(
                f"{len(unmatched)} query identities have no cross-camera match in the gallery (pids "
                f"{listed(unmatched)}); those queries score no AP"
            )
    overlap = train & (query | gallery)
    if overlap:
        warnings.append(
            f"train and test share {len(overlap)} identities (pids {listed(overlap)}); "
            "the test is then not on unseen people"
        )
    return warnings


def check_dataset(root: str | os.PathLike, *, kind: str = AUTO, options: dict | None = None, decode: bool = True,
                  workers: int = 0) -> CheckReport:
    """Validate the dataset at ``root`` (format ``kind``: a name of :data:`cpl.data.formats.FORMATS`, or ``auto``
    to recognise it; ``options`` its ``data.<format>`` settings); never raises for a dataset problem.

    ``decode`` decodes every image fully (PIL ``open`` + ``load``, truncated files are errors) in
    ``workers`` threads (0 = one per CPU core); without it only names, lists and links are checked.
    """
    start = time.perf_counter()
    report = CheckReport(root=display_path(os.path.abspath(root)), decoded=decode)
    try:
        fmt = resolve(root, kind)
    except DatasetError as exc:
        report.errors.append(str(exc))
        return report
    report.kind, report.protocol = fmt.name, fmt.protocol
    scans, errors = scan_dataset(root, fmt, options)
    report.errors += errors
    for name, scan in scans.items():
        report.splits[name] = _split_stats(scan)
        report.errors += scan_errors(scan)
        report.warnings += _dropped_warnings(scan, report.splits[name])

    if decode:
        paths = list(dict.fromkeys(p for scan in scans.values() for p in scan.paths))  # query = gallery: once
        with ThreadPoolExecutor(max_workers=workers_for(workers)) as pool:
            decoded = dict(zip(paths, pool.map(_probe, paths)))
        for name, scan in scans.items():
            _decode_split(scan, [decoded[p] for p in scan.paths], report.splits[name], report)

    report.warnings += _identity_warnings({name: usable_split(scan) for name, scan in scans.items()})
    # identity folders' query and gallery are the same images: say each of their problems once
    report.errors, report.warnings = list(dict.fromkeys(report.errors)), list(dict.fromkeys(report.warnings))
    report.images = len({p for scan in scans.values() for p in scan.paths})
    report.seconds = time.perf_counter() - start
    return report
