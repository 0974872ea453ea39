"""Query order (worst / best / file, filters) and the distance summary (histograms, ROC, AUC) on hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest

from cpl.evaluation.distances import PairDistances, auc, distance_summary, pair_masks
from cpl.views.order import query_order


def test_worst_first_is_by_ap_then_first_match_rank_then_file():
    ap = np.array([0.5, 0.2, np.nan, 0.2, 1.0, 0.2])
    first = np.array([2, 3, -1, 9, 1, 3])
    assert query_order(ap, first, "worst").tolist() == [3, 1, 5, 0, 4, 2]
    assert query_order(ap, first, "best").tolist() == [4, 0, 1, 5, 3, 2]
    assert query_order(ap, first, "file").tolist() == [0, 1, 2, 3, 4, 5]
    assert query_order(ap, None, "worst").tolist() == [1, 3, 5, 0, 4, 2]  # a run without first-match ranks


def test_filters_keep_the_order():
    ap = np.array([0.5, 0.2, 0.9, 0.1])
    first = np.array([1, 2, 1, 4])
    pids, cams = np.array([7, 7, 8, 7]), np.array([0, 1, 1, 1])
    assert query_order(ap, first, "worst", pids=pids, camids=cams, pid=7).tolist() == [3, 1, 0]
    assert query_order(ap, first, "worst", pids=pids, camids=cams, camid=1).tolist() == [3, 1, 2]
    assert query_order(ap, first, "best", pids=pids, camids=cams, pid=7, camid=1).tolist() == [1, 3]
    assert query_order(ap, first, "file", pids=pids, camids=cams, pid=9).tolist() == []
    with pytest.raises(ValueError, match="order must be one of"):
        query_order(ap, first, "random")


def test_pairs_follow_the_protocol():
    q_pids, q_cams = np.array([1, 2]), np.array([0, 0])
    g_pids, g_cams = np.array([1, 1, 2, -1, 0]), np.array([0, 1, 1, 1, 1])
    match, non = pair_masks(q_pids, g_pids, q_cams, g_cams)
    # query 0 (pid 1, cam 0): g0 same camera (left out), g1 match, g2 and the distractor g4 non-matches, junk out
    assert match.tolist() == [[False, True, False, False, False], [False, False, True, False, False]]
    assert non.tolist() == [[False, False, True, False, True], [True, True, False, False, True]]


def test_auc_counts_ordered_pairs_and_half_the_ties():
    assert auc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert auc(np.array([0.5]), np.array([0.3, 0.4])) == 0.0
    # pairs: (0.2 vs 0.1) lost, (0.2 vs 0.2) tie, (0.2 vs 0.9) won → (0 + 0.5 + 1) / 3
    assert auc(np.array([0.2]), np.array([0.1, 0.2, 0.9])) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.3, 0.1, 50), rng.normal(0.6, 0.15, 70)
    brute = np.mean([(p < n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auc(pos, neg) == pytest.approx(brute, abs=1e-12)


def test_distance_summary_histograms_and_roc():
    rng = np.random.default_rng(1)
    q_pids, q_cams = rng.integers(1, 5, 12), rng.integers(0, 3, 12)
    g_pids, g_cams = rng.integers(-1, 5, 60), rng.integers(0, 3, 60)
    dist = rng.random((12, 60)).astype(np.float32)
    s = distance_summary(dist, q_pids, g_pids, q_cams, g_cams, bins=20)
    match, non = pair_masks(q_pids, g_pids, q_cams, g_cams)
    assert s["match_hist"].sum() == match.sum() and s["nonmatch_hist"].sum() == non.sum()
    assert s["edges"][0] == pytest.approx(min(dist[match].min(), dist[non].min()))
    assert s["tpr"][0] == 0 and s["fpr"][0] == 0 and s["tpr"][-1] == pytest.approx(1) and s["fpr"][-1] == 1
    assert np.all(np.diff(s["tpr"]) >= 0) and np.all(np.diff(s["fpr"]) >= 0)
    assert float(s["auc"]) == pytest.approx(auc(dist[match], dist[non]))
    # the curve's own (binned) area is close to the exact one
    assert np.trapezoid(s["tpr"], s["fpr"]) == pytest.approx(float(s["auc"]), abs=0.05)
    assert float(s["match_mean"]) == pytest.approx(dist[match].mean(), rel=1e-6)
    with pytest.raises(ValueError, match="matching and non-matching"):
        distance_summary(dist, q_pids, np.full(60, -1), q_cams, g_cams)


def test_distance_summary_auc_counts_ties_exactly_over_blocks():
    # Distances on a coarse grid tie across matches and non-matches, within and across the blocks the pairs are
    # counted in: the AUC must still be the Mann-Whitney count of the pairs of the whole matrix, exactly.
    rng = np.random.default_rng(2)
    q_pids, q_cams = rng.integers(1, 4, 30), rng.integers(0, 3, 30)
    g_pids, g_cams = rng.integers(-1, 4, 50), rng.integers(0, 3, 50)
    dist = (rng.integers(0, 5, (30, 50)) / 4).astype(np.float32)
    match, non = pair_masks(q_pids, g_pids, q_cams, g_cams)
    pairs = PairDistances(q_pids, g_pids, q_cams, g_cams, bins=20)
    for step in (pairs.first, pairs.second):
        for start in range(0, 30, 7):
            step(dist[start:start + 7])
    s = pairs.result()
    assert float(s["auc"]) == auc(dist[match], dist[non])
    pos, neg = dist[match], dist[non]
    brute = ((pos[:, None] < neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert float(s["auc"]) == pytest.approx(brute, abs=1e-12) and 0 < (pos[:, None] == neg[None, :]).sum()


def test_visrank_command_writes_chosen_rows_and_refuses_bad_ones(app_run, tmp_path, capsys):
    from PIL import Image

    from cpl.cli import main

    out = tmp_path / "sheet.png"
    assert main(["visrank", str(app_run.path), "--queries", "0,5", "--topk", "3", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert Image.open(out).size == ((64 + 8) * 4 + 6 * 3 + 30, 2 * ((128 + 8) + 14 + 6))
    assert main(["visrank", str(app_run.path), "--queries", "9999", "--out", str(out)]) == 2
    assert "no such queries" in capsys.readouterr().err
    assert main(["visrank", str(tmp_path), "--worst", "3"]) == 2
    assert "no retrieval lists yet" in capsys.readouterr().err
    assert main(["actmap", str(app_run.path), "--query", "9999", "--out", str(out)]) == 2
    assert "no query 9999" in capsys.readouterr().err
