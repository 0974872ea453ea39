"""End to end in headless Chromium: ``streamlit run`` on a free localhost port over the fixture runs root.

It launches a tiny run from the Launch page, watches it finish on the Runs page, opens the GAN, Embedding
and Retrieval pages for it and checks what they show against the files the run wrote, checks the ✓/✗
marks of a holdout run, and tries hostile query strings; on the messy runs folder (tests/messy_runs.py) the
Runs page marks the damaged runs and no page shows an exception. Screenshots go to ``test-artifacts/``.

Tiers: the holdout-marks test is the default tier's browser smoke test (the server, the entry script's routing,
a page with images); launching a run, the hostile query strings and the messy runs folder are in the slow tier
(`make test-slow`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
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

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402 - only when there is a browser

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


@contextlib.contextmanager
def _serve(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """``streamlit run`` on a free localhost port with ``env`` (which runs root it reads); yields its URL."""
    port = _free_port()
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
                             "--server.headless", "true"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                return r.read() == b"ok"
        except OSError:
            return False

    try:
        wait_for(healthy, 60, what="streamlit to serve")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


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


def _shown(page: Page, text: str, where: str) -> str:
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
