"""The order state machine and its persistence (KV ``orders_state``).

States (contracts.orders.OrderState)::

    pending_submit -> submitted -> accepted -> partially_filled -> filled
          |               |           |  \\________________________/|
          v               v           v                             v
       unknown  <->  (any open)   cancel_pending -> cancelled     rejected

``unknown`` is entered when the execution path times out or gets a 5xx/429; it is left only
when ``order_status`` says what happened. Every transition increments ``seq``; the KV write uses
the entry's revision (compare-and-set), so two router instances never overwrite each other.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, MutableMapping
from decimal import Decimal
from typing import Any

import msgspec
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError

from marketbus.clients.orders import OrderRecord, order_key  # the KV record and layout, shared with the client
from marketbus.contracts.ids import event_id
from marketbus.contracts.orders import OrderEvent
from marketbus.contracts.streams import ORDER_STATE
from marketbus.runtime import kv as kv_snapshot

WORKING_STATES = frozenset({"submitted", "accepted", "partially_filled", "cancel_pending"})

ALLOWED: dict[str, frozenset[str]] = {
    "pending_submit": frozenset({"submitted", "accepted", "partially_filled", "filled", "cancel_pending", "cancelled",
                                 "rejected", "unknown"}),
    "submitted": frozenset({"accepted", "partially_filled", "filled", "cancel_pending", "cancelled", "rejected",
                            "unknown"}),
    "accepted": frozenset({"accepted", "partially_filled", "filled", "cancel_pending", "cancelled", "unknown"}),
    "partially_filled": frozenset({"partially_filled", "filled", "cancel_pending", "cancelled", "unknown"}),
    "cancel_pending": frozenset({"accepted", "partially_filled", "filled", "cancelled", "unknown"}),
    "unknown": frozenset({"submitted", "accepted", "partially_filled", "filled", "cancel_pending", "cancelled",
                          "rejected", "pending_submit"}),
    "filled": frozenset(),
    "cancelled": frozenset(),
    "rejected": frozenset(),
}


class TransitionError(ValueError):
    pass


def can_transition(current: str, new: str) -> bool:
    return new in ALLOWED.get(current, frozenset())


def event_for(record: OrderRecord, ts_event: int | None = None) -> OrderEvent:
    now = time.time_ns()
    return OrderEvent(
        id=event_id("digitex", "order", record.market, record.client_id, record.seq),
        client_id=record.client_id, market=record.market, state=record.state, seq=record.seq,  # type: ignore[arg-type]
        reason=record.reason, side=record.side, order_type=record.order_type,  # type: ignore[arg-type]
        duration=record.duration, price=record.price, quantity=record.quantity,  # type: ignore[arg-type]
        filled_quantity=record.filled_quantity, average_price=record.average_price, leverage=record.leverage,
        command_id=record.command_id, ts_event=ts_event or now, ts_recv=now,
    )


_rec_enc = msgspec.json.Encoder(decimal_format="string")
_rec_dec = msgspec.json.Decoder(OrderRecord)


class StateStore:
    """Order records in KV, with each record's last known revision for compare-and-set."""

    def __init__(self, kv: Any, owner: str, js: Any = None) -> None:
        self.kv = kv
        self.js = js  # the JetStream context of ``kv``: :meth:`all` reads the bucket through it
        self.owner = owner
        # the last known revision of the open and recently closed orders' keys (the order book
        # forgets a closed order's after RECENT_KEPT more have closed; load() reads it again)
        self.revisions: dict[str, int] = {}

    async def load(self, market: str, client_id: str) -> OrderRecord | None:
        key = order_key(market, client_id)
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        self.revisions[key] = entry.revision
        return _rec_dec.decode(entry.value)

    async def create(self, record: OrderRecord) -> bool:
        """Store a new record; False when a record with this market/client id already exists."""
        key = order_key(record.market, record.client_id)
        record.owner = self.owner
        try:
            self.revisions[key] = await self.kv.create(key, _rec_enc.encode(record))
        except (KeyWrongLastSequenceError, BadRequestError):
            return False
        return True

    async def save(self, record: OrderRecord) -> bool:
        """Compare-and-set; False when someone else wrote the record since we read it."""
        key = order_key(record.market, record.client_id)
        record.owner = self.owner
        last = self.revisions.get(key)
        try:
            if last is None:
                self.revisions[key] = await self.kv.put(key, _rec_enc.encode(record))
            else:
                self.revisions[key] = await self.kv.update(key, _rec_enc.encode(record), last=last)
        except (KeyWrongLastSequenceError, BadRequestError):
            return False
        return True

    async def all(self) -> list[OrderRecord]:
        """Every order record, with its revision (a complete read: at start the router recovers its
        open orders from this, so not nats-py's ``kv.keys()``, see marketbus.runtime.kv)."""
        if self.js is None:
            raise TypeError("StateStore.all needs the JetStream context: StateStore(kv, owner, js)")
        out = []
        for entry in await kv_snapshot.latest(self.js, ORDER_STATE.name, "o.>"):
            if entry.value:
                record = _rec_dec.decode(entry.value)
                if not record.terminal:  # closed orders are not tracked: their revisions not kept
                    self.revisions[entry.key] = entry.revision
                out.append(record)
        return out

    def forget(self, market: str, client_id: str) -> None:
        """Drop what is kept of a closed order (its revision; :meth:`load` reads it again)."""
        self.revisions.pop(order_key(market, client_id), None)

    async def get_meta(self, name: str) -> bytes | None:
        try:
            entry = await self.kv.get(f"m.{name}")
        except KeyNotFoundError:
            return None
        return entry.value

    async def put_meta(self, name: str, value: bytes) -> None:
        await self.kv.put(f"m.{name}", value)


OrderKey = tuple[str, str]  # (market symbol, client id)


class OpenOrders(MutableMapping[OrderKey, OrderRecord]):
    """The router's open orders by (market, client id), with the totals the pre-trade checks need
    kept up to date as orders arrive, change and leave: a check costs O(1), not O(open orders).

    Setting a key (again) recounts that order; the router does so after every transition, so an
    order whose fill or quantity changed in place is recounted before the next check.
    """

    def __init__(self) -> None:
        self._records: dict[OrderKey, OrderRecord] = {}
        self._counted: dict[OrderKey, tuple[tuple[str, str], bool, Decimal]] = {}
        self._remaining: dict[tuple[str, str], Decimal] = {}  # (market, side) -> remaining quantity
        self._reduce_only: dict[tuple[str, str], Decimal] = {}  # the same, of reduce-only orders

    def __getitem__(self, key: OrderKey) -> OrderRecord:
        return self._records[key]

    def __setitem__(self, key: OrderKey, record: OrderRecord) -> None:
        self._uncount(key)
        self._records[key] = record
        side = (record.market, record.side)
        remaining = record.remaining
        self._counted[key] = (side, record.reduce_only, remaining)
        self._remaining[side] = self._remaining.get(side, Decimal(0)) + remaining
        if record.reduce_only:
            self._reduce_only[side] = self._reduce_only.get(side, Decimal(0)) + remaining

    def __delitem__(self, key: OrderKey) -> None:
        del self._records[key]
        self._uncount(key)

    def __iter__(self) -> Iterator[OrderKey]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def _uncount(self, key: OrderKey) -> None:
        counted = self._counted.pop(key, None)
        if counted is not None:
            side, reduce_only, remaining = counted
            self._remaining[side] -= remaining
            if reduce_only:
                self._reduce_only[side] -= remaining

    def remaining(self, market: str, side: str, excluding: OrderRecord | None = None) -> Decimal:
        """Quantity still to fill of the open orders of ``market`` on ``side`` (but ``excluding``)."""
        total = self._remaining.get((market, side), Decimal(0))
        if excluding is not None:
            counted = self._counted.get((excluding.market, excluding.client_id))
            if counted is not None and counted[0] == (market, side):
                total -= counted[2]
        return total

    def reduce_only_remaining(self, market: str, side: str) -> Decimal:
        return self._reduce_only.get((market, side), Decimal(0))
