"""The Embedding page against real run directories made by the pipeline (tests/app_fixtures.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from app_fixtures import values
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
TRAIN, UNLABELED, CENTER = 0, 1, 2


def embedding_page(state: dict | None = None, **params: str) -> AppTest:
    at = AppTest.from_file(str(REPO / "pages" / "embedding.py"), default_timeout=90)
    at.query_params.update(params)
    for key, value in (state or {}).items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def traces(at: AppTest) -> dict[str, dict]:
    (el,) = at.get("plotly_chart")
    return {t["name"]: t for t in json.loads(el.proto.spec)["data"]}


@pytest.fixture(scope="module")
def emb(app_run) -> dict[str, np.ndarray]:
    with np.load(app_run.embedding) as z:
        return {k: z[k] for k in z.files}


def test_three_kinds_of_points(app_env, app_run, emb):
    t = traces(embedding_page(run=app_run.id))
    assert list(t) == ["training images", "unlabeled (GAN) images", "class centers"]
    assert {tr["type"] for tr in t.values()} == {"scattergl"}
    for name, kind in (("training images", TRAIN), ("unlabeled (GAN) images", UNLABELED), ("class centers", CENTER)):
        np.testing.assert_allclose(values(t[name]["x"]), emb["xy"][emb["kind"] == kind, 0])
        np.testing.assert_allclose(values(t[name]["y"]), emb["xy"][emb["kind"] == kind, 1])
    assert t["class centers"]["marker"]["symbol"] == "star"
    assert t["unlabeled (GAN) images"]["marker"]["symbol"] != t["training images"]["marker"]["symbol"]
    # colour is the identity: one numeric value per point, equal for a center and its training images
    train = pd.read_csv(app_run.features / "train.csv")
    colour = values(t["training images"]["marker"]["color"])
    labels = emb["label"][emb["kind"] == TRAIN]
    assert len(colour) == len(labels)
    for k in np.unique(labels):
        assert len(np.unique(colour[labels == k])) == 1
    centers = values(t["class centers"]["marker"]["color"])
    assert centers[0] == colour[labels == 0][0]
    pids = values(t["training images"]["customdata"])[:, 1]
    np.testing.assert_array_equal(pids, train.pid.to_numpy()[emb["row"][emb["kind"] == TRAIN]])


def test_identity_filter_keeps_the_others_as_grey_context(app_env, app_run, emb):
    train = pd.read_csv(app_run.features / "train.csv")
    pid = int(train.pid.iloc[0])
    label = int(train.label.iloc[0])
    at = embedding_page(run=app_run.id)
    at.multiselect(key="emb-ids").set_value([pid]).run()
    t = traces(at)
    assert list(t)[0] == "other identities"
    mine = (emb["label"] == label) & (emb["kind"] == TRAIN)
    assert len(values(t["training images"]["x"])) == mine.sum()
    assert len(values(t["class centers"]["x"])) == 1
    others = (emb["label"] != label) & (emb["kind"] != CENTER)
    assert len(values(t["other identities"]["x"])) == others.sum()
    at.toggle(key="emb-context").set_value(False).run()
    assert "other identities" not in traces(at)


def test_selected_points_show_their_images(app_env, app_run, emb):
    t = traces(embedding_page(run=app_run.id))
    curves = list(t)
    points = [{"curve_number": curves.index("training images"), "point_index": 0},
              {"curve_number": curves.index("unlabeled (GAN) images"), "point_index": 1},
              {"curve_number": curves.index("class centers"), "point_index": 2}]
    # the session already shows this run (else the page forgets its widget state) and holds a selection
    state = {"emb-run": app_run.id,
             "emb-chart": {"selection": {"points": points, "point_indices": [0, 1, 2], "box": [], "lasso": []}}}
    at = embedding_page(state, run=app_run.id)
    captions = [c for im in at.image for c in im.captions]
    train = pd.read_csv(app_run.features / "train.csv")
    labels = pd.read_csv(app_run.pseudo_labels)
    t_row = int(emb["row"][emb["kind"] == TRAIN][0])
    u_row = int(emb["row"][emb["kind"] == UNLABELED][1])
    c_label = int(emb["row"][emb["kind"] == CENTER][2])
    assert f"train {t_row} · pid {train.pid[t_row]} · cam {train.camid[t_row]}" in captions
    assert f"#{u_row} → pid {labels.pid[u_row]} · cos {labels.cos[u_row]:.3f}" in captions
    c_pid = int(train.pid[train.label == c_label].iloc[0])
    assert f"center of pid {c_pid} (a training image of it)" in captions
    assert [s.value for s in at.subheader] == ["3 selected points"]


def test_run_without_umap_says_so(app_env, holdout_run):
    at = embedding_page(run=holdout_run.id)
    assert any("without a UMAP" in i.value for i in at.info)
    assert not at.get("plotly_chart")


def test_hostile_run_id_is_ignored(app_env, app_run):
    at = embedding_page(run="../../etc")
    assert any("Ignoring `?run=`" in w.value for w in at.warning)
