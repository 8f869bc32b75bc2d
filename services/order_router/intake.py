"""Continuous pull from the ORDERS_CMD work queue: each command is handed over as it arrives.

nats-py's ``PullSubscription.fetch(batch, timeout)`` returns only when the batch is full or the
timeout has passed once it went into a long poll (it waits for the rest of the batch), so at 100
commands/s a command could wait up to ``timeout`` before the router even saw it. Here one pull
request of ``batch`` messages is kept open on the durable consumer at all times; messages go to
the handler one by one as the server delivers them, and a new request is sent as soon as the
previous one is used up, expired (408) or ended by the server (409). A watchdog re-sends the
request if nothing at all (not even its expiry) came back in time, e.g. after a reconnect.

The consumer is the same durable pull consumer as before (explicit acks, shared by every router
instance: a work queue), so acks, redeliveries and the idempotency guarantees are unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.js.api import ConsumerConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

log = logging.getLogger(__name__)


class PullIntake:
    def __init__(self, nc: Any, js: Any, *, stream: str, durable: str, config: ConsumerConfig, batch: int,
                 expires_s: float, handler: Callable[[Any], Awaitable[None]]) -> None:
        self.nc, self.js = nc, js
        self.stream, self.durable, self.config = stream, durable, config
        self.batch = batch
        self.expires_s = expires_s
        self.handler = handler
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = ""
        self._sub: Any = None
        self._left = 0  # messages the open pull request may still deliver
        self._last_seen = 0.0  # loop time of the last delivery / status on the inbox
        self._wake = asyncio.Event()
        self._pause = 0.0  # before the next request (after a 409 from the server)

    async def start(self) -> None:
        try:
            await self.js.consumer_info(self.stream, self.durable)
        except NotFoundError:
            await self.js.add_consumer(self.stream, config=self.config)
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _request(self) -> None:
        self._left = self.batch
        self._last_seen = asyncio.get_running_loop().time()
        body = msgspec.json.encode({"batch": self.batch, "expires": int(self.expires_s * 1e9)})
        await self.nc.publish(self._next_subject, body, reply=self._inbox)

    async def run(self) -> None:
        """Keep a pull request open (the task of the service)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                if self._left <= 0:
                    if self._pause:
                        await asyncio.sleep(self._pause)
                        self._pause = 0.0
                    await self._request()
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                if self._left > 0 and loop.time() - self._last_seen > self.expires_s + 2.0:
                    log.info("pull request unanswered: sending a new one")
                    self._left = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - disconnected: try again
                log.warning("pull request failed: %r", exc)
                self._left = 0
                await asyncio.sleep(0.5)

    async def _on_msg(self, msg: Any) -> None:
        self._last_seen = asyncio.get_running_loop().time()
        status = JetStreamContext.is_status_msg(msg)
        if status:
            if status != "100":  # 404/408: the request is over; 409: ended by the server
                if status == "409":
                    log.info("pull request ended by the server: %s", (msg.headers or {}).get("Description"))
                    self._pause = 0.2
                self._left = 0
                self._wake.set()
            return
        self._left -= 1
        if self._left <= 0:
            self._wake.set()  # the batch is used up: ask for the next one at once
        await self.handler(msg)
