"""History back-fill: paging around the vendor's cap (8192 points per reply).

``{quote}/history/START,END,RES`` returns at most ``cap`` points; START > END returns them newest
first (the cap then drops the oldest instead of the newest). A page that comes back full is
followed by the next one starting at the second of its last point (START/END are whole seconds,
points may be finer): points already yielded at that second are skipped, so there is no hole and
no duplicate. Expired futures use ``{class}/expired/{YYYY}/{M}/history/START,END,RES[,SHIFT]``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from . import normalize
from .normalize import HistEntry, VHistory

NS = 1_000_000_000
Fetch = Callable[[str], Awaitable[bytes]]


class HistoryStuck(Exception):
    """More than ``cap`` points share one second: the wire cannot page inside it."""


@dataclass
class Page:
    code: str
    quote: str
    quality: str
    resolution: str
    entries: list[tuple[int, HistEntry]]  # (key ns, entry), oldest first
    request: str


@dataclass
class PagingStats:
    requests: int = 0
    points: int = 0
    skipped: int = 0
    full_pages: int = 0
    refs: list[str] = field(default_factory=list)


def history_ref(quote_ref: str, a: int, b: int, resolution: str) -> str:
    return f"{quote_ref}/history/{a},{b},{resolution}"


def expired_ref(class_ref: str, year: int, month: int, a: int, b: int, resolution: str, shift: int = 0) -> str:
    ref = f"{class_ref}/expired/{year}/{month}/history/{a},{b},{resolution}"
    return f"{ref},{shift}" if shift else ref


def expired_quote_ref(class_ref: str, year: int, month: int) -> str:
    """The delivery reference of an expired contract (EMA, 2024, 11 -> .../deliveries/EMAX24)."""
    code = class_ref.rstrip("/").rsplit("/", 1)[-1]
    return f"{class_ref}/deliveries/{code}{'FGHJKMNQUVXZ'[month - 1]}{year % 100:02d}"


async def pages(fetch: Fetch, make_ref: Callable[[int, int], str], start_ns: int, end_ns: int, *,
                resolution: str, cap: int = 8192, descending: bool = False,
                stats: PagingStats | None = None) -> AsyncIterator[Page]:
    """Every point with ``start <= key <= end`` (key = the entry's reference date), page by page.

    ``make_ref(a, b)`` builds the request reference for START=a, END=b (whole seconds; a > b asks
    for a descending reply)."""
    stats = stats if stats is not None else PagingStats()
    lo_s = start_ns // NS
    hi_s = -(-end_ns // NS)
    boundary_s: int | None = None
    boundary_keys: set[int] = set()
    while lo_s <= hi_s:
        ref = make_ref(hi_s, lo_s) if descending else make_ref(lo_s, hi_s)
        stats.requests += 1
        stats.refs.append(ref)
        hist: VHistory = normalize.decode_history(await fetch(ref))
        raw_entries: list[HistEntry] = [e for r in hist.ranges for e in r.data]
        keyed = [(normalize.entry_key(e, hist.code), e) for e in raw_entries]
        full = len(raw_entries) >= cap
        if full:
            stats.full_pages += 1
        fresh = []
        for key, entry in keyed:
            if key < start_ns or key > end_ns:
                stats.skipped += 1
                continue
            if boundary_s is not None and key // NS == boundary_s and key in boundary_keys:
                stats.skipped += 1
                continue
            fresh.append((key, entry))
        fresh.sort(key=lambda ke: ke[0])
        if fresh:
            stats.points += len(fresh)
            res = hist.ranges[0].resolution if hist.ranges else resolution
            yield Page(hist.code, hist.quote, hist.quality, str(res if res is not None else resolution), fresh, ref)
        if not full or not keyed:
            return
        # the next page starts (or ends) at the second of the page's last point
        edge = min(k for k, _ in keyed) if descending else max(k for k, _ in keyed)
        edge_s = edge // NS if not descending else math.floor(edge / NS)
        keys_at_edge = {k for k, _ in keyed if k // NS == edge_s}
        if boundary_s == edge_s:
            if not fresh:
                raise HistoryStuck(f"more than {cap} points in second {edge_s} of {ref}")
            boundary_keys |= keys_at_edge
        else:
            boundary_s, boundary_keys = edge_s, keys_at_edge
        if descending:
            hi_s = edge_s if edge % NS == 0 and False else edge_s + (1 if edge % NS else 0)
            # points at the boundary second are in the next page again (skipped by key)
            hi_s = edge_s + 1 if edge % NS else edge_s
        else:
            lo_s = edge_s


def events_of(page: Page, ts_recv: int, replay: bool = True) -> list[object]:
    return [normalize.history_event(page.code, page.quote, page.quality, e, page.resolution, ts_recv, replay)
            for _, e in page.entries]
