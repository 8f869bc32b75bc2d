"""One playback session: read the selected history in order, pace it, send it to a sink.

Life of a session: ``ready`` (started with ``hold``: waits for ``resume``) -> ``running`` <->
``paused`` -> ``finished`` | ``cancelled`` | ``failed``. Whatever the end, the sink gets the
:class:`PlaybackEnd` marker, a last status goes out, and the session removes itself from the
registry (its control subscription and history queries are gone with it: nothing is left on the
server).

Reference data (``reference`` selector): the value of every selected reference subject in effect
at ``start_ns`` (the last one stored before it) goes out first, then reference events of the
range interleaved with the market events in history order (at equal ``ts_event`` the market
event first, as the history orders stream ``MD`` before ``REF``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from marketbus.clients import RequestError
from marketbus.contracts.replay import ENDED_STATES, PlaybackEnd, PlaybackStart, PlaybackState, PlaybackStatus

from .pacing import LagStats, Schedule
from .source import EventSource
from .wire import Head, Sink, decode_head, live_subject

log = logging.getLogger("marketbus.replay.session")

Item = tuple[Head, str, Any]  # (head, live subject, payload)
MAX_SLEEP_S = 0.25  # a long wait is cut in slices, so a pause takes effect within this


class SessionError(Exception):
    """A control request that does not fit the session's state (``code`` as in ErrorReply)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Session:
    def __init__(self, session_id: str, request: PlaybackStart, *, speed: float, prefix: str, sink: Sink,
                 source: EventSource, expected: int, burst_s: float = 0.0005, hold_timeout_s: float = 30.0,
                 status_interval_s: float = 1.0,
                 publish_status: Callable[[PlaybackStatus], Awaitable[None]] | None = None,
                 on_end: Callable[[Session], None] | None = None) -> None:
        self.id = session_id
        # the secret a control must carry (given to the starter in the start reply only; never in
        # status events, /healthz, metrics or logs)
        self.control_token = secrets.token_urlsafe(16)
        self.request = request
        self.speed = speed
        self.prefix = prefix
        self.sink = sink
        self.source = source
        self.expected = expected
        self.burst_s = burst_s
        self.hold_timeout_s = hold_timeout_s
        self.status_interval_s = status_interval_s
        self._publish_status = publish_status
        self._on_end = on_end
        self.state: PlaybackState = "ready" if request.hold else "running"
        self.reason: str | None = None
        self.sent = 0
        self.skipped = 0  # stored kinds that are not md/ref (feed status)
        self.sim_ts: int | None = None
        self.lag = LagStats()
        self.schedule = Schedule(speed) if math.isfinite(speed) else None
        self._running = asyncio.Event()
        if not request.hold:
            self._running.set()
        self._task: asyncio.Task[None] | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._status_sends: set[asyncio.Task[None]] = set()  # held so they are not collected mid-flight
        self._rate_mark = (0, time.monotonic())
        self.done = asyncio.Event()

    # --- control --------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"replay:{self.id}")
        if self._publish_status is not None:
            self._status_task = asyncio.create_task(self._status_loop(), name=f"replay:{self.id}:status")

    def control(self, action: str) -> PlaybackStatus:
        """pause | resume | cancel | status -> the status after it (SessionError when it does not
        apply: a session that has ended, resume of a running one is a no-op)."""
        if action == "status":
            return self.status()
        if self.state in ENDED_STATES:
            raise SessionError("conflict", f"session {self.id} has ended ({self.state})")
        if action == "pause":
            if self.state in ("running", "ready"):
                self.state = "paused"
                self._running.clear()
        elif action == "resume":
            if self.state in ("paused", "ready"):
                self.state = "running"
                self._running.set()
        elif action == "cancel":
            self.cancel("cancelled by request")
        else:
            raise SessionError("bad_request", f"unknown action {action!r} (pause, resume, cancel, status)")
        self._status_now()
        return self.status()

    def cancel(self, reason: str) -> None:
        if self.state not in ENDED_STATES and self._task is not None and not self._task.done():
            self.reason = reason
            self._task.cancel()

    async def wait(self) -> None:
        await self.done.wait()

    def status(self) -> PlaybackStatus:
        sent, at = self._rate_mark
        now = time.monotonic()
        rate = (self.sent - sent) / (now - at) if now > at else 0.0
        return PlaybackStatus(
            session=self.id, state=self.state, sent=self.sent, expected=self.expected, sim_ts=self.sim_ts,
            lag_ms=round(self.lag.last_ms, 3), lag_p99_ms=self.lag.quantile_ms(0.99), rate=round(rate, 1),
            reason=self.reason, ts=time.time_ns(),
        )

    # --- the session ----------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            if self.request.hold:
                try:
                    await asyncio.wait_for(self._running.wait(), self.hold_timeout_s)
                except TimeoutError:
                    self.reason = f"not resumed within {self.hold_timeout_s:g}s of the start"
                    self.state = "cancelled"
                    return
            snapshot, in_range = await self._reference()
            await self._play(snapshot, in_range)
            self.state = "finished"
        except asyncio.CancelledError:
            self.state = "cancelled"
            self.reason = self.reason or "cancelled"
        except RequestError as exc:
            self.state, self.reason = "failed", f"history: {exc.message}"
        except Exception as exc:
            log.exception("session %s failed", self.id)
            self.state, self.reason = "failed", repr(exc)
        finally:
            await self._finish()

    async def _finish(self) -> None:
        marker = PlaybackEnd(session=self.id, state=self.state, sent=self.sent, reason=self.reason, ts=time.time_ns())
        try:
            await asyncio.wait_for(self.sink.end(marker), 10.0)
        except Exception as exc:
            log.info("session %s: end marker not delivered: %r", self.id, exc)
        if self._status_task is not None:
            self._status_task.cancel()
        if self._publish_status is not None:
            try:
                await self._publish_status(self.status())
            except Exception as exc:
                log.info("session %s: last status not sent: %r", self.id, exc)
        log.info(
            "session %s %s: %d events%s", self.id, self.state, self.sent, f" ({self.reason})" if self.reason else ""
        )
        self.done.set()
        if self._on_end is not None:
            self._on_end(self)

    async def _reference(self) -> tuple[list[Item], list[tuple[int, Item]]]:
        """(reference data in effect at the start, reference events of the range with their ts)."""
        sel = self.request.reference
        if sel is None:
            return [], []
        latest: dict[str, Item] = {}
        async for chunk in self.source.chunks(sel, 0, self.request.start_ns):
            for raw in chunk:
                head = decode_head(raw)
                subject = live_subject(head)
                if subject is not None:
                    latest.pop(subject, None)  # re-inserted: the dict keeps history order of the last values
                    latest[subject] = (head, subject, raw)
        in_range: list[tuple[int, Item]] = []
        async for chunk in self.source.chunks(sel, self.request.start_ns, self.request.end_ns):
            for raw in chunk:
                head = decode_head(raw)
                subject = live_subject(head)
                if subject is not None:
                    in_range.append((head.ts_event, (head, subject, raw)))
        return list(latest.values()), in_range

    async def _play(self, snapshot: list[Item], refs: list[tuple[int, Item]]) -> None:
        sink = self.sink
        for first_head, first_subject, payload in snapshot:  # before the first event, outside the schedule
            sink.add(first_head, first_subject, payload)
        self.sent += len(snapshot)
        await sink.flush()
        r = 0
        req = self.request
        fast = not refs and self.schedule is None  # max with nothing to merge: whole chunks at once
        async for chunk in self.source.chunks(req.selector, req.start_ns, req.end_ns):
            if fast:
                if not self._running.is_set():
                    await self._paused()
                added, last = sink.add_chunk(chunk)
                self.sent += added
                self.skipped += len(chunk) - added
                self.sim_ts = last if last is not None else self.sim_ts
                await sink.flush()
                continue
            items: list[Item] = []
            for raw in chunk:
                head = decode_head(raw)
                live = live_subject(head)
                if live is None:
                    self.skipped += 1
                    continue
                while r < len(refs) and refs[r][0] < head.ts_event:
                    items.append(refs[r][1])
                    r += 1
                items.append((head, live, raw))
            await self._send(items)
        await self._send([item for _, item in refs[r:]])
        await sink.flush()

    async def _send(self, items: list[Item]) -> None:
        if not self._running.is_set():
            await self._paused()
        sink = self.sink
        if self.schedule is None:  # max: as fast as the sink takes them
            for head, subject, payload in items:
                sink.add(head, subject, payload)
            if items:
                self.sent += len(items)
                self.sim_ts = items[-1][0].ts_event
            await sink.flush()
            return
        schedule, burst, lag = self.schedule, self.burst_s, self.lag
        now = time.monotonic()
        for head, subject, payload in items:
            due = schedule.due(head.ts_event)
            if due > now + burst:
                await sink.flush()
                while due > now + burst:
                    await asyncio.sleep(min(due - now, MAX_SLEEP_S))
                    if not self._running.is_set():
                        await self._paused()
                        due = schedule.due(head.ts_event)
                    now = time.monotonic()
            lag.add(now - due)
            sink.add(head, subject, payload)
            self.sent += 1
            self.sim_ts = head.ts_event
        await sink.flush()

    async def _paused(self) -> None:
        await self.sink.flush()
        began = time.monotonic()
        await self._running.wait()
        if self.schedule is not None:
            self.schedule.shift(time.monotonic() - began)

    # --- status -----------------------------------------------------------------------------------
    def _status_now(self) -> None:
        if self._publish_status is not None:
            task = asyncio.ensure_future(self._safe_status())
            self._status_sends.add(task)
            task.add_done_callback(self._status_sends.discard)

    async def _safe_status(self) -> None:
        try:
            assert self._publish_status is not None
            await self._publish_status(self.status())
        except Exception as exc:
            log.debug("status of %s not sent: %r", self.id, exc)

    async def _status_loop(self) -> None:
        while True:
            await self._safe_status()
            self._rate_mark = (self.sent, time.monotonic())
            await asyncio.sleep(self.status_interval_s)
