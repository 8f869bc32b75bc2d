"""Digitex order commands and order lifecycle events.

Commands: ``orders.cmd.digitex.<market>`` (a JetStream work queue; also request/reply).
Events: ``orders.evt.digitex.<market>.<client_id>`` (every state transition, in order), fills on
``orders.fill.digitex.<market>``, positions on ``orders.position.digitex.<market>``, balances on
``orders.balance.digitex.<currency>``; router control on ``orders.ctl.digitex``.
``market`` is the normalized market symbol (e.g. ``FS-BTCUSD`` for ``FS:BTCUSD``).

Invariants (see :mod:`.invariants`): client ids and command ids fit a subject token, a header and a
KV key; quantities are >= 0 and order prices >= 0 (0 or none: a market order): whether they are
*acceptable* (positive, on the lot and tick grid, within limits) is the order router's decision,
which answers with a rejection and its reason. Fill prices are > 0. Positions and balances are
signed: they mirror what the exchange reports.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

import msgspec

from .base import Event
from .invariants import Amount, ClientId, Count, Id, Label, Nanos, Price, Rule, Size, Text, Token

MAX_LEVERAGE = 10_000
Leverage = Annotated[int, msgspec.Meta(ge=0, le=MAX_LEVERAGE), Rule(
    "leverage", f"must be an int in [0, {MAX_LEVERAGE}]", "v.__class__ is int and 0 <= v <= _MAX_LEVERAGE",
    _MAX_LEVERAGE=MAX_LEVERAGE)]
MAX_CLIENT_IDS = 10_000
ClientIds = Annotated[list[ClientId], msgspec.Meta(max_length=MAX_CLIENT_IDS)]

OrderSide = Literal["buy", "sell"]
OrderType = Literal["market", "limit"]
OrderDuration = Literal["GFD", "GTC", "GTF", "IOC", "FOK"]
OrderState = Literal[
    "pending_submit", "submitted", "accepted", "partially_filled", "filled",
    "cancel_pending", "cancelled", "rejected", "unknown",
]
TERMINAL_STATES: frozenset[str] = frozenset({"filled", "cancelled", "rejected"})


class OrderCommand(Event, frozen=True, kw_only=True):
    command_id: Id  # idempotency key: the same command id is executed once
    ts: Nanos  # when the command was issued


class PlaceOrder(OrderCommand, frozen=True, kw_only=True, tag="place_order"):
    client_id: ClientId  # uuid chosen by the caller; unique per market
    market: Token
    side: OrderSide
    order_type: OrderType
    quantity: Size
    price: Size | None = None  # required for limit orders
    duration: OrderDuration = "GTC"
    leverage: Leverage = 1
    reduce_only: bool = False


class CancelOrders(OrderCommand, frozen=True, kw_only=True, tag="cancel_orders"):
    """Cancel ``client_ids`` in ``market``; all of ``market`` when client_ids is empty; every
    open order of the account when ``market`` is None."""

    market: Token | None = None
    client_ids: ClientIds = []


class UpdateOrder(OrderCommand, frozen=True, kw_only=True, tag="update_order"):
    client_id: ClientId
    market: Token
    side: OrderSide
    order_type: OrderType
    quantity: Size
    price: Size | None = None
    duration: OrderDuration = "GTC"
    leverage: Leverage = 1


class RouterControl(Event, frozen=True, kw_only=True, tag="router_control"):
    """Kill switch: ``halt`` refuses new orders (optionally cancelling every open one)."""

    action: Literal["halt", "resume", "status"]
    cancel_open_orders: bool = False
    reason: Text | None = None
    ts: Nanos


class CommandAck(Event, frozen=True, kw_only=True, tag="command_ack"):
    """The synchronous reply to a command sent by request/reply."""

    command_id: Label  # "" when the command could not even be decoded
    accepted: bool
    reason: Text | None = None
    client_ids: list[Label] = []


class OrderEvent(Event, frozen=True, kw_only=True, tag="order"):
    """One state transition of one order; ``seq`` increases by one per transition."""

    id: Id
    client_id: ClientId
    market: Token
    state: OrderState
    seq: Count
    reason: Text | None = None
    side: OrderSide | None = None
    order_type: OrderType | None = None
    duration: OrderDuration | None = None
    price: Size | None = None
    quantity: Size | None = None  # original quantity
    filled_quantity: Size = Decimal(0)
    average_price: Size | None = None
    leverage: Leverage | None = None
    command_id: Id | None = None
    ts_event: Nanos  # exchange time when known, else router time
    ts_recv: Nanos


class Fill(Event, frozen=True, kw_only=True, tag="fill"):
    id: Id
    client_id: ClientId | None
    market: Token
    side: OrderSide
    price: Price
    quantity: Size
    ts_event: Nanos
    ts_recv: Nanos


class Position(Event, frozen=True, kw_only=True, tag="position"):
    id: Id
    market: Token
    side: Literal["long", "short", "flat"]
    quantity: Amount = Decimal(0)
    entry_price: Amount | None = None
    leverage: Amount | None = None
    liquidation_price: Amount | None = None
    mark_price: Amount | None = None
    unrealized_pnl: Amount | None = None
    ts_event: Nanos
    ts_recv: Nanos


class Balance(Event, frozen=True, kw_only=True, tag="balance"):
    id: Id
    currency: Label
    total: Amount
    available: Amount
    trading: Amount | None = None
    ts_event: Nanos
    ts_recv: Nanos


COMMAND_TYPES = (PlaceOrder, CancelOrders, UpdateOrder)
ORDER_TYPES = (PlaceOrder, CancelOrders, UpdateOrder, RouterControl, CommandAck, OrderEvent, Fill, Position, Balance)
