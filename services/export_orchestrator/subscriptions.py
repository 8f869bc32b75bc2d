"""TickSupply subscriptions over marketbus feeds (``marketbus.clients.feeds``).

A subscription is the feed that collects a datastream: ``create`` adds the feed (the vendor's
ingestor validates the instrument and starts collecting), ``pause``/``resume`` pause and resume
collection, ``delete`` removes the feed (collection stops; the record and its periods stay).
Status: feed ``active`` -> ``active``, ``paused`` -> ``paused``, ``removed`` -> ``deleted``;
``created_at`` is the feed's creation time; the spans are the feed's recorded collection periods.

A subscription is one *generation* of a feed: a feed removed (subscription deleted) and added
again through the API is a new subscription, as with TickSupply: a new id, ``created_at`` the
moment of the new create, and only the periods from its own start on as spans (the deleted one
keeps its id, its spans and status ``deleted``, and stays listed). The start of each later
generation is kept in the export jobs' KV bucket (``subgen.<hash of the feed key>``); a feed
removed and added again outside the API (the CLI) continues its current subscription.

Ids are stable: ``sub_`` + 32 hex of (feed key, kind) for a feed's first subscription, of (feed
key, kind, start) for a later one; ``spn_`` + 32 hex of (subscription, start).
A feed's datastreams: its own kind when it has one, else the kinds stored for its venue/symbol
(``trade`` when none is stored yet).

The vendor instrument a new feed is added with comes from the stored reference data: TickSupply's
datastream id (``attributes["datastream.<stream type>.json"]`` of the ``Instrument``), Sitagri's
quote reference (``vendor_ref``), else the instrument's ``vendor_symbol`` (Digitex's market code,
FinX's pair), else the symbol itself.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable
from typing import Any

import msgspec
from nats.js.errors import KeyNotFoundError, NotFoundError

from marketbus.clients.errors import RequestError
from marketbus.clients.feeds import FeedClient
from marketbus.contracts.feeds import VENDORS, Feed, Period
from marketbus.contracts.subjects import denormalize_symbol
from marketbus.runtime.tsapi import ApiError, iso

from .history_source import HistorySource, StreamKey

STATUS = {"active": "active", "paused": "paused", "removed": "deleted"}
# marketbus kind -> TickSupply stream type (the datastream id of a TickSupply instrument per stream type)
TICKSUPPLY_STREAM_TYPE = {"trade": "trade", "quote": "depth"}

_ERRORS = {"bad_request": 400, "not_found": 404, "conflict": 409}


def _hex(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]


def sub_id(feed: Feed, kind: str) -> str:
    return "sub_" + _hex(feed.key, kind)


GEN_PREFIX = "subgen."


class Generation(msgspec.Struct, frozen=True, array_like=True):
    """A subscription created on a feed whose earlier subscription was deleted: when it was
    created and the start of its first collection period."""

    created_ns: int
    start_ns: int


_GENS = msgspec.json.Decoder(list[Generation])


def new_generation(added: Feed) -> Generation:
    """The generation a re-subscribe starts: ``added`` is the feed as the ``add`` wrote it, and the
    generation starts at that moment (its ``updated_ts``), not at whatever period is last in the
    record: the data flow may open or close periods around the add."""
    return Generation(added.updated_ts, added.updated_ts)


def gen_key(feed: Feed) -> str:
    return GEN_PREFIX + _hex(feed.key)


def api_error(exc: RequestError) -> ApiError:
    status = _ERRORS.get(exc.code, 503)
    headers = {"retry-after": "5"} if status == 503 else None
    return ApiError(status, exc.message, {"reason": exc.code, **exc.details}, headers)


class Subscription:
    """One generation of a feed for one datastream: the feed's periods, clipped to the
    generation's time window ``[gen.start_ns, next_start)`` (from the first period for the first
    generation; open-ended for the current one; ``next_start`` set: this subscription was deleted
    and replaced at that moment).

    The attribution goes by time only, so it holds in any order of events: a period (or the part
    of one) before a re-subscribe belongs to the older generation, after it to the newer one, and
    a period the data flow opens later (the vendor session back, an ingestor restarted) to the
    generation current at its start. A delete closes the open period and a removed feed gets no
    flow periods, so in practice periods do not straddle a re-subscribe; the clip makes sure one
    that does (an operator's edit, a period reconciled after a crash) is never counted twice."""

    def __init__(self, feed: Feed, stream: StreamKey, gen: Generation | None = None,
                 next_start: int | None = None) -> None:
        self.feed = feed
        self.stream = stream
        self.id = sub_id(feed, stream.kind) if gen is None else "sub_" + _hex(feed.key, stream.kind, gen.start_ns)
        self.created_ns = feed.created_ts if gen is None else gen.created_ns
        self.first = None if gen is None else gen.start_ns
        self.next_start = next_start
        self.periods = clip_periods(feed.periods, self.first, next_start)

    @property
    def status(self) -> str:
        return "deleted" if self.next_start is not None else STATUS[self.feed.state]

    def spans(self) -> list[dict[str, Any]]:
        return [{"id": "spn_" + _hex(self.id, p.start_ns), "started_at": iso(p.start_ns),
                 "ended_at": iso(p.end_ns) if p.end_ns is not None else None} for p in self.periods]

    def ranges(self, until_ns: int, start_ns: int = 0, end_ns: int | None = None) -> list[tuple[int, int]]:
        """Collected ``[from, to)`` ranges: the spans, an open one clipped at ``until_ns`` (data
        not collected yet is in none), each clipped to ``[start_ns, end_ns)`` (a request's window).
        What an export of the datastream covers and what its availability lists."""
        hi = until_ns if end_ns is None else min(until_ns, end_ns)
        out = []
        for p in self.periods:
            lo, end = max(p.start_ns, start_ns), hi if p.end_ns is None else min(p.end_ns, hi)
            if end > lo:
                out.append((lo, end))
        return out


def clip_periods(periods: Iterable[Period], lo: int | None, hi: int | None) -> list[Period]:
    """The parts of ``periods`` inside ``[lo, hi)`` (None: unbounded), in order. A period that
    starts inside the window is kept even when empty (a period opened and closed at once); one
    still open at ``hi`` ends there (its generation was replaced then)."""
    out = []
    for p in periods:
        start = p.start_ns if lo is None else max(p.start_ns, lo)
        end = p.end_ns if hi is None or (p.end_ns is not None and p.end_ns <= hi) else hi
        if hi is not None and start >= hi:
            continue
        if end is not None and (end < start or (end == start and p.start_ns < start)):
            continue  # wholly before the window (an empty period is kept only if it starts in it)
        out.append(p if (start, end) == (p.start_ns, p.end_ns) else Period(start, end))
    return out


class Subscriptions:
    def __init__(self, feeds: FeedClient, history: HistorySource, kv: Any = None) -> None:
        self.client = feeds
        self.history = history
        self.kv = kv  # the export jobs' bucket: generation starts (None: one generation per feed)

    async def generations(self, feed: Feed) -> list[Generation]:
        if self.kv is None:
            return []
        try:
            entry = await self.kv.get(gen_key(feed))
        except (KeyNotFoundError, NotFoundError):
            return []
        return [] if not entry.value else _GENS.decode(entry.value)

    async def _add_generation(self, feed: Feed, gen: Generation) -> None:
        if self.kv is None:
            return
        gens = [*(await self.generations(feed)), gen]
        with contextlib.suppress(Exception):  # best effort: without it the feed keeps one subscription
            await self.kv.put(gen_key(feed), msgspec.json.encode(gens))

    async def of_feed(self, feed: Feed, stream: StreamKey) -> list[Subscription]:
        """Every subscription (generation) of ``feed`` for ``stream``, oldest first."""
        gens = await self.generations(feed)
        starts = [g.start_ns for g in gens]
        subs = [Subscription(feed, stream, None, starts[0] if starts else None)]
        for i, g in enumerate(gens):
            subs.append(Subscription(feed, stream, g, starts[i + 1] if i + 1 < len(starts) else None))
        return subs

    async def feeds(self) -> list[Feed]:
        try:
            return await self.client.list(include_removed=True)
        except RequestError as exc:
            if exc.code == "unavailable":  # no feeds bucket: nothing is under feed control
                return []
            raise api_error(exc) from None

    @staticmethod
    def streams_of(feed: Feed, stored: Iterable[StreamKey]) -> list[StreamKey]:
        if feed.kind:
            return [StreamKey(feed.kind, feed.vendor, feed.venue, feed.symbol)]
        kinds = sorted(
            {k.kind for k in stored if (k.source, k.venue, k.symbol) == (feed.vendor, feed.venue, feed.symbol)}
        )
        return [StreamKey(kind, feed.vendor, feed.venue, feed.symbol) for kind in kinds or ["trade"]]

    async def all(self, stored: list[StreamKey]) -> list[Subscription]:
        return [s for f in await self.feeds() for k in self.streams_of(f, stored) for s in await self.of_feed(f, k)]

    async def of_stream(self, stream: StreamKey) -> Subscription | None:
        """The datastream's current subscription (its feed's latest generation), None if the
        datastream was never under feed control."""
        for feed in await self.feeds():
            if (feed.vendor, feed.venue, feed.symbol) == stream[1:] and feed.kind in (None, stream.kind):
                return (await self.of_feed(feed, stream))[-1]
        return None

    async def instrument_of(self, stream: StreamKey) -> str:
        refs = await self.history.instruments(stream.venue)
        ref = refs.get(stream.symbol)
        if ref is not None and ref.get("source") in (None, stream.source):
            attributes = dict(ref.get("attributes") or [])
            stream_type = TICKSUPPLY_STREAM_TYPE.get(stream.kind, stream.kind)
            ds = attributes.get(f"datastream.{stream_type}.json")
            if ds:
                return str(ds)
            if stream.source == "sitagri" and ref.get("vendor_ref"):  # a Sitagri feed is a quote reference
                return str(ref["vendor_ref"])
            if ref.get("vendor_symbol"):
                return str(ref["vendor_symbol"])
        return denormalize_symbol(stream.symbol)

    async def command(self, op: str, feed: Feed) -> Feed:
        try:
            return (await self.client.command(op, feed.vendor, feed.instrument)).feed
        except RequestError as exc:
            raise api_error(exc) from None

    async def create(self, stream: StreamKey) -> Subscription:
        if stream.source not in VENDORS:
            raise ApiError(400, f"{stream.source} datastreams are not collected by a marketbus ingestor",
                           {"field": "datastream_id"})
        existing = await self.of_stream(stream)
        if existing is not None and existing.status != "deleted":
            raise ApiError(409, "A subscription to this datastream already exists", {"id": existing.id})
        instrument = existing.feed.instrument if existing is not None else await self.instrument_of(stream)
        try:
            reply = await self.client.add(stream.source, instrument)
        except RequestError as exc:
            raise api_error(exc) from None
        feed = reply.feed
        if existing is None:
            return Subscription(feed, stream)
        if not reply.changed:  # a concurrent create added it first: that one is the subscription
            raise ApiError(409, "A subscription to this datastream already exists",
                           {"id": (await self.of_feed(feed, stream))[-1].id})
        # the earlier subscription was deleted: this is a new one, from the moment of this add (the
        # record's update time; the add's own period starts then too). Whatever the flow opens or
        # closes around it, the periods after this moment are the new subscription's.
        gen = new_generation(feed)
        await self._add_generation(feed, gen)
        return Subscription(feed, stream, gen)
