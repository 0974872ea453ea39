"""Draw DCGAN samples to a folder of PNGs with a manifest, incrementally and deterministically.

Image ``i`` gets z ~ U(-1, 1)^z_dim from a stream seeded by (seed, i), and is generated in the
fixed chunk ``[B·⌊i/B⌋, B·⌊i/B⌋ + B)``. The generator's BN layers use the statistics of that chunk,
as the LSRO sampler did (it ran TF batch_norm with ``train=True``); the fixed chunks make every
image independent of how many were asked for, so 100 then 150 equals a fresh 150.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cpl.engine.control import Stopped
from cpl.engine.seeding import make_generator
from cpl.gan.dcgan import Generator
from cpl.runs import atomic, faults

MANIFEST = "manifest.csv"
SETTINGS = "sampling.json"  # what the existing files were drawn with; a mismatch invalidates them
_REPORT_EVERY_S = 2.0


def sample_z(seed: int, indices: range | list[int], z_dim: int) -> torch.Tensor:
    """z of the given sample indices: ``[len(indices), z_dim] float32`` uniform in [-1, 1)."""
    return torch.stack([torch.rand(z_dim, generator=make_generator(seed, "gan-sample", i)) for i in indices]) * 2 - 1


def generator_digest(generator: Generator) -> str:
    """16 hex digits identifying the generator's weights and BN statistics."""
    h = hashlib.sha256()
    for name, t in sorted(generator.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def read_manifest(folder: Path) -> dict[int, tuple[str, int]]:
    """``index → (file name, seed)`` from ``folder/manifest.csv`` (empty when absent)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    rows: dict[int, tuple[str, int]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            rows[int(row["index"])] = (row["file"], int(row["seed"]))
    return rows


def _write_manifest(folder: Path, rows: dict[int, tuple[str, int]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "file", "seed"])
    for i in sorted(rows):
        writer.writerow([i, *rows[i]])
    atomic.write_text(folder / MANIFEST, buf.getvalue())


def list_samples(folder: Path, n: int) -> list[Path]:
    """The first ``n`` sample files of ``folder`` by manifest index; ValueError when it holds fewer."""
    rows = read_manifest(folder)
    if len(rows) < n:
        raise ValueError(f"{folder} holds {len(rows)} GAN samples, {n} were asked for")
    return [Path(folder) / rows[i][0] for i in sorted(rows)[:n]]


def samples_ready(folder: Path, n: int, seed: int) -> bool:
    """True when images 0..n-1 drawn with ``seed`` are all listed in the manifest and on disk."""
    rows = read_manifest(folder)
    return all(i in rows and rows[i][1] == seed and (Path(folder) / rows[i][0]).is_file() for i in range(n))


def _read_settings(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[B, 3, S, S]`` in [-1, 1] → ``[B, S, S, 3] uint8``."""
    x = ((images.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _sampler(generator: Generator, device: torch.device) -> Generator:
    """A copy in train mode: BN normalises with the chunk's own statistics (the LSRO sampler) and the caller's
    generator (and its running statistics) stays untouched."""
    return copy.deepcopy(generator).to(device).train()


@torch.no_grad()
def draw(generator: Generator, n: int, *, seed: int, device: torch.device, batch_size: int = 64) -> torch.Tensor:
    """Samples 0..n-1 in memory, ``[n, 3, S, S] uint8`` on the CPU: the pixels :func:`sample_to_folder` writes for
    the same seed and batch size (for a quality figure without the files)."""
    net = _sampler(generator, device)
    chunks = [_to_uint8(net(sample_z(seed, range(s, s + batch_size), generator.z_dim).to(device)))
              for s in range(0, n, batch_size)]
    pixels = np.concatenate(chunks)[:n] if chunks else np.zeros((0, 1, 1, 3), np.uint8)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


def _write_png(path: Path, pixels: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    atomic.write_bytes(path, buf.getvalue())


@torch.no_grad()
def sample_to_folder(
    generator: Generator,
    n: int,
    out_dir: Path,
    *,
    seed: int,
    batch_size: int = 64,
    device: torch.device,
    start: int = 0,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Make ``out_dir`` hold samples ``start..n-1`` as ``000000.png``… at the GAN's native size.

    Images already listed in ``manifest.csv`` (``index,file,seed``) for the same seed, batch size
    and generator are kept; only the missing ones are drawn. The manifest is rewritten atomically
    every few seconds and at the end, so a killed call loses at most that much work.
    ``on_progress`` gets ``{"type": "sampling", "done", "total"}`` (images written / to write).
    Returns the number of images written. Raises :class:`Stopped` when ``should_stop()`` turns True.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"seed": seed, "batch_size": batch_size, "generator": generator_digest(generator)}
    settings_path = out_dir / SETTINGS
    rows = read_manifest(out_dir)
    if _read_settings(settings_path) != settings:
        rows = {}
        _write_manifest(out_dir, rows)  # invalidate before the settings change, in this order
        atomic.write_json(settings_path, settings)
    missing = [i for i in range(start, n) if not (i in rows and (out_dir / rows[i][0]).is_file())]
    if not missing:
        return 0

    net = _sampler(generator, device)
    wanted = set(missing)
    written = 0
    last_report = time.monotonic()
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for chunk in sorted({i // batch_size for i in missing}):
            indices = range(chunk * batch_size, (chunk + 1) * batch_size)
            pixels = _to_uint8(net(sample_z(seed, indices, generator.z_dim).to(device)))
            todo = [(i, pixels[k]) for k, i in enumerate(indices) if i in wanted]
            names = {i: f"{i:06d}.png" for i, _ in todo}
            list(pool.map(lambda item: _write_png(out_dir / names[item[0]], item[1]), todo))
            for i, _ in todo:
                rows[i] = (names[i], seed)
            written += len(todo)
            faults.point("gan-sample", done=written)
            stop = should_stop is not None and should_stop()
            if stop or time.monotonic() - last_report >= _REPORT_EVERY_S:
                _write_manifest(out_dir, rows)
                last_report = time.monotonic()
                if on_progress is not None:
                    on_progress({"type": "sampling", "done": written, "total": len(missing)})
            if stop:
                raise Stopped(f"GAN sampling stopped after {written}/{len(missing)} images")
    _write_manifest(out_dir, rows)
    if on_progress is not None:
        on_progress({"type": "sampling", "done": written, "total": len(missing)})
    return written
