"""``marketbus history compact`` and ``marketbus history migrate``: maintenance of the history
tables, straight through their catalog (no writer needed). The catalog and warehouse come from
``MARKETBUS_LAKEHOUSE_*`` (see ``marketbus.history.lakehouse``), the embedded defaults from
``--history-dir`` (default ``$MARKETBUS_DATA_DIR/history``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .history import app
from .output import fail, json_line, progress_console

console = Console()
JsonOpt = typer.Option(False, "--json", help="the report as one JSON object on one line")
MigrateJsonOpt = typer.Option(False, "--json", help="progress, then the report: one JSON object per line")
HistoryDirOpt = typer.Option(
    "", "--history-dir", help="embedded catalog and warehouse (default $MARKETBUS_DATA_DIR/history)"
)


class Steps:
    """Progress of a long maintenance run on stderr (stdout keeps the summary): a rich bar on a
    terminal, else one line per step (a log file or CI shows that it is moving, and where)."""

    def __init__(self, what: str, total: int | None, enabled: bool = True) -> None:
        self.what = what
        self.enabled = enabled
        self.done = 0
        self.total = total
        bar = progress_console()
        self.progress = Progress(TextColumn(f"[bold]{what}[/]"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.description}"), TimeElapsedColumn(), console=bar,
                                 transient=True, disable=not enabled or not bar.is_terminal)
        self.task = self.progress.add_task("", total=total)

    def __enter__(self) -> Steps:
        self.progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.stop()

    def step(self, text: str, advance: int = 1) -> None:
        """One step done (``advance`` 0: still on it, e.g. a table being compacted)."""
        self.done += advance
        self.progress.update(self.task, advance=advance, description=text)
        if self.enabled and self.progress.disable:
            of = f"/{self.total}" if self.total is not None else ""
            sys.stderr.write(f"{self.what} [{self.done}{of}] {text}\n")
            sys.stderr.flush()


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def _data_files(table: Any) -> tuple[int, int]:
    """(data files, their bytes) of a table's current snapshot."""
    table.refresh()
    if table.current_snapshot() is None:
        return 0, 0
    files = [t.file for t in table.scan().plan_files()]
    return len(files), sum(f.file_size_in_bytes for f in files)


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
    if min_files < 2:
        fail(f"--min-files {min_files}: give 2 or more (files merged into one per partition)")
    if snapshot_age < 0 or orphan_age < 0:
        fail("--snapshot-age and --orphan-age must be >= 0 (seconds)")
    days = _parse_days(retention)
    started = time.monotonic()
    stats: dict[str, tuple[int, int, int, int]] = {}
    report = run_compact(history_dir or None, min_files=min_files, snapshot_age_s=snapshot_age,
                         orphan_age_s=orphan_age, retention=days, stats=stats, show_progress=not as_json)
    if as_json:
        json_line(report)
        return
    files_before = sum(s[0] for s in stats.values())
    files_after = sum(s[2] for s in stats.values())
    bytes_before = sum(s[1] for s in stats.values())
    bytes_after = sum(s[3] for s in stats.values())
    console.print(
        f"compacted {len(stats)} table(s) ({', '.join(stats) or 'none found'}) in {time.monotonic() - started:.1f} s: "
        f"{report.files_merged} small files merged, data files {files_before} -> {files_after} "
        f"({_size(bytes_before)} -> {_size(bytes_after)}), {report.snapshots_expired} snapshots expired, "
        f"{report.orphans_removed} orphan files removed, {report.partitions_dropped} day partitions dropped "
        "by retention", highlight=False, soft_wrap=True)


def run_compact(history_dir: str | None, *, min_files: int = 8, snapshot_age_s: float = 86_400.0,
                orphan_age_s: float = 3600.0, retention: dict[str, float] | None = None,
                stats: dict[str, tuple[int, int, int, int]] | None = None, show_progress: bool = False) -> Any:
    """Retention, then compaction, snapshot expiry and orphan removal, table by table; ``stats``
    gets kind -> (data files, bytes) before and after."""
    from marketbus.history import maintenance
    from marketbus.history.lakehouse import LakehouseSettings, Tables
    from marketbus.history.schema import KINDS

    tables = Tables(LakehouseSettings.from_env(history_dir))
    existing = tables.existing(list(KINDS))
    # without the writers' ack floors, a snapshot older than snapshot_age_s counts as acked
    floors = {"MD": 2**63 - 1, "REF": 2**63 - 1, "STATUS": 2**63 - 1}
    report = maintenance.MaintenanceReport()
    with Steps("compact", len(existing), enabled=show_progress) as steps:
        for kind, table in existing.items():
            steps.step(f"{kind}: compacting", advance=0)
            before = _data_files(table)
            days = (retention or {}).get(kind, (retention or {}).get("default"))
            if days is not None:
                report.partitions_dropped += maintenance.apply_retention(table, days, time.time_ns())
            one = maintenance.maintain(tables, [kind], floors, min_files=min_files, snapshot_min_age_s=snapshot_age_s,
                                       orphan_age_s=orphan_age_s)
            report.files_merged += one.files_merged
            report.snapshots_expired += one.snapshots_expired
            report.orphans_removed += one.orphans_removed
            after = _data_files(table)
            if stats is not None:
                stats[kind] = (*before, *after)
            steps.step(f"{kind}: {one.files_merged} files merged, {before[0]} -> {after[0]} data files")
    return report


@app.command("migrate")
def migrate(
    from_dir: str = typer.Option("", "--from-dir", help="history dir of the embedded catalog and warehouse to copy"),
    from_parquet: str = typer.Option("", "--from-parquet",
                                     help="data dir of the former embedded Parquet store (kind=*/source=*/...)"),
    history_dir: str = HistoryDirOpt,
    as_json: bool = MigrateJsonOpt,
) -> None:
    """Copy an embedded history (SQLite catalog + local warehouse under --from-dir) into the
    lakehouse configured by MARKETBUS_LAKEHOUSE_* (PostgreSQL/REST catalog, S3 warehouse); or
    bring the data dir of the former Parquet store (--from-parquet) into the history tables
    (the lakehouse of MARKETBUS_LAKEHOUSE_*, by default the embedded one under --history-dir).
    Safe to run again: rows already copied are skipped."""
    from marketbus.history.lakehouse import LakehouseSettings
    from marketbus.history.migrate import migrate as run

    if bool(from_dir) == bool(from_parquet):
        raise typer.BadParameter("give one of --from-dir and --from-parquet")
    target = LakehouseSettings.from_env(history_dir or None)
    if from_parquet:
        if not Path(from_parquet).is_dir():
            raise typer.BadParameter(f"{from_parquet}: not a directory")
        _migrate_parquet(from_parquet, target, as_json)
        return
    if not (Path(from_dir) / "catalog.db").is_file():  # nothing to copy (and nothing created there)
        raise typer.BadParameter(f"{from_dir}: no embedded history there (no catalog.db)")
    source = LakehouseSettings(history_dir=from_dir)
    if target.embedded and target.base_dir().resolve() == source.base_dir().resolve():
        raise typer.BadParameter("the target is the source: set MARKETBUS_LAKEHOUSE_CATALOG_URI and _WAREHOUSE")
    started = time.monotonic()
    if as_json:  # progress as one object per line, then the report
        report = run(source, target, progress=lambda kind, n: json_line({"kind": kind, "rows_added": n}))
        json_line(report)
        return
    days = 0
    with Steps("migrate", None) as steps:
        def progress(kind: str, n: int) -> None:
            nonlocal days
            days += 1
            steps.step(f"{kind}: +{n} rows")

        report = run(source, target, progress=progress)
    _print_migrated(report, f"{days} table-days from {from_dir}", started)


def _migrate_parquet(root: str, target: Any, as_json: bool) -> None:
    from marketbus.history.migrate import migrate_parquet, parquet_days

    started = time.monotonic()
    if as_json:  # progress as one object per line, then the report
        report = migrate_parquet(root, target, progress=lambda kind, day, n, skipped: json_line(
            {"kind": kind, "day": day, "rows_added": n, "rows_skipped": skipped}))
        json_line(report)
        return
    days = parquet_days(root)
    files = [f for by_day in days.values() for fs in by_day.values() for f in fs]
    with Steps("migrate", sum(len(d) for d in days.values())) as steps:
        report = migrate_parquet(root, target, progress=lambda kind, day, n, skipped: steps.step(
            f"{kind} {day}: +{n} rows" + (f" ({skipped} already there)" if skipped else "")))
    _print_migrated(report, f"{len(files)} Parquet files ({_size(sum(f.stat().st_size for f in files))}) "
                            f"from {root}", started)


def _print_migrated(report: Any, source: str, started: float) -> None:
    per_kind = ", ".join(f"{kind} {n:,}" for kind, n in report.rows.items()) or "none"
    console.print(f"migrated {sum(report.rows.values()):,} rows into {len(report.rows)} table(s) ({per_kind}), "
                  f"{report.skipped:,} already there; read {source} in {time.monotonic() - started:.1f} s",
                  highlight=False, soft_wrap=True)
