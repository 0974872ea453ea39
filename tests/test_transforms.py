"""Batched augmentation: shapes, exactness of flip/crop, determinism, slicing for data parallelism."""

from __future__ import annotations

import torch

from cpl.data.transforms import augment, draw_params, normalize


def _images(n=4, h=8, w=6):
    return torch.arange(n * 3 * h * w, dtype=torch.int64).remainder(251).to(torch.uint8).view(n, 3, h, w)


def test_identity_params_only_normalise():
    x = _images()
    p = draw_params(4, 8, 6, flip=False, pad=0, erasing=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(augment(x, p, pad=0), normalize(x))


def test_flip_and_crop_are_exact():
    x = _images()
    p = draw_params(4, 8, 6, flip=True, pad=2, erasing=0.0, generator=torch.Generator().manual_seed(3))
    out = augment(x, p, pad=2)
    ref = torch.nn.functional.pad(normalize(x), (2, 2, 2, 2))
    for i in range(4):
        img = ref[i].flip(2) if p.flip[i] else ref[i]
        dy, dx = p.offset[i].tolist()
        assert torch.allclose(out[i], img[:, dy:dy + 8, dx:dx + 6])


def test_random_erasing_zeroes_a_box():
    x = torch.full((3, 3, 20, 10), 200, dtype=torch.uint8)
    p = draw_params(3, 20, 10, flip=False, pad=0, erasing=1.0, generator=torch.Generator().manual_seed(1))
    out = augment(x, p, pad=0)
    for i in range(3):
        y0, x0, h, w = p.box[i].tolist()
        assert torch.all(out[i, :, y0:y0 + h, x0:x0 + w] == 0)
        assert int((out[i, 0] == 0).sum()) == h * w


def test_params_are_deterministic_and_sliceable():
    a = draw_params(8, 16, 8, flip=True, pad=3, erasing=0.5, generator=torch.Generator().manual_seed(7))
    b = draw_params(8, 16, 8, flip=True, pad=3, erasing=0.5, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("flip", "offset", "erase", "box"))
    x = _images(8, 16, 8)
    whole = augment(x, a, pad=3)
    halves = torch.cat([augment(x[:4], a.slice(0, 4), pad=3), augment(x[4:], a.slice(4, 8), pad=3)])
    assert torch.equal(whole, halves)
