"""Settings of the TickSupply ingestor (env prefix ``MARKETBUS_INGEST_TICKSUPPLY_``).

Validated at load time (``__post_init__``): a bad value stops start-up with a
:class:`~marketbus.runtime.settings.SettingsError` naming the variable.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import msgspec

from marketbus.runtime.ingest import IngestSettings
from marketbus.runtime.settings import Secret
from marketbus.vendor.limits import TICKSUPPLY

PREFIX = "MARKETBUS_INGEST_TICKSUPPLY_"


class TickSupplySettings(IngestSettings, kw_only=True):
    env_prefix: ClassVar[str] = PREFIX
    http_port: int = 9103  # /healthz and /metrics: a fixed port per service (README, Monitoring); 0 = any free

    # vendor API
    base_url: str = TICKSUPPLY.base_url  # production: https://api.ticksupply.com/v1
    api_key: Secret = Secret("ts_sandbox_key")  # the sandbox's key by default; API_KEY_FILE works too
    request_timeout_s: float = 30.0
    # our own pacing, the declared window (the vendor answers 429 + Retry-After beyond its limit)
    requests_per_s: float = float(TICKSUPPLY.limits[0].calls)
    max_retries: int = 6  # per call, for 5xx / network errors / timeouts
    max_rate_limited_retries: int = 100  # per call, for 429s (each waits Retry-After)

    # what to ingest
    # datastream ids kept subscribed and ingested (101 = binance BTCUSDT trades)
    datastreams: list[int] = msgspec.field(default_factory=lambda: [101])
    paused_datastreams: list[int] = []  # of those, the ones whose subscription is kept paused
    catalog_exchanges: list[str] = []  # exchanges whose catalog is synced; empty = all
    catalog_interval_s: float = 3600.0  # 0 = sync once at start-up
    subscription_interval_s: float = 60.0  # how often subscriptions/spans are reconciled

    # rolling exports
    export_interval_s: float = 60.0  # how often a new window is exported
    export_lag_s: float = 2.0  # a window ends this long before now (data the vendor has collected)
    initial_lookback_s: float = 3600.0  # first window starts at most this long ago
    max_window_s: float = 3600.0  # a longer backlog is exported in windows of this size
    export_poll_initial_s: float = 0.25  # export status polling: back-off from here...
    export_poll_max_s: float = 5.0  # ...up to here
    export_timeout_s: float = 600.0  # an export not finished by then is canceled and redone
    state_namespace: str = "default"  # KV keys ticksupply.<namespace>.ds.<id> (one per account/deployment)
    artifact_slice_bytes: int = 8 << 20  # CSV text parsed and published at a time (bounds memory)
    publish_mode: Literal["batch", "single"] = "batch"  # batch envelopes (fast) or one message per trade

    def __post_init__(self) -> None:
        problems = []
        if not self.base_url.startswith(("http://", "https://")):
            problems.append(f"{PREFIX}BASE_URL must be an http(s) URL")
        if not self.api_key:
            problems.append(f"{PREFIX}API_KEY must be set")
        if any(d <= 0 for d in self.datastreams):
            problems.append(f"{PREFIX}DATASTREAMS must be positive datastream ids")
        if len(set(self.datastreams)) != len(self.datastreams):
            problems.append(f"{PREFIX}DATASTREAMS has duplicates")
        stray = sorted(set(self.paused_datastreams) - set(self.datastreams))
        if stray:
            problems.append(f"{PREFIX}PAUSED_DATASTREAMS {stray} are not in {PREFIX}DATASTREAMS")
        for name in ("request_timeout_s", "requests_per_s", "export_interval_s", "max_window_s",
                     "export_poll_initial_s", "export_poll_max_s", "export_timeout_s", "subscription_interval_s"):
            if getattr(self, name) <= 0:
                problems.append(f"{PREFIX}{name.upper()} must be > 0")
        for name in ("export_lag_s", "initial_lookback_s", "catalog_interval_s"):
            if getattr(self, name) < 0:
                problems.append(f"{PREFIX}{name.upper()} must be >= 0")
        if self.max_retries < 0 or self.max_rate_limited_retries < 0:
            problems.append(f"{PREFIX}MAX_RETRIES / MAX_RATE_LIMITED_RETRIES must be >= 0")
        if self.artifact_slice_bytes < 1024:
            problems.append(f"{PREFIX}ARTIFACT_SLICE_BYTES must be >= 1024")
        if self.batch_max_events < 1:
            problems.append(f"{PREFIX}BATCH_MAX_EVENTS must be >= 1")
        if problems:
            raise ValueError("; ".join(problems))
