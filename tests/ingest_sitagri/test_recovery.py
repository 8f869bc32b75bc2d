"""Recovery: maintenance reboot (gap back-filled, no hole, no duplicate), websocket refused ->
long polling and back, session expiry -> new login, malformed pushes dead-lettered."""

from __future__ import annotations

import asyncio
from collections import Counter
from decimal import Decimal

import msgspec
import nats

from marketbus.contracts.market import MarketPrice
from marketbus.contracts.status import DeadLetter, FeedStatus
from marketbus.history.coverage import open_gaps
from services.ingest_sitagri import normalize
from tests.helpers import wait_for

from .conftest import Collector, admin, ingestor, sandbox

C01 = "/market/sources/EURONEX/future/EMA/deliveries/EMAC01"
SPOT = "/market/sources/FOREX/currency/EURUSD/terms/EURUSDSP"


def ids_of(bus: Collector, symbol: str) -> Counter[str]:
    return Counter(e.id for e in bus.of(MarketPrice, symbol=symbol))


async def expected_ids(sb, quote: str, lo_ns: int, hi_ns: int) -> set[str]:
    ticks = await admin(sb, "GET", "/sitagri/ticks", quote=quote, start=lo_ns / 1e9 - 0.001, end=hi_ns / 1e9 + 0.001)
    out = set()
    for t in ticks:
        ts = normalize.to_ns(Decimal(str(t["date"])))
        if lo_ns <= ts <= hi_ns:
            out.add(normalize.price_id("market_price", quote, ts))
    return out


async def test_reboot_is_recovered_and_the_gap_backfilled(nats_url: str, bus: Collector) -> None:
    async with sandbox(rate=20.0) as sb:
        async with ingestor(nats_url, sb, quotes=[C01], transport="websocket") as ing:
            await wait_for(lambda: len(bus.of(MarketPrice, symbol="EMAC01")) >= 5, what="live prices")
            await admin(sb, "POST", "/reboot", seconds=1.5)
            await wait_for(lambda: "disconnected" in bus.states(), what="the drop")
            await wait_for(lambda: "resynced" in bus.states(), timeout=20, what="the gap back-filled")
            gap = [s for s in bus.status if s.state == "gap"][0]
            assert gap.gap_start and gap.gap_end and gap.gap_end - gap.gap_start >= 1_000_000_000
            n_after = len(bus.of(MarketPrice, symbol="EMAC01", replay=False))
            await wait_for(lambda: len(bus.of(MarketPrice, symbol="EMAC01", replay=False)) > n_after + 5,
                           what="live prices after the reboot")
            assert ing.gaps_filled == 1 and ing.transport == "websocket"
        prices = bus.of(MarketPrice, symbol="EMAC01")
        assert any(p.replay for p in prices)  # the gap came from history
        lo, hi = min(p.ts_event for p in prices), max(p.ts_event for p in prices)
        want = await expected_ids(sb, C01, lo, hi)
        got = ids_of(bus, "EMAC01")
        assert set(got) == want  # no missing point (a 20 ticks/s quote, ~2 s of outage)
        assert max(got.values()) == 1  # and none published twice


async def test_websocket_refused_long_polling_carries_the_data(nats_url: str, bus: Collector) -> None:
    async with sandbox(ws_refuse=True, longpoll_timeout=1.0) as sb:
        async with ingestor(nats_url, sb, quotes=[C01, SPOT], ws_failures_before_longpoll=2, ws_retry_s=0.5) as ing:
            await wait_for(lambda: ing.transport == "longpoll", what="the fall-back to long polling")
            await wait_for(lambda: len(bus.of(MarketPrice, symbol="EMAC01")) >= 10, what="prices by long polling")
            assert bus.of(MarketPrice, symbol="EURUSDSP")
            await admin(sb, "POST", "/sitagri/ws_refuse", enabled="false")
            await wait_for(lambda: ing.transport == "websocket", what="back on the websocket")
            n = len(bus.of(MarketPrice, symbol="EMAC01"))
            await wait_for(lambda: len(bus.of(MarketPrice, symbol="EMAC01")) > n + 5, what="prices by websocket")


            async def one_socket() -> bool:  # the probe socket is closed, the long-poll listeners gone
                state = await admin(sb, "GET", "/sitagri/state")
                return state["listeners"]["websockets"] == 1 and state["listeners"]["prices"] == 2

            await wait_for(one_socket, what="one websocket and its two listeners")
        prices = bus.of(MarketPrice, symbol="EMAC01")
        lo, hi = min(p.ts_event for p in prices), max(p.ts_event for p in prices)
        got = ids_of(bus, "EMAC01")
        assert set(got) == await expected_ids(sb, C01, lo, hi) and max(got.values()) == 1


async def test_expired_session_logs_in_again(nats_url: str, bus: Collector) -> None:
    async with sandbox(session_timeout=3.0, longpoll_timeout=1.0) as sb:
        async with ingestor(nats_url, sb, token="", login="demo", password="demo", quotes=[C01],
                            transport="longpoll") as ing:
            await ing.ready(timeout=10)
            keeper = ing.client.keeper
            assert keeper.timeout_s == 3.0 and keeper.logins == 1
            await wait_for(lambda: len(bus.of(MarketPrice, symbol="EMAC01")) >= 3, what="prices")
            token = keeper.token
            await admin(sb, "POST", "/sitagri/sessions/expire", token=token)
            n = len(bus.of(MarketPrice, symbol="EMAC01"))
            await wait_for(lambda: len(bus.of(MarketPrice, symbol="EMAC01")) > n + 10, timeout=15,
                           what="prices on a new session")
            assert keeper.logins == 2 and keeper.token != token


async def test_keepalive_beats_the_idle_timeout(nats_url: str, bus: Collector) -> None:
    # nothing to listen to: each long poll (4 s) outlasts the idle timeout (1.5 s), so only the
    # keep-alives hold the session
    async with sandbox(session_timeout=1.5, longpoll_timeout=4.0) as sb:
        async with ingestor(nats_url, sb, token="", login="demo", password="demo", quotes=[],
                            transport="longpoll") as ing:
            await ing.ready(timeout=10)
            keeper = ing.client.keeper
            await wait_for(lambda: keeper.pings >= 4, timeout=10, what="keep-alives")
            assert keeper.logins == 1  # the session never lapsed
            assert not [s for s in bus.status if s.state == "disconnected"]


async def test_malformed_push_is_dead_lettered(nats_url: str, bus: Collector) -> None:
    async with sandbox() as sb:
        async with ingestor(nats_url, sb) as ing:
            await ing.ready(timeout=10)
            await ing.on_push(msgspec.Raw(b'{"code":"marketPrice","quality":"REALTIME"}'))
            await ing.on_push(msgspec.Raw(b'{"code":"somethingNew"}'))
            await wait_for(lambda: len(bus.dead) >= 2, what="dead letters")
        assert all(isinstance(d, DeadLetter) and d.source == "sitagri" for d in bus.dead)
        assert b"somethingNew" in bus.dead[1].payload


async def test_a_restarted_ingestor_back_fills_from_where_the_last_one_stopped(nats_url: str) -> None:
    """The ingestor is gone for a few seconds (a crash, a deploy) while the vendor ticks on: the
    next one resumes each quote from the point the last one saved, back-fills the hole from
    history (gap -> resynced) and the stream holds every tick once."""
    from tests.ingest_finx.bus import duplicates, events_of, read_stream

    async with sandbox(rate=20.0, news_interval=600.0) as sb:
        async with ingestor(nats_url, sb, quotes=[C01], transport="websocket") as first:
            await wait_for(lambda: first.live.pushes >= 20 and first.live.resume_points(), 20, what="live prices")
            await asyncio.sleep(1.5)  # the resume point is saved (every second)
        await asyncio.sleep(3.0)  # no ingestor: ~60 ticks nobody receives
        async with ingestor(nats_url, sb, quotes=[C01], transport="websocket") as second:
            await wait_for(lambda: second.gaps_filled == 1, 20, what="the hole back-filled")
            resumed = second.live.pushes
            await wait_for(lambda: second.live.pushes > resumed + 10, 20, what="live prices after the restart")
            await second.flush()
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            stored = [e for e in events_of(await read_stream(js, "md.market_price.sitagri.EURONEX.EMAC01"))
                      if isinstance(e, MarketPrice) and e.ts_recv >= first.started_ts]
            statuses = [s for s in events_of(await read_stream(js, "status.ingest_sitagri.feed.>"))
                        if isinstance(s, FeedStatus) and s.ts >= first.started_ts]
        finally:
            await nc.close()
        lo, hi = min(e.ts_event for e in stored), max(e.ts_event for e in stored)
        want = await expected_ids(sb, C01, lo, hi)
    got = Counter(e.id for e in stored)
    assert not duplicates(stored), [i for i, n in got.items() if n > 1]
    assert set(got) == want, f"{len(want - set(got))} missing, {len(set(got) - want)} unexpected"
    assert hi - lo >= 5_000_000_000
    states = [s.state for s in statuses if s.state in ("gap", "resynced")]
    assert states == ["gap", "resynced"], states
    assert open_gaps(statuses) == []
