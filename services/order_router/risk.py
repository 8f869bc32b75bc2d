"""Pre-trade risk limits: order notional, open orders, position per market, orders per second."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from marketbus.runtime.ratelimit import RateLimiter

from .state import OpenOrders, OrderRecord
from .validation import MarketInfo


@dataclass(frozen=True)
class RiskLimits:
    max_order_notional: Decimal = Decimal(1_000_000)
    max_open_orders: int = 500
    max_position: Decimal = Decimal(1_000)  # per market, in contracts (futures) / base units (spot)
    max_orders_per_second: float = 20.0


class RiskEngine:
    def __init__(self, limits: RiskLimits) -> None:
        self.limits = limits
        self.rate = RateLimiter(limits.max_orders_per_second, max(1.0, limits.max_orders_per_second))

    @staticmethod
    def notional(market: MarketInfo, quantity: Decimal, price: Decimal) -> Decimal:
        return quantity * price * market.multiplier

    def check(self, *, market: MarketInfo, side: str, quantity: Decimal, price: Decimal | None,
              ref_price: Decimal | None, position: Decimal, open_orders: OpenOrders,
              reduce_only: bool = False, replacing: OrderRecord | None = None) -> str | None:
        """Why this order breaks a limit, or None. ``position`` is signed (> 0 long); ``replacing``
        is the open order an amendment replaces (not counted twice)."""
        limits = self.limits
        if replacing is None and len(open_orders) + 1 > limits.max_open_orders:
            return f"max open orders reached ({limits.max_open_orders})"
        px = price if price is not None and price > 0 else ref_price
        if px is None:
            return "no reference price to check the notional of a market order"
        notional = self.notional(market, quantity, px)
        if notional > limits.max_order_notional:
            return f"order notional {notional.normalize():f} is above the limit {limits.max_order_notional}"
        if not reduce_only:
            sign = 1 if side == "buy" else -1
            # worst case: every open order of this market on the same side fills too
            same_side = open_orders.remaining(market.symbol, side, excluding=replacing)
            worst = position + sign * (same_side + quantity)
            if abs(worst) > limits.max_position:
                return f"position in {market.symbol} could reach {abs(worst)} (limit {limits.max_position})"
        if not self.rate.try_acquire():
            return f"max orders per second reached ({limits.max_orders_per_second:g}/s)"
        return None
