"""Settings of the FinX ingestor (env prefix ``MARKETBUS_INGEST_FINX_``)."""

from __future__ import annotations

from typing import ClassVar

import msgspec

from marketbus.contracts.subjects import normalize_symbol
from marketbus.runtime.ingest import IngestSettings
from marketbus.runtime.settings import Secret, SettingsError
from marketbus.vendor.timeparse import time_or_offset_ns


class FinxIngestSettings(IngestSettings, kw_only=True):
    env_prefix: ClassVar[str] = "MARKETBUS_INGEST_FINX_"
    http_port: int = 9102  # /healthz and /metrics: a fixed port per service (README, Monitoring); 0 = any free

    # TickPlant websocket base; the key is appended as /streamer/<api_key> (never logged).
    ws_url: str = "ws://127.0.0.1:8701"
    api_key: Secret = Secret("public")
    # REST base (``observations/pairs``: the pairs feed control validates against); empty: the
    # WS_URL's host over http(s) + /backend
    rest_url: str = ""
    pairs: list[str] = msgspec.field(default_factory=lambda: ["BTC:USD"])
    tickers: list[str] = msgspec.field(default_factory=lambda: ["BTC", "USD"])
    snap_interval_s: float = 1.0  # tickSnap poll period per pair
    history_interval_s: float = 1.0  # tickHistory poll period once caught up
    # Backfill start when no cursor is persisted: ISO time ("2022-06-15T00:00:00Z"), or
    # "-<seconds>" (that long before start-up). Empty: start at start-up time.
    history_start: str = "-60"
    history_page_rows: int = 100  # rows per tickHistory reply ("currently 100")
    request_timeout_s: float = 10.0
    reconnect_initial_s: float = 0.2
    reconnect_max_s: float = 10.0
    ref_refresh_s: float = 3600.0
    state_namespace: str = ""  # keys in the ingest_state bucket: finx[.<namespace>].history.<symbol>

    def validate(self) -> None:
        """Start-up checks beyond the types (raises SettingsError naming the variable)."""
        p = self.env_prefix
        if not self.ws_url.startswith(("ws://", "wss://")):
            raise SettingsError(f"{p}WS_URL={self.ws_url!r} is invalid: must start with ws:// or wss://")
        if not self.api_key:
            raise SettingsError(f"{p}API_KEY is required")
        if self.rest_url and not self.rest_url.startswith(("http://", "https://")):
            raise SettingsError(f"{p}REST_URL={self.rest_url!r} is invalid: must start with http:// or https://")
        if not self.pairs:
            raise SettingsError(f"{p}PAIRS must list at least one pair (e.g. BTC:USD)")
        for pair in self.pairs:
            base, sep, quote = pair.partition(":")
            if not sep or not base or not quote:
                raise SettingsError(f"{p}PAIRS: {pair!r} is not a BASE:QUOTE pair")
            normalize_symbol(pair)
        for name in (
            "snap_interval_s",
            "history_interval_s",
            "request_timeout_s",
            "reconnect_initial_s",
            "reconnect_max_s",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{p}{name.upper()}={getattr(self, name)!r} is invalid: must be > 0")
        if self.history_page_rows < 2:
            raise SettingsError(f"{p}HISTORY_PAGE_ROWS must be >= 2")
        self.history_start_ns(0)

    def rest_base(self) -> str:
        if self.rest_url:
            return self.rest_url.rstrip("/")
        scheme, rest = self.ws_url.split("://", 1)
        host = rest.split("/", 1)[0]
        return f"{'https' if scheme == 'wss' else 'http'}://{host}/backend"

    def history_start_ns(self, now_ns: int) -> int:
        try:
            start = time_or_offset_ns(self.history_start, now_ns)
        except ValueError:
            raise SettingsError(f"{self.env_prefix}HISTORY_START={self.history_start.strip()!r} is invalid: "
                                "an ISO time or -<seconds>") from None
        return now_ns if start is None else start
