"""Exchange metadata (markets, enums from ``exchange_info.order_meta``) and command validation.

Pure functions: a command and the metadata in, a refusal reason (or None) out. Enum numbers are
never hard-coded: they come from ``order_meta`` (either key naming: ``type``/``side``/... or
``order_type``/``order_side``/...).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from marketbus.contracts.orders import CancelOrders, PlaceOrder, UpdateOrder
from marketbus.contracts.subjects import normalize_symbol

FUTURES = 1  # MarketType (not part of order_meta; documented enum)

# contract state names of the exchange's order statuses
STATUS_STATES = {
    "PENDING": "submitted", "ACCEPTED": "accepted", "PARTIAL": "partially_filled", "FILLED": "filled",
    "CANCELED": "cancelled", "CANCELLED": "cancelled", "REJECTED": "rejected",
}


class MetaError(ValueError):
    pass


@dataclass(frozen=True)
class MarketInfo:
    id: int
    code: str  # vendor code, e.g. FS:BTCUSD
    symbol: str  # normalized, e.g. FS-BTCUSD
    futures: bool
    tick_size: Decimal
    tick_price: Decimal
    lot_size: Decimal
    settle: str  # contract currency (futures) or quote currency (spot)

    @property
    def multiplier(self) -> Decimal:
        return self.tick_price / self.tick_size if self.futures and self.tick_size else Decimal(1)


def _enum(meta: dict[str, Any], name: str) -> dict[str, int]:
    for key in (name, f"order_{name}"):
        value = meta.get(key)
        if isinstance(value, dict) and value:
            return {str(k).upper(): int(v) for k, v in value.items()}
    raise MetaError(f"exchange_info.order_meta has no {name!r} (nor 'order_{name}') enum")


@dataclass(frozen=True)
class ExchangeMeta:
    markets: dict[str, MarketInfo]  # by normalized symbol
    by_id: dict[int, MarketInfo]
    side: dict[str, int]  # "buy" -> 1
    type: dict[str, int]  # "market"/"limit" -> n
    duration: dict[str, int]  # "GTC" -> 2
    status: dict[int, str]  # 2 -> "accepted" (contract state)
    side_of: dict[int, str]
    type_of: dict[int, str]
    duration_of: dict[int, str]

    @classmethod
    def from_exchange_info(cls, info: dict[str, Any]) -> ExchangeMeta:
        meta = info.get("order_meta") or {}
        sides, types = _enum(meta, "side"), _enum(meta, "type")
        durations, statuses = _enum(meta, "duration"), _enum(meta, "status")
        try:
            side = {"buy": sides["BUY"], "sell": sides["SELL"]}
            otype = {"market": types["MARKET"], "limit": types["LIMIT"]}
        except KeyError as exc:
            raise MetaError(f"order_meta lacks {exc}") from None
        duration = {name: value for name, value in durations.items() if name in ("GFD", "GTC", "GTF", "IOC", "FOK")}
        status = {value: STATUS_STATES[name] for name, value in statuses.items() if name in STATUS_STATES}
        markets: dict[str, MarketInfo] = {}
        for m in info.get("markets") or []:
            try:
                contract = m.get("contract_currency")
                quote = m.get("quote_currency") or {}
                market = MarketInfo(
                    id=int(m["id"]), code=str(m["code"]), symbol=normalize_symbol(str(m["code"])),
                    futures=int(m.get("market_type", 0)) == FUTURES, tick_size=Decimal(str(m["tick_size"])),
                    tick_price=Decimal(str(m.get("tick_price") or m["tick_size"])),
                    lot_size=Decimal(str(m["lot_size"])),
                    settle=str((contract or quote).get("code", "")),
                )
            except (KeyError, TypeError, ValueError, InvalidOperation):
                continue
            markets[market.symbol] = market
        return cls(
            markets=markets, by_id={m.id: m for m in markets.values()}, side=side, type=otype, duration=duration,
            status=status, side_of={v: k for k, v in side.items()}, type_of={v: k for k, v in otype.items()},
            duration_of={v: k for k, v in duration.items()},
        )


@dataclass(frozen=True)
class Limits:
    """Static validation limits (from settings)."""

    max_quantity: Decimal = Decimal(1_000_000)
    max_price: Decimal = Decimal(10_000_000)
    max_leverage: int = 100
    market_durations: frozenset[str] = frozenset({"IOC", "FOK"})


# identifiers become subject tokens (orders.evt.digitex.<market>.<client_id>) and KV keys: bounded,
# printable, no subject wildcards/separators (Digitex's own client ids are uuids)
MAX_CLIENT_ID = 64
MAX_MARKET = 64
MAX_COMMAND_ID = 128
MAX_CLIENT_IDS = 1_000  # per cancel
_ID_OK = re.compile(r"[!-~]+")  # printable ASCII, no space
_NOT_IN_TOKEN = re.compile(r"[.*>]")


def _id_problem(value: str, what: str, limit: int) -> str | None:
    if not value:
        return f"{what} is required"
    if len(value) > limit:
        return f"{what} is {len(value)} characters long (at most {limit})"
    if not _ID_OK.fullmatch(value) or _NOT_IN_TOKEN.search(value):
        return f"{what} {value[:40]!r} must be printable ASCII without spaces, '.', '*' or '>'"
    return None


def identifier_problem(cmd: PlaceOrder | CancelOrders | UpdateOrder) -> str | None:
    """Why the identifiers of ``cmd`` cannot be used as subject tokens and KV keys, or None.
    Checked before anything else: such a command cannot even get an order event of its own."""
    if len(cmd.command_id) > MAX_COMMAND_ID or not cmd.command_id:
        return f"command_id must be 1..{MAX_COMMAND_ID} characters (got {len(cmd.command_id)})"
    market = getattr(cmd, "market", None)
    if market is not None:
        problem = _id_problem(market, "market", MAX_MARKET)
        if problem:
            return problem
    if isinstance(cmd, CancelOrders):
        if len(cmd.client_ids) > MAX_CLIENT_IDS:
            return f"{len(cmd.client_ids)} client ids in one cancel (at most {MAX_CLIENT_IDS})"
        for cid in cmd.client_ids:
            problem = _id_problem(cid, "client_id", MAX_CLIENT_ID)
            if problem:
                return problem
        return None
    return _id_problem(cmd.client_id, "client_id", MAX_CLIENT_ID)


def safely(check: Callable[[], str | None]) -> str | None:
    """Run a validation or risk check; a value it cannot even compute with (a decimal beyond the
    context's precision, an overflow) is a refusal with the reason, never an exception."""
    try:
        return check()
    except (ArithmeticError, ValueError, TypeError, KeyError) as exc:
        return f"invalid command: {type(exc).__name__}: {exc}"[:500]


def _multiple(value: Decimal, step: Decimal) -> bool:
    return step <= 0 or value % step == 0


def validate_order(cmd: PlaceOrder | UpdateOrder, meta: ExchangeMeta, limits: Limits) -> str | None:
    """Why ``cmd`` cannot be sent (static checks), or None; never raises (:func:`safely`)."""
    return safely(lambda: _validate_order(cmd, meta, limits))


def _validate_order(cmd: PlaceOrder | UpdateOrder, meta: ExchangeMeta, limits: Limits) -> str | None:
    market = meta.markets.get(cmd.market)
    if market is None:
        return f"unknown market {cmd.market!r}"
    if not cmd.client_id:
        return "client_id is required"
    if cmd.side not in meta.side:
        return f"side {cmd.side!r} is not offered by the exchange"
    if cmd.order_type not in meta.type:
        return f"order type {cmd.order_type!r} is not offered by the exchange"
    if cmd.duration not in meta.duration:
        return f"duration {cmd.duration!r} is not offered by the exchange"
    qty = cmd.quantity
    if not qty.is_finite() or qty <= 0:
        return "quantity must be positive"
    if qty > limits.max_quantity:
        return f"quantity {qty} is above the maximum {limits.max_quantity}"
    if not _multiple(qty, market.lot_size):
        return f"quantity {qty} is not a multiple of the lot size {market.lot_size}"
    if cmd.order_type == "limit":
        if cmd.price is None:
            return "a limit order needs a price"
        if not cmd.price.is_finite() or cmd.price <= 0:
            return "price must be positive"
        if cmd.price > limits.max_price:
            return f"price {cmd.price} is above the maximum {limits.max_price}"
        if not _multiple(cmd.price, market.tick_size):
            return f"price {cmd.price} is not a multiple of the tick size {market.tick_size}"
    else:
        if cmd.price is not None and cmd.price != 0:
            return "a market order takes no price"
        if cmd.duration not in limits.market_durations:
            return f"a market order must be {' or '.join(sorted(limits.market_durations))}, not {cmd.duration}"
    if market.futures:
        if not 1 <= cmd.leverage <= limits.max_leverage:
            return f"leverage {cmd.leverage} is outside 1..{limits.max_leverage}"
    elif cmd.leverage != 1:
        return "leverage must be 1 on a spot market"
    if isinstance(cmd, PlaceOrder) and cmd.reduce_only and not market.futures:
        return "reduce-only is for futures markets"
    return None


def validate_cancel(cmd: CancelOrders, meta: ExchangeMeta) -> str | None:
    if cmd.market is None:
        if cmd.client_ids:
            return "cancelling by client ids needs the market (client ids are unique per market)"
        return None
    if cmd.market not in meta.markets:
        return f"unknown market {cmd.market!r}"
    return None


def check_reduce_only(side: str, quantity: Decimal, position: Decimal, pending_reduce: Decimal) -> str | None:
    """``position`` is signed (> 0 long); ``pending_reduce`` is what other open reduce-only orders
    on the same side already take off."""
    if (side == "sell" and position <= 0) or (side == "buy" and position >= 0):
        return "reduce-only order would open or increase a position"
    if quantity + pending_reduce > abs(position):
        return f"reduce-only quantity {quantity} exceeds the position left to reduce ({abs(position) - pending_reduce})"
    return None
