"""ONNX export and ``cpl embed``: the exported feature extractor gives the features PyTorch gives (within 1e-4 on
L2-normalised features) and the same ranking (up to gallery images whose distances differ by less than 1e-5), for
every backbone family, on image files; and a finished run round-trips through ``cpl export`` + ``cpl embed`` to the
features and lists the run itself wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import shared_data_dir
from PIL import Image

from cpl.backbones import IMAGENET_MEAN, IMAGENET_STD
from cpl.data.images import list_images, load_images
from cpl.deploy.embed import embed_paths
from cpl.deploy.onnx import export_model
from cpl.engine.features import extract
from cpl.models.reid import build_model
from cpl.models.weights import WeightsNotFound
from cpl.synth import generate

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4  # max |ONNX - PyTorch| per component of an L2-normalised feature (measured: below 5e-7)
H, W = 64, 32


@pytest.fixture(scope="module", params=["synthetic", "cuhk01"])
def image_sets(request, tmp_path_factory) -> tuple[list[Path], list[Path]]:
    """(8 query images, 30 gallery images): files of the synthetic dataset, or real CUHK01 photos when the shared
    data is there."""
    if request.param == "synthetic":
        root = tmp_path_factory.mktemp("synth")
        generate(root, ids=8, seed=0, cameras=2)
    else:
        root = shared_data_dir() / "cuhk01"
        if not root.is_dir():
            pytest.skip(f"no CUHK01 at {root}")
    return list_images(root / "query")[:8], list_images(root / "bounding_box_test")[:30]


def _model(backbone: str, neck: str):
    try:
        model, _ = build_model(backbone, 5, 0.5, "auto", neck=neck)
    except WeightsNotFound:  # no ImageNet weights offline: random ones test the graph just as well
        model, _ = build_model(backbone, 5, 0.5, "none", neck=neck)
    if neck == "bnneck":  # running statistics far from the identity, so a graph without the neck cannot pass
        g = torch.Generator().manual_seed(0)
        model.neck.running_mean.copy_(torch.randn(model.feat_dim, generator=g) * 0.1)
        model.neck.running_var.copy_(torch.rand(model.feat_dim, generator=g) + 0.5)
        model.neck.weight.data.copy_(torch.rand(model.feat_dim, generator=g) + 0.5)
    return model.eval()


def _write_model(model, flip: bool, folder: Path) -> None:
    export_model(model, H, W, flip, folder / "model.onnx")
    meta = {"model": "model.onnx", "input": "images", "input_size": [H, W], "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "feature_dim": model.feat_dim}
    (folder / "model.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("backbone,neck,flip", [("resnet18", "bnneck", True), ("efficientnet_lite0", "none", False),
                                                ("efficientnet_lite0", "bnneck", True)])
def test_onnx_features_and_ranking_equal_pytorch(image_sets, tmp_path, backbone, neck, flip):
    query, gallery = image_sets
    model = _model(backbone, neck)
    _write_model(model, flip, tmp_path)
    graph = onnx.load(str(tmp_path / "model.onnx"))
    onnx.checker.check_model(graph)
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch axis

    def torch_features(paths):
        return extract(model, load_images(paths, H, W), torch.device("cpu"), flip=flip, retrieval=True)[0].numpy()

    tq, tg = torch_features(query), torch_features(gallery)
    oq, og = embed_paths(tmp_path, query, batch=3), embed_paths(tmp_path, gallery, batch=64)
    assert oq.shape == tq.shape == (len(query), model.feat_dim)
    assert np.abs(oq - tq).max() < TOL and np.abs(og - tg).max() < TOL
    assert_same_ranking(1.0 - oq @ og.T, 1.0 - tq @ tg.T)


def assert_same_ranking(ours: np.ndarray, ref: np.ndarray, tie: float = 1e-5) -> None:
    """Each row of ``ours`` ranks the gallery as ``ref`` does; gallery images whose ``ref`` distances differ by less
    than ``tie`` count as tied (a randomly initialised trunk maps many images to nearly the same feature, and
    float rounding may order those either way)."""
    order, want = np.argsort(ours, axis=1, kind="stable"), np.argsort(ref, axis=1, kind="stable")
    ref_sorted = np.take_along_axis(ref, want, axis=1)
    np.testing.assert_allclose(np.take_along_axis(ref, order, axis=1), ref_sorted, rtol=0, atol=tie)
    separated = _separated(ref_sorted, tie)
    assert separated.mean() > 0.5  # most of the ranking is checked exactly
    np.testing.assert_array_equal(order[separated], want[separated])


def _separated(sorted_dist: np.ndarray, tie: float) -> np.ndarray:
    """[Q, K] bool: the positions of ascending rows ``sorted_dist`` at least ``tie`` from both neighbours."""
    clear = np.diff(sorted_dist, axis=1) >= tie
    return np.concatenate([clear[:, :1], clear[:, 1:] & clear[:, :-1], clear[:, -1:]], axis=1)


def _cpl(runs_root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cpl", "--runs-root", str(runs_root), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _embedded(out: Path) -> pd.DataFrame:
    table = pd.read_csv(out.with_suffix(".csv"))
    return pd.DataFrame({"path": table.path, "row": range(len(table))}).set_index("path")


def test_export_and_embed_round_trip_a_finished_run(app_run, tmp_path):
    proc = _cpl(app_run.runs_root, "export", str(app_run.path), "--format", "onnx", "--out", str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["input_size"] == [128, 64] and meta["feature_dim"] == 1280 and meta["mean"] == list(IMAGENET_MEAN)
    ret = np.load(app_run.retrieval)
    feats = {}
    for split in ("query", "gallery"):
        table = pd.read_csv(app_run.features / f"{split}.csv")
        folder = Path(table.path[0]).parent
        out = tmp_path / split
        proc = _cpl(app_run.runs_root, "embed", str(tmp_path / "m"), str(folder), "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        rows = _embedded(out).loc[table.path, "row"].to_numpy()  # the run's row order
        feats[split] = np.load(out.with_suffix(".npy"))[rows]
        stored = np.load(app_run.features / f"{split}.npy").astype(np.float32)  # float16 on disk
        assert np.abs(feats[split] - stored).max() < 2e-3
    dist = 1.0 - feats["query"] @ feats["gallery"].T
    index = np.argsort(dist, axis=1, kind="stable")[:, :10]
    np.testing.assert_allclose(np.take_along_axis(dist, index, axis=1), ret["dist"][:, :10], rtol=0, atol=1e-5)
    separated = _separated(ret["dist"][:, :11], 1e-5)[:, :10]  # the run's top 10, ties closer than 1e-5 aside
    assert separated.mean() > 0.9
    np.testing.assert_array_equal(index[separated], ret["index"][:, :10][separated])


def test_embed_refuses_a_folder_without_a_model(tmp_path):
    proc = _cpl(tmp_path, "embed", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "no images" in proc.stderr
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (16, 32)).save(tmp_path / "imgs" / "a.png")
    proc = _cpl(tmp_path, "embed", str(tmp_path / "nomodel"), str(tmp_path / "imgs"), "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "model.json" in proc.stderr
