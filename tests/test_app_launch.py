"""The Launch page and app/launching.py: dataset discovery and checks, devices, form → config, launching."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import yaml
from app_fixtures import open_app, wait_for
from dataset_builders import PEOPLE, make_folders, make_msmt17
from PIL import Image

from app import launching
from cpl.backbones import BACKBONES
from cpl.config import ConfigError, controls, load_config
from cpl.methods import METHODS
from cpl.models.weights import torchvision_cache_file
from cpl.runs.launch import cancel
from cpl.runs.rundir import RunDir, list_runs
from cpl.runs.status import read_raw, read_status

SYNTH = launching.CONFIGS_DIR / "synthetic.yaml"


def _market(root: Path, ids: int = 3) -> Path:
    """A tiny valid Market-1501-layout folder: ``ids`` identities x 2 cameras in every split."""
    rng = np.random.default_rng(0)
    for split, offset in (("bounding_box_train", 1), ("query", 100), ("bounding_box_test", 100)):
        (root / split).mkdir(parents=True)
        for pid in range(offset, offset + ids):
            for cam in (1, 2):
                pixels = rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"{pid:04d}_c{cam}s1_{pid * 10 + cam:06d}_00.jpg")
    return root


@pytest.fixture
def data_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root with a valid tiny dataset ``tiny``, a broken one (no query/gallery) and an unrelated folder;
    an empty runs root; no demo run."""
    data = tmp_path / "data"
    _market(data / "tiny")
    (data / "broken" / "bounding_box_train").mkdir(parents=True)
    (data / "broken" / "bounding_box_train" / "0001_c1s1_000001_00.jpg").write_bytes(b"")
    (data / "notes").mkdir()
    monkeypatch.setenv("CPL_DATA_ROOTS", str(data))
    monkeypatch.setenv("CPL_RUNS_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("CPL_DEMO", "0")
    return data


# ---------------------------------------------------------------------------------------------- app/launching.py


def test_discover_datasets_lists_market_folders_only(data_roots: Path) -> None:
    found = launching.discover_datasets([data_roots], data_roots / "synthetic")
    assert found[0].synthetic
    assert [d.name for d in found[1:]] == ["broken", "tiny"]  # "notes" is no dataset layout
    assert [d.kind for d in found] == ["synthetic", "market", "market"]
    tiny = found[2]
    assert launching.dataset_path(tiny, [data_roots], data_roots / "synthetic") == (data_roots / "tiny").resolve()
    # a crafted choice naming something outside the root is refused by app.safety
    evil = launching.DatasetChoice("evil", 0, "../../etc")
    assert launching.dataset_path(evil, [data_roots], data_roots / "synthetic") is None


def test_overrides_build_the_config_the_form_shows(tmp_path: Path) -> None:
    base = launching.base_defaults(SYNTH)
    root = tmp_path / "odd: name #1"  # a path YAML would misread unquoted
    choices = launching.RunChoices(data_root=root, synthetic=False, kind="msmt17", method="fapl", source="holdout",
                                   holdout_fraction=0.3, center_weight=3e-4, center_alpha=0.25, epochs=24,
                                   backbone="resnet34", pretrained="none", seed=7, device="cpu", name="my run",
                                   extra=["train.batch_size=8"])
    cfg = launching.resolve(SYNTH, launching.overrides_for(choices, base), fast=False)
    assert cfg.data.kind == "msmt17" and cfg.data.root == str(root)
    assert (cfg.train.method, cfg.seed, cfg.name, cfg.device) == ("fapl", 7, "my run", "cpu")
    assert (cfg.unlabeled.source, cfg.unlabeled.holdout_fraction) == ("holdout", 0.3)
    assert (cfg.train.center_weight, cfg.train.center_alpha, cfg.train.epochs) == (3e-4, 0.25, 24)
    # synthetic.yaml: 12 epochs, lr step after 9 -> doubled with the epochs; the warm-up stays each method's
    # published share of the schedule (-1)
    assert cfg.train.lr_milestones == [18] and cfg.train.warmup_epochs == -1
    assert (cfg.model.backbone, cfg.model.pretrained, cfg.train.batch_size) == ("resnet34", "none", 8)
    fast = launching.resolve(SYNTH, launching.overrides_for(choices, base), fast=True)
    assert fast.train.epochs == 2 and fast.data.max_train_images == 192


def test_sweep_overrides_leave_the_grid_to_the_cells(tmp_path: Path) -> None:
    base = launching.base_defaults(SYNTH)
    choices = launching.RunChoices(data_root=tmp_path, synthetic=True, method="cpl", num_images=999, seed=5)
    keys = {o.split("=", 1)[0] for o in launching.overrides_for(choices, base, sweep=True)}
    assert not keys & {"train.method", "seed", "unlabeled.num_images"}
    assert "unlabeled.source" in keys


def test_the_controls_form_their_configs(tmp_path: Path) -> None:
    base = launching.base_defaults(SYNTH)
    choose = lambda **kw: launching.resolve(SYNTH, launching.overrides_for(  # noqa: E731
        launching.RunChoices(data_root=tmp_path, synthetic=True, **kw), base), fast=False)
    control = choose(method="baseline", source="holdout", holdout_fraction=0.25, seed=3)
    assert controls(control) == ["labeled-only"] and control.unlabeled.holdout_fraction == 0.25
    matched = choose(method="center", source="gan", num_images=700, epoch_length="union")
    assert controls(matched) == ["step-matched"] and matched.unlabeled.num_images == 700
    assert controls(choose(method="baseline", source="none")) == []
    assert controls(choose(method="cpl", epoch_length="labeled")) == ["labeled-epochs"]
    with pytest.raises(ConfigError, match="train.epoch_length: union counts the unlabeled images"):
        choose(method="baseline", source="none", epoch_length="union")


def test_a_bad_override_is_named_by_its_key(tmp_path: Path) -> None:
    base = launching.base_defaults(SYNTH)
    choices = launching.RunChoices(data_root=tmp_path, synthetic=True, method="cpl",
                                   extra=launching.parse_extra("# comment\n\ntrain.center_weight=-1\n"))
    with pytest.raises(ConfigError, match=r"^train\.center_weight: must be >= 0"):
        launching.resolve(SYNTH, launching.overrides_for(choices, base), fast=False)


def test_scaled_epochs_keep_the_schedule_inside_the_run() -> None:
    assert launching.scaled_epochs(load_config(SYNTH), 6) == ([4], -1)  # method defaults scale by themselves
    base = load_config(SYNTH, ["train.warmup_epochs=4"])  # 12 epochs, milestone 9, warm-up 4
    assert launching.scaled_epochs(base, 12) == ([9], 4)
    assert launching.scaled_epochs(base, 4) == ([3], 1)
    assert launching.scaled_epochs(base, 1) == ([1], 0)


def test_parse_int_list() -> None:
    assert launching.parse_int_list(" 12000, 0,24_000,0", "counts") == [0, 12000, 24000]
    for bad in ("", "1,x", "-5"):
        with pytest.raises(ConfigError, match="^counts: "):
            launching.parse_int_list(bad, "counts")


def test_detect_gpus_parses_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)'\n"
                    "echo 'GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbbb)'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus = launching.detect_gpus()
    assert gpus == ["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"]
    choices = launching.device_choices(gpus)
    assert [(c.device, c.nproc) for c in choices] == [("cuda:0", 1), ("cuda:1", 1), ("cuda", 2), ("cpu", 1)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert launching.detect_gpus() == ["NVIDIA H100 80GB HBM3"]
    assert [c.device for c in launching.device_choices([])] == ["cpu"]


# ---------------------------------------------------------------------------------------------- the page


def _launch_page():
    at = open_app("pages/launch.py")
    assert not at.exception, [e.message for e in at.exception]
    return at


def _button(at, label: str):
    return next(b for b in at.button if b.label == label)


def test_form_renders_with_the_base_config_values(data_roots: Path) -> None:
    at = _launch_page()
    labels = {s.label for s in at.selectbox}
    assert {"Dataset", "Base config", "Method", "Backbone", "Device"} <= labels
    dataset = at.selectbox(key="dataset")
    assert [o for o in dataset.options] == [launching.SYNTHETIC.label, "broken (Market-1501 layout)",
                                            "tiny (Market-1501 layout)"]
    method = next(s for s in at.selectbox if s.label == "Method")
    assert method.value == "cpl" and set(method.options) == set(METHODS)
    assert any(METHODS["cpl"].description in c.value for c in at.caption)
    numbers = {n.label: n.value for n in at.number_input}
    assert numbers["GAN images"] == 1500 and numbers["Epochs"] == 12
    assert numbers["λ: center-loss weight (train.center_weight)"] == pytest.approx(1e-4)
    assert not _button(at, "Launch run").disabled


def _resolved(at) -> tuple[str, str]:
    """The page's equivalent command and resolved config (the review expander's two code blocks)."""
    command = next(c.value for c in at.code if c.value.startswith("cpl "))
    return command, next(c.value for c in at.code if c.value.startswith("name:"))


def test_a_labeled_only_method_offers_its_controls(data_roots: Path) -> None:
    at = _launch_page()
    assert [s.options for s in at.selectbox if s.label == "Epoch length (train.epoch_length)"] == [
        [launching.EPOCH_LENGTH_INFO[x] for x in ("trained", "labeled", "union")]]
    next(s for s in at.selectbox if s.label == "Method").select("baseline").run()
    source = at.radio(key="control-source-synthetic-run")
    assert source.options == ["none", "holdout", "gan", "folder"] and source.value == "none"
    assert any("an ordinary reference" in c.value for c in at.caption)
    source.set_value("holdout").run()
    assert any("baseline trains on labeled images only. With **holdout**: the labeled-only control" in c.value
               for c in at.caption)
    command, config = _resolved(at)
    assert "--set unlabeled.source=holdout" in command and "source: holdout" in config
    assert not _button(at, "Launch run").disabled
    length = at.selectbox(key="epoch-length-synthetic-run")
    assert length.options == [launching.EPOCH_LENGTH_INFO[x] for x in ("trained", "union")]
    length.set_value("union").run()
    command, config = _resolved(at)
    assert "--set train.epoch_length=union" in command and "epoch_length: union" in config
    at.radio(key="control-source-synthetic-run").set_value("none").run()  # nothing to count: refused by name
    assert any(e.value.startswith("train.epoch_length: union counts the unlabeled images") for e in at.error)
    assert _button(at, "Launch run").disabled


def test_a_sweep_offers_the_step_matched_baseline(data_roots: Path) -> None:
    at = _launch_page()
    at.radio(key="mode").set_value("sweep").run()
    assert any(c.value.startswith("2 runs, one after the other") for c in at.caption)  # baseline, cpl at 1500
    at.checkbox(key="step-matched-synthetic-sweep").check().run()
    assert any(c.value.startswith("3 runs, one after the other") for c in at.caption)  # + baseline at 1500's steps
    command, _ = _resolved(at)
    assert command.endswith("--step-matched")


def test_valid_folder_shows_its_statistics_before_launch(data_roots: Path) -> None:
    at = _launch_page()
    at.selectbox(key="dataset").select_index(2).run()  # "tiny"
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["split"]) == ["train", "query", "gallery"]
    assert list(table["images"]) == [6, 6, 6] and list(table["identities"]) == [3, 3, 3]
    base = next(s for s in at.selectbox if s.label == "Base config")
    assert base.value.name == "market1501.yaml"  # no tiny.yaml: the Market default
    # market1501.yaml asks for ImageNet ResNet-50 weights: without the file on this machine the launch is refused
    # with the one line that says how to get them; with it, the form is ready.
    has_weights = torchvision_cache_file(BACKBONES["resnet50"]).is_file()
    errors = [e.value for e in at.error]
    assert errors == ([] if has_weights else [errors[0]])
    assert has_weights or "no ImageNet weights for resnet50" in errors[0]
    assert _button(at, "Launch run").disabled == (not has_weights)


def test_invalid_folder_shows_the_error_and_disables_launch(data_roots: Path) -> None:
    at = _launch_page()
    at.selectbox(key="dataset").select_index(1).run()  # "broken"
    errors = [e.value for e in at.error]
    assert any("query: split folder is missing" in e for e in errors)
    assert any("bounding_box_test: split folder is missing" in e for e in errors)
    assert _button(at, "Launch run").disabled
    assert not list_runs(Path(os.environ["CPL_RUNS_ROOT"]))


@pytest.mark.parametrize("kind, label, build", [
    ("msmt17", "MSMT17", make_msmt17),
    ("folders", "Identity folders", lambda root: make_folders(root, PEOPLE)),
])
def test_every_format_is_listed_checked_and_launchable(data_roots: Path, kind: str, label: str, build) -> None:
    build(data_roots / "mine")
    at = _launch_page()
    dataset = at.selectbox(key="dataset")
    assert f"mine ({label})" in dataset.options
    mine = next(d for d in launching.discover_datasets([data_roots], data_roots / "synthetic") if d.name == "mine")
    assert mine.kind == kind
    dataset.set_value(mine).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["split"]) == ["train", "query", "gallery"] and table["images"].min() > 0
    assert any(label in c.value and "names and links checked" in c.value for c in at.caption)
    base = next(s for s in at.selectbox if s.label == "Base config")
    base.set_value(launching.CONFIGS_DIR / "synthetic.yaml").run()  # ships no weights to download: launchable here
    assert [e.value for e in at.error] == []
    assert not _button(at, "Launch run").disabled
    assert any(f"data.kind={kind}" in c.value for c in at.code)


def test_bad_override_is_named_and_disables_launch(data_roots: Path) -> None:
    at = _launch_page()
    at.text_area[0].input("train.center_weight=-1\n").run()
    assert any(e.value.startswith("train.center_weight: must be >= 0") for e in at.error)
    assert _button(at, "Launch run").disabled
    at.text_area[0].input("trian.epochs=3").run()
    assert any(e.value.startswith("trian: unknown setting") for e in at.error)


def test_launch_starts_a_real_run_and_links_to_it(app_run: RunDir, app_world, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    runs_root = tmp_path / "runs"
    monkeypatch.setenv("CPL_RUNS_ROOT", str(runs_root))
    monkeypatch.setenv("CPL_DATA_ROOTS", str(app_world.data_root))  # the synthetic set is generated there
    monkeypatch.setenv("CPL_DEMO", "0")
    at = _launch_page()
    method = next(s for s in at.selectbox if s.label == "Method")
    method.select("center").run()
    at.number_input(key="lambda-synthetic-run").set_value(2e-4).run()
    at.toggle(key="fast").set_value(True).run()
    at.text_area[0].input("eval.umap=false").run()
    _button(at, "Launch run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    runs = list_runs(runs_root)
    assert len(runs) == 1
    run = runs[0]
    assert any(run.id in s.value for s in at.success)
    link = next(e for e in at.get("page_link") if e.value == "Watch it on the Runs page")
    assert link.proto.query_string == f"run={run.id}"
    cfg = yaml.safe_load(run.config.read_text())
    assert cfg["train"]["method"] == "center" and cfg["train"]["center_weight"] == pytest.approx(2e-4)
    assert cfg["data"]["root"] == str(app_world.synthetic_root) and cfg["train"]["epochs"] == 2  # fast dev run
    argv = run.read_json("run.json")["argv"]
    assert argv[:2] == ["cpl", "run"] and "--fast-dev-run" in argv
    # a real detached process picks it up, then stops on request
    raw = wait_for(lambda: (read_raw(run) or {}).get("pgid") and read_raw(run), 120, what="the run to start")
    assert raw["pid"] == run.read_json("launch.json")["pid"]
    assert cancel(run, grace_s=30) == "cancelled"
    assert read_status(run)["state"] == "cancelled"


def test_launch_sweep_starts_cpl_sweep(app_run: RunDir, app_world, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    runs_root = tmp_path / "runs"
    monkeypatch.setenv("CPL_RUNS_ROOT", str(runs_root))
    monkeypatch.setenv("CPL_DATA_ROOTS", str(app_world.data_root))
    monkeypatch.setenv("CPL_DEMO", "0")
    at = _launch_page()
    at.radio(key="mode").set_value("sweep").run()
    assert at.multiselect(key="methods-synthetic-sweep").value == ["baseline", "cpl"]
    at.text_input(key="counts-synthetic-sweep").input("0, 64, 128").run()
    at.text_input(key="seeds-synthetic-sweep").input("0,1").run()
    at.toggle(key="fast").set_value(True).run()
    assert any(c.value.startswith("6 runs, one after the other") for c in at.caption)  # 2 seeds x (baseline + 2)
    _button(at, "Launch sweep").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    (folder,) = (runs_root / "sweeps").iterdir()
    spec = json.loads((folder / "sweep.json").read_text())
    assert (spec["methods"], spec["gan_images"], spec["seeds"], spec["fast_dev_run"]) == (
        ["baseline", "cpl"], [0, 64, 128], [0, 1], True)
    assert [c["run_id"] for c in spec["cells"]][:2] == [f"{folder.name}--baseline-g0-s0", f"{folder.name}--cpl-g64-s0"]
    links = {e.value: e.proto.query_string for e in at.get("page_link")}
    assert links["Its Table 1 on the Compare page"] == f"sweep={folder.name}"
    sweep = RunDir(folder)  # a sweep folder has a status.json like a run
    wait_for(lambda: (read_raw(sweep) or {}).get("pgid"), 120, what="the sweep process to start")
    assert read_raw(sweep)["pid"] == json.loads((folder / "launch.json").read_text())["pid"]
    assert cancel(sweep, grace_s=30) == "cancelled"
