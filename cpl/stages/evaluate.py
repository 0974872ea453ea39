"""Stage ``evaluate``: query and gallery features, the dataset's protocol (CMC, mAP, mINP) and optional
k-reciprocal re-ranking; writes ``results.json`` (the headline, first), ``retrieval.npz`` and ``distances.npz``
(matching vs non-matching distances, ROC). Rank 0 only; recomputed from the final checkpoint on resume."""

from __future__ import annotations

import time

import numpy as np

from cpl.config import controls, remedies, tricks
from cpl.runs import faults
from cpl.runs.atomic import write_json, write_npz
from cpl.stages.context import RunContext
from cpl.stages.products import Evaluated


def metrics(res: dict) -> dict:
    """results.json's metrics (percent) from :func:`cpl.evaluation.evaluate`'s output."""
    cmc = np.asarray(res["cmc"])
    at = lambda r: float(cmc[min(r, len(cmc)) - 1]) * 100  # noqa: E731
    return {"rank1": at(1), "rank5": at(5), "rank10": at(10), "mAP": float(res["mAP"]) * 100,
            "mINP": float(res["mINP"]) * 100, "num_valid_queries": int(res.get("num_valid", 0))}


def extract_options(ctx: RunContext) -> dict:
    """How every split's features are extracted (device, batch, flip, AMP dtype)."""
    from cpl.engine.trainer import amp_dtype

    cfg = ctx.cfg
    return dict(device=ctx.device, batch_size=cfg.eval.batch_size, flip=cfg.eval.flip,
                dtype=amp_dtype(cfg, ctx.device))


def evaluate(ctx: RunContext) -> None:
    """Stage ``evaluate`` (``ctx.evaluated``)."""
    from cpl.engine.features import extract
    from cpl.evaluation.blocks import rank, score
    from cpl.evaluation.metrics import protocol_keys
    from cpl.evaluation.reranking import rerank_feature_blocks

    cfg, d, t = ctx.cfg, ctx.data, ctx.trained
    ctx.progress(0.0, "extracting features")
    ex = extract_options(ctx)
    qf, _ = extract(t.trainer.model, d.query_imgs, retrieval=True, **ex)
    same = d.ds.query.paths == d.ds.gallery.paths  # leave-one-out: the query images are the gallery
    gf = qf if same else extract(t.trainer.model, d.gallery_imgs, retrieval=True, **ex)[0]
    faults.point("eval")
    ctx.progress(0.5, "evaluating")
    q, g = d.ds.query, d.ds.gallery
    q_keys, g_keys = protocol_keys(d.ds.protocol, q.paths, g.paths, q.camids, g.camids)
    # The cosine distances a block of queries at a time: never the whole matrix (MSMT17: 3.8 GB).
    scores = score(qf, gf, q.pids, g.pids, q_keys, g_keys, cfg.eval.topk)
    base = scores.metrics
    results = metrics(base)
    retrieval = {"index": scores.index, "dist": scores.dist, "ap": np.asarray(base["all_AP"], dtype=np.float32),
                 "first_match": base["first_match"].astype(np.int32)}
    if cfg.eval.rerank:  # by blocks of queries too, the re-ranked matrix never whole
        ctx.progress(0.6, "re-ranking")
        faults.point("rerank")
        rr = rank(rerank_feature_blocks(qf.numpy(), gf.numpy(), k1=cfg.eval.k1, k2=cfg.eval.k2,
                                        lambda_value=cfg.eval.lambda_value), q.pids, g.pids, q_keys, g_keys,
                  cfg.eval.topk)
        results["rerank"] = metrics(rr.metrics)
        retrieval.update(rr_index=rr.index, rr_dist=rr.dist, rr_ap=np.asarray(rr.metrics["all_AP"], dtype=np.float32),
                         rr_first_match=rr.metrics["first_match"].astype(np.int32))
    ctx.record({"type": "eval", "time": time.time(), **{k: v for k, v in results.items() if k != "rerank"},
                **{f"rerank_{k}": v for k, v in results.get("rerank", {}).items()}})
    results.update(protocol=d.ds.protocol, method=cfg.train.method,
                   num_unlabeled=len(ctx.unlabeled.paths) if t.strategy.uses_unlabeled else 0,
                   unlabeled_source=d.source, epochs=cfg.train.epochs, train_time_s=t.time_s,
                   device=str(ctx.device), world_size=ctx.dist.world_size, num_classes=d.ds.num_classes,
                   seed=cfg.seed, backbone=cfg.model.backbone, weights=t.weights.to_dict(), tricks=tricks(cfg),
                   controls=controls(cfg), remedies=remedies(cfg), epoch_length=cfg.train.epoch_length,
                   labeled_train_images=len(d.keep), train_steps=t.trainer.clock.start(cfg.train.epochs))
    write_json(ctx.run.results, results)
    write_npz(ctx.run.retrieval, **retrieval)
    write_npz(ctx.run.distances, **scores.pairs)  # the protocol's pairs
    ctx.evaluated = Evaluated(query=qf, gallery=gf, results=results)
    ctx.progress(1.0)
