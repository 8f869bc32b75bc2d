"""Deribit option contracts and option time slices (``listDeribitContracts``, ``time_slice``).

Neither source documents these replies beyond the client's column comment, so records use
Deribit's own field names (``public/get_instruments`` and ``public/ticker``). Values are
deterministic: Black-Scholes greeks from a seeded smile around the underlying's tape price.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from services.sandbox.common.tape import stable_hash, unit

from .data import MS, NS_PER_S, FinxMarket, pair_base_price

UNDERLYINGS = {"BTC": 1000, "ETH": 50, "SOL": 2}  # underlying -> strike step (USD)
_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_EXPIRY_HOUR = 8  # Deribit options expire at 08:00 UTC
_N_EXPIRIES = 4
_STRIKES_EACH_SIDE = 3


def _expiry_code(day: dt.date) -> str:
    return f"{day.day}{_MONTHS[day.month - 1]}{day.year % 100:02d}"  # "24JUN22", "1JUL22"


def _expiries(as_of: dt.datetime) -> list[dt.datetime]:
    """The next Friday 08:00 UTC expiries after ``as_of``."""
    day = as_of.date()
    first = day + dt.timedelta(days=(4 - day.weekday()) % 7)
    out = []
    for week in range(_N_EXPIRIES + 1):
        expiry = dt.datetime.combine(first + dt.timedelta(weeks=week), dt.time(_EXPIRY_HOUR), dt.UTC)
        if expiry > as_of:
            out.append(expiry)
    return out[:_N_EXPIRIES]


def _is_month_end(day: dt.date) -> bool:
    return (day + dt.timedelta(weeks=1)).month != day.month


def _spot(market: FinxMarket, underlying: str, at_ns: int) -> float:
    pair = market.normalize_pair(f"{underlying}:USD")
    tick = market.latest(pair, at_ns) if pair else None
    if tick is None:
        return float(pair_base_price(f"{underlying}:USD"))
    return float(tick.price)


def _strikes(spot: float, step: int) -> list[int]:
    centre = max(step, round(spot / step) * step)
    return [centre + step * j for j in range(-_STRIKES_EACH_SIDE, _STRIKES_EACH_SIDE + 1) if centre + step * j > 0]


def _contracts(market: FinxMarket, underlying: str, at_ns: int) -> list[dict[str, Any]]:
    as_of = dt.datetime.fromtimestamp(at_ns / NS_PER_S, dt.UTC)
    spot = _spot(market, underlying, at_ns)
    out = []
    for expiry in _expiries(as_of):
        created = expiry - dt.timedelta(weeks=_N_EXPIRIES + 1)
        for strike in _strikes(spot, UNDERLYINGS[underlying]):
            for kind in ("C", "P"):
                out.append({
                    "instrument_name": f"{underlying}-{_expiry_code(expiry.date())}-{strike}-{kind}",
                    "kind": "option",
                    "option_type": "call" if kind == "C" else "put",
                    "base_currency": underlying,
                    "quote_currency": underlying,
                    "settlement_currency": underlying,
                    "strike": float(strike),
                    "expiration_timestamp": int(expiry.timestamp() * 1000),
                    "creation_timestamp": int(created.timestamp() * 1000),
                    "settlement_period": "month" if _is_month_end(expiry.date()) else "week",
                    "tick_size": 0.0005,
                    "contract_size": 1.0,
                    "min_trade_amount": 0.1,
                    "is_active": True,
                })
    return out


def list_contracts(market: FinxMarket, at_ns: int) -> list[dict[str, Any]]:
    return [c for underlying in UNDERLYINGS for c in _contracts(market, underlying, at_ns)]


def _norm_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _norm_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def time_slice(market: FinxMarket, underlying: str, target_ns: int, width_s: float) -> list[dict[str, Any]]:
    """One ticker record per live option, each stamped inside target +- width/2."""
    underlying = underlying.strip().upper()
    if underlying not in UNDERLYINGS:
        return []
    spot = _spot(market, underlying, target_ns)
    half_ms = max(0, int(width_s * 500))
    out = []
    for c in _contracts(market, underlying, target_ns):
        name = c["instrument_name"]
        h = stable_hash(market.seed, "finx-option", name, target_ns // NS_PER_S)
        strike = c["strike"]
        years = max((c["expiration_timestamp"] * MS - target_ns) / NS_PER_S / 31_536_000, 1e-6)
        iv = 55 + 25 * abs(math.log(strike / spot)) + 4 * (unit(h, 1) - 0.5)  # a smile, in %
        sigma, rate = iv / 100, 0.0
        d1 = (math.log(spot / strike) + 0.5 * sigma * sigma * years) / (sigma * math.sqrt(years))
        d2 = d1 - sigma * math.sqrt(years)
        call = c["option_type"] == "call"
        usd = spot * _norm_cdf(d1) - strike * _norm_cdf(d2) if call else strike * _norm_cdf(-d2) - spot * _norm_cdf(-d1)
        mark = round(max(usd, 0.0) / spot, 4)  # Deribit quotes options in the underlying
        spread = round(0.0005 + 0.002 * unit(h, 2), 4)
        expiry_code = name.split("-")[1]
        index = f"{underlying}-{expiry_code}"
        out.append({
            "instrument_name": name,
            "timestamp": target_ns // MS - half_ms + int(unit(h, 3) * 2 * half_ms),
            "state": "open",
            "mark_iv": round(iv, 2),
            "bid_iv": round(iv - 1.5, 2),
            "ask_iv": round(iv + 1.5, 2),
            "mark_price": mark,
            "last_price": round(mark * (0.98 + 0.04 * unit(h, 4)), 4),
            "best_bid_price": max(0.0, round(mark - spread / 2, 4)),
            "best_bid_amount": round(1 + 49 * unit(h, 5), 1),
            "best_ask_price": round(mark + spread / 2, 4),
            "best_ask_amount": round(1 + 49 * unit(h, 6), 1),
            "underlying_price": round(spot, 2),
            # Weekly expiries have no listed future: Deribit prices them off a synthetic one.
            "underlying_index": index if c["settlement_period"] == "month" else f"SYN.{index}",
            "index_price": round(spot, 2),
            "open_interest": round(1000 * unit(h, 7), 1),
            "settlement_price": mark,
            "interest_rate": rate,
            "delta": round(_norm_cdf(d1) if call else _norm_cdf(d1) - 1, 5),
            "gamma": round(_norm_pdf(d1) / (spot * sigma * math.sqrt(years)), 8),
            "vega": round(spot * _norm_pdf(d1) * math.sqrt(years) / 100, 5),
            "theta": round(-spot * _norm_pdf(d1) * sigma / (2 * math.sqrt(years)) / 365, 5),
            "rho": round((1 if call else -1) * strike * years * _norm_cdf(d2 if call else -d2) / 100, 5),
            "volume": round(500 * unit(h, 8), 1),
            "high": round(mark * 1.1, 4),
            "low": round(mark * 0.9, 4),
            "price_change": round(20 * (unit(h, 9) - 0.5), 4),
        })
    return out
