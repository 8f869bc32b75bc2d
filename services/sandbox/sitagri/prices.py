"""Price engine: one TickTape per traded contract, live aggregates, and the vendor price shapes.

Tick ``k`` of every market quote happens at ``origin + k * period`` where the period is a whole
number of milliseconds (``1 / rate``), so all quotes tick together and every update of one quote
has an exact, distinct timestamp. Timestamps go on the wire as unix seconds: an integer when whole,
otherwise a JSON number with millisecond decimals (e.g. ``1700000000.25``).

A continuous delivery (``EMAC01``) has no tape of its own: tick ``k`` is the tick ``k`` of the
delivery that was its underlying at that time, so it rolls exactly like the real one.
"""

from __future__ import annotations

import calendar
import datetime as dt
import time
from decimal import Decimal
from typing import Any

import msgspec

from ..common.tape import Tick, TickTape, splitmix64, stable_hash, unit
from .tree import QuoteInfo, Tree, delivery_item

NS = 1_000_000_000
DAY_NS = 86_400 * NS
ENCODER = msgspec.json.Encoder(decimal_format="number")  # prices go out as JSON numbers
DEAD = -(1 << 62)  # "no tick yet"
ORIGIN_NS = 1_577_836_800_000_000_000  # tick 0 of every tape: 2020-01-01T00:00:00Z


_NUM: dict[Decimal, Decimal | int] = {}


def num(d: Decimal) -> Decimal | int:
    """A decimal without trailing zeros (the vendor sends 155, 152.25); memoized (prices repeat)."""
    out = _NUM.get(d)
    if out is None:
        if len(_NUM) > 200_000:
            _NUM.clear()
        out = _NUM[d] = int(d) if d == d.to_integral_value() else d.normalize()
    return out


def ts_out(ns: int) -> int | Decimal:
    """Unix seconds: an int when whole, else an exact decimal (ms ticks -> 3 decimals at most)."""
    if ns % NS == 0:
        return ns // NS
    return (Decimal(ns) / NS).normalize()


def period_ns(rate: float) -> int:
    return max(1_000_000, round(NS / rate / 1_000_000) * 1_000_000)


class Market:
    """Tapes and live state of every quote of the tree."""

    def __init__(self, tree: Tree, seed: int, rate: float, cash_rate: float, depth: int = 5) -> None:
        self.tree = tree
        self.seed = seed
        self.market_period = period_ns(rate)
        self.cash_period = period_ns(cash_rate)
        self.depth = depth
        self._tapes: dict[str, TickTape] = {}
        self._states: dict[str, QuoteState] = {}
        self._underlying: dict[str, tuple[int, int, QuoteInfo]] = {}  # ref -> (valid_from, valid_to, info)

    # --- tapes ----------------------------------------------------------------------------
    def period(self, info: QuoteInfo) -> int:
        return self.cash_period if info.kind in ("cash", "index") else self.market_period

    def tape(self, info: QuoteInfo) -> TickTape:
        tape = self._tapes.get(info.tape_key)
        if tape is None:
            slow = info.kind in ("cash", "index")
            tape = TickTape(self.seed, info.tape_key, info.base, info.tick, lot_size="1",
                            period_ns=self.period(info), origin_ns=ORIGIN_NS,
                            volatility=0.15 if slow else 0.3, max_lots=info.max_lots)
            self._tapes[info.tape_key] = tape
        return tape

    def underlying(self, info: QuoteInfo, ts_ns: int) -> QuoteInfo:
        """The real delivery behind ``info`` at ``ts_ns`` (itself unless continuous)."""
        if info.continuous is None:
            return info
        cached = self._underlying.get(info.ref)
        if cached and cached[0] <= ts_ns < cached[1]:
            return cached[2]
        cls_ref, index = info.continuous
        fc = self.tree.future_classes[cls_ref]
        ts = ts_ns // NS
        nearby = fc.deliveries_after(ts, index)
        target = nearby[-1]
        assert nearby[0].expires is not None
        self._underlying[info.ref] = (ts_ns, nearby[0].expires * NS + 1, target)
        return target

    def index_at(self, info: QuoteInfo, ts_ns: int) -> int:
        return (ts_ns - ORIGIN_NS) // self.period(info)

    def ts(self, info: QuoteInfo, k: int) -> int:
        return ORIGIN_NS + k * self.period(info)

    def alive(self, info: QuoteInfo, ts_ns: int) -> bool:
        real = self.underlying(info, ts_ns)
        if real.listed_from is not None and ts_ns < real.listed_from * NS:
            return False
        return real.expires is None or ts_ns <= real.expires * NS

    def tick(self, info: QuoteInfo, k: int) -> Tick:
        real = self.underlying(info, self.ts(info, k))
        return self.tape(real).tick(k)

    def live_range(self, info: QuoteInfo, lo_ns: int, hi_ns: int) -> tuple[int, int]:
        """Tick indexes [k0, k1] of the quote's ticks with lo <= ts <= hi (k0 > k1 when none)."""
        if info.listed_from is not None:
            lo_ns = max(lo_ns, info.listed_from * NS)
        if info.expires is not None:
            hi_ns = min(hi_ns, info.expires * NS)
        p = self.period(info)
        return -((ORIGIN_NS - lo_ns) // p), (hi_ns - ORIGIN_NS) // p

    def last_index(self, info: QuoteInfo, now_ns: int | None = None) -> int:
        now_ns = time.time_ns() if now_ns is None else now_ns
        if info.expires is not None:
            now_ns = min(now_ns, info.expires * NS)
        return self.index_at(info, now_ns)

    # --- ground truth ---------------------------------------------------------------------
    def ticks(self, ref: str, start_s: float, end_s: float, limit: int = 100_000) -> list[dict[str, Any]]:
        """Every tick of a quote with start <= date <= end (what live pushes carry in ``last``)."""
        info = self.tree.quotes[ref]
        # ticks sit on whole milliseconds: round so float seconds like 1700000000.05 are exact
        k0, k1 = self.live_range(info, round(start_s * 1000) * 1_000_000, round(end_s * 1000) * 1_000_000)
        out = []
        for k in range(k0, min(k1 + 1, k0 + limit)):
            t = self.tick(info, k)
            out.append({"date": ts_out(t.ts_ns), "value": num(t.price), "volume": int(t.size)})
        return out

    # --- live state -----------------------------------------------------------------------
    def state(self, ref: str) -> QuoteState:
        st = self._states.get(ref)
        if st is None:
            st = self._states[ref] = QuoteState(self, self.tree.quotes[ref])
        return st

    def delivery(self, ref: str, now_s: int) -> dict[str, Any] | None:
        """Item of a delivery; continuous codes describe their current underlying."""
        info = self.tree.quotes.get(ref)
        if info is None or info.continuous is None:
            return self.tree.items.get(ref)
        real = self.underlying(info, now_s * NS)
        return delivery_item(self.tree.future_classes[info.continuous[0]], real, ref.rsplit("/", 1)[1])


class QuoteState:
    """The live view of one quote: last tick plus the day's aggregates, advanced tick by tick.

    The pump advances registered quotes exactly; a quote nobody listens to catches up on demand
    (exactly for short gaps, from a sample of the day for long ones, as a restart of the real
    server would).
    """

    EXACT_GAP = 2_000
    SAMPLES = 64

    def __init__(self, market: Market, info: QuoteInfo) -> None:
        self.m = market
        self.info = info
        self.index = DEAD
        self.day = -1
        self.last: Tick | None = None
        self.first: Tick | None = None
        self.high: Tick | None = None
        self.low: Tick | None = None
        self.total_volume = 0
        self.orders = 0
        self._day_stats: dict[str, Any] = {}
        self._points: dict[str, dict[str, Any]] = {}  # first/high/low as sent, rebuilt on change
        self._oi_key = hash_key(info.ref)
        self._period = market.period(info)

    # --- advancing ------------------------------------------------------------------------
    def catch_up(self, now_ns: int | None = None) -> None:
        target = self.m.last_index(self.info, now_ns)
        if target <= self.index:
            return
        if target - self.index > self.EXACT_GAP:
            self._restart(target)
        else:
            for k in range(self.index + 1, target + 1):
                self.apply(k)

    def _restart(self, k: int) -> None:
        m, info = self.m, self.info
        if not m.alive(info, m.ts(info, k)):
            return  # not listed yet (last_index already stops expired quotes at their expiry)
        t = m.tick(info, k)
        day_start = (t.ts_ns // DAY_NS) * DAY_NS
        k0 = max(m.index_at(info, day_start - 1) + 1, m.live_range(info, day_start, t.ts_ns)[0])
        self.index, self.day, self.last = k, t.ts_ns // DAY_NS, t
        self.first = m.tick(info, k0)
        n = k - k0 + 1
        step = max(1, n // self.SAMPLES)
        sample = [self.first, t] + [m.tick(info, j) for j in range(k0 + step, k, step)]
        self.high = max(sample, key=lambda x: x.price)
        self.low = min(sample, key=lambda x: x.price)
        self._points.clear()
        self.total_volume = round(sum(int(x.size) for x in sample) * n / len(sample))
        self.orders = n

    def apply(self, k: int) -> Tick | None:
        """Advance to tick ``k``; returns it (None when the quote does not trade then)."""
        # the pump's hot path: Market.alive/tick inlined, one underlying lookup per tick
        m, info = self.m, self.info
        ts = ORIGIN_NS + k * self._period
        real = m.underlying(info, ts)
        if (real.listed_from is not None and ts < real.listed_from * NS) or (
                real.expires is not None and ts > real.expires * NS):
            return None
        tape = m.tape(real)
        t = Tick(k, ts, tape.price(k), tape.size(k), 0)  # the side is not part of Sitagri prices
        day = ts // DAY_NS
        if day != self.day or self.last is None:
            self.day, self.first, self.high, self.low = day, t, t, t
            self.total_volume, self.orders = int(t.size), 1
            self._points.clear()
        else:
            if self.high is None or t.price > self.high.price:
                self.high = t
                self._points.pop("high", None)
            if self.low is None or t.price < self.low.price:
                self.low = t
                self._points.pop("low", None)
            self.total_volume += int(t.size)
            self.orders += 1
        self.index, self.last = k, t
        return t

    # --- shapes ---------------------------------------------------------------------------
    def _daily(self) -> dict[str, Any]:
        """Previous close, settlement and one-year extremes: computed once per day."""
        if self._day_stats.get("day") == self.day:
            return self._day_stats
        m, info = self.m, self.info
        day_start = self.day * DAY_NS
        stats: dict[str, Any] = {"day": self.day}
        prev_k = m.index_at(info, day_start - 1)
        if m.alive(info, m.ts(info, prev_k)):
            stats["previousLast"] = prev = m.tick(info, prev_k)
            stats["previousLastPoint"] = point(prev)
            settle_k = m.index_at(info, day_start - DAY_NS + 17 * 3600 * NS + 1800 * NS)
            if m.alive(info, m.ts(info, settle_k)):
                stats["settlement"] = settle = m.tick(info, settle_k)
                stats["settlementPoint"] = point(settle) | {
                    "openInterest": open_interest(self.m.seed, self._oi_key, self.day)}
        year = [m.tick(info, m.index_at(info, day_start - w * 7 * DAY_NS)) for w in range(1, 53)
                if m.alive(info, day_start - w * 7 * DAY_NS)]
        if year:
            stats["high1Y"] = max(year, key=lambda x: x.price)
            stats["low1Y"] = min(year, key=lambda x: x.price)
            stats["yearAgo"] = year[-1]
        self._day_stats = stats
        self._points.clear()  # the one-year extremes changed
        return stats

    def price(self) -> dict[str, Any]:
        info = self.info
        out: dict[str, Any] = {"code": info.price_code, "quote": info.ref, "quality": info.quality}
        t = self.last
        if t is None:
            return out
        if info.kind == "cash":
            out["date"] = ts_out(t.ts_ns)
            out["deliveries"] = cash_deliveries(t, info)
            return out
        if info.kind == "index":
            out.update(index_fields(self.m.seed, t))
            return out
        return self._market(out, t)

    def _market(self, out: dict[str, Any], t: Tick) -> dict[str, Any]:
        assert self.first is not None and self.high is not None and self.low is not None
        daily = self._daily()
        value = t.price
        out["last"] = {"date": ts_out(t.ts_ns), "value": num(value), "volume": int(t.size),
                       "totalVolume": self.total_volume, "orders": self.orders}
        stats: dict[str, Any] = {}
        prev = daily.get("previousLast")
        if prev is not None:
            stats["perf"] = num(value - prev.price)
            stats["relPerf"] = num(((value - prev.price) * 100 / prev.price).quantize(Decimal("0.0001")))
        ago = daily.get("yearAgo")
        if ago is not None:
            stats["perf1Y"] = num(value - ago.price)
            stats["relPerf1Y"] = num(((value - ago.price) * 100 / ago.price).quantize(Decimal("0.0001")))
        if stats:
            out["stats"] = stats
        pts = self._points
        if not pts:
            pts["first"] = point(self.first)
        out["first"] = pts["first"]
        if prev is not None:
            out["previousLast"] = daily["previousLastPoint"]
        settle = daily.get("settlement")
        if settle is not None:
            out["settlement"] = daily["settlementPoint"]
        if "high" not in pts:
            pts["high"] = point(self.high)
            hi = max(daily.get("high1Y", self.high), self.high, key=lambda x: x.price)
            pts["high1Y"] = point(hi)
        if "low" not in pts:
            pts["low"] = point(self.low)
            lo = min(daily.get("low1Y", self.low), self.low, key=lambda x: x.price)
            pts["low1Y"] = point(lo)
        out["high"], out["low"] = pts["high"], pts["low"]
        if "high1Y" in daily:
            out["high1Y"], out["low1Y"] = pts["high1Y"], pts["low1Y"]
        out.update(quotes_around(self.m.seed, t, self.info))
        return out

    def order_book(self, depth: int) -> dict[str, Any]:
        info = self.info
        out: dict[str, Any] = {"code": "orderBook", "quote": info.ref, "quality": info.quality, "data": []}
        t = self.last
        if t is None:
            return out
        rows = []
        for level in range(depth):
            u = [unit(self.m.seed, 400 + level, t.index, j) for j in range(4)]
            rows.append({
                "ask": {"value": num(t.price + info.tick * (1 + level)), "volume": 1 + int(u[0] * 40),
                        "orders": 1 + int(u[1] * 5)},
                "bid": {"value": num(t.price - info.tick * (1 + level)), "volume": 1 + int(u[2] * 40),
                        "orders": 1 + int(u[3] * 5)},
            })
        out["data"] = rows
        return out


def point(t: Tick) -> dict[str, Any]:
    return {"date": ts_out(t.ts_ns), "value": num(t.price)}


def open_interest(seed: int, key: int, day: int) -> int:
    return 500 + int(unit(seed, key, day) * 15000)


def hash_key(ref: str) -> int:
    return stable_hash(ref) & 0xFFFFFFFF


def quotes_around(seed: int, t: Tick, info: QuoteInfo) -> dict[str, Any]:
    """Best ask and bid near the last trade; a bid is sometimes missing (omitted, never null)."""
    h = splitmix64(seed ^ (t.index * 0x9E3779B97F4A7C15 + 303) & ((1 << 64) - 1))
    date = ts_out(t.ts_ns)
    out: dict[str, Any] = {"ask": {"date": date, "value": num(t.price + info.tick * (1 + h % 3)),
                                   "volume": 1 + (h >> 8) % 20, "orders": 1 + (h >> 16) % 3}}
    if (h >> 24) % 100 >= 5:
        out["bid"] = {"date": date, "value": num(t.price - info.tick * (1 + (h >> 32) % 3)),
                      "volume": 1 + (h >> 40) % 20, "orders": 1 + (h >> 48) % 2}
    return out


def month_start(year: int, month: int) -> int:
    while month > 12:
        year, month = year + 1, month - 12
    return calendar.timegm((year, month, 1, 0, 0, 0))


def cash_deliveries(t: Tick, info: QuoteInfo) -> list[dict[str, Any]]:
    """Three delivery periods (this month and the next two), each a little dearer (``prime``)."""
    day = dt.datetime.fromtimestamp(t.ts_ns // NS, dt.UTC)
    out = []
    for i in range(3):
        prime = Decimal(3 * i)
        out.append({"start": month_start(day.year, day.month + i), "end": month_start(day.year, day.month + i + 1) - 1,
                    "value": num(t.price + prime), "prime": num(prime)})
    return out


def index_fields(seed: int, t: Tick) -> dict[str, Any]:
    sd = Decimal(int(unit(seed, 505, t.index) * 400)) / 100
    return {"date": ts_out(t.ts_ns), "value": num(t.price), "volume": int(t.size) * 1000,
            "standardDeviation": num(sd)}
