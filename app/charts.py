"""Plotly figures of a run's metrics (metrics.jsonl records, see docs/run-directory.md) and sweep tables.

Pure functions from data frames to figures: no Streamlit, no file reading, so pages stay thin and the
figures are testable. Epochs are 0-based in the files and shown 1-based. Metrics stored as fractions
(accuracy, pseudo-label accuracy) are shown in percent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cpl.methods import BASELINE, METHODS, has_own_zero_row
from cpl.runs.state import QueueReason, State, parse
from cpl.sweep.tables import table_columns, zero_row_label

HEIGHT = 360
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]  # one colour per run in overlays


def method_color(method: str | None) -> str | None:
    """The fixed colour of ``method`` across every chart (the method table's); None (Plotly picks) for a name
    the table does not hold."""
    entry = METHODS.get(method)  # type: ignore[arg-type]
    return entry.color if entry is not None else None


def _layout(fig: go.Figure, title: str, height: int = HEIGHT) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 14}}, height=height,
                      margin={"l": 10, "r": 10, "t": 36, "b": 10}, hovermode="x unified",
                      legend={"orientation": "h", "yanchor": "top", "y": -0.3, "xanchor": "left", "x": 0})
    return fig


def _has(df: pd.DataFrame, col: str) -> bool:
    return col in df.columns and df[col].notna().any()


def _epoch_x(df: pd.DataFrame) -> pd.Series:
    return df["epoch"].astype(int) + 1


def _epoch_ticks(frames) -> dict:
    """Whole-epoch ticks when there are few epochs (no "epoch 1.5" on a 2-epoch run)."""
    last = max((int(df["epoch"].max()) + 1 for df in frames if not df.empty and "epoch" in df), default=0)
    return {"dtick": 1} if 0 < last <= 20 else {}


def _lines(n: int) -> str:
    """Plotly mode of a line trace of ``n`` points: with markers while it has one point (a line through a single
    point draws nothing, and the first logged iteration of a run would show as empty axes)."""
    return "lines" if n > 1 else "lines+markers"


def iteration_x(iters: pd.DataFrame) -> pd.Series:
    """Fractional epoch (1-based) of each iteration record, e.g. 2.5 = halfway through epoch 2."""
    per_epoch = iters.groupby("epoch")["iter"].transform("max") + 1
    return iters["epoch"].astype(int) + (iters["iter"] + 1) / per_epoch


def loss_figure(iters: pd.DataFrame, epochs: pd.DataFrame) -> go.Figure:
    """Training loss per logged iteration (thin) and per epoch (markers): total, softmax CE, unlabeled term,
    and the raw center-loss term ½Σ‖x−c‖² on the right axis (it enters the total multiplied by λ)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    series = [("loss", "total", "#1f77b4"), ("loss_ce", "cross-entropy", "#2ca02c"),
              ("loss_unlabeled", "unlabeled term", "#ff7f0e")]
    if not iters.empty and "iter" in iters:
        x = iteration_x(iters)
        for col, name, color in series:
            if _has(iters, col):
                fig.add_trace(go.Scatter(x=x, y=iters[col], name=name, mode=_lines(len(x)),
                                         line={"color": color, "width": 1}, legendgroup=col), secondary_y=False)
        if _has(iters, "loss_center"):
            fig.add_trace(go.Scatter(x=x, y=iters["loss_center"], name="center ½Σ‖x−c‖² (right)", mode=_lines(len(x)),
                                     line={"color": "#9467bd", "width": 1, "dash": "dot"}), secondary_y=True)
    if not epochs.empty:
        for col, name, color in series:
            if _has(epochs, col):
                fig.add_trace(go.Scatter(x=_epoch_x(epochs), y=epochs[col], name=f"{name}, epoch mean", mode="markers",
                                         marker={"color": color, "size": 8}, legendgroup=col, showlegend=False),
                              secondary_y=False)
    fig.update_xaxes(title_text="epoch", **_epoch_ticks([epochs]))
    fig.update_yaxes(title_text="loss", secondary_y=False)
    fig.update_yaxes(title_text="center term", secondary_y=True, showgrid=False)
    return _layout(fig, "Training loss")


def accuracy_figure(iters: pd.DataFrame, epochs: pd.DataFrame) -> go.Figure:
    """Training accuracy on the labeled images of each batch (%), and the backbone learning rate."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if not iters.empty and _has(iters, "acc"):
        fig.add_trace(go.Scatter(x=iteration_x(iters), y=100 * iters["acc"], name="batch accuracy",
                                 mode=_lines(len(iters)), line={"color": "#2ca02c", "width": 1}))
    if not epochs.empty and _has(epochs, "acc"):
        fig.add_trace(go.Scatter(x=_epoch_x(epochs), y=100 * epochs["acc"], name="epoch accuracy",
                                 mode="lines+markers", line={"color": "#006d2c", "width": 2}))
    if not epochs.empty and _has(epochs, "lr"):
        fig.add_trace(go.Scatter(x=_epoch_x(epochs), y=epochs["lr"], name="learning rate (right)",
                                 mode=_lines(len(epochs)), line={"color": "#7f7f7f", "shape": "hv", "dash": "dot"}),
                      secondary_y=True)
    fig.update_xaxes(title_text="epoch", **_epoch_ticks([epochs]))
    fig.update_yaxes(title_text="accuracy (%)", secondary_y=False)
    fig.update_yaxes(title_text="lr", type="log", dtick=1, tickformat=".0e", secondary_y=True, showgrid=False)
    return _layout(fig, "Training accuracy (labeled images)")


def pseudo_label_figure(epochs: pd.DataFrame) -> go.Figure:
    """Per epoch: unlabeled images whose label changed (bars, left), mean confidence and margin to the
    runner-up (lines, right), and for the holdout source the pseudo-label accuracy and true-class mass."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    x = _epoch_x(epochs) if not epochs.empty else []
    if _has(epochs, "pl_changed"):
        fig.add_trace(go.Bar(x=x, y=epochs["pl_changed"], name="labels changed", marker_color="#c7c7c7",
                             opacity=0.8, hovertemplate="%{y:,} labels changed<extra></extra>"))
    lines = [("pl_mean_conf", "mean confidence", "#d62728", None), ("pl_mean_margin", "mean margin", "#ff7f0e", None),
             ("pl_acc", "pseudo-label accuracy", "#2ca02c", "dash"),
             ("pl_true_mass", "mass on true class", "#17becf", "dot")]
    for col, name, color, dash in lines:
        if _has(epochs, col):
            fig.add_trace(go.Scatter(x=x, y=epochs[col], name=name, mode="lines+markers",
                                     line={"color": color, "dash": dash}), secondary_y=True)
    fig.update_xaxes(title_text="epoch", **_epoch_ticks([epochs]))
    fig.update_yaxes(title_text="images", secondary_y=False, rangemode="tozero")
    # the right axis holds cosines (a target probability for methods without centers) and, for the holdout
    # source, shares of images: named by what they are, all in [0, 1]
    fig.update_yaxes(title_text="cosine / probability / share", secondary_y=True, range=[0, 1.02], showgrid=False,
                     tickmode="linear", tick0=0, dtick=0.25)
    return _layout(fig, "Pseudo-labels per epoch")


def gan_figure(gan: pd.DataFrame) -> go.Figure:
    """DCGAN training: discriminator and generator losses (left) and D's mean output on real and
    generated images (right), against the fractional GAN epoch."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("losses", "discriminator output"))
    if not gan.empty and "step" in gan:
        steps = gan["steps"] if "steps" in gan else gan.groupby("epoch")["step"].transform("max")
        x = gan["epoch"].astype(int) + gan["step"] / steps.clip(lower=1)
        for col, name, color, c in [("loss_d", "loss D", "#1f77b4", 1), ("loss_g", "loss G", "#d62728", 1),
                                    ("d_real", "D(real)", "#2ca02c", 2), ("d_fake", "D(G(z))", "#ff7f0e", 2)]:
            if _has(gan, col):
                fig.add_trace(go.Scatter(x=x, y=gan[col], name=name, mode=_lines(len(x)), line={"color": color}),
                              row=1, col=c)
    fig.update_xaxes(title_text="GAN epoch")
    fig.update_yaxes(range=[0, 1], row=1, col=2)
    return _layout(fig, "DCGAN training")


def overlay_figure(series: dict[str, pd.DataFrame], y: str, title: str, *, percent: bool = False,
                   x: str = "epoch") -> go.Figure:
    """One line per run: column ``y`` of each run's epoch records against the (1-based) epoch."""
    fig = go.Figure()
    for label, df in series.items():
        if df.empty or not _has(df, y):
            continue
        xs = _epoch_x(df) if x == "epoch" else df[x]
        fig.add_trace(go.Scatter(x=xs, y=df[y] * (100 if percent else 1), name=label, mode="lines+markers"))
    fig.update_xaxes(title_text="epoch" if x == "epoch" else x, **_epoch_ticks(series.values()))
    fig.update_yaxes(title_text=f"{title} (%)" if percent else title)
    return _layout(fig, title)


def table1_figure(agg: pd.DataFrame, metric: str, title: str) -> go.Figure:
    """A sweep's Table 1 as lines: ``metric`` (mean ± std over seeds) against the unlabeled-image count,
    one line per method; the baseline (0 images) as a dashed horizontal line."""
    fig = go.Figure()
    std = f"{metric}_std"
    if not agg.empty and metric in agg:
        base = agg[(agg["method"] == BASELINE) & agg[metric].notna()]
        for method, rows in agg[agg["method"] != BASELINE].groupby("method", sort=False):
            rows = rows.sort_values("gan_images")
            rows = rows[rows[metric].notna()]
            if rows.empty:
                continue
            if not base.empty and not has_own_zero_row(method) and 0 not in set(rows["gan_images"]):
                rows = pd.concat([base.iloc[:1], rows])  # each curve starts at the shared baseline (0 images)
            err = rows[std] if std in rows and bool((rows["n"] > 1).any()) else None
            fig.add_trace(go.Scatter(
                x=rows["gan_images"], y=rows[metric], name=method, mode="lines+markers",
                line={"color": method_color(method)},
                error_y={"type": "data", "array": err, "visible": err is not None}))
        if not base.empty:
            value = float(base[metric].iloc[0])
            fig.add_hline(y=value, line_dash="dash", line_color=method_color(BASELINE),
                          annotation_text=f"baseline {value:.2f}", annotation_position="bottom right")
    fig.update_xaxes(title_text="unlabeled images")
    fig.update_yaxes(title_text=f"{metric} (%)")
    return _layout(fig, title)


def mean_std(mean: float, std: float | None) -> str:
    """``"81.38 ± 0.42"`` (or just the mean when no spread is known); en dash for a missing value."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f}"


# ---------------------------------------------------------------------------------------------- text

# st.badge colour and Material icon of each run state.
STATE_BADGES = {
    State.RUNNING: ("blue", ":material/progress_activity:"), State.QUEUED: ("orange", ":material/schedule:"),
    State.FINISHED: ("green", ":material/check_circle:"), State.FAILED: ("red", ":material/error:"),
    State.CANCELLED: ("gray", ":material/stop_circle:"), State.PENDING: ("gray", ":material/more_horiz:"),
}


def state_label(status: dict) -> str:
    """``"running"``; a queued run says whether it waits for its device or is still starting (its
    ``queue_reason``)."""
    state = parse(State, status.get("state"))
    if state is None:
        return str(status.get("state") or State.UNKNOWN)
    if state == State.QUEUED:
        waiting = parse(QueueReason, status.get("queue_reason")) == QueueReason.DEVICE or status.get("waiting_for")
        return "queued (waiting for device)" if waiting else "starting"
    return state.value


def state_badge(status: dict) -> tuple[str, str, str]:
    """(label, colour, icon) for ``st.badge``."""
    color, icon = STATE_BADGES.get(str(status.get("state")), ("gray", ":material/help:"))
    return state_label(status), color, icon


def duration(seconds: float | None) -> str:
    """``"3 min 05 s"``, ``"1 h 12 min"``; en dash when unknown."""
    if seconds is None or (isinstance(seconds, float) and not math.isfinite(seconds)) or seconds < 0:
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


# ---------------------------------------------------------------------------------------------- tables


def table1_frame(agg: pd.DataFrame, methods: list[str], rerank: bool = False, source: str = "") -> pd.DataFrame:
    """A sweep's results.csv in the CPL paper's Table 1 layout: one row per unlabeled-image count (0 = the
    baseline row, repeated under every method as in the paper; the labeled-only control when the sweep's
    ``source`` is holdout), a rank-1 and an mAP column per method (mean ± std over seeds when there are several;
    ``baseline (step-matched)`` when the sweep ran that control), and an "improvement" row: best count minus
    baseline. Columns and labels are :mod:`cpl.sweep.tables`' (the sweep's results.md)."""
    r1, mp = ("rr_rank1", "rr_mAP") if rerank else ("rank1", "mAP")
    records = agg.to_dict("records") if not agg.empty else []
    for r in records:
        r["gan_images"] = int(r["gan_images"])
    by = {(r["method"], r["gan_images"]): r for r in records}
    headings = table_columns(records, methods)
    base = by.get((BASELINE, 0))

    def cell(rec: dict | None, key: str) -> str:
        if rec is None or rec.get(key) is None or pd.isna(rec.get(key)):
            return ""
        return mean_std(float(rec[key]), float(rec[f"{key}_std"]) if int(rec.get("n") or 1) > 1 else None)

    rows = []
    for g in sorted({k[1] for k in by}):
        row = {"unlabeled images": zero_row_label(source) if g == 0 else f"{g:,}"}
        for m, h in headings:
            rec = by.get((m, g)) or (base if g == 0 and not has_own_zero_row(m) else None)
            row[f"{h} rank-1"], row[f"{h} mAP"] = cell(rec, r1), cell(rec, mp)
        rows.append(row)
    if base is not None and pd.notna(base.get(r1)):
        row = {"unlabeled images": "improvement"}
        for m, h in headings:
            cand = [r for (mm, g), r in by.items()
                    if mm == m and (g > 0 or has_own_zero_row(m)) and pd.notna(r.get(r1))]
            row[f"{h} rank-1"] = f"{max(r[r1] for r in cand) - base[r1]:+.2f}" if cand else ""
            row[f"{h} mAP"] = f"{max(r[mp] for r in cand) - base[mp]:+.2f}" if cand else ""
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------- pseudo-label diagnostics


@dataclass(frozen=True)
class Panel:
    """One chart of the pseudo-label diagnostics (columns of pseudo_stats.csv, docs/run-directory.md)."""

    title: str
    unit: str  # the y axis title
    series: tuple[tuple[str, str], ...]  # (column, legend name)
    percent: bool  # the columns are shares in [0, 1], shown in percent


PANELS = (
    Panel("Identities used and hub share", "% of identities / of images",
          (("used_frac", "identities used / K"), ("top_share", "images on the top 10 % identities")), True),
    Panel("Balance of the label histogram", "index (0–1)",
          (("entropy", "normalised entropy (1 = uniform)"), ("gini", "Gini coefficient (0 = uniform)")), False),
    Panel("Most chosen identity", "images", (("max_count", "images on the most chosen identity"),), False),
    Panel("Labels changed vs previous epoch", "% of images drawn in both epochs", (("changed_frac", "changed"),), True),
    Panel("Confidence", "score / cosine margin",
          (("median_conf", "median score behind the label"), ("median_margin", "median margin to runner-up")), False),
    Panel("Selected by the confidence threshold", "% of images drawn", (("selected_frac", "selected"),), True),
    Panel("Accuracy against the hidden truth", "% of images drawn",
          (("acc", "accuracy"), ("acc_selected", "accuracy among the selected")), True),
    Panel("Agreement with the hidden truth", "index (1 = same partition)",
          (("nmi", "normalised mutual information"), ("ari", "adjusted Rand index")), False),
)
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def panels_with_data(frames) -> list[Panel]:
    """The :data:`PANELS` at least one of the frames (pseudo_stats.csv rows) has a value for."""
    return [p for p in PANELS if any(_has(df, c) for df in frames for c, _ in p.series)]


def diagnostics_figure(stats: pd.DataFrame, panel: Panel, method: str | None) -> go.Figure:
    """One run's ``panel`` against the (1-based) epoch: its statistics in the method's colour, one dash each."""
    fig = go.Figure()
    for (col, name), dash in zip(panel.series, DASHES):
        if _has(stats, col):
            fig.add_trace(go.Scatter(x=_epoch_x(stats), y=stats[col] * (100 if panel.percent else 1), name=name,
                                     mode="lines+markers", line={"color": method_color(method), "dash": dash}))
    fig.update_xaxes(title_text="epoch", **_epoch_ticks([stats]))
    fig.update_yaxes(title_text=panel.unit, rangemode="tozero")
    return _layout(fig, panel.title, height=300)


def diagnostics_overlay(series: dict[str, tuple[pd.DataFrame, str | None]], column: str, title: str, unit: str,
                        percent: bool) -> go.Figure:
    """``column`` of several runs' pseudo_stats.csv (label -> (frame, method)): one line per run in its method's
    colour; runs of the same method get different dashes."""
    fig = go.Figure()
    seen: dict[str | None, int] = {}
    for label, (df, method) in series.items():
        if df is None or not _has(df, column):
            continue
        dash = DASHES[seen.get(method, 0) % len(DASHES)]
        seen[method] = seen.get(method, 0) + 1
        fig.add_trace(go.Scatter(x=_epoch_x(df), y=df[column] * (100 if percent else 1), name=label,
                                 mode="lines+markers", line={"color": method_color(method), "dash": dash}))
    fig.update_xaxes(title_text="epoch", **_epoch_ticks([df for df, _ in series.values() if df is not None]))
    fig.update_yaxes(title_text=unit, rangemode="tozero")
    return _layout(fig, title, height=300)


def usage_figure(counts: pd.Series, correct: pd.Series | None, method: str | None) -> go.Figure:
    """Images per identity (``counts``: pid -> images, most chosen first, zeros included) as bars in the method's
    colour (each bar's ``customdata`` is its pid; clicking selects it), the correct ones (holdout) overlaid, and
    the Lorenz curve of the counts beside them (the diagonal = every identity the same number of images)."""
    fig = make_subplots(rows=1, cols=2, column_widths=[0.72, 0.28], horizontal_spacing=0.08,
                        subplot_titles=("images per identity, most chosen first", "Lorenz curve"))
    pids = [str(p) for p in counts.index]
    fig.add_trace(go.Bar(x=pids, y=counts.to_numpy(), name="assigned", marker_color=method_color(method) or "#7b8fa6",
                         customdata=list(counts.index), hovertemplate="pid %{x}: %{y} images<extra></extra>"),
                  row=1, col=1)
    if correct is not None:
        fig.add_trace(go.Bar(x=pids, y=correct.reindex(counts.index, fill_value=0).to_numpy(), name="of which correct",
                             marker_color="#2ca02c", customdata=list(counts.index),
                             hovertemplate="pid %{x}: %{y} correct<extra></extra>"), row=1, col=1)
    values = np.sort(counts.to_numpy())
    total = max(int(values.sum()), 1)
    x = np.arange(len(values) + 1) / max(len(values), 1) * 100
    y = np.concatenate([[0.0], np.cumsum(values) / total]) * 100
    fig.add_trace(go.Scatter(x=x, y=y, name="Lorenz curve", mode="lines", line={"color": method_color(method)},
                             hovertemplate="%{x:.0f}% of identities hold %{y:.0f}% of images<extra></extra>"),
                  row=1, col=2)
    fig.add_trace(go.Scatter(x=[0, 100], y=[0, 100], name="uniform", mode="lines",
                             line={"color": "#999999", "dash": "dot"}, hoverinfo="skip"), row=1, col=2)
    fig.update_layout(barmode="overlay", clickmode="event+select")
    fig.update_xaxes(title_text="identity (pid)", type="category", row=1, col=1)
    fig.update_yaxes(title_text="images", row=1, col=1)
    fig.update_xaxes(title_text="% of identities, fewest images first", range=[0, 100], row=1, col=2)
    fig.update_yaxes(title_text="% of images", range=[0, 100], row=1, col=2)
    fig = _layout(fig, "Identity usage: which identities the unlabeled images went to", height=360)
    fig.update_layout(hovermode="closest", margin={"t": 64})
    return fig


def data_map_figure(points: pd.DataFrame, by_correctness: bool) -> go.Figure:
    """Dataset Cartography of the unlabeled images (``points``: data_map.csv rows drawn at least once, with
    ``pid``): variability (x) against mean confidence (y), coloured by the share of epochs labeled right
    (``by_correctness``) or else by identity; each point's ``customdata`` is its image index. Box or lasso
    selection selects images."""
    if by_correctness:
        marker = {"color": points["correctness"] * 100, "colorscale": "RdYlGn", "cmin": 0, "cmax": 100,
                  "colorbar": {"title": {"text": "% of epochs<br>right"}}}
    else:
        marker = {"color": points["label"], "colorscale": "Turbo",
                  "colorbar": {"title": {"text": "identity<br>(class)"}}}
    fig = go.Figure(go.Scatter(
        x=points["variability"], y=points["confidence"], mode="markers", customdata=points["index"],
        text=[f"#{i} → pid {p}" for i, p in zip(points["index"], points["pid"])],
        marker={**marker, "size": 8, "line": {"width": 0.5, "color": "#333333"}},
        hovertemplate="%{text}<br>confidence %{y:.3f}<br>variability %{x:.3f}<extra></extra>", name="images"))
    fig.update_xaxes(title_text="variability: std of the score across epochs")
    fig.update_yaxes(title_text="confidence: mean score behind the label")
    fig = _layout(fig, "Data map: every unlabeled image drawn in training", height=420)
    fig.update_layout(hovermode="closest", dragmode="select")
    return fig


# ---------------------------------------------------------------------------------------------- distances


def _below(fig: go.Figure, title: str) -> go.Figure:
    """:func:`_layout` with room under the plot for the axis title and a legend of several runs."""
    fig = _layout(fig, title, height=HEIGHT + 60)
    fig.update_layout(margin={"l": 10, "r": 10, "t": 36, "b": 70}, legend={"y": -0.22}, hovermode="closest")
    return fig


def density(counts, edges, group: int = 1) -> tuple:
    """(bin centres, density) of a histogram ``counts`` [B] over ``edges`` [B + 1], merging ``group`` adjacent
    bins (B divisible by it); the density integrates to 1 over the edges (0 everywhere for an empty one)."""
    counts = counts.reshape(-1, group).sum(axis=1)
    edges = edges[::group].astype(float)
    widths = edges[1:] - edges[:-1]
    total = counts.sum()
    return (edges[1:] + edges[:-1]) / 2, counts / (total * widths) if total else counts * 0.0


def distance_figure(runs: dict[str, dict], group: int = 4) -> go.Figure:
    """Density of the cosine distance of matching (solid) and non-matching (dotted) query × gallery pairs, one
    colour per run (``runs``: label → distances.npz arrays); ``group`` stored bins drawn as one."""
    fig = go.Figure()
    for i, (label, d) in enumerate(runs.items()):
        colour = PALETTE[i % len(PALETTE)]
        for key, name, dash in (("match_hist", "matching", "solid"), ("nonmatch_hist", "non-matching", "dot")):
            x, y = density(d[key], d["edges"], group)
            fig.add_trace(go.Scatter(x=x, y=y, name=f"{label}: {name}", mode="lines", line_shape="hvh",
                                     line={"color": colour, "dash": dash}))
    fig.update_xaxes(title_text="cosine distance (1 − cos)")
    fig.update_yaxes(title_text="density")
    return _below(fig, "Distances of matching and non-matching pairs")


def roc_figure(runs: dict[str, dict]) -> go.Figure:
    """ROC of "distance ≤ t means the same person" over every threshold t, one line per run with its AUC."""
    fig = go.Figure()
    for i, (label, d) in enumerate(runs.items()):
        fig.add_trace(go.Scatter(x=d["fpr"], y=d["tpr"], mode="lines", line={"color": PALETTE[i % len(PALETTE)]},
                                 name=f"{label}: AUC {float(d['auc']):.3f}"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"color": "#bbb", "dash": "dot"}))
    fig.update_xaxes(title_text="false-positive rate (non-matching pairs accepted)", range=[0, 1])
    fig.update_yaxes(title_text="true-positive rate (matches accepted)", range=[0, 1])
    return _below(fig, "ROC curve")

