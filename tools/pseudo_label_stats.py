"""What the pseudo-labels of a sweep looked like: per method and unlabeled-image count, the mean over seeds of
the last epoch's score behind the label, margin to the runner-up, identities used, labels changed since the
previous epoch, the share trained on under a confidence threshold (utilisation), labeled training accuracy, and
(holdout) pseudo-label accuracy, also among the images trained on; plus, for the first and last
epoch that drew unlabeled images, the share of them on the 10 % most chosen identities ("hubs").

    python tools/pseudo_label_stats.py RUNS_ROOT/sweeps/SWEEP_ID [--runs-root RUNS_ROOT]

A reader of what the runs wrote (docs/run-directory.md): each cell's ``pseudo_stats.csv`` and its epoch records;
for a run made before that file existed, the same statistics computed from its ``pseudo_history.npz`` by
:mod:`cpl.pseudo.diagnostics`. Prints Markdown.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

from cpl.remedy_table import PLAIN, variant_label
from cpl.runs.atomic import read_jsonl
from cpl.runs.diagnostics import EpochStats, read_epoch_stats
from cpl.runs.rundir import RunDir

KEYS = [("mean_conf", "score behind the label", "{:.3f}"), ("mean_margin", "margin to runner-up", "{:.3f}"),
        ("used", "identities used", "{:.0f}"), ("changed_frac", "labels changed vs previous epoch", "{:.0%}"),
        ("selected_frac", "utilisation (share trained on)", "{:.0%}"),
        ("train_acc", "train acc (labeled)", "{:.1%}"), ("acc", "pseudo-label accuracy", "{:.1%}"),
        ("acc_selected", "accuracy of the images trained on", "{:.1%}"),
        ("hub_first", "to the top 10 % ids, first epoch", "{:.0%}"),
        ("hub_last", "to the top 10 % ids, last epoch", "{:.0%}")]


def _truth(run: RunDir) -> np.ndarray | None:
    """unlabeled.csv's ``true_label`` column when the run knows it (holdout), else None."""
    try:
        with open(run.unlabeled, newline="") as fh:
            truth = np.array([int(r["true_label"]) for r in csv.DictReader(fh)])
    except (OSError, KeyError, ValueError):
        return None
    return truth if len(truth) and (truth >= 0).all() else None


def stats_of(run: RunDir, k: int) -> list[EpochStats]:
    """The run's per-epoch statistics: its ``pseudo_stats.csv``, or computed from ``pseudo_history.npz``."""
    rows = read_epoch_stats(run.pseudo_stats)
    if rows is not None or not run.pseudo_history.is_file():
        return rows or []
    from cpl.pseudo.diagnostics import History, all_epoch_stats

    with np.load(run.pseudo_history) as z:
        labels, conf = z["labels"], z["confidence"]
        margin = z["margin"] if "margin" in z.files else np.full(conf.shape, np.nan)
    return all_epoch_stats(History(labels=labels, conf=conf, margin=margin, truth=_truth(run)), k)


def summary(run: RunDir) -> dict:
    """The last drawing epoch's statistics by :data:`KEYS` (NaN where unknown)."""
    k = (run.read_json("results.json") or {}).get("num_classes", 0)
    active = [s for s in stats_of(run, k) if s.seen > 0] if k else []
    epochs = [r for r in read_jsonl(run.metrics) if r.get("type") == "epoch"]
    out = {"train_acc": epochs[-1].get("acc", math.nan) if epochs else math.nan}
    if active:
        last = active[-1]
        out.update({key: getattr(last, key) for key, _, _ in KEYS if hasattr(last, key)},
                   hub_first=active[0].top_share, hub_last=last.top_share)
    return out


def main() -> int:
    """Print the table of the sweep named on the command line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep")
    ap.add_argument("--runs-root", help="default: two folders above the sweep folder")
    args = ap.parse_args()
    sweep = Path(args.sweep)
    root = Path(args.runs_root) if args.runs_root else sweep.parent.parent
    spec = json.loads((sweep / "sweep.json").read_text())
    groups: dict[tuple[str, int], list[dict]] = {}
    for cell in spec["cells"]:
        run = RunDir(root / cell["run_id"])
        if run.results.is_file():
            # a remedy variant is a row of its own ("cpl + sinkhorn"), never mixed into the published method's
            groups.setdefault((variant_label(cell["method"], cell.get("variant", PLAIN)), cell["gan_images"]),
                              []).append(summary(run))
    print("| method | #unlabeled | " + " | ".join(title for _, title, _ in KEYS) + " |")
    print("|" + "---|" * (2 + len(KEYS)))
    for (method, g), recs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cells = []
        for key, _, fmt in KEYS:
            vals = [r[key] for r in recs if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
            cells.append(fmt.format(sum(vals) / len(vals)) if vals else "–")
        print(f"| {method} | {g} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
