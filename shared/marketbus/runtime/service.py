"""The service skeleton every marketbus service uses.

A service owns a FastStream ``NatsBroker`` (its subscribers are FastStream handlers), the raw
nats-py connection of that broker for hot paths, a pipelined JetStream publisher, a
``/healthz`` + ``/metrics`` HTTP server, a heartbeat on ``status.<service>.heartbeat``, feed
status events, and dead-lettering. ``python -m services.<name>`` calls :meth:`Service.main`.

No zombies: a service that cannot do its job says so, and one that can no longer do it exits.

- ``/healthz`` answers 503 while NATS is disconnected or any *health problem* is recorded. A
  service records one with :meth:`Service.unhealthy` (``self.unhealthy("store", "PostgreSQL
  unreachable")``) and clears it with :meth:`Service.healthy` (``self.healthy("store")``); or it
  overrides :meth:`Service.health_problems` to compute them. Problems are listed in /healthz
  (``problems``) and make the heartbeat's state ``degraded``.
- A loop started with :meth:`Service.spawn` that crashes stops the service with exit code 1
  (logged once, with its traceback): its supervisor (``marketbus up``, compose's restart policy,
  Kubernetes) starts a fresh process, which resumes from persisted state. Loops handle the
  failures they expect themselves; a crash is a bug or a state the process cannot repair.
- A NATS connection the server closes for good (nats-py gives up: e.g. "maximum control line
  exceeded", an authorization error) stops the service with exit code 1 the same way. Ordinary
  disconnects are reconnected by nats-py, logged one line per state change.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Coroutine
from typing import Any, ClassVar, Literal, get_args

import msgspec
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from marketbus.contracts import codec, subjects
from marketbus.contracts.base import NO_VENUE
from marketbus.contracts.ids import event_id
from marketbus.contracts.status import DeadLetter, FeedHealth, FeedState, FeedStatus, ServiceHeartbeat
from marketbus.contracts.streams import wait_provisioned

from .broker import BusSettings, ConnectionWatch, make_broker
from .http import AsgiServer
from .logging import register_secret, setup_logging
from .loop import run as run_loop
from .metrics import ServiceMetrics
from .publisher import JetStreamPublisher
from .pull import fit_for_dead_letter
from .settings import Secret, SettingsError, load_settings
from .tasks import cancel_and_wait


class ServiceSettings(BusSettings, kw_only=True):
    http_host: str = "127.0.0.1"
    http_port: int = 0  # /healthz and /metrics; 0 = any free port (printed at start-up)
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    heartbeat_interval_s: float = 5.0
    publish_retry_s: float = 60.0  # a publish failing for a transient reason is retried this long
    instance: str = ""  # defaults to <hostname>-<pid>


STALE_AFTER_NS = 60 * 1_000_000_000
FEED_STATES: frozenset[str] = frozenset(get_args(FeedState))


class _Feed:
    __slots__ = ("_mark_time", "_mark_total", "last_ts", "rate", "state", "total")

    def __init__(self) -> None:
        self.state: FeedState | None = None  # unknown until first reported
        self.total = 0
        self.last_ts: int | None = None
        self.rate = 0.0
        self._mark_total = 0
        self._mark_time = time.monotonic()

    def roll(self, now: float) -> None:
        elapsed = now - self._mark_time
        if elapsed > 0:
            self.rate = (self.total - self._mark_total) / elapsed
        self._mark_total, self._mark_time = self.total, now


class FeedTracker:
    """Per-feed state and counters, reported in heartbeats and the status table."""

    def __init__(self) -> None:
        self.feeds: dict[str, _Feed] = {}

    def _feed(self, name: str) -> _Feed:
        feed = self.feeds.get(name)
        if feed is None:
            feed = self.feeds[name] = _Feed()
        return feed

    def count(self, name: str, n: int = 1, ts_recv: int | None = None) -> None:
        feed = self._feed(name)
        feed.total += n
        feed.last_ts = ts_recv if ts_recv is not None else time.time_ns()

    def set_state(self, name: str, state: FeedState) -> bool:
        """Returns True when the state changed."""
        feed = self._feed(name)
        changed = feed.state != state
        feed.state = state
        return changed

    def state(self, name: str) -> FeedState | None:
        feed = self.feeds.get(name)
        return feed.state if feed else None

    def forget(self, name: str) -> None:
        """A feed no longer collected (feed control removed it): out of the heartbeats."""
        self.feeds.pop(name, None)

    def snapshot(self) -> list[FeedHealth]:
        now = time.monotonic()
        out = []
        for name, feed in sorted(self.feeds.items()):
            feed.roll(now)
            state = feed.state
            if state is None or state == "subscribed":  # a data feed without a state of its own: live while events flow
                fresh = feed.last_ts is not None and time.time_ns() - feed.last_ts < STALE_AFTER_NS
                state = "connected" if fresh else "stale"
            out.append(FeedHealth(feed=name, state=state, events_total=feed.total,
                                  events_per_s=round(feed.rate, 1), last_event_ts=feed.last_ts))
        return out


class Service:
    """Base class: subclasses set ``name`` and ``settings_cls`` and override the hooks."""

    name: ClassVar[str] = "service"
    settings_cls: ClassVar[type[ServiceSettings]] = ServiceSettings
    metrics_cls: ClassVar[type[ServiceMetrics]] = ServiceMetrics

    def __init__(self, settings: ServiceSettings | None = None, **overrides: Any) -> None:
        self.settings = settings if settings is not None else load_settings(self.settings_cls, **overrides)
        for value in msgspec.structs.asdict(self.settings).values():
            if isinstance(value, Secret):
                register_secret(value.get())
        self.instance = self.settings.instance or f"{socket.gethostname()}-{os.getpid()}-{id(self) % 10000}"
        self.log = logging.getLogger(f"marketbus.{self.name}")
        self.connection = ConnectionWatch(self.log, on_closed=self._connection_closed)
        self.broker = make_broker(self.settings, f"marketbus-{self.name}", watch=self.connection)
        self.metrics = self.metrics_cls(self.name)
        self.feeds = FeedTracker()
        self.publisher: JetStreamPublisher | None = None
        self.http: AsgiServer | None = None
        self.started_ts = time.time_ns()
        self.state: Literal["starting", "running", "degraded", "stopping"] = "starting"
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = asyncio.Event()
        self._problems: dict[str, str] = {}
        self.exit_code = 0  # what main() exits with: 1 after a crashed loop or a closed connection
        self.setup()

    # --- hooks --------------------------------------------------------------------------------
    def setup(self) -> None:
        """Register FastStream subscribers on ``self.broker`` (called from __init__)."""

    async def on_start(self) -> None:
        """After the broker, streams and publisher are up: start loops with :meth:`spawn`."""

    async def on_stop(self) -> None:
        """First thing when stopping, while the loops still run (e.g. ask them to finish); the
        loops are cancelled after it. Close clients the loops use in an override of stop()
        after ``await super().stop()``."""

    def health(self) -> dict[str, Any]:
        """Extra health details (merged into /healthz)."""
        return {}

    def health_problems(self) -> list[str]:
        """Why the service cannot do its job right now (empty: healthy). The default lists NATS
        being disconnected and what :meth:`unhealthy` recorded; override to add computed ones
        (call ``super()``)."""
        problems = [] if self.nats_connected else ["NATS disconnected"]
        return problems + [f"{key}: {reason}" for key, reason in self._problems.items()]

    # --- health API ---------------------------------------------------------------------------
    def unhealthy(self, key: str, reason: str) -> None:
        """Record that the service cannot do its job because of ``key`` (e.g. "store"): /healthz
        answers 503 and lists ``reason`` until :meth:`healthy` is called with the same key.
        Logged once per change."""
        if self._problems.get(key) != reason:
            self.log.warning("unhealthy: %s: %s", key, reason)
        self._problems[key] = reason

    def healthy(self, key: str) -> None:
        """``key``'s problem is over (no-op when none was recorded)."""
        if self._problems.pop(key, None) is not None:
            self.log.info("healthy again: %s", key)

    @property
    def nats_connected(self) -> bool:
        return bool(self.broker.connection and self.nc.is_connected)

    def fail(self, reason: str) -> None:
        """Stop the service with exit code 1 (its supervisor restarts it): for a state the
        process cannot repair. In-process (tests), the service stays up, unhealthy."""
        self.unhealthy("failed", reason)
        self.exit_code = 1
        self._stopping.set()

    def extra_routes(self) -> list[Route]:
        """Extra HTTP routes served next to /healthz and /metrics."""
        return []

    # --- plumbing -----------------------------------------------------------------------------
    @property
    def nc(self) -> NatsClient:
        return self.broker.connection

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream()

    @property
    def http_url(self) -> str | None:
        return self.http.url if self.http else None

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run a background loop. A crash (an exception out of it) is logged with its traceback
        and stops the service with exit code 1 (see :meth:`fail`): a loop must handle the
        failures it expects (a vendor or the bus being down) itself."""
        task = asyncio.create_task(coro, name=f"{self.name}:{name}")

        def done(t: asyncio.Task[Any]) -> None:
            if t.cancelled() or self._stopping.is_set():
                return
            exc = t.exception()
            if exc is not None:
                self.log.error("task %s crashed: %r; stopping (exit code 1) for a restart", name, exc, exc_info=exc)
                self.fail(f"task {name} crashed: {exc!r}")

        task.add_done_callback(done)
        self._tasks.append(task)
        return task

    async def start(self) -> Service:
        await self.broker.connect()
        # provisioning (`marketbus provision`) creates the streams; a service only waits for them
        from marketbus.security.identities import streams_needed

        await wait_provisioned(self.js, streams_needed(self.name))
        self.publisher = await JetStreamPublisher(
            self.nc, latency_histogram=self.metrics.publish_latency.labels(self.name),
            retry_for_s=self.settings.publish_retry_s,
        ).start()
        await self.broker.start()
        self.http = AsgiServer(self._http_app(), self.settings.http_host, self.settings.http_port, lifespan="off")
        await self.http.start()
        await self.on_start()
        self.state = "running"
        # what start-up made (modules, settings, clients) lives as long as the process: out of the
        # collector's reach, a full collection does not walk it (pauses of tens of ms otherwise)
        gc.freeze()
        self.spawn(self._heartbeat_loop(), "heartbeat")
        self.log.info(
            "%s started (health %s/healthz)", self.name, self.http.url, extra={"settings": self.settings.redacted()}
        )
        return self

    async def stop(self) -> None:
        self.state = "stopping"
        self._stopping.set()
        with contextlib.suppress(Exception):
            await self.on_stop()
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        if self.publisher is not None:
            with contextlib.suppress(Exception):
                await self.publisher.close()
        with contextlib.suppress(Exception):
            await self.broker.stop()
        if self.http is not None:
            await self.http.stop()
        gc.unfreeze()  # collectable again: what the process frees after this is really freed

    async def __aenter__(self) -> Service:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run(self) -> int:
        """Start, serve until SIGINT/SIGTERM/SIGHUP or :meth:`fail`, stop; returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self._stopping.set)
        await self.start()
        await self._stopping.wait()
        await self.stop()
        return self.exit_code

    @classmethod
    def main(cls) -> None:
        try:
            settings = load_settings(cls.settings_cls)
        except SettingsError as exc:
            print(f"{cls.name}: configuration error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        setup_logging(settings.log_level, settings.log_format)
        raise SystemExit(run_loop(cls(settings).run()))

    async def _connection_closed(self, reason: str) -> None:
        if self._stopping.is_set() or self.state == "stopping":
            return
        with contextlib.suppress(Exception):
            last = self.nc.last_error  # the server's -ERR, when it sent one, says more than the socket
            if last is not None and str(last) not in reason:
                reason = f"{last}; {reason}"
        self.log.error("the NATS connection is closed for good (%s); stopping (exit code 1) for a restart", reason)
        self.fail(f"NATS connection closed: {reason}")

    # --- status, heartbeat, dead letters ---------------------------------------------------
    async def publish_feed_status(
        self, source: str, state: FeedState, *, venue: str = NO_VENUE, symbol: str = NO_VENUE,
        kind: str | None = None, detail: str | None = None, gap: tuple[int, int] | None = None,
        feed: str | None = None,
    ) -> None:
        """Record a feed state and publish a :class:`FeedStatus` (gap/resynced always, other
        states only when they change)."""
        if state not in FEED_STATES:  # msgspec checks types when decoding, not when encoding
            raise ValueError(f"feed state {state!r} is not one of {sorted(FEED_STATES)}")
        feed_name = feed or f"{source}/{venue}/{symbol}"
        changed = self.feeds.set_state(feed_name, state)
        if not changed and state not in ("gap", "resynced"):
            return
        ts = time.time_ns()
        status = FeedStatus(
            id=event_id(self.name, "feed_status", source, venue, symbol, kind, state, ts),
            service=self.name, source=source, venue=venue, symbol=symbol, kind=kind, state=state,
            detail=detail, gap_start=gap[0] if gap else None, gap_end=gap[1] if gap else None, ts=ts,
        )
        assert self.publisher is not None
        await self.publisher.publish_event(status, subjects.feed_status(self.name, source, venue, symbol))
        self.log.info("feed %s %s%s", feed_name, state, f": {detail}" if detail else "")

    async def dead_letter(self, source: str, reason: str, payload: bytes | str, subject: str | None = None) -> None:
        """Keep a payload we could not process, with the reason: counted, logged, stored."""
        raw = payload.encode() if isinstance(payload, str) else payload
        ts = time.time_ns()
        # a payload near the server's max payload would make a letter too big to publish (base64 in
        # JSON): it is cut and the reason says so (the id is the whole payload's)
        kept, reason = fit_for_dead_letter(raw, reason, self.nc.max_payload or 1 << 20)
        letter = DeadLetter(
            id=event_id(self.name, "dead_letter", source, subject, raw), service=self.name, source=source,
            reason=reason, payload=kept, subject=subject, ts=ts,
        )
        self.metrics.dead_letters.labels(self.name, source, reason.split(":")[0][:60]).inc()
        self.log.warning("dead-lettered a %d-byte payload from %s: %s", len(raw), subject or source, reason)
        assert self.publisher is not None
        await self.publisher.publish_event(letter, subjects.dead_letter(self.name, source))

    @property
    def reported_state(self) -> Literal["starting", "running", "degraded", "stopping"]:
        """The lifecycle state, ``degraded`` while running with health problems."""
        if self.state in ("running", "degraded") and self.health_problems():
            return "degraded"
        return "running" if self.state == "degraded" else self.state

    def heartbeat(self) -> ServiceHeartbeat:
        return ServiceHeartbeat(
            service=self.name, instance=self.instance, state=self.reported_state, ts=time.time_ns(),
            started_ts=self.started_ts, feeds=self.feeds.snapshot(), http_url=self.http_url,
        )

    async def _heartbeat_loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.nc.publish(subjects.heartbeat(self.name), codec.encode(self.heartbeat()))
            await asyncio.sleep(self.settings.heartbeat_interval_s)

    # --- HTTP -----------------------------------------------------------------------------------
    def _http_app(self) -> Starlette:
        async def healthz(_: Request) -> Response:
            problems = self.health_problems()
            state = self.reported_state
            body = {
                "service": self.name, "instance": self.instance, "state": state,
                "nats_connected": self.nats_connected, "problems": problems,
                "feeds": [msgspec.structs.asdict(f) for f in self.feeds.snapshot()],
                **self.health(),
            }
            ok = not problems and state in ("running", "starting")
            return JSONResponse(body, status_code=200 if ok else 503)

        async def metrics(_: Request) -> Response:
            return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

        return Starlette(routes=[Route("/healthz", healthz), Route("/metrics", metrics), *self.extra_routes()])
