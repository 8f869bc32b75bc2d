"""Settings of the Sitagri AgriMarket ingestor (env prefix ``MARKETBUS_INGEST_SITAGRI_``).

Validated at load time (``__post_init__``): a bad value stops start-up with a message naming the
variable. Secrets (``TOKEN``, ``PASSWORD``; ``*_FILE`` works too) are never logged.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import msgspec

from marketbus.runtime.ingest import IngestSettings
from marketbus.runtime.settings import Secret
from marketbus.vendor.limits import SITAGRI
from marketbus.vendor.timeparse import time_or_offset_ns

PREFIX = "MARKETBUS_INGEST_SITAGRI_"
SANDBOX_TOKEN = "85045E8E-CE68-2956-9E11-96F51837C71B"  # the sandbox's static token (the vendor's example)


class SitagriIngestSettings(IngestSettings, kw_only=True):
    env_prefix: ClassVar[str] = PREFIX
    http_port: int = 9105  # /healthz and /metrics: a fixed port per service (README, Monitoring); 0 = any free

    # events per batch envelope: a MarketPrice is ~400 bytes as JSON, so 1000 stay well under
    # NATS's 1 MB max payload (5000 would not)
    batch_max_events: int = 1000

    # --- vendor API ---------------------------------------------------------------------------
    base_url: str = SITAGRI.base_url  # the market server URL (production: from the login API)
    token: Secret = Secret(SANDBOX_TOKEN)  # a session token; or log in with LOGIN/PASSWORD
    login: str = ""  # credentials for the login endpoint (used first when set, and after a 401)
    password: Secret = Secret("")
    login_path: str = "/api/login"  # POST {"login","password"} -> {"token","timeout"}
    request_timeout_s: float = 30.0
    requests_per_s: float = float(SITAGRI.limits[0].calls)  # our own pacing of REST calls (declared)
    max_retries: int = 5  # per call, for 429/5xx/network errors
    batch_size: int = 250  # references per batch POST /api (the vendor's default cap)
    keepalive_margin_s: float = 30.0  # GET /api/keepAlive this long before the idle timeout

    # --- reference data -----------------------------------------------------------------------
    ref_refresh_s: float = 86_400.0  # at most daily (the vendor: deliveries change daily at most)
    ref_on_start: bool = True

    # --- live ---------------------------------------------------------------------------------
    # Quote references (a delivery, a term, a cash/index/single quote) or whole classes (a future
    # or option class, an option series, a currency pair: every member is listened to).
    quotes: list[str] = msgspec.field(default_factory=lambda: [
        "/market/sources/EURONEX/future/EMA",
        "/market/sources/FOREX/currency/EURUSD/terms/EURUSDSP",
        "/market/sources/SITCASHFR/cash/FRA18EXWAUB",
        "/market/sources/SITSISALMONI/index/SISALMONI",
    ])
    news_sources: list[str] = msgspec.field(default_factory=lambda: ["AFP", "SITUSDA"])
    transport: Literal["auto", "websocket", "longpoll"] = "auto"
    ws_failures_before_longpoll: int = 3  # auto: consecutive failed websocket connects -> long polling
    ws_retry_s: float = 30.0  # while long polling (auto), try the websocket again this often
    ws_keepalive_s: float = 0.0  # 0 = a third of the session timeout
    register_timeout_s: float = 15.0
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 60.0  # the vendor: "wait a minute" after a maintenance reboot
    order_book_interval_s: float = 0.0  # poll order books of listened quotes (batch) this often; 0 = off
    book_snapshot_interval_s: float = 60.0  # a full order book snapshot this often (deltas in between)
    gap_backfill: bool = True  # back-fill the missed range from history after a reconnect

    # --- history ------------------------------------------------------------------------------
    history_quotes: list[str] = []  # quotes (or classes) to back-fill at start-up
    history_start: str = ""  # ISO time or -<seconds> (before start-up); empty = no start-up backfill
    history_end: str = ""  # ISO time or -<seconds>; empty = start-up time
    history_resolution: str = "TICK"  # TICK, MINUTE, HOUR, DAY, WEEK, MONTH or 1..1440 (minutes)
    history_cap: int = 8192  # points per history reply
    history_descending: bool = False  # page newest-first (the cap then drops the oldest points)
    expired: list[str] = []  # expired futures to back-fill: "EURONEX/EMA/2024/11"
    expired_shift_s: int = 0  # SHIFT of the expired route (seconds added to every timestamp)

    # --- news ---------------------------------------------------------------------------------
    news_lookback_s: float = 0.0  # search this far back at start-up (0 = no start-up search)
    news_langs: list[str] = []
    news_keyword: str = ""
    news_fetch_content: bool = False  # fetch each searched article for its content

    def __post_init__(self) -> None:
        p, problems = PREFIX, []
        if not self.base_url.startswith(("http://", "https://")):
            problems.append(f"{p}BASE_URL must be an http(s) URL")
        if not self.token and not (self.login and self.password):
            problems.append(f"{p}TOKEN or {p}LOGIN and {p}PASSWORD must be set")
        for name in ("request_timeout_s", "requests_per_s", "ws_retry_s", "register_timeout_s",
                     "reconnect_initial_s", "reconnect_max_s", "ref_refresh_s", "book_snapshot_interval_s"):
            if getattr(self, name) <= 0:
                problems.append(f"{p}{name.upper()} must be > 0")
        if not 1 <= self.batch_size <= 250:
            problems.append(f"{p}BATCH_SIZE must be within 1..250")
        if self.history_cap < 2:
            problems.append(f"{p}HISTORY_CAP must be >= 2")
        res = self.history_resolution
        if res not in ("TICK", "MINUTE", "HOUR", "DAY", "WEEK", "MONTH") and not (
            res.isdigit() and 1 <= int(res) <= 1440
        ):
            problems.append(f"{p}HISTORY_RESOLUTION={res!r} is not TICK/MINUTE/HOUR/DAY/WEEK/MONTH or 1..1440")
        for ref in [*self.quotes, *self.history_quotes]:
            if not ref.startswith("/market/sources/"):
                problems.append(f"{p}QUOTES/HISTORY_QUOTES: {ref!r} is not a /market/sources/... reference")
        for item in self.expired:
            parts = item.split("/")
            if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
                problems.append(f"{p}EXPIRED: {item!r} is not SOURCE/CLASS/YYYY/M")
        for name in ("history_start", "history_end"):
            try:
                self.time_ns(getattr(self, name), 0)
            except ValueError:
                problems.append(f"{p}{name.upper()}={getattr(self, name)!r} is not an ISO time or -<seconds>")
        if problems:
            raise ValueError("; ".join(problems))

    @staticmethod
    def time_ns(text: str, now_ns: int) -> int | None:
        """An ISO time (sub-second kept) or ``-<seconds>`` before ``now_ns``; empty -> None."""
        return time_or_offset_ns(text, now_ns)
