"""One NATS identity per service, with exactly the subjects it needs (least privilege).

Each :class:`Identity` lists the subjects it may publish to and subscribe to. The generated
nats-server configuration (:func:`marketbus.security.credentials.authorization_conf`) is built from
these declarations only, and tests/security checks both what each identity can do and what it is
denied. Rules of the model:

- No service has JetStream admin rights: streams, buckets, object stores and durable consumers
  are created by ``marketbus provision`` under the ``admin`` identity. A service gets
  ``$JS.API.STREAM.INFO`` on the streams it uses, and ``INFO`` / ``MSG.NEXT`` / ``$JS.ACK`` on its
  own durable consumers only.
- KV writes (``$KV.<bucket>.>``) only on the service's own buckets; object store writes
  (``$O.<bucket>.>``) only on the export orchestrator's store.
- Every identity has a private reply inbox ``_INBOX.<identity>.>`` (nats-py's ``inbox_prefix``):
  nobody can subscribe to another identity's replies. Services that answer requests get
  ``allow_responses`` (they may publish to the reply subject of a request they received, nowhere else).
- A service publishes ``status.<its name>.>`` and ``dlq.<its name>.>`` only.
- Order commands: only ``operator`` publishes them; only ``order_router`` consumes them. Order
  events and state are readable by the router and the operator only.
- Ingest progress (bucket ``ingest_state``, direct gets): an ingestor gets and puts its own keys
  ``<source>.>`` only, by key in the subject (``$JS.API.DIRECT.GET.KV_ingest_state.$KV.ingest_state.<source>.>``);
  no message get, no get by revision, no consumer (the forms naming the key in their body, or a
  consumer by its name, cannot be limited to some keys). Its ``STREAM.INFO`` is stream-wide.
- Feed control (bucket ``feeds``): an ingestor reads, watches and writes its own vendor's keys
  only and answers ``feeds.ctl.<its vendor>``; the operator (the CLI) and the export orchestrator
  (TickSupply-compatible subscriptions) send feed requests; the reader reads the bucket.
- ``reader`` (users' own consumers, dashboards) reads market/reference data, status, the feed set and export
  progress, and may create its own JetStream consumers on those streams, never touch a
  service's durable consumer.
- ``consumer`` (users' consumers that derive events, ``marketbus.faststream``'s default identity):
  what ``reader`` may, plus publishing and reading their own events under the namespaces for
  derived events (:data:`DERIVED_NAMESPACES`), never under a marketbus namespace.
- ``monitor`` (the bus exporter) reads JetStream information only (streams, consumers, the
  account: consumer lag) and the status / export-progress events; no payload of a stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from marketbus.contracts import consumers as consumer_decls
from marketbus.contracts import feeds as feed_contract
from marketbus.contracts import streams
from marketbus.runtime.pull import MAX_DELIVERIES_ADVISORY

INBOX = "_INBOX"
# a history query streams many chunks to one reply subject; replies stay allowed this long
RESPONSES_MAX = 1_000_000
RESPONSES_EXPIRES = "15m"


def inbox_prefix(identity: str) -> str:
    """The private reply-inbox prefix of ``identity`` (nats-py ``inbox_prefix``)."""
    return f"{INBOX}.{identity}"


@dataclass(frozen=True)
class Identity:
    name: str
    description: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()
    allow_responses: bool = False
    admin: bool = False

    @property
    def inbox_prefix(self) -> str:
        return inbox_prefix(self.name)


# --- JetStream building blocks ----------------------------------------------------------------
API = "$JS.API"


def stream_info(*names: str) -> tuple[str, ...]:
    return tuple(f"{API}.STREAM.INFO.{n}" for n in names)


def durable(stream: str, name: str) -> tuple[str, ...]:
    """Bind to and consume a provisioned durable pull consumer (no create, no delete)."""
    return (f"{API}.CONSUMER.INFO.{stream}.{name}", f"{API}.CONSUMER.MSG.NEXT.{stream}.{name}",
            f"$JS.ACK.{stream}.{name}.>")


def max_deliveries_watch(stream: str, name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(publish, subscribe) of a durable's max-deliveries watch (``runtime.pull.MaxDeliveriesWatch``):
    the server's advisory of a message it gave up on, and reading that message back by its
    sequence to dead-letter it."""
    return ((f"{API}.STREAM.MSG.GET.{stream}",),
            (MAX_DELIVERIES_ADVISORY.format(stream=stream, durable=name),))


def _ordered_consumers(stream: str) -> tuple[str, ...]:
    """Ephemeral (ordered) consumers on ``stream``: KV watch/keys, object reads, ``tail --last``.
    No delete: the server removes an ephemeral once nobody reads it (nats-py never deletes one),
    and a delete by name would reach any consumer of the stream, a service's watch included."""
    # STREAM.NAMES: nats-py looks the stream up by subject before it subscribes
    return (f"{API}.STREAM.NAMES", f"{API}.CONSUMER.CREATE.{stream}", f"{API}.CONSUMER.CREATE.{stream}.>",
            f"{API}.CONSUMER.INFO.{stream}.*", f"$JS.FC.{stream}.>")


def _direct_get(stream: str) -> tuple[str, ...]:
    return (f"{API}.DIRECT.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>", f"{API}.STREAM.MSG.GET.{stream}")


def kv_read(bucket: str) -> tuple[str, ...]:
    stream = f"KV_{bucket}"
    return (*stream_info(stream), *_direct_get(stream), *_ordered_consumers(stream))


def kv_write(bucket: str, keys: str = ">") -> tuple[str, ...]:
    """Read the bucket; write (put, create, update, delete) the keys matching ``keys``."""
    return (*kv_read(bucket), f"$KV.{bucket}.{keys}")


def kv_own_keys(bucket: str, keys: str, *, direct: bool = True) -> tuple[str, ...]:
    """Get and put/create/update only the keys matching ``keys`` of the bucket (``js.key_value``
    reads the stream's info); no consumer of any kind. A bucket with direct gets is read by key
    (the key is in the subject); one without is read by a message get whose body names the key,
    so every key of it can be read (not written)."""
    stream, keyed = f"KV_{bucket}", f"$KV.{bucket}.{keys}"
    get = f"{API}.DIRECT.GET.{stream}.{keyed}" if direct else f"{API}.STREAM.MSG.GET.{stream}"
    return (*stream_info(stream), get, keyed)


def kv_keys(bucket: str, keys: str) -> tuple[str, ...]:
    """What :func:`kv_own_keys` allows, and watching those keys: an ordered push consumer whose
    create subject carries its name and filter (``marketbus.vendor.feeds.VendorKeys``; nats-py's
    own ``kv.watch`` creates an unnamed consumer that cannot be limited to some keys), delivered
    to the identity's inbox, plus its flow-control replies. No pull, consumer info or delete:
    those name a consumer, not a filter, so they would reach every consumer of the bucket."""
    stream, keyed = f"KV_{bucket}", f"$KV.{bucket}.{keys}"
    return (*kv_own_keys(bucket, keys), f"{API}.CONSUMER.CREATE.{stream}.*.{keyed}", f"$JS.FC.{stream}.>")


def object_store_write(bucket: str) -> tuple[str, ...]:
    stream = f"OBJ_{bucket}"
    # deleting an object purges its chunks: purge of this one store's stream, nothing else
    return (*stream_info(stream), *_direct_get(stream), *_ordered_consumers(stream), f"$O.{bucket}.>",
            f"{API}.STREAM.PURGE.{stream}")


def _own_status(service: str) -> tuple[str, ...]:
    return (f"status.{service}.>", f"dlq.{service}.>")


def _inbox(identity: str) -> tuple[str, ...]:
    return (f"{inbox_prefix(identity)}.>",)


def _service_durables_deny() -> tuple[str, ...]:
    """What a user may not do to a service's durable consumer: create/update (by its name in the
    subject, or in the body of an unnamed create), delete, pull, ack."""
    out: list[str] = []
    for spec in consumer_decls.CONSUMERS:
        s, d = spec.stream, spec.durable
        # the unnamed create: its name is in the body, and a service's durable name there updates
        # that consumer in place (filter, headers_only, max_deliver...). Users' ephemeral consumers
        # on these streams are created by name (marketbus.runtime.ordered.named_ephemeral).
        if f"{API}.CONSUMER.CREATE.{s}" not in out:
            out.append(f"{API}.CONSUMER.CREATE.{s}")
        out += [f"{API}.CONSUMER.CREATE.{s}.{d}", f"{API}.CONSUMER.CREATE.{s}.{d}.>",
                f"{API}.CONSUMER.DURABLE.CREATE.{s}.{d}", f"{API}.CONSUMER.DELETE.{s}.{d}",
                f"{API}.CONSUMER.MSG.NEXT.{s}.{d}", f"$JS.ACK.{s}.{d}.>"]
    return tuple(out)


def _user_consumers(*stream_names: str) -> tuple[str, ...]:
    """A user's own consumers (durable or not) on these streams, reading and deleting them."""
    out: list[str] = [f"{API}.INFO", f"{API}.STREAM.NAMES", f"{API}.STREAM.LIST"]
    for s in stream_names:
        out += [*stream_info(s), *_direct_get(s), *_ordered_consumers(s), f"{API}.CONSUMER.DELETE.{s}.*",
                f"{API}.CONSUMER.DURABLE.CREATE.{s}.*", f"{API}.CONSUMER.MSG.NEXT.{s}.*",
                f"{API}.CONSUMER.LIST.{s}", f"{API}.CONSUMER.NAMES.{s}", f"$JS.ACK.{s}.>"]
    return tuple(out)


MD, REF, STATUS, DLQ = (streams.MARKET_DATA.name, streams.REFERENCE.name, streams.STATUS.name,
                        streams.DEAD_LETTERS.name)
ORDERS_CMD, ORDERS_EVT, EXPORTS = (streams.ORDER_COMMANDS.name, streams.ORDER_EVENTS.name,
                                   streams.EXPORT_EVENTS.name)
ORDER_EVENT_SUBJECTS = ("orders.evt.>", "orders.fill.>", "orders.position.>", "orders.balance.>")


def _ingestor(service: str, source: str, *, extra_subscribe: tuple[str, ...] = ()) -> Identity:
    return Identity(
        name=service, description=f"the {source} ingestor",
        publish=(f"md.*.{source}.>", f"ref.*.{source}.>", *_own_status(service),
                 *stream_info(MD, REF, STATUS, DLQ),
                 # the shared progress bucket: put its own keys only (<source>.<...>), no consumer
                 *kv_own_keys(streams.INGEST_STATE.name, f"{source}.>", direct=streams.INGEST_STATE.direct),
                 # feed control: its own vendor's feeds only (read, watch, seed, change on request)
                 *kv_keys(streams.FEEDS.name, f"{source}.>")),
        subscribe=(f"replay.{source}", feed_contract.control(source), *extra_subscribe, *_inbox(service)),
        allow_responses=True,  # replay.<source> and feeds.ctl.<source> requests
    )


_HISTORY_DURABLES = ((MD, consumer_decls.HISTORY_MD.durable), (REF, consumer_decls.HISTORY_REF.durable),
                     (STATUS, consumer_decls.HISTORY_STATUS.durable))
_ROUTER_DURABLE = (ORDERS_CMD, consumer_decls.ORDER_ROUTER_COMMANDS.durable)

HISTORY_WRITER = Identity(
    name="history_writer",
    description="persists md/ref/feed-status events; answers history queries",
    publish=(
        *_own_status("history_writer"),
        *stream_info(MD, REF, STATUS, DLQ),
        *(p for s, d in _HISTORY_DURABLES for p in (*durable(s, d), *max_deliveries_watch(s, d)[0])),
    ),
    subscribe=(
        "history.query",
        "history.coverage",
        *(a for s, d in _HISTORY_DURABLES for a in max_deliveries_watch(s, d)[1]),
        *_inbox("history_writer"),
    ),
    allow_responses=True,
)

ORDER_ROUTER = Identity(
    name="order_router", description="order commands -> Digitex; order lifecycle events",
    publish=(*ORDER_EVENT_SUBJECTS, *_own_status("order_router"), *stream_info(ORDERS_CMD, ORDERS_EVT, STATUS, DLQ),
             *durable(*_ROUTER_DURABLE), *max_deliveries_watch(*_ROUTER_DURABLE)[0],
             *kv_write(streams.ORDER_IDEMPOTENCY.name), *kv_write(streams.ORDER_STATE.name),
             *kv_write(streams.ROUTER_CONTROL.name),
             # command acks go to the operator's inbox named in the command's Marketbus-Reply-To header
             f"{inbox_prefix('operator')}.>"),
    subscribe=("orders.ctl.digitex", *max_deliveries_watch(*_ROUTER_DURABLE)[1], *_inbox("order_router")),
    allow_responses=True,  # orders.ctl requests
)

EXPORT_ORCHESTRATOR = Identity(
    name="export_orchestrator", description="export jobs from history to files; TickSupply-shaped HTTP API",
    publish=("export.status.>", "replay.*", "history.query", "history.coverage",
             *_own_status("export_orchestrator"), *stream_info(EXPORTS, STATUS, DLQ),
             *kv_write(streams.EXPORT_JOBS.name), *object_store_write(streams.EXPORT_ARTIFACTS.name),
             # its TickSupply-compatible subscriptions are feeds: read them, change them by request
             feed_contract.ALL_CONTROL, *kv_read(streams.FEEDS.name)),
    subscribe=("export.create", "export.get", "export.cancel", "export.list", *_inbox("export_orchestrator")),
    allow_responses=True,
)

# The replay service's outputs: replay.<prefix>.md.>, .ref.>, .end and replay.<session>.status.
# Every one has 3+ tokens, so none can be an ingestor's 2-token replay.<source> request subject.
PLAYBACK_OUTPUTS = ("replay.*.md.>", "replay.*.ref.>", "replay.*.status", "replay.*.end")
PLAYBACK_REQUESTS = ("history.replay.start", "history.replay.*.control")

REPLAY = Identity(
    name="replay", description="history playback sessions onto replay.<session>.> (and over HTTP)",
    publish=(*PLAYBACK_OUTPUTS, "history.query", "history.coverage", *_own_status("replay"),
             *stream_info(STATUS, DLQ)),
    subscribe=(*PLAYBACK_REQUESTS, *_inbox("replay")),
    allow_responses=True,  # start and control requests
)

READER = Identity(
    name="reader",
    description="read-only: users' consumers and dashboards (md, ref, status, export progress, playbacks)",
    publish=("history.query", "history.coverage", "export.get", "export.list", *PLAYBACK_REQUESTS,
             *_user_consumers(MD, REF, STATUS, EXPORTS), *kv_read(streams.FEEDS.name)),
    # replay.*.> (3+ tokens) is a playback's output, never an ingestor's replay.<source> request
    subscribe=("md.>", "ref.>", "status.>", "export.status.>", "replay.*.>", *_inbox("reader")),
    publish_deny=_service_durables_deny(),
)

# Users' own derived events (bars, alerts, signals...): outside every marketbus namespace, so a
# consumer can never forge market data, status or commands. Add a namespace here, then regenerate
# the server authorization (`marketbus credentials`, deploy/nats/auth.conf).
DERIVED_NAMESPACES: tuple[str, ...] = ("analytics.>", "alerts.>", "signals.>")

CONSUMER = Identity(
    name="consumer",
    description="users' consumers: what reader may, plus their own derived events (analytics.>, alerts.>, signals.>)",
    publish=(*READER.publish, *DERIVED_NAMESPACES),
    subscribe=(*READER.subscribe[:-1], *DERIVED_NAMESPACES, *_inbox("consumer")),
    publish_deny=_service_durables_deny(),
)

OPERATOR = Identity(
    name="operator",
    description="the CLI: what reader does, plus order commands, exports, news publishing, dead letters",
    publish=(
        *READER.publish,
        "export.create",
        "export.cancel",
        "orders.cmd.digitex.>",
        "orders.ctl.digitex",
        "sitagri.news.publish",
        feed_contract.ALL_CONTROL,
        *_user_consumers(ORDERS_EVT, DLQ),
        *stream_info(ORDERS_CMD),
        *kv_read(streams.ORDER_STATE.name),
        *kv_read(streams.ORDER_IDEMPOTENCY.name),
        *kv_read(streams.ROUTER_CONTROL.name),
    ),
    subscribe=(*READER.subscribe[:-1], *ORDER_EVENT_SUBJECTS, "dlq.>", *_inbox("operator")),
    publish_deny=_service_durables_deny(),
)

# The bus exporter (python -m marketbus.runtime.consumer_lag, service name ``bus_exporter``): it
# lists every stream and consumer and reads the account (js.streams_info / consumers_info /
# account_info), waits for the declared streams at start (STREAM.INFO), and counts heartbeats,
# feed-status and export-status events. Read-only JetStream information: no create, delete,
# purge, message read or pull; no market data, no order events.
MONITOR = Identity(
    name="monitor",
    description="the bus exporter: read-only JetStream info (consumer lag), status and export progress",
    publish=(
        f"{API}.INFO",
        f"{API}.STREAM.NAMES",
        f"{API}.STREAM.LIST",
        *stream_info(*(s.name for s in streams.STREAMS)),
        f"{API}.CONSUMER.NAMES.*",
        f"{API}.CONSUMER.LIST.*",
        f"{API}.CONSUMER.INFO.*.*",
        "status.bus_exporter.>",
    ),
    subscribe=("status.>", "export.status.>", *_inbox("monitor")),
)

ADMIN = Identity(
    name="admin", description="provisioning and operations: everything", publish=(">",), subscribe=(">",),
    admin=True,
)

SERVICE_IDENTITIES: tuple[Identity, ...] = (
    HISTORY_WRITER,
    _ingestor("ingest_finx", "finx"),
    _ingestor("ingest_ticksupply", "ticksupply"),
    _ingestor("ingest_digitex", "digitex"),
    _ingestor("ingest_sitagri", "sitagri", extra_subscribe=("sitagri.news.publish",)),
    ORDER_ROUTER,
    EXPORT_ORCHESTRATOR,
    REPLAY,
)
IDENTITIES: tuple[Identity, ...] = (*SERVICE_IDENTITIES, READER, CONSUMER, OPERATOR, MONITOR, ADMIN)
BY_NAME: dict[str, Identity] = {i.name: i for i in IDENTITIES}


_SERVICE_STREAMS: dict[str, tuple[streams.StreamSpec, ...]] = {
    "history_writer": (streams.MARKET_DATA, streams.REFERENCE, streams.STATUS, streams.DEAD_LETTERS),
    "order_router": (streams.ORDER_COMMANDS, streams.ORDER_EVENTS, streams.STATUS, streams.DEAD_LETTERS),
    "export_orchestrator": (streams.EXPORT_EVENTS, streams.STATUS, streams.DEAD_LETTERS),
    "replay": (streams.STATUS, streams.DEAD_LETTERS),
}
_INGEST_STREAMS = (streams.MARKET_DATA, streams.REFERENCE, streams.STATUS, streams.DEAD_LETTERS)


def streams_needed(service: str) -> tuple[streams.StreamSpec, ...]:
    """The streams ``service`` publishes to or consumes (every stream for a service not declared here)."""
    if service in _SERVICE_STREAMS:
        return _SERVICE_STREAMS[service]
    if service.startswith("ingest_"):
        return _INGEST_STREAMS
    return streams.STREAMS
