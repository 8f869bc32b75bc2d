"""A user's ordered consumer on MD (named: the unnamed create is denied there) keeps delivering,
in order and without a gap, after nats-py recreates it: after a network cut and reconnect (the old
consumer still exists on the server), after the consumer is deleted, after a server restart. All
as the ``reader`` identity, against a real nats-server running the generated authorization.

nats-py recreates an ordered consumer with the same config, name included; with the old consumer
still there the server refuses it ("deliver policy can not be updated") until the old one
expires. ``marketbus.runtime.ordered.ordered_subscribe`` renames it on each recreation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
from nats.js.api import ConsumerConfig, DeliverPolicy

from marketbus.runtime.http import free_port
from marketbus.runtime.ordered import ordered_subscribe, rename_on_reset
from tests.helpers import wait_for

from .conftest import SecureBus, provision_as_admin, start_secure

pytestmark = pytest.mark.timeout(120)

SUBJECT = "md.trade.finx.CB.ORDERED"


class CuttableProxy:
    """A TCP proxy in front of the server whose connections can be cut: a network failure the
    server does not see as a client going away for good."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.down = False  # connections are refused while the network is "down"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()

    async def outage(self, seconds: float) -> None:
        """Cut every connection and refuse new ones for ``seconds``."""
        self.down = True
        self.cut()
        await asyncio.sleep(seconds)
        self.down = False

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


@pytest_asyncio.fixture
async def private_bus(tmp_path: Path) -> AsyncIterator[SecureBus]:
    bus = start_secure(tmp_path)
    try:
        await provision_as_admin(bus)
        yield bus
    finally:
        for nc in bus.clients:
            if not nc.is_closed:
                await nc.close()
        bus.server.cleanup()


class Follower:
    """The reader's ordered consumer on SUBJECT: the stream sequences it got, the client errors."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.errors: list[str] = []
        self.nc: Any = None
        self.sub: Any = None

    async def on_error(self, exc: Exception) -> None:
        self.errors.append(f"{exc!r} {getattr(exc, 'description', '')}")

    async def on_msg(self, msg: Any) -> None:
        self.seqs.append(msg.metadata.sequence.stream)

    async def start(self, bus: SecureBus, url: str) -> Follower:
        self.nc = await nats.connect(url, error_cb=self.on_error, reconnect_time_wait=0.5, max_reconnect_attempts=-1,
                                     **bus.options("reader"))
        bus.clients.append(self.nc)
        # a long inactive_threshold: the old consumer outlives a reconnect by far
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=60.0)
        self.sub = await ordered_subscribe(self.nc.jetstream(), SUBJECT, cb=self.on_msg, idle_heartbeat=0.5,
                                           config=config)
        return self

    async def has(self, seqs: list[int], what: str, timeout: float = 8.0) -> None:
        await wait_for(lambda: len(self.seqs) >= len(seqs), timeout=timeout,
                       what=f"{what}: {seqs} delivered (got {self.seqs}, errors {self.errors[-3:]})")
        assert self.seqs == seqs, f"{what}: out of order or with a gap: {self.seqs}"


async def publish(js: Any, n: int) -> list[int]:
    return [(await js.publish(SUBJECT, b"{}")).seq for _ in range(n)]


async def test_it_keeps_delivering_after_a_network_cut_while_the_old_consumer_lives(private_bus: SecureBus) -> None:
    proxy = CuttableProxy(private_bus.server.port)
    await proxy.start()
    try:
        follower = await Follower().start(private_bus, f"nats://127.0.0.1:{proxy.port}")
        admin = (await private_bus.connect("admin")).nc.jetstream()
        sent = await publish(admin, 3)
        await follower.has(sent, "before the cut")
        first = follower.sub._sub._jsi._psub._consumer
        outage = asyncio.create_task(proxy.outage(2.5))  # heartbeats missed: nats-py recreates the consumer
        await asyncio.sleep(0.2)
        sent += await publish(admin, 3)  # while the reader is away
        await outage
        await wait_for(lambda: follower.nc.is_connected, timeout=10, what="the reader reconnected")
        sent += await publish(admin, 3)
        await follower.has(sent, "after the cut")
        assert follower.sub._sub._jsi._psub._consumer != first  # recreated under a fresh name
        assert (await admin.consumer_info("MD", first)).name == first  # the old one was still there
        assert not [e for e in follower.errors if "can not be updated" in e or "ermission" in e], follower.errors
    finally:
        await proxy.close()


async def test_it_keeps_delivering_after_its_consumer_is_deleted(private_bus: SecureBus) -> None:
    follower = await Follower().start(private_bus, private_bus.url)
    admin = (await private_bus.connect("admin")).nc.jetstream()
    sent = await publish(admin, 3)
    await follower.has(sent, "before the delete")
    await admin.delete_consumer("MD", follower.sub._sub._jsi._psub._consumer)
    sent += await publish(admin, 3)
    await follower.has(sent, "after the delete")


async def test_it_keeps_delivering_after_a_server_restart(private_bus: SecureBus) -> None:
    follower = await Follower().start(private_bus, private_bus.url)
    admin_nc = await nats.connect(private_bus.url, reconnect_time_wait=0.5, max_reconnect_attempts=-1,
                                  **private_bus.options("admin"))
    private_bus.clients.append(admin_nc)
    admin = admin_nc.jetstream()
    sent = await publish(admin, 3)
    await follower.has(sent, "before the restart")
    await asyncio.to_thread(private_bus.server.stop)
    await asyncio.to_thread(private_bus.server.start)
    await wait_for(lambda: admin_nc.is_connected and follower.nc.is_connected, timeout=15, what="reconnected")
    sent += await publish(admin, 3)
    await follower.has(sent, "after the restart", timeout=15)


def test_rename_on_reset_refuses_what_it_cannot_patch() -> None:
    """Another nats-py (no ``_jsi``) is said, not silently left unpatched."""
    with pytest.raises(RuntimeError, match="cannot rename it"):
        rename_on_reset(object())
