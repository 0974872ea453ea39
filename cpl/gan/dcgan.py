"""DCGAN generator and discriminator as LSRO/MpRL/CPL used them (method-notes §6).

128×128 is the deepened model of the LSRO code (``DCGAN/model.py`` at commit 6621e2c); 64×64 is
the carpedm20 DCGAN-tensorflow default. Layers mirror the TensorFlow originals: 5×5 kernels,
biases on every conv/deconv/linear layer, BN with scale and shift.
"""

from __future__ import annotations

import torch
from torch import nn

from cpl.config import GanConfig

KERNEL = 5
# TF batch_norm(decay=0.9) keeps 0.9 of the old running value; PyTorch's momentum weighs the new one.
BN_MOMENTUM = 0.1
BN_EPS = 1e-5
INIT_STD = 0.02
LRELU_SLOPE = 0.2

# Number of stride-2 layers: both nets go from/to a 4×4 map.
_STRIDE2_LAYERS = {64: 4, 128: 5}


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _deconv(c_in: int, c_out: int, stride: int) -> nn.ConvTranspose2d:
    # padding=2 with output_padding=stride-1 gives exactly ×stride, like TF's 'SAME' conv2d_transpose.
    # (TF crops the full output one pixel earlier; the kernel alignment differs by that one-pixel phase.)
    return nn.ConvTranspose2d(c_in, c_out, KERNEL, stride, padding=KERNEL // 2, output_padding=stride - 1)


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, KERNEL, stride=2, padding=KERNEL // 2)


class Generator(nn.Module):
    """z ``[B, z_dim] float32`` in [-1, 1] → images ``[B, 3, S, S] float32`` in [-1, 1] (S = image_size).

    128: linear → 4×4×16b → BN/ReLU → five 5×5 stride-2 deconvs (16b→8b→4b→2b→b→3), each with
    BN/ReLU (the 3-channel one too, as the LSRO code does) → 5×5 stride-1 deconv 3→3 → tanh.
    64: linear → 4×4×8b → BN/ReLU → four stride-2 deconvs (8b→4b→2b→b→3), BN/ReLU except the
    last → tanh. The LSRO sampler ran BN on batch statistics: draw images with
    :func:`cpl.gan.sample.sample_to_folder`, not with this module in eval mode.
    """

    def __init__(self, image_size: int = 128, z_dim: int = 100, base_channels: int = 64) -> None:
        super().__init__()
        if image_size not in _STRIDE2_LAYERS:
            raise ValueError(f"image_size must be 64 or 128, got {image_size}")
        n_up = _STRIDE2_LAYERS[image_size]
        self.image_size = image_size
        self.z_dim = z_dim
        self.top_channels = base_channels * 2 ** (n_up - 1)
        self.fc = nn.Linear(z_dim, self.top_channels * 4 * 4)
        layers: list[nn.Module] = [_bn(self.top_channels), nn.ReLU()]
        c = self.top_channels
        for i in range(n_up):
            last = i == n_up - 1
            c_out = 3 if last else c // 2
            layers.append(_deconv(c, c_out, 2))
            if not last or image_size == 128:
                layers += [_bn(c_out), nn.ReLU()]
            c = c_out
        if image_size == 128:
            layers.append(_deconv(3, 3, 1))
        layers.append(nn.Tanh())
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z ``[B, z_dim]`` → images ``[B, 3, S, S] float32`` in [-1, 1]."""
        h = self.fc(z).view(z.shape[0], self.top_channels, 4, 4)
        return self.body(h)


class Discriminator(nn.Module):
    """images ``[B, 3, S, S]`` in [-1, 1] → logits ``[B] float32`` (real > 0).

    5×5 stride-2 convs with b, 2b, 4b, 8b (, 16b for 128) channels down to a 4×4 map, BN on all but
    the first, leaky ReLU 0.2, then linear → 1.
    """

    def __init__(self, image_size: int = 128, base_channels: int = 64) -> None:
        super().__init__()
        if image_size not in _STRIDE2_LAYERS:
            raise ValueError(f"image_size must be 64 or 128, got {image_size}")
        layers: list[nn.Module] = []
        c_in = 3
        for i in range(_STRIDE2_LAYERS[image_size]):
            c_out = base_channels * 2**i
            layers.append(_conv(c_in, c_out))
            if i > 0:
                layers.append(_bn(c_out))
            layers.append(nn.LeakyReLU(LRELU_SLOPE))
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in * 4 * 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """images ``[B, 3, S, S]`` → logits ``[B] float32``, before the sigmoid (real > 0)."""
        return self.fc(self.body(x).flatten(1)).squeeze(1)


def init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """TF initialisers of the LSRO code: conv weights truncated normal (±2σ), deconv and linear
    weights normal, all with std 0.02; biases 0; BN scale 1, shift 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD, generator=generator)
        elif isinstance(m, (nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, std=INIT_STD, generator=generator)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
        else:
            continue
        nn.init.zeros_(m.bias)


def build_models(cfg: GanConfig, generator: torch.Generator) -> tuple[Generator, Discriminator]:
    """Freshly initialised (G, D) on the CPU for ``cfg``; weights drawn from ``generator``."""
    g = Generator(cfg.image_size, cfg.z_dim, cfg.base_channels)
    d = Discriminator(cfg.image_size, cfg.base_channels)
    init_weights(g, generator)
    init_weights(d, generator)
    return g, d
