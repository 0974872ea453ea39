"""A decoded-image cache on disk: decode a split once, then read its rows from the file as they are needed.

``data.cache: disk`` keeps the three splits out of the process's own memory: the decoded ``[N, 3, H, W] uint8``
array is written to ``<runs root>/_cache/images/<key>.npy`` in chunks (so decoding never holds more than one
chunk), and every run that needs the same files at the same size reads that file instead of decoding again.
:class:`CachedImages` is an image source (:mod:`cpl.data.image_source`) that reads the rows asked for with
``pread``: the file's pages live in the kernel's page cache, which it drops under memory pressure, and never in
the process's resident set, so host memory no longer grows with the dataset (a memory mapping would count every
page it touched as resident). The DCGAN reads it too, a chunk at a time, keeping only its 64 × 64 copy.
The pixels are the bytes :func:`cpl.data.images.load_images` produces, so training is bit-identical to
``data.cache: memory``.

The key covers each file's path, size and modification time and the output size; a changed file makes a new
entry. Writers use a private temporary name and an atomic rename, so concurrent runs never see half a file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cpl.data.images import load_images

if TYPE_CHECKING:
    import torch

# Images decoded at a time while the cache file is written: bounds the decode's own memory (1024 x 96 KiB).
CHUNK = 1024


def cache_key(paths: Sequence[str | os.PathLike], height: int, width: int) -> str:
    """16 hex digits naming the decoded array of ``paths`` at ``height`` x ``width`` (paths, sizes, mtimes)."""
    digest = hashlib.sha256(f"{height}x{width}\n".encode())
    for path in paths:
        st = os.stat(path)
        digest.update(os.fsencode(os.path.abspath(path)) + f"\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _write(target: Path, paths: Sequence[str | os.PathLike], height: int, width: int, workers: int) -> None:
    """Decode ``paths`` chunk by chunk into a new ``.npy`` file, renamed to ``target`` once complete."""
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.npy")
    try:
        # Plain writes, not a writable mapping: the written pages are page cache, never this process's resident set.
        with open(tmp, "wb") as fh:
            header = {"descr": "|u1", "fortran_order": False, "shape": (len(paths), 3, height, width)}
            np.lib.format.write_array_header_1_0(fh, header)
            for start in range(0, len(paths), CHUNK):
                fh.write(load_images(paths[start:start + CHUNK], height, width, workers=workers).numpy().tobytes())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class CachedImages:
    """The rows of a cache file as an image source: ``[N, 3, H, W] uint8`` read with ``pread`` on request."""

    def __init__(self, path: str | os.PathLike):
        import torch

        self.path = Path(path)
        with open(self.path, "rb") as fh:
            np.lib.format.read_magic(fh)
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            self.offset = fh.tell()  # the pixels follow the header
        if dtype != np.uint8 or len(shape) != 4:
            raise ValueError(f"{self.path}: not a decoded-image cache entry ({dtype}, shape {shape})")
        self.shape, self.device = torch.Size(shape), torch.device("cpu")
        self.row_bytes = int(np.prod(shape[1:]))
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` [B] int64 of the file, ``[B, 3, H, W] uint8``: one ``pread`` per run of consecutive rows."""
        import torch

        rows = idx.to("cpu", torch.int64).numpy()
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        if not len(rows):
            return torch.from_numpy(out)
        if rows.min() < 0 or rows.max() >= len(self):
            raise IndexError(f"{self.path.name}: rows {rows.min()}..{rows.max()} outside 0..{len(self) - 1}")
        flat = out.reshape(len(rows), self.row_bytes)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1  # where a run of consecutive rows ends
        for start, stop in zip([0, *breaks], [*breaks, len(rows)]):
            self._read(memoryview(flat[start:stop]).cast("B"), self.offset + int(rows[start]) * self.row_bytes)
        return torch.from_numpy(out)

    def _read(self, view: memoryview, at: int) -> None:
        """Fill ``view`` from byte ``at`` of the file (a read may return less than asked: read on)."""
        while len(view):
            got = os.preadv(self._fd, [view], at)
            if got <= 0:
                raise OSError(f"{self.path}: ends before byte {at + len(view)}; the cache entry is damaged")
            view, at = view[got:], at + got


def cached_images(paths: Sequence[str | os.PathLike], height: int, width: int, folder: str | os.PathLike, *,
                  workers: int = 0) -> CachedImages | torch.Tensor:
    """The same pixels as :func:`cpl.data.images.load_images`, ``[N, 3, height, width] uint8``, as a
    :class:`CachedImages` source on a file in ``folder`` (decoded and written on first use); no paths: an empty
    tensor. Raises :class:`cpl.data.images.ImageError` like ``load_images``."""
    if not paths:
        return load_images(paths, height, width)
    folder = Path(folder)
    target = folder / f"{cache_key(paths, height, width)}-{len(paths)}x{height}x{width}.npy"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        _write(target, list(paths), height, width, workers)
    return CachedImages(target)
