"""Appending to the history tables exactly once, from any number of writers on any hosts.

Each append is one Iceberg commit whose snapshot summary records the JetStream positions it
holds: ``marketbus.stream`` (MD, REF, STATUS) and ``marketbus.seqs`` (the stream sequences of
the messages whose rows it holds, as ranges ``101-200,305``). A message's rows all go to the
table of its kind, in one commit, so a message is stored iff one snapshot of that table lists
its sequence. That survives any crash (the summary is committed with the data, atomically) and
needs nothing shared but the catalog and the object store.

Two writers share one durable consumer; a crashed writer's unacked messages are redelivered to
the other, possibly after that one already committed later sequences. So there is no single
watermark: every writer keeps a :class:`SeqLedger` of the sequence ranges committed to each
table (read from the snapshot summaries, incrementally), and

- a redelivered message (delivery count > 1) whose sequence is in the ledger is skipped;
- every commit is optimistic (Iceberg asserts the parent snapshot): when another writer
  committed first, the table is refreshed, the ledger reads the new snapshots, rows of messages
  they already hold are dropped, and the commit is retried. So even a message delivered to two
  writers at once (ack wait expired mid-write) is stored once.

Snapshots are expired only when every sequence they list is at or below the consumer's ack
floor (acked messages are never redelivered), so the ledger never forgets what it may need.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.table import Transaction
from pyiceberg.table.metadata import TableMetadata

from .datafiles import write_data_files
from .lakehouse import LAYOUTS, LakehouseSettings, Tables
from .maintenance import expire_snapshots
from .snapshot_props import SEQS_PROP, STREAM_PROP, WRITER_PROP, decode_ranges, encode_ranges

log = logging.getLogger("marketbus.history.writer")



class SeqLedger:
    """Sequence ranges committed to one table, per stream, from its snapshot summaries."""

    def __init__(self, keep_s: float = 300.0) -> None:
        self.seen: set[int] = set()  # snapshot ids read
        self.ranges: dict[str, list[tuple[int, int, float]]] = {}  # (first, last, when absorbed)
        # per stream: (range starts, running max of range ends), replaced whole (read lock-free)
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        # ranges at or below the ack floor are forgotten only this long after they were read: a
        # flush still in flight may hold a message acked meanwhile by another writer
        self.keep_s = keep_s

    def absorb(self, table: Any) -> None:
        """Read the summaries of snapshots not seen yet."""
        dirty = set()
        now = time.monotonic()
        for snap in table.metadata.snapshots:
            if snap.snapshot_id in self.seen:
                continue
            self.seen.add(snap.snapshot_id)
            props = snap.summary.additional_properties if snap.summary is not None else {}
            stream, seqs = props.get(STREAM_PROP), props.get(SEQS_PROP)
            if stream and seqs:
                self.ranges.setdefault(stream, []).extend((a, b, now) for a, b in decode_ranges(seqs))
                dirty.add(stream)
        for stream in dirty:
            self._index(stream)
        # expired snapshots never come back: remember only the ids still in the metadata
        if len(self.seen) > 2 * len(table.metadata.snapshots) + 64:
            self.seen &= {snap.snapshot_id for snap in table.metadata.snapshots}

    def _index(self, stream: str) -> None:
        ranges = sorted(self.ranges.get(stream, []))
        self.ranges[stream] = ranges
        ends = np.array([r[1] for r in ranges], np.int64)
        self._arrays[stream] = (np.array([r[0] for r in ranges], np.int64),
                                np.maximum.accumulate(ends) if len(ends) else ends)

    def contains(self, stream: str, seqs: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``seqs`` are committed."""
        arrays = self._arrays.get(stream)
        if arrays is None or not len(arrays[0]) or not len(seqs):
            return np.zeros(len(seqs), bool)
        starts, run_max = arrays  # a running max of the ends keeps the check exact when ranges overlap
        i = np.searchsorted(starts, seqs, side="right") - 1
        return (i >= 0) & (seqs <= run_max[np.clip(i, 0, None)])

    def forget_below(self, stream: str, floor: int) -> None:
        ranges = self.ranges.get(stream)
        if ranges:
            old = time.monotonic() - self.keep_s
            self.ranges[stream] = [r for r in ranges if r[1] > floor or r[2] > old]
            self._index(stream)


class CommitConflict(RuntimeError):
    pass


class _Transaction(Transaction):
    """pyiceberg's transaction rebuilds the table metadata, with a deep copy, on every access of
    ``table_metadata`` (about 15 per append: most of a commit's time, growing with the
    metadata). The metadata objects are frozen, so one copy per state of the staged updates
    serves them all."""

    _cache: tuple[Any, Any, TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        cache = self._cache
        if cache is None or cache[0] is not self._table.metadata or cache[1] is not self._updates:
            cache = (self._table.metadata, self._updates, super().table_metadata)
            self._cache = cache
        return cache[2]


class HistoryTableWriter:
    """Appends storage rows (``schema.KindSchema.schema`` tables) to the kind tables."""

    def __init__(self, settings: LakehouseSettings, writer_id: str = "", max_retries: int = 50,
                 max_snapshots: int = 16) -> None:
        self.tables = Tables(settings)
        self.writer_id = writer_id
        self.max_retries = max_retries
        self.ledgers: dict[str, SeqLedger] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.floors: dict[str, int] = {}  # consumer ack floor per stream (for snapshot expiry)
        self.commits = 0
        self.retries = 0
        # a commit costs pyiceberg time in proportion to the snapshots in the metadata: past this
        # many, the ones whose messages are all acked are expired right after a commit
        self.max_snapshots = max_snapshots
        # ...but never younger than this: a writer that lost a commit race refreshes within
        # a fraction of a second and must still find the winner's snapshot (and its sequences)
        self.snapshot_min_age_s = 5.0
        self.expired = 0

    def lock(self, kind: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(kind, threading.Lock())

    def ledger(self, kind: str) -> SeqLedger:
        with self._guard:
            return self.ledgers.setdefault(kind, SeqLedger())

    # --- exactly once ------------------------------------------------------------------------
    def stored(self, stream: str, kinds: Iterable[str], seqs: Iterable[int]) -> set[int]:
        """Which of ``seqs`` (of ``stream``) some writer committed to one of these tables."""
        arr = np.fromiter(seqs, np.int64)
        found = np.zeros(len(arr), bool)
        for kind, table in self.tables.existing(list(kinds), refresh=True).items():
            with self.lock(kind):
                ledger = self.ledger(kind)
                ledger.absorb(table)
                found |= ledger.contains(stream, arr)
        return set(arr[found].tolist())

    def forget_below(self, stream: str, floor: int) -> None:
        self.floors[stream] = max(self.floors.get(stream, 0), floor)
        with self._guard:
            ledgers = list(self.ledgers.values())
        for ledger in ledgers:
            ledger.forget_below(stream, floor)

    # --- append ------------------------------------------------------------------------------
    def append(self, kind: str, stream: str, rows: pa.Table, recheck: set[int] | None = None) -> tuple[int, int]:
        """Commit ``rows`` (one kind, one stream); returns (rows stored, rows skipped because
        their message is already stored or their event id repeats within ``rows``).

        ``recheck``: sequences of redelivered messages. The same message may be in flight at two
        writers at once (its ack wait ran out at the first), and the other one's snapshot may be
        expired already (acked): for these the table's rows are checked, on the very snapshot
        the commit builds on, so whichever commits second drops them."""
        table = self.tables.get(kind, create=True)
        assert table is not None  # create=True
        return self.commit(self.prepare(table, kind, stream, rows), recheck)

    def prepare(self, table: Any, kind: str, stream: str, rows: pa.Table) -> PreparedAppend:
        """The part of :meth:`append` that needs no catalog and no lock: the rows of messages not
        known stored, each id once, written as the table's data files (nothing committed). Pure
        Arrow and Parquet work (the GIL released most of the time): a caller may run it on
        another thread than the catalog's, so that one flush's files are written while the
        previous flush commits. ``table``: the kind's table (``self.tables.get``)."""
        total = rows.num_rows
        rows = _first_per_id(rows)
        known = self.ledger(kind).contains(stream, rows.column("_seq").to_numpy())
        if known.any():
            rows = rows.filter(pa.array(~known))
        files = _write_files(table, kind, rows) if rows.num_rows else []
        return PreparedAppend(table, kind, stream, rows, total, files)

    def commit(self, prepared: PreparedAppend, recheck: set[int] | None = None) -> tuple[int, int]:
        """Commit prepared files (the rest of :meth:`append`; on the catalog's thread): the
        exactly-once check against the ledger (and ``recheck`` against the table), under the
        table's lock, then the optimistic commit, retried on a conflict."""
        from pyiceberg.exceptions import CommitFailedException

        table, kind, stream, rows, total = prepared.table, prepared.kind, prepared.stream, prepared.rows, prepared.total
        ledger = self.ledger(kind)
        if rows.num_rows == 0:
            return 0, total
        files: list[Any] | None = prepared.files

        def write_files(rows: pa.Table) -> list[Any]:
            return _write_files(table, kind, rows)

        # ValueError: pyiceberg found the metadata moved on under this commit
        conflicts: tuple[type[BaseException], ...] = (CommitFailedException, ValueError, *_transient_errors())
        with self.lock(kind):
            check = set(recheck or ())
            for attempt in range(self.max_retries):
                seqs = rows.column("_seq").to_numpy()
                done = ledger.contains(stream, seqs)
                if check:  # the table's rows are the truth
                    done |= np.isin(seqs, list(_seqs_in_table(table, stream, check)))
                if done.any():
                    rows, seqs, files = rows.filter(pa.array(~done)), seqs[~done], None
                if rows.num_rows == 0:
                    return 0, total
                if files is None:  # rows dropped (rare): their files again
                    files = write_files(rows)
                props = {STREAM_PROP: stream, SEQS_PROP: encode_ranges(seqs), WRITER_PROP: self.writer_id}
                base = table.current_snapshot()
                try:
                    with _Transaction(table) as tx:
                        with tx.update_snapshot(snapshot_properties=props).merge_append() as append:
                            for f in files:
                                append.append_data_file(f)
                except conflicts as exc:
                    self.retries += 1
                    log.debug("commit of %s conflicted (%r): refresh and retry", kind, exc)
                    time.sleep(random.uniform(0.0, min(0.05, 0.002 * (attempt + 1))))
                    table.refresh()
                    ledger.absorb(table)
                    # snapshots committed meanwhile are in the ledger, unless one was expired
                    # already: then the table's rows decide for every message of this batch
                    check = set(recheck or ())
                    if not _chain_intact(table, base.snapshot_id if base is not None else None):
                        check = set(seqs.tolist())
                    continue
                ledger.absorb(table)
                self.commits += 1
                if len(table.metadata.snapshots) > self.max_snapshots:
                    self._expire(kind, table)
                return rows.num_rows, total - rows.num_rows
        raise CommitConflict(f"{kind}: commit failed {self.max_retries} times")


    def _expire(self, kind: str, table: Any) -> None:
        try:
            self.expired += expire_snapshots(table, dict(self.floors), min_age_s=self.snapshot_min_age_s, keep_last=4,
                                            refresh=False)
        except Exception as exc:
            log.debug("snapshot expiry of %s failed: %r", kind, exc)


class PreparedAppend:
    """Rows of one append, their data files written, not committed (``HistoryTableWriter.prepare``)."""

    def __init__(self, table: Any, kind: str, stream: str, rows: pa.Table, total: int, files: list[Any]) -> None:
        self.table, self.kind, self.stream, self.rows, self.total, self.files = table, kind, stream, rows, total, files


def _write_files(table: Any, kind: str, rows: pa.Table) -> list[Any]:
    """One file per partition (day x symbol bucket), rows sorted by symbol and time."""
    layout = LAYOUTS[kind]
    return write_data_files(table, layout.to_table(rows), ["symbol", "ts_event_ns"], layout.kind_schema.literals)


def _chain_intact(table: Any, base_id: int | None) -> bool:
    """Is every snapshot from the current one back to ``base_id`` still in the metadata?"""
    snap = table.current_snapshot()
    while snap is not None and snap.snapshot_id != base_id:
        parent = snap.parent_snapshot_id
        if parent is None:
            return base_id is None
        snap = table.snapshot_by_id(parent)
    return snap is not None or base_id is None


def _seqs_in_table(table: Any, stream: str, seqs: set[int]) -> set[int]:
    """Which of ``seqs`` have rows in the table's current snapshot.

    The scan asks for the range ``min(seqs)..max(seqs)`` of ``_seq`` (files pruned by their
    ``_seq`` statistics) and the wanted values are picked out with one ``pc.is_in``: an Iceberg
    ``In`` of thousands of literals is bound and evaluated literal by literal, per manifest
    entry and per file, in Python."""
    from pyiceberg import expressions as ice

    if table.current_snapshot() is None or not seqs:
        return set()
    wanted = pa.array(sorted(seqs), pa.int64())
    # pyiceberg's predicates take (term, literal); its annotations only know the pydantic fields
    eq: Any = ice.EqualTo
    ge: Any = ice.GreaterThanOrEqual
    le: Any = ice.LessThanOrEqual
    row_filter = ice.And(eq("_stream", stream),
                         ice.And(ge("_seq", wanted[0].as_py()), le("_seq", wanted[-1].as_py())))
    found = table.scan(row_filter=row_filter, selected_fields=("_seq",)).to_arrow().column("_seq")
    if len(found) == 0:
        return set()
    stored = pc.unique(found.combine_chunks())
    return set(stored.filter(pc.is_in(stored, value_set=wanted)).to_pylist())


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Catalog errors worth a retry: SQLite busy / a dropped database connection."""
    try:
        from sqlalchemy.exc import OperationalError

        return (OperationalError,)
    except ImportError:  # pragma: no cover - sqlalchemy is a dependency
        return ()


try:  # the compiled check (marketbus.contracts._checks, "History: the first row of each event id")
    from marketbus.contracts import _checks

    _FIRST_IDS: Any = getattr(_checks, "first_ids", None)
except ImportError:  # pragma: no cover - the extension is built by `make venv`
    _FIRST_IDS = None


def _first_per_id(rows: pa.Table) -> pa.Table:
    """Drop rows whose event id repeats within the batch (the first one stays, the order kept)."""
    keep = _first_of_each(rows.column("id"))
    return rows if keep is None else rows.filter(pa.array(keep))


def _first_of_each(ids: pa.ChunkedArray) -> np.ndarray | None:
    """None when every id is distinct, else a mask: True for the first row of its id.

    Compiled (``_checks.first_ids``: one hash table over the string column's buffers, without the
    GIL) for a string column without nulls; else vectorized Arrow: the dictionary indices of the
    ids, the first position of each. Never a Python object per id."""
    if _FIRST_IDS is not None and pa.types.is_string(ids.type) and ids.null_count == 0:
        chunks = []
        for chunk in ids.chunks:
            _, offsets, data = chunk.buffers()
            chunks.append((offsets, b"" if data is None else data, chunk.offset, len(chunk)))
        mask = _FIRST_IDS(chunks)
        return None if mask is None else np.frombuffer(mask, np.bool_)
    codes = ids.combine_chunks().dictionary_encode().indices.to_numpy(zero_copy_only=False)
    _, first = np.unique(codes, return_index=True)
    if len(first) == len(codes):
        return None
    keep = np.zeros(len(codes), np.bool_)
    keep[first] = True
    return keep
