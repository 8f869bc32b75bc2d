"""Copy the history from one catalog/warehouse to another (e.g. the embedded SQLite catalog and
local warehouse into PostgreSQL + S3), kind by kind, one UTC day per commit; and bring the
data directory of the former embedded Parquet store (``<dir>/kind=<kind>/source=.../venue=.../
symbol=.../date=<YYYY-MM-DD>/*.parquet``, storage rows) into the tables the same way.

Rows keep their JetStream positions (``_stream``, ``_seq``, ``_idx``); a row whose position is
in the target already is skipped, so running it again (after an interruption, or while the
embedded writer still adds rows) copies only what is missing: nothing twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .lakehouse import LAYOUTS, LakehouseSettings
from .reader import HistoryReader
from .schema import KINDS, ORDER_COLUMNS, SCHEMAS
from .selector import Selector

MAX_NS = 2**63 - 1


class MigrationReport(msgspec.Struct):
    rows: dict[str, int] = {}  # kind -> rows copied
    skipped: int = 0  # rows already in the target


def migrate(source: LakehouseSettings, target: LakehouseSettings,
            progress: Callable[[str, int], None] | None = None) -> MigrationReport:
    """Copy every kind, one UTC day at a time; rows whose position is already in the target are
    skipped (a batch envelope's events may span days, so positions, not messages, are compared)."""
    reader = HistoryReader(source)
    target_reader = HistoryReader(target)
    report = MigrationReport(rows={})
    for kind in KINDS:
        if reader.tables.get(kind) is None:
            continue
        sel = Selector(kind=kind)
        table = target_reader.tables.get(kind, create=True)
        assert table is not None  # create=True makes the table when it is missing
        for day in reader.days(kind, sel, 0, MAX_NS):
            lo, hi = day, day + 86_400 * 10**9
            rows = reader.read_kind(kind, sel, lo, hi)
            if rows.num_rows == 0:
                continue
            _copy_day(kind, table, target_reader, rows, lo, hi, report, progress)
    return report


def _copy_day(kind: str, table: Any, target_reader: HistoryReader, rows: pa.Table, lo: int, hi: int,
              report: MigrationReport, progress: Callable[[str, int], None] | None) -> None:
    """Append one day's storage rows of ``kind`` but those whose position is in the target."""
    from pyiceberg.exceptions import CommitFailedException

    have = target_reader.read_kind(kind, Selector(kind=kind), lo, hi, columns=list(ORDER_COLUMNS))
    if have.num_rows:
        keys = set(zip(*(have.column(c).to_pylist() for c in ("_stream", "_seq", "_idx"))))
        mine = zip(*(rows.column(c).to_pylist() for c in ("_stream", "_seq", "_idx")))
        keep = pa.array([k not in keys for k in mine])
        report.skipped += rows.num_rows - pc.sum(keep.cast("int64")).as_py()
        rows = rows.filter(keep)
    if rows.num_rows == 0:
        return
    data = LAYOUTS[kind].to_table(rows)
    data = data.take(pc.sort_indices(data, [("symbol", "ascending"), ("ts_event_ns", "ascending")]))
    while True:
        try:
            table.append(data, snapshot_properties={"marketbus.op": "migrate"})
            break
        except CommitFailedException:
            table.refresh()
    report.rows[kind] = report.rows.get(kind, 0) + rows.num_rows
    if progress is not None:
        progress(kind, rows.num_rows)


def _storage_rows(kind: str, data: pa.Table) -> pa.Table:
    """A Parquet store file's rows as this version's storage rows: columns cast to the storage
    types, a column the file predates filled with the contract's default (null when none)."""
    schema = SCHEMAS[kind]
    arrays = []
    for field in schema.schema:
        if field.name in data.column_names:
            arrays.append(data.column(field.name).cast(field.type))
            continue
        name = next((n for n, c in schema.column_of.items() if c == field.name), field.name)
        default = schema._defaults.get(name)
        if default is None:
            arrays.append(pa.nulls(data.num_rows, field.type))
        else:
            value = default if isinstance(default, bool | int | str) else str(default)
            arrays.append(pa.array([value] * data.num_rows).cast(field.type))
    return pa.Table.from_arrays(arrays, schema=schema.schema)


def _first_per_position(rows: pa.Table) -> pa.Table:
    """One row per ``(_stream, _seq, _idx)`` (a flush and the compacted file that replaced it
    may both be left behind by a crash of the Parquet store's compaction)."""
    rows = rows.take(pc.sort_indices(rows, [("_stream", "ascending"), ("_seq", "ascending"), ("_idx", "ascending")]))
    if rows.num_rows < 2:
        return rows
    same = pc.and_(
        pc.and_(
            pc.equal(rows.column("_stream").slice(1), rows.column("_stream").slice(0, rows.num_rows - 1)),
            pc.equal(rows.column("_seq").slice(1), rows.column("_seq").slice(0, rows.num_rows - 1)),
        ),
        pc.equal(rows.column("_idx").slice(1), rows.column("_idx").slice(0, rows.num_rows - 1)),
    )
    if not pc.any(same).as_py():
        return rows
    keep = pa.concat_arrays([pa.array([True]), pc.invert(same.combine_chunks())])
    return rows.filter(keep)


def parquet_days(root: str | Path) -> dict[str, dict[str, list[Path]]]:
    """kind -> UTC day (``YYYY-MM-DD``) -> the Parquet store's data files of that day (not its
    temporary files, which a flush never committed)."""
    out: dict[str, dict[str, list[Path]]] = {}
    for kind in KINDS:
        for f in sorted(Path(root).glob(f"kind={kind}/source=*/venue=*/symbol=*/date=*/*.parquet")):
            out.setdefault(kind, {}).setdefault(f.parent.name.removeprefix("date="), []).append(f)
    return out


def migrate_parquet(root: str | Path, target: LakehouseSettings,
                    progress: Callable[[str, str, int, int], None] | None = None) -> MigrationReport:
    """Copy a data directory of the former embedded Parquet store into the tables of ``target``,
    one kind and UTC day per commit. Rows whose JetStream position is in the target already are
    skipped (so running it again, or after the writer stored the same messages, copies nothing
    twice). ``progress(kind, day, rows copied, rows skipped)`` after each day."""
    target_reader = HistoryReader(target)
    report = MigrationReport(rows={})
    for kind, days in parquet_days(root).items():
        table = target_reader.tables.get(kind, create=True)
        assert table is not None  # create=True makes the table when it is missing
        for day, files in sorted(days.items()):
            # each file on its own: no hive partition columns added, files of older versions unified
            rows = _first_per_position(pa.concat_tables([_storage_rows(kind, pq.read_table(f)) for f in files]))
            lo = int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp()) * 10**9
            copied, skipped = report.rows.get(kind, 0), report.skipped
            _copy_day(kind, table, target_reader, rows, lo, lo + 86_400 * 10**9, report, None)
            if progress is not None:
                progress(kind, day, report.rows.get(kind, 0) - copied, report.skipped - skipped)
    return report
