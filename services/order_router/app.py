"""The order router service: commands off the ORDERS_CMD work queue, validated, risk-checked,
sent to Digitex, and every order's lifecycle published (see state.py for the state machine)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable
from decimal import Decimal
from typing import Any, ClassVar, Union

import msgspec
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError

from marketbus.contracts import codec, streams, subjects
from marketbus.contracts.consumers import ORDER_ROUTER_COMMANDS, ConsumerSpec, bind_consumer
from marketbus.contracts.errors import BAD_REQUEST, UNAVAILABLE, ErrorReply
from marketbus.contracts.ids import event_id
from marketbus.contracts.orders import (
    Balance, CancelOrders, CommandAck, Fill, PlaceOrder, Position, RouterControl, UpdateOrder,
)
from marketbus.runtime.pull import PullConsumer, fit_for_dead_letter
from marketbus.runtime.service import Service

from .client import DigitexClient, OutcomeUnknown, Refused, now_us
from .metrics import RouterMetrics
from .reconcile import Reconciler
from .requests import REPLY_HEADER
from .risk import RiskEngine, RiskLimits
from .settings import OrderRouterSettings
from .state import WORKING_STATES, OpenOrders, OrderRecord, StateStore, can_transition, command_key, event_for
from .validation import (
    MAX_COMMAND_ID, ExchangeMeta, Limits, check_reduce_only, identifier_problem, safely, validate_cancel,
    validate_order,
)

Command = Union[PlaceOrder, CancelOrders, UpdateOrder]
_command_decoder = msgspec.json.Decoder(Command)


class _CommandIdOnly(msgspec.Struct):
    """What a refused command's reply can still use: its command id, read from the raw JSON."""

    command_id: str = ""


_command_id_decoder = msgspec.json.Decoder(_CommandIdOnly)


def _salvaged_command_id(data: bytes) -> str:
    """The command id of a payload the contracts refuse (a 10 KB client id, a quantity of 1e30),
    so the requester can tell which command was refused; "" when it has none usable."""
    try:
        command_id = _command_id_decoder.decode(data).command_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""
    return command_id if 0 < len(command_id) <= MAX_COMMAND_ID else ""
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
        self.orders = OpenOrders()  # open orders by (market, client_id), with risk totals
        self.recent: OrderedDict[tuple[str, str], OrderRecord] = OrderedDict()  # recently closed (fill attribution)
        self.positions: dict[str, Decimal] = {}  # signed, by market symbol
        self.ref_prices: dict[str, tuple[Decimal, float]] = {}
        self.control = ControlState()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._resolving: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self.commands_handled = 0
        self.reconciler = Reconciler(self)
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
        self.store = StateStore(self.state_kv, self.instance)
        self.meta = ExchangeMeta.from_exchange_info(await self.client.exchange_info())
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
        for task in list(self._bg):
            task.cancel()
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

    def lock(self, key: tuple[str, str]) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def wake(self) -> None:
        self._wake.set()

    async def publish(self, event: Any, subject: str) -> None:
        assert self.publisher is not None
        future = await self.publisher.publish_event(event, subject)
        future.add_done_callback(self._publish_done)

    async def publish_order(self, rec: OrderRecord, ts_event: int | None = None) -> None:
        """The order event of ``rec`` as it stands (its latest transition)."""
        await self.publish(event_for(rec, ts_event), subjects.order_event(rec.market, rec.client_id))
        self.metrics.transitions.labels(rec.state).inc()

    def _publish_done(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.log.error("publish failed: %r", future.exception())

    async def transition(self, rec: OrderRecord, state: str, *, reason: str | None = None,
                         filled: Decimal | None = None, average: Decimal | None = None,
                         price: Decimal | None = None, quantity: Decimal | None = None,
                         ts_us: int | None = None, force: bool = False) -> bool:
        """Move ``rec`` to ``state`` (persist, then publish); False when not allowed or not a change."""
        key = (rec.market, rec.client_id)
        async with self.lock(key):
            same = state == rec.state
            fill_change = filled is not None and filled != rec.filled_quantity
            amend = (price is not None and price != rec.price) or (quantity is not None and quantity != rec.quantity)
            if same and not fill_change and not amend and not force:
                return False
            if not same and not can_transition(rec.state, state) and not force:
                return False
            prev = msgspec.structs.replace(rec)
            rec.state = state
            rec.seq += 1
            rec.reason = reason
            if filled is not None:
                rec.filled_quantity = filled
            if average is not None:
                rec.average_price = average
            if price is not None:
                rec.price = price
            if quantity is not None:
                rec.quantity = quantity
            if ts_us is not None:
                rec.exchange_ts_us = ts_us
            rec.updated_ns = time.time_ns()
            if not await self.store.save(rec):
                remote = await self.store.load(rec.market, rec.client_id)
                if remote is not None and remote.seq >= rec.seq:
                    self.log.info("order %s was moved by another instance to %s (seq %d)", rec.client_id,
                                  remote.state, remote.seq)
                    self._adopt_record(remote)
                    for f in msgspec.structs.fields(OrderRecord):
                        setattr(rec, f.name, getattr(remote, f.name))
                    return False
                if not await self.store.save(rec):
                    for f in msgspec.structs.fields(OrderRecord):
                        setattr(rec, f.name, getattr(prev, f.name))
                    return False
            await self.publish_order(rec, ts_us * 1000 if ts_us else None)
            if rec.terminal:
                self.orders.pop(key, None)
                self._locks.pop(key, None)
                self.recent[key] = rec
                while len(self.recent) > 5000:
                    self.recent.popitem(last=False)
            else:
                self.orders[key] = rec
            if state in WORKING_STATES:
                self.wake()
            return True

    def _adopt_record(self, rec: OrderRecord) -> None:
        key = (rec.market, rec.client_id)
        if rec.terminal:
            self.orders.pop(key, None)
        else:
            self.orders[key] = rec

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
                    await self.transition(rec, "rejected", reason=reason)
        else:
            now = time.time_ns()
            rec = OrderRecord(
                client_id=cmd.client_id, market=cmd.market, market_id=-1, side=cmd.side, order_type=cmd.order_type,
                duration=cmd.duration, quantity=cmd.quantity, price=cmd.price, leverage=cmd.leverage,
                reduce_only=cmd.reduce_only, state="rejected", seq=1, command_id=cmd.command_id, reason=reason,
                created_ns=now, updated_ns=now)
            with contextlib.suppress(Exception):
                await self.publish_order(rec)

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
    def open_records(self) -> list[OrderRecord]:
        return list(self.orders.values())  # every record kept in ``orders`` is open (not terminal)

    async def ref_price(self, market: str) -> Decimal | None:
        cached = self.ref_prices.get(market)
        if cached and time.monotonic() - cached[1] < self.settings.ref_price_max_age_s:
            return cached[0]
        assert self.meta is not None
        info = self.meta.markets[market]
        try:
            book = await self.client.order_book(info.id)
        except Exception as exc:  # noqa: BLE001
            self.log.warning("no reference price for %s: %r", market, exc)
            return cached[0] if cached else None
        bids, asks = book.get("bids") or [], book.get("asks") or []
        if bids and asks:
            price = (Decimal(bids[0][0]) + Decimal(asks[0][0])) / 2
        elif bids or asks:
            price = Decimal((bids or asks)[0][0])
        else:
            return cached[0] if cached else None
        self.ref_prices[market] = (price, time.monotonic())
        return price

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
            ref = await self.ref_price(cmd.market) if cmd.order_type == "market" else None
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
        await self.publish_order(rec)
        prior = await claim
        if prior is not None and not reason:  # the command id was used before, for another order
            await self.transition(rec, "rejected", reason=f"command id {cmd.command_id} was already used "
                                                            f"(orders {', '.join(prior.client_ids) or '-'})")
            return prior
        if reason:
            self.recent[key] = rec
            self.log.info("refused %s %s: %s", cmd.market, cmd.client_id, reason)
            return prior or CommandAck(command_id=cmd.command_id, accepted=False, reason=reason,
                                       client_ids=[cmd.client_id])
        self.spawn_task(self.submit(rec))
        return CommandAck(command_id=cmd.command_id, accepted=True, client_ids=[cmd.client_id])

    def _existing(self, cmd: PlaceOrder, existing: OrderRecord) -> CommandAck:
        key = (cmd.market, cmd.client_id)
        if existing.command_id == cmd.command_id:  # this very command, re-delivered after a crash
            if existing.state in ("pending_submit", "unknown") and key not in self._resolving:
                self._adopt_record(existing)
                self.start_resolve(existing)
            return CommandAck(command_id=cmd.command_id, accepted=existing.state != "rejected",
                              reason=existing.reason if existing.state == "rejected" else None,
                              client_ids=[cmd.client_id])
        return CommandAck(command_id=cmd.command_id, accepted=False, client_ids=[cmd.client_id],
                          reason=f"client_id {cmd.client_id} is already used in {cmd.market}")

    def spawn_task(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._task_done)

    @property
    def _bg(self) -> set[asyncio.Task[Any]]:
        bg = getattr(self, "_bg_tasks", None)
        if bg is None:
            bg = self._bg_tasks = set()
        return bg

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._bg.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("order task failed: %r", task.exception(), exc_info=task.exception())

    async def submit(self, rec: OrderRecord) -> None:
        """Send a pending_submit order; a lost outcome goes to ``unknown`` and is resolved."""
        assert self.meta is not None
        meta = self.meta
        rec.submit_attempts += 1
        try:
            await self.client.place(
                client_id=rec.client_id, market_id=rec.market_id, side=meta.side[rec.side],
                type=meta.type[rec.order_type], duration=meta.duration[rec.duration], leverage=rec.leverage,
                quantity=rec.quantity, price=rec.price if rec.price is not None else Decimal(0))
        except Refused as exc:
            if exc.duplicate_client_id:
                await self.transition(rec, "unknown", reason=f"exchange already knows the client_id: {exc.reason}")
                self.start_resolve(rec)
            else:
                await self.transition(rec, "rejected", reason=f"exchange refused: {exc.reason}")
            return
        except OutcomeUnknown as exc:
            await self.transition(rec, "unknown", reason=str(exc))
            self.start_resolve(rec, retry_after=exc.retry_after)
            return
        await self.transition(rec, "submitted")

    # --- unknown outcomes -------------------------------------------------------------------------
    def start_resolve(self, rec: OrderRecord, retry_after: float = 0.0) -> None:
        key = (rec.market, rec.client_id)
        if key in self._resolving:
            return
        self._resolving.add(key)
        self.spawn_task(self._resolve(rec, retry_after))

    async def _resolve(self, rec: OrderRecord, retry_after: float) -> None:
        """Ask ``order_status`` until the exchange tells what happened (never guess)."""
        key = (rec.market, rec.client_id)
        s = self.settings
        settle_ns = int((s.unknown_settle_s or s.request_timeout_s + 0.5) * 1e9)
        try:
            absent = 0
            while rec.state in ("unknown", "pending_submit"):
                try:
                    rows = [r for r in await self.client.order_status(rec.client_id)
                            if int(r.get("market_id", -1)) == rec.market_id]
                except Exception as exc:  # noqa: BLE001 - cannot tell yet: ask again
                    self.log.info("order_status %s: %r", rec.client_id, exc)
                    await asyncio.sleep(s.unknown_poll_s * 2)
                    continue
                if rows:
                    await self.adopt(rec, rows[0], reason="resolved by order_status")
                    if rec.state == "pending_submit":  # exchange PENDING maps to submitted; be explicit
                        await self.transition(rec, "submitted", reason="resolved by order_status")
                    return
                absent += 1
                settled = time.time_ns() - rec.updated_ns >= settle_ns
                if absent >= s.unknown_absent_polls and settled:
                    if rec.submit_attempts >= s.max_submit_attempts:
                        await self.transition(rec, "rejected", reason=f"not received by the exchange after "
                                                                      f"{rec.submit_attempts} attempts")
                        return
                    if rec.state == "unknown":
                        await self.transition(rec, "pending_submit", reason="not received by the exchange: re-sending")
                    if retry_after:
                        await asyncio.sleep(retry_after)
                        retry_after = 0.0
                    await self.submit(rec)
                    absent = 0
                    if rec.state != "unknown":
                        return
                    continue
                await asyncio.sleep(s.unknown_poll_s)
        finally:
            self._resolving.discard(key)

    async def adopt(self, rec: OrderRecord, row: dict[str, Any], reason: str | None = None) -> bool:
        """Move ``rec`` to what the exchange says (an order row of orders/order_status/history)."""
        assert self.meta is not None
        state = self.meta.status.get(int(row.get("status", 0)))
        if state is None:
            return False
        orig = Decimal(str(row.get("orig_quantity") or rec.quantity))
        remaining = Decimal(str(row.get("quantity") or 0))
        filled = max(Decimal(0), orig - remaining) if state != "rejected" else Decimal(0)
        avg = Decimal(str(row["average_price"])) if filled and row.get("average_price") else None
        price = Decimal(str(row["price"])) if rec.order_type == "limit" and row.get("price") else None
        if state == "accepted" and filled > 0:
            state = "partially_filled"
        if state == "submitted" and rec.state in ("accepted", "partially_filled", "cancel_pending"):
            return False
        if rec.state == "cancel_pending" and state in ("accepted", "partially_filled"):
            if time.time_ns() - rec.updated_ns < 3e9:
                return False  # the cancel is on its way
            reason = reason or "cancel did not take effect"
        quantity = orig if orig != rec.quantity else None
        if price is not None and rec.price is not None and price == rec.price:
            price = None
        return await self.transition(rec, state, reason=reason, filled=filled, average=avg, price=price,
                                     quantity=quantity, ts_us=int(row.get("created_at") or 0) or None,
                                     force=rec.state == "rejected")

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
                        self._adopt_record(rec)
        targets = [r for r in self.open_records()
                   if (cmd.market is None or r.market == cmd.market) and (not wanted or r.client_id in wanted)]
        market_id = self.meta.markets[cmd.market].id if cmd.market else None
        await self.cancel_targets(targets, market_id, sorted(wanted) if wanted else None, cmd.command_id)
        ids = sorted({r.client_id for r in targets} | wanted)
        return CommandAck(command_id=cmd.command_id, accepted=True, client_ids=ids)

    async def cancel_targets(self, targets: list[OrderRecord], market_id: int | None, client_ids: list[str] | None,
                             command_id: str | None = None) -> None:
        for rec in targets:
            if rec.state in WORKING_STATES and rec.state != "cancel_pending":
                rec.command_id = command_id or rec.command_id
                await self.transition(rec, "cancel_pending")
        for attempt in range(3):
            try:
                await self.client.cancel(market_id, client_ids)
                break
            except OutcomeUnknown as exc:  # cancelling twice is harmless: try again
                self.log.warning("cancel failed (%r), attempt %d", exc, attempt + 1)
                await asyncio.sleep(max(exc.retry_after, 0.2))
            except Refused as exc:
                self.log.warning("cancel refused: %s", exc.reason)
                break
        # orders still being placed: cancel them once the exchange has them
        for rec in targets:
            if rec.state in ("pending_submit", "unknown"):
                self.spawn_task(self._cancel_when_placed(rec))
        self.wake()

    async def _cancel_when_placed(self, rec: OrderRecord) -> None:
        deadline = time.monotonic() + 30
        while rec.state in ("pending_submit", "unknown") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if rec.state in ("submitted", "accepted", "partially_filled"):
            await self.cancel_targets([rec], rec.market_id, [rec.client_id])

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
            self._adopt_record(rec)
            rec = self.orders[key]
            market = self.meta.markets[cmd.market]
            ref = await self.ref_price(cmd.market) if cmd.order_type == "market" else None
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
            await self.transition(rec, "unknown", reason=f"update: {exc}")
            self.start_resolve(rec)
            return CommandAck(command_id=cmd.command_id, accepted=True, reason="outcome unknown: resolving",
                              client_ids=[cmd.client_id])
        rec.command_id = cmd.command_id
        rec.side, rec.order_type, rec.duration, rec.leverage = cmd.side, cmd.order_type, cmd.duration, cmd.leverage
        await self.transition(rec, rec.state, reason="amended", price=cmd.price,
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
            targets = self.open_records()
            ids = sorted(r.client_id for r in targets)
            await self.cancel_targets(targets, None, None)
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
    async def publish_fill(self, trade: dict[str, Any], client_id: str | None, market: str) -> None:
        assert self.meta is not None
        now = time.time_ns()
        fill = Fill(
            id=event_id("digitex", "fill", trade.get("contract_id"), trade.get("traded_at")), client_id=client_id,
            market=market, side=self.meta.side_of.get(int(trade["side"]), "buy"),  # type: ignore[arg-type]
            price=Decimal(str(trade["price"])), quantity=Decimal(str(trade["quantity"])),
            ts_event=int(trade["traded_at"]) * 1000, ts_recv=now)
        await self.publish(fill, subjects.order_fill(market))

    async def publish_position(self, row: dict[str, Any], market: str) -> None:
        now = time.time_ns()
        qty = Decimal(str(row.get("quantity") or 0))
        side_num = row.get("position_side")
        side = "flat" if not qty or side_num is None else ("long" if int(side_num) == 1 else "short")

        def dec(name: str) -> Decimal | None:
            v = row.get(name)
            return Decimal(str(v)) if v not in (None, "") else None

        pos = Position(
            id=event_id("digitex", "position", market, side, qty, row.get("entry_price"), row.get("timestamp")),
            market=market, side=side, quantity=qty, entry_price=dec("entry_price"), leverage=dec("leverage"),  # type: ignore[arg-type]
            liquidation_price=dec("liquidation_price"), mark_price=dec("mark_price"),
            unrealized_pnl=dec("unrealized_pnl"), ts_event=int(row.get("timestamp") or now_us()) * 1000, ts_recv=now)
        await self.publish(pos, subjects.order_position(market))

    async def publish_balance(self, row: dict[str, Any]) -> None:
        now = time.time_ns()
        code = str((row.get("currency") or {}).get("code", "?"))
        bal = Balance(
            id=event_id("digitex", "balance", code, row.get("total_balance"), row.get("available_balance"), now),
            currency=code, total=Decimal(str(row.get("total_balance") or 0)),
            available=Decimal(str(row.get("available_balance") or 0)),
            trading=Decimal(str(row["trading_balance"])) if row.get("trading_balance") is not None else None,
            ts_event=now, ts_recv=now)
        await self.publish(bal, subjects.order_balance(subjects.normalize_symbol(code)))
