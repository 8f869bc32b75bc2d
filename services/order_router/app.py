"""The order router service: commands off the ORDERS_CMD work queue, validated, risk-checked,
sent to Digitex, and every order's lifecycle published (see state.py for the state machine).

Its parts, each given what it uses (no part knows the router):

- intake.py: the command consumer (decoding, idempotency, acks, replies, dead letters);
- commands.py: validation and risk checks, and executing place / cancel / update;
- exchange_orders.py: the exchange calls (submit, cancel, resolving unknown outcomes);
- tracking.py: the orders, their transitions and the events that tell them;
- reconcile.py: tracking against the exchange, and reconciliation;
- control.py: the kill switch.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from marketbus.contracts import codec, streams, subjects
from marketbus.contracts.consumers import ORDER_ROUTER_COMMANDS, ConsumerSpec, bind_consumer
from marketbus.runtime.pull import PullConsumer, fit_for_dead_letter
from marketbus.runtime.service import Service

from .client import DigitexClient
from .commands import OrderCommands
from .control import ControlState, KillSwitch
from .exchange_orders import ExchangeOrders
from .intake import CommandIntake
from .metrics import RouterMetrics
from .reconcile import Reconciler
from .risk import RiskEngine, RiskLimits
from .settings import OrderRouterSettings
from .state import StateStore
from .tracking import OrderBook
from .validation import ExchangeMeta, Limits


async def _raw_body(msg: Any) -> bytes:
    """The request as bytes (FastStream's own decoding would choke on hostile JSON before us)."""
    return msg.body


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
        # the parts (module docstring), each given only what it uses
        self.book = OrderBook(self.publish, self.metrics, self.log)
        self.exchange = ExchangeOrders(self.book, self.client, s, self.log)
        self.reconciler = Reconciler(self.book, self.client, self.exchange, s, self.log)
        self.kill_switch = KillSwitch(self.book, self.exchange, self.log)
        self.commands = OrderCommands(self.book, self.exchange, self.kill_switch, self.limits, self.risk, self.log)
        self.intake = CommandIntake(self.commands, self.book, self.consumer_spec, self._dead_letter_command,
                                    self.metrics, self.log)
        self.orders = self.book.orders  # the same object: open orders by (market, client_id)
        self.metrics.open_orders.set_function(lambda: len(self.orders))
        self.metrics.halted.set_function(lambda: 1 if self.control.halted else 0)

        @self.broker.subscriber(subjects.ORDER_CONTROL, queue="order_router_control", decoder=_raw_body)
        async def on_control(body: bytes) -> bytes:
            return codec.encode(await self.kill_switch.handle_control(body))

    # --- start / stop ---------------------------------------------------------------------------
    async def on_start(self) -> None:
        s = self.settings
        self.intake.nc = self.nc
        self.intake.idem_kv = await streams.ensure_bucket(self.js, streams.ORDER_IDEMPOTENCY, s.stream_replicas)
        self.state_kv = await streams.ensure_bucket(self.js, streams.ORDER_STATE, s.stream_replicas)
        await self.kill_switch.load(await streams.ensure_bucket(self.js, streams.ROUTER_CONTROL, s.stream_replicas))
        self.store = self.book.store = StateStore(self.state_kv, self.instance, self.js)
        self.meta = self.book.meta = ExchangeMeta.from_exchange_info(await self.client.exchange_info())
        self.log.info("digitex: %d markets, order types %s", len(self.meta.markets), self.meta.type)
        await self.reconciler.reconcile(startup=True)
        await bind_consumer(self.js, self.consumer_spec)
        # each command is handled as it arrives (a fetch would hold it until the batch fills); the
        # consumer's policy: +WPI during long exchange calls, a failing command retried with
        # back-off, then dead-lettered and terminated
        self._pull = PullConsumer.of(
            self.nc,
            self.consumer_spec,
            self.intake.handle_message,
            max_messages=s.max_inflight,
            on_error=self._command_failed,
            dead_letter=self._dead_letter_command,
            on_dropped=self._dead_letter_dropped,
        )
        await self._pull.start()
        self.spawn(self.kill_switch.watch(), "control")
        self.spawn(self.reconciler.track_loop(), "track")
        self.spawn(self.reconciler.reconcile_loop(), "reconcile")
        await self.publish_feed_status("digitex", "connected", feed="digitex/orders")

    @property
    def control(self) -> ControlState:
        """The kill switch as this instance last saw it."""
        return self.kill_switch.state

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
        return {
            "halted": self.control.halted,
            "open_orders": len(self.orders),
            "commands": self.intake.commands_handled,
            "markets": len(self.meta.markets) if self.meta else 0,
        }

    # --- helpers ----------------------------------------------------------------------------------
    def _exchange_observed(self, path: str, outcome: str, seconds: float) -> None:
        self.metrics.exchange_requests.labels(path, outcome).observe(seconds)

    async def publish(self, event: Any, subject: str) -> None:
        """Publish one event; a failure that shows only later (no ack) is logged."""
        assert self.publisher is not None
        future = await self.publisher.publish_event(event, subject)
        future.add_done_callback(self._publish_done)

    def _publish_done(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.log.error("publish failed: %r", future.exception())
