"""History writer settings: env prefix ``MARKETBUS_HISTORY_WRITER_``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from marketbus.contracts.consumers import HISTORY_MD
from marketbus.runtime.service import ServiceSettings
from marketbus.runtime.settings import Secret


class HistoryWriterSettings(ServiceSettings, kw_only=True):
    env_prefix = "MARKETBUS_HISTORY_WRITER_"
    http_port: int = 9101  # /healthz and /metrics: a fixed port per service (README, Monitoring); 0 = any free

    # iceberg: Apache Iceberg tables, catalog/warehouse from MARKETBUS_LAKEHOUSE_* (default: SQLite
    # catalog + warehouse under data_dir); postgres: rows in PostgreSQL
    backend: Literal["iceberg", "postgres"] = "iceberg"
    data_dir: str = ""  # embedded history; default $MARKETBUS_DATA_DIR/history, else .marketbus/history
    pg_dsn: Secret = Secret("postgresql://postgres@127.0.0.1:5432/marketbus")
    pg_table_prefix: str = "history_"
    # the read-only role of history readers (the export orchestrator), created with the tables when
    # a password is set (e.g. MARKETBUS_HISTORY_WRITER_PG_READER_PASSWORD_FILE); empty: none
    pg_reader_role: str = "marketbus_reader"
    pg_reader_password: Secret = Secret("")
    timescale: Literal["auto", "on", "off"] = "auto"

    durable: str = "history_writer"  # consumer names: <durable>_md, <durable>_ref, <durable>_status
    store_reference: bool = True  # consume ref.> too
    store_feed_status: bool = True  # consume status.*.feed.> (gap / resync coverage)
    pull_batch: int = 10_000  # messages per pull request (two requests are kept outstanding)
    pull_max_bytes: int = 8 << 20  # bytes per pull request (keeps the server from flagging a slow consumer)
    batch_max_msgs: int = 20_000  # flush when this many messages are buffered...
    # ...or about this many events (a batch envelope counts its events, estimated from its bytes at
    # the bytes per event of the last flushes): an Iceberg commit costs 1.5-3.5x less per event at
    # 100k events than at 20k (bench/RESULTS.md)...
    batch_max_events: int = 100_000
    batch_max_bytes: int = 64 << 20  # ...or when this many payload bytes are buffered (a memory bound)...
    batch_max_wait_s: float = 0.25  # ...or when the oldest buffered message is this old
    flush_concurrency: int = 2  # flushes in flight: decode of the next overlaps the write of the previous
    max_ack_pending: int = HISTORY_MD.max_ack_pending
    # short: what a killed writer held is redelivered within seconds (held messages get +WPI)
    ack_wait_s: float = HISTORY_MD.ack_wait_s
    max_deliver: int = HISTORY_MD.max_deliver  # then dead-lettered (see contracts/consumers.py)
    store_retry_max_s: float = 5.0  # back-off cap while the store is unavailable (start-up and writes)

    debug_ack_delay_s: float = 0.0  # fault injection (tests): hold acks after each durable write

    # maintenance of the Iceberg tables every compact_interval_s: compaction of the partitions
    # holding compact_min_files data files or more, expiry of the snapshots older than
    # snapshot_min_age_s whose messages are all acked, removal of the files no metadata
    # references once older than orphan_age_s (younger ones may be a commit in progress, of
    # this writer or of one on another host)
    compact_interval_s: float = 60.0
    compact_min_files: int = 8
    snapshot_min_age_s: float = 60.0
    orphan_age_s: float = 3600.0

    retention_days: dict[str, float] = {}  # e.g. {"trade": 30, "book": 7}; absent = keep forever
    retention_interval_s: float = 3600.0
    coverage_max_gap_s: dict[str, float] = {}  # kind -> max spacing inside a covered range ("default")

    query_queue: str = "history_writer"
    query_max_rows: int = 1_000_000  # per request
    query_max_chunk_bytes: int = 512 * 1024  # below the NATS max payload (1 MB by default)

    def __post_init__(self) -> None:
        from marketbus.history.schema import KINDS

        # a misspelt kind would keep its history forever without a word: refused at start-up
        for kind, days in self.retention_days.items():
            if kind not in KINDS and kind != "default":
                raise ValueError(f"{self.env_prefix}RETENTION_DAYS: unknown kind {kind!r}; kinds: "
                                 f"{', '.join(KINDS)}, default")
            if not days > 0:
                raise ValueError(f"{self.env_prefix}RETENTION_DAYS: the days of {kind!r} must be > 0, not {days}")

    def history_dir(self) -> Path:
        if self.data_dir:
            return Path(self.data_dir)
        base = os.environ.get("MARKETBUS_DATA_DIR")
        return Path(base) / "history" if base else Path(".marketbus") / "history"
