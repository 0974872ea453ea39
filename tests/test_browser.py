"""End to end in headless Chromium: ``streamlit run`` on a free localhost port over the fixture runs root.

It launches a tiny run from the Launch page, watches it finish on the Runs page, opens the GAN, Embedding
and Retrieval pages for it and checks what they show against the files the run wrote, checks the ✓/✗
marks of a holdout run, clicks an identity in its identity-usage chart (the grid filters) and box-selects its data
map (the images show), and tries hostile query strings; on the messy runs folder (tests/messy_runs.py) the
Runs page marks the damaged runs and no page shows an exception; two tabs launch at the same moment and the server
is killed and restarted while the runs train, and every run finishes and is listed once. Screenshots go to
``test-artifacts/``.

The rough edges a new user met are checked where they were seen, in the browser: "Why?" under a GAN image opens
its explanation in view, the Runs table shows rank-1 and mAP within 1280 px, ``/runs`` is the Runs page, the
Embedding legend is neutral (colour means identity), and the re-ranked AP labels the picked query.

Tiers: the holdout-marks, usage-chart / data-map tests, those rough edges and the Retrieval page's worst-first
order, distance plot, activation maps and sheet download are the default tier's browser tests (the server, the
entry script's routing, pages with images, a chart's selection); launching a run, the hostile query strings, the
messy runs folder and the two tabs with the restart are in the slow tier (`make test-slow`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from app_fixtures import os_env, wait_for

from cpl.runs.rundir import RunDir, list_runs
from cpl.runs.status import ACTIVE, pid_alive, read_raw, read_status

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402 - only when there is a browser

from tools.screenshots import settle  # noqa: E402 - imports playwright too

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
RUN_TIMEOUT_S = 600
ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
CAPTION = re.compile(r"#(\d+) → pid (-?\d+)(?: (✓|✗))?")
RANKED = re.compile(r"· d \d")  # a ranked gallery image's caption on the Retrieval page


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_streamlit(env: dict[str, str], log_path: Path, port: int) -> subprocess.Popen:
    """``streamlit run`` on ``port`` in a process group of its own (a test can kill the server and whatever it
    started in its group, as a crash or a reboot would; the runs it launched are in sessions of their own)."""
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port",
                                 str(port), "--server.headless", "true"], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _wait_healthy(url: str, proc: subprocess.Popen) -> None:
    def healthy() -> bool:
        assert proc.poll() is None, f"streamlit exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                return r.read() == b"ok"
        except OSError:
            return False

    wait_for(healthy, 60, what="streamlit to serve")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def _serve(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """``streamlit run`` on a free localhost port with ``env`` (which runs root it reads); yields its URL."""
    port = _free_port()
    proc = _start_streamlit(env, log_path, port)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def server(app_world, app_run: RunDir, app_sweep: Path) -> Iterator[str]:
    """The app on a free port, reading the fixture world (no demo run)."""
    with _serve(os_env(app_world), app_world.runs_root.parent / "streamlit.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module; each server gets its own tab."""
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


def _tab(browser: Browser) -> Page:
    tab = browser.new_page(viewport={"width": 1400, "height": 1100})
    tab.set_default_timeout(60_000)
    return tab


@pytest.fixture(scope="module")
def page(browser: Browser, server: str) -> Iterator[Page]:
    tab = _tab(browser)
    yield tab
    tab.close()


def _settle(page: Page, timeout_s: float = 60) -> None:
    settle(page, timeout_s)


def _open(page: Page, server: str, path: str) -> None:
    page.goto(f"{server}{path}")
    _settle(page)


def _shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def _captions(page: Page, count: int = 1, matching: re.Pattern | None = None) -> list[str]:
    """The image captions of the page, once at least ``count`` of them (of those ``matching``) are drawn: the
    grid's images arrive after the script run ends, one by one, later on a loaded machine."""
    captions = page.locator("[data-testid='stImageCaption']")
    wanted = captions.filter(has_text=matching) if matching else captions
    wanted.nth(count - 1).wait_for(timeout=120_000)  # a state poll with a generous deadline, not a sleep
    return captions.all_inner_texts()


HOSTILE = ["/?run=..%2F..%2Fetc%2Fpasswd", "/gan?run=%2e%2e", "/embedding?run=%2Fetc%2Fpasswd",
           "/retrieval?run=r1%00", "/compare?run=..&run2=%2Fetc&sweep=..%2F..%2Fetc", "/gan?run=_cache"]


@pytest.mark.slow  # six page loads; every page refuses them in its AppTest too
def test_hostile_query_strings_are_refused(page: Page, server: str) -> None:
    # the first request of a fresh server goes to a page URL, not "/": the entry script must still route it
    for path in HOSTILE:
        _open(page, server, path)
        text = page.inner_text("body")
        assert "Ignoring `?" in text or "Ignoring ?" in text, path
        assert "root:x:0:0" not in text and "Traceback" not in text, path
        assert page.locator("[data-testid='stSidebarNav']").count() == 1, path  # the app's navigation, not a bare page
    _shot(page, "hostile-query.png")


@pytest.mark.slow  # trains a run inside the browser test (~45 s)
def test_launch_watch_and_inspect_a_run(page: Page, server: str, app_world) -> None:
    _open(page, server, "/launch")
    page.get_by_text("Fast dev run", exact=True).click()
    _settle(page)
    name = page.get_by_label("Run name", exact=True)
    name.fill("browser")
    name.press("Enter")
    _settle(page)
    _shot(page, "launch.png")
    page.get_by_role("button", name="Launch run").click()
    success = page.get_by_text(re.compile(r"Started run \S+ in the background"))
    success.wait_for()
    run_id = re.search(r"Started run (\S+) in the background", success.inner_text()).group(1)
    assert "browser" in run_id
    run = RunDir(app_world.runs_root / run_id)
    assert run.config.is_file()

    page.get_by_text("Watch it on the Runs page").click()
    page.wait_for_url(re.compile(rf"\?run={re.escape(run_id)}"))
    _settle(page)
    page.get_by_role("heading", name=run_id).wait_for()
    # the live fragment refreshes the run's state badge every 2 s until the run has finished
    badge = page.locator("[data-testid='stMain'] span.stMarkdownBadge").first
    deadline = time.time() + RUN_TIMEOUT_S
    while time.time() < deadline and not badge.inner_text().endswith("finished"):
        assert not badge.inner_text().endswith("failed"), run.log.read_text()[-2000:]
        time.sleep(2)
    assert badge.inner_text().endswith("finished"), \
        f"not finished after {RUN_TIMEOUT_S} s: {run.log.read_text()[-2000:]}"
    _settle(page)
    results = json.loads(run.results.read_text())
    metric = page.locator("[data-testid='stMetric']", has_text="rank-1 (%)").first
    assert f"{results['rank1']:.1f}" in metric.inner_text()
    _shot(page, "runs.png")

    # GAN samples: one caption per image of the first grid page, each naming the pid the run assigned
    page.locator("[data-testid='stMain'] [data-testid='stPageLink'] a", has_text="GAN samples").click()
    page.wait_for_url(re.compile(rf"/gan\?run={re.escape(run_id)}"))
    page.get_by_role("heading", name="GAN samples & pseudo-labels").wait_for()
    _settle(page)
    labels = pd.read_csv(run.pseudo_labels)
    assert page.locator("[data-testid='stMetric']", has_text="unlabeled images").first.inner_text().endswith(
        f"{len(labels):,}")
    shown = min(48, len(labels))  # the grid's first page
    found = [m for m in (CAPTION.search(c) for c in _captions(page, shown, CAPTION)) if m]
    assert len(found) == shown
    for m in found:
        assert int(labels.loc[int(m.group(1)), "pid"]) == int(m.group(2))
    _shot(page, "gan.png")

    # Embedding: the run's UMAP with its three kinds of points
    _open(page, server, f"/embedding?run={run_id}")
    page.locator(".js-plotly-plot").first.wait_for()
    legend = " ".join(page.locator(".js-plotly-plot .legendtext").all_text_contents())
    for trace in ("training images", "unlabeled (GAN) images", "class centers"):
        assert trace in legend
    kinds = np.bincount(np.load(run.embedding)["kind"], minlength=3)
    assert f"{kinds[0]:,} training and {kinds[1]:,} unlabeled images and {kinds[2]:,} class centers" in \
        page.inner_text("body")
    _shot(page, "embedding.png")

    # Retrieval: query 0's top 10 with the distances and AP the run computed
    _open(page, server, f"/retrieval?run={run_id}&q=0")
    ret = np.load(run.retrieval)
    body = page.inner_text("body")
    ap = ret["ap"][0]
    assert ("no valid match" in body) if np.isnan(ap) else (f"AP {100 * ap:.1f}%" in body)
    ranked = [c for c in _captions(page, 10, RANKED) if RANKED.search(c)][:10]
    dists = [float(re.search(r"· d (\d+\.\d+)", c).group(1)) for c in ranked]
    assert dists == pytest.approx(np.round(ret["dist"][0, :10], 3).tolist(), abs=1e-3)
    query, gallery = pd.read_csv(run.features / "query.csv"), pd.read_csv(run.features / "gallery.csv")
    top = gallery.iloc[ret["index"][0, :10]]
    true_matches = int(((top["pid"] == query["pid"][0]) & (top["camid"] != query["camid"][0])).sum())
    assert sum("✓" in c for c in ranked) == true_matches
    _shot(page, "retrieval.png")


def test_holdout_marks_right_and_wrong(page: Page, server: str, holdout_run: RunDir) -> None:
    _open(page, server, f"/gan?run={holdout_run.id}")
    labels = pd.read_csv(holdout_run.pseudo_labels)
    found = [m for m in (CAPTION.search(c) for c in _captions(page, min(48, len(labels)), CAPTION)) if m]
    assert found and all(m.group(3) for m in found)  # every assignment is marked
    for m in found:
        row = labels.loc[int(m.group(1))]
        assert (m.group(3) == "✓") == (int(row["correct"]) == 1)
    assert any(m.group(3) == "✗" for m in found)  # a 2-epoch network gets some wrong
    _shot(page, "gan-holdout.png")


def test_why_opens_where_the_user_is_looking(page: Page, server: str, app_run: RunDir) -> None:
    _open(page, server, f"/gan?run={app_run.id}")
    labels = pd.read_csv(app_run.pseudo_labels)
    pick = min(12, len(labels) - 1)  # an image of the grid's second row (sorted by sample index)
    _captions(page, pick + 1, CAPTION)
    button = page.get_by_role("button", name="Why?").nth(pick)
    assert button.get_attribute("data-testid") == "stBaseButton-secondary"  # drawn as a button, not as a link
    button.scroll_into_view_if_needed()
    button.click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text(f"unlabeled image #{pick}")).to_be_in_viewport(timeout=120_000)
    row = labels.iloc[pick]
    if row.label >= 0:
        expect(dialog.get_by_text(f"Assigned: pid {int(row.pid)}")).to_be_in_viewport()
    _shot(page, "gan-why.png")
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)


def _grid_headers(tab: Page) -> list[str]:
    """The column headers the page's first table draws (glide-data-grid keeps an accessible table of the columns
    in view only: a column scrolled out of sight is not in it)."""
    grid = tab.locator("[data-testid='stMain'] [data-testid='stDataFrame']").first
    grid.locator("[role='columnheader']").first.wait_for(state="attached", timeout=120_000)
    return grid.locator("[role='columnheader']").all_inner_texts()


def test_runs_page_at_its_name_and_results_within_1280_px(browser: Browser, server: str) -> None:
    tab = browser.new_page(viewport={"width": 1280, "height": 900})
    tab.set_default_timeout(60_000)
    try:
        for path in ("/runs", "/"):  # by its name (a link typed or shared), and as the app's first page
            _open(tab, server, path)
            tab.get_by_role("heading", name="Runs", exact=True).wait_for()
            body = tab.inner_text("body")
            assert "Page not found" not in body, path
            headers = _grid_headers(tab)
            assert {"run", "state", "rank-1", "mAP"} <= set(headers), (path, headers)
            _shot(tab, "runs-1280.png")
    finally:
        tab.close()


def test_embedding_legend_shows_kinds_in_a_neutral_colour(page: Page, server: str, app_run: RunDir) -> None:
    _open(page, server, f"/embedding?run={app_run.id}")
    items = page.locator(".js-plotly-plot .legend .traces")
    items.nth(2).wait_for(state="attached", timeout=120_000)
    names = [items.nth(i).locator(".legendtext").text_content() for i in range(items.count())]
    assert names == ["training images", "unlabeled (GAN) images", "class centers"]
    colours = set()
    for i in range(items.count()):
        style = items.nth(i).locator(".legendpoints path").first.get_attribute("style")
        fill = re.search(r"fill: (rgb\([^)]*\))", style)
        colours.add(fill[1] if fill else re.search(r"stroke: (rgb\([^)]*\))", style)[1])  # the open star
    assert colours == {"rgb(107, 107, 107)"}  # one neutral grey: a symbol's colour would name no identity
    _shot(page, "embedding-legend.png")


def test_rerank_toggle_relabels_the_query_and_stays_in_the_url(page: Page, server: str, app_run: RunDir) -> None:
    ret = np.load(app_run.retrieval)
    _open(page, server, f"/retrieval?run={app_run.id}")
    picker = page.locator(".st-key-ret-browse-plain input")  # the query picker (the order picker is beside it)
    picker.wait_for()
    qi = int(re.match(r"q(\d+) ", picker.input_value())[1])

    def ap_text(ap: float) -> str:
        return "no valid match in the gallery" if np.isnan(ap) else f"AP {100 * ap:.1f}%"

    assert f"· {ap_text(ret['ap'][qi])}" in picker.input_value()
    page.get_by_text("k-reciprocal re-ranking").click()
    page.wait_for_url(re.compile(r"[?&]rr=1"))
    _settle(page)
    reranked = ap_text(ret["rr_ap"][qi])
    header = page.get_by_text(re.compile(rf"^{re.escape(app_run.id)} \(\w+\) · .* · re-ranked$"))
    expect(header).to_contain_text(reranked)
    picker = page.locator(".st-key-ret-browse-rr input")  # drawn anew for the re-ranked lists
    expect(picker).to_have_value(re.compile(rf"^q{qi} · .*{re.escape(reranked)}"))  # the same query, its new AP
    _shot(page, "retrieval-rerank.png")
    page.goto(page.url)  # the link shared from here: a new session, re-ranked from the URL alone
    _settle(page)
    expect(page.get_by_text(re.compile(r" · re-ranked$"))).to_contain_text(reranked)


def test_retrieval_worst_first_sheet_actmaps_and_roc(page: Page, server: str, app_run: RunDir, tmp_path: Path) -> None:
    for folder in (app_run.sheets, app_run.actmaps):  # written on request: start without them
        shutil.rmtree(folder, ignore_errors=True)
    _open(page, server, f"/retrieval?run={app_run.id}")
    ret = np.load(app_run.retrieval)
    ap, first = ret["ap"], ret["first_match"]
    worst = min(range(len(ap)), key=lambda i: (bool(np.isnan(ap[i])), ap[i], -first[i], i))
    page.get_by_text(f"q{worst} · pid").first.wait_for()
    assert "order=worst" in page.url and f"q={worst}" in page.url

    with np.load(app_run.distances) as d:
        auc = float(d["auc"])
    page.get_by_text(f"Distances and ROC (AUC {auc:.3f})").click()
    page.locator(".js-plotly-plot .legendtext", has_text=f"AUC {auc:.3f}").first.wait_for()
    _shot(page, "retrieval-distances.png")

    page.get_by_text("Activation maps").first.click()
    page.get_by_role("button", name=re.compile(f"Compute the activation maps of q{worst}")).click()
    page.get_by_text(f"activation maps: q{worst} (blue)").first.wait_for(timeout=180_000)
    assert (app_run.actmaps / f"q{worst}-top5.png").is_file()
    _shot(page, "retrieval-actmaps.png")

    page.get_by_text("Ranked-list sheet (PNG)").first.click()
    page.get_by_role("button", name=re.compile("Write the sheet of the first 20 queries")).click()
    button = page.get_by_role("button", name="Download worst-20-top10.png")
    button.wait_for(timeout=180_000)
    with page.expect_download() as info:
        button.click()
    saved = tmp_path / "sheet.png"
    info.value.save_as(saved)
    assert info.value.suggested_filename == f"{app_run.id}-worst-20-top10.png"
    assert saved.read_bytes() == (app_run.sheets / "worst-20-top10.png").read_bytes()
    _shot(page, "retrieval-sheet.png")


def _shown(page: Page, text: str | re.Pattern, where: str) -> str:
    """The page's text once ``text`` is drawn (a state poll with a generous deadline: the script run may still
    be going when the page settles), after checking that it shows no exception box and no traceback."""
    page.get_by_text(text).first.wait_for(timeout=120_000)
    body = page.inner_text("body")
    assert page.locator("[data-testid='stException']").count() == 0 and "Traceback" not in body, where
    return body


@pytest.mark.slow  # a second server over 300 run directories
def test_messy_runs_folder(browser: Browser, messy_root, tmp_path: Path) -> None:
    env = {**os.environ, "CPL_RUNS_ROOT": str(messy_root.root), "CPL_DATA_ROOTS": str(tmp_path), "CPL_DEMO": "0"}
    listed = {r.id for r in list_runs(messy_root.root)}
    with _serve(env, tmp_path / "streamlit.log") as url:
        tab = _tab(browser)
        _open(tab, url, "/")
        _shown(tab, f"{len(messy_root.checkable)} with problems", "runs")
        _shot(tab, "messy-runs.png")
        for name in [n for n in messy_root.checkable if n in listed][:3]:
            _open(tab, url, f"/?run={name}")
            _shown(tab, "This run directory is damaged", name)
        _open(tab, url, "/compare")
        _shown(tab, "Runs side by side", "compare")
        tab.close()


STARTED = re.compile(r"Started run (\S+) in the background")
RUNS_CAPTION = re.compile(r"— runs folder")  # the Runs table's caption: "<count> <state> · ... — runs folder <root>"


def _fill_fast_run(tab: Page, url: str, name: str) -> None:
    """The Launch page set to a fast dev run named ``name`` on the defaults (the synthetic dataset)."""
    _open(tab, url, "/launch")
    tab.get_by_text("Fast dev run", exact=True).click()
    _settle(tab)
    field = tab.get_by_label("Run name", exact=True)
    field.fill(name)
    field.press("Enter")
    _settle(tab)
    tab.get_by_role("button", name="Launch run").wait_for()


def _grid_rows(tab: Page) -> list[list[str]]:
    """The rows of the page's first table, as the text of their cells (glide-data-grid draws on a canvas and
    keeps an accessible table of the visible cells: here the first columns, run and state)."""
    grid = tab.locator("[data-testid='stMain'] [data-testid='stDataFrame']").first
    grid.locator("[role='gridcell']").first.wait_for(state="attached", timeout=120_000)  # hidden, drawn late
    rows = [row.locator("[role='gridcell']").all_inner_texts() for row in grid.locator("[role='row']").all()]
    return [cells for cells in rows if cells]


def _proc_state(pid: int) -> str:
    """The kernel's one-letter state of ``pid`` (``T``: stopped); empty when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2:].split()[0]


def _end_runs(root: Path) -> None:
    """Kill the process groups of the runs still active under ``root`` (a test that failed half-way)."""
    for run in list_runs(root):
        raw = read_raw(run) or {}
        pgid = int(raw.get("pgid") or 0)
        if raw.get("state") in ACTIVE and pgid > 1 and pgid != os.getpgid(0):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGCONT)  # a frozen one too
                os.killpg(pgid, signal.SIGKILL)


@pytest.mark.slow  # trains two runs one after the other and restarts the server (~2-3 min on 2 busy cores)
@pytest.mark.timeout(1500)
def test_two_tabs_launch_at_once_and_the_app_restarts_while_they_train(browser: Browser, tmp_path: Path) -> None:
    """Two tabs click Launch on the same form at the same moment, then the server is SIGKILLed (with its whole
    process group) and started again on the same port while the runs train: both runs finish, the tabs reconnect
    without launching anything again, and the Runs page lists exactly the two runs, once each, finished.

    Nothing waits for a moment: the first run to train freezes at a fault point while the other is queued behind
    it, so the kill certainly lands while both are in flight; every wait polls the page or the run directories."""
    root, data, frozen_pid = tmp_path / "runs", tmp_path / "data", tmp_path / "frozen.pid"
    data.mkdir()
    base_env = {**os.environ, "CPL_RUNS_ROOT": str(root), "CPL_DATA_ROOTS": str(data), "CPL_DEMO": "0"}
    # The first run to train freezes after its first iteration, holding the device; the other waits for the
    # device behind it. So the server is killed while both runs are certainly in flight, whatever the speed.
    env = {**base_env, "CPL_FAULT": "stop:train:epoch=0:iter=0", "CPL_FAULT_ONCE": str(frozen_pid)}
    port = _free_port()
    url, log = f"http://127.0.0.1:{port}", tmp_path / "streamlit.log"
    server = _start_streamlit(env, log, port)
    tabs: list[Page] = []
    frozen = 0
    try:
        _wait_healthy(url, server)
        tabs = [_tab(browser), _tab(browser)]
        for tab in tabs:
            _fill_fast_run(tab, url, "twin")  # one form in both: within one second, one run id for both
        for tab in tabs:  # both clicks go out before either launch is waited for
            tab.get_by_role("button", name="Launch run").click(no_wait_after=True)
        ids = []
        for tab in tabs:
            notice = tab.get_by_text(STARTED)
            notice.wait_for()
            ids.append(STARTED.search(notice.inner_text()).group(1))
        assert len(set(ids)) == 2 and all("-twin-" in i for i in ids), ids
        runs = [RunDir(root / i) for i in ids]
        _shot(tabs[1], "twin-launch.png")

        frozen = int(wait_for(lambda: frozen_pid.is_file() and frozen_pid.read_text().strip(), RUN_TIMEOUT_S,
                              poll_s=1, what="a run to reach training"))
        wait_for(lambda: _proc_state(frozen) == "T", 120, what="the training run to freeze")

        def other_queued() -> bool:
            raws = [read_raw(r) or {} for r in runs]
            return any(r.get("pid") != frozen and r.get("state") == "queued" and r.get("waiting_for") for r in raws)

        wait_for(other_queued, 300, poll_s=1, what="the other run to wait for the device")
        pids = sorted(int((read_raw(r) or {})["pid"]) for r in runs)
        assert frozen in pids

        os.killpg(server.pid, signal.SIGKILL)  # the app crashes, with everything in its process group
        server.wait()
        assert all(pid_alive(pid) for pid in pids)  # the runs live in sessions of their own
        os.kill(frozen, signal.SIGCONT)
        frozen = 0
        for tab in tabs:  # the tabs have lost the server
            tab.locator("[data-testid='stStatusWidget']", has_text=re.compile("connecting", re.I)).wait_for(
                timeout=120_000)
        server = _start_streamlit(base_env, log, port)
        _wait_healthy(url, server)
        for tab in tabs:  # ... and reconnect to the new one by themselves
            tab.locator("[data-testid='stStatusWidget']").wait_for(state="detached", timeout=120_000)
        # The first tab's next rerun is a session of the new server: the click that launched is not replayed (no
        # launch notice any more, and no third run below).
        name = tabs[0].get_by_label("Run name", exact=True)
        name.fill("twin-after-restart")
        name.press("Enter")
        tabs[0].get_by_text(STARTED).wait_for(state="detached", timeout=120_000)
        _settle(tabs[0])
        # The second tab follows its link to its run, served by the new server while it trains or waits.
        tabs[1].get_by_text("Watch it on the Runs page").click()
        tabs[1].wait_for_url(re.compile(rf"\?run={re.escape(ids[1])}"))
        tabs[1].get_by_role("heading", name=ids[1]).wait_for()
        badge = tabs[1].locator("[data-testid='stMain'] span.stMarkdownBadge").first.inner_text()
        assert re.search(r"(queued \(waiting for device\)|starting|running|finished)$", badge), badge
        # ... and its runs table has the two runs, once each, whatever states they are in by now
        counts = _shown(tabs[1], RUNS_CAPTION, "runs after the restart")
        caption = tabs[1].get_by_text(RUNS_CAPTION).first.inner_text()
        assert sum(int(n) for n in re.findall(r"(\d+) [a-z]", caption.split(" — ")[0])) == 2, caption
        assert "with problems" not in counts
        assert sorted(row[0] for row in _grid_rows(tabs[1])) == sorted(ids)
        _shot(tabs[1], "twin-after-restart.png")

        def finished() -> bool:
            states = [read_status(r).get("state") for r in runs]
            for r, state in zip(runs, states):
                if state in ("failed", "cancelled", "unknown"):
                    pytest.fail(f"{r.id} {state}: {r.log.read_text(errors='replace')[-2000:]}")
            return all(state == "finished" for state in states)

        wait_for(finished, RUN_TIMEOUT_S, poll_s=2, what="both runs to finish")
        assert sorted(r.id for r in list_runs(root)) == sorted(ids)  # no third run, no leftover
        assert not [p.name for p in root.iterdir() if p.name.startswith(".")]
        for run in runs:
            assert json.loads(run.results.read_text())["rank1"] >= 0 and run.retrieval.is_file()

        tab = tabs[0]
        _open(tab, url, "/")
        body = _shown(tab, re.compile(r"^2 finished — runs folder"), "runs")  # two runs, no other entry
        assert "with problems" not in body
        rows = _grid_rows(tab)
        assert sorted(row[0] for row in rows) == sorted(ids), rows  # each run once, nothing else
        assert all(row[1] == "finished" for row in rows), rows
        _shot(tab, "twin-runs.png")
    finally:
        if frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen, signal.SIGCONT)
        for tab in tabs:
            tab.close()
        _stop(server)
        _end_runs(root)


def _usage_order(labels: pd.DataFrame, train: pd.DataFrame) -> list[int]:
    """The pids of the usage chart's bars, left to right: most assigned first, ties by pid."""
    counts = labels[labels["label"] >= 0]["pid"].astype(int).value_counts()
    return list(counts.reindex(sorted(train["pid"].unique()), fill_value=0)
                .sort_values(ascending=False, kind="stable").index)


def test_usage_click_filters_the_grid_and_data_map_selects(page: Page, server: str, holdout_run: RunDir) -> None:
    _open(page, server, f"/gan?run={holdout_run.id}")
    labels = pd.read_csv(holdout_run.pseudo_labels)
    first = _usage_order(labels, pd.read_csv(holdout_run.features / "train.csv"))[0]
    usage = page.locator(".st-key-gan-usage")
    usage.scroll_into_view_if_needed()
    bar = usage.locator(".bars .point path").first.bounding_box()  # plotly's drag layer lies above the bars:
    page.mouse.move(bar["x"] + bar["width"] / 2, bar["y"] + bar["height"] - 3)  # click where the bar is drawn
    page.mouse.click(bar["x"] + bar["width"] / 2, bar["y"] + bar["height"] - 3)
    want = int((labels["pid"] == first).sum())

    def filtered() -> list[str] | None:
        caps = [c for c in page.locator("[data-testid='stImageCaption']").all_inner_texts() if CAPTION.search(c)]
        pids = {int(CAPTION.search(c).group(2)) for c in caps}
        return caps if pids == {first} and len(caps) == min(48, want) else None

    wait_for(filtered, 120, what=f"the grid filtered to pid {first}")
    _shot(page, "gan-usage-filtered.png")

    data_map = pd.read_csv(holdout_run.data_map)
    drawn = int((data_map["epochs_seen"] > 0).sum())
    area = page.locator(".st-key-gan-map .nsewdrag").first
    area.scroll_into_view_if_needed()
    box = area.bounding_box()
    page.mouse.move(box["x"] + 2, box["y"] + 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=5)
    page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] - 2, steps=5)
    page.mouse.up()
    _shown(page, f"{drawn} selected image(s)", "data map selection")
    shown = min(drawn, 48)
    caps = _captions(page, shown, re.compile(r" · var "))
    assert len([c for c in caps if " · var " in c]) == shown
    _shot(page, "gan-data-map-selected.png")
