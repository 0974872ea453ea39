"""CPL Studio: launch, watch, inspect and compare CPL runs (``streamlit run streamlit_app.py``).

The entry script is the frame around every page: page config, logo, navigation, and the first-start demo.
When the runs folder has never held a run, the demo starts by itself (app/demo.py: CPL on DCGAN images, CPL on
held-out real images whose labels are scored, and the labeled-only control, from ``configs/demo.yaml`` on the
embedded synthetic dataset, a few minutes on 2 CPU cores), so every page fills in without any set-up; a
marker file keeps it from starting again. ``CPL_DEMO=0`` turns it off; ``CPL_DEMO_CONFIG`` names another config
for it. The app never imports torch:
runs are separate ``cpl`` processes that write run directories, which the pages read.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import demo, settings
from cpl.config import ConfigError
from cpl.runs.status import ACTIVE, read_status

ASSETS = Path(__file__).resolve().parent / "assets"

st.set_page_config(page_title="CPL Studio", page_icon=str(ASSETS / "icon.svg"), layout="wide",
                   initial_sidebar_state="expanded")
st.logo(str(ASSETS / "logo.svg"), icon_image=str(ASSETS / "icon.svg"), size="large")

PAGES = {
    "Train": [
        st.Page("pages/runs.py", title="Runs", icon=":material/monitoring:", url_path="", default=True),
        # The Runs page lives at "/"; "/runs" (a link typed or shared by its name) serves the same script
        # instead of "Page not found". Listed after the default, so links to pages/runs.py go to "/".
        st.Page("pages/runs.py", title="Runs", icon=":material/monitoring:", url_path="runs", visibility="hidden"),
        st.Page("pages/launch.py", title="Launch", icon=":material/rocket_launch:", url_path="launch"),
    ],
    "Inspect": [
        st.Page("pages/gan.py", title="GAN samples & pseudo-labels", icon=":material/grid_view:", url_path="gan"),
        st.Page("pages/embedding.py", title="Embedding", icon=":material/scatter_plot:", url_path="embedding"),
        st.Page("pages/retrieval.py", title="Retrieval", icon=":material/image_search:", url_path="retrieval"),
    ],
    "Compare": [
        st.Page("pages/compare.py", title="Compare", icon=":material/table_chart:", url_path="compare"),
    ],
}


def demo_notice(runs_root: Path) -> None:
    """Start the first-start demo if due (app/demo.py), and say what it is while its runs train."""
    try:
        started = demo.ensure_demo(runs_root, settings.synthetic_root())
    except (ConfigError, OSError, ValueError) as exc:
        st.sidebar.error(f"Could not start the demo: {exc}")
        return
    if started:
        st.toast(f"Started the demo on the synthetic dataset: {len(started)} runs", icon=":material/rocket_launch:")
    runs = demo.demo_runs(runs_root)
    if not any(read_status(r).get("state") in ACTIVE for r in runs.values()):
        return
    st.sidebar.info("The **demo** is training on the embedded synthetic dataset (a few minutes on a laptop CPU): "
                    + "; ".join(r.title for r in demo.ROLES if r.key in runs)
                    + ". The GAN page shows the DCGAN images and their labels, the held-out run scores its labels, "
                    "and **Compare** sets each CPL run against its reference.", icon=":material/info:")
    for role in demo.ROLES:
        if role.key in runs:
            st.sidebar.page_link("pages/runs.py", label=f"Watch: {role.title}", icon=":material/monitoring:",
                                 query_params={"run": runs[role.key].id})


root = settings.runs_root()
page = st.navigation(PAGES, position="sidebar")
demo_notice(root)
page.run()
st.sidebar.caption(f"Runs folder `{settings.shown(root)}`  \nData roots "
                   + ", ".join(f"`{settings.shown(p)}`" for p in settings.data_roots()))
