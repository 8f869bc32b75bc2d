"""Feed control: which instruments each ingestor collects, changed at runtime.

The desired set is a JetStream KV bucket (:data:`BUCKET`, ``feeds``; created by
``marketbus provision``), one :class:`Feed` record per key :func:`feed_key` =
``<vendor>.<escaped instrument>``. Every ingestor watches its own vendor's keys
(:func:`vendor_filter`, ``<vendor>.>``) and applies a change within seconds, without restart.

- **Reads** (list, get, watch) read the bucket directly: it is the source of truth, readable while
  an ingestor is down.
- **Changes** are requests on ``feeds.ctl.<vendor>`` (:func:`control`): :class:`FeedCommand` ->
  :class:`FeedReply`, or an :class:`~marketbus.contracts.errors.ErrorReply` (``bad_request`` for
  an instrument the vendor's catalog does not list, ``not_found`` for a feed that does not exist,
  ``unavailable`` while the catalog cannot be read). The vendor's ingestor answers them (queue
  group): it alone holds the vendor's catalog and credentials to validate against, and it writes
  its own vendor's keys only.
- **Status**: when an ingestor applies a change it publishes a
  :class:`~marketbus.contracts.status.FeedStatus` with state ``subscribed``, ``unsubscribed`` or
  ``paused`` (:data:`CONTROL_STATES`) on ``status.ingest_<vendor>.feed.<vendor>.<venue>.<symbol>``
  (:func:`status_filter`), ``detail`` = ``"feed <key>"`` (stream STATUS).
- **Seed**: at its first start against a bucket an ingestor copies its env settings (the
  instruments it was configured with) into the bucket and writes the marker :func:`seed_key`;
  from then on the bucket rules: a restart keeps the set in the bucket, not the env.
- **Periods**: each feed records its collection periods ([start, stop) ns; an open period has
  ``end_ns`` None): ``add``/``resume`` open one, ``pause``/``remove`` close it, and they follow
  the data flow of an active feed: closed while no instance of the ingestor collects it (stopped,
  crashed, or its vendor session down), opened when one does again (the ingestor keeps the
  marker record ``<vendor>._flow``; see :mod:`marketbus.vendor.feeds`). They are the "spans" of
  the TickSupply-compatible API. A removed feed keeps its record (state ``removed``) so its past
  periods stay known; adding it again reopens it.

Instruments are the vendor's own identifiers: Digitex a market code (``FS:BTCUSD``), TickSupply
a datastream id (``101``), Sitagri a quote reference (``/market/sources/EURONEX/future/EMA``), FinX
a pair (``BTC:USD``).
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from .base import Event
from .invariants import Checked, Label, Nanos, Text, Token

BUCKET = "feeds"
"""The KV bucket (declared in :mod:`.streams` as ``FEEDS``)."""

Vendor = Literal["finx", "ticksupply", "digitex", "sitagri"]
VENDORS: tuple[str, ...] = get_args(Vendor)

FeedStateName = Literal["active", "paused", "removed"]
FEED_STATES: tuple[str, ...] = get_args(FeedStateName)

FeedOp = Literal["add", "remove", "pause", "resume"]
FEED_OPS: tuple[str, ...] = get_args(FeedOp)

CONTROL_STATES: tuple[str, ...] = ("subscribed", "unsubscribed", "paused")
"""The FeedStatus states an ingestor publishes when it applies a change of its feed set."""

CONTROL_PREFIX = "feeds.ctl"
ALL_CONTROL = "feeds.ctl.*"


def control(vendor: str) -> str:
    """The request subject of feed changes for ``vendor``."""
    return f"{CONTROL_PREFIX}.{vendor}"


def ingestor_of(vendor: str) -> str:
    """The service that collects ``vendor`` (and answers its feed requests)."""
    return f"ingest_{vendor}"


def status_filter(vendor: str = "*") -> str:
    """Feed status events of ``vendor``'s ingestor (control states among them)."""
    service = "*" if vendor == "*" else ingestor_of(vendor)
    source = "*" if vendor == "*" else vendor
    return f"status.{service}.feed.{source}.>"


# --- KV keys -----------------------------------------------------------------------------------
# KV keys allow [-/_=.A-Za-z0-9]. An instrument keeps letters, digits, '-' and '/'; every other
# byte (':' '.' '_' '=' ...) becomes '=XX' (hex), so the key is one token after the vendor's and
# the marker keys (starting with '_') can never be an instrument's.
_KEEP = re.compile(r"[A-Za-z0-9/-]")
SEED_MARKER = "_seeded"


def escape_instrument(instrument: str) -> str:
    if not instrument:
        raise ValueError("an instrument cannot be empty")
    out = []
    for ch in instrument:
        out.append(ch if _KEEP.fullmatch(ch) else "".join(f"={b:02X}" for b in ch.encode()))
    return "".join(out)


def unescape_instrument(token: str) -> str:
    return re.sub(rb"=([0-9A-F]{2})", lambda m: bytes([int(m.group(1), 16)]), token.encode()).decode()


def check_vendor(vendor: str) -> str:
    if vendor not in VENDORS:
        raise ValueError(f"unknown vendor {vendor!r}: one of {', '.join(VENDORS)}")
    return vendor


def feed_key(vendor: str, instrument: str) -> str:
    """``feed_key("digitex", "FS:BTCUSD")`` -> ``"digitex.FS=3ABTCUSD"``."""
    return f"{check_vendor(vendor)}.{escape_instrument(instrument)}"


def parse_key(key: str) -> tuple[str, str]:
    """``"digitex.FS=3ABTCUSD"`` -> ``("digitex", "FS:BTCUSD")`` (ValueError for a marker or a
    key that is not a feed's)."""
    vendor, sep, rest = key.partition(".")
    if not sep or not rest or rest.startswith("_") or vendor not in VENDORS:
        raise ValueError(f"{key!r} is not a feed key")
    return vendor, unescape_instrument(rest)


def seed_key(vendor: str) -> str:
    """The marker written once the env settings of ``vendor``'s ingestor seeded the bucket."""
    return f"{check_vendor(vendor)}.{SEED_MARKER}"


def vendor_filter(vendor: str) -> str:
    """The KV key filter of ``vendor``'s keys (what its ingestor watches)."""
    return f"{check_vendor(vendor)}.>"


# --- records and messages ----------------------------------------------------------------------
class Period(Checked, frozen=True, array_like=True):
    """A collection period: ``[start_ns, end_ns)``; ``end_ns`` None while it is open."""

    start_ns: Nanos
    end_ns: Nanos | None = None


class Feed(Event, frozen=True, kw_only=True, tag="feed"):
    """One instrument of one vendor that an ingestor collects (or did): the value of a KV key."""

    key: Label  # feed_key(vendor, instrument); also the feed's id
    vendor: Vendor
    instrument: Label  # the vendor's identifier (market code, datastream id, quote reference, pair)
    venue: Token  # where its events go: md.<kind>.<vendor>.<venue>.<symbol>
    symbol: Token
    kind: Token | None = None  # the one md kind of the feed, when it has one (TickSupply: trade)
    name: Text | None = None  # the vendor's description of the instrument
    state: FeedStateName
    periods: list[Period] = []
    created_ts: Nanos
    updated_ts: Nanos
    updated_by: Label = ""  # "seed", "cli", "api", ...

    @property
    def collecting(self) -> bool:
        return self.state == "active"

    @property
    def open_period(self) -> Period | None:
        return self.periods[-1] if self.periods and self.periods[-1].end_ns is None else None


class FeedCommand(Event, frozen=True, kw_only=True, tag="feed_command"):
    """A change of one feed, sent on ``feeds.ctl.<vendor>``."""

    op: FeedOp
    vendor: Vendor
    instrument: Label
    by: Label = ""  # who asks (recorded as Feed.updated_by)


class FeedReply(Event, frozen=True, kw_only=True, tag="feed_reply"):
    """The feed after a :class:`FeedCommand`; ``changed`` False when it already was in that state."""

    feed: Feed
    changed: bool


FEED_TYPES = (Feed, FeedCommand, FeedReply)
