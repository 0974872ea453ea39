"""Re-ID network: a torchvision ResNet trunk, global average pooling (pool5), dropout, a linear classifier.

The feature used for the center loss, the pseudo-labels and retrieval is pool5 *before* dropout: the
papers leave the position open (method-notes §1.8); taking it before dropout keeps the feature the
centers see identical between training and test time.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torchvision
from torch import nn

log = logging.getLogger("cpl")

# torchvision's published ImageNet checkpoints (file names as they land in the torch hub cache).
_WEIGHTS = {
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
}


class ReIDNet(nn.Module):
    """ResNet trunk → pool5 feature [B, D] → dropout → classifier logits [B, num_classes]."""

    def __init__(self, backbone: str, num_classes: int, dropout: float = 0.75):
        super().__init__()
        trunk = getattr(torchvision.models, backbone)(weights=None)
        self.feat_dim = trunk.fc.in_features
        trunk.fc = nn.Identity()
        self.trunk = trunk
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.feat_dim, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, 3, H, W] normalised float → (features [B, D] float, logits [B, C] float)."""
        feat = self.trunk(x)
        return feat, self.classifier(self.dropout(feat))

    def param_groups(self, lr: float, classifier_lr_mult: float) -> list[dict]:
        """Optimizer groups: pretrained trunk at ``lr``, the new classifier at ``lr * classifier_lr_mult``."""
        return [
            {"params": list(self.trunk.parameters()), "lr": lr, "name": "trunk"},
            {"params": list(self.classifier.parameters()), "lr": lr * classifier_lr_mult, "name": "classifier"},
        ]


def _hub_checkpoint(backbone: str) -> Path:
    url = _WEIGHTS[backbone].url
    hub_dir = Path(torch.hub.get_dir())
    return hub_dir / "checkpoints" / os.path.basename(url)


def load_pretrained(model: ReIDNet, backbone: str, spec: str) -> str:
    """Load ImageNet weights into ``model.trunk`` according to ``spec``; returns what happened (one line).

    ``spec``: ``auto`` (torchvision's cache if the file is there, else random init with a warning), ``none``,
    ``download`` (explicit user request: torchvision may fetch the file), or a path to a state-dict file.
    Nothing is downloaded unless ``spec == 'download'``.
    """
    if spec == "none":
        return "random init (model.pretrained=none)"
    if spec == "download":
        state = _WEIGHTS[backbone].get_state_dict(progress=False)
        source = f"ImageNet weights ({_WEIGHTS[backbone].url})"
    else:
        path = _hub_checkpoint(backbone) if spec == "auto" else Path(spec).expanduser()
        if not path.is_file():
            if spec == "auto":
                msg = (f"no ImageNet weights for {backbone} in torchvision's cache ({path}); training from random "
                       "init. Set model.pretrained=download (needs internet) or a weights file path.")
                log.warning(msg)
                return "random init: " + msg
            raise FileNotFoundError(f"model.pretrained: weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        source = str(path)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.trunk.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(f"model.pretrained: {source} does not fit {backbone}: {len(missing)} missing, "
                         f"{len(unexpected)} unexpected keys (e.g. {(missing + unexpected)[:3]})")
    return f"ImageNet weights from {source}"


def build_model(backbone: str, num_classes: int, dropout: float, pretrained: str) -> tuple[ReIDNet, str]:
    """Build the re-ID network and load its trunk weights; returns (model, one-line weights note)."""
    model = ReIDNet(backbone, num_classes, dropout)
    note = load_pretrained(model, backbone, pretrained)
    return model, note
