"""Image sources (cpl/data/image_source.py): rows of tensors and of the memory-mapped disk cache, read without one
concatenated copy. Reading through them gives the bytes of the concatenated tensor, so training on the disk cache
(same seed) gives the weights and pseudo-labels of training in memory, and resumes to them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_engine import _cfg, _data, _trainer, assert_same_training, resumed_after_first_epoch

from cpl.data.image_cache import CachedImages
from cpl.data.image_source import Concat, Rows, as_source, chunks, on_device
from cpl.engine.features import extract, extract_shared
from cpl.engine.trainer import TrainData
from cpl.models.reid import ReIDNet

pytestmark = pytest.mark.usefixtures("one_thread")


def _mapped(images: torch.Tensor, path: Path) -> CachedImages:
    """``images`` written to ``path`` as a disk-cache entry and read back as the cache reads its entries."""
    np.save(path, images.numpy())
    return CachedImages(path)


def _on_disk(data: TrainData, folder: Path) -> TrainData:
    """``data`` laid out as stage ``train`` reads a disk-cache run: the labeled images are rows ``keep`` of a mapped
    training split that holds other images too, followed by the unlabeled images of a second mapped file."""
    lab = data.images.gather(torch.arange(data.num_labeled))
    unl = data.images.gather(torch.arange(data.num_labeled, len(data.images)))
    keep = torch.randperm(len(lab) + 5, generator=torch.Generator().manual_seed(1))[:len(lab)]
    split = torch.zeros(len(lab) + 5, *lab.shape[1:], dtype=torch.uint8)
    split[keep] = lab
    images = Concat([Rows(_mapped(split, folder / "train.npy"), keep), Rows(_mapped(unl, folder / "unl.npy"))])
    return TrainData(images=images, labels=data.labels, num_labeled=data.num_labeled, num_classes=data.num_classes,
                     unlabeled_truth=data.unlabeled_truth)


def test_rows_and_concat_read_the_bytes_of_the_concatenated_tensor(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(0, 256, (n, 3, 4, 2), generator=g, dtype=torch.uint8) for n in (7, 5))
    keep = torch.tensor([6, 0, 3, 3, 1])
    whole = torch.cat([a[keep], b])
    src = Concat([Rows(_mapped(a, tmp_path / "a.npy"), keep), Rows(b), Rows(b[:0])])
    assert src.shape == whole.shape and len(src) == 10
    idx = torch.tensor([9, 0, 4, 5, 5, 2, 8])  # both parts, out of order, repeated
    assert torch.equal(src.gather(idx), whole[idx])
    assert torch.equal(src.gather(idx[:3] % 5), whole[idx[:3] % 5])  # one part only
    assert torch.equal(Rows(src, torch.arange(5, 10)).gather(torch.tensor([1, 0])), b[[1, 0]])
    assert [(s, len(x)) for s, x in chunks(src, 4)] == [(0, 4), (4, 4), (8, 2)]
    assert torch.equal(torch.cat([x for _, x in chunks(src, 4)]), whole)
    assert as_source(whole).gather(idx).equal(whole[idx]) and as_source(src) is src
    assert on_device(src, torch.device("cpu")) is src  # the CPU reads in place, never a copy
    with pytest.raises(ValueError, match="image size"):
        Concat([Rows(a), Rows(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))])


def test_features_from_a_mapped_source_equal_those_from_memory(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ReIDNet("resnet18", 4, 0.5)
    data = _data()
    mem = torch.cat([x for _, x in chunks(data.images, 8)])
    disk = _on_disk(data, tmp_path).images
    want, _ = extract(model, mem, torch.device("cpu"), batch_size=5)
    assert torch.equal(extract(model, disk, torch.device("cpu"), batch_size=5)[0], want)
    assert torch.equal(extract_shared(model, disk, torch.device("cpu"), 0, 1, batch_size=5), want)


@pytest.mark.parametrize("assignment", ["argmax", "sinkhorn"])  # sinkhorn: the per-epoch unlabeled feature pass
def test_training_on_the_disk_cache_equals_training_in_memory(tmp_path: Path, assignment: str) -> None:
    cfg = _cfg()
    cfg.train.assignment = assignment
    memory, disk = _trainer(cfg, _data(truth=True)), _trainer(cfg, _on_disk(_data(truth=True), tmp_path))
    memory.fit()
    disk.fit()
    assert disk.state.history_labels[1].max() >= 0  # pseudo-labels were given, and compared below
    assert (disk.set_targets is not None) == (assignment == "sinkhorn")  # from the features of the mapped images
    assert_same_training(memory, disk)


def test_a_disk_cache_run_resumed_equals_the_uninterrupted_in_memory_run(tmp_path: Path) -> None:
    full = _trainer(_cfg(), _data())
    full.fit()
    assert_same_training(full, resumed_after_first_epoch(_cfg(), lambda: _on_disk(_data(), tmp_path)))


def test_the_stages_hand_the_trainer_the_same_images_from_the_disk_cache(tmp_path: Path) -> None:
    """Stages data, unlabeled (a holdout: rows of the training split) and train's build with data.cache=disk: the
    splits are cache files read by row, and the trainer's source holds the bytes of the in-memory run's."""
    from test_controls import _context

    from cpl.pseudo import get_strategy
    from cpl.stages.data import load_data
    from cpl.stages.train import _build
    from cpl.stages.unlabeled import build_unlabeled

    built = []
    for cache in ("memory", "disk"):
        ctx = _context(tmp_path, "train.method=cpl", f"data.cache={cache}")
        load_data(ctx)
        build_unlabeled(ctx)
        built.append((ctx, _build(ctx, get_strategy(ctx.cfg.train))[2]))
    (mem_ctx, mem), (disk_ctx, disk) = built
    assert isinstance(disk_ctx.data.train_imgs, CachedImages) and isinstance(disk_ctx.data.query_imgs, CachedImages)
    assert isinstance(mem_ctx.data.train_imgs, torch.Tensor) and disk.num_unlabeled == mem.num_unlabeled > 0
    every = torch.arange(len(mem.images))
    assert torch.equal(disk.images.gather(every), mem.images.gather(every))
    rows = torch.arange(len(mem_ctx.data.train_imgs))
    assert torch.equal(disk_ctx.data.train_imgs.gather(rows), mem_ctx.data.train_imgs)  # what the DCGAN trains on
