"""Digitex order commands and order lifecycle events.

Commands: ``orders.cmd.digitex.<market>`` (a JetStream work queue; also request/reply).
Events: ``orders.evt.digitex.<market>.<client_id>`` (every state transition, in order), fills on
``orders.fill.digitex.<market>``, positions on ``orders.position.digitex.<market>``, balances on
``orders.balance.digitex.<currency>``; router control on ``orders.ctl.digitex``.
``market`` is the normalized market symbol (e.g. ``FS-BTCUSD`` for ``FS:BTCUSD``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from .base import Event

OrderSide = Literal["buy", "sell"]
OrderType = Literal["market", "limit"]
OrderDuration = Literal["GFD", "GTC", "GTF", "IOC", "FOK"]
OrderState = Literal[
    "pending_submit", "submitted", "accepted", "partially_filled", "filled",
    "cancel_pending", "cancelled", "rejected", "unknown",
]
TERMINAL_STATES: frozenset[str] = frozenset({"filled", "cancelled", "rejected"})


class OrderCommand(Event, frozen=True, kw_only=True):
    command_id: str  # idempotency key: the same command id is executed once
    ts: int  # ns, when the command was issued


class PlaceOrder(OrderCommand, frozen=True, kw_only=True, tag="place_order"):
    client_id: str  # uuid chosen by the caller; unique per market
    market: str
    side: OrderSide
    order_type: OrderType
    quantity: Decimal
    price: Decimal | None = None  # required for limit orders
    duration: OrderDuration = "GTC"
    leverage: int = 1
    reduce_only: bool = False


class CancelOrders(OrderCommand, frozen=True, kw_only=True, tag="cancel_orders"):
    """Cancel ``client_ids`` in ``market``; all of ``market`` when client_ids is empty; every
    open order of the account when ``market`` is None."""

    market: str | None = None
    client_ids: list[str] = []


class UpdateOrder(OrderCommand, frozen=True, kw_only=True, tag="update_order"):
    client_id: str
    market: str
    side: OrderSide
    order_type: OrderType
    quantity: Decimal
    price: Decimal | None = None
    duration: OrderDuration = "GTC"
    leverage: int = 1


class RouterControl(Event, frozen=True, kw_only=True, tag="router_control"):
    """Kill switch: ``halt`` refuses new orders (optionally cancelling every open one)."""

    action: Literal["halt", "resume", "status"]
    cancel_open_orders: bool = False
    reason: str | None = None
    ts: int


class CommandAck(Event, frozen=True, kw_only=True, tag="command_ack"):
    """The synchronous reply to a command sent by request/reply."""

    command_id: str
    accepted: bool
    reason: str | None = None
    client_ids: list[str] = []


class OrderEvent(Event, frozen=True, kw_only=True, tag="order"):
    """One state transition of one order; ``seq`` increases by one per transition."""

    id: str
    client_id: str
    market: str
    state: OrderState
    seq: int
    reason: str | None = None
    side: OrderSide | None = None
    order_type: OrderType | None = None
    duration: OrderDuration | None = None
    price: Decimal | None = None
    quantity: Decimal | None = None  # original quantity
    filled_quantity: Decimal = Decimal(0)
    average_price: Decimal | None = None
    leverage: int | None = None
    command_id: str | None = None
    ts_event: int  # exchange time when known, else router time (ns)
    ts_recv: int


class Fill(Event, frozen=True, kw_only=True, tag="fill"):
    id: str
    client_id: str | None
    market: str
    side: OrderSide
    price: Decimal
    quantity: Decimal
    ts_event: int
    ts_recv: int


class Position(Event, frozen=True, kw_only=True, tag="position"):
    id: str
    market: str
    side: Literal["long", "short", "flat"]
    quantity: Decimal = Decimal(0)
    entry_price: Decimal | None = None
    leverage: Decimal | None = None
    liquidation_price: Decimal | None = None
    mark_price: Decimal | None = None
    unrealized_pnl: Decimal | None = None
    ts_event: int
    ts_recv: int


class Balance(Event, frozen=True, kw_only=True, tag="balance"):
    id: str
    currency: str
    total: Decimal
    available: Decimal
    trading: Decimal | None = None
    ts_event: int
    ts_recv: int


COMMAND_TYPES = (PlaceOrder, CancelOrders, UpdateOrder)
ORDER_TYPES = (PlaceOrder, CancelOrders, UpdateOrder, RouterControl, CommandAck, OrderEvent, Fill, Position, Balance)
