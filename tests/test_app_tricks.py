"""The strong-baseline tricks in the app: settable on the Launch page, shown per run on Runs and Compare."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_fixtures import open_app

from app import launching, readers
from cpl.config import dump_yaml, load_config
from cpl.runs.rundir import RunDir, create_run

REPO = Path(__file__).resolve().parents[1]
BOT = "lr-warmup, erasing, label-smoothing, last-stride-1, bnneck, pk-sampler, triplet"


def _run(root: Path, run_id: str, config: str, method: str) -> RunDir:
    cfg = load_config(REPO / "configs" / config, ["data.root=x", f"train.method={method}"])
    return create_run(root, run_id, dump_yaml(cfg), {"method": method, "backbone": cfg.model.backbone})


@pytest.fixture
def two_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CPL_RUNS_ROOT", str(tmp_path))
    monkeypatch.setenv("CPL_DEMO", "0")
    _run(tmp_path, "paper", "cuhk01.yaml", "cpl")
    _run(tmp_path, "bot", "cuhk01-bot.yaml", "cpl")
    return tmp_path


def test_tricks_label_reads_the_run_config(two_runs: Path) -> None:
    assert readers.tricks_label(RunDir(two_runs / "paper")) == "none"
    assert readers.tricks_label(RunDir(two_runs / "bot")) == BOT
    RunDir(two_runs / "bot").config.write_text("train: [not, a, mapping\n")
    assert readers.tricks_label(RunDir(two_runs / "bot")) == "?"


def test_runs_and_compare_pages_show_each_runs_tricks(two_runs: Path) -> None:
    at = open_app()
    assert not at.exception, [e.message for e in at.exception]
    table = at.dataframe[0].value.set_index("run")
    assert table.loc["paper", "tricks"] == "none" and table.loc["bot", "tricks"] == BOT
    at = open_app("pages/compare.py", run="paper", run2="bot")
    assert not at.exception, [e.message for e in at.exception]
    side = next(d.value for d in at.dataframe if "tricks" in d.value.columns).set_index("run")
    assert side.loc["bot", "tricks"] == BOT and side.loc["paper", "tricks"] == "none"


def test_trick_overrides_name_only_what_differs_from_the_base() -> None:
    paper = launching.base_defaults(REPO / "configs" / "cuhk01.yaml")
    assert launching.trick_overrides({"model.neck": "none", "train.label_smoothing": 0.0}, paper) == []
    out = launching.trick_overrides({"model.neck": "bnneck", "model.last_stride": 1, "train.sampler": "pk",
                                     "train.triplet_weight": 1.0}, paper)
    assert out == ['model.neck="bnneck"', "model.last_stride=1", 'train.sampler="pk"', "train.triplet_weight=1.0"]
    cfg = load_config(REPO / "configs" / "cuhk01.yaml", ["data.root=x", *out])
    assert (cfg.model.neck, cfg.model.last_stride, cfg.train.sampler, cfg.train.triplet_weight) == \
        ("bnneck", 1, "pk", 1.0)


def test_launch_page_groups_the_tricks_off_for_a_paper_config(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CPL_DATA_ROOTS", str(tmp_path / "data"))
    monkeypatch.setenv("CPL_RUNS_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("CPL_DEMO", "0")
    at = open_app("pages/launch.py")
    assert not at.exception, [e.message for e in at.exception]
    group = next(e for e in at.expander if e.label.startswith("Strong-baseline tricks"))
    assert group.label.endswith(": off")  # synthetic.yaml follows the papers
    boxes = {c.label: c for c in at.checkbox}
    assert not boxes["BNNeck"].value and not boxes["Last stride 1"].value
    boxes["BNNeck"].check().run()
    boxes = {c.label: c for c in at.checkbox}
    boxes["P × K identity sampler + batch-hard triplet (margin 0.3)"].check().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    resolved = next(c.value for c in at.code if "neck:" in c.value)
    assert "neck: bnneck" in resolved and "sampler: pk" in resolved and "triplet_weight: 1.0" in resolved
