"""Reading the history kept in PostgreSQL (the history writer's ``postgres`` backend): what the
writer's own query API and the export orchestrator read through, so both see the same rows.

The table layout lives here too (the writer creates the tables from it, the reads select from it):
one table ``<prefix><kind>`` per event kind (default ``history_trade``...) with the kind's storage
columns (``numeric`` for decimals, ``jsonb`` for nested values, ``bigint`` ns timestamps) plus
``_stream``, ``_seq``, ``_idx``; ``feed_status`` also has ``ts_event``.

Rows come back as :class:`marketbus.history.reader.HistoryReader` gives them: storage rows
(``ts_event`` int ns, decimals as their canonical text) per kind in the history order
``(ts_event, _stream, _seq, _idx)``, the requested columns first, then the order columns. A
kind whose table does not exist yet (no writer has opened the database) reads as empty.

Every read of a kind is one read-only transaction streaming ``COPY (SELECT ...) TO STDOUT``
into Arrow's CSV reader: memory stays bounded however long the range, and the reader needs
``SELECT`` only (a read-only database role is enough).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.csv as pcsv

from .schema import ORDER_COLUMNS, SCHEMAS, canonical_decimal_column
from .selector import Cursor, Selector

MAX_NS = 2**63 - 1
DEFAULT_PREFIX = "history_"
# column kind (schema) -> PostgreSQL type of the typed tables
PG_TYPES = {"int": "bigint", "bool": "boolean", "str": "text", "decimal": "numeric", "json": "jsonb"}


def table_columns(kind: str) -> list[tuple[str, str]]:
    """(column, column kind) of a kind's table, in table order."""
    schema = SCHEMAS[kind]
    cols = [(schema.column_of[name], ck) for name, ck, _ in schema.fields]
    if kind == "feed_status":
        cols.append(("ts_event", "int"))
    return [*cols, ("_stream", "str"), ("_seq", "int"), ("_idx", "int")]


def like_pattern(pattern: str) -> str:
    """An fnmatch pattern (``*``, ``?``) as a ``LIKE`` pattern (``%``, ``_`` and ``\\`` escaped)."""
    return pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("*", "%").replace("?", "_")


def where(selector: Selector, start_ns: int, end_ns: int, after: Cursor | None) -> tuple[str, list[Any]]:
    """The ``WHERE`` clause (and its arguments) of a selection: the time range, the selector's
    source/venue/symbol (``=`` or ``LIKE``), strictly after ``after`` in the history order."""
    clauses = ["ts_event >= $1", "ts_event < $2"]
    args: list[Any] = [start_ns, end_ns]
    for col in ("source", "venue", "symbol"):
        pat = getattr(selector, col)
        if pat == "*":
            continue
        wild = any(ch in pat for ch in "*?")
        args.append(like_pattern(pat) if wild else pat)
        clauses.append(f'"{col}" {"LIKE" if wild else "="} ${len(args)}')
    if after is not None:
        args += [after.ts_event, after.stream, after.seq, after.idx]
        n = len(args)
        clauses.append(f"(ts_event, _stream, _seq, _idx) > (${n - 3}, ${n - 2}, ${n - 1}, ${n})")
    return " AND ".join(clauses), args


class PgHistoryReader:
    """Reads the kind tables of one PostgreSQL database.

    ``PgHistoryReader(dsn)`` opens a pool of its own on :meth:`open`; ``PgHistoryReader(pool=pool)``
    reads through a pool someone else owns (the history writer's store)."""

    def __init__(self, dsn: str = "", *, table_prefix: str = DEFAULT_PREFIX, pool: asyncpg.Pool | None = None,
                 pool_size: int = 4) -> None:
        self.dsn = dsn
        self.prefix = table_prefix
        self.pool_size = pool_size
        self.pool = pool
        self._own_pool = pool is None

    async def open(self) -> None:
        """Connect (a pool of our own; nothing is created in the database). Raises when PostgreSQL
        is unreachable."""
        if self.pool is None:
            # min_size 0: connections on demand, no reconnect loop while PostgreSQL is down
            self.pool = await asyncpg.create_pool(self.dsn, min_size=0, max_size=self.pool_size)
            self._own_pool = True

    async def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None and self._own_pool:
            await pool.close()

    def table(self, kind: str) -> str:
        return f"{self.prefix}{kind}"

    def _pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise RuntimeError("PgHistoryReader is not open")
        return self.pool

    # --- rows ------------------------------------------------------------------------------------
    async def read_batches(
        self, selector: Selector, start_ns: int, end_ns: int, *, after: Cursor | None = None,
        limit: int | None = None, batch_rows: int = 65_536, columns: Sequence[str] | None = None,
    ) -> AsyncIterator[tuple[str, pa.RecordBatch]]:
        """(kind, record batch) for every selected kind in name order, each kind in the history
        order; ``limit`` counts rows per kind; ``columns`` plus the order columns when given."""
        for kind in selector.kinds():
            async for batch in self._read(kind, selector, start_ns, end_ns, after=after, limit=limit,
                                          batch_rows=batch_rows, columns=columns):
                yield kind, batch

    async def read_kind(self, kind: str, selector: Selector, start_ns: int, end_ns: int, *,
                        after: Cursor | None = None, limit: int | None = None,
                        columns: Sequence[str] | None = None) -> pa.Table:
        """One kind's selected rows as one table (``HistoryReader.read_kind``)."""
        cols = self._selected(kind, columns)
        batches = [b async for b in self._read(kind, selector, start_ns, end_ns, after=after, limit=limit,
                                               columns=columns)]
        if not batches:
            return _schema_of(kind, cols).empty_table()
        return pa.Table.from_batches(batches)

    def _selected(self, kind: str, columns: Sequence[str] | None) -> list[tuple[str, str]]:
        cols = table_columns(kind)
        if not columns:
            return cols
        ck = dict(cols)
        wanted = dict.fromkeys([*columns, *ORDER_COLUMNS])  # the requested order, as HistoryReader
        return [(c, ck[c]) for c in wanted if c in ck]

    async def _read(self, kind: str, selector: Selector, start_ns: int, end_ns: int, *, after: Cursor | None,
                    limit: int | None, columns: Sequence[str] | None,
                    batch_rows: int = 65_536) -> AsyncIterator[pa.RecordBatch]:
        """The rows as ``COPY (SELECT ...) TO STDOUT (FORMAT csv)`` parsed by Arrow's CSV reader:
        no Python object per value (3x the rows/s of building arrays from records). The COPY
        writes into a pipe that a thread parses block by block, so memory stays bounded and a
        slow consumer holds the COPY back (the pipe fills)."""
        cols = self._selected(kind, columns)
        lo = start_ns if after is None else max(start_ns, after.ts_event)
        if lo >= end_ns or (limit is not None and limit <= 0):
            return
        select = ", ".join(f'"{c}"::text' if ck in ("decimal", "json") else f'"{c}"' for c, ck in cols)
        cond, args = where(selector, lo, end_ns, after)
        sql = f'SELECT {select} FROM "{self.table(kind)}" WHERE {cond} ORDER BY ts_event, _stream, _seq, _idx'
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        schema = _schema_of(kind, cols)
        decimals = [i for i, (_, ck) in enumerate(cols) if ck == "decimal"]
        rfd, wfd = os.pipe()
        sink = os.fdopen(wfd, "wb")
        source = os.fdopen(rfd, "rb", buffering=0)  # unbuffered: closing it never waits on a reading thread

        async def copy() -> None:
            try:
                async with self._pool().acquire() as con, con.transaction(readonly=True):
                    # a file: asyncpg writes it in a thread (which blocks while the pipe is full)
                    await con.copy_from_query(sql, *args, output=sink, format="csv")
            finally:
                with contextlib.suppress(OSError):  # EOF for the parser, also on error or cancel
                    await asyncio.to_thread(sink.close)

        def convert(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
            """Parsed blocks (their size is what the pipe held) -> one batch, canonical decimals."""
            batch = pa.Table.from_batches(batches, schema=batches[0].schema).combine_chunks().to_batches()[0]
            arrays = list(batch.columns)
            for i in decimals:  # numeric::text keeps the stored scale: the canonical text, as Iceberg's
                arrays[i] = canonical_decimal_column(arrays[i])
            return pa.RecordBatch.from_arrays(arrays, schema=schema)

        task = asyncio.ensure_future(copy())
        try:
            reader = await asyncio.to_thread(_csv_reader, source, schema)
            pending: list[pa.RecordBatch] = []  # parsed, not given yet
            rows = 0
            while reader is not None:
                batch = await asyncio.to_thread(_next_batch, reader)
                if batch is None:
                    break
                if not batch.num_rows:
                    continue
                # batches of batch_rows; the rows of the last block parsed are always held back:
                # a COPY failing mid-way leaves a cut last row, given only once the COPY ended well
                while rows >= batch_rows:
                    table = pa.Table.from_batches(pending)
                    yield convert(table.slice(0, batch_rows).to_batches())
                    pending, rows = table.slice(batch_rows).to_batches(), rows - batch_rows
                pending.append(batch)
                rows += batch.num_rows
            try:
                await task
            except asyncpg.UndefinedTableError:  # no writer has created it yet: nothing stored
                return
            if rows:
                table = pa.Table.from_batches(pending)
                for at in range(0, rows, batch_rows):
                    yield convert(table.slice(at, batch_rows).to_batches())
        finally:
            if not task.done():
                task.cancel()
            source.close()  # a COPY still writing gets EPIPE instead of waiting on a full pipe
            with contextlib.suppress(BaseException):
                await task

    # --- what is stored --------------------------------------------------------------------------
    async def coverage_rows(self, selector: Selector, start_ns: int, end_ns: int,
                            max_gap_ns: dict[str, int]) -> list[tuple[str, str, str, str, int, int, int]]:
        """Covered runs per stream (kind, source, venue, symbol, first_ts, last_ts, rows): runs of
        events with no two consecutive events further apart than ``max_gap_ns[kind]`` (computed
        in the database with window functions)."""
        out = []
        async with self._pool().acquire() as con:
            for kind in selector.kinds():
                if kind == "feed_status":
                    continue
                gap = max_gap_ns.get(kind, max_gap_ns.get("default", 300 * 1_000_000_000))
                cond, args = where(selector, start_ns, end_ns, None)
                sql = f"""
                WITH t AS (
                  SELECT source, venue, symbol, ts_event,
                         ts_event - LAG(ts_event) OVER (PARTITION BY source, venue, symbol ORDER BY ts_event) AS d
                  FROM "{self.table(kind)}" WHERE {cond}),
                g AS (
                  SELECT *, SUM(CASE WHEN d IS NULL OR d > {int(gap)} THEN 1 ELSE 0 END)
                         OVER (PARTITION BY source, venue, symbol ORDER BY ts_event ROWS UNBOUNDED PRECEDING) AS grp
                  FROM t)
                SELECT source, venue, symbol, MIN(ts_event), MAX(ts_event), COUNT(*)
                FROM g GROUP BY source, venue, symbol, grp ORDER BY source, venue, symbol, MIN(ts_event)"""
                try:
                    rows = await con.fetch(sql, *args)
                except asyncpg.UndefinedTableError:
                    continue
                for r in rows:
                    if selector.match(r[0], r[1], r[2]):
                        out.append((kind, r[0], r[1], r[2], r[3], r[4], r[5]))
        return out

    async def streams(self, selector: Selector, start_ns: int = 0,
                      end_ns: int = MAX_NS) -> list[tuple[str, str, str, str]]:
        """(kind, source, venue, symbol) of every stored stream, sorted (``HistoryReader.streams``)."""
        out: set[tuple[str, str, str, str]] = set()
        async with self._pool().acquire() as con:
            for kind in selector.kinds():
                cond, args = where(selector, start_ns, end_ns, None)
                try:
                    rows = await con.fetch(
                        f'SELECT DISTINCT source, venue, symbol FROM "{self.table(kind)}" WHERE {cond}', *args
                    )
                except asyncpg.UndefinedTableError:
                    continue
                out.update((kind, r[0], r[1], r[2]) for r in rows if selector.match(r[0], r[1], r[2]))
        return sorted(out)


def _csv_reader(source: Any, schema: pa.Schema) -> pcsv.CSVStreamingReader | None:
    """Arrow's streaming CSV reader with PostgreSQL's CSV rules: an unquoted empty field is NULL, a
    quoted one an empty string; booleans are ``t``/``f``; values may hold newlines. None when the
    COPY gave nothing (no rows, or it failed: the COPY task says which)."""
    try:
        return pcsv.open_csv(
            source,
            read_options=pcsv.ReadOptions(column_names=schema.names, block_size=1 << 20),
            parse_options=pcsv.ParseOptions(newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(column_types=schema, null_values=[""], strings_can_be_null=True,
                                                quoted_strings_can_be_null=False, true_values=["t"],
                                                false_values=["f"]))
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            return None
        raise


def _next_batch(reader: pcsv.CSVStreamingReader) -> pa.RecordBatch | None:
    try:
        return reader.read_next_batch()
    except StopIteration:
        return None


def _schema_of(kind: str, cols: list[tuple[str, str]]) -> pa.Schema:
    schema = SCHEMAS[kind].schema
    return pa.schema([schema.field(c) for c, _ in cols])
