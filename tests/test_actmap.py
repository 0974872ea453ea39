"""Activation maps (torchreid's definition) on a hand-made network whose last feature map is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cpl.models.actmap import activation_maps, jet, last_feature_map, overlay, pool_module
from cpl.models.reid import ReIDNet


class KnownTrunk(nn.Module):
    """A trunk whose last feature map is a fixed tensor, whatever the image; pooled by ``avgpool`` like ResNet."""

    def __init__(self, fmap: torch.Tensor):
        super().__init__()
        self.register_buffer("fmap", fmap)
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(self.fmap.expand(x.shape[0], -1, -1, -1)).flatten(1)


def hand_made(fmap: torch.Tensor) -> ReIDNet:
    model = ReIDNet("resnet18", num_classes=3)
    model.trunk = KnownTrunk(fmap)
    model.feat_dim = fmap.shape[1]
    model.classifier = nn.Linear(fmap.shape[1], 3)
    return model.eval()


def test_the_map_of_a_known_feature_map_is_that_map():
    # one channel holding sqrt(M) and one of zeros: the sum of squares over channels is M itself
    m = torch.tensor([[0.0, 1.0, 4.0, 2.0], [3.0, 0.5, 0.0, 1.0], [1.0, 1.0, 1.0, 6.0]])
    fmap = torch.stack([m.sqrt(), torch.zeros_like(m)])[None]
    model = hand_made(fmap)
    x = torch.randn(2, 3, 3, 4)
    got = last_feature_map(model, x)
    torch.testing.assert_close(got, fmap.expand(2, -1, -1, -1))
    am = activation_maps(got, 3, 4)
    expected = (m - m.min()) / (m.max() - m.min())  # the scaling to [0, 1] undoes the spatial L2 normalisation
    torch.testing.assert_close(am, expected.expand(2, -1, -1), atol=1e-6, rtol=0)


def test_upsampling_keeps_the_hot_spot_where_it_was():
    fmap = torch.zeros(1, 8, 4, 2)
    fmap[0, :, 3, 1] = 2.0  # bottom-right cell of a 4×2 map
    am = activation_maps(fmap, 128, 64)[0]
    assert am.shape == (128, 64) and float(am.max()) == pytest.approx(1.0) and float(am.min()) == 0.0
    y, x = divmod(int(am.argmax()), 64)
    assert y >= 96 and x >= 32
    assert float(am[:64, :32].max()) == 0.0


def test_real_trunks_expose_their_last_feature_map():
    for backbone, channels in (("resnet18", 512), ("efficientnet_lite0", 1280)):
        model = ReIDNet(backbone, num_classes=3).eval()
        assert pool_module(model.trunk) is not None
        x = torch.randn(1, 3, 64, 32)
        fmap = last_feature_map(model, x)
        assert fmap.shape == (1, channels, 2, 1)
        with torch.no_grad():
            pool5 = model(x)[0]
        torch.testing.assert_close(fmap.mean(dim=(2, 3)), pool5)  # pooling that map gives pool5


def test_jet_and_overlay():
    np.testing.assert_array_equal(jet(np.array([0.0, 0.5, 1.0])), [[0, 0, 128], [128, 255, 128], [128, 0, 0]])
    img = np.full((2, 2, 3), 100, np.uint8)
    out = overlay(img, np.zeros((2, 2)))
    np.testing.assert_array_equal(out[0, 0], np.round(0.3 * 100 + 0.7 * np.array([0, 0, 128])))
