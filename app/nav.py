"""Run selection shared by the pages, kept in the URL so every view is a shareable link.

``?run=ID`` selects a run (``?run=A&run2=B`` a second one for side-by-side views). Ids from the URL
are validated by :func:`app.safety.safe_run`; an invalid id is reported and ignored, never used as a path.
:func:`run_page` is the top of every page about one run (GAN samples, Embedding, Retrieval).
"""

from __future__ import annotations

import streamlit as st

from cpl.runs.rundir import RunDir, list_runs

from . import settings
from .demo import GAN, only_demo
from .gallery import reset_on_run_change
from .safety import safe_run

NO_RUNS = "No runs yet: launch one on the Launch page."


def run_ids() -> list[str]:
    """Run ids of the runs root, newest first (the run pickers' options)."""
    return [r.id for r in list_runs(settings.runs_root())]


def select_run(param: str = "run", label: str = "Run", *, sidebar: bool = True,
               filter_fn=None, key: str | None = None, preferred: str | None = None) -> RunDir | None:
    """A run picker synced with the query parameter ``param``; returns the chosen run (or None).

    ``filter_fn(run) -> bool`` narrows the choices (e.g. runs that have GAN samples). Without ``?param=`` the
    picker opens on ``preferred`` when it is among them, else on the newest run.
    """
    root = settings.runs_root()
    runs = list_runs(root)
    if filter_fn is not None:
        runs = [r for r in runs if filter_fn(r)]
    ids = [r.id for r in runs]
    wanted = st.query_params.get(param)
    if wanted is not None and safe_run(root, wanted) is None:
        st.warning(f"Ignoring `?{param}=`: no run with that id.")
        wanted = None
    if not ids:
        return None
    index = ids.index(wanted) if wanted in ids else ids.index(preferred) if preferred in ids else 0
    where = st.sidebar if sidebar else st
    wkey = key or f"select-{param}"
    if wanted in ids and wanted != st.session_state.get(f"{wkey}-synced"):
        st.session_state.pop(wkey, None)  # the URL changed (a link was followed): it wins over the old pick
    choice = where.selectbox(label, ids, index=index, key=wkey)
    st.session_state[f"{wkey}-synced"] = choice
    if st.query_params.get(param) != choice:
        st.query_params[param] = choice
    return safe_run(root, choice)


def run_page(title: str, state_prefix: str, *, drop_params: tuple[str, ...] = ()) -> RunDir | None:
    """The top of a page about one run: its title and the sidebar run picker; None (after saying there are
    no runs yet) when there is nothing to show.

    When the picked run changes, the page's widget state (keys starting with ``state_prefix``) is forgotten,
    and so are the query parameters ``drop_params`` (e.g. an image number of the previous run). While the runs
    root holds only the first-start demo, the picker opens on its GAN run (the one with GAN images and a UMAP).
    """
    st.title(title)
    demo_gan = only_demo(settings.runs_root()).get(GAN)
    run = select_run(preferred=demo_gan.id if demo_gan else None)
    if run is None:
        st.info(NO_RUNS)
        return None
    if reset_on_run_change(state_prefix, run.id):
        for param in drop_params:
            st.query_params.pop(param, None)
    return run
