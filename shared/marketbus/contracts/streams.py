"""JetStream streams and KV buckets, declared once; created idempotently by any service.

Replicas come from configuration (1 on one machine, 3 in a cluster). Subjects of different
streams never overlap, and request/reply subjects (replay.*, history.*, export.create...) are
deliberately outside every stream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

log = logging.getLogger(__name__)

DAY = 86_400.0


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    description: str
    retention: RetentionPolicy = RetentionPolicy.LIMITS
    max_age_s: float = 7 * DAY
    max_msgs_per_subject: int = -1
    max_bytes: int = -1
    duplicate_window_s: float = 120.0
    discard: DiscardPolicy = DiscardPolicy.OLD
    storage: StorageType = StorageType.FILE

    def config(self, replicas: int = 1) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            description=self.description,
            retention=self.retention,
            max_age=self.max_age_s,
            max_msgs_per_subject=self.max_msgs_per_subject,
            max_bytes=self.max_bytes,
            duplicate_window=self.duplicate_window_s,
            discard=self.discard,
            storage=self.storage,
            num_replicas=replicas,
            allow_direct=True,
        )


MARKET_DATA = StreamSpec("MD", ("md.>",), "normalized market data events (single and batch)")
REFERENCE = StreamSpec(
    "REF", ("ref.>",), "reference data, last value per subject", max_age_s=0, max_msgs_per_subject=1,
)
STATUS = StreamSpec("STATUS", ("status.>",), "feed status and service heartbeats", max_age_s=1 * DAY)
DEAD_LETTERS = StreamSpec("DLQ", ("dlq.>",), "payloads that could not be processed, with the reason", max_age_s=14 * DAY)
ORDER_COMMANDS = StreamSpec(
    "ORDERS_CMD", ("orders.cmd.>",), "order commands: a work queue, each handled once",
    retention=RetentionPolicy.WORK_QUEUE, max_age_s=1 * DAY, duplicate_window_s=600.0,
)
ORDER_EVENTS = StreamSpec(
    "ORDERS_EVT", ("orders.evt.>", "orders.fill.>", "orders.position.>", "orders.balance.>"),
    "order lifecycle, fills, positions and balances", max_age_s=30 * DAY,
)
EXPORT_EVENTS = StreamSpec("EXPORTS", ("export.status.>",), "export job status and progress", max_age_s=7 * DAY)

STREAMS: tuple[StreamSpec, ...] = (
    MARKET_DATA, REFERENCE, STATUS, DEAD_LETTERS, ORDER_COMMANDS, ORDER_EVENTS, EXPORT_EVENTS,
)


@dataclass(frozen=True)
class BucketSpec:
    name: str
    description: str
    history: int = 1
    ttl_s: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)

    def config(self, replicas: int = 1) -> KeyValueConfig:
        return KeyValueConfig(
            bucket=self.name, description=self.description, history=self.history,
            ttl=self.ttl_s or None, replicas=replicas, storage=StorageType.FILE,
        )


INGEST_STATE = BucketSpec("ingest_state", "ingestor progress: cursors, export windows, backfill marks")
ORDER_IDEMPOTENCY = BucketSpec("orders_idempotency", "order command id -> outcome", ttl_s=7 * DAY)
ORDER_STATE = BucketSpec("orders_state", "order router: order state by market/client id")
ROUTER_CONTROL = BucketSpec("orders_control", "order router kill switch state")
EXPORT_JOBS = BucketSpec("export_jobs", "export jobs by id, and idempotency keys", history=5)

BUCKETS: tuple[BucketSpec, ...] = (INGEST_STATE, ORDER_IDEMPOTENCY, ORDER_STATE, ROUTER_CONTROL, EXPORT_JOBS)


async def ensure_stream(js: JetStreamContext, spec: StreamSpec, replicas: int = 1) -> None:
    config = spec.config(replicas)
    try:
        info = await js.stream_info(spec.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            log.info("created stream %s", spec.name)
            return
        except BadRequestError as exc:
            # another service created it between our two calls
            if "already in use" not in str(exc.description or ""):
                raise
            info = await js.stream_info(spec.name)
    current = info.config
    if (
        sorted(current.subjects or []) != sorted(config.subjects or [])
        or current.max_age != config.max_age
        or current.duplicate_window != config.duplicate_window
        or current.max_msgs_per_subject != config.max_msgs_per_subject
    ):
        await js.update_stream(replace(config, num_replicas=current.num_replicas or replicas))
        log.info("updated stream %s", spec.name)


async def ensure_bucket(js: JetStreamContext, spec: BucketSpec, replicas: int = 1):  # noqa: ANN201
    try:
        return await js.key_value(spec.name)
    except (NotFoundError, BadRequestError):
        return await js.create_key_value(spec.config(replicas))


async def ensure_all(js: JetStreamContext, replicas: int = 1) -> None:
    """Create every stream and bucket that does not exist yet (safe to call concurrently)."""
    for spec in STREAMS:
        await ensure_stream(js, spec, replicas)
    for bucket in BUCKETS:
        await ensure_bucket(js, bucket, replicas)
