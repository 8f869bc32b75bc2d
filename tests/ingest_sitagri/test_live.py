"""The Sitagri ingestor against the sandbox over HTTP/websocket, with a real NATS server."""

from __future__ import annotations

import time
from decimal import Decimal

import msgspec
import nats

from marketbus.contracts import subjects
from marketbus.contracts.jobs import PublishReply
from marketbus.contracts.market import CashPrice, IndexPrice, MarketPrice, News
from marketbus.contracts.reference import Instrument, InstrumentClass, Unit, Venue
from marketbus.contracts.units import convert
from services.ingest_sitagri import normalize
from tests.helpers import wait_for

from .conftest import Collector, admin, ingestor, sandbox

EMA = "/market/sources/EURONEX/future/EMA"
SPOT = "/market/sources/FOREX/currency/EURUSD/terms/EURUSDSP"
CASH = "/market/sources/SITCASHFR/cash/FRA18EXWAUB"
INDEX = "/market/sources/SITSISALMONI/index/SISALMONI"


async def test_reference_crawl_is_complete_and_batched(nats_url: str, bus: Collector) -> None:
    async with sandbox() as sb:
        tree = await admin(sb, "GET", "/sitagri/tree")
        ing = ingestor(nats_url, sb)
        t0 = time.monotonic()
        async with ing:
            result = await ing.ready(timeout=10)
            elapsed = time.monotonic() - t0
            want = {q["ref"] for q in tree["quotes"]}
            await wait_for(lambda: {e.vendor_ref for e in bus.of(Instrument)} >= want, what="every instrument")
        assert set(result.quotes) == want  # every delivery, continuous code, strike, term, cash, index, single
        assert {e.vendor_ref for e in bus.of(Instrument)} == want
        # batches, not one request per item: a handful of POSTs for ~200 references
        assert result.requests <= 6 and result.references > 150
        assert ing.client.batches == result.requests and elapsed < 10
        assert not [p for p in result.problems if p[1] is not None]

        ema = bus.of(InstrumentClass, venue="EURONEX", symbol="EMA")[0]
        assert ema.class_type == "future_class" and ema.name == "Corn future"
        assert ema.description == "Corn future, 50 tons"  # {@:/market/units/TON,tons} resolved
        assert len(ema.members) == 12
        cont = bus.of(Instrument, venue="EURONEX", symbol="EMAC01")[0]
        assert cont.instrument_type == "continuous_future" and cont.continuous_index == 1
        classic = [
            e for e in bus.of(Instrument, venue="EURONEX", instrument_class="EMA") if e.instrument_type == "future"
        ]
        assert len(classic) == 8 and all(e.expiry_ts and e.maturity_month for e in classic)
        assert all(e.vendor_symbol[3] in "HMQX" for e in classic)
        strike = [e for e in bus.of(Instrument) if e.instrument_type == "option"][0]
        assert strike.option_type in ("call", "put") and isinstance(strike.strike, Decimal)
        terms = {e.vendor_symbol for e in bus.of(Instrument, venue="FOREX", instrument_class="EURUSD")}
        assert {"EURUSDSP", "EURUSDON", "EURUSD2W", "EURUSD1M", "EURUSD18M", "EURUSD2Y"} <= terms
        nac = bus.of(InstrumentClass, venue="FOREX", symbol="NACARS")[0]
        assert nac.members == []  # no terms: cannot be converted
        units = {u.code: u for u in bus.of(Unit)}
        assert convert(1, units["USWSBS"], units["TON"]) == Decimal("0.0272155")
        assert {"AFP", "PRIVDEMO"} <= {v.symbol for v in bus.of(Venue) if v.attributes.get("kind") == "news"}
        cash = bus.of(Instrument, venue="SITCASHFR", symbol="FRA18EXWAUB")[0]
        assert (cash.name, cash.geo_site, cash.incoterm) == ("Alfalfa (18%) EXW Aube", "FRAUB", "EXW")


async def test_live_prices_news_and_publish(nats_url: str, bus: Collector) -> None:
    async with sandbox(cash_rate=1.0) as sb:
        ing = ingestor(nats_url, sb, quotes=[EMA, SPOT, CASH, INDEX], news_sources=["AFP", "PRIVDEMO"],
                       order_book_interval_s=0.5)
        async with ing:
            await wait_for(lambda: ing.transport == "websocket", what="websocket")
            # every delivery of the class is listened to, classic and continuous
            want = {f"EMA{x}" for x in ("C01", "C02", "C03", "C04")}
            await wait_for(lambda: want <= {e.symbol for e in bus.of(MarketPrice, venue="EURONEX")}, what="EMA prices")
            assert len(ing.live_quotes) == 15
            await wait_for(lambda: bus.of(MarketPrice, venue="FOREX", symbol="EURUSDSP"), what="fx price")
            await wait_for(lambda: bus.of(CashPrice, symbol="FRA18EXWAUB"), what="cash price")
            await wait_for(lambda: bus.of(IndexPrice, symbol="SISALMONI"), what="index price")
            await wait_for(lambda: bus.of(News, venue="AFP"), timeout=15, what="a pushed AFP article")
            await wait_for(lambda: [e for e in bus.events if type(e).__name__ == "BookSnapshot"], what="order book")

            # the pushed values are the sandbox's ticks, exactly
            px = bus.of(MarketPrice, symbol="EMAC01")[-1]
            ticks = await admin(sb, "GET", "/sitagri/ticks", quote=f"{EMA}/deliveries/EMAC01",
                                start=px.last_ts / 1e9 - 1, end=px.last_ts / 1e9 + 1)
            tick = [t for t in ticks if normalize.to_ns(Decimal(str(t["date"]))) == px.last_ts][0]
            assert px.decimal("last") == Decimal(str(tick["value"])) and px.quality == "realtime"  # exact
            assert px.id == normalize.price_id("market_price", f"{EMA}/deliveries/EMAC01", px.last_ts)

            # publishing: request/reply on the bus -> POST /edit/...; the article comes back as News
            nc = await nats.connect(nats_url)
            try:
                msg = await nc.request(subjects.SITAGRI_NEWS_PUBLISH, msgspec.json.encode(
                    {"source": "PRIVDEMO", "title": "Wheat up", "lang": "EN", "content": "<p>up</p>"}), timeout=10)
                reply = msgspec.json.decode(msg.data, type=PublishReply)
                assert reply.ok and reply.id
                await wait_for(lambda: bus.of(News, venue="PRIVDEMO", article_id=reply.id), what="published article")
                bad = msgspec.json.decode((await nc.request(subjects.SITAGRI_NEWS_PUBLISH, msgspec.json.encode(
                    {"source": "AFP", "title": "x", "lang": "EN"}), timeout=10)).data, type=PublishReply)
                assert not bad.ok and "403" in (bad.error or "")
            finally:
                await nc.close()
        assert not bus.duplicates(MarketPrice)
