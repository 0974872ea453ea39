"""The whole run: config → data → (GAN) → training → evaluation → artifacts in the run directory.

``execute(run_dir)`` runs (or resumes) a prepared run directory. It is what ``cpl run`` and
``cpl resume`` call, in the foreground or as a detached process started by the app. Every stage
reports to ``status.json`` / ``metrics.jsonl``; artifacts are written as soon as they exist so the app
can show them while later stages are still running.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cpl import PROG
from cpl import config as cfgmod
from cpl.config import Config, tricks
from cpl.runs import faults
from cpl.runs.atomic import append_jsonl, write_json, write_npy, write_npz, write_text
from cpl.runs.queue import device_slots, scheduled, wait_until_held
from cpl.runs.rundir import RunDir
from cpl.runs.status import StatusWriter

log = logging.getLogger(PROG)

# Share of the whole run's progress bar per stage (when the stage runs).
_STAGE_WEIGHT = {"data": 0.05, "gan": 0.25, "train": 0.6, "eval": 0.1}


class RunFailed(RuntimeError):
    """A failure with a one-line message and a hint for the user (no traceback needed)."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


def load_run_config(run: RunDir) -> Config:
    return cfgmod.load_config(run.config)


# ------------------------------------------------------------------------------------------ execution


class _Stop:
    """SIGTERM/SIGINT → a flag the loops poll, so a cancel ends at an iteration boundary, cleanly."""

    def __init__(self) -> None:
        self.flag = threading.Event()

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.flag.set())

    def __call__(self) -> bool:
        return self.flag.is_set()


def _setup_logging(run: RunDir, is_main: bool) -> logging.Handler | None:
    """Log to stderr, and to the run's log.txt unless stdout already goes there (a detached launch)."""
    log.setLevel(logging.INFO if is_main else logging.ERROR)  # one voice under torchrun
    if not any(isinstance(h, logging.StreamHandler) and getattr(h, "_cpl", False) for h in log.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        h._cpl = True  # type: ignore[attr-defined]
        log.addHandler(h)
    if not is_main:
        return None
    try:
        same = run.log.exists() and os.path.samefile(run.log, f"/proc/self/fd/{sys.stderr.fileno()}")
    except (OSError, ValueError):
        same = False
    if same:
        return None
    fh = logging.FileHandler(run.log, encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(fh)
    return fh


def execute(run: RunDir, *, stop: _Stop | None = None, progress_bar: bool = False) -> dict:
    """Run or resume the prepared run ``run``; returns results.json's content. Raises on failure after
    recording it in status.json (state failed / cancelled)."""
    from cpl.engine import dist

    info = dist.from_env()
    cfg = load_run_config(run)
    if info.is_main:
        run.remove_stale_temp_files()  # a killed predecessor's; its targets are whole (cpl/runs/atomic.py)
    stop = stop or _Stop()
    stop.install()
    status = StatusWriter(run, enabled=info.is_main)
    handler = _setup_logging(run, info.is_main)
    status.update(state="queued", stage="queued", error=None, hint=None, finished=None, message="waiting to start")
    status.start_heartbeat()
    try:
        device = dist.resolve_device(cfg.device, info)
        status.update(device=str(device) if not info.enabled else f"{device.type} x{info.world_size}")
        with ExitStack() as stack:
            if not scheduled():  # a cluster scheduler (Ray) already placed the run on its device
                _claim_devices(stack, run, dist.job_devices(cfg.device, info), info, status, stop)
            dist.init(info, device)
            stack.callback(dist.shutdown, info)
            status.update(state="running", message="started")
            results = _Pipeline(run, cfg, device, info, status, stop, progress_bar).stages()
            faults.point("results")
        status.update(state="finished", stage="done", progress=1.0, eta_s=0, finished=time.time(),
                      message=_summary(results) if results else "")
        return results
    except (InterruptedError, *_stopped_types()) as exc:
        status.update(state="cancelled", finished=time.time(), message=f"cancelled: {exc}")
        log.info("cancelled: %s", exc)
        raise
    except BaseException as exc:
        msg, hint = _describe(exc)
        status.update(state="failed", finished=time.time(), error=msg, hint=hint, message=msg)
        log.error("failed: %s%s", msg, f" ({hint})" if hint else "")
        raise
    finally:
        status.stop_heartbeat()
        if handler:
            log.removeHandler(handler)
            handler.close()


def _claim_devices(stack: ExitStack, run: RunDir, devices: list[str], info, status: StatusWriter,
                   stop: _Stop) -> None:
    """Take the run queue's slot of every device the job uses (cpl/runs/queue.py) for the rest of ``stack``.

    Rank 0 claims them all on behalf of a torchrun job, so a multi-GPU run and a single-GPU run on one of its
    GPUs wait for each other; the other ranks wait until the claim is held before they join the process group
    (so a long wait in the queue never runs into the group's timeout). status.json shows ``waiting_for`` (the
    device the claim is blocked on) while queued, and ``devices`` (all of them) once they are held.
    """
    if not info.is_main:
        wait_until_held(run.runs_root, devices, run.id, should_stop=stop)
        return

    def waiting(device: str) -> None:
        status.update(state="queued", waiting_for=device, message=f"waiting for {device} (another run)")

    stack.enter_context(device_slots(run.runs_root, devices, on_wait=waiting, should_stop=stop, holder=run.id))
    status.update(devices=devices, waiting_for=None)


def _stopped_types() -> tuple[type, ...]:
    from cpl.engine.trainer import Stopped
    from cpl.gan import Stopped as GanStopped

    return (Stopped, GanStopped)


def _describe(exc: BaseException) -> tuple[str, str]:
    """One-line message + hint for the status file."""
    from cpl.engine.trainer import NonFiniteLoss

    if isinstance(exc, RunFailed):
        return str(exc), exc.hint
    if isinstance(exc, NonFiniteLoss):
        return str(exc), "lower train.lr or set train.amp=off, then resume"
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "CUDA out of memory", "lower train.batch_size or use a smaller model.backbone"
    if isinstance(exc, MemoryError):
        return "out of memory", "lower data sizes or unlabeled.num_images"
    if isinstance(exc, OSError) and exc.errno == 28:
        return "disk full while writing the run", "free disk space, then resume"
    if isinstance(exc, (cfgmod.ConfigError, ValueError, FileNotFoundError)):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__, ""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", "resume it with `cpl resume`"
    return f"{type(exc).__name__}: {exc}".splitlines()[0], "see log.txt for the traceback"


def _summary(r: dict) -> str:
    s = f"rank-1 {r['rank1']:.2f}  mAP {r['mAP']:.2f}"
    if r.get("rerank"):
        s += f"  (re-ranked: rank-1 {r['rerank']['rank1']:.2f}  mAP {r['rerank']['mAP']:.2f})"
    return s


class _Pipeline:
    def __init__(self, run: RunDir, cfg: Config, device: torch.device, info, status: StatusWriter, stop: _Stop,
                 progress_bar: bool):
        self.run, self.cfg, self.device, self.info, self.status, self.stop = run, cfg, device, info, status, stop
        self.progress_bar = progress_bar and info.is_main
        uses_gan = cfg.uses_unlabeled and cfg.unlabeled.source == "gan"
        stages = ["data"] + (["gan"] if uses_gan else []) + ["train", "eval"]
        total = sum(_STAGE_WEIGHT[s] for s in stages)
        acc, self.base = 0.0, {}
        for s in stages:
            self.base[s] = (acc / total, _STAGE_WEIGHT[s] / total)
            acc += _STAGE_WEIGHT[s]
        self.entered: dict[str, float] = {}  # stage -> unix time this process entered it (stage_times_s)

    # ------------------------------------------------------------------ helpers
    def _stage(self, stage: str, frac: float = 0.0, **extra) -> None:
        self.entered.setdefault(stage, time.time())
        start, width = self.base.get(stage, (0.0, 0.0))
        self.status.update(stage=stage, progress=min(1.0, start + width * frac), **extra)

    def _record(self, rec: dict) -> None:
        if self.info.is_main:
            append_jsonl(self.run.metrics, {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                            for k, v in rec.items()})

    def _check_disk(self, need_bytes: int, what: str) -> None:
        free = shutil.disk_usage(self.run.path).free
        if free < need_bytes * 1.2 + 50 * 2**20:
            raise RunFailed(f"not enough disk space for {what}: need ~{need_bytes / 2**20:.0f} MiB, "
                            f"{free / 2**20:.0f} MiB free in {self.run.path}", "free disk space, then resume")

    # ------------------------------------------------------------------ stages
    def stages(self) -> dict:
        from cpl.pseudo import get_strategy

        cfg = self.cfg
        t_start = time.time()
        data = self._load_data()
        strategy = get_strategy(cfg.train)
        trainer = self._train(data, strategy)
        results = self._evaluate(data, trainer, strategy)
        if not self.info.is_main:  # rank 0 evaluates and writes; the others are done after training
            return {}
        end = time.time()
        results["total_time_s"] = end - t_start
        results["stage_times_s"] = stage_durations(self.entered, end)
        write_json(self.run.results, results)
        return results

    def _load_data(self):
        from cpl.data.check import check_dataset, raise_if_invalid
        from cpl.data.holdout import holdout_split
        from cpl.data.images import list_images, load_images
        from cpl.data.market import load_market

        cfg = self.cfg
        self._stage("data", 0.0, message="checking the dataset")
        root = Path(cfg.data.root)
        if cfg.data.kind == "synthetic":
            from cpl.synth import ensure

            s = cfg.data.synthetic
            log.info("synthetic dataset at %s (ids=%d, seed=%d)", root, s.ids, s.seed)
            ensure(root, ids=s.ids, seed=s.seed, cameras=s.cameras)
        report = check_dataset(root, decode=False)
        raise_if_invalid(report)
        for w in report.warnings:
            log.warning("dataset: %s", w)
        ds = load_market(root, max_train=cfg.data.max_train_images, max_query=cfg.data.max_query_images,
                         max_gallery=cfg.data.max_gallery_images, seed=cfg.seed)
        h, w = cfg.data.height, cfg.data.width
        self._stage("data", 0.2, message=f"decoding {len(ds.train) + len(ds.query) + len(ds.gallery)} images")
        train_imgs = load_images(ds.train.paths, h, w)
        self._stage("data", 0.6)
        query_imgs = load_images(ds.query.paths, h, w)
        gallery_imgs = load_images(ds.gallery.paths, h, w)
        labels = np.asarray(ds.train_labels, dtype=np.int64)
        faults.point("data")

        # The unlabeled set.
        src = cfg.unlabeled.source if cfg.uses_unlabeled else "none"
        keep = np.arange(len(labels))
        unl_imgs = torch.zeros(0, 3, h, w, dtype=torch.uint8)
        unl_paths: list[str] = []
        truth: np.ndarray | None = None
        if src == "holdout":
            keep, hidden = holdout_split(labels, cfg.unlabeled.holdout_fraction, cfg.seed)
            unl_imgs, truth = train_imgs[hidden], labels[hidden]
            unl_paths = [ds.train.paths[i] for i in hidden]
        elif src == "folder":
            files = list_images(Path(cfg.unlabeled.folder), limit=cfg.unlabeled.num_images)
            if not files:
                raise RunFailed(f"unlabeled.folder: no images in {cfg.unlabeled.folder}")
            unl_paths = [str(p) for p in files]
            unl_imgs = load_images(unl_paths, h, w)
        elif src == "gan" and cfg.unlabeled.num_images > 0:
            unl_paths = self._gan_samples(train_imgs, ds.fingerprint())
            unl_imgs = load_images(unl_paths, h, w)

        stats = {
            "root": str(root.resolve()), "num_classes": ds.num_classes, "fingerprint": ds.fingerprint(),
            "splits": {name: {"images": len(sp), "ids": int(len(np.unique(sp.pids))),
                              "cameras": int(len(np.unique(sp.camids)))}
                       for name, sp in (("train", ds.train), ("query", ds.query), ("gallery", ds.gallery))},
            "labeled_train_images": int(len(keep)), "unlabeled_source": src, "unlabeled_images": len(unl_paths),
            "warnings": list(report.warnings),
        }
        if self.info.is_main:
            write_json(self.run.dataset, stats)
            self._write_unlabeled_csv(unl_paths, src, truth, ds.label_to_pid)
        log.info("data: %d train (%d labeled, K=%d), %d query, %d gallery, %d unlabeled (%s)", len(labels),
                 len(keep), ds.num_classes, len(ds.query), len(ds.gallery), len(unl_paths), src)
        self._stage("data", 1.0)
        return _Data(ds=ds, labels=labels, keep=keep, train_imgs=train_imgs, query_imgs=query_imgs,
                     gallery_imgs=gallery_imgs, unl_imgs=unl_imgs, unl_paths=unl_paths, truth=truth, source=src)

    def _gan_samples(self, train_imgs: torch.Tensor, fingerprint: str) -> list[str]:
        from cpl.gan import ensure_samples, list_samples

        cfg = self.cfg
        n = cfg.unlabeled.num_images
        self._check_disk(n * 3 * cfg.gan.image_size ** 2, f"{n} GAN samples")
        self._stage("gan", 0.0, message="DCGAN: training or reusing a cached one")

        def on_progress(rec: dict) -> None:
            rec = {"type": "gan", **rec, "time": time.time()}
            self._record(rec)
            if rec["type"] == "sampling":
                done = rec.get("done", 0) / max(1, rec.get("total", n))
                self._stage("gan", 0.9 + 0.1 * done, message=f"sampling GAN images: {rec.get('done', 0)}/{n}")
                return
            frac = (rec.get("epoch", 0) + rec.get("step", 0) / max(1, rec.get("steps", 1))) / cfg.gan.epochs
            self._stage("gan", 0.9 * min(1.0, frac), epoch=rec.get("epoch", 0), epochs=cfg.gan.epochs,
                        message=f"DCGAN epoch {rec.get('epoch', 0) + 1}/{cfg.gan.epochs}")

        folder = None
        if self.info.is_main:
            folder = ensure_samples(train_imgs, fingerprint, cfg.gan, n, self.run.cache_root / "gan",
                                    seed=cfg.gan.seed, device=self.device, on_progress=on_progress,
                                    should_stop=self.stop)
            self._write_gan_json(folder.parent)
        from cpl.engine import dist

        dist.barrier()
        folder = dist.broadcast_object(str(folder) if folder else None)
        paths = [str(p) for p in list_samples(Path(folder), n)]
        self._stage("gan", 1.0)
        return paths

    def _write_gan_json(self, key_dir: Path) -> None:
        """The run's copy of its DCGAN's record (the app reads run directories only)."""
        from cpl.gan.cache import read_info

        info = read_info(key_dir) or {}
        keep = ("key", "config", "seed", "epochs_done", "train_time_s", "num_images", "samples", "quality")
        write_json(self.run.gan, {k: info[k] for k in keep if k in info})
        q = info.get("quality")
        if q:
            log.info("DCGAN %s: Fréchet distance %.1f to the real images (real-vs-real floor %.1f, %d images a side)",
                     info.get("key"), q["fd"], q["fd_floor"], q["n"])

    def _write_unlabeled_csv(self, paths: list[str], source: str, truth: np.ndarray | None,
                             label_to_pid: np.ndarray) -> None:
        buf = io.StringIO()
        wr = csv.writer(buf)
        wr.writerow(["index", "path", "source", "true_label", "true_pid"])
        for i, p in enumerate(paths):
            t = int(truth[i]) if truth is not None else -1
            wr.writerow([i, self.run.rel(p), source, t, int(label_to_pid[t]) if t >= 0 else ""])
        write_text(self.run.unlabeled, buf.getvalue())

    def _train(self, d: _Data, strategy):
        from cpl.engine.checkpoints import TRAIN_PREFIX, load_latest, save_checkpoint
        from cpl.engine.trainer import Hooks, TrainData, Trainer
        from cpl.models.backbones import WeightsNotFound
        from cpl.models.reid import build_model

        cfg = self.cfg
        k = d.ds.num_classes
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank and every resume
        try:
            model, self.weights = build_model(cfg.model.backbone, k + (1 if strategy.extra_class else 0),
                                              cfg.model.dropout, cfg.model.pretrained,
                                              last_stride=cfg.model.last_stride, neck=cfg.model.neck)
        except WeightsNotFound as exc:  # the weights were there at launch and are gone now
            raise RunFailed(str(exc), "install the weights or set model.pretrained=none, then resume") from None
        log.info("model: %s, %s", cfg.model.backbone, self.weights.describe())
        images = torch.cat([d.train_imgs[d.keep], d.unl_imgs]) if strategy.uses_unlabeled else d.train_imgs[d.keep]
        data = TrainData(images=images, labels=torch.from_numpy(d.labels[d.keep]), num_labeled=len(d.keep),
                         num_classes=k,
                         unlabeled_truth=torch.from_numpy(d.truth) if d.truth is not None and strategy.uses_unlabeled
                         else None)
        t_start = time.time()
        epochs = cfg.train.epochs

        def on_progress(epoch: int, it: int, iters: int) -> None:
            done = (epoch + it / iters) / epochs
            elapsed = time.time() - t_start
            eta = elapsed / max(done - done0, 1e-9) * (1 - done) if done > done0 else None
            self._stage("train", done, epoch=epoch, epochs=epochs, iter=it, iters=iters,
                        eta_s=eta, message=f"epoch {epoch + 1}/{epochs}, iteration {it}/{iters}")
            if bar is not None:
                bar.n = round(done * bar.total, 2)
                bar.refresh()

        def on_epoch_end(epoch: int, state: dict) -> None:
            if self.info.is_main:
                self._check_disk(_state_bytes(state), "a checkpoint")
                save_checkpoint(self.run.checkpoints, TRAIN_PREFIX, state, epoch + 1)
                hl = trainer.state.history_labels
                if hl:
                    write_npz(self.run.pseudo_history, labels=np.stack(hl),
                              confidence=np.stack(trainer.state.history_conf))

        trainer = Trainer(cfg, data, model, strategy, self.device, self.info,
                          Hooks(on_record=self._record, on_epoch_end=on_epoch_end, on_progress=on_progress,
                                should_stop=self.stop))
        found = load_latest(self.run.checkpoints, TRAIN_PREFIX, map_location=self.device)
        if found:
            state, path = found
            trainer.load_state_dict(state)
            log.info("resuming from %s (epoch %d/%d)", path.name, trainer.state.epoch, epochs)
        done0 = trainer.state.epoch / epochs
        bar = None
        if self.progress_bar:
            from tqdm import tqdm

            bar = tqdm(total=epochs, initial=trainer.state.epoch, desc=f"train {cfg.train.method}", unit="epoch",
                       bar_format="{l_bar}{bar}| {n:.1f}/{total} epochs [{elapsed}<{remaining}]")
        self._stage("train", done0, epochs=epochs, message=f"training {cfg.train.method} on {self.device}")
        t = cfg.train
        batch = (f"batch {t.batch_size // t.pk_instances} identities x {t.pk_instances} + "
                 f"{trainer.unlabeled_per_batch} unlabeled" if t.sampler == "pk" else f"batch {t.batch_size}")
        log.info("training %s: %d labeled + %d unlabeled images, %d epochs x %d iterations, %s", t.method,
                 data.num_labeled, data.num_unlabeled if strategy.uses_unlabeled else 0, epochs,
                 trainer.iters_per_epoch(), batch)
        try:
            trainer.fit()
        finally:
            if bar is not None:
                bar.close()
        self.train_time = time.time() - t_start
        faults.point("train-end")
        return trainer

    def _evaluate(self, d: _Data, trainer, strategy) -> dict:
        from cpl.engine.features import extract
        from cpl.engine.trainer import amp_dtype
        from cpl.evaluation import evaluate, rerank_features, topk

        cfg, run = self.cfg, self.run
        if not self.info.is_main:
            return {}
        self._stage("eval", 0.0, message="extracting features")
        model = trainer.model
        dt = amp_dtype(cfg, self.device)
        ex = dict(device=self.device, batch_size=cfg.eval.batch_size, flip=cfg.eval.flip, dtype=dt)
        qf, _ = extract(model, d.query_imgs, retrieval=True, **ex)
        gf, _ = extract(model, d.gallery_imgs, retrieval=True, **ex)
        faults.point("eval")
        self._stage("eval", 0.3, message="evaluating")
        ds = d.ds
        dist_qg = (1.0 - qf @ gf.T).numpy()  # cosine distance; same ranking as Euclidean on unit vectors
        base = evaluate(dist_qg, ds.query.pids, ds.gallery.pids, ds.query.camids, ds.gallery.camids)
        results = _metrics(base)
        idx, dst = topk(dist_qg, min(cfg.eval.topk, len(gf)))
        retrieval = {"index": idx, "dist": dst, "ap": np.asarray(base["all_AP"], dtype=np.float32)}
        if cfg.eval.rerank:
            self._stage("eval", 0.4, message="re-ranking")
            faults.point("rerank")
            rr = rerank_features(qf.numpy(), gf.numpy(), k1=cfg.eval.k1, k2=cfg.eval.k2,
                                 lambda_value=cfg.eval.lambda_value)
            rr_res = evaluate(rr, ds.query.pids, ds.gallery.pids, ds.query.camids, ds.gallery.camids)
            results["rerank"] = _metrics(rr_res)
            ridx, rdst = topk(rr, min(cfg.eval.topk, len(gf)))
            retrieval.update(rr_index=ridx, rr_dist=rdst, rr_ap=np.asarray(rr_res["all_AP"], dtype=np.float32))
        self._record({"type": "eval", "time": time.time(), **{k: v for k, v in results.items() if k != "rerank"},
                      **{f"rerank_{k}": v for k, v in results.get("rerank", {}).items()}})
        results.update(method=cfg.train.method, num_unlabeled=len(d.unl_paths) if strategy.uses_unlabeled else 0,
                       unlabeled_source=d.source, epochs=cfg.train.epochs, train_time_s=self.train_time,
                       device=str(self.device), world_size=self.info.world_size, num_classes=ds.num_classes,
                       seed=cfg.seed, backbone=cfg.model.backbone, weights=self.weights.to_dict(),
                       tricks=tricks(cfg))
        # Results first (the headline), then the artifacts the inspection pages read.
        write_json(run.results, results)
        write_npz(run.retrieval, **retrieval)
        self._stage("eval", 0.5, message="writing features")
        # Labeled training images only: in holdout mode the hidden ones are the unlabeled set.
        tf, _ = extract(model, d.train_imgs[d.keep], **ex)
        uf, ul = (extract(model, d.unl_imgs, with_logits=True, **ex) if len(d.unl_imgs)
                  else (torch.zeros(0, tf.shape[1]), None))
        centers = trainer.state.centers.detach().float().cpu()
        valid = trainer.state.center_valid.cpu()
        self._check_disk(4 * (len(tf) + len(uf) + len(qf) + len(gf)) * tf.shape[1], "features")
        feat_dir = run.features
        for name, f in (("train", tf), ("query", qf), ("gallery", gf), ("unlabeled", uf)):
            write_npy(feat_dir / f"{name}.npy", f.numpy().astype(np.float16))
        write_npy(feat_dir / "centers.npy", centers.numpy())
        self._write_split_csv("train", ds.train.subset(d.keep), labels=d.labels[d.keep])
        self._write_split_csv("query", ds.query)
        self._write_split_csv("gallery", ds.gallery)
        unl_labels = np.zeros(0, dtype=np.int64)
        if len(uf):
            unl_labels = self._write_pseudo_labels(d, uf, ul, centers, valid, strategy, trainer)
        if cfg.eval.umap:
            self._stage("eval", 0.75, message="UMAP of train + unlabeled features and centers")
            faults.point("umap")
            from cpl.evaluation.embedding import umap_layout

            emb = umap_layout(tf.numpy(), d.labels[d.keep], uf.numpy(), unl_labels, centers.numpy(),
                              neighbors=cfg.eval.umap_neighbors, min_dist=cfg.eval.umap_min_dist,
                              max_points=cfg.eval.umap_max_points, seed=cfg.seed,
                              cache_dir=str(run.cache_root / "numba"))
            write_npz(run.embedding, **emb)
        self._stage("eval", 1.0)
        return results

    def _write_split_csv(self, name: str, split, labels: np.ndarray | None = None) -> None:
        buf = io.StringIO()
        wr = csv.writer(buf)
        wr.writerow(["path", "pid", "camid"] + (["label"] if labels is not None else []))
        for i, p in enumerate(split.paths):
            wr.writerow([self.run.rel(p), int(split.pids[i]), int(split.camids[i])]
                        + ([int(labels[i])] if labels is not None else []))
        write_text(self.run.features / f"{name}.csv", buf.getvalue())

    def _write_pseudo_labels(self, d: _Data, uf: torch.Tensor, ul: torch.Tensor, centers: torch.Tensor,
                             valid: torch.Tensor, strategy, trainer) -> np.ndarray:
        """Final assignment table; returns the center-based label of every unlabeled image."""
        from cpl.pseudo import cosine_to_centers, top2

        sims = cosine_to_centers(uf, centers, valid)
        lab, cos1, run_up, cos2 = top2(sims)
        lab_np, run_np = lab.numpy(), run_up.numpy()
        tg = strategy.targets(uf, ul, centers, valid, max(0, self.cfg.train.epochs - 1))
        m_label = tg.label.numpy()
        m_conf = tg.probs.gather(1, tg.label.clamp(min=0)[:, None]).squeeze(1).numpy()
        hist = np.stack(trainer.state.history_labels) if trainer.state.history_labels else np.zeros((0, len(uf)))
        last_change = np.full(len(uf), -1, dtype=np.int64)
        for e in range(1, len(hist)):
            changed = (hist[e] >= 0) & (hist[e - 1] >= 0) & (hist[e] != hist[e - 1])
            last_change[changed] = e
        pid_of = d.ds.label_to_pid
        k = len(pid_of)
        buf = io.StringIO()
        wr = csv.writer(buf)
        wr.writerow(["index", "path", "label", "pid", "cos", "runner_up", "runner_up_pid", "runner_up_cos", "margin",
                     "last_change_epoch", "method_label", "method_conf", "true_label", "correct"])
        for i in range(len(uf)):
            c1, c2 = float(cos1[i]), float(cos2[i])
            ok = np.isfinite(c1)
            t = int(d.truth[i]) if d.truth is not None else -1
            ml = int(m_label[i])
            wr.writerow([i, self.run.rel(d.unl_paths[i]), int(lab_np[i]) if ok else -1,
                         int(pid_of[lab_np[i]]) if ok else "", f"{c1:.5f}" if ok else "",
                         int(run_np[i]) if np.isfinite(c2) else -1,
                         int(pid_of[run_np[i]]) if np.isfinite(c2) else "", f"{c2:.5f}" if np.isfinite(c2) else "",
                         f"{c1 - c2:.5f}" if ok and np.isfinite(c2) else "", int(last_change[i]),
                         ml if 0 <= ml < k else (-2 if ml == k else -1), f"{float(m_conf[i]):.5f}",
                         t if t >= 0 else "", (int(lab_np[i] == t) if ok else 0) if t >= 0 else ""])
        write_text(self.run.pseudo_labels, buf.getvalue())
        return np.where(np.isfinite(cos1.numpy()), lab_np, -1).astype(np.int64)


@dataclass
class _Data:
    ds: object
    labels: np.ndarray
    keep: np.ndarray
    train_imgs: torch.Tensor
    query_imgs: torch.Tensor
    gallery_imgs: torch.Tensor
    unl_imgs: torch.Tensor
    unl_paths: list[str]
    truth: np.ndarray | None
    source: str


def _metrics(res: dict) -> dict:
    cmc = np.asarray(res["cmc"])
    at = lambda r: float(cmc[min(r, len(cmc)) - 1]) * 100  # noqa: E731
    return {"rank1": at(1), "rank5": at(5), "rank10": at(10), "mAP": float(res["mAP"]) * 100,
            "mINP": float(res["mINP"]) * 100, "num_valid_queries": int(res.get("num_valid", 0))}


def _state_bytes(state: dict) -> int:
    total = 0
    for v in state.values():
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, dict):
            total += _state_bytes(v)
    return total


def stage_durations(entered: dict[str, float], end: float) -> dict[str, float]:
    """Seconds spent in each stage: from entering it (unix time) to entering the next one, the last to ``end``.
    ``entered`` is in the order the stages ran."""
    times = [*entered.values(), end]
    return {stage: times[i + 1] - t for i, (stage, t) in enumerate(entered.items())}


def summary_line(results: dict) -> str:
    """One-line summary of results.json (rank-1 / mAP, and re-ranked when present)."""
    return _summary(results)
