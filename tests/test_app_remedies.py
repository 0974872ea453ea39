"""The remedies for hub collapse in the app: the Runs table, Compare's runs side by side and a sweep's cells
name the ones each run used, from its config.yaml, so a remedy run never reads as plain CPL."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_fixtures import open_app

from app import readers
from cpl.config import dump_yaml, load_config
from cpl.remedy_table import parse_variants
from cpl.runs.rundir import RunDir, create_run
from cpl.sweep.grid import create_sweep, prepare_cell

REPO = Path(__file__).resolve().parents[1]
REMEDY_RUNS = {  # run id -> (method, overrides, the label the app shows)
    "plain": ("cpl", [], "none"),
    "balanced": ("cpl", ["train.assignment=sinkhorn", "train.select_min_margin=0.05"],
                 "sinkhorn, select(margin≥0.05)"),
    "hubness": ("fapl", ["train.similarity=csls", "train.csls_k=5", "train.assignment=sinkhorn",
                         "train.sinkhorn_epsilon=0.1"], "sinkhorn(ε=0.1), csls(k=5)"),
    "softmax": ("onehot", ["train.select_min_score=0.95"], "select(score≥0.95)"),
    "reference": ("baseline", ["unlabeled.source=none"], "none"),
}


@pytest.fixture
def remedy_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs whose config.yaml is a real, validated CUHK01 config with the remedies of :data:`REMEDY_RUNS`."""
    monkeypatch.setenv("CPL_RUNS_ROOT", str(tmp_path))
    monkeypatch.setenv("CPL_DEMO", "0")
    for run_id, (method, overrides, _) in REMEDY_RUNS.items():
        cfg = load_config(REPO / "configs" / "cuhk01.yaml", ["data.root=x", f"train.method={method}", *overrides])
        create_run(tmp_path, run_id, dump_yaml(cfg), {"method": method, "backbone": cfg.model.backbone})
    return tmp_path


def test_remedies_label_reads_the_run_config(remedy_runs: Path) -> None:
    for run_id, (_, _, label) in REMEDY_RUNS.items():
        assert readers.remedies_label(RunDir(remedy_runs / run_id)) == label, run_id
    RunDir(remedy_runs / "balanced").config.write_text("train: [not, a, mapping\n")
    assert readers.remedies_label(RunDir(remedy_runs / "balanced")) == "?"


def test_runs_and_compare_pages_show_each_runs_remedies(remedy_runs: Path) -> None:
    at = open_app()
    assert not at.exception, [e.message for e in at.exception]
    table = at.dataframe[0].value.set_index("run")
    assert {r: table.loc[r, "remedies"] for r in REMEDY_RUNS} == {r: v[2] for r, v in REMEDY_RUNS.items()}
    assert table.loc["balanced", "method"] == table.loc["plain", "method"] == "cpl"  # told apart by remedies only
    at = open_app("pages/compare.py", run="plain", run2="balanced")
    assert not at.exception, [e.message for e in at.exception]
    side = next(d.value for d in at.dataframe if "remedies" in d.value.columns).set_index("run")
    assert side.loc["plain", "remedies"] == "none" and side.loc["balanced", "remedies"] == REMEDY_RUNS["balanced"][2]


def test_a_sweeps_cells_name_their_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPL_RUNS_ROOT", str(tmp_path))
    monkeypatch.setenv("CPL_DEMO", "0")
    folder = create_sweep(tmp_path, "configs/synthetic.yaml", ["baseline", "cpl"], [0, 100], [0],
                          ["model.pretrained=none"], "s", variants=parse_variants("none;sinkhorn"))
    spec = readers.sweep_spec(folder)
    prepare_cell(spec, spec["cells"][2], tmp_path)  # the sinkhorn cell's run directory, as the sweep creates it
    cells = readers.sweep_cells(folder, tmp_path).set_index("run")
    assert cells.loc["s--cpl-g100-s0-sinkhorn", "remedies"] == "sinkhorn"  # from the cell's config.yaml
    assert cells.loc["s--cpl-g100-s0", "remedies"] == "none"  # not created yet: sweep.json's variant
    at = open_app("pages/runs.py", sweep="s")
    assert not at.exception, [e.message for e in at.exception]
    assert any("· remedy variants none, sinkhorn ·" in c.value for c in at.caption)
    shown = next(d.value for d in at.dataframe if "remedies" in d.value.columns and "gan_images" in d.value.columns)
    assert dict(zip(shown["run"], shown["remedies"])) == {"s--baseline-g0-s0": "none", "s--cpl-g100-s0": "none",
                                                           "s--cpl-g100-s0-sinkhorn": "sinkhorn"}
