"""GAN sampling to PNG: incremental, deterministic, LSRO batch-statistics semantics, manifest."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cpl.config import GanConfig
from cpl.engine.control import Stopped
from cpl.engine.seeding import make_generator
from cpl.gan.dcgan import Generator, build_models
from cpl.gan.sample import list_samples, read_manifest, sample_to_folder, sample_z

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def _generator(seed: int = 0) -> Generator:
    g, _ = build_models(GanConfig(image_size=64, z_dim=16, base_channels=8), make_generator(seed, "gan-init"))
    return g.eval()


def _png_bytes(folder: Path, n: int) -> list[bytes]:
    return [(folder / f"{i:06d}.png").read_bytes() for i in range(n)]


def test_incremental_sampling_equals_a_fresh_run(tmp_path: Path) -> None:
    g = _generator()
    inc, fresh = tmp_path / "inc", tmp_path / "fresh"
    assert sample_to_folder(g, 10, inc, seed=5, batch_size=4, device=CPU) == 10
    first = _png_bytes(inc, 10)
    assert sample_to_folder(g, 15, inc, seed=5, batch_size=4, device=CPU) == 5  # only the new ones
    assert _png_bytes(inc, 10) == first
    assert sample_to_folder(g, 15, fresh, seed=5, batch_size=4, device=CPU) == 15
    assert _png_bytes(inc, 15) == _png_bytes(fresh, 15)
    assert sample_to_folder(g, 15, inc, seed=5, batch_size=4, device=CPU) == 0
    assert read_manifest(inc) == {i: (f"{i:06d}.png", 5) for i in range(15)}
    assert (inc / "manifest.csv").read_text().splitlines()[:2] == ["index,file,seed", "0,000000.png,5"]
    img = Image.open(inc / "000007.png")
    assert img.size == (64, 64) and img.mode == "RGB"
    assert len(set(_png_bytes(inc, 15))) == 15  # every z gives its own image


def test_seed_and_generator_change_the_images(tmp_path: Path) -> None:
    g = _generator()
    sample_to_folder(g, 4, tmp_path / "a", seed=1, batch_size=4, device=CPU)
    sample_to_folder(g, 4, tmp_path / "b", seed=2, batch_size=4, device=CPU)
    a, b = _png_bytes(tmp_path / "a", 4), _png_bytes(tmp_path / "b", 4)
    assert all(x != y for x, y in zip(a, b))
    # The same folder with another generator: the old files are stale and all are redrawn.
    assert sample_to_folder(_generator(seed=9), 4, tmp_path / "a", seed=1, batch_size=4, device=CPU) == 4
    assert _png_bytes(tmp_path / "a", 4) != a


def test_batch_statistics_as_the_lsro_sampler_and_generator_untouched(tmp_path: Path) -> None:
    g = _generator()
    before = copy.deepcopy(g.state_dict())
    sample_to_folder(g, 4, tmp_path, seed=3, batch_size=4, device=CPU)
    assert not g.training and all(torch.equal(v, before[k]) for k, v in g.state_dict().items())
    with torch.no_grad():
        x = copy.deepcopy(g).train()(sample_z(3, range(4), 16))
    expected = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    got = np.stack([np.asarray(Image.open(tmp_path / f"{i:06d}.png")) for i in range(4)])
    assert np.array_equal(got, expected)
    # eval-mode BN (running statistics of a fresh net) would give visibly different images
    with torch.no_grad():
        x_eval = g(sample_z(3, range(4), 16))
    assert (x_eval - x).abs().max() > 0.05


def test_sample_z_is_uniform_and_per_index() -> None:
    z = sample_z(0, range(2000), 16)
    assert z.shape == (2000, 16) and z.min() >= -1 and z.max() < 1
    assert abs(z.mean().item()) < 0.02 and abs(z.var().item() - 1 / 3) < 0.01
    assert torch.equal(sample_z(0, [1500, 3], 16), z[[1500, 3]])


def test_stop_keeps_finished_images_and_resume_completes(tmp_path: Path) -> None:
    g = _generator()
    records: list[dict] = []
    with pytest.raises(Stopped):
        sample_to_folder(g, 12, tmp_path, seed=0, batch_size=4, device=CPU, should_stop=lambda: True,
                         on_progress=records.append)
    assert sorted(read_manifest(tmp_path)) == [0, 1, 2, 3]
    assert records == [{"type": "sampling", "done": 4, "total": 12}]
    assert sample_to_folder(g, 12, tmp_path, seed=0, batch_size=4, device=CPU) == 8


def test_start_limits_the_range_written(tmp_path: Path) -> None:
    g = _generator()
    assert sample_to_folder(g, 10, tmp_path, seed=0, batch_size=4, device=CPU, start=6) == 4
    assert sorted(read_manifest(tmp_path)) == [6, 7, 8, 9]
    assert sample_to_folder(g, 10, tmp_path / "all", seed=0, batch_size=4, device=CPU) == 10
    assert not (tmp_path / "000005.png").exists()
    partial = [(tmp_path / f"{i:06d}.png").read_bytes() for i in range(6, 10)]
    assert partial == _png_bytes(tmp_path / "all", 10)[6:]


def test_list_samples(tmp_path: Path) -> None:
    sample_to_folder(_generator(), 6, tmp_path, seed=0, batch_size=4, device=CPU)
    assert list_samples(tmp_path, 3) == [tmp_path / "000000.png", tmp_path / "000001.png", tmp_path / "000002.png"]
    assert len(list_samples(tmp_path, 6)) == 6
    with pytest.raises(ValueError, match="holds 6 GAN samples, 7 were asked"):
        list_samples(tmp_path, 7)


def test_draw_gives_the_pixels_sample_to_folder_writes(tmp_path: Path) -> None:
    """cpl.gan.sample.draw (the quality figure of tools/gan_curve.py) holds, in memory, exactly the images the
    sampler writes as PNG files, and leaves the generator's running statistics untouched."""
    from cpl.gan.sample import draw

    g = _generator()
    before = copy.deepcopy(g.state_dict())
    sample_to_folder(g, 70, tmp_path, seed=3, device=CPU)  # 70: a partial last chunk of 64
    files = list_samples(tmp_path, 70)
    want = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    got = draw(g, 70, seed=3, device=CPU)
    assert got.shape == (70, 3, *want.shape[1:3]) and got.dtype == torch.uint8
    assert np.array_equal(got.permute(0, 2, 3, 1).numpy(), want)
    assert all(torch.equal(v, before[k]) for k, v in g.state_dict().items())
