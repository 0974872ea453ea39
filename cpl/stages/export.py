"""Stage ``export``: what the inspection pages read. Every split's features and table (``features/``), the class
centers, the final pseudo-label of every unlabeled image (``pseudo_labels.csv``) and the UMAP map of train +
unlabeled features with the centers (``embedding.npz``). Rank 0 only; recomputed on resume."""

from __future__ import annotations

import numpy as np
import torch

from cpl.runs import faults
from cpl.runs.artifacts import PseudoLabels, write_pseudo_labels, write_split
from cpl.runs.atomic import write_npy, write_npz
from cpl.stages.context import RunContext
from cpl.stages.evaluate import extract_options


def export(ctx: RunContext) -> None:
    """Stage ``export``."""
    from cpl.data.image_source import Rows
    from cpl.engine.features import extract

    cfg, run, d, u, t, e = ctx.cfg, ctx.run, ctx.data, ctx.unlabeled, ctx.trained, ctx.evaluated
    ctx.progress(0.0, "writing features")
    ex = extract_options(ctx)
    model = t.trainer.model
    # Labeled training images only: in holdout mode the hidden ones are the unlabeled set.
    tf, _ = extract(model, Rows(d.train_imgs, d.keep), **ex)
    uf, ul = extract(model, u.images, with_logits=True, **ex) if len(u.images) else (torch.zeros(0, tf.shape[1]), None)
    centers = t.trainer.state.centers.detach().float().cpu()
    valid = t.trainer.state.center_valid.cpu()
    ctx.check_disk(4 * (len(tf) + len(uf) + len(e.query) + len(e.gallery)) * tf.shape[1], "features")
    ds = d.ds
    train = ds.train.subset(d.keep)
    write_split(run, "train", train.paths, train.pids, train.camids, tf.numpy(), labels=d.labels[d.keep])
    write_split(run, "query", ds.query.paths, ds.query.pids, ds.query.camids, e.query.numpy())
    write_split(run, "gallery", ds.gallery.paths, ds.gallery.pids, ds.gallery.camids, e.gallery.numpy())
    write_npy(run.features / "unlabeled.npy", uf.numpy().astype(np.float16))
    write_npy(run.features / "centers.npy", centers.numpy())
    unl_labels = np.zeros(0, dtype=np.int64)
    if len(uf):
        table = pseudo_labels(ctx, uf, ul, centers, valid)
        write_pseudo_labels(run, table, ds.label_to_pid)
        unl_labels = np.where(np.isfinite(table.cos), table.nearest, -1).astype(np.int64)
    if cfg.eval.umap:
        ctx.progress(0.5, "UMAP of train + unlabeled features and centers")
        faults.point("umap")
        from cpl.evaluation.embedding import umap_layout

        emb = umap_layout(tf.numpy(), d.labels[d.keep], uf.numpy(), unl_labels, centers.numpy(),
                          neighbors=cfg.eval.umap_neighbors, min_dist=cfg.eval.umap_min_dist,
                          max_points=cfg.eval.umap_max_points, seed=cfg.seed, cache_dir=str(run.cache_root / "numba"))
        write_npz(run.embedding, **emb)
    ctx.progress(1.0)


def pseudo_labels(ctx: RunContext, uf: torch.Tensor, ul: torch.Tensor, centers: torch.Tensor,
                  valid: torch.Tensor) -> PseudoLabels:
    """The final assignment of the unlabeled features ``uf`` ``[M, D]`` (logits ``ul`` ``[M, C]``) to the class
    ``centers`` ``[K, D]`` (``valid`` ``[K]`` bool), and the method's own target for each."""
    from cpl.pseudo import cosine_to_centers, top2

    t, u = ctx.trained, ctx.unlabeled
    lab, cos1, run_up, cos2 = top2(cosine_to_centers(uf, centers, valid))
    # The whole set at once: CSLS's reference set and a balanced assignment are this set, as in training
    tg = t.strategy.set_targets(uf, ul, centers, valid, max(0, ctx.cfg.train.epochs - 1))
    conf = tg.probs.gather(1, tg.label.clamp(min=0)[:, None]).squeeze(1)
    from cpl.pseudo.diagnostics import last_change_epoch

    history = t.trainer.state.history_labels
    last_change = last_change_epoch(np.stack(history) if history else np.zeros((0, len(uf)), dtype=np.int32))
    return PseudoLabels(paths=u.paths, nearest=lab.numpy(), cos=cos1.numpy(), runner_up=run_up.numpy(),
                        runner_up_cos=cos2.numpy(), last_change=last_change, method_label=tg.label.numpy(),
                        method_conf=conf.numpy(), truth=u.truth)
