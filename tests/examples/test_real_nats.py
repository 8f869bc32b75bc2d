"""The example consumers run as users run them (``faststream run examples.<name>:app``) against a
real nats-server with the marketbus streams provisioned, and ``faststream docs gen`` on each."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import nats
import pytest

from marketbus.books import BookDeltas
from marketbus.contracts import codec
from marketbus.contracts.streams import MARKET_DATA, ensure_all
from marketbus.runtime.http import free_port

from .conftest import ROOT, book, quote, running_app, trade


async def _bus(nats_url: str) -> tuple[nats.NATS, object]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_all(js)
    return nc, js


async def _publish(js, subject: str, event) -> None:
    await js.publish(subject, codec.encode(event), headers=codec.headers_for(event))


async def _collect(nc: nats.NATS, subject: str, n: int, timeout: float = 15.0) -> list[dict]:
    got: list[dict] = []
    done = asyncio.Event()

    async def on_msg(msg) -> None:
        got.append(json.loads(msg.data))
        if len(got) >= n:
            done.set()

    sub = await nc.subscribe(subject, cb=on_msg)
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        await sub.unsubscribe()
    return got


def _since(seconds: float = 1.0) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


async def test_vwap_bars_on_real_nats_with_a_durable_on_stream_md(nats_url: str, tmp_path: Path) -> None:
    nc, js = await _bus(nats_url)
    symbol = f"VWAP{uuid.uuid4().hex[:6].upper()}"
    durable = f"vwap_{symbol.lower()}"
    try:
        # published before the app starts: the replay point (BY_START_TIME) brings them back
        await _publish(js, f"md.trade.digitex._.{symbol}", codec.make_batch(
            [trade(1, "10", "2", 1, symbol), trade(2, "12", "2", 30, symbol)]))
        env = {"NATS_URL": nats_url, "VWAP_DURABLE": durable, "VWAP_REPLAY_FROM": _since(5)}
        with running_app("examples.vwap_bars:app", env, tmp_path / "vwap.log"):
            collecting = asyncio.create_task(_collect(nc, f"analytics.vwap.digitex._.{symbol}", 1))
            await asyncio.sleep(0.2)
            await _publish(js, f"md.trade.digitex._.{symbol}", trade(3, "20", "1", 65, symbol))
            bars = await collecting
            info = await js.consumer_info("MD", durable)
            stream = await js.stream_info("MD")
        assert (bars[0]["open"], bars[0]["close"], bars[0]["vwap"], bars[0]["trades"]) == ("10", "12", "11", 2)
        assert info.config.filter_subject == "md.trade.>"
        assert info.num_ack_pending == 0 and info.num_pending == 0  # everything acknowledged
        # the consumer did not touch the provisioned stream (JStream(declare=False))
        assert stream.config.subjects == list(MARKET_DATA.subjects)
        assert stream.config.max_age == MARKET_DATA.max_age_s
        assert stream.config.description == MARKET_DATA.description
    finally:
        await nc.drain()


async def test_spread_alerts_on_real_nats_publish_outside_the_streams(nats_url: str, tmp_path: Path) -> None:
    nc, js = await _bus(nats_url)
    durable = f"spread_{uuid.uuid4().hex[:6]}"
    symbol = f"SPR{uuid.uuid4().hex[:6].upper()}"
    port = free_port()
    try:
        env = {"NATS_URL": nats_url, "SPREAD_DURABLE": durable, "SPREAD_ALERT_BPS": "25",
               "SPREAD_METRICS_PORT": str(port)}
        with running_app("examples.spread_alerts:app", env, tmp_path / "spread.log"):
            collecting = asyncio.create_task(_collect(nc, "alerts.>", 2))
            await asyncio.sleep(0.2)
            for i, (bid, ask) in enumerate([("100", "100.1"), ("100", "101"), ("100", "100.2")]):
                await _publish(js, "md.quote.ticksupply.BINANCE.ETH-USD", quote(i, bid, ask))
            alerts = await collecting
            # a book as snapshot + deltas, as the ingestors publish it: the deltas move the spread;
            # a missed delta is a gap (no alert on the book out of sync) until the next snapshot
            collecting = asyncio.create_task(_collect(nc, f"alerts.spread.digitex._.{symbol}", 3))
            await asyncio.sleep(0.2)
            producer = BookDeltas("digitex")
            for i, ask, publish in [(1, "20010", True), (2, "20200", True), (3, "20020", True), (4, "20300", False),
                                    (5, "20310", True), (6, "resync", True), (7, "20300", True)]:
                if ask == "resync":
                    producer.resync()
                    continue
                for event in producer.update(book(i, "20000", ask, symbol)):
                    if publish:
                        await _publish(js, f"md.{type(event).__struct_config__.tag}.digitex._.{symbol}", event)
            book_alerts = await collecting
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            info = await js.consumer_info("MD", f"{durable}_books")
        assert [(a["state"], a["spread_bps"], a["threshold_bps"]) for a in alerts] == [
            ("wide", "99.50", "25"), ("cleared", "19.98", "25")]
        assert [(a["state"], a["ask"]) for a in book_alerts] == [("wide", "20200"), ("cleared", "20020"),
                                                                 ("wide", "20300")]
        labels = f'consumer="spread_alerts",source="digitex",symbol="{symbol}",venue="_"'
        assert f"marketbus_book_builder_gaps_total{{{labels}}} 1.0" in metrics
        assert f"marketbus_book_builder_resyncs_total{{{labels}}} 1.0" in metrics
        assert sorted(info.config.filter_subjects or []) == ["md.book.>", "md.book_delta.>"]
        with pytest.raises(nats.js.errors.NotFoundError):  # alerts are plain NATS, in no stream
            await js.find_stream_name_by_subject("alerts.spread.ticksupply.BINANCE.ETH-USD")
    finally:
        await nc.drain()


async def test_trades_to_db_on_real_nats_replays_from_a_point_in_time(
    nats_url: str, pg_dsn: str, tmp_path: Path,
) -> None:
    nc, js = await _bus(nats_url)
    symbol = f"DB{uuid.uuid4().hex[:6].upper()}"
    table = f"trades_{symbol.lower()}"
    try:
        await _publish(js, f"md.trade.digitex._.{symbol}", trade(1, "100", "1", 1, symbol))
        await _publish(js, f"md.trade.digitex._.{symbol}", codec.make_batch(
            [trade(1, "100", "1", 1, symbol), trade(2, "100.5", "3", 2, symbol)]))  # a replay overlaps
        env = {"NATS_URL": nats_url, "TRADES_DB_DSN": pg_dsn, "TRADES_TABLE": table,
               "TRADES_DURABLE": f"db_{symbol.lower()}", "TRADES_REPLAY_FROM": _since(5)}
        with running_app("examples.trades_to_db:app", env, tmp_path / "db.log"):
            conn = await asyncpg.connect(pg_dsn)
            try:
                rows: list = []
                for _ in range(100):
                    rows = await conn.fetch(f"SELECT id, size FROM {table} WHERE symbol = $1 ORDER BY id", symbol)
                    if len(rows) == 2:
                        break
                    await asyncio.sleep(0.1)
            finally:
                await conn.execute(f"DROP TABLE IF EXISTS {table}")
                await conn.close()
        assert [(r["id"], str(r["size"])) for r in rows] == [(f"t-{symbol}-1", "1"), (f"t-{symbol}-2", "3")]
    finally:
        await nc.drain()


EXPECTED_CHANNELS = {
    "vwap_bars": {"md.trade.>", "analytics.vwap"},
    "spread_alerts": {"md.quote.>", "md.book.>", "md.book_delta.>", "alerts.spread"},
    "trades_to_db": {"md.trade.>"},
}


def test_faststream_docs_gen_documents_every_example(tmp_path: Path) -> None:
    """``faststream docs gen examples.<name>:app`` (the three run at once: each imports for seconds)."""
    runs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "faststream", "docs", "gen", f"examples.{name}:app", "--out",
             str(tmp_path / f"{name}.json")],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for name in EXPECTED_CHANNELS
    }
    for name, proc in runs.items():
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"{name}: {output}"
        doc = json.loads((tmp_path / f"{name}.json").read_text())
        assert doc["asyncapi"].startswith("3.")
        assert {c["address"] for c in doc["channels"].values()} == EXPECTED_CHANNELS[name]
        schemas = json.dumps(doc["components"]["schemas"])
        if name != "spread_alerts":  # the typed argument is documented with the contract's fields
            assert '"price"' in schemas and '"trade_id"' in schemas, name
        else:
            assert '"bid_price"' in schemas and '"asks"' in schemas
