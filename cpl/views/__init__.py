"""Views of a finished run directory shared by the ``cpl`` command and the app: numpy, pandas and PIL at import
time, so the Streamlit process may import them. The one view that needs the network (activation maps,
:mod:`cpl.views.activation`) imports torch inside the function that runs it, in a ``cpl actmap`` process."""
