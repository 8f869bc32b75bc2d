"""Completeness: find the holes in the coverage of the selected streams, ask the ingestors to
replay them (``replay.<source>``: ReplayRequest -> ReplayReply), and wait until the history
writer has stored the replayed events (the coverage shows them).

A hole of a stream, inside the export range ``[start, end)``:

- a gap the feed reported (``StreamCoverage.gaps``: not resynced yet);
- the space between two covered runs (the writer splits runs where events are further apart
  than the kind's maximum spacing, so such a space is missing data);
- the uncovered start / end of the range, when longer than ``min_gap_ns`` (and not in the future).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from marketbus.contracts import codec, subjects
from marketbus.contracts.jobs import ReplayReply, ReplayRequest, StreamCoverage, TimeRange

log = logging.getLogger("marketbus.export_orchestrator.gaps")


class Hole(msgspec.Struct, frozen=True, array_like=True):
    kind: str
    source: str
    venue: str
    symbol: str
    start_ns: int
    end_ns: int  # exclusive


class ReplayOutcome(msgspec.Struct, kw_only=True):
    hole: Hole
    accepted: bool = False
    events: int = 0
    reason: str | None = None


def _merge(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def holes_of(cov: StreamCoverage, start_ns: int, end_ns: int, min_gap_ns: int, now_ns: int | None = None) -> list[Hole]:
    """The holes of one stream in ``[start_ns, end_ns)``."""
    end = min(end_ns, now_ns if now_ns is not None else time.time_ns())
    raw: list[tuple[int, int]] = []
    for g in cov.gaps:
        a, b = max(g.start_ns, start_ns), min(g.end_ns + 1, end)
        if a < b:
            raw.append((a, b))
    covered = _merge([(r.start_ns, r.end_ns + 1) for r in cov.covered])
    if covered:
        prev_end = start_ns
        for i, (a, b) in enumerate(covered):
            inner = i > 0
            lo, hi = max(prev_end, start_ns), min(a, end)
            if lo < hi and (inner or hi - lo >= min_gap_ns):
                raw.append((lo, hi))
            prev_end = max(prev_end, b)
        if end - prev_end >= min_gap_ns:
            raw.append((prev_end, end))
    return [Hole(cov.kind, cov.source, cov.venue, cov.symbol, a, b) for a, b in _merge(raw) if a < b]


def all_holes(coverage: Sequence[StreamCoverage], start_ns: int, end_ns: int, min_gap_ns: int) -> list[Hole]:
    now = time.time_ns()
    return [h for c in coverage for h in holes_of(c, start_ns, end_ns, min_gap_ns, now)]


def still_open(hole: Hole, holes: Sequence[Hole]) -> bool:
    return any(h.kind == hole.kind and h.source == hole.source and h.venue == hole.venue and h.symbol == hole.symbol
               and h.start_ns < hole.end_ns and h.end_ns > hole.start_ns for h in holes)


async def request_replay(nc: Any, hole: Hole, request_id: str, timeout: float) -> ReplayOutcome:
    req = ReplayRequest(request_id=request_id, source=hole.source, venue=hole.venue, symbol=hole.symbol,
                        kind=hole.kind, start_ns=hole.start_ns, end_ns=hole.end_ns)
    try:
        msg = await nc.request(subjects.replay(hole.source), codec.encode(req), timeout=timeout,
                               headers=codec.headers_for(req, msg_id=request_id))
    except TimeoutError:
        return ReplayOutcome(hole=hole, reason=f"no replay reply from {hole.source} within {timeout}s")
    except Exception as exc:
        return ReplayOutcome(hole=hole, reason=f"{hole.source} cannot replay ({type(exc).__name__})")
    try:
        reply = codec.decode_as(msg.data, ReplayReply)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return ReplayOutcome(hole=hole, reason=f"bad replay reply: {exc}")
    return ReplayOutcome(hole=hole, accepted=reply.accepted, events=reply.events, reason=reply.reason)


async def fill_gaps(
    nc: Any, coverage_fn: Callable[[], Awaitable[list[StreamCoverage]]], start_ns: int, end_ns: int, *,
    job_id: str, min_gap_ns: int, replay_timeout_s: float, wait_s: float, poll_s: float = 0.25,
    on_progress: Callable[[str], Awaitable[None]] | None = None,
) -> tuple[list[StreamCoverage], list[ReplayOutcome]]:
    """Replay every hole that can be replayed and wait for it to be stored. Returns the coverage
    finally achieved and what each replay request did."""
    coverage = await coverage_fn()
    holes = all_holes(coverage, start_ns, end_ns, min_gap_ns)
    if not holes:
        return coverage, []
    if on_progress:
        await on_progress(f"{len(holes)} hole(s) in the coverage: asking for replays")
    outcomes = await asyncio.gather(*(
        request_replay(nc, h, f"{job_id}-{i}", replay_timeout_s) for i, h in enumerate(holes)))
    waiting = [o.hole for o in outcomes if o.accepted and o.events > 0]
    for o in outcomes:
        log.info("replay %s/%s/%s/%s [%d, %d): accepted=%s events=%d %s", o.hole.kind, o.hole.source, o.hole.venue,
                 o.hole.symbol, o.hole.start_ns, o.hole.end_ns, o.accepted, o.events, o.reason or "")
    if not waiting:
        return coverage, list(outcomes)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        coverage = await coverage_fn()
        now_holes = all_holes(coverage, start_ns, end_ns, min_gap_ns)
        waiting = [h for h in waiting if still_open(h, now_holes)]
        if not waiting or loop.time() > deadline:
            break
        await asyncio.sleep(poll_s)
    if waiting:
        log.warning("%d replayed hole(s) not covered after %.0fs", len(waiting), wait_s)
    return coverage, list(outcomes)


def clip_coverage(coverage: Sequence[StreamCoverage], start_ns: int, end_ns: int) -> list[StreamCoverage]:
    out = []
    for c in coverage:
        covered = [TimeRange(max(r.start_ns, start_ns), min(r.end_ns, end_ns - 1)) for r in c.covered
                   if r.end_ns >= start_ns and r.start_ns < end_ns]
        gaps = [TimeRange(max(r.start_ns, start_ns), min(r.end_ns, end_ns - 1)) for r in c.gaps
                if r.end_ns >= start_ns and r.start_ns < end_ns]
        out.append(msgspec.structs.replace(c, covered=covered, gaps=gaps))
    return out
