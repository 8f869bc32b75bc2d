"""De-duplication of vendor records by id, bounded in memory.

Vendors re-send: a poll overlaps the previous one, a reconnect replays the last frames. The bus
de-duplicates too (Nats-Msg-Id within the stream's duplicate window), but only for what reaches
it; :class:`RecentIds` keeps the ingestor from re-publishing (and re-counting) what it just sent.

Bounds: at most ``max_ids`` ids (the oldest forgotten first) and none older than ``max_age_s``
seconds. An id forgotten by either bound and seen again is taken as new; choose the bounds to
cover the vendor's overlap (e.g. ``recent_trades`` depth, a reconnect's replay).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

T = TypeVar("T")


class RecentIds:
    def __init__(self, max_ids: int = 100_000, max_age_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_ids = max_ids
        self.max_age_s = max_age_s
        self._clock = clock
        self._seen: OrderedDict[Hashable, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def _expire(self, now: float) -> None:
        horizon = now - self.max_age_s
        while self._seen:
            oldest_key = next(iter(self._seen))
            if self._seen[oldest_key] >= horizon and len(self._seen) <= self.max_ids:
                return
            self._seen.popitem(last=False)

    def add(self, key: Hashable) -> bool:
        """Record ``key``; True when it is new (not seen within the bounds)."""
        now = self._clock()
        self._expire(now)
        if key in self._seen:
            return False
        self._seen[key] = now
        if len(self._seen) > self.max_ids:
            self._seen.popitem(last=False)
        return True

    def __contains__(self, key: Hashable) -> bool:
        self._expire(self._clock())
        return key in self._seen

    def fresh(self, items: Iterable[T], key: Callable[[T], Hashable]) -> list[T]:
        """The items whose key is new, in order (and records them)."""
        return [item for item in items if self.add(key(item))]
