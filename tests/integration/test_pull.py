"""runtime.pull against a real nats-server: each message is handed over as it arrives (not when a
batch fills), at most ``max_messages`` are held, unacked ones come back, expired requests are
renewed, a server restart does not stop delivery; a failing message is retried with back-off,
then dead-lettered and terminated; a long handler keeps its message (+WPI)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from marketbus.contracts.consumers import CONSUMERS, ConsumerSpec, ensure_consumer
from marketbus.runtime.natsserver import NatsServer
from marketbus.runtime.pull import MaxDeliveriesWatch, PullConsumer
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


async def test_a_failing_message_is_retried_with_backoff_then_dead_lettered_and_terminated(
    nats_server: NatsServer,
) -> None:
    """One message whose handler always raises: redelivered after the spec's back-off, then on
    its last delivery dead-lettered (with the reason) and terminated; the others flow meanwhile."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="PULLTEST", subjects=["pulltest.>"]))
    spec = ConsumerSpec("PULLTEST", "policy", "test", ack_wait_s=5.0, max_deliver=3, backoff_s=(0.2, 0.4))
    await ensure_consumer(js, spec)
    attempts: list[tuple[int, float]] = []
    handled: list[bytes] = []
    letters: list[tuple[bytes, str]] = []

    async def handler(msg: Msg) -> None:
        if msg.data == b"poison":
            attempts.append((msg.metadata.num_delivered, time.monotonic()))
            raise ValueError("cannot handle this")
        handled.append(msg.data)
        await msg.ack()

    async def dead_letter(msg: Msg, reason: str) -> None:
        letters.append((msg.data, reason))

    pull = PullConsumer.of(nc, spec, handler, max_messages=8, dead_letter=dead_letter)
    await pull.start()
    try:
        await js.publish("pulltest.p", b"good-1")
        await js.publish("pulltest.p", b"poison")
        await js.publish("pulltest.p", b"good-2")
        await wait_for(lambda: letters, 10, what="the poison message dead-lettered")
        assert [d for d, _ in attempts] == [1, 2, 3]
        assert attempts[1][1] - attempts[0][1] >= 0.18 and attempts[2][1] - attempts[1][1] >= 0.38
        assert letters[0][0] == b"poison" and "ValueError" in letters[0][1] and "3 deliveries" in letters[0][1]
        assert handled == [b"good-1", b"good-2"]
        await wait_for(lambda: pull.handling == 0, 5, what="handlers done")

        async def settled() -> bool:  # the server applies the TERM asynchronously
            info = await js.consumer_info("PULLTEST", "policy")
            return info.num_pending == 0 and info.num_ack_pending == 0 and info.num_redelivered == 0

        await wait_for(settled, 5, what="nothing pending or redelivered on the consumer")
        await asyncio.sleep(0.6)
        assert len(attempts) == 3  # terminated: never delivered again
    finally:
        await pull.stop()
        await nc.close()


async def test_a_long_handler_keeps_its_message_with_in_progress_acks(nats_server: NatsServer) -> None:
    """A handler that runs 4x the ack wait: the message is not redelivered meanwhile (+WPI)."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="PULLTEST", subjects=["pulltest.>"]))
    spec = ConsumerSpec("PULLTEST", "slow", "test", ack_wait_s=1.0)
    await ensure_consumer(js, spec)
    deliveries: list[int] = []

    async def handler(msg: Msg) -> None:
        deliveries.append(msg.metadata.num_delivered)
        await asyncio.sleep(4.0)
        await msg.ack()

    pull = PullConsumer.of(nc, spec, handler, max_messages=4)
    await pull.start()
    try:
        await js.publish("pulltest.s", b"slow")
        await wait_for(lambda: deliveries, 5, what="delivery")
        await wait_for(lambda: pull.handling == 0, 10, what="the slow handler done")
        await asyncio.sleep(0.3)
        assert deliveries == [1]
        info = await js.consumer_info("PULLTEST", "slow")
        assert info.num_ack_pending == 0 and info.num_redelivered == 0
    finally:
        await pull.stop()
        await nc.close()


async def test_ensure_consumer_creates_once_and_brings_an_old_consumer_to_its_policy(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    try:
        await js.add_stream(StreamConfig(name="PULLTEST", subjects=["pulltest.>"]))
        # what an older release made: 60 s ack wait, unbounded deliveries
        await js.add_consumer("PULLTEST", ConsumerConfig(durable_name="old", ack_policy=AckPolicy.EXPLICIT,
                                                         ack_wait=60.0, max_deliver=-1))
        spec = ConsumerSpec("PULLTEST", "old", "upgraded", filter_subject=None)
        info = await ensure_consumer(js, spec)
        assert info.config.ack_wait == spec.ack_wait_s and info.config.max_deliver == spec.max_deliver
        fresh = spec.with_(durable="fresh", filter_subject="pulltest.x.>")
        infos = await asyncio.gather(*(ensure_consumer(js, fresh) for _ in range(3)))  # concurrent instances
        assert {i.name for i in infos} == {"fresh"}
        assert infos[0].config.filter_subject == "pulltest.x.>"
        for declared in CONSUMERS:  # the declarations are valid server configs
            assert declared.max_deliver > 1 and declared.ack_wait_s <= 5.0 and declared.backoff_s
    finally:
        await nc.close()


async def test_a_message_never_settled_is_dead_lettered_when_the_server_gives_up(nats_server: NatsServer) -> None:
    """Each consumer holding the message dies (no ack, no NAK): after max_deliver deliveries the
    server stops delivering it and only says so in an advisory; the watch dead-letters it."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="PULLTEST", subjects=["pulltest.>"]))
    spec = ConsumerSpec("PULLTEST", "crashy", "test", ack_wait_s=0.5, max_deliver=2)
    await ensure_consumer(js, spec)
    dropped: list[tuple[str, bytes, str]] = []

    async def on_dropped(subject: str, payload: bytes, reason: str) -> None:
        dropped.append((subject, payload, reason))

    watch = await MaxDeliveriesWatch(nc, spec, on_dropped).start()
    try:
        await js.publish("pulltest.k", b"kills its consumer")
        sub = await js.pull_subscribe_bind("crashy", stream="PULLTEST")
        for _ in range(2):  # two "crashed" consumers: fetched, never settled
            msgs = await sub.fetch(1, timeout=5)
            assert msgs[0].data == b"kills its consumer"
            await asyncio.sleep(0.7)
        # a consumer asks for more (as every live one does): the server finds the message spent
        with contextlib.suppress(nats.errors.TimeoutError):
            assert not await sub.fetch(1, timeout=1.0)
        await wait_for(lambda: dropped, 5, what="the advisory turned into a dead letter")
        subject, payload, reason = dropped[0]
        assert (subject, payload) == ("pulltest.k", b"kills its consumer")
        assert "2 times" in reason and "never settled" in reason
    finally:
        await watch.stop()
        await nc.close()
