"""Image grids of the inspection pages: thumbnails with coloured borders and captions, pagination, and the
per-run widget state of those pages.

Every image goes through :func:`app.readers.thumbnail`, which refuses a path outside the allowed roots;
a refused or missing image is replaced by a short notice, never read. Borders are drawn into the
thumbnail's pixels, so the colour that marks a match survives a screenshot or a saved image.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import streamlit as st
from PIL import Image, ImageOps

from cpl.runs.rundir import RunDir

from . import settings
from .readers import thumbnail

# Border colours: a true match, a wrong identity, a match the Market protocol ignores (same camera,
# junk), a query, a label that is still moving late in training, and nothing to report.
GREEN = "#1a9641"
RED = "#d7191c"
GREY = "#9e9e9e"
BLUE = "#2b83ba"
AMBER = "#fdae61"
NEUTRAL = "#e0e0e0"

MISSING = "image not shown (missing, or outside the allowed folders)"


@dataclass(frozen=True)
class Card:
    """One image of a grid: ``path`` as stored in the run's CSV, its caption (Markdown) and border colour.

    ``key`` (unique on the page) adds a button under the image that calls the grid's ``on_pick(key)``.
    ``aspect`` (height / width) shows the image at that shape, as the network saw it: a square GAN sample
    beside 2:1 person crops is resized to the crops' aspect in training too.
    """

    path: str
    caption: str
    colour: str = NEUTRAL
    key: str | None = None
    aspect: float | None = None


@st.cache_data(show_spinner=False, max_entries=4096)
def framed(png: bytes, colour: str, width: int) -> bytes:
    """PNG bytes of ``png`` with a ``width``-pixel border of ``colour`` (any PIL colour string) around it."""
    with Image.open(io.BytesIO(png)) as im:
        out = ImageOps.expand(im.convert("RGB"), border=width, fill=colour)
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


@st.cache_data(show_spinner=False, max_entries=4096)
def reshaped(png: bytes, aspect: float, max_side: int) -> bytes:
    """PNG bytes of ``png`` resized to ``aspect`` (height / width), its longer side ``max_side`` pixels."""
    height, width = (max_side, max(1, round(max_side / aspect))) if aspect >= 1 else \
        (max(1, round(max_side * aspect)), max_side)
    with Image.open(io.BytesIO(png)) as im:
        out = im.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


def card_image(run: RunDir, card: Card, max_side: int = 128) -> bytes | None:
    """The bordered thumbnail of ``card`` (PNG bytes), or None when the image is missing or refused."""
    png = thumbnail(run, card.path, settings.allowed_roots(), max_side=max_side)
    if png is None:
        return None
    if card.aspect:
        png = reshaped(png, card.aspect, max_side)
    return framed(png, card.colour, max(2, max_side // 32))


def grid(run: RunDir, cards: Sequence[Card], *, columns: int = 8, max_side: int = 128,
         button: str = "Inspect", on_pick: Callable[[str], None] | None = None) -> int:
    """Show ``cards`` in rows of ``columns``; returns how many images were shown.

    A card whose image is refused or missing shows its caption and :data:`MISSING` instead.
    """
    shown = 0
    for start in range(0, len(cards), columns):
        cols = st.columns(columns)
        for col, card in zip(cols, cards[start:start + columns]):
            with col:
                data = card_image(run, card, max_side)
                if data is None:
                    st.caption(f"{card.caption}  \n⚠ {MISSING}")
                else:
                    st.image(data, caption=card.caption, width="stretch")
                    shown += 1
                if card.key is not None and on_pick is not None:
                    st.button(button, key=card.key, on_click=on_pick, args=(card.key,), type="secondary",
                              icon=":material/help:", width="stretch")
    return shown


def page_bounds(total: int, per_page: int, *, key: str) -> tuple[int, int]:
    """``(start, stop)`` of the current page of ``total`` items, with a page picker when there are several."""
    pages = max(1, math.ceil(total / per_page))
    page = st.pagination(pages, key=key) if pages > 1 else 1
    page = min(max(1, int(page)), pages)
    start = (page - 1) * per_page
    stop = min(total, start + per_page)
    if total:
        where = f" · page {page} of {pages}" if pages > 1 else ""
        st.caption(f"Images {start + 1:,}–{stop:,} of {total:,}{where}")
    return start, stop


def reset_on_run_change(prefix: str, run_id: str) -> bool:
    """Forget the widget state under ``prefix`` when the page now shows another run; True if it did.

    Filters, page numbers and picked images are about one run (identities, row numbers); carried over to
    another they would be out of range or meaningless.
    """
    marker = f"{prefix}run"
    previous = st.session_state.get(marker)
    if previous == run_id:
        return False
    for key in [k for k in st.session_state if isinstance(k, str) and k.startswith(prefix)]:
        del st.session_state[key]
    st.session_state[marker] = run_id
    return previous is not None
