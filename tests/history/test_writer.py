"""History writer end to end on a real NATS: store, query, coverage, dead letters, scale-out;
both backends (embedded Parquet/DuckDB and PostgreSQL)."""

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
    codec,
    event_id,
    subjects,
)
from marketbus.runtime.publisher import JetStreamPublisher
from services.history_writer.app import HistoryWriter
from services.history_writer.query import HistoryQueryError, make_query, query_chunks, query_events, request_coverage
from services.history_writer.store.base import Selector
from tests.helpers import wait_for

from .common import SEC, T0, trade, unique_symbol, writer_overrides

BACKENDS = ["parquet", "postgres"]


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
    gap = FeedStatus(id=event_id("t", "gap", sym), service="ingest_finx", source="finx", venue="CB", symbol=sym,
                     kind="trade", state="gap", gap_start=T0 + 200 * SEC, gap_end=T0 + 260 * SEC, ts=T0 + 300 * SEC)
    dlq = await nc.subscribe(subjects.dead_letter("history_writer", "finx"))
    await _fresh_pg(dsn, durable)
    writer = HistoryWriter(**writer_overrides(nats_url, backend, str(tmp_path / "h"), dsn, durable))
    await writer.start()
    try:
        await _publish(nc, [*singles, book, inst], batch)
        await nc.publish(subjects.feed_status("ingest_finx", "finx", "CB", sym), codec.encode(gap), headers=codec.headers_for(gap))
        broken = b'{"type":"trade","id":"broken-' + sym.encode() + b'"'  # truncated JSON
        await js.publish(subjects.md("trade", "finx", "CB", sym), broken)
        await js.publish(subjects.feed_status("ingest_finx", "finx", "CB", sym), codec.encode(gap), headers=codec.headers_for(gap))

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

        await wait_for(lambda: stored_eq(lambda: _count(everything_stored), 1300 + 2 + 1), timeout=20,
                       what="every kind stored")
        everything = await everything_stored()
        assert book in everything and inst in everything and len(everything) == 1300 + 2 + 1  # + the gap status

        cov = await request_coverage(nc, Selector(kind="trade", symbol=sym), T0, T0 + 10_000 * SEC)
        (stream,) = cov.streams
        assert stream.rows == 1300 and stream.covered[0].start_ns == T0 and stream.covered[-1].end_ns == T0 + 1299 * SEC // 10
        assert [(g.start_ns, g.end_ns) for g in stream.gaps] == [(T0 + 200 * SEC, T0 + 260 * SEC)]
        resynced = FeedStatus(id=event_id("t", "resync", sym), service="ingest_finx", source="finx", venue="CB", symbol=sym,
                              kind="trade", state="resynced", gap_start=T0 + 200 * SEC, gap_end=T0 + 260 * SEC, ts=T0 + 400 * SEC)
        await js.publish(subjects.feed_status("ingest_finx", "finx", "CB", sym), codec.encode(resynced), headers=codec.headers_for(resynced))

        async def gap_closed() -> bool:
            reply = await request_coverage(nc, Selector(kind="trade", symbol=sym), T0, T0 + 10_000 * SEC)
            return reply.streams[0].gaps == []

        await wait_for(gap_closed, timeout=10, what="the resync to close the gap")
        health = writer.health()
        assert health["streams"]["MD"]["dead_lettered"] >= 1 and health["backend"] == backend
    finally:
        await _drop_pg(writer)
        await writer.stop()
        await dlq.unsubscribe()


async def stored_eq(fn, n: int) -> bool:
    return await fn() == n


async def test_bad_query_gets_an_error_chunk(nc, nats_url, tmp_path) -> None:
    durable = f"t{uuid.uuid4().hex[:8]}"
    writer = HistoryWriter(**writer_overrides(nats_url, "parquet", str(tmp_path / "h"), None, durable))
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
    over = writer_overrides(nats_url, backend, str(tmp_path / "shared"), dsn, durable, pull_batch=100, batch_max_msgs=300)
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


async def test_retention_and_compaction_parquet(tmp_path) -> None:
    from services.history_writer.schema import Message, decode_messages
    from services.history_writer.store.parquet import ParquetStore

    store = ParquetStore(tmp_path / "h", fsync=False, compact_min_files=3, compact_min_age_s=0)
    await store.open()
    sym = unique_symbol("R")
    old = [trade(sym, i, ts=T0 - 40 * 86_400 * SEC + i) for i in range(10)]
    new = [trade(sym, 100 + i) for i in range(50)]
    seq = 0
    for chunk in [old, new[:10], new[10:20], new[20:30], new[25:50]]:  # overlapping ids on purpose
        msgs = []
        for e in chunk:
            seq += 1
            msgs.append(Message("MD", seq, subjects.for_event(e), codec.encode(e), "trade"))
        await store.write("MD", decode_messages(msgs, "MD"))
    part = next(p for *_, p in store.partitions(Selector(symbol=sym), T0, T0 + 86_400 * SEC))
    assert len(list(part.glob("*.parquet"))) == 4
    assert await store.compact() == 4
    assert len(list(part.glob("*.parquet"))) == 1
    assert (await store.read_table(Selector(symbol=sym), T0, 2**62))["trade"].column("id").to_pylist() == [e.id for e in new]
    removed = await store.apply_retention({"trade": 30}, T0)
    assert removed == 1
    assert (await store.read_table(Selector(symbol=sym), 0, T0))  == {}
    assert (await store.read_table(Selector(symbol=sym), T0, 2**62))["trade"].num_rows == 50


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


async def test_parquet_repairs_what_a_killed_writer_left(tmp_path) -> None:
    """A crash mid-flush: the intent is rolled forward (all files of the flush appear), orphan
    tmp files without an intent are deleted, and the stored sequences are known again."""
    import json
    import subprocess
    import sys

    from services.history_writer.schema import Message, decode_messages
    from services.history_writer.store.parquet import _HOST, ParquetStore

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that is no longer alive
    sym = unique_symbol("P")
    writer = ParquetStore(tmp_path / "h", fsync=False, writer_id=f"{_HOST}_{dead.pid}_abc")
    await writer.open()
    events = [trade(sym, i) for i in range(20)]
    msgs = [Message("MD", i + 1, subjects.for_event(e), codec.encode(e), "trade") for i, e in enumerate(events)]
    await writer.write("MD", decode_messages(msgs[:10], "MD"))
    # simulate the crash: the next flush's file exists only as tmp, its intent was written
    (final,) = [p for p in (tmp_path / "h").rglob("*.parquet")]
    tmp = final.parent / f".{final.name.replace('-00000000000000000001-', '-00000000000000000011-')}.{_HOST}.{dead.pid}.tmp"
    final.rename(tmp)
    intent = {"renames": [[str(tmp.relative_to(tmp_path / "h")), str(final.relative_to(tmp_path / "h"))]]}
    (tmp_path / "h" / "_journal" / f"{_HOST}_{dead.pid}_abc-99.json").write_text(json.dumps(intent))
    orphan = final.parent / f".MD-1-2-x.parquet.{_HOST}.{dead.pid}.tmp"
    orphan.write_bytes(b"partial")

    store = ParquetStore(tmp_path / "h", fsync=False)
    await store.open()
    assert final.exists() and not tmp.exists() and not orphan.exists()
    assert not list((tmp_path / "h" / "_journal").glob("*.json"))
    assert await store.stored_seqs("MD", [1, 5, 10, 11]) == {1, 5, 10}
    # a redelivery of stored messages plus new ones: only the new ones are written
    await store.write("MD", decode_messages([m for m in msgs if m.seq not in await store.stored_seqs("MD", [m.seq for m in msgs])], "MD"))
    ids = (await store.read_table(Selector(symbol=sym), 0, 2**63 - 1))["trade"].column("id").to_pylist()
    assert ids == [e.id for e in events]


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
    book = BookSnapshot(id=event_id("finx", "book", sym, 1), source="finx", venue="CB", symbol=sym, ts_event=T0, ts_recv=T0,
                        bids=[BookLevel(price=Decimal("1.5"), size=Decimal("2"))], asks=[])
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
