"""``cpl export RUN --format onnx``: the run's retrieval feature extractor as an ONNX model plus ``model.json``.

The graph is exactly the feature the run's evaluation ranks with: the trunk, global pooling, the BNNeck's output
where the run has one (pool5 otherwise), the average with the mirrored image when ``eval.flip`` is on, and L2
normalisation, so the cosine distance is ``1 - a · b``. Input ``images [N, 3, H, W] float32``: RGB in [0, 1]
minus the ImageNet mean, divided by its std (what ``model.json`` records), at the run's input size; the batch axis
``N`` is dynamic. Output ``features [N, D] float32``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from cpl.backbones import IMAGENET_MEAN, IMAGENET_STD
from cpl.runs.atomic import write_bytes, write_text
from cpl.runs.rundir import RunDir

OPSET = 17
INPUT, OUTPUT = "images", "features"
MODEL_FILE, META_FILE = "model.onnx", "model.json"


class RetrievalExtractor(nn.Module):
    """A :class:`cpl.models.reid.ReIDNet` cut down to retrieval: normalised images [N, 3, H, W] → L2-normalised
    retrieval features [N, D] float32 (flip-averaged when ``flip``), as :func:`cpl.engine.features.extract`
    computes them with ``retrieval=True``."""

    def __init__(self, model: nn.Module, flip: bool):
        super().__init__()
        self.model = model
        self.flip = flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3, H, W] float32, ImageNet-normalised → [N, D] float32, unit L2 norm."""
        f, _ = self.model(x)
        if self.flip:
            f = (f + self.model(x.flip(3))[0]) / 2
        return nn.functional.normalize(self.model.retrieval_features(f), dim=1)


def export_model(model: nn.Module, height: int, width: int, flip: bool, path: Path) -> None:
    """Write ``model``'s retrieval extractor to ``path`` (ONNX, opset :data:`OPSET`, dynamic batch axis)."""
    import io

    extractor = RetrievalExtractor(model, flip).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript exporter: the dynamo one needs onnxscript, a dependency this export does not need
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(extractor, (torch.zeros(2, 3, height, width),), buf, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    write_bytes(path, buf.getvalue())


def metadata(cfg, feat_dim: int, run: RunDir, checkpoint: str) -> dict:
    """``model.json``: what a user of the ONNX file needs to feed it and read its output."""
    return {
        "format": "onnx", "model": MODEL_FILE, "opset": OPSET, "input": INPUT, "output": OUTPUT,
        "input_size": [cfg.data.height, cfg.data.width], "layout": "NCHW, RGB",
        "preprocess": "decode to RGB, resize to input_size (bilinear), divide by 255, subtract mean, divide by std",
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "feature_dim": feat_dim,
        "feature": "bnneck" if cfg.model.neck == "bnneck" else "pool5", "flip_averaged": bool(cfg.eval.flip),
        "l2_normalized": True, "distance": "cosine: 1 - a.b", "backbone": cfg.model.backbone, "run": run.id,
        "checkpoint": checkpoint,
    }


def export_run(run: RunDir, out_dir: Path | None = None) -> Path:
    """Export ``run``'s newest checkpoint into ``out_dir`` (default ``RUN/onnx/``): ``model.onnx`` and
    ``model.json``. Returns the folder; raises :class:`cpl.evaluation.query.QueryError`."""
    from cpl.evaluation.query import run_config, run_model

    cfg = run_config(run)
    model, checkpoint = run_model(run, cfg)
    out = out_dir or run.onnx
    export_model(model, cfg.data.height, cfg.data.width, cfg.eval.flip, out / MODEL_FILE)
    meta = metadata(cfg, model.feat_dim, run, checkpoint.name)
    write_text(out / META_FILE, json.dumps(meta, indent=1) + "\n")
    return out


def export_main(args: argparse.Namespace) -> int:
    """The ``cpl export`` command: print the folder written; errors exit 2."""
    from cpl.evaluation.query import QueryError

    try:
        out = export_run(RunDir(Path(args.run_dir)), Path(args.out) if args.out else None)
    except QueryError as exc:
        print(f"cpl: error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
