"""REST under ``/backend/``: GET with ``?APIKey=`` in the query, always a JSON body.

The client concatenates query values without URL-encoding (``pair=BTC:USD``) and calls
``requests.get(url).json()`` without looking at the status, so errors are JSON too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.sandbox.common.base import json_response

from .context import FinxContext, RequestError
from .data import NS_PER_S, parse_date_time
from .deribit import list_contracts, time_slice

Endpoint = Callable[[FinxContext, Request], Any]


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def _seconds(raw: str, name: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise RequestError(f"invalid {name}: {raw}") from None


def snap(ctx: FinxContext, request: Request) -> Any:
    q = request.query_params
    pair = ctx.pair(q.get("pair"))
    now = ctx.now_ns()
    target, width = q.get("unixTimeTarget", ""), q.get("timeTargetWidthSeconds", "")
    if not target:
        tick = ctx.market.latest(pair, now)
    elif "-" in target:
        # The seed's tick_snap(pair, "2022-06-15", "00:00") through the real client lands here as
        # unixTimeTarget=2022-06-15&timeTargetWidthSeconds=00:00: honour the seed's meaning.
        try:
            start = parse_date_time(target, width or "00:00")
        except ValueError:
            raise RequestError(f"invalid unixTimeTarget: {target}") from None
        tick = ctx.market.snap(pair, now, start)
    else:
        # As-of quote: the last tick at or before the target, at most ``width`` seconds older.
        target_ns = int(_seconds(target, "unixTimeTarget") * NS_PER_S)
        width_ns = int(_seconds(width or str(ctx.settings.snap_width_s), "timeTargetWidthSeconds") * NS_PER_S)
        tick = ctx.market.latest(pair, min(target_ns, now), not_before_ns=target_ns - width_ns)
    return tick.snap_row() if tick else {}


def options_time_slice(ctx: FinxContext, request: Request) -> Any:
    q = request.query_params
    target = _seconds(q.get("timeslice_target_datestamp", ""), "timeslice_target_datestamp")
    width = _seconds(q.get("timeslice_width_seconds") or "30", "timeslice_width_seconds")
    underlying = q.get("underlying_symbol")
    if not underlying:
        raise RequestError('missing "underlying_symbol" parameter')
    target_ns = int(target * NS_PER_S)
    if target_ns > ctx.now_ns():
        return []
    return time_slice(ctx.market, underlying, target_ns, width)


def pairs(ctx: FinxContext, request: Request) -> Any:
    return list(ctx.market.pairs)


def secdb(ctx: FinxContext, request: Request) -> Any:
    return ctx.secdb(request.query_params.get("securityId"))


def deribit_contracts(ctx: FinxContext, request: Request) -> Any:
    raw = request.query_params.get("as_of_date", "")
    at_ns = ctx.now_ns()
    # The client sends the literal "None" when no date is given.
    if raw and raw != "None":
        try:
            at_ns = parse_date_time(raw, "00:00") if "-" in raw else int(float(raw) * NS_PER_S)
        except ValueError:
            raise RequestError(f"invalid as_of_date: {raw}") from None
    return list_contracts(ctx.market, at_ns)


ENDPOINTS: dict[str, Endpoint] = {
    "observations/tick/snap": snap,
    "observations/options/time_slice": options_time_slice,
    "observations/pairs": pairs,
    "reference/secdb": secdb,
    "deribit/list-deribit-contracts": deribit_contracts,
}


def _wrap(ctx: FinxContext, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        if not ctx.key_ok(request.query_params.get("APIKey")):
            return error_response(401, "invalid API key")
        try:
            return json_response(endpoint(ctx, request))
        except RequestError as exc:
            return error_response(exc.status, str(exc))

    return handle


def routes(ctx: FinxContext) -> list[Route]:
    # Served with and without the trailing slash (finx-io 0.2.5 calls reference/secdb/).
    return [
        Route(f"/backend/{path}{slash}", _wrap(ctx, endpoint), methods=["GET"])
        for path, endpoint in ENDPOINTS.items()
        for slash in ("", "/")
    ]
