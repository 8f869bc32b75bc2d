"""The client half of the order router: commands, the kill switch, order records and events.

Commands (:class:`PlaceOrder`, :class:`CancelOrders`, :class:`UpdateOrder`) go through the
``ORDERS_CMD`` JetStream work queue on ``orders.cmd.digitex.<market>``; ``Nats-Msg-Id`` is the
command id, so a re-sent command is de-duplicated by the stream too. A core-NATS request cannot
be used on a subject a stream captures (JetStream itself answers it with its PubAck), so the
reply inbox travels in the ``Marketbus-Reply-To`` header and the router publishes its
:class:`CommandAck` there once the command is durably accepted or refused. A refusal is an ack
with ``accepted=False`` and a ``reason`` (a domain answer, not an error).

The kill switch is core request/reply on ``orders.ctl.digitex`` (:class:`RouterControl` ->
:class:`CommandAck`). Order records are read from the router's KV bucket ``orders_state``;
lifecycle events, fills, positions and balances arrive on ``orders.evt|fill|position|balance``.

    orders = OrderClient(nc)
    ack = await orders.place("FS-BTCUSD", "buy", "1", price="20000")
    if not ack.accepted:
        print(ack.reason)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal, InvalidOperation
from hashlib import blake2b
from typing import Any, Literal, get_args

import msgspec

from marketbus.contracts import codec, streams, subjects
from marketbus.contracts import errors as codes
from marketbus.contracts.orders import (
    TERMINAL_STATES,
    CancelOrders,
    CommandAck,
    OrderCommand,
    OrderDuration,
    OrderSide,
    OrderType,
    PlaceOrder,
    RouterControl,
    UpdateOrder,
)
from marketbus.runtime import kv as kv_snapshot

from .errors import RequestError, decode_reply, request

SERVER = "order router"
ControlAction = Literal["halt", "resume", "status"]
REPLY_HEADER = codec.HEADER_REPLY_TO


# --- building commands ---------------------------------------------------------------------
def new_id() -> str:
    return str(uuid.uuid4())


def to_decimal(name: str, value: Any) -> Decimal:
    """``value`` as a finite Decimal; ValueError naming ``name`` otherwise (``"abc"``, NaN...)."""
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ValueError(f"{name} {value!r} is not a number") from None
    if not number.is_finite():
        raise ValueError(f"{name} {value!r} is not a finite number")
    return number


def _choice(name: str, value: str, literal: Any) -> Any:
    allowed = get_args(literal)
    if value not in allowed:
        raise ValueError(f"{name} {value!r} is not one of {', '.join(allowed)}")
    return value


def place(market: str, side: str, quantity: Any, price: Any = None, *, order_type: str = "limit",
          duration: str = "GTC", leverage: int = 1, reduce_only: bool = False, client_id: str | None = None,
          command_id: str | None = None) -> PlaceOrder:
    """A PlaceOrder command (client id generated when omitted); ValueError for a bad field."""
    client_id = client_id or new_id()
    number = to_decimal("quantity", quantity)
    limit = to_decimal("price", price) if price is not None else None
    # the contract refuses these too, in its own words (PlaceOrder.price: must be a decimal >= 0, ...)
    for name, value, given in (("quantity", number, quantity), ("price", limit, price)):
        if value is not None and value < 0:
            raise ValueError(f"{name} {str(given).strip()!r} must not be negative")
    return PlaceOrder(
        command_id=command_id or f"place-{client_id}", ts=time.time_ns(), client_id=client_id, market=market,
        side=_choice("side", side, OrderSide), order_type=_choice("order type", order_type, OrderType),
        quantity=number, price=limit,
        duration=_choice("duration", duration, OrderDuration), leverage=leverage, reduce_only=reduce_only)


def cancel(
    market: str | None = None, client_ids: list[str] | None = None, command_id: str | None = None
) -> CancelOrders:
    """Cancel ``client_ids`` in ``market``; all of ``market`` without ids; every open order with neither."""
    return CancelOrders(command_id=command_id or f"cancel-{new_id()}", ts=time.time_ns(), market=market,
                        client_ids=list(client_ids or []))


def update(market: str, client_id: str, side: str, quantity: Any, price: Any = None, *, order_type: str = "limit",
           duration: str = "GTC", leverage: int = 1, command_id: str | None = None) -> UpdateOrder:
    return UpdateOrder(
        command_id=command_id or f"update-{new_id()}", ts=time.time_ns(), client_id=client_id, market=market,
        side=_choice("side", side, OrderSide), order_type=_choice("order type", order_type, OrderType),
        quantity=to_decimal("quantity", quantity), price=to_decimal("price", price) if price is not None else None,
        duration=_choice("duration", duration, OrderDuration), leverage=leverage)


def command_subject(cmd: OrderCommand) -> str:
    market = getattr(cmd, "market", None)
    return subjects.order_command(market or subjects.ALL_MARKETS)


def command_headers(cmd: OrderCommand, reply_to: str | None = None) -> dict[str, str]:
    headers = codec.headers_for(cmd, msg_id=cmd.command_id)
    if reply_to:
        headers[REPLY_HEADER] = reply_to
    return headers


# --- the router's KV layout (orders_state, orders_idempotency) -----------------------------
_KEY_OK = re.compile(r"[-/_=.a-zA-Z0-9]+")


def _token(text: str) -> str:
    if _KEY_OK.fullmatch(text) and ".." not in text and not text.startswith(".") and not text.endswith("."):
        return text.replace(".", "_")
    return "h" + blake2b(text.encode(), digest_size=12).hexdigest()


def order_key(market: str, client_id: str) -> str:
    """The key of an order's record in ``orders_state``."""
    return f"o.{_token(market)}.{_token(client_id)}"


def command_key(command_id: str) -> str:
    """The key of a command's outcome in ``orders_idempotency``."""
    return "c." + _token(command_id)


class OrderRecord(msgspec.Struct, kw_only=True, gc=False):  # scalars only: no cycles to collect
    """An order as the router keeps it: the value of its ``orders_state`` key (:func:`order_key`).
    The router writes it (``services.order_router.state``), clients read it; the fields after
    ``reason`` are the router's own bookkeeping."""

    client_id: str
    market: str
    market_id: int = 0
    side: str
    order_type: str
    duration: str
    quantity: Decimal  # original quantity
    price: Decimal | None = None
    leverage: int = 1
    reduce_only: bool = False
    state: str = "pending_submit"
    seq: int = 0
    filled_quantity: Decimal = Decimal(0)
    average_price: Decimal | None = None
    command_id: str | None = None
    reason: str | None = None
    submit_attempts: int = 0
    created_ns: int = 0
    updated_ns: int = 0
    exchange_ts_us: int | None = None
    fills_attributed: Decimal = Decimal(0)  # quantity of trade_history fills tied to this order
    owner: str = ""  # the router instance that last wrote it

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def remaining(self) -> Decimal:
        return max(Decimal(0), self.quantity - self.filled_quantity)


_record_decoder = msgspec.json.Decoder(OrderRecord)


# --- the client ----------------------------------------------------------------------------
class OrderClient:
    """Orders through the order router over one NATS connection.

    ``send``/``place``/``cancel``/``update`` return the router's :class:`CommandAck` (``accepted``
    and ``reason``); they raise :class:`RequestError` (``timeout``) when no router answers in time.
    """

    def __init__(self, nc: Any, *, timeout: float = 10.0) -> None:
        self.nc = nc
        self.timeout = timeout

    async def send(self, cmd: OrderCommand, *, wait: bool = True) -> CommandAck | None:
        """Publish ``cmd`` to the work queue; with ``wait``, return the router's acknowledgement."""
        if not wait:
            await self._publish(cmd, None)
            return None
        nc = self.nc
        inbox = nc.new_inbox()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def on_reply(msg: Any) -> None:
            if not future.done():
                future.set_result(msg.data)

        sub = await nc.subscribe(inbox, cb=on_reply, max_msgs=1)
        try:
            puback = await self._publish(cmd, inbox)
            try:
                if puback.duplicate:
                    # the stream already had this command (a retry): the router's answer is in its KV
                    return await asyncio.wait_for(self.stored_ack(cmd.command_id), self.timeout)
                return decode_reply(await asyncio.wait_for(future, self.timeout), CommandAck)
            except TimeoutError:
                raise RequestError(codes.TIMEOUT, f"no acknowledgement from the {SERVER} within {self.timeout:g}s "
                                              f"(command {cmd.command_id} is queued)") from None
        finally:
            if not future.done():
                future.cancel()
            await sub.unsubscribe()

    async def _publish(self, cmd: OrderCommand, reply_to: str | None) -> Any:
        """The JetStream publish of a command; its PubAck."""
        from nats.errors import NoRespondersError
        from nats.js.errors import NoStreamResponseError

        subject = command_subject(cmd)
        try:
            return await self.nc.jetstream().publish(subject, codec.encode(cmd), headers=command_headers(cmd, reply_to),
                                                     timeout=self.timeout)
        except (NoStreamResponseError, NoRespondersError):
            raise RequestError(codes.NO_RESPONDERS, f"no {streams.ORDER_COMMANDS.name} stream takes {subject} on this "
                                                    f"server: is it the one the {SERVER} uses?") from None
        except TimeoutError:
            raise RequestError(codes.TIMEOUT, f"JetStream did not confirm the command on {subject} within "
                                              f"{self.timeout:g}s") from None

    async def place(self, market: str, side: str, quantity: Any, price: Any = None, **options: Any) -> CommandAck:
        """Place an order (see :func:`place` for the options); the ack's ``client_ids`` holds its id."""
        ack = await self.send(place(market, side, quantity, price, **options))
        assert ack is not None
        return ack

    async def cancel(self, market: str | None = None, client_ids: list[str] | None = None) -> CommandAck:
        ack = await self.send(cancel(market, client_ids))
        assert ack is not None
        return ack

    async def update(self, market: str, client_id: str, side: str, quantity: Any, price: Any = None,
                     **options: Any) -> CommandAck:
        ack = await self.send(update(market, client_id, side, quantity, price, **options))
        assert ack is not None
        return ack

    async def control(self, action: str, *, cancel_open_orders: bool = False, reason: str | None = None) -> CommandAck:
        """Kill switch: ``halt`` / ``resume`` / ``status``; the ack's ``reason`` is the router's state."""
        ctl = RouterControl(action=_choice("action", action, ControlAction), cancel_open_orders=cancel_open_orders,
                            reason=reason, ts=time.time_ns())
        data = await request(self.nc, subjects.ORDER_CONTROL, codec.encode(ctl), timeout=self.timeout, what=SERVER)
        return decode_reply(data, CommandAck)

    async def halt(self, *, cancel_open_orders: bool = False, reason: str | None = None) -> CommandAck:
        return await self.control("halt", cancel_open_orders=cancel_open_orders, reason=reason)

    async def resume(self) -> CommandAck:
        return await self.control("resume")

    async def stored_ack(self, command_id: str) -> CommandAck:
        """The acknowledgement the router recorded for ``command_id`` (waits until it is there)."""
        return await stored_ack(self.nc.jetstream(), command_id)

    async def records(self, *, market: str | None = None, include_terminal: bool = False) -> list[OrderRecord]:
        """The router's orders (open ones unless ``include_terminal``), oldest first."""
        from nats.js.errors import BucketNotFoundError

        try:
            await self.nc.jetstream().key_value(streams.ORDER_STATE.name)
        except BucketNotFoundError:
            raise RequestError(codes.NO_RESPONDERS, f"no {streams.ORDER_STATE.name} bucket on this server: is it the "
                                                    f"one the {SERVER} uses?") from None
        out = []
        # a complete read (not nats-py's kv.keys(), which can end short: see marketbus.runtime.kv)
        for entry in await kv_snapshot.latest(self.nc.jetstream(), streams.ORDER_STATE.name, "o.>"):
            if not entry.value:
                continue
            record = _record_decoder.decode(entry.value)
            if (include_terminal or not record.terminal) and (market is None or record.market == market):
                out.append(record)
        return sorted(out, key=lambda r: r.created_ns)

    async def watch(self, market: str = "*") -> AsyncIterator[tuple[str, Any]]:
        """(subject, event) for every order event, fill and position of ``market`` and every
        balance, as they happen (core NATS: nothing from before the call)."""
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def on_msg(msg: Any) -> None:
            queue.put_nowait(msg)

        subs = [await self.nc.subscribe(subject, cb=on_msg) for subject in (
            subjects.order_events_filter(market), subjects.order_fill(market), subjects.order_position(market),
            subjects.order_balance("*"))]
        try:
            while True:
                msg = await queue.get()
                try:
                    event = codec.decode(msg.data, codec.schema_version_of(msg.headers))
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue  # not a contract message: nothing a watcher can use
                yield msg.subject, event
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()


# --- function forms (nc first) -------------------------------------------------------------
async def send_command(nc: Any, cmd: OrderCommand, *, wait: bool = True, timeout: float = 10.0) -> CommandAck | None:
    return await OrderClient(nc, timeout=timeout).send(cmd, wait=wait)


async def send_control(nc: Any, action: str, *, cancel_open_orders: bool = False, reason: str | None = None,
                       timeout: float = 10.0) -> CommandAck:
    return await OrderClient(nc, timeout=timeout).control(action, cancel_open_orders=cancel_open_orders, reason=reason)


async def stored_ack(js: Any, command_id: str) -> CommandAck:
    """The acknowledgement the router recorded for ``command_id`` in ``orders_idempotency``
    (waits until it is there)."""
    from nats.js.errors import KeyNotFoundError

    kv = await js.key_value(streams.ORDER_IDEMPOTENCY.name)
    while True:
        try:
            entry = await kv.get(command_key(command_id))
            record = msgspec.json.decode(entry.value or b"{}")
            if record.get("state") == "done" and record.get("ack"):
                return msgspec.convert(record["ack"], CommandAck)
        except KeyNotFoundError:
            pass
        await asyncio.sleep(0.05)
