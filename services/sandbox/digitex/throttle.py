"""The advertised rate limits (50/s, 500/min) as DRF-style sliding-window throttles."""

from __future__ import annotations

import math
import time
from collections import deque


class Throttle:
    def __init__(self, limits: list[tuple[int, float]]) -> None:
        self.limits = limits  # (requests, window seconds)
        self._hits: dict[str, deque[float]] = {}
        self.admitted = 0  # counters for tests: how many requests passed / were refused (429)
        self.refused = 0

    def wait(self, who: str, now: float | None = None) -> int:
        """0 if the request may pass (and counts it), else the seconds until it could."""
        now = time.monotonic() if now is None else now
        hits = self._hits.setdefault(who, deque())
        longest = max(window for _, window in self.limits)
        while hits and hits[0] <= now - longest:
            hits.popleft()
        worst = 0.0
        for limit, window in self.limits:
            recent = [t for t in hits if t > now - window] if window < longest else list(hits)
            if len(recent) >= limit:
                worst = max(worst, recent[-limit] + window - now)
        if worst > 0:
            self.refused += 1
            return max(1, math.ceil(worst))
        hits.append(now)
        self.admitted += 1
        return 0

    def reset(self) -> None:
        self._hits.clear()
        self.admitted = self.refused = 0
