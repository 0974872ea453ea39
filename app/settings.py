"""Where the app looks: the runs folder and the data roots, from the environment.

``CPL_RUNS_ROOT``  folder of run directories (default ``runs``)
``CPL_DATA_ROOTS`` folders whose Market-layout sub-folders the Launch page offers, separated by ``:``
                   (default ``data``; the embedded synthetic dataset is generated in ``data/synthetic``)
The app reads files only inside these folders (see :mod:`app.safety`).
"""

from __future__ import annotations

import os
from pathlib import Path

SYNTHETIC_NAME = "synthetic"


def runs_root() -> Path:
    """The runs folder, absolute: ``$CPL_RUNS_ROOT`` or ``./runs``."""
    return Path(os.environ.get("CPL_RUNS_ROOT", "runs")).resolve()


def data_roots() -> list[Path]:
    """The data roots, absolute, in the order given by ``$CPL_DATA_ROOTS`` (default ``./data``)."""
    raw = os.environ.get("CPL_DATA_ROOTS", "data")
    return [Path(p).resolve() for p in raw.split(os.pathsep) if p.strip()]


def synthetic_root() -> Path:
    """Where the embedded synthetic dataset lives: ``<first data root>/synthetic``."""
    return data_roots()[0] / SYNTHETIC_NAME


def allowed_roots() -> list[Path]:
    """Every folder the app may read a file from."""
    return [runs_root(), *data_roots()]


def shown(path: Path) -> str:
    """``path`` as a page shows it: relative to the working directory when inside it, ``~/…`` under the home
    folder, else as it is. Pages and their screenshots then name the folder the way the user started the app
    with, not the machine's layout."""
    for base, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
        try:
            rel = path.relative_to(base)
        except ValueError:
            continue
        return prefix + rel.as_posix() if str(rel) != "." or prefix else "."
    return str(path)
