"""Feed control, the ingestor's side (see :mod:`marketbus.contracts.feeds`).

One :class:`FeedControl` per ingestor, built in ``build()`` (it registers the ``feeds.ctl.<vendor>``
responder) and started in ``on_start()`` once the vendor's catalog can answer:

    self.feed_control = FeedControl(self, resolve=self._resolve, subscribe=self._subscribe,
                                    unsubscribe=self._unsubscribe)
    ...
    await self.feed_control.start(seed=[Seed("FS:BTCUSD"), ...])

- ``resolve(instrument)`` looks the instrument up in the vendor's catalog: a :class:`Resolved`
  (venue, symbol, kind, name), None when the catalog does not list it (the request is refused
  with ``bad_request``), or raises :class:`CatalogUnavailable` (``unavailable``) or
  :class:`Refused` (its own code and message: e.g. a stream type the ingestor cannot read).
- ``subscribe(feed)`` / ``unsubscribe(feed)`` start and stop collecting one feed; they are called
  by one task, in the order the changes happened (a failed start is tried again every few
  seconds), whenever the active set changes (the KV
  bucket is watched: a change made by any replica, the CLI or an operator's ``nats kv put``
  applies within a second or so). After each one a FeedStatus ``subscribed`` /
  ``unsubscribed`` / ``paused`` is published.
- Seeding: when the bucket holds no seed marker for the vendor, the ``seed`` entries (the env
  settings) are written (never over an existing feed) and the marker set: from then on the
  bucket, not the env, says what is collected. A seeded feed's period opens at once, or, when the
  ingestor said ``set_flowing(False)`` before :meth:`FeedControl.start` (its vendor session is
  not up yet), when its data first flows.
- **Periods follow the data flow**, not only the commands: a command opens (``add``/``resume``)
  or closes (``pause``/``remove``) a period, and besides, an active feed's period is closed when
  no instance of the ingestor collects it (the ingestor stopped, or its vendor session is down:
  the ingestor calls :meth:`FeedControl.set_flowing`) and opened again when one does. Each
  running instance keeps an entry ``{ts, flowing}`` in the vendor's flow record (key
  ``<vendor>._flow``), refreshed every :data:`FLOW_EVERY_S`; an entry older than
  :data:`FLOW_STALE_S` is a dead instance's. A clean stop removes its entry and closes the
  periods (unless another instance still collects); after a crash, the next start closes the
  periods left open at the dead instance's last refresh (so the downtime is no period), then
  opens new ones. A crash and restart within :data:`FLOW_STALE_S` is not seen as a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from faststream.nats import NatsBroker
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from prometheus_client import Counter, Gauge

from marketbus.contracts import codec
from marketbus.contracts import errors as codes
from marketbus.contracts import feeds as contract
from marketbus.contracts.errors import ErrorReply
from marketbus.contracts.feeds import Feed, FeedCommand, FeedReply, Period
from marketbus.contracts.streams import FEEDS, ensure_bucket
from marketbus.runtime.ordered import ordered_subscribe


@dataclass(frozen=True)
class Resolved:
    """What the vendor's catalog says of an instrument."""

    venue: str
    symbol: str
    kind: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class Seed:
    """One instrument of the env settings (``paused``: seeded paused)."""

    instrument: str
    paused: bool = False


class CatalogUnavailable(Exception):
    """The vendor's catalog cannot be read right now."""


class Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


Resolver = Callable[[str], Awaitable[Resolved | None]]
Hook = Callable[[Feed], Awaitable[None]]

CAS_ATTEMPTS = 8
WATCH_POLL_S = 0.5  # a change applies within about this long
WATCH_HEARTBEAT_S = 2.0  # the watch's idle heartbeat: two missed ones and nats-py recreates its consumer
DRAIN_TIMEOUT_S = 10.0  # the current values of a vendor's keys come within this long
WATCH_RETRY_S = 2.0
STARTING_WAIT_S = 5.0  # a request while the ingestor starts waits this long for it
APPLY_RETRY_S = 5.0  # a feed whose start failed is tried again this often
FLOW_EVERY_S = 5.0  # each instance refreshes its entry of the flow record this often
FLOW_STALE_S = 3 * FLOW_EVERY_S  # an entry older than this is a dead instance's
FLOW_MARKER = "_flow"
REJECTED_KEPT = 4096  # records dead-lettered, remembered by revision so that a resync does not repeat them


class FlowEntry(msgspec.Struct, frozen=True):
    """One instance's entry in the flow record: when it last wrote, and whether its data flows."""

    ts: int
    flowing: bool


FlowTable = dict[str, FlowEntry]
_FLOW_DECODER = msgspec.json.Decoder(FlowTable)


def flow_key(vendor: str) -> str:
    """The key of ``vendor``'s flow record (a marker key: never a feed's)."""
    return f"{contract.check_vendor(vendor)}.{FLOW_MARKER}"


def set_period(feed: Feed, open_: bool, now_ns: int, *, close_at: int | None = None) -> Feed | None:
    """``feed`` with its last period opened (at ``now_ns``) or closed (at ``close_at``, else
    ``now_ns``; never before the period's start), or None when it already is so. Only for an
    active feed: the commands decide the periods of the others."""
    if feed.state != "active" or (feed.open_period is not None) == open_:
        return None
    periods = list(feed.periods)
    if open_:
        periods.append(Period(now_ns, None))
    else:
        start = periods[-1].start_ns
        periods[-1] = Period(start, max(start, close_at if close_at is not None else now_ns))
    return msgspec.structs.replace(feed, periods=periods)


def transition(current: Feed | None, op: str, instrument: str, vendor: str, resolved: Resolved | None,
               now_ns: int, by: str) -> tuple[Feed, bool]:
    """The feed after ``op`` (and whether it changed); raises :class:`Refused`. ``resolved`` is
    needed for ``add`` only."""
    key = contract.feed_key(vendor, instrument)
    if op == "add":
        if current is not None and current.state == "active":
            return current, False
        assert resolved is not None
        periods = [*(current.periods if current else ()), Period(now_ns, None)]
        return Feed(key=key, vendor=vendor, instrument=instrument, venue=resolved.venue,  # type: ignore[arg-type]
                    symbol=resolved.symbol, kind=resolved.kind, name=resolved.name, state="active",
                    periods=periods, created_ts=current.created_ts if current else now_ns,
                    updated_ts=now_ns, updated_by=by), True
    if current is None or current.state == "removed":
        if op == "remove" and current is not None:
            return current, False
        raise Refused(codes.NOT_FOUND, f"no feed {vendor} {instrument} (add it first)")
    if op == "resume":
        if current.state == "active":
            return current, False
        return msgspec.structs.replace(current, state="active", periods=[*current.periods, Period(now_ns, None)],
                                       updated_ts=now_ns, updated_by=by), True
    if op in ("pause", "remove"):
        target = "paused" if op == "pause" else "removed"
        if current.state == target:
            return current, False
        periods = list(current.periods)
        if periods and periods[-1].end_ns is None:
            periods[-1] = Period(periods[-1].start_ns, max(now_ns, periods[-1].start_ns))
        return msgspec.structs.replace(current, state=target, periods=periods, updated_ts=now_ns,
                                       updated_by=by), True
    raise Refused(codes.BAD_REQUEST, f"unknown operation {op!r}: one of {', '.join(contract.FEED_OPS)}")


class FeedControl:
    """The desired feed set of one ingestor, from the KV bucket, applied through two hooks."""

    def __init__(self, ingestor: Any, *, resolve: Resolver, subscribe: Hook, unsubscribe: Hook,
                 vendor: str | None = None) -> None:
        self.ing = ingestor
        self.vendor = contract.check_vendor(vendor or ingestor.source)
        self.resolve = resolve
        self._subscribe = subscribe
        self._unsubscribe = unsubscribe
        self.kv: Any = None
        self.feeds: dict[str, Feed] = {}  # key -> latest record (every state)
        self.applied: dict[str, Feed] = {}  # key -> the feed being collected
        self._ready = asyncio.Event()
        self._changed = asyncio.Event()
        self._failed = False
        self.flowing = True  # the vendor session delivers data (set_flowing)
        self.instance: str = getattr(ingestor, "instance", "") or f"{id(self):x}"
        self._started_ns = time.time_ns()
        self._dead_seen_ns: int | None = None  # the last refresh of instances found dead at start
        self._flow_lock = asyncio.Lock()
        self._syncs: set[asyncio.Task[None]] = set()  # set_flowing's background syncs
        self._letters: set[asyncio.Task[None]] = set()  # dead letters of rejected records (not cancelled at stop)
        self._rejected: dict[str, int | None] = {}  # key -> revision of a record dead-lettered
        self._leaving = False
        r = ingestor.metrics.registry
        self.requests = Counter("marketbus_feed_control_requests", "feed-control requests answered",
                                ["source", "op", "outcome"], registry=r)
        self.active_gauge = Gauge("marketbus_feeds_collecting", "feeds being collected", ["source"], registry=r)

        # registered now (FastStream subscribers are declared before the broker starts)
        broker: NatsBroker = ingestor.broker

        @broker.subscriber(contract.control(self.vendor), queue=f"feeds-{self.vendor}", decoder=_raw_body)
        async def on_command(body: bytes) -> bytes:
            return await self.handle(body)

    # --- reads ---------------------------------------------------------------------------------
    def active(self) -> list[Feed]:
        """The feeds being collected, by key."""
        return [self.applied[k] for k in sorted(self.applied)]

    def instruments(self) -> list[str]:
        return [f.instrument for f in self.active()]

    async def wait_ready(self) -> None:
        await self._ready.wait()

    # --- start ---------------------------------------------------------------------------------
    async def start(self, seed: Sequence[Seed] = ()) -> None:
        """Bind the bucket, seed it once from the env settings, then watch it (a task of the
        ingestor) and apply the initial set before returning."""
        self.kv = await ensure_bucket(self.ing.js, FEEDS, self.ing.settings.stream_replicas)
        await self._seed(seed)
        self.feeds = await self._read_all()
        self._changed.set()
        self.ing.spawn(self._apply_forever(), "feeds-apply")
        self.ing.spawn(self._watch(), "feeds-watch")
        await self._ready.wait()
        # first thing (not awaited: the start does not wait for it): the periods a dead
        # predecessor left open close, ours open
        self.ing.spawn(self._flow_forever(), "feeds-flow")

    # --- periods follow the data flow -----------------------------------------------------------
    async def set_flowing(self, flowing: bool) -> None:
        """The vendor session delivers data (True) or not (False): the periods follow (see the
        module doc). Safe to call before :meth:`start` and repeatedly."""
        if flowing == self.flowing:
            return
        self.flowing = flowing
        if self.kv is not None:
            # in the background: the caller is a vendor session connecting (or failing), which
            # must not wait on KV round trips (a connect that waited delayed the gap back-fill;
            # ticks were lost on a loaded host); each sync reads the flag when it runs
            task = asyncio.ensure_future(self._sync_quietly())
            self._syncs.add(task)
            task.add_done_callback(self._syncs.discard)

    async def _sync_quietly(self) -> None:
        with contextlib.suppress(Exception):  # the periodic refresh tries again
            await self.sync_periods()

    async def stop(self) -> None:
        """A clean stop: this instance's flow entry goes, and the periods close (unless another
        instance still collects). Called by the ingestor's ``stop`` while NATS is up."""
        if self.kv is None or self._leaving:
            return
        self._leaving = True
        for task in list(self._syncs):  # the stop's own sync below supersedes them
            task.cancel()
        try:
            await self.sync_periods()
        except Exception as exc:
            self.ing.log.warning("feeds of %s: closing the periods at stop failed: %r", self.vendor, exc)

    async def _flow_forever(self) -> None:
        while True:
            try:
                await self.sync_periods()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.ing.log.warning("feeds of %s: the flow record could not be refreshed: %r", self.vendor, exc)
            await asyncio.sleep(FLOW_EVERY_S)

    async def sync_periods(self) -> None:
        """Refresh this instance's flow entry, then open or close the active feeds' periods."""
        async with self._flow_lock:
            others_flowing = await self._write_flow()
            now = time.time_ns()
            mine = self.flowing and not self._leaving
            for key in sorted(self.feeds):
                feed = self.feeds[key]
                if feed.state != "active":
                    continue
                want = others_flowing or mine
                dead = self._dead_seen_ns
                dangling = feed.open_period is not None and feed.open_period.start_ns < self._started_ns
                if dangling and not others_flowing and dead is not None and dead < self._started_ns:
                    # left open by a dead instance: it ended at its last refresh; ours began at our
                    # start if our data flows (else it opens once it does)
                    await self._update_period(key, False, now, close_at=dead)
                    if want:
                        await self._update_period(key, True, self._started_ns)
                    continue
                await self._update_period(key, want, now)
            self._dead_seen_ns = None

    async def _write_flow(self) -> bool:
        """Write this instance's entry (remove it when leaving), drop dead instances' entries;
        whether another live instance's data flows. Remembers the last refresh of the dead."""
        key = flow_key(self.vendor)
        for _ in range(CAS_ATTEMPTS):
            try:
                entry = await self.kv.get(key)
            except (KeyNotFoundError, NotFoundError):
                entry = None
            table: FlowTable = {}
            if entry is not None and entry.value:
                with contextlib.suppress(msgspec.DecodeError):
                    table = _FLOW_DECODER.decode(entry.value)
            now = time.time_ns()
            # an entry dated beyond the stale bound ahead of now is no live instance either (a clock
            # far off, or a forged entry: it would keep the periods open forever)
            live = {k: e for k, e in table.items()
                    if k != self.instance and abs(now - e.ts) <= FLOW_STALE_S * 1e9}
            dead = [min(e.ts, now) for k, e in table.items() if k != self.instance and k not in live]
            if dead:
                self._dead_seen_ns = max(dead)
            if not self._leaving:
                live[self.instance] = FlowEntry(now, self.flowing)
            try:
                data = msgspec.json.encode(live)
                if entry is None:
                    await self.kv.create(key, data)
                else:
                    await self.kv.update(key, data, last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            return any(e.flowing for k, e in live.items() if k != self.instance)
        raise Refused(codes.CONFLICT, f"the flow record {key} is changing concurrently")

    async def _update_period(self, key: str, open_: bool, now_ns: int, *, close_at: int | None = None) -> None:
        """Open or close the feed's last period in the bucket (compare-and-set, retried); nothing
        to do by the watched copy: no request (the periodic refresh runs over every feed)."""
        cached = self.feeds.get(key)
        if cached is None or set_period(cached, open_, now_ns, close_at=close_at) is None:
            return
        for _ in range(CAS_ATTEMPTS):
            try:
                entry = await self.kv.get(key)
            except (KeyNotFoundError, NotFoundError):
                return
            current = self._decode(entry)
            if current is None:
                return
            feed = set_period(current, open_, now_ns, close_at=close_at)
            if feed is None:
                self.feeds[key] = current
                return
            try:
                await self.kv.update(key, codec.encode(feed), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            self.feeds[key] = feed
            self.ing.log.info("feed %s: period %s (%s)", key, "opened" if open_ else "closed",
                              "stopping" if self._leaving else "data flows" if open_ else "no data flows")
            return

    async def _read_all(self) -> dict[str, Feed]:
        """Every record of the vendor now (a fresh consumer, closed after)."""
        watch = VendorKeys(self.ing.js, self.vendor)
        try:
            await watch.open()
            return {f.key: f for f in (self._decode(e) for e in await watch.drain()) if f is not None}
        finally:
            await watch.close()

    async def _watch(self) -> None:
        """Follow the vendor's keys; after any failure (the bus restarted, the consumer was
        lost) start again from the whole current set, so nothing is missed."""
        while True:
            watch = VendorKeys(self.ing.js, self.vendor)
            try:
                await watch.open()
                fresh: dict[str, Feed] = {}
                for entry in await watch.drain():
                    feed = self._decode(entry)
                    if feed is not None:
                        fresh[feed.key] = feed
                self.feeds = fresh
                self._changed.set()
                while True:
                    for entry in await watch.next_changes():
                        feed = self._decode(entry)
                        if feed is not None:
                            self.feeds[feed.key] = feed
                        elif entry.deleted:  # an operator deleted the key: stop collecting it
                            self.feeds.pop(entry.key, None)
                        else:  # a marker (the flow record, refreshed every few seconds) or unreadable
                            continue
                        self._changed.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.ing.log.warning("watching the feeds of %s failed (%r): again in %.0fs", self.vendor, exc,
                                     WATCH_RETRY_S)
            finally:
                await watch.close()
            await asyncio.sleep(WATCH_RETRY_S)

    async def _seed(self, seed: Sequence[Seed]) -> None:
        marker = contract.seed_key(self.vendor)
        with contextlib.suppress(KeyNotFoundError, NotFoundError):
            await self.kv.get(marker)
            return  # seeded before: the bucket rules
        now = time.time_ns()
        for item in seed:
            try:
                resolved = await self.resolve(item.instrument)
            except CatalogUnavailable as exc:
                raise CatalogUnavailable(f"cannot seed feeds: {exc}") from exc
            except Refused as exc:
                self.ing.log.error("feed seed %s %s refused: %s", self.vendor, item.instrument, exc.message)
                continue
            if resolved is None:
                self.ing.log.error("feed seed %s %s: the vendor's catalog does not list it; not added",
                                   self.vendor, item.instrument)
                continue
            feed, _ = transition(None, "add", item.instrument, self.vendor, resolved, now, "seed")
            if item.paused:
                feed, _ = transition(feed, "pause", item.instrument, self.vendor, None, now, "seed")
            elif not self.flowing:  # the vendor session is not up yet: the period opens when data flows
                feed = msgspec.structs.replace(feed, periods=[])
            with contextlib.suppress(KeyWrongLastSequenceError):
                await self.kv.create(feed.key, codec.encode(feed))
        with contextlib.suppress(KeyWrongLastSequenceError):
            await self.kv.create(marker, msgspec.json.encode({"ts": now, "feeds": [s.instrument for s in seed]}))
        self.ing.log.info("feeds of %s seeded from the settings: %s", self.vendor,
                          ", ".join(s.instrument for s in seed) or "none")

    def _decode(self, entry: Any) -> Feed | None:
        if getattr(entry, "deleted", False) or not entry.value or entry.key.partition(".")[2].startswith("_"):
            return None
        try:
            feed = codec.decode_as(entry.value, Feed)
        except msgspec.DecodeError as exc:
            self._reject(entry, f"undecodable feed record: {exc}")
            return None
        if feed.key != entry.key or feed.vendor != self.vendor:
            self._reject(entry, f"feed record says key {feed.key} vendor {feed.vendor}")
            return None
        return feed  # type: ignore[no-any-return]

    def _reject(self, entry: Any, reason: str) -> None:
        """A record no feed can be made of: ignored, and dead-lettered (counted, logged) once per
        revision (the watch's first read and every resync see it again)."""
        revision = getattr(entry, "revision", None)
        if self._rejected.get(entry.key) == revision:
            return
        if len(self._rejected) >= REJECTED_KEPT:  # bounded: many hostile keys are dead-lettered again
            self._rejected.clear()
        self._rejected[entry.key] = revision
        task = asyncio.ensure_future(self._dead_letter_quietly(reason, bytes(entry.value), entry.key))
        self._letters.add(task)
        task.add_done_callback(self._letters.discard)

    async def _dead_letter_quietly(self, reason: str, value: bytes, key: str) -> None:
        try:
            await self.ing.dead_letter(self.vendor, reason, value, subject=f"$KV.{FEEDS.name}.{key}")
        except Exception as exc:  # the bus is down: the record stays ignored, the log says why
            self.ing.log.error("feed %s: %s (not dead-lettered: %r)", key, reason, exc)

    async def _apply_forever(self) -> None:
        while True:
            # a hook that failed (the vendor down) is tried again a little later
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), APPLY_RETRY_S if self._failed else None)
            self._changed.clear()
            await self.apply()
            self._ready.set()
            if self.kv is not None and not self._leaving:
                with contextlib.suppress(Exception):  # the periodic refresh tries again
                    await self.sync_periods()

    async def apply(self) -> None:
        """Make the collected set the active set of the bucket (unsubscribe first, then subscribe)."""
        wanted = {k: f for k, f in self.feeds.items() if f.state == "active"}
        self._failed = False
        for key in sorted(set(self.applied) - set(wanted)):
            old = self.applied.pop(key)
            latest = self.feeds.get(key)
            state = "paused" if latest is not None and latest.state == "paused" else "unsubscribed"
            try:
                await self._unsubscribe(old)
            except Exception as exc:  # a hook must not stop the others
                self.ing.log.error("feed %s: stopping it failed: %r", key, exc)
            await self._status(old, state)
        for key in sorted(wanted):
            feed = wanted[key]
            if key in self.applied:
                self.applied[key] = feed
                continue
            try:
                await self._subscribe(feed)
            except Exception as exc:
                self.ing.log.error("feed %s: starting it failed (again in %.0fs): %r", key, APPLY_RETRY_S, exc)
                self._failed = True
                continue
            self.applied[key] = feed
            await self._status(feed, "subscribed")
        self.active_gauge.labels(self.vendor).set(len(self.applied))

    async def _status(self, feed: Feed, state: str) -> None:
        """Published under the feed name of the data feed (``<vendor>/<venue>/<symbol>``): a
        paused feed shows ``paused`` in the heartbeats (not ``stale``), a removed one leaves them."""
        with contextlib.suppress(Exception):
            await self.ing.publish_feed_status(self.vendor, state, venue=feed.venue, symbol=feed.symbol,
                                               kind=feed.kind, detail=f"feed {feed.key}")
        if state == "unsubscribed":
            self.ing.feeds.forget(f"{self.vendor}/{feed.venue}/{feed.symbol}")

    # --- the request/reply API -----------------------------------------------------------------
    async def handle(self, body: bytes) -> bytes:
        op = "?"
        try:
            try:
                cmd = codec.decode_as(body, FeedCommand)
            except msgspec.DecodeError as exc:
                await self.ing.dead_letter(self.vendor, f"bad feed command: {exc}", body,
                                           contract.control(self.vendor))
                raise Refused(codes.BAD_REQUEST, f"bad feed command: {exc}") from None
            op = cmd.op
            if cmd.vendor != self.vendor:
                raise Refused(codes.BAD_REQUEST, f"this is the {self.vendor} ingestor, not {cmd.vendor}'s")
            feed, changed = await self.change(cmd.op, cmd.instrument, cmd.by or "api")
        except Refused as exc:
            self.requests.labels(self.vendor, op, exc.code).inc()
            return codec.encode(ErrorReply(code=exc.code, message=exc.message))
        except Exception as exc:
            self.ing.log.error("feed command failed: %r", exc)
            self.requests.labels(self.vendor, op, codes.INTERNAL).inc()
            return codec.encode(ErrorReply(code=codes.INTERNAL, message=f"feed command failed: {exc!r}"[:500]))
        self.requests.labels(self.vendor, op, "ok").inc()
        return codec.encode(FeedReply(feed=feed, changed=changed))

    async def change(self, op: str, instrument: str, by: str) -> tuple[Feed, bool]:
        """Apply ``op`` to the bucket (compare-and-set, retried on a concurrent change)."""
        if self.kv is None:  # starting: wait a little for the bucket (and the catalog) rather than refuse
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), STARTING_WAIT_S)
        if self.kv is None:
            raise Refused(codes.UNAVAILABLE, f"the {self.vendor} ingestor is starting: retry shortly")
        try:
            key = contract.feed_key(self.vendor, instrument)
        except ValueError as exc:
            raise Refused(codes.BAD_REQUEST, str(exc)) from None
        resolved: Resolved | None = None
        for _ in range(CAS_ATTEMPTS):
            try:
                entry = await self.kv.get(key)
            except (KeyNotFoundError, NotFoundError):
                entry = None
            current = self._decode(entry) if entry is not None else None
            if op == "add" and resolved is None and (current is None or current.state != "active"):
                try:
                    resolved = await self.resolve(instrument)
                except CatalogUnavailable as exc:
                    raise Refused(codes.UNAVAILABLE, f"the {self.vendor} catalog is unavailable: {exc}") from None
                if resolved is None:
                    raise Refused(codes.BAD_REQUEST,
                                  f"unknown instrument {instrument!r}: the {self.vendor} catalog does not list it")
            feed, changed = transition(current, op, instrument, self.vendor, resolved, time.time_ns(), by)
            if not changed:
                return feed, False
            try:
                if entry is None:
                    await self.kv.create(key, codec.encode(feed))
                else:
                    await self.kv.update(key, codec.encode(feed), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            self.ing.log.info("feed %s %s by %s", key, op, by)
            return feed, True
        raise Refused(codes.CONFLICT, f"feed {key} is changing concurrently: retry")


@dataclass(frozen=True)
class KeyEntry:
    key: str
    value: bytes
    revision: int
    deleted: bool


class ForeignKey(Exception):
    """The feeds watch received a key that is not its vendor's."""


class VendorKeys:
    """The last value of each key ``<vendor>.>`` of the feeds bucket, then every change: an
    ordered push consumer filtered on those keys, delivered to the ingestor's private inbox.

    Why this shape: the create subject carries the consumer's name and filter
    (``$JS.API.CONSUMER.CREATE.KV_feeds.<name>.$KV.feeds.<vendor>.>``), so the ingestor's rights
    allow its own vendor's keys only (nats-py's ``kv.watch`` creates an unnamed consumer whose
    subject carries no filter); and a push consumer needs no pull (``MSG.NEXT``), consumer info
    or delete right, which would reach any consumer of the bucket by its name, another
    ingestor's watch included. nats-py recreates the consumer after a gap or a reconnect
    (:func:`marketbus.runtime.ordered.ordered_subscribe`, a fresh name each time)."""

    def __init__(self, js: Any, vendor: str, *, poll_s: float = WATCH_POLL_S) -> None:
        self.js = js
        self.vendor = vendor
        self.poll_s = poll_s
        self.prefix = f"$KV.{FEEDS.name}."
        self.stream = f"KV_{FEEDS.name}"
        self.keys = f"{self.prefix}{contract.vendor_filter(vendor)}"
        self.own = self.keys.removesuffix(">")  # "$KV.feeds.<vendor>."
        self.sub: Any = None

    async def open(self) -> None:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, inactive_threshold=60.0)
        # no pending limits: nats-py drops what overflows them (SlowConsumerError, to the error
        # callback only) without resetting the ordered consumer, and the server's flow control
        # does not hold it back in time: a lost feed change would stay lost (the bucket is small)
        self.sub = await ordered_subscribe(self.js, self.keys, stream=self.stream, config=config,
                                           idle_heartbeat=WATCH_HEARTBEAT_S, pending_msgs_limit=-1,
                                           pending_bytes_limit=-1)

    def _entry(self, msg: Any) -> KeyEntry:
        if not msg.subject.startswith(self.own):
            # someone who knew the consumer's name changed its filter (a create by name updates
            # it): stop here; the watch starts again on a fresh consumer
            raise ForeignKey(f"the feeds watch of {self.vendor} got {msg.subject}, not one of its keys")
        op = (msg.headers or {}).get("KV-Operation")
        return KeyEntry(msg.subject[len(self.prefix):], msg.data, msg.metadata.sequence.stream, op in ("DEL", "PURGE"))

    async def _next(self, timeout: float) -> Any:
        try:
            return await self.sub.next_msg(timeout=timeout)
        except (TimeoutError, NatsTimeoutError):
            return None

    async def drain(self) -> list[KeyEntry]:
        """What the bucket holds now for the vendor (the current value of every key): the
        consumer's messages until one says nothing more is pending *and* every key the stream
        listed (read after the consumer was created: each comes, its value then or a newer one)
        has come. ``num_pending`` alone is not enough: while keys are written (this instance's
        flow record and periods, at start-up) a last-per-subject consumer can say 0 before the
        last key's value is delivered, and a feed missing from the initial set would be stopped
        (its quotes unregistered) until its value comes as a "change"."""
        info = await self.js.stream_info(self.stream, subjects_filter=self.keys)
        expected = set(info.state.subjects or ())
        if not expected:  # no key of the vendor: nothing will come
            return []
        out: list[KeyEntry] = []
        seen: set[str] = set()
        while True:
            msg = await self._next(DRAIN_TIMEOUT_S)
            if msg is None:
                missing = sorted(k.removeprefix(self.prefix) for k in expected - seen)
                raise TimeoutError(f"the feeds of {self.vendor}: no value within {DRAIN_TIMEOUT_S:.0f}s"
                                   + (f" (still missing {', '.join(missing)})" if missing else ""))
            out.append(self._entry(msg))
            seen.add(msg.subject)
            if not msg.metadata.num_pending and expected <= seen:
                return out

    async def next_changes(self) -> list[KeyEntry]:
        """The changes that arrive within ``poll_s`` (often none)."""
        msg = await self._next(self.poll_s)
        if msg is None:
            return []
        out = [self._entry(msg)]
        while self.sub.pending_msgs:  # what arrived with it
            msg = await self._next(self.poll_s)
            if msg is None:
                break
            out.append(self._entry(msg))
        return out

    async def close(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
            self.sub = None


async def _raw_body(msg: Any) -> bytes:
    body = msg.body
    return bytes(body) if body is not None else b""
