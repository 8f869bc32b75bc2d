"""The TickSupply-shaped HTTP API: the official ticksupply client and the vendor's own requests
examples work against marketbus's history with only the base URL and key changed; signed URLs."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
import ticksupply

from .conftest import (
    API_KEY,
    TS_INSTRUMENTS,
    Harness,
    S,
    backdate_feed,
    backdate_from_thread,
    download_all,
    make_trades,
    publish,
    raw_rows,
    raw_table_rows,
    read_artifact,
    ticksupply_reference,
)

NOW = time.time_ns() // S * S


async def _setup(harness: Harness, subscribe: bool = False, **kw: Any):
    await harness.start_writer()
    orch = await harness.start_orchestrator(**kw)
    btc = make_trades("ticksupply", "binance", "BTCUSDT", [NOW - 1800 * S + i * S // 4 for i in range(4000)])
    eth = make_trades("ticksupply", "binance", "ETHUSDT", [NOW - 1800 * S + i * S for i in range(100)])
    await publish(harness.nc, btc + eth)
    await harness.wait_stored("trade.ticksupply.*.*", 4100)
    await ticksupply_reference(harness)
    if subscribe:  # exports need a subscription whose spans hold the trades (collected since NOW - 2 h)
        async with httpx.AsyncClient(base_url=orch.api_url, headers={"X-Api-Key": API_KEY}, timeout=30) as client:
            ds = (await client.get("/v1/datastreams", params={"instrument": "BTCUSDT"})).json()["items"][0]
            r = await client.post("/v1/subscriptions", json={"datastream_id": ds["datastream_id"]})
            assert r.status_code == 201, r.text
        await backdate_feed(harness.nc, TS_INSTRUMENTS["BTCUSDT"][0], NOW - 7200 * S)
    return orch, btc, eth


async def test_official_ticksupply_client_flow(harness: Harness) -> None:
    orch, btc, _ = await _setup(harness)
    loop = asyncio.get_running_loop()

    def flow() -> tuple[Any, Any, list[tuple[Any, bytes]]]:
        with ticksupply.Client(api_key=API_KEY, base_url=f"{orch.api_url}/v1", max_retries=0) as client:
            exchanges = [e.code for e in client.exchanges.list()]
            assert exchanges == ["binance"]
            page = client.datastreams.list(exchange="binance", instrument="BTCUSDT", stream_type="trade")
            assert page.total == 1
            ds = page.items[0]
            assert (ds.exchange, ds.instrument, ds.stream_type) == ("binance", "BTCUSDT", "trade")
            # as TickSupply: nothing is available without a subscription, then its span (collecting
            # since NOW - 2 h, open: up to now) with the rows stored in it
            assert client.availability.get(datastream_id=ds.datastream_id).ranges == []
            sub = client.subscriptions.create(datastream_id=ds.datastream_id, idempotency_key=str(uuid.uuid4()))
            assert sub.status == "active"
            backdate_from_thread(loop, harness.nc, TS_INSTRUMENTS["BTCUSDT"][0], NOW - 7200 * S)
            [span] = client.availability.get(datastream_id=ds.datastream_id).ranges
            assert span.from_ns == NOW - 7200 * S and span.to_ns > btc[-1].ts_event and span.rows_estimate == 4000
            key = str(uuid.uuid4())
            job = client.exports.create(ds.datastream_id, NOW - 3600 * S, NOW, idempotency_key=key)
            assert client.exports.create(ds.datastream_id, NOW - 3600 * S, NOW, idempotency_key=key).id == job.id
            deadline = time.monotonic() + 30
            while (job := client.exports.get(job.id)).status.value not in ("succeeded", "failed"):
                assert time.monotonic() < deadline, "export did not finish"
                time.sleep(0.1)
            assert job.status.value == "succeeded", job.reason
            listed = [j.id for j in client.exports.list_all()]
            assert job.id in listed
            dl = client.exports.get_download(job.id)
            files = [(a, httpx.get(a.url).content) for a in dl.artifacts]
            return job, dl, files

    _job, dl, files = await asyncio.to_thread(flow)
    assert dl.count == len(dl.artifacts) >= 1 and dl.total_bytes == sum(a.bytes for a in dl.artifacts)
    tables = []
    for art, data in files:
        assert len(data) == art.bytes
        tables.append(read_artifact(art.filename, data))
    assert raw_table_rows(tables) == raw_rows(btc)  # TickSupply's raw trade columns, the default


WORKFLOW = Path(__file__).parent / "data" / "ticksupply_workflow.py.txt"


def _seed_workflow_source() -> str:
    """The TickSupply docs' "Complete workflow example" (their Python Examples page), verbatim."""
    return WORKFLOW.read_text().replace('if __name__ == "__main__":\n    main()', "")


async def test_vendor_requests_examples_work_unchanged(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    orch, btc, _ = await _setup(harness)
    monkeypatch.setenv("TICKSUPPLY_API_KEY", API_KEY)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "seed_example"}
    exec(compile(_seed_workflow_source(), "seed_workflow", "exec"), namespace)
    namespace["BASE_URL"] = orch.api_url  # the only change: base URL (and the key, from the env)
    loop = asyncio.get_running_loop()
    api_request = namespace["api_request"]

    def collected_since_two_hours(method: str, path: str, **kwargs: Any) -> Any:
        # the subscription's feed has been collecting for two hours (the trades lie in the past)
        reply = api_request(method, path, **kwargs)
        if (method, path) == ("POST", "/v1/subscriptions"):
            backdate_from_thread(loop, harness.nc, TS_INSTRUMENTS["BTCUSDT"][0], NOW - 7200 * S)
        return reply

    namespace["api_request"] = collected_since_two_hours

    real_sleep = time.sleep
    namespace["time"] = type(
        "T", (), {"time": staticmethod(time.time), "sleep": staticmethod(lambda s: real_sleep(min(s, 0.2)))}
    )
    await asyncio.to_thread(namespace["main"])
    files = sorted(tmp_path.glob("*.csv.gz"))
    assert files
    tables = []
    for f in files:
        text = gzip.decompress(f.read_bytes())
        assert text.startswith(b"exchange_ts_ns,collection_ts_ns,trade_id,price,quantity,side\n") and b'"' not in text
        tables.append(pcsv.read_csv(io.BytesIO(text), convert_options=pcsv.ConvertOptions(
            column_types={c: pa.string() for c in text.split(b"\n", 1)[0].decode().split(",")})))
    # the workflow exported the last hour of BTCUSDT trades, in TickSupply's raw layout
    assert raw_table_rows(tables) == raw_rows(btc)
    # its subscription is the BTCUSDT feed, collecting
    from marketbus.clients.feeds import FeedClient

    feed = await FeedClient(harness.nc).get("ticksupply", "101")
    assert feed.state == "active" and feed.open_period is not None


async def test_signed_urls_refuse_tampering_and_expiry(harness: Harness) -> None:
    orch, _btc, _ = await _setup(harness, subscribe=True)
    headers = {"X-Api-Key": API_KEY}
    async with httpx.AsyncClient(base_url=orch.api_url, timeout=30) as client:
        ds = (await client.get("/v1/datastreams", params={"instrument": "BTCUSDT"}, headers=headers)).json()["items"][0]
        resp = await client.post(
            "/v1/exports",
            headers=headers,
            json={
                "datastream_id": ds["datastream_id"],
                "start_time": str(NOW - 3600 * S),
                "end_time": str(NOW),
                "format": "parquet",
            },
        )
        assert resp.status_code == 201, resp.text
        job_id = resp.json()["id"]
        early = await client.get(f"/v1/exports/{job_id}/download", headers=headers)
        assert early.status_code in (200, 409)
        while (await client.get(f"/v1/exports/{job_id}", headers=headers)).json()["status"] != "succeeded":
            await asyncio.sleep(0.1)
        body, files = await download_all(orch.api_url, job_id)
        art = body["artifacts"][0]
        url = art["url"]
        assert hashlib.sha256(files[art["filename"]]).hexdigest() == art["sha256"]
        parts = urlsplit(url)
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}

        async def status(path: str, query: dict[str, str]) -> int:
            return (await client.get(f"{path}?{urlencode(query)}")).status_code

        assert await status(parts.path, q) == 200
        assert await status(parts.path, q | {"sig": ("0" if q["sig"][0] != "0" else "1") + q["sig"][1:]}) == 403
        assert await status(parts.path, q | {"expires": str(int(q["expires"]) + 3600)}) == 403
        assert await status(parts.path, {"expires": q["expires"]}) == 403
        other = parts.path.rsplit("/", 1)[0] + "/manifest.json"
        assert await status(other, q) == 403  # a signature is for one file only
        # expired: a correctly signed URL whose time is up
        expired = urlsplit(orch.signer.url(orch.api_url, job_id, art["filename"], ttl_s=-1))
        resp = await client.get(f"{expired.path}?{expired.query}")
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "permission_denied"
        # nothing outside the artifact store, even with a valid signature for the name
        secret_file = Path(orch.settings.artifact_path) / job_id / "notes.txt"
        secret_file.write_text("not an artifact")
        for job, name in (
            (job_id, "notes.txt"),
            ("..", "etc"),
            (job_id, "..%2F..%2Fhistory"),
            ("other", art["filename"]),
        ):
            signed = urlsplit(orch.signer.url(orch.api_url, job, name))
            assert (await client.get(f"{signed.path}?{signed.query}")).status_code in (403, 404), (job, name)
        # after delete the URL stops working
        assert (await client.delete(f"/v1/exports/{job_id}", headers=headers)).status_code == 204
        assert await status(parts.path, q) == 404
        assert (await client.get(f"/v1/exports/{job_id}", headers=headers)).json()["status"] == "deleted"


async def test_auth_paging_rate_limit(harness: Harness) -> None:
    orch, _, _ = await _setup(harness, requests_per_s=5.0, burst=6)
    async with httpx.AsyncClient(base_url=orch.api_url, timeout=30) as client:
        r = await client.get("/v1/datastreams")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated" and r.headers["x-request-id"]
        assert (await client.get("/v1/datastreams", headers={"X-Api-Key": "wrong"})).status_code == 401
        h = {"X-Api-Key": API_KEY}
        first = (await client.get("/v1/datastreams", params={"limit": 1}, headers=h)).json()
        assert first["total"] == 4 and len(first["items"]) == 1 and first["next_page_token"]
        second = (
            await client.get("/v1/datastreams", params={"limit": 3, "page_token": first["next_page_token"]}, headers=h)
        ).json()
        assert (
            second["next_page_token"] is None and len(second["items"]) == 3 and first["items"][0] not in second["items"]
        )
        bad = await client.get(
            "/v1/datastreams", params={"limit": 1, "page_token": "x" + first["next_page_token"]}, headers=h
        )
        assert bad.status_code == 400
        # concurrent, and well over burst + a few seconds of refill: a loaded host must not space them out
        codes = await asyncio.gather(*(client.get("/v1/exchanges", headers=h) for _ in range(40)))
        limited = [r for r in codes if r.status_code == 429]
        assert limited and limited[0].json()["error"]["code"] == "rate_limited"
        assert int(limited[0].headers["retry-after"]) >= 1


async def test_overload_answers_429_and_cancel_over_http(harness: Harness) -> None:
    orch, _, _ = await _setup(harness, subscribe=True, max_queued_jobs=1, workers=0)  # no worker: jobs stay queued
    h = {"X-Api-Key": API_KEY}
    async with httpx.AsyncClient(base_url=orch.api_url, timeout=30) as client:
        ds = (await client.get("/v1/datastreams", params={"instrument": "BTCUSDT"}, headers=h)).json()["items"][0]
        body = {"datastream_id": ds["datastream_id"], "start_time": str(NOW - 3600 * S), "end_time": str(NOW)}
        first = await client.post("/v1/exports", json=body, headers=h | {"Idempotency-Key": "k1"})
        assert first.status_code == 201 and first.json()["status"] == "queued"
        again = await client.post("/v1/exports", json=body, headers=h | {"Idempotency-Key": "k1"})
        assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
        clash = await client.post(
            "/v1/exports", json=body | {"format": "parquet"}, headers=h | {"Idempotency-Key": "k1"}
        )
        assert clash.status_code == 409 and clash.json()["error"]["code"] == "already_exists"
        busy = await client.post("/v1/exports", json=body, headers=h | {"Idempotency-Key": "k2"})
        assert (
            busy.status_code == 429 and busy.headers["retry-after"] and busy.json()["error"]["code"] == "rate_limited"
        )
        job_id = first.json()["id"]
        assert (await client.post(f"/v1/exports/{job_id}/cancel", headers=h)).status_code == 204
        got = (await client.get(f"/v1/exports/{job_id}", headers=h)).json()
        assert got["status"] == "canceled"
        dl = await client.get(f"/v1/exports/{job_id}/download", headers=h)
        assert dl.status_code == 409
        # another key does not see this account's jobs
        assert (await client.get("/v1/exports/nope", headers=h)).status_code == 404


async def test_signed_urls_refuse_another_key_and_the_key_stays_off_the_bus(harness: Harness) -> None:
    import stat

    from marketbus.contracts.streams import EXPORT_JOBS
    from marketbus.runtime import kv as kv_snapshot
    from services.export_orchestrator.signing import KEY_FILE, UrlSigner

    orch = await harness.start_orchestrator()
    key_file = Path(orch.settings.data_dir) / KEY_FILE
    twin = await harness.start_orchestrator()  # a second orchestrator on the same data dir
    configured = await harness.start_orchestrator(signing_secret="configured-signing-key", api_port=0)
    async with httpx.AsyncClient(timeout=10) as client:
        async def status(url: str) -> int:
            return (await client.get(url)).status_code

        job = "exp_" + uuid.uuid4().hex
        forged = await status(UrlSigner(b"some other key").url(orch.api_url, job, "part-0.parquet"))
        genuine = await status(orch.signer.url(orch.api_url, job, "part-0.parquet"))
        across = await status(orch.signer.url(configured.api_url, job, "part-0.parquet"))
    # the whole job bucket (a complete read), keys and values: no signing key in it
    bucket = await kv_snapshot.latest(harness.nc.jetstream(), EXPORT_JOBS.name)
    signing_keys = (orch.signer.secret, configured.signer.secret)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip().encode() == orch.signer.secret == twin.signer.secret
    assert configured.signer.secret == b"configured-signing-key"
    assert not [
        e.key for e in bucket if "secret" in e.key or "sign" in e.key or any(k in e.value for k in signing_keys)
    ]
    assert (forged, genuine, across) == (403, 404, 403)  # signature first: an unknown job is only 404 when signed


async def test_a_deeply_nested_body_is_a_400_not_a_500(harness: Harness) -> None:
    """100,000 nested arrays: msgspec raises RecursionError (not a DecodeError); every JSON body of
    the API (and the Idempotency-Key fingerprint) answered 500 and logged a traceback."""
    orch, _, _ = await _setup(harness)
    deep = b"[" * 100_000 + b"]" * 100_000
    h = {"X-Api-Key": API_KEY, "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=orch.api_url, timeout=30) as client:
        for path in ("/v1/exports", "/v1/subscriptions", "/v1/export-schemas"):
            for headers in (h, {**h, "Idempotency-Key": f"deep-{uuid.uuid4()}"}):
                r = await client.post(path, content=deep, headers=headers)
                assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_argument", (path, r.text[:200])
        # a page token is decoded only once its signature holds
        token = base64.urlsafe_b64encode(b"[" * 5_000 + b"]" * 5_000).decode().rstrip("=") + ".forged"
        r = await client.get("/v1/datastreams", params={"page_token": token}, headers=h)
        assert r.status_code == 400 and r.json()["error"]["details"]["field"] == "page_token", r.text[:200]
        assert (await client.get("/v1/exports", headers=h)).status_code == 200
