"""``FeedClient.watch`` with a slow user, on a real nats-server: explicit pending limits, and a change
that could not be held (its own buffer full, or nats-py dropping past its pending limits) makes the
watch count it, log it and read the bucket again, so the user still ends with every feed's last value."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import nats
import pytest
from nats.errors import SlowConsumerError

from marketbus.clients import FeedClient
from marketbus.contracts import codec
from marketbus.contracts import feeds as contract
from marketbus.contracts.feeds import Feed
from marketbus.runtime.natsserver import NatsServer

pytestmark = pytest.mark.timeout(120)

KEYS = 10
ROUNDS = 20  # updates of each key in the burst


def feed(n: int, rev: int) -> Feed:
    instrument = f"W{n}"
    return Feed(key=contract.feed_key("finx", instrument), vendor="finx", instrument=instrument, venue="V",
                symbol=instrument, state="active", created_ts=1, updated_ts=rev, updated_by="test")


async def burst(url: str, first: int) -> dict[str, int]:
    """Every key updated ROUNDS times; the last updated_ts of each key."""
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value(contract.BUCKET)
        last: dict[str, int] = {}
        for r in range(ROUNDS):
            for n in range(KEYS):
                f = feed(n, first + r)
                await kv.put(f.key, codec.encode(f))
                last[f.key] = f.updated_ts
        return last
    finally:
        await nc.close()


async def read_until(watch: Any, seen: dict[str, int], final: dict[str, int]) -> None:
    async with asyncio.timeout(60):
        async for f in watch:
            assert seen.get(f.key, 0) < f.updated_ts  # never an older value than one given
            seen[f.key] = f.updated_ts
            if all(seen.get(k) == v for k, v in final.items()):
                return


async def test_a_user_slower_than_the_buffer_resyncs_and_ends_with_every_last_value(
        nats_server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    nc = await nats.connect(nats_server.url)
    feeds = FeedClient(nc, timeout=10, watch_buffer=4)
    try:
        kv = await nc.jetstream().key_value(contract.BUCKET)
        first = feed(0, 1)
        await kv.put(first.key, codec.encode(first))
        watch = feeds.watch("finx")
        assert (await watch.__anext__()).key == first.key  # the watch runs; its user now stops reading
        final = await burst(nats_server.url, 2)
        # the changes came while the user did not read: more than the buffer holds
        seen = {first.key: 1}
        with caplog.at_level(logging.WARNING, "marketbus.clients.feeds"):
            await read_until(watch, seen, final)
        assert feeds.watch_resyncs >= 1
        assert "slow consumer" in caplog.text and "resync" in caplog.text
        await watch.aclose()
    finally:
        await nc.close()


async def test_changes_nats_py_drops_past_its_pending_limits_are_read_again(nats_server: NatsServer) -> None:
    drops: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError):
            drops.append(exc)

    nc = await nats.connect(nats_server.url, error_cb=on_error)
    # a large buffer: nats-py's limit is the one hit (above the 10 keys a resync reads, below the burst)
    feeds = FeedClient(nc, timeout=10, watch_pending_msgs=16)
    try:
        kv = await nc.jetstream().key_value(contract.BUCKET)
        first = feed(0, 1)
        await kv.put(first.key, codec.encode(first))
        watch = feeds.watch("finx")
        assert (await watch.__anext__()).key == first.key
        # a user that holds the event loop (synchronous work) while the burst arrives: when the loop
        # runs again, nats-py parses the burst at once and drops what exceeds 16 pending messages
        result: dict[str, dict[str, int]] = {}
        done = threading.Event()

        def run() -> None:
            result["final"] = asyncio.run(burst(nats_server.url, 2))
            done.set()

        thread = threading.Thread(target=run)
        thread.start()
        assert done.wait(60)  # blocks the loop until every change is stored
        thread.join()
        seen = {first.key: 1}
        await read_until(watch, seen, result["final"])
        assert drops, "nats-py dropped nothing: the test did not reach its pending limit"
        assert feeds.watch_resyncs >= 1
        await watch.aclose()
    finally:
        await nc.close()


async def test_the_pending_limits_are_explicit(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        feeds = FeedClient(nc)
        watch = feeds.watch("finx", initial=False)
        task = asyncio.ensure_future(watch.__anext__())
        subs: list[Any] = []
        async with asyncio.timeout(10):
            while not subs:
                subs = [s for s in nc._subs.values() if s._jsi is not None]  # the watch's (on its inbox)
                await asyncio.sleep(0.01)
        assert (subs[0]._pending_msgs_limit, subs[0]._pending_bytes_limit) == (4096, 16 * 1024 * 1024)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await nc.close()
