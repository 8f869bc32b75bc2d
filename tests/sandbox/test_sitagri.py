"""Conformance of the Sitagri AgriMarket sandbox, driven like the vendor's curl and wscat sessions."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from services.sandbox.common.base import SandboxRunner
from services.sandbox.registry import load_spec
from services.sandbox.sitagri import DEFAULT_TOKEN, Sandbox
from services.sandbox.sitagri.prices import ENCODER

TOKEN = DEFAULT_TOKEN
HEADERS = {
    "Accept": "application/json, text/*;q=0.2",
    "Accept-Charset": "utf-8",
    "Accept-Encoding": "gzip, deflate",
    "Access-Control-Request-Headers": "x-session-token",
    "X-Session-Token": TOKEN,
}
TIMEOUT = 2.0  # session idle timeout of the test sandbox (seconds)
EMA = "/market/sources/EURONEX/future/EMA"
EURUSDSP = "/market/sources/FOREX/currency/EURUSD/terms/EURUSDSP"
GUID = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}")


@pytest.fixture(scope="module")
async def sb() -> AsyncIterator[SandboxRunner]:
    async with SandboxRunner(load_spec("sitagri"), port=0, seed=7, rate=20.0, cash_rate=2.0,
                             session_timeout=TIMEOUT, longpoll_timeout=1.0, news_interval=2.0,
                             push_before_ack=0.5) as runner:
        yield runner


@pytest.fixture(scope="module")
async def http(sb: SandboxRunner) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sb.url, headers=HEADERS, timeout=10) as client:
        yield client


def truth(sb: SandboxRunner) -> Sandbox:
    return sb.vendor_app.state.sitagri


def ground_truth(sb: SandboxRunner, quote: str, start: float, end: float) -> list[tuple[Any, Any, int]]:
    """(date, value, volume) of every tick, as a JSON client decodes them."""
    ticks = json.loads(ENCODER.encode(truth(sb).ticks(quote, start, end)))
    return [(t["date"], t["value"], t["volume"]) for t in ticks]


async def get(http: httpx.AsyncClient, ref: str, status: int = 200, **kw: Any) -> Any:
    r = await http.get("/api" + ref, **kw)
    assert r.status_code == status, (ref, r.status_code, r.text[:300])
    return r.json()


def no_nulls(value: Any) -> None:
    if isinstance(value, dict):
        for v in value.values():
            assert v is not None
            no_nulls(v)
    elif isinstance(value, list):
        for v in value:
            no_nulls(v)


async def connect(sb: SandboxRunner, token: str = TOKEN) -> Any:
    return await websockets.connect(sb.ws_url + "/api/netbus", subprotocols=[token])  # type: ignore[list-item]


async def recv_until(ws: Any, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every message up to and including the first matching one."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=max(0.01, deadline - time.monotonic())))
        seen.append(msg)
        if pred(msg):
            return seen


# --- sessions ------------------------------------------------------------------------------

async def test_login_session_and_auth_errors(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/login", json={"login": "demo", "password": "demo"})
    assert r.status_code == 200
    body = r.json()
    assert GUID.fullmatch(body["token"]) and body["timeout"] == int(TIMEOUT) and body["ttl"] == 900
    session = await get(http, "/session", headers={"X-Session-Token": body["token"]})
    assert session == {"code": "session", "token": body["token"], "timeout": int(TIMEOUT), "ttl": 900, "lang": "EN"}
    assert (await http.post("/api/login", json={"login": "demo", "password": "nope"})).status_code == 401
    for headers in ({"X-Session-Token": ""}, {"X-Session-Token": "00000000-0000-0000-0000-000000000000"}):
        r = await http.get("/api/market/sources", headers=headers)
        assert r.status_code == 401 and r.json()["code"] == "error"


async def test_idle_session_expires_and_keepalive_refreshes(http: httpx.AsyncClient) -> None:
    token = (await http.post("/api/login", json={"login": "demo", "password": "demo"})).json()["token"]
    hdr = {"X-Session-Token": token}
    for _ in range(5):  # 2.5 s > timeout, kept alive by /api/keepAlive
        assert (await get(http, "/keepAlive", headers=hdr))["success"] is True
        await asyncio.sleep(TIMEOUT / 4)
    await asyncio.sleep(TIMEOUT + 0.3)
    r = await http.get("/api/session", headers=hdr)
    assert r.status_code == 401 and r.json()["error"] == "invalidSession"
    # the configured static token never expires
    assert (await get(http, "/session"))["token"] == TOKEN


# --- reference grammar ---------------------------------------------------------------------

async def test_sources_and_typed_lists_are_case_sensitive(http: httpx.AsyncClient) -> None:
    sources = await get(http, "/market/sources")
    assert sources["code"] == "sources"
    by_code = {s["code"]: s for s in sources["data"]}
    assert by_code["EURONEX"]["orderBook"] is True and by_code["CBOT"]["orderBook"] is False
    assert by_code["FOREX"]["autoCurrency"] is True
    for code, src in by_code.items():
        assert await get(http, f"/market/sources/{code}") == src
        for kind in ("future", "option", "single", "cash", "index", "currency"):
            if kind in src:
                listing = await get(http, f"/market/sources/{code}/{kind}")
                assert listing["code"] == kind
                assert [f"/market/sources/{code}/{kind}/{i['code']}" for i in listing["data"]] == src[kind]
    await get(http, "/market/sources/EURONEX/Future", 404)
    await get(http, "/market/geosites", 404)
    await get(http, "/market/sources/EURONEX/future/EMA/deliveries/EMAH16/orderbook", 404)


async def test_future_deliveries_classic_and_continuous_codes(http: httpx.AsyncClient) -> None:
    cls = await get(http, EMA)
    assert cls["contractUnit"] == "/market/units/TON" and cls["currency"] == "EUR"
    codes = [ref.rsplit("/", 1)[1] for ref in cls["deliveries"]]
    assert codes[:4] == ["EMAC01", "EMAC02", "EMAC03", "EMAC04"]
    classic = []
    for ref in cls["deliveries"][4:]:
        item = await get(http, ref)
        assert item["code"] == "EMA" + "FGHJKMNQUVXZ"[item["maturityMonth"] - 1] + f"{item['maturityYear'] % 100:02d}"
        assert item["futureClass"] == EMA and item["lastTradingDate"] > time.time()
        classic.append(item)
    assert [c["lastTradingDate"] for c in classic] == sorted(c["lastTradingDate"] for c in classic)
    for i in range(4):  # continuous code i follows the i-th live delivery
        cont = await get(http, f"{EMA}/deliveries/EMAC0{i + 1}")
        assert cont["code"] == f"EMAC0{i + 1}" and cont["lastTradingDate"] == classic[i]["lastTradingDate"]
    cbot = await get(http, "/market/sources/CBOT/future/ZC")
    assert cbot["currency"] == "USD" and cbot["contractUnit"] == "/market/units/USWSBS"


async def test_option_series_and_strikes(http: httpx.AsyncClient) -> None:
    opt = await get(http, "/market/sources/EURONEX/option/OMA")
    assert opt["underlyingFutureClass"] == EMA
    series = await get(http, opt["series"][0])
    assert series["underlyingFutureQuote"].startswith(EMA + "/deliveries/EMA")
    strikes = series["strikes"]
    assert {s["optionType"] for s in strikes} == {"CALL", "PUT"}
    for s in strikes:
        assert s["code"] == f"{series['code']}{s['optionType'][0]}{s['strike']}"
        assert series["minStrikePrice"] <= s["strike"] <= series["maxStrikePrice"]
    price = await get(http, f"{opt['series'][0]}/strikes/{strikes[0]['code']}/price")
    assert price["code"] == "marketPrice" and price["last"]["value"] > 0


def expected_term_code(term_type: str, days: int) -> str:
    fixed = {"SPOT": "SP", "OVERNIGHT": "ON", "SPOTNEXT": "SN", "TOMORROWNEXT": "TN"}
    if term_type in fixed:
        return fixed[term_type]
    table = {7: "1W", 14: "2W", 30: "1M", 60: "2M", 90: "3M", 180: "6M", 360: "1Y", 540: "18M", 720: "2Y"}
    return table[days]


async def test_forex_terms_follow_code_rules(http: httpx.AsyncClient) -> None:
    listing = await get(http, "/market/sources/FOREX/currency")
    pairs = {c["code"]: c for c in listing["data"]}
    assert "terms" not in pairs["NACARS"] and pairs["NACARS"]["from"] == "NAC"
    eurusd = pairs["EURUSD"]
    assert "name" not in eurusd
    codes = [t["code"] for t in eurusd["terms"]]
    assert codes == ["EURUSD" + expected_term_code(t["termType"], t["termDuration"]) for t in eurusd["terms"]]
    assert {"EURUSDSP", "EURUSD2W", "EURUSD1M", "EURUSD1Y", "EURUSD18M", "EURUSD2Y"} <= set(codes)
    term = await get(http, EURUSDSP)
    assert term["currencyClass"] == "/market/sources/FOREX/currency/EURUSD" and term["termType"] == "SPOT"
    await get(http, "/market/sources/FOREX/currency/NACARS/terms/NACARSSP", 404)


async def test_units_geosites_incoterms_prodcats_and_l10n(http: httpx.AsyncClient) -> None:
    bushel = await get(http, "/market/units/USWSBS")
    ton = await get(http, "/market/units/TON")
    assert (bushel["convertionFactor"], bushel["convertionOffset"], ton["convertionFactor"]) == (27.2155, 0, 1000)
    to_ton = ((1 * bushel["convertionFactor"] + bushel["convertionOffset"]) - ton["convertionOffset"]) / ton[
        "convertionFactor"]
    assert abs(to_ton - 0.0272155) < 1e-12
    units = await get(http, "/market/units")
    assert any(u["convertionOffset"] != 0 for u in units["data"])
    geo = await get(http, "/market/geoSites")
    assert geo["code"] == "geoSites" and {"code", "name", "desc", "country", "gpsLong", "gpsLat"} <= set(geo["data"][0])
    assert (await get(http, "/market/incoterms"))["data"][0].keys() == {"code", "name", "desc"}
    cats = await get(http, "/market/prodcats")
    product = await get(http, cats["data"][0]["products"][0])
    assert product["code"] == cats["data"][0]["products"][0].rsplit("/", 1)[1]
    # names and descriptions are l10n references that resolve, links included
    desc = await get(http, (await get(http, "/market/sources/CBOT/future/ZC"))["desc"])
    link = re.search(r"\{@:([^,]+),([^}]+)\}", desc["text"])
    assert link and (await get(http, link.group(1)))["code"] == "USWSBS"
    assert await get(http, "/l10n/market/RATES_SRC") == {"code": "RATES_SRC", "text": "Interest Rates"}
    res = await get(http, "/l10n/generic/JSON_HISTORY_RESOLUTIONS")
    assert json.loads(res["text"]) == ["TICK", "MINUTE", "HOUR", "DAY", "WEEK", "MONTH"]
    assert (await get(http, "/news/sources"))["data"][0]["rights"] in ("SEARCH", "WRITE")


# --- prices --------------------------------------------------------------------------------

async def test_market_price_shape_and_order_books(http: httpx.AsyncClient) -> None:
    price = await get(http, f"{EMA}/deliveries/EMAC01/price")
    no_nulls(price)
    assert price["code"] == "marketPrice" and price["quote"] == f"{EMA}/deliveries/EMAC01"
    assert {"last", "first", "high", "low", "ask", "stats"} <= set(price)
    last = price["last"]
    assert isinstance(last["date"], int | float) and abs(last["date"] - time.time()) < 5
    assert price["low"]["value"] <= last["value"] <= price["high"]["value"]
    book = await get(http, f"{EMA}/deliveries/EMAC01/orderBook")
    assert book["code"] == "orderBook" and len(book["data"]) == 5
    asks = [row["ask"]["value"] for row in book["data"]]
    assert asks == sorted(asks) and all(row["bid"]["value"] < row["ask"]["value"] for row in book["data"])
    await get(http, "/market/sources/CBOT/future/ZC/deliveries/ZCC01/orderBook", 404)
    cbot = await get(http, "/market/sources/CBOT/future/ZC/deliveries/ZCC01/price")
    assert cbot["quality"] == "DELAYED"


async def test_cash_and_index_prices(http: httpx.AsyncClient) -> None:
    cash_item = await get(http, "/market/sources/SITCASHFR/cash/FRA18EXWAUB")
    assert cash_item["geoSite"] == "/market/geoSites/FRAUB" and cash_item["incoterm"] == "/market/incoterms/EXW"
    cash = await get(http, "/market/sources/SITCASHFR/cash/FRA18EXWAUB/price")
    assert cash["code"] == "cashPrice" and len(cash["deliveries"]) == 3
    assert all(d["start"] < d["end"] for d in cash["deliveries"])
    index = await get(http, "/market/sources/SITSISALMONI/index/SISALMONI/price")
    assert index["code"] == "indexPrice" and {"date", "value", "volume", "standardDeviation"} <= set(index)


async def test_whole_cache_is_gzipped(http: httpx.AsyncClient, sb: SandboxRunner) -> None:
    async with httpx.AsyncClient(base_url=sb.url, headers=HEADERS) as raw, raw.stream("GET", "/api") as r:
        assert r.headers.get("content-encoding") == "gzip"
        cache = json.loads(gzip.decompress(b"".join([c async for c in r.aiter_raw()])))
    data = cache["data"]
    assert data["/market/sources/EURONEX"]["orderBook"] is True
    assert f"{EMA}/deliveries/EMAC01" in data and EURUSDSP in data and "/l10n/market/RATES_SRC" in data
    assert len(data) > 300


async def test_batch_order_cap_and_errors(http: httpx.AsyncClient, sb: SandboxRunner) -> None:
    quotes = list(truth(sb).tree.quotes)[:250]
    r = await http.post("/api", json=[q + "/price" for q in quotes])
    assert r.status_code == 200
    assert [p["quote"] for p in r.json()] == quotes
    r = await http.post("/api", json=[quotes[0] + "/price"] * 251)
    assert r.status_code == 400 and r.json()["code"] == "error"
    r = await http.post("/api", json=["/market/units/TON", "/nope", "/l10n/market/RATES_SRC"])
    out = r.json()
    assert out[0]["code"] == "TON" and out[1]["code"] == "error" and out[2]["code"] == "RATES_SRC"
    assert (await http.post("/api", content=b'{"not":"an array"}')).status_code == 400


# --- history -------------------------------------------------------------------------------

async def test_history_ticks_equal_ground_truth_and_bars(http: httpx.AsyncClient, sb: SandboxRunner) -> None:
    quote = f"{EMA}/deliveries/EMAC01"
    end = int(time.time()) - 1
    hist = await get(http, f"{quote}/history/{end - 5},{end},TICK")
    assert hist["code"] == "historyMarketPrice"
    data = hist["ranges"][0]["data"]
    expected = ground_truth(sb, quote, end - 5, end)
    assert [(e["last"]["date"], e["last"]["value"], e["last"]["volume"]) for e in data] == expected
    assert len(data) == 5 * 20 + 1  # 20 ticks/s, both ends inclusive
    for res, size in (("HOUR", 3600), ("30", 1800), ("MINUTE", 60)):
        bars = (await get(http, f"{quote}/history/{end - 4 * size},{end},{res}"))["ranges"][0]["data"]
        assert 4 <= len(bars) <= 5
        for bar in bars:
            assert bar["low"]["value"] <= bar["first"]["value"] <= bar["high"]["value"]
            assert bar["first"]["date"] <= bar["last"]["date"]
            assert bar["date"] == pytest.approx((bar["first"]["date"] + bar["last"]["date"]) / 2, abs=1e-3)
    day = (await get(http, f"{quote}/history/{end - 30 * 86400},{end},DAY"))["ranges"][0]["data"]
    assert 30 <= len(day) <= 31
    for res in ("WEEK", "MONTH"):
        assert (await get(http, f"{quote}/history/{end - 90 * 86400},{end},{res}"))["ranges"][0]["data"]


async def test_history_cap_descending_and_resolution_rules(http: httpx.AsyncClient, sb: SandboxRunner) -> None:
    quote = f"{EMA}/deliveries/EMAC02"
    end = int(time.time()) - 1
    start = end - 1000  # 20 ticks/s: ~20000 ticks, more than the cap
    asc = (await get(http, f"{quote}/history/{start},{end},TICK"))["ranges"][0]["data"]
    desc = (await get(http, f"{quote}/history/{end},{start},TICK"))["ranges"][0]["data"]
    assert len(asc) == len(desc) == 8192
    assert asc[0]["last"]["date"] == start and desc[0]["last"]["date"] == end  # the cap drops newest / oldest
    assert [e["last"]["date"] for e in desc] == sorted((e["last"]["date"] for e in desc), reverse=True)
    await get(http, f"{EURUSDSP}/history/{start},{end},TICK", 400)  # no TICK for currencies
    assert (await get(http, f"{EURUSDSP}/history/{start},{end},MINUTE"))["ranges"][0]["data"]
    await get(http, f"/market/sources/SITCASHFR/cash/FRA18EXWAUB/history/{start},{end},15", 400)
    cash = await get(http, f"/market/sources/SITCASHFR/cash/FRA18EXWAUB/history/{start},{end},HOUR")
    assert cash["code"] == "historyCashPrice" and "deliveries" in cash["ranges"][0]["data"][0]
    index = await get(http, f"/market/sources/SITSISALMONI/index/SISALMONI/history/{start},{end},MINUTE")
    assert index["code"] == "historyIndexPrice" and "standardDeviation" in index["ranges"][0]["data"][0]
    for bad in ("1441", "0", "SECOND", "tick"):
        await get(http, f"{quote}/history/{start},{end},{bad}", 400)


async def test_expired_future_history_with_and_without_expired_and_shift(http: httpx.AsyncClient) -> None:
    year = dt.datetime.now(dt.UTC).year - 2  # March of two years ago is long expired
    lo, hi = int(dt.datetime(year - 1, 6, 1, tzinfo=dt.UTC).timestamp()), int(
        dt.datetime(year, 4, 1, tzinfo=dt.UTC).timestamp())
    with_expired = await get(http, f"{EMA}/expired/{year}/3/history/{lo},{hi},DAY")
    without = await get(http, f"{EMA}/{year}/3/history/{lo},{hi},DAY")
    assert with_expired == without
    data = with_expired["ranges"][0]["data"]
    assert with_expired["quote"].endswith(f"EMAH{year % 100:02d}") and len(data) > 200
    assert data[-1]["last"]["date"] <= int(dt.datetime(year, 3, 31, tzinfo=dt.UTC).timestamp())
    shifted = (await get(http, f"{EMA}/expired/{year}/3/history/{lo},{hi},DAY,-3600"))["ranges"][0]["data"]
    for a, b in zip(data, shifted, strict=True):
        assert b["last"]["date"] == a["last"]["date"] - 3600 and b["first"]["date"] == a["first"]["date"] - 3600
        assert b["last"]["value"] == a["last"]["value"]
    await get(http, f"{EMA}/expired/{year + 3}/3/history/{lo},{hi},DAY", 404)  # not expired
    await get(http, f"{EMA}/expired/{year}/4/history/{lo},{hi},DAY", 404)  # EMA has no April


# --- news ----------------------------------------------------------------------------------

async def test_news_search_languages_keyword_and_article(http: httpx.AsyncClient) -> None:
    now = int(time.time())
    found = await get(http, f"/news/sources/AFP/article/search/{now - 120}/{now}")
    assert found["code"] == "searchNews" and found["source"] == "/news/sources/AFP"
    arts = found["data"]
    assert len(arts) >= 40 and all("content" not in a for a in arts)
    assert all(now - 120 <= a["publicationDate"] <= now for a in arts)
    en = (await get(http, f"/news/sources/AFP/article/search/{now - 120}/{now}/%5B%22EN%22%5D"))["data"]
    assert en and all(a["lang"] == "EN" for a in en) and len(en) < len(arts)
    await get(http, f"/news/sources/AFP/article/search/{now - 120}/{now}/%5B'EN'%5D", 400)
    wheat = (await get(http, f"/news/sources/AFP/article/search/{now - 120}/{now}/wheat"))["data"]
    assert wheat and all("wheat" in (a["title"] + a["snippet"]).lower() for a in wheat)
    both = (await get(http, f"/news/sources/AFP/article/search/{now - 120}/{now}/%5B%22EN%22,%22FR%22%5D/wheat"))
    assert all(a["lang"] in ("EN", "FR") and "wheat" in a["title"].lower() for a in both["data"])
    article = await get(http, f"/news/sources/AFP/article/{arts[0]['id']}")
    assert article["content"] and article["words"] == len(re.sub(r"<[^>]+>", " ", article["content"]).split())
    meta = (await get(http, f"/news/sources/SITUSDA/article/search/{now - 60}/{now}"))["data"][0]["metadata"]
    assert 0 <= meta["dayTendency"] <= 11
    await get(http, "/news/sources/AFP/article/999999999", 404)


async def test_publish_pushes_to_news_listeners(http: httpx.AsyncClient, sb: SandboxRunner) -> None:
    article = {"code": "newsArticle", "copyright": "Your company ©", "lang": "EN", "title": "Your awesome title",
               "snippet": "This article will speak about things", "content": "Some content about things.",
               "publicationDate": 1603980548, "modificationDate": 1603980548}
    async with await connect(sb) as ws:
        await ws.send(json.dumps({"seq": 42, "data": "/news/sources/PRIVDEMO/article/register"}))
        ack = await recv_until(ws, lambda m: m["seq"] == 42)
        assert ack[-1]["data"] == {"code": "registerNews", "source": "/news/sources/PRIVDEMO", "success": True}
        r1 = await http.post("/edit/news/sources/PRIVDEMO/article", json=article)
        r2 = await http.post("/edit/news/sources/PRIVDEMO/article", json=article)
        assert r1.json()["code"] == "writeEditableArticle" and r1.json()["success"] is True
        assert r2.json()["id"] == r1.json()["id"] + 1
        pushed = await recv_until(ws, lambda m: m["seq"] == -1 and m["data"].get("id") == r1.json()["id"])
        assert pushed[-1]["data"]["title"] == article["title"]
        assert pushed[-1]["data"]["source"] == "/news/sources/PRIVDEMO"
        await ws.send(json.dumps({"seq": 43, "data": "/news/sources/PRIVDEMO/article/unregister"}))
        assert (await recv_until(ws, lambda m: m["seq"] == 43))[-1]["data"]["code"] == "unregisterNews"
    stored = await get(http, f"/news/sources/PRIVDEMO/article/{r1.json()['id']}")
    assert stored["content"] == article["content"]
    assert (await http.post("/edit/news/sources/AFP/article", json=article)).status_code == 403
    assert (await http.post("/edit/news/sources/PRIVDEMO/article", json=article,
                            headers={"X-Session-Token": "x"})).status_code == 401
    assert (await http.post("/edit/news/sources/PRIVDEMO/article", json={"title": 1})).status_code == 400


async def test_synthetic_news_reach_listeners(sb: SandboxRunner) -> None:
    async with await connect(sb) as ws:
        await ws.send(json.dumps({"seq": 1, "data": "/news/sources/AFP/article/register"}))
        msgs = await recv_until(ws, lambda m: m["seq"] == -1 and m["data"]["code"] == "newsArticle", timeout=6)
        assert msgs[-1]["data"]["source"] == "/news/sources/AFP"


# --- websocket netbus ----------------------------------------------------------------------

async def test_ws_requires_token_subprotocol(sb: SandboxRunner) -> None:
    with pytest.raises(InvalidStatus) as exc:
        await websockets.connect(sb.ws_url + "/api/netbus")
    assert exc.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        await connect(sb, "00000000-0000-0000-0000-000000000000")
    async with await connect(sb) as ws:
        assert ws.subprotocol == TOKEN


async def test_ws_requests_arrays_session_and_keepalive(sb: SandboxRunner) -> None:
    async with await connect(sb) as ws:
        await ws.send('{"seq": 1337, "data": "/l10n/market/RATES_SRC"}')
        assert json.loads(await ws.recv()) == {"seq": 1337, "data": {"code": "RATES_SRC", "text": "Interest Rates"}}
        await ws.send(json.dumps({"seq": 7, "data": "/session"}))
        assert json.loads(await ws.recv())["data"] == {"code": "session", "token": TOKEN, "timeout": int(TIMEOUT)}
        await ws.send("keep-alive")
        await ws.send(json.dumps({"seq": 8, "data": ["/market/units/TON", "/nope"]}))
        reply = json.loads(await ws.recv())  # the keep-alive got no reply: this is seq 8
        assert reply["seq"] == 8 and reply["data"][0]["code"] == "TON" and reply["data"][1]["status"] == 404
        await ws.send(json.dumps({"seq": 9, "data": ["/market/units/TON"] * 251}))
        assert json.loads(await ws.recv()) == {"seq": 9, "data": {
            "code": "error", "status": 400, "error": "tooManyReferences",
            "message": "at most 250 references per batch"}}


async def test_ws_price_pushes_match_history(sb: SandboxRunner) -> None:
    quotes = [EURUSDSP, f"{EMA}/deliveries/EMAC01"]
    async with await connect(sb) as ws:
        await ws.send(json.dumps({"seq": 42, "data": [q + "/price/register" for q in quotes]}))
        msgs = await recv_until(ws, lambda m: m["seq"] == 42)
        assert msgs[-1]["data"] == [{"code": "registerPrice", "quote": q, "success": True} for q in quotes]
        pushes = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            pushes.append(json.loads(await asyncio.wait_for(ws.recv(), 2)))
        await ws.send(json.dumps({"seq": 43, "data": EURUSDSP + "/price/unregister"}))
        un = await recv_until(ws, lambda m: m["seq"] == 43)
        assert un[-1]["data"] == {"code": "unregisterPrice", "quote": EURUSDSP, "success": True}
    assert all(p["seq"] == -1 for p in pushes)
    for quote in quotes:
        lasts = [p["data"]["last"] for p in pushes if p["data"]["quote"] == quote]
        assert len(lasts) >= 10
        dates = [x["date"] for x in lasts]
        assert dates == sorted(set(dates))  # exact, distinct, increasing timestamps
        assert [(x["date"], x["value"], x["volume"]) for x in lasts] == ground_truth(sb, quote, dates[0], dates[-1])


async def test_push_sometimes_precedes_register_ack(sb: SandboxRunner) -> None:
    quotes = [q for q, info in truth(sb).tree.quotes.items() if info.kind == "currency"][:30]
    before = after = 0
    async with await connect(sb) as ws:
        # keep-alives: on a loaded host waiting for 30 acks can outlast the 2 s idle timeout
        alive = asyncio.create_task(_keep_alive(ws))
        try:
            for seq, quote in enumerate(quotes, 1):
                await ws.send(json.dumps({"seq": seq, "data": quote + "/price/register"}))
                msgs = await recv_until(ws, lambda m, s=seq: m["seq"] == s)
                if any(m["seq"] == -1 and m["data"]["quote"] == quote for m in msgs[:-1]):
                    before += 1
                else:
                    after += 1
        finally:
            alive.cancel()
    assert before > 0 and after > 0


async def _keep_alive(ws: Any) -> None:
    while True:
        await asyncio.sleep(TIMEOUT / 4)
        await ws.send("keep-alive")


async def test_ws_idle_close_and_keepalive(http: httpx.AsyncClient, sb: SandboxRunner) -> None:
    token = (await http.post("/api/login", json={"login": "demo", "password": "demo"})).json()["token"]
    async with await connect(sb, token) as ws:
        for _ in range(5):  # 2.5 s > timeout
            await ws.send("keep-alive")
            await asyncio.sleep(TIMEOUT / 4)
        await ws.send(json.dumps({"seq": 1, "data": "/session"}))
        assert json.loads(await ws.recv())["seq"] == 1
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), timeout=TIMEOUT + 3)
        assert time.monotonic() - started >= TIMEOUT - 0.3


# --- long polling --------------------------------------------------------------------------

async def test_long_polling_delivers_each_update_once(http: httpx.AsyncClient, sb: SandboxRunner) -> None:
    token = (await http.post("/api/login", json={"login": "demo", "password": "demo"})).json()["token"]
    hdr = {"X-Session-Token": token}
    started = time.monotonic()
    assert (await http.get("/api/netbus", headers=hdr)).json() == []  # nothing registered: timeout
    assert time.monotonic() - started >= 0.9
    quotes = [f"{EMA}/deliveries/EMAC01", f"{EMA}/deliveries/EMAC02"]
    reg = await http.post("/api", json=[q + "/price/register" for q in quotes], headers=hdr)
    assert [r["code"] for r in reg.json()] == ["registerPrice", "registerPrice"]
    seen: dict[str, list[Any]] = {q: [] for q in quotes}
    # until each quote has 3 updates (one poll may carry only one quote's on a loaded host)
    for _ in range(40):
        if all(len(dates) >= 3 for dates in seen.values()):
            break
        updates = (await http.get("/api/netbus", headers=hdr)).json()
        assert updates and all(u["code"] == "marketPrice" for u in updates)
        for u in updates:
            seen[u["quote"]].append(u["last"]["date"])
    for quote, dates in seen.items():
        assert len(dates) >= 3 and dates == sorted(set(dates)), quote  # each update exactly once
        expected = truth(sb).ticks(quote, dates[0], dates[-1])
        assert len(expected) == len(dates)
    await http.post("/api", json=[q + "/price/unregister" for q in quotes], headers=hdr)
    # a session that expires while its poll waits gets a 401, not an empty array. A fresh session:
    # nothing registered, so its poll can only wait (the one above may still hold an update that
    # came before the unregister, and answer it at once). Should a loaded host let the 1-s poll
    # time out before the expiry lands, the poll answered [] before the case was played: again.
    for _ in range(5):
        fresh = (await http.post("/api/login", json={"login": "demo", "password": "demo"})).json()["token"]
        poll = asyncio.create_task(http.get("/api/netbus", headers={"X-Session-Token": fresh}))
        await asyncio.sleep(0.2)
        await http.post("/_sandbox/sitagri/sessions/expire", params={"token": fresh})
        r = await poll
        if not (r.status_code == 200 and r.json() == []):
            break
    assert r.status_code == 401 and r.json()["error"] == "invalidSession"


async def test_ws_frame_faults(sb: SandboxRunner) -> None:
    async with httpx.AsyncClient(base_url=sb.url) as admin:
        async with await connect(sb) as ws:
            await ws.send(json.dumps({"seq": 1, "data": EURUSDSP + "/price/register"}))
            await recv_until(ws, lambda m: m["seq"] == 1)
            # pushes sent before the switch may still be in flight (a loaded host queues them):
            # the faulty one is among the next few dozen, not necessarily the next four
            await admin.post("/_sandbox/faults", json={"duplicate_next": 1})
            frames = [await asyncio.wait_for(ws.recv(), 2)]
            while len(frames) < 40 and frames[-1] != (frames[-2] if len(frames) > 1 else None):
                frames.append(await asyncio.wait_for(ws.recv(), 2))
            assert any(frames[i] == frames[i + 1] for i in range(len(frames) - 1))
            await admin.post("/_sandbox/faults", json={"malformed_next": 1})
            bad, after_bad = 0, 0
            for _ in range(40):
                try:
                    json.loads(await asyncio.wait_for(ws.recv(), 2))
                except json.JSONDecodeError:
                    bad += 1
                after_bad += bad > 0
                if after_bad > 3:  # the malformed one and three after it: no second one
                    break
            assert bad == 1
        await admin.post("/_sandbox/faults", json={"drop_after_frames": 5})
        try:
            async with await connect(sb) as ws:
                await ws.send(json.dumps({"seq": 1, "data": EURUSDSP + "/price/register"}))
                with pytest.raises(ConnectionClosed):
                    for _ in range(50):
                        await asyncio.wait_for(ws.recv(), 2)
        finally:
            await admin.post("/_sandbox/faults/reset")
