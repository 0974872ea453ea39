"""Feature extraction with a trained network (eval mode, batched, optionally flip-averaged)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from cpl.data.transforms import normalize


@torch.no_grad()
def extract(model: nn.Module, images: torch.Tensor, device: torch.device, *, batch_size: int = 256,
            flip: bool = False, dtype: torch.dtype | None = None, normalize_features: bool = True,
            with_logits: bool = False, retrieval: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Features of uint8 images [N, 3, H, W] → ([N, D] float32 on CPU, logits [N, C] float32 or None).

    The features are pool5, the space of the class centers, or with ``retrieval`` the space retrieval ranks in
    (after a BNNeck; the same as pool5 without one). ``flip`` averages the feature of each image and its mirror
    before L2 normalisation.
    """
    was_training = model.training
    model.eval()
    feats, logits = [], []
    ctx = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    try:
        for start in range(0, images.shape[0], batch_size):
            x = normalize(images[start:start + batch_size].to(device, non_blocking=True))
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
