"""Image sources: what training and feature extraction read images from, row by row, without one concatenated copy.

An :class:`ImageSource` is N images ``[N, 3, H, W] uint8`` that hands out any rows on request (:meth:`gather`).
The trainer draws its batches from one and feature extraction reads one in chunks (:func:`chunks`), so neither needs
the images in one tensor. :class:`Rows` picks rows of a tensor (in memory or on a device) or of another source
(such as the decoded cache on disk, :class:`cpl.data.image_cache.CachedImages`, which reads only the rows asked for);
:class:`Concat` puts sources one after another (the labeled training images, then the unlabeled ones). Reading rows
through them gives exactly the bytes that indexing the concatenated tensor gives, so training is bit-identical.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch

# Images copied at a time by :func:`chunks` users that only stream (the device copy): 1024 x 96 KiB at 256 x 128.
CHUNK = 1024


class ImageSource(Protocol):
    """``[N, 3, H, W] uint8`` images read by row."""

    shape: torch.Size  # [N, 3, H, W]
    device: torch.device  # where gather's result lives

    def __len__(self) -> int: ...

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """The images of rows ``idx`` [B] int64 (any order, repeats allowed): ``[B, 3, H, W] uint8``."""
        ...


class Rows:
    """Rows ``rows`` [N] int64 (default: all) of ``base``, a ``[M, 3, H, W] uint8`` tensor or another source."""

    def __init__(self, base: torch.Tensor | ImageSource, rows: torch.Tensor | np.ndarray | None = None):
        self.base = base
        self.device = base.device
        self.rows = None if rows is None else torch.as_tensor(rows, dtype=torch.int64, device=self.device)
        self.shape = torch.Size([len(base) if self.rows is None else len(self.rows), *base.shape[1:]])

    def __len__(self) -> int:
        return self.shape[0]

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """``base[rows[idx]]`` ``[B, 3, H, W] uint8`` on ``base``'s device; a mapped base pages in those rows only."""
        idx = idx.to(self.device, torch.int64)
        if self.rows is not None:
            idx = self.rows[idx]
        return self.base[idx] if isinstance(self.base, torch.Tensor) else self.base.gather(idx)


class Concat:
    """The images of ``parts`` one after another (all of one image size and device); nothing is copied."""

    def __init__(self, parts: Sequence[ImageSource]):
        if not parts:
            raise ValueError("Concat needs at least one source")
        self.parts = [p for p in parts if len(p)] or [parts[0]]
        self.device = self.parts[0].device
        sizes = {tuple(p.shape[1:]) for p in self.parts}
        if len(sizes) != 1 or any(p.device != self.device for p in self.parts):
            raise ValueError(f"Concat: the sources differ in image size or device: {sizes}")
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])  # [parts + 1] first row of each, then N
        self.shape = torch.Size([int(self.starts[-1]), *self.parts[0].shape[1:]])

    def __len__(self) -> int:
        return self.shape[0]

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` [B] of the concatenation, ``[B, 3, H, W] uint8``: each part gathers its own rows."""
        idx = idx.to(self.device, torch.int64)
        ends = torch.as_tensor(self.starts[1:-1], device=self.device)
        part = torch.bucketize(idx, ends, right=True)  # which source each row is in
        present = torch.unique(part).tolist()
        if len(present) == 1:
            p = present[0]
            return self.parts[p].gather(idx - int(self.starts[p]))
        out = torch.empty((len(idx), *self.shape[1:]), dtype=torch.uint8, device=self.device)
        for p in present:
            at = (part == p).nonzero().squeeze(1)
            out[at] = self.parts[p].gather(idx[at] - int(self.starts[p]))
        return out


def as_source(images: torch.Tensor | ImageSource) -> ImageSource:
    """``images`` as a source: a ``[N, 3, H, W] uint8`` tensor is wrapped (no copy), a source returned as it is."""
    return Rows(images) if isinstance(images, torch.Tensor) else images


def chunks(source: ImageSource, size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, images [<= size, 3, H, W] uint8)`` for consecutive rows of ``source``: reading a source in order
    holds one chunk at a time."""
    for start in range(0, len(source), size):
        yield start, source.gather(torch.arange(start, min(start + size, len(source))))


def on_device(source: ImageSource, device: torch.device) -> ImageSource:
    """The source the trainer draws batches from on ``device``.

    On CUDA the images are copied into one device tensor, chunk by chunk (host memory: one chunk): GPU memory holds
    even MSMT17's training set (3 GiB at 256 x 128) with room to spare, and a batch is then one gather on the device
    instead of a host read (page faults on the mapped cache) and a transfer per step that would leave the GPU
    waiting. On the CPU the source is read in place: a copy would only add the dataset's size to host memory."""
    if device.type != "cuda" or source.device == device:
        return source
    out = torch.empty(source.shape, dtype=torch.uint8, device=device)
    for start, imgs in chunks(source, CHUNK):
        out[start:start + len(imgs)] = imgs.to(device, non_blocking=True)
    return Rows(out)
