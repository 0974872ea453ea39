"""The Retrieval page against real run directories made by the pipeline (tests/app_fixtures.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from app_fixtures import values
from PIL import Image
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
CARD = re.compile(r"^\*\*(\d+)\*\* · d (-?\d+\.\d{3})  \npid (-?\d+) · cam (\d+) ?(.*)$")


def retrieval_page(**params: str) -> AppTest:
    at = AppTest.from_file(str(REPO / "pages" / "retrieval.py"), default_timeout=120)
    at.query_params.update(params)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def ranked(at: AppTest) -> list[re.Match]:
    found = [CARD.match(c) for im in at.image for c in im.captions]
    return [m for m in found if m]


@pytest.fixture(scope="module")
def lists(app_run) -> dict[str, np.ndarray]:
    with np.load(app_run.retrieval) as z:
        return {k: z[k] for k in z.files}


def check_list(cards: list[re.Match], index: np.ndarray, dist: np.ndarray, q: pd.Series,
               gallery: pd.DataFrame) -> None:
    assert [int(m[1]) for m in cards] == list(range(1, len(cards) + 1))
    for m, g_row, d in zip(cards, index, dist):
        g = gallery.iloc[int(g_row)]
        assert float(m[2]) == pytest.approx(float(d), abs=5e-4)
        assert int(m[3]) == g.pid and int(m[4]) == g.camid
        if g.pid == q.pid and g.camid != q.camid:
            assert "✓" in m[5]
        elif g.pid == q.pid:
            assert "ignored" in m[5]
        else:
            assert "✗" in m[5]


def query_label(query: pd.DataFrame, lists: dict, i: int) -> str:
    ap, first = lists["ap"][i], lists["first_match"][i]
    scored = "no valid match in the gallery" if np.isnan(ap) else f"AP {100 * ap:.1f}% · first match at rank {first}"
    return f"q{i} · pid {query.pid[i]} · cam {query.camid[i]} · {scored}"


def worst_first(ap: np.ndarray, first: np.ndarray) -> list[int]:
    """Queries by (no valid match last, AP ascending, first-match rank descending, row)."""
    return sorted(range(len(ap)), key=lambda i: (bool(np.isnan(ap[i])), 0.0 if np.isnan(ap[i]) else ap[i],
                                                 -first[i], i))


def test_worst_query_first_top10_distances_and_ap(app_env, app_run, lists):
    query = pd.read_csv(app_run.features / "query.csv")
    gallery = pd.read_csv(app_run.features / "gallery.csv")
    at = retrieval_page(run=app_run.id)
    order = worst_first(lists["ap"], lists["first_match"])
    assert at.selectbox(key="ret-order").value == "worst"
    assert at.selectbox(key="ret-browse-plain").options == [query_label(query, lists, i) for i in order]
    qi = order[0]
    assert at.selectbox(key="ret-browse-plain").value == qi
    assert at.query_params["order"] == "worst" and at.query_params["q"] == str(qi)
    cards = ranked(at)
    assert len(cards) == 10
    check_list(cards, lists["index"][qi, :10], lists["dist"][qi, :10], query.iloc[qi], gallery)
    text = " ".join(m.value for m in at.markdown)
    assert f"AP {100 * lists['ap'][qi]:.1f}%" in text
    assert f"query q{qi} · pid {query.pid[qi]} · cam {query.camid[qi]}" in [c for im in at.image for c in im.captions]


def test_rerank_toggle_query_param_and_topk(app_env, app_run, lists):
    query = pd.read_csv(app_run.features / "query.csv")
    gallery = pd.read_csv(app_run.features / "gallery.csv")
    at = retrieval_page(run=app_run.id, q="5")
    assert at.radio(key="ret-mode").value == "By query number" and at.number_input(key="ret-number").value == 5
    at.toggle(key="ret-rerank").set_value(True).run()
    at.slider(key="ret-topk").set_value(4).run()
    cards = ranked(at)
    assert len(cards) == 4
    check_list(cards, lists["rr_index"][5, :4], lists["rr_dist"][5, :4], query.iloc[5], gallery)
    text = " ".join(m.value for m in at.markdown)
    assert f"AP {100 * lists['rr_ap'][5]:.1f}%" in text and "re-ranked" in text


def test_rerank_relabels_the_picked_query_and_is_kept_in_the_url(app_env, app_run, lists):
    at = retrieval_page(run=app_run.id)
    qi = at.selectbox(key="ret-browse-plain").value
    at.toggle(key="ret-rerank").set_value(True).run()
    assert at.query_params["rr"] == ["1"] or at.query_params["rr"] == "1"
    picker = at.selectbox(key="ret-browse-rr")  # drawn anew for the re-ranked lists ...
    assert picker.value == qi  # ... still on the same query (?q=) ...
    rr_ap = f"AP {100 * lists['rr_ap'][qi]:.1f}%"
    assert f"· {rr_ap} ·" in picker.options[picker.index]  # ... labelled with its re-ranked AP, as the header is
    assert any(rr_ap in m.value and "re-ranked" in m.value for m in at.markdown)
    # a link with ?rr=1 opens with re-ranking on; switching it off drops the parameter
    at = retrieval_page(run=app_run.id, q=str(qi), rr="1")
    assert at.toggle(key="ret-rerank").value is True
    assert any(rr_ap in m.value and "re-ranked" in m.value for m in at.markdown)
    at.toggle(key="ret-rerank").set_value(False).run()
    assert "rr" not in at.query_params


def test_second_run_side_by_side(app_env, app_run, holdout_run, lists):
    with np.load(holdout_run.retrieval) as z:
        other = {k: z[k] for k in z.files}
    at = retrieval_page(run=app_run.id, run2=holdout_run.id, q="3")
    cards = ranked(at)
    assert len(cards) == 20  # 10 per run
    query = pd.read_csv(app_run.features / "query.csv")
    gallery = pd.read_csv(app_run.features / "gallery.csv")
    check_list(cards[10:], other["index"][3, :10], other["dist"][3, :10], query.iloc[3], gallery)
    heads = [m.value for m in at.markdown if m.value.startswith("**")]
    assert heads[0].startswith(f"**{app_run.id}**") and f"AP {100 * lists['ap'][3]:.1f}%" in heads[0]
    assert heads[1].startswith(f"**{holdout_run.id}**") and f"AP {100 * other['ap'][3]:.1f}%" in heads[1]


def test_hostile_parameters_are_ignored(app_env, app_run):
    at = retrieval_page(run=app_run.id, run2="../../etc", q="../1")
    assert any("Ignoring `?run2=`" in w.value for w in at.sidebar.warning)
    assert at.radio(key="ret-mode").value == "Browse queries"
    assert len(ranked(at)) == 10
    at = retrieval_page(run="..")
    assert any("Ignoring `?run=`" in w.value for w in at.warning)


def test_upload_refuses_a_non_image_and_ranks_a_real_one(app_env, app_run):
    at = retrieval_page(run=app_run.id)
    at.radio(key="ret-mode").set_value("Upload an image").run()
    at.file_uploader(key="ret-upload").set_value(("evil.png", b"#!/bin/sh\nrm -rf /\n", "image/png")).run()
    assert any("not an image this app reads" in e.value for e in at.error)
    assert not ranked(at)

    gallery = pd.read_csv(app_run.features / "gallery.csv")
    row = 7
    data = Path(gallery.path[row]).read_bytes()
    at.file_uploader(key="ret-upload").set_value(("probe.jpg", data, "image/jpeg")).run()
    assert not at.error, [e.value for e in at.error]
    cards = ranked(at)
    assert len(cards) == 10
    assert int(cards[0][3]) == gallery.pid[row] and int(cards[0][4]) == gallery.camid[row]
    assert abs(float(cards[0][2])) < 0.01  # the image itself, at distance ~0


def test_switching_runs_keeps_the_page_consistent(app_env, app_run, holdout_run):
    at = retrieval_page(run=app_run.id, q="40")
    at.selectbox(key="select-run").set_value(holdout_run.id).run()
    assert not at.exception, [e.message for e in at.exception]
    with np.load(holdout_run.retrieval) as z:
        qi = worst_first(z["ap"], z["first_match"])[0]
    assert at.radio(key="ret-mode").value == "Browse queries" and at.selectbox(key="ret-browse-plain").value == qi
    assert len(ranked(at)) == 10


def test_order_and_filters_live_in_the_url(app_env, app_run, lists):
    query = pd.read_csv(app_run.features / "query.csv")
    cam = int(query.camid.mode()[0])
    at = retrieval_page(run=app_run.id, order="best", cam=str(cam))
    ap, first = lists["ap"], lists["first_match"]
    mine = [i for i in range(len(query)) if query.camid[i] == cam]
    best = sorted(mine, key=lambda i: (bool(np.isnan(ap[i])), -(0.0 if np.isnan(ap[i]) else ap[i]), first[i], i))
    assert at.selectbox(key="ret-order").value == "best" and at.selectbox(key="ret-filter-cam").value == cam
    assert at.selectbox(key="ret-browse-plain").options == [query_label(query, lists, i) for i in best]
    pid = int(query.pid[best[0]])
    at.selectbox(key="ret-filter-pid").set_value(pid).run()
    at.selectbox(key="ret-order").set_value("file").run()
    rows = [i for i in mine if query.pid[i] == pid]
    assert at.selectbox(key="ret-browse-plain").options == [query_label(query, lists, i) for i in rows]
    assert (at.query_params["order"], at.query_params["pid"], at.query_params["cam"]) == ("file", str(pid), str(cam))
    # a hostile or unknown filter value is ignored
    at = retrieval_page(run=app_run.id, order="worst", pid="99999", cam="x")
    assert at.selectbox(key="ret-filter-pid").value is None and at.selectbox(key="ret-filter-cam").value is None
    assert len(at.selectbox(key="ret-browse-plain").options) == len(query)


def test_ranked_list_sheet_of_the_worst_queries(app_env, app_run, lists):
    gallery = pd.read_csv(app_run.features / "gallery.csv")
    query = pd.read_csv(app_run.features / "query.csv")
    (app_run.sheets / "worst-3-top4.png").unlink(missing_ok=True)  # the button shows only while there is none
    at = retrieval_page(run=app_run.id)
    at.number_input(key="ret-sheet-n").set_value(3).run()
    at.number_input(key="ret-sheet-k").set_value(4).run()
    at.button(key="ret-sheet-make").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    (dl,) = [b for b in at.get("download_button") if b.proto.label.endswith(".png")]
    assert dl.proto.label == "Download worst-3-top4.png"
    sheet = Image.open(app_run.sheets / "worst-3-top4.png")
    tile_w, row_h = 64 + 8, (128 + 8) + 14 + 6  # tile + frame, then the label strip and the spacing
    assert sheet.size == (tile_w * 5 + 6 * 4 + 30, 3 * row_h)
    for r, qi in enumerate(worst_first(lists["ap"], lists["first_match"])[:3]):
        q = query.iloc[qi]
        kept = [g for g in lists["index"][qi] if gallery.pid[g] != -1
                and not (gallery.pid[g] == q.pid and gallery.camid[g] == q.camid)][:4]
        for j, g in enumerate(kept):  # the frame's colour at the tile's top-left corner
            colour = sheet.getpixel((tile_w + 30 + j * (tile_w + 6) + 1, r * row_h + 14 + 1))
            assert colour == ((0, 170, 0) if gallery.pid[g] == q.pid else (220, 0, 0))


def test_activation_overlay_of_the_query_and_its_top5(app_env, app_run):
    (app_run.actmaps / "q2-top5.png").unlink(missing_ok=True)  # the button shows only while there is none
    at = retrieval_page(run=app_run.id, q="2")
    at.button(key="ret-actmap").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "activation maps: q2 (blue), then its top 5" in [c for im in at.image for c in im.captions]
    strip = np.asarray(Image.open(app_run.actmaps / "q2-top5.png"))
    assert strip.shape == (128 + 8, 6 * (64 + 8 + 6), 3)
    query = pd.read_csv(app_run.features / "query.csv")
    image = Image.open(query.path[2]).convert("RGB").resize((64, 128), Image.Resampling.BILINEAR, reducing_gap=None)
    raw = np.asarray(image, dtype=np.float32)
    over = strip[4:132, 4:68].astype(np.float32)  # inside the query's frame
    assert np.abs(over - raw).mean() > 20
    # 0.3 x image + 0.7 x jet colour: taking the image's share out leaves a jet colour, whose largest channel is
    # at least half of 255 everywhere (up to rounding)
    heat = (over - 0.3 * raw) / 0.7
    assert heat.min() > -2 and heat.max() < 257
    assert heat.max(axis=2).min() > 124


def test_distance_distributions_and_roc(app_env, app_run):
    at = retrieval_page(run=app_run.id)
    with np.load(app_run.distances) as d:
        dist = {k: d[k] for k in d.files}
    assert any(e.label == f"Distances and ROC (AUC {float(dist['auc']):.3f})" for e in at.expander)
    figs = {(f := json.loads(c.proto.spec))["layout"]["title"]["text"]: f for c in at.get("plotly_chart")}
    roc = figs["ROC curve"]["data"][0]
    np.testing.assert_allclose(values(roc["x"]), dist["fpr"])
    match = figs["Distances of matching and non-matching pairs"]["data"][0]
    edges = dist["edges"].astype(float)[::4]  # drawn in bins of 4 stored ones
    counts = dist["match_hist"].reshape(-1, 4).sum(axis=1)
    np.testing.assert_allclose(values(match["x"]), (edges[1:] + edges[:-1]) / 2)
    np.testing.assert_allclose(values(match["y"]), counts / (counts.sum() * np.diff(edges)))
    assert float(dist["auc"]) > 0.5  # a trained network ranks matches closer than non-matches
