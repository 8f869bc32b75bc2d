"""The one module that builds and parses NATS subjects. Nobody formats subjects by hand.

Scheme (see README "Subject reference"):

- ``md.<kind>.<source>.<venue>.<symbol>``        market data (trade, tick, quote, book, ...)
- ``ref.<kind>.<source>.<venue>.<symbol>``       reference data, last value per subject
- ``status.<service>.feed.<source>.<venue>.<symbol>``, ``status.<service>.heartbeat``
- ``dlq.<service>.<source>``                     dead letters
- ``orders.cmd.digitex.<market>``, ``orders.evt.digitex.<market>.<client_id>``,
  ``orders.fill|position.digitex.<market>``, ``orders.balance.digitex.<currency>``,
  ``orders.ctl.digitex``
- ``replay.<source>``, ``history.query``, ``history.coverage``,
  ``export.create|get|cancel|list``, ``export.status.<job_id>``
- history playback: ``history.replay.start``, ``history.replay.<session>.control`` (requests);
  ``<prefix>.md.>`` / ``<prefix>.ref.>`` (the events), ``<prefix>.end``, ``replay.<session>.status``;
  the prefix is ``replay.<session>`` (or ``replay.<name>``), session ids ``s<12 hex>``

Symbols are made NATS-token safe by :func:`normalize_symbol`, which round-trips through
:func:`denormalize_symbol`: ``:`` becomes ``-``; letters, digits and ``_`` stay; every other
character (including ``-`` itself) becomes ``~XX`` (hex of its UTF-8 bytes).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .base import NO_VENUE, MarketEvent

MD = "md"
REF = "ref"
STATUS = "status"
DLQ = "dlq"
ORDERS = "orders"
DIGITEX = "digitex"

_SAFE = re.compile(r"[A-Za-z0-9_]*")
_ESCAPE = re.compile(r"[^A-Za-z0-9_:]")
_UNESCAPE = re.compile(r"~([0-9A-F]{2})|-")


def _escape_char(match: re.Match[str]) -> str:
    return "".join(f"~{b:02X}" for b in match.group(0).encode())


def normalize_symbol(vendor_symbol: str) -> str:
    """``"BTC:USD"`` -> ``"BTC-USD"``; the result is one safe NATS token."""
    if not vendor_symbol:
        raise ValueError("a symbol cannot be empty")
    if _SAFE.fullmatch(vendor_symbol):
        return vendor_symbol
    return _ESCAPE.sub(_escape_char, vendor_symbol).replace(":", "-")


def denormalize_symbol(token: str) -> str:
    """Inverse of :func:`normalize_symbol`."""
    if _SAFE.fullmatch(token):
        return token
    out = bytearray()
    pos = 0
    for match in _UNESCAPE.finditer(token):
        out += token[pos:match.start()].encode()
        out += bytes([int(match.group(1), 16)]) if match.group(1) else b":"
        pos = match.end()
    out += token[pos:].encode()
    return out.decode()


_BAD_TOKEN = re.compile(r"[\s.*>]")


def check_token(token: str, what: str = "token") -> str:
    if not token or _BAD_TOKEN.search(token):
        raise ValueError(f"{what} {token!r} is not a valid NATS subject token")
    return token


REPLY_INBOX_PREFIX = "_INBOX."
MAX_REPLY_SUBJECT = 256  # nats-py's inboxes are ~50 characters; far below the server's control line


def is_reply_inbox(subject: str) -> bool:
    """``subject`` is a reply inbox a requester may name in a header (``Marketbus-Reply-To``): a
    literal subject under ``_INBOX.``, short enough for any control line. Anything else (another
    service's subject, a wildcard, a space, 6 KB of text) would have the replying service publish
    there with its own rights, or have the server close its connection."""
    if not subject.startswith(REPLY_INBOX_PREFIX) or len(subject) > MAX_REPLY_SUBJECT or not subject.isascii():
        return False
    return all(token and not _BAD_TOKEN.search(token) for token in subject.split("."))


# --- market and reference data -------------------------------------------------------------
def md(kind: str, source: str, venue: str, symbol: str) -> str:
    return f"md.{kind}.{source}.{venue}.{symbol}"


def ref(kind: str, source: str, venue: str, symbol: str) -> str:
    return f"ref.{kind}.{source}.{venue}.{symbol}"


def md_filter(kind: str = "*", source: str = "*", venue: str = "*", symbol: str = "*") -> str:
    return f"md.{kind}.{source}.{venue}.{symbol}"


def ref_filter(kind: str = "*", source: str = "*", venue: str = "*", symbol: str = "*") -> str:
    return f"ref.{kind}.{source}.{venue}.{symbol}"


_NAMESPACE_OF: dict[type, str] = {}


def _namespace(event_type: type) -> str:
    ns = _NAMESPACE_OF.get(event_type)
    if ns is None:
        from .market import MARKET_TYPES

        ns = MD if event_type in MARKET_TYPES else REF
        _NAMESPACE_OF[event_type] = ns
    return ns


def kind_of(event_or_type: object) -> str:
    """The kind token of an event (its ``type`` tag): ``trade``, ``book``, ``instrument``..."""
    cls = event_or_type if isinstance(event_or_type, type) else type(event_or_type)
    return str(cls.__struct_config__.tag)  # type: ignore[attr-defined]  # cls is a contract (Struct) type


def for_event(event: MarketEvent) -> str:
    """The subject a market or reference event is published on."""
    cls = type(event)
    return f"{_namespace(cls)}.{cls.__struct_config__.tag}.{event.source}.{event.venue}.{event.symbol}"


class DataSubject(NamedTuple):
    namespace: str  # md | ref
    kind: str
    source: str
    venue: str
    symbol: str

    @property
    def vendor_symbol(self) -> str:
        return denormalize_symbol(self.symbol)


def parse(subject: str) -> DataSubject:
    """Parse an ``md.`` or ``ref.`` subject."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[0] not in (MD, REF):
        raise ValueError(f"not a market/reference data subject: {subject!r}")
    return DataSubject(parts[0], parts[1], parts[2], parts[3], parts[4])


# --- status ----------------------------------------------------------------------------------
def feed_status(service: str, source: str, venue: str = NO_VENUE, symbol: str = NO_VENUE) -> str:
    return f"status.{service}.feed.{source}.{venue}.{symbol}"


def heartbeat(service: str) -> str:
    return f"status.{service}.heartbeat"


def published_by(subject: str, service: str) -> bool:
    """``subject`` is one of ``service``'s own status subjects (``status.<service>.>``), the only
    ones its identity may publish: a heartbeat or feed status naming another service in its
    payload is a forgery (an ingestor posing as the order router) and is ignored."""
    return subject.startswith(f"{STATUS}.{service}.")


def dead_letter(service: str, source: str) -> str:
    return f"dlq.{service}.{source}"


class StatusSubject(NamedTuple):
    service: str
    what: str  # feed | heartbeat
    source: str | None
    venue: str | None
    symbol: str | None


def parse_status(subject: str) -> StatusSubject:
    parts = subject.split(".")
    if len(parts) == 3 and parts[0] == STATUS and parts[2] == "heartbeat":
        return StatusSubject(parts[1], "heartbeat", None, None, None)
    if len(parts) == 6 and parts[0] == STATUS and parts[2] == "feed":
        return StatusSubject(parts[1], "feed", parts[3], parts[4], parts[5])
    raise ValueError(f"not a status subject: {subject!r}")


ALL_STATUS = "status.>"
ALL_HEARTBEATS = "status.*.heartbeat"
ALL_FEED_STATUS = "status.*.feed.>"

# --- orders (Digitex) ------------------------------------------------------------------------
ALL_MARKETS = NO_VENUE  # the market token of account-wide commands (cancel everything)


def order_command(market: str = ALL_MARKETS) -> str:
    return f"orders.cmd.digitex.{market}"


def order_event(market: str, client_id: str) -> str:
    return f"orders.evt.digitex.{market}.{client_id}"


def parse_order_event(subject: str) -> tuple[str, str]:
    """``orders.evt.digitex.<market>.<client_id>`` -> (market, client_id)."""
    parts = subject.split(".", 4)
    if len(parts) != 5 or parts[:3] != ["orders", "evt", "digitex"]:
        raise ValueError(f"not an order event subject: {subject!r}")
    return parts[3], parts[4]


def order_fill(market: str) -> str:
    return f"orders.fill.digitex.{market}"


def order_position(market: str) -> str:
    return f"orders.position.digitex.{market}"


def order_balance(currency: str) -> str:
    return f"orders.balance.digitex.{currency}"


ORDER_CONTROL = "orders.ctl.digitex"
ALL_ORDER_COMMANDS = "orders.cmd.digitex.>"
ALL_ORDER_EVENTS = "orders.evt.digitex.>"


def order_events_filter(market: str = "*", client_id: str = "*") -> str:
    return f"orders.evt.digitex.{market}.{client_id}"


# --- request/reply services ------------------------------------------------------------------
def replay(source: str) -> str:
    return f"replay.{source}"


SITAGRI_NEWS_PUBLISH = "sitagri.news.publish"
HISTORY_QUERY = "history.query"
HISTORY_COVERAGE = "history.coverage"
EXPORT_CREATE = "export.create"
EXPORT_GET = "export.get"
EXPORT_CANCEL = "export.cancel"
EXPORT_LIST = "export.list"


def export_status(job_id: str) -> str:
    return f"export.status.{job_id}"


ALL_EXPORT_STATUS = "export.status.>"


# --- history playback (the replay service) -----------------------------------------------------
# Requests live under ``history.replay.``; output under ``replay.<session>`` (outside every
# stream). ``replay.<source>`` is the ingestors' request subject: a session id (``s`` + 12 hex
# digits) is never a source name, and a chosen prefix may not look like one either.
PLAYBACK_START = "history.replay.start"
PLAYBACK_NAMESPACE = "replay"
_SESSION_ID = re.compile(r"s[0-9a-f]{12}")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_session_id(text: str) -> bool:
    return bool(_SESSION_ID.fullmatch(text))


def playback_control(session: str) -> str:
    return f"history.replay.{session}.control"


def playback_status(session: str) -> str:
    return f"replay.{session}.status"


def playback_prefix(session: str) -> str:
    """The default output prefix of a session."""
    return f"replay.{session}"


def check_playback_prefix(prefix: str, sources: tuple[str, ...] = ()) -> str:
    """A chosen prefix: ``replay.<name>`` (one token of letters, digits, ``_``, ``-``), not a
    session id and not one of ``sources`` (raises ValueError)."""
    parts = prefix.split(".")
    if len(parts) != 2 or parts[0] != PLAYBACK_NAMESPACE or not _NAME.fullmatch(parts[1]):
        raise ValueError(f"prefix {prefix!r} must be replay.<name> (letters, digits, '_' or '-')")
    if is_session_id(parts[1]) or parts[1] in sources:
        raise ValueError(f"prefix {prefix!r} is reserved (a session id or a source name)")
    return prefix


def playback_data(prefix: str, subject: str) -> str:
    """Where the event live on ``subject`` (``md.trade...``) goes in a playback."""
    return f"{prefix}.{subject}"


def playback_end(prefix: str) -> str:
    return f"{prefix}.end"


def playback_filter(prefix: str, live_filter: str = "md.>") -> str:
    """The subscription of a consumer of ``live_filter`` moved to a playback prefix."""
    return f"{prefix}.{live_filter}"


def strip_prefix(subject: str, prefix: str) -> str:
    """The live subject of a played-back one (``replay.s1.md.trade...`` -> ``md.trade...``)."""
    if not subject.startswith(prefix + "."):
        raise ValueError(f"{subject!r} is not under {prefix!r}")
    return subject[len(prefix) + 1:]
