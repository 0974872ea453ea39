"""``cpl query``: rank a finished run's gallery for one image file (the app's upload path)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cpl.evaluation.query import QueryError, query_main, rank_gallery


def test_a_gallery_image_finds_itself_first(app_run, tmp_path):
    gallery = pd.read_csv(app_run.features / "gallery.csv")
    feats = np.load(app_run.features / "gallery.npy").astype(np.float32)
    row = 11
    out = tmp_path / "result.json"
    args = argparse.Namespace(run_dir=str(app_run.path), image=gallery.path[row], topk=5, out=str(out))
    assert query_main(args) == 0
    result = json.loads(out.read_text())
    assert result["feature_dim"] == feats.shape[1]
    hits = result["topk"]
    assert len(hits) == 5
    assert hits[0]["row"] == row and hits[0]["path"] == gallery.path[row]
    assert (hits[0]["pid"], hits[0]["camid"]) == (gallery.pid[row], gallery.camid[row])
    assert abs(hits[0]["dist"]) < 5e-3  # the stored gallery features are float16
    # the rest of the list is the gallery ranked by cosine distance to that same feature
    expected = 1.0 - feats @ feats[row]
    for h in hits:
        assert h["dist"] == pytest.approx(expected[h["row"]], abs=5e-3)
    assert [h["dist"] for h in hits] == sorted(h["dist"] for h in hits)


def test_errors_are_one_line_and_exit_2(app_run, tmp_path, capsys):
    junk = tmp_path / "notes.png"
    junk.write_text("not an image")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(app_run.config, bare / "config.yaml")
    gallery = pd.read_csv(app_run.features / "gallery.csv")
    cases = [(app_run.path, junk, 5, "not an image this app reads"),
             (app_run.path, tmp_path / "missing.jpg", 5, "cannot read"),
             (app_run.path, gallery.path[0], 0, "--topk must be at least 1"),
             (tmp_path, gallery.path[0], 5, "not a run directory"),
             (bare, gallery.path[0], 5, "no gallery features yet")]
    for run_dir, image, k, message in cases:
        args = argparse.Namespace(run_dir=str(run_dir), image=str(image), topk=k, out=None)
        assert query_main(args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    (bare / "features").mkdir()
    for name in ("gallery.npy", "gallery.csv"):
        shutil.copy(app_run.features / name, bare / "features" / name)
    with pytest.raises(QueryError, match="no checkpoint"):
        rank_gallery(type(app_run)(bare), Path(gallery.path[0]))
