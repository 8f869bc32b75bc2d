"""The publisher's fast paths (issue #16): acks taken straight from the protocol parser
(``natsprivate.subscribe_raw``), single events queued without a coroutine (``queue_event``),
group messages written 128 frames at a time. What a user checks: every event stored once, in
order, under its id; the connection's other subscriptions unaffected; the same without nats-py's
private API."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import nats
import pytest

from marketbus.contracts import codec
from marketbus.contracts.base import MarketEvent
from marketbus.contracts.market import Trade
from marketbus.runtime import natsprivate
from marketbus.runtime.publisher import JetStreamPublisher
from tests.helpers import wait_for


def trade(i: int, symbol: str) -> Trade:
    return Trade(id=f"{symbol.lower()}-{i}", source="test", venue="FAST", symbol=symbol, ts_event=i + 1,
                 ts_recv=i + 2, price=Decimal("100.5"), size=Decimal(1), side="buy", trade_id=str(i))


@pytest.mark.parametrize("private_api", [True, False])
async def test_single_and_group_events_are_stored_once_in_order_and_other_subscriptions_still_work(
        nats_url: str, js: Any, monkeypatch: pytest.MonkeyPatch, private_api: bool) -> None:
    monkeypatch.setattr(natsprivate, "AVAILABLE", private_api)
    symbol = f"PATHS{int(private_api)}"
    nc = await nats.connect(nats_url)
    other: list[tuple[str, bytes, dict[str, str] | None]] = []

    async def on_other(msg: Any) -> None:
        other.append((msg.subject, msg.data, msg.headers))

    publisher = await JetStreamPublisher(nc, max_inflight=300).start()  # fewer slots than events
    try:
        # the connection's other subscriptions (a service's FastStream subscribers) keep working
        await nc.subscribe(f"other.{symbol}", cb=on_other)
        singles = [trade(i, symbol) for i in range(1000)]
        futures = []
        for event in singles:
            future = publisher.queue_event(event)  # what Ingestor.emit does
            if future is None:  # no room (or the public path): the awaitable publish
                future = await publisher.publish_event(event)
            elif publisher.write_due():
                await publisher.write_queued()
            futures.append(future)
        group: list[MarketEvent] = [trade(i, symbol) for i in range(1000, 2000)]
        group_ack = await publisher.publish_group(group)
        await nc.publish(f"other.{symbol}", b"hello", headers={"X-Test": "1"})
        acks = await asyncio.wait_for(asyncio.gather(*futures, group_ack), 30)
        assert all(a.stream == "MD" and not a.duplicate for a in acks)
        await publisher.flush()
        assert publisher.published == 2000 and publisher.inflight == 0 and publisher.duplicates == 0
        await wait_for(lambda: other == [(f"other.{symbol}", b"hello", {"X-Test": "1"})], timeout=5,
                       what="the other subscription's message")
        # stored once each, in the order published, under their ids
        sub = await js.subscribe(f"md.trade.test.FAST.{symbol}", ordered_consumer=True)
        stored = []
        for _ in range(2000):
            msg = await sub.next_msg(timeout=5)
            stored.append((msg.headers["Nats-Msg-Id"], codec.decode(msg.data)))
        assert [mid for mid, _ in stored] == [e.id for e in singles + group]
        assert [e for _, e in stored] == singles + group
        with pytest.raises(nats.errors.TimeoutError):
            await sub.next_msg(timeout=0.3)
        # the same ids again: JetStream de-duplicates them (each acked as a duplicate)
        again = await asyncio.wait_for(await publisher.publish_group(list(singles[:5])), 10)
        assert again.duplicate
    finally:
        await publisher.close()
        await nc.close()


async def test_acks_are_not_delivered_through_nats_py_when_the_private_api_is_there(nats_url: str, js: Any) -> None:
    nc = await nats.connect(nats_url)
    publisher = await JetStreamPublisher(nc).start()
    try:
        assert isinstance(nc._ps, natsprivate.FrameParser)
        inbox_sub = publisher._sub
        events: list[MarketEvent] = [trade(i, "RAWACK") for i in range(50)]
        await asyncio.wait_for(await publisher.publish_group(events), 10)
        # nats-py queued none of them for the subscription (the handler took each from the parser)
        assert inbox_sub._pending_queue.qsize() == 0 and inbox_sub._received == 0
    finally:
        await publisher.close()
        await nc.close()


async def stored_ids(js: Any, subject: str, expected: int) -> list[str]:
    """The Nats-Msg-Id of every message stored on ``subject`` (all of them: stops after a quiet
    0.5 s once ``expected`` are in, so a duplicate stored after them is seen too)."""
    sub = await js.subscribe(subject, ordered_consumer=True)
    ids: list[str] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5 if len(ids) >= expected else 10)
            except nats.errors.TimeoutError:
                return ids
            ids.append(msg.headers["Nats-Msg-Id"])
    finally:
        await sub.unsubscribe()


async def test_groups_and_single_events_published_right_before_close_are_all_stored_once(
        nats_url: str, js: Any) -> None:
    """An ingestor's stop: a back-fill group (several 128-frame writes, more events than slots)
    and single events queued on the client, then the publisher closed and the connection closed
    at once. close() waits for every ack: the stream holds each event exactly once."""
    nc = await nats.connect(nats_url)
    publisher = await JetStreamPublisher(nc, max_inflight=500).start()
    assert isinstance(nc._ps, natsprivate.FrameParser)
    group: list[MarketEvent] = [trade(i, "STOPG") for i in range(3000)]
    singles = [trade(i, "STOPG") for i in range(3000, 3300)]
    try:
        group_ack = await publisher.publish_group(group)
        futures = []
        for event in singles:
            future = publisher.queue_event(event)
            futures.append(future if future is not None else await publisher.publish_event(event))
    finally:
        await publisher.close()  # no flush() of our own: close() must wait for the acks
        await nc.close()
    assert group_ack.done() and not group_ack.exception()
    assert all(f.done() and not f.exception() for f in futures)
    assert publisher.published == 3300 and publisher.failed == 0
    ids = await stored_ids(js, "md.trade.test.FAST.STOPG", 3300)
    assert sorted(ids) == sorted(e.id for e in group + singles)  # every one, once


async def test_a_group_published_across_a_reconnect_is_stored_once_and_acked_only_when_stored(
        nats_server: Any) -> None:
    """nats-server restarted while a group is being written (some frames on the old connection,
    some buffered by nats-py while reconnecting, some acks lost with the old connection): the
    group's future resolves only once every event is stored, each exactly once."""
    nc = await nats.connect(nats_server.url, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
    publisher = await JetStreamPublisher(nc, max_inflight=400, ack_timeout=1.0).start()
    events: list[MarketEvent] = [trade(i, "RECON") for i in range(4000)]
    restarted = asyncio.Event()

    async def restart() -> None:
        await wait_for(lambda: publisher.inflight > 0, timeout=10, interval=0.001, what="the group in flight")
        nats_server.stop()
        nats_server.start()
        restarted.set()

    try:
        restarter = asyncio.create_task(restart())
        group_ack = await publisher.publish_group(events)
        await asyncio.wait_for(restarter, 30)
        await asyncio.wait_for(asyncio.shield(group_ack), 60)
        await publisher.flush()
        assert restarted.is_set() and publisher.failed == 0
    finally:
        await publisher.close()
        await nc.close()
    check = await nats.connect(nats_server.url)
    try:
        ids = await stored_ids(check.jetstream(), "md.trade.test.FAST.RECON", len(events))
    finally:
        await check.close()
    assert len(ids) == len(set(ids)), "an event stored twice"
    assert set(ids) == {e.id for e in events}, f"{len({e.id for e in events} - set(ids))} events lost"
