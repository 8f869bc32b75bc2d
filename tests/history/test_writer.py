"""History writer end to end on a real NATS: store, query, coverage, dead letters, scale-out;
both backends (Apache Iceberg tables, embedded configuration, and PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import pytest

from marketbus.contracts import (
    BookLevel,
    BookSnapshot,
    DeadLetter,
    FeedStatus,
    Instrument,
    MarketPrice,
    codec,
    event_id,
    subjects,
)
from marketbus.runtime.publisher import JetStreamPublisher
from services.history_writer.app import HistoryWriter
from services.history_writer.query import HistoryQueryError, make_query, query_chunks, query_events, request_coverage
from services.history_writer.store.base import Selector
from tests.helpers import wait_for

from .common import SEC, T0, data_files_read_back, trade, unique_symbol, writer_overrides

BACKENDS = ["iceberg", "postgres"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def dsn(backend: str, request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("pg_dsn") if backend == "postgres" else None


async def _drop_pg(writer: HistoryWriter) -> None:
    if writer.store.backend == "postgres":
        await writer.store.drop_all()  # type: ignore[attr-defined]


async def _fresh_pg(dsn: str | None, durable: str) -> None:
    """Drop this test's tables (if a previous run left them) before its writer starts."""
    if dsn:
        from services.history_writer.store.postgres import PostgresStore

        store = PostgresStore(dsn, table_prefix=f"h_{durable}_")
        await store.open()
        await store.drop_all()
        await store.close()


async def _publish(nc, events, batch=None):
    pub = await JetStreamPublisher(nc).start()
    for e in events:
        await pub.publish_event(e)
    if batch:
        await pub.publish_batch(batch)
    await pub.flush()
    await pub.close()


async def _count(read: Any) -> int:
    return len(await read())


async def test_stores_queries_and_covers_every_event(nc, js, nats_url, tmp_path, backend, dsn) -> None:
    sym = unique_symbol("E")
    durable = f"t{uuid.uuid4().hex[:8]}"
    singles = [trade(sym, i) for i in range(300)]
    batch = [trade(sym, i) for i in range(300, 1300)]
    book = BookSnapshot(id=event_id("digitex", "book", sym, 1), source="digitex", venue="DGTX", symbol=sym,
                        ts_event=T0 + 5 * SEC, ts_recv=T0 + 5 * SEC, bids=[BookLevel(Decimal("99.5"), Decimal("3"), 2)],
                        asks=[BookLevel(Decimal("100.5"), Decimal("1.25"))], sequence=7, quality="realtime")
    inst = Instrument(id=event_id("finx", "instrument", sym), source="finx", venue="CB", symbol=sym, ts_event=T0,
                      ts_recv=T0, instrument_type="spot", vendor_symbol=sym, tick_size=Decimal("0.01"))
    # a market price carries its decimals as text: stored in the decimal columns, read back the same event
    price = MarketPrice(id=event_id("sitagri", "market_price", sym, 1), source="sitagri", venue="EURONEX", symbol=sym,
                        ts_event=T0 + 6 * SEC, ts_recv=T0 + 6 * SEC, quality="realtime", last="-3.25",
                        last_ts=T0 + 6 * SEC, last_volume="1E-7", bid="152.125", ask="999999999999999999.5",
                        ask_size="0", perf="-0.000001")
    gap = FeedStatus(id=event_id("t", "gap", sym), service="ingest_finx", source="finx", venue="CB", symbol=sym,
                     kind="trade", state="gap", gap_start=T0 + 200 * SEC, gap_end=T0 + 260 * SEC, ts=T0 + 300 * SEC)
    dlq = await nc.subscribe(subjects.dead_letter("history_writer", "finx"))
    await _fresh_pg(dsn, durable)
    writer = HistoryWriter(**writer_overrides(nats_url, backend, str(tmp_path / "h"), dsn, durable))
    await writer.start()
    try:
        await _publish(nc, [*singles, book, inst, price], batch)
        await nc.publish(
            subjects.feed_status("ingest_finx", "finx", "CB", sym), codec.encode(gap), headers=codec.headers_for(gap)
        )
        broken = b'{"type":"trade","id":"broken-' + sym.encode() + b'"'  # truncated JSON
        await js.publish(subjects.md("trade", "finx", "CB", sym), broken)
        await js.publish(
            subjects.feed_status("ingest_finx", "finx", "CB", sym), codec.encode(gap), headers=codec.headers_for(gap)
        )

        sel = Selector(kind="trade", symbol=sym)

        async def stored() -> int:
            tables = await writer.store.read_table(sel, 0, 2**63 - 1)
            return tables["trade"].num_rows if "trade" in tables else 0

        await wait_for(lambda: stored_eq(stored, 1300), timeout=20, what="1300 trades stored")
        # the bad message is dead-lettered with its payload and reason, and the writer goes on
        # (the stream is shared by the session: other tests' bad messages may be dead-lettered too)
        async def my_letter() -> DeadLetter | None:
            while True:
                letter = codec.decode((await dlq.next_msg(timeout=10)).data)
                if isinstance(letter, DeadLetter) and letter.payload == broken:
                    return letter

        letter = await asyncio.wait_for(my_letter(), 15)
        assert "undecodable" in letter.reason and letter.subject == subjects.md("trade", "finx", "CB", sym)

        # NATS query, streamed in chunks of 100, paged by cursor at 700 rows: every trade once, in order
        query = make_query(Selector(kind="trade", symbol=sym), T0, T0 + 10_000 * SEC, limit=700, chunk_rows=100)
        chunks = [c async for c in query_chunks(nc, query)]
        assert len(chunks) == 7 and [c.last for c in chunks] == [False] * 6 + [True] and chunks[-1].next_cursor
        got = [e async for e in query_events(nc, make_query(sel, T0, T0 + 10_000 * SEC, limit=700, chunk_rows=100))]
        assert [e.id for e in got] == [e.id for e in singles + batch]
        assert got[5] == singles[5] and got[400] == batch[100]  # exact decimals, same event

        # every kind of the symbol through the read API, contract events equal to what was published
        # (other kinds are written by their own flushes: they may land a little after the trades)
        async def everything_stored() -> list[Any]:
            return [e async for e in writer.store.read_events(Selector(symbol=sym), 0, 2**63 - 1)]

        await wait_for(lambda: stored_eq(lambda: _count(everything_stored), 1300 + 3 + 1), timeout=20,
                       what="every kind stored")
        everything = await everything_stored()
        assert book in everything and inst in everything and len(everything) == 1300 + 3 + 1  # + the gap status
        assert price in everything

        cov = await request_coverage(nc, Selector(kind="trade", symbol=sym), T0, T0 + 10_000 * SEC)
        (stream,) = cov.streams
        assert (
            stream.rows == 1300
            and stream.covered[0].start_ns == T0
            and stream.covered[-1].end_ns == T0 + 1299 * SEC // 10
        )
        assert [(g.start_ns, g.end_ns) for g in stream.gaps] == [(T0 + 200 * SEC, T0 + 260 * SEC)]
        resynced = FeedStatus(
            id=event_id("t", "resync", sym),
            service="ingest_finx",
            source="finx",
            venue="CB",
            symbol=sym,
            kind="trade",
            state="resynced",
            gap_start=T0 + 200 * SEC,
            gap_end=T0 + 260 * SEC,
            ts=T0 + 400 * SEC,
        )
        await js.publish(
            subjects.feed_status("ingest_finx", "finx", "CB", sym),
            codec.encode(resynced),
            headers=codec.headers_for(resynced),
        )

        async def gap_closed() -> bool:
            reply = await request_coverage(nc, Selector(kind="trade", symbol=sym), T0, T0 + 10_000 * SEC)
            return reply.streams[0].gaps == []

        await wait_for(gap_closed, timeout=10, what="the resync to close the gap")
        health = writer.health()
        assert health["streams"]["MD"]["dead_lettered"] >= 1 and health["backend"] == backend
        if backend == "iceberg":  # every data file of every kind reads back with its table's schema
            files = await asyncio.to_thread(data_files_read_back, str(tmp_path / "h"))
            assert {"trade", "book", "instrument", "market_price", "feed_status"} <= set(files)
    finally:
        await _drop_pg(writer)
        await writer.stop()
        await dlq.unsubscribe()


async def stored_eq(fn, n: int) -> bool:
    return await fn() == n


async def test_bad_query_gets_an_error_chunk(nc, nats_url, tmp_path) -> None:
    durable = f"t{uuid.uuid4().hex[:8]}"
    writer = HistoryWriter(**writer_overrides(nats_url, "iceberg", str(tmp_path / "h"), None, durable))
    await writer.start()
    try:
        query = make_query("trade", 0, 10, cursor="not-a-cursor")
        with pytest.raises(HistoryQueryError, match="bad request"):
            [c async for c in query_chunks(nc, query)]
    finally:
        await writer.stop()


async def test_two_writers_split_the_work_and_store_nothing_twice(nc, js, nats_url, tmp_path, backend, dsn) -> None:
    sym = unique_symbol("W")
    durable = f"t{uuid.uuid4().hex[:8]}"
    over = writer_overrides(
        nats_url, backend, str(tmp_path / "shared"), dsn, durable, pull_batch=100, batch_max_msgs=300
    )
    await _fresh_pg(dsn, durable)
    a = HistoryWriter(**over)
    b = HistoryWriter(**over)
    await a.start()
    await b.start()
    try:
        events = [trade(sym, i) for i in range(6000)]
        for i in range(0, 6000, 500):  # in bursts, so both writers have pull requests waiting
            await _publish(nc, events[i:i + 500])
            await asyncio.sleep(0.05)
        sel = Selector(kind="trade", symbol=sym)

        async def done() -> bool:
            tables = await a.store.read_table(sel, 0, 2**63 - 1, columns=["id"])
            return "trade" in tables and tables["trade"].num_rows >= 6000

        await wait_for(done, timeout=60, what="6000 trades stored by the two writers")  # Iceberg commits contend
        ids = (await a.store.read_table(sel, 0, 2**63 - 1, columns=["id"]))["trade"].column("id").to_pylist()
        assert len(ids) == 6000 and set(ids) == {e.id for e in events}
        share_a, share_b = a.intakes[0].stored, b.intakes[0].stored
        assert share_a > 0 and share_b > 0, (share_a, share_b)
    finally:
        await _drop_pg(a)
        await a.stop()
        await b.stop()


async def test_no_writer_running_is_reported(nats_server) -> None:
    import nats

    client = await nats.connect(nats_server.url)
    try:
        with pytest.raises(HistoryQueryError, match="no history writer"):
            await asyncio.wait_for(request_coverage(client, "trade.nobody", 0, 1, timeout=1.0), 5)
        with pytest.raises(HistoryQueryError, match="no history writer"):
            await asyncio.wait_for(anext(query_chunks(client, make_query("trade", 0, 1), timeout=1.0)), 5)
    finally:
        await client.close()


async def test_postgres_keeps_awkward_text_exactly(pg_dsn) -> None:
    """The PostgreSQL store loads rows as CSV: quotes, commas, newlines, backslashes, ``\\.``,
    unicode and empty strings come back exactly, an absent optional value stays NULL, nested
    book levels stay equal; and a redelivered batch (primary key hit) goes through ON CONFLICT."""
    from services.history_writer.schema import Message, decode_messages
    from services.history_writer.store.postgres import PostgresStore

    sym = unique_symbol("Q")
    awkward = ['a,"b"\nc', "\\.", "", "back\\slash;\ttab", "ünï€ode 株", "NULL", '"']
    events = [trade(sym, i) for i in range(len(awkward))]
    import msgspec

    events = [msgspec.structs.replace(e, trade_id=t) for e, t in zip(events, awkward)]
    events.append(msgspec.structs.replace(trade(sym, 99), trade_id=None))
    book = BookSnapshot(
        id=event_id("finx", "book", sym, 1),
        source="finx",
        venue="CB",
        symbol=sym,
        ts_event=T0,
        ts_recv=T0,
        bids=[BookLevel(price=Decimal("1.5"), size=Decimal("2"))],
        asks=[],
    )
    msgs = [Message("MD", i + 1, subjects.for_event(e), codec.encode(e), type(e).__struct_config__.tag)
            for i, e in enumerate([*events, book])]
    store = PostgresStore(pg_dsn, table_prefix=f"h_awk{uuid.uuid4().hex[:8]}_")
    await store.open()
    try:
        result = await store.write("MD", decode_messages(msgs, "MD"))
        assert result.rows == len(msgs) and result.duplicates == 0
        again = await store.write("MD", decode_messages(msgs[:3], "MD"))  # a redelivery
        assert (again.rows, again.duplicates) == (0, 3)
        got = [e async for e in store.read_events(Selector(symbol=sym), 0, 2**63 - 1)]
        assert sorted(got, key=lambda e: e.id) == sorted([*events, book], key=lambda e: e.id)
    finally:
        await store.drop_all()
        await store.close()
