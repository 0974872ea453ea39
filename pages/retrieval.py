"""Retrieval: a query's top-k gallery under one run (and a second one side by side), or an uploaded image.

Reads ``retrieval.npz`` (index/dist/ap/first_match and the re-ranked rr_* arrays), ``features/query.csv``,
``features/gallery.csv``, ``distances.npz`` and ``results.json``. Queries are browsed worst first, best first or
by file, filtered by identity or camera (``?order=&pid=&cam=`` in the URL). An upload is validated here (type
sniffed, size and pixel limits, PIL only) and ranked by a ``cpl query`` subprocess; the ranked-list sheet and the
activation maps are written by ``cpl visrank`` / ``cpl actmap`` subprocesses: the network never runs in the app.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app import charts, readers, settings
from app.gallery import BLUE, GREEN, GREY, NEUTRAL, RED, Card, card_image, grid
from app.nav import run_page
from app.safety import safe_run
from cpl.data.formats import LEAVE_ONE_OUT, protocol_of
from cpl.data.images import UploadError, decode_upload
from cpl.runs.launch import cpl_command
from cpl.runs.rundir import RunDir, list_runs
from cpl.runs.status import ACTIVE, read_status
from cpl.views.activation import actmap_path
from cpl.views.order import ORDERS, match_rank_text, query_order
from cpl.views.sheet import sheet_path

MODES = ("Browse queries", "By query number", "Upload an image")
UPLOAD_TYPES = ["jpg", "jpeg", "png", "bmp", "webp"]
QUERY_TIMEOUT_S = 300
ACTMAP_TOPK = 5


def _ap_text(ap: float) -> str:
    return "no valid match in the gallery" if np.isnan(ap) else f"AP {100 * ap:.1f}%"


def _verdict(q: pd.Series, g: pd.Series, protocol: str) -> tuple[str, str]:
    """(border colour, mark) of gallery image ``g`` for query ``q`` under the run's protocol (cross-camera:
    Market-1501; leave-one-out: only the query image itself is ignored)."""
    if g.pid == q.pid:
        if protocol == LEAVE_ONE_OUT and g.path == q.path:
            return GREY, "the query itself, ignored"
        if protocol != LEAVE_ONE_OUT and g.camid == q.camid:
            return GREY, "same cam, ignored"
        return GREEN, ":green[✓]"
    if g.pid == -1:
        return GREY, "junk, ignored"
    return RED, ":red[✗ distractor]" if g.pid == 0 else ":red[✗]"


def _ranked(ret: dict, rerank: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(index [Q, k], dist [Q, k], ap [Q]) of the plain or re-ranked lists; the flag says which it is."""
    if rerank and "rr_index" in ret:
        return ret["rr_index"], ret["rr_dist"], ret["rr_ap"], True
    return ret["index"], ret["dist"], ret["ap"], False


def _result_cards(ret: dict, qi: int, topk: int, rerank: bool, query: pd.DataFrame,
                  gallery: pd.DataFrame, protocol: str) -> tuple[list[Card], float, bool]:
    index, dist, ap, reranked = _ranked(ret, rerank)
    q = query.iloc[qi]
    cards = []
    for rank, (g_row, d) in enumerate(zip(index[qi, :topk], dist[qi, :topk]), start=1):
        g = gallery.iloc[int(g_row)]
        colour, mark = _verdict(q, g, protocol)
        cards.append(Card(g.path, f"**{rank}** · d {d:.3f}  \npid {g.pid} · cam {g.camid} {mark}", colour))
    return cards, float(ap[qi]), reranked


def _same_dataset(a: RunDir, b: RunDir) -> bool:
    """Whether two runs ranked the same query and gallery images (so a query index means the same image)."""
    cols = ["path", "pid", "camid"]
    for name in ("query", "gallery"):
        x, y = readers.split(a, name), readers.split(b, name)
        if x.empty or y.empty or not x[cols].equals(y[cols]):
            return False
    return True


def _second_run(run: RunDir) -> RunDir | None:
    """The comparison run from ``?run2=`` / the sidebar picker, validated like ``?run=``."""
    root = settings.runs_root()
    others = [r.id for r in list_runs(root) if r.id != run.id and r.retrieval.is_file()]
    wanted = st.query_params.get("run2")
    if wanted is not None and (safe_run(root, wanted) is None or wanted not in others):
        st.sidebar.warning("Ignoring `?run2=`: no other finished run with that id.")
        wanted = None
    options = ["none", *others]
    choice = st.sidebar.selectbox("Compare with", options, index=options.index(wanted) if wanted else 0,
                                  key="select-run2", help="Show the same query under a second run (e.g. baseline)")
    if choice == "none":
        st.query_params.pop("run2", None)
        return None
    if st.query_params.get("run2") != choice:
        st.query_params["run2"] = choice
    return safe_run(root, choice)


def _pick_query(query: pd.DataFrame, ap: np.ndarray, first: np.ndarray | None, lists: str) -> int | None:
    """The chosen query row (None for the upload mode), kept in ``?q=``.

    The picker's labels carry each query's AP and first-match rank under the lists shown (``lists``: "plain" or
    "rr"); its key names the lists too, so toggling re-ranking draws it anew, labelled with the other APs and
    still on the query of ``?q=`` (a picker keeps its first labels for as long as its key lives)."""
    n = len(query)
    url_q = st.query_params.get("q", "")
    from_url = int(url_q) if url_q.isdigit() and int(url_q) < n else None
    by_number = from_url is not None and st.query_params.get("order") not in ORDERS
    mode = st.radio("Pick a query", MODES, horizontal=True, key="ret-mode", index=1 if by_number else 0)
    if mode == "Upload an image":
        return None
    if mode == MODES[0]:
        qi = _browse(query, ap, first, from_url, lists)
    else:
        for param in ("order", "pid", "cam"):
            st.query_params.pop(param, None)
        qi = st.number_input(f"Query number (0–{n - 1})", 0, n - 1, value=from_url or 0, key="ret-number")
    qi = int(qi)
    if st.query_params.get("q") != str(qi):
        st.query_params["q"] = str(qi)
    return qi


# ---------------------------------------------------------------------------------------------- browsing order


def _url_int(param: str, allowed: list[int] | None = None) -> int | None:
    """``?param=`` as an int, when it is one (and among ``allowed`` when given); None otherwise."""
    raw = st.query_params.get(param, "")
    value = int(raw) if raw.lstrip("-").isdigit() and len(raw) < 12 else None
    return value if allowed is None or value in allowed else None


def _filter(where, label: str, param: str, values: pd.Series, key: str) -> int | None:
    """An "all / one value" picker synced with ``?param=``; the chosen value, None for all."""
    options = sorted(int(v) for v in values.unique())
    wanted = _url_int(param, options)
    choice = where.selectbox(label, [None, *options], index=0 if wanted is None else options.index(wanted) + 1,
                             format_func=lambda v: "all" if v is None else str(v), key=key)
    if choice is None:
        st.query_params.pop(param, None)
    elif st.query_params.get(param) != str(choice):
        st.query_params[param] = str(choice)
    return choice


def _browse(query: pd.DataFrame, ap: np.ndarray, first: np.ndarray | None, from_url: int | None, lists: str) -> int:
    """Queries worst first / best first / by file, one identity or camera; the order and filters in the URL;
    ``lists`` ("plain" or "rr") names the lists the labels describe (see :func:`_pick_query`)."""
    c1, c2, c3 = st.columns([2, 1, 1])
    keys = list(ORDERS)
    url_order = st.query_params.get("order")
    order = c1.selectbox("Order", keys, index=keys.index(url_order) if url_order in keys else 0,
                         format_func=ORDERS.get, key="ret-order",
                         help="Worst first: lowest AP first, and among equal APs the latest first true match "
                              "(fast-reid's order). Queries without a true match in the gallery come last.")
    if st.query_params.get("order") != order:
        st.query_params["order"] = order
    pid = _filter(c2, "Identity (pid)", "pid", query.pid, "ret-filter-pid")
    cam = _filter(c3, "Camera", "cam", query.camid, "ret-filter-cam")
    rows = query_order(ap, first, order, pids=query.pid.to_numpy(), camids=query.camid.to_numpy(), pid=pid,
                       camid=cam).tolist()
    if not rows:
        st.info("No query of that identity was taken by that camera.")
        st.stop()

    def label(i: int) -> str:
        rank = None if first is None else int(first[i])
        return f"q{i} · pid {query.pid.iat[i]} · cam {query.camid.iat[i]} · {match_rank_text(float(ap[i]), rank)}"

    return st.selectbox(f"Query ({len(rows)} · {ORDERS[order]})", rows, format_func=label, key=f"ret-browse-{lists}",
                        index=rows.index(from_url) if from_url in rows else 0)


def _show_lists(run: RunDir, run2: RunDir | None, ret: dict, qi: int, topk: int, rerank: bool,
                query: pd.DataFrame, gallery: pd.DataFrame) -> None:
    q = query.iloc[qi]
    left, right = st.columns([1, 7])
    with left:
        data = card_image(run, Card(q.path, "", BLUE), max_side=192)
        if data is None:
            st.warning("The query image cannot be shown (missing, or outside the allowed folders).")
        else:
            st.image(data, caption=f"query q{qi} · pid {q.pid} · cam {q.camid}", width="stretch")
    runs = [(run, ret)]
    if run2 is not None:
        runs.append((run2, readers.retrieval(run2)))
    with right:
        cols = st.columns(len(runs))
        for col, (r, rr) in zip(cols, runs):
            with col:
                cards, ap, reranked = _result_cards(rr, qi, topk, rerank, query, gallery,
                                                    protocol_of(readers.results(r)))
                method = readers.run_facts(r).get("method") or "?"
                st.markdown(f"**{r.id}** ({method}) · **{_ap_text(ap)}**"
                            + (" · re-ranked" if reranked else (" · not re-ranked (the run has no re-ranked lists)"
                                                                if rerank else "")))
                shown = grid(r, cards, columns=10 if len(runs) == 1 else 5)
                if shown < len(cards):
                    st.warning(f"{len(cards) - shown} gallery images could not be shown.")
    if protocol_of(readers.results(run)) == LEAVE_ONE_OUT:
        match, ignored = ("another image of the same identity", "the query image itself, which the leave-one-out "
                          "protocol ignores (the dataset has no cameras)")
    else:
        match, ignored = ("same identity from another camera", "same identity and camera, which the Market-1501 "
                          "protocol ignores")
    st.caption(f"Border: green = {match} (a true match); red = another identity (pid 0: distractor); grey = "
               f"{ignored}. d = cosine distance (1 − cosine) between L2-normalised features; after re-ranking, the "
               "k-reciprocal re-ranked distance.")


def _cpl(run: RunDir, *args: str) -> None:
    """Run ``cpl <args>`` on ``run``'s runs root and wait for it; raises RuntimeError with its last error line."""
    argv = cpl_command("--runs-root", str(run.runs_root), *args)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"cpl {args[0]} took longer than {QUERY_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise RuntimeError(lines[-1] if lines else f"cpl {args[0]} exited with code {proc.returncode}")


def _run_query(run: RunDir, png: bytes, topk: int) -> dict:
    """Rank ``run``'s gallery for one image with ``cpl query`` in a subprocess; raises RuntimeError."""
    with tempfile.TemporaryDirectory(prefix="cpl-query-") as tmp:
        image, out = Path(tmp) / "query.png", Path(tmp) / "result.json"
        image.write_bytes(png)
        _cpl(run, "query", str(run.path), str(image), "--topk", str(topk), "--out", str(out))
        if not out.is_file():
            raise RuntimeError("cpl query wrote no result")
        return json.loads(out.read_text())


def _upload(run: RunDir, topk: int) -> None:
    up = st.file_uploader("Query image (JPEG, PNG, BMP or WebP; at most 10 MiB)", type=UPLOAD_TYPES,
                          key="ret-upload")
    if up is None:
        st.caption("The image is checked (type from its content, size, pixel count), then the run's network "
                   "extracts its feature in a separate `cpl query` process and ranks the gallery.")
        return
    data = up.getvalue()
    try:
        image = decode_upload(data)
    except UploadError as exc:
        st.error(f"{up.name}: {exc}")
        return
    # a resumed or re-run training writes a new checkpoint, and the answer changes with it
    weights = max((readers.stamp(p) for p in run.checkpoints.glob("*.pt")), default=None)
    key = (run.id, hashlib.sha256(data).hexdigest(), topk, weights)
    cache = st.session_state.setdefault("ret-upload-results", {})
    if key not in cache:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        with st.spinner("Extracting the feature with the run's network (`cpl query`)…"):
            try:
                cache[key] = _run_query(run, buf.getvalue(), topk)
            except RuntimeError as exc:
                st.error(f"The query failed: {exc}")
                return
    result = cache[key]
    left, right = st.columns([1, 7])
    with left:
        st.image(image, caption=f"{up.name} ({image.width}×{image.height})", width="stretch")
    with right:
        cards = [Card(h["path"], f"**{rank}** · d {h['dist']:.3f}  \npid {h['pid']} · cam {h['camid']}", NEUTRAL)
                 for rank, h in enumerate(result.get("topk", []), start=1)]
        st.markdown(f"**{run.id}**: the {len(cards)} nearest gallery images (cosine distance, no re-ranking)")
        grid(run, cards, columns=10)


def _rerank_toggle(where, available: bool) -> bool:
    """The re-ranking toggle, kept in ``?rr=1`` (a shared link shows the same lists)."""
    if "ret-rerank" not in st.session_state:
        st.session_state["ret-rerank"] = st.query_params.get("rr") == "1"
    on = where.toggle("k-reciprocal re-ranking", key="ret-rerank", disabled=not available,
                      help="Zhong et al. 2017, computed by the run (eval.rerank)")
    if on and st.query_params.get("rr") != "1":
        st.query_params["rr"] = "1"
    elif not on:
        st.query_params.pop("rr", None)
    return on


# ---------------------------------------------------------------------------------------------- sheet, maps, ROC


def _fresh(run: RunDir, path: Path) -> bool:
    """Whether ``path`` exists and was written after the run's lists (a resumed run rewrites them)."""
    return path.is_file() and path.stat().st_mtime >= run.retrieval.stat().st_mtime


def _sheet_section(run: RunDir, k_max: int, rerank: bool) -> None:
    """The ranked-list sheet (``cpl visrank``) of the first N queries in the page's order and filters."""
    order = st.query_params.get("order") if st.query_params.get("order") in ORDERS else "worst"
    pid, cam = _url_int("pid"), _url_int("cam")  # already checked against the queries by _browse
    with st.expander("Ranked-list sheet (PNG)"):
        c1, c2 = st.columns(2)
        count = int(c1.number_input("Queries on the sheet", 1, 200, 20, key="ret-sheet-n"))
        k = int(c2.number_input("Gallery images per query", 1, k_max, min(10, k_max), key="ret-sheet-k"))
        path = sheet_path(run, order, count, k, rerank, pid, cam)
        which = {"worst": "--worst", "best": "--best", "file": "--by-file"}[order]
        flags = [*(["--pid", str(pid)] if pid is not None else []), *(["--cam", str(cam)] if cam is not None else []),
                 *(["--rerank"] if rerank else [])]
        if not _fresh(run, path) and st.button(f"Write the sheet of the first {count} queries, {ORDERS[order]}",
                                               key="ret-sheet-make"):
            with st.spinner("Writing the sheet (`cpl visrank`)…"):
                try:
                    _cpl(run, "visrank", str(run.path), which, str(count), "--topk", str(k), *flags, "--out", str(path))
                except RuntimeError as exc:
                    st.error(f"The sheet could not be written: {exc}")
        if _fresh(run, path):
            data = path.read_bytes()
            st.download_button(f"Download {path.name}", data, file_name=f"{run.id}-{path.name}", mime="image/png",
                               key="ret-sheet-dl", icon=":material/download:")
            st.image(data, caption=f"{path.name}: query (blue), then its top {k} as the protocol ranks them "
                                   "(green: same identity, red: another)")


def _actmap_section(run: RunDir, qi: int, rerank: bool) -> None:
    """Activation maps of the query and its top matches, written by ``cpl actmap`` on request."""
    path = actmap_path(run, qi, ACTMAP_TOPK, rerank)
    with st.expander("Activation maps", expanded=_fresh(run, path)):
        if not _fresh(run, path) and st.button(f"Compute the activation maps of q{qi} and its top {ACTMAP_TOPK}",
                                               key="ret-actmap"):
            with st.spinner("Running the run's network on these images (`cpl actmap`)…"):
                try:
                    _cpl(run, "actmap", str(run.path), "--query", str(qi), "--topk", str(ACTMAP_TOPK),
                         *(["--rerank"] if rerank else []), "--out", str(path))
                except RuntimeError as exc:
                    st.error(f"The activation maps could not be computed: {exc}")
        if _fresh(run, path):
            st.image(path.read_bytes(), caption=f"activation maps: q{qi} (blue), then its top {ACTMAP_TOPK}")
        st.caption("Where the last feature map of the trunk is strong: the sum over channels of its squared "
                   "activations, upsampled to the image and overlaid in the jet colours (red = strong), as "
                   "torchreid's visualize_actmap.")


def _distance_section(run: RunDir) -> None:
    """Distance distributions of matching vs non-matching pairs and the ROC curve (distances.npz)."""
    d = readers.distances(run)
    if "auc" not in d:
        return
    with st.expander(f"Distances and ROC (AUC {float(d['auc']):.3f})"):
        left, right = st.columns(2)
        left.plotly_chart(charts.distance_figure({run.id: d}), key="ret-distances", width="stretch")
        right.plotly_chart(charts.roc_figure({run.id: d}), key="ret-roc", width="stretch")
        st.caption(f"Every query × gallery pair the Market-1501 protocol counts (same identity from the same camera "
                   f"and junk left out), without re-ranking. Mean distance: matching "
                   f"{float(d['match_mean']):.3f}, non-matching {float(d['nonmatch_mean']):.3f}.")


def main() -> None:
    run = run_page("Retrieval", "ret-", drop_params=("q", "pid", "cam"))  # ?q=: a query number of the previous run
    if run is None:
        return
    ret = readers.retrieval(run)
    if not ret:
        status = read_status(run)
        if status.get("state") in ACTIVE:
            st.info("Retrieval lists are written after evaluation, at the end of the run "
                    f"(now: {status.get('message') or status.get('stage') or status.get('state')}).")
        else:
            st.info(f"This run ({status.get('state')}) has no retrieval lists: `retrieval.npz` is missing or "
                    "damaged.")
        return
    query, gallery = readers.split(run, "query"), readers.split(run, "gallery")
    ranked_rows = max(int(ret[k].max(initial=-1)) for k in ("index", "rr_index") if k in ret)
    if len(query) != ret["index"].shape[0] or len(gallery) <= ranked_rows:
        st.error("`features/query.csv` or `features/gallery.csv` does not match `retrieval.npz` (missing, "
                 "damaged or of another evaluation): the run directory is inconsistent.")
        return
    run2 = _second_run(run)
    if run2 is not None and not _same_dataset(run, run2):
        st.warning(f"{run2.id} ranked a different query or gallery set, so its lists cannot be compared.")
        run2 = None
    res = readers.results(run) or {}
    if "rank1" in res:
        rr = res.get("rerank") or {}
        st.caption(f"{run.id}: rank-1 {res['rank1']:.1f}% · mAP {res['mAP']:.1f}%"
                   + (f" · re-ranked: rank-1 {rr['rank1']:.1f}% · mAP {rr['mAP']:.1f}%" if rr else "")
                   + f" · {len(query):,} queries, {len(gallery):,} gallery images")
    _distance_section(run)
    c1, c2 = st.columns([1, 3])
    rerank = _rerank_toggle(c1, "rr_index" in ret)
    k_max = int(ret["index"].shape[1])
    topk = c2.slider("Top-k", 1, k_max, min(10, k_max), key="ret-topk")
    _, _, ap, reranked = _ranked(ret, rerank)
    qi = _pick_query(query, ap, ret.get("rr_first_match" if reranked else "first_match"), "rr" if reranked else "plain")
    if qi is None:
        _upload(run, topk)
        return
    _show_lists(run, run2, ret, qi, topk, rerank, query, gallery)
    _actmap_section(run, qi, rerank and "rr_index" in ret)
    if st.session_state.get("ret-mode") == MODES[0]:
        _sheet_section(run, k_max, rerank and "rr_index" in ret)


main()
