"""Config loading: every shipped config validates; bad keys and values are rejected naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpl.config import ConfigError, apply_overrides, fast_dev_run, load_config, packaged_configs_dir

CONFIGS = sorted(packaged_configs_dir().glob("*.yaml"))  # cpl/configs, package data (configs/ links there)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.data.root and cfg.train.epochs >= 1
    small = fast_dev_run(cfg)
    assert small.train.epochs == 2 and small.train.max_iters_per_epoch == 3


def test_paper_defaults_in_market_config():
    cfg = load_config(Path("configs/market1501.yaml"))
    t = cfg.train
    assert (t.center_weight, t.center_alpha, t.momentum, t.epochs, t.lr_milestones) == (1e-4, 0.5, 0.9, 50, [40])
    assert cfg.model.dropout == 0.75 and cfg.model.backbone == "resnet50"
    assert cfg.gan.image_size == 128 and cfg.gan.lr == 2e-4 and cfg.gan.beta1 == 0.5 and cfg.gan.epochs == 30


@pytest.mark.parametrize("override, key", [
    ("train.center_weight=-1", "train.center_weight"),
    ("train.epochs=0", "train.epochs"),
    ("train.epochs=ten", "train.epochs"),
    ("train.bogus=1", "train.bogus"),
    ("bogus.x=1", "bogus"),
    ("train.method=magic", "train.method"),
    ("gan.image_size=96", "gan.image_size"),
    ("unlabeled.source=web", "unlabeled.source"),
    ("unlabeled.holdout_fraction=1.0", "unlabeled.holdout_fraction"),
    ("model.dropout=1.5", "model.dropout"),
    ("train.lr_milestones=[30, 10]", "train.lr_milestones"),
    ("data.height=true", "data.height"),
    ("device=tpu", "device"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as exc:
        load_config(Path("configs/synthetic.yaml"), [override])
    assert str(exc.value).startswith(key)


def test_scientific_notation_without_a_dot():
    cfg = load_config(Path("configs/synthetic.yaml"), ["train.center_weight=1e-4", "train.lr=3e-2"])
    assert cfg.train.center_weight == 1e-4 and cfg.train.lr == 0.03


def test_overrides_parse_yaml_values():
    data = apply_overrides({"train": {"epochs": 3}}, ["train.epochs=5", "train.lr_milestones=[2, 4]",
                                                     "model.backbone=resnet50"])
    assert data == {"train": {"epochs": 5, "lr_milestones": [2, 4]}, "model": {"backbone": "resnet50"}}
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.epochs"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(top)
