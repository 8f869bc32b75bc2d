"""Fixtures of the Sitagri ingestor tests: a sandbox, an ingestor wired to it, a bus collector."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import nats
import pytest
import pytest_asyncio

from marketbus.contracts import codec
from marketbus.contracts import feeds as feed_contract
from marketbus.contracts.streams import INGEST_STATE
from marketbus.runtime import kv as kv_snapshot
from services.ingest_sitagri.app import SitagriIngestor
from services.sandbox.common.base import SandboxRunner
from services.sandbox.registry import load_spec


class Collector:
    """Every sitagri event seen on the bus (single messages and batch envelopes, flattened)."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.batches = 0
        self.status: list[Any] = []
        self.dead: list[Any] = []

    async def on_msg(self, msg: Any) -> None:
        obj = codec.decode(msg.data)
        if isinstance(obj, codec.Batch):
            self.batches += 1
        if msg.subject.endswith(".heartbeat"):
            return
        if msg.subject.startswith("status."):
            self.status.append(obj)
        elif msg.subject.startswith("dlq."):
            self.dead.append(obj)
        else:
            self.events.extend(codec.iter_events(obj))

    def of(self, kind: type, **match: Any) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and all(getattr(e, k) == v for k, v in match.items())]

    def states(self) -> list[str]:
        return [s.state for s in self.status if getattr(s, "state", None)]

    def duplicates(self, kind: type) -> list[str]:
        return [i for i, n in Counter(e.id for e in self.events if isinstance(e, kind)).items() if n > 1]


@pytest_asyncio.fixture(autouse=True)
async def _no_resume_points(nats_url: str) -> None:
    """Each test's ingestor starts afresh: a restarted ingestor resumes its quotes from the points
    the previous run saved (ingest_state ``sitagri.live.*``), and the session's NATS is shared."""
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(INGEST_STATE.name)
        # a complete read (nats-py's kv.keys() can end short); delete, not purge: the shared
        # bucket refuses rollup headers (marketbus.contracts.streams.BucketSpec.rollups)
        for key in await kv_snapshot.keys(nc.jetstream(), INGEST_STATE.name, "sitagri.live.>"):
            await kv.delete(key)
    finally:
        await nc.close()


@pytest_asyncio.fixture
async def bus(nats_url: str) -> AsyncIterator[Collector]:
    col = Collector()
    nc = await nats.connect(nats_url)
    subs = [await nc.subscribe(s, cb=col.on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
            for s in ("md.*.sitagri.>", "ref.*.sitagri.>", "status.ingest_sitagri.>", "dlq.ingest_sitagri.>")]
    try:
        yield col
    finally:
        for sub in subs:
            await sub.unsubscribe()
        await nc.close()


@pytest_asyncio.fixture(autouse=True)
async def _fresh_sitagri_feeds(nats_url: str) -> None:
    """These tests share one bus: each starts with no sitagri feed (its ingestor's QUOTES seed them
    again, as on a new deployment), instead of the set the previous test left in the bucket."""
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(feed_contract.BUCKET)
        for key in await kv_snapshot.keys(nc.jetstream(), feed_contract.BUCKET, "sitagri.>"):
            await kv.delete(key)  # not purge: the feeds bucket refuses rollup headers
    finally:
        await nc.close()


def sandbox(**overrides: Any) -> SandboxRunner:
    base = {"port": 0, "rate": 10.0, "news_interval": 2.0, "push_before_ack": 0.5}
    return SandboxRunner(load_spec("sitagri"), **(base | overrides))


def ingestor(nats_url: str, sb: SandboxRunner, **overrides: Any) -> SitagriIngestor:
    base: dict[str, Any] = {
        "nats_url": nats_url, "base_url": sb.url, "heartbeat_interval_s": 60.0, "reconnect_initial_s": 0.1,
        "reconnect_max_s": 0.5, "ws_retry_s": 1.0, "quotes": [], "news_sources": [],
    }
    return SitagriIngestor(**(base | overrides))


async def admin(sb: SandboxRunner, method: str, path: str, **params: Any) -> Any:
    async with httpx.AsyncClient(base_url=sb.url, timeout=10) as http:
        resp = await http.request(method, f"/_sandbox{path}", params=params)
        resp.raise_for_status()
        return resp.json()


@pytest.fixture
def make_sandbox() -> Callable[..., SandboxRunner]:
    return sandbox
