"""Settings of the FinX TickPlant sandbox (env prefix ``MARKETBUS_SANDBOX_FINX_``)."""

from __future__ import annotations

from typing import ClassVar

import msgspec

from services.sandbox.common.base import SandboxSettings

DEFAULT_PORT = 8701


class FinxSettings(SandboxSettings, kw_only=True):
    env_prefix: ClassVar[str] = "MARKETBUS_SANDBOX_FINX_"
    # Keys accepted on the WS path, in the APIKey field and in the REST ?APIKey= query.
    # "public" is the real client's default key.
    api_keys: list[str] = msgspec.field(default_factory=lambda: ["public"])
    pairs: list[str] = msgspec.field(default_factory=lambda: ["BTC:USD", "ETH:USD", "BTC:USDC", "SOL:USD"])
    exchanges: list[str] = msgspec.field(default_factory=lambda: ["COINBASE", "GEMINI", "FTX"])
    # ``rate`` (inherited) is ticks/s per (pair, exchange). The wire carries milliseconds, so the
    # tick period is rounded to whole ms (at most 1000 ticks/s per pair and exchange).
    history_rows: int = 100  # rows per tickHistory reply ("currently 100")
    noise_rate: float = 0.1  # share of prices sent with float noise ("21865.010000000002")
    snap_width_s: float = 10.0  # REST snap default timeTargetWidthSeconds (the client's default)
    truth_limit: int = 200_000  # cap on rows returned by GET /_sandbox/finx/ticks
