"""The official `ticksupply` client's whole surface against the sandbox (runs in a worker thread)."""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal

import httpx
import pytest
import requests
from ticksupply import (
    APIError,
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    PaymentRequiredError,
    PermissionDeniedError,
    RateLimitError,
)
from ticksupply.models import ExportStatus, SubscriptionStatus

from services.sandbox.common.base import SandboxRunner

from .test_ticksupply import HOUR_NS, KEY, KEY2, ground_truth, gunzip_csv, http, in_thread, sb  # noqa: F401


def client(sb: SandboxRunner, key: str = KEY, retries: int = 0) -> Client:
    return Client(api_key=key, base_url=f"{sb.url}/v1", timeout=10, max_retries=retries)


def wait(c: Client, export_id: str) -> object:
    deadline = time.monotonic() + 5
    job = c.exports.get(export_id)
    while job.status in (ExportStatus.QUEUED, ExportStatus.RUNNING) and time.monotonic() < deadline:
        time.sleep(0.02)
        job = c.exports.get(export_id)
    return job


async def test_catalog_subscriptions_availability_billing(sb: SandboxRunner) -> None:
    def scenario() -> None:
        with client(sb, KEY2) as c:
            assert [e.code for e in c.exchanges.list()] == ["binance", "coinbase", "kraken"]
            page = c.exchanges.list_instruments("binance", base="BTC", limit=1)
            assert page.total == 1 and page.items[0].symbol == "BTCUSDT" and page.items[0].instrument_type == "spot"
            assert not page.has_next
            assert [i.symbol for i in c.exchanges.list_instruments("coinbase", search="usdt").items] == ["BTC-USDT"]
            streams = c.exchanges.list_datastreams("kraken", "BTCUSD", stream_type="trade")
            ds_id = streams.items[0].datastream_id
            everything, token = [], None
            while True:
                p = c.datastreams.list(stream_type="depth", limit=5, page_token=token)
                everything += p.items
                token = p.next_page_token
                if not p.has_next:
                    break
            assert len(everything) == p.total == 14 and {d.stream_type for d in everything} == {"depth"}
            assert c.datastreams.list(wire_format="sbe").total == 2

            created = c.subscriptions.create(ds_id, idempotency_key=str(uuid.uuid4()))
            assert created.status == SubscriptionStatus.ACTIVE and created.spans == []
            assert created.datastream.instrument == "BTCUSD"
            got = c.subscriptions.get(created.id)
            assert got.datastream_id == ds_id and got.datastream is not None
            assert [s.ended_at for s in c.subscriptions.list_spans(created.id)] == [None]
            c.subscriptions.pause(created.id)
            c.subscriptions.pause(created.id, idempotency_key=str(uuid.uuid4()))
            c.subscriptions.resume(created.id)
            spans = c.subscriptions.list_spans(created.id)
            assert len(spans) == 2 and spans[0].ended_at is not None and spans[1].ended_at is None
            other = c.subscriptions.create(ds_id + 1)
            listed = list(c.subscriptions.list_all(limit=1))
            assert [s.id for s in listed] == [other.id, created.id]  # newest first
            assert c.subscriptions.list().total == 2

            time.sleep(0.05)
            avail = c.availability.get(ds_id)
            assert avail.datastream.datastream_id == ds_id and len(avail.ranges) == 2
            assert all(r.to_ns > r.from_ns and r.rows_estimate >= 0 for r in avail.ranges)

            billing = c.billing.get_summary()
            assert billing.access_status.value == "ACTIVE" and billing.plan_code == "pro"
            assert billing.usage.export_gb_total_decimal >= Decimal(0) and billing.current_period_end

            c.subscriptions.delete(created.id)
            c.subscriptions.delete(created.id)  # idempotent
            assert c.subscriptions.get(created.id).status == SubscriptionStatus.DELETED
            with pytest.raises(ConflictError):
                c.subscriptions.resume(created.id)
            with pytest.raises(PermissionDeniedError):
                c.exports.create(ds_id, 0, time.time_ns())
            with pytest.raises(NotFoundError):
                c.subscriptions.get("sub_550e8400e29b41d4a716446655440000")
            with pytest.raises(NotFoundError):
                c.subscriptions.create(99999)
        with pytest.raises(AuthenticationError) as err:
            client(sb, "sk_live_nope").exchanges.list()
        assert err.value.request_id and err.value.http_status == 401

    await in_thread(scenario)


async def test_exports_and_schemas(sb: SandboxRunner, http: httpx.AsyncClient) -> None:
    start = time.time_ns() // HOUR_NS * HOUR_NS - 7 * HOUR_NS
    await http.post("/_sandbox/ticksupply/backfill", json={"datastream_id": 101, "start_ns": start,
                                                           "end_ns": start + 2 * 10**9})
    truth = await ground_truth(http, 101, start, start + 2 * 10**9)

    def scenario() -> None:
        with client(sb) as c:
            job = c.exports.create(101, start, start + 2 * 10**9, idempotency_key="exp-key-1")
            assert c.exports.create(101, start, start + 2 * 10**9, idempotency_key="exp-key-1").id == job.id
            with pytest.raises(ConflictError):
                c.exports.create(101, start, start + 10**9, idempotency_key="exp-key-1")
            done = wait(c, job.id)
            assert done.status == ExportStatus.SUCCEEDED and done.reason is None and done.finished_at
            download = c.exports.get_download(job.id)
            assert download.is_single_file and download.url == download.artifacts[0].url
            rows = gunzip_csv(requests.get(download.url, timeout=10).content)
            assert rows[1:] == truth

            normalized = wait(c, c.exports.create(101, start, start + 10**9, schema="normalized").id)
            table = gunzip_csv(requests.get(c.exports.get_download(normalized.id).url, timeout=10).content)
            assert table[0][:3] == ["exchange", "instrument", "exchange_time"] and table[1][0] == "binance"
            assert table[1][5] == truth[0][3]  # same exact price

            schemas = c.export_schemas.list()
            built_in = {(s.name, s.stream_category.value) for s in schemas if s.is_built_in}
            assert {("raw", "trade"), ("normalized", "trade")} <= built_in
            columns = [
                {"output_column": "ts_ms", "meta": {"value": "collection_timestamp_ns", "format": "ms"}},
                {"output_column": "px", "data": {"binance": {"json": {"path": "data.p", "type": "decimal(18)"}}}},
                {"output_column": "maker", "data": {"binance": {"json": {"path": "data.m", "type": "bool"}}}},
            ]
            schema = c.export_schemas.create("my_trades", "trade", columns, idempotency_key=str(uuid.uuid4()))
            assert schema.version == 1 and not schema.has_draft and schema.id.startswith("sch_")
            with pytest.raises(ConflictError):
                c.export_schemas.create("my_trades", "trade", columns)
            with pytest.raises(ConflictError):
                c.export_schemas.create("raw", "trade", columns)
            with pytest.raises(InvalidArgumentError):
                c.export_schemas.create("broken", "trade", [{"output_column": "x"}])
            custom = wait(c, c.exports.create(101, start, start + 10**9, schema=schema.id).id)
            table = gunzip_csv(requests.get(c.exports.get_download(custom.id).url, timeout=10).content)
            assert table[0] == ["ts_ms", "px", "maker"]
            assert [r[1] for r in table[1:]] == [t[3] for t in truth[: len(table) - 1]]
            assert [r[2] for r in table[1:]] == [
                ("true" if t[5] == "sell" else "false") for t in truth[: len(table) - 1]
            ]
            inline = wait(c, c.exports.create(101, start, start + 10**9, schema={"columns": columns[:1]}).id)
            assert inline.status == ExportStatus.SUCCEEDED

            updated = c.export_schemas.update(schema.id, columns[:2])
            assert updated.version == 2 and len(updated.columns) == 2
            draft = c.export_schemas.create_draft(schema.id)
            assert draft.has_draft and len(draft.columns) == 2
            c.export_schemas.update_draft(schema.id, columns)
            assert len(c.export_schemas.get_draft(schema.id).columns) == 3
            published = c.export_schemas.publish_draft(schema.id)
            assert published.version == 3 and not published.has_draft
            with pytest.raises(NotFoundError):
                c.export_schemas.publish_draft(schema.id)
            with pytest.raises(NotFoundError):
                c.export_schemas.update_draft(schema.id, columns)
            c.export_schemas.create_draft(schema.id, columns=columns[:1])
            c.export_schemas.discard_draft(schema.id)
            assert not c.export_schemas.get(schema.id).has_draft
            raw_id = next(s.id for s in schemas if s.name == "raw" and s.stream_category.value == "trade")
            assert c.export_schemas.get(raw_id).columns[0].output_column == "exchange_ts_ns"
            with pytest.raises(PermissionDeniedError):
                c.export_schemas.delete(raw_id)
            c.export_schemas.delete(schema.id)
            with pytest.raises(NotFoundError):
                c.export_schemas.get(schema.id)

            ids = [j.id for j in c.exports.list_all(limit=2)]
            assert ids[:1] == [inline.id] and job.id in ids and c.exports.list(limit=2).limit == 2
            c.exports.cancel(job.id)  # already succeeded: a no-op
            assert c.exports.get(job.id).status == ExportStatus.SUCCEEDED
            c.exports.delete(job.id)
            assert c.exports.get(job.id).status == ExportStatus.DELETED
            with pytest.raises(ConflictError):
                c.exports.get_download(job.id)
            with pytest.raises(NotFoundError):
                c.exports.get("exp_0")

    await in_thread(scenario)


async def test_client_retries_and_error_mapping(sb: SandboxRunner, http: httpx.AsyncClient) -> None:
    await http.post("/_sandbox/faults", json={"rate_limit_next": 1, "retry_after_s": 2})
    with pytest.raises(RateLimitError) as err:
        await in_thread(client(sb).exchanges.list)
    assert err.value.retry_after == 2 and err.value.code == "rate_limited"

    await http.post("/_sandbox/faults", json={"error_next": 1})
    assert len(await in_thread(client(sb, retries=1).exchanges.list)) == 3  # 503 unavailable is retried

    before = (await http.get("/_sandbox/faults")).json()["counts"].get("errors", 0)
    await http.post("/_sandbox/faults", json={"error_next": 3, "garbage_errors": True})
    with pytest.raises(APIError) as garbage:
        await in_thread(client(sb, retries=2).exchanges.list)
    assert garbage.value.code == "unknown"
    assert (await http.get("/_sandbox/faults")).json()["counts"]["errors"] == before + 1  # not retried
    await http.post("/_sandbox/faults/reset")

    await http.post("/_sandbox/ticksupply/faults", json={"access_status": "SUSPENDED"})
    with pytest.raises(PaymentRequiredError):
        await in_thread(client(sb).subscriptions.create, 125)
    summary = await in_thread(client(sb).billing.get_summary)
    assert summary.access_status.value == "SUSPENDED"


async def test_async_client(sb: SandboxRunner) -> None:
    async with AsyncClient(api_key=KEY, base_url=f"{sb.url}/v1", max_retries=0) as c:
        exchanges = await c.exchanges.list()
        assert len(exchanges) == 3
        streams = await c.datastreams.list(exchange="kraken", instrument="PF_XBTUSD")
        assert {d.stream_type for d in streams.items} == {"trade", "depth"}
        await asyncio.sleep(0)
