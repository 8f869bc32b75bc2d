"""Fixtures of the replay tests: a history writer and a replay service on the session's NATS,
and a helper that records what a live consumer sees while events are published."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import nats
import pytest_asyncio

from marketbus.contracts import Trade, event_id
from marketbus.contracts.streams import ensure_all
from marketbus.runtime.publisher import JetStreamPublisher
from services.history_writer.app import HistoryWriter
from services.history_writer.store.base import Selector
from services.replay.app import ReplayService
from tests.helpers import wait_for
from tests.history.common import writer_overrides

T0 = 1_763_700_000_000_000_000  # 2025-11-21T04:40:00Z
MS = 1_000_000


@dataclass
class Stack:
    url: str
    writer: HistoryWriter
    replay: ReplayService
    nc: Any
    publisher: JetStreamPublisher

    async def stored(self, symbol: str, n: int, kind: str = "*") -> None:
        async def done() -> bool:
            tables = await self.writer.store.read_table(
                Selector(kind=kind, symbol=symbol), 0, 2**63 - 1, columns=["id"]
            )
            return sum(t.num_rows for t in tables.values()) >= n

        await wait_for(done, timeout=20, what=f"{n} events of {symbol} stored")


@pytest_asyncio.fixture(scope="module")
async def stack(nats_url: str, tmp_path_factory: Any, pg_dsn: str) -> AsyncIterator[Stack]:
    durable = f"r{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(nats_url)
    await ensure_all(nc.jetstream())
    # the PostgreSQL backend (numeric keeps a decimal's text, trailing zeros included): replay reads it over NATS
    writer = HistoryWriter(
        **writer_overrides(nats_url, "postgres", str(tmp_path_factory.mktemp("history")), pg_dsn, durable)
    )
    await writer.start()
    replay = ReplayService(nats_url=nats_url, http_port=0, heartbeat_interval_s=1.0, queue=durable, max_sessions=4,
                           status_interval_s=0.2, history_timeout_s=10.0,
                           history_read="nats")
    await replay.start()
    publisher = await JetStreamPublisher(nc).start()
    try:
        yield Stack(nats_url, writer, replay, nc, publisher)
    finally:
        await publisher.close()
        await replay.stop()
        await writer.store.drop_all()  # type: ignore[attr-defined]
        await writer.stop()
        await nc.drain()


def unique_symbol(prefix: str = "R") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10].upper()}"


def trade(symbol: str, i: int, ts: int, source: str = "digitex", venue: str = "DGTX") -> Trade:
    return Trade(id=event_id(source, "trade", venue, symbol, i), source=source, venue=venue, symbol=symbol,
                 ts_event=ts, ts_recv=ts + 1000, price=Decimal("100.50") + i, size=Decimal("0.0100"),
                 side="buy" if i % 2 else "sell", trade_id=str(i))


@dataclass
class Recorder:
    """What a live consumer of ``subject`` receives: (subject, payload, headers) in order."""

    messages: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    sub: Any = None

    async def start(self, nc: Any, subject: str) -> Recorder:
        async def on_msg(msg: Any) -> None:
            self.messages.append((msg.subject, msg.data, dict(msg.headers or {})))

        self.sub = await nc.subscribe(subject, cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
        return self

    async def wait(self, n: int) -> None:
        await wait_for(lambda: len(self.messages) >= n, timeout=20, what=f"{n} messages")
        await asyncio.sleep(0.05)  # nothing more than expected arrives
        await self.sub.unsubscribe()
