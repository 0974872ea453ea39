"""Screenshots of the app's pages for the docs: serve the app over a runs root, open each page for a run in
headless Chromium (Debian's), save PNGs.

    python tools/screenshots.py --runs-root runs --run <run id> --out docs/screenshots

The pages show the runs folder and the data roots relative to the working directory (here the repository), so
a runs root and data roots inside the repository (``runs``, ``data``: ``make run``'s defaults) keep the
machine's paths out of the pictures.
For ``retrieval-actmaps``, write the worst query's maps first (``cpl actmap runs/<id> --query Q``).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
PAGES = {"runs": "/?run={run}", "gan-samples": "/gan?run={run}", "embedding": "/embedding?run={run}",
         "retrieval": "/retrieval?run={run}", "retrieval-distances": "/retrieval?run={run}&order=worst",
         "retrieval-actmaps": "/retrieval?run={run}&order=worst", "compare-roc": "/compare?run={run}{run2}"}
# What to open on a page before its screenshot (an expander's title), and what to scroll to. The activation maps'
# expander opens by itself once `cpl actmap` has written the query's maps.
CLICKS = {"retrieval-distances": ["Distances and ROC"]}
SCROLL_TO = {"retrieval-distances": "ROC curve", "retrieval-actmaps": "activation maps: q", "compare-roc": "ROC curve"}
# Views inside a page, shot as elements: (URL, tab to open first or None, CSS selector of the element).
SECTIONS = {"gan-collapse-warning": ("/gan?run={run}", None, ".stAlert"),
            "gan-identity-usage": ("/gan?run={run}", None, ".st-key-gan-usage"),
            "gan-data-map": ("/gan?run={run}", None, ".st-key-gan-map"),
            "runs-pseudo-labels": ("/?run={run}", "Pseudo-labels", "[role='tabpanel']:visible"),
            "compare-pseudo-labels": ("/compare?run={run}", None, ".st-key-compare-diag-top_share")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"streamlit did not serve {url}")


def settle(page, timeout_s: float = 90, images: bool = False) -> None:
    """Wait until the Streamlit script run is over (no 'running' status widget, no skeleton) and the page has
    drawn; with ``images``, also until every image has loaded (a grid's images arrive after the run ends).
    Shared with tests/test_browser.py."""
    page.wait_for_selector("h1", timeout=timeout_s * 1000)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if page.locator("[data-testid='stStatusWidget']").count() == 0 and \
                page.locator("[data-testid='stSkeleton']").count() == 0:
            break
        time.sleep(0.3)
    if images:
        page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)",
                               timeout=timeout_s * 1000)
    time.sleep(0.5)  # the last delta is painted


def _section(page, url: str, name: str, run: str, out: Path) -> None:
    """Screenshot of one of :data:`SECTIONS` to ``out/<name>.png``."""
    path, tab, selector = SECTIONS[name]
    page.set_viewport_size({"width": 1400, "height": 2400})  # tall: a chart scrolled out of view is not drawn
    page.goto(url + path.format(run=run))
    settle(page, images=True)
    if tab:
        page.get_by_role("tab", name=tab).click()
        settle(page)
    element = page.locator(selector).first
    for chart in element.locator(".js-plotly-plot").all() or [element]:  # plotly draws a chart once it is in view
        chart.scroll_into_view_if_needed()
        time.sleep(0.5)
    element.scroll_into_view_if_needed()
    element.screenshot(path=str(out / f"{name}.png"))
    print(out / f"{name}.png")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-root", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--run2", help="a second run for the Compare page's overlays")
    ap.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    ap.add_argument("--pages", default=",".join(PAGES), help=f"comma-separated, from {','.join(PAGES)}")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {','.join(SECTIONS)}")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CPL_RUNS_ROOT": str(Path(args.runs_root).resolve()), "CPL_DEMO": "0"}
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port",
                               str(port), "--server.headless", "true"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(url)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(90_000)
            for name in filter(None, args.pages.split(",")):
                page.goto(url + PAGES[name].format(run=args.run, run2=f"&run2={args.run2}" if args.run2 else ""))
                settle(page, images=True)
                for text in CLICKS.get(name, []):
                    page.get_by_text(text).first.click()
                    settle(page, images=True)
                if name in SCROLL_TO:
                    page.get_by_text(SCROLL_TO[name]).first.evaluate("e => e.scrollIntoView({block: 'center'})")
                    time.sleep(1)
                page.screenshot(path=str(out / f"{name}.png"), full_page=False)
                print(out / f"{name}.png")
            for name in filter(None, args.sections.split(",")):
                _section(page, url, name, args.run, out)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
