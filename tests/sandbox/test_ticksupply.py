"""TickSupply sandbox conformance: the vendor's own `requests` examples, wire details, and faults.

Synchronous clients (requests, the official client) run in threads: the sandbox shares the loop.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import requests

from services.sandbox.common.base import SandboxRunner
from services.sandbox.registry import load_spec

KEY = "ts_sandbox_key"
KEY2 = "ts_sandbox_key_2"
FAST = {"export_queued_s": 0.05, "export_running_s": 0.1, "requests_per_s": 0}
HOUR_NS = 3_600_000_000_000


@pytest.fixture(scope="module")
async def sb() -> AsyncIterator[SandboxRunner]:
    async with SandboxRunner(load_spec("ticksupply"), port=0, **FAST) as runner:
        yield runner


@pytest.fixture
async def http(sb: SandboxRunner) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sb.url, headers={"X-Api-Key": KEY}, timeout=10) as client:
        yield client
        await client.post("/_sandbox/faults/reset")
        await client.post("/_sandbox/ticksupply/faults", json={"fail_next_exports": 0, "slow_exports_s": 0,
                                                               "access_status": "ACTIVE"})


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def poll(fn: Callable[[], Any], until: Callable[[Any], bool], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await fn()
        if until(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.02)


def gunzip_csv(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(gzip.decompress(data).decode())))


async def fresh_subscription(http: httpx.AsyncClient, ds_id: int, key: str = KEY) -> dict[str, Any]:
    """Subscribe (deleting an existing live subscription to the stream first)."""
    subs = (await http.get("/v1/subscriptions", params={"limit": 100}, headers={"X-Api-Key": key})).json()["items"]
    for sub in subs:
        if sub["datastream_id"] == ds_id and sub["status"] != "deleted":
            await http.delete(f"/v1/subscriptions/{sub['id']}", headers={"X-Api-Key": key})
    r = await http.post("/v1/subscriptions", json={"datastream_id": ds_id}, headers={"X-Api-Key": key})
    assert r.status_code == 201, r.text
    return r.json()


async def ground_truth(http: httpx.AsyncClient, ds_id: int, start: int, end: int, key: str = KEY) -> list[list[str]]:
    r = await http.get("/_sandbox/ticksupply/rows", params={"datastream_id": ds_id, "start_ns": start,
                                                            "end_ns": end, "api_key": key})
    return r.json()["rows"]


async def wait_export(http: httpx.AsyncClient, exp_id: str) -> dict[str, Any]:
    async def get() -> dict[str, Any]:
        return (await http.get(f"/v1/exports/{exp_id}")).json()

    return await poll(get, lambda j: j["status"] in ("succeeded", "failed", "canceled"))


# --- the seed's `requests` examples, verbatim in spirit, pointed at the sandbox --------------------
def seed_client(base_url: str, api_key: str) -> Callable[..., Any]:
    def api_request(method: str, path: str, **kwargs: Any) -> Any:
        headers = kwargs.pop("headers", {})
        headers["X-Api-Key"] = api_key
        response = requests.request(method, f"{base_url}{path}", headers=headers, timeout=10, **kwargs)
        if response.status_code == 429:
            retry_after = int(response.headers.get("Retry-After", 30))
            time.sleep(retry_after)
            return api_request(method, path, headers=headers, **kwargs)
        response.raise_for_status()
        if response.status_code == 204:
            return None
        return response.json()

    return api_request


async def test_seed_catalog_and_retry_on_429(sb: SandboxRunner, http: httpx.AsyncClient) -> None:
    api = seed_client(sb.url, KEY)
    await http.post("/_sandbox/faults", json={"rate_limit_next": 1, "retry_after_s": 1})
    started = time.monotonic()
    exchanges = await in_thread(api, "GET", "/v1/exchanges")
    assert time.monotonic() - started >= 1.0  # slept the Retry-After, then succeeded
    assert {e["code"] for e in exchanges} == {"binance", "coinbase", "kraken"}
    assert all(isinstance(e["display_name"], str) for e in exchanges)
    result = await in_thread(lambda: api("GET", "/v1/exchanges/binance/instruments",
                                         params={"search": "BTC", "limit": 10}))
    assert result["limit"] == 10 and result["items"]
    assert all("BTC" in p["symbol"] and p["base"] and p["quote"] for p in result["items"])
    streams = await in_thread(lambda: api("GET", "/v1/datastreams", params={
        "exchange": "binance", "instrument": "BTCUSDT", "stream_type": "trade"}))
    assert {ds["wire_format"] for ds in streams["items"]} == {"json", "sbe"}
    assert all(isinstance(ds["datastream_id"], int) for ds in streams["items"])


async def test_seed_subscription_lifecycle_and_pagination(sb: SandboxRunner, http: httpx.AsyncClient) -> None:
    api = seed_client(sb.url, KEY2)
    created = []
    for ds_id in (110, 111, 112):
        sub = await in_thread(lambda d=ds_id: api("POST", "/v1/subscriptions", json={"datastream_id": d}, headers={
            "Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())}))
        assert sub["id"].startswith("sub_") and len(sub["id"]) == 36 and sub["status"] == "active"
        assert sub["spans"] == [] and sub["datastream"]["datastream_id"] == ds_id
        created.append(sub["id"])

    def list_subscriptions(limit: int) -> tuple[list[dict[str, Any]], int]:
        everything, token, pages = [], None, 0
        while True:
            params: dict[str, Any] = {"limit": limit}
            if token:
                params["page_token"] = token
            result = api("GET", "/v1/subscriptions", params=params)
            assert result["total"] == 3 and result["limit"] == limit
            everything.extend(result["items"])
            pages += 1
            token = result.get("next_page_token")
            if not token:
                return everything, pages

    subs, pages = await in_thread(list_subscriptions, 2)
    assert pages == 2 and sorted(s["id"] for s in subs) == sorted(created)

    sub_id = created[0]
    assert (await in_thread(api, "GET", f"/v1/subscriptions/{sub_id}"))["status"] == "active"
    assert await in_thread(api, "POST", f"/v1/subscriptions/{sub_id}/pause") is None
    assert await in_thread(api, "POST", f"/v1/subscriptions/{sub_id}/pause") is None  # idempotent
    spans = await in_thread(api, "GET", f"/v1/subscriptions/{sub_id}/spans")
    assert len(spans) == 1 and spans[0]["ended_at"] is not None and spans[0]["id"].startswith("spn_")
    assert (await in_thread(api, "GET", f"/v1/subscriptions/{sub_id}"))["status"] == "paused"
    await in_thread(api, "POST", f"/v1/subscriptions/{sub_id}/resume")
    await in_thread(api, "POST", f"/v1/subscriptions/{sub_id}/resume")  # idempotent
    spans = await in_thread(api, "GET", f"/v1/subscriptions/{sub_id}/spans")
    assert len(spans) == 2 and spans[1]["ended_at"] is None and spans[1]["started_at"] >= spans[0]["ended_at"]
    await in_thread(
        lambda: api("DELETE", f"/v1/subscriptions/{sub_id}", headers={"Idempotency-Key": str(uuid.uuid4())})
    )
    assert (await in_thread(api, "GET", f"/v1/subscriptions/{sub_id}"))["status"] == "deleted"
    with pytest.raises(requests.HTTPError) as err:
        await in_thread(api, "POST", f"/v1/subscriptions/{sub_id}/resume")
    assert err.value.response.status_code == 409


async def test_seed_export_poll_download_matches_ground_truth(sb: SandboxRunner, http: httpx.AsyncClient) -> None:
    api = seed_client(sb.url, KEY)
    ds_id = (await in_thread(lambda: api("GET", "/v1/datastreams", params={
        "exchange": "coinbase", "instrument": "ETH-USD", "stream_type": "trade"})))["items"][0]["datastream_id"]
    await fresh_subscription(http, ds_id)
    await asyncio.sleep(0.3)  # let some data be collected
    now_ns = time.time_ns()
    hour_ago_ns = now_ns - HOUR_NS
    export = await in_thread(lambda: api("POST", "/v1/exports", json={
        "datastream_id": ds_id, "start_time": str(hour_ago_ns), "end_time": str(now_ns)},
        headers={"Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())}))
    assert export["id"].startswith("exp_") and export["status"] == "queued" and export["format"] == "csv"
    assert export["start_time"] == hour_ago_ns and export["end_time"] == now_ns  # ns as JSON integers

    def wait_for_export(export_id: str) -> dict[str, Any]:
        seen = []
        while True:
            result = api("GET", f"/v1/exports/{export_id}")
            seen.append(result["status"])
            if result["status"] == "succeeded":
                return result | {"seen": seen}
            assert result["status"] != "failed", result.get("reason")
            time.sleep(0.02)

    done = await in_thread(wait_for_export, export["id"])
    assert done["finished_at"] and done["started_at"] and "running" in done["seen"]
    result = await in_thread(api, "GET", f"/v1/exports/{export['id']}/download")
    assert result["count"] == len(result["artifacts"]) >= 1
    assert result["total_bytes"] == sum(a["bytes"] for a in result["artifacts"])
    rows: list[list[str]] = []
    for artifact in result["artifacts"]:
        assert artifact["id"].startswith("art_") and artifact["filename"].endswith(".csv.gz")
        response = await in_thread(requests.get, artifact["url"])  # plain GET, no API key
        response.raise_for_status()
        assert len(response.content) == artifact["bytes"]
        table = gunzip_csv(response.content)
        assert table[0] == ["exchange_ts_ns", "collection_ts_ns", "trade_id", "price", "quantity", "side"]
        rows.extend(table[1:])
    assert len(rows) > 10
    assert rows == await ground_truth(http, ds_id, hour_ago_ns, now_ns)
    ts = [int(r[0]) for r in rows]
    assert ts == sorted(ts) and all(int(r[1]) > int(r[0]) for r in rows) and {r[5] for r in rows} <= {"buy", "sell"}


# --- wire details -----------------------------------------------------------------------------------
async def test_auth_errors_and_request_ids(sb: SandboxRunner) -> None:
    async with httpx.AsyncClient(base_url=sb.url) as client:
        for headers in ({}, {"X-Api-Key": "sk_live_wrong"}):
            r = await client.get("/v1/exchanges", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
            assert r.headers["x-request-id"].startswith("req_")
        ok = await client.get("/v1/exchanges", headers={"X-Api-Key": KEY})
        assert ok.status_code == 200 and ok.headers["x-request-id"] != r.headers["x-request-id"]
        missing = await client.get("/v1/subscriptions/sub_00000000000000000000000000000000", headers={"X-Api-Key": KEY})
        assert missing.status_code == 404 and missing.json() == {
            "error": {"code": "not_found", "message": "Subscription not found",
                      "details": {"id": "sub_00000000000000000000000000000000"}}}
        for path in ("/v1/exports/exp_nope", "/v1/export-schemas/sch_nope", "/v1/exchanges/nyse/instruments"):
            r = await client.get(path, headers={"X-Api-Key": KEY})
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path


async def test_page_tokens_and_limits(http: httpx.AsyncClient) -> None:
    first = (await http.get("/v1/datastreams", params={"exchange": "binance", "limit": 4})).json()
    assert first["limit"] == 4 and len(first["items"]) == 4 and first["total"] == 14
    token = first["next_page_token"]
    second = (await http.get("/v1/datastreams", params={"exchange": "binance", "limit": 4, "page_token": token})).json()
    ids = [d["datastream_id"] for d in first["items"] + second["items"]]
    assert ids == sorted(set(ids))
    default = (await http.get("/v1/datastreams")).json()
    assert default["limit"] == 100 and default["next_page_token"] is None and default["total"] == len(default["items"])
    for params in ({"limit": 1001}, {"limit": 0}, {"page_token": token[:-2] + "00"},  # tampered
                   {"exchange": "kraken", "page_token": token}):  # a token of another query
        r = await http.get("/v1/datastreams", params=params)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_argument", params
    assert (await http.get("/v1/subscriptions", params={"limit": 101})).status_code == 400
    assert (await http.get("/v1/subscriptions")).json()["limit"] == 50
    inst = (await http.get("/v1/exchanges/kraken/instruments", params={"instrument_type": "perpetual"})).json()
    assert [i["symbol"] for i in inst["items"]] == ["PF_ETHUSD", "PF_XBTUSD"]
    usdt = (await http.get("/v1/exchanges/binance/instruments", params={"quote": "USDT", "base": "ETH"})).json()
    assert [i["symbol"] for i in usdt["items"]] == ["ETHUSDT"]
    per_inst = (await http.get("/v1/exchanges/binance/instruments/BTCUSDT/datastreams",
                               params={"wire_format": "json"})).json()
    assert {d["stream_type"] for d in per_inst["items"]} == {"trade", "depth"}


async def test_idempotency_replay_conflict_and_scope(http: httpx.AsyncClient) -> None:
    key = str(uuid.uuid4())
    first = await http.post("/v1/subscriptions", json={"datastream_id": 120}, headers={"Idempotency-Key": key})
    again = await http.post("/v1/subscriptions", json={"datastream_id": 120}, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 201 and first.content == again.content
    subs = (await http.get("/v1/subscriptions", params={"limit": 100})).json()["items"]
    assert sum(1 for s in subs if s["datastream_id"] == 120) == 1  # no second side effect
    other = await http.post("/v1/subscriptions", json={"datastream_id": 121}, headers={"Idempotency-Key": key})
    assert other.status_code == 409 and other.json()["error"]["code"] == "already_exists"
    # Keys are per API key: the other account's request with the same key is a new request.
    elsewhere = await http.post("/v1/subscriptions", json={"datastream_id": 120},
                                headers={"Idempotency-Key": key, "X-Api-Key": KEY2})
    assert elsewhere.status_code == 201 and elsewhere.json()["id"] != first.json()["id"]
    # Without a key a duplicate subscription is a conflict.
    dup = await http.post("/v1/subscriptions", json={"datastream_id": 120})
    assert dup.status_code == 409


async def test_token_bucket_and_idempotency_expiry() -> None:
    async with SandboxRunner(load_spec("ticksupply"), port=0, requests_per_s=2, burst=2,
                             idempotency_ttl_s=1) as sb, \
            httpx.AsyncClient(base_url=sb.url, headers={"X-Api-Key": KEY}) as http:
        statuses = [(await http.get("/v1/exchanges")).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        limited = await http.get("/v1/exchanges")
        assert limited.json()["error"]["code"] == "rate_limited"
        retry_after = int(limited.headers["retry-after"])
        assert retry_after >= 1
        await asyncio.sleep(retry_after)
        key = str(uuid.uuid4())
        first = await http.post("/v1/subscriptions", json={"datastream_id": 101}, headers={"Idempotency-Key": key})
        assert first.status_code == 201
        # Another account is throttled separately.
        assert (await http.get("/v1/exchanges", headers={"X-Api-Key": KEY2})).status_code == 200
        await asyncio.sleep(1.1)  # the key expired: the same request is new, and now a conflict
        again = await http.post("/v1/subscriptions", json={"datastream_id": 101}, headers={"Idempotency-Key": key})
        assert again.status_code == 409 and again.content != first.content


async def test_injected_faults_use_vendor_error_body(http: httpx.AsyncClient) -> None:
    await http.post("/_sandbox/faults", json={"rate_limit_next": 1, "retry_after_s": 3, "error_next": 1})
    r = await http.get("/v1/exchanges")
    assert r.status_code == 429 and r.headers["retry-after"] == "3" and r.json()["error"]["code"] == "rate_limited"
    assert r.headers["x-request-id"]
    r = await http.get("/v1/exchanges")
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    await http.post("/_sandbox/faults", json={"error_next": 1, "garbage_errors": True})
    r = await http.get("/v1/exchanges")
    assert r.status_code == 503 and not r.text.startswith("{")
    assert (await http.get("/v1/exchanges")).status_code == 200


# --- exports: partitions, faults, access rules, artifact URLs ----------------------------------------
async def backfill(http: httpx.AsyncClient, ds_id: int, start_ns: int, end_ns: int | None = None,
                   key: str = KEY) -> dict[str, Any]:
    r = await http.post("/_sandbox/ticksupply/backfill", json={
        "api_key": key, "datastream_id": ds_id, "start_ns": start_ns, "end_ns": end_ns})
    assert r.status_code == 200, r.text
    return r.json()


async def create_export(
    http: httpx.AsyncClient, ds_id: int, start: int | str, end: int | str, **extra: Any
) -> httpx.Response:
    return await http.post("/v1/exports", json={"datastream_id": ds_id, "start_time": str(start),
                                                "end_time": str(end), **extra})


async def test_hourly_partitions_and_depth_rows(http: httpx.AsyncClient) -> None:
    hour = time.time_ns() // HOUR_NS * HOUR_NS - 3 * HOUR_NS
    await backfill(http, 105, hour - 2_000_000_000, hour + 1_000_000_000)  # binance ETHUSDT depth
    r = await create_export(http, 105, hour - 10_000_000_000, hour + 10_000_000_000)
    job = await wait_export(http, r.json()["id"])
    assert job["status"] == "succeeded"
    download = (await http.get(f"/v1/exports/{job['id']}/download")).json()
    assert download["count"] == 2
    names = [a["filename"] for a in download["artifacts"]]
    assert names[0].startswith("binance-ETHUSDT-depth-") and names[0] < names[1]
    rows = []
    for art in download["artifacts"]:
        table = gunzip_csv((await http.get(art["url"], headers={"X-Api-Key": ""})).content)
        assert table[0] == ["exchange_ts_ns", "collection_ts_ns", "update_id", "side", "price", "quantity"]
        rows.extend(table[1:])
    assert len(rows) == 3 * 100 * 2 and [r[3] for r in rows[:2]] == ["bid", "ask"]
    assert rows == await ground_truth(http, 105, hour - 10_000_000_000, hour + 10_000_000_000)
    avail = (await http.get("/v1/availability", params={"datastream_id": 105})).json()
    assert avail["ranges"] == [{"from": hour - 2_000_000_000, "to": hour + 1_000_000_000, "rows_estimate": 600}]
    assert avail["datastream"]["stream_type"] == "depth"


async def test_export_fault_switches_and_state_rules(http: httpx.AsyncClient) -> None:
    start = time.time_ns() // HOUR_NS * HOUR_NS - 5 * HOUR_NS
    await backfill(http, 107, start, start + 2_000_000_000)
    await http.post("/_sandbox/ticksupply/faults", json={"fail_next_exports": 1, "fail_reason": "disk on fire"})
    failed = await wait_export(http, (await create_export(http, 107, start, start + 10**9)).json()["id"])
    assert failed["status"] == "failed" and failed["reason"] == "disk on fire"
    r = await http.get(f"/v1/exports/{failed['id']}/download")
    assert r.status_code == 409 and r.json()["error"]["code"] == "already_exists"

    empty = await wait_export(http, (await create_export(http, 107, start - 10**10, start)).json()["id"])
    assert empty["status"] == "failed" and "no data" in empty["reason"]

    await http.post("/_sandbox/ticksupply/faults", json={"slow_exports_s": 5})
    slow = (await create_export(http, 107, start, start + 10**9)).json()
    running = await poll(lambda: http.get(f"/v1/exports/{slow['id']}"), lambda r: r.json()["status"] == "running")
    assert running.json()["status"] == "running"
    await asyncio.sleep(0.3)
    assert (await http.get(f"/v1/exports/{slow['id']}")).json()["status"] == "running"  # still: slow export
    assert (await http.post(f"/v1/exports/{slow['id']}/cancel")).status_code == 204
    assert (await http.post(f"/v1/exports/{slow['id']}/cancel")).status_code == 204  # idempotent
    canceled = (await http.get(f"/v1/exports/{slow['id']}")).json()
    assert canceled["status"] == "canceled" and canceled["finished_at"]
    assert (await http.delete(f"/v1/exports/{slow['id']}")).status_code == 204
    assert (await http.delete(f"/v1/exports/{slow['id']}")).status_code == 204
    assert slow["id"] not in [j["id"] for j in (await http.get("/v1/exports", params={"limit": 100})).json()["items"]]

    bad = await create_export(http, 107, start + 10, start)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_argument"
    assert (await create_export(http, 107, "yesterday", start)).status_code == 400
    iso = await create_export(http, 107, "2020-01-01T00:00:00Z", "2020-01-01T00:00:01.5Z")
    assert iso.status_code == 201 and iso.json()["end_time"] == 1_577_836_801_500_000_000

    never = await create_export(http, 130, start, start + 10**9)  # no subscription at all
    assert never.status_code == 403 and never.json()["error"]["code"] == "permission_denied"
    sub_id = next(s["id"] for s in (await http.get("/v1/subscriptions", params={"limit": 100})).json()["items"]
                  if s["datastream_id"] == 107 and s["status"] != "deleted")
    assert (await http.delete(f"/v1/subscriptions/{sub_id}")).status_code == 204
    gone = await create_export(http, 107, start, start + 10**9)
    assert gone.status_code == 403 and gone.json()["error"]["code"] == "permission_denied"
    assert (await http.get("/v1/availability", params={"datastream_id": 107})).json()["ranges"] == []

    await http.post("/_sandbox/ticksupply/faults", json={"access_status": "SUSPENDED"})
    r = await http.post("/v1/subscriptions", json={"datastream_id": 107})
    assert r.status_code == 402 and r.json()["error"]["code"] == "payment_required"


async def test_artifact_urls_tampered_expired_and_deleted() -> None:
    async with SandboxRunner(load_spec("ticksupply"), port=0, artifact_url_ttl_s=3, **FAST) as sb, \
            httpx.AsyncClient(base_url=sb.url, headers={"X-Api-Key": KEY}) as http:
        start = time.time_ns() // HOUR_NS * HOUR_NS - 2 * HOUR_NS
        await backfill(http, 101, start, start + 10**9)
        job = await wait_export(http, (await create_export(http, 101, start, start + 10**9)).json()["id"])
        url = (await http.get(f"/v1/exports/{job['id']}/download")).json()["artifacts"][0]["url"]
        async with httpx.AsyncClient() as plain:
            assert (await plain.get(url)).status_code == 200
            tampered = url.replace("X-Amz-Expires=3", "X-Amz-Expires=9")
            r = await plain.get(tampered)
            assert r.status_code == 403 and b"SignatureDoesNotMatch" in r.content
            await asyncio.sleep(3.2)  # a 3 s life: a loaded host still fetches it in time first
            r = await plain.get(url)
            assert r.status_code == 403 and b"Request has expired" in r.content
            fresh = (await http.get(f"/v1/exports/{job['id']}/download")).json()["artifacts"][0]["url"]
            assert (await plain.get(fresh)).status_code == 200
            await http.delete(f"/v1/exports/{job['id']}")
            r = await plain.get(fresh)
            assert r.status_code == 404 and b"NoSuchKey" in r.content
