"""Replay service settings: env prefix ``MARKETBUS_REPLAY_``."""

from __future__ import annotations

import msgspec

from marketbus.runtime.service import ServiceSettings


class ReplaySettings(ServiceSettings, kw_only=True):
    env_prefix = "MARKETBUS_REPLAY_"

    http_port: int = 8711  # /replay (NDJSON), /replay/ws, /healthz, /metrics; 0 = any free port
    queue: str = "replay"  # queue group of history.replay.start (several instances share the load)
    max_sessions: int = 8  # per instance, NATS and HTTP sessions together; past it: "overloaded"
    status_interval_s: float = 1.0  # progress events on replay.<session>.status
    hold_timeout_s: float = 30.0  # a session started with hold=True and never resumed is cancelled
    history_timeout_s: float = 30.0  # seconds without a reply from the history writer
    page_rows: int = 200_000  # events per history request (cursors followed between them)
    chunk_rows: int = 5_000  # events per reply message of the history writer
    burst_ms: float = 0.5  # paced events due within this are sent in the same burst (no sleep)
    http_queue_chunks: int = 16  # HTTP/WebSocket: chunks buffered ahead of a slow client
    # never a replay.<name> prefix: replay.<source> is the ingestors' request subject
    reserved_names: list[str] = msgspec.field(default_factory=lambda: ["finx", "ticksupply", "digitex", "sitagri"])
