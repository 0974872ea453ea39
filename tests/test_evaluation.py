"""cpl.evaluation.evaluate / topk against a brute-force pure-Python Market-1501 evaluator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cpl.evaluation import evaluate, topk


def brute_force(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    """Per query: rank the gallery by (distance, index), drop junk and same-pid same-camera,
    then score the hit positions (torchreid's AP, fast-reid's INP)."""
    num_q, num_g = len(q_pids), len(g_pids)
    cmc, aps, inps = [], [], []
    all_ap = [math.nan] * num_q
    first = [-1] * num_q
    for i in range(num_q):
        order = sorted(range(num_g), key=lambda j: (float(dist[i][j]), j))
        kept = [j for j in order if g_pids[j] != -1 and not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])]
        hits = [pos for pos, j in enumerate(kept) if g_pids[j] == q_pids[i]]
        if not hits:
            continue
        ap = sum((n + 1) / (pos + 1) for n, pos in enumerate(hits)) / len(hits)
        all_ap[i] = ap
        first[i] = hits[0] + 1
        aps.append(ap)
        inps.append(len(hits) / (hits[-1] + 1))
        cmc.append([1.0 if hits[0] <= k else 0.0 for k in range(max_rank)])
    if not aps:
        return None
    return {
        "cmc": np.mean(cmc, axis=0),
        "mAP": float(np.mean(aps)),
        "mINP": float(np.mean(inps)),
        "all_AP": np.array(all_ap),
        "num_valid": len(aps),
        "first_match": np.array(first),
    }


def assert_same(ours: dict, ref: dict, tol: float = 1e-12) -> None:
    np.testing.assert_allclose(ours["cmc"], ref["cmc"], rtol=0, atol=tol)
    assert ours["mAP"] == pytest.approx(ref["mAP"], abs=tol)
    assert ours["mINP"] == pytest.approx(ref["mINP"], abs=tol)
    np.testing.assert_allclose(ours["all_AP"], ref["all_AP"], rtol=0, atol=tol)
    assert ours["num_valid"] == ref["num_valid"]
    np.testing.assert_array_equal(ours["first_match"], ref["first_match"])


@st.composite
def cases(draw, distinct: bool = False):
    num_q = draw(st.integers(1, 6))
    num_g = draw(st.integers(1, 30))
    pids = st.integers(-1, 4)
    g_pids = draw(st.lists(pids, min_size=num_g, max_size=num_g))
    q_pids = draw(st.lists(st.integers(0, 4), min_size=num_q, max_size=num_q))
    g_cams = draw(st.lists(st.integers(0, 2), min_size=num_g, max_size=num_g))
    q_cams = draw(st.lists(st.integers(0, 2), min_size=num_q, max_size=num_q))
    if distinct:
        perm = draw(st.permutations(range(num_q * num_g)))
        dist = np.array(perm, dtype=np.float64).reshape(num_q, num_g) / 7.0
    else:
        # Few distinct values: ties everywhere, including between matches and negatives.
        dist = np.array(draw(st.lists(st.integers(0, 3), min_size=num_q * num_g, max_size=num_q * num_g)))
        dist = dist.reshape(num_q, num_g).astype(np.float32)
    return dist, np.array(q_pids), np.array(g_pids), np.array(q_cams), np.array(g_cams)


@settings(max_examples=150, deadline=None)
@given(cases(), st.integers(1, 12))
def test_matches_brute_force_with_ties(case, max_rank):
    dist, qp, gp, qc, gc = case
    ref = brute_force(dist, qp, gp, qc, gc, max_rank)
    if ref is None:
        with pytest.raises(ValueError, match="no query has a valid match"):
            evaluate(dist, qp, gp, qc, gc, max_rank)
        return
    ours = evaluate(dist, qp, gp, qc, gc, max_rank)
    assert_same(ours, ref)
    assert ours["cmc"].shape == (max_rank,)


@settings(max_examples=60, deadline=None)
@given(cases(distinct=True), st.randoms(use_true_random=False))
def test_permuting_the_gallery_changes_nothing(case, rnd):
    dist, qp, gp, qc, gc = case
    if brute_force(dist, qp, gp, qc, gc, 5) is None:
        return
    perm = list(range(len(gp)))
    rnd.shuffle(perm)
    a = evaluate(dist, qp, gp, qc, gc, 5)
    b = evaluate(dist[:, perm], qp, gp[perm], qc, gc[perm], 5)
    assert_same(a, b)


@settings(max_examples=60, deadline=None)
@given(cases())
def test_perfect_distance_gives_full_marks(case):
    _, qp, gp, qc, gc = case
    dist = (gp[None, :] != qp[:, None]).astype(np.float32)  # same identity at 0, others at 1
    if brute_force(dist, qp, gp, qc, gc, 3) is None:
        return
    out = evaluate(dist, qp, gp, qc, gc, 3)
    assert out["cmc"][0] == 1.0 and out["mAP"] == 1.0 and out["mINP"] == 1.0


@settings(max_examples=60, deadline=None)
@given(cases(distinct=True), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_junk_and_same_camera_images_are_ignored(case, extra, seed):
    dist, qp, gp, qc, gc = case
    if brute_force(dist, qp, gp, qc, gc, 5) is None:
        return
    base = evaluate(dist, qp, gp, qc, gc, 5)
    rng = np.random.default_rng(seed)
    # Junk (-1) at any distance, even the best, changes nothing for anyone.
    junk_d = rng.uniform(-1.0, 10.0, (len(qp), extra))
    with_junk = evaluate(
        np.concatenate([junk_d, dist], axis=1),
        qp,
        np.concatenate([np.full(extra, -1), gp]),
        qc,
        np.concatenate([rng.integers(0, 3, extra), gc]),
        5,
    )
    assert_same(with_junk, base)
    # Images of query 0's identity seen by query 0's camera, ranked first: excluded for query 0
    # (for other queries of that identity in other cameras they are real matches).
    same_d = np.full((len(qp), extra), -5.0)
    d2 = np.concatenate([dist, same_d], axis=1)
    gp2 = np.concatenate([gp, np.full(extra, qp[0])])
    gc2 = np.concatenate([gc, np.full(extra, qc[0])])
    out = evaluate(d2, qp, gp2, qc, gc2, 5)
    assert_same(out, brute_force(d2, qp, gp2, qc, gc2, 5))
    if np.isnan(base["all_AP"][0]):
        assert np.isnan(out["all_AP"][0])
    else:
        assert out["all_AP"][0] == pytest.approx(base["all_AP"][0], abs=1e-12)


def test_queries_without_match_are_skipped():
    dist = np.array([[0.1, 0.5, 0.3], [0.2, 0.1, 0.4]], dtype=np.float32)
    g_pids, g_cams = np.array([1, 2, 1]), np.array([0, 0, 1])
    one = evaluate(dist[:1], [1], g_pids, [2], g_cams)
    both = evaluate(dist, [1, 7], g_pids, [2, 2], g_cams)  # pid 7 is not in the gallery
    assert both["num_valid"] == 1
    assert np.isnan(both["all_AP"][1])
    np.testing.assert_array_equal(both["first_match"], [1, -1])
    assert both["mAP"] == one["mAP"] and both["mINP"] == one["mINP"]
    np.testing.assert_array_equal(both["cmc"], one["cmc"])


def test_hand_built_average_precision():
    # Valid ranking of query 0 (pid 1, camera 0): g3 (match), g1, g4 (match), g2, g6 (match).
    # g0 is junk, g5 is pid 1 seen by camera 0 (excluded), g2 is a distractor (pid 0).
    dist = np.array([[0.0, 0.3, 0.5, 0.1, 0.4, 0.05, 0.9]])
    g_pids = np.array([-1, 2, 0, 1, 1, 1, 1])
    g_cams = np.array([1, 1, 1, 1, 2, 0, 3])
    out = evaluate(dist, [1], g_pids, [0], g_cams, max_rank=5)
    ap = (1 / 1 + 2 / 3 + 3 / 5) / 3
    assert out["mAP"] == pytest.approx(ap, abs=1e-15)
    assert out["mINP"] == pytest.approx(3 / 5, abs=1e-15)
    np.testing.assert_array_equal(out["cmc"], [1, 1, 1, 1, 1])


def test_ties_are_broken_by_gallery_index():
    # The match (g2) ties with two negatives; only the one with the smaller index goes first.
    dist = np.array([[0.5, 0.2, 0.2, 0.2]], dtype=np.float32)
    out = evaluate(dist, [1], [3, 4, 1, 5], [0], [1, 1, 1, 1], max_rank=3)
    assert out["mAP"] == pytest.approx(1 / 2)
    np.testing.assert_array_equal(out["cmc"], [0, 1, 1])
    index, values = topk(dist, 3)
    np.testing.assert_array_equal(index, [[1, 2, 3]])


def test_torch_inputs_and_dtypes_agree():
    rng = np.random.default_rng(0)
    dist = rng.random((20, 60)).astype(np.float32)
    qp, gp = rng.integers(0, 6, 20), rng.integers(-1, 6, 60)
    qc, gc = rng.integers(0, 3, 20), rng.integers(0, 3, 60)
    ref = evaluate(dist, qp, gp, qc, gc)
    as_torch = evaluate(torch.from_numpy(dist), torch.from_numpy(qp), torch.from_numpy(gp), qc.tolist(), gc)
    as_f64 = evaluate(dist.astype(np.float64), qp, gp, qc, gc)
    as_f16 = evaluate(torch.from_numpy(dist).half(), qp, gp, qc, gc)
    assert_same(as_torch, ref)
    assert_same(as_f64, ref)
    assert_same(as_f16, brute_force(dist.astype(np.float16), qp, gp, qc, gc, 50))
    assert ref["cmc"].shape == (50,)  # max_rank beyond the gallery size is kept


def test_bad_inputs_are_rejected():
    dist = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="NaN"):
        evaluate(np.full((2, 3), np.nan), [1, 1], [1, 1, 1], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="g_pids"):
        evaluate(dist, [1, 1], [1, 1], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="2-D"):
        evaluate(np.ones(3), [1], [1, 1, 1], [0], [1, 1, 1])
    with pytest.raises(ValueError, match="max_rank"):
        evaluate(dist, [1, 1], [1, 1, 1], [0, 0], [1, 1, 1], max_rank=0)
    with pytest.raises(ValueError, match="no query"):
        evaluate(dist, [1, 1], [-1, -1, -1], [0, 0], [1, 1, 1])


@settings(max_examples=80, deadline=None)
@given(cases(), st.integers(0, 35))
def test_topk_is_the_stable_head_of_each_row(case, k):
    dist = case[0]
    index, values = topk(dist, k)
    k_eff = min(k, dist.shape[1])
    assert index.shape == values.shape == (dist.shape[0], k_eff)
    assert index.dtype == np.int32 and values.dtype == np.float32
    for i, row in enumerate(dist):
        expected = sorted(range(len(row)), key=lambda j: (row[j], j))[:k_eff]
        assert index[i].tolist() == expected
        np.testing.assert_array_equal(values[i], row[expected].astype(np.float32))


def test_topk_handles_ties_across_the_cut_on_large_rows():
    # Many equal values straddling position k: topk alone would pick arbitrary tied columns.
    rng = np.random.default_rng(1)
    dist = rng.integers(0, 4, (50, 3000)).astype(np.float32)
    index, _ = topk(torch.from_numpy(dist), 100)
    expected = np.argsort(dist, axis=1, kind="stable")[:, :100]
    np.testing.assert_array_equal(index, expected)


def _numpy_market(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    """Vectorised-per-query numpy evaluator (stable argsort), for checks at real-data scale."""
    order = np.argsort(dist, axis=1, kind="stable")
    cmc, aps = [], []
    for i in range(dist.shape[0]):
        g = order[i]
        keep = (g_pids[g] != -1) & ~((g_pids[g] == q_pids[i]) & (g_cams[g] == q_cams[i]))
        hits = np.flatnonzero(g_pids[g][keep] == q_pids[i])
        if hits.size == 0:
            continue
        aps.append(np.mean(np.arange(1, hits.size + 1) / (hits + 1)))
        cmc.append(hits[0] <= np.arange(max_rank))
    return np.mean(cmc, axis=0), float(np.mean(aps))


def test_real_market_label_structure(shared_data):
    labels = np.load(shared_data / "market1501_test_labels.npz")
    q_pids, q_cams = labels["q_pids"][::40], labels["q_camids"][::40]
    g_pids, g_cams = labels["g_pids"], labels["g_camids"]
    rng = np.random.default_rng(0)
    proto = rng.standard_normal((int(g_pids.max()) + 2, 32)).astype(np.float32)
    qf = proto[q_pids + 1] + 1.2 * rng.standard_normal((len(q_pids), 32)).astype(np.float32)
    gf = proto[g_pids + 1] + 1.2 * rng.standard_normal((len(g_pids), 32)).astype(np.float32)
    dist = torch.cdist(torch.from_numpy(qf), torch.from_numpy(gf)).numpy()
    out = evaluate(dist, q_pids, g_pids, q_cams, g_cams)
    cmc, m_ap = _numpy_market(dist, q_pids, g_pids, q_cams, g_cams, 50)
    np.testing.assert_allclose(out["cmc"], cmc, atol=1e-12)
    assert out["mAP"] == pytest.approx(m_ap, abs=1e-12)
    assert 0.3 < out["cmc"][0] < 0.99  # features of realistic difficulty, so the check has teeth
    # Junk images are excluded: dropping them up front changes nothing.
    real = g_pids != -1
    dropped = evaluate(dist[:, real], q_pids, g_pids[real], q_cams, g_cams[real])
    assert_same(dropped, out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(2)
    dist = rng.integers(0, 50, (64, 500)).astype(np.float32)
    qp, gp = rng.integers(0, 20, 64), rng.integers(-1, 20, 500)
    qc, gc = rng.integers(0, 4, 64), rng.integers(0, 4, 500)
    assert_same(evaluate(torch.from_numpy(dist).cuda(), qp, gp, qc, gc), evaluate(dist, qp, gp, qc, gc))
    np.testing.assert_array_equal(topk(torch.from_numpy(dist).cuda(), 30)[0], topk(dist, 30)[0])


def _features(num: int, ids: int, seed: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """L2-normalised 16-d features [num, 16] of ``ids`` identities (prototype + noise), their pids (junk and
    distractors among them) and 3 cameras: distances with ties, varied match counts, and every protocol case."""
    g = torch.Generator().manual_seed(seed)
    pids = torch.randint(-1, ids, (num,), generator=g)
    protos = torch.randn(ids + 1, 16, generator=g)
    feats = protos[pids + 1] + 0.8 * torch.randn(num, 16, generator=g)
    feats[::7] = feats[0]  # exact ties
    return torch.nn.functional.normalize(feats, dim=1), pids.numpy(), (torch.arange(num) % 3).numpy()


def _assert_ranks_like_the_whole_matrix(got, whole: np.ndarray, q_pids, g_pids, q_cams, g_cams) -> None:
    """The block ranking ``got`` (metrics and top-7 lists) equals the evaluation of the whole matrix, exactly."""
    want = evaluate(whole, q_pids, g_pids, q_cams, g_cams)
    for key in ("cmc", "all_AP", "first_match"):
        np.testing.assert_array_equal(got.metrics[key], want[key])
    assert (got.metrics["mAP"], got.metrics["mINP"], got.metrics["num_valid"]) == (
        want["mAP"], want["mINP"], want["num_valid"])
    idx, dst = topk(whole, 7)
    assert np.array_equal(got.index, idx) and np.array_equal(got.dist, dst)


@pytest.mark.parametrize("elements", [1, 40 * 3 + 5, 10**9])  # a query per block, uneven blocks, one block
def test_the_blocked_evaluation_equals_the_whole_matrix_bit_for_bit(elements):
    """Metrics, top-k lists and pair distances from blocks of queries equal those of the whole distance matrix
    (cpl.evaluation.blocks, the evaluate stage's path): exactly, but for the non-match mean's summation order."""
    from cpl.evaluation.blocks import cosine_blocks, score
    from cpl.evaluation.distances import distance_summary

    qf, q_pids, q_cams = _features(23, 6, 0)
    gf, g_pids, g_cams = _features(40, 6, 1)
    q_pids[0] = 99  # a query without a match anywhere
    # The same distances put together (a block's product may differ from the whole one's in the last bit: BLAS
    # picks its kernel by shape), so what is compared is the evaluation of them.
    whole = np.concatenate(list(cosine_blocks(qf, gf, elements)))
    assert whole.shape == (23, 40)
    got = score(qf, gf, q_pids, g_pids, q_cams, g_cams, k=7, elements=elements)
    _assert_ranks_like_the_whole_matrix(got, whole, q_pids, g_pids, q_cams, g_cams)
    pairs = distance_summary(whole, q_pids, g_pids, q_cams, g_cams)
    assert set(got.pairs) == set(pairs)
    for key, value in pairs.items():
        if key == "nonmatch_mean":
            assert float(got.pairs[key]) == pytest.approx(float(value), rel=1e-12)
        else:
            np.testing.assert_array_equal(got.pairs[key], value, err_msg=key)


@pytest.mark.parametrize("elements", [1, 40 * 3 + 5, 10**9])  # a query per block, uneven blocks, one block
def test_the_blocked_reranked_evaluation_equals_the_whole_matrix_bit_for_bit(elements):
    """The evaluate stage's re-ranking path (re-ranked blocks of queries into the block ranking) gives what the
    whole re-ranked matrix gave: metrics, AP, first matches and top-k lists, exactly."""
    from cpl.evaluation import rerank_features
    from cpl.evaluation.blocks import rank
    from cpl.evaluation.reranking import rerank_feature_blocks

    qf, q_pids, q_cams = _features(23, 6, 0)
    gf, g_pids, g_cams = _features(40, 6, 1)
    q_pids[0] = 99  # a query without a match anywhere
    got = rank(rerank_feature_blocks(qf, gf, k1=8, k2=3, elements=elements), q_pids, g_pids, q_cams, g_cams, k=7)
    whole = rerank_features(qf, gf, k1=8, k2=3)
    _assert_ranks_like_the_whole_matrix(got, whole, q_pids, g_pids, q_cams, g_cams)
    idx = topk(whole, 7)[0]
    # Re-ranking moved the lists, or the comparison would only repeat the plain path's.
    assert not np.array_equal(idx, topk(1.0 - (qf @ gf.T).numpy(), 7)[0])
