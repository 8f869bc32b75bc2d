"""The ONE adapter through which the export orchestrator reads history, from wherever the history
writer keeps it (``history_backend``, by default the writer's own ``MARKETBUS_HISTORY_WRITER_BACKEND``):

- ``iceberg``: the history tables (Apache Iceberg) through their catalog, with
  ``marketbus.history``'s :class:`HistoryReader`. No lock is taken: every read is one table
  snapshot, so the orchestrator runs on any host that reaches the catalog and the warehouse
  (``MARKETBUS_LAKEHOUSE_*``; by default the embedded SQLite catalog under ``<history dir>``);
- ``postgres``: the writer's PostgreSQL tables, with :class:`PgHistoryReader` (the reads the
  writer's own query API makes), through ``history_pg_dsn`` (``SELECT`` is all it needs).

Nothing of the history writer is imported. Rows come per kind (kinds in name order), each kind in
the history order ``(ts_event, _stream, _seq, _idx)``; from Iceberg one UTC day at a time, from
PostgreSQL through a server-side cursor, so memory stays bounded either way. A read can resume
strictly after a position (:class:`Position`), which is what a resumed job does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, NamedTuple

import msgspec
import pyarrow as pa

from marketbus.contracts.jobs import StreamCoverage, StreamSelector
from marketbus.contracts.subjects import normalize_symbol
from marketbus.history.coverage import DEFAULT_MAX_GAP_NS, build_coverage
from marketbus.history.lakehouse import LakehouseSettings
from marketbus.history.pg_reader import PgHistoryReader
from marketbus.history.reader import HistoryReader
from marketbus.history.schema import FEED_STATUS, KINDS, SCHEMAS
from marketbus.history.selector import Cursor, Selector

log = logging.getLogger("marketbus.export_orchestrator.history")

DAY_NS = 86_400 * 1_000_000_000
MAX_NS = 2**63 - 1
MARKET_KINDS = frozenset(k for k in KINDS if SCHEMAS[k].stream == "MD")
INSTRUMENT_COLUMNS = ["source", "symbol", "base", "quote", "instrument_type", "vendor_symbol", "vendor_ref",
                      "attributes"]
EXPORTABLE_KINDS = tuple(sorted(k for k in KINDS if k != FEED_STATUS))


class StreamKey(NamedTuple):
    kind: str
    source: str
    venue: str
    symbol: str


class Position(msgspec.Struct, frozen=True, array_like=True):
    """Resume point: strictly after ``key`` in ``kind``; ``rows`` = rows of that kind already read."""

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
    def __init__(self, settings: Any, nc: Any = None, reader: HistoryReader | PgHistoryReader | None = None) -> None:
        self.settings = settings
        self.nc = nc
        self.reader = reader

    # --- lifecycle ------------------------------------------------------------------------------
    async def open(self) -> None:
        if self.reader is not None:
            return
        if getattr(self.settings, "history_backend", "iceberg") == "postgres":
            pg = PgHistoryReader(self.settings.history_pg_dsn.get(), table_prefix=self.settings.history_pg_table_prefix)
            await pg.open()  # lazy connections: an unreachable database shows in the reads, not here
            self.reader = pg
            return
        lake = LakehouseSettings.from_env(self.settings.history_path)
        reader = self.reader = HistoryReader(lake)
        try:
            await asyncio.to_thread(lambda: reader.tables.catalog)
        except Exception as exc:
            log.warning("history catalog not reachable yet: %r", exc)

    async def close(self) -> None:
        reader, self.reader = self.reader, None
        if isinstance(reader, PgHistoryReader):
            await reader.close()

    @property
    def mode(self) -> str:
        return "postgres" if isinstance(self.reader, PgHistoryReader) else "iceberg"

    def _reader(self) -> HistoryReader | PgHistoryReader:
        if self.reader is None:
            raise HistoryUnavailable("history source not opened")
        return self.reader

    async def _read_kind(self, kind: str, selector: Selector, start_ns: int, end_ns: int, *,
                         after: Cursor | None = None, columns: Sequence[str] | None = None) -> pa.Table:
        """One kind's rows as one table, from either reader (Iceberg's in a thread)."""
        reader = self._reader()
        if isinstance(reader, PgHistoryReader):
            return await reader.read_kind(kind, selector, start_ns, end_ns, after=after, columns=columns)
        return await asyncio.to_thread(reader.read_kind, kind, selector, start_ns, end_ns, after=after, columns=columns)

    # --- coverage and the catalog ---------------------------------------------------------------
    async def coverage(self, selector: StreamSelector | Selector, start_ns: int, end_ns: int) -> list[StreamCoverage]:
        sel = to_selector(selector)
        reader = self._reader()
        try:
            if isinstance(reader, PgHistoryReader):
                runs = await reader.coverage_rows(sel, start_ns, end_ns, DEFAULT_MAX_GAP_NS)
            else:
                runs = await asyncio.to_thread(reader.coverage_rows, sel, start_ns, end_ns, DEFAULT_MAX_GAP_NS)
            table = await self._read_kind(FEED_STATUS, Selector(kind=FEED_STATUS, source=sel.source), 0, MAX_NS)
            statuses = SCHEMAS[FEED_STATUS].table_to_events(table) if table.num_rows else []
        except Exception as exc:
            raise HistoryUnavailable(f"history tables unreadable: {exc!r}") from None
        return [c for c in build_coverage(runs, statuses, sel, start_ns, end_ns) if c.kind != FEED_STATUS]

    async def streams(self, selector: StreamSelector | Selector | None = None) -> list[StreamKey]:
        """The stored streams (kind, source, venue, symbol), sorted."""
        sel = to_selector(selector) if selector is not None else Selector()
        reader = self._reader()
        if isinstance(reader, PgHistoryReader):
            rows = await reader.streams(sel)
        else:
            rows = await asyncio.to_thread(reader.streams, sel)
        return [StreamKey(*r) for r in rows if r[0] != FEED_STATUS]

    async def market_streams(self) -> list[StreamKey]:
        """The stored market data streams (no reference data, no feed status): the datastreams."""
        return [k for k in await self.streams() if k.kind in MARKET_KINDS]

    async def instruments(self, venue: str) -> dict[str, dict[str, Any]]:
        """The latest stored ``Instrument`` reference event of each symbol of ``venue``:
        symbol -> {source, base, quote, instrument_type, vendor_symbol, attributes} (the reference
        data the ingestors publish)."""
        sel = Selector(kind="instrument", venue=venue)
        try:
            table = await self._read_kind("instrument", sel, 0, MAX_NS, columns=INSTRUMENT_COLUMNS)
        except Exception as exc:
            raise HistoryUnavailable(f"history tables unreadable: {exc!r}") from None
        out: dict[str, dict[str, Any]] = {}
        for row in table.select(INSTRUMENT_COLUMNS).to_pylist():  # history order: the latest wins
            try:
                row["attributes"] = msgspec.json.decode(row["attributes"]) if row["attributes"] else {}
            except msgspec.DecodeError:
                row["attributes"] = {}
            out[row["symbol"]] = row
        return out

    async def vendor_datastreams(self) -> list[StreamKey]:
        """The streams a vendor's catalog offers, from the stored reference data: TickSupply's
        datastreams (``InstrumentClass`` ``datastream`` events, JSON wire format): a trade stream
        is collected as ``trade``, a depth stream as ``quote`` (top of book)."""
        sel = Selector(kind="instrument_class", source="ticksupply")
        try:
            table = await self._read_kind(
                "instrument_class", sel, 0, MAX_NS, columns=["venue", "class_type", "attributes"]
            )
        except Exception as exc:
            raise HistoryUnavailable(f"history tables unreadable: {exc!r}") from None
        out: set[StreamKey] = set()
        for row in table.select(["venue", "class_type", "attributes"]).to_pylist():
            if row["class_type"] != "datastream" or not row["attributes"]:
                continue
            try:
                attrs = msgspec.json.decode(row["attributes"])
            except msgspec.DecodeError:
                continue
            kind = {"trade": "trade", "depth": "quote"}.get(attrs.get("stream_type"))
            if kind and attrs.get("wire_format") == "json" and attrs.get("instrument"):
                out.add(StreamKey(kind, "ticksupply", row["venue"], normalize_symbol(attrs["instrument"])))
        return sorted(out)

    # --- data -------------------------------------------------------------------------------------
    async def batches(self, selector: StreamSelector | Selector, start_ns: int, end_ns: int, *,
                      columns: Sequence[str] | None = None, resume: Position | None = None,
                      batch_rows: int = 131_072, window_ns: int = DAY_NS,
                      exact_decimals: bool = False) -> AsyncIterator[tuple[str, pa.RecordBatch]]:
        """(kind, batch) for every selected kind in name order; each batch has the requested
        columns (all event fields when None) plus the order columns. Decimals come as their
        canonical text; with ``exact_decimals``, from the Iceberg tables, as the tables'
        ``decimal(38, 18)`` columns (the same values, not rendered: what Parquet exports write;
        PostgreSQL's ``numeric`` may hold more than 18 places, so its decimals stay text)."""
        sel = to_selector(selector)
        kinds = kinds_of(sel)
        if resume is not None:
            kinds = [k for k in kinds if k >= resume.kind]
        reader = self._reader()
        for kind in kinds:
            ksel = Selector(kind=kind, source=sel.source, venue=sel.venue, symbol=sel.symbol)
            cols = None
            if columns:
                known = set(SCHEMAS[kind].schema.names)
                cols = [c for c in columns if c in known]
            r = resume if (resume is not None and resume.kind == kind) else None
            after = Cursor(*r.key) if (r is not None and r.key is not None) else None
            if isinstance(reader, PgHistoryReader):  # one server-side cursor: bounded memory, no day windows
                async for _, batch in reader.read_batches(ksel, start_ns, end_ns, after=after, columns=cols,
                                                          batch_rows=batch_rows):
                    yield kind, batch
                continue
            lo = start_ns if after is None else max(start_ns, after.ts_event)
            days = await asyncio.to_thread(reader.days, kind, ksel, lo, end_ns) if window_ns > 0 else []
            windows = [(max(lo, d), min(end_ns, d + DAY_NS)) for d in days] if days else [(lo, end_ns)]
            # decode the next window while the caller writes this one
            pending = asyncio.ensure_future(asyncio.to_thread(reader.read_kind, kind, ksel, *windows[0],
                                                              after=after, columns=cols,
                                                              exact_decimals=exact_decimals))
            for i in range(len(windows)):
                table = await pending
                if i + 1 < len(windows):
                    pending = asyncio.ensure_future(asyncio.to_thread(reader.read_kind, kind, ksel, *windows[i + 1],
                                                                      after=after, columns=cols,
                                                                      exact_decimals=exact_decimals))
                for batch in table.combine_chunks().to_batches(max_chunksize=batch_rows):
                    if batch.num_rows:
                        yield kind, batch
