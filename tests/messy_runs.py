"""A messy runs folder for the app tests: 300 fabricated run directories (no training), 42 of them damaged.

The healthy runs hold every file a finished (or failed, or cancelled) run writes, with the documented layout
and small arrays (docs/run-directory.md), so the Runs and Compare pages do their full work on each. Each
damaged one is broken in one way, and :data:`DAMAGES` says which file the app must name for it
(``app.health.Problem.file``; ``.`` = the entry itself):

* JSON files truncated, empty, binary, of the wrong type, with text where a number belongs, a folder
  instead of the file;
* config.yaml missing, not YAML, not a mapping;
* artifacts of a finished run missing (results, retrieval, embedding, pseudo-labels, a split CSV, the whole
  features folder), a .npz cut short, a .npy that is not one, of the wrong shape, with too few rows or
  another feature dimension;
* entries of the runs root that are no readable run: a file, a folder without run.json, a broken link;
* each artifact an inspection page (GAN, Embedding, Retrieval) reads absent on its own, from an otherwise whole
  CPL run with a UMAP (:data:`ABSENT`); those that a finished run must have are damage, the optional ones
  (unlabeled.csv, pseudo_history.npz, gan.json, status.json) are not, and the pages must still say what they
  can;
* permissions: an unreadable results.json and an unreadable run folder. Root reads them anyway, so under
  root (detected by trying to read) those two are not damage and the tests leave them out.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cpl.config import Config, dump_yaml

RUNS = 300
DIM = 16
METHODS = ("baseline", "center", "cpl", "fapl", "lsro", "onehot")
SPLITS = {"train": 12, "query": 4, "gallery": 10}
# The runs were trained on another machine: their dataset is recorded but not here (relative, never created).
DATA_ROOT = "dataset-not-on-this-machine/synthetic"


@dataclass
class MessyRoot:
    """The runs root, and for each damaged entry (by name) the file the app must name (None: not damage on
    this machine, e.g. a permission that root ignores) and the kind of damage (a key of DAMAGES, STRAYS or
    NEEDS_UNLABELED, or ``absent <artifact>``); ``absent`` names, per run, the one artifact of :data:`ABSENT`
    it lacks (damage or not)."""

    root: Path
    damaged: dict[str, str | None]
    kind: dict[str, str]
    absent: dict[str, str]

    @property
    def checkable(self) -> dict[str, str]:
        return {name: file for name, file in self.damaged.items() if file is not None}


# ----------------------------------------------------------------------------------------- healthy runs


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data))


def _csv(path: Path, header: str, rows: list[str]) -> None:
    path.write_text("\n".join([header, *rows]) + "\n")


def _features(run: Path, rng: np.random.Generator, unlabeled: int) -> None:
    """features/*.npy ([N, D] float16, centers [K, D] float32) and the split CSVs with as many rows."""
    feats = run / "features"
    feats.mkdir()
    for name, n in {**SPLITS, "unlabeled": unlabeled}.items():
        np.save(feats / f"{name}.npy", rng.standard_normal((n, DIM)).astype(np.float16))
    np.save(feats / "centers.npy", rng.standard_normal((3, DIM)).astype(np.float32))
    for name, n in SPLITS.items():
        extra = ",label" if name == "train" else ""
        _csv(feats / f"{name}.csv", f"path,pid,camid{extra}",
             [f"{DATA_ROOT}/{name}/{i:04d}_c1.jpg,{i % 3},1" + (f",{i % 3}" if extra else "") for i in range(n)])


def _artifacts(run: Path, rng: np.random.Generator, method: str, umap: bool) -> int:
    """Everything a finished run writes after training; returns its number of unlabeled images."""
    unlabeled = 0 if method in ("baseline", "center") else 6
    _features(run, rng, unlabeled)
    q = SPLITS["query"]
    np.savez(run / "retrieval.npz", index=rng.integers(0, 10, (q, 5)).astype(np.int32),
             dist=rng.random((q, 5)).astype(np.float32), ap=rng.random(q).astype(np.float32))
    if unlabeled:
        _csv(run / "unlabeled.csv", "index,path,source,true_label,true_pid",
             [f"{i},../_cache/gan/k/samples/{i:06d}.png,gan,-1," for i in range(unlabeled)])
        np.savez(run / "pseudo_history.npz", labels=(np.arange(2 * unlabeled).reshape(2, unlabeled) % 3).astype(
            np.int32), confidence=np.full((2, unlabeled), 0.8, np.float16))
        _csv(run / "pseudo_labels.csv", "index,path,label,pid,cos,runner_up,runner_up_pid,runner_up_cos,margin,"
             "last_change_epoch,method_label,method_conf,true_label,correct",
             [f"{i},../_cache/gan/k/samples/{i:06d}.png,{i % 3},{i % 3},0.8,1,1,0.5,0.3,1,{i % 3},0.9,-1,"
              for i in range(unlabeled)])
        _write_json(run / "gan.json", {"key": "k", "epochs_done": 1, "quality": {"fd": 812.0, "fd_floor": 402.0,
                                                                                  "n": 64}})
    if umap:  # every training and unlabeled image and every center, as the export stage writes it
        counts = (SPLITS["train"], unlabeled, 3)
        n = sum(counts)
        rows = np.concatenate([np.arange(c) for c in counts]).astype(np.int32)
        np.savez(run / "embedding.npz", xy=rng.random((n, 2)).astype(np.float32),
                 kind=np.repeat(np.arange(3), counts).astype(np.int8), row=rows, label=rows % 3)
    return unlabeled


def healthy_run(root: Path, i: int, umap: bool = False) -> Path:
    """Run ``i`` of the folder: finished, except every 17th failed and every 23rd cancelled; with a UMAP when
    ``umap`` or every 10th."""
    rng = np.random.default_rng(i)
    method = METHODS[i % len(METHODS)]
    run = root / f"m{i:03d}-{method}"
    run.mkdir()
    cfg = Config()
    cfg.data.root = DATA_ROOT
    cfg.train.method = method
    cfg.unlabeled.source = "none" if method in ("baseline", "center") else "gan"
    cfg.eval.umap = umap or i % 10 == 0
    (run / "config.yaml").write_text(dump_yaml(cfg))
    created = 1_780_000_000 + 60 * i
    _write_json(run / "run.json", {"id": run.name, "created": created, "argv": [], "method": method,
                                   "name": "messy", "sweep": None, "backbone": "resnet18",
                                   "weights": {"source": "random init", "file": "", "sha256": "",
                                               "pretrained": False}})
    state = "failed" if i % 17 == 0 else "cancelled" if i % 23 == 0 else "finished"
    _write_json(run / "status.json", {"state": state, "stage": "done" if state == "finished" else "train",
                                      "epoch": 1, "epochs": 2, "progress": 1.0 if state == "finished" else 0.4,
                                      "pid": 0, "host": "elsewhere", "device": "cpu", "devices": ["cpu"],
                                      "waiting_for": None, "heartbeat": created + 50, "started": created,
                                      "updated": created + 50, "finished": created + 50,
                                      "error": "non-finite loss at epoch 2, iteration 1" if state == "failed" else None,
                                      "message": state})
    records = [{"type": "iter", "epoch": e, "iter": it, "loss": 3.0 - e - 0.1 * it, "acc": 0.2 * e, "lr": 0.01}
               for e in range(2) for it in range(3)]
    records += [{"type": "epoch", "epoch": e, "loss": 3.0 - e, "acc": 0.3 * e, "lr": 0.01} for e in range(2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "log.txt").write_text(f"training {method}\n")
    _write_json(run / "dataset.json", {"root": DATA_ROOT, "num_classes": 3,
                                       "splits": {s: {"images": n, "ids": 3, "cameras": 2}
                                                  for s, n in SPLITS.items()}, "warnings": []})
    if state == "finished":
        unlabeled = _artifacts(run, rng, method, cfg.eval.umap)
        r1, mp = (float(v) for v in 100 * rng.random(2))
        _write_json(run / "results.json", {"rank1": r1, "rank5": min(r1 + 10, 100), "rank10": min(r1 + 15, 100),
                                           "mAP": mp, "mINP": mp / 3, "rerank": {"rank1": r1 + 1, "mAP": mp + 2},
                                           "method": method, "num_unlabeled": unlabeled, "epochs": 2,
                                           "train_time_s": 61.0, "device": "cpu", "num_classes": 3,
                                           "backbone": "resnet18"})
    return run


# ----------------------------------------------------------------------------------------- damage


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _replace_with_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _edit_json(path: Path, **fields) -> None:
    _write_json(path, {**json.loads(path.read_text()), **fields})


def _umap_without_embedding(run: Path) -> None:
    """The config asks for the UMAP, but embedding.npz is not there."""
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["eval"]["umap"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "embedding.npz").unlink(missing_ok=True)


def _unreadable(path: Path) -> bool:
    """chmod 000; True when that really blocks reading here (not under root)."""
    path.chmod(0)
    try:
        if path.is_dir():
            os.listdir(path)
        else:
            path.read_bytes()
    except PermissionError:
        return True
    return False


# Each damage: (what it does to a finished run directory, or to the runs root for a stray entry; the file the
# app must name). A function returning False means the damage does not apply on this machine.
Damage = Callable[[Path], object]
DAMAGES: dict[str, tuple[Damage, str]] = {
    "results-truncated": (lambda r: _cut(r / "results.json"), "results.json"),
    "results-a-list": (lambda r: (r / "results.json").write_text("[61.2, 40.3]"), "results.json"),
    "results-binary": (lambda r: (r / "results.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe"), "results.json"),
    "results-rank1-text": (lambda r: _edit_json(r / "results.json", rank1="61.2%"), "results.json"),
    "results-a-folder": (lambda r: _replace_with_folder(r / "results.json"), "results.json"),
    "results-missing": (lambda r: (r / "results.json").unlink(), "results.json"),
    "results-unreadable": (lambda r: _unreadable(r / "results.json"), "results.json"),
    "status-truncated": (lambda r: _cut(r / "status.json"), "status.json"),
    "status-a-number": (lambda r: (r / "status.json").write_text("42"), "status.json"),
    "status-wrong-types": (lambda r: _edit_json(r / "status.json", state="running", pid="abc", heartbeat="yesterday",
                                                progress="half"), "status.json"),
    "run-json-truncated": (lambda r: _cut(r / "run.json"), "run.json"),
    "config-missing": (lambda r: (r / "config.yaml").unlink(), "config.yaml"),
    "config-not-yaml": (lambda r: (r / "config.yaml").write_text("train: [unclosed\n  method: cpl\n"), "config.yaml"),
    "config-a-list": (lambda r: (r / "config.yaml").write_text("- a\n- b\n"), "config.yaml"),
    "features-1d": (lambda r: np.save(r / "features" / "query.npy", np.zeros(7, np.float16)), "features/query.npy"),
    "features-too-few-rows": (lambda r: np.save(r / "features" / "gallery.npy", np.zeros((9, DIM), np.float16)),
                              "features/gallery.npy"),
    "features-not-npy": (lambda r: (r / "features" / "train.npy").write_bytes(b"not an array"), "features/train.npy"),
    "features-other-dim": (lambda r: np.save(r / "features" / "centers.npy", np.zeros((3, DIM + 1), np.float32)),
                           "features"),
    "features-folder-missing": (lambda r: shutil.rmtree(r / "features"), "features/train.npy"),
    "features-csv-missing": (lambda r: (r / "features" / "query.csv").unlink(), "features/query.csv"),
    "retrieval-missing": (lambda r: (r / "retrieval.npz").unlink(), "retrieval.npz"),
    "retrieval-truncated": (lambda r: _cut(r / "retrieval.npz"), "retrieval.npz"),
    "embedding-missing": (_umap_without_embedding, "embedding.npz"),
    "dataset-truncated": (lambda r: _cut(r / "dataset.json"), "dataset.json"),
    "metrics-a-folder": (lambda r: _replace_with_folder(r / "metrics.jsonl"), "metrics.jsonl"),
    "run-folder-unreadable": (lambda r: _unreadable(r), "."),
}
# Damaged entries that are no run folder at all: made in the runs root under the given name.
STRAYS: dict[str, tuple[Damage, str]] = {
    "stray-a-file": (lambda p: p.write_text("a run folder copied as a file"), "."),
    "stray-no-run-json": (lambda p: (p.mkdir(), (p / "config.yaml").write_text("name: x\n")), "run.json"),
    "stray-broken-link": (lambda p: p.symlink_to(p.parent / "nowhere"), "."),
}
# Runs with unlabeled images (the cpl method) for the damages that need them.
NEEDS_UNLABELED = {"pseudo-labels-missing": (lambda r: (r / "pseudo_labels.csv").unlink(), "pseudo_labels.csv")}
# Each artifact the GAN, Embedding and Retrieval pages read, absent on its own from a finished CPL run with a UMAP:
# whether a finished run must have it (then app.health names it, and the run is damaged).
ABSENT = {"pseudo_labels.csv": True, "unlabeled.csv": False, "pseudo_history.npz": False, "gan.json": False,
          "features/train.csv": True, "features/query.csv": True, "features/gallery.csv": True,
          "features/train.npy": True, "features/unlabeled.npy": True, "features/centers.npy": True,
          "embedding.npz": True, "retrieval.npz": True, "metrics.jsonl": True, "results.json": True,
          "config.yaml": True, "status.json": False}
assert len(DAMAGES) + len(STRAYS) + len(NEEDS_UNLABELED) + sum(ABSENT.values()) == 42


def build(root: Path) -> MessyRoot:
    """The runs root: RUNS entries, 42 of them damaged (see the module doc)."""
    root.mkdir(parents=True)
    damaged: dict[str, str | None] = {}
    kinds: dict[str, str] = {}
    absent: dict[str, str] = {}
    healthy = RUNS - len(STRAYS)
    finished = [i for i in range(healthy) if i % 17 and i % 23]
    cpl_runs = [i for i in finished if METHODS[i % len(METHODS)] == "cpl"]
    special = cpl_runs[: len(NEEDS_UNLABELED) + len(ABSENT)]
    plain = [i for i in finished if i not in special]
    targets = dict(zip(plain[:: len(plain) // len(DAMAGES)], DAMAGES.items()))
    targets |= dict(zip(special, NEEDS_UNLABELED.items()))
    missing = dict(zip(special[len(NEEDS_UNLABELED):], ABSENT.items()))
    for i in range(healthy):
        run = healthy_run(root, i, umap=i in missing)
        if i in targets:
            name, (damage, file) = targets[i]
            applies = damage(run) is not False
            damaged[run.name], kinds[run.name] = (file if applies else None), name
        if i in missing:
            artifact, required = missing[i]
            (run / artifact).unlink()
            absent[run.name], kinds[run.name] = artifact, f"absent {artifact}"
            if required:
                damaged[run.name] = artifact
    for name, (damage, file) in STRAYS.items():
        damage(root / name)
        damaged[name], kinds[name] = file, name
    return MessyRoot(root, damaged, kinds, absent)


def _restore_permissions(root: Path) -> None:
    """chmod back what the permission damages took away (run folders first, then the files inside them), so
    the temporary folder can be removed."""
    for pattern in ("*", "*/*"):
        for path in root.glob(pattern):
            if not path.is_symlink() and not stat.S_IMODE(path.lstat().st_mode):
                path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.fixture(scope="session")
def messy_root(tmp_path_factory: pytest.TempPathFactory):
    """The messy runs root (built once per session)."""
    messy = build(tmp_path_factory.mktemp("messy") / "runs")
    yield messy
    _restore_permissions(messy.root)
