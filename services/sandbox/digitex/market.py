"""Reference data (currencies, markets) and per-market synthetic data: tape, book, recent trades.

Each market has a :class:`TickTape` (deterministic from the seed). The admin ``cross`` route may
move the tape: an override shifts every tick from a given index on by a fixed number of ticks, so
ticks already served never change (history stays consistent) and tests can force a price.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from decimal import Context, Decimal

from services.sandbox.common.tape import TickTape, unit

_CTX = Context(prec=80)
_Q18 = Decimal("1e-18")
ZERO = Decimal(0)


def d18(value: Decimal | int | str) -> str:
    """The vendor's decimal form: a string with exactly 18 places."""
    return f"{Decimal(value).quantize(_Q18, context=_CTX):f}"


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class Currency:
    id: int
    code: str
    name: str
    scale: int
    withdraw_fee: str

    def wire(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "code": self.code, "currency_scale": self.scale,
                "withdraw_fee": d18(self.withdraw_fee)}


# Ids and names as in the vendor's captured balances response.
CURRENCIES: dict[str, Currency] = {c.code: c for c in [
    Currency(1, "DGTX", "Digitex", 4, "100"),
    Currency(2, "BTC", "Bitcoin", 8, "0.00005"),
    Currency(3, "USD", "US Dollar", 2, "0"),
    Currency(4, "ETH", "Ethereum", 8, "0.005"),
    Currency(6, "USDT", "USDT", 4, "100"),
    Currency(7, "USDC", "USD Coin", 4, "100"),
]}

FUTURES, SPOT = 1, 2


@dataclass(frozen=True)
class MarketDef:
    id: int
    code: str
    name: str
    market_type: int
    base: str
    quote: str
    contract: str | None  # None for spot
    tick_size: Decimal
    tick_price: Decimal  # value of one tick of one contract, in the contract currency
    lot_size: Decimal
    base_price: Decimal
    pair_id: int

    @property
    def tick_scale(self) -> int:
        return max(0, -self.tick_size.normalize().as_tuple().exponent)  # type: ignore[operator]

    @property
    def multiplier(self) -> Decimal:
        """Contract value per unit of price (1 for spot: quantities are base units)."""
        return self.tick_price / self.tick_size if self.market_type == FUTURES else Decimal(1)

    @property
    def settle(self) -> str:
        """Currency in which margin and PnL are booked (futures) or the quote currency (spot)."""
        return self.contract or self.quote

    def wire(self) -> dict[str, object]:
        return {
            "id": self.id, "name": self.name, "code": self.code, "market_type": self.market_type,
            "description": f"{self.name} {'perpetual futures' if self.market_type == FUTURES else 'spot'}",
            "base_currency": CURRENCIES[self.base].wire(), "quote_currency": CURRENCIES[self.quote].wire(),
            "contract_currency": CURRENCIES[self.contract].wire() if self.contract else None,
            "tick_size": d18(self.tick_size), "tick_price": d18(self.tick_price), "tick_scale": self.tick_scale,
            "lot_size": d18(self.lot_size), "funding": d18("0.0001" if self.market_type == FUTURES else 0),
        }


MARKETS: dict[int, MarketDef] = {m.id: m for m in [
    MarketDef(1, "FS:BTCUSD", "BTC/USD USDC", FUTURES, "BTC", "USD", "USDC", Decimal(5), Decimal("0.05"),
              Decimal(1), Decimal(41000), 1),
    MarketDef(2, "FS:ETHUSD", "ETH/USD USDC", FUTURES, "ETH", "USD", "USDC", Decimal("0.5"), Decimal("0.005"),
              Decimal(1), Decimal(2800), 2),
    MarketDef(3, "S:BTCUSDC", "BTC/USDC", SPOT, "BTC", "USDC", None, Decimal("0.5"), Decimal("0.5"),
              Decimal("0.0001"), Decimal(41000), 3),
]}


def currency_pairs() -> list[dict[str, object]]:
    return [{"id": m.pair_id, "code": f"{m.base}{m.quote}", "scale": m.tick_scale, "name": f"{m.base}/{m.quote}",
             "base": CURRENCIES[m.base].wire(), "quote": CURRENCIES[m.quote].wire()} for m in MARKETS.values()]


@dataclass
class MarketState:
    """The live synthetic data of one market."""

    market: MarketDef
    tape: TickTape
    listing_index: int
    depth: int
    # Sorted override start indexes and their tick offsets (see module docstring).
    shift_from: list[int] = field(default_factory=list)
    shift_by: list[int] = field(default_factory=list)
    size_override: dict[int, Decimal] = field(default_factory=dict)

    def index_now(self) -> int:
        return self.tape.last_index()

    def price_ticks(self, k: int) -> int:
        ticks = self.tape.price_ticks(k)
        pos = bisect.bisect_right(self.shift_from, k) - 1
        return max(1, ticks + self.shift_by[pos]) if pos >= 0 else ticks

    def price(self, k: int) -> Decimal:
        return self.price_ticks(k) * self.market.tick_size

    def size(self, k: int) -> Decimal:
        return self.size_override.get(k) or self.tape.size(k)

    def ts_us(self, k: int) -> int:
        return self.tape.ts(k) // 1000

    def shift(self, k: int, price_ticks: int, spike: bool) -> None:
        """Make tick ``k`` trade at ``price_ticks``; the walk continues from there unless ``spike``."""
        base = self.tape.price_ticks(k)
        # Drop overrides at or after k (k is in the future, so nothing served changes).
        cut = bisect.bisect_left(self.shift_from, k)
        keep_after = self.shift_by[cut - 1] if cut > 0 else 0
        del self.shift_from[cut:], self.shift_by[cut:]
        self.shift_from.append(k)
        self.shift_by.append(price_ticks - base)
        if spike:
            self.shift_from.append(k + 1)
            self.shift_by.append(keep_after)

    # --- public market data ---------------------------------------------------------------
    def book(self, k: int | None = None) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        """Bids below and asks above the last trade price; sizes are a function of (tick, level)."""
        k = self.index_now() if k is None else k
        last = self.price_ticks(k)
        tick, lot = self.market.tick_size, self.market.lot_size
        seed = self.tape.seed

        def level(side: int, i: int) -> Decimal:
            # Deeper levels hold more on average, like a real book.
            return (1 + int(unit(seed, 303 + side, k, i) ** 2 * 40 * (i + 1))) * lot

        bids = [((last - i) * tick, level(1, i)) for i in range(1, self.depth + 1) if last - i > 0]
        asks = [((last + i) * tick, level(2, i)) for i in range(1, self.depth + 1)]
        return bids, asks

    def recent(self, count: int) -> list[dict[str, object]]:
        k = self.index_now()
        first = max(self.listing_index, k - count + 1)
        mult = self.market.multiplier
        out = []
        for i in range(k, first - 1, -1):  # newest first
            price, size = self.price(i), self.size(i)
            out.append({"trade_id": i, "timestamp": self.ts_us(i), "price": d18(price), "base_volume": d18(size),
                        "quote_volume": d18(price * size * mult), "side": self.tape.side(i)})
        return out


def build_markets(seed: int, rate: float, history_s: int, depth: int) -> dict[int, MarketState]:
    period_ns = max(1, int(1e9 / rate))
    listing_ns = time.time_ns() - history_s * 1_000_000_000
    states = {}
    for m in MARKETS.values():
        tape = TickTape(seed, f"digitex:{m.code}", m.base_price, m.tick_size, m.lot_size, period_ns=period_ns,
                        max_lots=50 if m.market_type == FUTURES else 5000)
        states[m.id] = MarketState(m, tape, tape.index_at_or_after(listing_ns), depth)
    return states
