"""``marketbus history compact`` and ``marketbus history migrate``: maintenance of the history
tables, straight through their catalog (no writer needed). The catalog and warehouse come from
``MARKETBUS_LAKEHOUSE_*`` (see ``marketbus.history.lakehouse``), the embedded defaults from
``--history-dir`` (default ``$MARKETBUS_DATA_DIR/history``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from .history import app
from .output import fail, json_line

console = Console()
JsonOpt = typer.Option(False, "--json", help="the report as one JSON object on one line")
HistoryDirOpt = typer.Option(
    "", "--history-dir", help="embedded catalog and warehouse (default $MARKETBUS_DATA_DIR/history)"
)


def _parse_days(text: str) -> dict[str, float]:
    """``trade=30,default=365`` as {kind: days}; a usage error (exit 2, one line) otherwise."""
    from marketbus.history.schema import KINDS

    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, days = (t.strip() for t in part.partition("="))
        try:
            out[kind] = float(days)
        except ValueError:
            fail(f"--retention {part!r}: write kind=days, e.g. 'trade=30,book=7,default=365'")
        if kind not in KINDS and kind != "default":
            fail(f"--retention {part!r}: unknown kind {kind!r}; kinds: {', '.join(KINDS)}, default")
        if out[kind] <= 0:
            fail(f"--retention {part!r}: the days must be > 0")
    return out


@app.command("compact")
def compact(
    history_dir: str = HistoryDirOpt,
    min_files: int = typer.Option(8, "--min-files", help="merge a partition's files when it has this many"),
    snapshot_age: float = typer.Option(86_400.0, "--snapshot-age",
                                       help="expire snapshots older than this (s); writers keep theirs fewer"),
    orphan_age: float = typer.Option(3600.0, "--orphan-age", help="delete unreferenced files older than this (s)"),
    retention: str = typer.Option("", "--retention", help="days to keep per kind, e.g. 'trade=30,book=7,default=365'"),
    as_json: bool = JsonOpt,
) -> None:
    """Compact small files per partition, expire old snapshots, remove orphan files, and apply
    retention (whole day partitions)."""
    report = run_compact(history_dir or None, min_files=min_files, snapshot_age_s=snapshot_age,
                         orphan_age_s=orphan_age, retention=_parse_days(retention))
    if as_json:
        json_line(report)
    else:
        console.print(report)


def run_compact(history_dir: str | None, *, min_files: int = 8, snapshot_age_s: float = 86_400.0,
                orphan_age_s: float = 3600.0, retention: dict[str, float] | None = None) -> Any:
    from marketbus.history import maintenance
    from marketbus.history.lakehouse import LakehouseSettings, Tables
    from marketbus.history.schema import KINDS

    tables = Tables(LakehouseSettings.from_env(history_dir))
    dropped = 0
    for kind, table in tables.existing(list(KINDS)).items():
        days = (retention or {}).get(kind, (retention or {}).get("default"))
        if days is not None:
            dropped += maintenance.apply_retention(table, days, time.time_ns())
    # without the writers' ack floors, a snapshot older than snapshot_age_s counts as acked
    floors = {"MD": 2**63 - 1, "REF": 2**63 - 1, "STATUS": 2**63 - 1}
    report = maintenance.maintain(tables, KINDS, floors, min_files=min_files, snapshot_min_age_s=snapshot_age_s,
                                  orphan_age_s=orphan_age_s)
    report.partitions_dropped = dropped
    return report


@app.command("migrate")
def migrate(
    from_dir: str = typer.Option("", "--from-dir", help="history dir of the embedded catalog and warehouse to copy"),
    from_parquet: str = typer.Option("", "--from-parquet",
                                     help="data dir of the former embedded Parquet store (kind=*/source=*/...)"),
    history_dir: str = HistoryDirOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Copy an embedded history (SQLite catalog + local warehouse under --from-dir) into the
    lakehouse configured by MARKETBUS_LAKEHOUSE_* (PostgreSQL/REST catalog, S3 warehouse); or
    bring the data dir of the former Parquet store (--from-parquet) into the history tables
    (the lakehouse of MARKETBUS_LAKEHOUSE_*, by default the embedded one under --history-dir).
    Safe to run again: rows already copied are skipped."""
    from marketbus.history.lakehouse import LakehouseSettings
    from marketbus.history.migrate import migrate as run
    from marketbus.history.migrate import migrate_parquet

    if bool(from_dir) == bool(from_parquet):
        raise typer.BadParameter("give one of --from-dir and --from-parquet")
    target = LakehouseSettings.from_env(history_dir or None)
    if from_parquet:
        if not Path(from_parquet).is_dir():
            raise typer.BadParameter(f"{from_parquet}: not a directory")
        if as_json:  # progress as one object per line, then the report
            report = migrate_parquet(from_parquet, target, progress=lambda kind, day, n, skipped: json_line(
                {"kind": kind, "day": day, "rows_added": n, "rows_skipped": skipped}))
            json_line(report)
        else:
            report = migrate_parquet(from_parquet, target, progress=lambda kind, day, n, skipped: console.print(
                f"{kind} {day}: +{n} rows" + (f" ({skipped} already there)" if skipped else "")))
            console.print(report)
        return
    if not (Path(from_dir) / "catalog.db").is_file():  # nothing to copy (and nothing created there)
        raise typer.BadParameter(f"{from_dir}: no embedded history there (no catalog.db)")
    source = LakehouseSettings(history_dir=from_dir)
    if target.embedded and target.base_dir().resolve() == source.base_dir().resolve():
        raise typer.BadParameter("the target is the source: set MARKETBUS_LAKEHOUSE_CATALOG_URI and _WAREHOUSE")
    if as_json:  # progress as one object per line, then the report
        report = run(source, target, progress=lambda kind, n: json_line({"kind": kind, "rows_added": n}))
        json_line(report)
    else:
        report = run(source, target, progress=lambda kind, n: console.print(f"{kind}: +{n} rows"))
        console.print(report)
