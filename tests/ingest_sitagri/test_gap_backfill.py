"""``SitagriLive.backfill_gap`` on its own (a fake ingestor, no vendor, no bus): a back-fill covers
every quote its gap was for, and says ``resynced`` only when it did."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace
from typing import Any

import pytest

from services.ingest_sitagri.client import VendorError
from services.ingest_sitagri.live import GAP_ATTEMPTS, GapNotFilled, SitagriLive

NS = 1_000_000_000
Q = "/market/sources/EURONEX/future/EMA/deliveries/EMAC01"


class FakeGap:
    def __init__(self) -> None:
        self.states: list[str] = []
        self.since_ns: int | None = None
        self.open_gap: tuple[int, int] | None = None

    def interrupted(self, at_ns: int | None = None) -> None:
        self.since_ns = self.since_ns or at_ns

    async def report(self, start: int | None, end_ns: int | None = None, detail: str = "") -> None:
        self.states.append("gap")

    async def resynced(self, detail: str = "") -> None:
        self.states.append("resynced")
        self.since_ns = None

    async def lost(self, gap: tuple[int, int], detail: str) -> None:
        self.states.append("lost")
        self.lost_detail = detail
        self.since_ns = None
        self.open_gap = None


class FakeBackfill:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.asked: list[tuple[str, int, int]] = []

    async def history(self, quote: str, start: int, end: int, resolution: str, *, dedupe: bool,
                      sink: list[Any]) -> None:
        self.asked.append((quote, start, end))
        if self.fail:
            raise VendorError(503, "history down")

    async def search_news(self, *args: Any, **kwargs: Any) -> None:
        return None


def live_with(backfill: FakeBackfill) -> SitagriLive:
    metric = SimpleNamespace(labels=lambda *a: SimpleNamespace(inc=lambda *a: None))
    ing: Any = SimpleNamespace(
        source="sitagri", metrics=SimpleNamespace(frames_in=metric), now_ns=time.time_ns,
        crawl=SimpleNamespace(quotes={}), backfill=backfill, settings=SimpleNamespace(news_sources=()),
        feeds=SimpleNamespace(set_state=lambda *a: None), recent=set(), log=logging.getLogger("test_gap_backfill"))
    live = SitagriLive(ing)
    live.gap = FakeGap()  # type: ignore[assignment]
    return live


def resumed(live: SitagriLive, point: int) -> None:
    """What ``resume()`` leaves: the quote's resume point is the start of the session's gap."""
    live._gap_from = {Q: point}
    live.last_ts[Q] = point
    live.netbus_gap_open = True
    live._first_live = {}


async def test_a_gap_is_back_filled_for_its_quotes_even_when_feed_control_lists_none_at_that_moment() -> None:
    """A resume point was read, then the quote list emptied before the back-fill ran (feed
    control stopped listening for a moment): the hole is back-filled all the same, not
    declared resynced with nothing fetched."""
    backfill = FakeBackfill()
    live = live_with(backfill)
    point = time.time_ns() - 5 * NS
    resumed(live, point)
    await live.set_quotes([])  # no session: only the lists change
    await live.backfill_gap(point)
    assert [q for q, _, _ in backfill.asked] == [Q]
    assert backfill.asked[0][1] == point
    assert live.gap.states == ["gap", "resynced"]  # type: ignore[attr-defined]
    assert not live.netbus_gap_open


async def test_a_back_fill_that_could_not_read_a_quotes_history_is_not_resynced() -> None:
    backfill = FakeBackfill(fail=True)
    live = live_with(backfill)
    point = time.time_ns() - 5 * NS
    resumed(live, point)
    live.live_quotes = [Q]
    live.listening = frozenset(live.live_quotes)
    live._first_live = {Q: time.time_ns()}
    with pytest.raises(GapNotFilled):
        await live.backfill_gap(point)
    assert live.gap.states == ["gap"]  # type: ignore[attr-defined]  # open: the next session fills it
    assert live.netbus_gap_open and live.gaps_filled == 0
    backfill.fail = False
    await live.backfill_gap(point)  # the next session's try
    assert live.gap.states == ["gap", "gap", "resynced"]  # type: ignore[attr-defined]
    assert [q for q, _, _ in backfill.asked] == [Q, Q] and backfill.asked[1][1] == point


async def test_a_history_that_stays_unreadable_is_reported_lost_and_the_live_feed_goes_on() -> None:
    """The vendor never serves the hole's history: after GAP_ATTEMPTS sessions the gap is reported
    lost (never resynced) and the back-fill returns, so the live session is not ended for good."""
    backfill = FakeBackfill(fail=True)
    live = live_with(backfill)
    point = time.time_ns() - 5 * NS
    resumed(live, point)
    live.live_quotes = [Q]
    live.listening = frozenset(live.live_quotes)
    for _ in range(GAP_ATTEMPTS - 1):
        live._first_live = {Q: time.time_ns()}
        with pytest.raises(GapNotFilled):
            await live.backfill_gap(point)
    live._first_live = {Q: time.time_ns()}
    await live.backfill_gap(point)  # the last try: no exception, the session carries on
    gap: Any = live.gap
    assert gap.states == ["gap"] * GAP_ATTEMPTS + ["lost"]
    assert "could not be back-filled" in gap.lost_detail and Q in gap.lost_detail
    assert not live.netbus_gap_open and live.gaps_filled == 0 and live.gap_attempts == 0
    assert len(backfill.asked) == GAP_ATTEMPTS
