"""The Retrieval page against real run directories made by the pipeline (tests/app_fixtures.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
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


def test_hardest_query_top10_distances_and_ap(app_env, app_run, lists):
    query = pd.read_csv(app_run.features / "query.csv")
    gallery = pd.read_csv(app_run.features / "gallery.csv")
    at = retrieval_page(run=app_run.id)
    qi = int(np.argsort(np.where(np.isnan(lists["ap"]), np.inf, lists["ap"]), kind="stable")[0])
    assert at.selectbox(key="ret-hard-plain").value == qi
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
    qi = at.selectbox(key="ret-hard-plain").value
    at.toggle(key="ret-rerank").set_value(True).run()
    assert at.query_params["rr"] == ["1"] or at.query_params["rr"] == "1"
    picker = at.selectbox(key="ret-hard-rr")  # drawn anew for the re-ranked lists ...
    assert picker.value == qi  # ... still on the same query (?q=) ...
    rr_ap = f"AP {100 * lists['rr_ap'][qi]:.1f}%"
    assert picker.options[picker.index].endswith(rr_ap)  # ... labelled with its re-ranked AP, as the header is
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
    assert at.radio(key="ret-mode").value == "Hardest queries first"
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
        ap = z["ap"]
    qi = int(np.argsort(np.where(np.isnan(ap), np.inf, ap), kind="stable")[0])
    assert at.radio(key="ret-mode").value == "Hardest queries first" and at.selectbox(key="ret-hard-plain").value == qi
    assert len(ranked(at)) == 10
