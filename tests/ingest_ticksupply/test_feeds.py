"""Feed control on the TickSupply ingestor: datastreams added, paused and removed at runtime change
what flows within seconds (and the vendor subscription follows); the set survives a restart; an
unknown datastream, and the twin of a collected one, are refused. The TickSupply sandbox over HTTP
and a real nats-server."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import nats
import pytest

from marketbus.clients import FeedClient, RequestError
from marketbus.contracts import feeds as contract
from tests.helpers import wait_for
from tests.vendor.feedflow import Flow

from .test_app import DS, KEY, ingestor, sandbox

ETH_DS = 104  # binance ETHUSDT trades (json)
SBE_TWIN = 103  # binance BTCUSDT trades (sbe): the same trades as DS


async def vendor_subscriptions(sb: Any) -> dict[int, str]:
    async with httpx.AsyncClient(base_url=sb.url, headers={"X-Api-Key": KEY}) as http:
        subs = (await http.get("/v1/subscriptions")).json()["items"]
    return {s["datastream_id"]: s["status"] for s in subs if s["status"] != "deleted"}


async def test_datastreams_change_at_runtime_and_survive_a_restart(nats_server: Any) -> None:
    nc = await nats.connect(nats_server.url)
    feeds = FeedClient(nc, timeout=10, by="test")
    fast = {"initial_lookback_s": 60, "export_interval_s": 0.2, "subscription_interval_s": 30}
    try:
        async with sandbox() as sb, Flow(nc, "ticksupply") as flow:
            async with ingestor(nats_server.url, sb, datastreams=[DS], **fast) as svc:
                await flow.flowing("BTCUSDT", timeout=20)
                reply = await feeds.add("ticksupply", str(ETH_DS))
                assert (reply.feed.venue, reply.feed.symbol, reply.feed.kind) == ("binance", "ETHUSDT", "trade")
                await flow.state(contract.feed_key("ticksupply", str(ETH_DS)), "subscribed")
                assert await flow.flowing("ETHUSDT", timeout=20) < 10
                assert (await vendor_subscriptions(sb))[ETH_DS] == "active"

                for bad, words in (("999999", "catalog does not list"), ("abc", "catalog does not list"),
                                   (str(SBE_TWIN), "publish every event twice")):
                    with pytest.raises(RequestError) as err:
                        await feeds.add("ticksupply", bad)
                    assert err.value.code == "bad_request" and words in err.value.message, err.value.message

                await feeds.pause("ticksupply", str(DS))
                await flow.state(contract.feed_key("ticksupply", str(DS)), "paused")
                assert await flow.quiet("BTCUSDT") == 0
                assert list(svc.datastreams) == [ETH_DS]

                async def paused_at_vendor() -> bool:
                    return (await vendor_subscriptions(sb)).get(DS) == "paused"
                await wait_for(paused_at_vendor, 10, what="the vendor subscription paused")

                await feeds.remove("ticksupply", str(ETH_DS))
                await flow.state(contract.feed_key("ticksupply", str(ETH_DS)), "unsubscribed")
                assert await flow.quiet("ETHUSDT") == 0

            # a restart keeps the bucket's set (DS paused, ETH removed): DATASTREAMS says DS, ETH
            async with ingestor(nats_server.url, sb, datastreams=[DS, ETH_DS], **fast) as svc:
                await asyncio.wait_for(svc.ready.wait(), 20)
                await feeds.resume("ticksupply", str(DS))
                await flow.flowing("BTCUSDT", timeout=20)
                assert list(svc.datastreams) == [DS]
                assert await flow.quiet("ETHUSDT", 1.0) == 0
        ds = await feeds.get("ticksupply", str(DS))
        assert ds.state == "active" and len(ds.periods) == 2 and ds.periods[0].end_ns is not None
    finally:
        await nc.close()
