"""The kill switch: ``halt`` refuses every new command (optionally cancelling every open order),
``resume`` lifts it. The state lives in the ``router_control`` KV bucket, so every router instance
follows the switch whichever instance got the request."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from nats.js.errors import KeyNotFoundError

from marketbus.contracts import codec
from marketbus.contracts.errors import BAD_REQUEST, UNAVAILABLE, ErrorReply
from marketbus.contracts.orders import CommandAck, RouterControl

from .exchange_orders import ExchangeOrders
from .tracking import OrderBook

MAX_CONTROL_REASON = 1_000
_json = msgspec.json.Encoder(decimal_format="string")


class ControlState(msgspec.Struct, kw_only=True):
    halted: bool = False
    reason: str | None = None
    ts: int = 0


class KillSwitch:
    """``state`` is the switch as last written by any instance; ``kv`` is known once started."""

    def __init__(self, book: OrderBook, exchange: ExchangeOrders,
                 log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self.book = book
        self.exchange = exchange
        self.log = log
        self.kv: Any = None
        self.state = ControlState()

    def refusal(self) -> str | None:
        """Why a new command is refused now (None: it is not)."""
        if self.state.halted:
            return f"router halted{': ' + self.state.reason if self.state.reason else ''}"
        return None

    async def load(self, kv: Any) -> None:
        self.kv = kv
        try:
            entry = await kv.get("state")
        except KeyNotFoundError:
            return
        if entry.value:
            self.state = msgspec.json.decode(entry.value, type=ControlState)

    async def handle_control(self, body: bytes) -> CommandAck | ErrorReply:
        """A kill switch request; anything wrong with it is an error reply, never an exception."""
        try:
            ctl = codec.decode_as(body, RouterControl)
        except Exception as exc:
            return ErrorReply(code=BAD_REQUEST, message=f"bad control message: {exc}"[:1000])
        if ctl.reason is not None and len(ctl.reason) > MAX_CONTROL_REASON:
            return ErrorReply(code=BAD_REQUEST,
                              message=f"bad control message: reason longer than {MAX_CONTROL_REASON} characters")
        try:
            return await self._control(ctl)
        except Exception as exc:
            self.log.error("control %s failed: %r", ctl.action, exc)
            return ErrorReply(code=UNAVAILABLE, message=f"control failed: {exc!r}"[:1000])

    async def _control(self, ctl: RouterControl) -> CommandAck:
        cid = f"control-{ctl.action}-{ctl.ts}"
        if ctl.action in ("halt", "resume"):
            self.state = ControlState(halted=ctl.action == "halt", reason=ctl.reason, ts=ctl.ts)
            await self.kv.put("state", _json.encode(self.state))
            self.log.warning("router %s%s", "halted" if self.state.halted else "resumed",
                             f": {ctl.reason}" if ctl.reason else "")
        ids: list[str] = []
        if ctl.action == "halt" and ctl.cancel_open_orders:
            targets = self.book.open_records()
            ids = sorted(r.client_id for r in targets)
            await self.exchange.cancel_targets(targets, None, None)
        state = "halted" if self.state.halted else "running"
        detail = f"{state}: {self.state.reason}" if self.state.reason and self.state.halted else state
        return CommandAck(command_id=cid, accepted=True, reason=detail, client_ids=ids)

    async def watch(self) -> None:
        """Every instance follows the kill switch written by whichever instance got the request."""
        while True:
            try:
                watcher = await self.kv.watch("state")
                async for entry in watcher:
                    if entry is None or not entry.value:
                        continue
                    self.state = msgspec.json.decode(entry.value, type=ControlState)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("control watch: %r", exc)
                await asyncio.sleep(1)
