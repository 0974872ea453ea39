"""The pseudo-label diagnostics views on real fixture runs (tests/app_fixtures.py) and on damaged copies: the GAN
page's identity-usage chart (filtering the grid), collapse warning and data map (opening "Why?"), Runs →
Pseudo-labels, and Compare's overlays and per-cell table."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from app_fixtures import open_app
from test_app_gan import chart, gan_page, grid_captions, isolated_copy, values

from cpl.pseudo import diagnostics as dg
from cpl.runs.diagnostics import read_epoch_stats
from cpl.runs.rundir import RunDir


def _select(at, key: str, points: list[dict]) -> None:
    """What a click / box selection on a chart sends (Streamlit's selection state of that chart)."""
    at.session_state[key] = {"selection": {"points": points, "point_indices": list(range(len(points))),
                                           "box": [], "lasso": []}}
    at.run()
    assert not at.exception, [e.message for e in at.exception]


def test_usage_chart_counts_lorenz_and_click_filters_the_grid(app_env, app_run):
    table = pd.read_csv(app_run.pseudo_labels)
    k = pd.read_csv(app_run.features / "train.csv").label.nunique()
    at = gan_page(run=app_run.id)
    fig = chart(at, "gan-usage")
    bars, lorenz = fig["data"][0], next(t for t in fig["data"] if t.get("name") == "Lorenz curve")
    counts = values(bars["y"])
    assert counts.sum() == (table.label >= 0).sum() and len(bars["x"]) == k
    assert list(counts) == sorted(counts, reverse=True)  # most chosen first
    y = values(lorenz["y"])
    assert y[0] == 0 and y[-1] == pytest.approx(100) and np.all(np.diff(y) >= 0)
    assert y[k - 1] == pytest.approx(100 * (1 - counts[0] / counts.sum()))  # all but the most chosen identity
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Download images per identity (CSV)", "Download the assignment table (CSV)",
                      "Download the data map (CSV)"]

    pid = int(table.pid.value_counts().index[-1])  # the least-assigned identity that got any image
    _select(at, "gan-usage", [{"curve_number": 0, "point_index": 0, "x": str(pid), "customdata": pid}])
    assert at.multiselect(key="gan-ids").value == [pid]
    caps = grid_captions(at)
    assert len(caps) == min(48, (table.pid == pid).sum()) and {int(m[2]) for m in caps} == {pid}
    at.multiselect(key="gan-ids").set_value([]).run()  # the same click does not re-apply: the filter stays editable
    assert len(grid_captions(at)) == min(48, len(table))


def test_collapse_warning_names_what_it_measured_and_the_remedies(app_world, app_run, tmp_path, monkeypatch):
    last = [r for r in read_epoch_stats(app_run.pseudo_stats) if r.seen][-1]
    copy = RunDir(isolated_copy(app_world, app_run, tmp_path, monkeypatch))
    at = gan_page(run="copy")
    assert any("collapsed" in w.value for w in at.warning) == last.collapsed()
    with np.load(copy.pseudo_history) as z:
        labels, conf, margin = z["labels"], z["confidence"], z["margin"]
    k = last.k
    labels = np.where(labels >= 0, 3, -1)  # every drawn image on one identity
    dg.write(copy, dg.History(labels=labels, conf=conf, margin=margin), k)
    at = gan_page(run="copy")
    text = " ".join(w.value for w in at.warning if "collapsed" in w.value)
    seen = int((labels[-1] >= 0).sum())
    assert f"received 100% of the {seen:,} unlabeled images" in text and f"1 of {k} identities" in text
    for setting in ("train.assignment=sinkhorn", "train.similarity=csls", "train.select_min_score"):
        assert setting in text


def test_data_map_points_selection_and_why(app_env, holdout_run):
    m = pd.read_csv(holdout_run.data_map)
    drawn = m[m.epochs_seen > 0]
    at = gan_page(run=holdout_run.id)
    trace = chart(at, "gan-map")["data"][0]
    assert sorted(values(trace["customdata"]).tolist()) == drawn["index"].tolist()
    order = values(trace["customdata"]).astype(int)
    np.testing.assert_allclose(values(trace["x"]), m.variability.to_numpy()[order], atol=1e-5)
    np.testing.assert_allclose(values(trace["y"]), m.confidence.to_numpy()[order], atol=1e-5)
    # holdout: coloured by the share of epochs labeled right, in percent
    np.testing.assert_allclose(values(trace["marker"]["color"]), 100 * m.correctness.to_numpy()[order], atol=1e-3)

    picked = [int(i) for i in order[:2]]
    _select(at, "gan-map", [{"curve_number": 0, "point_index": j, "customdata": i} for j, i in enumerate(picked)])
    assert any("2 selected image(s)" in md.value for md in at.markdown)
    shown = [c for im in at.image for c in im.captions if " · conf " in c and " · var " in c]
    assert [int(c.split()[0][1:]) for c in shown] == picked
    at.button(key=f"map-pick-{picked[1]}").click().run()
    assert at.number_input(key="gan-img").value == picked[1]
    table = pd.read_csv(holdout_run.pseudo_labels)
    assert f"Assigned: pid {table.pid[picked[1]]}**" in " ".join(md.value for md in at.markdown)


def test_runs_pseudo_labels_tab_draws_every_statistic(app_env, holdout_run):
    stats = pd.read_csv(holdout_run.pseudo_stats)
    at = open_app(run=holdout_run.id)
    assert not at.exception, [e.message for e in at.exception]
    figs = [c for c in at.get("plotly_chart") if "-diag-" in c.proto.id]
    data = {t["name"]: t for f in figs for t in json.loads(f.proto.spec)["data"]}
    assert {"identities used / K", "normalised entropy (1 = uniform)", "Gini coefficient (0 = uniform)", "changed",
            "median score behind the label", "accuracy", "normalised mutual information"} <= set(data)
    drawn = stats.acc.notna()
    np.testing.assert_allclose(values(data["accuracy"]["y"]), 100 * stats.acc[drawn], rtol=1e-5)
    np.testing.assert_allclose(values(data["adjusted Rand index"]["y"]), stats.ari[stats.ari.notna()], rtol=1e-5)
    assert "Download the per-epoch diagnostics (CSV)" in [b.label for b in at.get("download_button")]


def test_compare_sweep_cells_and_runs_overlay(app_env, app_sweep, holdout_run):
    stats = [r for r in read_epoch_stats(holdout_run.pseudo_stats) if r.seen][-1]
    runs_csv = pd.read_csv(app_sweep / "runs.csv")
    cell = runs_csv[runs_csv.run_id == holdout_run.id].iloc[0]
    assert cell.pl_top10 == pytest.approx(100 * stats.top_share) and cell.pl_nmi == pytest.approx(stats.nmi)
    at = open_app("pages/compare.py", sweep="tiny", run=holdout_run.id)
    assert not at.exception, [e.message for e in at.exception]
    tables = [d.value for d in at.dataframe if "top 10 % share (%)" in d.value.columns]
    assert len(tables) == 2  # the sweep's cells, and the runs side by side
    row = tables[0].iloc[0]
    assert row["run"] == "cpl · 64 · s0" and row["accuracy (%)"] == pytest.approx(100 * stats.acc)
    assert row["changed (%)"] == pytest.approx(100 * stats.changed_frac, nan_ok=True)
    overlay = [c for c in at.get("plotly_chart") if "compare-diag-" in c.proto.id]
    assert overlay and all("epoch" in c.proto.spec for c in overlay)


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_damaged_diagnostics_files_say_so(app_world, app_run, tmp_path, monkeypatch, damage):
    copy = RunDir(isolated_copy(app_world, app_run, tmp_path, monkeypatch))
    for path in (copy.pseudo_stats, copy.data_map, copy.pseudo_identities):
        if damage == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        else:
            path.unlink()
    word = "is damaged" if damage == "truncated" else "in this run"
    at = gan_page(run="copy")
    assert any("data_map.csv" in i.value and word in i.value for i in at.info)
    assert len(grid_captions(at)) > 0 and chart(at, "gan-usage")  # the rest of the page is drawn
    at = open_app(run="copy")
    assert not at.exception, [e.message for e in at.exception]
    assert any("pseudo_stats.csv" in c.value and word in c.value for c in at.caption)
    at = open_app("pages/compare.py", run="copy")
    assert not at.exception, [e.message for e in at.exception]
    assert any("pseudo_stats.csv" in c.value and "copy" in c.value for c in at.caption)
