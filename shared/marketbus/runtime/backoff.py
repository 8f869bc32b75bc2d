"""Exponential back-off with full jitter, for reconnect loops and retries."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """``delay = random(0, min(max_s, initial_s * factor**attempt))`` (AWS "full jitter"),
    never below ``min_s``. ``reset()`` after a success."""

    def __init__(self, initial_s: float = 0.5, max_s: float = 30.0, factor: float = 2.0,
                 min_s: float = 0.05, rng: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self.min_s = min_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.initial_s * self.factor ** self.attempt)
        self.attempt += 1
        return max(self.min_s, self._rng.uniform(0, ceiling))

    def reset(self) -> None:
        self.attempt = 0

    async def sleep(self, at_least_s: float = 0.0) -> float:
        """Sleep the next delay (or ``at_least_s``, e.g. a server's Retry-After, if longer)."""
        delay = max(self.next_delay(), at_least_s)
        await asyncio.sleep(delay)
        return delay
