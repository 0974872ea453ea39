"""A decoded-image cache on disk, memory-mapped: decode a split once, then page its pixels in as they are read.

``data.cache: disk`` keeps the three splits out of the process's own memory: the decoded ``[N, 3, H, W] uint8``
array is written to ``<runs root>/_cache/images/<key>.npy`` in chunks (so decoding never holds more than one
chunk), and every run that needs the same files at the same size maps that file instead of decoding again. The
kernel pages pixels in on access and can drop them again under memory pressure, so host memory no longer grows
with the dataset. The pixels are the bytes :func:`cpl.data.images.load_images` produces, so training is
bit-identical to ``data.cache: memory``.

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


def cached_images(paths: Sequence[str | os.PathLike], height: int, width: int, folder: str | os.PathLike, *,
                  workers: int = 0) -> torch.Tensor:
    """``[N, 3, height, width] uint8``, the same pixels as :func:`cpl.data.images.load_images`, backed by a
    memory-mapped file in ``folder`` (decoded and written on first use). The tensor is copy-on-write: writing
    to it never changes the file. Raises :class:`cpl.data.images.ImageError` like ``load_images``."""
    import torch

    if not paths:
        return load_images(paths, height, width)
    folder = Path(folder)
    target = folder / f"{cache_key(paths, height, width)}-{len(paths)}x{height}x{width}.npy"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        _write(target, list(paths), height, width, workers)
    return torch.from_numpy(np.load(target, mmap_mode="c"))
