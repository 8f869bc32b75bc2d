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


async def test_collection_periods_follow_the_data_flow(nats_server: NatsServer, sb: SandboxRunner) -> None:
    """A feed's period is open while data flows, not merely while the feed is configured: the
    vendor down closes it and its return opens another; stopping the ingestor closes it and a
    start opens one; after a crash (an instance that vanished without stopping), the next start
    closes the dangling period at the dead instance's last refresh."""
    import asyncio
    import time

    import httpx
    import msgspec

    from marketbus.contracts import codec
    from marketbus.contracts.feeds import Period
    from marketbus.vendor.feeds import FlowEntry, flow_key
    from tests.helpers import wait_for

    nc = await nats.connect(nats_server.url)
    feeds = FeedClient(nc, timeout=5, by="test")
    fast = dict(trades_interval_s=0.2, book_interval_s=0.2, resolutions=["1"], retry_max_s=0.2)

    async def periods() -> list[Period]:
        return list((await feeds.get("digitex", BTC)).periods)

    async def settled(n: int, open_: bool) -> list[Period]:
        async def ok() -> bool:
            got = await periods()
            return len(got) == n and (got[-1].end_ns is None) == open_
        await wait_for(ok, 10, what=f"{n} periods, the last {'open' if open_ else 'closed'}")
        return await periods()

    try:
        async with make(nats_server, sb, markets=[BTC], **fast) as ing, httpx.AsyncClient(base_url=sb.url) as http:
            first = await settled(1, True)
            # the flow record is refreshed every few seconds, not rewritten in a loop by its own watch
            kv = await nc.jetstream().key_value(contract.BUCKET)
            before = (await kv.get(flow_key("digitex"))).revision
            await asyncio.sleep(1.0)
            assert (await kv.get(flow_key("digitex"))).revision - before <= 2
            await http.post("/_sandbox/digitex/faults", json={"maintenance": True})
            await wait_for(lambda: ing._connected is False, 10, what="the outage")
            down = await settled(1, False)
            assert down[0].start_ns == first[0].start_ns and down[0].end_ns is not None
            await http.post("/_sandbox/digitex/faults", json={"maintenance": False})
            back = await settled(2, True)
            assert back[1].start_ns >= (down[0].end_ns or 0)
        stopped_at = time.time_ns()
        after_stop = await settled(2, False)  # the stop closed it; the feed stays active
        assert (after_stop[1].end_ns or 0) <= stopped_at and (await feeds.get("digitex", BTC)).state == "active"

        async with make(nats_server, sb, markets=[BTC], **fast):
            await settled(3, True)  # a start opens one

        # a crash: an instance whose entry stopped being refreshed a minute ago left a period open
        now = time.time_ns()
        crashed_start, crashed_seen = now - 120 * 10**9, now - 60 * 10**9
        record = await feeds.get("digitex", BTC)
        dangling = msgspec.structs.replace(record, periods=[*record.periods[:3], Period(crashed_start, None)])
        await kv.put(contract.feed_key("digitex", BTC), codec.encode(dangling))
        await kv.put(flow_key("digitex"), msgspec.json.encode({"crashed-1": FlowEntry(crashed_seen, True)}))
        started = time.time_ns()
        async with make(nats_server, sb, markets=[BTC], **fast):
            got = await settled(5, True)
            assert got[3] == Period(crashed_start, crashed_seen)  # closed at the dead instance's last refresh
            assert started <= got[4].start_ns <= time.time_ns()  # ours, from our start
            await asyncio.sleep(0.1)
        assert (await periods())[4].end_ns is not None
    finally:
        await nc.close()
