"""Coverage (shared by the history writer and every reader of the tables): which time ranges of each stream are stored, and where the feed reported gaps.

Both are derived from the stored data itself, so they are exactly as durable as the rows:

- covered: the runs of a stream's events in which no two consecutive events are further apart
  than the kind's maximum gap (setting ``coverage_max_gap_s``, e.g. ``{"default": 300,
  "bar": 345600}``); each run is a ``TimeRange(first ts_event, last ts_event)``;
- gaps: the :class:`FeedStatus` events (stored as kind ``feed_status``): a ``gap`` event opens
  ``[gap_start, gap_end]`` for its feed (``venue``/``symbol`` ``_`` = every stream of the
  source, ``kind`` None = every kind); a later ``resynced`` event of the same feed closes the
  gaps it overlaps (or all open gaps of the feed when it carries no range).
"""  # noqa: E501

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from marketbus.contracts.base import NO_VENUE
from marketbus.contracts.jobs import StreamCoverage, TimeRange

NS = 1_000_000_000
DEFAULT_MAX_GAP_NS: dict[str, int] = {"default": 300 * NS, "bar": 4 * 86_400 * NS, "news": 86_400 * NS}


def open_gaps(statuses: Iterable[Any]) -> list[tuple[tuple[str, str, str, str | None], int, int]]:
    """Gaps still open after applying every status in time order: ((source, venue, symbol, kind), start, end)."""
    opened: dict[tuple[str, str, str, str | None], list[tuple[int, int]]] = {}
    for st in sorted(statuses, key=lambda s: (s.ts, s.id)):
        key = (st.source, st.venue, st.symbol, st.kind)
        if st.state == "gap":
            start = st.gap_start if st.gap_start is not None else st.ts
            end = st.gap_end if st.gap_end is not None else st.ts
            opened.setdefault(key, []).append((min(start, end), max(start, end)))
        elif st.state == "resynced":
            gaps = opened.get(key, [])
            if st.gap_start is None and st.gap_end is None:
                opened[key] = []
            else:
                lo = st.gap_start if st.gap_start is not None else -(2**63)
                hi = st.gap_end if st.gap_end is not None else 2**63 - 1
                opened[key] = [g for g in gaps if g[1] < lo or g[0] > hi]
    return [(key, a, b) for key, gaps in opened.items() for a, b in gaps]


def _applies(key: tuple[str, str, str, str | None], kind: str, source: str, venue: str, symbol: str) -> bool:
    s, v, y, k = key
    return (s == source and (v in (NO_VENUE, venue)) and (y in (NO_VENUE, symbol))
            and (k is None or k == kind))


def build_coverage(runs: Sequence[tuple[str, str, str, str, int, int, int]], statuses: Iterable[Any],
                   selector: Any, start_ns: int, end_ns: int) -> list[StreamCoverage]:
    streams: dict[tuple[str, str, str, str], tuple[list[TimeRange], int]] = {}
    for kind, source, venue, symbol, lo, hi, rows in runs:
        ranges, n = streams.get((kind, source, venue, symbol), ([], 0))
        ranges.append(TimeRange(lo, hi))
        streams[(kind, source, venue, symbol)] = (ranges, n + rows)
    gaps = [
        (key, max(a, start_ns), min(b, end_ns)) for key, a, b in open_gaps(statuses) if b >= start_ns and a < end_ns
    ]
    # a gap reported for one specific stream shows up even when nothing of it is stored
    for (s, v, y, k), _, _ in gaps:
        if k and v != NO_VENUE and y != NO_VENUE and (k, s, v, y) not in streams and _kind_ok(selector, k) \
                and selector.match(s, v, y):
            streams[(k, s, v, y)] = ([], 0)
    out = []
    for (kind, source, venue, symbol), (ranges, rows) in sorted(streams.items()):
        mine = sorted({(a, b) for key, a, b in gaps if _applies(key, kind, source, venue, symbol)})
        out.append(StreamCoverage(kind=kind, source=source, venue=venue, symbol=symbol, covered=ranges,
                                  gaps=[TimeRange(a, b) for a, b in mine], rows=rows))
    return out


def _kind_ok(selector: Any, kind: str) -> bool:
    return kind in selector.kinds()
