"""The GAN samples & pseudo-labels page against real run directories made by the pipeline (tests/app_fixtures.py).

That no page imports torch is tested for the whole app in tests/test_app_torch_free.py.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
GRID = re.compile(r"^\*\*#(\d+)\*\* → \*\*pid (\d+)\*\*(.*)\s+cos (-?\d\.\d{3}) · margin (-?[\d.]+)", re.S)


def gan_page(**params: str) -> AppTest:
    at = AppTest.from_file(str(REPO / "pages" / "gan.py"), default_timeout=90)
    at.query_params.update(params)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def grid_captions(at: AppTest) -> list[re.Match]:
    """The grid's image captions, parsed (the detail section's images have other captions)."""
    found = [GRID.match(c) for im in at.image for c in im.captions]
    return [m for m in found if m]


def margin_shown(text: str, stored: float) -> bool:
    """Whether a margin's text shows the stored one: 3 decimals, or 2 significant digits below 0.01 (a small
    margin reads as what it is, never as "0.000"); the file holds 5 decimals."""
    if abs(stored) >= 0.01:
        return float(text) == pytest.approx(stored, abs=6e-4)
    return float(text) == pytest.approx(stored, rel=0.05, abs=1e-5) and (stored == 0 or text.strip("0.-") != "")


def values(field) -> np.ndarray:
    """A plotly JSON array: a list, or numpy data as ``{"dtype", "bdata"}`` (base64)."""
    if isinstance(field, dict):
        return np.frombuffer(base64.b64decode(field["bdata"]), dtype=field["dtype"])
    return np.asarray(field)


def chart(at: AppTest, key: str) -> dict:
    for el in at.get("plotly_chart"):
        if el.proto.id.endswith(key):
            return json.loads(el.proto.spec)
    raise AssertionError(f"no chart {key}")


def test_grid_captions_usage_chart_and_download(app_env, app_run):
    at = gan_page(run=app_run.id)
    table = pd.read_csv(app_run.pseudo_labels)
    caps = grid_captions(at)
    assert len(caps) == min(48, len(table))  # first page of the default page size
    for m in caps:
        row = table.iloc[int(m[1])]
        assert int(m[2]) == row.pid
        # shown with 3 decimals, stored with 5 (pseudo_labels.csv): up to 5e-4 + 5e-6 apart
        assert float(m[4]) == pytest.approx(row.cos, abs=6e-4)
        assert margin_shown(m[5], row.margin)
        assert "✓" not in m[3] and "✗" not in m[3]  # GAN images have no hidden truth
    assert "Download the assignment table (CSV)" in [b.label for b in at.get("download_button")]
    bars = chart(at, "gan-usage")["data"][0]
    assert values(bars["y"]).sum() == (table.label >= 0).sum()
    assert len(bars["x"]) == pd.read_csv(app_run.features / "train.csv").label.nunique()  # zeros included
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["unlabeled images"] == f"{len(table):,}"
    assert metrics["median cosine"] == f"{table.cos.median():.3f}"
    q = json.loads(app_run.gan.read_text())["quality"]
    assert metrics["GAN Fréchet distance"] == f"{q['fd']:.0f}"
    assert metrics["real-vs-real floor"] == f"{q['fd_floor']:.0f}"


def test_sort_filter_and_why_this_label(app_env, app_run):
    table = pd.read_csv(app_run.pseudo_labels)
    at = gan_page(run=app_run.id)
    at.selectbox(key="gan-sort").set_value("Confidence, lowest first").run()
    caps = grid_captions(at)
    assert float(caps[0][4]) == pytest.approx(table.cos.min(), abs=6e-4)
    assert [float(m[4]) for m in caps] == sorted(float(m[4]) for m in caps)

    pid = int(table.pid.value_counts().index[-1])  # the least-assigned identity
    at.multiselect(key="gan-ids").set_value([pid]).run()
    caps = grid_captions(at)
    assert len(caps) == min(48, (table.pid == pid).sum()) and {int(m[2]) for m in caps} == {pid}

    pick = int(caps[0][1])
    assert not at.get("dialog")
    at.button(key=f"pick-{pick}").click().run()
    assert at.number_input(key="gan-img").value == pick
    row = table.iloc[pick]
    # "Why?" opens the explanation as a dialog over the grid (the section below the grid shows it too)
    [dialog] = at.get("dialog")
    text = " ".join(m.value for m in dialog.markdown)
    assert f"Assigned: pid {row.pid}** · cos {row.cos:.3f}" in text
    text = " ".join(m.value for m in at.markdown)
    assert f"Assigned: pid {row.pid}** · cos {row.cos:.3f}" in text
    assert f"Runner-up: pid {int(row.runner_up_pid)}** · cos {row.runner_up_cos:.3f}" in text
    assert margin_shown(re.search(r"\(margin (-?[\d.]+)\)", text)[1], row.margin)
    # the real images beside it are labeled training images of those two identities
    train = pd.read_csv(app_run.features / "train.csv")
    shown = [int(c.split()[1]) for im in dialog.image for c in im.captions if c.startswith("pid ")]
    for label, pid in ((row.label, row.pid), (row.runner_up, row.runner_up_pid)):
        assert shown.count(int(pid)) == min(8, (train.label == label).sum())


def test_holdout_marks_and_accuracy(app_env, holdout_run):
    table = pd.read_csv(holdout_run.pseudo_labels)
    assert table.correct.notna().all()
    at = gan_page(run=holdout_run.id)
    caps = grid_captions(at)
    assert caps
    for m in caps:
        row = table.iloc[int(m[1])]
        assert ("✓" in m[3]) == (row.correct == 1) and ("✗" in m[3]) == (row.correct == 0)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["label accuracy"] == f"{100 * table.correct.mean():.1f}%"
    curves = chart(at, "gan-curves")
    names = [t.get("name") for t in curves["data"]]
    assert curves["layout"]["yaxis2"]["title"]["text"] == "cosine / probability / share"  # what it plots
    assert "pseudo-label accuracy" in names
    at.radio(key="gan-verdict").set_value("✗ wrong").run()
    caps = grid_captions(at)
    assert len(caps) == min(48, (table.correct == 0).sum()) and all("✗" in m[3] for m in caps)


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 64), (200, 30, 30)).save(path)
    return path


def isolated_copy(world, run, tmp_path: Path, monkeypatch, drop: tuple[str, ...] = ()) -> Path:
    """A copy of ``run`` as the only run of a fresh runs root (CSV paths made absolute), the app pointed at it."""
    root = tmp_path / "runs"
    copy = root / "copy"
    shutil.copytree(run.path, copy, ignore=shutil.ignore_patterns("checkpoints", *drop))
    for name in ("pseudo_labels.csv", "unlabeled.csv"):
        if (copy / name).is_file():
            table = pd.read_csv(copy / name)
            table["path"] = [str((run.path / p).resolve()) for p in table.path]  # the GAN cache stays reachable
            table.to_csv(copy / name, index=False)
    monkeypatch.setenv("CPL_RUNS_ROOT", str(root))
    monkeypatch.setenv("CPL_DATA_ROOTS", os.pathsep.join([str(world.data_root), str(world.runs_root)]))
    return copy


def test_hostile_url_and_paths_outside_the_roots(app_world, app_run, tmp_path, monkeypatch):
    # The run's CSV names an image outside every allowed root, directly and by '../'.
    hostile = isolated_copy(app_world, app_run, tmp_path, monkeypatch)
    secret = _png(tmp_path / "outside" / "secret.png")
    table = pd.read_csv(hostile / "pseudo_labels.csv")
    table.loc[0, "path"] = str(secret)
    table.loc[1, "path"] = os.path.relpath(secret, hostile)
    table.to_csv(hostile / "pseudo_labels.csv", index=False)

    at = gan_page(run="copy", img="0")
    caps = grid_captions(at)
    page = min(48, len(table))
    assert {int(m[1]) for m in caps} == set(range(2, page))  # rows 0 and 1 are not displayed
    assert any(f"2 of {page} images" in w.value for w in at.warning)
    assert any("cannot be shown" in w.value for w in at.warning)  # the selected image #0, too

    for bad in ("../..", "..", "/etc", "copy/../copy"):
        at = gan_page(run=bad, img="../../etc/passwd")
        assert any("Ignoring `?run=`" in w.value for w in at.warning)
        assert at.number_input(key="gan-img").value == 0


def test_while_training_shows_the_training_time_labels(app_world, app_run, tmp_path, monkeypatch):
    copy = isolated_copy(app_world, app_run, tmp_path, monkeypatch,
                         drop=("pseudo_labels.csv", "features", "results.json", "retrieval.npz", "embedding.npz"))
    at = gan_page(run="copy")
    assert any("training-time class" in i.value for i in at.info)
    with np.load(copy / "pseudo_history.npz") as z:
        labels, conf = z["labels"], z["confidence"]
    captions = [c for im in at.image for c in im.captions]
    assert len(captions) == min(48, labels.shape[1])
    for i, caption in enumerate(captions):
        seen = np.flatnonzero(labels[:, i] >= 0)
        if len(seen):
            e = seen[-1]
            assert caption == f"#{i} · class {labels[e, i]} · conf {float(conf[e, i]):.3f} (epoch {e + 1})"
        else:
            assert caption == f"#{i} · not trained on yet"


def test_switching_runs_forgets_the_picked_image(app_env, app_run, holdout_run):
    n_small = len(pd.read_csv(app_run.pseudo_labels))
    at = gan_page(run=holdout_run.id)
    at.number_input(key="gan-img").set_value(n_small + 5).run()
    at.multiselect(key="gan-ids").set_value([int(pd.read_csv(holdout_run.pseudo_labels).pid[0])]).run()
    at.selectbox(key="select-run").set_value(app_run.id).run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.number_input(key="gan-img").value == 0 and at.multiselect(key="gan-ids").value == []
    assert len(grid_captions(at)) == min(48, n_small)


def test_square_gan_images_are_shown_at_the_crops_aspect(app_env, app_run, tmp_path):
    from app.gallery import Card, card_image, reshaped
    from app.readers import config
    from cpl.runs.rundir import RunDir

    square = tmp_path / "square.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(square)
    buf = square.read_bytes()
    assert Image.open(io.BytesIO(reshaped(buf, 2.0, 128))).size == (64, 128)  # width, height: a 2:1 crop
    assert Image.open(io.BytesIO(reshaped(buf, 0.5, 128))).size == (128, 64)
    # a GAN sample of the run, as its grid card draws it: the shape of the network's input, and a border
    table = pd.read_csv(app_run.pseudo_labels)
    data = config(RunDir(app_run.path))["data"]
    aspect = data["height"] / data["width"]
    card = Card(table.path[0], "", aspect=aspect)
    with Image.open(io.BytesIO(card_image(app_run, card, max_side=128))) as im:
        border = 2 * max(2, 128 // 32)
        assert (im.height - border) / (im.width - border) == pytest.approx(aspect, rel=0.02)
    with Image.open(app_run.path / table.path[0]) as sample:
        assert sample.width == sample.height  # the DCGAN draws squares


def test_a_holdout_run_without_unlabeled_csv_still_names_the_true_identities(app_world, holdout_run, tmp_path,
                                                                              monkeypatch):
    isolated_copy(app_world, holdout_run, tmp_path, monkeypatch, drop=("unlabeled.csv",))
    at = gan_page(run="copy")
    assert any("`unlabeled.csv`" in w.value for w in at.warning)  # says what is missing ...
    table = pd.read_csv(holdout_run.pseudo_labels)
    pid_of = pd.read_csv(holdout_run.features / "train.csv").groupby("label")["pid"].first()
    caps = grid_captions(at)
    assert caps
    for m in caps:  # ... and still marks every assignment, a wrong one with the hidden identity's pid
        row = table.iloc[int(m[1])]
        assert m[3].strip() == (":green[✓]" if row.correct == 1 else f":red[✗ true {pid_of[int(row.true_label)]}]")
