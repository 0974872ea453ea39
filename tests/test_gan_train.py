"""DCGAN training: learning signal, CPU determinism, bit-exact resume, checkpoint fallback, divergence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cpl.config import GanConfig
from cpl.data.image_source import Concat, Rows
from cpl.engine.checkpoints import list_checkpoints as _list
from cpl.engine.checkpoints import load_latest
from cpl.engine.control import NonFiniteLoss, Stopped
from cpl.engine.seeding import make_generator
from cpl.gan.dcgan import build_models
from cpl.gan.train import PREFIX, prepare_images, train_gan

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(**kw: object) -> GanConfig:
    base = dict(image_size=64, epochs=2, batch_size=8, z_dim=16, base_channels=8, max_steps_per_epoch=3)
    base.update(kw)
    return GanConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """32 person-shaped (32×16) uint8 images: smooth colour gradients plus noise."""
    gen = torch.Generator().manual_seed(7)
    ramp = torch.linspace(0, 1, 32).view(1, 1, 32, 1)
    colours = torch.rand(32, 3, 1, 1, generator=gen)
    x = 255 * (0.6 * colours * ramp + 0.3 * torch.rand(32, 3, 32, 16, generator=gen))
    return x.round().to(torch.uint8)


def _final_state(work_dir: Path) -> dict:
    loaded = load_latest(work_dir, PREFIX)
    assert loaded is not None
    return loaded[0]


def _assert_same_state(a: dict, b: dict) -> None:
    for part in ("G", "D"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    for part in ("opt_g", "opt_d"):
        for pid, st in a[part]["state"].items():
            for k, v in st.items():
                assert torch.equal(v, b[part]["state"][pid][k]), f"{part}[{pid}].{k} differs"


def test_prepare_images_resizes_once_to_square_uint8(images: torch.Tensor) -> None:
    out = prepare_images(images, 64, CPU)
    assert out.shape == (32, 3, 64, 64) and out.dtype == torch.uint8
    flat = prepare_images(torch.full((2, 3, 40, 20), 200, dtype=torch.uint8), 64, CPU)
    assert torch.all(flat == 200)  # bilinear resizing keeps a constant image constant
    with pytest.raises(ValueError, match="uint8"):
        prepare_images(images.float(), 64, CPU)


def test_prepare_images_reads_an_image_source_by_chunk_to_the_same_pixels(images: torch.Tensor) -> None:
    # The DCGAN of a data.cache=disk run reads the split by row, never as one tensor; the pixels must not change.
    keep = torch.tensor([5, 3, 30, 0, 7, 7, 12])
    source = Concat([Rows(images, keep), Rows(images[20:])])
    want = prepare_images(torch.cat([images[keep], images[20:]]), 64, CPU)
    got = prepare_images(source, 64, CPU, chunk=4)  # chunks straddle the two parts
    assert got.shape == (19, 3, 64, 64) and torch.equal(got, want)


def test_training_learns_and_reports_progress(tmp_path: Path) -> None:
    # A constant grey dataset is trivially separable: D must pull ahead of the freshly initialised G.
    flat = torch.full((64, 3, 32, 16), 200, dtype=torch.uint8)
    cfg = tiny_cfg(epochs=1, max_steps_per_epoch=8)
    records: list[dict] = []
    g = train_gan(flat, cfg, tmp_path, seed=0, device=CPU, on_progress=records.append, log_every=1)
    assert [r["step"] for r in records] == list(range(1, 9))
    assert all(r["type"] == "gan" and r["epoch"] == 0 and r["steps"] == 8 and r["epochs"] == 1 for r in records)
    assert all(torch.isfinite(torch.tensor([r["loss_d"], r["loss_g"]])).all() for r in records)
    assert records[-1]["loss_d"] < 0.8 * records[0]["loss_d"]
    assert records[-1]["d_real"] > records[-1]["d_fake"] + 0.2
    assert not g.training


def test_weights_change_and_progress_cadence(tmp_path: Path, images: torch.Tensor) -> None:
    cfg = tiny_cfg(epochs=1, max_steps_per_epoch=4)
    g0, d0 = build_models(cfg, make_generator(0, "gan-init"))  # what train_gan starts from
    records: list[dict] = []
    g = train_gan(images, cfg, tmp_path, seed=0, device=CPU, on_progress=records.append, log_every=3)
    assert [r["step"] for r in records] == [3, 4]  # every log_every steps and at the epoch's end
    for name, p in g.state_dict().items():
        if name.endswith("weight"):
            assert not torch.equal(p, g0.state_dict()[name]), f"G.{name} did not train"
    d = _final_state(tmp_path)["D"]
    assert all(not torch.equal(d[k], v) for k, v in d0.state_dict().items() if k.endswith("weight"))


def test_cpu_training_is_deterministic(tmp_path: Path, images: torch.Tensor) -> None:
    cfg = tiny_cfg()
    train_gan(images, cfg, tmp_path / "a", seed=3, device=CPU)
    train_gan(images, cfg, tmp_path / "b", seed=3, device=CPU)
    train_gan(images, cfg, tmp_path / "c", seed=4, device=CPU)
    a, b, c = (_final_state(tmp_path / x) for x in "abc")
    _assert_same_state(a, b)
    assert not torch.equal(a["G"]["fc.weight"], c["G"]["fc.weight"])


class Killed(Exception):
    pass


def test_resume_after_kill_equals_uninterrupted(tmp_path: Path, images: torch.Tensor) -> None:
    cfg = tiny_cfg()
    train_gan(images, cfg, tmp_path / "ref", seed=0, device=CPU)

    def die_in_epoch_1(rec: dict) -> None:
        if rec["epoch"] == 1 and rec["step"] == 2:
            raise Killed  # weights in memory have moved on; only the epoch-0 checkpoint is on disk

    with pytest.raises(Killed):
        train_gan(images, cfg, tmp_path / "run", seed=0, device=CPU, on_progress=die_in_epoch_1, log_every=1)
    assert [p.name.split("-")[1] for p in _list(tmp_path / "run", PREFIX)] == ["e0001"]
    records: list[dict] = []
    g = train_gan(images, cfg, tmp_path / "run", seed=0, device=CPU, on_progress=records.append, log_every=1)
    assert [(r["epoch"], r["step"]) for r in records] == [(1, 1), (1, 2), (1, 3)]
    ref, run = _final_state(tmp_path / "ref"), _final_state(tmp_path / "run")
    _assert_same_state(ref, run)
    assert all(torch.equal(v, ref["G"][k]) for k, v in g.state_dict().items())


def test_stop_mid_epoch_saves_and_resumes_exactly(tmp_path: Path, images: torch.Tensor) -> None:
    cfg = tiny_cfg()
    train_gan(images, cfg, tmp_path / "ref", seed=0, device=CPU)
    calls = iter(range(100))
    with pytest.raises(Stopped, match="epoch 1/2, step 2/3"):
        train_gan(images, cfg, tmp_path / "run", seed=0, device=CPU, should_stop=lambda: next(calls) == 1)
    state = _final_state(tmp_path / "run")
    assert (state["epoch"], state["step"]) == (0, 2) and state["rng"] is not None
    train_gan(images, cfg, tmp_path / "run", seed=0, device=CPU)
    _assert_same_state(_final_state(tmp_path / "ref"), _final_state(tmp_path / "run"))


def test_finished_training_returns_without_steps(tmp_path: Path, images: torch.Tensor) -> None:
    cfg = tiny_cfg(epochs=3, max_steps_per_epoch=1)
    g1 = train_gan(images, cfg, tmp_path, seed=0, device=CPU)
    assert len(_list(tmp_path, PREFIX)) == 2  # the last two of three
    records: list[dict] = []
    g2 = train_gan(images, cfg, tmp_path, seed=0, device=CPU, on_progress=records.append)
    assert records == []
    assert all(torch.equal(v, g2.state_dict()[k]) for k, v in g1.state_dict().items())


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path: Path, images: torch.Tensor) -> None:
    cfg = tiny_cfg()
    train_gan(images, cfg, tmp_path / "ref", seed=0, device=CPU)
    run = tmp_path / "run"
    train_gan(images, cfg, run, seed=0, device=CPU)
    older, newest = _list(run, PREFIX)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte deep inside the tensor data
    newest.write_bytes(bytes(data))
    state, path = load_latest(run, PREFIX)  # type: ignore[misc]
    assert path == older and state["epoch"] == 1
    newest.write_bytes(bytes(data[:1000]))  # a truncated file too
    assert load_latest(run, PREFIX)[1] == older  # type: ignore[index]
    records: list[dict] = []
    train_gan(images, cfg, run, seed=0, device=CPU, on_progress=records.append)
    assert {r["epoch"] for r in records} == {1}  # epoch 1 was re-trained
    _assert_same_state(_final_state(tmp_path / "ref"), _final_state(run))
    assert len(_list(run, PREFIX)) == 2


def test_checkpoint_of_other_settings_is_refused(tmp_path: Path, images: torch.Tensor) -> None:
    train_gan(images, tiny_cfg(epochs=1), tmp_path, seed=0, device=CPU)
    with pytest.raises(ValueError, match="other settings"):
        train_gan(images, tiny_cfg(epochs=1, lr=1e-3), tmp_path, seed=0, device=CPU)


def test_non_finite_loss_names_epoch_and_step(tmp_path: Path, images: torch.Tensor) -> None:
    # An infinite learning rate turns G's weights into NaN at its first update.
    with pytest.raises(NonFiniteLoss, match=r"epoch 1/2, step 1/3"):
        train_gan(images, tiny_cfg(lr=float("inf")), tmp_path, seed=0, device=CPU)
    assert _list(tmp_path, PREFIX) == []  # nothing diverged was saved


def test_too_few_images_is_a_clear_error(tmp_path: Path, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="gan.batch_size=8"):
        train_gan(images[:5], tiny_cfg(), tmp_path, seed=0, device=CPU)


def test_more_epochs_continue_a_finished_run_exactly(tmp_path: Path, images: torch.Tensor) -> None:
    train_gan(images, tiny_cfg(epochs=2), tmp_path / "ref", seed=0, device=CPU)
    train_gan(images, tiny_cfg(epochs=1), tmp_path / "run", seed=0, device=CPU)
    records: list[dict] = []
    train_gan(images, tiny_cfg(epochs=2), tmp_path / "run", seed=0, device=CPU, on_progress=records.append)
    assert {r["epoch"] for r in records} == {1}
    _assert_same_state(_final_state(tmp_path / "ref"), _final_state(tmp_path / "run"))
    with pytest.raises(ValueError, match="more than gan.epochs=1"):
        train_gan(images, tiny_cfg(epochs=1), tmp_path / "run", seed=0, device=CPU)


def test_steps_per_epoch_drop_the_partial_batch_and_respect_the_cap(tmp_path: Path, images: torch.Tensor) -> None:
    # 30 images in batches of 8: three full batches, the last 6 images dropped (as the DCGAN code).
    records: list[dict] = []
    train_gan(images[:30], tiny_cfg(epochs=1, max_steps_per_epoch=0), tmp_path / "uncapped", seed=0, device=CPU,
              on_progress=records.append, log_every=1)
    assert [r["step"] for r in records] == [1, 2, 3] and records[-1]["steps"] == 3
    records.clear()
    train_gan(images, tiny_cfg(epochs=1, max_steps_per_epoch=2), tmp_path / "capped", seed=0, device=CPU,
              on_progress=records.append, log_every=1)
    assert [r["steps"] for r in records] == [2, 2]
    with pytest.raises(ValueError, match=r"at least gan.batch_size=8 images, got 7"):
        train_gan(images[:7], tiny_cfg(), tmp_path / "few", seed=0, device=CPU)
    assert not _list(tmp_path / "few", PREFIX)


def test_a_checkpoint_past_the_asked_epochs_is_refused(tmp_path: Path, images: torch.Tensor) -> None:
    train_gan(images, tiny_cfg(epochs=2, max_steps_per_epoch=1), tmp_path, seed=0, device=CPU)
    with pytest.raises(ValueError, match=r"past epoch 2, more than gan.epochs=1"):
        train_gan(images, tiny_cfg(epochs=1, max_steps_per_epoch=1), tmp_path, seed=0, device=CPU)
