"""Streamlit-side helpers of CPL Studio: settings, safe paths, cached readers of run directories.

Nothing here imports torch or trains: the app reads run directories and starts ``cpl`` processes.
"""
