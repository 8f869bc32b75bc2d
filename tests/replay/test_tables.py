"""The replay service reading the history tables in-process (``history_read="tables"``): the same
checks as over NATS (a recorded period replays byte for byte; reference data and several kinds
merge in history order), against a history writer storing Iceberg tables, and both sources
yield the very same bytes for the same range.

Iceberg stores prices and sizes as ``decimal(38, 18)``; marketbus publishes every decimal in the
contracts' canonical text (``"100.50"`` goes out ``"100.5"``) and the history gives decimals back
in that text, so a replay equals the live messages byte for byte, trailing zeros, tiny and large
values included."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import nats
import pytest_asyncio

from marketbus.contracts import BookLevel, BookSnapshot, Quote, Trade, event_id
from marketbus.contracts.jobs import StreamSelector
from marketbus.contracts.streams import ensure_all
from marketbus.runtime.publisher import JetStreamPublisher
from services.history_writer.app import HistoryWriter
from services.replay.app import ReplayService
from services.replay.source import HistorySource, TableSource
from tests.history.common import writer_overrides

from .conftest import MS, T0, Recorder, Stack, trade, unique_symbol
from .test_replay import (  # noqa: F401 - collected again here, on the tables-reading stack
    as_single_messages,
    play,
    test_reference_data_in_effect_at_the_start_goes_first,
)


@pytest_asyncio.fixture(scope="module")
async def stack(nats_url: str, tmp_path_factory: Any) -> AsyncIterator[Stack]:
    durable = f"t{uuid.uuid4().hex[:8]}"
    history_dir = str(tmp_path_factory.mktemp("iceberg"))
    nc = await nats.connect(nats_url)
    await ensure_all(nc.jetstream())
    writer = HistoryWriter(**writer_overrides(nats_url, "iceberg", history_dir, None, durable))
    await writer.start()
    replay = ReplayService(nats_url=nats_url, http_port=0, heartbeat_interval_s=1.0, queue=durable, max_sessions=4,
                           status_interval_s=0.2, history_timeout_s=10.0, history_read="tables",
                           history_dir=history_dir)
    await replay.start()
    publisher = await JetStreamPublisher(nc).start()
    try:
        yield Stack(nats_url, writer, replay, nc, publisher)
    finally:
        await publisher.close()
        await replay.stop()
        await writer.stop()
        await nc.drain()


async def test_recorded_period_replays_byte_for_byte_from_the_tables(stack: Stack) -> None:
    sym = unique_symbol("B")
    trades = [trade(sym, i, T0 + i * MS) for i in range(200)]
    live = await Recorder().start(stack.nc, f"md.*.digitex.DGTX.{sym}")
    await stack.publisher.publish_group(trades[:100])
    await stack.publisher.flush()
    await stack.publisher.publish_batch(trades[100:150])  # a backfill envelope: one message per event back
    await stack.publisher.flush()
    await stack.publisher.publish_group(trades[150:])
    await stack.publisher.flush()
    await live.wait(100 + 1 + 50)
    await stack.stored(sym, 200)

    replayed = await play(stack, f"*.digitex.DGTX.{sym}", T0, T0 + 10**12, speed="max")

    assert [(s, d, h) for s, d, h, _ in replayed] == as_single_messages(live.messages)


async def test_the_service_reads_the_tables_and_both_sources_yield_the_same_bytes(stack: Stack) -> None:
    assert isinstance(stack.replay.source, TableSource)
    sym = unique_symbol("T")
    await stack.publisher.publish_group([trade(sym, i, T0 + i * MS) for i in range(120)])
    await stack.publisher.flush()
    await stack.stored(sym, 120)
    selector = StreamSelector(kind="*", source="digitex", venue="DGTX", symbol=sym)
    over_nats = HistorySource(stack.nc, timeout=10.0, page_rows=50, chunk_rows=7)  # several pages and chunks
    nats_bytes = [bytes(e) async for chunk in over_nats.chunks(selector, T0, T0 + 10**12) for e in chunk]
    table_bytes = [bytes(e) async for chunk in stack.replay.source.chunks(selector, T0, T0 + 10**12) for e in chunk]
    counts = (
        await over_nats.count(selector, T0, T0 + 10**12),
        await stack.replay.source.count(selector, T0, T0 + 10**12),
    )
    assert (len(table_bytes), counts) == (120, (120, 120))
    assert table_bytes == nats_bytes


AWKWARD = [  # (price, size) as a vendor writes them
    ("100.50", "0.0100"), ("100.00", "0E-8"), ("1E+2", "1.500"), ("0.000000000000000001", "0.00000001"),
    ("0.0000001000", "123456789012.120000"), ("99999999999999999.999999999999999999", "0"),
    ("21865.010000000002", "5.000000000000000000"), ("7", "0.000001"),
]


async def test_decimals_with_trailing_zeros_tiny_and_large_replay_byte_for_byte(stack: Stack) -> None:
    sym = unique_symbol("Z")
    events: list[Any] = []
    for i, (price, size) in enumerate(AWKWARD):
        ts = T0 + i * MS
        events.append(Trade(id=event_id("digitex", "trade", "DGTX", sym, i), source="digitex", venue="DGTX",
                            symbol=sym, ts_event=ts, ts_recv=ts + 1, price=Decimal(price), size=Decimal(size),
                            trade_id=f"{i}.0"))
    ts = T0 + len(AWKWARD) * MS
    events.append(Quote(id=event_id("digitex", "quote", sym, 1), source="digitex", venue="DGTX", symbol=sym,
                        ts_event=ts, ts_recv=ts, bid_price=Decimal("0.10"), ask_size=Decimal("2.50")))
    events.append(BookSnapshot(id=event_id("digitex", "book", sym, 1), source="digitex", venue="DGTX", symbol=sym,
                               ts_event=ts + MS, ts_recv=ts + MS,
                               bids=[BookLevel(price=Decimal("99.90"), size=Decimal("1.000"), orders=3)],
                               asks=[BookLevel(price=Decimal("1E+2"), size=Decimal("0.0000005"))]))
    live = await Recorder().start(stack.nc, f"md.*.digitex.DGTX.{sym}")
    await stack.publisher.publish_group(events)
    await stack.publisher.flush()
    await live.wait(len(events))
    await stack.stored(sym, len(events))
    published = b"".join(data for _, data, _ in live.messages)
    assert b'"price":"100.5","size":"0.01"' in published and b'"price":"100","size":"0"' in published
    assert b'"price":"1E-18","size":"1E-8"' in published and b'["99.9","1",3]' in published

    replayed = await play(stack, f"*.digitex.DGTX.{sym}", T0, T0 + 10**12, speed="max")

    assert [(s, d, h) for s, d, h, _ in replayed] == live.messages
