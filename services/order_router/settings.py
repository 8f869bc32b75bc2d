"""Settings of the order router (env prefix ``MARKETBUS_ORDER_ROUTER_``)."""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from marketbus.contracts.consumers import ORDER_ROUTER_COMMANDS
from marketbus.runtime.service import ServiceSettings
from marketbus.runtime.settings import Secret


class OrderRouterSettings(ServiceSettings, kw_only=True):
    env_prefix: ClassVar[str] = "MARKETBUS_ORDER_ROUTER_"
    http_port: int = 9106  # /healthz and /metrics: a fixed port per service (README, Monitoring); 0 = any free

    # Digitex REST (the sandbox by default)
    digitex_url: str = "http://127.0.0.1:8703"
    digitex_token: Secret = Secret("dgtx_sandbox_token")
    request_timeout_s: float = 2.0  # a write that takes longer has an unknown outcome
    rate_per_second: int = 50  # exchange_info.rate_limits
    rate_per_minute: int = 500
    http_connections: int = 8  # keep-alive connections to Digitex (a few saturate one core)

    # command intake
    durable: str = "order_router"  # the pull consumer shared by every router instance
    max_inflight: int = 256  # commands held by one instance at once (requested + being handled)
    # short: a router that dies holding commands gives them back within seconds; a command whose
    # handling takes longer (exchange calls) is kept with +WPI
    ack_wait_s: float = ORDER_ROUTER_COMMANDS.ack_wait_s
    max_deliver: int = ORDER_ROUTER_COMMANDS.max_deliver  # a command failing this often is refused and dead-lettered

    # validation
    max_quantity: Decimal = Decimal(1_000_000)
    max_price: Decimal = Decimal(10_000_000)
    max_leverage: int = 100

    # pre-trade risk
    max_order_notional: Decimal = Decimal(1_000_000)
    max_open_orders: int = 500
    max_position: Decimal = Decimal(1_000)
    max_orders_per_second: float = 20.0
    ref_price_max_age_s: float = 10.0

    # lifecycle tracking and reconciliation
    poll_interval_s: float = 1.0  # while orders are working
    idle_poll_s: float = 5.0  # when none is
    # an order event wakes the tracker, after this pause at least: each sync costs 2-3 REST requests
    # of the 500/min budget (rate_per_minute), which places and cancels share
    min_sync_gap_s: float = 1.0
    reconcile_interval_s: float = 30.0
    unknown_absent_polls: int = 3  # order_status must say "absent" this many times...
    unknown_settle_s: float = 0.0  # ...and this long after the send (0 = request_timeout_s + 0.5)
    unknown_poll_s: float = 0.25
    max_submit_attempts: int = 3
