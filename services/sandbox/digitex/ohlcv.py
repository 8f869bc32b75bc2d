"""OHLCV bars aggregated exactly from a market's tape.

One-minute bars are the unit of work: a finished minute never changes (overrides only touch
future ticks), so it is computed once and cached; coarser resolutions merge minute bars.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from .market import MarketState, d18

MINUTE_US = 60_000_000
DAY_MIN = 1440
_RES = re.compile(r"^(\d*)([DWM]?)$")


@dataclass(slots=True)
class Bar:
    start_us: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal

    def merge(self, other: Bar) -> None:
        self.high = max(self.high, other.high)
        self.low = min(self.low, other.low)
        self.close = other.close
        self.volume += other.volume

    def wire(self) -> dict[str, object]:
        return {"timestamp": self.start_us, "open": d18(self.open), "high": d18(self.high), "low": d18(self.low),
                "close": d18(self.close), "volume": d18(self.volume)}


@dataclass(frozen=True)
class Resolution:
    count: int
    unit: str  # "" minutes, "D", "W", "M"

    def bucket(self, ts_us: int) -> int:
        """Start (µs) of the bar holding ``ts_us``: epoch-aligned; weeks start Monday; calendar months."""
        minute = ts_us // MINUTE_US
        if self.unit == "":
            return minute // self.count * self.count * MINUTE_US
        day = minute // DAY_MIN
        if self.unit == "D":
            return day // self.count * self.count * DAY_MIN * MINUTE_US
        if self.unit == "W":  # 1970-01-01 was a Thursday: Mondays are day -3 + 7n
            return ((day + 3) // (7 * self.count) * 7 * self.count - 3) * DAY_MIN * MINUTE_US
        dt = datetime.fromtimestamp(ts_us / 1e6, tz=UTC)
        months = (dt.year - 1970) * 12 + dt.month - 1
        months = months // self.count * self.count
        return calendar.timegm((1970 + months // 12, months % 12 + 1, 1, 0, 0, 0)) * 1_000_000

    @property
    def approx_us(self) -> int:
        per = {"": 1, "D": DAY_MIN, "W": 7 * DAY_MIN, "M": 31 * DAY_MIN}[self.unit]
        return self.count * per * MINUTE_US


def parse_resolution(text: str) -> Resolution | None:
    """``1``, ``5``, ``60`` (minutes), ``D``/``1D``/``2D``, ``1W``, ``1M``; None when invalid."""
    match = _RES.match(text.strip().upper())
    if not match or not text.strip():
        return None
    count = int(match.group(1) or 1)
    if count <= 0 or (match.group(2) == "" and not match.group(1)):
        return None
    return Resolution(count, match.group(2))


class BarCache:
    def __init__(self) -> None:
        self._minutes: dict[tuple[int, int], Bar | None] = {}

    def minute(self, state: MarketState, start_us: int, now_index: int) -> Bar | None:
        key = (state.market.id, start_us)
        if key in self._minutes:
            return self._minutes[key]
        tape = state.tape
        first = max(state.listing_index, tape.index_at_or_after(start_us * 1000))
        end = tape.index_at_or_after((start_us + MINUTE_US) * 1000)  # exclusive
        last = min(end - 1, now_index)
        bar = None
        if first <= last:
            prices = [state.price(k) for k in range(first, last + 1)]
            volume = sum((state.size(k) for k in range(first, last + 1)), Decimal(0))
            bar = Bar(start_us, prices[0], max(prices), min(prices), prices[-1], volume)
        if end - 1 <= now_index:  # finished minutes never change
            self._minutes[key] = bar
        return bar

    def bars(self, state: MarketState, res: Resolution, date_from_us: int, date_to_us: int, top_n: int) -> list[Bar]:
        """Whole bars whose start lies in [date_from_us, date_to_us], the most recent ``top_n`` of them."""
        now_index = state.index_now()
        now_us = state.ts_us(now_index)
        listing_minute = state.ts_us(state.listing_index) // MINUTE_US * MINUTE_US
        date_to_us = min(date_to_us, now_us)
        # Only the last top_n bars are returned: no need to look further back than that.
        lo = max(date_from_us, listing_minute, date_to_us - (top_n + 1) * res.approx_us)
        merged: dict[int, Bar] = {}
        minute = res.bucket(lo)
        while minute <= now_us and (bucket := res.bucket(minute)) <= date_to_us:
            bar = self.minute(state, minute, now_index)
            if bar is not None:
                if bucket in merged:
                    merged[bucket].merge(bar)
                else:
                    merged[bucket] = Bar(bucket, bar.open, bar.high, bar.low, bar.close, bar.volume)
            minute += MINUTE_US
        return [b for b in merged.values() if b.start_us >= date_from_us][-top_n:]
