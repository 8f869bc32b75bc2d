"""The TickSupply ingestor end to end: the sandbox over HTTP, a private nats-server per test.

Every test checks the MD stream against the sandbox's ground truth (``/_sandbox/ticksupply/rows``)
by event id: nothing missing, nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import msgspec
import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from marketbus.contracts import codec, subjects
from marketbus.contracts.codec import Batch
from marketbus.contracts.ids import event_id
from marketbus.contracts.invariants import canonical_decimal
from marketbus.contracts.jobs import ReplayReply, ReplayRequest
from marketbus.contracts.market import Trade
from marketbus.contracts.status import DeadLetter, FeedStatus
from marketbus.runtime.settings import SettingsError, load_settings
from services.ingest_ticksupply.app import TickSupplyIngestor
from services.ingest_ticksupply.client import TickSupplyClient
from services.ingest_ticksupply.progress import DatastreamProgress
from services.ingest_ticksupply.settings import TickSupplySettings
from services.sandbox.common.base import SandboxRunner
from services.sandbox.registry import load_spec
from services.sandbox.ticksupply import exports as sandbox_exports
from tests.helpers import wait_for

KEY = "ts_sandbox_key"
DS = 101  # binance BTCUSDT trades (json)
PAUSED_DS = 104  # binance ETHUSDT trades: kept subscribed but paused
MIN_NS = 60_000_000_000
FAST = {"rate": 2.0, "export_queued_s": 0.05, "export_running_s": 0.1, "requests_per_s": 0}


@contextlib.asynccontextmanager
async def sandbox(**overrides: Any) -> AsyncIterator[SandboxRunner]:
    async with SandboxRunner(load_spec("ticksupply"), port=0, **(FAST | overrides)) as sb:
        yield sb


def ingestor(nats_url: str, sb: SandboxRunner, **overrides: Any) -> TickSupplyIngestor:
    options: dict[str, Any] = {
        "nats_url": nats_url, "base_url": sb.url + "/v1", "datastreams": [DS], "export_interval_s": 0.3,
        "export_lag_s": 0.2, "initial_lookback_s": 4 * 3600, "max_window_s": 4 * 3600, "requests_per_s": 500,
        "catalog_interval_s": 0, "export_poll_initial_s": 0.05, "export_poll_max_s": 0.2, "heartbeat_interval_s": 1,
        "subscription_interval_s": 1,
    }
    return TickSupplyIngestor(**(options | overrides))


async def backfill(sb: SandboxRunner, ds: int, minutes: float) -> int:
    """A subscription whose span started ``minutes`` ago (history to export); returns its start."""
    start = (time.time_ns() - int(minutes * MIN_NS)) // 1000 * 1000
    async with httpx.AsyncClient(base_url=sb.url) as http:
        r = await http.post(
            "/_sandbox/ticksupply/backfill", json={"datastream_id": ds, "start_ns": start, "api_key": KEY}
        )
        assert r.status_code == 200, r.text
    return start


async def truth(sb: SandboxRunner, ds: int, start: int, end: int) -> list[list[str]]:
    async with httpx.AsyncClient(base_url=sb.url) as http:
        r = await http.get("/_sandbox/ticksupply/rows", params={"datastream_id": ds, "start_ns": start, "end_ns": end,
                                                                "api_key": KEY, "limit": 1_000_000})
        return r.json()["rows"]


def trade_id(ds: int, row: list[str]) -> str:
    return event_id("ticksupply", "trade", ds, row[2])


async def progress(js: Any, ds: int = DS) -> DatastreamProgress:
    kv = await js.key_value("ingest_state")
    try:
        entry = await kv.get(f"ticksupply.default.ds.{ds}")
    except Exception:
        return DatastreamProgress(datastream_id=ds)
    return msgspec.json.decode(entry.value, type=DatastreamProgress)


async def read_stream(js: Any, stream: str, subject: str) -> list[Any]:
    """Every message (decoded) on ``subject`` in ``stream`` up to now, oldest first."""
    last = (await js.stream_info(stream)).state.last_seq
    sub = await js.pull_subscribe(subject, stream=stream, config=ConsumerConfig(
        deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE))
    out: list[Any] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=0.3)
            except (TimeoutError, nats.errors.TimeoutError):
                break  # nothing more on this subject
            out.extend(codec.decode(m.data) for m in msgs)
            if msgs[-1].metadata.sequence.stream >= last or msgs[-1].metadata.num_pending == 0:
                break  # up to now: a live subject would otherwise keep the loop going
    finally:
        await sub.unsubscribe()
    return out


async def md_trades(js: Any, venue: str = "binance", symbol: str = "BTCUSDT") -> list[Trade]:
    return [e for m in await read_stream(js, "MD", subjects.md("trade", "ticksupply", venue, symbol))
            for e in codec.iter_events(m)]


def assert_exactly(trades: list[Trade], rows: list[list[str]], end_ns: int, ds: int = DS) -> None:
    """MD holds each ground-truth row before ``end_ns`` exactly once (later windows may be in flight)."""
    all_ids = [t.id for t in trades]
    assert len(all_ids) == len(set(all_ids)), f"{len(all_ids) - len(set(all_ids))} duplicate events in MD"
    ids = [t.id for t in trades if t.ts_event < end_ns]
    want = {trade_id(ds, r) for r in rows}
    missing, extra = want - set(ids), set(ids) - want
    assert not missing and not extra, f"{len(missing)} missing, {len(extra)} unexpected events"


async def caught_up(js: Any, until_ns: int, ds: int = DS) -> DatastreamProgress | None:
    p = await progress(js, ds)
    return p if p.last_end_ns is not None and p.last_end_ns >= until_ns and p.inflight is None else None


# --------------------------------------------------------------------------------------------------
async def test_rolling_exports_catalog_subscriptions_and_replay(
    nats_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with sandbox() as sb:
        start = await backfill(sb, DS, 90)  # 90 minutes of history: at least two hourly artifacts
        began = time.time_ns()
        svc = ingestor(nats_server.url, sb, datastreams=[DS, PAUSED_DS], paused_datastreams=[PAUSED_DS])
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        try:
            async with svc:
                p = await wait_for(lambda: caught_up(js, began), timeout=30, what="the backlog exported")
                rows = await truth(sb, DS, start, p.last_end_ns)
                assert len(rows) > 10_000
                trades = await md_trades(js)
                assert_exactly(trades, rows, p.last_end_ns)
                # the values the sandbox generated, exactly
                by_id = {t.id: t for t in trades}
                for row in rows[:: max(1, len(rows) // 500)]:
                    t = by_id[trade_id(DS, row)]
                    assert (t.ts_event, t.trade_id, t.side) == (int(row[0]), row[2], row[5])
                    assert str(t.price) == str(canonical_decimal(Decimal(row[3])))
                    assert str(t.size) == str(canonical_decimal(Decimal(row[4])))
                    assert not t.replay
                # published as batch envelopes, not one message per trade
                msgs = await read_stream(js, "MD", subjects.md("trade", "ticksupply", "binance", "BTCUSDT"))
                assert all(isinstance(m, Batch) for m in msgs) and len(msgs) < len(trades) / 100

                # it keeps rolling: new data after the backlog arrives too
                later = p.last_end_ns + 2_000_000_000
                p2 = await wait_for(lambda: caught_up(js, later), timeout=15, what="a later window")
                assert_exactly(await md_trades(js), await truth(sb, DS, start, p2.last_end_ns), p2.last_end_ns)

                # subscriptions: PAUSED_DS was created and paused
                async with httpx.AsyncClient(base_url=sb.url, headers={"X-Api-Key": KEY}) as http:
                    subs = (await http.get("/v1/subscriptions")).json()["items"]
                status = {s["datastream_id"]: s["status"] for s in subs if s["status"] != "deleted"}
                assert status == {DS: "active", PAUSED_DS: "paused"}

                # reference data from the catalog
                ref = await read_stream(js, "REF", "ref.>")
                kinds = {(subjects.kind_of(e), e.venue, e.symbol) for e in ref}
                assert ("venue", "kraken", "kraken") in kinds
                assert ("instrument", "coinbase", subjects.normalize_symbol("BTC-USD")) in kinds
                ds_class = next(e for e in ref if subjects.kind_of(e) == "instrument_class" and e.vendor_ref == str(DS))
                assert ds_class.class_type == "datastream" and ds_class.vendor_symbol == "BTCUSDT:trade:json"

                # feed status: connected for the active stream, disconnected for the paused one
                statuses = [m for m in await read_stream(js, "STATUS", "status.ingest_ticksupply.feed.>")
                            if isinstance(m, FeedStatus)]
                assert any(s.symbol == "BTCUSDT" and s.state == "connected" for s in statuses)
                assert any(s.symbol == "ETHUSDT" and s.state == "disconnected" for s in statuses)

                # replay: a 10-minute range comes back as replay=True batches, with the count
                r_start, r_end = start + 5 * MIN_NS, start + 15 * MIN_NS
                request = ReplayRequest(request_id="r-1", source="ticksupply", venue="binance", symbol="BTCUSDT",
                                        kind="trade", start_ns=r_start, end_ns=r_end)
                reply = codec.decode_as((await nc.request(subjects.replay("ticksupply"), codec.encode(request),
                                                          timeout=20)).data, ReplayReply)
                expected = await truth(sb, DS, r_start, r_end)
                assert reply.accepted and reply.events == len(expected) > 1000
                replayed = [
                    m
                    for m in await read_stream(js, "MD", subjects.md("trade", "ticksupply", "binance", "BTCUSDT"))
                    if isinstance(m, Batch) and m.replay
                ]
                assert sorted(e.id for m in replayed for e in m.events) == sorted(trade_id(DS, r) for r in expected)
                assert all(e.replay for m in replayed for e in m.events)

                # metrics and health
                async with httpx.AsyncClient() as http:
                    metrics = (await http.get(f"{svc.http_url}/metrics")).text
                    health = (await http.get(f"{svc.http_url}/healthz")).json()
                assert 'marketbus_ingest_events_total{kind="trade",source="ticksupply"}' in metrics
                assert health["subscriptions"] == {str(DS): "active", str(PAUSED_DS): "paused"}
        finally:
            await nc.close()
    # the API key is never logged (the test's own ground-truth calls to /_sandbox/ name it: not ours)
    # (every logger's lines are searched for the key: a leak through a library counts too)
    ours = [r.getMessage() for r in caplog.records if "/_sandbox/" not in r.getMessage()]
    assert any("ingest_ticksupply started" in r.getMessage() for r in caplog.records if r.name == svc.log.name)
    assert not [m for m in ours if KEY in m]


async def test_429_storm_5xx_and_a_failed_export_lose_and_duplicate_nothing(nats_server: Any) -> None:
    async with sandbox() as sb:
        start = await backfill(sb, DS, 70)
        sb.faults.set(rate_limit_next=3, retry_after_s=1, error_next=4, error_status=503)
        sb.vendor_app.state.api.export_faults.fail_next_exports = 1
        began = time.time_ns()
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        try:
            async with ingestor(nats_server.url, sb) as svc:
                p = await wait_for(lambda: caught_up(js, began), timeout=30, what="the backlog exported")
                sb.faults.set(error_rate=0.2, error_status=500)  # 5xx on a fifth of the calls, while rolling
                p = await wait_for(
                    lambda: caught_up(js, p.last_end_ns + 1_500_000_000), timeout=20, what="more windows"
                )
                sb.faults.reset()
                assert_exactly(await md_trades(js), await truth(sb, DS, start, p.last_end_ns), p.last_end_ns)
                assert sb.faults.counts["rate_limited"] == 3 and sb.faults.counts["errors"] >= 4
                assert svc.client.rate_limited_total == 3
                statuses = [m for m in await read_stream(js, "STATUS", "status.ingest_ticksupply.feed.>")
                            if isinstance(m, FeedStatus) and m.symbol == "BTCUSDT"]
                states = [s.state for s in statuses]
                assert "gap" in states and "resynced" in states[states.index("gap"):]  # the failed export, redone
                gap = next(s for s in statuses if s.state == "gap")
                assert gap.gap_start is not None and gap.gap_end > gap.gap_start
        finally:
            await nc.close()


async def test_retry_after_is_honoured() -> None:
    async with sandbox() as sb:
        sb.faults.set(rate_limit_next=2, retry_after_s=1)
        errors: list[str] = []
        async with TickSupplyClient(sb.url + "/v1", load_settings(TickSupplySettings, env={}).api_key,
                                    requests_per_s=1000, on_error=errors.append) as client:
            began = time.monotonic()
            exchanges = await client.exchanges()
            elapsed = time.monotonic() - began
        assert [e["code"] for e in exchanges] == ["binance", "coinbase", "kraken"]
        assert errors == ["rate_limited", "rate_limited"]
        assert elapsed >= 2.0  # waited Retry-After (1 s) after each 429


async def test_malformed_rows_artifacts_and_replies_are_dead_lettered(
    nats_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    corrupted: list[bytes] = []
    lost: list[list[str]] = []  # rows of the artifact replaced by garbage
    real_build = sandbox_exports.build_artifacts

    def build_with_faults(job: Any) -> list[Any]:
        artifacts = real_build(job)
        if artifacts and not corrupted:  # the first export: break one row of its first artifact
            lines = gzip.decompress(artifacts[0].data).split(b"\n")
            fields = lines[3].split(b",")
            fields[3] = b"4300x.5"
            lines[3] = b",".join(fields)
            corrupted.append(lines[3])
            artifacts[0].data = gzip.compress(b"\n".join(lines), mtime=0)
        elif artifacts and not lost:  # the second: an artifact that is not a gzipped CSV at all
            text = gzip.decompress(artifacts[0].data).decode()
            lost.extend(line.split(",") for line in text.splitlines()[1:])
            artifacts[0].data = b"<html>502 Bad Gateway</html>"
        return artifacts

    monkeypatch.setattr(sandbox_exports, "build_artifacts", build_with_faults)
    async with sandbox() as sb:
        start = await backfill(sb, DS, 30)
        sb.faults.set(malformed_next=1)  # the next JSON reply is garbage
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        try:
            async with ingestor(nats_server.url, sb):
                await wait_for(lambda: lost, timeout=30, what="a second export")
                target = time.time_ns()  # after the second export's window
                p = await wait_for(lambda: caught_up(js, target), timeout=30, what="later windows")

                async def all_three() -> list[DeadLetter] | None:  # published without awaiting acks: may be in flight
                    stored = await read_stream(js, "DLQ", subjects.dead_letter("ingest_ticksupply", "ticksupply"))
                    found = [m for m in stored if isinstance(m, DeadLetter)]
                    payloads = [d.payload for d in found]
                    if (corrupted[0] in payloads and b"<html>502 Bad Gateway</html>" in payloads
                            and any(p.startswith(b'{"broken"') for p in payloads)):
                        return found
                    return None

                letters = await wait_for(all_three, timeout=15, what="the 3 dead letters")
                bad_row = next(d for d in letters if d.payload == corrupted[0])
                assert "line 4" in bad_row.reason and bad_row.subject.startswith("artifact:binance-BTCUSDT-trade-")
                assert any(d.payload.startswith(b'{"broken"') for d in letters)  # the garbage reply, kept whole
                bad_file = next(d for d in letters if d.payload == b"<html>502 Bad Gateway</html>")
                assert "not a gzip file" in bad_file.reason
                statuses = [m for m in await read_stream(js, "STATUS", "status.ingest_ticksupply.feed.>")
                            if isinstance(m, FeedStatus)]
                assert any(s.state == "gap" and "unreadable artifact" in (s.detail or "") for s in statuses)
                rows = await truth(sb, DS, start, p.last_end_ns)
                skipped = {event_id("ticksupply", "trade", DS, corrupted[0].split(b",")[2].decode())}
                skipped |= {trade_id(DS, r) for r in lost}
                assert lost and skipped < {trade_id(DS, r) for r in rows}
                assert_exactly(await md_trades(js), [r for r in rows if trade_id(DS, r) not in skipped], p.last_end_ns)
        finally:
            await nc.close()


async def test_restart_after_the_export_was_created_reuses_it(nats_server: Any) -> None:
    async with sandbox(export_queued_s=1.5) as sb:
        start = await backfill(sb, DS, 70)
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        try:
            first = ingestor(nats_server.url, sb)
            await first.start()
            p = await wait_for(lambda: _with_export(js), timeout=15, what="an export in flight")
            await first.stop()  # the export is still queued on the vendor side
            export_id = p.inflight.export_id
            assert (await progress(js)).inflight.export_id == export_id
            began = time.time_ns()
            async with ingestor(nats_server.url, sb) as second:
                done = await wait_for(lambda: caught_up(js, began), timeout=30, what="the backlog exported")
                assert_exactly(await md_trades(js), await truth(sb, DS, start, done.last_end_ns), done.last_end_ns)
            jobs = sb.vendor_app.state.api.store.accounts[KEY].exports.values()
            same_window = [j for j in jobs if j.start_ns == p.inflight.start_ns]
            assert [j.id for j in same_window] == [export_id]  # re-used, not created again
            assert second.exports_created >= 1  # later windows are new exports
        finally:
            await nc.close()


async def _with_export(js: Any) -> DatastreamProgress | None:
    p = await progress(js)
    return p if p.inflight is not None and p.inflight.export_id else None


async def test_restart_in_the_middle_of_the_artifacts_resumes_without_duplicates(nats_server: Any) -> None:
    async with sandbox() as sb:
        start = await backfill(sb, DS, 150)  # three or four hourly artifacts in the first export
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        try:
            first = ingestor(nats_server.url, sb)
            published = asyncio.Event()
            real_publish = first.publish_artifact
            calls = 0

            async def crash_after_second_artifact(*args: Any, **kwargs: Any) -> int:
                nonlocal calls
                calls += 1
                n = await real_publish(*args, **kwargs)
                if calls == 2:  # published and acked, but the instance dies before recording it
                    published.set()
                    await asyncio.Event().wait()
                return n

            first.publish_artifact = crash_after_second_artifact  # type: ignore[method-assign]
            await first.start()
            await asyncio.wait_for(published.wait(), 20)
            mid = await progress(js)
            assert mid.inflight is not None and len(mid.inflight.done_artifacts) == 1
            await first.stop()

            began = time.time_ns()
            async with ingestor(nats_server.url, sb) as second:
                done = await wait_for(lambda: caught_up(js, began), timeout=30, what="the backlog exported")
                assert second.publisher.duplicates >= 1  # the half-recorded artifact was sent again...
                # ...and deduped
                assert_exactly(await md_trades(js), await truth(sb, DS, start, done.last_end_ns), done.last_end_ns)
                statuses = [m for m in await read_stream(js, "STATUS", "status.ingest_ticksupply.feed.>")
                            if isinstance(m, FeedStatus)]
                assert any(s.state == "resynced" and "resumed" in (s.detail or "") for s in statuses)
            jobs = sb.vendor_app.state.api.store.accounts[KEY].exports.values()
            assert len([j for j in jobs if j.start_ns == mid.inflight.start_ns]) == 1
        finally:
            await nc.close()


def test_configuration_is_validated_and_the_key_is_secret() -> None:
    prefix = "MARKETBUS_INGEST_TICKSUPPLY_"
    with pytest.raises(SettingsError, match=f"{prefix}PAUSED_DATASTREAMS"):
        load_settings(TickSupplySettings, env={f"{prefix}DATASTREAMS": "101", f"{prefix}PAUSED_DATASTREAMS": "104"})
    with pytest.raises(SettingsError, match=f"{prefix}EXPORT_INTERVAL_S"):
        load_settings(TickSupplySettings, env={f"{prefix}EXPORT_INTERVAL_S": "0"})
    with pytest.raises(SettingsError, match=f"{prefix}BASE_URL"):
        load_settings(TickSupplySettings, env={f"{prefix}BASE_URL": "api.ticksupply.com"})
    settings = load_settings(TickSupplySettings, env={f"{prefix}API_KEY": "sk_live_very_secret",
                                                      f"{prefix}DATASTREAMS": "101,115"})
    assert settings.datastreams == [101, 115] and settings.api_key.get() == "sk_live_very_secret"
    assert "sk_live_very_secret" not in repr(settings) and "sk_live_very_secret" not in str(settings.redacted())


async def test_single_events_quotes_and_an_expired_artifact_url(nats_server: Any) -> None:
    depth_ds = 102  # binance BTCUSDT depth -> quotes
    async with sandbox(artifact_url_ttl_s=2) as sb:
        start = await backfill(sb, DS, 8)
        depth_start = await backfill(sb, depth_ds, 4)
        began = time.time_ns()
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        svc = ingestor(nats_server.url, sb, datastreams=[DS, depth_ds], publish_mode="single")
        refused: list[str] = []
        try:
            async with svc:
                real_fetch = svc.client.fetch_artifact
                first = True

                async def slow_first_fetch(url: str) -> bytes:
                    nonlocal first
                    if first:  # hold the first presigned URL until it has expired for real
                        first = False
                        await asyncio.sleep(2.1)
                    try:
                        return await real_fetch(url)
                    except Exception as exc:
                        refused.append(type(exc).__name__)
                        raise

                svc.client.fetch_artifact = slow_first_fetch  # type: ignore[method-assign]
                p = await wait_for(lambda: caught_up(js, began), timeout=30, what="the trades exported")
                await wait_for(lambda: caught_up(js, began, depth_ds), timeout=30, what="the depth exported")
                assert refused and set(refused) == {"ArtifactUrlExpired"}  # re-listed, then downloaded

                msgs = await read_stream(js, "MD", subjects.md("trade", "ticksupply", "binance", "BTCUSDT"))
                assert all(isinstance(m, Trade) for m in msgs)  # one message per trade
                assert_exactly(msgs, await truth(sb, DS, start, p.last_end_ns), p.last_end_ns)

                pd = await progress(js, depth_ds)
                quotes = [
                    q
                    for q in await read_stream(js, "MD", subjects.md("quote", "ticksupply", "binance", "BTCUSDT"))
                    if q.ts_event < pd.last_end_ns
                ]
                rows = await truth(sb, depth_ds, depth_start, pd.last_end_ns)
                assert len(quotes) == len(rows) // 2 > 100 and len({q.id for q in quotes}) == len(quotes)
                bid, ask = rows[0], rows[1]
                q = min(quotes, key=lambda q: q.ts_event)
                assert (q.bid_price, q.ask_price) == (Decimal(bid[4]), Decimal(ask[4]))
                assert (q.bid_size, q.ask_size) == (Decimal(bid[5]), Decimal(ask[5]))
        finally:
            await nc.close()


async def test_a_subscription_paused_behind_our_back_is_resumed_and_the_hole_reported(nats_server: Any) -> None:
    async with sandbox() as sb:
        start = await backfill(sb, DS, 5)
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        try:
            async with ingestor(nats_server.url, sb, subscription_interval_s=0.5) as svc:
                await wait_for(lambda: caught_up(js, time.time_ns() - 1_000_000_000), timeout=20, what="caught up")
                sub_id = svc.subscriptions[DS]["id"]
                async with httpx.AsyncClient(base_url=sb.url, headers={"X-Api-Key": KEY}) as http:
                    assert (await http.post(f"/v1/subscriptions/{sub_id}/pause")).status_code == 204

                    async def resumed() -> list[dict[str, Any]] | None:
                        spans = (await http.get(f"/v1/subscriptions/{sub_id}/spans")).json()
                        return spans if len(spans) == 2 and spans[1]["ended_at"] is None else None

                    spans = await wait_for(resumed, timeout=10, what="the ingestor to resume the subscription")

                async def hole_reported() -> FeedStatus | None:
                    return next((m for m in await read_stream(js, "STATUS", "status.ingest_ticksupply.feed.>")
                                 if isinstance(m, FeedStatus) and m.state == "gap"), None)

                gap = await wait_for(hole_reported, timeout=10, what="a gap status for the paused span")
                assert gap.symbol == "BTCUSDT" and gap.kind == "trade" and gap.gap_end > gap.gap_start
                assert gap.gap_end - gap.gap_start < 5_000_000_000
                assert spans[0]["ended_at"] is not None
                p = await wait_for(lambda: caught_up(js, time.time_ns() - 500_000_000), timeout=20, what="caught up")
                rows = await truth(sb, DS, start, p.last_end_ns)  # clipped to the spans: the hole has no rows
                assert_exactly(await md_trades(js), rows, p.last_end_ns)

                # a replay of something we are not subscribed to is refused with a reason
                request = ReplayRequest(request_id="r-2", source="ticksupply", venue="kraken", symbol="ETHUSD",
                                        kind="trade", start_ns=start, end_ns=start + MIN_NS)
                reply = codec.decode_as((await nc.request(subjects.replay("ticksupply"), codec.encode(request),
                                                          timeout=10)).data, ReplayReply)
                assert not reply.accepted and "subscription" in reply.reason

            # a new instance does not report the same hole again
            async with ingestor(nats_server.url, sb) as again:
                await asyncio.wait_for(again.ready.wait(), 10)  # subscriptions and spans reconciled
            gaps = [m for m in await read_stream(js, "STATUS", "status.ingest_ticksupply.feed.>")
                    if isinstance(m, FeedStatus) and m.state == "gap"]
            assert len(gaps) == 1
        finally:
            await nc.close()


async def test_a_window_too_large_for_one_export_is_split(nats_server: Any) -> None:
    async with sandbox(max_export_rows=3000) as sb:
        start = await backfill(sb, DS, 60)  # 7200 rows: the vendor refuses one export of it all
        began = time.time_ns()
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        try:
            async with ingestor(nats_server.url, sb):
                p = await wait_for(lambda: caught_up(js, began), timeout=30, what="the backlog exported")
                assert_exactly(await md_trades(js), await truth(sb, DS, start, p.last_end_ns), p.last_end_ns)
            jobs = list(sb.vendor_app.state.api.store.accounts[KEY].exports.values())
            assert any(j.status == "failed" and "too large" in (j.reason or "") for j in jobs)
            assert len([j for j in jobs if j.status == "succeeded" and j.start_ns < began - 10 * MIN_NS]) >= 3
        finally:
            await nc.close()


async def test_the_same_trades_in_two_wire_formats_are_ingested_once(nats_server: Any,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """DATASTREAMS listing both the JSON and the SBE trade datastream of one instrument: one of
    them is ingested (JSON), the other refused with a message naming both; no trade twice."""
    sbe_ds = 103  # binance BTCUSDT trades (sbe): the same trades as DS
    caplog.set_level(logging.INFO)
    async with sandbox() as sb:
        start = await backfill(sb, DS, 20)
        began = time.time_ns()
        svc = ingestor(nats_server.url, sb, datastreams=[sbe_ds, DS])
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        try:
            async with svc:
                p = await wait_for(lambda: caught_up(js, began), timeout=30, what="the backlog exported")
                assert list(svc.datastreams) == [DS]
                assert any("datastreams 101 (json) and 103 (sbe) carry the same binance BTCUSDT trade" in r.getMessage()
                           for r in caplog.records if r.name == svc.log.name)
                trades = await md_trades(js)
                assert_exactly(trades, await truth(sb, DS, start, p.last_end_ns), p.last_end_ns)
                assert len({t.trade_id for t in trades}) == len(trades)
        finally:
            await nc.close()
