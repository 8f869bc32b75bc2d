"""Feed and service status: ``status.<service>.feed.<source>.<venue>.<symbol>`` and
``status.<service>.heartbeat``; dead letters on ``dlq.<service>.<source>``."""

from __future__ import annotations

from typing import Literal

from .base import Event
from .invariants import Checked, Count, Id, Label, Nanos, Text, Token

# "blocked": the vendor is reachable but what it sends cannot be published (the bus or the stream's
# leader is down); the ingestor back-fills what it missed once publishing works again.
# "subscribed" / "unsubscribed" / "paused": an ingestor applied a change of its feed set (feed
# control, see marketbus.contracts.feeds).
FeedState = Literal["connected", "disconnected", "gap", "resynced", "stale", "blocked",
                    "subscribed", "unsubscribed", "paused"]


class FeedStatus(Event, frozen=True, kw_only=True, tag="feed_status"):
    """A change of a feed's health. ``gap`` carries the missing range; ``resynced`` says the gap
    was back-filled. ``venue``/``symbol`` are ``_`` for a whole session or connection."""

    id: Id
    service: Token
    source: Token
    venue: Token
    symbol: Token
    kind: Token | None = None  # the md kind the status is about, when it is about one
    state: FeedState
    detail: Text | None = None
    gap_start: Nanos | None = None
    gap_end: Nanos | None = None
    ts: Nanos


class FeedHealth(Checked, frozen=True, kw_only=True):
    feed: Label  # e.g. "finx/COINBASE/BTC-USD" or "ws"
    state: FeedState
    events_total: Count = 0
    events_per_s: float = 0.0
    last_event_ts: Nanos | None = None  # ts_recv of the last event


class ServiceHeartbeat(Event, frozen=True, kw_only=True, tag="service_heartbeat"):
    """Published every few seconds by every service; ``marketbus status`` reads these."""

    service: Token
    instance: Label
    state: Literal["starting", "running", "degraded", "stopping"]
    ts: Nanos
    started_ts: Nanos
    feeds: list[FeedHealth] = []
    counters: dict[str, float] = {}
    http_url: Label | None = None


class DeadLetter(Event, frozen=True, kw_only=True, tag="dead_letter"):
    """A payload that could not be processed, kept whole with the reason (nothing is lost)."""

    id: Id
    service: Token
    source: Text  # only bounded: dead-lettering must not fail on what a hostile subject carried
    reason: Text
    payload: bytes  # exactly what was received (base64 in JSON)
    subject: Text | None = None  # where it came from (bus subject or vendor channel/URL)
    ts: Nanos
