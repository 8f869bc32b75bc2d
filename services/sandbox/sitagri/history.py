"""History replies (``.../history/START,END,RES[,SHIFT]``) computed from the same tapes as live.

``TICK`` entries are exactly the ticks live pushes carried. Bars keep the exact first and last
tick of their bucket and the exact trade count; high/low come from the first, the last and an
evenly spaced sample of the ticks in between (a bucket can hold millions of ticks), and the bar
volume is exact for small buckets and extrapolated from the sample otherwise.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Iterator
from typing import Any

from ..common.tape import Tick
from .prices import NS, Market, cash_deliveries, hash_key, index_fields, num, open_interest, ts_out
from .tree import QuoteInfo

FIXED = {"MINUTE": 60, "HOUR": 3600, "DAY": 86400}
WEEK = 7 * 86400
MONDAY = 4 * 86400  # 1970-01-01 was a Thursday: weeks start on Monday 00:00 UTC
EVAL_BUDGET = 60_000  # tick evaluations one request may spend on bar extremes
EXACT_BAR = 64


class HistoryError(ValueError):
    pass


def parse_resolution(text: str, info: QuoteInfo) -> str | int:
    """TICK/MINUTE/HOUR/DAY/WEEK/MONTH, or 1..1440 minutes (market prices only)."""
    if text in FIXED or text in ("WEEK", "MONTH"):
        return text
    if text == "TICK":
        if info.kind == "currency":
            raise HistoryError("TICK resolution is unavailable for currencies")
        return text
    if text.isdigit() and 1 <= int(text) <= 1440:
        if info.price_code != "marketPrice":
            raise HistoryError("a resolution in minutes is only available for market prices")
        return int(text)
    raise HistoryError(f"unknown resolution {text!r}")


def buckets(lo: int, hi: int, res: str | int, descending: bool) -> Iterator[tuple[int, int]]:
    """[start, end) second buckets covering [lo, hi], oldest or newest first."""
    if res == "MONTH":
        yield from _months(lo, hi, descending)
        return
    size = res * 60 if isinstance(res, int) else WEEK if res == "WEEK" else FIXED[str(res)]
    offset = MONDAY if res == "WEEK" else 0
    first = (lo - offset) // size * size + offset
    last = (hi - offset) // size * size + offset
    if descending:
        b = last
        while b >= first:
            yield b, b + size
            b -= size
    else:
        b = first
        while b <= last:
            yield b, b + size
            b += size


def _months(lo: int, hi: int, descending: bool) -> Iterator[tuple[int, int]]:
    def start(y: int, m: int) -> int:
        return calendar.timegm((y + (m - 1) // 12, (m - 1) % 12 + 1, 1, 0, 0, 0))

    a, b = dt.datetime.fromtimestamp(lo, dt.UTC), dt.datetime.fromtimestamp(hi, dt.UTC)
    months = range(a.year * 12 + a.month - 1, b.year * 12 + b.month)
    for n in reversed(months) if descending else months:
        y, m = divmod(n, 12)
        yield start(y, m + 1), start(y, m + 2)


def history(market: Market, info: QuoteInfo, start: int, end: int, res_text: str, now: int, cap: int,
            shift: int = 0) -> dict[str, Any]:
    res = parse_resolution(res_text, info)
    descending = start > end
    lo, hi = min(start, end), min(max(start, end), now)
    code = {"cashPrice": "historyCashPrice", "indexPrice": "historyIndexPrice"}[info.price_code] \
        if info.price_code != "marketPrice" else "historyMarketPrice"
    if res == "TICK":
        data = _ticks(market, info, lo, hi, descending, cap, shift)
    else:
        data = _bars(market, info, lo, hi, res, descending, cap, shift)
    return {"code": code, "quote": info.ref, "quality": info.quality,
            "ranges": [{"start": start, "end": end, "resolution": res_text, "data": data}]}


def _ticks(market: Market, info: QuoteInfo, lo: int, hi: int, desc: bool, cap: int, shift: int) -> list[Any]:
    k0, k1 = market.live_range(info, lo * NS, hi * NS)
    ks = range(k1, k0 - 1, -1) if desc else range(k0, k1 + 1)
    out: list[Any] = []
    for k in ks:
        if len(out) >= cap:
            break
        if market.alive(info, market.ts(info, k)):
            out.append(_entry(market, info, [market.tick(info, k)], 1, shift))
    return out


def _bars(market: Market, info: QuoteInfo, lo: int, hi: int, res: str | int, desc: bool, cap: int,
          shift: int) -> list[Any]:
    n_buckets = max(1, (hi - lo) // (res * 60 if isinstance(res, int) else {"WEEK": WEEK, "MONTH": 2_592_000}.get(
        str(res), FIXED.get(str(res), 60))) + 1)
    per_bar = max(0, min(EXACT_BAR, EVAL_BUDGET // min(n_buckets, cap) - 2))
    out: list[Any] = []
    for b0, b1 in buckets(lo, hi, res, desc):
        if len(out) >= cap:
            break
        k0, k1 = market.live_range(info, max(b0, lo) * NS, min(b1 * NS - 1, hi * NS))
        while k0 <= k1 and not market.alive(info, market.ts(info, k0)):
            k0 += 1  # continuous codes may have a gap at a roll; deliveries are clipped already
        if k0 > k1:
            continue
        n = k1 - k0 + 1
        if n <= per_bar + 2:
            sample = [market.tick(info, k) for k in range(k0, k1 + 1)]
        else:
            step = n / (per_bar + 1)
            inner = [market.tick(info, k0 + int(step * (i + 1))) for i in range(per_bar)]
            sample = [market.tick(info, k0), *inner, market.tick(info, k1)]
        out.append(_entry(market, info, sample, n, shift))
    return out


def _entry(market: Market, info: QuoteInfo, sample: list[Tick], n: int, shift: int) -> dict[str, Any]:
    first, last = sample[0], sample[-1]
    sh = shift * NS
    if info.kind == "cash":
        return {"date": ts_out(last.ts_ns + sh), "deliveries": cash_deliveries(last, info)}
    if info.kind == "index":
        fields = index_fields(market.seed, last)
        fields["date"] = ts_out(last.ts_ns + sh)
        return fields
    volume = sum(int(t.size) for t in sample)
    if n > len(sample):
        volume = round(volume * n / len(sample))
    high = max(sample, key=lambda t: t.price)
    low = min(sample, key=lambda t: t.price)
    return {
        "date": ts_out((first.ts_ns + last.ts_ns) // 2 + sh),
        "first": {"date": ts_out(first.ts_ns + sh), "value": num(first.price)},
        "last": {"date": ts_out(last.ts_ns + sh), "value": num(last.price), "volume": volume, "orders": n},
        "high": {"date": ts_out(high.ts_ns + sh), "value": num(high.price)},
        "low": {"date": ts_out(low.ts_ns + sh), "value": num(low.price)},
        "stats": {"openInterest": open_interest(market.seed, hash_key(info.ref), last.ts_ns // (86400 * NS))},
    }
