"""JetStream streams, KV buckets and object stores, declared once; created by provisioning.

``marketbus provision`` (an admin identity) creates what is declared here with
:func:`ensure_all`; services only bind (:func:`ensure_bucket` waits until a bucket exists, and
:func:`wait_provisioned` until the streams a service needs exist) and need no JetStream admin
rights. A stream an operator changed (``nats stream edit MD --max-age 30d``) is left as it is:
the difference is logged as a warning, never reverted.

Retention per stream comes from the environment: ``MARKETBUS_STREAM_<NAME>_MAX_AGE`` (seconds,
0 = unlimited) and ``MARKETBUS_STREAM_<NAME>_MAX_BYTES`` (bytes, -1 = unlimited), e.g.
``MARKETBUS_STREAM_MD_MAX_BYTES=20000000000``. The defaults bound disk use (see the README's
disk-sizing note). Replicas come from configuration (1 on one machine, 3 in a cluster).
Subjects of different streams never overlap, and request/reply subjects (replay.*, history.*,
export.create...) are deliberately outside every stream.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, ObjectStoreConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError

log = logging.getLogger(__name__)

DAY = 86_400.0
GB = 1_000_000_000


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

    def with_env(self, env: Mapping[str, str] | None = None) -> StreamSpec:
        """This spec with the retention an operator configured (``MARKETBUS_STREAM_<NAME>_MAX_AGE``
        in seconds, ``..._MAX_BYTES`` in bytes)."""
        env = os.environ if env is None else env
        prefix = f"MARKETBUS_STREAM_{self.name}_"
        age, size = env.get(prefix + "MAX_AGE"), env.get(prefix + "MAX_BYTES")
        try:
            return StreamSpec(**{**self.__dict__, "max_age_s": float(age) if age else self.max_age_s,
                                 "max_bytes": int(size) if size else self.max_bytes})
        except ValueError:
            raise ValueError(f"{prefix}MAX_AGE / {prefix}MAX_BYTES must be numbers, got {age!r} / {size!r}") from None

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


# Defaults bound disk use: the streams stay under ~31 GB, ~41 GB with the export object store
# (MD, the big one, ~10 MB/min under `make run`, is capped at 20 GB: about 1.5 days of the
# sandboxes, older data is dropped first).
MARKET_DATA = StreamSpec("MD", ("md.>",), "normalized market data events (single and batch)", max_bytes=20 * GB)
REFERENCE = StreamSpec(
    "REF", ("ref.>",), "reference data, last value per subject", max_age_s=0, max_msgs_per_subject=1,
    max_bytes=1 * GB,
)
STATUS = StreamSpec("STATUS", ("status.>",), "feed status and service heartbeats", max_age_s=1 * DAY,
                    max_bytes=1 * GB)
DEAD_LETTERS = StreamSpec("DLQ", ("dlq.>",), "payloads that could not be processed, with the reason",
                          max_age_s=14 * DAY, max_bytes=2 * GB)
ORDER_COMMANDS = StreamSpec(
    "ORDERS_CMD", ("orders.cmd.>",), "order commands: a work queue, each handled once",
    retention=RetentionPolicy.WORK_QUEUE, max_age_s=1 * DAY, duplicate_window_s=600.0, max_bytes=1 * GB,
)
ORDER_EVENTS = StreamSpec(
    "ORDERS_EVT", ("orders.evt.>", "orders.fill.>", "orders.position.>", "orders.balance.>"),
    "order lifecycle, fills, positions and balances", max_age_s=30 * DAY, max_bytes=5 * GB,
)
EXPORT_EVENTS = StreamSpec("EXPORTS", ("export.status.>",), "export job status and progress", max_age_s=7 * DAY,
                          max_bytes=1 * GB)

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
    # direct gets ($JS.API.DIRECT.GET.<stream>.<subject>): the key is in the subject, so a
    # permission can allow some keys only (a STREAM.MSG.GET carries it in its payload)
    direct: bool = False
    # rollup headers (``Nats-Rollup: all`` purges the whole bucket in one publish). Off for a bucket
    # several identities write, each to its own keys only: one of them must not be able to wipe the
    # others' keys. (``kv.purge`` needs them; ``kv.delete`` does not.)
    rollups: bool = True

    def config(self, replicas: int = 1) -> KeyValueConfig:
        return KeyValueConfig(
            bucket=self.name, description=self.description, history=self.history,
            ttl=self.ttl_s or None, replicas=replicas, storage=StorageType.FILE, direct=self.direct or None,
        )


# direct gets: each ingestor's rights name its own keys in the get's subject, so it reads no other
# ingestor's cursors (a STREAM.MSG.GET names the key in its body: every key or none)
INGEST_STATE = BucketSpec("ingest_state", "ingestor progress: cursors, export windows, backfill marks",
                          direct=True, rollups=False)
ORDER_IDEMPOTENCY = BucketSpec("orders_idempotency", "order command id -> outcome", ttl_s=7 * DAY)
ORDER_STATE = BucketSpec("orders_state", "order router: order state by market/client id")
ROUTER_CONTROL = BucketSpec("orders_control", "order router kill switch state")
EXPORT_JOBS = BucketSpec("export_jobs", "export jobs by id, and idempotency keys", history=5)

# feed control: the instruments each ingestor collects (marketbus.contracts.feeds); a few
# revisions kept per feed for the record of changes
FEEDS = BucketSpec("feeds", "feed control: the instruments each ingestor collects, by vendor", history=5,
                   direct=True, rollups=False)

BUCKETS: tuple[BucketSpec, ...] = (INGEST_STATE, ORDER_IDEMPOTENCY, ORDER_STATE, ROUTER_CONTROL, EXPORT_JOBS, FEEDS)


@dataclass(frozen=True)
class ObjectStoreSpec:
    name: str
    description: str
    max_bytes: int = -1

    @property
    def env_var(self) -> str:
        """``MARKETBUS_STREAM_OBJ_<NAME>_MAX_BYTES``: the size cap of the store's stream ``OBJ_<name>``."""
        return f"MARKETBUS_STREAM_OBJ_{self.name.upper()}_MAX_BYTES"

    def with_env(self, env: Mapping[str, str] | None = None) -> ObjectStoreSpec:
        """This spec with the size cap an operator configured (bytes, -1 = unlimited)."""
        value = (os.environ if env is None else env).get(self.env_var)
        try:
            return ObjectStoreSpec(self.name, self.description, int(value) if value else self.max_bytes)
        except ValueError:
            raise ValueError(f"{self.env_var} must be a number of bytes, got {value!r}") from None

    def config(self, replicas: int = 1) -> ObjectStoreConfig:
        return ObjectStoreConfig(bucket=self.name, description=self.description, storage=StorageType.FILE,
                                 replicas=replicas, max_bytes=self.max_bytes)


# Bounded like the streams: a full store refuses new artifacts (an object store discards new
# messages, never old ones), so an export fails with an error instead of filling the disk.
# Artifacts go with their job after MARKETBUS_EXPORT_JOB_RETENTION_DAYS.
EXPORT_ARTIFACTS = ObjectStoreSpec("export_artifacts", "export artifacts (artifact_store=nats)", max_bytes=10 * GB)
OBJECT_STORES: tuple[ObjectStoreSpec, ...] = (EXPORT_ARTIFACTS,)

# how often a service re-checks for what provisioning has not created yet
PROVISION_RETRY_S = 2.0
T = TypeVar("T")


def _differences(current: StreamConfig, wanted: StreamConfig) -> list[str]:
    out = []
    for name in ("subjects", "max_age", "max_bytes", "duplicate_window", "max_msgs_per_subject", "retention"):
        have, want = getattr(current, name), getattr(wanted, name)
        if name == "subjects":
            have, want = sorted(have or []), sorted(want or [])
        if have != want:
            out.append(f"{name}={have!r} (declared {want!r})")
    return out


async def ensure_stream(js: JetStreamContext, spec: StreamSpec, replicas: int = 1) -> bool:
    """Create the stream if it does not exist (True when created). An existing stream is left as
    it is: an operator may have tuned it; a difference from the declaration is logged as a warning."""
    config = spec.with_env().config(replicas)
    try:
        info = await js.stream_info(spec.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            log.info("created stream %s", spec.name)
            return True
        except BadRequestError as exc:
            # another provisioner created it between our two calls
            if "already in use" not in str(exc.description or ""):
                raise
            info = await js.stream_info(spec.name)
    diff = _differences(info.config, config)
    if diff:
        log.warning("stream %s differs from its declaration, left as it is: %s", spec.name, ", ".join(diff))
    return False


async def create_bucket(js: JetStreamContext, spec: BucketSpec, replicas: int = 1) -> Any:
    """Provisioning: the bucket, created when missing; a bucket declared without rollups has
    them turned off, one declared with direct gets has them on (also on one an older release
    created: permissions, not tunings)."""
    try:
        kv = await js.key_value(spec.name)
    except (NotFoundError, BadRequestError):
        kv = await js.create_key_value(spec.config(replicas))  # nats-py always allows rollups here
    if not spec.rollups or spec.direct:
        config = (await js.stream_info(f"KV_{spec.name}")).config
        changed = []
        if not spec.rollups and config.allow_rollup_hdrs:
            config.allow_rollup_hdrs = False
            changed.append("rollup headers turned off")
        if spec.direct and not config.allow_direct:
            config.allow_direct = True
            changed.append("direct gets turned on")
        if changed:
            await js.update_stream(config)
            log.info("bucket %s: %s", spec.name, ", ".join(changed))
            if spec.direct:  # a bound KeyValue reads the way the stream said when it was bound
                kv = await js.key_value(spec.name)
    return kv


async def create_object_store(js: JetStreamContext, spec: ObjectStoreSpec, replicas: int = 1) -> Any:
    """Provisioning: the object store, created when missing."""
    try:
        return await js.object_store(spec.name)
    except (BucketNotFoundError, NotFoundError):
        return await js.create_object_store(spec.name, spec.with_env().config(replicas))


async def bind_when_provisioned(what: str, bind: Callable[[], Awaitable[T]],
                                retry_s: float = PROVISION_RETRY_S) -> T:
    """``bind()`` once what it binds exists: until then one log line per attempt says that
    provisioning has not created it, and it is retried (services never create it themselves)."""
    while True:
        try:
            return await bind()
        except (BucketNotFoundError, NotFoundError):
            log.warning("%s not provisioned: run `marketbus provision`; retrying in %.0fs", what, retry_s)
        await asyncio.sleep(retry_s)


async def ensure_bucket(js: JetStreamContext, spec: BucketSpec, replicas: int = 1) -> Any:
    """Bind the KV bucket, waiting until provisioning created it (``replicas`` is provisioning's)."""
    return await bind_when_provisioned(f"KV bucket {spec.name}", lambda: js.key_value(spec.name))


async def bind_object_store(js: JetStreamContext, name: str) -> Any:
    """Bind the object store ``name``, waiting until provisioning created it."""
    return await bind_when_provisioned(f"object store {name}", lambda: js.object_store(name))


async def wait_provisioned(js: JetStreamContext, streams: tuple[StreamSpec, ...] = (),
                           buckets: tuple[BucketSpec, ...] = ()) -> None:
    """Return once every stream and bucket listed exists (a service's start-up check)."""
    for spec in streams:
        await bind_when_provisioned(f"stream {spec.name}", functools.partial(js.stream_info, spec.name))
    for bucket in buckets:
        await bind_when_provisioned(f"KV bucket {bucket.name}", functools.partial(js.key_value, bucket.name))


async def ensure_all(js: JetStreamContext, replicas: int = 1) -> None:
    """Provisioning: create every declared stream, bucket and object store that does not exist
    yet (safe to call concurrently; an existing one is never changed, except that a shared
    bucket declared without rollups has them turned off)."""
    for spec in STREAMS:
        await ensure_stream(js, spec, replicas)
    for bucket in BUCKETS:
        await create_bucket(js, bucket, replicas)
    for store in OBJECT_STORES:
        await create_object_store(js, store, replicas)
