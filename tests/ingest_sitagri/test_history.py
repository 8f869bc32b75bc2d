"""History: paging across the 8192 cap (ascending and descending) with no hole and no duplicate,
the expired-futures route with SHIFT, replay requests on the bus, and batch splitting."""

from __future__ import annotations

import time
from collections import Counter

import msgspec
import nats

from marketbus.contracts import codec
from marketbus.contracts.jobs import ReplayReply, ReplayRequest
from marketbus.contracts.market import Bar, MarketPrice
from marketbus.contracts.subjects import replay
from services.ingest_sitagri import history as hist
from tests.helpers import wait_for

from .conftest import Collector, ingestor, sandbox
from .test_recovery import expected_ids

EMA = "/market/sources/EURONEX/future/EMA"
NS = 1_000_000_000


async def test_backfill_pages_across_the_cap(nats_url: str, bus: Collector) -> None:
    async with sandbox(rate=20.0) as sb:  # 20 ticks/s: 8192 points are ~7 minutes
        async with ingestor(nats_url, sb) as ing:
            await ing.ready(timeout=10)
            now = (time.time_ns() // NS - 5) * NS
            start = now - 900 * NS  # ~18000 ticks: three pages each way
            for quote, descending in ((f"{EMA}/deliveries/EMAC01", False), (f"{EMA}/deliveries/EMAC02", True)):
                ing.settings.history_descending = descending
                stats = hist.PagingStats()
                n = await ing.backfill.history(quote, start, now, "TICK", dedupe=True, stats=stats)
                await ing.flush()
                want = await expected_ids(sb, quote, start, now)
                assert n == len(want) and len(want) > 2 * 8192
                assert stats.full_pages >= 2 and stats.requests == stats.full_pages + 1
                if descending:  # START > END asks for newest-first pages
                    a, b = stats.refs[0].rsplit("/", 1)[1].split(",")[:2]
                    assert int(a) > int(b)
                symbol = quote.rsplit("/", 1)[1]
                await wait_for(lambda s=symbol, w=want: len(bus.of(MarketPrice, symbol=s)) >= len(w),
                               what=f"{symbol} history on the bus")
                got = Counter(e.id for e in bus.of(MarketPrice, symbol=symbol))
                assert set(got) == want and max(got.values()) == 1
                assert all(e.replay for e in bus.of(MarketPrice, symbol=symbol))
            assert bus.batches >= 6  # published as batch envelopes, not one message per point

            # an expired delivery through the expired route, shifted by one hour
            year = time.gmtime().tm_year - 1
            ing.settings.expired_shift_s = -3600
            # the delivery stopped trading on 5 November at 12:00 UTC: ask from 60 days before that (a
            # window relative to today would shrink as the calendar moves on)
            last_day = time.struct_time((year, 11, 5, 12, 0, 0, 0, 0, 0))
            last_ns = int(__import__("calendar").timegm(last_day)) * NS
            n = await ing.backfill_expired(f"EURONEX/EMA/{year}/11", last_ns - 60 * 86400 * NS, now, "DAY")
            assert n >= 10  # the daily bars of its last weeks of trading
            code = f"EMAX{year % 100:02d}"
            await wait_for(lambda: len(bus.of(Bar, symbol=code)) >= n, what="expired bars")
            bars = bus.of(Bar, symbol=code)
            assert all(b.interval == "1d" and b.low <= b.close <= b.high for b in bars)
            # SHIFT moved every time 1 h back
            assert max(b.ts_event for b in bars) <= (int(__import__("calendar").timegm(last_day)) - 3600) * NS


async def test_replay_request_and_batches(nats_url: str, bus: Collector) -> None:
    async with sandbox() as sb, ingestor(nats_url, sb) as ing:
        result = await ing.ready(timeout=10)
        now = time.time_ns() // NS * NS - 3 * NS
        quote = f"{EMA}/deliveries/EMAC03"
        req = ReplayRequest(request_id="r1", source="sitagri", venue="EURONEX", symbol="EMAC03",
                            kind="market_price", start_ns=now - 30 * NS, end_ns=now)
        nc = await nats.connect(nats_url)
        try:
            msg = await nc.request(replay("sitagri"), codec.encode(req), timeout=20)
            reply = codec.decode_as(msg.data, ReplayReply)
            bad = codec.decode_as((await nc.request(replay("sitagri"), codec.encode(msgspec.structs.replace(
                req, symbol="NOPE")), timeout=10)).data, ReplayReply)
        finally:
            await nc.close()
        want = await expected_ids(sb, quote, now - 30 * NS, now - 1)
        assert reply.accepted and reply.events == len(want) == 300
        assert not bad.accepted and "unknown" in (bad.reason or "")
        await wait_for(lambda: {e.id for e in bus.of(MarketPrice, symbol="EMAC03")} == want, what="replayed")

        # a batch longer than the cap is split into POSTs of <= 250, results in order
        refs = [f"{q}/price" for q in list(result.quotes)[:600]]
        before = ing.client.batches
        prices = await ing.client.batch(refs)
        assert ing.client.batches - before == -(-len(refs) // 250)
        assert [p["quote"] for p in prices] == [r[:-6] for r in refs]
