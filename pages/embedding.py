"""Embedding: the run's UMAP of training and unlabeled features with the class centers.

Reads ``embedding.npz`` (computed by the run process; nothing is embedded here), ``features/train.csv``,
``pseudo_labels.csv`` and, for the distance of each kind of image to the class centers, ``features/train.npy``,
``unlabeled.npy`` and ``centers.npy``. One WebGL trace per kind of point, coloured through a numeric colour
scale, so 37k points stay responsive; selecting points (click, box or lasso) shows their images.

Colour means identity and shape means kind, so the legend shows the kinds in a neutral grey (a trace's own
legend symbol would take the colour of its first point, an arbitrary identity). Every identity gets a hue of
its own (golden-angle steps, not a 24-colour cycle); the class centers are open stars drawn over the points,
so they mark where a class is without hiding the images around it.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import qualitative

from app import readers
from app.gallery import AMBER, BLUE, GREEN, NEUTRAL, RED, Card, grid
from app.nav import run_page
from cpl.data.unlabeled_sources import SOURCES
from cpl.runs.rundir import RunDir
from cpl.runs.status import ACTIVE, read_status

TRAIN, UNLABELED, CENTER = 0, 1, 2
KINDS = {TRAIN: ("training images", "circle", 5), UNLABELED: ("unlabeled (GAN) images", "diamond", 6),
         CENTER: ("class centers", "star-open", 10)}
SHOW = {"training": TRAIN, "unlabeled": UNLABELED, "centers": CENTER}
PICKED = qualitative.Dark24  # the contrasting colours of identities picked by hand (at most 24 of them)
LEGEND_COLOUR = "#6b6b6b"  # the kinds' legend symbols: neutral, since colour means identity
NO_LABEL_COLOUR = "#bdbdbd"
CAPS = (10_000, 20_000, 40_000, 80_000)
MAX_SHOWN = 32  # thumbnails of a selection
GOLDEN = 0.381966  # hue step (1 - 1/phi of a turn): consecutive identities get far-apart hues, none repeats
SHADES = ((0.72, 0.42), (0.55, 0.58), (0.85, 0.30))  # (saturation, lightness) cycled to separate close hues
GAP_SAMPLE = 2000  # images of each kind whose distance to the nearest center is measured (seeded subset)
ISLAND_RATIO = 1.5  # unlabeled images this much farther from every center than training images: an island


def identity_colours(n: int) -> list[str]:
    """``n`` distinct colours (hex), one per identity: golden-angle hues in three shades, no cycle."""
    out = []
    for i in range(n):
        sat, light = SHADES[i % len(SHADES)]
        r, g, b = colorsys.hls_to_rgb((i * GOLDEN) % 1.0, light, sat)
        out.append(f"#{round(255 * r):02x}{round(255 * g):02x}{round(255 * b):02x}")
    return out


def _colourscale(palette: list[str]) -> list:
    """A stepped scale: value i + 0.5 → palette[i]; the last band is grey, for points without a label."""
    colours = [*palette, NO_LABEL_COLOUR]
    n = len(colours)
    scale = []
    for i, c in enumerate(colours):
        scale += [(i / n, c), ((i + 1) / n, c)]
    return scale


def _colour_values(codes: np.ndarray, n: int) -> np.ndarray:
    """Colour codes (-1 = none, else < ``n``) → values of :func:`_colourscale` of an ``n``-colour palette."""
    return np.where((codes >= 0) & (codes < n), codes, n) + 0.5


def _pids(labels: np.ndarray, train: pd.DataFrame) -> np.ndarray:
    """Class labels [N] int (-1 = none) → original identities [N] int (-1 = none), via features/train.csv."""
    pid_of = train.groupby("label")["pid"].first()
    top = max(int(labels.max(initial=-1)), int(pid_of.index.max()) if len(pid_of) else -1)
    lut = np.full(top + 2, -1)
    lut[pid_of.index.to_numpy()] = pid_of.to_numpy()
    return np.where(labels >= 0, lut[np.maximum(labels, 0)], -1)


def _subsample(idx: np.ndarray, kind: np.ndarray, cap: int) -> tuple[np.ndarray, bool]:
    """At most ``cap`` train + unlabeled points (a seeded random subset of each kind, same share); centers all."""
    points = idx[kind[idx] != CENTER]
    if len(points) <= cap:
        return idx, False
    keep = np.sort(np.random.default_rng(0).choice(points, cap, replace=False))
    return np.concatenate([keep, idx[kind[idx] == CENTER]]), True


def _legend_entries(fig: go.Figure, kinds: list[int]) -> None:
    """One legend entry per kind drawn, in its shape and a neutral colour; each toggles its kind's trace
    (same legend group). Added after the data traces, so a selection's curve numbers are those of the data."""
    for k in kinds:
        name, symbol, _ = KINDS[k]
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name, legendgroup=name,
                                 marker=dict(symbol=symbol, size=10, color=LEGEND_COLOUR,
                                             line=dict(width=1.5, color=LEGEND_COLOUR))))


def _figure(emb: dict, pid: np.ndarray, idx: np.ndarray, colour_code: np.ndarray, context: np.ndarray,
            palette: list[str]) -> tuple[go.Figure, list[np.ndarray]]:
    """The scatter and, per trace, the embedding rows of its points (to map a selection back)."""
    xy, kind, row = emb["xy"], emb["kind"], emb["row"]
    fig = go.Figure()
    traces: list[np.ndarray] = []
    if len(context):
        fig.add_trace(go.Scattergl(x=xy[context, 0], y=xy[context, 1], mode="markers", name="other identities",
                                   marker=dict(size=4, color="#d9d9d9"), hoverinfo="skip"))
        traces.append(context)
    scale = _colourscale(palette)
    crowded = len(idx) > 10_000  # smaller markers keep dense Market-scale clouds readable
    drawn = []
    for k, (name, symbol, size) in KINDS.items():  # centers last: open stars over the points they mark
        sel = idx[kind[idx] == k]
        size = max(3, round(size * 0.6)) if crowded else size
        if not len(sel):
            continue
        what = {TRAIN: "training image %{customdata[0]}", UNLABELED: "unlabeled image #%{customdata[0]}",
                CENTER: "class center"}[k]
        line = dict(width=2) if k == CENTER else dict(width=0)  # an open symbol's outline has the point's colour
        fig.add_trace(go.Scattergl(
            x=xy[sel, 0], y=xy[sel, 1], mode="markers", name=name, legendgroup=name, showlegend=False,
            customdata=np.stack([row[sel], pid[sel]], axis=1),
            hovertemplate=what + "<br>" + ("pseudo-label " if k == UNLABELED else "") +
            "pid %{customdata[1]}<extra></extra>",
            marker=dict(symbol=symbol, size=size, color=_colour_values(colour_code[sel], len(palette)),
                        colorscale=scale, cmin=0, cmax=len(palette) + 1, line=line,
                        opacity=1.0 if k == CENTER else 0.75)))
        traces.append(sel)
        drawn.append(k)
    _legend_entries(fig, drawn)
    fig.update_layout(height=640, margin=dict(l=10, r=10, t=10, b=10), dragmode="lasso",
                      legend=dict(orientation="h", y=1.0, yanchor="bottom"),
                      xaxis=dict(showticklabels=False, title=None), yaxis=dict(showticklabels=False, title=None))
    return fig, traces


def _selection(event, traces: list[np.ndarray]) -> np.ndarray:
    """Embedding rows of the selected points."""
    rows = []
    for p in ((event or {}).get("selection") or {}).get("points") or []:
        c, i = p.get("curve_number", -1), p.get("point_index", -1)
        if 0 <= c < len(traces) and 0 <= i < len(traces[c]):  # a stale event may name points that moved
            rows.append(int(traces[c][i]))
    return np.unique(np.asarray(rows, dtype=np.int64))


def _cards(emb: dict, sel: np.ndarray, pid: np.ndarray, train: pd.DataFrame, labels: pd.DataFrame) -> list[Card]:
    kind, row = emb["kind"], emb["row"]
    holdout = "correct" in labels and labels["correct"].notna().any()
    cards = []
    for e in sel[:MAX_SHOWN]:
        k, r = int(kind[e]), int(row[e])
        if k == TRAIN and r < len(train):
            t = train.iloc[r]
            cards.append(Card(t.path, f"train {r} · pid {t.pid} · cam {t.camid}", NEUTRAL))
        elif k == UNLABELED and r < len(labels):
            u = labels.iloc[r]
            mark, colour = "", AMBER
            if holdout:
                mark, colour = (" :green[✓]", GREEN) if u.correct == 1 else (" :red[✗]", RED)
            cos = f" · cos {u.cos:.3f}" if not np.isnan(u.cos) else ""
            cards.append(Card(u.path, f"#{r} → pid {pid[e]}{mark}{cos}", colour))
        elif k == CENTER:
            first = train[train["label"] == r].head(1)
            if len(first):
                cards.append(Card(first.iloc[0].path, f"center of pid {pid[e]} (a training image of it)", BLUE))
    return cards


def _legend(chosen: list[int]) -> None:
    chips = " ".join(f"<span style='color:{PICKED[i]}'>■</span> pid {p}" for i, p in enumerate(chosen))
    st.markdown(chips, unsafe_allow_html=True)


def nearest_center_distance(feats: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Cosine distance (1 - cosine) of each feature ``[N, D]`` to its nearest class center ``[K, D]``: ``[N]``
    float32 in [0, 2]. Both are L2-normalised here (the centers are stored unnormalised); an all-zero center
    (a class that never had one) is no center. NaN when no center is valid."""
    f = feats.astype(np.float32)
    c = centers.astype(np.float32)
    norms = np.linalg.norm(c, axis=1)
    c = c[norms > 0] / norms[norms > 0, None]
    if not len(c):
        return np.full(len(f), np.nan, np.float32)
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    return (1.0 - (f @ c.T).max(axis=1)).astype(np.float32)


@st.cache_data(show_spinner=False, max_entries=64)
def _center_distances(run_path: str, version: tuple) -> tuple[float, float] | None:
    """Mean distance to the nearest center of (training, unlabeled) images, each over a seeded subset of at
    most :data:`GAP_SAMPLE`; None when a features file is missing, damaged or of another dimension."""
    run = RunDir(Path(run_path))
    found = [readers.features(run, n) for n in ("train", "unlabeled", "centers")]
    if any(a is None or not len(a) for a in found) or len({a.shape[1] for a in found}) > 1:
        return None
    train, unl, centers = found
    rng = np.random.default_rng(0)
    means = []
    for feats in (train, unl):
        rows = np.sort(rng.choice(len(feats), GAP_SAMPLE, replace=False)) if len(feats) > GAP_SAMPLE else slice(None)
        means.append(float(nearest_center_distance(feats[rows], centers).mean()))
    return None if np.isnan(means).any() else (means[0], means[1])


def gap_text(real: float, unlabeled: float, source: str) -> tuple[str, bool]:
    """What the view shows about the unlabeled images' place among the class centers, from the mean cosine
    distances to the nearest center of the training (``real``) and unlabeled images; and whether they form an
    island (:data:`ISLAND_RATIO`)."""
    ratio = unlabeled / max(real, 1e-6)
    measured = (f"On average the {source} images lie at cosine distance {unlabeled:.3f} from their nearest class "
                f"center, the training images at {real:.3f} ({ratio:.1f}×).")
    if ratio >= ISLAND_RATIO:
        return (measured + f" The {source} images form an island away from every center: the domain gap between "
                "them and the real images. Their nearest center, hence their pseudo-label, is a weak identity "
                "cue.", True)
    return measured + (f" No island: the {source} images sit among the identities (an island would be "
                       f"{ISLAND_RATIO}× or more)."), False


def _gap_note(run: RunDir, counts: np.ndarray) -> None:
    """The domain-gap statement, measured from the run's features (:func:`gap_text`)."""
    if not counts[UNLABELED]:
        return
    paths = [run.features / f"{n}.npy" for n in ("train", "unlabeled", "centers")]
    found = _center_distances(str(run.path), tuple(readers.stamp(p) for p in paths))
    if found is None:
        st.caption("The distance of the images to the class centers cannot be measured: `features/train.npy`, "
                   "`unlabeled.npy` or `centers.npy` is missing or damaged.")
        return
    source = (readers.config(run).get("unlabeled") or {}).get("source") or "unlabeled"
    generated = source in SOURCES and SOURCES[source].generates
    text, island = gap_text(*found, "GAN" if generated else f"unlabeled ({source})")
    if island:
        st.info(text, icon=":material/landscape:")
    else:
        st.caption(text)


def _missing_notes(train: pd.DataFrame, labels: pd.DataFrame, counts: np.ndarray) -> None:
    """Say which table the view lacks: hover and selection then show less."""
    missing = []
    if train.empty:
        missing.append("`features/train.csv` (identities are not named: pid -1)")
    if counts[UNLABELED] and labels.empty:
        missing.append("`pseudo_labels.csv` (selected unlabeled images are not shown)")
    if missing:
        st.warning("Missing or damaged in this run directory: " + "; ".join(missing) + ".", icon=":material/warning:")


def main() -> None:
    run = run_page("Embedding", "emb-")
    if run is None:
        return
    emb = readers.embedding(run)
    if not emb or "xy" not in emb:
        umap_on = (readers.config(run).get("eval") or {}).get("umap", True)
        status = read_status(run)
        if not umap_on:
            st.info("This run was configured without a UMAP (eval.umap: false).")
        elif status.get("state") in ACTIVE:
            st.info("The UMAP is computed at the end of the run, after evaluation "
                    f"(now: {status.get('message') or status.get('stage')}).")
        else:
            st.info(f"This run has no embedding.npz (state: {status.get('state')}).")
        return
    train = readers.split(run, "train")
    labels = readers.pseudo_labels(run)
    pid = _pids(emb["label"], train)
    kind = emb["kind"]
    counts = np.bincount(kind, minlength=3)
    palette = identity_colours(int(emb["label"].max(initial=-1)) + 1)
    note = (f"UMAP of the run's L2-normalised pool5 features: {counts[TRAIN]:,} training and {counts[UNLABELED]:,} "
            f"unlabeled images and {counts[CENTER]:,} class centers (open stars, normalised onto the same sphere). "
            f"Colour = identity (pseudo-label for unlabeled images), shape = kind: each of the {len(palette):,} "
            "identities has a hue of its own, but near hues look alike: hover for the pid, or pick identities "
            "below for contrasting colours.")
    if len(train) and counts[TRAIN] < len(train):
        note += (f" The run embedded a random subset ({counts[TRAIN]:,} of {len(train):,} training images; "
                 "eval.umap_max_points).")
    st.caption(note)
    _missing_notes(train, labels, counts)
    _gap_note(run, counts)

    c1, c2, c3 = st.columns([4, 3, 2], vertical_alignment="bottom")
    all_pids = sorted(int(p) for p in np.unique(pid[pid >= 0]))
    chosen = c1.multiselect("Only these identities (pid)", all_pids, key="emb-ids", placeholder="all identities",
                            max_selections=len(PICKED))
    shown = c2.pills("Show", list(SHOW), selection_mode="multi", default=list(SHOW), key="emb-kinds")
    cap = c3.selectbox("Max points drawn", CAPS, index=2, key="emb-cap", format_func=lambda n: f"{n:,}")
    context = st.toggle("Show the other identities in grey", value=True, key="emb-context",
                        disabled=not chosen)
    wanted = np.isin(kind, [SHOW[name] for name in shown])
    idx = np.flatnonzero(wanted)
    other = np.zeros(0, dtype=np.int64)
    if chosen:
        mine = np.isin(pid, chosen)
        other = np.flatnonzero(wanted & ~mine & (kind != CENTER)) if context else other
        idx = np.flatnonzero(wanted & mine)
        order = {p: i for i, p in enumerate(chosen)}
        colour_code = np.array([order.get(int(p), -1) for p in pid])
        palette = list(PICKED)
        _legend(chosen)
    else:
        colour_code = np.where(emb["label"] >= 0, emb["label"], -1)
    idx, cut = _subsample(idx, kind, cap)
    other, cut_other = _subsample(other, kind, max(0, cap - len(idx)))
    if cut or cut_other:
        st.caption(f"Showing a random subset of {cap:,} points (seed 0) for responsiveness; "
                   "class centers are always drawn. Raise 'Max points drawn' to see more.")
    fig, traces = _figure(emb, pid, idx, colour_code, other, palette)
    event = st.plotly_chart(fig, key="emb-chart", on_select="rerun", selection_mode=("points", "box", "lasso"))

    sel = _selection(event, traces)
    if not len(sel):
        st.caption("Select points (click, box or lasso) to see their images.")
        return
    n = np.bincount(kind[sel], minlength=3)
    ids = pd.Series(pid[sel][pid[sel] >= 0]).value_counts()
    st.subheader(f"{len(sel):,} selected points")
    st.caption(f"{n[TRAIN]} training images, {n[UNLABELED]} unlabeled images, {n[CENTER]} centers; identities: "
               + ", ".join(f"pid {p} ({c})" for p, c in ids.head(10).items())
               + (f" and {len(ids) - 10} more" if len(ids) > 10 else ""))
    cards = _cards(emb, sel, pid, train, labels)
    shown = grid(run, cards, columns=8)
    if len(sel) > MAX_SHOWN:
        st.caption(f"Showing the first {MAX_SHOWN} of {len(sel):,} selected points.")
    if shown < len(cards):
        st.warning(f"{len(cards) - shown} images could not be shown (missing, or outside the allowed folders).")


main()
