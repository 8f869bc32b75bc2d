"""durable_subscriber on a real nats-server: at-least-once (a handler that raises gets the message
again), shared durables split the work, and a restarted consumer resumes where it stopped."""

from __future__ import annotations

import asyncio
import uuid

import nats

from marketbus.contracts import codec
from marketbus.contracts.market import Trade
from marketbus.contracts.streams import ensure_all
from marketbus.faststream import ConsumerSettings, Events, consumer_broker, durable_subscriber

from .conftest import trade


async def _until(condition, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def test_a_failed_handler_gets_the_message_again_then_it_is_acknowledged(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_all(js)
    symbol = f"ALO{uuid.uuid4().hex[:6].upper()}"
    durable = f"alo_{symbol.lower()}"
    seen: list[str] = []
    broker = consumer_broker("alo-test", ConsumerSettings(nats_url=nats_url))

    @durable_subscriber(broker, f"md.trade.*.*.{symbol}", durable, deliver="new", fetch_timeout_s=0.2)
    async def on_trades(trades: Events[Trade]) -> None:
        seen.extend(t.id for t in trades)
        if len(seen) == 1:
            raise RuntimeError("the database is down")  # nacked: JetStream delivers it again

    await broker.start()
    try:
        event = trade(1, "1", "1", 1, symbol)
        await js.publish(f"md.trade.digitex._.{symbol}", codec.encode(event), headers=codec.headers_for(event))
        await _until(lambda: len(seen) >= 2)
        # the second delivery is acknowledged once the handler returns
        for _ in range(100):
            info = await js.consumer_info("MD", durable)
            if info.num_ack_pending == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        await broker.stop()
        await nc.drain()
    assert seen == [event.id, event.id]
    assert info.num_pending == 0 and info.num_ack_pending == 0
    assert info.num_redelivered == 0 and info.ack_floor.stream_seq == info.delivered.stream_seq


def _instance(name: str, nats_url: str, symbol: str, durable: str, into: list[str]):
    """One consumer app instance; every instance shares ``durable``."""
    broker = consumer_broker(f"shared-{name}", ConsumerSettings(nats_url=nats_url))

    @durable_subscriber(broker, f"md.trade.*.*.{symbol}", durable, deliver="new", batch_size=5, fetch_timeout_s=0.2)
    async def on_trades(trades: Events[Trade]) -> None:
        into.extend(t.id for t in trades)
        await asyncio.sleep(0.02)  # slow enough for the other instance to get work

    return broker


async def test_instances_sharing_a_durable_split_the_messages_and_a_restart_resumes(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_all(js)
    symbol = f"SHR{uuid.uuid4().hex[:6].upper()}"
    durable = f"shared_{symbol.lower()}"
    received: dict[str, list[str]] = {"a": [], "b": []}
    brokers = [_instance(name, nats_url, symbol, durable, received[name]) for name in received]
    for broker in brokers:
        await broker.start()
    subject = f"md.trade.digitex._.{symbol}"
    try:
        for i in range(60):
            await js.publish(subject, codec.encode(trade(i, "1", "1", i, symbol)))
        await _until(lambda: len(received["a"]) + len(received["b"]) >= 60)
    finally:
        await brokers[1].stop()
    assert sorted(received["a"] + received["b"]) == sorted(f"t-{symbol}-{i}" for i in range(60))  # each once
    assert received["a"] and received["b"]  # both did some of the work
    await brokers[0].stop()
    # published while no instance runs: the next start gets exactly these
    for i in range(60, 65):
        await js.publish(subject, codec.encode(trade(i, "1", "1", i, symbol)))
    before = len(received["a"])
    await brokers[0].start()
    try:
        await _until(lambda: len(received["a"]) >= before + 5)
    finally:
        await brokers[0].stop()
        await nc.drain()
    assert received["a"][before:] == [f"t-{symbol}-{i}" for i in range(60, 65)]
