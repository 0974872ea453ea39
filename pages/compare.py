"""Compare: a sweep as the CPL paper's Table 1 (rank-1 / mAP against the unlabeled-image count per method,
mean ± std over seeds, with and without re-ranking), and several runs side by side (``?run=A&run2=B``):
their final metrics, settings, distance distributions, ROC curves and training curves overlaid. Everything is read
from what the runs and the sweep wrote (results.csv, runs.csv, results.json, distances.npz, metrics.jsonl).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import charts, health, pseudo_views, readers, settings
from app.demo import only_demo
from app.safety import safe_run, safe_sweep
from cpl.data.formats import PROTOCOLS, protocol_of
from cpl.methods import needs_unlabeled
from cpl.runs.rundir import RunDir, list_runs
from cpl.runs.state import State
from cpl.runs.status import read_status
from cpl.sweep.tables import sweep_source, table_methods

# Epoch-record columns worth overlaying, with their titles; fractions are shown in percent.
CURVES = {
    "acc": ("Training accuracy", True), "loss": ("Training loss", False), "loss_ce": ("Cross-entropy", False),
    "loss_unlabeled": ("Unlabeled-image loss term", False), "pl_mean_conf": ("Mean pseudo-label confidence", False),
    "pl_changed_frac": ("Pseudo-labels changed per epoch", True), "pl_mean_margin": ("Mean margin to runner-up", False),
    "pl_acc": ("Pseudo-label accuracy (holdout)", True), "pl_true_mass": ("Mass on the true class (holdout)", True),
    "lr": ("Learning rate", False),
}


def sweep_section(root) -> None:
    st.header("Sweep: Table 1")
    folders = readers.sweep_folders(root)
    wanted = st.query_params.get("sweep")
    if wanted is not None and safe_sweep(root, wanted) is None:
        st.warning("Ignoring `?sweep=`: no sweep with that id.")
        wanted = None
    if not folders:
        st.info("No sweeps yet. On the **Launch** page choose *a sweep (Table 1 grid)*: methods × unlabeled-image "
                "counts × seeds, run one after the other.")
        return
    ids = [f.name for f in folders]
    sweep_id = st.selectbox("Sweep", ids, index=ids.index(wanted) if wanted in ids else 0, key="sweep")
    if st.query_params.get("sweep") != sweep_id:
        st.query_params["sweep"] = sweep_id
    folder = safe_sweep(root, sweep_id)
    if folder is None:
        return
    spec = readers.sweep_spec(folder)
    status = read_status(RunDir(folder))
    agg = readers.csv_file(folder / "results.csv")
    cells = readers.csv_file(folder / "runs.csv")
    done = int((cells["state"] == State.FINISHED).sum()) if "state" in cells else 0
    st.caption(f"{charts.state_label(status)} · {done}/{len(readers.sweep_cell_specs(folder))} cells finished · "
               f"{readers.executor_label(spec)} · mean ± std over seeds {', '.join(readers.spec_list(spec, 'seeds'))}"
               " · rank-1 and mAP in percent"
               + (" · fast dev run: numbers only show the pipeline works" if spec.get("fast_dev_run") else ""))
    if agg.empty:
        st.info("No cell has finished yet: the table fills in as cells finish (see **Runs**).")
        return
    if not {"method", "gan_images", "n", "rank1", "mAP"} <= set(agg.columns):
        st.warning(f"`{folder.name}/results.csv` is damaged (columns missing): run the sweep again to rewrite it.")
        return
    has_rr = "rr_rank1" in agg and agg["rr_rank1"].notna().any()
    rerank = st.toggle("With k-reciprocal re-ranking", key="rerank", disabled=not has_rr,
                       help="Zhong et al. CVPR 2017 (k1, k2, λ from the run's eval settings)")
    table = charts.table1_frame(agg, table_methods(spec), rerank=rerank and has_rr,
                                source=sweep_source(spec))
    st.dataframe(table, hide_index=True, width="stretch")
    suffix = " (re-ranked)" if rerank and has_rr else ""
    left, right = st.columns(2)
    r1, mp = ("rr_rank1", "rr_mAP") if rerank and has_rr else ("rank1", "mAP")
    left.plotly_chart(charts.table1_figure(agg, r1, f"rank-1{suffix}"), key="t1-rank1", width="stretch")
    right.plotly_chart(charts.table1_figure(agg, mp, f"mAP{suffix}"), key="t1-map", width="stretch")
    if "pl_acc" in agg and agg["pl_acc"].notna().any():
        st.markdown("**Pseudo-label accuracy** on the held-out images (last epoch, %)")
        pl = agg[agg["pl_acc"].notna()]
        st.dataframe(pd.DataFrame({
            "method": pl["method"], "unlabeled images": pl["gan_images"],
            "accuracy": [charts.mean_std(a, s if n > 1 else None) for a, s, n in zip(pl["pl_acc"], pl["pl_acc_std"],
                                                                                     pl["n"])],
            "mass on true class": [charts.mean_std(a, s if n > 1 else None) for a, s, n in
                                   zip(pl["pl_true_mass"], pl["pl_true_mass_std"], pl["n"])]}), hide_index=True)
    with st.expander(f"Cells ({len(cells)})"):
        st.dataframe(cells, hide_index=True, width="stretch", column_config={
            c: st.column_config.NumberColumn(c, format="%.2f") for c in ("rank1", "mAP", "rr_rank1", "rr_mAP",
                                                                          "pl_acc", "pl_true_mass", "pl_ids_used",
                                                                          "pl_top10", "pl_changed", "pl_nmi")})
    cells_diagnostics(root, folder)
    cols = st.columns(3)
    for col, name, mime in [(cols[0], "results.csv", "text/csv"), (cols[1], "runs.csv", "text/csv"),
                            (cols[2], "results.md", "text/markdown")]:
        path = folder / name
        if path.is_file():
            col.download_button(f"Download {name}", path.read_bytes(), file_name=f"{sweep_id}-{name}", mime=mime,
                                key=f"dl-{name}", icon=":material/download:")


def cells_diagnostics(root, folder) -> None:
    """The pseudo-labels of a sweep's cells: the last epoch's spread, stability and accuracy per cell, and the
    per-epoch curves overlaid."""
    runs = {f"{c.get('method')} · {c.get('gan_images')} · s{c.get('seed')}": (RunDir(root / c["run_id"]),
                                                                           readers.text(c.get("method")))
            for c in readers.sweep_cell_specs(folder)}
    table = pseudo_views.last_epoch_table(runs)
    if table.empty:
        return
    st.markdown("**Pseudo-labels of each cell** (last epoch that trained on unlabeled images)")
    st.dataframe(table, hide_index=True, width="stretch", column_config=pseudo_views.number_format(table))
    with st.expander("Pseudo-label diagnostics per epoch, cells overlaid"):
        pseudo_views.overlay_section(runs, "sweep-diag")


def _from_url(root) -> list[str]:
    """Run ids named by ``?run=`` and ``?run2=`` that are valid runs; a warning for each that is not."""
    picked = []
    for param in ("run", "run2"):
        value = st.query_params.get(param)
        if value is None:
            continue
        if safe_run(root, value) is None:
            st.warning(f"Ignoring `?{param}=`: no run with that id.")
        elif value not in picked:
            picked.append(value)
    return picked


def run_row(run: RunDir) -> dict:
    """A run's settings and final metrics; a field its damaged files do not hold is empty, and ``problem``
    says what is wrong (app/health.py)."""
    res = readers.results(run) or {}
    cfg = readers.config(run)
    rr = readers.as_dict(res.get("rerank"))
    train, unl = readers.as_dict(cfg.get("train")), readers.as_dict(cfg.get("unlabeled"))
    method = readers.text(train.get("method"))
    num = readers.number
    return {
        "run": run.id, "state": readers.text(read_status(run).get("state")),
        "problem": "; ".join(map(str, health.run_problems(run))), "method": method,
        "unlabeled": "none" if not needs_unlabeled(method)
        else f"{unl.get('source')} ({res.get('num_unlabeled', unl.get('num_images'))})",
        "epochs": num(train.get("epochs")), "λ": num(train.get("center_weight")), "α": num(train.get("center_alpha")),
        "backbone": readers.text(readers.as_dict(cfg.get("model")).get("backbone")),
        "weights": readers.weights_label(readers.run_facts(run)), "tricks": readers.tricks_label(run),
        "remedies": readers.remedies_label(run),
        "control": readers.controls_label(run), "seed": num(cfg.get("seed")),
        "rank-1": num(res.get("rank1")), "rank-5": num(res.get("rank5")), "rank-10": num(res.get("rank10")),
        "mAP": num(res.get("mAP")), "mINP": num(res.get("mINP")), "rank-1 RR": num(rr.get("rank1")),
        "mAP RR": num(rr.get("mAP")), "train time (s)": num(res.get("train_time_s")),
        "device": readers.text(res.get("device")), "protocol": protocol_of(res),
    }


def distances_section(selected: list[RunDir]) -> None:
    """The runs' distance distributions (matching vs non-matching pairs) and ROC curves overlaid (distances.npz)."""
    runs = {r.id: d for r in selected if "auc" in (d := readers.distances(r))}
    if not runs:
        return
    left, right = st.columns(2)
    left.plotly_chart(charts.distance_figure(runs), key="compare-distances", width="stretch")
    right.plotly_chart(charts.roc_figure(runs), key="compare-roc", width="stretch")
    missing = [r.id for r in selected if r.id not in runs]
    if missing:
        st.caption(f"No distances.npz (written by the evaluate stage): {', '.join(missing)}")


def runs_section(root) -> None:
    st.header("Runs side by side")
    runs = list_runs(root)
    if not runs:
        st.info("No runs yet.")
        return
    ids = [r.id for r in runs]
    from_url, first_start = _from_url(root), only_demo(root)  # the demo's runs: CPL against its control
    default = from_url or [r.id for r in first_start.values()] \
        or [r.id for r in runs if (readers.results(r) or {}).get("rank1") is not None][:2]
    if first_start and not from_url:
        st.caption("The first-start demo: CPL on DCGAN images and its reference, the baseline on every labeled image; "
                   "CPL on held-out real images (its pseudo-label accuracy is scored) and its reference, the baseline "
                   "on the same labeled rows (the labeled-only control). Each CPL run takes as many optimizer steps "
                   "as its reference (its epochs count the labeled images: step-matched), so a CPL run minus its "
                   "reference is what its unlabeled images and their pseudo-labels did.")
    chosen = st.multiselect("Runs", ids, default=[i for i in default if i in ids], key="compare-runs",
                            help="The first two are kept in the link as ?run= and ?run2=.")
    for param, value in zip(("run", "run2"), chosen[:2] + [None, None]):
        if value is None:
            st.query_params.pop(param, None)
        elif st.query_params.get(param) != value:
            st.query_params[param] = value
    selected = [r for r in (safe_run(root, i) for i in chosen) if r is not None]
    if not selected:
        st.caption("Choose runs to compare.")
        return
    table = pd.DataFrame([run_row(r) for r in selected])
    protocols = sorted({p for p in table["protocol"] if p})
    if len(protocols) > 1:
        st.warning("These runs were evaluated under different protocols (" + "; ".join(
            f"**{p}**: {PROTOCOLS[p].description if p in PROTOCOLS else 'unknown'}" for p in protocols)
            + "): their rank-k and mAP are not comparable across the protocol column.", icon=":material/warning:")
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        c: st.column_config.NumberColumn(c, format="%.2f") for c in ("rank-1", "rank-5", "rank-10", "mAP", "mINP",
                                                                      "rank-1 RR", "mAP RR")}
        | {"λ": st.column_config.NumberColumn("λ", format="%.0e"),
           "train time (s)": st.column_config.NumberColumn("train time (s)", format="%.0f")})
    st.download_button("Download this table (CSV)", table.to_csv(index=False).encode(), file_name="runs-compared.csv",
                       mime="text/csv", key="dl-compare", icon=":material/download:")
    distances_section(selected)
    series = {r.id: readers.metrics(r, "epoch") for r in selected}
    available = [c for c in CURVES if any(c in df.columns for df in series.values())]
    if not available:
        st.caption("No epoch records yet.")
        return
    default_curves = [c for c in ("acc", "pl_mean_conf", "loss", "pl_acc") if c in available][:4]
    shown = st.multiselect("Curves", available, default=default_curves, format_func=lambda c: CURVES[c][0],
                           key="compare-curves")
    cols = st.columns(2)
    for i, c in enumerate(shown):
        title, percent = CURVES[c]
        cols[i % 2].plotly_chart(charts.overlay_figure(series, c, title, percent=percent), key=f"overlay-{c}",
                                 width="stretch")
    diagnostics = {r.id: (r, readers.text(readers.run_facts(r).get("method"))) for r in selected}
    table = pseudo_views.last_epoch_table(diagnostics)
    st.markdown("**Pseudo-labels** (last epoch that trained on unlabeled images)")
    if not table.empty:
        st.dataframe(table, hide_index=True, width="stretch", column_config=pseudo_views.number_format(table))
    pseudo_views.overlay_section(diagnostics, "compare-diag")


st.title("Compare")
root = settings.runs_root()
sweep_section(root)
st.divider()
runs_section(root)
