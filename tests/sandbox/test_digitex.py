"""Conformance suite for the Digitex bot REST API sandbox, driven like the vendor's generated client."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from services.sandbox.common.base import SandboxRunner
from services.sandbox.registry import load_spec

TOKEN = "dgtx_sandbox_token"
BASE = "/dapi/v1/exchange/bot/"
# What the OpenAPI-generated client sends on every call.
CLIENT_HEADERS = {"Accept": "application/json", "User-Agent": "OpenAPI-Generator/0.0.1/python"}
PENDING, ACCEPTED, REJECTED, CANCELED, FILLED, PARTIAL = 1, 2, 3, 4, 5, 6


class Dgtx:
    """A thin stand-in for the generated client: GET with query params, POST with a JSON body."""

    def __init__(self, sb: SandboxRunner, token: str | None = TOKEN, timeout: float = 10.0) -> None:
        headers = dict(CLIENT_HEADERS)
        if token is not None:
            headers["Authorization"] = f"Token {token}"
        self.http = httpx.AsyncClient(base_url=sb.url + BASE, headers=headers, timeout=timeout)
        self.admin = httpx.AsyncClient(base_url=sb.url + "/_sandbox/", timeout=10.0)
        self.meta: dict[str, Any] = {}

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.http.get(path, params={k: v for k, v in params.items() if v is not None})

    async def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return await self.http.post(path, json=body, headers={"Content-Type": "application/json"})

    async def ok(self, path: str, **params: Any) -> Any:
        resp = await self.get(path, **params)
        assert resp.status_code == 200, resp.text
        return resp.json()

    async def order_meta(self) -> dict[str, Any]:
        if not self.meta:
            self.meta = (await self.ok("exchange_info/"))["order_meta"]
        return self.meta

    async def place(self, market_id: int = 1, side: str = "BUY", kind: str = "LIMIT", duration: str = "GTC",
                    quantity: str = "5", price: str = "0", leverage: int = 10, client_id: str | None = None,
                    expect: int = 200) -> dict[str, Any]:
        # Order numbers come from exchange_info.order_meta, never hard-coded (DESIGN.md).
        meta = await self.order_meta()
        body = {"market_id": market_id, "side": meta["side"][side], "type": meta["type"][kind],
                "duration": meta["duration"][duration], "leverage": leverage, "quantity": quantity, "price": price}
        if client_id:
            body["client_id"] = client_id
        resp = await self.post("trader/order/", body)
        assert resp.status_code == expect, resp.text
        return resp.json()

    async def status(self, client_id: str) -> list[dict[str, Any]]:
        return await self.ok("order_status/", client_id=client_id)

    async def wait_status(self, client_id: str, statuses: tuple[int, ...], timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            orders = await self.status(client_id)
            if orders and orders[0]["status"] in statuses:
                return orders[0]
            assert time.monotonic() < deadline, f"{client_id} never reached {statuses}: {orders}"
            await asyncio.sleep(0.02)

    async def last_price(self, market_id: int = 1) -> Decimal:
        trades = (await self.ok("recent_trades/", market_id=market_id, max_trades=1))["recent_trades"]
        return Decimal(trades[0]["price"])

    async def cross(self, market_id: int, price: Decimal, **extra: Any) -> dict[str, Any]:
        resp = await self.admin.post("digitex/cross", params={"market_id": market_id, "price": str(price), **extra})
        assert resp.status_code == 200, resp.text
        return resp.json()

    async def set_faults(self, **switches: Any) -> None:
        resp = await self.admin.post("digitex/faults", json=switches)
        assert resp.status_code == 200, resp.text

    async def close(self) -> None:
        await self.http.aclose()
        await self.admin.aclose()


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def is_d18(text: Any) -> bool:
    return isinstance(text, str) and "." in text and len(text.split(".")[1]) == 18 and Decimal(text) == Decimal(text)


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[SandboxRunner]:
    async with SandboxRunner(load_spec("digitex"), port=0, rate=20.0, history_s=600, accept_delay_ms=30,
                             match_interval_ms=10) as sb:
        yield sb


@pytest.fixture
async def dgtx(sandbox: SandboxRunner) -> AsyncIterator[Dgtx]:
    client = Dgtx(sandbox)
    await client.admin.post("digitex/reset")
    await client.admin.post("faults/reset")
    await client.set_faults(place_timeout_next=0, place_fail_after_apply_next=0, place_fail_before_apply_next=0,
                            maintenance=False, rate_limit_enabled=False, accept_delay_ms=30)
    yield client
    await client.close()


# --- public endpoints ----------------------------------------------------------------------
async def test_ping_and_reference_data(dgtx: Dgtx) -> None:
    for path in ("ping", "ping/"):  # trailing slash optional
        ping = await dgtx.ok(path)
        assert ping["message"] == "pong"
        assert len(str(ping["timestamp"])) == 16 and abs(ping["timestamp"] / 1e6 - time.time()) < 5  # µs
    currencies = await dgtx.ok("currency/")
    assert {"DGTX", "BTC", "USDC"} <= {c["code"] for c in currencies}
    assert all(isinstance(c["currency_scale"], int) and is_d18(c["withdraw_fee"]) for c in currencies)
    assert [c["code"] for c in await dgtx.ok("currency", currency_id=2)] == ["BTC"]
    pairs = await dgtx.ok("currency_pair/")
    assert all({"id", "code", "scale", "name", "base", "quote"} <= p.keys() for p in pairs)

    markets = {m["code"]: m for m in await dgtx.ok("markets/")}
    futures, spot = markets["FS:BTCUSD"], markets["S:BTCUSDC"]
    assert futures["market_type"] == 1 and futures["contract_currency"]["code"] == "USDC"
    assert spot["market_type"] == 2 and spot["contract_currency"] is None
    for m in markets.values():
        assert is_d18(m["tick_size"]) and is_d18(m["lot_size"]) and isinstance(m["tick_scale"], int)
    assert [m["id"] for m in await dgtx.ok("markets", market_id=futures["id"])] == [futures["id"]]


async def test_exchange_info(dgtx: Dgtx) -> None:
    info = await dgtx.ok("exchange_info/")
    assert {"currencies", "markets", "notifications", "server_time", "rate_limits", "order_meta"} <= info.keys()
    assert info["rate_limits"] == [{"interval": "SECOND", "limit": 50}, {"interval": "MINUTE", "limit": 500}]
    meta = info["order_meta"]
    assert meta["type"] == {"MARKET": 1, "LIMIT": 2}  # the project's decision (DESIGN.md)
    assert meta["side"] == {"BUY": 1, "SELL": 2}
    assert meta["duration"]["IOC"] == 4 and meta["duration"]["FOK"] == 5
    assert meta["status"] == {"PENDING": 1, "ACCEPTED": 2, "REJECTED": 3, "CANCELED": 4, "FILLED": 5, "PARTIAL": 6}


async def test_order_book_sits_around_the_last_trade(dgtx: Dgtx) -> None:
    book = await dgtx.ok("order_book/", market_id=1)
    trades = (await dgtx.ok("recent_trades/", market_id=1, max_trades=50))["recent_trades"]
    at_book_time = [t for t in trades if t["timestamp"] == book["timestamp"]]
    assert at_book_time, "the book's timestamp is a tape tick"
    last = Decimal(at_book_time[0]["price"])
    bids = [Decimal(p) for p, _ in book["bids"]]
    asks = [Decimal(p) for p, _ in book["asks"]]
    assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
    assert bids[0] < last < asks[0]
    assert all(Decimal(v) > 0 and is_d18(v) for _, v in book["bids"] + book["asks"])
    bad = await dgtx.get("order_book/")
    assert bad.status_code == 400 and bad.json() == {"market_id": ["This field is required."]}
    unknown = await dgtx.get("order_book/", market_id=99)
    assert unknown.status_code == 400 and "market_id" in unknown.json()


async def test_recent_trades_are_the_tape(dgtx: Dgtx) -> None:
    body = await dgtx.ok("recent_trades/", market_id=1)
    trades = body["recent_trades"]
    assert len(trades) == 1000  # the default
    ids = [t["trade_id"] for t in trades]
    assert ids == list(range(ids[0], ids[0] - 1000, -1))  # tape indexes, newest first
    tape = (await dgtx.admin.get("digitex/tape", params={"market_id": 1, "count": 2000})).json()["ticks"]
    by_index = {t["index"]: t for t in tape}
    for trade in trades[:200]:
        tick = by_index[trade["trade_id"]]
        assert (trade["price"], trade["base_volume"], trade["timestamp"], trade["side"]) == (
            tick["price"], tick["size"], tick["timestamp"], tick["side"])
        assert Decimal(trade["quote_volume"]) == Decimal(trade["price"]) * Decimal(trade["base_volume"]) * Decimal(
            "0.01"
        )


async def test_ohlcv_is_aggregated_from_the_tape(dgtx: Dgtx) -> None:
    body = await dgtx.ok("history/ohlcv/", market_id=1, resolution="1")
    assert body["market_id"] == 1 and body["resolution"] == "1"
    bars = body["ohlcv"]
    assert len(bars) >= 9
    tape = (await dgtx.admin.get("digitex/tape", params={"market_id": 1, "count": 100_000})).json()["ticks"]
    for bar in bars[1:-1]:  # whole minutes, entirely inside the listed history
        ticks = [t for t in tape if bar["timestamp"] <= t["timestamp"] < bar["timestamp"] + 60_000_000]
        prices = [Decimal(t["price"]) for t in ticks]
        assert len(ticks) == 60 * 20
        assert Decimal(bar["open"]) == prices[0] and Decimal(bar["close"]) == prices[-1]
        assert Decimal(bar["high"]) == max(prices) and Decimal(bar["low"]) == min(prices)
        assert bar["volume"] == f"{sum(Decimal(t['size']) for t in ticks):.18f}"
    # date_from / date_to are inclusive bar starts.
    t1, t3 = bars[1]["timestamp"], bars[3]["timestamp"]
    window = (await dgtx.ok("history/ohlcv/", market_id=1, resolution="1", date_from=t1, date_to=t3))["ohlcv"]
    assert [b["timestamp"] for b in window] == [b["timestamp"] for b in bars[1:4]]
    assert len((await dgtx.ok("history/ohlcv/", market_id=1, resolution="1", top_n=2))["ohlcv"]) == 2
    # Coarser bars merge the minute bars.
    five = (await dgtx.ok("history/ohlcv/", market_id=1, resolution="5", date_to=bars[-2]["timestamp"]))["ohlcv"]
    full = [
        b
        for b in five
        if b["timestamp"] >= bars[0]["timestamp"] and b["timestamp"] + 300_000_000 <= bars[-1]["timestamp"]
    ]
    for bar in full:
        minutes = [m for m in bars if bar["timestamp"] <= m["timestamp"] < bar["timestamp"] + 300_000_000]
        assert Decimal(bar["high"]) == max(Decimal(m["high"]) for m in minutes)
        assert bar["open"] == minutes[0]["open"] and bar["close"] == minutes[-1]["close"]
    for res in ("1D", "D", "1W", "1M", "60"):
        assert (await dgtx.get("history/ohlcv/", market_id=1, resolution=res)).status_code == 200
    bad = await dgtx.get("history/ohlcv/", market_id=1, resolution="7X")
    assert bad.status_code == 400 and "resolution" in bad.json()


async def test_ohlcv_cap_is_1000() -> None:
    # A slow tape with a long history: more than 1000 one-minute bars exist.
    async with SandboxRunner(load_spec("digitex"), port=0, rate=0.05, history_s=1100 * 60) as sb:
        client = Dgtx(sb)
        try:
            bars = (await client.ok("history/ohlcv/", market_id=1, resolution="1", top_n=5000,
                                    date_from=0))["ohlcv"]
            assert len(bars) == 1000
            stamps = [b["timestamp"] for b in bars]
            assert stamps == sorted(stamps) and stamps[-1] >= time.time() * 1e6 - 3 * 60e6  # the latest 1000
        finally:
            await client.close()


# --- auth ----------------------------------------------------------------------------------
async def test_auth(sandbox: SandboxRunner, dgtx: Dgtx) -> None:
    anonymous, wrong = Dgtx(sandbox, token=None), Dgtx(sandbox, token="nope")
    try:
        resp = await wrong.get("balances/")
        assert resp.status_code == 401
        assert resp.json() == {"detail": "Invalid token.", "code": "authentication_failed"}
        resp = await anonymous.get("orders/")
        assert resp.status_code == 401 and resp.json()["code"] == "not_authenticated"
        resp = await anonymous.post("trader/order/", {})
        assert resp.status_code == 401
        # Public routes answer with or without a token.
        assert (await anonymous.get("markets/")).status_code == 200
        assert (await wrong.get("order_book/", market_id=1)).status_code == 200
    finally:
        await anonymous.close()
        await wrong.close()


# --- orders --------------------------------------------------------------------------------
async def test_market_order_pending_accepted_filled(dgtx: Dgtx) -> None:
    await dgtx.set_faults(accept_delay_ms=400)
    placed = await dgtx.place(kind="MARKET", duration="IOC", quantity="3")
    assert uuid.UUID(placed["client_id"]).version == 4 and placed["trader_id"] == 119887
    assert placed["quantity"] == "3.000000000000000000" and placed["type"] == 1
    first = await dgtx.status(placed["client_id"])
    assert isinstance(first, list) and first[0]["status"] == PENDING  # place only confirms parameters
    order = await dgtx.wait_status(placed["client_id"], (FILLED,))
    assert order["quantity"] == "0.000000000000000000" and order["orig_quantity"] == "3.000000000000000000"
    trades = (await dgtx.ok("trade_history/"))["results"]
    assert len(trades) >= 1 and sum(Decimal(t["quantity"]) for t in trades) == 3
    avg = sum(Decimal(t["price"]) * Decimal(t["quantity"]) for t in trades) / 3
    assert Decimal(order["average_price"]) == avg.quantize(Decimal("1e-18"))
    position = next(p for p in await dgtx.ok("position/") if p["market_id"] == 1)
    assert position["position_side"] == 1 and Decimal(position["quantity"]) == 3
    assert Decimal(position["entry_price"]) == avg.quantize(Decimal("1e-18"))
    history = (await dgtx.ok("order_history/"))["results"]
    assert [o["client_id"] for o in history] == [placed["client_id"]]


async def test_resting_limit_fills_when_the_tape_crosses(dgtx: Dgtx) -> None:
    last = await dgtx.last_price(1)
    price = last - 100 * 5  # far below the market: rests
    placed = await dgtx.place(price=str(price), quantity="10")
    order = await dgtx.wait_status(placed["client_id"], (ACCEPTED,))
    open_orders = (await dgtx.ok("orders/"))["results"]
    assert [o["client_id"] for o in open_orders] == [placed["client_id"]]
    # A spike trading 4 contracts at the price: a partial fill.
    cross = await dgtx.cross(1, price, size="4", spike="1")
    assert cross["fills"] == 1
    order = await dgtx.wait_status(placed["client_id"], (PARTIAL,))
    assert order["quantity"] == "6.000000000000000000" and order["average_price"] == f"{price:.18f}"
    assert (await dgtx.ok("orders/", status=PARTIAL))["results"][0]["client_id"] == placed["client_id"]
    # The tape moves through the price: the rest fills.
    await dgtx.cross(1, price - 5)
    order = await dgtx.wait_status(placed["client_id"], (FILLED,))
    trades = (await dgtx.ok("trade_history/", market_id=1))["results"]
    assert [Decimal(t["quantity"]) for t in trades] == [6, 4] and all(Decimal(t["price"]) == price for t in trades)
    # Balances follow the fills: no PnL yet, margin tied up by the position.
    usdc = next(b for b in await dgtx.ok("balances/") if b["currency"]["code"] == "USDC")
    margin = Decimal(10) * price * Decimal("0.01") / 10
    assert Decimal(usdc["trading_balance"]) == 100000
    assert Decimal(usdc["available_balance"]) == 100000 - margin
    # Recent trades show the forced tick once its time has come.
    async def shows_forced_tick() -> bool:
        trades = (await dgtx.ok("recent_trades/", market_id=1, max_trades=200))["recent_trades"]
        return any(t["trade_id"] == cross["index"] and Decimal(t["price"]) == price for t in trades)
    await wait_for(shows_forced_tick)


async def test_round_trip_realizes_pnl(dgtx: Dgtx) -> None:
    last = await dgtx.last_price(1)
    buy_px, sell_px = last - 100 * 5, last + 100 * 5
    buy = await dgtx.place(price=str(buy_px), quantity="2")
    await dgtx.wait_status(buy["client_id"], (ACCEPTED,))
    await dgtx.cross(1, buy_px, spike="1")
    await dgtx.wait_status(buy["client_id"], (FILLED,))
    sell = await dgtx.place(side="SELL", price=str(sell_px), quantity="2")
    await dgtx.wait_status(sell["client_id"], (ACCEPTED,))
    await dgtx.cross(1, sell_px, spike="1")
    await dgtx.wait_status(sell["client_id"], (FILLED,))
    usdc = next(b for b in await dgtx.ok("balances/") if b["currency"]["code"] == "USDC")
    pnl = 2 * (sell_px - buy_px) * Decimal("0.01")  # tick_price / tick_size = 0.05 / 5
    assert Decimal(usdc["trading_balance"]) == 100000 + pnl == Decimal(usdc["available_balance"])
    flat = next(p for p in await dgtx.ok("position/") if p["market_id"] == 1)
    assert flat["position_side"] is None and flat["entry_price"] is None and flat["unrealized_pnl"] is None
    assert Decimal(flat["quantity"]) == 0 and is_d18(flat["mark_price"])


async def test_fok_and_ioc(dgtx: Dgtx) -> None:
    # ETH futures: no other test forces its tape.
    book = await dgtx.ok("order_book/", market_id=2)
    # More than any synthetic book holds (20 levels of at most 1 + 40 * level contracts).
    fok = await dgtx.place(market_id=2, kind="MARKET", duration="FOK", quantity="10000", leverage=100)
    order = await dgtx.wait_status(fok["client_id"], (CANCELED,))
    assert order["quantity"] == order["orig_quantity"]  # all or nothing
    best_ask = Decimal(book["asks"][0][0])
    ioc = await dgtx.place(market_id=2, duration="IOC", price=str(best_ask - 50), quantity="5")  # not marketable
    order = await dgtx.wait_status(ioc["client_id"], (CANCELED,))
    assert Decimal(order["quantity"]) == 5
    assert (await dgtx.ok("trade_history/"))["results"] == []
    fill = await dgtx.place(market_id=2, duration="IOC", price=str(best_ask + 50), quantity="5")  # marketable
    order = await dgtx.wait_status(fill["client_id"], (FILLED,))
    assert Decimal(order["average_price"]) <= best_ask + 50


async def test_rejections_and_bad_requests(dgtx: Dgtx) -> None:
    last = await dgtx.last_price(1)
    off_tick = await dgtx.place(price=str(last - 502), quantity="1")
    bad_lot = await dgtx.place(market_id=3, price="30000", quantity="0.00005")
    unknown = await dgtx.place(market_id=42, price="100", quantity="1")
    for placed in (off_tick, bad_lot, unknown):
        await dgtx.wait_status(placed["client_id"], (REJECTED,))
    history = (await dgtx.ok("order_history/", status=REJECTED))["results"]
    assert {o["client_id"] for o in history} == {off_tick["client_id"], bad_lot["client_id"], unknown["client_id"]}
    assert (await dgtx.ok("orders/"))["results"] == []

    resp = await dgtx.post("trader/order/", {"market_id": 1, "side": 7, "type": 2, "duration": 2, "price": "x"})
    assert resp.status_code == 400
    body = resp.json()
    assert body["side"] == ['"7" is not a valid choice.'] and body["price"] == ["A valid number is required."]
    assert body["leverage"] == ["This field is required."] and body["quantity"] == ["This field is required."]
    resp = await dgtx.post("trader/order/", {"market_id": 1, "side": 1, "type": 2, "duration": 2, "leverage": 1,
                                             "quantity": "1", "price": "100", "client_id": "not-a-uuid"})
    assert resp.status_code == 400 and resp.json() == {"client_id": ["Must be a valid UUID."]}
    # client_id is unique per market: the same id is fine on another market.
    cid = str(uuid.uuid4())
    await dgtx.place(price=str(last - 500), quantity="1", client_id=cid)
    dup = await dgtx.place(price=str(last - 500), quantity="1", client_id=cid, expect=400)
    assert "client_id" in dup
    await dgtx.place(market_id=2, price="100", quantity="1", client_id=cid)
    assert len(await dgtx.status(cid)) == 2


async def test_cancel_scopes(dgtx: Dgtx) -> None:
    btc, eth = await dgtx.last_price(1), await dgtx.last_price(2)
    a = await dgtx.place(market_id=1, price=str(btc - 500), quantity="1")
    b = await dgtx.place(market_id=1, price=str(btc - 505), quantity="1")
    c = await dgtx.place(market_id=2, price=str(eth - 50), quantity="1")
    d = await dgtx.place(market_id=2, price=str(eth - 51), quantity="1")
    for placed in (a, b, c, d):
        await dgtx.wait_status(placed["client_id"], (ACCEPTED,))
    # {market_id, orders_client_ids}: just those
    resp = await dgtx.post("trader/order/cancel/", {"market_id": 1, "orders_client_ids": [a["client_id"]]})
    assert resp.json() == {"market_id": 1, "orders_client_ids": [a["client_id"]], "trader_id": 119887}
    assert (await dgtx.status(a["client_id"]))[0]["status"] == CANCELED
    assert (await dgtx.status(b["client_id"]))[0]["status"] == ACCEPTED
    # {market_id}: the whole market
    resp = await dgtx.post("trader/order/cancel/", {"market_id": 2})
    assert sorted(resp.json()["orders_client_ids"]) == sorted([c["client_id"], d["client_id"]])
    assert [o["client_id"] for o in (await dgtx.ok("orders/"))["results"]] == [b["client_id"]]
    # {}: everything on the account
    assert (await dgtx.post("trader/order/cancel/", {})).status_code == 200
    assert (await dgtx.ok("orders/"))["results"] == []
    assert len((await dgtx.ok("order_history/", status=CANCELED))["results"]) == 4


async def test_update_amends_live_and_reopens_inactive(dgtx: Dgtx) -> None:
    last = await dgtx.last_price(1)
    placed = await dgtx.place(price=str(last - 500), quantity="3")
    await dgtx.wait_status(placed["client_id"], (ACCEPTED,))
    meta = await dgtx.order_meta()
    update = {"client_id": placed["client_id"], "market_id": 1, "side": meta["side"]["BUY"],
              "type": meta["type"]["LIMIT"], "duration": meta["duration"]["GTC"], "leverage": 10,
              "quantity": "4", "price": str(last - 600)}
    resp = await dgtx.post("trader/order/update/", update)
    assert resp.status_code == 200 and resp.json()["trader_id"] == 119887
    orders = await dgtx.status(placed["client_id"])
    assert len(orders) == 1 and orders[0]["price"] == f"{last - 600:.18f}" and Decimal(orders[0]["quantity"]) == 4
    bad = await dgtx.post("trader/order/update/", update | {"price": str(last - 601)})
    assert bad.status_code == 400
    # Once inactive, an update opens a new order with the given parameters.
    await dgtx.post("trader/order/cancel/", {"market_id": 1, "orders_client_ids": [placed["client_id"]]})
    resp = await dgtx.post("trader/order/update/", update | {"quantity": "2"})
    assert resp.status_code == 200
    await wait_for(lambda: _statuses(dgtx, placed["client_id"], [ACCEPTED, CANCELED]))
    newest = (await dgtx.status(placed["client_id"]))[0]
    assert Decimal(newest["orig_quantity"]) == 2
    missing = await dgtx.post("trader/order/update/", {"market_id": 1})
    assert missing.status_code == 400 and missing.json()["client_id"] == ["This field is required."]


async def _statuses(dgtx: Dgtx, client_id: str, expected: list[int]) -> bool:
    return [o["status"] for o in await dgtx.status(client_id)] == expected


async def test_cursor_pagination_walk(dgtx: Dgtx) -> None:
    last = await dgtx.last_price(1)
    ids = [(await dgtx.place(price=str(last - 500 - 5 * i), quantity="1"))["client_id"] for i in range(7)]
    for cid in ids:
        await dgtx.wait_status(cid, (ACCEPTED,))
    seen, cursor, pages = [], None, []
    while True:
        page = await dgtx.ok("orders/", page_size=3, cursor=cursor)
        pages.append(page)
        seen += [o["client_id"] for o in page["results"]]
        cursor = page["next"]
        if cursor is None:
            break
        assert base64.b64decode(cursor).decode().startswith(("p=", "o="))  # DRF cursor
    assert seen == ids[::-1]  # newest first, nothing lost or repeated
    assert [len(p["results"]) for p in pages] == [3, 3, 1]
    assert pages[0]["previous"] is None and pages[1]["previous"] is not None
    back = await dgtx.ok("orders/", page_size=3, cursor=pages[1]["previous"])
    assert [o["client_id"] for o in back["results"]] == seen[:3]
    assert (await dgtx.get("orders/", cursor="garbage!")).status_code == 404
    created = [o["created_at"] for o in pages[0]["results"]]
    window = await dgtx.ok("order_history/", created_at_from=created[-1], created_at_to=created[0])
    assert window["results"] == []  # they are open orders, not history


async def test_trade_history_filters_and_pages(dgtx: Dgtx) -> None:
    for _ in range(3):
        placed = await dgtx.place(kind="MARKET", duration="IOC", quantity="1")
        await dgtx.wait_status(placed["client_id"], (FILLED,))
    trades = (await dgtx.ok("trade_history/"))["results"]
    assert len(trades) == 3 and [t["traded_at"] for t in trades] == sorted(
        (t["traded_at"] for t in trades), reverse=True
    )
    first = await dgtx.ok("trade_history/", page_size=2)
    second = await dgtx.ok("trade_history/", page_size=2, cursor=first["next"])
    assert first["results"] + second["results"] == trades and second["next"] is None
    only = await dgtx.ok("trade_history/", traded_at_from=trades[1]["traded_at"], traded_at_to=trades[1]["traded_at"])
    assert only["results"] == [trades[1]]  # bounds are inclusive
    assert (await dgtx.ok("trade_history/", market_id=2))["results"] == []


# --- limits and modes ----------------------------------------------------------------------
async def test_rate_limit_enforced_when_enabled(dgtx: Dgtx) -> None:
    await dgtx.set_faults(rate_limit_enabled=True)
    responses = await asyncio.gather(*(dgtx.get("ping") for _ in range(60)))
    throttled = [r for r in responses if r.status_code == 429]
    assert len([r for r in responses if r.status_code == 200]) == 50 and len(throttled) == 10
    wait = int(throttled[0].headers["Retry-After"])
    assert 1 <= wait <= 60
    assert throttled[0].json()["detail"] == f"Request was throttled. Expected available in {wait} seconds."


async def test_maintenance_mode(dgtx: Dgtx) -> None:
    await dgtx.set_faults(maintenance=True)
    resp = await dgtx.get("ping")
    assert resp.status_code == 503 and resp.json()["code"] == "service_unavailable"
    await dgtx.set_faults(maintenance=False)
    assert (await dgtx.get("ping")).status_code == 200


# --- faults for the order router -------------------------------------------------------------
async def _placements(dgtx: Dgtx, client_id: str) -> dict[str, int]:
    rows = (await dgtx.admin.get("digitex/orders")).json()["placements"]
    row = next((r for r in rows if r["client_id"] == client_id), None)
    return {"attempts": row["attempts"], "applied": row["applied"]} if row else {"attempts": 0, "applied": 0}


async def test_fault_place_timeout_applies_the_order(sandbox: SandboxRunner, dgtx: Dgtx) -> None:
    await dgtx.set_faults(place_timeout_next=1, place_reply_delay_ms=1500)
    impatient = Dgtx(sandbox, timeout=0.3)
    cid = str(uuid.uuid4())
    try:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.place(kind="MARKET", duration="IOC", quantity="1", client_id=cid)
    finally:
        await impatient.close()
    assert (await dgtx.wait_status(cid, (FILLED,)))["client_id"] == cid  # it went through
    # A blind retry with the same client_id is refused, so it cannot double-fill.
    await dgtx.place(kind="MARKET", duration="IOC", quantity="1", client_id=cid, expect=400)
    assert await _placements(dgtx, cid) == {"attempts": 2, "applied": 1}
    assert len(await dgtx.status(cid)) == 1


async def test_fault_place_fail_after_apply(dgtx: Dgtx) -> None:
    await dgtx.set_faults(place_fail_after_apply_next=1)
    cid = str(uuid.uuid4())
    meta = await dgtx.order_meta()
    resp = await dgtx.post("trader/order/", {"market_id": 1, "side": 1, "type": meta["type"]["MARKET"], "duration": 4,
                                             "leverage": 5, "quantity": "1", "price": "0", "client_id": cid})
    assert resp.status_code == 500
    await dgtx.wait_status(cid, (FILLED,))
    assert await _placements(dgtx, cid) == {"attempts": 1, "applied": 1}


async def test_fault_place_fail_before_apply(dgtx: Dgtx) -> None:
    await dgtx.set_faults(place_fail_before_apply_next=1, place_fail_status=503)
    cid = str(uuid.uuid4())
    meta = await dgtx.order_meta()
    body = {"market_id": 1, "side": 1, "type": meta["type"]["MARKET"], "duration": 4, "leverage": 5,
            "quantity": "1", "price": "0", "client_id": cid}
    resp = await dgtx.post("trader/order/", body)
    assert resp.status_code == 503
    await asyncio.sleep(0.1)
    assert await dgtx.status(cid) == []
    assert await _placements(dgtx, cid) == {"attempts": 1, "applied": 0}
    assert (await dgtx.post("trader/order/", body)).status_code == 200  # the retry goes through once
    assert await _placements(dgtx, cid) == {"attempts": 2, "applied": 1}


async def test_generic_http_faults(dgtx: Dgtx) -> None:
    await dgtx.admin.post("faults", json={"rate_limit_next": 2, "retry_after_s": 3})
    for _ in range(2):
        resp = await dgtx.get("markets/")
        assert resp.status_code == 429 and resp.headers["Retry-After"] == "3"
        assert resp.json()["detail"].startswith("Request was throttled")
    assert (await dgtx.get("markets/")).status_code == 200
    await dgtx.admin.post("faults", json={"error_next": 1, "error_status": 503})
    resp = await dgtx.get("balances/")
    assert resp.status_code == 503 and "detail" in resp.json()
    await dgtx.admin.post("faults", json={"latency_ms": 300})
    started = time.monotonic()
    assert (await dgtx.get("ping")).status_code == 200
    assert time.monotonic() - started >= 0.3


# --- configuration ---------------------------------------------------------------------------
async def test_order_meta_is_configurable() -> None:
    async with SandboxRunner(load_spec("digitex"), port=0, order_type_market=2, order_type_limit=1,
                             order_meta_keys="model", history_s=60, accept_delay_ms=10) as sb:
        client = Dgtx(sb)
        try:
            meta = (await client.ok("exchange_info/"))["order_meta"]
            assert meta["order_type"] == {"MARKET": 2, "LIMIT": 1} and "order_status" in meta
            client.meta = {key.removeprefix("order_"): value for key, value in meta.items()}
            placed = await client.place(kind="MARKET", duration="IOC", quantity="1")
            assert placed["type"] == 2
            assert (await client.wait_status(placed["client_id"], (FILLED,)))["type"] == 2
        finally:
            await client.close()
