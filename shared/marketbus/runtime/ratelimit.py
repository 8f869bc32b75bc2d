"""Async rate limiting: token buckets, several windows at once (e.g. 50/s and 500/min), and
:class:`SlidingWindowLimiter`, which counts calls the way a vendor's sliding windows do."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class RateLimiter:
    """A token bucket: ``rate`` tokens per second, up to ``burst``. ``acquire`` waits."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def try_acquire(self, tokens: float = 1.0) -> bool:
        self._refill()
        if self._tokens >= tokens:
            self._tokens -= tokens
            return True
        return False

    def take(self) -> float:
        """Non-blocking, for servers enforcing a limit: 0 if a token was taken, else the seconds
        until one is available (a Retry-After)."""
        return 0.0 if self.try_acquire() else self.wait_time()

    def wait_time(self, tokens: float = 1.0) -> float:
        self._refill()
        return max(0.0, (tokens - self._tokens) / self.rate)

    async def acquire(self, tokens: float = 1.0) -> None:
        async with self._lock:
            while not self.try_acquire(tokens):
                await asyncio.sleep(self.wait_time(tokens))

    def penalize(self, seconds: float) -> None:
        """A server said to back off (429 Retry-After): drain the bucket for ``seconds``."""
        self._refill()
        self._tokens = min(self._tokens, -seconds * self.rate)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """``async with limiter.slot(): <one call>`` (the :class:`SlidingWindowLimiter` shape)."""
        await self.acquire()
        yield


class MultiWindowLimiter:
    """All limits must allow a call, e.g. ``MultiWindowLimiter([(50, 1), (500, 60)])``."""

    def __init__(self, limits: list[tuple[float, float]]) -> None:
        # (calls, per seconds) -> a bucket of rate calls/per and burst calls
        self.buckets = [RateLimiter(calls / per, calls) for calls, per in limits]
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                waits = [bucket.wait_time() for bucket in self.buckets]
                if max(waits) <= 0:
                    for bucket in self.buckets:
                        bucket.try_acquire()
                    return
                await asyncio.sleep(max(waits))

    def penalize(self, seconds: float) -> None:
        for bucket in self.buckets:
            bucket.penalize(seconds)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        yield


class SlidingWindowLimiter:
    """At most ``calls`` in ANY window of ``per`` seconds, for every ``(calls, per)`` in
    ``limits``, as the server counts them (DRF-style: the arrival times of the last ``per``
    seconds), whatever the network or a stalled event loop does to the calls in between.

    The server stamps a call when it arrives, somewhere between our send and its reply, which we
    cannot observe. So a call holds its place from the moment it is let through (``slot()``
    entered) until ``per`` seconds (plus ``margin``) after its reply came back (``slot()`` left):
    any ``calls + 1`` arrivals within ``per`` seconds would have needed ``calls + 1`` places at
    once. A token bucket stamping at send time cannot promise this: calls let through before a
    stall arrive together with those let through after it. A bare :meth:`acquire` (a call
    whose reply we do not wait for) counts from its send time.
    """

    def __init__(self, limits: list[tuple[int, float]], margin: float = 0.02) -> None:
        self.limits = list(limits)
        self.margin = margin  # a fraction of each window: clock granularity, the server's rounding
        self.in_flight = 0
        self._done: deque[float] = deque()  # when the replies of finished calls came back
        self._blocked_until = 0.0
        self._wakeups: list[asyncio.Future[None]] = []

    def set_limits(self, limits: list[tuple[int, float]]) -> None:
        """Other windows from now on (the calls already counted stay counted)."""
        self.limits = list(limits)
        self._wake()

    def _held(self, per: float) -> float:
        return per * (1.0 + self.margin)

    def _wait_s(self, now: float) -> float | None:
        """0 if a call may go now, else the seconds until one may, or ``None``: only a reply
        (a call in flight finishing) can free a place."""
        if now < self._blocked_until:
            return self._blocked_until - now
        longest = max((self._held(per) for _, per in self.limits), default=0.0)
        while self._done and self._done[0] <= now - longest:
            self._done.popleft()
        wait = 0.0
        for calls, per in self.limits:
            held = self._held(per)
            recent = [t for t in self._done if t > now - held]
            excess = self.in_flight + len(recent) - max(1, calls)  # places to free before a call may go
            if excess < 0:
                continue
            if excess >= len(recent):
                return None
            wait = max(wait, recent[excess] + held - now)
        return wait

    async def _take(self) -> None:
        while True:
            wait = self._wait_s(time.monotonic())
            if wait is not None and wait <= 0:
                self.in_flight += 1
                return
            wakeup = asyncio.get_running_loop().create_future()
            self._wakeups.append(wakeup)
            try:
                await asyncio.wait_for(wakeup, wait)
            except TimeoutError:
                pass
            finally:
                if wakeup in self._wakeups:
                    self._wakeups.remove(wakeup)

    def _finish(self) -> None:
        self.in_flight -= 1
        self._done.append(time.monotonic())
        self._wake()

    def _wake(self) -> None:
        wakeups, self._wakeups = self._wakeups, []
        for wakeup in wakeups:
            if not wakeup.done():
                wakeup.set_result(None)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """``async with limiter.slot(): response = await <the call>``: waits for a place; the
        call counts until ``per`` seconds after the block is left (reply, error or cancel)."""
        await self._take()
        try:
            yield
        finally:
            self._finish()

    async def acquire(self) -> None:
        await self._take()
        self._finish()

    def penalize(self, seconds: float) -> None:
        """A server said to back off (429 Retry-After): nobody calls for ``seconds``."""
        self._blocked_until = max(self._blocked_until, time.monotonic() + seconds)
