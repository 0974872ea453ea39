"""Runs: every run and sweep with its live state; for the selected run (``?run=ID``) its curves, log tail,
results, and the actions cancel / resume / delete.

State comes from status.json through :func:`cpl.runs.status.read_status`, so a run whose process died
shows as failed with its error. A damaged run directory (app/health.py) is marked in the table's ``problem``
column and above its own view, whose parts that cannot be drawn from the damaged files are left out. While
something is active the views refresh every 2 s in fragments; refreshing the page or restarting the app
re-attaches to runs, which live in their own processes.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pandas as pd
import streamlit as st

from app import charts, health, pseudo_views, readers, settings
from app.launching import start_sweep
from app.nav import select_run
from app.safety import safe_sweep
from cpl.data.formats import PROTOCOLS, protocol_of
from cpl.data.unlabeled_sources import DRAWN, NONE, SOURCES
from cpl.methods import needs_unlabeled
from cpl.remedy_table import PLAIN
from cpl.runs.launch import delete, launch_cancel, launch_resume
from cpl.runs.rundir import RunDir
from cpl.runs.state import ACTIVE, RESUMABLE, TRAINED, QueueReason, Stage, State, parse
from cpl.runs.status import elapsed_s, read_status

REFRESH_S = 2.0
LOG_TAIL_BYTES = 12_000
TABLE_KEY = "runs-table"


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def _when(ts) -> str:
    ts = readers.number(ts)
    if ts is None:
        return "–"
    try:
        return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, OSError, ValueError):  # a hand-edited time far outside the calendar
        return "–"


def _unlabeled(run: RunDir, method: str | None) -> str:
    unl = readers.as_dict(readers.config(run).get("unlabeled"))
    source = unl.get("source")
    if not needs_unlabeled(method) or not source or source == NONE:
        return NONE
    count = readers.number(unl.get("num_images"))
    drawn = source in SOURCES and SOURCES[source].num_images == DRAWN
    return f"{source} × {int(count):,}" if drawn and count is not None else str(source)


def _weights_text(w: dict | None) -> str:
    if not isinstance(w, dict):
        return "not recorded"
    if not w.get("pretrained"):
        return "**random init**"
    return f"ImageNet, {w.get('source')} (`{Path(w.get('file') or '').name}`, sha256 {str(w.get('sha256'))[:12]})"


def _stray_row(rec: dict) -> dict:
    """A runs-root entry that cannot be read as a run (a file, an unreadable folder): its name and problem."""
    return {"run": rec["run"], "state": State.DAMAGED, "problem": "; ".join(rec["problems"]), "progress": 0.0}


def runs_frame(root) -> pd.DataFrame:
    """The runs table as shown: one row per run, newest first, then the entries that are not readable runs."""
    table = readers.runs_table(root)
    if table.empty:
        return table
    rows = []
    for rec in table.to_dict("records"):
        if rec["state"] == State.DAMAGED:
            rows.append(_stray_row(rec))
            continue
        run = RunDir(root / rec["run"])
        status = read_status(run)
        rows.append({
            "run": rec["run"], "state": charts.state_label(status), "problem": "; ".join(rec["problems"]),
            "stage": _text(rec["stage"]),
            "progress": rec["progress"], "ETA": charts.duration(rec["eta_s"]) if status.get("state") in ACTIVE else "",
            "device": _text(rec["device"]), "host": _text(rec["host"]), "method": _text(rec["method"]),
            "unlabeled": _unlabeled(run, rec["method"]), "backbone": _text(rec["backbone"]),
            "weights": rec["weights"], "tricks": rec["tricks"], "remedies": rec["remedies"], "GAN": rec["gan"],
            "rank-1": rec["rank1"], "mAP": rec["mAP"],
            "rank-1 RR": rec["rr_rank1"], "mAP RR": rec["rr_mAP"], "sweep": _text(rec["sweep"]),
            "created": _when(rec["created"]), "message": _text(rec["message"]),
        })
    frame = pd.DataFrame(rows)
    for col in ("rank-1", "mAP", "rank-1 RR", "mAP RR"):  # None -> NaN: an empty cell, not the word "None"
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    text_cols = [c for c in frame.columns if frame[c].dtype == object]
    frame[text_cols] = frame[text_cols].fillna("")  # the columns a stray entry's row has no value for
    return frame


COLUMNS = {
    "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
    "weights": st.column_config.TextColumn("weights", help="what the backbone started from (run.json weights)"),
    "tricks": st.column_config.TextColumn("tricks", help="strong-baseline (bag of tricks) options the run used; "
                                          "none = the CPL paper's setup (docs/methods.md)"),
    "remedies": st.column_config.TextColumn("remedies", help="the remedies for hub collapse the run used; none = "
                                            "the published pseudo-labels (docs/methods.md, “Remedies”)"),
    "GAN": st.column_config.TextColumn("GAN", help="the DCGAN's Fréchet distance to the real images and the "
                                                   "real-vs-real floor (GAN page)"),
    "rank-1": st.column_config.NumberColumn("rank-1", format="%.1f", help="rank-1 accuracy (%), no re-ranking"),
    "mAP": st.column_config.NumberColumn("mAP", format="%.1f", help="mean average precision (%)"),
    "rank-1 RR": st.column_config.NumberColumn("rank-1 RR", format="%.1f", help="with k-reciprocal re-ranking"),
    "mAP RR": st.column_config.NumberColumn("mAP RR", format="%.1f", help="with k-reciprocal re-ranking"),
    "message": st.column_config.TextColumn("message", width="large"),
    "problem": st.column_config.TextColumn("problem", help="what is wrong with the run directory (empty when "
                                                           "nothing is): a damaged, missing or unreadable file"),
    "host": st.column_config.TextColumn("host", help="the machine the run's process ran on (status.json)"),
    "attempts": st.column_config.NumberColumn("attempts", help="Ray sweep cells: how many times a Ray task started "
                                                               "the cell (a retry resumes from its last checkpoint)"),
}


# The runs table's columns, left to right: what a user looks for first (which run, its state, its results),
# then whatever else the frame has, then the where-and-how details that take width (problem text, host).
FIRST = ("run", "state", "rank-1", "mAP", "rank-1 RR", "mAP RR", "method", "progress")
LAST = ("problem", "device", "host", "message")


def column_order(frame: pd.DataFrame) -> list[str]:
    """The columns of the runs table in display order: :data:`FIRST`, the others as the frame has them,
    :data:`LAST`."""
    edges = set(FIRST) | set(LAST)
    middle = [c for c in frame.columns if c not in edges]
    return [c for c in FIRST if c in frame] + middle + [c for c in LAST if c in frame]


def _selectable(frame: pd.DataFrame) -> list[str | None]:
    """Per table row, the run id a click selects; None for an entry that is not a readable run."""
    return [None if state == State.DAMAGED else run for run, state in zip(frame["run"], frame["state"])]


def _select_from_table() -> None:
    """A row clicked in the runs table becomes the selected run (``?run=``) before the picker is drawn."""
    event = st.session_state.get(TABLE_KEY)
    ids = st.session_state.get(f"{TABLE_KEY}-ids") or []
    rows = list(getattr(getattr(event, "selection", None), "rows", []) or [])
    if not rows or rows[0] >= len(ids) or ids[rows[0]] is None:
        return
    chosen = ids[rows[0]]
    if chosen != st.session_state.get(f"{TABLE_KEY}-applied"):
        st.session_state[f"{TABLE_KEY}-applied"] = chosen
        st.query_params["run"] = chosen  # the sidebar picker follows ?run= (app.nav.select_run)


def runs_section(root) -> None:
    """The runs table, live while something is active."""
    frame = runs_frame(root)
    if frame.empty:
        st.info("No runs yet. Start one on the **Launch** page.")
        return
    active = frame["state"].str.contains("running|queued|starting").any()

    @st.fragment(run_every=REFRESH_S if active else None)
    def table() -> None:
        current = runs_frame(root)
        counts = current["state"].value_counts()
        damaged = int((current["problem"] != "").sum())
        st.caption(" · ".join(f"{n} {state}" for state, n in counts.items())
                   + (f" · **{damaged} with problems** (see the problem column)" if damaged else "")
                   + f" — runs folder `{settings.shown(root)}`")
        ids = _selectable(current)
        st.session_state[f"{TABLE_KEY}-ids"] = ids
        st.dataframe(current, hide_index=True, column_config=COLUMNS, column_order=column_order(current),
                     on_select="rerun",
                     selection_mode="single-row", key=TABLE_KEY, width="stretch",
                     height=min(36 * (len(current) + 1) + 4, 420))
        now_active = current["state"].str.contains("running|queued|starting").any()
        picked = st.session_state.get(TABLE_KEY)
        rows = list(getattr(getattr(picked, "selection", None), "rows", []) or [])
        chosen = ids[rows[0]] if rows and rows[0] < len(ids) else None
        if now_active != active or (chosen is not None and chosen != st.session_state.get(f"{TABLE_KEY}-applied")):
            st.rerun()  # a run changed state or a row was picked: redraw the whole page

    table()


# ---------------------------------------------------------------------------------------------- one run


def _log_tail(run: RunDir, max_bytes: int = LOG_TAIL_BYTES) -> str:
    try:
        with open(run.log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return text.split("\n", 1)[1] if size > max_bytes and "\n" in text else text


def _config_text(run: RunDir) -> str:
    """config.yaml as text for display; "" when it is missing or unreadable."""
    try:
        return run.config.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def header(run: RunDir, status: dict) -> None:
    state = status.get("state")
    cols = st.columns([2, 1, 1, 1])
    label, color, icon = charts.state_badge(status)
    with cols[0]:
        st.badge(label, color=color, icon=icon)
    cols[1].metric("stage", status.get("stage") or "–")
    epochs = readers.number(status.get("epochs"))
    stage = parse(Stage, status.get("stage"))
    training = stage == Stage.TRAIN or stage in TRAINED  # epoch is 0-based in status.json
    epoch = int(readers.number(status.get("epoch")) or 0) + 1
    cols[2].metric("epoch", f"{epoch}/{int(epochs)}" if epochs and training else "–")
    cols[3].metric("device", str(status.get("device") or "–"))
    progress = readers.fraction(status.get("progress"))
    eta = f" · about {charts.duration(status.get('eta_s'))} left" if state in ACTIVE and status.get("eta_s") else ""
    st.progress(progress, text=f"{100 * progress:.0f}% — {status.get('message') or ''}{eta}")
    if state == State.FAILED:
        st.error(f"**Failed:** {status.get('error') or 'unknown error'}"
                 + (f"\n\n{status.get('hint')}" if status.get("hint") else ""))
    elif state == State.QUEUED and parse(QueueReason, status.get("queue_reason")) == QueueReason.DEVICE:
        st.info(f"Queued: waiting for {status.get('waiting_for') or 'its device'} (another run holds it). "
                "It starts by itself when the device is free.")
    started, finished = readers.number(status.get("started")), readers.number(status.get("finished"))
    if started:
        took = elapsed_s(status)  # to the clock while it runs: a silent stage must not stop it
        st.caption(f"started {_when(started)} · {'ran' if finished else 'running for'} {charts.duration(took)}"
                   + (f" · pid {status.get('pid')} on {status.get('host')}" if state in ACTIVE else ""))


def actions(run: RunDir, status: dict) -> None:
    state = status.get("state")
    cols = st.columns([1, 1, 1, 3])
    if cols[0].button("Cancel run", key="cancel", disabled=state not in ACTIVE, icon=":material/stop_circle:",
                      help="Stop gracefully (the run finishes its iteration and saves), then kill its process group "
                           "after 30 s. A cancelled run can be resumed."):
        launch_cancel(run)
        st.toast(f"Cancelling {run.id}…")
    if cols[1].button("Resume run", key="resume", disabled=state not in RESUMABLE,
                      icon=":material/play_circle:", help="Continue from the last checkpoint in the background."):
        nproc = int(readers.number((run.read_json("launch.json") or {}).get("nproc")) or 1)
        launch_resume(run, nproc=nproc)
        st.toast(f"Resuming {run.id}")
        st.rerun()
    with cols[2].popover("Delete run", icon=":material/delete:", disabled=state in ACTIVE,
                         help="Cancel a run before deleting it."):
        st.markdown(f"Delete **{run.id}** and all its files (checkpoints, features, results)? This cannot be undone."
                    " Shared GAN samples in the cache stay.")
        if st.button("Delete permanently", key="delete-confirm", type="primary"):
            try:
                delete(run)
            except RuntimeError as exc:
                st.error(str(exc))
            else:
                st.query_params.pop("run", None)
                st.session_state.pop("select-run", None)
                st.session_state.pop(f"{TABLE_KEY}-applied", None)
                st.toast(f"Deleted {run.id}")
                st.rerun()


def results_block(run: RunDir) -> None:
    res = readers.results(run)
    if not res:
        return
    rr = readers.as_dict(res.get("rerank"))
    keys = [("rank1", "rank-1"), ("rank5", "rank-5"), ("rank10", "rank-10"), ("mAP", "mAP"), ("mINP", "mINP")]
    cols = st.columns(len(keys))
    for col, (k, label) in zip(cols, keys):
        value, reranked = readers.number(res.get(k)), readers.number(rr.get(k))
        if value is not None:
            change = reranked - value if reranked is not None else None
            moved = change is not None and abs(change) >= 0.05
            delta = None if change is None else (f"{change:+.1f} with re-ranking" if moved
                                                 else "same with re-ranking")
            col.metric(f"{label} (%)", f"{value:.1f}", delta=delta, delta_color="normal" if moved else "off",
                       delta_arrow="auto" if moved else "off")
    unlabeled = readers.number(res.get("num_unlabeled")) or 0
    facts = [f"method **{res.get('method')}**", f"{res.get('num_classes', '?')} training identities",
             f"{int(unlabeled):,} unlabeled images ({res.get('unlabeled_source', 'none')})",
             f"{res.get('epochs')} epochs in {charts.duration(readers.number(res.get('train_time_s')))}",
             f"{res.get('num_valid_queries', '?')} queries ({protocol_of(res)} protocol)",
             f"backbone {res.get('backbone', '?')}",
             f"weights: {_weights_text(res.get('weights'))}"]
    st.caption(" · ".join(facts))


def inspect_links(run: RunDir) -> None:
    cols = st.columns(3)
    links = [("pages/gan.py", "GAN samples & pseudo-labels", ":material/grid_view:", run.pseudo_labels),
             ("pages/embedding.py", "Embedding", ":material/scatter_plot:", run.embedding),
             ("pages/retrieval.py", "Retrieval", ":material/image_search:", run.retrieval)]
    for col, (page, label, icon, needs) in zip(cols, links):
        col.page_link(page, label=label, icon=icon, query_params={"run": run.id}, disabled=not needs.is_file(),
                      help=None if needs.is_file() else "written when the run reaches its evaluation stage")


def curves(run: RunDir) -> None:
    iters, epochs, gan = readers.metrics(run, "iter"), readers.metrics(run, "epoch"), readers.metrics(run, "gan")
    has_pl = any(c in epochs.columns for c in ("pl_mean_conf", "pl_changed"))
    names = ["Loss & accuracy", "Pseudo-labels", "GAN", "Log", "Config & data"]
    tabs = dict(zip(names, st.tabs(names)))
    with tabs["Loss & accuracy"]:
        if iters.empty and epochs.empty:
            st.caption("No training records yet: curves appear with the first logged iteration.")
        else:
            left, right = st.columns(2)
            left.plotly_chart(charts.loss_figure(iters, epochs), key="loss-fig", width="stretch")
            right.plotly_chart(charts.accuracy_figure(iters, epochs), key="acc-fig", width="stretch")
    with tabs["Pseudo-labels"]:
        pseudo_views.runs_tab(run, readers.text(readers.run_facts(run).get("method")), expected=has_pl)
        if not has_pl:
            st.caption("No pseudo-label statistics: the method uses no unlabeled images, or no epoch has ended yet.")
        else:
            st.plotly_chart(charts.pseudo_label_figure(epochs), key="pl-fig", width="stretch")
            st.caption("Bars: unlabeled images whose label differs from the previous epoch. Confidence: cosine to the "
                       "assigned center (center-based methods) or target probability; margin: to the runner-up. "
                       + ("Accuracy: share of held-out images given their hidden true identity."
                          if "pl_acc" in epochs.columns else ""))
    with tabs["GAN"]:
        if gan.empty:
            st.caption("No DCGAN training records: the run uses no GAN, or took a trained DCGAN from the cache.")
        else:
            st.plotly_chart(charts.gan_figure(gan), key="gan-fig", width="stretch")
    with tabs["Log"]:
        tail = _log_tail(run)
        st.code(tail or "(empty log)", language="text", height=360)
    with tabs["Config & data"]:
        left, right = st.columns(2)
        info = readers.dataset_info(run)
        if info:
            left.markdown(f"**Dataset** `{info.get('root')}` — {info.get('num_classes')} training identities")
            protocol = protocol_of(readers.results(run)) or readers.text(info.get("protocol"))
            if protocol:
                left.caption(f"Evaluation protocol: **{protocol}**"
                             + (f" — {PROTOCOLS[protocol].description}" if protocol in PROTOCOLS else ""))
            splits = {k: v for k, v in readers.as_dict(info.get("splits")).items() if isinstance(v, dict)}
            left.dataframe(pd.DataFrame(splits).T.reset_index(names="split"), hide_index=True)
            warnings = info.get("warnings")
            for w in warnings if isinstance(warnings, list) else []:
                left.warning(str(w))
        right.code(_config_text(run), language="yaml", height=360)


def run_section(run: RunDir) -> None:
    status = read_status(run)
    active = status.get("state") in ACTIVE
    st.subheader(run.id)
    facts = readers.run_facts(run)
    if facts.get("sweep"):
        st.caption(f"cell of sweep `{facts['sweep']}`")

    @st.fragment(run_every=REFRESH_S if active else None)
    def live() -> None:
        now = read_status(run)
        if (now.get("state") in ACTIVE) != active:
            st.rerun()  # started or ended: redraw with (or without) the timer
        problems = health.run_problems(run)
        if problems:
            st.warning("**This run directory is damaged**: " + "; ".join(map(str, problems)), icon=":material/warning:")
        for part, draw in (("status", header), ("actions", actions)):
            with health.drawn_unless_damaged(problems, part):
                draw(run, now)
        for part, draw in (("results", results_block), ("links", inspect_links), ("curves", curves)):
            with health.drawn_unless_damaged(problems, part):
                draw(run)

    live()


# ---------------------------------------------------------------------------------------------- sweeps


def sweeps_section(root) -> None:
    folders = readers.sweep_folders(root)
    if not folders:
        return
    st.header("Sweeps")
    wanted = st.query_params.get("sweep")
    if wanted is not None and safe_sweep(root, wanted) is None:
        st.warning("Ignoring `?sweep=`: no sweep with that id.")
        wanted = None
    active = any(read_status(RunDir(f)).get("state") in ACTIVE for f in folders)

    @st.fragment(run_every=REFRESH_S if active else None)
    def live() -> None:
        for folder in folders:
            status = read_status(RunDir(folder))
            cells = readers.sweep_cells(folder, root)
            done = int((cells["state"] == State.FINISHED).sum()) if not cells.empty else 0
            title = f"**{folder.name}** · {charts.state_label(status)} · {done}/{len(cells)} cells finished"
            with st.expander(title, expanded=folder.name == wanted or status.get("state") in ACTIVE):
                sweep_body(root, folder, status, cells)

    live()


def sweep_body(root, folder, status: dict, cells: pd.DataFrame) -> None:
    spec = readers.sweep_spec(folder)
    grid = {key: ", ".join(readers.spec_list(spec, key)) for key in ("methods", "gan_images", "seeds")}
    stored = spec.get("variants") if isinstance(spec.get("variants"), list) else []
    variants = [str(v.get("name")) for v in stored if isinstance(v, dict)]
    st.caption(f"methods {grid['methods']} · unlabeled images {grid['gan_images']} · seeds {grid['seeds']}"
               + (f" · remedy variants {', '.join(variants)}" if set(variants) - {PLAIN} else "")
               + f" · {readers.executor_label(spec)}" + (" · fast dev run" if spec.get("fast_dev_run") else ""))
    st.progress(readers.fraction(status.get("progress")), text=str(status.get("message") or ""))
    if status.get("state") == State.FAILED and status.get("error"):
        st.error(status["error"])
    if not cells.empty:
        shown = cells.assign(state=[charts.state_label({"state": s}) for s in cells["state"]])
        st.dataframe(shown, hide_index=True, column_config=COLUMNS | {
            "rr_rank1": st.column_config.NumberColumn("rank-1 RR", format="%.1f"),
            "rr_mAP": st.column_config.NumberColumn("mAP RR", format="%.1f"),
            "rank1": st.column_config.NumberColumn("rank-1", format="%.1f"),
            "mAP": st.column_config.NumberColumn("mAP", format="%.1f")}, width="stretch")
    cols = st.columns([1, 1, 1, 3])
    active = status.get("state") in ACTIVE
    if cols[0].button("Cancel sweep", key=f"cancel-sweep-{folder.name}", disabled=not active,
                      icon=":material/stop_circle:"):
        launch_cancel(RunDir(folder))
        st.toast(f"Cancelling sweep {folder.name}…")
    if cols[1].button("Resume sweep", key=f"resume-sweep-{folder.name}",
                      disabled=active or status.get("state") == State.FINISHED, icon=":material/play_circle:",
                      help="Run the unfinished cells; finished ones are kept."):
        start_sweep(root, folder)
        st.rerun()
    cols[2].page_link("pages/compare.py", label="Table 1 view", icon=":material/table_chart:",
                      query_params={"sweep": folder.name})
    md = folder / "results.md"
    if md.is_file():
        st.markdown(md.read_text())


# ---------------------------------------------------------------------------------------------- page

st.title("Runs")
root = settings.runs_root()
_select_from_table()
runs_section(root)
run = select_run("run", "Run")
if run is not None:
    st.divider()
    run_section(run)
sweeps_section(root)
