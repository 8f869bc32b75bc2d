"""Copy the history from one catalog/warehouse to another (e.g. the embedded SQLite catalog and
local warehouse into PostgreSQL + S3), kind by kind, one UTC day per commit.

Rows keep their JetStream positions (``_stream``, ``_seq``, ``_idx``); a row whose position is
in the target already is skipped, so running it again (after an interruption, or while the
embedded writer still adds rows) copies only what is missing: nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from .lakehouse import LAYOUTS, LakehouseSettings
from .reader import HistoryReader
from .schema import KINDS, ORDER_COLUMNS
from .selector import Selector

MAX_NS = 2**63 - 1


class MigrationReport(msgspec.Struct):
    rows: dict[str, int] = {}  # kind -> rows copied
    skipped: int = 0  # rows already in the target


def migrate(source: LakehouseSettings, target: LakehouseSettings,
            progress: Callable[[str, int], None] | None = None) -> MigrationReport:
    """Copy every kind, one UTC day at a time; rows whose position is already in the target are
    skipped (a batch envelope's events may span days, so positions, not messages, are compared)."""
    from pyiceberg.exceptions import CommitFailedException

    reader = HistoryReader(source)
    target_reader = HistoryReader(target)
    report = MigrationReport(rows={})
    for kind in KINDS:
        if reader.tables.get(kind) is None:
            continue
        sel = Selector(kind=kind)
        table = target_reader.tables.get(kind, create=True)
        assert table is not None  # create=True makes the table when it is missing
        layout = LAYOUTS[kind]
        for day in reader.days(kind, sel, 0, MAX_NS):
            lo, hi = day, day + 86_400 * 10**9
            rows = reader.read_kind(kind, sel, lo, hi)
            if rows.num_rows == 0:
                continue
            have = target_reader.read_kind(kind, sel, lo, hi, columns=list(ORDER_COLUMNS))
            if have.num_rows:
                keys = set(zip(*(have.column(c).to_pylist() for c in ("_stream", "_seq", "_idx"))))
                mine = zip(*(rows.column(c).to_pylist() for c in ("_stream", "_seq", "_idx")))
                keep = pa.array([k not in keys for k in mine])
                report.skipped += rows.num_rows - pc.sum(keep.cast("int64")).as_py()
                rows = rows.filter(keep)
            if rows.num_rows == 0:
                continue
            data = layout.to_table(rows)
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
    return report
