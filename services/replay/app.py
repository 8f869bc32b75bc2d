"""The replay service: history played back onto the bus (or over HTTP) by sessions.

Run: ``python -m services.replay``. Requests on ``history.replay.start`` (queue group) and
``history.replay.<session>.control``; ``GET /replay`` (NDJSON) and ``/replay/ws`` (WebSocket) on
its HTTP port. The protocol is in ``marketbus.contracts.replay``, the client in
``marketbus.clients.playback``; sessions in session.py, the wire format in wire.py, where the
events come from in source.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any, ClassVar

import msgspec
from prometheus_client import Counter, Gauge

from marketbus.clients import RequestError
from marketbus.clients.selectors import check_kind
from marketbus.contracts import codec, subjects
from marketbus.contracts import errors as codes
from marketbus.contracts.errors import ErrorReply
from marketbus.contracts.replay import PlaybackControl, PlaybackSession, PlaybackStart, PlaybackStatus, parse_speed
from marketbus.history.reader import MAX_NS
from marketbus.runtime.metrics import ServiceMetrics
from marketbus.runtime.service import Service
from marketbus.vendor.timeparse import ns_iso

from .refusal import Refused
from .session import Session, SessionError
from .settings import ReplaySettings
from .source import EventSource, HistorySource, open_table_source
from .wire import NatsSink, Sink


class ReplayMetrics(ServiceMetrics):
    def __init__(self, service: str, registry: Any = None) -> None:
        super().__init__(service, registry)
        r = self.registry
        self.sessions = Gauge("marketbus_replay_sessions", "sessions running", registry=r)
        self.started = Counter("marketbus_replay_sessions_started", "sessions started", ["via"], registry=r)
        self.refused = Counter("marketbus_replay_refused", "start requests refused", ["code"], registry=r)
        self.events = Counter("marketbus_replay_events", "events sent by ended sessions", registry=r)
        self.control_refused = Counter("marketbus_replay_control_refused",
                                       "control requests refused (no or a wrong control token)", ["reason"],
                                       registry=r)


class ReplayService(Service):
    name: ClassVar[str] = "replay"
    settings_cls: ClassVar[type[ReplaySettings]] = ReplaySettings
    metrics_cls = ReplayMetrics
    settings: ReplaySettings
    metrics: ReplayMetrics

    def setup(self) -> None:
        self.sessions: dict[str, Session] = {}
        self._control_subs: dict[str, Any] = {}
        self.source: EventSource | None = None  # set at start (tests and the integrator may swap it)
        self._opening = 0  # start requests being checked: they hold a slot of the limit
        self._sent_by_ended = 0
        self._unsubscribing: set[asyncio.Task[None]] = set()  # held so they are not collected mid-flight

    async def on_start(self) -> None:
        s = self.settings
        if self.source is None:
            self.source = await self._open_source(self.nc)
        self._start_sub = await self.nc.subscribe(subjects.PLAYBACK_START, queue=s.queue, cb=self._on_start_request)

    async def _open_source(self, nc: Any) -> EventSource:
        """The history tables when configured or reachable (see ``ReplaySettings.history_read``),
        else the history writer's query over NATS."""
        s = self.settings
        nats_source = HistorySource(nc, timeout=s.history_timeout_s, page_rows=s.page_rows,
                                    chunk_rows=s.chunk_rows)
        if s.history_read == "nats" or (s.history_read == "auto" and s.history_backend != "iceberg"):
            self.log.info("history read over NATS (history.query)")
            return nats_source
        try:
            source = await asyncio.to_thread(open_table_source, str(s.history_path), chunk_rows=s.chunk_rows)
        except Exception as exc:
            if s.history_read == "tables":
                raise
            self.log.warning("history tables not reachable (%r): history read over NATS", exc)
            return nats_source
        self.log.info("history read from the history tables (%s)", s.history_path)
        return source

    async def on_stop(self) -> None:
        for session in list(self.sessions.values()):
            session.cancel("the replay service is stopping")
        waits = [s.wait() for s in list(self.sessions.values())]
        if waits:
            await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 15.0)
        with contextlib.suppress(Exception):
            await self._start_sub.unsubscribe()

    def health(self) -> dict[str, Any]:
        return {"sessions": {sid: msgspec.structs.asdict(s.status()) for sid, s in self.sessions.items()}}

    def heartbeat(self):
        hb = super().heartbeat()
        sent = self._sent_by_ended + sum(s.sent for s in self.sessions.values())
        return msgspec.structs.replace(hb, counters={"sessions": float(len(self.sessions)), "events_sent": float(sent)})

    def extra_routes(self) -> list[Any]:
        from .web import routes

        return routes(self)

    # --- sessions ---------------------------------------------------------------------------------
    async def open_session(self, request: PlaybackStart, sink_for: Any, via: str) -> Session:
        """Check ``request``, then create and start its session (``sink_for(prefix)`` makes the sink);
        raises :class:`Refused`."""
        try:
            speed = parse_speed(request.speed)
            for name, ns in (("start", request.start_ns), ("end", request.end_ns)):
                if not 0 <= ns <= MAX_NS:  # the history's range (Nanos); beyond it the query failed as internal
                    raise ValueError(f"the {name} ({ns}) must be int ns in [0, {MAX_NS}] (1970..2262)")
            if request.end_ns <= request.start_ns:
                raise ValueError(f"the end ({request.end_ns}) must be after the start ({request.start_ns})")
            check_kind(request.selector.kind)
            if request.reference is not None:
                check_kind(request.reference.kind)
            if request.prefix is not None:
                subjects.check_playback_prefix(request.prefix, tuple(self.settings.reserved_names))
        except ValueError as exc:
            raise self._refuse(codes.BAD_REQUEST, str(exc)) from None
        if len(self.sessions) + self._opening >= self.settings.max_sessions:
            raise self._refuse(codes.OVERLOADED, f"session limit reached ({self.settings.max_sessions} running); "
                                                 "retry when one has ended")
        self._opening += 1
        try:
            return await self._open(request, speed, sink_for, via)
        finally:
            self._opening -= 1

    async def _open(self, request: PlaybackStart, speed: float, sink_for: Any, via: str) -> Session:
        session_id = f"s{secrets.token_hex(6)}"
        prefix = request.prefix or subjects.playback_prefix(session_id)
        if any(s.prefix == prefix for s in self.sessions.values()):
            raise self._refuse(codes.CONFLICT, f"prefix {prefix} is used by a running session")
        assert self.source is not None
        try:
            expected = await self.source.count(request.selector, request.start_ns, request.end_ns)
            if request.reference is not None:
                expected += await self.source.count(request.reference, request.start_ns, request.end_ns)
        except RequestError as exc:
            raise self._refuse(codes.UNAVAILABLE, f"history is not available: {exc.message}") from None
        if expected == 0:
            sel = request.selector
            raise self._refuse(
                codes.NOT_FOUND,
                f"no stored events for {sel.kind}.{sel.source}.{sel.venue}.{sel.symbol} "
                f"in [{ns_iso(request.start_ns, None)}, {ns_iso(request.end_ns, None)})",
            )
        sink: Sink = sink_for(prefix)
        s = self.settings
        session = Session(session_id, request, speed=speed, prefix=prefix, sink=sink, source=self.source,
                          expected=expected, burst_s=s.burst_ms / 1000, hold_timeout_s=s.hold_timeout_s,
                          status_interval_s=s.status_interval_s, publish_status=self._publish_status,
                          on_end=self._ended)

        async def on_control(msg: Any) -> None:
            await self._on_control(session, msg)

        self._control_subs[session_id] = await self.nc.subscribe(subjects.playback_control(session_id), cb=on_control)
        self.sessions[session_id] = session
        self.metrics.sessions.set(len(self.sessions))
        self.metrics.started.labels(via).inc()
        session.start()
        self.log.info("session %s: %s [%d, %d) at %s to %s (%d events)", session_id, request.selector,
                      request.start_ns, request.end_ns, request.speed, prefix, expected)
        return session

    def _refuse(self, code: str, message: str) -> Refused:
        self.metrics.refused.labels(code).inc()
        self.log.info("start refused (%s): %s", code, message)
        return Refused(code, message)

    def _ended(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        sub = self._control_subs.pop(session.id, None)
        if sub is not None:
            task = asyncio.ensure_future(_unsubscribe(sub))
            self._unsubscribing.add(task)
            task.add_done_callback(self._unsubscribing.discard)
        self.metrics.sessions.set(len(self.sessions))
        self.metrics.events.inc(session.sent)
        self._sent_by_ended += session.sent

    async def _publish_status(self, status: PlaybackStatus) -> None:
        await self.nc.publish(subjects.playback_status(status.session), codec.encode(status),
                              headers=codec.headers_for(status))

    # --- NATS requests ----------------------------------------------------------------------------
    async def _on_start_request(self, msg: Any) -> None:
        try:
            request = codec.decode_as(msg.data, PlaybackStart, codec.schema_version_of(msg.headers))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self.dead_letter("playback", f"undecodable start request: {exc}", msg.data, msg.subject)
            await _respond(msg, ErrorReply(code=codes.BAD_REQUEST, message=f"undecodable start request: {exc}"))
            return
        try:
            session = await self.open_session(request, lambda prefix: NatsSink(self.nc, prefix), "nats")
        except Refused as exc:
            await _respond(msg, exc.reply())
            return
        except Exception as exc:
            self.log.exception("start request failed")
            await _respond(msg, ErrorReply(code=codes.INTERNAL, message=f"start failed: {exc!r}"))
            return
        await _respond(msg, session_reply(session))

    async def _on_control(self, session: Session, msg: Any) -> None:
        try:
            control = codec.decode_as(msg.data, PlaybackControl)
            refusal = self._check_token(session, control.token)
            reply: Any = refusal if refusal is not None else session.control(control.action)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self.dead_letter("playback", f"undecodable control request: {exc}", msg.data, msg.subject)
            reply = ErrorReply(code=codes.BAD_REQUEST, message=f"undecodable control request: {exc}")
        except SessionError as exc:
            reply = ErrorReply(code=exc.code, message=str(exc))
        await _respond(msg, reply)

    def _check_token(self, session: Session, token: str) -> ErrorReply | None:
        """None when ``token`` is the session's control token, else the refusal (counted, logged
        without any token: session ids are public, so the token is what proves the starter)."""
        if token and secrets.compare_digest(token.encode(), session.control_token.encode()):
            return None
        reason = "missing_token" if not token else "wrong_token"
        self.metrics.control_refused.labels(reason).inc()
        self.log.warning("session %s: control refused (%s)", session.id, reason.replace("_", " "))
        what = "carries no control token" if not token else "carries a wrong control token"
        return ErrorReply(code=codes.FORBIDDEN,
                          message=f"control of session {session.id} refused: the request {what} (the start "
                                  "reply gave it to the starter: PlaybackSession.control_token; `marketbus "
                                  "replay start` prints it)",
                          details={"reason": reason})


def session_reply(session: Session) -> PlaybackSession:
    r = session.request
    return PlaybackSession(
        session=session.id, prefix=session.prefix, status_subject=subjects.playback_status(session.id),
        control_subject=subjects.playback_control(session.id), speed=r.speed, start_ns=r.start_ns, end_ns=r.end_ns,
        expected=session.expected, state=session.state, control_token=session.control_token,
    )


async def _respond(msg: Any, reply: Any) -> None:
    if msg.reply:
        await msg.respond(codec.encode(reply))


async def _unsubscribe(sub: Any) -> None:
    with contextlib.suppress(Exception):
        await sub.unsubscribe()
