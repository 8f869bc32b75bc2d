"""Maintenance of the history tables: compaction per partition, snapshot expiry and orphan
removal (``marketbus history compact``, and the writer's own schedule), retention per kind by
whole day partitions, and
``marketbus history migrate`` from the embedded configuration into PostgreSQL + SeaweedFS."""

from __future__ import annotations

import json
import os
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from marketbus.cli.main import app
from marketbus.contracts import Quote, event_id
from marketbus.contracts.streams import MARKET_DATA
from marketbus.history.lakehouse import LakehouseSettings, Tables
from marketbus.history.reader import HistoryReader
from marketbus.history.schema import SCHEMAS
from marketbus.history.selector import Selector
from marketbus.history.writer import HistoryTableWriter
from marketbus.runtime.publisher import JetStreamPublisher
from services.history_writer.app import HistoryWriter
from services.history_writer.query import make_query, query_events
from tests.helpers import wait_for

from .common import SEC, T0, trade, unique_symbol, writer_overrides
from .seaweedfs import SeaweedFS, lakehouse_env

DAY = 86_400 * SEC


def _fill(settings: LakehouseSettings, commits: int = 12, per_commit: int = 50) -> list:
    """``commits`` small appends of trades of three symbols over two UTC days."""
    writer = HistoryTableWriter(settings, "test")
    events, seq = [], 1
    for c in range(commits):
        batch = [trade(f"SYM{i % 3}", c * per_commit + i, ts=T0 + (c % 2) * DAY + (c * per_commit + i) * SEC)
                 for i in range(per_commit)]
        rows = SCHEMAS["trade"].rows_to_table(batch, "MD", list(range(seq, seq + per_commit)), [0] * per_commit)
        writer.append("trade", "MD", rows)
        events += batch
        seq += per_commit
    return events


def _rows(reader: HistoryReader) -> list[tuple]:
    t = reader.read_kind("trade", Selector(kind="trade"), 0, 2**63 - 1)
    return sorted(zip(*(t.column(c).to_pylist() for c in ("id", "ts_event", "price", "size", "_seq"))))


def _files_on_disk(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file()}


def test_compact_expire_orphans_and_retention(tmp_path: Path) -> None:
    settings = LakehouseSettings(history_dir=str(tmp_path / "h"))
    events = _fill(settings)
    reader = HistoryReader(settings)
    before = _rows(reader)
    assert len(before) == len(events)
    table = Tables(settings).get("trade")
    files_before = len(list(table.scan().plan_files()))
    stray = tmp_path / "h" / "warehouse" / "marketbus" / "trade" / "data" / "stray.parquet"
    stray.write_bytes(b"not referenced by anything")

    result = CliRunner().invoke(app, ["history", "compact", "--history-dir", str(tmp_path / "h"), "--min-files", "4",
                                      "--snapshot-age", "0", "--orphan-age", "0"])
    assert result.exit_code == 0, result.output
    # a readable summary on stdout (not the repr of a report), progress per table on stderr
    assert result.stdout.startswith("compacted 1 table(s) (trade) in "), result.stdout
    assert f"data files {files_before} -> " in result.stdout and "orphan files removed" in result.stdout
    assert "MaintenanceReport" not in result.output and result.stdout.count("\n") == 1
    assert "compact [1/1] trade: " in result.stderr, result.stderr
    table.refresh()
    files_after = list(table.scan().plan_files())
    partitions = {tuple(t.file.partition) for t in files_after}
    assert len(files_after) == len(partitions) < files_before  # one file per partition
    assert _rows(reader) == before  # the same rows, exactly
    assert len(table.metadata.snapshots) < 12 and not stray.exists()
    again = CliRunner().invoke(app, ["history", "compact", "--history-dir", str(tmp_path / "h"), "--json"])
    assert again.exit_code == 0, again.output
    (report,) = [json.loads(line) for line in again.stdout.splitlines()]  # --json: one object on one line
    assert report["files_merged"] == 0 and report["partitions_dropped"] == 0  # nothing left to compact
    # what is left on disk is exactly what the metadata references (old files were orphans)
    from marketbus.history.maintenance import referenced_files

    data_files = {p for p in _files_on_disk(tmp_path / "h" / "warehouse") if p.endswith(".parquet")}
    referenced = {p.removeprefix("file://") for p in referenced_files(table) if p.endswith(".parquet")}
    assert data_files == referenced  # the stray file and unreferenced leftovers are gone

    # retention: keep 1 day counted from the second day's end -> the first day's partitions go
    from marketbus.history import maintenance

    assert maintenance.apply_retention(table, 1.0, T0 + 2 * DAY) == 1
    left = _rows(reader)
    day2 = (T0 + DAY) // DAY * DAY
    assert left and all(r[1] >= day2 for r in left)
    assert left == [r for r in before if r[1] >= day2]


def test_migrate_embedded_into_postgres_and_seaweedfs(tmp_path: Path, seaweedfs: SeaweedFS, pg_dsn: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    source = LakehouseSettings(history_dir=str(tmp_path / "embedded"))
    events = _fill(source, commits=6)
    for name, value in lakehouse_env(seaweedfs, pg_dsn, f"mig_{uuid.uuid4().hex[:8]}").items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    result = runner.invoke(app, ["history", "migrate", "--from-dir", str(tmp_path / "embedded")])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"migrated {len(events):,} rows into 1 table(s) (trade {len(events):,}), "
                                    "0 already there; read "), result.stdout
    assert "migrate [1] trade: +" in result.stderr, result.stderr  # progress, one line a table-day when piped
    target = LakehouseSettings.from_env()
    assert not target.embedded
    assert _rows(HistoryReader(target)) == _rows(HistoryReader(source))
    assert len(_rows(HistoryReader(target))) == len(events)
    again = runner.invoke(app, ["history", "migrate", "--from-dir", str(tmp_path / "embedded"), "--json"])
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout.splitlines()[-1])  # --json: progress and the report, one object per line
    assert sum(report["rows"].values()) == 0 and report["skipped"] == len(events)
    assert len(_rows(HistoryReader(target))) == len(events)  # nothing twice

    # the catalog is the one Iceberg's JDBC catalog reads (Spark, Trino: README): its tables and
    # columns, the table's row under the catalog name, pointing at the current metadata
    import psycopg2

    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT table_name, column_name FROM information_schema.columns "
                    "WHERE table_name IN ('iceberg_tables', 'iceberg_namespace_properties')")
        columns = set(cur.fetchall())
        cur.execute("SELECT metadata_location FROM iceberg_tables WHERE catalog_name = %s AND table_namespace = %s "
                    "AND table_name = 'trade'", (target.catalog_name, target.namespace))
        (location,) = cur.fetchone()
    assert {("iceberg_tables", c) for c in ("catalog_name", "table_namespace", "table_name", "metadata_location",
                                             "previous_metadata_location")} <= columns
    assert {("iceberg_namespace_properties", c) for c in ("catalog_name", "namespace", "property_key",
                                                           "property_value")} <= columns
    assert location == Tables(target).get("trade", refresh=True).metadata_location and location.startswith("s3://")


async def test_the_writer_maintains_its_tables_on_a_schedule(nc, js, nats_url, tmp_path: Path) -> None:
    """The writer's own schedule (``compact_interval_s``, ``retention_interval_s``), nothing called
    by hand: small files compacted per partition, acked snapshots expired, an orphan file older
    than ``orphan_age_s`` removed (a younger one kept: it may be a commit in progress), and
    ``retention_days`` applied per kind by whole day partitions (quotes older than a day go, the
    trades of the same days stay); the query API returns exactly the published trades throughout."""
    sym = unique_symbol("M")
    durable = f"m{uuid.uuid4().hex[:8]}"
    data_dir = tmp_path / "h"
    writer = HistoryWriter(**writer_overrides(
        nats_url, "iceberg", str(data_dir), None, durable, compact_interval_s=0.5, compact_min_files=3,
        snapshot_min_age_s=0.0, orphan_age_s=600.0, retention_days={"quote": 1.0}, retention_interval_s=0.5))
    settings = LakehouseSettings(history_dir=str(data_dir))
    reader = HistoryReader(settings)
    trades = [trade(sym, i) for i in range(600)]  # one day, one symbol: one partition
    quotes = [Quote(id=event_id("finx", "quote", "CB", sym, i), source="finx", venue="CB", symbol=sym,
                    ts_event=T0 + i * SEC, ts_recv=T0 + i * SEC + 7, bid_price=Decimal("1.5"), bid_size=Decimal("2"),
                    ask_price=Decimal("1.6"), ask_size=Decimal("3")) for i in range(50)]

    def mine(kind: str) -> list[str]:
        return reader.read_kind(kind, Selector(symbol=sym), 0, 2**63 - 1, columns=["id"]).column("id").to_pylist()

    await writer.start()
    try:
        pub = await JetStreamPublisher(nc).start()
        try:
            for part in range(6):  # six flushes at least: six small files in the trades' partition
                for e in trades[part * 100:(part + 1) * 100]:
                    await pub.publish_event(e)
                await pub.flush()
                await wait_for(lambda n=(part + 1) * 100: len(mine("trade")) >= n, timeout=120,
                               interval=0.1, what=f"{(part + 1) * 100} trades stored")
            for q in quotes:
                await pub.publish_event(q)
            await pub.flush()
        finally:
            await pub.close()
        table = Tables(settings).get("trade", refresh=True)
        stray_old = Path(table.location().removeprefix("file://")) / "data" / "stray-old.parquet"
        stray_new = stray_old.with_name("stray-new.parquet")
        stray_old.write_bytes(b"left by a crashed commit")
        stray_new.write_bytes(b"a commit in progress")
        hour_ago = time.time() - 3600
        os.utime(stray_old, (hour_ago, hour_ago))

        async def acked() -> bool:  # acked once stored: the quotes went in before retention took them
            info = await js.consumer_info(MARKET_DATA.name, f"{durable}_md")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await wait_for(acked, timeout=120, interval=0.2, what="every message stored and acked")

        def maintained() -> bool:
            table.refresh()
            per_partition: dict[tuple, int] = {}
            for task in table.scan().plan_files():  # other tests' trades too (the stream's start)
                key = tuple(task.file.partition)
                per_partition[key] = per_partition.get(key, 0) + 1
            return (max(per_partition.values()) < 3 and len(table.metadata.snapshots) <= 5
                    and not stray_old.exists() and not mine("quote"))

        await wait_for(maintained, timeout=120, interval=0.5,
                       what="compaction, snapshot expiry, orphan removal and retention by the writer's schedule")
        assert stray_new.exists()  # younger than orphan_age_s: left alone
        assert sorted(mine("trade")) == sorted(e.id for e in trades)  # the same age as the quotes: kept
        api = [e async for e in query_events(nc, make_query(Selector(kind="trade", symbol=sym), 0, 2**63 - 1,
                                                             limit=10_000))]
        assert api == trades
    finally:
        await writer.stop()


@pytest.mark.parametrize(("days", "message"), [
    ({"trades": 30}, "RETENTION_DAYS: unknown kind 'trades'"),
    ({"book": 0}, "RETENTION_DAYS: the days of 'book' must be > 0"),
])
def test_a_retention_of_an_unknown_kind_or_no_days_stops_the_start(days: dict, message: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from marketbus.runtime.settings import load_settings
    from services.history_writer.settings import HistoryWriterSettings

    monkeypatch.setenv("MARKETBUS_HISTORY_WRITER_RETENTION_DAYS", json.dumps(days))
    with pytest.raises(ValueError, match=message):
        load_settings(HistoryWriterSettings)
    monkeypatch.setenv("MARKETBUS_HISTORY_WRITER_RETENTION_DAYS", '{"trade": 30, "book": 7, "default": 365}')
    assert load_settings(HistoryWriterSettings).retention_days == {"trade": 30, "book": 7, "default": 365}
