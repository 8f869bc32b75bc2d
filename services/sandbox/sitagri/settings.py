"""Settings of the Sitagri AgriMarket sandbox (env prefix ``MARKETBUS_SANDBOX_SITAGRI_``)."""

from __future__ import annotations

from typing import ClassVar

import msgspec

from ..common.base import SandboxSettings

DEFAULT_TOKEN = "85045E8E-CE68-2956-9E11-96F51837C71B"  # the token of the vendor's own examples


class SitagriSettings(SandboxSettings, kw_only=True):
    env_prefix: ClassVar[str] = "MARKETBUS_SANDBOX_SITAGRI_"

    # Ticks per second per market quote (futures, options, singles, currencies). Tick times are
    # whole milliseconds, so every update of one quote has an exact, distinct timestamp.
    rate: float = 2.0
    cash_rate: float = 0.1  # ticks per second of cash and index quotes (they move slowly)
    # --- sessions ---------------------------------------------------------------------------
    session_timeout: float = 120.0  # idle seconds before a session (and its websockets) expire

    @property
    def timeout_field(self) -> int | float:
        """``timeout`` as sessions report it: whole seconds like the vendor, exact if fractional."""
        t = self.session_timeout
        return int(t) if t == int(t) else t
    session_ttl: int = 900  # reported by /api/session (login-session lifetime; not enforced)
    lang: str = "EN"
    # static tokens are always valid and never expire
    static_tokens: list[str] = msgspec.field(default_factory=lambda: [DEFAULT_TOKEN])
    # login -> password for POST /api/login {"login","password"}
    credentials: dict[str, str] = msgspec.field(default_factory=lambda: {"demo": "demo"})
    # news sources the sandbox user may publish to (the others answer 403)
    writable_news: list[str] = msgspec.field(default_factory=lambda: ["PRIVDEMO"])
    # --- limits -----------------------------------------------------------------------------
    batch_cap: int = 250
    history_cap: int = 8192
    orderbook_depth: int = 5
    # --- netbus -----------------------------------------------------------------------------
    longpoll_timeout: float = 30.0  # GET /api/netbus answers [] after this long without updates
    longpoll_buffer: int = 20_000  # updates kept per long-polling session (oldest dropped)
    push_interval: float = 0.02  # the push pump's period (s); pushes are exact, only batched
    push_before_ack: float = 0.3  # probability that the first price precedes the register ack
    ws_backlog: int = 200_000  # frames queued for one slow websocket before it is closed
    ws_refuse: bool = False  # refuse websocket upgrades (clients must fall back to long polling)
    # --- news -------------------------------------------------------------------------------
    news_interval: float = 60.0  # seconds between synthetic articles of one source
    # --- maintenance ------------------------------------------------------------------------
    reboot_every_s: float = 0.0  # scheduled maintenance reboot period (0 = never)
    reboot_seconds: float = 60.0  # how long a maintenance reboot refuses connections
