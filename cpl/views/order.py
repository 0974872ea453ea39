"""The order in which queries are browsed: worst first, best first or by file, optionally one identity or camera.

Worst first is fast-reid's ``visualize_result.py`` order: by the query's average precision, lowest first, and
among equal APs the one whose first true match is ranked lowest first. Queries without a valid match in the
gallery (AP NaN) come last in both sorted orders. Ties keep file order, so the order is deterministic.
"""

from __future__ import annotations

import numpy as np

ORDERS = {"worst": "worst first", "best": "best first", "file": "by file"}


def query_order(ap: np.ndarray, first_match: np.ndarray | None, order: str, *, pids: np.ndarray | None = None,
                camids: np.ndarray | None = None, pid: int | None = None, camid: int | None = None) -> np.ndarray:
    """Query rows [M] int64 in ``order`` (a key of :data:`ORDERS`), keeping those of identity ``pid`` and camera
    ``camid`` when given (``pids``/``camids`` [Q] int are then needed).

    ``ap`` [Q] float (NaN: no valid match); ``first_match`` [Q] int, the 1-based rank of the first true match
    (-1: none), or None for a run written before it was recorded (the AP alone then orders).
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    ap = np.asarray(ap, dtype=np.float64)
    rows = np.arange(len(ap))
    keep = np.ones(len(ap), dtype=bool)
    if pid is not None:
        keep &= np.asarray(pids) == pid
    if camid is not None:
        keep &= np.asarray(camids) == camid
    if order == "file":
        return rows[keep]
    first = np.zeros(len(ap)) if first_match is None else np.asarray(first_match, dtype=np.float64)
    missing = np.isnan(ap)
    sign = 1.0 if order == "worst" else -1.0
    # np.lexsort: the last key is the primary one
    ranked = np.lexsort((rows, -sign * first, sign * np.nan_to_num(ap, nan=0.0), missing))
    return ranked[keep[ranked]]


def match_rank_text(ap: float, first_match: int | None) -> str:
    """``"AP 23.4% · first match at rank 7"`` for a query (``ap`` a fraction; NaN: no valid match)."""
    if np.isnan(ap):
        return "no valid match in the gallery"
    text = f"AP {100 * ap:.1f}%"
    return text + (f" · first match at rank {first_match}" if first_match is not None and first_match > 0 else "")
