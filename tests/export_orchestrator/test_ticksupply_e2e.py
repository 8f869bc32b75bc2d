"""End to end with real servers: the TickSupply sandbox, the real TickSupply ingestor (under feed
control), nats-server, the history writer and the export orchestrator. Through the official
``ticksupply`` client on the export API, a TickSupply user sees the vendor's catalog (with
base/quote/type), subscribes to a datastream marketbus never collected — and the ingestor starts
collecting it —, exports it in TickSupply's raw and normalized layouts, pauses and deletes
subscriptions (the ingestor follows) and gets 403 for an export after the delete."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import time
from typing import Any

import httpx
import pytest
import ticksupply
from ticksupply.models import SubscriptionStatus

from marketbus.clients.feeds import FeedClient
from marketbus.runtime.tsapi_schemas import BUILT_IN_COLUMNS
from tests.ingest_ticksupply.test_app import ingestor, sandbox

from .conftest import API_KEY, Harness, S, wait_for

BTC_DS, ETH_DS = "101", "104"  # the sandbox's binance BTCUSDT / ETHUSDT trade datastreams (json)


def _csv(client: ticksupply.Client, export_id: str) -> list[list[str]]:
    deadline = time.monotonic() + 30
    while (job := client.exports.get(export_id)).status.value in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job.status.value == "succeeded", job.reason
    rows: list[list[str]] = []
    for art in client.exports.get_download(export_id).artifacts:
        part = list(csv.reader(io.StringIO(gzip.decompress(httpx.get(art.url).content).decode())))
        rows += part if not rows else part[1:]
    return rows


async def test_subscribe_collect_export_pause_delete_through_the_real_ingestor(harness: Harness) -> None:
    feeds = FeedClient(harness.nc, timeout=10)
    fast = {"initial_lookback_s": 60, "export_interval_s": 0.2, "subscription_interval_s": 30}
    async with sandbox() as sb:
        await harness.start_writer()
        orch = await harness.start_orchestrator()
        async with ingestor(harness.url, sb, datastreams=[int(BTC_DS)], **fast):
            await harness.wait_stored("trade.ticksupply.binance.BTCUSDT", 1, timeout=30)
            await harness.wait_stored("instrument.ticksupply.binance.*", 1, timeout=30)
            base = f"{orch.api_url}/v1"

            def subscribe() -> tuple[Any, Any]:
                with ticksupply.Client(api_key=API_KEY, base_url=base, max_retries=0, timeout=30) as client:
                    eth = client.exchanges.list_instruments("binance", search="ETHUSDT").items
                    assert [(i.symbol, i.base, i.quote, i.instrument_type) for i in eth] == [
                        ("ETHUSDT", "ETH", "USDT", "spot")]
                    assert all(
                        ":" not in i.symbol for i in client.exchanges.list_instruments("binance", limit=1000).items
                    )
                    subs = list(client.subscriptions.list_all())  # the seeded feed: BTCUSDT trades
                    assert [(s.datastream.instrument, s.status) for s in subs] == [
                        ("BTCUSDT", SubscriptionStatus.ACTIVE)
                    ]
                    ds = client.datastreams.list(exchange="binance", instrument="ETHUSDT", stream_type="trade").items
                    assert len(ds) == 1  # in the vendor's catalog, never collected by marketbus
                    sub = client.subscriptions.create(datastream_id=ds[0].datastream_id)
                    assert sub.status == SubscriptionStatus.ACTIVE
                    return sub, subs[0]

            eth_sub, btc_sub = await asyncio.to_thread(subscribe)
            feed = await feeds.get("ticksupply", ETH_DS)
            assert feed.state == "active" and (feed.venue, feed.symbol, feed.kind) == ("binance", "ETHUSDT", "trade")
            await harness.wait_stored("trade.ticksupply.binance.ETHUSDT", 5, timeout=30)  # the ingestor collects it

            def export_pause_delete() -> tuple[list[list[str]], list[list[str]]]:
                with ticksupply.Client(api_key=API_KEY, base_url=base, max_retries=0, timeout=30) as client:
                    ds_id = eth_sub.datastream.datastream_id
                    now = time.time_ns()
                    for _ in range(10):  # trades before `now` still on their way to history: export again
                        raw = _csv(client, client.exports.create(ds_id, now - 3600 * S, now).id)
                        norm = _csv(client, client.exports.create(ds_id, now - 3600 * S, now, schema="normalized").id)
                        if len(raw) == len(norm):
                            break
                        time.sleep(1)
                    spans = client.subscriptions.list_spans(eth_sub.id)
                    assert len(spans) == 1 and spans[0].ended_at is None
                    client.subscriptions.pause(btc_sub.id)
                    assert client.subscriptions.get(btc_sub.id).status == SubscriptionStatus.PAUSED
                    client.subscriptions.delete(eth_sub.id)
                    assert client.subscriptions.get(eth_sub.id).status == SubscriptionStatus.DELETED
                    with pytest.raises(ticksupply.PermissionDeniedError):
                        client.exports.create(ds_id, now - 3600 * S, now)
                    return raw, norm

            raw, norm = await asyncio.to_thread(export_pause_delete)
            assert raw[0] == BUILT_IN_COLUMNS[("trade", "raw")] and norm[0] == BUILT_IN_COLUMNS[("trade", "normalized")]
            assert len(raw) == len(norm) >= 6
            started = feed.periods[0].start_ns
            for r, n in zip(raw[1:], norm[1:]):
                assert int(r[1]) >= started  # collected by the feed, after the subscription was created
                assert n[:2] == ["binance", "ETHUSDT"] and n[4:] == [r[2], r[3], r[4], r[5]] and r[5] in ("buy", "sell")

            async def followed() -> bool:
                eth, btc = await feeds.get("ticksupply", ETH_DS), await feeds.get("ticksupply", BTC_DS)
                return eth.state == "removed" and btc.state == "paused"

            await wait_for(followed, timeout=10, what="the feeds follow the subscriptions")
