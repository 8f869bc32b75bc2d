"""The Digitex ingestor end to end: the Digitex sandbox over HTTP, a real nats-server, and what ends
up in the MD / REF / STATUS / DLQ streams, checked by id against the sandbox's tape."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import msgspec
import nats
import pytest

from marketbus.books import BookBuilder
from marketbus.contracts import codec, subjects
from marketbus.contracts.ids import event_id
from marketbus.contracts.jobs import ReplayReply, ReplayRequest
from marketbus.contracts.market import Bar, BookDelta, BookSnapshot, Trade
from marketbus.contracts.reference import Currency, Instrument, Venue
from marketbus.contracts.status import DeadLetter, FeedStatus
from marketbus.runtime.natsserver import NatsServer
from marketbus.runtime.settings import SettingsError
from services.ingest_digitex.app import DigitexIngestor
from services.sandbox.common.base import SandboxRunner
from services.sandbox.registry import load_spec
from tests.helpers import per_book, scrape, wait_for
from tests.ingest_finx.bus import duplicates, events_of, read_stream

MARKET = "FS:BTCUSD"
SYMBOL = "FS-BTCUSD"


@pytest.fixture
async def sb() -> AsyncIterator[SandboxRunner]:
    async with SandboxRunner(load_spec("digitex"), port=0) as runner:
        yield runner


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_server.url)
    try:
        yield nc
    finally:
        await nc.drain()


def make(nats_server: NatsServer, sb: SandboxRunner, **overrides: Any) -> DigitexIngestor:
    options: dict[str, Any] = dict(
        nats_url=nats_server.url, base_url=sb.url + "/dapi", markets=[MARKET], trades_interval_s=0.3,
        book_interval_s=0.5, bars_interval_s=1.0, bars_backfill_s=300, max_trades=100, retry_initial_s=0.05,
        retry_max_s=0.5, heartbeat_interval_s=60,
    )
    options.update(overrides)
    return DigitexIngestor(**options)


async def tape(sb: SandboxRunner, count: int = 5000) -> dict[int, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=sb.url) as http:
        body = (await http.get("/_sandbox/digitex/tape", params={"market_id": 1, "count": count})).json()
    return {t["index"]: t for t in body["ticks"]}


async def check_trades(js: Any, sb: SandboxRunner, first_id: int, last_id: int) -> list[Trade]:
    """Every tape tick first_id..last_id is in the MD stream once, with the sandbox's values."""
    trades = [e for e in events_of(await read_stream(js, subjects.md("trade", "digitex", "DIGITEX", SYMBOL)))]
    assert duplicates(trades) == []
    truth = await tape(sb)
    by_id = {int(t.trade_id): t for t in trades}
    wanted = range(first_id, last_id + 1)
    missing = [i for i in wanted if i not in by_id]
    assert not missing, f"{len(missing)} trades missing, e.g. {missing[:5]} .. {missing[-3:]} of {first_id}..{last_id}"
    for i in wanted:
        t, w = by_id[i], truth[i]
        assert t.id == event_id("digitex", "trade", 1, i)
        assert (t.price, t.size, t.ts_event, t.side) == (Decimal(w["price"]), Decimal(w["size"]), w["timestamp"] * 1000,
                                                         {1: "buy", 2: "sell"}[w["side"]])
    assert len(wanted) >= 20
    return trades


async def test_events_carry_the_sandbox_values(nats_server: NatsServer, sb: SandboxRunner, bus: Any) -> None:
    js = bus.jetstream()
    api = sb.vendor_app.state.api
    async with make(nats_server, sb) as ing:
        state = ing.by_symbol[SYMBOL]
        await wait_for(lambda: state.last_trade_id is not None, 10, what="first trades")
        first = state.last_trade_id - 99  # the first poll takes max_trades=100 trades
        await wait_for(
            lambda: state.last_trade_id >= first + 130 and len(state.bar_cursor) == 1, 15, what="trades and bars"
        )
        await ing.flush()
        await check_trades(js, sb, first, state.last_trade_id)
        # books: a snapshot then deltas; the book they build is the sandbox's book at each tick
        market = api.markets[1]
        books = [
            e for e in events_of(await read_stream(js, "md.*.digitex.>")) if isinstance(e, BookSnapshot | BookDelta)
        ]
        assert isinstance(books[0], BookSnapshot) and duplicates(books) == []
        assert sum(isinstance(e, BookDelta) for e in books) >= 2
        builder = BookBuilder()
        for event in books:
            assert builder.apply(event) in ("snapshot", "delta", "checked")
            bids, asks = market.book(market.tape.index_at_or_before(event.ts_event))
            assert [(lv.price, lv.size) for lv in builder.bids()] == bids
            assert [(lv.price, lv.size) for lv in builder.asks()] == asks
        # bars: finished one-minute bars, equal to the tape aggregated
        bars = [e for e in events_of(await read_stream(js, "md.bar.digitex.>")) if isinstance(e, Bar)]
        assert len(bars) >= 4 and duplicates(bars) == []
        for bar in bars[-2:]:
            k0 = market.tape.index_at_or_after(bar.ts_event)
            k1 = market.tape.index_at_or_after(bar.ts_event + 60_000_000_000)
            prices = [market.price(k) for k in range(k0, k1)]
            assert (bar.open, bar.high, bar.low, bar.close) == (prices[0], max(prices), min(prices), prices[-1])
            assert bar.volume == sum((market.size(k) for k in range(k0, k1)), Decimal(0))
            assert bar.ts_event + 60_000_000_000 <= time.time_ns() and bar.interval == "1m"
        # reference data
        refs = events_of(await read_stream(js, "ref.*.digitex.>"))
        instruments = {e.vendor_symbol: e for e in refs if isinstance(e, Instrument)}
        assert set(instruments) == {MARKET}  # configured markets only
        assert instruments[MARKET].tick_size == Decimal(5) and instruments[MARKET].instrument_type == "perpetual"
        assert {e.code for e in refs if isinstance(e, Currency)} >= {"DGTX", "BTC", "USDC"}
        (venue,) = [e for e in refs if isinstance(e, Venue)]
        assert venue.attributes["rate_limit_minute"] == "500"
        assert ing.metrics.events_out.labels("digitex", "trade")._value.get() >= 130


async def test_a_429_storm_and_an_outage_end_with_no_duplicate_and_no_missing_trade(
        nats_server: NatsServer, sb: SandboxRunner, bus: Any) -> None:
    js = bus.jetstream()
    # recent_trades' full depth (1000 trades, ~100 s at 10 trades/s) outlasts the storm and the outage
    async with make(nats_server, sb, max_trades=1000) as ing, httpx.AsyncClient(base_url=sb.url) as http:
        state = ing.by_symbol[SYMBOL]
        await wait_for(lambda: state.last_trade_id is not None, 10, what="first trades")
        first = state.last_trade_id - 999
        await http.post("/_sandbox/faults", json={"rate_limit_next": 10, "retry_after_s": 1})
        await wait_for(lambda: ing.client.rate_limited >= 10, 15, what="the 429 storm")
        # then an outage (503s) long enough for the retries to give up
        await http.post("/_sandbox/digitex/faults", json={"maintenance": True})
        await wait_for(lambda: ing._connected is False, 10, what="disconnected")
        await http.post("/_sandbox/digitex/faults", json={"maintenance": False})
        mark = state.last_trade_id
        await wait_for(lambda: state.last_trade_id > mark + 20 and ing._connected, 15, what="recovery")
        await ing.flush()
        await check_trades(js, sb, first, state.last_trade_id)
        assert ing.metrics.vendor_errors.labels("digitex", "rate_limited")._value.get() >= 10
        statuses = [
            s for s in events_of(await read_stream(js, "status.ingest_digitex.feed.>")) if isinstance(s, FeedStatus)
        ]
        assert [s.state for s in statuses if s.symbol == "_"][-2:] == ["disconnected", "connected"]
        gaps = [s for s in statuses if s.state == "gap" and s.symbol == SYMBOL]
        resynced = [s for s in statuses if s.state == "resynced" and s.symbol == SYMBOL]
        assert (
            gaps
            and resynced
            and (resynced[-1].gap_start, resynced[-1].gap_end) == (gaps[-1].gap_start, gaps[-1].gap_end)
        )


async def test_pacing_stays_within_the_enforced_limits(nats_server: NatsServer, sb: SandboxRunner) -> None:
    async with httpx.AsyncClient(base_url=sb.url) as http:
        await http.post("/_sandbox/digitex/faults", json={"rate_limit_enabled": True})
    # every market, polled far faster than 50/s allows: the limiter must hold the pace
    async with make(
        nats_server, sb, markets=[], trades_interval_s=0.01, book_interval_s=0.01, rate_per_minute=5000
    ) as ing:
        began = ing.client.calls
        await wait_for(lambda: ing.client.calls - began >= 60, 10, what="60 calls")
        assert ing.client.rate_limited == 0
        assert len(ing.markets) == 3


async def test_malformed_replies_are_dead_lettered(nats_server: NatsServer, sb: SandboxRunner, bus: Any) -> None:
    js = bus.jetstream()
    async with make(nats_server, sb) as ing, httpx.AsyncClient(base_url=sb.url) as http:
        state = ing.by_symbol[SYMBOL]
        await wait_for(lambda: state.last_trade_id is not None, 10, what="first trades")
        first = state.last_trade_id - 99
        await http.post("/_sandbox/faults", json={"malformed_next": 3})
        await wait_for(lambda: sum(s.value for s in ing.metrics.malformed.collect()[0].samples
                                   if s.name.endswith("_total")) >= 3, 10, what="3 malformed replies")
        mark = state.last_trade_id
        await wait_for(lambda: state.last_trade_id > mark + 10, 10, what="progress")

        async def three_letters() -> list[Any] | None:  # published without awaiting the ack: may be in flight
            found = events_of(await read_stream(js, subjects.dead_letter("ingest_digitex", "digitex")))
            return found if len(found) >= 3 else None

        letters = await wait_for(three_letters, 15, what="3 dead letters in the stream")
        assert len(letters) >= 3 and all(isinstance(d, DeadLetter) and d.reason for d in letters)
        assert all(b"not json" in d.payload for d in letters)
        await ing.flush()
        await check_trades(js, sb, first, state.last_trade_id)
        assert ing.state == "running"


async def test_restart_resumes_from_the_persisted_cursors(nats_server: NatsServer, sb: SandboxRunner, bus: Any) -> None:
    js = bus.jetstream()
    async with make(nats_server, sb) as first_run:
        s1 = first_run.by_symbol[SYMBOL]
        await wait_for(lambda: s1.last_trade_id is not None and s1.bar_cursor, 10, what="first trades and bars")
        first = s1.last_trade_id - 99
    stopped_at, bar_cursor = s1.last_trade_id, dict(s1.bar_cursor)
    kv = await js.key_value("ingest_state")
    assert msgspec.json.decode((await kv.get(f"digitex.trades.{SYMBOL}")).value)["trade_id"] == stopped_at
    async with make(nats_server, sb) as second:
        s2 = second.by_symbol[SYMBOL]
        assert s2.last_trade_id == stopped_at and s2.bar_cursor == bar_cursor
        await wait_for(lambda: s2.last_trade_id > stopped_at + 20, 10, what="new trades")
        await second.flush()
        await check_trades(js, sb, first, s2.last_trade_id)
        bars = events_of(await read_stream(js, "md.bar.digitex.>"))
        assert duplicates(bars) == []


async def test_replay_bars_and_recent_trades_and_refusals(nats_server: NatsServer, sb: SandboxRunner, bus: Any) -> None:
    async def ask(kind: str, start: int, end: int, symbol: str = SYMBOL) -> ReplayReply:
        request = ReplayRequest(request_id=str(uuid.uuid4()), source="digitex", venue="DIGITEX", symbol=symbol,
                                kind=kind, start_ns=start, end_ns=end)
        msg = await bus.request(subjects.replay("digitex"), codec.encode(request), timeout=20)
        return codec.decode_as(msg.data, ReplayReply)

    js = bus.jetstream()
    async with make(
        nats_server, sb, trades_interval_s=5, book_interval_s=5, bars_interval_s=60, bars_backfill_s=60
    ) as ing:
        await wait_for(lambda: ing.by_symbol.get(SYMBOL) is not None, 10, what="markets")
        now = time.time_ns()
        minute = 60_000_000_000
        start = (now // minute - 30) * minute  # 30 finished minutes, an hour before the live cursor
        reply = await ask("bar", start - 60 * minute, start - 30 * minute)
        assert reply.accepted and reply.events == 30
        batches = [m for m in await read_stream(js, "md.bar.digitex.>") if isinstance(m, codec.Batch) and m.replay]
        replayed = sorted(e.ts_event for b in batches for e in b.events)
        assert replayed == [start - 60 * minute + i * minute for i in range(30)]
        # recent trades: the last few seconds are within recent_trades' depth
        reply = await ask("trade", now - 3_000_000_000, now)
        assert reply.accepted and 20 <= reply.events <= 40
        # older than the depth, another kind, another market: refused with a reason
        reply = await ask("trade", now - 3600 * 10**9, now)
        assert not reply.accepted and "last 100 trades" in (reply.reason or "")
        reply = await ask("book", now - 10**9, now)
        assert not reply.accepted and "not book" in (reply.reason or "")
        reply = await ask("bar", now - 10**9, now, symbol="NOPE")
        assert not reply.accepted and "unknown digitex market" in (reply.reason or "")


@pytest.mark.parametrize(
    "overrides, var",
    [
        ({"base_url": "ftp://x"}, "BASE_URL"),
        ({"resolutions": ["7X"]}, "RESOLUTIONS"),
        ({"max_trades": 5000}, "MAX_TRADES"),
        ({"trades_interval_s": 0}, "TRADES_INTERVAL_S"),
        ({"venue": "a.b"}, "VENUE"),
    ],
)
def test_configuration_is_validated_at_start_up(overrides: dict[str, Any], var: str) -> None:
    with pytest.raises(SettingsError, match=f"MARKETBUS_INGEST_DIGITEX_{var}"):
        DigitexIngestor(nats_url="nats://127.0.0.1:1", **overrides)


async def test_an_unknown_configured_market_stops_start_up(nats_server: NatsServer, sb: SandboxRunner) -> None:
    ing = make(nats_server, sb, markets=["FS:NOPE"])
    with pytest.raises(SettingsError, match="unknown market"):
        await ing.start()
    await ing.stop()


async def read_books(js: Any) -> list[Any]:
    return [e for e in events_of(await read_stream(js, "md.*.digitex.>"))
            if isinstance(e, BookSnapshot | BookDelta) and e.symbol == SYMBOL]


async def test_books_are_a_snapshot_then_deltas_and_rebuild_every_later_snapshot(
        nats_server: NatsServer, sb: SandboxRunner, bus: Any) -> None:
    """The real ingestor against the sandbox: a book built from the first snapshot and the deltas
    equals every later snapshot (periodic, after an outage, after a restart) and the sandbox's book;
    a dropped delta is detected; an outage and a restart each start again with a snapshot."""
    js = bus.jetstream()
    market = sb.vendor_app.state.api.markets[1]
    fast = dict(book_interval_s=0.1, book_snapshot_interval_s=1.0, trades_interval_s=5.0, bars_interval_s=60.0)
    async with make(nats_server, sb, **fast) as ing, httpx.AsyncClient(base_url=sb.url) as http:
        counts = ing.books.deltas.counts
        await wait_for(
            lambda: counts["periodic"] >= 2 and counts["delta"] >= 10, 15, what="deltas and 2 periodic snapshots"
        )
        await http.post("/_sandbox/digitex/faults", json={"maintenance": True})
        await wait_for(lambda: ing._connected is False, 10, what="the outage")
        await http.post("/_sandbox/digitex/faults", json={"maintenance": False})
        await wait_for(lambda: counts["resync"] >= 1 and ing._connected, 15, what="a snapshot after the outage")
        mark = counts["delta"]
        await wait_for(lambda: counts["delta"] >= mark + 3, 10, what="deltas after the outage")
        # the book's counts are on /metrics: it lost sync in the outage, was resent whole
        samples = await scrape(ing.http_url)
        book = ("DIGITEX", SYMBOL)
        assert per_book(samples, "marketbus_book_resyncs_total", source="digitex")[book] >= 1
        assert per_book(samples, "marketbus_book_snapshots_total", source="digitex", reason="resync")[book] >= 1
        assert per_book(samples, "marketbus_book_snapshots_total", source="digitex", reason="periodic")[book] >= 2
        assert per_book(samples, "marketbus_book_deltas_total", source="digitex")[book] >= mark + 3
        assert (
            0
            < per_book(samples, "marketbus_book_sequence", source="digitex")[book]
            <= (ing.books.deltas.sequence(book) or 0)
        )
        await ing.flush()
        first_run_seq = ing.books.deltas.sequence(("DIGITEX", SYMBOL))
    async with make(nats_server, sb, **fast) as again:
        await wait_for(lambda: again.books.deltas.counts["delta"] >= 3, 10, what="deltas after a restart")
        await again.flush()
    events = await read_books(js)
    assert duplicates(events) == []
    snapshots = [e for e in events if isinstance(e, BookSnapshot)]
    deltas = [e for e in events if isinstance(e, BookDelta)]
    assert len(snapshots) >= 5 and len(deltas) >= 16
    builder = BookBuilder()
    outcomes = []
    for event in events:
        if isinstance(event, BookSnapshot) and builder.synced:
            assert (builder.sequence or 0) <= (event.sequence or 0)
            if event.sequence == builder.sequence:  # a periodic snapshot: the built book must equal it
                assert builder.bids() == event.bids and builder.asks() == event.asks
        outcomes.append(builder.apply(event))
        bids, asks = market.book(market.tape.index_at_or_before(event.ts_event))
        assert [(lv.price, lv.size) for lv in builder.bids()] == bids
        assert [(lv.price, lv.size) for lv in builder.asks()] == asks
    assert outcomes[0] == "snapshot" and outcomes.count("checked") >= 2
    assert outcomes.count("snapshot") >= 3  # the first, after the outage, after the restart
    assert builder.gaps == builder.bad == builder.mismatches == 0
    restart = next(e for e in snapshots if (e.sequence or 0) > (first_run_seq or 0))
    assert first_run_seq is not None and restart.sequence is not None and restart.sequence > first_run_seq
    # every delta follows the state before it (a snapshot may start a higher sequence); a dropped
    # delta is detected, and the next snapshot resyncs
    current = None
    for event in events:
        if isinstance(event, BookDelta):
            assert event.prev_sequence == current and event.sequence == (current or 0) + 1
        else:
            assert current is None or (event.sequence or 0) >= current
        current = event.sequence
    victim = deltas[3]
    lossy = BookBuilder()
    seen = [lossy.apply(e) for e in events if e is not victim]
    assert "gap" in seen and lossy.gaps == 1 and lossy.synced
    assert lossy.bids() == builder.bids() and lossy.asks() == builder.asks()
