"""Decoding to memory (every colour mode, resize, determinism, errors), image folders, upload checks."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cpl.data.images import ImageError, UploadError, decode_upload, list_images, load_images

SAMPLE = "market1501_samples/0001_c1s1_001051_00.jpg"


def save(path: Path, image: Image.Image, fmt: str | None = None, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **kwargs)
    return path


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` RGB pixels and that holds no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def halves(size: tuple[int, int], left: tuple[int, int, int], right: tuple[int, int, int]) -> Image.Image:
    """An RGB image whose left half is ``left`` and right half ``right``."""
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = left
    arr[:, w // 2:] = right
    return Image.fromarray(arr)


# --------------------------------------------------------------------------------------------
# load_images


def test_colour_modes_become_rgb(tmp_path: Path) -> None:
    palette = Image.new("P", (12, 20), 1)
    palette.putpalette([0, 0, 0, 30, 60, 90] + [0] * 762)
    palette.info["transparency"] = bytes([255, 0] + [255] * 254)  # palette transparency given as bytes
    grey16 = Image.fromarray(np.array([[65535, 32896], [0, 257]], dtype=np.uint16).repeat(10, 0).repeat(6, 1))
    paths = [
        save(tmp_path / "rgb.png", Image.new("RGB", (12, 20), (10, 200, 30))),
        save(tmp_path / "grey.png", Image.new("L", (12, 20), 100)),
        save(tmp_path / "rgba.png", Image.new("RGBA", (12, 20), (40, 50, 60, 0))),
        save(tmp_path / "palette.png", palette),
        save(tmp_path / "cmyk.jpg", Image.new("CMYK", (12, 20), (0, 0, 0, 0)), quality=100),
        save(tmp_path / "grey16.png", grey16),
        save(tmp_path / "bilevel.bmp", Image.new("1", (12, 20), 1)),
    ]
    with Image.open(paths[5]) as stored:
        assert stored.mode == "I;16"
    images = load_images(paths, 20, 12, workers=1)
    assert images.shape == (7, 3, 20, 12) and images.dtype == torch.uint8
    px = images.permute(0, 2, 3, 1)  # [N, H, W, 3]
    assert (px[0] == torch.tensor([10, 200, 30], dtype=torch.uint8)).all()
    assert (px[1] == 100).all()
    assert (px[2] == torch.tensor([40, 50, 60], dtype=torch.uint8)).all()  # alpha dropped, colour kept
    assert (px[3] == torch.tensor([30, 60, 90], dtype=torch.uint8)).all()
    assert (px[4].int() - 255).abs().max() <= 2  # CMYK "no ink" is white
    # 16-bit grey is scaled to 8 bits (65535 -> 255, 32896 -> 128, 257 -> 1), not clipped at 255
    assert px[5, 0, 0].tolist() == [255] * 3 and px[5, 0, 6].tolist() == [128] * 3
    assert px[5, 10, 0].tolist() == [0] * 3 and px[5, 10, 6].tolist() == [1] * 3
    assert (px[6] == 255).all()


def test_resize_matches_pil_bilinear_on_a_real_image(shared_data: Path) -> None:
    path = shared_data / SAMPLE
    got = load_images([path], 128, 64)[0].permute(1, 2, 0).numpy()
    with Image.open(path) as im:
        assert im.size == (64, 128)
        expected = np.asarray(im.convert("RGB").resize((32, 64), Image.Resampling.BILINEAR))
        same = np.asarray(im.convert("RGB"))
    assert np.array_equal(got, same)  # no resize at the native size
    assert np.array_equal(load_images([path], 64, 32)[0].permute(1, 2, 0).numpy(), expected)


def test_resize_is_antialiased(tmp_path: Path) -> None:
    checker = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    path = save(tmp_path / "checker.png", Image.fromarray(checker))
    small = load_images([path], 8, 8)[0].float()
    # point sampling would give 0 or 255; an antialiased filter averages the pattern to mid-grey
    assert small.min() >= 110 and small.max() <= 145


def test_threads_do_not_change_the_result(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = [save(tmp_path / f"{i:02d}.png", Image.fromarray(rng.integers(0, 256, (30 + i, 17, 3), np.uint8)))
             for i in range(12)]
    one = load_images(paths, 24, 16, workers=1)
    many = load_images([str(p) for p in paths], 24, 16, workers=4)
    assert torch.equal(one, many)
    assert load_images([], 24, 16).shape == (0, 3, 24, 16)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(tmp_path / "rotated.jpg", halves((40, 20), (250, 0, 0), (0, 0, 250)), exif=exif.tobytes(),
                quality=95)
    px = load_images([path], 40, 20)[0].permute(1, 2, 0).int()  # displayed as 20 wide x 40 tall
    assert (px[:15, :, 0] > 200).all() and (px[:15, :, 2] < 50).all()  # the left half is now on top
    assert (px[25:, :, 2] > 200).all() and (px[25:, :, 0] < 50).all()


def test_load_error_names_the_first_bad_file(tmp_path: Path) -> None:
    good = save(tmp_path / "a.png", Image.new("RGB", (4, 4)))
    bad = tmp_path / "b.jpg"
    bad.write_bytes(encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")[:300])
    (tmp_path / "c.jpg").write_bytes(b"")
    for workers in (1, 3):
        with pytest.raises(ImageError) as info:
            load_images([good, bad, tmp_path / "c.jpg"], 8, 8, workers=workers)
        assert str(info.value) == f"{bad}: truncated image (the file ends before the image data does)"
    with pytest.raises(ImageError, match=r"missing\.jpg: cannot read \(No such file or directory\)"):
        load_images([tmp_path / "missing.jpg"], 8, 8)


# --------------------------------------------------------------------------------------------
# list_images


def test_list_images(tmp_path: Path) -> None:
    for rel in ["b/2.JPG", "b/1.png", "a.jpeg", "c/d/e.bmp", ".hidden/x.jpg", "b/.y.jpg"]:
        save(tmp_path / rel, Image.new("RGB", (2, 2)), "PNG")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "b" / "z.gif").write_bytes(b"GIF89a")
    (tmp_path / "c" / "loop").symlink_to(tmp_path)  # a cycle back to the top
    (tmp_path / "c" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    found = list_images(tmp_path)
    assert found == [tmp_path / "a.jpeg", tmp_path / "b/1.png", tmp_path / "b/2.JPG", tmp_path / "c/d/e.bmp"]
    assert list_images(tmp_path, limit=2) == found[:2]
    with pytest.raises(ImageError, match="image folder not found"):
        list_images(tmp_path / "nope")


# --------------------------------------------------------------------------------------------
# decode_upload


def test_upload_real_jpeg(shared_data: Path) -> None:
    data = (shared_data / SAMPLE).read_bytes()
    image = decode_upload(data)
    assert image.mode == "RGB" and image.size == (64, 128)
    with Image.open(shared_data / SAMPLE) as ref:
        assert np.array_equal(np.asarray(image), np.asarray(ref.convert("RGB")))
    assert decode_upload(bytearray(data)).size == (64, 128)


@pytest.mark.parametrize("fmt, mode", [("PNG", "RGBA"), ("BMP", "RGB"), ("WEBP", "RGB"), ("PNG", "I;16")])
def test_upload_formats(fmt: str, mode: str) -> None:
    image = Image.new(mode, (30, 50), 40000 if mode == "I;16" else (10, 20, 30, 0)[: len(mode)])
    out = decode_upload(encode(image, fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    assert out.mode == "RGB" and out.size == (30, 50)
    expected = [156] * 3 if mode == "I;16" else [10, 20, 30]
    assert np.asarray(out)[0, 0].tolist() == expected


def test_upload_exif_rotation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 degrees counter-clockwise to display"
    data = encode(halves((40, 20), (250, 0, 0), (0, 0, 250)), "JPEG", exif=exif.tobytes(), quality=95)
    arr = np.asarray(decode_upload(data)).astype(int)
    assert arr.shape == (40, 20, 3)
    assert (arr[25:, :, 0] > 200).all() and (arr[:15, :, 2] > 200).all()  # the left half is now at the bottom


def test_upload_too_large() -> None:
    with pytest.raises(UploadError) as info:
        decode_upload(b"\xff\xd8\xff" + bytes(10 * 2**20))
    assert str(info.value) == "the file is 10.0 MiB; the limit is 10 MiB"
    with pytest.raises(UploadError, match="the limit is 1 MiB"):
        decode_upload(bytes(2**20 + 1), max_bytes=2**20)


def test_upload_decompression_bomb(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = png_header_only(100_000, 100_000)
    assert len(bomb) < 100
    with pytest.raises(UploadError) as info:
        decode_upload(bomb)
    assert "decompression bomb" in str(info.value)
    with pytest.raises(UploadError) as info:
        decode_upload(png_header_only(8000, 6000))  # under PIL's own limit, over ours
    assert str(info.value) == "the image is 8000x6000 pixels; the limit is 40 megapixels"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # PIL's guard off: ours still holds
    with pytest.raises(UploadError, match="100000x100000 pixels"):
        decode_upload(bomb)


@pytest.mark.parametrize("data, message", [
    (b"", "the file is empty"),
    (b"GIF89a" + bytes(40), "the file is a GIF file; upload a JPEG, PNG, BMP or WebP image"),
    (b"%PDF-1.7\n", "the file is a PDF file; upload a JPEG, PNG, BMP or WebP image"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "the file is not an image this app reads; upload a JPEG, PNG, "
                                                  "BMP or WebP image"),
    (png_header_only(20, 20), "the PNG file cannot be decoded: "),
    (b"\xff\xd8\xff\xe0" + bytes(100), "the JPEG file cannot be decoded: "),
])
def test_upload_refused(data: bytes, message: str) -> None:
    with pytest.raises(UploadError) as info:
        decode_upload(data)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_upload_truncated_jpeg() -> None:
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)), "JPEG")
    with pytest.raises(UploadError) as info:
        decode_upload(data[: len(data) // 2])
    assert str(info.value) == ("the JPEG file cannot be decoded: "
                               "truncated image (the file ends before the image data does)")
