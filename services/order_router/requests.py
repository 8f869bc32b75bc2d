"""Client side of the router: send a command through the ORDERS_CMD work queue and (optionally)
wait for the router's :class:`CommandAck`.

The command is a JetStream publish (``Nats-Msg-Id`` = command id, so a re-sent command is
de-duplicated by the stream too). A core-NATS request cannot be used on a subject a stream
captures (JetStream itself answers it with its PubAck), so the reply inbox travels in the
``Marketbus-Reply-To`` header and the router publishes the CommandAck there once the command is
durably accepted or refused.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from marketbus.contracts import codec, subjects
from marketbus.contracts.orders import CancelOrders, CommandAck, OrderCommand, PlaceOrder, RouterControl, UpdateOrder

REPLY_HEADER = codec.HEADER_REPLY_TO


def command_subject(cmd: OrderCommand) -> str:
    market = getattr(cmd, "market", None)
    return subjects.order_command(market or subjects.ALL_MARKETS)


def command_headers(cmd: OrderCommand, reply_to: str | None = None) -> dict[str, str]:
    headers = codec.headers_for(cmd, msg_id=cmd.command_id)
    if reply_to:
        headers[REPLY_HEADER] = reply_to
    return headers


async def send_command(nc: Any, cmd: OrderCommand, *, wait: bool = True, timeout: float = 10.0) -> CommandAck | None:
    """Publish ``cmd`` to the work queue; with ``wait``, return the router's acknowledgement."""
    js = nc.jetstream()
    if not wait:
        await js.publish(command_subject(cmd), codec.encode(cmd), headers=command_headers(cmd))
        return None
    inbox = nc.new_inbox()
    future: asyncio.Future[CommandAck] = asyncio.get_running_loop().create_future()

    async def on_reply(msg: Any) -> None:
        if not future.done():
            future.set_result(codec.decode_as(msg.data, CommandAck))

    sub = await nc.subscribe(inbox, cb=on_reply, max_msgs=1)
    try:
        puback = await js.publish(command_subject(cmd), codec.encode(cmd), headers=command_headers(cmd, inbox))
        if puback.duplicate:
            # the stream already had this command (a retry): the router's answer is in its KV
            return await asyncio.wait_for(stored_ack(js, cmd.command_id), timeout)
        return await asyncio.wait_for(future, timeout)
    finally:
        if not future.done():
            future.cancel()
        await sub.unsubscribe()


async def send_control(nc: Any, action: str, *, cancel_open_orders: bool = False, reason: str | None = None,
                       timeout: float = 10.0) -> CommandAck:
    """Halt / resume / status of the router (core NATS request/reply on ``orders.ctl.digitex``)."""
    ctl = RouterControl(action=action, cancel_open_orders=cancel_open_orders, reason=reason,  # type: ignore[arg-type]
                        ts=time.time_ns())
    msg = await nc.request(subjects.ORDER_CONTROL, codec.encode(ctl), timeout=timeout)
    return codec.decode_as(msg.data, CommandAck)


async def stored_ack(js: Any, command_id: str) -> CommandAck:
    """The acknowledgement the router recorded for ``command_id`` (waits until it is there)."""
    import msgspec
    from nats.js.errors import KeyNotFoundError

    from marketbus.contracts import streams

    from .state import command_key

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


def new_id() -> str:
    return str(uuid.uuid4())


def place(market: str, side: str, quantity: Any, price: Any = None, *, order_type: str = "limit",
          duration: str = "GTC", leverage: int = 1, reduce_only: bool = False, client_id: str | None = None,
          command_id: str | None = None) -> PlaceOrder:
    from decimal import Decimal

    client_id = client_id or new_id()
    return PlaceOrder(
        command_id=command_id or f"place-{client_id}", ts=time.time_ns(), client_id=client_id, market=market,
        side=side, order_type=order_type, quantity=Decimal(str(quantity)),  # type: ignore[arg-type]
        price=Decimal(str(price)) if price is not None else None, duration=duration,  # type: ignore[arg-type]
        leverage=leverage, reduce_only=reduce_only)


def cancel(market: str | None = None, client_ids: list[str] | None = None, command_id: str | None = None) -> CancelOrders:
    return CancelOrders(command_id=command_id or f"cancel-{new_id()}", ts=time.time_ns(), market=market,
                        client_ids=list(client_ids or []))


def update(market: str, client_id: str, side: str, quantity: Any, price: Any = None, *, order_type: str = "limit",
           duration: str = "GTC", leverage: int = 1, command_id: str | None = None) -> UpdateOrder:
    from decimal import Decimal

    return UpdateOrder(
        command_id=command_id or f"update-{new_id()}", ts=time.time_ns(), client_id=client_id, market=market,
        side=side, order_type=order_type, quantity=Decimal(str(quantity)),  # type: ignore[arg-type]
        price=Decimal(str(price)) if price is not None else None, duration=duration,  # type: ignore[arg-type]
        leverage=leverage)
