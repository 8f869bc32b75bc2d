"""What TickSupply does beyond the column layouts of trades, checked against the TickSupply
sandbox (the reference) through HTTP and the official ``ticksupply`` client:

- a depth datastream (marketbus quotes) exports the sandbox's built-in ``book_update`` CSV (a bid
  row then an ask row per update) for ``raw`` and ``normalized``;
- an export of a datastream that never had a subscription is refused as TickSupply refuses it
  (403, the same error body);
- an export covers only the subscription's spans (the periods the feed collected), the open one up
  to the moment the export is created; nothing collected in the range -> the job fails, as there;
- a subscription created after a delete is a new subscription: a new id and ``created_at``, one new
  span; the deleted one stays listed with its own spans, and the old data is not exportable again.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import time
import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest
import ticksupply
from ticksupply import PermissionDeniedError
from ticksupply.models import SubscriptionStatus

from marketbus.contracts import subjects
from marketbus.contracts.ids import event_id
from marketbus.contracts.market import Quote
from marketbus.contracts.reference import Instrument
from marketbus.runtime.tsapi_schemas import BUILT_IN_COLUMNS
from services.sandbox.common.base import SandboxRunner
from services.sandbox.registry import load_spec

from .conftest import (
    API_KEY,
    T0,
    Harness,
    S,
    backdate_feed,
    make_trades,
    publish,
    set_periods,
    ticksupply_reference,
)
from .feed_ingestor import start_feed_ingestor

NOW = time.time_ns() // S * S
HOUR_NS = 3600 * S
SANDBOX_KEY = "ts_sandbox_key"
DEPTH_DS = 102  # the sandbox's binance BTCUSDT depth datastream


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


async def _wait(http: httpx.AsyncClient, job: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.05)
        job = (await http.get(f"/v1/exports/{job['id']}")).json()
    return job


async def _export_csv(http: httpx.AsyncClient, body: dict[str, Any]) -> str:
    r = await http.post("/v1/exports", json=body)
    assert r.status_code == 201, r.text
    job = await _wait(http, r.json())
    assert job["status"] == "succeeded", job
    arts = (await http.get(f"/v1/exports/{job['id']}/download")).json()["artifacts"]
    assert len(arts) == 1
    async with httpx.AsyncClient() as plain:
        return gzip.decompress((await plain.get(arts[0]["url"])).content).decode()


async def _sandbox_depth(start: int, end: int) -> tuple[dict[str, str], dict[str, Any]]:
    """The sandbox's raw and normalized depth CSV over [start, end), and its refusal of an export
    of a datastream never subscribed."""
    async with SandboxRunner(load_spec("ticksupply"), port=0, export_queued_s=0.05, export_running_s=0.1,
                             requests_per_s=0) as sb:
        async with httpx.AsyncClient(base_url=sb.url, headers={"X-Api-Key": SANDBOX_KEY}, timeout=10) as http:
            never = await http.post("/v1/exports", json={"datastream_id": 101, "start_time": str(start),
                                                         "end_time": str(end)})
            refusal = {"status": never.status_code, **never.json()}
            r = await http.post("/_sandbox/ticksupply/backfill", json={
                "api_key": SANDBOX_KEY, "datastream_id": DEPTH_DS, "start_ns": start - HOUR_NS, "end_ns": end + S})
            assert r.status_code == 200, r.text
            out = {schema: await _export_csv(http, {"datastream_id": DEPTH_DS, "start_time": str(start),
                                                    "end_time": str(end), "schema": schema})
                   for schema in ("raw", "normalized")}
    return out, refusal


def _quotes_of(raw_csv: str) -> list[Quote]:
    """The sandbox's depth rows as the TickSupply ingestor publishes them: one quote per update."""
    by_update: dict[str, dict[str, list[str]]] = {}
    for row in _rows(raw_csv)[1:]:
        by_update.setdefault(row[2], {})[row[3]] = row
    out = []
    for update_id, sides in by_update.items():
        bid, ask = sides["bid"], sides["ask"]
        out.append(Quote(id=event_id("ticksupply", "quote", DEPTH_DS, update_id), source="ticksupply", venue="binance",
                         symbol="BTCUSDT", ts_event=int(bid[0]), ts_recv=int(bid[1]), bid_price=Decimal(bid[4]),
                         bid_size=Decimal(bid[5]), ask_price=Decimal(ask[4]), ask_size=Decimal(ask[5])))
    return out


async def _depth_reference(harness: Harness) -> None:
    """BTCUSDT with its trade (101) and depth (102) datastreams, and the ingestor's feed control."""
    await publish(harness.nc, [Instrument(
        id=event_id("ticksupply", "instrument", "binance", "BTCUSDT"), source="ticksupply", venue="binance",
        symbol=subjects.normalize_symbol("BTCUSDT"), ts_event=T0, ts_recv=T0, instrument_type="spot",
        vendor_symbol="BTCUSDT", base="BTC", quote="USDT",
        attributes={"datastream.trade.json": "101", "datastream.depth.json": str(DEPTH_DS)})])
    await harness.wait_stored("instrument.ticksupply.*.*", 1)
    harness.services.append(await start_feed_ingestor(harness.url, {
        "101": ("binance", "BTCUSDT", "trade"), str(DEPTH_DS): ("binance", "BTCUSDT", "quote")}))


async def test_depth_raw_and_normalized_are_the_sandbox_csv(harness: Harness) -> None:
    start = NOW // HOUR_NS * HOUR_NS - 2 * HOUR_NS + 60 * S  # inside one hour: one artifact on both sides
    end = start + 60 * S
    expected, _ = await _sandbox_depth(start, end)
    quotes = _quotes_of(expected["raw"])
    assert len(quotes) >= 10
    await harness.start_writer()
    orch = await harness.start_orchestrator()
    await publish(harness.nc, quotes)
    await harness.wait_stored("quote.ticksupply.*.*", len(quotes))
    await _depth_reference(harness)
    async with httpx.AsyncClient(base_url=orch.api_url, headers={"X-Api-Key": API_KEY}, timeout=30) as http:
        ds = (await http.get("/v1/datastreams", params={"instrument": "BTCUSDT", "stream_type": "depth"})).json()
        ds_id = ds["items"][0]["datastream_id"]
        assert (await http.post("/v1/subscriptions", json={"datastream_id": ds_id})).status_code == 201
        await backdate_feed(harness.nc, str(DEPTH_DS), start - HOUR_NS)
        got = {str(schema): await _export_csv(http, {"datastream_id": ds_id, "start_time": str(start),
                                                     "end_time": str(end), **({"schema": schema} if schema else {})})
               for schema in (None, "raw", "normalized")}
    assert got["None"] == got["raw"]  # raw is the default for depth too
    for schema, update_col in (("raw", 2), ("normalized", 4)):
        mine, theirs = _rows(got[schema]), _rows(expected[schema])
        assert mine[0] == theirs[0] == BUILT_IN_COLUMNS[("book_update", schema)]
        assert '"' not in got[schema] and got[schema].endswith("\n") and "\r" not in got[schema]
        assert len(mine) == len(theirs) == 2 * len(quotes) + 1
        decimals = [i for i, name in enumerate(mine[0]) if name in ("price", "quantity")]

        def canonical(row: list[str], decimals: list[int] = decimals, skip: int = update_col) -> list[Any]:
            return [Decimal(v) if i in decimals else v for i, v in enumerate(row) if i != skip]

        # every column as the sandbox writes it (decimals by value: history keeps decimal(38, 18))...
        assert [canonical(r) for r in mine[1:]] == [canonical(r) for r in theirs[1:]]
        # ...and update_id an i64, the same on an update's bid and ask rows, distinct per update
        ids = [r[update_col] for r in mine[1:]]
        assert all(str(int(i)) == i and int(i) >= 0 for i in ids)
        assert ids[0::2] == ids[1::2] and len(set(ids)) == len(quotes)
        assert [r[update_col + 1] for r in mine[1:3]] == ["bid", "ask"]


async def test_export_needs_a_subscription_and_covers_only_its_spans(harness: Harness) -> None:
    base = NOW // HOUR_NS * HOUR_NS - HOUR_NS + 60 * S  # [base, base+400 s) inside one hour: one artifact
    start, end = base, base + 400 * S
    _, sandbox_refusal = await _sandbox_depth(start, end)
    await harness.start_writer()
    orch = await harness.start_orchestrator()
    trades = make_trades("ticksupply", "binance", "BTCUSDT", [base + i * S for i in range(600)])
    await publish(harness.nc, trades)
    await harness.wait_stored("trade.ticksupply.*.*", len(trades))
    await ticksupply_reference(harness)
    async with httpx.AsyncClient(base_url=orch.api_url, headers={"X-Api-Key": API_KEY}, timeout=30) as http:
        ds_id = (await http.get("/v1/datastreams", params={"instrument": "BTCUSDT"})).json()["items"][0][
            "datastream_id"
        ]
        body = {"datastream_id": ds_id, "start_time": str(start), "end_time": str(end)}
        # never subscribed: refused as the sandbox refuses it
        never = await http.post("/v1/exports", json=body)
        assert {"status": never.status_code, **never.json()} == {
            **sandbox_refusal, "error": {**sandbox_refusal["error"], "details": {"datastream_id": ds_id}}}
        assert never.json()["error"]["code"] == "permission_denied" and never.status_code == 403
        # subscribed; the feed collected during [base+100 s, base+200 s) and from base+300 s on
        r = await http.post("/v1/subscriptions", json={"datastream_id": ds_id})
        assert r.status_code == 201
        first = r.json()
        await set_periods(harness.nc, "101", [(base + 100 * S, base + 200 * S), (base + 300 * S, None)])
        spans = (await http.get(f"/v1/subscriptions/{first['id']}/spans")).json()
        assert [s["ended_at"] is None for s in spans] == [False, True]
        text = await _export_csv(http, body)
        got = [int(r[0]) for r in _rows(text)[1:]]
        want = [t.ts_event for t in trades if base + 100 * S <= t.ts_event < base + 200 * S
                or base + 300 * S <= t.ts_event < end]
        assert got == want and len(got) == 200
        # a range outside every span: nothing collected, the job fails as TickSupply's does
        r = await http.post("/v1/exports", json=body | {"start_time": str(base), "end_time": str(base + 100 * S)})
        assert r.status_code == 201
        job = await _wait(http, r.json())
        assert (
            job["status"] == "failed"
            and job["reason"] == "no data collected for this datastream in the requested time range"
        )
        # deleted: 403 until subscribed again
        assert (await http.delete(f"/v1/subscriptions/{first['id']}")).status_code == 204
        gone = await http.post("/v1/exports", json=body)
        assert gone.status_code == 403 and gone.json()["error"]["code"] == "permission_denied"
        assert "deleted" in gone.json()["error"]["message"]
        before = time.time_ns()
        r = await http.post("/v1/subscriptions", json={"datastream_id": ds_id})
        assert r.status_code == 201, r.text
        second = r.json()
        # a new subscription: new id, created now, one new span; the deleted one keeps its own
        assert second["id"] != first["id"] and second["created_at"] > first["created_at"] and second["spans"] == []
        new_spans = (await http.get(f"/v1/subscriptions/{second['id']}/spans")).json()
        assert len(new_spans) == 1 and new_spans[0]["ended_at"] is None
        old = (await http.get(f"/v1/subscriptions/{first['id']}")).json()
        assert old["status"] == "deleted" and len(old["spans"]) == 2 and old["spans"][1]["ended_at"] is not None
        listed = (await http.get("/v1/subscriptions")).json()
        assert [s["id"] for s in listed["items"]] == [second["id"], first["id"]]  # newest first
        assert (await http.get(f"/v1/subscriptions/{second['id']}")).json()["status"] == "active"
        # the old spans are not this subscription's: the earlier data is not exportable again
        r = await http.post("/v1/exports", json=body)
        assert r.status_code == 201
        job = await _wait(http, r.json())
        assert job["status"] == "failed", job
        assert new_spans[0]["started_at"] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(before // S))


async def test_official_client_sees_the_same_subscription_rules(harness: Harness) -> None:
    base = NOW - 1800 * S
    await harness.start_writer()
    orch = await harness.start_orchestrator()
    trades = make_trades("ticksupply", "binance", "ETHUSDT", [base + i * S for i in range(100)])
    await publish(harness.nc, trades)
    await harness.wait_stored("trade.ticksupply.*.*", len(trades))
    await ticksupply_reference(harness)
    loop = asyncio.get_running_loop()

    def flow() -> None:
        with ticksupply.Client(api_key=API_KEY, base_url=f"{orch.api_url}/v1", max_retries=0, timeout=30) as client:
            ds = client.datastreams.list(instrument="ETHUSDT").items[0]
            with pytest.raises(PermissionDeniedError):  # never subscribed
                client.exports.create(ds.datastream_id, base, base + 100 * S)
            sub = client.subscriptions.create(datastream_id=ds.datastream_id, idempotency_key=str(uuid.uuid4()))
            # a collected past, and the period the create opened still open: an active feed whose
            # data flows always has one (without it the ingestor's flow refresh would open one)
            opened = time.time_ns() // 1000 * 1000  # the API's times are in microseconds
            asyncio.run_coroutine_threadsafe(
                set_periods(harness.nc, "102", [(base + 20 * S, base + 50 * S), (opened, None)]), loop
            ).result(timeout=10)
            job = client.exports.create(ds.datastream_id, base, base + 100 * S)
            deadline = time.monotonic() + 30
            while (job := client.exports.get(job.id)).status.value in ("queued", "running"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert job.status.value == "succeeded", job.reason
            dl = client.exports.get_download(job.id)
            rows = _rows(gzip.decompress(httpx.get(dl.artifacts[0].url).content).decode())
            assert [int(r[0]) for r in rows[1:]] == [base + i * S for i in range(20, 50)]
            client.subscriptions.delete(sub.id)
            with pytest.raises(PermissionDeniedError):
                client.exports.create(ds.datastream_id, base, base + 100 * S)
            again = client.subscriptions.create(datastream_id=ds.datastream_id)
            assert again.id != sub.id and again.status == SubscriptionStatus.ACTIVE and again.spans == []
            assert len(client.subscriptions.list_spans(again.id)) == 1
            # the deleted subscription keeps its own spans (the open one closed by the delete), none of the new one's
            old_spans = client.subscriptions.list_spans(sub.id)
            assert [round(s.started_at.timestamp() * 1e6) for s in old_spans] == [
                (base + 20 * S) // 1000,
                opened // 1000,
            ]
            assert all(s.ended_at is not None and s.ended_at <= again.created_at for s in old_spans)
            assert client.subscriptions.list_spans(again.id)[0].started_at >= again.created_at
            assert client.subscriptions.get(sub.id).status == SubscriptionStatus.DELETED
            assert {s.id for s in client.subscriptions.list_all()} == {sub.id, again.id}

    await asyncio.to_thread(flow)


async def test_custom_schema_derive_unfold_and_transform_are_applied(harness: Harness) -> None:
    """As the vendor's docs specify: ``derive`` (tagged_concat) merges the bid and ask levels of a
    book into one tagged array, ``unfold`` makes one row per element of it, ``transform`` maps an
    extracted value with an SQL expression over ``{v}``; through HTTP and the official client."""
    from marketbus.contracts.market import BookLevel, BookSnapshot

    base = NOW - 1800 * S
    await harness.start_writer()
    orch = await harness.start_orchestrator()
    books = [BookSnapshot(id=event_id("ticksupply", "book", "BTCUSDT", i), source="ticksupply", venue="binance",
                          symbol="BTCUSDT", ts_event=base + i * S, ts_recv=base + i * S + 1000,
                          bids=[BookLevel(Decimal(f"100.{i}"), Decimal("1.5")), BookLevel(Decimal("99"), Decimal("2"))],
                          asks=[BookLevel(Decimal(f"101.{i}"), Decimal("0.25"))]) for i in range(5)]
    trades = make_trades("ticksupply", "binance", "BTCUSDT", [base + i * S for i in range(5)])
    await publish(harness.nc, [*books, *trades])
    await harness.wait_stored("book.ticksupply.*.*", len(books))
    await harness.wait_stored("trade.ticksupply.*.*", len(trades))
    await publish(harness.nc, [Instrument(
        id=event_id("ticksupply", "instrument", "binance", "BTCUSDT"), source="ticksupply", venue="binance",
        symbol="BTCUSDT", ts_event=T0, ts_recv=T0, instrument_type="spot", vendor_symbol="BTCUSDT", base="BTC",
        quote="USDT", attributes={"datastream.trade.json": "101", "datastream.book.json": "105"})])
    await harness.wait_stored("instrument.ticksupply.*.*", 1)
    harness.services.append(await start_feed_ingestor(harness.url, {
        "101": ("binance", "BTCUSDT", "trade"), "105": ("binance", "BTCUSDT", "book")}))
    book_spec = {
        "derive": {"binance": [{"field": "levels", "op": "tagged_concat", "tag_field": "side", "value_field": "level",
                                "arrays": [{"path": "bids", "tag": "bid"}, {"path": "asks", "tag": "ask"}]}]},
        "unfold": {"binance": {"path": "levels"}},
        "columns": [
            {"output_column": "t", "meta": {"value": "collection_timestamp_ns", "format": "ns"}},
            {"output_column": "side", "data": {"binance": {"json": {"path": "levels.side", "type": "string"}}}},
            {"output_column": "price", "data": {"binance": {"json": {"path": "levels.level.0", "type": "decimal(8)"}}}},
            {"output_column": "cents", "data": {"binance": {"json": {"path": "levels.level.0", "type": "decimal(8)"},
                                                            "transform": "CAST({v} * 100 AS BIGINT)"}}},
            {"output_column": "qty", "data": {"*": {"json": {"path": "levels.level.1", "type": "f64"}}}}]}
    async with httpx.AsyncClient(base_url=orch.api_url, headers={"X-Api-Key": API_KEY}, timeout=30) as http:
        streams = (await http.get("/v1/datastreams", params={"instrument": "BTCUSDT"})).json()["items"]
        ids = {s["stream_type"]: s["datastream_id"] for s in streams}
        for kind in ("book", "trade"):
            assert (await http.post("/v1/subscriptions", json={"datastream_id": ids[kind]})).status_code == 201
        await backdate_feed(harness.nc, "105", base - HOUR_NS)
        await backdate_feed(harness.nc, "101", base - HOUR_NS)
        # a transform that is not SQL, or a derive rule of an unknown op, is refused when stored
        bad = await http.post("/v1/export-schemas", json={"name": "bad", "stream_category": "orderbook", "columns": [
            {"output_column": "x", "data": {"*": {"json": {"path": "p", "type": "string"}, "transform": "{v} +* )"}}}]})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_argument"
        bad = await http.post("/v1/export-schemas", json={"name": "bad", "stream_category": "orderbook", **book_spec,
                                                          "derive": {"binance": [{"field": "x", "op": "zip"}]}})
        assert bad.status_code == 400
        created = await http.post("/v1/export-schemas", json={"name": "levels", "stream_category": "orderbook",
                                                              **book_spec})
        assert created.status_code == 201, created.text
        assert created.json()["derive"] == book_spec["derive"] and created.json()["unfold"] == book_spec["unfold"]
        text = await _export_csv(http, {"datastream_id": ids["book"], "start_time": str(base),
                                        "end_time": str(base + 10 * S), "schema": created.json()["id"]})
    rows = _rows(text)
    assert rows[0] == ["t", "side", "price", "cents", "qty"]
    want = []
    for b in books:
        for side, level in [("bid", lv) for lv in b.bids] + [("ask", lv) for lv in b.asks]:
            want.append([str(b.ts_recv), side, Decimal(level.price), int(level.price * 100), float(level.size)])
    assert [[r[0], r[1], Decimal(r[2]), int(r[3]), float(r[4])] for r in rows[1:]] == want
    assert len(rows) == 1 + 3 * len(books)

    def client_flow() -> list[list[str]]:
        with ticksupply.Client(api_key=API_KEY, base_url=f"{orch.api_url}/v1", max_retries=0, timeout=30) as client:
            # the same book schema made with the official client: the same rows
            mine = client.export_schemas.create("levels2", "orderbook", book_spec["columns"],
                                                unfold=book_spec["unfold"], derive=book_spec["derive"])
            assert mine.unfold is not None and mine.derive is not None
            job = client.exports.create(ids["book"], base, base + 10 * S, schema=mine.id)
            deadline = time.monotonic() + 30
            while (job := client.exports.get(job.id)).status.value in ("queued", "running"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert job.status.value == "succeeded", job.reason
            dl = client.exports.get_download(job.id)
            assert gzip.decompress(httpx.get(dl.artifacts[0].url).content).decode() == text
            job = client.exports.create(ids["trade"], base, base + 10 * S, schema={"columns": [
                {"output_column": "tid", "data": {"binance": {"json": {"path": "trade_id", "type": "i64"},
                                                              "transform": "{v} + 1000"}}},
                {"output_column": "px", "data": {"binance": {"json": {"path": "price", "type": "decimal(2)"},
                                                             "transform": "round({v})"}}},
                {"output_column": "side", "data": {"binance": {"json": {"path": "side", "type": "string"},
                                                               "transform": "upper({v})"}}}]})
            deadline = time.monotonic() + 30
            while (job := client.exports.get(job.id)).status.value in ("queued", "running"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert job.status.value == "succeeded", job.reason
            dl = client.exports.get_download(job.id)
            return _rows(gzip.decompress(httpx.get(dl.artifacts[0].url).content).decode())

    got = await asyncio.to_thread(client_flow)
    assert got[0] == ["tid", "px", "side"]
    assert [[int(r[0]), Decimal(r[1]), r[2]] for r in got[1:]] == [
        [
            int(t.trade_id or 0) + 1000,
            Decimal(t.price).quantize(Decimal("0.01")).to_integral_value(rounding="ROUND_HALF_UP"),
            t.side.upper(),
        ]
        for t in trades
    ]


async def test_book_deltas_export_the_book_update_layouts(harness: Harness) -> None:
    """Book deltas have TickSupply's ``book_update`` columns too: one row per changed level, the
    delta's sequence as ``update_id``, parsed by TickSupply's column spec."""
    from marketbus.contracts.market import BookChange, BookDelta

    base = NOW - 1800 * S
    await harness.start_writer()
    orch = await harness.start_orchestrator()
    deltas = [BookDelta(id=event_id("ticksupply", "book_delta", "BTCUSDT", i), source="ticksupply", venue="binance",
                        symbol="BTCUSDT", ts_event=base + i * S, ts_recv=base + i * S + 500, sequence=10 + i,
                        prev_sequence=9 + i, changes=[BookChange("bid", Decimal(f"100.{i}5"), Decimal("1.25")),
                                                      BookChange("ask", Decimal("101"), Decimal("0"))])
              for i in range(4)]
    await publish(harness.nc, deltas)
    await harness.wait_stored("book_delta.ticksupply.*.*", len(deltas))
    await publish(harness.nc, [Instrument(
        id=event_id("ticksupply", "instrument", "binance", "BTCUSDT"), source="ticksupply", venue="binance",
        symbol="BTCUSDT", ts_event=T0, ts_recv=T0, instrument_type="spot", vendor_symbol="BTCUSDT", base="BTC",
        quote="USDT", attributes={"datastream.book_delta.json": "106"})])
    await harness.wait_stored("instrument.ticksupply.*.*", 1)
    harness.services.append(await start_feed_ingestor(harness.url, {"106": ("binance", "BTCUSDT", "book_delta")}))
    async with httpx.AsyncClient(base_url=orch.api_url, headers={"X-Api-Key": API_KEY}, timeout=30) as http:
        ds_id = (await http.get("/v1/datastreams", params={"stream_type": "book_delta"})).json()["items"][0][
            "datastream_id"
        ]
        assert (await http.post("/v1/subscriptions", json={"datastream_id": ds_id})).status_code == 201
        await backdate_feed(harness.nc, "106", base - HOUR_NS)
        body = {"datastream_id": ds_id, "start_time": str(base), "end_time": str(base + 10 * S)}
        raw, norm = await _export_csv(http, body), await _export_csv(http, body | {"schema": "normalized"})
    raw_rows, norm_rows = _rows(raw), _rows(norm)
    assert raw_rows[0] == BUILT_IN_COLUMNS[("book_update", "raw")]
    assert norm_rows[0] == BUILT_IN_COLUMNS[("book_update", "normalized")]
    want = [[str(d.ts_event), str(d.ts_recv), str(d.sequence), c.side, Decimal(c.price), Decimal(c.size)]
            for d in deltas for c in d.changes]
    assert [[*r[:4], Decimal(r[4]), Decimal(r[5])] for r in raw_rows[1:]] == want
    assert [r[:2] for r in norm_rows[1:]] == [["binance", "BTCUSDT"]] * len(want)
    assert [[r[4], r[5], Decimal(r[6]), Decimal(r[7])] for r in norm_rows[1:]] == [w[2:] for w in want]


async def _sandbox_catalog_and_availability(lo: int, hi: int) -> dict[str, Any]:
    """The sandbox's BTCUSDT datastreams, and its availability of the trade datastream (101) never
    subscribed, subscribed with one span ``[lo, hi)`` (paused since) and deleted."""
    async with SandboxRunner(load_spec("ticksupply"), port=0, requests_per_s=0) as sb:
        async with httpx.AsyncClient(base_url=sb.url, headers={"X-Api-Key": SANDBOX_KEY}, timeout=10) as http:
            # the JSON ones: marketbus collects JSON datastreams only (the sandbox also offers SBE)
            listed = (await http.get("/v1/datastreams", params={"instrument": "BTCUSDT", "wire_format": "json"})
                      ).json()["items"]
            avail = {"never": (await http.get("/v1/availability", params={"datastream_id": 101})).json()}
            r = await http.post("/_sandbox/ticksupply/backfill", json={"api_key": SANDBOX_KEY, "datastream_id": 101,
                                                                        "start_ns": lo, "end_ns": hi})
            assert r.status_code == 200, r.text
            avail["subscribed"] = (await http.get("/v1/availability", params={"datastream_id": 101})).json()
            assert (await http.delete(f"/v1/subscriptions/{r.json()['id']}")).status_code == 204
            avail["deleted"] = (await http.get("/v1/availability", params={"datastream_id": 101})).json()
    return {"listed": listed, **avail}


async def test_catalog_and_availability_say_what_the_sandbox_says(harness: Harness) -> None:
    """The same instrument lists the same datastreams (a quote stream is TickSupply's ``depth``),
    and availability is clipped to the live subscription's spans as the sandbox clips it: nothing
    before a subscribe or after a delete, the spans (the open one up to now) with the rows stored
    in them while subscribed, whatever else history holds."""
    base = NOW - HOUR_NS
    spans: list[tuple[int, int | None]] = [(base + 100 * S, base + 200 * S), (base + 300 * S, None)]
    ref = await _sandbox_catalog_and_availability(base + 100 * S, base + 200 * S)
    await harness.start_writer()
    orch = await harness.start_orchestrator()
    trades = make_trades("ticksupply", "binance", "BTCUSDT", [base + i * S for i in range(600)])
    quotes = [Quote(id=event_id("ticksupply", "quote", DEPTH_DS, i), source="ticksupply", venue="binance",
                    symbol="BTCUSDT", ts_event=base + i * S, ts_recv=base + i * S, bid_price=Decimal(100),
                    bid_size=Decimal(1), ask_price=Decimal(101), ask_size=Decimal(1)) for i in range(10)]
    await publish(harness.nc, [*trades, *quotes])
    await harness.wait_stored("trade.ticksupply.*.*", len(trades))
    await harness.wait_stored("quote.ticksupply.*.*", len(quotes))
    await _depth_reference(harness)

    def shape(ds: dict[str, Any]) -> tuple[str, str, str, str]:
        return ds["exchange"], ds["instrument"], ds["stream_type"], ds["wire_format"]

    async with httpx.AsyncClient(base_url=orch.api_url, headers={"X-Api-Key": API_KEY}, timeout=30) as http:
        listed = (await http.get("/v1/datastreams", params={"instrument": "BTCUSDT"})).json()["items"]
        assert sorted(map(shape, listed)) == sorted(map(shape, ref["listed"])) == [
            ("binance", "BTCUSDT", "depth", "json"), ("binance", "BTCUSDT", "trade", "json")]
        # the stream_type filter takes TickSupply's name (and marketbus's kind)
        for name in ("depth", "quote"):
            found = (await http.get("/v1/datastreams", params={"instrument": "BTCUSDT", "stream_type": name})).json()
            assert [(d["stream_type"], d["kind"]) for d in found["items"]] == [("depth", "quote")]
        ds_id = next(d["datastream_id"] for d in listed if d["stream_type"] == "trade")

        async def availability() -> list[dict[str, Any]]:
            r = await http.get("/v1/availability", params={"datastream_id": ds_id})
            assert r.status_code == 200, r.text
            assert r.json()["datastream"]["datastream_id"] == ds_id
            ranges: list[dict[str, Any]] = r.json()["ranges"]
            return ranges

        assert await availability() == ref["never"]["ranges"] == []  # 600 trades stored, never subscribed
        r = await http.post("/v1/subscriptions", json={"datastream_id": ds_id})
        assert r.status_code == 201
        await set_periods(harness.nc, "101", spans)
        before = time.time_ns()
        got = await availability()
        assert [(g["from"], g["rows_estimate"]) for g in got] == [(base + 100 * S, 100), (base + 300 * S, 300)]
        assert got[0]["to"] == base + 200 * S and got[1]["to"] >= before  # the open span: up to now
        # the sandbox's ranges are its span the same way, with the same fields
        [theirs] = ref["subscribed"]["ranges"]
        assert (theirs["from"], theirs["to"]) == (got[0]["from"], got[0]["to"]) and set(theirs) == set(got[0])
        assert (await http.delete(f"/v1/subscriptions/{r.json()['id']}")).status_code == 204
        assert await availability() == ref["deleted"]["ranges"] == []


async def test_selector_exports_read_the_whole_history_unclipped(harness: Harness) -> None:
    """A ``selector`` export (the marketbus extension) is an export of marketbus's own history, as
    ``ExportRequest`` over the bus is: every stored event of the matching streams in the range,
    with or without a subscription and outside its spans, while the same range asked by
    ``datastream_id`` is refused without one and clipped to the spans with one."""
    base = NOW // HOUR_NS * HOUR_NS - HOUR_NS + 60 * S  # [base, base+400 s) inside one hour: one artifact
    start, end = base, base + 400 * S
    await harness.start_writer()
    orch = await harness.start_orchestrator()
    trades = make_trades("ticksupply", "binance", "BTCUSDT", [base + i * S for i in range(600)])
    await publish(harness.nc, trades)
    await harness.wait_stored("trade.ticksupply.*.*", len(trades))
    await ticksupply_reference(harness)
    window = {"start_time": str(start), "end_time": str(end)}
    by_selector = window | {"selector": {"kind": "trade", "source": "ticksupply", "symbol": "BTCUSDT"}}
    in_range = [t.ts_event for t in trades if start <= t.ts_event < end]
    async with httpx.AsyncClient(base_url=orch.api_url, headers={"X-Api-Key": API_KEY}, timeout=30) as http:
        ds_id = (await http.get("/v1/datastreams", params={"instrument": "BTCUSDT"})).json()["items"][0][
            "datastream_id"
        ]
        assert (await http.post("/v1/exports", json=window | {"datastream_id": ds_id})).status_code == 403
        # never subscribed: the selector export has every stored trade in the range
        text = await _export_csv(http, by_selector)
        assert [int(r[4]) for r in _rows(text)[1:]] == in_range and _rows(text)[0][4] == "ts_event"
        # subscribed with spans: the datastream export is clipped to them, the selector one is not
        r = await http.post("/v1/subscriptions", json={"datastream_id": ds_id})
        assert r.status_code == 201
        await set_periods(harness.nc, "101", [(base + 100 * S, base + 200 * S)])
        clipped = await _export_csv(http, window | {"datastream_id": ds_id})
        assert [int(r[0]) for r in _rows(clipped)[1:]] == [
            t for t in in_range if t < base + 200 * S and t >= base + 100 * S
        ]
        whole = await _export_csv(http, by_selector)
        assert [int(r[4]) for r in _rows(whole)[1:]] == in_range
