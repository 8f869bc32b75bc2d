"""Feed and service status: ``status.<service>.feed.<source>.<venue>.<symbol>`` and
``status.<service>.heartbeat``; dead letters on ``dlq.<service>.<source>``."""

from __future__ import annotations

from typing import Literal

import msgspec

from .base import Event

# "blocked": the vendor is reachable but what it sends cannot be published (the bus or the stream's
# leader is down); the ingestor back-fills what it missed once publishing works again.
FeedState = Literal["connected", "disconnected", "gap", "resynced", "stale", "blocked"]


class FeedStatus(Event, frozen=True, kw_only=True, tag="feed_status"):
    """A change of a feed's health. ``gap`` carries the missing range; ``resynced`` says the gap
    was back-filled. ``venue``/``symbol`` are ``_`` for a whole session or connection."""

    id: str
    service: str
    source: str
    venue: str
    symbol: str
    kind: str | None = None  # the md kind the status is about, when it is about one
    state: FeedState
    detail: str | None = None
    gap_start: int | None = None  # ns
    gap_end: int | None = None  # ns
    ts: int  # ns


class FeedHealth(msgspec.Struct, frozen=True, kw_only=True):
    feed: str  # e.g. "finx/COINBASE/BTC-USD" or "ws"
    state: FeedState
    events_total: int = 0
    events_per_s: float = 0.0
    last_event_ts: int | None = None  # ns, ts_recv of the last event


class ServiceHeartbeat(Event, frozen=True, kw_only=True, tag="service_heartbeat"):
    """Published every few seconds by every service; ``marketbus status`` reads these."""

    service: str
    instance: str
    state: Literal["starting", "running", "degraded", "stopping"]
    ts: int
    started_ts: int
    feeds: list[FeedHealth] = []
    counters: dict[str, float] = {}
    http_url: str | None = None


class DeadLetter(Event, frozen=True, kw_only=True, tag="dead_letter"):
    """A payload that could not be processed, kept whole with the reason (nothing is lost)."""

    id: str
    service: str
    source: str
    reason: str
    payload: bytes  # exactly what was received (base64 in JSON)
    subject: str | None = None  # where it came from (bus subject or vendor channel/URL)
    ts: int
