"""Replay service settings: env prefix ``MARKETBUS_REPLAY_``."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import msgspec

from marketbus.runtime.service import ServiceSettings


class ReplaySettings(ServiceSettings, kw_only=True):
    env_prefix = "MARKETBUS_REPLAY_"
    env_fallbacks: ClassVar[dict[str, tuple[str, ...]]] = {
        **ServiceSettings.env_fallbacks,
        # the history writer's own settings, so one environment configures the writer and its readers
        "data_dir": ("MARKETBUS_DATA_DIR",),
        "history_dir": ("MARKETBUS_HISTORY_WRITER_DATA_DIR",),
        "history_backend": ("MARKETBUS_HISTORY_WRITER_BACKEND",),
    }

    # where events are read: "tables" (the history tables in-process, MARKETBUS_LAKEHOUSE_* like
    # the export orchestrator), "nats" (the history writer's query), "auto": the tables when the
    # writer stores Iceberg tables and their catalog opens, else NATS (the PostgreSQL backend)
    history_read: Literal["auto", "tables", "nats"] = "auto"
    history_backend: str = "iceberg"  # the history writer's backend (MARKETBUS_HISTORY_WRITER_BACKEND)
    data_dir: str = ".marketbus"
    history_dir: str = ""  # the embedded catalog and warehouse; default <data_dir>/history

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

    @property
    def history_path(self) -> Path:
        return Path(self.history_dir) if self.history_dir else Path(self.data_dir) / "history"
