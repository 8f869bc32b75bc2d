"""Settings of the export orchestrator (env prefix ``MARKETBUS_EXPORT_``).

Defaults point at the embedded setup: NATS at nats://127.0.0.1:4222, the history tables the
history writer keeps under ``$MARKETBUS_DATA_DIR/history`` (Iceberg, SQLite catalog; set
``MARKETBUS_LAKEHOUSE_*`` for a PostgreSQL/REST catalog and an S3 warehouse; with the writer's
PostgreSQL backend, ``MARKETBUS_HISTORY_WRITER_BACKEND=postgres`` and its ``..._PG_DSN`` (or
``MARKETBUS_EXPORT_HISTORY_*``) point the reads at its tables), artifacts under
``$MARKETBUS_DATA_DIR/exports``, and the TickSupply-shaped HTTP API on port 8710.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from marketbus.runtime.service import ServiceSettings
from marketbus.runtime.settings import Secret

PREFIX = "MARKETBUS_EXPORT_"


class ExportSettings(ServiceSettings, kw_only=True):
    env_prefix: ClassVar[str] = PREFIX
    http_port: int = 9107  # /healthz and /metrics: a fixed port per service (README, Monitoring); 0 = any free
    env_fallbacks: ClassVar[dict[str, tuple[str, ...]]] = {
        **ServiceSettings.env_fallbacks,
        "data_dir": ("MARKETBUS_DATA_DIR",),
        # the history writer's own setting, so one environment configures both
        "history_dir": ("MARKETBUS_HISTORY_WRITER_DATA_DIR",),
        # where the writer keeps history: the same variables choose where we read it
        "history_backend": ("MARKETBUS_HISTORY_WRITER_BACKEND",),
        "history_pg_dsn": ("MARKETBUS_HISTORY_WRITER_PG_DSN",),
        "history_pg_table_prefix": ("MARKETBUS_HISTORY_WRITER_PG_TABLE_PREFIX",),
    }

    data_dir: str = ".marketbus"

    # --- history (what we read): where the history writer stores it ---------------------------
    # iceberg: the tables through their catalog (MARKETBUS_LAKEHOUSE_*; the embedded catalog and
    # warehouse live under history_dir); postgres: the writer's PostgreSQL tables (only SELECT needed)
    history_backend: Literal["iceberg", "postgres"] = "iceberg"
    history_dir: str = ""  # default <data_dir>/history
    history_pg_dsn: Secret = Secret("postgresql://postgres@127.0.0.1:5432/marketbus")  # the writer's default
    history_pg_table_prefix: str = "history_"

    # --- artifacts (what we write) --------------------------------------------------------------
    artifact_store: Literal["local", "nats", "s3"] = "local"
    artifact_dir: str = ""  # local store; default <data_dir>/exports
    artifact_bucket: str = "export_artifacts"  # NATS object store bucket / S3 bucket
    s3_endpoint: str = ""  # e.g. http://127.0.0.1:9000 (MinIO) or https://s3.eu-west-1.amazonaws.com
    s3_region: str = "us-east-1"
    s3_access_key: Secret = Secret("")
    s3_secret_key: Secret = Secret("")
    work_dir: str = ""  # scratch space for files being written; default <data_dir>/exports-tmp
    max_rows_per_file: int = 1_000_000  # default when a request does not say
    max_bytes_per_file: int = 512 << 20  # split an artifact when it reaches this size
    parquet_compression_level: int = 1  # zstd level
    csv_compression_level: int = 1  # gzip level
    read_batch_rows: int = 131_072
    throttle_rows_per_s: float = 0.0  # 0 = as fast as possible (set to limit an export's I/O impact)

    # --- jobs -----------------------------------------------------------------------------------
    workers: int = 2  # jobs run concurrently by this process
    lease_s: float = 30.0  # a running job's claim; another worker takes it over after expiry
    scan_interval_s: float = 2.0  # how often idle workers look for queued / orphaned jobs
    max_attempts: int = 3  # a job that crashed its worker this often fails
    max_queued_jobs: int = 100  # more queued jobs than this -> 429 (HTTP) / refused (NATS)
    progress_interval_s: float = 0.5  # minimum interval between progress events
    job_retention_days: float = 7.0  # finished jobs and their artifacts are deleted after this

    # --- gap filling ----------------------------------------------------------------------------
    fill_gaps: bool = True  # requests can turn it off per job
    replay_timeout_s: float = 10.0  # waiting for an ingestor's ReplayReply
    replay_wait_s: float = 60.0  # waiting for the replayed rows to show up in the coverage
    # uncovered range start/end shorter than this is not a hole (writer default spacing)
    min_gap_ns: int = 300_000_000_000

    # --- HTTP API (TickSupply shape) ------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8710  # 0 = any free port
    api_keys: Secret = Secret("mb_export_dev_key")  # comma-separated; X-Api-Key must be one of them
    public_url: str = ""  # base of the signed download URLs; default http://<api_host>:<api_port>
    # HMAC key of download URLs (or SIGNING_SECRET_FILE); empty = a random key generated once into
    # signing_key_file (default <data_dir>/export-signing.key, 0600). Never on the bus.
    signing_secret: Secret = Secret("")
    signing_key_file: str = ""
    url_ttl_s: float = 300.0  # signed download URLs expire after this (TickSupply: 5 min)
    requests_per_s: float = 50.0  # per API key; beyond it 429 + Retry-After (0 = unlimited)
    burst: int = 100

    # --- derived --------------------------------------------------------------------------------
    @property
    def history_path(self) -> Path:
        return Path(self.history_dir) if self.history_dir else Path(self.data_dir) / "history"

    @property
    def artifact_path(self) -> Path:
        return Path(self.artifact_dir) if self.artifact_dir else Path(self.data_dir) / "exports"

    @property
    def work_path(self) -> Path:
        return Path(self.work_dir) if self.work_dir else Path(self.data_dir) / "exports-tmp"

    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.get().split(",") if k.strip()]


