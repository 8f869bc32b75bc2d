"""Command intake: the ORDERS_CMD work queue's messages, each executed exactly once.

A message is decoded (a command that cannot be, or whose identifiers cannot be used, is
dead-lettered and terminated at once), claimed by its command id in the idempotency bucket (a
duplicate gets the first answer again, nothing is executed twice), executed by
:class:`~.commands.OrderCommands`, acked, and answered on the requester's reply subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError

from marketbus.clients.orders import command_key
from marketbus.contracts import codec, subjects
from marketbus.contracts.consumers import ConsumerSpec
from marketbus.contracts.orders import CancelOrders, CommandAck, PlaceOrder, UpdateOrder

from .commands import OrderCommands
from .metrics import RouterMetrics
from .requests import REPLY_HEADER
from .state import OrderRecord
from .tracking import OrderBook
from .validation import MAX_COMMAND_ID, identifier_problem

Command = PlaceOrder | CancelOrders | UpdateOrder
_json = msgspec.json.Encoder(decimal_format="string")
_KINDS: dict[type, str] = {PlaceOrder: "place", CancelOrders: "cancel", UpdateOrder: "update"}


class _CommandIdOnly(msgspec.Struct):
    """What a refused command's reply can still use: its command id, read from the raw JSON."""

    command_id: str = ""


_command_id_decoder = msgspec.json.Decoder(_CommandIdOnly)


def _salvaged_command_id(data: bytes) -> str:
    """The command id of a payload the contracts refuse (a 10 KB client id, a quantity of 1e30),
    so the requester can tell which command was refused; "" when it has none usable."""
    try:
        command_id = _command_id_decoder.decode(data).command_id
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):  # Recursion: nested too deep
        return ""
    return command_id if 0 < len(command_id) <= MAX_COMMAND_ID else ""


class IdemRecord(msgspec.Struct, kw_only=True):
    state: str  # processing | done
    ack: CommandAck | None = None
    ts: int = 0


_idem_dec = msgspec.json.Decoder(IdemRecord)


class CommandIntake:
    """``nc`` (for replies) and ``idem_kv`` (the idempotency bucket) are known once the service
    has started."""

    def __init__(self, commands: OrderCommands, book: OrderBook, spec: ConsumerSpec,
                 dead_letter: Callable[[Any, str], Awaitable[None]], metrics: RouterMetrics,
                 log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self.commands = commands
        self.book = book
        self.nc: Any = None
        self.consumer_spec = spec
        self._dead_letter_command = dead_letter
        self.metrics = metrics
        self.log = log
        self.idem_kv: Any = None
        self.commands_handled = 0

    def _count_command(self, cmd: Any, outcome: str) -> None:
        self.metrics.commands.labels(_KINDS.get(type(cmd), "unknown"), outcome).inc()

    async def handle_message(self, msg: Any) -> None:
        """One command off the work queue: executed once, or refused with a reason (a CommandAck
        to the requester; a rejected order event for a place). Nothing here may stall the queue:
        a command that cannot be decoded or whose identifiers cannot be used is dead-lettered and
        terminated at once; one whose execution raises (KV or exchange unavailable) is retried by
        the consumer's policy and, on its last delivery, refused and dead-lettered."""
        headers = msg.headers or {}
        reply_to = headers.get(REPLY_HEADER)
        cmd: Any = None
        try:
            cmd = codec.decode_as(msg.data, Command, codec.schema_version_of(headers))
            problem = identifier_problem(cmd)
        except Exception as exc:
            problem = f"undecodable command: {exc}"[:1000]
        if problem:
            self._count_command(cmd, "undecodable")
            await self._dead_letter_command(msg, problem)
            with contextlib.suppress(Exception):
                await msg.term()
            # the requester gets its command id back when that id at least is usable
            if cmd is not None:
                command_id = cmd.command_id if 0 < len(cmd.command_id) <= MAX_COMMAND_ID else ""
            else:
                command_id = _salvaged_command_id(msg.data)
            await self._reply(reply_to, CommandAck(command_id=command_id, accepted=False, reason=problem))
            return
        try:
            ack = await self.execute(cmd)
        except Exception as exc:
            self._count_command(cmd, "error")
            delivered = msg.metadata.num_delivered
            if self.consumer_spec.last_delivery(delivered):
                self.log.error("command %s failed on its last delivery: %r", cmd.command_id, exc)
                await self._refuse_failed(cmd, reply_to, f"failed on each of {delivered} deliveries, last: {exc!r}")
            else:
                self.log.warning("command %s failed on delivery %d (%r): retried", cmd.command_id, delivered, exc)
            raise  # the consumer's policy: NAK with back-off, or dead letter + TERM on the last delivery
        self.commands_handled += 1
        self._count_command(cmd, "accepted" if ack.accepted else "refused")
        with contextlib.suppress(Exception):
            await msg.ack()
        await self._reply(reply_to, ack)

    async def _reply(self, reply_to: str | None, ack: CommandAck) -> None:
        if reply_to and not subjects.is_reply_inbox(reply_to):
            # the header is the requester's word: the router publishes only to a reply inbox, never
            # with its own rights to order events or its buckets, never a subject the server refuses
            self.log.warning("command %s: no reply to %r (not a reply inbox)", ack.command_id[:64], reply_to[:64])
            return
        if reply_to:
            with contextlib.suppress(Exception):  # the requester may be gone; nothing to retry
                await self.nc.publish(reply_to, codec.encode(ack))

    async def _refuse_failed(self, cmd: Command, reply_to: str | None, reason: str) -> None:
        """A command given up on: the requester and the order's subscribers learn it (best effort:
        whatever failed may fail these too)."""
        reason = reason[:1000]
        client_ids = [cmd.client_id] if isinstance(cmd, (PlaceOrder, UpdateOrder)) else list(cmd.client_ids)
        await self._reply(reply_to, CommandAck(command_id=cmd.command_id, accepted=False, reason=reason,
                                               client_ids=client_ids))
        if not isinstance(cmd, PlaceOrder):
            return
        rec = self.book.orders.get((cmd.market, cmd.client_id))
        if rec is not None:  # created before the failure, never sent: rejected
            if rec.command_id == cmd.command_id and rec.state == "pending_submit":
                with contextlib.suppress(Exception):
                    await self.book.transition(rec, "rejected", reason=reason)
        else:
            now = time.time_ns()
            rec = OrderRecord(
                client_id=cmd.client_id, market=cmd.market, market_id=-1, side=cmd.side, order_type=cmd.order_type,
                duration=cmd.duration, quantity=cmd.quantity, price=cmd.price, leverage=cmd.leverage,
                reduce_only=cmd.reduce_only, state="rejected", seq=1, command_id=cmd.command_id, reason=reason,
                created_ns=now, updated_ns=now)
            with contextlib.suppress(Exception):
                await self.book.publish_order(rec)

    async def execute(self, cmd: Command) -> CommandAck:
        """Handle one command exactly once (idempotency record by command id); returns the ack."""
        ikey = command_key(cmd.command_id)
        # The claim's round trip overlaps a place's checks and order record; nothing is sent
        # to the exchange before it is known (place awaits it).
        claim = asyncio.ensure_future(self._claim(ikey))
        try:
            if isinstance(cmd, PlaceOrder):
                ack = await self.commands.place(cmd, claim)
            else:
                prior = await claim
                if prior is not None:
                    return prior  # a duplicate: the same answer, nothing executed again
                ack = await (self.commands.cancel(cmd) if isinstance(cmd, CancelOrders) else self.commands.update(cmd))
        finally:
            if not claim.done():
                claim.cancel()
        await self.idem_kv.put(ikey, _json.encode(IdemRecord(state="done", ack=ack, ts=time.time_ns())))
        return ack

    async def _claim(self, ikey: str) -> CommandAck | None:
        """Claim a command id; the ack given the first time if it was handled before, else None
        (new, or "processing": a previous attempt crashed mid-way; every step is idempotent)."""
        try:
            await self.idem_kv.create(ikey, _json.encode(IdemRecord(state="processing", ts=time.time_ns())))
            return None
        except (KeyWrongLastSequenceError, BadRequestError):
            pass
        with contextlib.suppress(KeyNotFoundError):
            entry = await self.idem_kv.get(ikey)
            existing = _idem_dec.decode(entry.value) if entry.value else None
            if existing is not None and existing.state == "done" and existing.ack is not None:
                return existing.ack
        return None
