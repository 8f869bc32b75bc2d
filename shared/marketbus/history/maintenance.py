"""Table maintenance: compaction of small files per partition, snapshot expiry, orphan-file
removal and retention (deletes by whole day partitions). Run on a schedule by the history
writer and on demand by ``marketbus history compact``.

Every operation is an ordinary optimistic Iceberg commit: when a writer commits meanwhile, the
operation gives up for this round (nothing is lost; it runs again next time).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .lakehouse import Tables
from .snapshot_props import SEQS_PROP, STREAM_PROP, decode_ranges

log = logging.getLogger("marketbus.history.maintenance")
DAY_NS = 86_400 * 10**9


class MaintenanceReport(msgspec.Struct):
    files_merged: int = 0  # small data files replaced by bigger ones
    snapshots_expired: int = 0
    orphans_removed: int = 0
    partitions_dropped: int = 0  # day partitions removed by retention (per table)


def compact_table(table: Any, min_files: int = 8) -> int:
    """Merge the data files of every partition holding at least ``min_files`` into one file per
    partition (rows sorted by symbol, ts_event); returns how many files were merged away."""
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    table.refresh()
    if table.current_snapshot() is None:
        return 0
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for task in table.scan().plan_files():
        if task.delete_files:
            continue  # rows deleted by position: leave the file to a full rewrite
        groups.setdefault(tuple(task.file.partition), []).append(task.file)
    small = [files for files in groups.values() if len(files) >= min_files]
    if not small:
        return 0
    merged = 0
    schema = table.schema().as_arrow()
    try:
        with table.transaction() as tx:
            with tx.update_snapshot(snapshot_properties={"marketbus.op": "compact"}).overwrite() as rewrite:
                for files in small:
                    parts = [_read_file(table, f.file_path) for f in files]
                    data = pa.concat_tables([p.cast(schema) if p.schema != schema else p for p in parts])
                    data = data.take(pc.sort_indices(data, [("symbol", "ascending"), ("ts_event_ns", "ascending")]))
                    for f in files:
                        rewrite.delete_data_file(f)
                    for f in _dataframe_to_data_files(tx.table_metadata, data, table.io):
                        rewrite.append_data_file(f)
                    merged += len(files) - 1
    except CommitFailedException:
        log.info("compaction of %s raced a commit; retried next round", table.name())
        return 0
    return merged


def _read_file(table: Any, path: str) -> pa.Table:
    with table.io.new_input(path).open() as f:
        return pq.read_table(f)


def expire_snapshots(table: Any, floors: dict[str, int], min_age_s: float = 600.0, keep_last: int = 5,
                     refresh: bool = True) -> int:
    """Expire snapshots older than ``min_age_s`` (the newest ``keep_last`` are kept) whose
    JetStream sequences are all at or below the consumer's ack floor of their stream (their
    messages are acked: never redelivered, so nobody needs to know they are stored)."""
    from pyiceberg.exceptions import CommitFailedException

    if refresh:
        table.refresh()
    snaps = sorted(table.metadata.snapshots, key=lambda s: s.timestamp_ms)
    current = table.current_snapshot()
    cutoff_ms = (time.time() - min_age_s) * 1000
    ids = []
    for snap in snaps[:-keep_last] if keep_last else snaps:
        if current is not None and snap.snapshot_id == current.snapshot_id:
            continue
        if snap.timestamp_ms >= cutoff_ms:
            continue
        props = snap.summary.additional_properties if snap.summary is not None else {}
        stream, seqs = props.get(STREAM_PROP), props.get(SEQS_PROP)
        if stream and seqs:
            top = max(b for _, b in decode_ranges(seqs))
            if top > floors.get(stream, -1):
                continue  # some of its messages may still be redelivered
        ids.append(snap.snapshot_id)
    if not ids:
        return 0
    try:
        table.maintenance.expire_snapshots().by_ids(ids).commit()
    except CommitFailedException:
        return 0
    return len(ids)


def referenced_files(table: Any) -> set[str]:
    """Every file the table's metadata still points at (data, manifests, lists, metadata)."""
    io = table.io
    out: set[str] = {table.metadata_location}
    out.update(entry.metadata_file for entry in table.metadata.metadata_log)
    for snap in table.metadata.snapshots:
        out.add(snap.manifest_list)
        for manifest in snap.manifests(io):
            out.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=False):
                out.add(entry.data_file.file_path)
    return out


def remove_orphans(table: Any, older_than_s: float = 3600.0) -> int:
    """Delete files under the table's location that no metadata references and that are older
    than ``older_than_s`` (younger ones may belong to a commit in progress)."""
    from pyarrow.fs import FileSelector, FileType

    table.refresh()
    keep = {_path(p) for p in referenced_files(table)}
    scheme, netloc, root = table.io.parse_location(table.location())
    fs = table.io.fs_by_scheme(scheme, netloc)
    cutoff = time.time() - older_than_s
    removed = 0
    try:
        infos = fs.get_file_info(FileSelector(root, recursive=True))
    except FileNotFoundError:
        return 0
    for info in infos:
        if info.type != FileType.File or _path(info.path) in keep:
            continue
        mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
        if mtime and mtime > cutoff:
            continue
        fs.delete_file(info.path)
        removed += 1
    return removed


def _path(location: str) -> str:
    """A location without its scheme (``s3://b/k`` and ``b/k`` compare equal)."""
    return location.split("://", 1)[-1].lstrip("/")


def apply_retention(table: Any, days: float, now_ns: int) -> int:
    """Delete the day partitions entirely older than ``days``; returns 1 if something went."""
    from pyiceberg.expressions import LessThan, Reference
    from pyiceberg.expressions.literals import literal

    cutoff_ns = (now_ns - int(days * DAY_NS)) // DAY_NS * DAY_NS  # whole days only: metadata-only delete
    cutoff = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=cutoff_ns // 1000)
    table.refresh()
    before = table.current_snapshot()
    table.delete(
        LessThan(term=Reference("ts_event"), value=literal(cutoff.isoformat())),
        snapshot_properties={"marketbus.op": "retention"},
    )
    return int(table.current_snapshot() is not None and before is not None
               and table.current_snapshot().snapshot_id != before.snapshot_id)


def maintain(tables: Tables, kinds: Iterable[str], floors: dict[str, int], *, min_files: int = 8,
             snapshot_min_age_s: float = 600.0, orphan_age_s: float = 3600.0) -> MaintenanceReport:
    """Compaction, then snapshot expiry, then orphan removal, on every existing table."""
    report = MaintenanceReport()
    for kind, table in tables.existing(list(kinds)).items():
        try:
            report.files_merged += compact_table(table, min_files)
            report.snapshots_expired += expire_snapshots(table, floors, snapshot_min_age_s)
            report.orphans_removed += remove_orphans(table, orphan_age_s)
        except Exception as exc:
            log.warning("maintenance of %s failed: %r", kind, exc)
    return report
