"""A sweep's results: one row per finished cell (``results.csv``), mean ± std over seeds, and the paper's
Table 1 layout (``results.md``). Torch-free: the app reads them."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import yaml

from cpl.config import CONTROLS
from cpl.data.unlabeled_sources import hides_labeled
from cpl.methods import BASELINE, has_own_zero_row, needs_unlabeled
from cpl.remedy_table import PLAIN, variant_from_dict, variant_label
from cpl.runs.atomic import write_text
from cpl.runs.diagnostics import SWEEP_COLUMNS, read_epoch_stats, sweep_columns
from cpl.runs.rundir import RunDir
from cpl.runs.state import State
from cpl.runs.status import read_status
from cpl.sweep.grid import plan_cells


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def collect(folder: Path, runs_root: Path) -> list[dict]:
    """One row per cell with its finished results (or its state)."""
    spec = yaml.safe_load((folder / "sweep.json").read_text())
    rows = []
    for c in spec["cells"]:
        run = RunDir(runs_root / c["run_id"])
        res = run.read_json("results.json") or {}
        status = read_status(run) if run.run_json.is_file() else {"state": State.PENDING}
        st = status.get("state")
        weights = (run.read_json("run.json") or {}).get("weights") or {}
        variant = c.get("variant", PLAIN)
        row = {"method": c["method"], "variant": variant, "label": variant_label(c["method"], variant),
               "gan_images": c["gan_images"], "seed": c["seed"], "run_id": c["run_id"], "state": st,
               "weights": weights.get("source", ""), **where_ran(run, status)}
        if "rank1" in res and st == State.FINISHED:
            row.update(rank1=res["rank1"], mAP=res["mAP"])
            if res.get("rerank"):
                row.update(rr_rank1=res["rerank"]["rank1"], rr_mAP=res["rerank"]["mAP"])
            epochs = _epoch_records(run)
            last = epochs[-1] if epochs else {}
            if "pl_acc" in last:
                row.update(pl_acc=100 * last["pl_acc"], pl_true_mass=100 * last.get("pl_true_mass", math.nan),
                           pl_acc_epochs=[100 * r["pl_acc"] if "pl_acc" in r else math.nan for r in epochs],
                           num_classes=res.get("num_classes"))
        row.update(sweep_columns(read_epoch_stats(run.pseudo_stats) or []))
        rows.append(row)
    return rows


def where_ran(run: RunDir, status: dict) -> dict:
    """Where a cell ran: ``host`` (its status.json, written by the cell process on its machine) and ``attempts``
    (how many times a Ray task started it, from placement.json; None for the local executor)."""
    placement = run.read_json(run.placement.name)
    attempts = placement.get("attempts") if isinstance(placement, dict) else None
    return {"host": str(status.get("host") or ""), "attempts": len(attempts) if isinstance(attempts, list) and attempts
            else None}


def _epoch_records(run: RunDir) -> list[dict]:
    from cpl.runs.atomic import read_jsonl

    return [r for r in read_jsonl(run.metrics) if r.get("type") == "epoch"]


def pl_accuracy_by_epoch(rows: list[dict]) -> str:
    """Markdown: per (method, #unlabeled), the holdout pseudo-label accuracy of every epoch (mean ± std over
    seeds, percent; "–" for a warm-up epoch without pseudo-labels) next to chance, 1/K."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        if r.get("pl_acc_epochs"):
            groups.setdefault((r.get("label", r["method"]), r["gan_images"]), []).append(r)
    if not groups:
        return ""
    n_ep = max(len(r["pl_acc_epochs"]) for rs in groups.values() for r in rs)
    lines = ["| method | #unlabeled | chance (1/K) | " + " | ".join(f"epoch {e + 1}" for e in range(n_ep)) + " |",
             "|" + "---|" * (3 + n_ep)]
    for (method, g), rs in sorted(groups.items()):
        k = rs[0].get("num_classes") or 0
        cells = []
        for e in range(n_ep):
            vals = [r["pl_acc_epochs"][e] for r in rs if e < len(r["pl_acc_epochs"])]
            vals = [v for v in vals if not math.isnan(v)]
            mean, std = _mean_std(vals)
            cells.append("–" if not vals else f"{mean:.2f} ± {std:.2f}" if len(vals) > 1 else f"{mean:.2f}")
        chance = f"{100 / k:.2f}" if k else "?"
        lines.append(f"| {method} | {g} | {chance} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean ± std over seeds per (method column, gan_images); a remedy variant is a column of its own, its
    ``method`` the label ``cpl + sinkhorn`` (:func:`~cpl.remedy_table.variant_label`)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        if "rank1" in r:
            groups.setdefault((r.get("label", r["method"]), r["gan_images"]), []).append(r)
    out = []
    for (method, g), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        agg = {"method": method, "gan_images": g, "n": len(rs)}
        for key in ("rank1", "mAP", "rr_rank1", "rr_mAP", "pl_acc", "pl_true_mass"):
            vals = [r[key] for r in rs if key in r and not math.isnan(r[key])]
            if vals:
                agg[key], agg[key + "_std"] = _mean_std(vals)
        out.append(agg)
    return out


def _fmt(a: dict, key: str) -> str:
    if key not in a:
        return "–"
    return f"{a[key]:.2f} ± {a[key + '_std']:.2f}" if a["n"] > 1 else f"{a[key]:.2f}"


def table_methods(spec: dict) -> list[str]:
    """A sweep.json's method columns in grid order, each method once per remedy variant that acts on it
    (``cpl``, ``cpl + sinkhorn``, ..., then ``lsro``, which none acts on)."""
    methods = [str(m) for m in spec.get("methods") or []] if isinstance(spec.get("methods"), list) else []
    stored = spec.get("variants") if isinstance(spec.get("variants"), list) else []
    variants = [variant_from_dict(v) for v in stored if isinstance(v, dict) and "name" in v]  # a damaged entry: none
    cells = plan_cells(methods, [1], [0], False, variants)
    return list(dict.fromkeys([m for m in methods if not needs_unlabeled(m)]
                              + [c.label for c in cells if needs_unlabeled(c.method)]))


def sweep_source(spec: dict) -> str:
    """The unlabeled source of a sweep.json's base config ("" when the record is damaged)."""
    cfg = spec.get("config") if isinstance(spec, dict) else None
    unlabeled = cfg.get("unlabeled") if isinstance(cfg, dict) else None
    return str(unlabeled.get("source", "")) if isinstance(unlabeled, dict) else ""


def zero_row_label(source: str) -> str:
    """The label of a table's 0-unlabeled-images row: the baseline, or, when the sweep's unlabeled source is
    ``holdout`` (a source that hides labeled rows), the labeled-only control (the baseline trained on the labeled rows
    the holdout runs keep)."""
    return f"0 ({CONTROLS['labeled-only']})" if hides_labeled(source) else "0 (baseline)"


def table_columns(agg: list[dict], methods: list[str]) -> list[tuple[str, str]]:
    """The table's method columns as (method, heading): a labeled-only method with results at counts > 0 (the
    step-matched cells) is headed ``baseline (step-matched)``; the baseline gets a column only then (otherwise it
    is the 0 row)."""
    matched = {a["method"] for a in agg if a["gan_images"] > 0 and not needs_unlabeled(a["method"])}
    cols = ([BASELINE] if BASELINE in matched else []) + [m for m in methods if m != BASELINE]
    cols = cols or [BASELINE]
    return [(m, cell_label(m, 1) if m in matched else m) for m in cols]


def cell_label(method: str, gan_images: int) -> str:
    """A cell's method as the tables name it: ``baseline (step-matched)`` for a labeled-only method at a count > 0."""
    return f"{method} ({CONTROLS['step-matched']})" if gan_images > 0 and not needs_unlabeled(method) else method


def _over_step_matched(by: dict, m: str, key: str) -> str:
    """Method ``m`` at its best count minus the step-matched baseline at that count ("" without one)."""
    cand = [(a[key], by[(BASELINE, g)][key]) for (mm, g), a in by.items()
            if mm == m and g > 0 and key in a and key in by.get((BASELINE, g), {})]
    if not cand or not needs_unlabeled(m):
        return ""
    best, matched = max(cand)
    return f"{best - matched:+.2f}"


def markdown_table(agg: list[dict], methods: list[str], rerank: bool = False, zero_label: str = "0 (baseline)") -> str:
    """Table 1 layout: rows = GAN-image counts (0 = baseline, labeled ``zero_label``), columns = methods
    (rank-1 | mAP); with step-matched cells, a ``baseline (step-matched)`` column and a row of each method's
    best count minus the step-matched baseline at that count."""
    r1, mp = ("rr_rank1", "rr_mAP") if rerank else ("rank1", "mAP")
    cols = table_columns(agg, methods)
    by = {(a["method"], a["gan_images"]): a for a in agg}
    counts = sorted({a["gan_images"] for a in agg})
    head = "| #unlabeled | " + " | ".join(f"{h} rank-1 | {h} mAP" for _, h in cols) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(cols))]
    base = by.get((BASELINE, 0))
    for g in counts:
        cells = []
        for m, _ in cols:
            a = by.get((m, g)) or (base if g == 0 and not has_own_zero_row(m) else None)
            cells += [_fmt(a, r1), _fmt(a, mp)] if a else ["", ""]
        label = zero_label if g == 0 else str(g)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if base and r1 in base:
        imp = []
        for m, _ in cols:
            cand = [a for (mm, g), a in by.items() if mm == m and (g > 0 or has_own_zero_row(m)) and r1 in a]
            if cand:
                best1 = max(a[r1] for a in cand)
                bestm = max(a[mp] for a in cand)
                imp += [f"{best1 - base[r1]:+.2f}", f"{bestm - base[mp]:+.2f}"]
            else:
                imp += ["", ""]
        lines.append("| improvement | " + " | ".join(imp) + " |")
    if any(m == BASELINE for m, _ in cols) and len(cols) > 1:
        cells = [_over_step_matched(by, m, key) for m, _ in cols for key in (r1, mp)]
        lines.append(f"| over the {CONTROLS['step-matched']} baseline | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(folder: Path, runs_root: Path) -> list[dict]:
    """Write the sweep's ``results.csv`` (aggregated), ``runs.csv`` (one row per cell) and ``results.md`` from the
    cells' results as they are now. Returns the aggregated rows (:func:`aggregate`; rank-1 and mAP in percent)."""
    spec = yaml.safe_load((folder / "sweep.json").read_text())
    rows = collect(folder, runs_root)
    agg = aggregate(rows)
    keys = ["method", "gan_images", "n", "rank1", "rank1_std", "mAP", "mAP_std", "rr_rank1", "rr_rank1_std",
            "rr_mAP", "rr_mAP_std", "pl_acc", "pl_acc_std", "pl_true_mass", "pl_true_mass_std"]
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    wr.writeheader()
    for a in agg:
        wr.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in a.items()})
    write_text(folder / "results.csv", buf.getvalue())
    runs_buf = io.StringIO()
    wr = csv.DictWriter(runs_buf, fieldnames=["run_id", "method", "variant", "gan_images", "seed", "state", "weights",
                                              "host", "attempts", "rank1", "mAP", "rr_rank1", "rr_mAP", "pl_acc",
                                              "pl_true_mass", *SWEEP_COLUMNS],
                        extrasaction="ignore")
    wr.writeheader()
    wr.writerows(rows)
    write_text(folder / "runs.csv", runs_buf.getvalue())
    done = sum("rank1" in r for r in rows)
    zero = zero_row_label(sweep_source(spec))
    md = [f"# Sweep {spec['id']}\n\n", f"{done}/{len(rows)} cells finished; mean ± std over seeds "
          f"{','.join(map(str, spec['seeds']))}; rank-1 and mAP in percent.\n\n",
          "## Without re-ranking\n\n", markdown_table(agg, table_methods(spec), zero_label=zero)]
    if any("rr_rank1" in a for a in agg):
        md += ["\n## With k-reciprocal re-ranking\n\n",
               markdown_table(agg, table_methods(spec), rerank=True, zero_label=zero)]
    if any("pl_acc" in a for a in agg):
        md.append("\n## Pseudo-label accuracy on held-out labeled images (last epoch)\n\n")
        md.append("| method | #unlabeled | accuracy | mass on true class |\n|---|---|---|---|\n")
        for a in agg:
            if "pl_acc" in a:
                md.append(f"| {a['method']} | {a['gan_images']} | {_fmt(a, 'pl_acc')} | {_fmt(a, 'pl_true_mass')} |\n")
    by_epoch = pl_accuracy_by_epoch(rows)
    if by_epoch:
        md += ["\n## Pseudo-label accuracy per epoch (held-out labeled images, percent)\n\n", by_epoch]
    md.append("\n## Cells\n\n| run | method | #unlabeled | seed | state | weights | host | rank-1 | mAP |\n"
              "|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        md.append(f"| {r['run_id']} | {cell_label(r['label'], r['gan_images'])} | {r['gan_images']} | {r['seed']} | "
                  f"{r['state']} | "
                  f"{r['weights'] or '?'} | {r['host'] or '–'} | {r.get('rank1', float('nan')):.2f} | "
                  f"{r.get('mAP', float('nan')):.2f} |\n")
    write_text(folder / "results.md", "".join(md))
    return agg
