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

from .lakehouse import LAYOUTS, LakehouseSettings, Tables

log = logging.getLogger("marketbus.history.writer")

STREAM_PROP = "marketbus.stream"
SEQS_PROP = "marketbus.seqs"
WRITER_PROP = "marketbus.writer"


def encode_ranges(seqs: Iterable[int]) -> str:
    """Sorted sequences -> ``a-b,c,d-e``."""
    arr = np.unique(np.fromiter(seqs, np.int64))
    if not len(arr):
        return ""
    breaks = np.nonzero(np.diff(arr) != 1)[0]
    starts = np.concatenate([arr[:1], arr[breaks + 1]])
    ends = np.concatenate([arr[breaks], arr[-1:]])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in zip(starts.tolist(), ends.tolist()))


def decode_ranges(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        if not part:
            continue
        a, _, b = part.partition("-")
        out.append((int(a), int(b or a)))
    return out


class SeqLedger:
    """Sequence ranges committed to one table, per stream, from its snapshot summaries."""

    def __init__(self) -> None:
        self.seen: set[int] = set()  # snapshot ids read
        self.ranges: dict[str, list[tuple[int, int]]] = {}
        self._starts: dict[str, np.ndarray] = {}
        self._ends: dict[str, np.ndarray] = {}

    def absorb(self, table: Any) -> None:
        """Read the summaries of snapshots not seen yet."""
        dirty = set()
        for snap in table.metadata.snapshots:
            if snap.snapshot_id in self.seen:
                continue
            self.seen.add(snap.snapshot_id)
            props = snap.summary.additional_properties if snap.summary is not None else {}
            stream, seqs = props.get(STREAM_PROP), props.get(SEQS_PROP)
            if stream and seqs:
                self.ranges.setdefault(stream, []).extend(decode_ranges(seqs))
                dirty.add(stream)
        for stream in dirty:
            self._index(stream)

    def _index(self, stream: str) -> None:
        ranges = sorted(self.ranges.get(stream, []))
        self.ranges[stream] = ranges
        self._starts[stream] = np.array([a for a, _ in ranges], np.int64)
        self._ends[stream] = np.array([b for _, b in ranges], np.int64)

    def contains(self, stream: str, seqs: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``seqs`` are committed."""
        starts = self._starts.get(stream)
        if starts is None or not len(starts) or not len(seqs):
            return np.zeros(len(seqs), bool)
        ends = self._ends[stream]
        i = np.searchsorted(starts, seqs, side="right") - 1
        ok = i >= 0
        # ranges may overlap (a redelivered message in two commits cannot happen, but be safe):
        # a running max of the ends makes the check exact for sorted starts
        run_max = np.maximum.accumulate(ends)
        return ok & (seqs <= run_max[np.clip(i, 0, None)])

    def forget_below(self, stream: str, floor: int) -> None:
        ranges = self.ranges.get(stream)
        if ranges:
            self.ranges[stream] = [(max(a, floor + 1), b) for a, b in ranges if b > floor]
            self._index(stream)


class CommitConflict(RuntimeError):
    pass


class HistoryTableWriter:
    """Appends storage rows (``schema.KindSchema.schema`` tables) to the kind tables."""

    def __init__(self, settings: LakehouseSettings, writer_id: str = "", max_retries: int = 50) -> None:
        self.tables = Tables(settings)
        self.writer_id = writer_id
        self.max_retries = max_retries
        self.ledgers: dict[str, SeqLedger] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.floors: dict[str, int] = {}  # consumer ack floor per stream (for snapshot expiry)
        self.commits = 0
        self.retries = 0

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
    def append(self, kind: str, stream: str, rows: pa.Table) -> tuple[int, int]:
        """Commit ``rows`` (one kind, one stream); returns (rows stored, rows skipped because
        their message is already stored or their event id repeats within ``rows``)."""
        from pyiceberg.exceptions import CommitFailedException

        layout = LAYOUTS[kind]
        total = rows.num_rows
        rows = _first_per_id(rows)
        table = self.tables.get(kind, create=True)
        with self.lock(kind):
            ledger = self.ledger(kind)
            for attempt in range(self.max_retries):
                seqs = rows.column("_seq").to_numpy()
                done = ledger.contains(stream, seqs)
                if done.any():
                    rows = rows.filter(pa.array(~done))
                if rows.num_rows == 0:
                    return 0, total
                data = layout.to_table(rows)
                data = data.take(pc.sort_indices(data, [("symbol", "ascending"), ("ts_event_ns", "ascending")]))
                props = {STREAM_PROP: stream, SEQS_PROP: encode_ranges(seqs[~done] if done.any() else seqs),
                         WRITER_PROP: self.writer_id}
                try:
                    table.append(data, snapshot_properties=props)
                except (CommitFailedException, *_transient_errors()) as exc:
                    self.retries += 1
                    log.debug("commit of %s conflicted (%r): refresh and retry", kind, exc)
                    time.sleep(random.uniform(0.0, min(0.2, 0.005 * (attempt + 1))))
                    table.refresh()
                    ledger.absorb(table)
                    continue
                ledger.absorb(table)
                self.commits += 1
                return rows.num_rows, total - rows.num_rows
        raise CommitConflict(f"{kind}: commit failed {self.max_retries} times")


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Catalog errors worth a retry: SQLite busy / a dropped database connection."""
    try:
        from sqlalchemy.exc import OperationalError

        return (OperationalError,)
    except ImportError:  # pragma: no cover - sqlalchemy is a dependency
        return ()


def _first_per_id(rows: pa.Table) -> pa.Table:
    """Drop rows whose event id repeats within the batch (the first one stays)."""
    ids = rows.column("id")
    if pc.count_distinct(ids).as_py() == rows.num_rows:
        return rows
    _, first = np.unique(np.asarray(ids.to_pylist(), dtype=object), return_index=True)
    return rows.take(pa.array(np.sort(first)))
