"""``/_sandbox/digitex/...``: ground truth and controls for tests.

- ``GET  orders[?trader_id=]``: every order the engine knows (any status, with reject reasons) and
  ``placements``: per (trader, market, client_id) how many place requests arrived (``attempts``)
  and how many created an order (``applied``).
- ``GET  trades``: every fill, with the client_id of its order.
- ``GET  tape?market_id=&count=``: the last ticks of a market's tape (what recent_trades serves).
- ``POST cross?market_id=&price=[&size=][&spike=1]``: the next tape tick trades at ``price``
  (``size`` defaults to all resting quantity) and resting orders it crosses fill at once; the walk
  continues from there (or returns to its old path with ``spike=1``).
- ``POST reset[?token=]``: fresh accounts (balances, orders, trades, positions), throttle cleared.
- ``GET/POST faults``: the Digitex switches (see faults.py); POST merges a JSON object.
- ``GET  throttle``: how many requests the rate limit admitted and refused (429) since the last reset.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.sandbox.common.base import json_response

from .engine import ACCEPTED, PARTIAL, STATUS_NAMES
from .faults import DigitexSwitches
from .market import d18
from .routes import DigitexApi


def admin_routes(api: DigitexApi) -> list[Route]:
    engine = api.engine

    async def orders(request: Request) -> Response:
        wanted = request.query_params.get("trader_id")
        rows = []
        for acct in engine.accounts.values():
            if wanted and str(acct.trader_id) != wanted:
                continue
            for order in acct.orders:
                rows.append(order.wire() | {"trader_id": acct.trader_id, "status_name": STATUS_NAMES[order.status],
                                            "executed": d18(order.executed), "reject_reason": order.reject_reason,
                                            "leverage": order.leverage})
        placements = [{"trader_id": t, "market_id": m, "client_id": c} | counts
                      for (t, m, c), counts in engine.placements.items() if not wanted or str(t) == wanted]
        return json_response({"orders": rows, "placements": placements})

    async def trades(_: Request) -> Response:
        return json_response([t.wire() | {"client_id": t.client_id, "trader_id": acct.trader_id}
                              for acct in engine.accounts.values() for t in acct.trades])

    def _market(request: Request) -> int:
        try:
            market_id = int(request.query_params.get("market_id", ""))
        except ValueError:
            market_id = -1
        if market_id not in api.markets:
            raise ValueError("market_id: unknown or missing")
        return market_id

    async def tape(request: Request) -> Response:
        try:
            state = api.markets[_market(request)]
        except ValueError as exc:
            return json_response({"error": str(exc)}, 400)
        count = min(int(request.query_params.get("count", "100")), 100_000)
        k = state.index_now()
        ticks = [{"index": i, "timestamp": state.ts_us(i), "price": d18(state.price(i)), "size": d18(state.size(i)),
                  "side": state.tape.side(i)} for i in range(max(state.listing_index, k - count + 1), k + 1)]
        return json_response({"market_id": state.market.id, "listing_index": state.listing_index, "ticks": ticks})

    async def cross(request: Request) -> Response:
        try:
            state = api.markets[_market(request)]
            price = Decimal(request.query_params["price"])
            size_text = request.query_params.get("size")
            size = Decimal(size_text) if size_text else None
        except (ValueError, KeyError, InvalidOperation) as exc:
            return json_response({"error": f"market_id and price are required ({exc})"}, 400)
        market = state.market
        if price <= 0 or price % market.tick_size:
            return json_response({"error": f"price must be a positive multiple of {market.tick_size}"}, 400)
        # The next tick, and never one forced before (two quick crosses must not overwrite each other).
        k = max(state.index_now(), max(state.size_override, default=0)) + 1
        if size is None:
            resting = sum((o.quantity for a in engine.accounts.values() for o in a.orders
                           if o.market_id == market.id and o.status in (ACCEPTED, PARTIAL)), Decimal(0))
            size = max(resting, market.lot_size)
        state.shift(k, int(price / market.tick_size), spike=request.query_params.get("spike") in ("1", "true"))
        state.size_override[k] = size
        fills = engine.match_tape(market.id, k)
        return json_response({"market_id": market.id, "index": k, "timestamp": state.ts_us(k), "price": d18(price),
                              "size": d18(size), "fills": fills})

    async def reset(request: Request) -> Response:
        token = request.query_params.get("token")
        if token is not None and token not in api.tokens:
            return json_response({"error": "unknown token"}, 400)
        engine.reset(api.tokens[token] if token else None)
        api.throttle.reset()
        return json_response({"reset": token or "all"})

    async def get_faults(_: Request) -> Response:
        return json_response(msgspec.structs.asdict(api.switches))

    async def set_faults(request: Request) -> Response:
        body = await request.body()
        try:
            changes = msgspec.json.decode(body) if body else {}
            api.switches = msgspec.convert(msgspec.structs.asdict(api.switches) | changes, DigitexSwitches)
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as exc:
            return json_response({"error": str(exc)}, 400)
        return json_response(msgspec.structs.asdict(api.switches))

    async def throttle(_: Request) -> Response:
        return json_response({"admitted": api.throttle.admitted, "refused": api.throttle.refused})

    return [
        Route("/digitex/throttle", throttle, methods=["GET"]),
        Route("/digitex/orders", orders, methods=["GET"]),
        Route("/digitex/trades", trades, methods=["GET"]),
        Route("/digitex/tape", tape, methods=["GET"]),
        Route("/digitex/cross", cross, methods=["POST"]),
        Route("/digitex/reset", reset, methods=["POST"]),
        Route("/digitex/faults", get_faults, methods=["GET"]),
        Route("/digitex/faults", set_faults, methods=["POST"]),
    ]
