"""Settings of the Digitex sandbox (env prefix ``MARKETBUS_SANDBOX_DIGITEX_``)."""

from __future__ import annotations

from typing import ClassVar

import msgspec

from services.sandbox.common.base import SandboxSettings


class DigitexSettings(SandboxSettings, kw_only=True):
    env_prefix: ClassVar[str] = "MARKETBUS_SANDBOX_DIGITEX_"
    # A futures market trades a few times a second; OHLCV cost grows with this (bars are exact).
    rate: float = 10.0
    # One account per token; trader ids are trader_id_base + position in this list.
    tokens: list[str] = msgspec.field(default_factory=lambda: ["dgtx_sandbox_token"])
    trader_id_base: int = 119887
    # The OrderType numbering the sandbox serves (the sources conflict; DESIGN.md: 1=MARKET, 2=LIMIT).
    order_type_market: int = 1
    order_type_limit: int = 2
    # "short" = order_meta keys type/side/position/duration/status (captured response);
    # "model" = order_type/order_side/... (the generated OrderMeta model).
    order_meta_keys: str = "short"
    accept_delay_ms: int = 50  # PENDING -> ACCEPTED happens this long after place
    match_interval_ms: int = 20  # how often resting orders are matched against new tape ticks
    history_s: int = 6 * 3600  # markets are "listed" this long before start: OHLCV/trades begin there
    book_depth: int = 20
    rate_limit_enabled: bool = False  # the vendor advertises 50/s and 500/min but does not enforce them
    rate_limit_per_second: int = 50
    rate_limit_per_minute: int = 500
    maintenance: bool = False  # every API route answers 503
    place_reply_delay_ms: int = 3000  # reply delay of the place_timeout_next fault
    place_fail_status: int = 500  # status of the place_fail_*_apply_next faults
    # Starting trading balances of every account, by currency code.
    initial_balances: dict[str, str] = msgspec.field(default_factory=lambda: {
        "DGTX": "100000", "BTC": "2", "ETH": "20", "USDC": "100000", "USDT": "0"})
