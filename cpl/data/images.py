"""Image decoding: dataset files into one uint8 tensor, folders of unlabeled images, and app uploads.

Every decode reads the whole file, decodes it fully with PIL (a truncated file is an error:
``ImageFile.LOAD_TRUNCATED_IMAGES`` is left False) and converts it to 8-bit RGB whatever its mode
(grey, grey+alpha, RGBA, palette, CMYK, 16-bit grey). EXIF orientation is applied, so an image
looks the same whether it comes from a dataset folder or from an upload.

torch is imported inside :func:`load_images` only: ``check.py`` shares the decoder and must stay
importable by the app without torch.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cpl.data.dataset import IMAGE_EXTENSIONS, display_path

if TYPE_CHECKING:
    import torch

# What a dataset file may turn out to contain, whatever its extension says. Formats that run
# external programs (EPS) or that no camera produces stay out.
DATASET_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF")  # JPEG also opens MPO
# What the app accepts as an upload, sniffed from the first bytes.
UPLOAD_FORMATS = ("JPEG", "PNG", "BMP", "WEBP")
UPLOAD_MAX_BYTES = 10 * 1024 * 1024
UPLOAD_MAX_PIXELS = 40_000_000
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


class ImageError(ValueError):
    """An image (or image folder) that cannot be used; the message is one line naming it."""


class UploadError(ValueError):
    """An uploaded file the app refuses; the message is meant for the person who uploaded it."""


def workers_for(workers: int) -> int:
    """Thread count for a ``workers`` setting: 0 = one per CPU core this process may use (at most 16)."""
    if workers > 0:
        return workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, 16))


def _reason(exc: BaseException, data: bytes) -> str:
    """A short one-line reason why ``data`` failed to decode with ``exc``."""
    kind = sniff_format(data)
    if not data:
        return "zero-byte file"
    if isinstance(exc, Image.DecompressionBombError):
        return "too many pixels (possible decompression bomb)"
    if isinstance(exc, UnidentifiedImageError):
        if kind:  # the signature is right, so the header itself is damaged
            return f"corrupt {kind} image (its header cannot be parsed)"
        return "not an image (the content is not " + ", ".join(DATASET_FORMATS) + ")"
    text = " ".join(str(exc).split())
    if "truncated" in text.lower():
        return "truncated image (the file ends before the image data does)"
    detail = f"{type(exc).__name__}: {text[:120]}" if text else type(exc).__name__
    return f"corrupt {kind + ' image' if kind else 'image'} ({detail})"


def open_bytes(data: bytes, formats: Sequence[str] = DATASET_FORMATS) -> Image.Image:
    """Decode ``data`` fully (``Image.open`` + ``load``); the image keeps its own mode.

    Raises any exception PIL raises; :func:`decode_file` maps them to :class:`ImageError`.
    """
    if not data:
        raise ValueError("zero-byte file")
    image = Image.open(io.BytesIO(data), formats=list(formats))
    image.load()
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``image``: 16-bit grey is scaled (not clipped), alpha is dropped."""
    if image.mode in _SIXTEEN_BIT_MODES:
        # PIL's own I;16 -> RGB conversion clips at 255, which turns a 16-bit image white.
        grey = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # avoids PIL's warning for palette transparency given as bytes
    return image.convert("RGB") if image.mode != "RGB" else image


def _decode(path: str | os.PathLike) -> tuple[Image.Image, Image.Image]:
    """``(image as stored, its RGB conversion with EXIF orientation applied)``; errors mapped."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ImageError(f"{display_path(path)}: cannot read ({exc.strerror or exc})") from None
    try:
        image = open_bytes(data)
        return image, to_rgb(ImageOps.exif_transpose(image))
    except Exception as exc:  # noqa: BLE001 -- corrupt data makes PIL raise almost any type
        raise ImageError(f"{display_path(path)}: {_reason(exc, data)}") from None


def decode_file(path: str | os.PathLike) -> Image.Image:
    """The image at ``path`` as 8-bit RGB, EXIF orientation applied.

    Raises :class:`ImageError` (one line naming the file) for an unreadable, zero-byte, truncated,
    corrupt or non-image file.
    """
    return _decode(path)[1]


def probe_file(path: str | os.PathLike) -> tuple[str, str]:
    """``(format, mode)`` of the image at ``path`` as stored, e.g. ``('PNG', 'RGBA')``, after a full
    decode and RGB conversion; raises :class:`ImageError` like :func:`decode_file`."""
    image = _decode(path)[0]
    return str(image.format), image.mode


def decode_resized(path: str | os.PathLike, height: int, width: int) -> np.ndarray:
    """The image at ``path`` as [height, width, 3] uint8 RGB, resized as every dataset image is (torch-free); raises
    :class:`ImageError`."""
    image = decode_file(path)
    if image.size != (width, height):
        # PIL's bilinear filter widens its support when shrinking, i.e. it antialiases
        image = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(image, dtype=np.uint8)


def load_images(paths: Sequence[str | os.PathLike], height: int, width: int, *,
                workers: int = 0) -> torch.Tensor:
    """Decode ``paths`` into ``[N, 3, height, width] uint8`` (RGB, bilinear antialiased resize).

    Decoding runs in ``workers`` threads (0 = one per CPU core); the result does not depend on it.
    Raises :class:`ImageError` naming the first file (in ``paths`` order) that cannot be decoded.
    """
    import torch

    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    # filled channel-first in place: a transpose of the whole batch afterwards would need a second copy
    out = np.empty((len(paths), 3, height, width), dtype=np.uint8)

    def fill(i: int) -> None:
        out[i] = decode_resized(os.fspath(paths[i]), height, width).transpose(2, 0, 1)

    n = workers_for(workers)
    if n == 1 or len(paths) < 2:
        for i in range(len(paths)):
            fill(i)
    else:
        with ThreadPoolExecutor(max_workers=n) as pool:
            try:
                # list() re-raises the first failure in input order, so the error is deterministic too
                list(pool.map(fill, range(len(paths))))
            except ImageError:
                pool.shutdown(cancel_futures=True)  # don't decode the rest of a dataset that already failed
                raise
    return torch.from_numpy(out)


def list_images(folder: str | os.PathLike, limit: int = 0) -> list[Path]:
    """Image files under ``folder`` (recursive; ``IMAGE_EXTENSIONS``; hidden files and folders
    skipped), absolute and sorted; the first ``limit`` of them when ``limit > 0``.

    Symlinked folders are followed once each, so a symlink loop ends the walk instead of looping.
    Raises :class:`ImageError` when ``folder`` is not a folder.
    """
    root = Path(os.path.abspath(folder))
    if not root.is_dir():
        raise ImageError(f"{display_path(root)}: image folder not found")
    seen: set[tuple[int, int]] = set()
    found: list[Path] = []
    for current, dirs, files in os.walk(root, followlinks=True):
        st = os.stat(current)
        if (st.st_dev, st.st_ino) in seen:
            dirs.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = os.path.join(current, name)
            if (not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
                    and os.path.isfile(path)):
                found.append(Path(path))
    found.sort()
    return found[:limit] if limit > 0 else found


def sniff_format(data: bytes) -> str | None:
    """The image format named by the first bytes of ``data`` (``'JPEG'``, ``'PNG'``, ``'BMP'``,
    ``'WEBP'``, or a few common refused ones such as ``'GIF'``, ``'TIFF'``, ``'HEIC'``), or None."""
    head = bytes(data[:16])
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif"):
        return "AVIF" if head[8:12] == b"avif" else "HEIC"
    if head.startswith(b"%PDF"):
        return "PDF"
    return None


def decode_upload(data: bytes, *, max_bytes: int = UPLOAD_MAX_BYTES,
                  max_pixels: int = UPLOAD_MAX_PIXELS) -> Image.Image:
    """An uploaded file as an 8-bit RGB PIL image, EXIF orientation applied.

    The type is sniffed from the content (JPEG, PNG, BMP or WebP; the file name is not trusted).
    Refused with :class:`UploadError`: more than ``max_bytes`` bytes, more than ``max_pixels``
    pixels (checked from the header, before decoding: decompression-bomb protection), another
    type, or data that does not decode.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UploadError(f"expected the file's bytes, got {type(data).__name__}")
    size = len(data)
    if size == 0:
        raise UploadError("the file is empty")
    if size > max_bytes:
        raise UploadError(f"the file is {size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB")
    kind = sniff_format(data)
    if kind not in UPLOAD_FORMATS:
        named = f"a {kind} file" if kind else "not an image this app reads"
        raise UploadError(f"the file is {named}; upload a JPEG, PNG, BMP or WebP image")
    try:
        image = Image.open(io.BytesIO(bytes(data)), formats=[kind])
        width, height = image.size
        if width * height > max_pixels:
            raise UploadError(
                f"the image is {width}x{height} pixels; the limit is {max_pixels / 1e6:.0f} megapixels"
            )
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))
    except UploadError:
        raise
    except Image.DecompressionBombError:
        raise UploadError(
            f"the image declares more pixels than the limit of {max_pixels / 1e6:.0f} megapixels "
            "(refused as a possible decompression bomb)"
        ) from None
    except Exception as exc:  # noqa: BLE001 -- corrupt data makes PIL raise almost any type
        raise UploadError(f"the {kind} file cannot be decoded: {_reason(exc, data)}") from None
