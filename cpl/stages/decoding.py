"""The images of a run decoded at its input size, as stages ``data`` and ``unlabeled`` both need them: into memory, or
with ``data.cache: disk`` into the runs root's cache and read back by row."""

from __future__ import annotations

from cpl.stages.context import RunContext


def decode(ctx: RunContext, paths):
    """``[N, 3, H, W] uint8`` of the image files ``paths`` at the run's input size: a tensor decoded into memory, or
    with ``data.cache: disk`` an image source on the runs root's cache (decoded and written there on first use,
    then read by row: cpl/data/image_cache.py)."""
    from cpl.data.image_cache import cached_images
    from cpl.data.images import load_images

    h, w = ctx.cfg.data.height, ctx.cfg.data.width
    if ctx.cfg.data.cache == "disk":
        return cached_images(paths, h, w, ctx.run.cache_root / "images")
    return load_images(paths, h, w)
