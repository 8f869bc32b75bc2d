"""The export API is TickSupply to TickSupply's own users (issue #19):

- the CSV of the raw (default) and normalized schemas is the CSV the TickSupply sandbox writes for
  the same trades (text for text; decimals by value), and parses with TickSupply's column spec;
- the whole surface of the official ``ticksupply`` 0.2.0 client works: catalog (instruments with
  base/quote/type and filters, no reference pseudo-instruments), subscriptions that are marketbus
  feeds (status, spans, created_at real; 403 for an export after delete), exports, export schemas;
- exactly one ``x-request-id`` on every response, errors included.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import re
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
import ticksupply
from ticksupply import ConflictError, InvalidArgumentError, NotFoundError, PermissionDeniedError
from ticksupply.models import SubscriptionStatus

from marketbus.clients.feeds import FeedClient
from marketbus.contracts.ids import event_id
from marketbus.contracts.market import Trade
from marketbus.runtime.tsapi_schemas import BUILT_IN_COLUMNS, CSV_TYPES
from services.sandbox.common.base import SandboxRunner
from services.sandbox.registry import load_spec

from .conftest import (
    API_KEY,
    TS_INSTRUMENTS,
    Harness,
    S,
    backdate_feed,
    backdate_from_thread,
    make_trades,
    publish,
    ticksupply_reference,
    wait_for,
)
from .feed_ingestor import FeedIngestor

NOW = time.time_ns() // S * S
HOUR_NS = 3600 * S
SANDBOX_KEY = "ts_sandbox_key"
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z")
_DECIMAL = re.compile(r"-?\d+(\.\d+)?")


def parse_ticksupply_csv(text: str, header: list[str]) -> list[dict[str, Any]]:
    """Parse a built-in schema's CSV strictly by TickSupply's column spec (CSV_TYPES): a value of
    the wrong form fails the test."""
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == header, rows[0]
    out = []
    for row in rows[1:]:
        assert len(row) == len(header), row
        parsed: dict[str, Any] = {}
        for name, value in zip(header, row):
            kind = CSV_TYPES[name]
            if kind == "i64":
                parsed[name] = int(value)
                assert str(parsed[name]) == value
            elif kind == "iso8601":
                assert _ISO.fullmatch(value), value
                parsed[name] = datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
                parsed[name + "_ns"] = int(parsed[name].timestamp()) * S + int(value[20:29])
            elif kind == "decimal":
                assert _DECIMAL.fullmatch(value), value
                parsed[name] = Decimal(value)
            elif kind == "side":
                assert value in ("buy", "sell"), value
                parsed[name] = value
            else:
                assert value, name
                parsed[name] = value
        out.append(parsed)
    return out


async def _sandbox_csv(sb: SandboxRunner, start: int, end: int) -> dict[str, str]:
    """The TickSupply sandbox's raw and normalized CSV of binance BTCUSDT trades (datastream 101)."""
    async with httpx.AsyncClient(base_url=sb.url, headers={"X-Api-Key": SANDBOX_KEY}, timeout=10) as http:
        r = await http.post("/_sandbox/ticksupply/backfill", json={"api_key": SANDBOX_KEY, "datastream_id": 101,
                                                                   "start_ns": start - HOUR_NS, "end_ns": end + S})
        assert r.status_code == 200, r.text
        out = {}
        for schema in ("raw", "normalized"):
            r = await http.post("/v1/exports", json={"datastream_id": 101, "start_time": str(start),
                                                     "end_time": str(end), "schema": schema})
            assert r.status_code == 201, r.text
            job = r.json()
            while job["status"] in ("queued", "running"):
                await asyncio.sleep(0.05)
                job = (await http.get(f"/v1/exports/{job['id']}")).json()
            assert job["status"] == "succeeded", job
            arts = (await http.get(f"/v1/exports/{job['id']}/download")).json()["artifacts"]
            assert len(arts) == 1
            out[schema] = gzip.decompress((await http.get(arts[0]["url"])).content).decode()
        return out


def _canonical(text: str) -> list[list[Any]]:
    """CSV rows with the decimal columns as values (every other column as text)."""
    rows = list(csv.reader(io.StringIO(text)))
    decimals = [i for i, name in enumerate(rows[0]) if CSV_TYPES[name] == "decimal"]
    return [[Decimal(v) if n and i in decimals else v for i, v in enumerate(row)] for n, row in enumerate(rows)]


def _trades_of(raw_csv: str) -> list[Trade]:
    """The sandbox's trades as the TickSupply ingestor publishes them on the bus."""
    out = []
    for row in list(csv.reader(io.StringIO(raw_csv)))[1:]:
        ts, coll, trade_id, price, qty, side = row
        out.append(Trade(id=event_id("ticksupply", "trade", "binance", "BTCUSDT", trade_id), source="ticksupply",
                         venue="binance", symbol="BTCUSDT", ts_event=int(ts), ts_recv=int(coll), price=Decimal(price),
                         size=Decimal(qty), side=side, trade_id=trade_id))  # type: ignore[arg-type]
    return out


def _client(orch: Any) -> ticksupply.Client:
    return ticksupply.Client(api_key=API_KEY, base_url=f"{orch.api_url}/v1", max_retries=0, timeout=30)


def _wait_export(client: ticksupply.Client, export_id: str) -> Any:
    deadline = time.monotonic() + 30
    while (job := client.exports.get(export_id)).status.value in ("queued", "running"):
        assert time.monotonic() < deadline, "export did not finish"
        time.sleep(0.05)
    return job


def _download(client: ticksupply.Client, export_id: str) -> str:
    dl = client.exports.get_download(export_id)
    assert dl.count == len(dl.artifacts) == 1
    return gzip.decompress(httpx.get(dl.artifacts[0].url).content).decode()


async def test_raw_and_normalized_csv_are_the_sandbox_csv(harness: Harness) -> None:
    start = NOW // HOUR_NS * HOUR_NS - 2 * HOUR_NS + 60 * S  # inside one hour: one artifact on both sides
    end = start + 120 * S
    async with SandboxRunner(load_spec("ticksupply"), port=0, export_queued_s=0.05, export_running_s=0.1,
                             requests_per_s=0) as sb:
        expected = await _sandbox_csv(sb, start, end)
    trades = _trades_of(expected["raw"])
    assert len(trades) >= 20
    await harness.start_writer()
    orch = await harness.start_orchestrator()
    await publish(harness.nc, trades)
    await harness.wait_stored("trade.ticksupply.*.*", len(trades))
    await ticksupply_reference(harness)

    loop = asyncio.get_running_loop()

    def flow() -> dict[str, str]:
        with _client(orch) as client:
            ds = client.datastreams.list(exchange="binance", instrument="BTCUSDT", stream_type="trade").items[0]
            client.subscriptions.create(datastream_id=ds.datastream_id)  # collecting since an hour before `start`
            backdate_from_thread(loop, harness.nc, TS_INSTRUMENTS["BTCUSDT"][0], start - HOUR_NS)
            got = {}
            for schema in (None, "raw", "normalized", "marketbus"):
                job = client.exports.create(ds.datastream_id, start, end, schema=schema)
                assert _wait_export(client, job.id).status.value == "succeeded"
                got[str(schema)] = _download(client, job.id)
            return got

    got = await asyncio.to_thread(flow)
    assert got["None"] == got["raw"]  # raw is the default
    for schema in ("raw", "normalized"):
        # TickSupply's CSV, text for text (same header, quoting, line ends, times, ids, sides), except
        # that the history keeps decimals as decimal(38, 18): their values are equal, but a trailing
        # zero of the vendor's text ("0.00380") comes back without it ("0.0038")
        assert got[schema].split("\n", 1)[0] == expected[schema].split("\n", 1)[0]
        assert '"' not in got[schema] and got[schema].endswith("\n") and "\r" not in got[schema]
        assert _canonical(got[schema]) == _canonical(expected[schema])
    # TickSupply's column spec reads both, and they say the same about every trade
    raw = parse_ticksupply_csv(got["raw"], BUILT_IN_COLUMNS[("trade", "raw")])
    norm = parse_ticksupply_csv(got["normalized"], BUILT_IN_COLUMNS[("trade", "normalized")])
    assert len(raw) == len(norm) == len(trades)
    for r, n, t in zip(raw, norm, trades):
        assert (
            r["exchange_ts_ns"],
            r["collection_ts_ns"],
            str(r["trade_id"]),
            r["price"],
            r["quantity"],
            r["side"],
        ) == (t.ts_event, t.ts_recv, t.trade_id, t.price, t.size, t.side)
        assert (n["exchange"], n["instrument"], n["exchange_time_ns"], n["collection_time_ns"]) == (
            "binance", "BTCUSDT", t.ts_event, t.ts_recv)
        assert (n["trade_id"], n["price"], n["quantity"], n["side"]) == (
            r["trade_id"],
            r["price"],
            r["quantity"],
            r["side"],
        )
    # marketbus's own layout stays available under its own name
    assert got["marketbus"].split("\n", 1)[0].replace('"', "").split(",")[:5] == [
        "id",
        "source",
        "venue",
        "symbol",
        "ts_event",
    ]


async def _setup(harness: Harness) -> tuple[Any, dict[str, list[Trade]], FeedIngestor]:
    await harness.start_writer()
    orch = await harness.start_orchestrator()
    trades = {sym: make_trades("ticksupply", "binance", sym, [NOW - 1800 * S + i * S for i in range(n)])
              for sym, n in (("BTCUSDT", 300), ("ETHUSDT", 40), ("BTCUSD_PERP", 20))}
    await publish(harness.nc, [t for ts in trades.values() for t in ts])
    await harness.wait_stored("trade.ticksupply.*.*", 360)
    ingestor = await ticksupply_reference(harness)
    return orch, trades, ingestor


async def test_official_client_whole_surface(harness: Harness) -> None:
    orch, trades, ingestor = await _setup(harness)
    feeds = FeedClient(harness.nc)

    def catalog(client: ticksupply.Client) -> dict[str, int]:
        assert [e.code for e in client.exchanges.list()] == ["binance"]
        page = client.exchanges.list_instruments("binance")
        assert page.total == 4 and not page.has_next  # SOLUSDT: in the vendor's catalog, not collected yet
        got = {i.symbol: (i.instrument_type, i.base, i.quote) for i in page.items}
        assert got == {
            s: ("perpetual" if k == "perpetual" else "spot", b, q) for s, (_d, k, b, q) in TS_INSTRUMENTS.items()
        }
        assert [i.symbol for i in client.exchanges.list_instruments("binance", base="ETH").items] == ["ETHUSDT"]
        assert [i.symbol for i in client.exchanges.list_instruments("binance", instrument_type="perpetual").items] == [
            "BTCUSD_PERP"]
        assert sorted(i.symbol for i in client.exchanges.list_instruments("binance", quote="USDT").items) == [
            "BTCUSDT", "ETHUSDT", "SOLUSDT"]
        assert [i.symbol for i in client.exchanges.list_instruments("binance", search="eth").items] == ["ETHUSDT"]
        first = client.exchanges.list_instruments("binance", limit=3)
        rest = client.exchanges.list_instruments("binance", limit=3, page_token=first.next_page_token)
        assert len(first.items) == 3 and len(rest.items) == 1 and not rest.has_next
        streams = client.datastreams.list()
        assert streams.total == 4 and {d.stream_type for d in streams.items} == {"trade"}  # no reference streams
        assert all(":" not in d.instrument for d in streams.items)
        ids = {d.instrument: d.datastream_id for d in streams.items}
        one = client.exchanges.list_datastreams("binance", "ETHUSDT", stream_type="trade")
        assert [d.datastream_id for d in one.items] == [ids["ETHUSDT"]]
        # not subscribed: nothing available (as TickSupply), whatever history holds (see schemas())
        assert client.availability.get(datastream_id=ids["ETHUSDT"]).ranges == []
        assert client.billing.get_summary().access_status.value == "ACTIVE"
        return ids

    def subscriptions(client: ticksupply.Client, ids: dict[str, int]) -> Any:
        assert list(client.subscriptions.list_all()) == []  # no feed yet: no subscription (not every datastream)
        key = str(uuid.uuid4())
        created = client.subscriptions.create(datastream_id=ids["BTCUSDT"], idempotency_key=key)
        assert created.status == SubscriptionStatus.ACTIVE and created.spans == []
        backdate_from_thread(loop, harness.nc, TS_INSTRUMENTS["BTCUSDT"][0], NOW - 2 * HOUR_NS)  # the trades are past
        # a retry with the same Idempotency-Key replays the reply; the key on another request is 409
        assert client.subscriptions.create(datastream_id=ids["BTCUSDT"], idempotency_key=key).id == created.id
        with pytest.raises(ConflictError):
            client.subscriptions.create(datastream_id=ids["ETHUSDT"], idempotency_key=key)
        with pytest.raises(ConflictError):
            client.subscriptions.create(datastream_id=ids["BTCUSDT"])
        sub = client.subscriptions.get(created.id)
        time.sleep(0.01)
        assert client.subscriptions.get(created.id).created_at == sub.created_at == created.created_at
        spans = client.subscriptions.list_spans(created.id)
        assert len(spans) == 1 and spans[0].ended_at is None
        assert [s.id for s in client.subscriptions.list_all()] == [created.id]
        assert client.subscriptions.list(limit=1).total == 1
        client.subscriptions.pause(created.id, idempotency_key=str(uuid.uuid4()))
        client.subscriptions.pause(created.id)  # idempotent
        assert client.subscriptions.get(created.id).status == SubscriptionStatus.PAUSED
        spans = client.subscriptions.list_spans(created.id)
        assert len(spans) == 1 and spans[0].ended_at is not None and spans[0].ended_at >= spans[0].started_at
        # an export needs an active or paused subscription: paused is fine
        paused_export = client.exports.create(ids["BTCUSDT"], NOW - HOUR_NS, NOW)
        client.subscriptions.resume(created.id)
        client.subscriptions.resume(created.id)
        spans = client.subscriptions.list_spans(created.id)
        assert client.subscriptions.get(created.id).status == SubscriptionStatus.ACTIVE
        assert len(spans) == 2 and spans[1].ended_at is None and spans[1].started_at >= spans[0].ended_at
        with pytest.raises(NotFoundError):
            client.subscriptions.get("sub_" + "0" * 32)
        # a datastream never collected: subscribing starts collecting it
        sol = client.subscriptions.create(datastream_id=ids["SOLUSDT"])
        assert sol.status == SubscriptionStatus.ACTIVE and sol.datastream.instrument == "SOLUSDT"
        assert len(list(client.subscriptions.list_all(limit=1))) == 2
        return created, paused_export

    def deleted(client: ticksupply.Client, ids: dict[str, int], sub_id: str) -> None:
        client.subscriptions.delete(sub_id, idempotency_key=str(uuid.uuid4()))
        client.subscriptions.delete(sub_id)  # idempotent
        assert client.subscriptions.get(sub_id).status == SubscriptionStatus.DELETED
        assert client.subscriptions.list_spans(sub_id)[-1].ended_at is not None
        with pytest.raises(PermissionDeniedError):
            client.exports.create(ids["BTCUSDT"], NOW - HOUR_NS, NOW)
        with pytest.raises(ConflictError):
            client.subscriptions.resume(sub_id)
        again = client.subscriptions.create(datastream_id=ids["BTCUSDT"])
        assert again.status == SubscriptionStatus.ACTIVE
        assert client.exports.create(ids["BTCUSDT"], NOW - HOUR_NS, NOW).status.value in ("queued", "running",
                                                                                          "succeeded")

    def schemas(client: ticksupply.Client, ids: dict[str, int]) -> None:
        listed = client.export_schemas.list()
        built_in = {(s.stream_category.value, s.name): s for s in listed if s.is_built_in}
        assert set(built_in) == set(BUILT_IN_COLUMNS)
        raw = client.export_schemas.get(built_in[("trade", "raw")].id)
        assert [c.output_column for c in raw.columns] == BUILT_IN_COLUMNS[("trade", "raw")]
        with pytest.raises(PermissionDeniedError):
            client.export_schemas.delete(raw.id)
        with pytest.raises(ConflictError):
            client.export_schemas.create("normalized", "trade", [{"output_column": "x", "meta": {
                "value": "collection_timestamp_ns"}}])
        with pytest.raises(InvalidArgumentError):
            client.export_schemas.create("bad", "trade", [{"output_column": "x"}])
        columns = [{"output_column": "recv_ms", "meta": {"value": "collection_timestamp_ns", "format": "ms"}},
                   {"output_column": "px", "data": {"binance": {"json": {"path": "price", "type": "decimal(18)"}}}}]
        custom = client.export_schemas.create("mine", "trade", columns, idempotency_key=str(uuid.uuid4()))
        assert (custom.version, custom.has_draft, custom.is_built_in) == (1, False, False)
        assert client.export_schemas.get(custom.id).columns[1].output_column == "px"
        columns.append({"output_column": "qty", "data": {"binance": {"json": {"path": "size", "type": "string"}}}})
        assert client.export_schemas.update(custom.id, columns).version == 2
        draft = client.export_schemas.create_draft(custom.id)
        assert draft.has_draft and len(draft.columns) == 3
        assert len(client.export_schemas.get_draft(custom.id).columns) == 3
        client.export_schemas.update_draft(custom.id, columns[:2])
        published = client.export_schemas.publish_draft(custom.id)
        assert (published.version, published.has_draft, len(published.columns)) == (3, False, 2)
        client.export_schemas.create_draft(custom.id, columns=columns)
        client.export_schemas.discard_draft(custom.id)
        with pytest.raises(NotFoundError):
            client.export_schemas.get_draft(custom.id)
        with pytest.raises(NotFoundError):
            client.export_schemas.publish_draft(custom.id)
        client.subscriptions.create(datastream_id=ids["ETHUSDT"])
        backdate_from_thread(loop, harness.nc, TS_INSTRUMENTS["ETHUSDT"][0], NOW - 2 * HOUR_NS)
        # subscribed: its span, with the 40 stored trades in it
        assert sum(r.rows_estimate for r in client.availability.get(datastream_id=ids["ETHUSDT"]).ranges) == 40
        by_id = _wait_export(client, client.exports.create(ids["ETHUSDT"], NOW - HOUR_NS, NOW, schema=custom.id).id)
        text = _download(client, by_id.id)
        rows = list(csv.reader(io.StringIO(text)))
        eth = trades["ETHUSDT"]
        assert rows[0] == ["recv_ms", "px"] and len(rows) == 41
        assert [(int(r[0]), Decimal(r[1])) for r in rows[1:]] == [(t.ts_recv // 1_000_000, t.price) for t in eth]
        inline = _wait_export(client, client.exports.create(ids["ETHUSDT"], NOW - HOUR_NS, NOW, schema={
            "columns": [{"output_column": "tid", "data": {"*": {"json": {"path": "trade_id", "type": "i64"}}}}]}).id)
        assert _download(client, inline.id).split("\n")[:2] == ["tid", eth[0].trade_id]
        client.export_schemas.delete(custom.id, idempotency_key=str(uuid.uuid4()))
        with pytest.raises(NotFoundError):
            client.export_schemas.get(custom.id)

    def exports(client: ticksupply.Client, ids: dict[str, int], paused_export: Any) -> None:
        job = _wait_export(client, paused_export.id)
        assert job.status.value == "succeeded" and job.datastream_id == ids["BTCUSDT"]
        assert job.start_time == NOW - HOUR_NS and job.end_time == NOW and job.format == "csv"
        assert len(_download(client, job.id).strip().split("\n")) == 301
        client.exports.cancel(job.id, idempotency_key=str(uuid.uuid4()))  # finished: a no-op
        assert client.exports.get(job.id).status.value == "succeeded"
        listed = [j.id for j in client.exports.list_all(limit=2)]
        assert job.id in listed and len(listed) == len(set(listed)) >= 4
        assert client.exports.list(limit=1).total == len(listed)
        with pytest.raises(InvalidArgumentError):
            client.exports.create(ids["BTCUSDT"], NOW, NOW - S)
        with pytest.raises(NotFoundError):
            client.exports.get("exp_" + "0" * 32)
        client.exports.delete(job.id, idempotency_key=str(uuid.uuid4()))
        assert client.exports.get(job.id).status.value == "deleted"

    loop = asyncio.get_running_loop()

    def run() -> None:
        with _client(orch) as client:
            ids = catalog(client)
            sub, paused_export = subscriptions(client, ids)
            deleted(client, ids, sub.id)
            schemas(client, ids)
            exports(client, ids, paused_export)

    await asyncio.to_thread(run)
    await _async_client_surface(orch, harness.nc)
    # the subscriptions were the feeds: the BTCUSDT feed went through active, paused, active, removed, active
    feed = await feeds.get("ticksupply", TS_INSTRUMENTS["BTCUSDT"][0])
    assert feed.state == "active" and len(feed.periods) == 3 and feed.periods[1].end_ns is not None
    assert (await feeds.get("ticksupply", TS_INSTRUMENTS["ETHUSDT"][0])).state == "active"
    # and the ingestor started and stopped collecting accordingly
    btc, eth = TS_INSTRUMENTS["BTCUSDT"][0], TS_INSTRUMENTS["ETHUSDT"][0]

    async def applied() -> bool:
        return sorted(ingestor.collecting) == [btc, eth, TS_INSTRUMENTS["SOLUSDT"][0]]

    await wait_for(applied, timeout=10, what="the ingestor collects BTCUSDT, ETHUSDT and SOLUSDT")
    assert [op for op, i in ingestor.hooks if i == btc] == ["subscribe", "unsubscribe"] * 2 + ["subscribe"]


async def _async_client_surface(orch: Any, nc: Any) -> None:
    """The official AsyncClient: the same resources and methods, on the same server."""
    async with ticksupply.AsyncClient(api_key=API_KEY, base_url=f"{orch.api_url}/v1", max_retries=0) as client:
        assert [e.code for e in await client.exchanges.list()] == ["binance"]
        perp = (await client.exchanges.list_instruments("binance", instrument_type="perpetual")).items
        assert [i.symbol for i in perp] == ["BTCUSD_PERP"]
        ds = (await client.exchanges.list_datastreams("binance", "BTCUSD_PERP")).items[0]
        assert (await client.datastreams.list(instrument="BTCUSD_PERP")).items == [ds]
        assert (await client.availability.get(ds.datastream_id)).ranges == []  # not subscribed yet
        assert (await client.billing.get_summary()).plan_code
        sub = await client.subscriptions.create(datastream_id=ds.datastream_id, idempotency_key=str(uuid.uuid4()))
        await backdate_feed(nc, TS_INSTRUMENTS["BTCUSD_PERP"][0], NOW - 2 * HOUR_NS)
        assert sum(r.rows_estimate for r in (await client.availability.get(ds.datastream_id)).ranges) == 20
        assert sub.id in [s.id async for s in client.subscriptions.list_all()]
        # BTCUSDT's deleted subscription and the new one after it, SOLUSDT, ETHUSDT, BTCUSD_PERP
        assert (await client.subscriptions.list()).total == 5
        await client.subscriptions.pause(sub.id)
        assert (await client.subscriptions.get(sub.id)).status == SubscriptionStatus.PAUSED
        await client.subscriptions.resume(sub.id)
        assert len(await client.subscriptions.list_spans(sub.id)) == 2
        job = await client.exports.create(ds.datastream_id, NOW - HOUR_NS, NOW, schema="normalized")
        assert job.id in [j.id async for j in client.exports.list_all()]
        assert (await client.exports.list(limit=1)).total >= 1
        while (job := await client.exports.get(job.id)).status.value in ("queued", "running"):
            await asyncio.sleep(0.05)
        dl = await client.exports.get_download(job.id)
        async with httpx.AsyncClient() as plain:
            text = gzip.decompress((await plain.get(dl.artifacts[0].url)).content).decode()
        assert len(parse_ticksupply_csv(text, BUILT_IN_COLUMNS[("trade", "normalized")])) == 20
        await client.exports.cancel(job.id)
        await client.exports.delete(job.id)
        await client.subscriptions.delete(sub.id)
        with pytest.raises(PermissionDeniedError):
            await client.exports.create(ds.datastream_id, NOW - HOUR_NS, NOW)
        schemas = await client.export_schemas.list()
        mine = await client.export_schemas.create("async", "trade", [
            {"output_column": "t", "meta": {"value": "collection_timestamp_ns", "format": "iso8601"}}])
        assert len(await client.export_schemas.list()) == len(schemas) + 1
        assert (await client.export_schemas.get(mine.id)).version == 1
        assert (await client.export_schemas.update(mine.id, mine.columns)).version == 2
        await client.export_schemas.create_draft(mine.id)
        await client.export_schemas.update_draft(mine.id, mine.columns)
        assert (await client.export_schemas.get_draft(mine.id)).has_draft
        assert (await client.export_schemas.publish_draft(mine.id)).version == 3
        await client.export_schemas.create_draft(mine.id)
        await client.export_schemas.discard_draft(mine.id)
        await client.export_schemas.delete(mine.id)
        with pytest.raises(NotFoundError):
            await client.export_schemas.get(mine.id)


async def test_one_request_id_per_response(harness: Harness) -> None:
    await harness.start_writer()
    orch = await harness.start_orchestrator(requests_per_s=2.0, burst=2)
    async with httpx.AsyncClient(base_url=orch.api_url, timeout=10) as client:
        responses = [await client.get("/v1/exchanges"),  # 401
                     await client.get("/v1/subscriptions/sub_nope", headers={"X-Api-Key": API_KEY}),  # 404
                     await client.get("/v1/nowhere", headers={"X-Api-Key": API_KEY})]
        for _ in range(5):
            responses.append(await client.get("/v1/exchanges", headers={"X-Api-Key": API_KEY}))
    statuses = {r.status_code for r in responses}
    assert {401, 404, 429} <= statuses, statuses
    for r in responses:
        ids = r.headers.get_list("x-request-id")
        assert len(ids) == 1 and re.fullmatch(r"req_[0-9a-f]{32}", ids[0]), (r.status_code, ids)

