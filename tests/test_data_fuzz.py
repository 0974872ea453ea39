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
