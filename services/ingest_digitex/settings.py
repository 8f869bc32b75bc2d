"""Settings of the Digitex ingestor (env prefix ``MARKETBUS_INGEST_DIGITEX_``)."""

from __future__ import annotations

from typing import ClassVar

import msgspec

from marketbus.runtime.ingest import IngestSettings
from marketbus.runtime.settings import Secret, SettingsError
from marketbus.vendor.limits import DIGITEX

from . import normalize


class DigitexIngestSettings(IngestSettings, kw_only=True):
    env_prefix: ClassVar[str] = "MARKETBUS_INGEST_DIGITEX_"
    http_port: int = 9104  # /healthz and /metrics: a fixed port per service (README, Monitoring); 0 = any free

    base_url: str = DIGITEX.base_url  # the bot API lives under <base>/v1/exchange/bot/
    token: Secret = Secret("")  # Authorization: Token <token>; public market data works without
    markets: list[str] = []  # market codes (FS:BTCUSD) or ids; empty = every listed market
    book_interval_s: float = 3.0
    book_snapshot_interval_s: float = 60.0  # a full book snapshot this often (deltas in between)
    trades_interval_s: float = 1.0
    bars_interval_s: float = 30.0
    resolutions: list[str] = msgspec.field(default_factory=lambda: ["1"])  # OHLCV resolutions (1, 5, 60, 1D...)
    bars_backfill_s: float = 3600.0  # bars fetched at first start (no cursor yet)
    max_trades: int = 1000  # recent_trades depth per poll (the vendor's cap)
    ref_refresh_s: float = 3600.0
    rate_per_second: int = DIGITEX.limits[0].calls  # the account's limits (default: the declared ones)
    rate_per_minute: int = DIGITEX.limits[1].calls
    request_timeout_s: float = 10.0
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    venue: str = "DIGITEX"

    def validate(self) -> None:
        p = self.env_prefix
        if not self.base_url.startswith(("http://", "https://")):
            raise SettingsError(f"{p}BASE_URL={self.base_url!r} is invalid: must start with http:// or https://")
        for name in (
            "book_interval_s",
            "book_snapshot_interval_s",
            "trades_interval_s",
            "bars_interval_s",
            "request_timeout_s",
            "retry_initial_s",
            "retry_max_s",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{p}{name.upper()}={getattr(self, name)!r} is invalid: must be > 0")
        if not 1 <= self.max_trades <= 1000:
            raise SettingsError(f"{p}MAX_TRADES={self.max_trades} is invalid: 1..1000")
        if self.rate_per_second < 1 or self.rate_per_minute < 1:
            raise SettingsError(f"{p}RATE_PER_SECOND / RATE_PER_MINUTE must be >= 1")
        for res in self.resolutions:
            if normalize.interval_of(res) is None:
                raise SettingsError(f"{p}RESOLUTIONS: {res!r} is not an OHLCV resolution (1, 5, 60, 1D, 1W, 1M)")
        try:
            normalize.venue_token(self.venue)
        except ValueError as exc:
            raise SettingsError(f"{p}VENUE={self.venue!r} is invalid: {exc}") from None
