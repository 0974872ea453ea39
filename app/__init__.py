"""Streamlit-side helpers of CPL Studio: settings, safe paths, cached readers of run directories.

Nothing here imports torch or trains: the app reads run directories and starts ``cpl`` processes.
"""

from __future__ import annotations


def _leave_pages_folder_mode() -> None:
    """Make ``streamlit_app.py`` the router even when a session opens a page URL first.

    Streamlit treats a folder named ``pages/`` beside the entry script as an old-style multipage app
    until some session calls ``st.navigation``: on a fresh server, opening ``/runs?run=ID`` would run
    ``pages/runs.py`` alone (no logo, no sections, no demo start). Every page imports this package, so
    the first such run switches the mode off and reruns through the entry script.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
        from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx
    except ImportError:  # another Streamlit layout: nothing to fix
        return
    if PagesManager.uses_pages_directory and get_script_run_ctx() is not None:
        PagesManager.uses_pages_directory = False
        import streamlit as st

        st.rerun()


_leave_pages_folder_mode()
