"""Shared GAN cache: stable keys, train once and reuse, resume, locking across processes, real images."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cpl.config import GanConfig
from cpl.engine.control import Stopped
from cpl.gan.cache import ensure_samples, gan_key, read_info
from cpl.gan.sample import list_samples, read_manifest

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")
FINGERPRINT = "synthetic-v1"


def tiny_cfg(**kw: object) -> GanConfig:
    base = dict(image_size=64, epochs=2, batch_size=8, z_dim=16, base_channels=8, max_steps_per_epoch=3)
    base.update(kw)
    return GanConfig(**base)  # type: ignore[arg-type]


def make_images(seed: int = 7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (32, 3, 32, 16), generator=gen, dtype=torch.uint8)


def _files(folder: Path, n: int) -> list[bytes]:
    return [p.read_bytes() for p in list_samples(folder, n)]


def test_gan_key_is_readable_stable_and_covers_every_setting() -> None:
    cfg = tiny_cfg()
    key = gan_key(FINGERPRINT, cfg, 0)
    assert key == gan_key(FINGERPRINT, tiny_cfg(), 0)
    assert key.startswith("dcgan64-e2-s0-") and len(key) == len("dcgan64-e2-s0-") + 12
    others = {gan_key("other-data", cfg, 0), gan_key(FINGERPRINT, cfg, 1)}
    for f in dataclasses.fields(GanConfig):
        value = getattr(cfg, f.name)
        changed = 128 if f.name == "image_size" else value * 2 if value else 1
        others.add(gan_key(FINGERPRINT, dataclasses.replace(cfg, **{f.name: changed}), 0))
    assert key not in others and len(others) == 2 + len(dataclasses.fields(GanConfig))


def test_trains_once_then_reuses_and_extends(tmp_path: Path) -> None:
    cfg, images = tiny_cfg(), make_images()
    records: list[dict] = []
    folder = ensure_samples(images, FINGERPRINT, cfg, 6, tmp_path, seed=0, device=CPU, on_progress=records.append)
    key_dir = tmp_path / gan_key(FINGERPRINT, cfg, 0)
    assert folder == key_dir / "samples"
    assert [(r["epoch"], r["step"]) for r in records if r["type"] == "gan"] == [(0, 3), (1, 3)]
    assert records[-1] == {"type": "sampling", "done": 6, "total": 6}
    info = read_info(key_dir)
    assert info is not None
    assert info["state"] == "finished" and info["epochs_done"] == 2 and info["train_time_s"] > 0
    assert info["fingerprint"] == FINGERPRINT and info["config"] == dataclasses.asdict(cfg)
    assert info["samples"] == 6 and len(info["generator_sha256"]) == 64
    assert not (key_dir / "train").exists()  # checkpoints are dropped once the generator is saved
    first = _files(folder, 6)

    records.clear()
    info_text = (key_dir / "gan.json").read_text()
    assert ensure_samples(images, FINGERPRINT, cfg, 6, tmp_path, seed=0, device=CPU,
                          on_progress=records.append) == folder
    assert records == [] and (key_dir / "gan.json").read_text() == info_text

    assert ensure_samples(images, FINGERPRINT, cfg, 10, tmp_path, seed=0, device=CPU,
                          on_progress=records.append) == folder
    assert [r["type"] for r in records] == ["sampling"] and records[0]["total"] == 4
    assert _files(folder, 6) == first and len(read_manifest(folder)) == 10
    assert read_info(key_dir)["samples"] == 10  # type: ignore[index]


def test_stopped_training_resumes_to_the_same_gan(tmp_path: Path) -> None:
    cfg, images = tiny_cfg(), make_images()
    ref = ensure_samples(images, FINGERPRINT, cfg, 4, tmp_path / "ref", seed=0, device=CPU)
    calls = iter(range(100))
    with pytest.raises(Stopped):
        ensure_samples(images, FINGERPRINT, cfg, 4, tmp_path / "run", seed=0, device=CPU,
                       should_stop=lambda: next(calls) == 3)  # during epoch 1 (0-based)
    key_dir = tmp_path / "run" / gan_key(FINGERPRINT, cfg, 0)
    info = read_info(key_dir)
    assert info is not None and info["state"] == "training" and info["epochs_done"] == 1
    records: list[dict] = []
    run = ensure_samples(images, FINGERPRINT, cfg, 4, tmp_path / "run", seed=0, device=CPU,
                         on_progress=records.append)
    assert [(r["epoch"], r["step"]) for r in records if r["type"] == "gan"] == [(1, 3)]
    assert read_info(key_dir)["created"] == info["created"]  # type: ignore[index]
    assert _files(ref, 4) == _files(run, 4)


def test_waiting_for_the_lock_can_be_stopped(tmp_path: Path) -> None:
    cfg = tiny_cfg()
    key_dir = tmp_path / gan_key(FINGERPRINT, cfg, 0)
    key_dir.mkdir()
    fd = os.open(key_dir / "lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process is training
        start = time.monotonic()
        with pytest.raises(Stopped, match="waiting"):
            ensure_samples(make_images(), FINGERPRINT, cfg, 4, tmp_path, seed=0, device=CPU,
                           should_stop=lambda: time.monotonic() - start > 0.6)
        assert read_info(key_dir) is None  # nothing was trained behind the lock
    finally:
        os.close(fd)


def _worker(cache_root: str, ready_file: str, result_file: str) -> None:
    torch.set_num_threads(1)
    Path(ready_file).write_text("ready")
    gan_records: list[dict] = []
    folder = ensure_samples(make_images(), FINGERPRINT, tiny_cfg(), 6, Path(cache_root), seed=0, device=CPU,
                            on_progress=lambda r: gan_records.append(r) if r["type"] == "gan" else None)
    Path(result_file).write_text(json.dumps({"gan_records": len(gan_records), "folder": str(folder)}))


@pytest.mark.slow  # two processes train a DCGAN (~45 s); the lock itself is tested fast
def test_two_processes_train_once(tmp_path: Path) -> None:
    cfg = tiny_cfg()
    key_dir = tmp_path / gan_key(FINGERPRINT, cfg, 0)
    key_dir.mkdir()
    fd = os.open(key_dir / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # hold the lock until both workers are queued on it
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), str(tmp_path / f"ready{i}"),
                                                str(tmp_path / f"result{i}.json"))) for i in range(2)]
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        os.close(fd)
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    results = [json.loads((tmp_path / f"result{i}.json").read_text()) for i in range(2)]
    assert sorted(r["gan_records"] for r in results) == [0, 2]  # one trained 2 epochs, the other reused
    assert {r["folder"] for r in results} == {str(key_dir / "samples")}
    assert read_info(key_dir)["state"] == "finished"  # type: ignore[index]
    assert sorted(read_manifest(key_dir / "samples")) == list(range(6))


def test_real_images(shared_data: Path, tmp_path: Path) -> None:
    paths = sorted((shared_data / "cuhk01" / "bounding_box_train").glob("*.jpg"))[:16]
    images = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths]))
    images = images.permute(0, 3, 1, 2).contiguous()  # [16, 3, 160, 60] uint8
    cfg = tiny_cfg(epochs=1, max_steps_per_epoch=2)
    records: list[dict] = []
    folder = ensure_samples(images, "cuhk01-16", cfg, 5, tmp_path, seed=0, device=CPU, on_progress=records.append)
    assert all(np.isfinite([r["loss_d"], r["loss_g"]]).all() for r in records if r["type"] == "gan")
    files = list_samples(folder, 5)
    pixels = np.stack([np.asarray(Image.open(f)) for f in files])
    assert pixels.shape == (5, 64, 64, 3) and pixels.std() > 1
