"""The pseudo-label diagnostics views the pages share: the collapse warning, the identity-usage chart that filters
the GAN page's grid, the data map, the per-epoch curves of Runs → Pseudo-labels and their overlays on Compare.

Everything is read from the files the run wrote (``pseudo_stats.csv``, ``data_map.csv``, ``pseudo_labels.csv``;
docs/run-directory.md). A missing or damaged file is said in a line, never raised.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import streamlit as st

from app import charts, readers
from app.gallery import GREEN, NEUTRAL, RED, Card, grid
from cpl.runs.diagnostics import COLLAPSE_TOP_SHARE, COLLAPSE_USED_FRAC, STATS_COLUMNS, EpochStats, top_count
from cpl.runs.rundir import RunDir

# The settings that counter a collapse (docs/methods.md): balanced assignment, hubness-corrected similarity, and
# training only on confident labels.
REMEDIES = ("balanced assignment `train.assignment=sinkhorn`, hubness-corrected similarity `train.similarity=csls`,"
            " or training only on confident labels `train.select_min_score`")
USAGE_KEY = "gan-usage"
MAP_KEY = "gan-map"
MAP_SHOWN = 48  # images of a data-map selection shown at once
MAP_COLUMNS = 8


def file_note(path, what: str) -> str:
    """Why a diagnostics file cannot be shown: not written (yet) or damaged."""
    if path.exists():
        return f"`{path.name}` is damaged (truncated or edited), so {what} cannot be shown; running the run again " \
               "rewrites it."
    return f"No `{path.name}` in this run: {what} is written every epoch by runs that train on unlabeled images " \
           "(runs made before it was recorded have none)."


def _last_drawn(stats: pd.DataFrame | None) -> pd.Series | None:
    drawn = stats[stats["seen"] > 0] if stats is not None else None
    return drawn.iloc[-1] if drawn is not None and len(drawn) else None


def collapse_warning(run: RunDir) -> None:
    """A warning when the last epoch's labels sit on a few identities (thresholds in docs/run-directory.md)."""
    last = _last_drawn(readers.pseudo_stats(run))
    if last is None:
        return
    if not EpochStats(**{c: last[c] for c in STATS_COLUMNS}).collapsed():
        return
    top, used = float(last["top_share"]), float(last["used_frac"])
    k = int(last["k"])
    st.warning(f"**The pseudo-labels collapsed onto a few identities.** In epoch {int(last['epoch']) + 1}, the 10 % "
               f"most chosen identities received {100 * top:.0f}% of the {int(last['seen']):,} unlabeled images "
               f"trained on (a fair share is 10 %), and {int(last['used'])} of {k} identities received any "
               f"({100 * used:.0f}%). Warned at ≥ {100 * COLLAPSE_TOP_SHARE:.0f}% on the top 10 % or fewer than "
               f"{100 * COLLAPSE_USED_FRAC:.0f}% of identities used. Settings that address it: {REMEDIES}.",
               icon=":material/warning:")


# ---------------------------------------------------------------------------------------------- identity usage


def _picked_pid(event) -> int | None:
    """The pid of the bar clicked in the usage chart (its ``customdata``), None when nothing is selected."""
    points = (event or {}).get("selection", {}).get("points", []) if isinstance(event, dict) else \
        list(getattr(getattr(event, "selection", None), "points", []) or [])
    for p in points:
        if p.get("curve_number", 0) <= 1:  # the bars (assigned, of which correct), not the Lorenz curve
            value = p.get("customdata", p.get("x"))
            value = value[0] if isinstance(value, list) else value
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


def apply_usage_pick(ids_key: str, allowed: set[int]) -> None:
    """Before the grid's identity filter (widget ``ids_key``, options ``allowed``) is drawn: an identity clicked
    in the usage chart becomes the filter. Only a new click does, so the filter stays editable."""
    pid = _picked_pid(st.session_state.get(USAGE_KEY))
    if pid is not None and pid in allowed and pid != st.session_state.get(f"{USAGE_KEY}-applied"):
        st.session_state[f"{USAGE_KEY}-applied"] = pid
        st.session_state[ids_key] = [pid]
    elif pid is None:
        st.session_state.pop(f"{USAGE_KEY}-applied", None)


def usage_section(run: RunDir, df: pd.DataFrame, pid_of: dict[int, int], holdout: bool, method: str | None) -> None:
    """Images per identity of the final assignment ``df`` (pseudo_labels.csv rows with ``pid``), most chosen first,
    with its Lorenz curve; clicking a bar filters the grid to that identity."""
    counts = df[df["label"] >= 0]["pid"].astype(int).value_counts()
    counts = counts.reindex(sorted(pid_of.values()), fill_value=0).sort_values(ascending=False, kind="stable")
    correct = df[df["correct"] == 1]["pid"].astype(int).value_counts() if holdout else None
    st.plotly_chart(charts.usage_figure(counts, correct, method), key=USAGE_KEY, on_select="rerun",
                    selection_mode="points", width="stretch")
    total = int(counts.sum())
    top = counts.head(top_count(len(counts))).sum()
    st.caption(f"Final assignment (argmax cosine to the class centers). {int((counts == 0).sum())} of {len(counts)} "
               f"identities received no image; the top 10 % of identities received {100 * top / max(total, 1):.0f}% "
               f"of the {total:,} assigned images. **Click a bar** to show only that identity's images below.")
    table = pd.DataFrame({"pid": counts.index, "images": counts.to_numpy()})
    if correct is not None:
        table["correct"] = correct.reindex(counts.index, fill_value=0).to_numpy()
    st.download_button("Download images per identity (CSV)", table.to_csv(index=False).encode(),
                       file_name=f"{run.id}-identity-usage.csv", mime="text/csv", key="gan-usage-csv",
                       on_click="ignore", icon=":material/download:")


# ---------------------------------------------------------------------------------------------- data map


def _selected_images(event) -> list[int]:
    points = (event or {}).get("selection", {}).get("points", []) if isinstance(event, dict) else \
        list(getattr(getattr(event, "selection", None), "points", []) or [])
    out = []
    for p in points:
        value = p.get("customdata")
        value = value[0] if isinstance(value, list) else value
        if isinstance(value, (int, float)) and not pd.isna(value):
            out.append(int(value))
    return out


def data_map_section(run: RunDir, df: pd.DataFrame, holdout: bool, explain: Callable[[int], None]) -> None:
    """Every unlabeled image drawn in training at (variability, mean confidence); selecting points shows their
    images, whose "Why?" button calls ``explain(i)`` with the image's row number (the page opens its "Why this
    label?" view)."""
    st.subheader("Data map")
    m = readers.data_map(run)
    if m is None:
        st.info(file_note(run.data_map, "the data map"))
        return
    if len(m) != len(df):
        st.info(f"`{run.data_map.name}` has {len(m)} rows for {len(df)} unlabeled images: it is from another "
                "version of this run, so the data map is not shown.")
        return
    points = m.merge(df[["index", "pid", "path"]], on="index", how="left")
    points = points[points["epochs_seen"] > 0]
    if points.empty:
        st.info("No unlabeled image was drawn in training yet, so there is nothing to map.")
        return
    by_truth = holdout and points["correctness"].notna().any()
    st.plotly_chart(charts.data_map_figure(points, by_truth), key=MAP_KEY, on_select="rerun",
                    selection_mode=("points", "box", "lasso"), width="stretch")
    st.caption("Dataset Cartography (Swayamdipta et al., EMNLP 2020): per image, the mean of the score behind its "
               "training-time label over the epochs that drew it (y) and its standard deviation (x). High and left: "
               "labeled the same, confidently, every epoch; low: never confident; right: the label's score moved. "
               + ("Colour: share of the epochs whose label was the hidden true identity."
                  if by_truth else "Colour: the identity (class) of the last label.")
               + " **Select points** (click, box or lasso) to see their images.")
    st.download_button("Download the data map (CSV)", data=run.data_map.read_bytes, file_name=f"{run.id}-data_map.csv",
                       mime="text/csv", key="gan-map-csv", on_click="ignore", icon=":material/download:")
    chosen = _selected_images(st.session_state.get(MAP_KEY))
    if not chosen:
        return
    rows = points.set_index("index").loc[[i for i in chosen if i in set(points["index"])]]
    st.markdown(f"**{len(rows)} selected image(s)**" + (f", the first {MAP_SHOWN} shown" if len(rows) > MAP_SHOWN
                                                          else ""))

    def why(key: str) -> None:
        explain(int(key.removeprefix("map-pick-")))

    cards = []
    for i, r in rows.head(MAP_SHOWN).iterrows():
        colour = (GREEN if r.correctness >= 0.5 else RED) if by_truth else NEUTRAL
        pid = f"pid {int(r.pid)}" if not pd.isna(r.pid) else "no label"
        cards.append(Card(r.path, f"#{i} · {pid} · conf {r.confidence:.3f} · var {r.variability:.3f}", colour,
                          f"map-pick-{i}"))
    grid(run, cards, columns=MAP_COLUMNS, button="Why?", on_pick=why)


# ---------------------------------------------------------------------------------------------- curves


def _has(df: pd.DataFrame, col: str) -> bool:
    return col in df.columns and bool(df[col].notna().any())


def _stats_csv(stats: pd.DataFrame) -> bytes:
    """pseudo_stats.csv as shown: epochs 1-based."""
    return stats.assign(epoch=stats["epoch"] + 1).to_csv(index=False).encode()


def runs_tab(run: RunDir, method: str | None, expected: bool) -> None:
    """Runs → Pseudo-labels: every per-epoch diagnostic of the run, two charts a row (live: the tab is redrawn
    while the run trains). Without the file, a line says why when it is damaged or ``expected`` (the epoch
    records hold pseudo-label statistics)."""
    stats = readers.pseudo_stats(run)
    if stats is None:
        if expected or run.pseudo_stats.exists():
            st.caption(file_note(run.pseudo_stats, "the per-epoch pseudo-label diagnostics"))
        return
    collapse_warning(run)
    shown = charts.panels_with_data([stats])
    cols = st.columns(2)
    for i, panel in enumerate(shown):
        cols[i % 2].plotly_chart(charts.diagnostics_figure(stats, panel, method), key=f"diag-{i}", width="stretch")
    st.caption("Over the unlabeled images trained on in each epoch (their label the last time the epoch drew them). "
               "Top 10 %: the most chosen tenth of the identities; entropy over log K; Gini over all K identities; "
               "changed: among the images drawn in this and the previous epoch. Definitions: docs/run-directory.md.")
    st.download_button("Download the per-epoch diagnostics (CSV)", _stats_csv(stats),
                       file_name=f"{run.id}-pseudo_stats.csv", mime="text/csv", key="diag-csv",
                       icon=":material/download:")


def overlay_section(runs: dict[str, tuple[RunDir, str | None]], key: str) -> None:
    """Compare: the diagnostics of several runs (label -> (run, method)) overlaid, one chart per chosen statistic,
    and their rows in one CSV."""
    series = {label: (readers.pseudo_stats(run), method) for label, (run, method) in runs.items()}
    missing = [label for label, (df, _) in series.items() if df is None]
    if missing:
        st.caption("No readable `pseudo_stats.csv` (no unlabeled images, written before it was recorded, or "
                   f"damaged): {', '.join(missing)}.")
    frames = [df for df, _ in series.values() if df is not None]
    panels = charts.panels_with_data(frames)
    options = [(p, c, name) for p in panels for c, name in p.series if any(_has(df, c) for df in frames)]
    if not options:
        return
    names = [f"{p.title}: {name}" for p, _, name in options]
    default = [n for n, (_, c, _) in zip(names, options) if c in ("top_share", "changed_frac", "acc")]
    chosen = st.multiselect("Pseudo-label diagnostics", names, default=default, key=f"{key}-stats")
    cols = st.columns(2)
    for i, name in enumerate(chosen):
        panel, col, label = options[names.index(name)]
        cols[i % 2].plotly_chart(charts.diagnostics_overlay(series, col, label[:1].upper() + label[1:],
                                                            panel.unit, panel.percent), key=f"{key}-{col}",
                                 width="stretch")
    rows = pd.concat([df.assign(run=label, method=method, epoch=df["epoch"] + 1)
                      for label, (df, method) in series.items() if df is not None], ignore_index=True)
    st.download_button("Download these runs' per-epoch diagnostics (CSV)", rows.to_csv(index=False).encode(),
                       file_name="pseudo-label-diagnostics.csv", mime="text/csv", key=f"{key}-csv",
                       icon=":material/download:")


def last_epoch_table(runs: dict[str, tuple[RunDir, str | None]]) -> pd.DataFrame:
    """Per run (label -> (run, method)): the last epoch that drew unlabeled images, its spread (identities used,
    top 10 % share, Gini), stability (changed) and accuracy / NMI (holdout), shares in percent."""
    rows = []
    for label, (run, method) in runs.items():
        last = _last_drawn(readers.pseudo_stats(run))
        if last is None:
            continue
        rows.append({"run": label, "method": method, "epoch": int(last["epoch"]) + 1,
                     "identities used (%)": 100 * last["used_frac"], "top 10 % share (%)": 100 * last["top_share"],
                     "Gini": last["gini"], "changed (%)": 100 * last["changed_frac"],
                     "accuracy (%)": 100 * last["acc"], "NMI": last["nmi"]})
    return pd.DataFrame(rows).dropna(axis=1, how="all") if rows else pd.DataFrame()


def number_format(table: pd.DataFrame) -> dict:
    """Column formats of :func:`last_epoch_table` for ``st.dataframe``."""
    return {c: st.column_config.NumberColumn(c, format="%.1f" if "%" in c else "%.3f")
            for c in table.columns if c not in ("run", "method", "epoch")}


