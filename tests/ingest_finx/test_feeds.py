"""Feed control on the FinX ingestor: pairs added, paused and removed at runtime change what the
one TickPlant session snaps and pages within seconds; the set survives a restart; a pair FinX
does not list (``observations/pairs``) is refused. The FinX sandbox and a real nats-server."""

from __future__ import annotations

import time

import nats
import pytest

from marketbus.clients import FeedClient, RequestError
from marketbus.contracts import feeds as contract
from marketbus.runtime.natsserver import NatsServer
from services.sandbox.common.base import SandboxRunner
from tests.vendor.feedflow import Flow

from .test_ingest import make, sb  # noqa: F401  (the sandbox fixture)

BTC, ETH = "BTC:USD", "ETH:USD"


async def test_pairs_change_at_runtime_and_survive_a_restart(nats_server: NatsServer, sb: SandboxRunner) -> None:
    nc = await nats.connect(nats_server.url)
    feeds = FeedClient(nc, timeout=10, by="test")
    try:
        async with Flow(nc, "finx") as flow:
            async with make(nats_server, sb, pairs=[BTC]) as ing:
                await flow.flowing("BTC-USD")
                assert flow.count("ETH-USD") == 0
                began = time.monotonic()
                reply = await feeds.add("finx", ETH)
                assert (reply.feed.symbol, reply.feed.kind) == ("ETH-USD", "tick")
                await flow.state(contract.feed_key("finx", ETH), "subscribed")
                await flow.flowing("ETH-USD")
                assert time.monotonic() - began < 5

                for bad in ("DOGE:USD", "eth:usd", "ETHUSD"):
                    with pytest.raises(RequestError) as err:
                        await feeds.add("finx", bad)
                    assert err.value.code == "bad_request" and bad in err.value.message

                await feeds.pause("finx", BTC)
                await flow.state(contract.feed_key("finx", BTC), "paused")
                assert await flow.quiet("BTC-USD") == 0
                assert await flow.quiet("ETH-USD", 1.0) > 0
                assert list(ing.pairs) == [ETH]
                await feeds.remove("finx", ETH)
                await flow.state(contract.feed_key("finx", ETH), "unsubscribed")
                assert await flow.quiet("ETH-USD") == 0
                await feeds.resume("finx", BTC)
                await flow.flowing("BTC-USD")

            # a restart keeps the bucket's set (BTC), not PAIRS (ETH)
            async with make(nats_server, sb, pairs=[ETH]) as ing:
                await flow.flowing("BTC-USD")
                assert list(ing.pairs) == [BTC]
                assert await flow.quiet("ETH-USD", 1.0) == 0
    finally:
        await nc.close()
