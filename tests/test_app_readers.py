"""The readers' declared artifacts: a missing, partial or damaged file reads as a well-defined empty table with its
columns (or no arrays), never as a frame or a mapping a page could index into a KeyError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app import readers
from cpl.runs.rundir import RunDir


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    (tmp_path / "features").mkdir()
    return RunDir(tmp_path)


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def test_a_table_has_its_declared_columns_and_types(run: RunDir) -> None:
    _write(run.unlabeled, "index,path,source,true_label,true_pid,extra\n0,a.png,gan,-1,,x\n1,b.png,holdout,3,17,y\n")
    table = readers.unlabeled(run)
    assert list(table.columns) == [*readers.UNLABELED, "extra"]  # declared first, a newer run's column kept
    assert table["index"].dtype == np.int64 and table["true_label"].tolist() == [-1, 3]
    assert table["true_pid"].isna().tolist() == [True, False] and table["path"].tolist() == ["a.png", "b.png"]


@pytest.mark.parametrize("text", [
    None,  # missing
    "",  # empty
    "index,path,source\n0,a.png,gan\n",  # a column short (an older or hand-cut file)
    "index,path,source,true_label,true_pid\n0,a.png,gan,-1,\n1,b.png,gan,",  # cut in the middle of a row
    "index,path,source,true_label,true_pid\nzero,a.png,gan,-1,\n",  # text where an index belongs
])
def test_a_missing_or_partial_table_is_empty_with_its_columns(run: RunDir, text: str | None) -> None:
    if text is not None:
        _write(run.unlabeled, text)
    table = readers.unlabeled(run)
    assert table.empty and list(table.columns) == list(readers.UNLABELED)
    assert table["index"].dtype == np.int64 and table["true_pid"].dtype == np.float64
    split = readers.split(run, "train")  # no file: the training split's columns, label included
    assert split.empty and list(split.columns) == list(readers.TRAIN_SPLIT)


def test_archives_give_all_their_arrays_or_none(run: RunDir) -> None:
    q, k = 4, 3
    full = {"index": np.zeros((q, k), np.int32), "dist": np.zeros((q, k), np.float32), "ap": np.zeros(q, np.float32)}
    np.savez(run.retrieval, **full, rr_index=np.zeros((q, k), np.int32))  # a partial re-ranked group
    assert sorted(readers.retrieval(run)) == ["ap", "dist", "index"]  # the re-ranked lists are dropped whole
    np.savez(run.retrieval, **full, rr_index=full["index"], rr_dist=full["dist"], rr_ap=full["ap"])
    assert sorted(readers.retrieval(run)) == ["ap", "dist", "index", "rr_ap", "rr_dist", "rr_index"]
    np.savez(run.retrieval, index=full["index"], dist=full["dist"])  # no ap
    assert readers.retrieval(run) == {}
    np.savez(run.embedding, xy=np.zeros((5, 2)), kind=np.zeros(5, np.int8), row=np.zeros(4), label=np.zeros(5))
    assert readers.embedding(run) == {}  # one array of another length
    np.savez(run.pseudo_history, labels=np.zeros(3))  # one array, of the wrong rank
    assert readers.pseudo_history(run) == {}
    run.embedding.write_bytes(b"not a zip")
    assert readers.embedding(run) == {}
    np.save(run.features / "train.npy", np.zeros(7, np.float16))
    assert readers.features(run, "train") is None and readers.features(run, "query") is None


def test_gan_quality_has_its_declared_fields(run: RunDir) -> None:
    _write(run.gan, '{"quality": {"fd": 812.5, "fd_floor": 402}}')  # an older record: no n, no feature space
    assert readers.gan_quality(run) == {"fd": 812.5, "fd_floor": 402.0, "n": None, "feature_space": ""}
    _write(run.gan, '{"quality": {"fd": "812"}}')
    assert readers.gan_quality(run) is None
