"""Feature extraction with a trained network (eval mode, batched, optionally flip-averaged), reading its images
from a tensor or an image source (cpl/data/image_source.py) one batch at a time."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from cpl.data.image_source import ImageSource, Rows, as_source, chunks
from cpl.data.transforms import normalize
from cpl.engine import dist


@torch.no_grad()
def extract(model: nn.Module, images: torch.Tensor | ImageSource, device: torch.device, *, batch_size: int = 256,
            flip: bool = False, dtype: torch.dtype | None = None, normalize_features: bool = True,
            with_logits: bool = False, retrieval: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Features of uint8 images [N, 3, H, W] → ([N, D] float32 on CPU, logits [N, C] float32 or None). The images
    are read ``batch_size`` at a time, so a source on the disk cache is never held whole.

    The features are pool5, the space of the class centers, or with ``retrieval`` the space retrieval ranks in
    (after a BNNeck; the same as pool5 without one). ``flip`` averages the feature of each image and its mirror
    before L2 normalisation.
    """
    was_training = model.training
    model.eval()
    feats, logits = [], []
    ctx = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    try:
        for _, batch in chunks(as_source(images), batch_size):
            x = normalize(batch.to(device, non_blocking=True))
            with ctx:
                f, z = model(x)
                if flip:
                    f2, z2 = model(x.flip(3))
                    f, z = (f + f2) / 2, (z + z2) / 2
                if retrieval:  # the neck is affine in eval mode: averaging before it equals averaging after
                    f = model.retrieval_features(f)
            f = f.float()
            feats.append((F.normalize(f, dim=1) if normalize_features else f).cpu())
            if with_logits:
                logits.append(z.float().cpu())
    finally:
        model.train(was_training)
    d = getattr(model, "feat_dim", 0)
    out = torch.cat(feats) if feats else torch.zeros(0, d)
    return out, (torch.cat(logits) if with_logits and logits else None)


@torch.no_grad()
def extract_shared(model: nn.Module, images: torch.Tensor | ImageSource, device: torch.device, rank: int,
                   world_size: int, *, batch_size: int = 256, dtype: torch.dtype | None = None) -> torch.Tensor:
    """L2-normalised features [N, D] float32 on ``device`` of uint8 images [N, 3, H, W], the same on every rank
    and for any number of ranks: the images are cut into fixed chunks of ``batch_size``, rank r extracts the
    chunks c with c mod ``world_size`` = r, and a sum over ranks of the otherwise-zero result assembles them
    (x + 0 is exact). Each image is forwarded in the same chunk whatever the world size, so its feature does
    not depend on it."""
    images = as_source(images)
    out = torch.zeros(len(images), getattr(model, "feat_dim", 0), device=device)
    for c, start in enumerate(range(0, len(images), batch_size)):
        if c % world_size == rank:
            rows = Rows(images, torch.arange(start, min(start + batch_size, len(images))))
            f, _ = extract(model, rows, device, batch_size=batch_size, dtype=dtype)
            out[start:start + len(f)] = f.to(device)
    dist.all_reduce_sum(out)
    return out
