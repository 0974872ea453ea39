"""Activation maps (torchreid's ``visualize_actmap.py``): where the last feature map of the trunk is strong.

For an image, the map is the sum over channels of the squared activations of the trunk's last feature map (the
input of global pooling), L2-normalised over the spatial positions, upsampled bilinearly to the image size and
scaled to [0, 1] (min → 0, max → 1); the overlay is 0.3 × image + 0.7 × the map in the jet colour map, as
torchreid draws it. Runs in a ``cpl`` process only (``cpl actmap``), never in the app.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def pool_module(trunk: nn.Module) -> nn.Module:
    """The global-pooling module of a trunk (timm's ``global_pool``, torchvision's ``avgpool``): its input is the
    last feature map."""
    for name in ("global_pool", "avgpool"):
        if isinstance(getattr(trunk, name, None), nn.Module):
            return getattr(trunk, name)
    raise ValueError(f"{type(trunk).__name__} has no global_pool/avgpool module")


@torch.no_grad()
def last_feature_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The trunk's last feature map [B, C, h, w] float for ImageNet-normalised images ``x`` [B, 3, H, W]
    (``model`` a :class:`cpl.models.reid.ReIDNet` in eval mode)."""
    seen: list[torch.Tensor] = []
    hook = pool_module(model.trunk).register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    try:
        model(x)
    finally:
        hook.remove()
    return seen[0].float()


def activation_maps(feature_map: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Feature maps [B, C, h, w] → activation maps [B, height, width] float32 in [0, 1] (see the module doc)."""
    b, _, h, w = feature_map.shape
    am = feature_map.float().pow(2).sum(1).reshape(b, h * w)
    am = F.normalize(am, p=2, dim=1).reshape(b, 1, h, w)
    if (h, w) != (height, width):
        am = F.interpolate(am, size=(height, width), mode="bilinear", align_corners=False)
    am = am[:, 0]
    lo = am.amin(dim=(1, 2), keepdim=True)
    hi = am.amax(dim=(1, 2), keepdim=True)
    return (am - lo) / (hi - lo + 1e-12)


def jet(values: np.ndarray) -> np.ndarray:
    """The jet colour map: values [...] in [0, 1] → RGB [..., 3] uint8 (blue → cyan → yellow → red)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * v - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return (255 * rgb).round().astype(np.uint8)


def overlay(image: np.ndarray, am: np.ndarray) -> np.ndarray:
    """Image [H, W, 3] uint8 and its map [H, W] in [0, 1] → torchreid's overlay [H, W, 3] uint8."""
    mixed = 0.3 * image.astype(np.float32) + 0.7 * jet(am).astype(np.float32)
    return np.clip(mixed, 0, 255).round().astype(np.uint8)
