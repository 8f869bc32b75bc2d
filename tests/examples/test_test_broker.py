"""The example consumers under FastStream's TestNatsBroker (in memory: no NATS server)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from faststream.nats import NatsBroker, TestNatsBroker

from marketbus.contracts import codec

from .conftest import book, quote, trade


def _capture(broker: NatsBroker, subject: str) -> list[dict]:
    """What the app publishes on ``subject``, as a subscriber of the test broker sees it."""
    got: list[dict] = []

    async def raw(msg: Any) -> bytes:
        return msg.body

    @broker.subscriber(subject, decoder=raw)
    async def capture(body: bytes) -> None:
        got.append(json.loads(body))

    return got


async def test_vwap_bars_close_a_bar_per_interval_with_batches_unpacked() -> None:
    from examples import vwap_bars

    vwap_bars.builder.open.clear()
    bars = _capture(vwap_bars.broker, "analytics.vwap.>")
    async with TestNatsBroker(vwap_bars.broker) as br:
        await br.publish(codec.encode(trade(1, "100", "1", 1)), "md.trade.digitex._.BTC-USD")
        # a backfill page: one batch envelope of two trades of the same minute
        batch = codec.make_batch([trade(2, "110", "3", 20), trade(3, "90", "1", 50)])
        await br.publish(codec.encode(batch), "md.trade.digitex._.BTC-USD")
        await br.publish(codec.encode(trade(4, "120", "1", 61)), "md.trade.digitex._.BTC-USD")  # next minute
        await br.publish(b"not json", "md.trade.digitex._.BTC-USD")  # logged and skipped, no crash
    assert len(bars) == 1
    bar = bars[0]
    assert (bar["symbol"], bar["trades"], bar["interval_s"]) == ("BTC-USD", 3, 60)
    assert (bar["open"], bar["high"], bar["low"], bar["close"], bar["volume"]) == ("100", "110", "90", "90", "5")
    assert Decimal(bar["vwap"]) == Decimal(100 + 330 + 90) / 5
    assert vwap_bars.builder.open[("digitex", "_", "BTC-USD")].open == Decimal(120)


async def test_spread_alerts_raise_and_clear_once() -> None:
    from examples import spread_alerts

    spread_alerts.watch.wide.clear()
    alerts = _capture(spread_alerts.broker, "alerts.spread.>")
    async with TestNatsBroker(spread_alerts.broker) as br:
        await br.publish(codec.encode(quote(1, "100", "100.1")), "md.quote.ticksupply.BINANCE.ETH-USD")  # 10 bps
        await br.publish(codec.encode(quote(2, "100", "101")), "md.quote.ticksupply.BINANCE.ETH-USD")  # 99.5 bps
        await br.publish(codec.encode(quote(3, "100", "102")), "md.quote.ticksupply.BINANCE.ETH-USD")  # still wide
        await br.publish(codec.encode(quote(4, "100", "100.2")), "md.quote.ticksupply.BINANCE.ETH-USD")
        await br.publish(codec.encode(book(5, "20000", "20200")), "md.book.digitex._.FS-BTCUSD")
    assert [(a["state"], a["symbol"], a["spread_bps"]) for a in alerts] == [
        ("wide", "ETH-USD", "99.50"), ("cleared", "ETH-USD", "19.98"), ("wide", "FS-BTCUSD", "99.50"),
    ]


async def test_spread_alerts_follow_book_deltas_and_wait_out_a_gap() -> None:
    """Books as snapshot + deltas: each delta moves the spread (no periodic snapshot needed); a
    missed delta is a gap, the book waits for the next snapshot (no alert on a book out of sync),
    and the gap and the resync are on the app's metrics."""
    import prometheus_client

    from examples import spread_alerts
    from marketbus.books import BookDeltas

    spread_alerts.watch.wide.clear()
    spread_alerts.books.books.clear()
    producer = BookDeltas("digitex")
    alerts = _capture(spread_alerts.broker, "alerts.spread.>")
    async with TestNatsBroker(spread_alerts.broker) as br:
        async def observe(i: int, ask: str, *, drop: bool = False) -> list[str]:
            events = producer.update(book(i, "20000", ask))
            kinds = [type(e).__struct_config__.tag for e in events]
            if not drop:
                for event, kind in zip(events, kinds, strict=True):
                    await br.publish(codec.encode(event), f"md.{kind}.digitex._.FS-BTCUSD")
            return kinds

        assert await observe(1, "20010") == ["book"]  # 5 bps
        assert await observe(2, "20200") == ["book_delta"]  # 99.5 bps: wide
        assert await observe(3, "20020") == ["book_delta"]  # 10 bps: cleared
        await observe(4, "20300", drop=True)  # missed
        assert await observe(5, "20310") == ["book_delta"]  # a gap: the book waits, no alert
        assert len(alerts) == 2
        producer.resync()
        assert await observe(6, "20300") == ["book"]  # back in sync: wide
    assert [(a["state"], a["symbol"], a["spread_bps"], a["ask"]) for a in alerts] == [
        ("wide", "FS-BTCUSD", "99.50", "20200"), ("cleared", "FS-BTCUSD", "10.00", "20020"),
        ("wide", "FS-BTCUSD", "148.88", "20300")]
    built = spread_alerts.books.get("digitex", "_", "FS-BTCUSD")
    assert built is not None and built.gaps == 1 and built.deltas == 2 and built.synced
    labels = {"consumer": "spread_alerts", "source": "digitex", "venue": "_", "symbol": "FS-BTCUSD"}
    registry = prometheus_client.REGISTRY
    assert registry.get_sample_value("marketbus_book_builder_gaps_total", labels) == 1
    assert registry.get_sample_value("marketbus_book_builder_resyncs_total", labels) == 1
    assert registry.get_sample_value("marketbus_book_builder_events_total", {**labels, "outcome": "waiting"}) == 0


async def test_trades_to_db_inserts_each_trade_once(pg_dsn: str) -> None:
    import asyncpg
    from faststream import TestApp

    from examples import trades_to_db

    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(f"DROP TABLE IF EXISTS {trades_to_db.TABLE}")
    trades_to_db.settings.db_dsn = pg_dsn  # type: ignore[misc]  # the module read its env at import
    try:
        async with TestNatsBroker(trades_to_db.broker) as br, TestApp(trades_to_db.app):
            await br.publish(codec.encode(trade(1, "100", "1", 1)), "md.trade.digitex._.BTC-USD")
            batch = codec.make_batch([trade(1, "100", "1", 1), trade(2, "101.5", "0.25", 2)])
            await br.publish(codec.encode(batch), "md.trade.digitex._.BTC-USD")  # trade 1 again: a replay
        rows = await conn.fetch(f"SELECT id, price, size FROM {trades_to_db.TABLE} ORDER BY id")
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {trades_to_db.TABLE}")
        await conn.close()
    assert [(r["id"], r["price"], r["size"]) for r in rows] == [
        ("t-BTC-USD-1", Decimal(100), Decimal(1)), ("t-BTC-USD-2", Decimal("101.5"), Decimal("0.25")),
    ]
