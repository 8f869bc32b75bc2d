"""De-duplication of vendor records by id, bounded in memory.

Vendors re-send: a poll overlaps the previous one, a reconnect replays the last frames, a gap
back-fill re-reads what the live feed already gave. The bus de-duplicates too (Nats-Msg-Id within
the stream's duplicate window), but only for what reaches it; :class:`RecentIds` keeps the
ingestor from re-publishing (and re-counting) what it just sent.

Bounds: at most ``max_ids`` ids (the oldest forgotten first) and none older than ``max_age_s``
seconds (checked as ids are added). An id forgotten by either bound and seen again is taken as
new: choose the bounds to cover the vendor's overlap (a poll's depth, a back-fill's range).
The age is kept per slice of ``max_age_s / 256`` (not per id), so an id may be remembered up to
one slice longer than ``max_age_s``, never shorter.

Memory: the state is a set and a deque of the same key objects plus 256 age slices, no per-id
time. With ``compact=hex_key`` an event id (24 lowercase hex characters, ``ids.event_id``) is
kept as an int (40 bytes) instead of its text (73): a million ids take ~85 MB of RSS, where a
dict of id text -> time took ~116 MB (``bench/RESULTS.md``, issue #16).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

T = TypeVar("T")

SLICES = 256  # age slices over max_age_s


def hex_key(key: Hashable) -> Hashable:
    """Lowercase hex text -> an int that no other text maps to (a leading 1 keeps the length:
    ``"0ab"`` and ``"ab"`` differ); any other key is returned as is. For keys that are all text:
    an int key could equal a packed one."""
    if type(key) is str and key.isascii() and key.isalnum() and (key.islower() or key.isdigit()):
        try:
            return int("1" + key, 16)
        except ValueError:  # letters beyond f
            return key
    return key


def _same(key: Hashable) -> Hashable:
    return key


class RecentIds:
    def __init__(self, max_ids: int = 1_000_000, max_age_s: float = 86_400.0,
                 clock: Callable[[], float] = time.monotonic,
                 compact: Callable[[Hashable], Hashable] | None = None) -> None:
        self.max_ids = max_ids
        self.max_age_s = max_age_s
        self._clock = clock
        self._key = compact or _same
        self._slice = max_age_s / SLICES
        # ``_order`` holds the keys in the order they were added (the oldest is ``_order[0]``:
        # O(1), where a dict's own oldest, ``next(iter(d))``, skips every slot deleted at its
        # front); ``_seen`` the same key objects, for the look-up.
        self._seen: set[Hashable] = set()
        self._order: deque[Hashable] = deque()
        # age slices, oldest first: [first add, last add, keys of ``_order`` in the slice]
        self._slices: deque[list[float]] = deque()
        # keys discarded while their entry is still in ``_order`` (that entry must not forget a
        # later add of the same key): key -> how many such entries
        self._gone: dict[Hashable, int] = {}

    def __len__(self) -> int:
        self._expire(self._clock())
        return len(self._seen)

    def _pop_oldest(self) -> None:
        key = self._order.popleft()
        gone = self._gone.get(key)
        if gone is None:
            self._seen.discard(key)
        elif gone == 1:
            del self._gone[key]
        else:
            self._gone[key] = gone - 1
        oldest = self._slices[0]
        oldest[2] -= 1
        if not oldest[2]:
            self._slices.popleft()

    def _expire(self, now: float) -> None:
        slices, horizon = self._slices, now - self.max_age_s
        while slices and slices[0][1] < horizon:  # the slice's newest id is too old: all are
            for _ in range(int(slices[0][2])):
                self._pop_oldest()
        while len(self._seen) > self.max_ids:
            self._pop_oldest()

    def add(self, key: Hashable) -> bool:
        """Record ``key``; True when it is new (not seen within the bounds). The hot path."""
        key = self._key(key)
        now = self._clock()
        slices = self._slices
        if slices and slices[0][1] < now - self.max_age_s:
            self._expire(now)
        if key in self._seen:
            return False
        self._seen.add(key)
        self._order.append(key)
        if slices and now - slices[-1][0] < self._slice:
            newest = slices[-1]
            newest[1] = now
            newest[2] += 1
        else:
            slices.append([now, now, 1])
        while len(self._seen) > self.max_ids:
            self._pop_oldest()
        return True

    def __contains__(self, key: Hashable) -> bool:
        self._expire(self._clock())
        return self._key(key) in self._seen

    def discard(self, key: Hashable) -> None:
        """Forget ``key`` (it was not delivered after all: seen again, it is new)."""
        key = self._key(key)
        if key in self._seen:
            self._seen.remove(key)
            self._gone[key] = self._gone.get(key, 0) + 1

    def fresh(self, items: Iterable[T], key: Callable[[T], Hashable]) -> list[T]:
        """The items whose key is new, in order (and records them)."""
        return [item for item in items if self.add(key(item))]
