"""Embedded store: a partitioned Parquet dataset on local disk, queried with DuckDB.

Layout::

    <root>/kind=<kind>/source=<source>/venue=<venue>/symbol=<symbol>/date=<YYYY-MM-DD>/
        <STREAM>-<minseq>-<maxseq>-<writer>-<n>.parquet       one flush of one writer
        c-<STREAM>-<minseq>-<maxseq>-<writer>-<n>.parquet     a compacted file
    <root>/_journal/<writer>-<n>.json                           commit intents (roll-forward)
    <root>/.lock                                                swap lock (readers shared)

Exactly once:

- every row carries its JetStream ``_stream``/``_seq`` (and ``_idx`` in a batch envelope); a
  file's name carries the stream and its sequence range;
- a flush writes every file as ``.<name>.tmp`` (fsync), then an intent listing the renames,
  then renames them, then deletes the intent. A crash before the intent leaves only tmp files
  (deleted at start-up, nothing was acked); a crash after it is rolled forward at start-up.
  So a message is either completely stored or not at all, and is acked only afterwards;
- redelivered messages whose sequence is already in a file are skipped (the sequences above the
  consumer's ack floor are loaded from the files at start-up and refreshed from files written by
  other writers when a redelivery comes in); rows whose event id is already in the partition
  are skipped as well, and compaction removes any duplicate id that slipped through.

Compaction merges the small files of a partition (ordered, de-duplicated by id) under the same
intent protocol; the final rename + deletes hold the dataset's swap lock exclusively while
readers hold it shared while they list and read files.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import fnmatch
import itertools
import json
import logging
import os
import re
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..schema import ORDER_COLUMNS, SCHEMAS, Decoded
from .base import Cursor, HistoryStore, Selector, WriteResult

log = logging.getLogger("marketbus.history_writer.parquet")

DAY_NS = 86_400 * 1_000_000_000
_FILE_RE = re.compile(r"^(?:c-)?(?P<stream>[A-Z_]+)-(?P<min>\d+)-(?P<max>\d+)-(?P<writer>[^.]+)\.parquet$")
_TMP_RE = re.compile(r"^\.(?P<name>.+\.parquet)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.tmp$")
_HOST = socket.gethostname().replace(".", "_").replace("-", "_")


def _day(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC).strftime("%Y-%m-%d")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _dirs(base: Path, prefix: str, pattern: str) -> Iterator[tuple[str, Path]]:
    if not base.is_dir():
        return
    if "*" not in pattern and "?" not in pattern and "[" not in pattern:
        p = base / f"{prefix}={pattern}"
        if p.is_dir():
            yield pattern, p
        return
    with os.scandir(base) as it:
        for entry in it:
            if entry.is_dir() and entry.name.startswith(prefix + "="):
                value = entry.name[len(prefix) + 1:]
                if fnmatch.fnmatchcase(value, pattern):
                    yield value, Path(entry.path)


class ParquetStore(HistoryStore):
    backend = "parquet"

    def __init__(self, root: str | Path, *, fsync: bool = True, compression: str = "zstd",
                 dedupe_max_ids: int = 5_000_000, compact_min_files: int = 8,
                 compact_small_bytes: int = 16 << 20, compact_min_age_s: float = 5.0,
                 writer_id: str | None = None) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.compression = compression
        self.dedupe_max_ids = dedupe_max_ids
        self.compact_min_files = compact_min_files
        self.compact_small_bytes = compact_small_bytes
        self.compact_min_age_s = compact_min_age_s
        self.writer = writer_id or f"{_HOST}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self._counter = itertools.count(1)
        self._seqs: dict[str, set[int]] = {}
        self._seen_files: set[str] = set()
        self._ids: OrderedDict[Path, set[str]] = OrderedDict()
        self._id_count = 0
        self._lock_path = self.root / ".lock"
        self._journal = self.root / "_journal"
        self._write_lock = asyncio.Lock()
        self.rows_written = 0

    # --- lifecycle and crash repair ---------------------------------------------------------
    async def open(self) -> None:
        await asyncio.to_thread(self._open_sync)

    def _open_sync(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._journal.mkdir(exist_ok=True)
        self._lock_path.touch(exist_ok=True)
        self.recover()

    @contextlib.contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT)
        try:
            deadline = time.monotonic() + 60.0
            while True:  # never block a thread forever on the lock
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{self._lock_path} stayed locked for 60 s") from None
                    time.sleep(0.005)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _intent_owner_alive(self, name: str) -> bool:
        # intent names: <host>_<pid>_<rand>-<n>.json
        parts = name.split("-")[0].rsplit("_", 2)
        if len(parts) == 3 and parts[0] == _HOST and parts[1].isdigit():
            return int(parts[1]) != os.getpid() and _pid_alive(int(parts[1]))
        return False

    def recover(self) -> None:
        """Roll forward the intents of dead writers and delete their orphan tmp files."""
        for intent in sorted(self._journal.glob("*.json")):
            if self._intent_owner_alive(intent.name):
                continue
            with contextlib.suppress(FileNotFoundError, ValueError):
                self._apply_intent(json.loads(intent.read_text()))
                intent.unlink()
                log.info("rolled forward %s", intent.name)
        for tmp in self.root.rglob(".*.tmp"):
            m = _TMP_RE.match(tmp.name)
            if m and m.group("host") == _HOST and _pid_alive(int(m.group("pid"))) and int(m.group("pid")) != os.getpid():
                continue
            if m and m.group("host") != _HOST and time.time() - tmp.stat().st_mtime < 3600:
                continue  # another host's writer may still be writing it
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _apply_intent(self, intent: dict[str, Any]) -> None:
        for tmp, final in intent.get("renames", []):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.root / tmp, self.root / final)
        for old in intent.get("delete", []):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.root / old)

    # --- exactly once -----------------------------------------------------------------------
    def _files(self) -> Iterator[Path]:
        for kind_dir in self.root.glob("kind=*"):
            yield from kind_dir.glob("source=*/venue=*/symbol=*/date=*/*.parquet")

    def load_seqs(self, stream: str, above: int = 0) -> int:
        """Load the stored sequences of ``stream`` greater than ``above`` from files not seen yet."""
        seqs = self._seqs.setdefault(stream, set())
        n = 0
        for path in self._files():
            key = str(path)
            if key in self._seen_files:
                continue
            m = _FILE_RE.match(path.name)
            if not m or m.group("stream") != stream:
                continue
            self._seen_files.add(key)
            if int(m.group("max")) <= above:
                continue
            with contextlib.suppress(FileNotFoundError, OSError, pa.ArrowInvalid):
                col = pq.read_table(path, columns=["_seq"]).column("_seq").to_numpy()
                new = np.unique(col[col > above])
                seqs.update(new.tolist())
                n += len(new)
        return n

    def prune_seqs(self, stream: str, floor: int) -> None:
        """Forget sequences at or below the consumer's ack floor (never redelivered)."""
        seqs = self._seqs.get(stream)
        if seqs:
            self._seqs[stream] = {s for s in seqs if s > floor}

    async def prepare_stream(self, stream: str, ack_floor: int) -> None:
        await asyncio.to_thread(self.load_seqs, stream, ack_floor)

    def forget_below(self, stream: str, ack_floor: int) -> None:
        self.prune_seqs(stream, ack_floor)

    async def stored_seqs(self, stream: str, seqs: Sequence[int]) -> set[int]:
        known = self._seqs.setdefault(stream, set())
        found = {s for s in seqs if s in known}
        if len(found) < len(seqs):
            # maybe stored by another writer sharing the durable consumer: look at new files
            await asyncio.to_thread(self.load_seqs, stream, min(seqs) - 1)
            found = {s for s in seqs if s in known}
        return found

    def _partition_ids(self, part: Path) -> set[str]:
        ids = self._ids.get(part)
        if ids is not None:
            self._ids.move_to_end(part)
            return ids
        ids = set()
        files = list(part.glob("*.parquet")) if part.is_dir() else []
        if files:
            rows = 0
            with contextlib.suppress(Exception):
                rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
            if rows <= self.dedupe_max_ids // 4:
                for f in files:
                    with contextlib.suppress(FileNotFoundError, OSError, pa.ArrowInvalid):
                        ids.update(pq.read_table(f, columns=["id"]).column("id").to_pylist())
        self._ids[part] = ids
        self._id_count += len(ids)
        return ids

    def _evict_ids(self) -> None:
        while self._id_count > self.dedupe_max_ids and len(self._ids) > 1:
            _, ids = self._ids.popitem(last=False)
            self._id_count -= len(ids)

    # --- writing ----------------------------------------------------------------------------
    def _partition_dir(self, kind: str, source: str, venue: str, symbol: str, day: str) -> Path:
        return self.root / f"kind={kind}" / f"source={source}" / f"venue={venue}" / f"symbol={symbol}" / f"date={day}"

    def _split(self, kind: str, table: pa.Table) -> Iterator[tuple[Path, pa.Table]]:
        """Rows -> (partition directory, rows) by source/venue/symbol/UTC date."""
        if table.num_rows == 0:
            return
        days = pc.divide(table.column("ts_event"), pa.scalar(DAY_NS, pa.int64()))
        # common case (a batch envelope, a flush of one busy instrument): one partition. Checked
        # column by column: far cheaper than building the joined key of every row
        lo, hi = pc.min_max(days).values()
        if lo.as_py() == hi.as_py():
            first = [table.column(c)[0].as_py() for c in ("source", "venue", "symbol")]
            if all(pc.all(pc.equal(table.column(c), v)).as_py() for c, v in zip(("source", "venue", "symbol"), first)):
                yield self._partition_dir(kind, *first, _day(lo.as_py() * DAY_NS)), table
                return
        key = pc.binary_join_element_wise(
            table.column("source"), table.column("venue"), table.column("symbol"), pc.cast(days, pa.string()), "\x1f")
        if pc.count_distinct(key).as_py() == 1:
            s, v, y, d = key[0].as_py().split("\x1f")
            yield self._partition_dir(kind, s, v, y, _day(int(d) * DAY_NS)), table
            return
        order = pc.sort_indices(key)
        table = table.take(order)
        key = key.take(order)
        if isinstance(key, pa.ChunkedArray):
            key = key.combine_chunks()
        ree = pc.run_end_encode(key)
        start = 0
        for end, value in zip(ree.run_ends.to_pylist(), ree.values.to_pylist()):
            s, v, y, d = value.split("\x1f")
            yield self._partition_dir(kind, s, v, y, _day(int(d) * DAY_NS)), table.slice(start, end - start)
            start = end

    def _write_sync(self, stream: str, decoded: Decoded) -> WriteResult:
        result = WriteResult()
        pending: list[tuple[Path, Path, Any, list[str]]] = []
        written_seqs: list[np.ndarray] = []
        for kind, tables in decoded.tables.items():
            table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
            for part, rows in self._split(kind, table):
                known = self._partition_ids(part)
                ids = rows.column("id").to_pylist()
                if pc.count_distinct(rows.column("id")).as_py() == len(ids) and known.isdisjoint(ids):
                    fresh: set[str] | list[str] = ids  # the common case, without a per-row Python loop
                else:
                    keep = []
                    fresh = set()
                    for i in ids:
                        ok = i not in known and i not in fresh
                        keep.append(ok)
                        if ok:
                            fresh.add(i)
                    result.duplicates += len(ids) - len(fresh)
                    rows = rows.filter(pa.array(keep))
                if rows.num_rows == 0:
                    continue
                seq = rows.column("_seq")
                lo, hi = pc.min_max(seq).values()
                name = f"{stream}-{lo.as_py():020d}-{hi.as_py():020d}-{self.writer}-{next(self._counter)}.parquet"
                part.mkdir(parents=True, exist_ok=True)
                tmp = part / f".{name}.{_HOST}.{os.getpid()}.tmp"
                with open(tmp, "wb") as fh:
                    # no dictionary for the event ids (unique per row: Parquet would build the
                    # dictionary, then give up on it): ~20% faster writes, same size
                    pq.write_table(rows, fh, compression=self.compression,
                                   use_dictionary=[c for c in rows.column_names if c != "id"])
                    if self.fsync:
                        fh.flush()
                        os.fsync(fh.fileno())
                pending.append((tmp, part / name, fresh, []))
                written_seqs.append(seq.to_numpy())
                result.rows += rows.num_rows
        if pending:
            intent_name = f"{self.writer}-{next(self._counter)}.json"
            intent = {"renames": [[str(t.relative_to(self.root)), str(f.relative_to(self.root))] for t, f, _, _ in pending]}
            ipath = self._journal / intent_name
            itmp = self._journal / f".{intent_name}.tmp"
            with open(itmp, "w") as fh:
                json.dump(intent, fh)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(itmp, ipath)
            for tmp, final, _, _ in pending:
                os.replace(tmp, final)
            if self.fsync:
                for part in {f.parent for _, f, _, _ in pending}:
                    _fsync_dir(part)
            ipath.unlink()
            for _, final, fresh, _ in pending:
                self._seen_files.add(str(final))
                ids = self._ids.get(final.parent)
                if ids is not None:
                    ids.update(fresh)
                    self._id_count += len(fresh)
            result.files = len(pending)
        seqs = self._seqs.setdefault(stream, set())
        for arr in written_seqs:
            seqs.update(np.unique(arr).tolist())
        self._evict_ids()
        self.rows_written += result.rows
        return result

    async def write(self, stream: str, decoded: Decoded) -> WriteResult:
        async with self._write_lock:
            return await asyncio.to_thread(self._write_sync, stream, decoded)

    # --- reading ----------------------------------------------------------------------------
    def partitions(self, selector: Selector, start_ns: int, end_ns: int) -> Iterator[tuple[str, str, str, str, str, Path]]:
        lo = _day(max(start_ns, 0)) if start_ns > 0 else "0000-00-00"
        hi = _day(min(end_ns, 2**63 - 1) - 1) if end_ns < 2**62 else "9999-99-99"
        for kind in selector.kinds():
            for src, sdir in _dirs(self.root / f"kind={kind}", "source", selector.source):
                for ven, vdir in _dirs(sdir, "venue", selector.venue):
                    for sym, ydir in _dirs(vdir, "symbol", selector.symbol):
                        for day, ddir in _dirs(ydir, "date", "*"):
                            if lo <= day <= hi:
                                yield kind, src, ven, sym, day, ddir

    def files_for(self, selector: Selector, start_ns: int, end_ns: int) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for kind, _, _, _, _, ddir in self.partitions(selector, start_ns, end_ns):
            out.setdefault(kind, []).extend(sorted(str(p) for p in ddir.glob("*.parquet")))
        return out

    def _query_sync(self, kind: str, files: list[str], start_ns: int, end_ns: int, after: Cursor | None,
                    limit: int | None, columns: Sequence[str] | None) -> pa.Table:
        cols = "*" if not columns else ", ".join(f'"{c}"' for c in dict.fromkeys([*columns, *ORDER_COLUMNS]))
        sql = [f"SELECT {cols} FROM read_parquet($files, union_by_name=true) WHERE ts_event >= $start AND ts_event < $end"]
        params: dict[str, Any] = {"files": files, "start": start_ns, "end": end_ns}
        if after is not None:
            sql.append("AND (ts_event, _stream, _seq, _idx) > ($cts, $cstream, $cseq, $cidx)")
            params.update(cts=after.ts_event, cstream=after.stream, cseq=after.seq, cidx=after.idx)
        sql.append("ORDER BY ts_event, _stream, _seq, _idx")
        if limit is not None:
            sql.append(f"LIMIT {int(limit)}")
        con = duckdb.connect()
        try:
            table = con.sql(" ".join(sql), params=params).to_arrow_table()
        finally:
            con.close()
        return table

    def _read_kind_sync(self, kind: str, selector: Selector, start_ns: int, end_ns: int, after: Cursor | None,
                        limit: int | None, columns: Sequence[str] | None) -> pa.Table | None:
        sel = Selector(kind=kind, source=selector.source, venue=selector.venue, symbol=selector.symbol)
        for attempt in range(3):
            with self._locked(fcntl.LOCK_SH):
                files = self.files_for(sel, start_ns, end_ns).get(kind, [])
                if not files:
                    return None
                try:
                    return self._query_sync(kind, files, start_ns, end_ns, after, limit, columns)
                except duckdb.IOException:
                    if attempt == 2:
                        raise
        return None

    async def read_batches(
        self, selector: Selector, start_ns: int, end_ns: int, *, after: Cursor | None = None,
        limit: int | None = None, batch_rows: int = 65_536, columns: Sequence[str] | None = None,
    ) -> AsyncIterator[tuple[str, pa.RecordBatch]]:
        for kind in selector.kinds():
            table = await asyncio.to_thread(self._read_kind_sync, kind, selector, start_ns, end_ns, after, limit, columns)
            if table is None or table.num_rows == 0:
                continue
            schema = SCHEMAS[kind].schema
            if not columns and table.schema != schema:
                with contextlib.suppress(pa.ArrowInvalid, ValueError, KeyError):
                    table = table.select(schema.names).cast(schema)
            for batch in table.to_batches(max_chunksize=batch_rows):
                yield kind, batch

    def _coverage_sync(self, selector: Selector, start_ns: int, end_ns: int, max_gap_ns: dict[str, int]) -> list[tuple]:
        out: list[tuple] = []
        with self._locked(fcntl.LOCK_SH):
            files = self.files_for(selector, start_ns, end_ns)
            con = duckdb.connect()
            try:
                for kind, paths in files.items():
                    if kind == "feed_status" or not paths:
                        continue
                    gap = max_gap_ns.get(kind, max_gap_ns.get("default", 300 * 1_000_000_000))
                    sql = f"""
                    WITH t AS (
                      SELECT source, venue, symbol, ts_event,
                             ts_event - LAG(ts_event) OVER (PARTITION BY source, venue, symbol ORDER BY ts_event) AS d
                      FROM read_parquet($files, union_by_name=true)
                      WHERE ts_event >= $start AND ts_event < $end),
                    g AS (
                      SELECT *, SUM(CASE WHEN d IS NULL OR d > {int(gap)} THEN 1 ELSE 0 END)
                             OVER (PARTITION BY source, venue, symbol ORDER BY ts_event ROWS UNBOUNDED PRECEDING) AS grp
                      FROM t)
                    SELECT source, venue, symbol, MIN(ts_event), MAX(ts_event), COUNT(*)
                    FROM g GROUP BY source, venue, symbol, grp ORDER BY source, venue, symbol, MIN(ts_event)
                    """
                    for s, v, y, lo, hi, n in con.execute(sql, {"files": paths, "start": start_ns, "end": end_ns}).fetchall():
                        if selector.match(s, v, y):
                            out.append((kind, s, v, y, lo, hi, n))
            finally:
                con.close()
        return out

    async def coverage_rows(self, selector: Selector, start_ns: int, end_ns: int,
                            max_gap_ns: dict[str, int]) -> list[tuple[str, str, str, str, int, int, int]]:
        return await asyncio.to_thread(self._coverage_sync, selector, start_ns, end_ns, max_gap_ns)

    # --- maintenance ------------------------------------------------------------------------
    def _compact_partition(self, ddir: Path) -> int:
        now = time.time()
        small = sorted(
            p for p in ddir.glob("*.parquet")
            if p.stat().st_size < self.compact_small_bytes and now - p.stat().st_mtime >= self.compact_min_age_s
        )
        if len(small) < self.compact_min_files:
            return 0
        table = pa.concat_tables([pq.read_table(p) for p in small], promote_options="permissive")
        table = table.sort_by([(c, "ascending") for c in ORDER_COLUMNS])
        # de-duplicate event ids (keep the first in history order)
        ids = table.column("id").to_pylist()
        seen: set[str] = set()
        keep = [not (i in seen or seen.add(i)) for i in ids]  # type: ignore[func-returns-value]
        if not all(keep):
            table = table.filter(pa.array(keep))
        m = [_FILE_RE.match(p.name) for p in small]
        stream = m[0].group("stream") if m[0] else "X"
        lo = min(int(x.group("min")) for x in m if x)
        hi = max(int(x.group("max")) for x in m if x)
        name = f"c-{stream}-{lo:020d}-{hi:020d}-{self.writer}-{next(self._counter)}.parquet"
        tmp = ddir / f".{name}.{_HOST}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression=self.compression)
            fh.flush()
            os.fsync(fh.fileno())
        intent = {"renames": [[str(tmp.relative_to(self.root)), str((ddir / name).relative_to(self.root))]],
                  "delete": [str(p.relative_to(self.root)) for p in small]}
        ipath = self._journal / f"{self.writer}-{next(self._counter)}.json"
        ipath.write_text(json.dumps(intent))
        with self._locked(fcntl.LOCK_EX):
            self._apply_intent(intent)
        ipath.unlink()
        self._seen_files.add(str(ddir / name))
        return len(small)

    def _compact_sync(self) -> int:
        fd = os.open(self.root / ".compact.lock", os.O_RDWR | os.O_CREAT)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # another writer is compacting
            merged = 0
            for *_, ddir in self.partitions(Selector(), 0, 2**63 - 1):
                merged += self._compact_partition(ddir)
            return merged
        finally:
            os.close(fd)

    async def compact(self) -> int:
        return await asyncio.to_thread(self._compact_sync)

    def _retention_sync(self, days_by_kind: dict[str, float], now_ns: int) -> int:
        removed = 0
        for kind, days in days_by_kind.items():
            if days <= 0:
                continue
            cutoff = _day(now_ns - int(days * DAY_NS))
            for *_, day, ddir in self.partitions(Selector(kind=kind), 0, 2**63 - 1):
                if day < cutoff:
                    with self._locked(fcntl.LOCK_EX):
                        for f in ddir.iterdir():
                            with contextlib.suppress(FileNotFoundError):
                                f.unlink()
                        with contextlib.suppress(OSError):
                            ddir.rmdir()
                    removed += 1
        return removed

    async def apply_retention(self, days_by_kind: dict[str, float], now_ns: int) -> int:
        return await asyncio.to_thread(self._retention_sync, days_by_kind, now_ns)
