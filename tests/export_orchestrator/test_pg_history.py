"""Exports of history the writer keeps in PostgreSQL (its ``postgres`` backend): the orchestrator,
configured like the writer, reads the same tables, and the files hold exactly the stored rows."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pyarrow as pa

from marketbus.contracts import subjects
from marketbus.contracts.ids import event_id
from marketbus.contracts.jobs import ExportRequest, StreamSelector
from marketbus.contracts.reference import Instrument, InstrumentClass
from marketbus.history.pg_reader import PgHistoryReader
from marketbus.history.selector import Selector
from marketbus.runtime.settings import Secret, load_settings
from services.export_orchestrator.history_source import HistorySource, Position, StreamKey
from services.export_orchestrator.settings import ExportSettings
from services.history_writer.app import HistoryWriter

from .conftest import (
    T0,
    TS_INSTRUMENTS,
    Harness,
    S,
    download_all,
    exact,
    make_trades,
    publish,
    read_artifact,
    table_rows,
    trade_rows,
)


async def start_pg_writer(harness: Harness, dsn: str, prefix: str) -> None:
    harness.writer = HistoryWriter(nats_url=harness.url, backend="postgres", pg_dsn=Secret(dsn), pg_table_prefix=prefix,
                                   data_dir=str(harness.tmp / "history"), http_port=0, batch_max_wait_s=0.05,
                                   heartbeat_interval_s=60.0)
    await harness.writer.start()


async def stored_trades(dsn: str, prefix: str, source: str) -> list[tuple[str, ...]]:
    """The rows as PostgreSQL holds them, straight from the table (not through any reader)."""
    con = await asyncpg.connect(dsn)
    try:
        rows = await con.fetch(f'SELECT id, source, venue, symbol, ts_event, price::text, size::text, side '
                               f'FROM "{prefix}trade" WHERE source = $1', source)
    finally:
        await con.close()
    return sorted((r[0], r[1], r[2], r[3], str(r[4]), exact(r[5]), exact(r[6]), r[7]) for r in rows)


async def test_an_export_reads_the_history_kept_in_postgresql(harness: Harness, pg_dsn: str) -> None:
    prefix = f"hx_{uuid.uuid4().hex[:8]}_"
    await start_pg_writer(harness, pg_dsn, prefix)
    orch = await harness.start_orchestrator(history_backend="postgres", history_pg_dsn=Secret(pg_dsn),
                                            history_pg_table_prefix=prefix)
    assert orch.health()["history"] == "postgres"
    btc = make_trades("pgsrc", "XCHG", "BTC-USD", [T0 + i * S // 10 for i in range(1200)])
    eth = make_trades("pgsrc", "XCHG", "ETH-USD", [T0 + i * S // 7 for i in range(700)], seed=5)
    await publish(harness.nc, btc + eth)
    await harness.wait_stored("trade.pgsrc.*.*", 1900)

    req = ExportRequest(idempotency_key=str(uuid.uuid4()), selector=StreamSelector(kind="trade", source="pgsrc"),
                        start_ns=T0, end_ns=T0 + 400 * S, format="csv.gz", max_rows_per_file=1000, fill_gaps=False)
    done = await harness.wait_state((await harness.create(req)).job_id)
    assert done.state == "succeeded", done.reason
    assert done.rows == 1900 and [a.rows for a in done.artifacts] == [1000, 900]
    _, files = await download_all(orch.api_url, done.job_id)
    tables = [read_artifact(a.filename, files[a.filename]) for a in done.artifacts]
    assert table_rows(tables) == await stored_trades(pg_dsn, prefix, "pgsrc") == trade_rows(btc + eth)
    # in the history order, decimals exact
    rows = pa.concat_tables(tables)
    assert rows.column("ts_event").to_pylist() == sorted(rows.column("ts_event").to_pylist())
    btc_prices = [
        p for p, y in zip(rows.column("price").to_pylist(), rows.column("symbol").to_pylist()) if y == "BTC-USD"
    ]
    assert [Decimal(p) for p in btc_prices] == [t.price for t in btc]

    cov = {
        (c.symbol, c.rows)
        for c in await orch.history.coverage(StreamSelector(kind="trade", source="pgsrc"), 0, 2**63 - 1)
    }  # type: ignore[union-attr]
    assert cov == {("BTC-USD", 1200), ("ETH-USD", 700)}
    assert [(k.kind, k.symbol) for k in await orch.history.streams(StreamSelector(source="pgsrc"))] == [  # type: ignore[union-attr]
        ("trade", "BTC-USD"), ("trade", "ETH-USD")]


async def test_a_resumed_read_continues_strictly_after_its_position(harness: Harness, pg_dsn: str) -> None:
    """What a job taken over by another worker reads: the rows after the last one written, from
    PostgreSQL as from Iceberg."""
    prefix = f"hx_{uuid.uuid4().hex[:8]}_"
    await start_pg_writer(harness, pg_dsn, prefix)
    same_ts = [T0 + (i // 3) * S for i in range(300)]  # three trades per timestamp: the order columns decide
    trades = make_trades("pgres", "XCHG", "SOL-USD", same_ts)
    trades = [msgspec.structs.replace(t, id=f"{t.id}-{i}") for i, t in enumerate(trades)]  # ids unique
    await publish(harness.nc, trades, batch=50)
    await harness.wait_stored("trade.pgres.*.*", 300)

    settings = ExportSettings(history_backend="postgres", history_pg_dsn=Secret(pg_dsn), history_pg_table_prefix=prefix)
    source = HistorySource(settings)
    await source.open()
    try:
        async def read(resume: Position | None) -> pa.Table:
            batches = [b async for _, b in source.batches(StreamSelector(kind="trade", source="pgres"), 0, 2**63 - 1,
                                                          resume=resume, batch_rows=64)]
            return pa.Table.from_batches(batches)

        everything = await read(None)
        assert everything.num_rows == 300
        order: list[Any] = list(
            zip(*(everything.column(c).to_pylist() for c in ("ts_event", "_stream", "_seq", "_idx")))
        )
        assert order == sorted(order)
        key = order[149]
        rest = await read(Position("trade", key, 150))
        assert rest.column("id").to_pylist() == everything.column("id").to_pylist()[150:]
    finally:
        await source.close()


async def test_the_ticksupply_catalog_comes_from_the_reference_data_in_postgresql(
    harness: Harness, pg_dsn: str
) -> None:
    """What the TickSupply-shaped API lists (instruments, datastreams, availability) from history
    kept in PostgreSQL: the stored reference data and market streams."""
    prefix = f"hx_{uuid.uuid4().hex[:8]}_"
    await start_pg_writer(harness, pg_dsn, prefix)
    orch = await harness.start_orchestrator(history_backend="postgres", history_pg_dsn=Secret(pg_dsn),
                                            history_pg_table_prefix=prefix)
    refs: list[Any] = []
    for symbol, (ds, kind, base, quote) in TS_INSTRUMENTS.items():
        refs.append(Instrument(
            id=event_id("ticksupply", "instrument", "binance", symbol), source="ticksupply", venue="binance",
            symbol=symbol, ts_event=T0, ts_recv=T0, instrument_type=kind, vendor_symbol=symbol, base=base,  # type: ignore[arg-type]
            quote=quote, attributes={"datastream.trade.json": ds}))
        vendor = f"{symbol}:trade:json"
        refs.append(InstrumentClass(
            id=event_id("ticksupply", "datastream", ds), source="ticksupply", venue="binance",
            symbol=subjects.normalize_symbol(vendor), ts_event=T0, ts_recv=T0, class_type="datastream",
            vendor_symbol=vendor, vendor_ref=ds, attributes={"stream_type": "trade", "wire_format": "json",
                                                             "instrument": symbol}))
    trades = make_trades("ticksupply", "binance", "BTCUSDT", [T0 + i * S for i in range(20)])
    await publish(harness.nc, refs + trades)
    await harness.wait_stored("instrument.ticksupply.*.*", len(TS_INSTRUMENTS))
    await harness.wait_stored("trade.ticksupply.*.*", 20)
    history = orch.history
    assert history is not None

    instruments = await history.instruments("binance")
    assert {s: (r["base"], r["quote"], r["instrument_type"], r["attributes"]) for s, r in instruments.items()} == {
        s: (base, quote, kind, {"datastream.trade.json": ds}) for s, (ds, kind, base, quote) in TS_INSTRUMENTS.items()}
    assert await history.vendor_datastreams() == sorted(
        StreamKey("trade", "ticksupply", "binance", subjects.normalize_symbol(s)) for s in TS_INSTRUMENTS)
    assert await history.market_streams() == [StreamKey("trade", "ticksupply", "binance", "BTCUSDT")]
    [cov] = await history.coverage(StreamSelector(kind="trade", source="ticksupply"), T0, T0 + 60 * S)
    assert (cov.rows, cov.covered[0].start_ns, cov.covered[-1].end_ns) == (20, T0, T0 + 19 * S)


def test_the_writer_environment_points_the_reads_at_its_database(tmp_path: Path) -> None:
    """One environment configures both: the writer's backend and DSN (a secret file) are the
    orchestrator's defaults; its own ``MARKETBUS_EXPORT_HISTORY_*`` win."""
    (tmp_path / "dsn").write_text("postgresql://marketbus:pw@postgres:5432/marketbus\n")
    env = {
        "MARKETBUS_HISTORY_WRITER_BACKEND": "postgres",
        "MARKETBUS_HISTORY_WRITER_PG_DSN_FILE": str(tmp_path / "dsn"),
        "MARKETBUS_HISTORY_WRITER_PG_TABLE_PREFIX": "h_",
    }
    s = load_settings(ExportSettings, env)
    assert (s.history_backend, s.history_pg_dsn.get(), s.history_pg_table_prefix) == (
        "postgres", "postgresql://marketbus:pw@postgres:5432/marketbus", "h_")
    own = load_settings(ExportSettings, {**env, "MARKETBUS_EXPORT_HISTORY_BACKEND": "iceberg"})
    assert own.history_backend == "iceberg"
    assert load_settings(ExportSettings, {}).history_backend == "iceberg"


async def test_a_read_given_up_early_frees_its_connection(harness: Harness, pg_dsn: str) -> None:
    """A job cancelled after its first batch (the COPY still has megabytes to send, the pipe is
    full): its connection comes back; a table no writer has created reads as empty."""
    prefix = f"hx_{uuid.uuid4().hex[:8]}_"
    await start_pg_writer(harness, pg_dsn, prefix)
    trades = make_trades("pgbig", "XCHG", "BTC-USD", [T0 + i * S // 100 for i in range(30_000)])
    await publish(harness.nc, trades)
    await harness.wait_stored("trade.pgbig.*.*", len(trades))
    reader = PgHistoryReader(pg_dsn, table_prefix=prefix, pool_size=1)  # one connection: a leak would hang
    await reader.open()
    try:
        for _ in range(2):
            gen = reader.read_batches(Selector(kind="trade", source="pgbig"), 0, 2**63 - 1, batch_rows=100)
            kind, first = await asyncio.wait_for(gen.__anext__(), 10)
            assert (kind, first.num_rows) == ("trade", 100)
            await asyncio.wait_for(gen.aclose(), 10)
        whole = await asyncio.wait_for(reader.read_kind("trade", Selector(source="pgbig"), 0, 2**63 - 1), 20)
        assert whole.column("id").to_pylist() == [t.id for t in trades]  # all of them, in the history order
        missing = PgHistoryReader(table_prefix=f"none_{prefix}", pool=reader.pool)
        assert (await missing.read_kind("trade", Selector(), 0, 2**63 - 1)).num_rows == 0
        assert await missing.streams(Selector()) == []
    finally:
        await reader.close()
