"""The order router service: commands off the ORDERS_CMD work queue, validated, risk-checked,
sent to Digitex, and every order's lifecycle published (see state.py for the state machine)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from decimal import Decimal
from typing import Any, ClassVar, Union

import msgspec
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError

from marketbus.contracts import codec, streams, subjects
from marketbus.contracts.consumers import ORDER_ROUTER_COMMANDS, ConsumerSpec, bind_consumer
from marketbus.contracts.errors import BAD_REQUEST, UNAVAILABLE, ErrorReply
from marketbus.contracts.orders import CancelOrders, CommandAck, PlaceOrder, RouterControl, UpdateOrder
from marketbus.runtime.pull import PullConsumer, fit_for_dead_letter
from marketbus.runtime.service import Service

from .client import DigitexClient, OutcomeUnknown, Refused
from .metrics import RouterMetrics
from .exchange_orders import ExchangeOrders
from .reconcile import Reconciler
from .requests import REPLY_HEADER
from .risk import RiskEngine, RiskLimits
from .settings import OrderRouterSettings
from .state import OrderRecord, StateStore, command_key
from .tracking import OrderBook
from .validation import (
    MAX_COMMAND_ID, ExchangeMeta, Limits, check_reduce_only, identifier_problem, safely, validate_cancel,
    validate_order,
)

Command = Union[PlaceOrder, CancelOrders, UpdateOrder]
_command_decoder = msgspec.json.Decoder(Command)
_json = msgspec.json.Encoder(decimal_format="string")
MAX_CONTROL_REASON = 1_000


async def _raw_body(msg: Any) -> bytes:
    """The request as bytes (FastStream's own decoding would choke on hostile JSON before us)."""
    return msg.body


class IdemRecord(msgspec.Struct, kw_only=True):
    state: str  # processing | done
    ack: CommandAck | None = None
    ts: int = 0


_idem_dec = msgspec.json.Decoder(IdemRecord)


class ControlState(msgspec.Struct, kw_only=True):
    halted: bool = False
    reason: str | None = None
    ts: int = 0


class OrderRouter(Service):
    name: ClassVar[str] = "order_router"
    settings_cls = OrderRouterSettings
    settings: OrderRouterSettings
    metrics_cls = RouterMetrics
    metrics: RouterMetrics

    def setup(self) -> None:
        s = self.settings
        self.client = DigitexClient(
            s.digitex_url, s.digitex_token.get(), timeout_s=s.request_timeout_s, per_second=s.rate_per_second,
            per_minute=s.rate_per_minute, max_connections=s.http_connections, on_response=self._exchange_observed)
        self.limits = Limits(max_quantity=s.max_quantity, max_price=s.max_price, max_leverage=s.max_leverage)
        self.risk = RiskEngine(RiskLimits(max_order_notional=s.max_order_notional, max_open_orders=s.max_open_orders,
                                          max_position=s.max_position, max_orders_per_second=s.max_orders_per_second))
        self.meta: ExchangeMeta | None = None
        # the seams: tracking (the orders and their transitions), exchange calls, reconciliation;
        # the router itself takes commands in, validates and risk-checks them
        self.book = OrderBook(self.publish, self.metrics, self.log)
        self.exchange = ExchangeOrders(self.book, self.client, s, self.log)
        self.reconciler = Reconciler(self.book, self.client, self.exchange, s, self.log)
        self.orders = self.book.orders  # the same objects, named here for the hot path
        self.recent = self.book.recent
        self.positions = self.book.positions
        self.control = ControlState()
        self.commands_handled = 0
        self.metrics.open_orders.set_function(lambda: len(self.orders))
        self.metrics.halted.set_function(lambda: 1 if self.control.halted else 0)

        @self.broker.subscriber(subjects.ORDER_CONTROL, queue="order_router_control", decoder=_raw_body)
        async def on_control(body: bytes) -> bytes:
            return codec.encode(await self.handle_control(body))

    # --- start / stop ---------------------------------------------------------------------------
    async def on_start(self) -> None:
        s = self.settings
        self.idem_kv = await streams.ensure_bucket(self.js, streams.ORDER_IDEMPOTENCY, s.stream_replicas)
        self.state_kv = await streams.ensure_bucket(self.js, streams.ORDER_STATE, s.stream_replicas)
        self.control_kv = await streams.ensure_bucket(self.js, streams.ROUTER_CONTROL, s.stream_replicas)
        self.store = self.book.store = StateStore(self.state_kv, self.instance)
        self.meta = self.book.meta = ExchangeMeta.from_exchange_info(await self.client.exchange_info())
        self.log.info("digitex: %d markets, order types %s", len(self.meta.markets), self.meta.type)
        with contextlib.suppress(KeyNotFoundError):
            entry = await self.control_kv.get("state")
            if entry.value:
                self.control = msgspec.json.decode(entry.value, type=ControlState)
        await self.reconciler.reconcile(startup=True)
        await bind_consumer(self.js, self.consumer_spec)
        # each command is handled as it arrives (a fetch would hold it until the batch fills); the
        # consumer's policy: +WPI during long exchange calls, a failing command retried with
        # back-off, then dead-lettered and terminated
        self._pull = PullConsumer.of(self.nc, self.consumer_spec, self._handle_message, max_messages=s.max_inflight,
                                     on_error=self._command_failed, dead_letter=self._dead_letter_command,
                                     on_dropped=self._dead_letter_dropped)
        await self._pull.start()
        self.spawn(self._watch_control(), "control")
        self.spawn(self.reconciler.track_loop(), "track")
        self.spawn(self.reconciler.reconcile_loop(), "reconcile")
        await self.publish_feed_status("digitex", "connected", feed="digitex/orders")

    @property
    def consumer_spec(self) -> ConsumerSpec:
        """The durable pull consumer on the ORDERS_CMD work queue, shared by every router instance."""
        s = self.settings
        return ORDER_ROUTER_COMMANDS.with_(durable=s.durable, ack_wait_s=s.ack_wait_s, max_deliver=s.max_deliver)

    async def _dead_letter_dropped(self, subject: str, payload: bytes, reason: str) -> None:
        payload, reason = fit_for_dead_letter(payload, reason, self.nc.max_payload)
        await self.dead_letter("digitex", reason, payload, subject)

    async def _dead_letter_command(self, msg: Any, reason: str) -> None:
        payload, reason = fit_for_dead_letter(msg.data, reason, self.nc.max_payload)
        await self.dead_letter("digitex", reason, payload, msg.subject)

    def _command_failed(self, exc: BaseException) -> None:
        self.log.error("command handling failed: %r", exc, exc_info=exc)

    async def on_stop(self) -> None:
        pull = getattr(self, "_pull", None)
        if pull is not None:
            await pull.stop(drain_s=self.settings.request_timeout_s)  # let commands in flight finish
        self.exchange.cancel_tasks()
        await self.client.close()

    def health(self) -> dict[str, Any]:
        return {"halted": self.control.halted, "open_orders": len(self.orders), "commands": self.commands_handled,
                "markets": len(self.meta.markets) if self.meta else 0}

    # --- helpers ----------------------------------------------------------------------------------
    def _exchange_observed(self, path: str, outcome: str, seconds: float) -> None:
        self.metrics.exchange_requests.labels(path, outcome).observe(seconds)

    def _count_command(self, cmd: Any, outcome: str) -> None:
        kind = {PlaceOrder: "place", CancelOrders: "cancel", UpdateOrder: "update"}.get(type(cmd), "unknown")
        self.metrics.commands.labels(kind, outcome).inc()

    async def publish(self, event: Any, subject: str) -> None:
        """Publish one event; a failure that shows only later (no ack) is logged."""
        assert self.publisher is not None
        future = await self.publisher.publish_event(event, subject)
        future.add_done_callback(self._publish_done)

    def _publish_done(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.log.error("publish failed: %r", future.exception())

    # --- command intake ---------------------------------------------------------------------------
    async def _handle_message(self, msg: Any) -> None:
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
        except Exception as exc:  # noqa: BLE001 - whatever the payload, it is refused, never retried
            problem = f"undecodable command: {exc}"[:1000]
        if problem:
            self._count_command(cmd, "undecodable")
            await self._dead_letter_command(msg, problem)
            with contextlib.suppress(Exception):
                await msg.term()
            # the requester gets its command id back when that id at least is usable
            command_id = cmd.command_id if cmd is not None and 0 < len(cmd.command_id) <= MAX_COMMAND_ID else ""
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
        rec = self.orders.get((cmd.market, cmd.client_id))
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
                ack = await self.place(cmd, claim)
            else:
                prior = await claim
                if prior is not None:
                    return prior  # a duplicate: the same answer, nothing executed again
                ack = await (self.cancel(cmd) if isinstance(cmd, CancelOrders) else self.update(cmd))
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

    # --- place --------------------------------------------------------------------------------------
    def _refuse_common(self) -> str | None:
        if self.control.halted:
            return f"router halted{': ' + self.control.reason if self.control.reason else ''}"
        return None

    async def place(self, cmd: PlaceOrder, claim: Awaitable[CommandAck | None]) -> CommandAck:
        assert self.meta is not None
        key = (cmd.market, cmd.client_id)
        existing = self.orders.get(key) or self.recent.get(key)
        if existing is not None:
            return await claim or self._existing(cmd, existing)
        reason = self._refuse_common() or validate_order(cmd, self.meta, self.limits)
        market = self.meta.markets.get(cmd.market)
        ref = None
        if reason is None and market is not None:
            ref = await self.exchange.ref_price(cmd.market) if cmd.order_type == "market" else None
            position = self.positions.get(cmd.market, Decimal(0))
            if cmd.reduce_only:
                pending = self.orders.reduce_only_remaining(cmd.market, cmd.side)
                reason = safely(lambda: check_reduce_only(cmd.side, cmd.quantity, position, pending))
            if reason is None:
                reason = safely(lambda: self.risk.check(
                    market=market, side=cmd.side, quantity=cmd.quantity, price=cmd.price, ref_price=ref,
                    position=position, open_orders=self.orders, reduce_only=cmd.reduce_only))
        now = time.time_ns()
        rec = OrderRecord(
            client_id=cmd.client_id, market=cmd.market, market_id=market.id if market else -1, side=cmd.side,
            order_type=cmd.order_type, duration=cmd.duration, quantity=cmd.quantity, price=cmd.price,
            leverage=cmd.leverage, reduce_only=cmd.reduce_only, state="rejected" if reason else "pending_submit",
            seq=1, command_id=cmd.command_id, reason=reason, created_ns=now, updated_ns=now)
        if not reason:
            self.orders[key] = rec  # counted by the risk checks of the next commands at once
        if not await self.store.create(rec):  # the client id is known (KV): a re-delivery or a re-use
            if self.orders.get(key) is rec:
                self.orders.pop(key, None)
            existing = await self.store.load(cmd.market, cmd.client_id)
            if existing is None:
                return CommandAck(command_id=cmd.command_id, accepted=False, client_ids=[cmd.client_id],
                                  reason="order state store unavailable")
            return await claim or self._existing(cmd, existing)
        await self.book.publish_order(rec)
        prior = await claim
        if prior is not None and not reason:  # the command id was used before, for another order
            await self.book.transition(rec, "rejected", reason=f"command id {cmd.command_id} was already used "
                                                            f"(orders {', '.join(prior.client_ids) or '-'})")
            return prior
        if reason:
            self.recent[key] = rec
            self.log.info("refused %s %s: %s", cmd.market, cmd.client_id, reason)
            return prior or CommandAck(command_id=cmd.command_id, accepted=False, reason=reason,
                                       client_ids=[cmd.client_id])
        self.exchange.spawn(self.exchange.submit(rec))
        return CommandAck(command_id=cmd.command_id, accepted=True, client_ids=[cmd.client_id])

    def _existing(self, cmd: PlaceOrder, existing: OrderRecord) -> CommandAck:
        key = (cmd.market, cmd.client_id)
        if existing.command_id == cmd.command_id:  # this very command, re-delivered after a crash
            if existing.state in ("pending_submit", "unknown") and not self.exchange.resolving(key):
                self.book.adopt_record(existing)
                self.exchange.start_resolve(existing)
            return CommandAck(command_id=cmd.command_id, accepted=existing.state != "rejected",
                              reason=existing.reason if existing.state == "rejected" else None,
                              client_ids=[cmd.client_id])
        return CommandAck(command_id=cmd.command_id, accepted=False, client_ids=[cmd.client_id],
                          reason=f"client_id {cmd.client_id} is already used in {cmd.market}")

    # --- cancel -----------------------------------------------------------------------------------
    async def cancel(self, cmd: CancelOrders) -> CommandAck:
        assert self.meta is not None
        reason = safely(lambda: validate_cancel(cmd, self.meta))
        if reason:
            return CommandAck(command_id=cmd.command_id, accepted=False, reason=reason, client_ids=list(cmd.client_ids))
        wanted = set(cmd.client_ids)
        if wanted:
            assert cmd.market is not None
            for cid in wanted:  # orders of other instances / before a restart
                if (cmd.market, cid) not in self.orders:
                    rec = await self.store.load(cmd.market, cid)
                    if rec is not None and not rec.terminal:
                        self.book.adopt_record(rec)
        targets = [r for r in self.book.open_records()
                   if (cmd.market is None or r.market == cmd.market) and (not wanted or r.client_id in wanted)]
        market_id = self.meta.markets[cmd.market].id if cmd.market else None
        await self.exchange.cancel_targets(targets, market_id, sorted(wanted) if wanted else None, cmd.command_id)
        ids = sorted({r.client_id for r in targets} | wanted)
        return CommandAck(command_id=cmd.command_id, accepted=True, client_ids=ids)

    # --- update -----------------------------------------------------------------------------------
    async def update(self, cmd: UpdateOrder) -> CommandAck:
        assert self.meta is not None
        key = (cmd.market, cmd.client_id)
        rec = self.orders.get(key) or await self.store.load(cmd.market, cmd.client_id)
        refuse = self._refuse_common() or validate_order(cmd, self.meta, self.limits)
        if refuse is None and (rec is None or rec.state not in ("accepted", "partially_filled", "submitted")):
            refuse = f"order {cmd.client_id} is not open" if rec is not None else f"unknown order {cmd.client_id}"
        if refuse is None:
            assert rec is not None
            self.book.adopt_record(rec)
            rec = self.orders[key]
            market = self.meta.markets[cmd.market]
            ref = await self.exchange.ref_price(cmd.market) if cmd.order_type == "market" else None
            position = self.positions.get(cmd.market, Decimal(0))
            refuse = safely(lambda: self.risk.check(
                market=market, side=cmd.side, quantity=cmd.quantity, price=cmd.price, ref_price=ref,
                position=position, open_orders=self.orders, replacing=rec))
        if refuse:
            return CommandAck(command_id=cmd.command_id, accepted=False, reason=refuse, client_ids=[cmd.client_id])
        assert rec is not None
        meta = self.meta
        try:
            await self.client.update(
                client_id=cmd.client_id, market_id=rec.market_id, side=meta.side[cmd.side],
                type=meta.type[cmd.order_type], duration=meta.duration[cmd.duration], leverage=cmd.leverage,
                quantity=cmd.quantity, price=cmd.price if cmd.price is not None else Decimal(0))
        except Refused as exc:
            return CommandAck(command_id=cmd.command_id, accepted=False, reason=f"exchange refused: {exc.reason}",
                              client_ids=[cmd.client_id])
        except OutcomeUnknown as exc:
            rec.command_id = cmd.command_id
            await self.book.transition(rec, "unknown", reason=f"update: {exc}")
            self.exchange.start_resolve(rec)
            return CommandAck(command_id=cmd.command_id, accepted=True, reason="outcome unknown: resolving",
                              client_ids=[cmd.client_id])
        rec.command_id = cmd.command_id
        rec.side, rec.order_type, rec.duration, rec.leverage = cmd.side, cmd.order_type, cmd.duration, cmd.leverage
        await self.book.transition(rec, rec.state, reason="amended", price=cmd.price,
                              quantity=rec.filled_quantity + cmd.quantity, force=True)
        return CommandAck(command_id=cmd.command_id, accepted=True, client_ids=[cmd.client_id])

    # --- kill switch --------------------------------------------------------------------------------
    async def handle_control(self, body: bytes) -> CommandAck | ErrorReply:
        """A kill switch request; anything wrong with it is an error reply, never an exception."""
        try:
            ctl = codec.decode_as(body, RouterControl)
        except Exception as exc:  # noqa: BLE001 - whatever the payload: refused with the reason
            return ErrorReply(code=BAD_REQUEST, message=f"bad control message: {exc}"[:1000])
        if ctl.reason is not None and len(ctl.reason) > MAX_CONTROL_REASON:
            return ErrorReply(code=BAD_REQUEST,
                              message=f"bad control message: reason longer than {MAX_CONTROL_REASON} characters")
        try:
            return await self._control(ctl)
        except Exception as exc:  # noqa: BLE001 - e.g. the KV unavailable: the caller learns it
            self.log.error("control %s failed: %r", ctl.action, exc)
            return ErrorReply(code=UNAVAILABLE, message=f"control failed: {exc!r}"[:1000])

    async def _control(self, ctl: RouterControl) -> CommandAck:
        cid = f"control-{ctl.action}-{ctl.ts}"
        if ctl.action in ("halt", "resume"):
            self.control = ControlState(halted=ctl.action == "halt", reason=ctl.reason, ts=ctl.ts)
            await self.control_kv.put("state", _json.encode(self.control))
            self.log.warning("router %s%s", "halted" if self.control.halted else "resumed",
                             f": {ctl.reason}" if ctl.reason else "")
        ids: list[str] = []
        if ctl.action == "halt" and ctl.cancel_open_orders:
            targets = self.book.open_records()
            ids = sorted(r.client_id for r in targets)
            await self.exchange.cancel_targets(targets, None, None)
        state = "halted" if self.control.halted else "running"
        detail = f"{state}: {self.control.reason}" if self.control.reason and self.control.halted else state
        return CommandAck(command_id=cid, accepted=True, reason=detail, client_ids=ids)

    async def _watch_control(self) -> None:
        """Every instance follows the kill switch written by whichever instance got the request."""
        while True:
            try:
                watcher = await self.control_kv.watch("state")
                async for entry in watcher:
                    if entry is None or not entry.value:
                        continue
                    self.control = msgspec.json.decode(entry.value, type=ControlState)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                self.log.warning("control watch: %r", exc)
                await asyncio.sleep(1)

    # --- fills, positions, balances -----------------------------------------------------------------