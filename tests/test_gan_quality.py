"""The GAN quality figure: the Fréchet distance is right on Gaussians, and in the Lite0 feature space it puts
noise far above the real-vs-real floor and real images near it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cpl.data.images import load_images
from cpl.gan.quality import frechet_distance, gan_quality
from cpl.synth import generate


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    sa, sb = np.array([1.0, 2.0, 0.5, 1.5]), np.array([2.0, 1.0, 0.5, 3.0])
    mu = np.array([1.0, -2.0, 0.0, 0.5])
    a = rng.normal(size=(200_000, 4)) * sa
    b = rng.normal(size=(200_000, 4)) * sb + mu
    # diagonal covariances: ||mu||^2 + sum (sigma_a - sigma_b)^2 = 5.25 + 4.25
    assert frechet_distance(a, b) == pytest.approx(9.5, rel=0.02)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow  # feature extraction of ~600 images (~30 s)
def test_noise_sits_far_above_the_floor_and_real_images_near_it(tmp_path):
    generate(tmp_path / "synth", ids=24, seed=0, cameras=2)
    paths = sorted(str(p) for p in (tmp_path / "synth" / "bounding_box_train").glob("*.jpg"))
    images = load_images(paths, 64, 64)[torch.randperm(len(paths), generator=torch.Generator().manual_seed(0))]
    third = len(images) // 3
    real, held_out = images[:2 * third], images[2 * third:3 * third]  # "samples" that are unseen real images
    noise = torch.randint(0, 256, (third, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    device = torch.device("cpu")
    q_noise = gan_quality(real, noise, device, seed=0)
    q_real = gan_quality(real, held_out, device, seed=0)
    assert q_noise["n"] == third and q_noise["fd_floor"] == pytest.approx(q_real["fd_floor"])
    assert q_noise["fd"] > 1.8 * q_noise["fd_floor"]
    assert q_real["fd"] < 1.3 * q_real["fd_floor"]


def test_quality_needs_images_on_both_sides():
    with pytest.raises(ValueError, match="at least"):
        gan_quality(torch.zeros(3, 3, 8, 8, dtype=torch.uint8), torch.zeros(5, 3, 8, 8, dtype=torch.uint8),
                    torch.device("cpu"))
