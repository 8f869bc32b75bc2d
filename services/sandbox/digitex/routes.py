"""The bot API (``/dapi/v1/exchange/bot/...``) and the ``/_sandbox/digitex`` admin routes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.sandbox.common.base import json_response

from .engine import DONE, FOK, GFD, OPEN, STATUS_NAMES, Account, Engine, Order
from .faults import DigitexSwitches
from .market import CURRENCIES, MARKETS, MarketState, build_markets, currency_pairs, d18, now_us
from .ohlcv import BarCache, parse_resolution
from .pagination import InvalidCursor, paginate
from .settings import DigitexSettings
from .throttle import Throttle
from .validation import ApiError, Fields, detail, json_body

BASE = "/dapi/v1/exchange/bot"
OHLCV_CAP = 1000
RECENT_DEFAULT = 1000
PAGE_DEFAULT, PAGE_MAX = 50, 1000
Handler = Callable[[Request, Account | None], Awaitable[Response]]


def error_body(status: int, code: str, message: str) -> tuple[bytes, dict[str, str]]:
    """The vendor's error bodies for injected faults (DRF JSON; Django's HTML page for a bare 500)."""
    if status == 500:
        return b"\n<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Server Error (500)</title>\n</head>\n" \
               b"<body>\n  <h1>Server Error (500)</h1><p></p>\n</body>\n</html>\n", {"content-type": "text/html"}
    if status == 429:
        # The wait is sent in Retry-After; DRF's text without a known wait is this one.
        return msgspec.json.encode({"detail": "Request was throttled.", "code": "throttled"}), {}
    if status == 503:
        return msgspec.json.encode({"detail": "Service temporarily unavailable, try again later.",
                                    "code": "service_unavailable"}), {}
    return msgspec.json.encode({"detail": message or "A server error occurred.", "code": code or "error"}), {}


def _raw_error(status: int) -> Response:
    body, headers = error_body(status, "error", "A server error occurred.")
    return Response(body, status, headers=headers, media_type=headers.get("content-type", "application/json"))


class DigitexApi:
    def __init__(self, settings: DigitexSettings) -> None:
        self.settings = settings
        self.markets: dict[int, MarketState] = build_markets(settings.seed, settings.rate, settings.history_s,
                                                            settings.book_depth)
        self.tokens = {tok: settings.trader_id_base + i for i, tok in enumerate(settings.tokens)}
        self.engine = Engine(self.markets, list(self.tokens.values()), settings.initial_balances,
                             settings.order_type_market, settings.order_type_limit)
        self.switches = DigitexSwitches(
            place_reply_delay_ms=settings.place_reply_delay_ms, place_fail_status=settings.place_fail_status,
            maintenance=settings.maintenance, rate_limit_enabled=settings.rate_limit_enabled,
            accept_delay_ms=settings.accept_delay_ms)
        self.throttle = Throttle([(settings.rate_limit_per_second, 1.0), (settings.rate_limit_per_minute, 60.0)])
        self.bars = BarCache()
        self.types = (settings.order_type_market, settings.order_type_limit)

    # --- plumbing -------------------------------------------------------------------------
    def account_for(self, request: Request, private: bool) -> Account | None:
        header = request.headers.get("authorization", "")
        parts = header.split()
        if not parts or parts[0].lower() != "token":
            if private:
                raise detail(401, "Authentication credentials were not provided.", "not_authenticated",
                             {"www-authenticate": "Token"})
            return None
        trader_id = self.tokens.get(parts[1]) if len(parts) == 2 else None
        if trader_id is None:
            if private:
                raise detail(401, "Invalid token.", "authentication_failed", {"www-authenticate": "Token"})
            return None  # public routes answer with or without a (valid) token
        return self.engine.accounts[trader_id]

    def endpoint(self, handler: Handler, private: bool) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                if self.switches.maintenance:
                    raise detail(503, "Service temporarily unavailable, try again later.", "service_unavailable")
                acct = self.account_for(request, private)
                if self.switches.rate_limit_enabled:
                    who = f"trader:{acct.trader_id}" if acct else f"ip:{request.client.host if request.client else '?'}"
                    wait = self.throttle.wait(who)
                    if wait:
                        raise detail(429, f"Request was throttled. Expected available in {wait} seconds.",
                                     "throttled", {"retry-after": str(wait)})
                return await handler(request, acct)
            except ApiError as exc:
                return exc.response()
        return run

    def market(self, fields: Fields, name: str = "market_id", required: bool = True) -> MarketState | None:
        market_id = fields.int(name, required)
        if market_id is not None and market_id not in self.markets:
            fields.errors.setdefault(name, []).append(f'Invalid pk "{market_id}" - object does not exist.')
        fields.check()
        return self.markets.get(market_id) if market_id is not None else None

    def page(self, request: Request, items: list[Any], key: Callable[[Any], int]) -> Response:
        fields = Fields(request.query_params)
        size = fields.int("page_size")
        size = PAGE_DEFAULT if not size or size < 1 or fields.errors else min(size, PAGE_MAX)
        try:
            page, nxt, prev = paginate(items, key, size, request.query_params.get("cursor") or None)
        except InvalidCursor:
            raise detail(404, "Invalid cursor", "not_found") from None
        return json_response({"next": nxt, "previous": prev, "results": [it.wire() for it in page]})

    # --- public ---------------------------------------------------------------------------
    async def ping(self, request: Request, acct: Account | None) -> Response:
        return json_response({"message": "pong", "timestamp": now_us()})

    async def currency(self, request: Request, acct: Account | None) -> Response:
        fields = Fields(request.query_params)
        wanted = fields.int("currency_id")
        fields.check()
        items = [c for c in CURRENCIES.values() if wanted is None or c.id == wanted]
        return json_response([c.wire() for c in items])

    async def currency_pair(self, request: Request, acct: Account | None) -> Response:
        return json_response(currency_pairs())

    def order_meta(self) -> dict[str, object]:
        market, limit = self.types
        meta: dict[str, object] = {
            "type": {"MARKET": market, "LIMIT": limit},
            "side": {"BUY": 1, "SELL": 2},
            "position": {"UNDEFINED": 0, "LONG": 1, "SHORT": 2},
            "duration": {"DURATION_UNDEFINED": 0, "GFD": 1, "GTC": 2, "GTF": 3, "IOC": 4, "FOK": 5},
            "status": {name: value for value, name in sorted(STATUS_NAMES.items())},
        }
        if self.settings.order_meta_keys == "model":
            return {f"order_{key}": value for key, value in meta.items()}
        return meta

    async def exchange_info(self, request: Request, acct: Account | None) -> Response:
        return json_response({
            "currencies": [c.wire() for c in CURRENCIES.values()],
            "markets": [m.wire() for m in MARKETS.values()],
            "notifications": [],
            "server_time": now_us(),
            "rate_limits": [{"interval": "SECOND", "limit": self.settings.rate_limit_per_second},
                            {"interval": "MINUTE", "limit": self.settings.rate_limit_per_minute}],
            "order_meta": self.order_meta(),
        })

    async def markets_(self, request: Request, acct: Account | None) -> Response:
        fields = Fields(request.query_params)
        wanted = fields.int("market_id")
        fields.check()
        return json_response([m.wire() for m in MARKETS.values() if wanted is None or m.id == wanted])

    async def order_book(self, request: Request, acct: Account | None) -> Response:
        state = self.market(Fields(request.query_params))
        assert state is not None
        k = state.index_now()
        bids, asks = state.book(k)
        return json_response({"market_id": state.market.id, "timestamp": state.ts_us(k),
                              "bids": [[d18(p), d18(v)] for p, v in bids], "asks": [[d18(p), d18(v)] for p, v in asks]})

    async def recent_trades(self, request: Request, acct: Account | None) -> Response:
        fields = Fields(request.query_params)
        count = fields.int("max_trades")
        state = self.market(fields)
        assert state is not None
        count = RECENT_DEFAULT if count is None or count < 1 else min(count, RECENT_DEFAULT)
        return json_response(
            {"market_id": state.market.id, "timestamp": now_us(), "recent_trades": state.recent(count)}
        )

    async def ohlcv(self, request: Request, acct: Account | None) -> Response:
        fields = Fields(request.query_params)
        resolution_text = request.query_params.get("resolution", "")
        resolution = parse_resolution(resolution_text) if resolution_text else None
        if not resolution_text:
            fields.errors["resolution"] = ["This field is required."]
        elif resolution is None:
            fields.errors["resolution"] = [f'"{resolution_text}" is not a valid choice.']
        date_from, date_to, top_n = fields.int("date_from"), fields.int("date_to"), fields.int("top_n")
        state = self.market(fields)
        assert state is not None and resolution is not None
        top_n = OHLCV_CAP if top_n is None or top_n < 1 else min(top_n, OHLCV_CAP)
        date_to = now_us() if date_to is None else date_to
        date_from = date_to - top_n * resolution.approx_us if date_from is None else date_from
        bars = self.bars.bars(state, resolution, date_from, date_to, top_n)
        return json_response({"ohlcv": [b.wire() for b in bars], "timestamp": now_us(),
                              "market_id": state.market.id, "resolution": resolution_text})

    # --- private: views -------------------------------------------------------------------
    async def balances(self, request: Request, acct: Account | None) -> Response:
        assert acct is not None
        return json_response(self.engine.balances(acct))

    async def position(self, request: Request, acct: Account | None) -> Response:
        assert acct is not None
        return json_response(self.engine.positions(acct))

    def _filtered(self, request: Request, acct: Account, statuses: tuple[int, ...], time_field: str) -> list[Order]:
        fields = Fields(request.query_params)
        status, side = fields.int("status"), fields.int("side")
        otype, market_id, trader_id = fields.int("type"), fields.int("market_id"), fields.int("trader_id")
        t_from, t_to = fields.int(f"{time_field}_from"), fields.int(f"{time_field}_to")
        fields.check()
        if trader_id is not None and trader_id != acct.trader_id:
            return []
        return [o for o in reversed(acct.orders) if o.status in statuses
                and (status is None or o.status == status) and (side is None or o.side == side)
                and (otype is None or o.type == otype) and (market_id is None or o.market_id == market_id)
                and (t_from is None or o.created_at >= t_from) and (t_to is None or o.created_at <= t_to)]

    async def orders(self, request: Request, acct: Account | None) -> Response:
        assert acct is not None
        return self.page(request, self._filtered(request, acct, OPEN, "created_at"), lambda o: o.created_at)

    async def order_history(self, request: Request, acct: Account | None) -> Response:
        assert acct is not None
        return self.page(request, self._filtered(request, acct, DONE, "created_at"), lambda o: o.created_at)

    async def order_status(self, request: Request, acct: Account | None) -> Response:
        assert acct is not None
        fields = Fields(request.query_params)
        client_id = fields.uuid("client_id", required=True)
        trader_id = fields.int("trader_id")
        fields.check()
        if trader_id is not None and trader_id != acct.trader_id:
            return json_response([])
        return json_response([o.wire() for o in reversed(acct.orders) if o.client_id == client_id])

    async def trade_history(self, request: Request, acct: Account | None) -> Response:
        assert acct is not None
        fields = Fields(request.query_params)
        market_id, trader_id = fields.int("market_id"), fields.int("trader_id")
        t_from, t_to = fields.int("traded_at_from"), fields.int("traded_at_to")
        fields.check()
        trades = [] if trader_id not in (None, acct.trader_id) else [
            t for t in reversed(acct.trades) if (market_id is None or t.market_id == market_id)
            and (t_from is None or t.traded_at >= t_from) and (t_to is None or t.traded_at <= t_to)]
        return self.page(request, trades, lambda t: t.traded_at)

    # --- private: commands ----------------------------------------------------------------
    def _order_fields(self, data: dict[str, object], client_id_required: bool) -> dict[str, object]:
        fields = Fields(data)
        out: dict[str, object] = {
            "market_id": fields.int("market_id", True),
            "side": fields.int("side", True, (1, 2)),
            "type": fields.int("type", True, self.types),
            "duration": fields.int("duration", True, range(GFD, FOK + 1)),
            "leverage": fields.int("leverage", True),
            "quantity": fields.decimal("quantity", True),
            "price": fields.decimal("price", True),
            "client_id": fields.uuid("client_id", client_id_required),
        }
        fields.check()
        return out

    def _echo(self, acct: Account, fields: dict[str, object]) -> dict[str, object]:
        echo = dict(fields)
        echo["quantity"], echo["price"] = d18(fields["quantity"]), d18(fields["price"])  # type: ignore[arg-type]
        echo["trader_id"] = acct.trader_id
        return echo

    def _schedule(self, acct: Account) -> Callable[[Order], None]:
        def schedule(order: Order) -> None:
            delay = self.switches.accept_delay_ms / 1000
            asyncio.get_running_loop().call_later(delay, self.engine.accept, acct, order)
        return schedule

    async def place(self, request: Request, acct: Account | None) -> Response:
        assert acct is not None
        data = json_body(await request.body())
        fields = self._order_fields(data, client_id_required=False)
        fields["client_id"] = fields["client_id"] or str(uuid.uuid4())
        key = (int(fields["market_id"]), str(fields["client_id"]))  # type: ignore[call-overload]
        self.engine.count(acct.trader_id, *key, "attempts")
        sw = self.switches
        if sw.take("place_fail_before_apply_next"):
            return _raw_error(sw.place_fail_status)
        if self.engine.exists(acct, *key):
            raise ApiError(400, {"client_id": ["Order with this client_id already exists in this market."]})
        self.engine.place(acct, fields, self._schedule(acct))
        if sw.take("place_fail_after_apply_next"):
            return _raw_error(sw.place_fail_status)
        if sw.take("place_timeout_next"):
            await asyncio.sleep(sw.place_reply_delay_ms / 1000)
        return json_response(self._echo(acct, fields))

    async def cancel(self, request: Request, acct: Account | None) -> Response:
        assert acct is not None
        fields = Fields(json_body(await request.body()))
        market_id = fields.int("market_id")
        client_ids = fields.uuid_list("orders_client_ids")
        if client_ids and market_id is None:
            fields.errors.setdefault("market_id", []).append(
                "This field is required when orders_client_ids is given (client ids are unique per market).")
        fields.check()
        canceled = self.engine.cancel(acct, market_id, client_ids or None)
        return json_response({"market_id": market_id, "orders_client_ids": client_ids or canceled,
                              "trader_id": acct.trader_id})

    async def update(self, request: Request, acct: Account | None) -> Response:
        assert acct is not None
        fields = self._order_fields(json_body(await request.body()), client_id_required=True)
        live = self.engine.live_order(acct, int(fields["market_id"]), str(fields["client_id"]))  # type: ignore[call-overload]
        if live is not None and live.status != 1:
            # Amending a live order is checked at once (a new order is checked on acceptance).
            probe = Order(str(fields["client_id"]), live.market_id, int(fields["side"]), int(fields["type"]),  # type: ignore[call-overload]
                          int(fields["duration"]), int(fields["leverage"]), fields["price"], fields["quantity"],  # type: ignore[call-overload,arg-type]
                          fields["quantity"], live.created_at, acct.trader_id)  # type: ignore[arg-type]
            reason = self.engine.reject_reason(acct, probe) if probe.quantity > 0 else "quantity must be positive"
            if reason:
                raise ApiError(400, {"non_field_errors": [reason]})
        self.engine.update(acct, fields, self._schedule(acct))
        return json_response(self._echo(acct, fields))

    # --- wiring ---------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        table: list[tuple[str, str, Handler, bool]] = [
            ("GET", "ping", self.ping, False),
            ("GET", "currency", self.currency, False),
            ("GET", "currency_pair", self.currency_pair, False),
            ("GET", "exchange_info", self.exchange_info, False),
            ("GET", "markets", self.markets_, False),
            ("GET", "order_book", self.order_book, False),
            ("GET", "recent_trades", self.recent_trades, False),
            ("GET", "history/ohlcv", self.ohlcv, False),
            ("GET", "balances", self.balances, True),
            ("GET", "position", self.position, True),
            ("GET", "orders", self.orders, True),
            ("GET", "order_status", self.order_status, True),
            ("GET", "order_history", self.order_history, True),
            ("GET", "trade_history", self.trade_history, True),
            ("POST", "trader/order", self.place, True),
            ("POST", "trader/order/cancel", self.cancel, True),
            ("POST", "trader/order/update", self.update, True),
        ]
        routes = []
        for method, path, handler, private in table:
            endpoint = self.endpoint(handler, private)
            # The vendor's paths end in "/" (ping does not); both forms are served, no redirect.
            routes.append(Route(f"{BASE}/{path}", endpoint, methods=[method]))
            routes.append(Route(f"{BASE}/{path}/", endpoint, methods=[method]))
        return routes

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        if status == 405:
            return json_response(
                {"detail": f'Method "{request.method}" not allowed.', "code": "method_not_allowed"}, 405
            )
        return json_response({"detail": "Not found.", "code": "not_found"}, status)

    def app(self) -> Starlette:
        app = Starlette(routes=self.routes(), exception_handlers={404: self._not_found, 405: self._not_found})
        app.state.background = [lambda: self.engine.run(self.settings.match_interval_ms / 1000)]
        return app
