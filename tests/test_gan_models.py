"""DCGAN layer structure, shapes, parameter counts and initialisation against method-notes §6."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cpl.config import GanConfig
from cpl.engine.seeding import make_generator
from cpl.gan.dcgan import Discriminator, Generator, build_models

pytestmark = pytest.mark.usefixtures("one_thread")


def _layers(net: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, kind)]


def test_generator_128_has_six_deconvs_with_bn_relu_even_on_the_rgb_layer() -> None:
    g = Generator(image_size=128, z_dim=100, base_channels=64)
    deconvs = _layers(g, nn.ConvTranspose2d)
    assert [m.stride[0] for m in deconvs] == [2, 2, 2, 2, 2, 1]
    assert [m.kernel_size for m in deconvs] == [(5, 5)] * 6
    assert [(m.in_channels, m.out_channels) for m in deconvs] == [
        (1024, 512), (512, 256), (256, 128), (128, 64), (64, 3), (3, 3)]
    assert g.fc.out_features == 4 * 4 * 1024
    body = list(g.body)
    # BN+ReLU after the projection and after each of the five stride-2 deconvs (the 3-channel one too),
    # none after the stride-1 deconv, which feeds tanh.
    for i, m in enumerate(body):
        if isinstance(m, nn.ConvTranspose2d) and m.stride[0] == 2:
            assert isinstance(body[i + 1], nn.BatchNorm2d) and isinstance(body[i + 2], nn.ReLU)
    assert isinstance(body[0], nn.BatchNorm2d) and body[0].num_features == 1024
    assert isinstance(body[-2], nn.ConvTranspose2d) and body[-2].stride == (1, 1)
    assert isinstance(body[-1], nn.Tanh)
    assert len(_layers(g, nn.BatchNorm2d)) == 6


def test_generator_64_has_four_deconvs_and_plain_tanh_output() -> None:
    g = Generator(image_size=64, z_dim=100, base_channels=64)
    deconvs = _layers(g, nn.ConvTranspose2d)
    assert [(m.in_channels, m.out_channels, m.stride[0]) for m in deconvs] == [
        (512, 256, 2), (256, 128, 2), (128, 64, 2), (64, 3, 2)]
    assert g.fc.out_features == 4 * 4 * 512
    assert len(_layers(g, nn.BatchNorm2d)) == 4  # projection + three hidden deconvs, not the output
    assert isinstance(g.body[-2], nn.ConvTranspose2d) and isinstance(g.body[-1], nn.Tanh)


@pytest.mark.parametrize("size,channels", [(128, [64, 128, 256, 512, 1024]), (64, [64, 128, 256, 512])])
def test_discriminator_structure(size: int, channels: list[int]) -> None:
    d = Discriminator(image_size=size, base_channels=64)
    convs = _layers(d, nn.Conv2d)
    assert [m.out_channels for m in convs] == channels
    assert all(m.kernel_size == (5, 5) and m.stride == (2, 2) for m in convs)
    body = list(d.body)
    assert isinstance(body[0], nn.Conv2d) and isinstance(body[1], nn.LeakyReLU)  # no BN on the first
    assert [m.num_features for m in _layers(d, nn.BatchNorm2d)] == channels[1:]
    assert all(m.negative_slope == 0.2 for m in _layers(d, nn.LeakyReLU))
    assert d.fc.in_features == channels[-1] * 16 and d.fc.out_features == 1


@pytest.mark.parametrize("size", [64, 128])
def test_shapes_and_output_range(size: int) -> None:
    g, d = build_models(GanConfig(image_size=size, z_dim=20, base_channels=8), make_generator(0, "t"))
    z = torch.rand(3, 20) * 2 - 1
    x = g(z)
    assert x.shape == (3, 3, size, size) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    logits = d(x)
    assert logits.shape == (3,) and torch.isfinite(logits).all()


def test_parameter_count_of_the_paper_model() -> None:
    g = Generator(128, 100, 64)
    d = Discriminator(128, 64)

    def conv(c_in: int, c_out: int) -> int:
        return c_in * c_out * 25 + c_out

    chans = [1024, 512, 256, 128, 64, 3]
    g_expected = (100 * 16384 + 16384) + sum(2 * c for c in chans) + sum(
        conv(a, b) for a, b in zip(chans, chans[1:])) + conv(3, 3)
    d_chans = [3, 64, 128, 256, 512, 1024]
    d_expected = sum(conv(a, b) for a, b in zip(d_chans, d_chans[1:])) + sum(2 * c for c in d_chans[2:]) + (
        16384 + 1)
    assert sum(p.numel() for p in g.parameters()) == g_expected == 19_072_749
    assert sum(p.numel() for p in d.parameters()) == d_expected == 17_435_009


def test_initialisation_follows_the_tf_code() -> None:
    g, d = build_models(GanConfig(image_size=64, base_channels=64), make_generator(0, "init"))
    big_deconv = _layers(g, nn.ConvTranspose2d)[0].weight
    assert abs(big_deconv.std().item() - 0.02) < 0.0005 and abs(big_deconv.mean().item()) < 0.0005
    assert abs(g.fc.weight.std().item() - 0.02) < 0.0005
    conv_w = _layers(d, nn.Conv2d)[-1].weight
    assert conv_w.abs().max().item() <= 0.04  # truncated at 2 std
    assert abs(conv_w.std().item() - 0.02 * 0.8796) < 0.0005  # std of a normal truncated at ±2σ
    for m in list(g.modules()) + list(d.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            assert torch.count_nonzero(m.bias) == 0
        if isinstance(m, nn.BatchNorm2d):
            assert m.momentum == 0.1 and m.eps == 1e-5  # TF decay 0.9
            assert torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0
    small = GanConfig(image_size=64, base_channels=4)
    (g1, d1), (g2, d2) = (build_models(small, make_generator(0, "init")) for _ in range(2))
    assert torch.equal(g1.fc.weight, g2.fc.weight) and torch.equal(d1.fc.weight, d2.fc.weight)
    g3, _ = build_models(small, make_generator(1, "init"))
    assert not torch.equal(g1.fc.weight, g3.fc.weight)


def test_exact_doubling_per_deconv() -> None:
    g = Generator(64, 10, 4)
    sizes = []
    h = g.fc(torch.zeros(2, 10)).view(2, -1, 4, 4)
    for m in g.body:
        h = m(h)
        if isinstance(m, nn.ConvTranspose2d):
            sizes.append(h.shape[-1])
    assert sizes == [8, 16, 32, 64]
