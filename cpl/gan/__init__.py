"""DCGAN as LSRO/MpRL/CPL use it: models, resumable training, deterministic sampling, shared cache."""

from __future__ import annotations

from cpl.gan.cache import ensure_samples, gan_key, read_info
from cpl.gan.dcgan import Discriminator, Generator, build_models
from cpl.gan.sample import list_samples, read_manifest, sample_to_folder
from cpl.gan.train import prepare_images, train_gan

__all__ = [
    "Discriminator", "Generator", "build_models", "ensure_samples", "gan_key",
    "list_samples", "prepare_images", "read_info", "read_manifest", "sample_to_folder", "train_gan",
]
