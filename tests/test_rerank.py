"""cpl.evaluation.rerank / rerank_features against a plain numpy transcription of the algorithm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cpl.evaluation import neighbors, rerank, rerank_features
from cpl.evaluation.reranking import decision_cuts


def transcription(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3):
    """k-reciprocal re-ranking written out directly (dense, loops), following the reference
    re_ranking(q_g_dist, q_q_dist, g_g_dist) step by step; ties sorted by index (stable)."""
    nq = q_g.shape[0]
    full = np.block([[q_q, q_g], [q_g.T, g_g]])
    squared = (full**2).astype(np.float32)
    dist = (squared / squared.max(axis=0)).T  # each column by its max, then transposed
    n = dist.shape[0]
    rank = np.argsort(dist, axis=1, kind="stable")

    def reciprocal(i, k):
        return [j for j in rank[i, : k + 1] if i in rank[j, : k + 1]]

    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = set(r)
        for c in r:
            rc = reciprocal(c, int(round(k1 / 2)))
            if len(set(rc) & set(r)) > 2 / 3 * len(rc):
                expanded |= set(rc)
        idx = np.array(sorted(expanded), dtype=np.int64)
        weight = np.exp(-dist[i, idx])
        v[i, idx] = weight / weight.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.zeros((nq, n), dtype=np.float32)
    for i in range(nq):
        overlap = np.minimum(v[i], v).sum(axis=1)
        jaccard[i] = 1 - overlap / (2 - overlap)
    return (jaccard * (1 - lambda_value) + dist[:nq] * lambda_value)[:, nq:]


def euclid(a, b):
    """Plain Euclidean distances as float32, computed without cancellation (duplicates -> 0)."""
    diff = a[:, None, :].astype(np.float64) - b[None, :, :]
    return np.sqrt((diff**2).sum(axis=2)).astype(np.float32)


def clustered(rng, n, dim, ids=6, spread=0.6, duplicate_share=0.0):
    centers = rng.standard_normal((ids, dim))
    feats = centers[rng.integers(0, ids, n)]
    noisy = rng.random(n) >= duplicate_share  # the rest are exact copies of their center
    feats = feats + noisy[:, None] * spread * rng.standard_normal((n, dim))
    return feats.astype(np.float32)


params = st.tuples(st.integers(1, 25), st.integers(1, 10), st.floats(0.0, 1.0))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 40), st.integers(2, 8), params, st.integers(0, 2**31 - 1))
def test_matches_transcription(nq, ng, dim, p, seed):
    k1, k2, lam = p
    feats = clustered(np.random.default_rng(seed), nq + ng, dim)
    qf, gf = feats[:nq], feats[nq:]
    qg, qq, gg = euclid(qf, gf), euclid(qf, qf), euclid(gf, gf)
    ref = transcription(qg, qq, gg, k1, k2, lam)
    ours = rerank(qg, qq, gg, k1, k2, lam)
    assert ours.shape == (nq, ng) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(rerank_features(qf, gf, k1, k2, lam), ref, rtol=0, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 10), st.integers(1, 30), params, st.integers(0, 2**31 - 1))
def test_asymmetric_matrices_follow_the_column_normalisation(nq, ng, p, seed):
    # Not distances of anything: shows that D[j, i]^2 / max_k D[k, i]^2 is what gets ranked.
    k1, k2, lam = p
    rng = np.random.default_rng(seed)
    qg, qq, gg = rng.random((nq, ng)) + 0.05, rng.random((nq, nq)), rng.random((ng, ng))
    for dtype in (np.float32, np.float64):
        args = [m.astype(dtype) for m in (qg, qq, gg)]
        np.testing.assert_allclose(rerank(*args, k1, k2, lam), transcription(*args, k1, k2, lam), atol=1e-5)


def test_duplicates_take_the_exact_path_and_stay_deterministic(monkeypatch):
    # Exact copies tie at distance 0 across the k2 and round(k1/2) + 1 cuts, so the float32
    # search cannot decide those rows and must hand them to the float64 recomputation.
    exact_rows = []
    original = neighbors._exact_rows

    def spy(feats, x, spans, norm, tol_unit, rows, *rest):
        exact_rows.append(int(rows.numel()))
        return original(feats, x, spans, norm, tol_unit, rows, *rest)

    monkeypatch.setattr(neighbors, "_exact_rows", spy)
    feats = clustered(np.random.default_rng(3), 90, 5, ids=5, duplicate_share=0.4)
    qf, gf = feats[:25], feats[25:]
    qg, qq, gg = euclid(qf, gf), euclid(qf, qf), euclid(gf, gf)
    ours = rerank_features(qf, gf, k1=12, k2=6)
    assert sum(exact_rows) > 10
    np.testing.assert_allclose(ours, rerank(qg, qq, gg, k1=12, k2=6), atol=1e-5)
    # With ties broken by index on both sides, the transcription agrees too.
    np.testing.assert_allclose(ours, transcription(qg, qq, gg, 12, 6), atol=1e-5)


def test_decision_cuts():
    assert decision_cuts(100, 20, 6) == [6, 11, 21]
    assert decision_cuts(100, 20, 1) == [11, 21]  # k2 = 1 skips query expansion
    assert decision_cuts(100, 5, 3) == [3, 6]  # round(2.5) = 2, as numpy rounds
    assert decision_cuts(10, 20, 6) == [6]  # a cut at or past N decides nothing


@pytest.mark.parametrize(("k1", "k2", "copies"), [(20, 4, 6), (20, 1, 12)])
def test_a_tie_at_any_single_cut_is_recomputed(monkeypatch, k1, k2, copies):
    # Each group: `copies` identical features, then distinct points around them. A copy's list
    # starts with its group at distance 0, so the only tie in it straddles one cut (k2, or
    # round(k1 / 2) + 1 when k2 = 1), which alone must send the row to the exact path.
    rng = np.random.default_rng(8)
    centers = 100 * rng.standard_normal((6, 4))
    groups = [np.vstack([np.repeat(c[None], copies, 0), c + rng.standard_normal((30, 4))]) for c in centers]
    feats = np.vstack(groups).astype(np.float32)
    copy_rows = {g * (copies + 30) + i for g in range(6) for i in range(copies)}
    sent = set()
    original = neighbors._exact_rows

    def spy(feats_, x, spans, norm, tol_unit, rows, *rest):
        sent.update(rows.tolist())
        return original(feats_, x, spans, norm, tol_unit, rows, *rest)

    monkeypatch.setattr(neighbors, "_exact_rows", spy)
    qf, gf = feats[:50], feats[50:]
    ours = rerank_features(qf, gf, k1, k2)
    assert copy_rows <= sent
    np.testing.assert_allclose(ours, rerank(euclid(qf, gf), euclid(qf, qf), euclid(gf, gf), k1, k2), atol=1e-5)


def test_medium_case_with_reference_defaults():
    rng = np.random.default_rng(7)
    feats = clustered(rng, 700, 48, ids=40, spread=0.9)
    qf, gf = feats[:120], feats[120:]
    qg, qq, gg = euclid(qf, gf), euclid(qf, qf), euclid(gf, gf)
    ref = transcription(qg, qq, gg)
    np.testing.assert_allclose(rerank(qg, qq, gg), ref, atol=1e-5)
    np.testing.assert_allclose(rerank_features(torch.from_numpy(qf), gf), ref, atol=1e-5)
    # Re-ranking must actually move things on this data, or the comparison proves little.
    assert np.abs(ref - qg**2 / (qg**2).max()).max() > 0.1


def test_feature_neighbors_across_many_blocks():
    rng = np.random.default_rng(11)
    feats = clustered(rng, 83, 6, ids=7)
    nq, length, cuts = 17, 9, [3, 6, 9]
    q, g = torch.from_numpy(feats[:nq]), torch.from_numpy(feats[nq:])
    found = neighbors.feature_neighbors(q, g, length, cuts, block=5)
    d2 = euclid(feats, feats).astype(np.float64) ** 2
    order = np.argsort(d2, axis=1, kind="stable")
    for cut in cuts:
        got = np.sort(found.knn[:, :cut].numpy(), axis=1)
        np.testing.assert_array_equal(got, np.sort(order[:, :cut], axis=1))
    np.testing.assert_allclose(found.row_max.numpy(), d2.max(axis=1), rtol=1e-5)
    np.testing.assert_allclose(found.qg_rows(0, nq).numpy(), d2[:nq, nq:], atol=1e-4)
    pairs = torch.from_numpy(rng.integers(0, 83, (2, 200)))
    np.testing.assert_allclose(found.pair_d2(pairs[0], pairs[1]).numpy(), d2[pairs[0], pairs[1]], atol=1e-4)


def test_small_galleries_and_extreme_parameters():
    rng = np.random.default_rng(5)
    feats = clustered(rng, 7, 3)
    qf, gf = feats[:2], feats[2:]
    qg, qq, gg = euclid(qf, gf), euclid(qf, qf), euclid(gf, gf)
    for k1, k2, lam in [(20, 6, 0.3), (1, 1, 0.0), (3, 12, 1.0), (5, 2, 0.5)]:
        ref = transcription(qg, qq, gg, k1, k2, lam)
        np.testing.assert_allclose(rerank(qg, qq, gg, k1, k2, lam), ref, atol=1e-5)
        np.testing.assert_allclose(rerank_features(qf, gf, k1, k2, lam), ref, atol=1e-5)


def test_inputs_are_left_untouched_and_bad_input_rejected():
    rng = np.random.default_rng(9)
    qf, gf = rng.random((4, 3)).astype(np.float32), rng.random((9, 3)).astype(np.float32)
    qg, qq, gg = euclid(qf, gf), euclid(qf, qf), euclid(gf, gf)
    copies = [m.copy() for m in (qf, gf, qg, qq, gg)]
    rerank(qg, qq, gg)
    rerank_features(qf, gf)
    for before, after in zip(copies, (qf, gf, qg, qq, gg)):
        np.testing.assert_array_equal(before, after)
    with pytest.raises(ValueError, match="k1"):
        rerank(qg, qq, gg, k1=0)
    with pytest.raises(ValueError, match="lambda"):
        rerank_features(qf, gf, lambda_value=1.5)
    with pytest.raises(ValueError, match="shapes"):
        rerank(qg, gg, qq)
    with pytest.raises(ValueError, match="feature size"):
        rerank_features(qf, gf[:, :2])
    with pytest.raises(ValueError, match="finite"):
        rerank_features(np.full((2, 3), np.inf, dtype=np.float32), gf)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    feats = clustered(np.random.default_rng(4), 300, 32, ids=20)
    qf, gf = torch.from_numpy(feats[:60]), torch.from_numpy(feats[60:])
    np.testing.assert_allclose(rerank_features(qf.cuda(), gf.cuda()), rerank_features(qf, gf), atol=1e-5)
    q, g = feats[:60], feats[60:]
    qg, qq, gg = (torch.from_numpy(euclid(a, b)) for a, b in ((q, g), (q, q), (g, g)))
    np.testing.assert_allclose(rerank(qg.cuda(), qq.cuda(), gg.cuda()), rerank(qg, qq, gg), atol=1e-5)


@pytest.mark.parametrize("span_elements", [None, 40 * 6])  # one query span; spans of 6 queries
@pytest.mark.parametrize("elements", [1, 40 * 5, 40 * 7 + 3, 10**9])  # 1, 5, 7 (neither divides 23) or all rows
def test_the_blocks_put_together_are_the_whole_result_exactly(monkeypatch, span_elements, elements):
    """rerank_feature_blocks yields row blocks of the budget's size that, put together, are rerank_features'
    result bit for bit, whether a block is a whole query span of the neighbour search or a part of one."""
    from cpl.evaluation.reranking import rerank_feature_blocks

    if span_elements is not None:
        monkeypatch.setattr(neighbors, "BLOCK_ELEMENTS", span_elements)
    feats = clustered(np.random.default_rng(12), 63, 8, ids=6)
    qf, gf = feats[:23], feats[23:]
    blocks = list(rerank_feature_blocks(qf, gf, 12, 4, 0.4, elements=elements))
    rows = min(23, max(1, elements // 40), 6 if span_elements else 23)
    spans = [(s, min(s + 6, 23)) for s in range(0, 23, 6)] if span_elements else [(0, 23)]
    sizes = [min(rows, e - s) for a, e in spans for s in range(a, e, rows)]
    assert [b.shape for b in blocks] == [(n, 40) for n in sizes] and (len(blocks) > 1 or elements == 10**9)
    assert all(b.dtype == np.float32 for b in blocks)
    whole = rerank_features(qf, gf, 12, 4, 0.4)
    assert np.array_equal(np.concatenate(blocks), whole)
    # Smaller spans change which float32 products are computed, not the result beyond rounding.
    ref = transcription(euclid(qf, gf), euclid(qf, qf), euclid(gf, gf), 12, 4, 0.4)
    np.testing.assert_allclose(whole, ref, rtol=0, atol=1e-5)


def test_blocks_check_their_arguments_on_the_call():
    from cpl.evaluation.reranking import rerank_feature_blocks

    qf = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="lambda"):
        rerank_feature_blocks(qf, qf, lambda_value=-1)
    with pytest.raises(ValueError, match="feature size"):
        rerank_feature_blocks(qf, qf[:, :2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_blocks_put_together_are_the_whole_result():
    from cpl.evaluation.reranking import rerank_feature_blocks

    feats = torch.from_numpy(clustered(np.random.default_rng(6), 300, 32, ids=20)).cuda()
    qf, gf = feats[:60], feats[60:]
    blocks = list(rerank_feature_blocks(qf, gf, elements=240 * 7))
    assert len(blocks) == 9
    assert np.array_equal(np.concatenate(blocks), rerank_features(qf, gf))
