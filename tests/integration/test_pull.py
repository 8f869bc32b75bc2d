"""runtime.pull against a real nats-server: each message is handed over as it arrives (not when a
batch fills), at most ``max_messages`` are held, unacked ones come back, expired requests are
renewed, and a server restart does not stop delivery."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from marketbus.runtime.natsserver import NatsServer
from marketbus.runtime.pull import PullConsumer
from tests.helpers import wait_for


async def _setup(url: str, ack_wait: float = 30.0) -> tuple[nats.NATS, object]:
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="PULLTEST", subjects=["pulltest.>"]))
    await js.add_consumer("PULLTEST", ConsumerConfig(durable_name="worker", ack_policy=AckPolicy.EXPLICIT,
                                                     ack_wait=ack_wait, max_ack_pending=-1))
    return nc, js


async def test_a_lone_message_is_handled_at_once_and_the_window_is_bounded(nats_server: NatsServer) -> None:
    nc, js = await _setup(nats_server.url)
    arrived: dict[bytes, float] = {}
    gate = asyncio.Event()
    running = 0
    most = 0

    async def handler(msg: Msg) -> None:
        nonlocal running, most
        arrived[msg.data] = time.monotonic()
        running += 1
        most = max(most, running)
        await gate.wait()
        running -= 1
        await msg.ack()

    pull = PullConsumer(nc, "PULLTEST", "worker", handler, max_messages=8, expires_s=5.0)
    await pull.start()
    try:
        # one message, with a request for 8 outstanding: handed over long before the request expires
        sent = time.monotonic()
        await js.publish("pulltest.a", b"lone")
        await wait_for(lambda: b"lone" in arrived, 2, what="the lone message")
        assert arrived[b"lone"] - sent < 1.0
        # 40 more while the handlers are held: never more than 8 at once
        for i in range(40):
            await js.publish("pulltest.a", f"m{i}".encode())
        await wait_for(lambda: running == 8, 5, what="8 handlers running")
        await asyncio.sleep(0.3)
        assert running == 8 and len(arrived) == 8
        gate.set()
        await wait_for(lambda: len(arrived) == 41, 10, what="all 41 handled")
        assert most == 8
        await wait_for(lambda: pull.handling == 0, 5, what="handlers done")
        info = await js.consumer_info("PULLTEST", "worker")
        assert info.num_pending == 0 and info.num_ack_pending == 0
    finally:
        await pull.stop()
        await nc.close()


async def test_unacked_messages_come_back_and_expired_requests_are_renewed(nats_server: NatsServer) -> None:
    nc, js = await _setup(nats_server.url, ack_wait=1.0)
    deliveries: list[bytes] = []

    async def handler(msg: Msg) -> None:
        deliveries.append(msg.data)
        if deliveries.count(msg.data) > 1:
            await msg.ack()  # the first delivery is "lost" (no ack): JetStream redelivers it

    pull = PullConsumer(nc, "PULLTEST", "worker", handler, max_messages=4, expires_s=0.5)
    await pull.start()
    try:
        await asyncio.sleep(1.5)  # several requests expire (408) meanwhile
        await js.publish("pulltest.b", b"x")
        await wait_for(lambda: deliveries.count(b"x") == 2, 5, what="redelivery of the unacked message")
    finally:
        await pull.stop()
        await nc.close()


@pytest.mark.timeout(60)
async def test_delivery_goes_on_after_a_server_restart(nats_server: NatsServer) -> None:
    nc, js = await _setup(nats_server.url)
    got: list[bytes] = []

    async def handler(msg: Msg) -> None:
        got.append(msg.data)
        await msg.ack()

    pull = PullConsumer(nc, "PULLTEST", "worker", handler, max_messages=16, expires_s=1.0)
    await pull.start()
    try:
        await js.publish("pulltest.c", b"before")
        await wait_for(lambda: b"before" in got, 5, what="first message")
        nats_server.stop()
        await asyncio.sleep(0.5)
        nats_server.start()
        await wait_for(lambda: nc.is_connected, 15, what="reconnected")
        await js.publish("pulltest.c", b"after")
        await wait_for(lambda: b"after" in got, 10, what="a message after the restart")
    finally:
        await pull.stop()
        await nc.close()
