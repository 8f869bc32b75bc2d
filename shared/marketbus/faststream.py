"""Write a marketbus consumer the way FastStream's documentation teaches.

A consumer is a FastStream app: a broker, handlers decorated with ``@broker.subscriber``, typed
messages. This module gives a FastStream user the marketbus parts::

    from faststream import FastStream
    from marketbus.contracts.market import Trade
    from marketbus.faststream import Events, consumer_broker, durable_subscriber

    broker = consumer_broker("my-consumer")          # NATS_URL, credentials, TLS from the env
    app = FastStream(broker)

    @durable_subscriber(broker, "md.trade.>", durable="my-consumer")
    async def on_trades(trades: Events[Trade]) -> None:   # batch envelopes already unpacked
        ...

and ``faststream run mymodule:app`` runs it, ``faststream docs gen mymodule:app`` documents it.

- :func:`consumer_broker` is :func:`marketbus.runtime.broker.make_broker` with settings read
  from the environment (:class:`ConsumerSettings`) and msgspec validation of handler arguments.
- :data:`Events` / :data:`Typed` annotate handler arguments with contract types: FastStream
  validates them with msgspec and documents them in AsyncAPI with the contracts' JSON Schema.
- :func:`decode_events` / :func:`decode_event` are FastStream decoders for bus messages
  (schema upgrades applied, ``batch`` envelopes unpacked by the first).
- :func:`durable_subscriber` is a JetStream durable pull subscriber on the stream that holds the
  subject (MD for ``md.>``...); the streams are provisioned by the services, never by a consumer.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec
from fast_depends.msgspec import MsgSpecSerializer
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from nats.js.api import ConsumerConfig, DeliverPolicy
from prometheus_client import Counter
from pydantic_core import core_schema

from marketbus.cli.common import CREDENTIALS_DIR, data_dir, recorded_url
from marketbus.contracts import codec
from marketbus.contracts.streams import STREAMS, StreamSpec
from marketbus.runtime.broker import BusSettings, make_broker
from marketbus.runtime.settings import load_settings

log = logging.getLogger(__name__)

UNDECODABLE = Counter(
    "marketbus_consumer_undecodable_total", "bus messages a consumer could not decode (logged and acked)",
    ["namespace"],  # the subject's first token (md, ref...): bounded, unlike whole subjects
)


class ConsumerSettings(BusSettings, kw_only=True):
    """A consumer's connection settings: ``MARKETBUS_CONSUMER_NATS_URL``, or the deployment-wide
    ``NATS_URL`` / ``NATS_USER`` / ``NATS_PASSWORD`` / ``NATS_TOKEN`` / ``NATS_CREDS_FILE`` /
    ``NATS_NKEY_SEED_FILE`` / ``NATS_TLS_*`` every service reads."""

    env_prefix: ClassVar[str] = "MARKETBUS_CONSUMER_"


IDENTITY_ENV = "MARKETBUS_CONSUMER_IDENTITY"
_CREDENTIAL_VARS = ("NATS_USER", "NATS_TOKEN", "NATS_CREDS_FILE", "NATS_NKEY_SEED_FILE")


def consumer_settings(env: Mapping[str, str] | None = None) -> ConsumerSettings:
    """:class:`ConsumerSettings` from the environment. Without a NATS URL there, the one
    ``marketbus up`` (``make run``) recorded in ``.marketbus/nats.url`` (it takes another port
    when 4222 is busy), else ``nats://127.0.0.1:4222``. Without credentials there, the nkey seed
    ``marketbus up`` generated for the ``consumer`` identity (``.marketbus/credentials/consumer.nk``;
    ``MARKETBUS_CONSUMER_IDENTITY=reader`` for the read-only one): `make run` has auth on."""
    env = os.environ if env is None else env
    overrides: dict[str, Any] = {}
    if not any(env.get(var) for var in (f"{ConsumerSettings.env_prefix}NATS_URL", "NATS_URL")):
        recorded = recorded_url()
        if recorded:
            overrides["nats_url"] = recorded
    if not any(env.get(var) or env.get(ConsumerSettings.env_prefix + var) for var in _CREDENTIAL_VARS):
        identity = env.get(IDENTITY_ENV) or "consumer"
        seed = data_dir() / CREDENTIALS_DIR / f"{identity}.nk"
        if seed.exists():  # the inbox prefix follows from the file name (_INBOX.<identity>)
            overrides["nats_nkey_seed_file"] = str(seed)
    return load_settings(ConsumerSettings, env, **overrides)


def consumer_broker(name: str, settings: BusSettings | None = None, **extra: Any) -> NatsBroker:
    """A FastStream ``NatsBroker`` connected as the services are (URL, auth, TLS from ``settings``,
    else from the environment: :func:`consumer_settings`), validating handler arguments with msgspec."""
    settings = settings if settings is not None else consumer_settings()
    extra.setdefault("serializer", MsgSpecSerializer())
    broker = make_broker(settings, name, **extra)
    _INBOX_PREFIXES[broker] = settings.inbox_prefix
    return broker


# FastStream's pull subscriptions take their reply inbox from the subscriber (default ``_INBOX.``),
# not from the connection; an identity may read only its own ``_INBOX.<identity>.>``.
_INBOX_PREFIXES: weakref.WeakKeyDictionary[NatsBroker, str] = weakref.WeakKeyDictionary()


# -- typed handler arguments -------------------------------------------------------------------


class ContractSchema:
    """pydantic metadata for a contract type: FastStream's AsyncAPI generator (pydantic) gets the
    JSON Schema msgspec derives from the contract; validation stays with msgspec."""

    def __init__(self, contract: Any) -> None:
        self.contract = contract

    def __get_pydantic_core_schema__(self, _source: Any, _handler: Any) -> core_schema.CoreSchema:
        return core_schema.any_schema()

    def __get_pydantic_json_schema__(self, _schema: Any, _handler: Any) -> dict[str, Any]:
        schema = msgspec.json.schema(self.contract)
        definitions = schema.pop("$defs", {})

        def inline(node: Any) -> Any:  # the contracts are not recursive: inlining terminates
            if isinstance(node, dict):
                ref = node.get("$ref", "")
                if ref.startswith("#/$defs/"):
                    return inline(definitions[ref.removeprefix("#/$defs/")])
                return {key: inline(value) for key, value in node.items()}
            if isinstance(node, list):
                return [inline(value) for value in node]
            return node

        inlined: dict[str, Any] = inline(schema)
        return inlined


if TYPE_CHECKING:
    Events = list
    Typed = Annotated
else:

    class Events:
        """``Events[Trade]``: the single events of one message, batch envelopes unpacked (a list)."""

        def __class_getitem__(cls, contract: Any) -> Any:
            return Annotated[list[contract], ContractSchema(list[contract])]

    class Typed:
        """``Typed[OrderEvent]``: one message decoded as a contract type (subjects without batches)."""

        def __class_getitem__(cls, contract: Any) -> Any:
            return Annotated[contract, ContractSchema(contract)]


# -- decoders ----------------------------------------------------------------------------------


async def decode_events(msg: Any) -> list[Any]:
    """FastStream decoder: the events a bus message carries (one, or a batch's), upgraded to the
    current schema. A message that is not a marketbus event is counted, logged and yields no
    events (acknowledged: it would fail again on every redelivery)."""
    try:
        return list(codec.decode_events(msg.body, codec.schema_version_of(msg.headers)))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        subject = getattr(msg.raw_message, "subject", "")
        UNDECODABLE.labels(subject.split(".", 1)[0] if subject else "").inc()
        log.warning("undecodable message on %s: %s", subject, exc)
        return []


async def decode_event(msg: Any) -> Any:
    """FastStream decoder: one bus message as its contract type (order events, job status...)."""
    return codec.decode(msg.body, codec.schema_version_of(msg.headers))


# -- JetStream ---------------------------------------------------------------------------------


def _covers(pattern: str, subject: str) -> bool:
    """Whether NATS subject ``pattern`` matches every subject ``subject`` (itself a filter) can."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or have[i] == ">" or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def stream_spec_for(subject: str) -> StreamSpec:
    """The marketbus stream that holds ``subject`` (``md.trade.>`` -> MD); ValueError if none."""
    for spec in STREAMS:
        if any(_covers(pattern, subject) for pattern in spec.subjects):
            return spec
    raise ValueError(f"no marketbus stream holds {subject!r}; streams: "
                     + ", ".join(f"{s.name} {' '.join(s.subjects)}" for s in STREAMS))


def stream_for(subject: str) -> JStream:
    """The FastStream ``JStream`` for ``subject``, with ``declare=False``: marketbus streams are
    provisioned by the services (replicas, limits); a consumer must not create or modify them."""
    spec = stream_spec_for(subject)
    return JStream(spec.name, subjects=list(spec.subjects), declare=False)


Deliver = Literal["all", "new", "last", "last_per_subject"]
_DELIVER = {
    "all": DeliverPolicy.ALL, "new": DeliverPolicy.NEW, "last": DeliverPolicy.LAST,
    "last_per_subject": DeliverPolicy.LAST_PER_SUBJECT,
}


def durable_config(
    durable: str, *, deliver: Deliver = "all", start_time: datetime | None = None, ack_wait_s: float = 30.0,
    max_ack_pending: int = 10_000, max_deliver: int = 20,
) -> ConsumerConfig:
    """The JetStream consumer a durable subscriber creates on first start (later starts resume it).

    ``start_time`` replays from that instant (``DeliverPolicy.BY_START_TIME``); otherwise
    ``deliver`` says where a new durable starts. A message not acknowledged within
    ``ack_wait_s`` is delivered again, at most ``max_deliver`` times in all (a message that fails
    every time is then left behind instead of looping forever; JetStream publishes a
    ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES`` advisory).
    """
    config = ConsumerConfig(durable_name=durable, ack_wait=ack_wait_s, max_ack_pending=max_ack_pending,
                            max_deliver=max_deliver)
    if start_time is not None:
        config.deliver_policy = DeliverPolicy.BY_START_TIME
        config.opt_start_time = start_time if start_time.tzinfo else start_time.replace(tzinfo=UTC)
    else:
        config.deliver_policy = _DELIVER[deliver]
    return config


def durable_subscriber(
    broker: NatsBroker, subject: str | Sequence[str], durable: str, *, deliver: Deliver = "all",
    start_time: datetime | None = None, batch_size: int = 256, fetch_timeout_s: float = 1.0, ack_wait_s: float = 30.0,
    max_deliver: int = 20, ack_policy: AckPolicy = AckPolicy.NACK_ON_ERROR,
    decoder: Callable[..., Any] = decode_events, **kwargs: Any,
) -> Any:
    """``@broker.subscriber`` for a JetStream durable pull consumer on the stream holding ``subject``.

    Every instance started with the same ``durable`` shares one consumer: each message goes to one
    of them (scale out by starting more). A message is acknowledged when the handler returns;
    if it raises, ``AckPolicy.NACK_ON_ERROR`` has JetStream deliver it again (at least once).
    Handlers receive :data:`Events` (``decode_events``) unless another decoder is given. The
    pull requests' reply inbox is the broker identity's own (``_INBOX.<identity>.``: with auth on,
    the only one it may read).

    ``subject`` may be several subjects of one stream (``["md.book.>", "md.book_delta.>"]``):
    one consumer with those filter subjects (NATS 2.10+) delivers their messages in the order the
    stream stored them, which two consumers cannot (a book's deltas must follow its snapshot).
    """
    if broker in _INBOX_PREFIXES:
        kwargs.setdefault("inbox_prefix", f"{_INBOX_PREFIXES[broker]}.".encode())
    subjects = [subject] if isinstance(subject, str) else list(subject)
    if not subjects:
        raise ValueError("a durable subscriber needs a subject")
    stream = stream_for(subjects[0])
    if any(stream_spec_for(s).name != stream.name for s in subjects[1:]):
        raise ValueError(f"one durable reads one stream: {subjects} are not all in {stream.name}")
    config = durable_config(durable, deliver=deliver, start_time=start_time, ack_wait_s=ack_wait_s,
                            max_deliver=max_deliver)
    if len(subjects) > 1:
        config.filter_subjects = subjects  # no filter_subject: JetStream takes one or the other
    return broker.subscriber(
        subjects[0] if len(subjects) == 1 else "", stream=stream, durable=durable, config=config,
        pull_sub=PullSub(batch_size=batch_size, timeout=fetch_timeout_s), decoder=decoder,
        ack_policy=ack_policy, **kwargs,
    )


__all__ = [
    "ConsumerSettings",
    "ContractSchema",
    "Deliver",
    "Events",
    "Typed",
    "consumer_broker",
    "consumer_settings",
    "decode_event",
    "decode_events",
    "durable_config",
    "durable_subscriber",
    "stream_for",
    "stream_spec_for",
]
