"""The client half of history playback (the replay service): start sessions, control them,
follow their progress, receive their events.

Not the ingestors' vendor replay (``replay.<source>``, :class:`marketbus.clients.ReplayClient`):
this plays stored history back onto the bus under a prefix of its own. Protocol and subjects:
``marketbus.contracts.replay``.

    playback = PlaybackClient(nc)
    async for msg in playback.play("trade.digitex.*.*", start_ns, end_ns, speed="10x"):
        trade = codec.decode(msg.data)          # msg.subject: replay.<session>.md.trade.digitex...

    session = await playback.start("trade.*.*.*", start_ns, end_ns, speed="max", prefix="replay.bt1")
    async for status in playback.follow(session):   # PlaybackStatus until the session ends
        print(status.sent, status.expected, status.lag_p99_ms)

A consumer written for the live bus runs unchanged on a playback when it subscribes to
``subjects.playback_filter(prefix, "md.trade.>")`` instead of ``md.trade.>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import msgspec

from marketbus.contracts import codec, subjects
from marketbus.contracts import errors as codes
from marketbus.contracts.replay import (
    ENDED_STATES,
    PlaybackControl,
    PlaybackEnd,
    PlaybackSession,
    PlaybackStart,
    PlaybackStatus,
    parse_speed,
)

from .errors import RequestError, decode_reply, request
from .history import Selectorish, to_selector

SERVER = "replay service"
TOKEN_ENV = "MARKETBUS_PLAYBACK_TOKEN"  # a session's control token, for a control from another process


class PlaybackClient:
    """Playback sessions over one NATS connection. ``timeout`` bounds each request (a start
    request counts the stored events first, so it is longer than most)."""

    def __init__(self, nc: Any, *, timeout: float = 30.0) -> None:
        self.nc = nc
        self.timeout = timeout
        # session id -> control token of the sessions this client started: controls carry it
        # without the caller seeing it (the replay service refuses a control without it)
        self._tokens: dict[str, str] = {}

    async def start(self, selector: Selectorish, start_ns: int, end_ns: int, *, speed: str = "1x",
                    prefix: str | None = None, reference: Selectorish | None = None,
                    hold: bool = False) -> PlaybackSession:
        """Start a session; RequestError when refused (``bad_request``, ``not_found``: nothing
        stored in the range, ``overloaded``: session limit, ``conflict``: prefix in use) or when
        no replay service runs (``no_responders``). Bad arguments raise ValueError first."""
        req = make_start(selector, start_ns, end_ns, speed=speed, prefix=prefix, reference=reference, hold=hold)
        data = await request(self.nc, subjects.PLAYBACK_START, codec.encode(req), timeout=self.timeout, what=SERVER,
                             headers=codec.headers_for(req))
        session = decode_reply(data, PlaybackSession)
        if session.control_token:
            self._tokens[session.session] = session.control_token
        return session

    async def control(self, session: str, action: str, *, token: str | None = None) -> PlaybackStatus:
        """pause | resume | cancel | status -> the session's status after it (``no_responders``
        once the session has ended and cleaned up). The control token is the one of the start
        reply when this client started the session, else ``token``, else the environment's
        ``MARKETBUS_PLAYBACK_TOKEN``; without the right one the service refuses (``forbidden``,
        ``details["reason"]``: ``missing_token`` or ``wrong_token``)."""
        if token is None:
            token = self._tokens.get(session) or os.environ.get(TOKEN_ENV, "")
        msg = PlaybackControl(action=action, token=token)  # type: ignore[arg-type]  # checked by the server
        data = await request(self.nc, subjects.playback_control(session), codec.encode(msg), timeout=self.timeout,
                             what=f"{SERVER} session {session}")
        return decode_reply(data, PlaybackStatus)

    async def pause(self, session: str) -> PlaybackStatus:
        return await self.control(session, "pause")

    async def resume(self, session: str) -> PlaybackStatus:
        return await self.control(session, "resume")

    async def cancel(self, session: str) -> PlaybackStatus:
        return await self.control(session, "cancel")

    async def status(self, session: str) -> PlaybackStatus:
        return await self.control(session, "status")

    async def follow(self, session: PlaybackSession, *, resume: bool = False) -> AsyncGenerator[PlaybackStatus, None]:
        """The session's status events until (and including) the one of its end. ``resume``: resume
        the session once subscribed (start it with ``hold=True`` to see it from its first event)."""
        queue: asyncio.Queue[PlaybackStatus] = asyncio.Queue()

        async def on_status(msg: Any) -> None:
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                queue.put_nowait(codec.decode_as(msg.data, PlaybackStatus))

        sub = await self.nc.subscribe(session.status_subject, cb=on_status)
        try:
            if resume:
                await self.resume(session.session)
            while True:
                status = await queue.get()
                yield status
                if status.state in ENDED_STATES:
                    return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def play(self, selector: Selectorish, start_ns: int, end_ns: int, *, speed: str = "max",
                   reference: Selectorish | None = None, prefix: str | None = None,
                   namespaces: tuple[str, ...] = ("md", "ref")) -> AsyncIterator[Any]:
        """Start a session, receive its messages (nats-py ``Msg``: ``subject`` under the session's
        prefix, ``data`` and ``headers`` as live) and stop after its end marker. A session that
        failed or was cancelled raises RequestError (``internal``) at its end."""
        session = await self.start(selector, start_ns, end_ns, speed=speed, prefix=prefix, reference=reference,
                                   hold=True)
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def on_msg(msg: Any) -> None:
            queue.put_nowait(msg)

        end_subject = subjects.playback_end(session.prefix)
        # one subscription: nats-py runs each subscription's callbacks in a task of its own, so
        # messages of two subscriptions (md and ref) could be handed over out of order
        wanted = tuple(f"{session.prefix}.{ns}." for ns in namespaces)
        sub = await self.nc.subscribe(f"{session.prefix}.>", cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
        try:
            await self.resume(session.session)
            while True:
                msg = await queue.get()
                if msg.subject == end_subject:
                    end = codec.decode_as(msg.data, PlaybackEnd)
                    if end.state != "finished":
                        raise RequestError(codes.INTERNAL, f"playback {end.session} {end.state}: {end.reason}")
                    return
                if msg.subject.startswith(wanted):  # not the status (under the default prefix too)
                    yield msg
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


def make_start(selector: Selectorish, start_ns: int, end_ns: int, *, speed: str = "1x", prefix: str | None = None,
               reference: Selectorish | None = None, hold: bool = False) -> PlaybackStart:
    """A checked PlaybackStart (ValueError for a bad selector, speed, prefix or range)."""
    if end_ns <= start_ns:
        raise ValueError(f"the end ({end_ns}) must be after the start ({start_ns})")
    parse_speed(speed)
    if prefix is not None:
        subjects.check_playback_prefix(prefix)
    return PlaybackStart(selector=to_selector(selector), start_ns=start_ns, end_ns=end_ns, speed=speed, prefix=prefix,
                         reference=to_selector(reference) if reference is not None else None, hold=hold)
