"""``data.cache: disk``: the decoded-image cache on disk, memory-mapped. Same pixels as decoding into memory, written
once and atomically, keyed by the files; a run on it (killed mid-epoch and resumed) equals an in-memory run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_builders import jpeg, make_folders
from test_resume import _args, _assert_same, _killed, _reference, _resume

from cpl.data import image_cache
from cpl.data.image_cache import CachedImages, cached_images
from cpl.data.images import ImageError, load_images


@pytest.fixture
def images(tmp_path: Path) -> list[str]:
    root = make_folders(tmp_path / "people", {f"p{i}": 3 for i in range(5)})
    return sorted(str(p) for p in root.rglob("*.jpg"))


def test_cached_pixels_equal_decoded_ones_and_are_written_once(tmp_path: Path, images: list[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_cache, "CHUNK", 4)  # several chunks: the file is written piece by piece
    cache = tmp_path / "cache"
    got = cached_images(images, 12, 6, cache)
    want = load_images(images, 12, 6)
    assert isinstance(got, CachedImages) and got.shape == (15, 3, 12, 6) and len(got) == 15
    assert torch.equal(got.gather(torch.arange(15)), want)
    idx = torch.tensor([14, 0, 3, 4, 5, 9, 9])  # runs of consecutive rows, out of order, repeated
    assert torch.equal(got.gather(idx), want[idx]) and got.gather(idx[:0]).shape == (0, 3, 12, 6)
    with pytest.raises(IndexError, match="outside"):
        got.gather(torch.tensor([15]))
    [entry] = list(cache.iterdir())
    assert entry.name.endswith("-15x12x6.npy")
    stamp = entry.stat().st_mtime_ns
    again = cached_images(images, 12, 6, cache)
    assert torch.equal(again.gather(torch.arange(15)), want) and entry.stat().st_mtime_ns == stamp
    assert len(list(cache.iterdir())) == 1
    read = again.gather(torch.arange(15))
    read[0] = 0  # a read is a copy: the file keeps its pixels
    assert torch.equal(cached_images(images, 12, 6, cache).gather(torch.arange(15)), want)
    assert len({p.name for p in cache.iterdir()}) == 1
    cached_images(images, 16, 8, cache)  # another size, another entry
    assert len(list(cache.iterdir())) == 2


def test_a_changed_file_gets_a_new_entry(tmp_path: Path, images: list[str]) -> None:
    cache = tmp_path / "cache"
    cached_images(images, 12, 6, cache)
    Path(images[3]).write_bytes(jpeg(99))
    got = cached_images(images, 12, 6, cache)
    assert torch.equal(got.gather(torch.arange(15)), load_images(images, 12, 6)) and len(list(cache.iterdir())) == 2


def test_a_bad_image_leaves_nothing_behind(tmp_path: Path, images: list[str]) -> None:
    Path(images[7]).write_bytes(jpeg(0)[:30])
    cache = tmp_path / "cache"
    with pytest.raises(ImageError, match=os.path.basename(images[7])):
        cached_images(images, 12, 6, cache)
    assert list(cache.iterdir()) == []
    assert cached_images([], 12, 6, cache).shape == (0, 3, 12, 6)


@pytest.mark.slow  # two CLI runs and a resume (~80 s)
@pytest.mark.timeout(900)
def test_disk_cache_run_killed_and_resumed_equals_the_in_memory_run(tmp_path: Path) -> None:
    ref, data = _reference(tmp_path)  # data.cache: memory
    root = tmp_path / "disk"
    run = root / "run"
    _killed(_args(root, data, run) + ["--set", "data.cache=disk"], "kill:train:epoch=1:iter=2")
    entries = list((root / "_cache" / "images").glob("*.npy"))
    assert len(entries) == 4  # train, query, gallery and the GAN samples
    assert all(np.load(e, mmap_mode="r").dtype == np.uint8 for e in entries)
    _resume(root, run)
    _assert_same(ref, run)
