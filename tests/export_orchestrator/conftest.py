"""Fixtures: a private nats-server per test, a history writer and export orchestrators in-process,
helpers to publish events, wait for jobs and download their artifacts."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest_asyncio

from marketbus.clients.errors import RequestError
from marketbus.contracts import codec, subjects
from marketbus.contracts import feeds as feeds_contract
from marketbus.contracts.ids import event_id
from marketbus.contracts.jobs import ExportJob, ExportRequest, StreamSelector
from marketbus.contracts.market import Trade
from marketbus.contracts.reference import Instrument, InstrumentClass
from marketbus.runtime.publisher import JetStreamPublisher
from marketbus.runtime.settings import Secret
from services.export_orchestrator.app import ExportOrchestrator
from services.history_writer.app import HistoryWriter
from tests.helpers import wait_for

from .feed_ingestor import FeedIngestor, start_feed_ingestor

API_KEY = "test_export_key"
T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
S = 1_000_000_000


def make_trades(
    source: str, venue: str, symbol: str, times: list[int], *, replay: bool = False, seed: int = 0
) -> list[Trade]:
    out = []
    for _i, ts in enumerate(times):
        n = ts // S + seed
        out.append(Trade(
            id=event_id(source, "trade", venue, symbol, ts), source=source, venue=venue, symbol=symbol,
            ts_event=ts, ts_recv=ts + 1234, replay=replay,
            price=Decimal(f"{43000 + n % 997}.{n % 100000000:08d}"), size=Decimal(f"0.{(n * 7919) % 10**12:012d}"),
            side="buy" if n % 2 else "sell", trade_id=str(n),
        ))
    return out


async def publish(nc: nats.NATS, events: list[Any], batch: int = 500) -> None:
    pub = await JetStreamPublisher(nc).start()
    try:
        groups: dict[tuple[str, str, str, str], list[Any]] = {}
        for e in events:  # a batch envelope holds one kind of one instrument
            groups.setdefault((type(e).__name__, e.source, e.venue, e.symbol), []).append(e)
        for group in groups.values():
            for i in range(0, len(group), batch):
                await pub.publish_batch(group[i:i + batch])
        await pub.flush()
    finally:
        await pub.close()


class Harness:
    def __init__(self, url: str, tmp: Path) -> None:
        self.url = url
        self.tmp = tmp
        self.nc: nats.NATS | None = None
        self.writer: HistoryWriter | None = None
        self.orchestrators: list[ExportOrchestrator] = []
        self.services: list[Any] = []

    def settings(self, **kw: Any) -> dict[str, Any]:
        base = dict(nats_url=self.url, data_dir=str(self.tmp), history_dir=str(self.tmp / "history"), http_port=0,
                    api_port=0, api_keys=Secret(API_KEY), scan_interval_s=0.2, replay_timeout_s=3.0,
                    replay_wait_s=15.0, heartbeat_interval_s=60.0, requests_per_s=0.0, progress_interval_s=0.1)
        base.update(kw)
        return base

    async def start_writer(self) -> HistoryWriter:
        self.writer = HistoryWriter(nats_url=self.url, data_dir=str(self.tmp / "history"), http_port=0,
                                    batch_max_wait_s=0.05, fsync=False, heartbeat_interval_s=60.0)
        await self.writer.start()
        return self.writer

    async def start_orchestrator(self, **kw: Any) -> ExportOrchestrator:
        orch = ExportOrchestrator(**self.settings(**kw))
        await orch.start()
        self.orchestrators.append(orch)
        return orch

    async def stop_orchestrator(self, orch: ExportOrchestrator) -> None:
        await orch.stop()
        self.orchestrators.remove(orch)

    async def stored_rows(self, selector: str) -> int:
        from services.history_writer.query import request_coverage

        reply = await request_coverage(self.nc, selector, 0, 2**63 - 1)
        return sum(c.rows for c in reply.streams)

    async def wait_stored(self, selector: str, n: int, timeout: float = 20.0) -> None:
        async def ok() -> bool:
            try:
                return await self.stored_rows(selector) >= n
            except RequestError as exc:  # a writer busy on a loaded host: ask again until the deadline
                if exc.code != "timeout":
                    raise
                return False

        await wait_for(ok, timeout=timeout, what=f"{n} rows of {selector} stored")

    async def create(self, request: ExportRequest) -> ExportJob:
        assert self.nc is not None
        msg = await self.nc.request(subjects.EXPORT_CREATE, codec.encode(request), timeout=10)
        return codec.decode_as(msg.data, ExportJob)

    async def get(self, job_id: str) -> ExportJob:
        assert self.nc is not None
        msg = await self.nc.request(subjects.EXPORT_GET, msgspec.json.encode({"job_id": job_id}), timeout=10)
        return codec.decode_as(msg.data, ExportJob)

    async def wait_state(self, job_id: str, states: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
                         timeout: float = 30.0) -> ExportJob:
        async def done() -> ExportJob | None:
            job = await self.get(job_id)
            return job if job.state in states else None

        return await wait_for(done, timeout=timeout, interval=0.1, what=f"export {job_id} in {states}")


@pytest_asyncio.fixture
async def harness(nats_server: Any, tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(nats_server.url, tmp_path)
    h.nc = await nats.connect(nats_server.url)
    try:
        yield h
    finally:
        for service in h.services:
            with contextlib.suppress(Exception):
                await service.stop()
        for orch in list(h.orchestrators):
            with contextlib.suppress(Exception):
                await orch.stop()
        if h.writer is not None:
            with contextlib.suppress(Exception):
                await h.writer.stop()
        with contextlib.suppress(Exception):
            await h.nc.drain()


# TickSupply instruments of the tests: symbol -> (vendor datastream id, type, base, quote)
# (SOLUSDT is in the catalog only: never collected, nothing stored)
TS_INSTRUMENTS = {"BTCUSDT": ("101", "spot", "BTC", "USDT"), "ETHUSDT": ("102", "spot", "ETH", "USDT"),
                  "BTCUSD_PERP": ("103", "perpetual", "BTC", "USD"), "SOLUSDT": ("104", "spot", "SOL", "USDT")}


async def ticksupply_reference(harness: Harness, venue: str = "binance") -> FeedIngestor:
    """The reference data the TickSupply ingestor publishes for binance (Instrument events with
    base/quote/type and the datastream ids, and a datastream InstrumentClass), and the ingestor's
    side of feed control for those datastreams."""
    ts = T0
    events: list[Any] = []
    for symbol, (ds, kind, base, quote) in TS_INSTRUMENTS.items():
        events.append(Instrument(
            id=event_id("ticksupply", "instrument", venue, symbol), source="ticksupply", venue=venue, symbol=symbol,
            ts_event=ts, ts_recv=ts, instrument_type=kind, vendor_symbol=symbol, base=base, quote=quote,  # type: ignore[arg-type]
            attributes={"datastream.trade.json": ds}))
        vendor = f"{symbol}:trade:json"
        events.append(InstrumentClass(
            id=event_id("ticksupply", "datastream", ds), source="ticksupply", venue=venue,
            symbol=subjects.normalize_symbol(vendor), ts_event=ts, ts_recv=ts, class_type="datastream",
            vendor_symbol=vendor, vendor_ref=ds, attributes={"datastream_id": ds, "stream_type": "trade",
                                                             "wire_format": "json", "exchange": venue,
                                                             "instrument": symbol}))
    await publish(harness.nc, events)
    await harness.wait_stored("instrument.ticksupply.*.*", len(TS_INSTRUMENTS))
    catalog = {ds: (venue, symbol, "trade") for symbol, (ds, *_rest) in TS_INSTRUMENTS.items()}
    ingestor = await start_feed_ingestor(harness.url, catalog)
    harness.services.append(ingestor)
    return ingestor


async def backdate_feed(nc: Any, instrument: str, start_ns: int, vendor: str = "ticksupply") -> None:
    """The feed's first collection period started at ``start_ns`` (as the TickSupply sandbox's
    ``/_sandbox/ticksupply/backfill``): the trades the tests publish lie in the past, and an export
    covers only what was collected while the subscription was active. Written straight into the
    ``feeds`` bucket, compare-and-set, as an ingestor that had been collecting since then would have."""
    kv = await nc.jetstream().key_value(feeds_contract.BUCKET)
    key = feeds_contract.feed_key(vendor, instrument)
    entry = await kv.get(key)
    feed = codec.decode_as(entry.value, feeds_contract.Feed)
    first = feed.periods[0]
    periods = [feeds_contract.Period(start_ns, first.end_ns), *feed.periods[1:]]
    await kv.update(key, codec.encode(msgspec.structs.replace(feed, periods=periods)), last=entry.revision)


async def set_periods(
    nc: Any, instrument: str, periods: list[tuple[int, int | None]], vendor: str = "ticksupply"
) -> None:
    """The feed's collection periods are exactly ``periods`` (test setup of known spans)."""
    kv = await nc.jetstream().key_value(feeds_contract.BUCKET)
    key = feeds_contract.feed_key(vendor, instrument)
    entry = await kv.get(key)
    feed = codec.decode_as(entry.value, feeds_contract.Feed)
    new = [feeds_contract.Period(lo, hi) for lo, hi in periods]
    await kv.update(key, codec.encode(msgspec.structs.replace(feed, periods=new)), last=entry.revision)


def backdate_from_thread(loop: asyncio.AbstractEventLoop, nc: Any, instrument: str, start_ns: int) -> None:
    """:func:`backdate_feed` from a test's client thread (the sync ``ticksupply`` client runs in one)."""
    asyncio.run_coroutine_threadsafe(backdate_feed(nc, instrument, start_ns), loop).result(timeout=10)


def read_artifact(filename: str, data: bytes) -> pa.Table:
    if filename.endswith(".parquet"):
        return pq.read_table(io.BytesIO(data))
    text = gzip.decompress(data)
    # every column as text: decimals must come back exactly as published
    header = text.split(b"\n", 1)[0].decode().replace('"', "").split(",")
    return pcsv.read_csv(
        io.BytesIO(text), convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in header})
    )


async def download_all(api_url: str, job_id: str, key: str = API_KEY) -> tuple[dict[str, Any], dict[str, bytes]]:
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
        resp = await client.get(f"/v1/exports/{job_id}/download", headers={"X-Api-Key": key})
        resp.raise_for_status()
        body = resp.json()
        files = {}
        for art in body["artifacts"] + ([body["manifest"]] if body.get("manifest") else []):
            r = await client.get(art["url"])
            r.raise_for_status()
            files[art["filename"]] = r.content
        return body, files


def exact(value: Any) -> str:
    """A decimal's exact value as text (the history keeps values exactly, not trailing zeros)."""
    return format(Decimal(str(value)).normalize(), "f")


def trade_rows(trades: list[Trade]) -> list[tuple[str, ...]]:
    return sorted(
        (t.id, t.source, t.venue, t.symbol, str(t.ts_event), exact(t.price), exact(t.size), t.side) for t in trades
    )


def raw_rows(trades: list[Trade]) -> list[tuple[str, ...]]:
    """The rows of TickSupply's raw trade layout (exchange_ts_ns, collection_ts_ns, trade_id, price,
    quantity, side) for these trades, decimals compared by value."""
    return sorted((str(t.ts_event), str(t.ts_recv), t.trade_id or "", exact(t.price), exact(t.size), t.side)
                  for t in trades)


def raw_table_rows(tables: list[pa.Table]) -> list[tuple[str, ...]]:
    out = []
    names = ("exchange_ts_ns", "collection_ts_ns", "trade_id", "price", "quantity", "side")
    for t in tables:
        assert tuple(t.column_names) == names
        cols = [t.column(c).to_pylist() for c in names]
        out.extend(tuple(exact(v) if i in (3, 4) else str(v) for i, v in enumerate(row)) for row in zip(*cols))
    return sorted(out)


def table_rows(tables: list[pa.Table]) -> list[tuple[str, ...]]:
    out = []
    for t in tables:
        cols = [
            t.column(c).to_pylist() for c in ("id", "source", "venue", "symbol", "ts_event", "price", "size", "side")
        ]
        out.extend(tuple(exact(v) if i in (5, 6) else str(v) for i, v in enumerate(row)) for row in zip(*cols))
    return sorted(out)


__all__ = [
    "API_KEY",
    "T0",
    "TS_INSTRUMENTS",
    "Harness",
    "S",
    "backdate_feed",
    "backdate_from_thread",
    "download_all",
    "make_trades",
    "publish",
    "raw_rows",
    "raw_table_rows",
    "read_artifact",
    "set_periods",
    "table_rows",
    "ticksupply_reference",
    "trade_rows",
    "wait_for",
]


async def export_three_files(harness: Harness, source: str, symbol: str, fmt: str) -> tuple[list[Trade], ExportJob]:
    """1,200 trades published and stored, exported in files of 500 rows: (the trades, the done job)."""
    import uuid

    trades = make_trades(source, "XCHG", symbol, [T0 + i * S // 20 for i in range(1200)])
    await publish(harness.nc, trades)
    await harness.wait_stored(f"trade.{source}.*.*", 1200)
    req = ExportRequest(idempotency_key=str(uuid.uuid4()), selector=StreamSelector(kind="trade", source=source),
                        start_ns=T0, end_ns=T0 + 3600 * S, format=fmt, max_rows_per_file=500, fill_gaps=False)
    job = await harness.wait_state((await harness.create(req)).job_id)
    assert job.state == "succeeded" and [a.rows for a in job.artifacts] == [500, 500, 200]
    return trades, job


def stored_names(job: ExportJob) -> list[str]:
    """The object names a job's artifacts and manifest are stored under."""
    return sorted([f"{job.job_id}/{a.filename}" for a in job.artifacts] + [f"{job.job_id}/manifest.json"])
