"""Maintenance of the history tables: compaction per partition, snapshot expiry and orphan
removal (``marketbus history compact``), retention by whole day partitions, and
``marketbus history migrate`` from the embedded configuration into PostgreSQL + SeaweedFS."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from marketbus.cli.main import app
from marketbus.history.lakehouse import LakehouseSettings, Tables
from marketbus.history.reader import HistoryReader
from marketbus.history.schema import SCHEMAS
from marketbus.history.selector import Selector
from marketbus.history.writer import HistoryTableWriter

from .common import SEC, T0, trade
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
