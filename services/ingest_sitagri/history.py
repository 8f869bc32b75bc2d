"""History back-fill: paging around the vendor's cap (8192 points per reply).

``{quote}/history/START,END,RES`` returns at most ``cap`` points; START > END returns them newest
first (the cap then drops the oldest instead of the newest). A page that comes back full is
followed by the next one starting at the second of its last point (START/END are whole seconds,
points may be finer): points already yielded at that second are skipped, so there is no hole and
no duplicate. Expired futures use ``{class}/expired/{YYYY}/{M}/history/START,END,RES[,SHIFT]``.
"""

from __future__ import annotations

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
                resolution: str, cap: int = 8192, descending: bool = False, shift_s: int = 0,
                stats: PagingStats | None = None) -> AsyncIterator[Page]:
    """Every point with ``start <= key <= end`` (key = the entry's reference date), page by page.

    ``make_ref(a, b)`` builds the request reference for START=a, END=b (whole seconds; a > b asks
    for a descending reply). ``shift_s``: the vendor added this to every timestamp (expired
    route's SHIFT); ranges and paging work on the unshifted times, events keep the shifted ones."""
    stats = stats if stats is not None else PagingStats()
    lo_s = start_ns // NS
    hi_s = -(-end_ns // NS)
    overlap: set[int] = set()  # keys already yielded that the next request covers again
    while lo_s <= hi_s:
        ref = make_ref(hi_s, lo_s) if descending else make_ref(lo_s, hi_s)
        stats.requests += 1
        stats.refs.append(ref)
        hist: VHistory = normalize.decode_history(await fetch(ref))
        raw_entries: list[HistEntry] = [e for r in hist.ranges for e in r.data]
        shift_ns = shift_s * NS
        keyed = [(normalize.entry_key(e, hist.code) - shift_ns, e) for e in raw_entries]
        full = len(raw_entries) >= cap
        if full:
            stats.full_pages += 1
        fresh = []
        for key, entry in keyed:
            if key < start_ns or key > end_ns or key in overlap:
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
        # the next request starts (ascending) or ends (descending) at the second of the page's
        # last point; the points of that second already yielded are skipped by key
        keys = [k for k, _ in keyed]
        if descending:
            edge = min(keys)
            new_lo, new_hi = lo_s, -(-edge // NS)
            covered = {k for k in keys if k <= new_hi * NS}
        else:
            edge = max(keys)
            new_lo, new_hi = edge // NS, hi_s
            covered = {k for k in keys if k >= new_lo * NS}
        if (new_lo, new_hi) == (lo_s, hi_s):
            if not fresh:
                raise HistoryStuck(f"more than {cap} points in one second at {ref}")
            overlap |= covered
        else:
            overlap = covered
        lo_s, hi_s = new_lo, new_hi


def events_of(page: Page, ts_recv: int, replay: bool = True) -> list[object]:
    return [normalize.history_event(page.code, page.quote, page.quality, e, page.resolution, ts_recv, replay)
            for _, e in page.entries]
