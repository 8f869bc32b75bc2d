"""``/_sandbox/finx/...``: ground truth for tests and ingestors, and run-time key revocation."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.sandbox.common.base import json_response

from .context import FinxContext
from .data import wire_date_time


class TruthRow(msgspec.Struct):
    ts_ns: int
    exchange: str
    price: str  # exactly the wire text
    date: str
    time: str


class KeysChange(msgspec.Struct, forbid_unknown_fields=True):
    api_keys: list[str]


def admin_routes(ctx: FinxContext) -> list[Route]:
    async def ticks(request: Request) -> Response:
        """What the sandbox generated for ``pair`` in [start_ns, end_ns) (end capped at now)."""
        q = request.query_params
        pair = ctx.market.normalize_pair(q.get("pair"))
        if pair is None:
            return json_response({"error": f"unknown pair: {q.get('pair')}"}, 404)
        try:
            start = int(q.get("start_ns", "0"))
            end = min(int(q.get("end_ns", str(ctx.now_ns() + 1))), ctx.now_ns() + 1)
            limit = min(int(q.get("limit", str(ctx.settings.truth_limit))), ctx.settings.truth_limit)
        except ValueError as exc:
            return json_response({"error": str(exc)}, 400)
        rows = []
        for tick in ctx.market.ticks(pair, start, end, exchange=q.get("exchange"), limit=limit):
            date, time = wire_date_time(tick.ts_ns)
            rows.append(TruthRow(tick.ts_ns, tick.exchange, tick.price_text, date, time))
        return json_response({"pair": pair, "ticks": rows})

    async def info(_: Request) -> Response:
        market = ctx.market
        return json_response({
            "pairs": market.pairs,
            "exchanges": market.exchanges,
            "period_ms": market.period_ms,
            "ticks_per_second": market.ticks_per_second,
            "history_rows": ctx.settings.history_rows,
            "tickers": {t: market.security_id(t) for t in market.tickers()},
        })

    async def get_keys(_: Request) -> Response:
        return json_response({"api_keys": sorted(ctx.api_keys)})

    async def set_keys(request: Request) -> Response:
        """Replace the accepted keys; a revoked key is refused on its next message or request."""
        try:
            change = msgspec.json.decode(await request.body(), type=KeysChange)
        except msgspec.DecodeError as exc:
            return json_response({"error": str(exc)}, 400)
        ctx.api_keys = set(change.api_keys)
        return json_response({"api_keys": sorted(ctx.api_keys)})

    return [
        Route("/finx/ticks", ticks, methods=["GET"]),
        Route("/finx/info", info, methods=["GET"]),
        Route("/finx/keys", get_keys, methods=["GET"]),
        Route("/finx/keys", set_keys, methods=["POST"]),
    ]
