"""Wire format: JSON via msgspec, one tagged union for every message type, batch envelopes.

Decimals go out as JSON strings in their canonical text (``invariants.canonical_decimal``):
every contract event (built or decoded) carries its decimals in canonical form, and msgspec writes a
decimal as ``str()`` of it, so the text is a function of the value alone: ``"100.5"`` whatever the
vendor wrote (``"100.50"``, ``"1.005E+2"``). A reader of stored decimals (Iceberg ``decimal(38, 18)``,
PostgreSQL ``numeric``) renders them in the same canonical text
(``marketbus.history.schema.canonical_decimal_column``), so history and replay give back, byte for
byte, what marketbus published. A message from another publisher with decimals in another text
(``"100.50"``) decodes to the same values; stored, replayed or re-encoded, its decimals come back
canonical: equal in value, not necessarily in bytes.

Headers on every message: ``Nats-Msg-Id`` (the event id, JetStream de-duplication),
``Marketbus-Schema`` (schema version) and ``Marketbus-Type`` (the ``type`` tag, so a consumer
can route without decoding). Messages written by an older schema version are upgraded by the
functions in :data:`UPGRADERS` before decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Union

import msgspec

from .base import SCHEMA_VERSION, Event, MarketEvent
from .feeds import FEED_TYPES
from .ids import event_id
from .invariants import Id, Token
from .jobs import JOB_TYPES
from .market import MARKET_TYPES
from .orders import ORDER_TYPES
from .reference import REFERENCE_TYPES
from .replay import PLAYBACK_TYPES
from .status import DeadLetter, FeedStatus, ServiceHeartbeat

HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_SCHEMA = "Marketbus-Schema"
HEADER_TYPE = "Marketbus-Type"
HEADER_REPLY_TO = "Marketbus-Reply-To"
"""Where a command published to a JetStream work queue wants its synchronous acknowledgement
(a core request cannot work there: the stream itself answers it with its publish ack)."""

DECODE_ERRORS: tuple[type[Exception], ...] = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
"""What decoding hostile JSON raises: msgspec's errors (``ValidationError`` included, which is
what a broken contract invariant gives), invalid UTF-8 inside a string, nesting too deep.
:func:`decode` and :func:`decode_as` raise only ``msgspec.DecodeError`` (or its subclass
``ValidationError``); decoders used directly raise any of these."""

MarketData = Union[MARKET_TYPES + REFERENCE_TYPES]  # type: ignore[valid-type]  # noqa: UP007 (a union of a tuple built at run time)


class Batch(Event, frozen=True, kw_only=True, tag="batch"):
    """Many events of one kind and instrument in one message (replays, backfills, vendor pages).

    ``id`` is deterministic from the events' ids, so a re-sent page is de-duplicated too.
    """

    id: Id
    kind: Token
    source: Token
    venue: Token
    symbol: Token
    replay: bool = False
    events: list[MarketData]  # type: ignore[valid-type]


STATUS_TYPES = (FeedStatus, ServiceHeartbeat, DeadLetter)
ALL_TYPES: tuple[type[Event], ...] = (
    MARKET_TYPES + REFERENCE_TYPES + (Batch,) + STATUS_TYPES + ORDER_TYPES + JOB_TYPES + PLAYBACK_TYPES + FEED_TYPES
)
AnyEvent = Union[ALL_TYPES]  # type: ignore[valid-type]  # noqa: UP007 (a union of a tuple built at run time)

_encoder = msgspec.json.Encoder(decimal_format="string")
_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(AnyEvent)
_typed_decoders: dict[type, msgspec.json.Decoder[Any]] = {}

UPGRADERS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}
"""``UPGRADERS[v]`` turns a message of schema version ``v`` (as a dict) into version ``v + 1``."""


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def encode_value(value: Any) -> bytes:
    """Any value (a nested struct, a list of them, a default) as the codec writes it inside an event."""
    return _encoder.encode(value)


def encode_many(events: Iterable[Event]) -> list[bytes]:
    enc = _encoder.encode
    return [enc(e) for e in events]


def decode(data: bytes | str, schema_version: int | None = None) -> Any:
    """Decode any bus message (the result's class tells what it is). Raises
    ``msgspec.ValidationError`` for a message that breaks a contract invariant, and
    ``msgspec.DecodeError`` for one that is not JSON at all."""
    try:
        if schema_version is not None and schema_version < SCHEMA_VERSION:
            return _upgrade(data, schema_version, AnyEvent)
        return _decoder.decode(data)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise msgspec.DecodeError(f"not a valid JSON message: {exc}") from None


def decoder_for(event_type: Any) -> msgspec.json.Decoder[Any]:
    """A decoder for one type (or union); faster than the general one when the type is known."""
    dec = _typed_decoders.get(event_type)
    if dec is None:
        dec = _typed_decoders[event_type] = msgspec.json.Decoder(event_type)
    return dec


def decode_as(data: bytes | str, event_type: Any, schema_version: int | None = None) -> Any:
    """Like :func:`decode`, for a known type (or union)."""
    try:
        if schema_version is not None and schema_version < SCHEMA_VERSION:
            return _upgrade(data, schema_version, event_type)
        return decoder_for(event_type).decode(data)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise msgspec.DecodeError(f"not a valid JSON message: {exc}") from None


def _upgrade(data: bytes | str, version: int, target: Any) -> Any:
    obj = msgspec.json.decode(data)
    for v in range(version, SCHEMA_VERSION):
        step = UPGRADERS.get(v)
        if step is not None:
            obj = step(obj)
    return msgspec.convert(obj, target)


def schema_version_of(headers: dict[str, str] | None) -> int:
    if not headers:
        return SCHEMA_VERSION
    try:
        return int(headers.get(HEADER_SCHEMA, SCHEMA_VERSION))
    except ValueError:
        return SCHEMA_VERSION


def headers_for(event: Event, msg_id: str | None = None) -> dict[str, str]:
    headers = {HEADER_SCHEMA: str(SCHEMA_VERSION), HEADER_TYPE: str(type(event).__struct_config__.tag)}
    mid = msg_id if msg_id is not None else getattr(event, "id", None)
    if mid:
        headers[HEADER_MSG_ID] = mid
    return headers


def make_batch(events: list[MarketEvent], replay: bool | None = None) -> Batch:
    """Wrap events of one kind and instrument in a batch envelope."""
    if not events:
        raise ValueError("a batch needs at least one event")
    first = events[0]
    kind = str(type(first).__struct_config__.tag)
    for e in events:
        if type(e) is not type(first) or e.symbol != first.symbol or e.venue != first.venue or e.source != first.source:
            raise ValueError("a batch holds events of one kind and one instrument")
    batch_id = event_id(
        first.source, "batch", kind, first.venue, first.symbol, events[0].id, events[-1].id, len(events)
    )
    return Batch(
        id=batch_id, kind=kind, source=first.source, venue=first.venue, symbol=first.symbol,
        replay=first.replay if replay is None else replay, events=events,
    )


def iter_events(message: Any) -> Iterator[Any]:
    """Single events from either form: a decoded event or a :class:`Batch` of them."""
    if isinstance(message, Batch):
        yield from message.events
    else:
        yield message


def decode_events(data: bytes | str, schema_version: int | None = None) -> Iterator[Any]:
    """Decode a message and yield the single events it carries (one, or a batch's)."""
    return iter_events(decode(data, schema_version))
