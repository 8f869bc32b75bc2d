"""What the order router keeps per order is bounded: open orders plus the last RECENT_KEPT
closed ones (issue #16: RSS flat at 1M and 10M order events, ``bench/rss.py --vendors order_router``).
Before, every order's KV revision stayed in ``StateStore.revisions`` for the life of the process."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from decimal import Decimal
from typing import Any

import nats
import pytest

from marketbus.clients.orders import OrderRecord
from marketbus.contracts.streams import ORDER_STATE, create_bucket
from services.order_router import tracking
from services.order_router.metrics import RouterMetrics
from services.order_router.state import StateStore, order_key
from services.order_router.tracking import OrderBook


def _order(n: int) -> OrderRecord:
    return OrderRecord(client_id=f"{n:08x}-0000-4000-8000-{n:012x}", market="BTCUSD-PERP", market_id=1, side="buy",
                       order_type="limit", duration="GTC", quantity=Decimal(3), price=Decimal("25000.5"), seq=1,
                       command_id=f"c{n}", created_ns=n, updated_ns=n)


async def test_closed_orders_are_forgotten_after_the_recent_ones_but_open_ones_are_kept(
        nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "RECENT_KEPT", 20)
    nc = await nats.connect(nats_url)
    published: list[Any] = []

    async def emit(event: Any, subject: str) -> None:
        published.append(event)

    try:
        js = nc.jetstream()
        kv = await create_bucket(js, dataclasses.replace(ORDER_STATE, name=f"orders_state_{uuid.uuid4().hex[:8]}"))
        book = OrderBook(emit, RouterMetrics("order_router"), logging.getLogger("test"))
        book.store = StateStore(kv, "test", js)
        still_open = []
        for n in range(200):
            rec = _order(n)
            book.orders[(rec.market, rec.client_id)] = rec
            assert await book.store.create(rec)
            assert await book.transition(rec, "submitted")
            if n % 50 == 0:  # a few stay open
                still_open.append(rec)
                continue
            assert await book.transition(rec, "filled", filled=rec.quantity, average=rec.price)
        # bounded: the open orders and the last 20 closed ones, not the 200 handled
        assert len(book.recent) == 20
        assert set(book.store.revisions) == (
            {order_key(*k) for k in book.recent} | {order_key(r.market, r.client_id) for r in still_open})
        assert len(book.orders) == len(still_open) and not book._locks.keys() - set(book.orders)
        # an open order still has its revision: a compare-and-set still refuses a stale write
        rec = still_open[0]
        await kv.put(order_key(rec.market, rec.client_id), b"{}")  # another writer
        assert not await book.store.save(rec)
        # a forgotten closed order is read again with its revision before it changes
        old = _order(1)
        loaded = await book.store.load(old.market, old.client_id)
        assert loaded is not None and loaded.state == "filled"
        assert order_key(old.market, old.client_id) in book.store.revisions
    finally:
        await nc.close()
