"""What the pseudo-labels of a sweep looked like: per method and unlabeled-image count, the mean over seeds of
the last epoch's score behind the label, margin to the runner-up, identities used, labels changed since the
previous epoch, labeled training accuracy, and (holdout) pseudo-label accuracy; plus, for the first and last
epoch, the share of unlabeled images that went to the 10 % most chosen identities ("hubs").

    python tools/pseudo_label_stats.py RUNS_ROOT/sweeps/SWEEP_ID [--runs-root RUNS_ROOT]

Reads the run directories only (metrics.jsonl, pseudo_history.npz, results.json); prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from cpl.remedy_table import PLAIN, variant_label

KEYS = [("pl_mean_conf", "score behind the label", "{:.3f}"), ("pl_mean_margin", "margin to runner-up", "{:.3f}"),
        ("pl_classes_used", "identities used", "{:.0f}"), ("pl_changed_frac", "labels changed vs previous epoch",
                                                             "{:.0%}"),
        ("acc", "train acc (labeled)", "{:.1%}"), ("pl_acc", "pseudo-label accuracy", "{:.1%}")]


def _epochs(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("type") == "epoch":
            out.append(rec)
    return out


def _hub_share(labels: np.ndarray, k: int) -> float:
    """Share of the labeled images of one epoch that went to the top 10 % identities by count."""
    seen = labels[labels >= 0]
    if not len(seen):
        return math.nan
    counts = np.sort(np.bincount(seen, minlength=k))[::-1]
    return float(counts[: max(1, k // 10)].sum() / len(seen))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep")
    ap.add_argument("--runs-root", help="default: two folders above the sweep folder")
    args = ap.parse_args()
    sweep = Path(args.sweep)
    root = Path(args.runs_root) if args.runs_root else sweep.parent.parent
    spec = json.loads((sweep / "sweep.json").read_text())
    groups: dict[tuple[str, int], list[dict]] = {}
    for cell in spec["cells"]:
        run = root / cell["run_id"]
        if not (run / "results.json").is_file():
            continue
        epochs = _epochs(run)
        last = dict(epochs[-1]) if epochs else {}
        k = json.loads((run / "results.json").read_text()).get("num_classes", 0)
        hist = run / "pseudo_history.npz"
        if hist.is_file() and k:
            labels = np.load(hist)["labels"]
            active = [e for e in range(len(labels)) if (labels[e] >= 0).any()]
            if active:
                last["hub_first"] = _hub_share(labels[active[0]], k)
                last["hub_last"] = _hub_share(labels[active[-1]], k)
        # a remedy variant is a row of its own ("cpl + sinkhorn"), never mixed into the published method's
        groups.setdefault((variant_label(cell["method"], cell.get("variant", PLAIN)), cell["gan_images"]),
                          []).append(last)
    keys = KEYS + [("hub_first", "to the top 10 % ids, first epoch", "{:.0%}"),
                   ("hub_last", "to the top 10 % ids, last epoch", "{:.0%}")]
    print("| method | #unlabeled | " + " | ".join(title for _, title, _ in keys) + " |")
    print("|" + "---|" * (2 + len(keys)))
    for (method, g), recs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cells = []
        for key, _, fmt in keys:
            vals = [r[key] for r in recs if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
            cells.append(fmt.format(sum(vals) / len(vals)) if vals else "–")
        print(f"| {method} | {g} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
