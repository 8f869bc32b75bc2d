"""Feed control on the Digitex ingestor: markets added, paused and removed at runtime change what
flows within seconds; the set survives a restart (the env seeds it once); an unknown market is
refused. The Digitex sandbox over HTTP and a real nats-server."""

from __future__ import annotations

import nats
import pytest

from marketbus.clients import FeedClient, RequestError
from marketbus.contracts import feeds as contract
from marketbus.runtime.natsserver import NatsServer
from services.sandbox.common.base import SandboxRunner
from tests.vendor.feedflow import Flow

from .test_ingest import make, sb  # noqa: F401  (the sandbox fixture)

BTC, ETH = "FS:BTCUSD", "FS:ETHUSD"


async def test_markets_change_at_runtime_and_survive_a_restart(nats_server: NatsServer, sb: SandboxRunner) -> None:
    nc = await nats.connect(nats_server.url)
    feeds = FeedClient(nc, timeout=5, by="test")
    fast = dict(trades_interval_s=0.2, book_interval_s=0.2, resolutions=["1"])
    try:
        async with Flow(nc, "digitex") as flow:
            async with make(nats_server, sb, markets=[BTC], **fast):
                await flow.flowing("FS-BTCUSD")
                assert flow.count("FS-ETHUSD") == 0
                await flow.state(contract.feed_key("digitex", BTC), "subscribed")

                reply = await feeds.add("digitex", ETH)
                assert reply.feed.symbol == "FS-ETHUSD" and reply.feed.venue == "DIGITEX"
                assert await flow.flowing("FS-ETHUSD") < 5
                await flow.state(contract.feed_key("digitex", ETH), "subscribed")

                await feeds.pause("digitex", BTC)
                await flow.state(contract.feed_key("digitex", BTC), "paused")
                assert await flow.quiet("FS-BTCUSD") == 0
                assert await flow.quiet("FS-ETHUSD", 1.0) > 0  # the other market goes on

                with pytest.raises(RequestError) as err:
                    await feeds.add("digitex", "FS:NOPE")
                assert err.value.code == "bad_request" and "FS:NOPE" in err.value.message

                await feeds.resume("digitex", BTC)
                await flow.flowing("FS-BTCUSD")
                await feeds.remove("digitex", BTC)
                await flow.state(contract.feed_key("digitex", BTC), "unsubscribed")
                assert await flow.quiet("FS-BTCUSD") == 0

            # a restart keeps the bucket's set (ETH only), not MARKETS (BTC)
            async with make(nats_server, sb, markets=[BTC], **fast) as ing:
                await flow.flowing("FS-ETHUSD")
                assert sorted(s.code for s in ing.markets.values()) == [ETH]
                assert await flow.quiet("FS-BTCUSD", 1.0) == 0
        btc = await feeds.get("digitex", BTC)
        assert btc.state == "removed" and len(btc.periods) == 2 and all(p.end_ns for p in btc.periods)
    finally:
        await nc.close()
