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
        group = [trade(i, symbol) for i in range(1000, 2000)]
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
        again = await asyncio.wait_for(await publisher.publish_group(singles[:5]), 10)
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
        await asyncio.wait_for(await publisher.publish_group([trade(i, "RAWACK") for i in range(50)]), 10)
        # nats-py queued none of them for the subscription (the handler took each from the parser)
        assert inbox_sub._pending_queue.qsize() == 0 and inbox_sub._received == 0
    finally:
        await publisher.close()
        await nc.close()
