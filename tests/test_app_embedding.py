"""The Embedding page against real run directories made by the pipeline (tests/app_fixtures.py)."""

from __future__ import annotations

import json
import re
import shutil
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


def figure(at: AppTest) -> dict:
    (el,) = at.get("plotly_chart")
    return json.loads(el.proto.spec)


def traces(at: AppTest) -> dict[str, dict]:
    """The data traces (WebGL) by name; the legend's entries are separate SVG traces without points."""
    return {t["name"]: t for t in figure(at)["data"] if t["type"] == "scattergl"}


def colour_of(trace: dict) -> list[str]:
    """Each point's colour: its numeric value looked up in the trace's stepped colour scale."""
    scale = trace["marker"]["colorscale"]
    lo, hi = trace["marker"]["cmin"], trace["marker"]["cmax"]
    out = []
    for v in values(trace["marker"]["color"]):
        at = (v - lo) / (hi - lo)
        out.append(next(c for (a, c), (b, _) in zip(scale[::2], scale[1::2]) if a <= at <= b))
    return out


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
    assert t["class centers"]["marker"]["symbol"] == "star-open"  # marks a class without hiding its points
    assert list(t)[-1] == "class centers"  # drawn over the points
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


def test_legend_shows_kinds_in_a_neutral_colour_and_identities_do_not_repeat(app_env, app_run, emb):
    fig = figure(embedding_page(run=app_run.id))
    data = [t for t in fig["data"] if t["type"] == "scattergl"]
    legend = [t for t in fig["data"] if t.get("showlegend") is not False]
    # the data traces stay out of the legend (its symbol would take the colour of an arbitrary first point) ...
    assert all(t["showlegend"] is False for t in data)
    # ... and the legend has one entry per kind, in its shape, all in one neutral grey, toggling its kind
    assert [t["name"] for t in legend] == ["training images", "unlabeled (GAN) images", "class centers"]
    assert {t["marker"]["color"] for t in legend} == {"#6b6b6b"}
    assert [t["marker"]["symbol"] for t in legend] == [t["marker"]["symbol"] for t in data]
    assert [t["legendgroup"] for t in legend] == [t["legendgroup"] for t in data]
    # every identity has a colour of its own: as many colours as centers (21 here, 120 for CUHK01, 751 Market)
    centers = colour_of(traces_by_name(data)["class centers"])
    assert len(set(centers)) == len(centers) == (emb["kind"] == CENTER).sum()


def traces_by_name(data: list[dict]) -> dict[str, dict]:
    return {t["name"]: t for t in data}


def test_domain_gap_is_measured_from_the_features(app_env, app_run, tmp_path, monkeypatch):
    feats = {n: np.load(app_run.features / f"{n}.npy").astype(np.float32) for n in ("train", "unlabeled", "centers")}
    norms = np.linalg.norm(feats["centers"], axis=1)
    centers = feats["centers"][norms > 0] / norms[norms > 0, None]  # a class without a center has a zero row

    def mean_distance(f):
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
        return float((1 - (f @ centers.T).max(axis=1)).mean())

    real, gan = mean_distance(feats["train"]), mean_distance(feats["unlabeled"])
    at = embedding_page(run=app_run.id)
    text = " ".join([m.value for m in at.caption] + [i.value for i in at.info])
    assert f"GAN images lie at cosine distance {gan:.3f}" in text and f"training images at {real:.3f}" in text
    assert ("form an island" in text) == (gan >= 1.5 * real)
    # the same run with its GAN features moved away from every center: the page says they form an island
    root = tmp_path / "runs"
    shutil.copytree(app_run.path, root / "copy", ignore=shutil.ignore_patterns("checkpoints"))
    away = np.linalg.svd(centers)[2][-1]  # a direction orthogonal to every center (K < D)
    np.save(root / "copy" / "features" / "unlabeled.npy",
            np.tile(away, (len(feats["unlabeled"]), 1)).astype(np.float16))
    monkeypatch.setenv("CPL_RUNS_ROOT", str(root))
    at = embedding_page(run="copy")
    [note] = [i.value for i in at.info if "form an island away from every center" in i.value]
    assert float(re.search(r"GAN images lie at cosine distance (\d\.\d+)", note)[1]) == pytest.approx(1.0, abs=0.01)


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
