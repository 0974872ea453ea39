"""GAN samples & pseudo-labels: which identity each unlabeled image was assigned, how confidently, and why.

Reads ``pseudo_labels.csv``, ``unlabeled.csv``, ``pseudo_history.npz``, ``features/train.csv``, the pseudo-label
diagnostics (``pseudo_stats.csv``, ``data_map.csv``) and the epoch records of ``metrics.jsonl``
(docs/run-directory.md). The identity-usage chart filters the grid; the data map's selection opens "Why?". While a
run is still training only the unlabeled images and the training-time labels exist; the page shows those and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from app import charts, demo, pseudo_views, readers, settings
from app.gallery import AMBER, GREEN, NEUTRAL, RED, Card, card_image, grid, page_bounds
from app.nav import run_page
from cpl.runs.rundir import RunDir
from cpl.runs.state import ACTIVE
from cpl.runs.status import read_status

SORTS = {
    "Sample index": ("index", True),
    "Confidence, highest first": ("cos", False),
    "Confidence, lowest first": ("cos", True),
    "Margin to runner-up, smallest first": ("margin", True),
    "Margin to runner-up, largest first": ("margin", False),
    "Identity": ("pid", True),
    "Last label change, latest first": ("last_change_epoch", False),
}
PER_PAGE = (24, 48, 96)
COLUMNS = 8
EXAMPLES = 8  # real training images shown per identity in "why this label"
EXTRA_CLASS = -2  # method_label of all-in-one's extra "generated" class (-1: no label, a uniform target)


def _pid_of(train: pd.DataFrame) -> dict[int, int]:
    """class (0..K-1) -> original identity, from features/train.csv."""
    return {int(k): int(p) for k, p in train.groupby("label")["pid"].first().items()}


def _late_from(epochs: int) -> int:
    """First 0-based epoch of the last third of training: a label that changed then is still moving."""
    return math.floor(2 * epochs / 3)


def _epochs(run: RunDir, history: dict) -> int:
    cfg_epochs = (readers.config(run).get("train") or {}).get("epochs")
    return int(cfg_epochs or history.get("labels", np.zeros((0, 0))).shape[0])


def _aspect(run: RunDir) -> float:
    """Height / width of the network's input (data.height, data.width): the shape every unlabeled image is
    resized to for training, and is shown at."""
    data = readers.as_dict(readers.config(run).get("data"))
    h, w = readers.number(data.get("height")), readers.number(data.get("width"))
    return h / w if h and w and h > 0 and w > 0 else 2.0


def _small(x: float) -> str:
    """A cosine difference as text: 3 decimals, or 2 significant digits below 0.01 (a margin of 0.0004 is not
    "0.000"); "0" for an exact tie."""
    if abs(x) >= 0.01:
        return f"{x:.3f}"
    return np.format_float_positional(x, precision=2, fractional=False, trim="-")


def _pid_text(label: int, pid_of: dict[int, int]) -> str:
    if label == EXTRA_CLASS:
        return "the extra 'generated' class"
    if label < 0 or label not in pid_of:
        return "no label (uniform target)"
    return f"pid {pid_of[label]}"


def _caption(r, holdout: bool, pid_of: dict[int, int], differs: bool) -> str:
    if r.label < 0:
        return f"#{r.index} · no valid center"
    head = f"**#{r.index}** → **pid {int(r.pid)}**"
    if holdout:
        head += " :green[✓]" if r.correct == 1 else " :red[✗" + ("]" if np.isnan(r.true_pid) else
                                                               f" true {int(r.true_pid)}]")
    text = f"{head}  \ncos {r.cos:.3f}" + ("" if np.isnan(r.margin) else f" · margin {_small(r.margin)}")
    if differs:
        text += f"  \nmethod: {_pid_text(int(r.method_label), pid_of)}"
    return text


def _table(run: RunDir, pid_of: dict[int, int], late_from: int) -> pd.DataFrame:
    """pseudo_labels.csv plus true_pid, a 'late' flag and whether the method's own label differs."""
    df = readers.pseudo_labels(run)
    unl = readers.unlabeled(run)
    # the hidden identity's pid: unlabeled.csv's, or (that file missing) the class map's for true_label
    df["true_pid"] = unl["true_pid"].to_numpy() if len(unl) == len(df) else df["true_label"].map(pid_of)
    df["late"] = df["last_change_epoch"] >= late_from
    df["method_differs"] = df["method_label"] != df["label"]
    return df


def _open_why(i: int) -> None:
    """A "Why?" button's callback: image ``i`` becomes the selected one, and its explanation opens as a dialog."""
    st.session_state["gan-img"] = i
    st.session_state["gan-why"] = True


def _pick(key: str) -> None:
    """The grid's "Why?" (its key names the image)."""
    _open_why(int(key.removeprefix("pick-")))


def _filters(df: pd.DataFrame, holdout: bool, epochs: int, late_from: int) -> tuple[pd.DataFrame, int]:
    """The rows the grid shows, sorted, and the page size."""
    c1, c2, c3, c4 = st.columns([2, 3, 3, 2])
    sort = c1.selectbox("Sort by", list(SORTS), key="gan-sort")
    assigned = sorted(int(p) for p in df["pid"].dropna().unique())
    ids = c2.multiselect("Identities (pid)", assigned, key="gan-ids", placeholder="all identities")
    lo, hi = float(np.floor(df["cos"].min() * 100) / 100), float(np.ceil(df["cos"].max() * 100) / 100)
    conf = c3.slider("Cosine to the assigned center", lo, max(hi, lo + 0.01), (lo, max(hi, lo + 0.01)),
                     step=0.01, key="gan-conf") if df["cos"].notna().any() else None
    late = c4.toggle("Changed late", key="gan-late",
                     help=f"Only images whose training-time label last changed in epoch ≥ {late_from + 1} of "
                          f"{epochs} (the last third of training)")
    c5, c6, c7 = st.columns([3, 3, 4])
    differs = c5.toggle("Method's label differs", key="gan-differs",
                        help="Rows where the run's own method (method_label) disagrees with the center-based label")
    verdict = c6.radio("Assignments", ["all", "✓ correct", "✗ wrong"], horizontal=True, key="gan-verdict",
                       disabled=not holdout, help=None if holdout else "Needs the holdout source (a hidden truth)")
    per_page = c7.selectbox("Images per page", PER_PAGE, index=1, key="gan-per-page")
    view = df
    if ids:
        view = view[view["pid"].isin(ids)]
    if conf is not None:
        view = view[view["cos"].between(conf[0] - 1e-9, conf[1] + 1e-9)]
    if late:
        view = view[view["late"]]
    if differs:
        view = view[view["method_differs"]]
    if holdout and verdict != "all":
        view = view[view["correct"] == (1 if verdict.startswith("✓") else 0)]
    col, asc = SORTS[sort]
    view = view.sort_values([col, "index"], ascending=[asc, True], na_position="last", kind="stable")
    return view, per_page


def _grid(run: RunDir, view: pd.DataFrame, per_page: int, holdout: bool, pid_of: dict[int, int]) -> None:
    start, stop = page_bounds(len(view), per_page, key="gan-page")
    cards = []
    aspect = _aspect(run)
    for r in view.iloc[start:stop].itertuples(index=False):
        colour = (GREEN if r.correct == 1 else RED) if holdout else (AMBER if r.late else NEUTRAL)
        cards.append(Card(r.path, _caption(r, holdout, pid_of, bool(r.method_differs)), colour, f"pick-{r.index}",
                          aspect))
    shown = grid(run, cards, columns=COLUMNS, button="Why?", on_pick=_pick)
    if shown < len(cards):
        st.warning(f"{len(cards) - shown} of {len(cards)} images on this page could not be shown "
                   "(missing, or outside the allowed folders).")
    st.caption("Border: " + ("green = assigned identity is the hidden true one, red = wrong."
                             if holdout else "amber = label still changed in the last third of training."))


def _examples(run: RunDir, real: pd.DataFrame, label: int, title: str) -> None:
    rows = real[real["label"] == label].head(EXAMPLES)
    st.markdown(title)
    if rows.empty:
        st.caption("no labeled training image of this identity")
        return
    cards = [Card(r.path, f"pid {r.pid} · cam {r.camid}") for r in rows.itertuples(index=False)]
    grid(run, cards, columns=EXAMPLES, max_side=128)


def _history_figure(history: dict, i: int, pid_of: dict[int, int]) -> go.Figure | None:
    labels, conf = history.get("labels"), history.get("confidence")
    if labels is None or conf is None or i >= labels.shape[1]:  # no history, or one of another unlabeled set
        return None
    seen = labels[:, i] >= 0
    if not seen.any():
        return None
    epochs = np.arange(1, labels.shape[0] + 1)[seen]
    pids = [f"pid {pid_of.get(int(k), k)}" for k in labels[seen, i]]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.55, 0.45])
    fig.add_trace(go.Scatter(x=epochs, y=pids, mode="lines+markers", name="label", line_shape="hv"), row=1, col=1)
    fig.add_trace(go.Scatter(x=epochs, y=conf[seen, i].astype(np.float32), mode="lines+markers",
                             name="confidence"), row=2, col=1)
    fig.update_yaxes(title_text="label", type="category", row=1, col=1)
    fig.update_yaxes(title_text="confidence", row=2, col=1)
    fig.update_xaxes(title_text="epoch", dtick=max(1, len(labels) // 12), row=2, col=1)
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=10, b=10), showlegend=False)
    return fig


@dataclass(frozen=True)
class Why:
    """What explaining one image's label needs: the run, its assignment table (pseudo_labels.csv plus
    true_pid/late/method_differs), the labeled training images (features/train.csv less the unlabeled ones),
    the per-epoch history, class -> pid, whether there is a hidden truth, and the run's method."""

    run: RunDir
    df: pd.DataFrame
    real: pd.DataFrame
    history: dict
    pid_of: dict[int, int]
    holdout: bool
    method: str


def _image_number(n: int) -> int:
    """The selected unlabeled image (``?img=``, the grid's "Why?" or the number field), in 0..n-1."""
    if "gan-img" not in st.session_state:
        wanted = st.query_params.get("img", "0")
        st.session_state["gan-img"] = int(wanted) if wanted.isdigit() and int(wanted) < n else 0
    return min(max(int(st.session_state["gan-img"]), 0), n - 1)


@st.dialog("Why this label?", width="large")
def _why_dialog(why: Why, i: int) -> None:
    """The explanation of image ``i`` where the user clicked (the grid is long; the section below it is far)."""
    _explain(why, i, "dialog")


def _selected(why: Why) -> None:
    """The "Why this label?" section: pick an image by number and see its explanation."""
    n = len(why.df)
    _image_number(n)
    st.subheader("Why this label?")
    i = int(st.number_input("Unlabeled image #", 0, n - 1, key="gan-img",
                            help="Or press 'Why?' under an image of the grid"))
    if st.query_params.get("img") != str(i):
        st.query_params["img"] = str(i)
    _explain(why, i, "section")


def _explain(why: Why, i: int, where: str) -> None:
    """Image ``i``'s assignment: the image, its cosines, real images of the assigned and runner-up identities
    (and of the hidden true one), and its label per epoch. ``where`` keeps the chart keys apart."""
    run, df, real, history, pid_of, holdout, method = (why.run, why.df, why.real, why.history, why.pid_of,
                                                        why.holdout, why.method)
    r = df.set_index("index").loc[i]
    left, right = st.columns([1, 4])
    with left:
        data = card_image(run, Card(r.path, "", GREEN if holdout and r.correct == 1 else
                                    RED if holdout else NEUTRAL, aspect=_aspect(run)), max_side=192)
        if data is None:
            st.warning("This image cannot be shown (missing, or outside the allowed folders).")
        else:
            st.image(data, caption=f"unlabeled image #{i}", width="stretch")
        if r.label >= 0:
            st.metric("cosine to assigned center", f"{r.cos:.3f}")
            if not np.isnan(r.runner_up_cos):
                st.metric("runner-up cosine", f"{r.runner_up_cos:.3f}")
                st.metric("margin", _small(r.margin))
        last = int(r.last_change_epoch)
        st.caption("Training-time label never changed." if last < 0 else
                   f"Training-time label last changed in epoch {last + 1}.")
    with right:
        if r.label < 0:
            st.info("No class center was valid when this image was labeled, so it has no center-based label.")
        else:
            verdict = ""
            if holdout:
                verdict = " ✓ (the hidden true identity)" if r.correct == 1 else " ✗ (not the hidden true identity)"
            _examples(run, real, int(r.label), f"**Assigned: pid {int(r.pid)}** · cos {r.cos:.3f}{verdict}")
            if r.runner_up >= 0:
                _examples(run, real, int(r.runner_up),
                          f"**Runner-up: pid {int(r.runner_up_pid)}** · cos {r.runner_up_cos:.3f} "
                          f"(margin {_small(r.margin)})")
            if holdout and r.correct == 0 and not np.isnan(r.true_label) and not np.isnan(r.true_pid):
                _examples(run, real, int(r.true_label), f"**Hidden true identity: pid {int(r.true_pid)}**")
        if r.method_label != r.label:
            st.caption(f"The run's own method ({method}) gives {_pid_text(int(r.method_label), pid_of)} "
                       f"(target probability {r.method_conf:.3f}); the center-based label is the one above.")
        fig = _history_figure(history, i, pid_of)
        if fig is None:
            st.caption("This image was never drawn in a training batch, so it has no per-epoch history.")
        else:
            st.markdown("**Its label as training went on** (the label it got each epoch it was drawn)")
            st.plotly_chart(fig, key=f"gan-history-{where}")


def _curves(run: RunDir) -> None:
    ep = readers.metrics(run, "epoch")
    if ep.empty or "pl_mean_conf" not in ep:
        return
    st.plotly_chart(charts.pseudo_label_figure(ep), key="gan-curves")
    acc = ep["pl_acc"].dropna() if "pl_acc" in ep else ()
    if len(acc):
        st.caption(f"Pseudo-label accuracy (share of the images trained on in an epoch whose label is their "
                   f"hidden true identity): {100 * acc.iloc[0]:.1f}% in epoch {int(ep.epoch[acc.index[0]]) + 1}, "
                   f"{100 * acc.iloc[-1]:.1f}% in epoch {int(ep.epoch[acc.index[-1]]) + 1}.")


def _provisional(run: RunDir, unl: pd.DataFrame, history: dict, status: dict) -> None:
    """Before the final pass: the unlabeled images with the class each got when last trained on."""
    if status.get("state") in ACTIVE:
        st.info("Final pseudo-labels are written when the run finishes "
                f"(now: {status.get('message') or status.get('stage')}). Below: each image's training-time class "
                "the last time it was drawn.")
    else:
        st.info(f"This run ({status.get('state')}) has no final pseudo-labels (`pseudo_labels.csv`). Below: each "
                "image's training-time class the last time it was drawn.")
    labels, conf = history.get("labels"), history.get("confidence")
    start, stop = page_bounds(len(unl), 48, key="gan-page")
    cards = []
    for r in unl.iloc[start:stop].itertuples(index=False):
        caption = f"#{r.index} · not trained on yet"
        if labels is not None and r.index < labels.shape[1]:
            seen = np.flatnonzero(labels[:, r.index] >= 0)
            if len(seen):
                e = seen[-1]
                caption = (f"#{r.index} · class {labels[e, r.index]} · conf {float(conf[e, r.index]):.3f} "
                           f"(epoch {e + 1})")
        cards.append(Card(r.path, caption, aspect=_aspect(run)))
    grid(run, cards, columns=COLUMNS)


def _absent_notes(run: RunDir, train: pd.DataFrame, history: dict) -> None:
    """Say which of the files the page reads beside pseudo_labels.csv are missing or damaged, and what is left
    out for it."""
    notes = []
    if train.empty:
        notes.append("`features/train.csv`: no labeled training images to show beside an assignment, and the "
                     "identities that received no image are not counted")
    if readers.unlabeled(run).empty:
        notes.append("`unlabeled.csv`: the unlabeled set is known only through pseudo_labels.csv")
    if not history:
        notes.append("`pseudo_history.npz`: no per-epoch label history")
    if notes:
        st.warning("Missing or damaged in this run directory: " + "; ".join(notes) + ".", icon=":material/warning:")


def _quality(run: RunDir) -> None:
    """The DCGAN's Fréchet distance to the real images beside its real-vs-real floor."""
    q = readers.gan_quality(run)
    if not q:
        return
    m = st.columns([1, 1, 3])
    m[0].metric("GAN Fréchet distance", f"{q['fd']:.0f}",
                help="Fréchet distance between the GAN samples and real training images in the ImageNet "
                     "EfficientNet-Lite0 feature space (not the Inception FID: compare it with the floor only)")
    m[1].metric("real-vs-real floor", f"{q['fd_floor']:.0f}",
                help="the same distance between two disjoint halves of the real images")
    facts = ([f"{q['n']:.0f} images a side."] if q["n"] else []) + ([f"{q['feature_space']}."] if q["feature_space"]
                                                                     else [])
    m[2].caption(" ".join([*facts, "The closer the GAN is to the floor, the more its samples look like the real "
                           "images to an ImageNet network; samples far above it are textures, not people."]))


def _demo_pointer(run: RunDir) -> None:
    """On the demo's GAN run: a GAN image has no true identity, so point at the demo's held-out run, whose labels
    are scored, with its latest pseudo-label accuracy against chance (app/demo.py)."""
    runs = demo.demo_runs(settings.runs_root())
    if run.id != getattr(runs.get(demo.GAN), "id", None) or demo.HELDOUT not in runs:
        return
    heldout = runs[demo.HELDOUT]
    epochs = readers.metrics(heldout, "epoch")
    acc = epochs["pl_acc"].dropna() if "pl_acc" in epochs else pd.Series(dtype=float)
    k = readers.number((readers.dataset_info(heldout) or {}).get("num_classes"))
    chance = f" (chance: {100 / k:.1f}%)" if k else ""
    score = (f" After epoch {len(acc)}, **{100 * acc.iloc[-1]:.1f}%** of its labels are right{chance}."
             if len(acc) else " Its first scores arrive after its first epoch.")
    st.info("A GAN image belongs to no identity, so nobody can say whether its label is right. The demo also runs "
            "CPL on real training images whose labels it hides, and scores every label it gives them." + score,
            icon=":material/fact_check:")
    st.page_link("pages/gan.py", label="Open the held-out run (✓/✗ per image)", icon=":material/fact_check:",
                 query_params={"run": heldout.id})


def main() -> None:
    run = run_page("GAN samples & pseudo-labels", "gan-", drop_params=("img",))  # ?img=: an image number
    if run is None:
        return
    _demo_pointer(run)
    status = read_status(run)
    method = readers.run_facts(run).get("method") or "?"
    _quality(run)
    history = readers.pseudo_history(run)
    if not run.pseudo_labels.is_file():
        unlabeled = readers.unlabeled(run) if run.unlabeled.is_file() else None
        state = status.get("state")
        if unlabeled is not None and len(unlabeled):
            pseudo_views.collapse_warning(run)
            _curves(run)
            _provisional(run, unlabeled, history, status)
        elif unlabeled is not None:
            source = (readers.config(run).get("unlabeled") or {}).get("source", "?")
            st.info(f"This run has no unlabeled images (method {method}, unlabeled source {source}).")
        elif state in ACTIVE:
            st.info("The unlabeled images appear once the run has loaded its data and drawn its GAN samples "
                    f"(now: {status.get('message') or status.get('stage') or state}).")
        else:
            st.info(f"This run ({state}) has no unlabeled images: `unlabeled.csv` is missing or damaged.")
        return
    train = readers.split(run, "train")
    pid_of = _pid_of(train)
    epochs = _epochs(run, history)
    late_from = _late_from(epochs)
    df = _table(run, pid_of, late_from)
    if df.empty:
        st.info("This run's `pseudo_labels.csv` holds no assignment: it is empty or damaged (the Runs page says "
                "what is wrong with the run directory).")
        return
    holdout = df["correct"].notna().any()
    real = train[~train["path"].isin(set(readers.unlabeled(run)["path"]))]
    _absent_notes(run, train, history)

    assigned = df[df["label"] >= 0]
    m = st.columns(6 if holdout else 5)
    m[0].metric("unlabeled images", f"{len(df):,}")
    m[1].metric("identities used", f"{assigned['pid'].nunique()} / {len(pid_of)}")
    m[2].metric("median cosine", f"{assigned['cos'].median():.3f}" if len(assigned) else "–")
    m[3].metric("median margin", _small(assigned["margin"].median()) if assigned["margin"].notna().any() else "–")
    m[4].metric("changed late", f"{int(df['late'].sum()):,}", help=f"last label change in epoch ≥ {late_from + 1}")
    if holdout:
        m[5].metric("label accuracy", f"{100 * df['correct'].mean():.1f}%",
                    help="share of assignments equal to the hidden true identity (holdout source)")
    if df["method_differs"].any():
        st.caption(f"The run's method ({method}) labels {int(df['method_differs'].sum()):,} images differently "
                   "from the center-based rule (argmax cosine to the class centers).")

    pseudo_views.collapse_warning(run)
    pseudo_views.usage_section(run, df, pid_of, holdout, method)
    pseudo_views.apply_usage_pick("gan-ids", {int(p) for p in assigned["pid"].dropna().unique()})
    view, per_page = _filters(df, holdout, epochs, late_from)
    _grid(run, view, per_page, holdout, pid_of)
    why = Why(run, df, real, history, pid_of, holdout, method)
    if st.session_state.pop("gan-why", False):
        _why_dialog(why, _image_number(len(df)))
    st.download_button("Download the assignment table (CSV)",
                       data=run.pseudo_labels.read_bytes,
                       file_name=f"{run.id}-pseudo_labels.csv", mime="text/csv", on_click="ignore",
                       key="gan-download")
    st.divider()
    _selected(why)
    st.divider()
    pseudo_views.data_map_section(run, df, holdout, _open_why)
    _curves(run)


main()
