"""Property-based tests: random file names and random bytes never make the parser, scanner, checker,
loader or upload decoder raise anything but their documented one-line errors; and a dataset that
`cpl check` passes always loads and decodes."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from cpl.data.check import check_dataset
from cpl.data.dataset import DatasetError
from cpl.data.formats import load_dataset
from cpl.data.images import ImageError, UploadError, decode_upload, load_images, probe_file
from cpl.data.market import SPLIT_FOLDERS, parse_name

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _encoded(mode: str, fmt: str, size: tuple[int, int] = (6, 10)) -> bytes:
    rng = np.random.default_rng(len(mode) + len(fmt))
    arr = rng.integers(0, 256, (size[1], size[0], len(mode)), np.uint8).squeeze()
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, fmt)
    return buf.getvalue()


VALID = [_encoded("RGB", "JPEG"), _encoded("RGB", "PNG"), _encoded("RGB", "BMP"), _encoded("L", "PNG"),
         _encoded("RGBA", "PNG"), _encoded("RGB", "WEBP")]


@st.composite
def contents(draw: st.DrawFn) -> bytes:
    """Valid images, images damaged by truncation / overwritten bytes / insertion, or random bytes."""
    # valid images weigh most, so that a fair share of the random datasets passes the check
    kind = draw(st.sampled_from(["valid"] * 6 + ["truncated", "flipped", "inserted", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=200))
    data = bytearray(draw(st.sampled_from(VALID)))
    if kind == "truncated":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if kind == "flipped":
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif kind == "inserted":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=30))
    return bytes(data)


market_names = st.builds(
    lambda pid, cam, rest: f"{pid:04d}_c{cam}{rest}",
    st.integers(-2, 30), st.integers(0, 7), st.text("s0123456789_", max_size=10),
)
any_names = st.text(st.characters(exclude_characters="/\x00", codec="utf-8"), min_size=1, max_size=25)
file_names = st.builds(
    lambda stem, ext: stem + ext,
    st.one_of(market_names, market_names, market_names, any_names),
    st.sampled_from([".jpg", ".jpg", ".jpg", ".png", ".JPEG", ".bmp", ".txt", ""]),
).filter(lambda n: n not in (".", "..") and len(n.encode()) < 250)
split_files = st.dictionaries(file_names, contents(), max_size=6)
# None = the split folder is missing
datasets = st.fixed_dictionaries({split: st.one_of(st.none(), split_files) for split in SPLIT_FOLDERS})
# Well-named, non-empty splits whose contents are still random: exercises the path where the check passes.
good_names = st.builds(lambda pid, cam, i: f"{pid:04d}_c{cam}s1_{i:06d}_00.jpg",
                       st.integers(1, 20), st.integers(1, 6), st.integers(0, 999))
plausible_datasets = st.fixed_dictionaries(
    {split: st.dictionaries(good_names, contents(), min_size=1, max_size=6) for split in SPLIT_FOLDERS})


@FUZZ
@given(st.text(max_size=60))
def test_parse_any_text(name: str) -> None:
    parsed = parse_name(name)
    assert parsed is None or (parsed[0] >= -1 and parsed[1] >= 0)


@FUZZ
@given(st.integers(-1, 10**9), st.integers(0, 10**6), st.text(max_size=20))
def test_parse_round_trip(pid: int, cam: int, rest: str) -> None:
    assert parse_name(f"{pid:04d}_c{cam}s{rest}") == (pid, cam)


def _write(root: Path, spec: dict[str, dict[str, bytes] | None]) -> None:
    for split, files in spec.items():
        if files is None:
            continue
        folder = root / SPLIT_FOLDERS[split]
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)


def _check_then_load(root: Path) -> None:
    """The checker never raises; the loader refuses only what the checker reports; checked data decodes."""
    report = check_dataset(root, kind="market", workers=2)
    event(f"check ok: {report.ok}")
    for line in report.errors + report.warnings:
        assert "\n" not in line and line
    assert report.format().count("\n") == len(report.errors) + len(report.warnings) + len(report.splits) + (
        2 if report.splits else 1)
    try:
        ds = load_dataset(root, "market")
    except DatasetError as exc:
        assert "\n" not in str(exc)
        assert not report.ok
        return
    paths = [p for split in ds.splits for p in split.paths]
    if report.ok:
        assert load_images(paths, 12, 6, workers=2).shape == (len(paths), 3, 12, 6)
        return
    try:
        load_images(paths, 12, 6, workers=2)
    except ImageError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(datasets)
def test_random_datasets(spec: dict[str, dict[str, bytes] | None]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _write(Path(tmp), spec)
        _check_then_load(Path(tmp))


@FUZZ
@given(plausible_datasets)
def test_plausible_datasets(spec: dict[str, dict[str, bytes]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _write(Path(tmp), spec)
        _check_then_load(Path(tmp))


@FUZZ
@given(contents())
def test_random_bytes_to_decoders(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.jpg"
        path.write_bytes(data)
        try:
            fmt, mode = probe_file(path)
            assert fmt in ("JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF") and mode
            assert load_images([path], 5, 4).shape == (1, 3, 5, 4)
        except ImageError as exc:
            assert str(exc).startswith(str(path) + ": ") and "\n" not in str(exc)
    try:
        image = decode_upload(data)
        assert image.mode == "RGB" and image.width * image.height > 0
    except UploadError as exc:
        assert str(exc) and "\n" not in str(exc)


# ---------------------------------------------------------------------------------------------- other formats

list_lines = st.lists(st.one_of(
    st.builds(lambda pid, i, cam: f"{pid:04d}/{pid:04d}_{i:03d}_{cam:02d}_0303morning_{i:04d}_0.jpg {pid}",
              st.integers(0, 3), st.integers(0, 20), st.integers(0, 16)),
    st.text(st.characters(exclude_characters="\x00", codec="utf-8"), max_size=40),
), max_size=6)


def _check_then_load_kind(root: Path, kind: str) -> None:
    """As :func:`_check_then_load`, for any format: check never raises, load refuses only what check reports."""
    report = check_dataset(root, kind=kind, workers=2)
    for line in report.errors + report.warnings:
        assert "\n" not in line and line
    try:
        ds = load_dataset(root, kind)
    except DatasetError as exc:
        assert "\n" not in str(exc) and not report.ok
        return
    if report.ok:
        paths = list(dict.fromkeys(p for split in ds.splits for p in split.paths))
        assert load_images(paths, 12, 6, workers=2).shape == (len(paths), 3, 12, 6)


@FUZZ
@given(st.fixed_dictionaries({name: list_lines for name in ("train", "val", "query", "gallery")}),
       st.lists(st.tuples(st.integers(0, 3), st.integers(0, 20), st.integers(0, 16), contents()), max_size=8))
def test_random_msmt17_lists(lists: dict[str, list[str]], files: list[tuple[int, int, int, bytes]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for folder in ("train", "test"):
            for pid, i, cam, data in files:
                path = root / folder / f"{pid:04d}" / f"{pid:04d}_{i:03d}_{cam:02d}_0303morning_{i:04d}_0.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        for name, lines in lists.items():
            (root / f"list_{name}.txt").write_text("".join(line.replace("\r", "") + "\n" for line in lines))
        _check_then_load_kind(root, "msmt17")


@FUZZ
@given(st.dictionaries(st.sampled_from(["ann", "bob", "cy", "dee", "ed"]), split_files, max_size=5),
       st.one_of(st.none(), st.text(max_size=60)))
def test_random_identity_folders(people: dict[str, dict[str, bytes]], split: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for person, files in people.items():
            (root / person).mkdir()
            for name, data in files.items():
                (root / person / name).write_bytes(data)
        if split is not None:
            (root / "split.txt").write_text(split)
        _check_then_load_kind(root, "folders")
