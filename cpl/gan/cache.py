"""A trained DCGAN and its samples, shared by every run with the same data, GAN settings and seed.

Layout of ``<cache_root>/<key>/``:

* ``lock``: ``fcntl.flock`` target; whoever holds it trains or samples, others wait.
* ``gan.json``: config, dataset fingerprint, seed, ``state`` (training | finished), ``epochs_done``,
  ``train_time_s``, the generator's SHA-256, ``samples`` (how many are drawn), ``quality`` (Fréchet distance
  of the samples to the real images and its real-vs-real floor, :mod:`cpl.gan.quality`).
* ``train/``: training checkpoints while training (removed once the generator is saved).
* ``generator.pt``: the finished generator (``{"format", "config", "G"}``).
* ``samples/``: ``000000.png``… and ``manifest.csv`` (see :mod:`cpl.gan.sample`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from cpl.config import GanConfig
from cpl.data.image_source import ImageSource
from cpl.engine.control import Stopped
from cpl.gan.dcgan import Generator
from cpl.gan.sample import read_manifest, sample_to_folder, samples_ready
from cpl.gan.train import train_gan
from cpl.runs import atomic

# Bump when a code change makes earlier cached GANs or samples different from what the code now produces.
CACHE_VERSION = 1
INFO = "gan.json"
GENERATOR = "generator.pt"
SAMPLES = "samples"
TRAIN = "train"
LOCK = "lock"
_LOCK_POLL_S = 0.5


def gan_key(dataset_fingerprint: str, cfg: GanConfig, seed: int) -> str:
    """Stable folder name, e.g. ``dcgan128-e30-s0-1a2b3c4d5e6f``: readable prefix + hash of the
    fingerprint, every GanConfig field and the seed."""
    payload = {"version": CACHE_VERSION, "fingerprint": dataset_fingerprint, "gan": dataclasses.asdict(cfg),
               "seed": seed}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
    return f"dcgan{cfg.image_size}-e{cfg.epochs}-s{seed}-{digest}"


@contextlib.contextmanager
def _locked(path: Path, should_stop: Callable[[], bool] | None) -> Iterator[None]:
    """Hold an exclusive flock on ``path``; polls so a waiting run can still be stopped."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if should_stop is not None and should_stop():
                    raise Stopped(f"stopped while waiting for another run to finish the GAN in {path.parent}")
                time.sleep(_LOCK_POLL_S)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock (also when the process dies)


def read_info(key_dir: Path) -> dict[str, Any] | None:
    """Contents of ``<key>/gan.json``, or None when absent or unreadable."""
    try:
        return json.loads((Path(key_dir) / INFO).read_text())
    except (OSError, ValueError):
        return None


def _load_generator(
    key_dir: Path, info: dict[str, Any] | None, cfg: GanConfig, device: torch.device
) -> Generator | None:
    """The finished generator, or None when there is none or its file does not match gan.json."""
    path = key_dir / GENERATOR
    if info is None or info.get("state") != "finished" or not path.is_file():
        return None
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != info.get("generator_sha256"):
        return None
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    g = Generator(cfg.image_size, cfg.z_dim, cfg.base_channels)
    g.load_state_dict(state["G"])
    return g.to(device).eval()


def _train(
    images: torch.Tensor | ImageSource,
    dataset_fingerprint: str,
    cfg: GanConfig,
    key_dir: Path,
    info: dict[str, Any] | None,
    *,
    seed: int,
    device: torch.device,
    on_progress: Callable[[dict[str, Any]], None] | None,
    should_stop: Callable[[], bool] | None,
) -> Generator:
    """Train (resuming any partial run in ``key_dir/train``), save the generator, mark gan.json finished."""
    now = time.time()
    base = info if info is not None and info.get("state") == "training" else {}
    info = {
        "key": key_dir.name, "fingerprint": dataset_fingerprint, "seed": seed, "config": dataclasses.asdict(cfg),
        "state": "training", "epochs": cfg.epochs, "epochs_done": base.get("epochs_done", 0),
        "train_time_s": base.get("train_time_s", 0.0), "num_images": len(images),
        "created": base.get("created", now), "updated": now, "finished": None, "device": str(device),
        "torch": torch.__version__, "generator_sha256": None,
    }
    atomic.write_json(key_dir / INFO, info)
    spent_before = info["train_time_s"]
    session_start = time.monotonic()

    def record(**fields: Any) -> None:
        info.update(fields, train_time_s=spent_before + time.monotonic() - session_start, updated=time.time())
        atomic.write_json(key_dir / INFO, info)

    def progress(rec: dict[str, Any]) -> None:
        if on_progress is not None:
            on_progress(rec)
        if rec["step"] == rec["steps"]:  # reported after the epoch's checkpoint is on disk
            record(epochs_done=rec["epoch"] + 1)

    try:
        g = train_gan(images, cfg, key_dir / TRAIN, seed=seed, device=device, on_progress=progress,
                      should_stop=should_stop)
    except BaseException:
        record()
        raise
    buf = io.BytesIO()
    torch.save({"format": 1, "config": dataclasses.asdict(cfg), "G": g.state_dict()}, buf)
    atomic.write_bytes(key_dir / GENERATOR, buf.getvalue())
    record(state="finished", epochs_done=cfg.epochs, finished=time.time(),
           generator_sha256=hashlib.sha256(buf.getvalue()).hexdigest())
    return g


def ensure_samples(
    images: torch.Tensor | ImageSource,
    dataset_fingerprint: str,
    cfg: GanConfig,
    n: int,
    cache_root: Path,
    *,
    seed: int,
    device: torch.device,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Path:
    """Return ``<cache_root>/<key>/samples`` holding at least ``n`` DCGAN samples and their manifest.

    Trains the GAN on ``images`` ``[N, 3, H, W] uint8`` (a tensor or an image source, read by row) unless a
    finished one is cached (resuming a partial training), then draws the missing samples. An exclusive lock on
    the key folder makes a concurrent caller wait and then reuse the result. ``on_progress`` receives the ``gan``
    records of :func:`cpl.gan.train.train_gan` and the ``sampling`` records of
    :func:`cpl.gan.sample.sample_to_folder`; :class:`Stopped` is raised when ``should_stop()`` turns True (also
    while waiting for the lock).
    """
    key_dir = Path(cache_root) / gan_key(dataset_fingerprint, cfg, seed)
    samples_dir = key_dir / SAMPLES
    key_dir.mkdir(parents=True, exist_ok=True)
    if n <= 0:
        samples_dir.mkdir(exist_ok=True)
        return samples_dir
    with _locked(key_dir / LOCK, should_stop):
        info = read_info(key_dir)
        finished = info is not None and info.get("state") == "finished"
        if finished and samples_ready(samples_dir, n, seed):
            return samples_dir
        g = _load_generator(key_dir, info, cfg, device) if finished else None
        if g is None:
            g = _train(images, dataset_fingerprint, cfg, key_dir, info, seed=seed, device=device,
                       on_progress=on_progress, should_stop=should_stop)
        shutil.rmtree(key_dir / TRAIN, ignore_errors=True)  # the generator alone is kept
        sample_to_folder(g, n, samples_dir, seed=seed, device=device, should_stop=should_stop,
                         on_progress=on_progress)
        info = read_info(key_dir) or {}
        atomic.write_json(key_dir / INFO, {**info, "samples": len(read_manifest(samples_dir))})
        _ensure_quality(key_dir, images, seed, device)
    return samples_dir


def _ensure_quality(key_dir: Path, images: torch.Tensor | ImageSource, seed: int, device: torch.device) -> None:
    """Add the GAN's Fréchet distance and its real-vs-real floor to gan.json once (see cpl.gan.quality)."""
    from cpl.data.images import load_images
    from cpl.gan.quality import gan_quality

    info = read_info(key_dir) or {}
    if "quality" in info:
        return
    manifest = read_manifest(key_dir / SAMPLES)
    files = [str(key_dir / SAMPLES / manifest[i][0]) for i in sorted(manifest)[:1000]]
    if len(files) < 2 or len(images) < 4:
        return
    size = info.get("config", {}).get("image_size", 64)
    info["quality"] = gan_quality(images, load_images(files, size, size), device, seed=seed)
    atomic.write_json(key_dir / INFO, info)
