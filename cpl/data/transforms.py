"""Batched tensor augmentation (flip, pad-and-crop, random erasing) and normalisation.

Images live in memory as uint8 [N, 3, H, W] already at the network's input size, so a training batch is
an index into that tensor followed by these ops, on the GPU when training there: no per-epoch decoding.

The random parameters of a batch are drawn on the CPU from a generator seeded by (seed, epoch, iteration)
for the whole global batch; under data parallelism every rank draws the same parameters and applies its
own slice, so a sample is augmented identically whatever the world size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class AugmentParams:
    """Random parameters for B images (CPU tensors; moved to the device by :func:`augment`)."""

    flip: torch.Tensor  # [B] bool
    offset: torch.Tensor  # [B, 2] int64 crop offset (dy, dx) in [0, 2*pad]
    erase: torch.Tensor  # [B] bool
    box: torch.Tensor  # [B, 4] int64 (y0, x0, h, w) of the erased rectangle

    def slice(self, start: int, stop: int) -> AugmentParams:
        """The parameters of images ``start``..``stop - 1`` (a rank's share of the global batch)."""
        return AugmentParams(self.flip[start:stop], self.offset[start:stop], self.erase[start:stop],
                             self.box[start:stop])

    def take(self, index: torch.Tensor) -> AugmentParams:
        """The parameters of the images at ``index`` [B'] int64, in that order."""
        return AugmentParams(self.flip[index], self.offset[index], self.erase[index], self.box[index])


def draw_params(n: int, height: int, width: int, *, flip: bool, pad: int, erasing: float,
                generator: torch.Generator) -> AugmentParams:
    """Draw augmentation parameters for ``n`` images of size height × width."""
    g = generator
    flips = (torch.rand(n, generator=g) < 0.5) if flip else torch.zeros(n, dtype=torch.bool)
    offset = torch.randint(0, 2 * pad + 1, (n, 2), generator=g) if pad > 0 else torch.zeros(n, 2, dtype=torch.long)
    # Random erasing (Zhong et al. 2020): area 2-40 % of the image, aspect ratio 0.3-3.3 (log-uniform).
    erase = torch.rand(n, generator=g) < erasing
    area = height * width * (0.02 + 0.38 * torch.rand(n, generator=g))
    aspect = torch.exp(torch.empty(n).uniform_(-1.2040, 1.2040, generator=g))
    h = torch.sqrt(area * aspect).round().long().clamp(1, height)
    w = torch.sqrt(area / aspect).round().long().clamp(1, width)
    y0 = (torch.rand(n, generator=g) * (height - h + 1).float()).long()
    x0 = (torch.rand(n, generator=g) * (width - w + 1).float()).long()
    return AugmentParams(flips, offset, erase, torch.stack([y0, x0, h, w], dim=1))


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] → float32 normalised with the ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def augment(images: torch.Tensor, params: AugmentParams, pad: int) -> torch.Tensor:
    """Apply ``params`` to uint8 [B, 3, H, W] → normalised float32 [B, 3, H, W] on the images' device."""
    dev = images.device
    b, _, h, w = images.shape
    x = normalize(images)
    flip = params.flip.to(dev)
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if pad > 0:
        # Zero padding in normalised space = padding with the mean colour; then a per-image crop by gather.
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        off = params.offset.to(dev)
        rows = off[:, 0:1] + torch.arange(h, device=dev)[None, :]  # [B, H]
        cols = off[:, 1:2] + torch.arange(w, device=dev)[None, :]  # [B, W]
        bidx = torch.arange(b, device=dev)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if bool(params.erase.any()):
        box = params.box.to(dev)
        yy = torch.arange(h, device=dev)[None, :, None]
        xx = torch.arange(w, device=dev)[None, None, :]
        inside = ((yy >= box[:, 0, None, None]) & (yy < (box[:, 0] + box[:, 2])[:, None, None])
                  & (xx >= box[:, 1, None, None]) & (xx < (box[:, 1] + box[:, 3])[:, None, None]))
        inside &= params.erase.to(dev)[:, None, None]
        x = x.masked_fill(inside[:, None], 0.0)
    return x.contiguous()
