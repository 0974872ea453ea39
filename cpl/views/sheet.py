"""``cpl visrank RUN``: a ranked-list sheet, one PNG with a row per query: the query, then its top-k gallery images
framed green (a true match) or red (another identity), as torchreid's ``visrank``.

Like torchreid, the gallery images the Market-1501 protocol leaves out for that query (its identity seen by its own
camera, junk) are skipped, so the k images of a row are the protocol's ranks 1..k and the first green one sits at
the query's first-match rank. Reads only ``retrieval.npz`` and ``features/{query,gallery}.csv``: no network.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageOps

from cpl.data.images import ImageError, decode_file
from cpl.runs.atomic import write_bytes
from cpl.runs.rundir import RunDir
from cpl.views.order import match_rank_text, query_order

CELL_H, CELL_W = 128, 64  # every image is shown at this size, as the runs' usual 128×64 input
BORDER = 4
SPACING = 6
QUERY_GAP = 30  # extra space between the query and its list (torchreid: QUERY_EXTRA_SPACING)
LABEL_H = 14
GREEN, RED, BLUE = (0, 170, 0), (220, 0, 0), (40, 90, 220)
MISSING = (200, 200, 200)


class SheetError(RuntimeError):
    """Why a sheet cannot be written; one line for the person who asked."""


def load_lists(run: RunDir) -> tuple[dict[str, np.ndarray], pd.DataFrame, pd.DataFrame]:
    """(retrieval.npz arrays, query table, gallery table) of a finished run; raises :class:`SheetError`."""
    if not run.retrieval.is_file():
        raise SheetError(f"{run.id}: no retrieval lists yet (they are written at the end of the run)")
    with np.load(run.retrieval, allow_pickle=False) as z:
        ret = {k: z[k] for k in z.files}
    try:
        query = pd.read_csv(run.features / "query.csv")
        gallery = pd.read_csv(run.features / "gallery.csv")
    except (OSError, pd.errors.ParserError) as exc:
        raise SheetError(f"{run.id}: cannot read the query/gallery tables ({exc})") from None
    if len(query) != ret["index"].shape[0]:
        raise SheetError(f"{run.id}: features/query.csv does not match retrieval.npz")
    return ret, query, gallery


def lists_of(ret: dict[str, np.ndarray], rerank: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(index [Q, k], ap [Q], first_match [Q] or None) of the plain or re-ranked lists."""
    if rerank:
        if "rr_index" not in ret:
            raise SheetError("the run has no re-ranked lists (eval.rerank was off)")
        return ret["rr_index"], ret["rr_ap"], ret.get("rr_first_match")
    return ret["index"], ret["ap"], ret.get("first_match")


def protocol_row(q: pd.Series, index_row: np.ndarray, gallery: pd.DataFrame, topk: int) -> list[tuple[int, bool]]:
    """The first ``topk`` (gallery row, is a true match) of one query's list, protocol-excluded images skipped."""
    out = []
    for g_row in index_row:
        g = gallery.iloc[int(g_row)]
        if g.pid == -1 or (g.pid == q.pid and g.camid == q.camid):
            continue
        out.append((int(g_row), bool(g.pid == q.pid)))
        if len(out) == topk:
            break
    return out


def _tile(run: RunDir, stored: str, colour: tuple[int, int, int]) -> Image.Image:
    try:
        image = decode_file(run.resolve(stored)).resize((CELL_W, CELL_H), Image.Resampling.BILINEAR)
    except ImageError:
        image = Image.new("RGB", (CELL_W, CELL_H), MISSING)
    return ImageOps.expand(image, border=BORDER, fill=colour)


def render(run: RunDir, rows: list[int], topk: int, rerank: bool = False) -> Image.Image:
    """The sheet of the query rows ``rows`` with ``topk`` gallery images each (RGB, one row per query)."""
    ret, query, gallery = load_lists(run)
    index, ap, first = lists_of(ret, rerank)
    tile_w, tile_h = CELL_W + 2 * BORDER, CELL_H + 2 * BORDER
    width = tile_w * (topk + 1) + SPACING * topk + QUERY_GAP
    row_h = tile_h + LABEL_H + SPACING
    sheet = Image.new("RGB", (width, max(1, row_h * len(rows))), "white")
    draw = ImageDraw.Draw(sheet)
    for i, qi in enumerate(rows):
        q, y = query.iloc[qi], i * row_h
        draw.text((0, y), f"q{qi} pid {q.pid} cam {q.camid} · {match_rank_text(float(ap[qi]), _int(first, qi))}",
                  fill="black")
        sheet.paste(_tile(run, q.path, BLUE), (0, y + LABEL_H))
        for j, (g_row, match) in enumerate(protocol_row(q, index[qi], gallery, topk)):
            x = tile_w + QUERY_GAP + j * (tile_w + SPACING)
            sheet.paste(_tile(run, gallery.path.iat[g_row], GREEN if match else RED), (x, y + LABEL_H))
    return sheet


def _int(values: np.ndarray | None, i: int) -> int | None:
    return None if values is None else int(values[i])


def pick_rows(run: RunDir, order: str, count: int, rerank: bool = False, pid: int | None = None,
              camid: int | None = None) -> list[int]:
    """The first ``count`` query rows of ``run`` in ``order`` (:func:`cpl.views.order.query_order`)."""
    ret, query, _ = load_lists(run)
    _, ap, first = lists_of(ret, rerank)
    rows = query_order(ap, first, order, pids=query.pid.to_numpy(), camids=query.camid.to_numpy(), pid=pid,
                       camid=camid)
    return rows[:count].tolist()


def sheet_path(run: RunDir, order: str, count: int, topk: int, rerank: bool, pid: int | None = None,
               camid: int | None = None) -> Path:
    """Where ``cpl visrank`` writes by default: ``visrank/<order>-<count>-top<k>[-pid<P>][-cam<C>][-rr].png``."""
    parts = [order, str(count), f"top{topk}"] + ([f"pid{pid}"] if pid is not None else []) \
        + ([f"cam{camid}"] if camid is not None else []) + (["rr"] if rerank else [])
    return run.sheets / ("-".join(parts) + ".png")


def visrank_main(args: argparse.Namespace) -> int:
    """The ``cpl visrank`` command: write the sheet and print its path; errors exit 2."""
    run = RunDir(Path(args.run_dir))
    try:
        if args.topk < 1:
            raise SheetError(f"--topk must be at least 1, got {args.topk}")
        if args.queries:
            rows = [int(v) for v in args.queries.split(",") if v.strip()]
            order, count = "chosen", len(rows)
        else:
            order = "best" if args.best else ("file" if args.by_file else "worst")
            count = args.best or args.by_file or args.worst
            rows = pick_rows(run, order, count, args.rerank, args.pid, args.cam)
        n_query = len(load_lists(run)[1])
        if not rows or any(r < 0 or r >= n_query for r in rows):
            raise SheetError(f"no such queries: {rows} (the run has {n_query}, rows 0..{n_query - 1})")
        buf = io.BytesIO()
        render(run, rows, args.topk, args.rerank).save(buf, format="PNG")
    except SheetError as exc:
        print(f"cpl: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else sheet_path(run, order, count, args.topk, args.rerank, args.pid, args.cam)
    write_bytes(out, buf.getvalue())
    print(out)
    return 0


def add_visrank_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``cpl visrank``."""
    p.add_argument("run_dir")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--worst", type=int, default=20, metavar="N", help="the N worst queries (default 20)")
    which.add_argument("--best", type=int, metavar="N", help="the N best queries")
    which.add_argument("--by-file", type=int, metavar="N", help="the first N queries in file order")
    which.add_argument("--queries", help="these query rows, comma-separated (e.g. 3,17,40)")
    p.add_argument("--topk", type=int, default=10, help="gallery images per query (default 10)")
    p.add_argument("--pid", type=int, help="only queries of this identity")
    p.add_argument("--cam", type=int, help="only queries from this camera")
    p.add_argument("--rerank", action="store_true", help="the k-reciprocal re-ranked lists")
    p.add_argument("--out", help="PNG to write (default: RUN/visrank/<order>-<N>-top<k>.png)")
