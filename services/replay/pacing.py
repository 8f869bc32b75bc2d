"""Speeds, the schedule of a paced session, and its lag statistics.

At ``Nx`` an event is due at ``t0 + (ts_event - first ts_event) / N`` on the monotonic clock,
``t0`` being when the first event went out. Every due time is computed from that one origin (not
from the previous event), so lateness never accumulates: a session that fell behind sends what
is due at once (a burst) and is on schedule again. A pause moves the origin by its length.
"""

from __future__ import annotations

import time

NS = 1_000_000_000


class Schedule:
    """Due times of a paced session on the monotonic clock (seconds)."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.origin_mono: float | None = None
        self.origin_ts = 0

    def due(self, ts_event: int) -> float:
        if self.origin_mono is None:  # the first event: it is due now
            self.origin_mono = time.monotonic()
            self.origin_ts = ts_event
        return self.origin_mono + (ts_event - self.origin_ts) / NS / self.speed

    def shift(self, seconds: float) -> None:
        """After a pause: everything later by its length."""
        if self.origin_mono is not None:
            self.origin_mono += seconds


class LagStats:
    """How late events went out, in 0.1 ms buckets up to 2 s (beyond: counted as 2 s) (constant memory, any length)."""

    RES_MS = 0.1
    BUCKETS = 20_000

    def __init__(self) -> None:
        self.counts = [0] * (self.BUCKETS + 1)
        self.n = 0
        self.last_ms = 0.0
        self.max_ms = 0.0

    def add(self, lag_s: float, n: int = 1) -> None:
        ms = lag_s * 1000.0 if lag_s > 0 else 0.0
        self.counts[min(int(ms / self.RES_MS), self.BUCKETS)] += n
        self.n += n
        self.last_ms = ms
        if ms > self.max_ms:
            self.max_ms = ms

    def quantile_ms(self, q: float) -> float:
        if not self.n:
            return 0.0
        target = q * self.n
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= target:
                return round((i + 1) * self.RES_MS, 3)
        return round(self.max_ms, 3)
