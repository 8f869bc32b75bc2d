"""FinX synthetic market: per pair one seeded walk, per exchange a phase-shifted feed on a ms grid.

Everything here is pure and deterministic from the settings (seed, pairs, exchanges, rate), so a
test or an ingestor can build its own :class:`FinxMarket` and compute exactly what the sandbox
served. The sandbox itself only caps answers at "now" (no ticks from the future).
"""

from __future__ import annotations

import datetime as dt
import math
import random
import uuid
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

import msgspec

from services.sandbox.common.tape import TickTape, splitmix64, stable_hash, unit

from .settings import FinxSettings

MS = 1_000_000
NS_PER_S = 1_000_000_000
ORIGIN_NS = 1_577_836_800_000_000_000  # 2020-01-01T00:00:00Z: history is served from here on
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()

# Rough mid-2022 levels (the seed's examples are from June 2022) in USD.
USD_PRICES = {"BTC": "21000", "ETH": "1150", "SOL": "35", "USD": "1", "USDC": "1", "USDT": "1"}
SECURITY_NAMES = {
    "BTC": "Bitcoin",
    "ETH": "Ethereum",
    "SOL": "Solana",
    "USD": "US Dollar",
    "USDC": "USD Coin",
    "USDT": "Tether",
}


class TickRow(msgspec.Struct):
    """A tick as the vendor sends it (field order as in the seed); ``price`` is a string."""

    pair: str
    date: str
    time: str
    exchange: str
    price: str


class SnapRow(TickRow):
    """The REST snap row also carries ``unix_time`` (epoch seconds), read by ``pair_quote_series``."""

    unix_time: float


@dataclass(frozen=True, slots=True)
class FinxTick:
    """Ground truth for one tick: exact time (ns, whole ms) and the exact wire price text."""

    pair: str
    exchange: str
    ts_ns: int
    price_text: str

    @property
    def price(self) -> Decimal:
        return Decimal(self.price_text)

    def row(self) -> TickRow:
        date, time = wire_date_time(self.ts_ns)
        return TickRow(self.pair, date, time, self.exchange, self.price_text)

    def snap_row(self) -> SnapRow:
        date, time = wire_date_time(self.ts_ns)
        return SnapRow(self.pair, date, time, self.exchange, self.price_text, self.ts_ns / NS_PER_S)


# --- wire time helpers ----------------------------------------------------------------------
@lru_cache(maxsize=4096)
def _day_text(day: int) -> str:
    return dt.date.fromordinal(_EPOCH_ORDINAL + day).isoformat()


def wire_date_time(ts_ns: int) -> tuple[str, str]:
    """``("2022-06-15", "21:27:40.453Z")`` for a UTC time in ns (hot path: no datetime objects)."""
    secs, ms = divmod(ts_ns // MS, 1000)
    day, sod = divmod(secs, 86400)
    hours, rem = divmod(sod, 3600)
    minutes, seconds = divmod(rem, 60)
    return _day_text(day), f"{hours:02d}:{minutes:02d}:{seconds:02d}.{ms:03d}Z"


def parse_date_time(date_text: str, time_text: str | None = "00:00") -> int:
    """UTC ns of a seed-style ``date`` + ``time`` (``HH:MM``, ``HH:MM:SS`` or ``HH:MM:SS.fffZ``).

    Raises ValueError on anything else.
    """
    day = dt.date.fromisoformat(date_text.strip())
    clock = dt.time.fromisoformat((time_text or "00:00").strip().removesuffix("Z") or "00:00")
    micros = ((clock.hour * 60 + clock.minute) * 60 + clock.second) * 1_000_000 + clock.microsecond
    return (day.toordinal() - _EPOCH_ORDINAL) * 86400 * NS_PER_S + micros * 1000


def day_end_ns(ts_ns: int) -> int:
    day_ns = 86400 * NS_PER_S
    return (ts_ns // day_ns + 1) * day_ns


@dataclass(frozen=True, slots=True)
class _Feed:
    """One exchange's ticks of one pair: the pair's walk plus the exchange's own basis."""

    exchange: str
    tape: TickTape
    basis_seed: int
    basis_ticks: int


# --- the market -----------------------------------------------------------------------------
def _usd_price(ticker: str) -> Decimal:
    known = USD_PRICES.get(ticker)
    if known is not None:
        return Decimal(known)
    # An unknown ticker still gets a stable level between 1 and 1000.
    return Decimal(1 + stable_hash("finx-level", ticker) % 1000)


def pair_base_price(pair: str) -> Decimal:
    base, _, quote = pair.partition(":")
    return (_usd_price(base) / _usd_price(quote or "USD")).quantize(Decimal("0.01")) or Decimal("0.01")


class FinxMarket:
    """All pairs on all exchanges; ``ticks()`` is the ground truth the sandbox serves from."""

    def __init__(self, settings: FinxSettings) -> None:
        self.settings = settings
        self.seed = settings.seed
        self.pairs = [p.upper() for p in settings.pairs]
        self.exchanges = [e.upper() for e in settings.exchanges]
        rate = max(settings.rate, 1e-3)
        self.period_ms = max(1, round(1000 / rate))
        self._noise_seed = splitmix64(settings.seed ^ stable_hash("finx-noise"))
        self._noise_rate = settings.noise_rate
        # All exchanges of a pair follow one walk (same tape key); each adds its own small basis
        # and is phase-shifted on the ms grid, so exchange tick times never coincide (as long as
        # period_ms >= number of exchanges) and paging by time meets no ties.
        n = len(self.exchanges)
        self._feeds: dict[str, list[_Feed]] = {}
        for pair in self.pairs:
            base = pair_base_price(pair)
            volatility = max(1.0, float(base) * 2e-5 / 0.01)  # ~0.002% of the price per step
            self._feeds[pair] = [
                _Feed(
                    exchange,
                    TickTape(
                        settings.seed,
                        f"finx:{pair}",
                        base,
                        period_ns=self.period_ms * MS,
                        origin_ns=ORIGIN_NS + (i * self.period_ms // n) * MS,
                        volatility=volatility,
                    ),
                    basis_seed=stable_hash(settings.seed, "finx-basis", pair, exchange),
                    basis_ticks=max(1, int(base * Decimal("0.0001") / Decimal("0.01"))),
                )
                for i, exchange in enumerate(self.exchanges)
            ]

    # --- identity ---------------------------------------------------------------------------
    @property
    def ticks_per_second(self) -> float:
        """Aggregate synthetic rate over every pair and exchange."""
        return len(self.pairs) * len(self.exchanges) * 1000 / self.period_ms

    def normalize_pair(self, pair: str | None) -> str | None:
        """The configured pair for a requested one, or None when it is not listed."""
        if not pair:
            return None
        pair = pair.strip().upper()
        return pair if pair in self._feeds else None

    # --- ticks ------------------------------------------------------------------------------
    def _price_text(self, feed: _Feed, k: int) -> str:
        tape = feed.tape
        basis = int((unit(feed.basis_seed, k) - 0.5) * 2 * feed.basis_ticks)
        price = max(1, tape.price_ticks(k) + basis) * tape.tick_size
        if self._noise_rate > 0 and unit(self._noise_seed, feed.basis_seed, k) < self._noise_rate:
            # The vendor's prices went through a float somewhere: one ulp above the decimal value
            # prints exactly like the seed's "21865.010000000002".
            return repr(math.nextafter(float(price), math.inf))
        return str(price)

    def _tick(self, pair: str, feed: _Feed, k: int) -> FinxTick:
        return FinxTick(pair, feed.exchange, feed.tape.ts(k), self._price_text(feed, k))

    def ticks(
        self,
        pair: str,
        start_ns: int,
        end_ns: int,
        exchange: str | None = None,
        limit: int | None = None,
    ) -> list[FinxTick]:
        """Ticks of ``pair`` with start_ns <= ts < end_ns over all exchanges (or one), oldest first."""
        feeds = [f for f in self._feeds[pair] if exchange is None or f.exchange == exchange.upper()]
        # Feeds share one period and interleave, so the first N merged ticks hold at most
        # N // len(feeds) + 1 of each feed: no need to compute N per feed.
        per_feed = None if limit is None else (limit // max(1, len(feeds)) + 2)
        out: list[FinxTick] = []
        for feed in feeds:
            tape = feed.tape
            first = max(0, tape.index_at_or_after(start_ns))
            stop = max(first, tape.index_at_or_after(end_ns))
            if per_feed is not None:
                stop = min(stop, first + per_feed)
            out.extend(self._tick(pair, feed, k) for k in range(first, stop))
        out.sort(key=lambda t: t.ts_ns)
        return out if limit is None else out[:limit]

    def latest(self, pair: str, at_ns: int, not_before_ns: int | None = None) -> FinxTick | None:
        """The last tick at or before ``at_ns`` over all exchanges (None if older than not_before_ns)."""
        best: FinxTick | None = None
        for feed in self._feeds[pair]:
            k = feed.tape.index_at_or_before(at_ns)
            if k < 0 or (best is not None and feed.tape.ts(k) <= best.ts_ns):
                continue
            best = self._tick(pair, feed, k)
        if best is None or (not_before_ns is not None and best.ts_ns < not_before_ns):
            return None
        return best

    def history(self, pair: str, start_ns: int, now_ns: int) -> list[FinxTick]:
        """The ``history_rows`` first ticks from ``start_ns`` (none from the future), shuffled.

        The vendor says rows are not sorted; the shuffle is seeded by the request, so the same
        request always gets the same order.
        """
        rows = self.ticks(pair, start_ns, now_ns + 1, limit=self.settings.history_rows)
        random.Random(stable_hash(self.seed, "finx-history", pair, start_ns)).shuffle(rows)
        return rows

    def snap(self, pair: str, now_ns: int, start_ns: int | None = None) -> FinxTick | None:
        """Seed form: the last tick of the requested day from ``start_ns`` on; else the latest now.

        The seed's snap for ("2022-06-15", "00:00") answers 21:27:40.453 on that day: the close
        of the day, the same row that leads its history example.
        """
        if start_ns is None:
            return self.latest(pair, now_ns)
        return self.latest(pair, min(day_end_ns(start_ns) - 1, now_ns), not_before_ns=start_ns)

    # --- reference data ---------------------------------------------------------------------
    def tickers(self) -> list[str]:
        names = dict.fromkeys(SECURITY_NAMES)
        for pair in self.pairs:
            for part in pair.split(":"):
                names.setdefault(part)
        return list(names)

    def security_id(self, ticker: str) -> str:
        """A stable uuid4-shaped id per ticker, derived from the seed."""
        high = stable_hash(self.seed, "finx-sec-id", ticker)
        low = splitmix64(high ^ stable_hash(ticker))
        return str(uuid.UUID(int=(high << 64) | low, version=4))

    def reference(self, ticker: str) -> dict[str, str] | None:
        ticker = ticker.strip().upper()
        if ticker not in self.tickers():
            return None
        return {
            "ticker": ticker,
            "security-name": SECURITY_NAMES.get(ticker, ticker),
            "finx-sec-id": self.security_id(ticker),
        }
