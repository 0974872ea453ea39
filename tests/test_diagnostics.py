"""Pseudo-label diagnostics (cpl/pseudo/diagnostics.py) against values computed by hand on hand-made label
histories, their run-directory files (cpl/runs/diagnostics.py), and tools/pseudo_label_stats.py reproducing the
table it printed before it became a reader of them."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cpl.pseudo import diagnostics as dg
from cpl.runs import diagnostics as files
from cpl.runs.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
K = 4
TRUTH = np.array([0, 1, 1, 2, 3, 3])
LABELS = np.array([[-1] * 6, [0, 0, 1, 2, -1, 0], [0, 1, 1, 2, 3, 0]], dtype=np.int32)
CONF = np.array([[0] * 6, [0.9, 0.8, 0.5, 0.4, 0, 0.7], [0.6, 0.7, 0.5, 0.2, 0.3, 0.9]])
MARGIN = np.array([[0] * 6, [0.2, 0.1, 0.05, 0.0, 0, 0.3], [0.1, 0.2, 0.1, 0.05, 0.01, 0.4]])


def history(**kw) -> dg.History:
    return dg.History(labels=LABELS, conf=CONF, margin=MARGIN, **kw)


def test_spread_by_hand():
    e1, e2 = dg.all_epoch_stats(history(), K)[1:]
    # epoch 1: 5 drawn, counts [3, 1, 1, 0]
    assert (e1.seen, e1.used, e1.used_frac, e1.max_count) == (5, 3, 0.75, 3)
    h = -(0.6 * math.log(0.6) + 2 * 0.2 * math.log(0.2)) / math.log(4)
    assert e1.entropy == pytest.approx(h) and e1.entropy == pytest.approx(0.68548, abs=1e-5)
    assert e1.gini == pytest.approx(2 * (2 + 3 + 12) / (4 * 5) - 5 / 4)  # sorted [0, 1, 1, 3]: 0.45
    assert e1.top_share == pytest.approx(3 / 5)  # top 10 % of 4 identities = 1 identity
    # epoch 2: 6 drawn, counts [2, 2, 1, 1]
    assert (e2.seen, e2.used, e2.used_frac, e2.max_count) == (6, 4, 1.0, 2)
    assert e2.entropy == pytest.approx((2 / 3 * math.log(3) + 1 / 3 * math.log(6)) / math.log(4))
    assert e2.gini == pytest.approx(1 / 6)  # 2·(1+2+6+8)/24 − 5/4
    assert e2.top_share == pytest.approx(2 / 6)
    assert e1.collapsed() and not e2.collapsed()  # 60 % on the top identity ≥ COLLAPSE_TOP_SHARE


def test_stability_confidence_and_truth_by_hand():
    e0, e1, e2 = dg.all_epoch_stats(history(truth=TRUTH), K)
    assert e1.changed == 0 and math.isnan(e1.changed_frac)  # epoch 0 drew nothing to compare with
    assert (e2.changed, e2.changed_frac) == (1, pytest.approx(1 / 5))  # image 1: 0 → 1, of 5 drawn in both
    assert e1.mean_conf == pytest.approx(0.66) and e1.median_conf == pytest.approx(0.7)
    assert e1.mean_margin == pytest.approx(0.13) and e1.median_margin == pytest.approx(0.1)
    assert e2.median_margin == pytest.approx(0.1) and e2.mean_margin == pytest.approx(0.86 / 6)
    assert e1.acc == pytest.approx(3 / 5) and e2.acc == pytest.approx(5 / 6)
    assert math.isnan(e2.selected_frac) and math.isnan(e2.acc_selected)  # no threshold set
    assert dg.last_change_epoch(LABELS).tolist() == [-1, 2, -1, -1, -1, -1]
    # nothing drawn in epoch 0: counts and shares undefined
    assert (e0.seen, e0.used, e0.max_count, e0.changed) == (0, 0, 0, 0)
    assert all(math.isnan(getattr(e0, f)) for f in ("entropy", "gini", "top_share", "median_conf", "acc", "nmi"))
    assert not e0.collapsed()


def test_selection_threshold():
    """The trainer's per-image flags (here: the images scoring at least 0.6, drawn ones only) give the share kept and
    the accuracy among them."""
    sel = (CONF >= 0.6) & (LABELS >= 0)
    e2 = dg.all_epoch_stats(history(truth=TRUTH, selected=sel), K)[2]
    assert e2.selected_frac == pytest.approx(3 / 6)  # scores 0.6, 0.7, 0.9
    assert e2.acc_selected == pytest.approx(2 / 3)  # image 5 (label 0, truth 3) is wrong


def test_nmi_and_ari_by_hand():
    h = dg.History(labels=np.array([[0, 0, 0, 1]]), conf=np.ones((1, 4)), margin=np.ones((1, 4)),
                   truth=np.array([0, 0, 1, 1]))
    s = dg.epoch_stats(h, 2, 0)
    # H(T) = ln 2, H(L) = H(3/4, 1/4), I = H(T) − ¾·H(2/3, 1/3); NMI = 2I / (H(T) + H(L))
    ht, hl = math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    i = ht - 0.75 * -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert s.nmi == pytest.approx(2 * i / (ht + hl)) and s.nmi == pytest.approx(0.3437, abs=1e-4)
    # pairs: Σ C(n_ij, 2) = 1, rows 2, columns 3 of C(4, 2) = 6: expected 1, max 2.5 -> ARI 0
    assert s.ari == pytest.approx(0.0)
    perm = dg.epoch_stats(dg.History(labels=np.array([[1, 1, 0, 0]]), conf=np.ones((1, 4)), margin=np.ones((1, 4)),
                                     truth=np.array([0, 0, 1, 1])), 2, 0)
    assert perm.nmi == pytest.approx(1.0) and perm.ari == pytest.approx(1.0) and perm.acc == 0.0


def test_single_identity_and_all_flip():
    one = dg.History(labels=np.full((2, 5), 2), conf=np.ones((2, 5)), margin=np.zeros((2, 5)))
    s = dg.epoch_stats(one, K, 1)
    assert (s.used, s.max_count, s.changed) == (1, 5, 0) and s.changed_frac == 0.0
    assert s.entropy == 0.0 and s.gini == pytest.approx(3 / 4) and s.top_share == 1.0 and s.used_frac == 0.25
    assert s.collapsed()
    flip = dg.History(labels=np.array([[0, 1, 2, 3], [1, 2, 3, 0]]), conf=np.ones((2, 4)), margin=np.ones((2, 4)))
    f = dg.epoch_stats(flip, K, 1)
    assert (f.changed, f.changed_frac, f.entropy, f.gini) == (4, 1.0, pytest.approx(1.0), 0.0)
    assert dg.last_change_epoch(flip.labels).tolist() == [1, 1, 1, 1]


def test_empty_history():
    h = dg.History(labels=np.zeros((0, 3), np.int32), conf=np.zeros((0, 3)), margin=np.zeros((0, 3)))
    assert dg.all_epoch_stats(h, K) == []
    usage = dg.identity_usage(h, K)
    assert usage.counts.shape == (0, K) and usage.accuracy.shape == (0, K)
    m = dg.data_map(h)
    assert m.label.tolist() == [-1] * 3 and m.epochs_seen.tolist() == [0] * 3 and np.isnan(m.confidence).all()


def test_identity_usage_and_lorenz():
    u = dg.identity_usage(history(truth=TRUTH), K)
    assert u.counts.tolist() == [[0, 0, 0, 0], [3, 1, 1, 0], [2, 2, 1, 1]]
    assert np.isnan(u.accuracy[0]).all()
    np.testing.assert_allclose(u.accuracy[1], [1.0, 0.5, 1.0, 0.0])  # truth 1: images 1 (wrong), 2 (right)
    np.testing.assert_allclose(u.accuracy[2], [1.0, 1.0, 1.0, 0.5])
    assert np.isnan(dg.identity_usage(history(), K).accuracy).all()
    x, y = dg.lorenz(np.array([3, 1, 1, 0]))
    np.testing.assert_allclose(x, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(y, [0, 0, 0.2, 0.4, 1])


def test_data_map_by_hand():
    m = dg.data_map(history(truth=TRUTH))
    np.testing.assert_allclose(m.confidence, [0.75, 0.75, 0.5, 0.3, 0.3, 0.8], rtol=1e-6)
    np.testing.assert_allclose(m.variability, [0.15, 0.05, 0.0, 0.1, 0.0, 0.1], atol=1e-6)  # population std
    assert m.epochs_seen.tolist() == [2, 2, 2, 2, 1, 2]
    assert m.label.tolist() == [0, 1, 1, 2, 3, 0]
    np.testing.assert_allclose(m.correctness, [1, 0.5, 1, 1, 1, 0])
    assert np.isnan(dg.data_map(history()).correctness).all()


def test_files_round_trip_and_damage(tmp_path):
    run = RunDir(tmp_path)
    first = dg.write(run, dg.History(labels=LABELS[:2], conf=CONF[:2], margin=MARGIN[:2], truth=TRUTH), K)
    assert len(first) == 2 and len(files.read_epoch_stats(run.pseudo_stats)) == 2
    # the next epoch's call keeps the known rows and adds the new epoch's
    assert dg.write(run, history(truth=TRUTH), K, first)[:2] == first
    rows = files.read_epoch_stats(run.pseudo_stats)
    want = dg.all_epoch_stats(history(truth=TRUTH), K)
    assert len(rows) == 3 and [r.seen for r in rows] == [0, 5, 6]
    for got, exp in zip(rows, want):
        for f in files.STATS_COLUMNS:
            a, b = getattr(got, f), getattr(exp, f)
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-5), f
    usage = files.read_identity_usage(run.pseudo_identities)
    assert usage.counts.tolist() == dg.identity_usage(history(), K).counts.tolist()
    m = files.read_data_map(run.data_map)
    np.testing.assert_allclose(m.variability, dg.data_map(history()).variability, rtol=1e-5)
    assert m.last_change.tolist() == [-1, 2, -1, -1, -1, -1]
    # truncated, missing and wrong files read as None
    text = run.pseudo_stats.read_text()
    run.pseudo_stats.write_text(text[: len(text) // 2])
    run.data_map.write_text(run.data_map.read_text()[:-30])
    run.pseudo_identities.write_bytes(run.pseudo_identities.read_bytes()[:50])
    assert files.read_epoch_stats(run.pseudo_stats) is None
    assert files.read_data_map(run.data_map) is None
    assert files.read_identity_usage(run.pseudo_identities) is None
    assert files.read_epoch_stats(tmp_path / "absent.csv") is None
    run.pseudo_stats.write_text("epoch,seen\n0,1\n")
    assert files.read_epoch_stats(run.pseudo_stats) is None


# What tools/pseudo_label_stats.py printed for the sweep below before it read the diagnostics files (commit
# e246095: last-epoch metrics records, as the trainer logs them for this history, plus hub shares from
# pseudo_history.npz), with the two columns added since: utilisation and the accuracy of the images trained on,
# both undefined ("–") for a run without a confidence threshold.
PRINTED_BEFORE = """\
| method | #unlabeled | score behind the label | margin to runner-up | identities used | labels changed vs \
previous epoch | utilisation (share trained on) | train acc (labeled) | pseudo-label accuracy | accuracy of the \
images trained on | to the top 10 % ids, first epoch | to the top 10 % ids, last epoch |
|---|---|---|---|---|---|---|---|---|---|---|---|
| cpl | 6 | 0.533 | 0.143 | 4 | 20% | – | 75.0% | 83.3% | – | 60% | 33% |
"""


def _sweep(root: Path, with_stats: bool) -> Path:
    """A sweep of one CPL cell whose run holds the hand-made history (float16 scores, as the trainer writes)."""
    sweep = root / "sweeps" / "s"
    sweep.mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({"cells": [{"method": "cpl", "gan_images": 6, "seed": 0,
                                                             "run_id": "c0"}]}))
    run = RunDir(root / "c0")
    run.path.mkdir()
    run.results.write_text(json.dumps({"num_classes": K, "rank1": 1.0}))
    conf = CONF.astype(np.float16)
    recs = [{"type": "epoch", "epoch": 0, "acc": 0.5}, {"type": "epoch", "epoch": 1, "acc": 0.625},
            {"type": "epoch", "epoch": 2, "acc": 0.75}]
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in recs))
    run.unlabeled.write_text("index,path,source,true_label,true_pid\n"
                             + "".join(f"{i},x{i}.png,holdout,{t},{t}\n" for i, t in enumerate(TRUTH)))
    if with_stats:
        np.savez(run.pseudo_history, labels=LABELS, confidence=conf, margin=MARGIN.astype(np.float16))
        dg.write(run, dg.History(labels=LABELS, conf=conf, margin=MARGIN.astype(np.float16), truth=TRUTH), K)
    else:  # a run made before the diagnostics files and before margins were kept
        np.savez(run.pseudo_history, labels=LABELS, confidence=conf)
    return sweep


@pytest.mark.parametrize("with_stats", [True, False])
def test_tool_reproduces_its_previous_table(tmp_path, with_stats):
    sweep = _sweep(tmp_path, with_stats)
    out = subprocess.run([sys.executable, "tools/pseudo_label_stats.py", str(sweep)], cwd=REPO, check=True,
                         capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": ""}).stdout
    want = PRINTED_BEFORE if with_stats else PRINTED_BEFORE.replace("| 0.143 |", "| – |")  # no margin history
    assert out == want
