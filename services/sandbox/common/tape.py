"""Deterministic, random-access synthetic market data.

A :class:`TickTape` is the whole (infinite) trade history of one instrument, derived from a seed:
tick ``k`` happens at ``origin_ns + k * period_ns`` and its price is a random-walk-like path
computed from hashed increments at several time scales (so any tick can be computed without
walking from the start, and a replay of any range returns exactly what "live" produced).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

_MASK = (1 << 64) - 1


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def stable_hash(*parts: object) -> int:
    """A process-independent 64-bit hash (Python's hash() of str is salted per process)."""
    h = 0
    for part in parts:
        for byte in str(part).encode():
            h = splitmix64(h ^ byte)
        h = splitmix64(h ^ 0xFF)
    return h


def unit(seed: int, *parts: int) -> float:
    """Deterministic uniform value in [0, 1)."""
    h = seed
    for p in parts:
        h = splitmix64(h ^ (p & _MASK))
    return (h >> 11) / float(1 << 53)


@dataclass(frozen=True, slots=True)
class Tick:
    index: int
    ts_ns: int
    price: Decimal
    size: Decimal
    side: int  # 1 buy (aggressor), 2 sell


class TickTape:
    LEVELS = 20

    def __init__(
        self,
        seed: int,
        key: str,
        base_price: Decimal | str,
        tick_size: Decimal | str = "0.01",
        lot_size: Decimal | str = "0.001",
        period_ns: int = 1_000_000_000,
        origin_ns: int = 1_577_836_800_000_000_000,  # 2020-01-01T00:00:00Z
        volatility: float = 1.0,
        max_lots: int = 500,
    ) -> None:
        self.key = key
        self.seed = splitmix64(seed ^ stable_hash(key))
        self.tick_size = Decimal(tick_size)
        self.lot_size = Decimal(lot_size)
        self.base_ticks = int(Decimal(base_price) / self.tick_size)
        self.period_ns = int(period_ns)
        self.origin_ns = int(origin_ns)
        self.volatility = volatility
        self.max_lots = max_lots
        self._scale = [volatility * math.sqrt(1 << lvl) for lvl in range(self.LEVELS)]
        self._memo: list[tuple[int, float]] = [(-1, 0.0)] * self.LEVELS

    # --- time <-> index -------------------------------------------------------------------
    def ts(self, k: int) -> int:
        return self.origin_ns + k * self.period_ns

    def index_at_or_before(self, ts_ns: int) -> int:
        return (ts_ns - self.origin_ns) // self.period_ns

    def index_at_or_after(self, ts_ns: int) -> int:
        return -((self.origin_ns - ts_ns) // self.period_ns)

    def last_index(self, now_ns: int | None = None) -> int:
        return self.index_at_or_before(time.time_ns() if now_ns is None else now_ns)

    # --- values ---------------------------------------------------------------------------
    def price_ticks(self, k: int) -> int:
        total = 0.0
        memo = self._memo
        for lvl in range(self.LEVELS):
            block = k >> lvl
            cached_block, value = memo[lvl]
            if cached_block != block:
                value = (unit(self.seed, lvl, block) - 0.5) * self._scale[lvl]
                memo[lvl] = (block, value)
            total += value
        return max(1, self.base_ticks + int(total))

    def price(self, k: int) -> Decimal:
        return self.price_ticks(k) * self.tick_size

    def size(self, k: int) -> Decimal:
        lots = 1 + int(unit(self.seed, 101, k) ** 3 * self.max_lots)
        return lots * self.lot_size

    def side(self, k: int) -> int:
        return 1 if unit(self.seed, 202, k) < 0.5 else 2

    def tick(self, k: int) -> Tick:
        return Tick(k, self.ts(k), self.price(k), self.size(k), self.side(k))

    def ticks(self, start_ns: int, end_ns: int, limit: int | None = None) -> Iterator[Tick]:
        """Ticks with start_ns <= ts < end_ns, oldest first."""
        k = self.index_at_or_after(start_ns)
        end_k = self.index_at_or_after(end_ns)
        if limit is not None:
            end_k = min(end_k, k + limit)
        for i in range(k, end_k):
            yield self.tick(i)

    def latest(self, now_ns: int | None = None) -> Tick:
        return self.tick(self.last_index(now_ns))
