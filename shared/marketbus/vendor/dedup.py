"""De-duplication of vendor records by id, bounded in memory.

Vendors re-send: a poll overlaps the previous one, a reconnect replays the last frames, a gap
back-fill re-reads what the live feed already gave. The bus de-duplicates too (Nats-Msg-Id within
the stream's duplicate window), but only for what reaches it; :class:`RecentIds` keeps the
ingestor from re-publishing (and re-counting) what it just sent.

Bounds: at most ``max_ids`` ids (the oldest forgotten first) and none older than ``max_age_s``
seconds (checked as ids are added). An id forgotten by either bound and seen again is taken as
new: choose the bounds to cover the vendor's overlap (a poll's depth, a back-fill's range).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

T = TypeVar("T")


class RecentIds:
    def __init__(self, max_ids: int = 1_000_000, max_age_s: float = 86_400.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_ids = max_ids
        self.max_age_s = max_age_s
        self._clock = clock
        # insertion order = age order (an id is re-added only once forgotten). ``_order`` holds the
        # same ids in the same order: the oldest is ``_order[0]``, O(1). (A dict's own oldest,
        # ``next(iter(d))``, skips every slot deleted at its front: O(n) per add once at the
        # bound. A deque costs 8 bytes an id, where an OrderedDict costs ~100.)
        self._seen: dict[Hashable, float] = {}
        self._order: deque[Hashable] = deque()

    def __len__(self) -> int:
        self._expire(self._clock())
        return len(self._seen)

    def _expire(self, now: float) -> None:
        seen, order, horizon = self._seen, self._order, now - self.max_age_s
        while order:
            oldest = order[0]
            if seen[oldest] >= horizon and len(seen) <= self.max_ids:
                return
            order.popleft()
            del seen[oldest]

    def add(self, key: Hashable) -> bool:
        """Record ``key``; True when it is new (not seen within the bounds). The hot path."""
        seen = self._seen
        if key in seen:
            now = self._clock()
            if seen[key] >= now - self.max_age_s:
                return False
            self._expire(now)  # too old: forgotten, so new again
            if key not in seen:
                self._order.append(key)
            seen[key] = now
            return True
        now = self._clock()
        seen[key] = now
        self._order.append(key)
        if len(seen) > self.max_ids or seen[self._order[0]] < now - self.max_age_s:
            self._expire(now)
        return True

    def __contains__(self, key: Hashable) -> bool:
        self._expire(self._clock())
        return key in self._seen

    def discard(self, key: Hashable) -> None:
        """Forget ``key`` (it was not delivered after all: seen again, it is new)."""
        self._seen.pop(key, None)

    def fresh(self, items: Iterable[T], key: Callable[[T], Hashable]) -> list[T]:
        """The items whose key is new, in order (and records them)."""
        return [item for item in items if self.add(key(item))]
