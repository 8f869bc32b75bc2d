"""The ONE adapter through which the export orchestrator reads history.

- Data: the history writer's store read API in-process (same data dir / DSN as the writer), the
  fast path: Arrow record batches straight from DuckDB/Parquet (or PostgreSQL). When no store is
  reachable from this process, the NATS ``history.query`` API (chunks of event JSON, turned into
  the same Arrow columns).
- Coverage: the NATS ``history.coverage`` API (what the writer itself reports), falling back to
  the in-process store's coverage when no writer answers.

Rows come per kind (kinds in name order), each kind in the history order
``(ts_event, _stream, _seq, _idx)``, read in time windows so memory stays bounded. A read can
resume strictly after a position (:class:`Position`), which is what a resumed job does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, NamedTuple

import msgspec
import pyarrow as pa

from marketbus.contracts import codec
from marketbus.contracts.jobs import StreamCoverage, StreamSelector
from services.history_writer.query import HistoryQueryError, make_query, query_pages, request_coverage
from services.history_writer.schema import FEED_STATUS, KINDS, SCHEMAS
from services.history_writer.store.base import Cursor, HistoryStore, Selector

log = logging.getLogger("marketbus.export_orchestrator.history")

DAY_NS = 86_400 * 1_000_000_000
MAX_NS = 2**63 - 1
EXPORTABLE_KINDS = tuple(sorted(k for k in KINDS if k != FEED_STATUS))


class StreamKey(NamedTuple):
    kind: str
    source: str
    venue: str
    symbol: str


class Position(msgspec.Struct, frozen=True, array_like=True):
    """Resume point: strictly after ``key`` in ``kind``; ``rows`` = rows of that kind already read
    (used to skip rows when reading through NATS, which has no stable cursor across requests)."""

    kind: str
    key: tuple[int, str, int, int] | None = None
    rows: int = 0


class HistoryUnavailable(RuntimeError):
    pass


def to_selector(sel: StreamSelector | Selector) -> Selector:
    return Selector.of(sel)


def kinds_of(selector: StreamSelector | Selector) -> list[str]:
    return [k for k in to_selector(selector).kinds() if k != FEED_STATUS]


def kind_columns(kind: str) -> list[str]:
    """Exportable columns of a kind: the event's own fields."""
    return [n for n in SCHEMAS[kind].schema.names if n not in ("_stream", "_seq", "_idx")]


class HistorySource:
    def __init__(self, settings: Any, nc: Any = None, store: HistoryStore | None = None) -> None:
        self.settings = settings
        self.nc = nc
        self.store = store
        self._own_store = False

    # --- lifecycle ------------------------------------------------------------------------------
    async def open(self) -> None:
        await self._ensure_store()

    async def _ensure_store(self) -> HistoryStore | None:
        if self.store is not None:
            return self.store
        backend = self.settings.history_backend
        if backend == "nats":
            return None
        if backend == "postgres" or (backend == "auto" and self.settings.history_pg_dsn):
            from services.history_writer.store.postgres import PostgresStore

            store: HistoryStore = PostgresStore(self.settings.history_pg_dsn.get())
        else:
            path = self.settings.history_path
            if backend == "auto" and not path.is_dir():
                return None  # not (yet) on this machine: use NATS
            from services.history_writer.store.parquet import ParquetStore

            store = ParquetStore(path)
        await store.open()
        self.store, self._own_store = store, True
        log.info("reading history in-process (%s)", store.backend)
        return store

    async def close(self) -> None:
        if self.store is not None and self._own_store:
            with contextlib.suppress(Exception):
                await self.store.close()
            self.store = None

    @property
    def mode(self) -> str:
        return f"store:{self.store.backend}" if self.store is not None else "nats"

    # --- coverage and the catalog ---------------------------------------------------------------
    async def coverage(self, selector: StreamSelector | Selector, start_ns: int, end_ns: int) -> list[StreamCoverage]:
        sel = to_selector(selector)
        if self.nc is not None:
            try:
                reply = await request_coverage(self.nc, sel, start_ns, end_ns, timeout=self.settings.history_timeout_s)
                return [c for c in reply.streams if c.kind != FEED_STATUS]
            except HistoryQueryError as exc:
                if await self._ensure_store() is None:
                    raise HistoryUnavailable(str(exc)) from None
                log.debug("coverage over NATS failed (%s); using the store", exc)
        store = await self._ensure_store()
        if store is None:
            raise HistoryUnavailable("no history store and no NATS connection")
        return [c for c in await store.coverage(sel, start_ns, end_ns) if c.kind != FEED_STATUS]

    async def streams(self, selector: StreamSelector | Selector | None = None) -> list[StreamKey]:
        """The stored streams (kind, source, venue, symbol), sorted."""
        sel = to_selector(selector) if selector is not None else Selector()
        store = await self._ensure_store()
        if store is not None and hasattr(store, "partitions"):
            import asyncio

            def scan() -> set[StreamKey]:
                return {StreamKey(k, s, v, y) for k, s, v, y, _, _ in store.partitions(sel, 0, MAX_NS)  # type: ignore[attr-defined]
                        if k != FEED_STATUS}

            return sorted(await asyncio.to_thread(scan))
        return sorted({StreamKey(c.kind, c.source, c.venue, c.symbol)
                       for c in await self.coverage(sel, 0, MAX_NS) if c.rows})

    # --- data -------------------------------------------------------------------------------------
    async def batches(self, selector: StreamSelector | Selector, start_ns: int, end_ns: int, *,
                      columns: Sequence[str] | None = None, resume: Position | None = None,
                      batch_rows: int = 131_072, window_ns: int = DAY_NS) -> AsyncIterator[tuple[str, pa.RecordBatch]]:
        """(kind, batch) for every selected kind in name order; each batch has the requested
        columns (all event fields when None) plus the order columns."""
        sel = to_selector(selector)
        kinds = kinds_of(sel)
        if resume is not None:
            kinds = [k for k in kinds if k >= resume.kind]
        store = await self._ensure_store()
        for kind in kinds:
            ksel = Selector(kind=kind, source=sel.source, venue=sel.venue, symbol=sel.symbol)
            cols = None
            if columns:
                known = set(SCHEMAS[kind].schema.names)
                cols = [c for c in columns if c in known]
            r = resume if (resume is not None and resume.kind == kind) else None
            if store is not None:
                after = Cursor(*r.key) if (r is not None and r.key is not None) else None
                async for batch in self._store_kind(store, ksel, start_ns, end_ns, after, cols, batch_rows, window_ns):
                    yield kind, batch
            else:
                async for batch in self._nats_kind(ksel, kind, start_ns, end_ns, r.rows if r else 0, cols, batch_rows):
                    yield kind, batch

    async def _store_kind(self, store: HistoryStore, sel: Selector, start_ns: int, end_ns: int, after: Cursor | None,
                          cols: list[str] | None, batch_rows: int, window_ns: int) -> AsyncIterator[pa.RecordBatch]:
        if _fast_parquet(store):
            async for batch in ParquetFastReader(store, sel, start_ns, end_ns, after, cols, batch_rows).batches():
                yield batch
            return
        lo = start_ns
        if after is not None:
            lo = max(lo, after.ts_event)
        windows = await self._windows(store, sel, lo, end_ns, window_ns)
        for wlo, whi in windows:
            async for _, batch in store.read_batches(sel, wlo, whi, after=after, batch_rows=batch_rows, columns=cols):
                yield batch

    @staticmethod
    async def _windows(store: HistoryStore, sel: Selector, lo: int, hi: int, window_ns: int) -> list[tuple[int, int]]:
        """Time windows (UTC days holding data) so one read never holds a whole long range in
        memory; the history order is by ts_event first, so reading window after window keeps it."""
        if not hasattr(store, "partitions") or window_ns <= 0 or window_ns != DAY_NS:
            return [(lo, hi)]
        import asyncio
        import datetime as dt

        def days() -> list[str]:
            return sorted({day for *_, day, _ in store.partitions(sel, lo, hi)})  # type: ignore[attr-defined]

        out = []
        for day in await asyncio.to_thread(days):
            start = int(dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp()) * 1_000_000_000
            wlo, whi = max(lo, start), min(hi, start + DAY_NS)
            if wlo < whi:
                out.append((wlo, whi))
        return out

    async def _nats_kind(self, sel: Selector, kind: str, start_ns: int, end_ns: int, skip: int,
                         cols: list[str] | None, batch_rows: int) -> AsyncIterator[pa.RecordBatch]:
        if self.nc is None:
            raise HistoryUnavailable("no history store and no NATS connection")
        schema = SCHEMAS[kind]
        query = make_query(sel, start_ns, end_ns, limit=1_000_000, chunk_rows=5_000)
        pending: list[Any] = []
        n = 0
        try:
            async for events, _ in query_pages(self.nc, query, timeout=self.settings.history_timeout_s):
                for raw in events:
                    n += 1
                    if n <= skip:
                        continue
                    pending.append(codec.decode(bytes(raw)))
                if len(pending) >= batch_rows:
                    yield self._to_batch(schema, pending, n - len(pending), cols)
                    pending = []
        except HistoryQueryError as exc:
            raise HistoryUnavailable(str(exc)) from None
        if pending:
            yield self._to_batch(schema, pending, n - len(pending), cols)

    @staticmethod
    def _to_batch(schema: Any, events: list[Any], base: int, cols: list[str] | None) -> pa.RecordBatch:
        # no JetStream positions over NATS: the running row number stands in for the sequence
        table = schema.rows_to_table(events, "Q", list(range(base + 1, base + 1 + len(events))), [0] * len(events))
        if cols:
            table = table.select(list(dict.fromkeys([*cols, "ts_event", "_stream", "_seq", "_idx"])))
        return table.combine_chunks().to_batches()[0]


# --- fast path for the embedded Parquet store -----------------------------------------------------
def _fast_parquet(store: HistoryStore) -> bool:
    """The embedded store's files can be read directly with pyarrow (its documented layout and
    reader lock), streaming and overlapping reads with the export's writes."""
    return store.backend == "parquet" and hasattr(store, "files_for") and hasattr(store, "root")


class ParquetFastReader:
    """Reads one kind of the Parquet store in the history order, as a stream of record batches.

    Files are planned from their footers (ts_event min/max): files whose time ranges overlap
    form a cluster that is read whole and sorted; a file alone in its time range and already in
    order (the normal case: one writer flush) is streamed batch by batch, the next batch decoded
    in a thread while the caller writes the current one. Files are opened under the store's
    shared swap lock, so a compaction that replaces them later does not disturb the read.
    """

    def __init__(self, store: Any, sel: Selector, start_ns: int, end_ns: int, after: Cursor | None,
                 cols: list[str] | None, batch_rows: int) -> None:
        self.store = store
        self.sel = sel
        self.kind = sel.kind
        self.lo = start_ns if after is None else max(start_ns, after.ts_event)
        self.hi = end_ns
        self.after = after
        self.schema = SCHEMAS[self.kind].schema
        names = self.schema.names
        self.cols = list(dict.fromkeys([*(cols or names), "ts_event", "_stream", "_seq", "_idx"]))
        self.out_schema = pa.schema([self.schema.field(c) for c in self.cols])
        self.batch_rows = batch_rows

    # planning ---------------------------------------------------------------------------------
    def _open_sync(self) -> list[list[tuple[Any, int, int]]]:
        import fcntl
        import os

        import pyarrow.parquet as pq

        lock = os.open(self.store.root / ".lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(lock, fcntl.LOCK_SH)
            paths = self.store.files_for(self.sel, self.lo, self.hi).get(self.kind, [])
            files = []
            for path in paths:
                try:
                    pf = pq.ParquetFile(pa.memory_map(path, "r"))
                except (FileNotFoundError, OSError, pa.ArrowInvalid):
                    continue
                lo_ts, hi_ts = self._ts_range(pf)
                if lo_ts is None or (hi_ts < self.lo or lo_ts >= self.hi):
                    continue
                files.append((pf, lo_ts, hi_ts))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            os.close(lock)
        files.sort(key=lambda f: (f[1], f[2]))
        clusters: list[list[tuple[Any, int, int]]] = []
        end = None
        for f in files:
            if clusters and end is not None and f[1] <= end:
                clusters[-1].append(f)
                end = max(end, f[2])
            else:
                clusters.append([f])
                end = f[2]
        return clusters

    @staticmethod
    def _ts_range(pf: Any) -> tuple[int | None, int]:
        md = pf.metadata
        if md.num_rows == 0:
            return None, 0
        idx = pf.schema_arrow.get_field_index("ts_event")
        lo, hi = None, None
        for i in range(md.num_row_groups):
            st = md.row_group(i).column(idx).statistics
            if st is None or not st.has_min_max:
                return -(2**63), 2**63 - 1
            lo = st.min if lo is None else min(lo, st.min)
            hi = st.max if hi is None else max(hi, st.max)
        return lo, hi

    # reading ----------------------------------------------------------------------------------
    def _conform(self, table: pa.Table | pa.RecordBatch) -> pa.Table:
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        arrays = []
        for field in self.out_schema:
            if field.name in table.column_names:
                col = table.column(field.name)
                arrays.append(col if col.type == field.type else col.cast(field.type))
            else:
                arrays.append(pa.nulls(table.num_rows, field.type))
        return pa.Table.from_arrays(arrays, schema=self.out_schema.with_metadata(None)) if arrays else table

    def _filter(self, table: pa.Table) -> pa.Table:
        import numpy as np

        ts = table.column("ts_event").to_numpy()
        mask = (ts >= self.lo) & (ts < self.hi)
        if self.after is not None:
            a = self.after
            at = ts == a.ts_event
            if at.any():
                stream = np.asarray(table.column("_stream").to_pylist(), dtype=object)
                seq = table.column("_seq").to_numpy()
                idx = table.column("_idx").to_numpy()
                later = (stream > a.stream) | ((stream == a.stream) & ((seq > a.seq) | ((seq == a.seq) & (idx > a.idx))))
                mask &= (ts > a.ts_event) | (at & later)
            else:
                mask &= ts > a.ts_event
        if mask.all():
            return table
        return table.filter(pa.array(mask))

    @staticmethod
    def _in_order(table: pa.Table) -> bool:
        import numpy as np

        ts = table.column("ts_event").to_numpy()
        if len(ts) < 2:
            return True
        d = np.diff(ts)
        if (d < 0).any():
            return False
        ties = d == 0
        if not ties.any():
            return True
        seq = table.column("_seq").to_numpy()
        idx = table.column("_idx").to_numpy()
        ds, di = np.diff(seq), np.diff(idx)
        streams = table.column("_stream")
        same_stream = len(pc_unique(streams)) == 1
        return bool(same_stream and ((ds[ties] > 0) | ((ds[ties] == 0) & (di[ties] > 0))).all())

    @staticmethod
    def _sorted(table: pa.Table) -> pa.Table:
        import pyarrow.compute as pc

        order = pc.sort_indices(table, sort_keys=[("ts_event", "ascending"), ("_stream", "ascending"),
                                                  ("_seq", "ascending"), ("_idx", "ascending")])
        return table.take(order)

    def _read_cluster_sync(self, cluster: list[tuple[Any, int, int]]) -> pa.Table:
        tables = []
        for pf, _, _ in cluster:
            names = [c for c in self.cols if c in pf.schema_arrow.names]
            tables.append(self._filter(self._conform(pf.read(columns=names))))
        table = pa.concat_tables(tables)
        return table if self._in_order(table) else self._sorted(table)

    def _file_sorted_sync(self, pf: Any) -> bool:
        """Is a lone file already in the history order (checked on its order columns only)?"""
        t = pf.read(columns=[c for c in ("ts_event", "_stream", "_seq", "_idx") if c in pf.schema_arrow.names])
        return len(t.column_names) == 4 and self._in_order(t)

    async def batches(self) -> AsyncIterator[pa.RecordBatch]:
        import asyncio

        clusters = await asyncio.to_thread(self._open_sync)
        for cluster in clusters:
            if len(cluster) == 1 and await asyncio.to_thread(self._file_sorted_sync, cluster[0][0]):
                pf = cluster[0][0]
                names = [c for c in self.cols if c in pf.schema_arrow.names]
                it = pf.iter_batches(batch_size=self.batch_rows, columns=names, use_threads=True)

                def step(it: Any = it) -> pa.Table | None:
                    while True:
                        b = next(it, None)
                        if b is None:
                            return None
                        t = self._filter(self._conform(b))
                        if t.num_rows:
                            return t

                pending = asyncio.ensure_future(asyncio.to_thread(step))
                while True:
                    table = await pending
                    if table is None:
                        break
                    pending = asyncio.ensure_future(asyncio.to_thread(step))  # decode ahead
                    for b in table.to_batches(max_chunksize=self.batch_rows):
                        yield b
            else:
                table = await asyncio.to_thread(self._read_cluster_sync, cluster)
                for b in table.to_batches(max_chunksize=self.batch_rows):
                    yield b


def pc_unique(col: Any) -> Any:
    import pyarrow.compute as pc

    return pc.unique(col)
