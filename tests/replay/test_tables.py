"""The replay service reading the history tables in-process (``history_read="tables"``): the same
checks as over NATS (a recorded period replays byte for byte; reference data and several kinds
merge in history order), against a history writer storing Iceberg tables, and both sources
yield the very same bytes for the same range.

Iceberg stores prices and sizes as ``decimal(38, 18)`` and gives back their shortest text
(``"100.50"`` comes back ``"100.5"``, whichever source reads it): the live comparison here uses
decimals published in that shortest form; the PostgreSQL stack (conftest) covers trailing zeros."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import msgspec
import nats
import pytest_asyncio

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


def canonical_trade(symbol: str, i: int, ts: int) -> Any:
    """A trade whose decimals are already in their shortest text (what decimal(38, 18) returns)."""
    return msgspec.structs.replace(trade(symbol, i, ts), price=Decimal("100.25") + i, size=Decimal("0.5"))


async def test_recorded_period_replays_byte_for_byte_from_the_tables(stack: Stack) -> None:
    sym = unique_symbol("B")
    trades = [canonical_trade(sym, i, T0 + i * MS) for i in range(200)]
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
    counts = (await over_nats.count(selector, T0, T0 + 10**12), await stack.replay.source.count(selector, T0, T0 + 10**12))
    assert (len(table_bytes), counts) == (120, (120, 120))
    assert table_bytes == nats_bytes
