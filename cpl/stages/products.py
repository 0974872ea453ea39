"""What the stages hand to each other on the run context, in run order: the decoded dataset, the unlabeled set,
the trained network and the evaluation. Plain data; the stages that make them are named on each."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class LoadedData:
    """Made by stage ``data``: the decoded dataset. Images are ``[N, 3, H, W] uint8``: tensors in memory, or with
    ``data.cache: disk`` image sources on the cache files (cpl/data/image_cache.py); ``labels`` ``[N_train]
    int64`` are the class indices 0..K-1 of every training image; ``keep`` indexes the labeled ones."""

    ds: object  # cpl.data.dataset.ReidDataset
    labels: np.ndarray
    keep: np.ndarray
    train_imgs: object  # torch.Tensor | cpl.data.image_source.ImageSource
    query_imgs: object
    gallery_imgs: object
    source: str  # where the unlabeled images come from: a name of cpl.data.unlabeled_sources.SOURCES
    hidden: np.ndarray  # holdout: the indices of the training images used as unlabeled ones
    folder_files: list[str]  # folder: the image files
    num_unlabeled: int  # the images the source provides (a GAN's before they are drawn); 0 without one


@dataclass
class Unlabeled:
    """Made by stage ``unlabeled`` (empty when the run has none): ``images`` ``[M, 3, H, W] uint8`` (a source read by
    row, cpl/data/image_source.py: the holdout's are rows of the training images), their files, and (holdout only)
    their true class ``truth`` ``[M] int64``."""

    images: object  # cpl.data.image_source.ImageSource
    paths: list[str]
    truth: np.ndarray | None


@dataclass
class Trained:
    """Made by stage ``train``: the trainer (model, centers, pseudo-label history), the method's
    strategy, what the trunk was initialised with, and the training time in seconds."""

    trainer: object  # cpl.engine.trainer.Trainer
    strategy: object  # cpl.pseudo.base.Strategy
    weights: object  # cpl.models.weights.WeightsInfo
    time_s: float


@dataclass
class Evaluated:
    """Made by stage ``evaluate``: query/gallery retrieval features ``[Nq, D]`` / ``[Ng, D]`` float32
    (L2-normalised) and results.json's content."""

    query: torch.Tensor
    gallery: torch.Tensor
    results: dict
