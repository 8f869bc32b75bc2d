"""Async rate limiting: token buckets, and several windows at once (e.g. 50/s and 500/min)."""

from __future__ import annotations

import asyncio
import time


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
