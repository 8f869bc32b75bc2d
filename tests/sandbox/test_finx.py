"""Conformance of the FinX TickPlant sandbox, driven like the vendor's SDK and docs drive it.

The seed's run_tests flow goes through the real ``finx.tick_client.TickPlant``; shapes, history
properties and faults are checked with raw websockets/httpx against the in-process ground truth.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import msgspec
import pytest
import requests
import websockets
from websockets.exceptions import ConnectionClosed

from marketbus.runtime.settings import load_settings
from services.sandbox.common.base import SandboxRunner
from services.sandbox.finx import FinxMarket, FinxSettings
from services.sandbox.finx.data import parse_date_time, wire_date_time
from services.sandbox.registry import load_spec

KEY = "public"
DAY = "2022-06-15"
START_NS = parse_date_time(DAY, "00:00")
ROW_FIELDS = ["pair", "date", "time", "exchange", "price"]


@pytest.fixture(scope="module")
async def sb() -> AsyncIterator[SandboxRunner]:
    async with SandboxRunner(load_spec("finx"), port=0) as runner:
        yield runner


@pytest.fixture(scope="module")
def market(sb: SandboxRunner) -> FinxMarket:
    # Built independently from the same settings: the ground truth a test or ingestor computes.
    return FinxMarket(load_settings(FinxSettings, port=0))


@pytest.fixture(autouse=True)
async def clean_faults(sb: SandboxRunner) -> AsyncIterator[None]:
    yield
    async with httpx.AsyncClient(base_url=sb.url) as http:
        await http.post("/_sandbox/faults/reset")
        await http.post("/_sandbox/finx/keys", json={"api_keys": [KEY]})


@pytest.fixture
async def http(sb: SandboxRunner) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sb.url, timeout=5) as client:
        yield client


async def call(ws: Any, message: dict[str, Any], key: str | None = KEY) -> Any:
    if key is not None:
        message = {**message, "APIKey": key}
    await ws.send(json.dumps(message))
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


async def assert_silent(ws: Any, seconds: float = 0.2) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(ws.recv(), seconds)


def row_ts_ns(row: dict[str, str]) -> int:
    return parse_date_time(row["date"], row["time"])


def check_row(row: dict[str, Any], pair: str) -> None:
    assert list(row)[:5] == ROW_FIELDS
    assert row["pair"] == pair and row["exchange"] in ("COINBASE", "GEMINI", "FTX")
    assert isinstance(row["price"], str) and Decimal(row["price"]) > 0
    assert len(row["time"]) == len("21:27:40.453Z") and row["time"].endswith("Z")


# --- the seed's run_tests flow through the real client ---------------------------------------
async def test_run_tests_flow_with_real_tick_plant(sb: SandboxRunner, market: FinxMarket) -> None:
    from finx.tick_client import TickPlant

    tick_plant = TickPlant(KEY, "dev")  # the seed's positional call works with the real client
    tick_plant.api_key = KEY
    tick_plant.endpoint = f"{sb.ws_url}/streamer/{KEY}"
    tick_plant.rest_endpoint = f"{sb.url}/backend/"
    await tick_plant.connect()  # authenticate + the BTC:USDC tickSnap connection probe
    try:
        ref_data = json.loads(await tick_plant.get_reference_data("BTC"))
        # tick_snap is REST through blocking `requests`: run it off the loop serving the sandbox.
        snap_data = await asyncio.to_thread(tick_plant.tick_snap, "BTC:USD", DAY, "00:00")
        history = json.loads(await tick_plant.tick_history("BTC:USD", DAY, "00:00"))
        contracts = json.loads(await tick_plant.list_deribit_contracts())
    finally:
        await tick_plant.__aexit__(None, None, None)

    assert ref_data["function-call"] == "secdb" and ref_data["request-security-id"] == "BTC"
    assert ref_data["ref-data"] == {
        "ticker": "BTC",
        "security-name": "Bitcoin",
        "finx-sec-id": market.security_id("BTC"),
    }
    # The real client sends the seed's date/time as unixTimeTarget/width: the seed's meaning holds.
    check_row(snap_data, "BTC:USD")
    expected = market.snap("BTC:USD", time.time_ns(), START_NS)
    assert expected is not None and snap_data["date"] == DAY
    assert (snap_data["time"], snap_data["price"]) == (expected.row().time, expected.price_text)
    assert list(history) == [str(i) for i in range(100)]
    assert all(row["date"] == DAY for row in history.values())
    assert contracts and contracts[0]["instrument_name"].startswith(("BTC-", "ETH-", "SOL-"))


async def test_tick_plant_rejected_with_bad_key(sb: SandboxRunner) -> None:
    from finx.tick_client import TickPlant

    tick_plant = TickPlant("not-a-key", "dev")
    tick_plant.endpoint = f"{sb.ws_url}/streamer/not-a-key"
    with pytest.raises(ConnectionClosed) as info:
        await tick_plant.connect()  # the auth reply arrives, then the socket is closed
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008


# --- websocket protocol ----------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/ws/", "/ws", f"/streamer/{KEY}"])
async def test_lock_step_replies_in_order(sb: SandboxRunner, market: FinxMarket, path: str) -> None:
    async with websockets.connect(sb.ws_url + path) as ws:
        assert await call(ws, {"functionName": "authenticate"}) == {"authenticated": True}
        # Pipelined requests: one reply each, in order, including one error frame.
        requests_ = [
            {"functionName": "referenceData", "securityId": "ETH"},
            {"functionName": "noSuchFunction"},
            {"functionName": "tickSnap", "pair": "SOL:USD", "date": DAY, "time": "12:00"},
            {"functionName": "referenceData", "securityId": "USDC"},
        ]
        for message in requests_:
            await ws.send(json.dumps({**message, "APIKey": KEY}))
        replies = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in requests_]
        await assert_silent(ws)
    assert replies[0]["ref-data"]["security-name"] == "Ethereum"
    assert "error" in replies[1] and "noSuchFunction" in replies[1]["error"]
    check_row(replies[2], "SOL:USD")
    assert row_ts_ns(replies[2]) >= parse_date_time(DAY, "12:00")
    assert replies[3]["ref-data"] == {
        "ticker": "USDC",
        "security-name": "USD Coin",
        "finx-sec-id": market.security_id("USDC"),
    }


async def test_security_ids_are_stable_uuid4_and_distinct(sb: SandboxRunner) -> None:
    async with websockets.connect(f"{sb.ws_url}/streamer/{KEY}") as ws:
        ids = {t: (await call(ws, {"functionName": "referenceData", "securityId": t}))["ref-data"]["finx-sec-id"]
               for t in ("BTC", "ETH", "SOL", "USD", "USDC")}
        again = await call(ws, {"functionName": "referenceData", "securityId": "BTC"})
        unknown = await call(ws, {"functionName": "referenceData", "securityId": "NOPE"})
    assert len(set(ids.values())) == 5 and again["ref-data"]["finx-sec-id"] == ids["BTC"]
    assert all(v[14] == "4" for v in ids.values())  # uuid4-shaped like the seed's example
    assert "error" in unknown
    other_seed = FinxMarket(load_settings(FinxSettings, seed=7)).security_id("BTC")
    assert other_seed != ids["BTC"]


async def test_requests_without_pair_or_with_bad_date_get_error_frames(sb: SandboxRunner) -> None:
    async with websockets.connect(f"{sb.ws_url}/ws/") as ws:
        no_pair = await call(ws, {"functionName": "tickHistory", "date": DAY})
        bad_date = await call(ws, {"functionName": "tickHistory", "pair": "BTC:USD", "date": "15/06/2022"})
        bad_pair = await call(ws, {"functionName": "tickSnap", "pair": "DOGE:USD"})
        await ws.send("{not json")
        malformed = json.loads(await ws.recv())
        still_ok = await call(ws, {"functionName": "tickSnap", "pair": "BTC:USD"})
    assert no_pair["error"] == 'missing "pair" parameter'
    assert "error" in bad_date and "error" in bad_pair and "error" in malformed
    check_row(still_ok, "BTC:USD")


async def test_connect_probe_snap_is_latest_tick(sb: SandboxRunner, market: FinxMarket) -> None:
    async with websockets.connect(f"{sb.ws_url}/streamer/{KEY}") as ws:
        before = time.time_ns()
        row = await call(ws, {"functionName": "tickSnap", "pair": "BTC:USDC"})
        after = time.time_ns()
    check_row(row, "BTC:USDC")
    ts = row_ts_ns(row)
    assert before - 2 * market.period_ms * 1_000_000 <= ts <= after
    truth = market.ticks("BTC:USDC", ts, ts + 1_000_000)
    assert [(t.exchange, t.price_text) for t in truth] == [(row["exchange"], row["price"])]


async def test_pair_streamer_polls_over_ws(sb: SandboxRunner) -> None:
    async with websockets.connect(f"{sb.ws_url}/streamer/{KEY}/ETH:USD") as ws:
        assert await call(ws, {"functionName": "authenticate"}) == {"authenticated": True}
        probe = await call(ws, {"message": "message"})
        polls = [await call(ws, {"message": {"pair": "ETH:USD"}}) for _ in range(3)]
        await assert_silent(ws)
    for row in [probe, *polls]:
        check_row(row, "ETH:USD")
    assert row_ts_ns(polls[-1]) >= row_ts_ns(probe)


# --- history -----------------------------------------------------------------------------------
async def test_history_is_100_unsorted_rows_from_the_window_start(sb: SandboxRunner, market: FinxMarket) -> None:
    async with websockets.connect(f"{sb.ws_url}/streamer/{KEY}") as ws:
        history = await call(ws, {"functionName": "tickHistory", "pair": "BTC:USD", "date": DAY, "time": "00:00"})
        again = await call(ws, {"functionName": "tickHistory", "pair": "BTC:USD", "date": DAY, "time": "00:00"})
    assert list(history) == [str(i) for i in range(100)]
    rows = list(history.values())
    for row in rows:
        check_row(row, "BTC:USD")
    stamps = [row_ts_ns(r) for r in rows]
    assert stamps != sorted(stamps) and stamps != sorted(stamps, reverse=True)
    assert history == again  # deterministic shuffle
    assert min(stamps) >= START_NS and len(set(stamps)) == 100
    # Exactly the first 100 ticks from the window start, over all exchanges: no hole.
    truth = market.ticks("BTC:USD", START_NS, max(stamps) + 1)
    assert sorted((row_ts_ns(r), r["exchange"], r["price"]) for r in rows) == [
        (t.ts_ns, t.exchange, t.price_text) for t in truth
    ]
    assert {r["exchange"] for r in rows} == {"COINBASE", "GEMINI", "FTX"}


async def test_history_paging_by_advancing_the_start_has_no_hole(sb: SandboxRunner, market: FinxMarket) -> None:
    start = parse_date_time(DAY, "09:30")
    seen: list[tuple[int, str, str]] = []
    cursor = start
    async with websockets.connect(f"{sb.ws_url}/streamer/{KEY}") as ws:
        for _ in range(5):
            date, clock = wire_date_time(cursor)
            page = await call(ws, {"functionName": "tickHistory", "pair": "ETH:USD", "date": date, "time": clock})
            rows = [(row_ts_ns(r), r["exchange"], r["price"]) for r in page.values()]
            seen.extend(rows)
            cursor = max(ts for ts, _, _ in rows) + 1_000_000  # next ms after the page
    truth = market.ticks("ETH:USD", start, cursor)
    assert sorted(seen) == [(t.ts_ns, t.exchange, t.price_text) for t in truth]
    assert len(seen) == 500


async def test_history_prices_carry_float_noise_sometimes(sb: SandboxRunner, market: FinxMarket) -> None:
    rows = [t for t in market.ticks("BTC:USD", START_NS, START_NS + 20 * 10**9)]
    noisy = [t.price_text for t in rows if len(t.price_text.split(".")[1]) > 2]
    assert 0.03 < len(noisy) / len(rows) < 0.2
    assert all(abs(Decimal(p) - Decimal(p).quantize(Decimal("0.01"))) < Decimal("1e-9") for p in noisy)


async def test_history_from_the_future_is_empty(sb: SandboxRunner) -> None:
    async with websockets.connect(f"{sb.ws_url}/ws/") as ws:
        reply = await call(ws, {"functionName": "tickHistory", "pair": "BTC:USD", "date": "2999-01-01"})
    assert reply == {}


# --- auth ---------------------------------------------------------------------------------------
async def test_bad_key_in_path_is_rejected_during_auth(sb: SandboxRunner) -> None:
    async with websockets.connect(f"{sb.ws_url}/streamer/wrong") as ws:
        reply = await call(ws, {"functionName": "authenticate"}, key="wrong")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    assert reply["authenticated"] is False and "error" in reply
    assert ws.close_code == 1008


async def test_ws_without_path_key_uses_api_key_field(sb: SandboxRunner) -> None:
    async with websockets.connect(f"{sb.ws_url}/ws/") as ws:
        ok = await call(ws, {"functionName": "authenticate"}, key=KEY)
        bad = await call(ws, {"functionName": "tickSnap", "pair": "BTC:USD"}, key=None)
    assert ok == {"authenticated": True} and bad["authenticated"] is False
    assert ws.close_code == 1008


async def test_key_revoked_mid_session(sb: SandboxRunner, http: httpx.AsyncClient) -> None:
    async with websockets.connect(f"{sb.ws_url}/streamer/{KEY}") as ws:
        assert await call(ws, {"functionName": "authenticate"}) == {"authenticated": True}
        assert (await http.post("/_sandbox/finx/keys", json={"api_keys": ["other"]})).status_code == 200
        reply = await call(ws, {"functionName": "tickSnap", "pair": "BTC:USD"})
    assert reply["authenticated"] is False and ws.close_code == 1008
    rest = await http.get(f"/backend/observations/pairs?APIKey={KEY}")
    assert rest.status_code == 401 and rest.json() == {"error": "invalid API key"}


# --- REST --------------------------------------------------------------------------------------
async def test_rest_snap_with_raw_colon_and_time_target(
    sb: SandboxRunner, http: httpx.AsyncClient, market: FinxMarket
) -> None:
    target = START_NS // 10**9 + 3600
    resp = await http.get(
        f"/backend/observations/tick/snap?APIKey={KEY}&pair=BTC:USD&unixTimeTarget={target}&timeTargetWidthSeconds=10"
    )
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    row = resp.json()
    check_row(row, "BTC:USD")
    expected = market.latest("BTC:USD", target * 10**9)
    assert expected is not None
    assert row == msgspec.structs.asdict(expected.snap_row())
    assert row["unix_time"] == pytest.approx(row_ts_ns(row) / 1e9, abs=1e-6)
    assert (target - 10) * 10**9 <= row_ts_ns(row) <= target * 10**9


async def test_rest_snap_latest_and_empty_window(sb: SandboxRunner, http: httpx.AsyncClient) -> None:
    latest = (await http.get(f"/backend/observations/tick/snap?APIKey={KEY}&pair=SOL:USD")).json()
    check_row(latest, "SOL:USD")
    assert abs(latest["unix_time"] - time.time()) < 5
    # A window before the first tick (2020-01-01) holds nothing: an empty object, like the client expects.
    empty = await http.get(
        f"/backend/observations/tick/snap?APIKey={KEY}&pair=SOL:USD&unixTimeTarget=1500000000&timeTargetWidthSeconds=10"
    )
    assert empty.status_code == 200 and empty.json() == {}


async def test_rest_errors_are_json(sb: SandboxRunner, http: httpx.AsyncClient) -> None:
    cases = {
        "/backend/observations/tick/snap?APIKey=nope&pair=BTC:USD": 401,
        "/backend/observations/tick/snap?pair=BTC:USD": 401,
        f"/backend/observations/tick/snap?APIKey={KEY}": 400,
        f"/backend/observations/tick/snap?APIKey={KEY}&pair=DOGE:USD": 404,
        f"/backend/observations/tick/snap?APIKey={KEY}&pair=BTC:USD&unixTimeTarget=abc": 400,
        f"/backend/reference/secdb?APIKey={KEY}&securityId=NOPE": 404,
        f"/backend/no/such/path?APIKey={KEY}": 404,
    }
    for path, status in cases.items():
        resp = await http.get(path)
        assert resp.status_code == status, path
        assert isinstance(resp.json()["error"], str), path
    not_allowed = await http.post(f"/backend/observations/pairs?APIKey={KEY}")
    assert not_allowed.status_code == 405 and "error" in not_allowed.json()


async def test_rest_reference_pairs_and_deribit_via_requests(sb: SandboxRunner, market: FinxMarket) -> None:
    base = f"{sb.url}/backend/"

    def fetch_all() -> list[Any]:
        # The URLs exactly as finx_rest.py builds them (requests, unencoded values, literal None).
        return [
            requests.get(f"{base}reference/secdb/?APIKey={KEY}&securityId=SOL", timeout=5).json(),
            requests.get(f"{base}reference/secdb?APIKey={KEY}&securityId=SOL", timeout=5).json(),
            requests.get(f"{base}observations/pairs?APIKey={KEY}", timeout=5).json(),
            requests.get(f"{base}deribit/list-deribit-contracts?APIKey={KEY}&as_of_date=None", timeout=5).json(),
            requests.get(f"{base}deribit/list-deribit-contracts?APIKey={KEY}&as_of_date={DAY}", timeout=5).json(),
        ]

    slash, no_slash, pairs, contracts_now, contracts_then = await asyncio.to_thread(fetch_all)
    assert slash["ref-data"] == no_slash["ref-data"] == market.reference("SOL")
    assert pairs == ["BTC:USD", "ETH:USD", "BTC:USDC", "SOL:USD"]
    names = [c["instrument_name"] for c in contracts_then]
    assert "BTC-17JUN22-21000-C" in names and any(n.endswith("-P") for n in names)
    assert all(c["expiration_timestamp"] > START_NS // 10**6 for c in contracts_then)
    assert contracts_now[0]["expiration_timestamp"] > time.time() * 1000


async def test_rest_options_time_slice(sb: SandboxRunner, http: httpx.AsyncClient) -> None:
    target = START_NS // 10**9 + 12 * 3600
    resp = await http.get(
        f"/backend/observations/options/time_slice?APIKey={KEY}&timeslice_target_datestamp={target}"
        "&timeslice_width_seconds=30&underlying_symbol=BTC"
    )
    records = resp.json()
    assert resp.status_code == 200 and records
    fields = {"instrument_name", "mark_iv", "bid_iv", "ask_iv", "mark_price", "underlying_price", "underlying_index",
              "delta", "gamma", "vega", "theta", "rho", "timestamp", "state", "open_interest"}
    for rec in records:
        assert fields <= rec.keys()
        assert abs(rec["timestamp"] - target * 1000) <= 15_000
        underlying, _expiry, strike, kind = rec["instrument_name"].split("-")
        assert underlying == "BTC" and kind in "CP" and float(strike) > 0
        assert (0 <= rec["delta"] <= 1) if kind == "C" else (-1 <= rec["delta"] <= 0)
    assert any(r["underlying_index"].startswith("SYN.") for r in records)


# --- ground truth ------------------------------------------------------------------------------
async def test_admin_ground_truth_matches_helper(
    sb: SandboxRunner, http: httpx.AsyncClient, market: FinxMarket
) -> None:
    start, end = START_NS, START_NS + 2 * 10**9
    body = (await http.get("/_sandbox/finx/ticks", params={"pair": "BTC:USD", "start_ns": start, "end_ns": end})).json()
    truth = market.ticks("BTC:USD", start, end)
    assert [(r["ts_ns"], r["exchange"], r["price"]) for r in body["ticks"]] == [
        (t.ts_ns, t.exchange, t.price_text) for t in truth
    ]
    assert len(truth) == 2 * 3 * 1000 // market.period_ms  # the configured rate, per exchange
    assert all(t.ts_ns % 1_000_000 == 0 for t in truth)  # the wire has milliseconds
    gemini = (
        await http.get(
            "/_sandbox/finx/ticks", params={"pair": "BTC:USD", "start_ns": start, "end_ns": end, "exchange": "GEMINI"}
        )
    ).json()
    assert {r["exchange"] for r in gemini["ticks"]} == {"GEMINI"}
    info = (await http.get("/_sandbox/finx/info")).json()
    assert info["tickers"]["BTC"] == market.security_id("BTC") and info["period_ms"] == market.period_ms


def test_settings_from_environment() -> None:
    env = {
        "MARKETBUS_SANDBOX_FINX_API_KEYS": "k1,k2",
        "MARKETBUS_SANDBOX_FINX_PAIRS": "BTC:USD,ADA:USD",
        "MARKETBUS_SANDBOX_FINX_EXCHANGES": "COINBASE,KRAKEN",
        "MARKETBUS_SANDBOX_FINX_RATE": "250",
    }
    settings = load_settings(FinxSettings, env=env)
    market = FinxMarket(settings)
    assert settings.api_keys == ["k1", "k2"] and market.period_ms == 4
    ticks = market.ticks("ADA:USD", START_NS, START_NS + 10**9)
    assert len(ticks) == 500 and {t.exchange for t in ticks} == {"COINBASE", "KRAKEN"}
    assert len({t.ts_ns for t in ticks}) == 500  # exchanges never tick in the same ms
    assert "ADA" in market.tickers()


# --- faults ------------------------------------------------------------------------------------
async def set_faults(http: httpx.AsyncClient, **switches: Any) -> None:
    assert (await http.post("/_sandbox/faults", json=switches)).status_code == 200


async def test_slow_replies(sb: SandboxRunner, http: httpx.AsyncClient) -> None:
    async with websockets.connect(f"{sb.ws_url}/streamer/{KEY}") as ws:
        await set_faults(http, latency_ms=300)
        began = time.monotonic()
        row = await call(ws, {"functionName": "tickSnap", "pair": "BTC:USD"})
        assert time.monotonic() - began >= 0.3
    check_row(row, "BTC:USD")
    began = time.monotonic()
    assert (await http.get(f"/backend/observations/pairs?APIKey={KEY}")).status_code == 200
    assert time.monotonic() - began >= 0.3


async def test_socket_dropped_after_n_frames(sb: SandboxRunner, http: httpx.AsyncClient) -> None:
    await set_faults(http, drop_after_frames=3)
    async with websockets.connect(f"{sb.ws_url}/streamer/{KEY}") as ws:
        for _ in range(3):
            await call(ws, {"functionName": "authenticate"})
        with pytest.raises(ConnectionClosed):
            await call(ws, {"functionName": "authenticate"})


async def test_admin_drop_closes_open_sockets(sb: SandboxRunner, http: httpx.AsyncClient) -> None:
    async with websockets.connect(f"{sb.ws_url}/streamer/{KEY}") as ws:
        await call(ws, {"functionName": "authenticate"})
        await http.post("/_sandbox/drop")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1012


@pytest.mark.parametrize("switch", ["malformed_next", "truncated_next"])
async def test_corrupted_frame_then_recovery(sb: SandboxRunner, http: httpx.AsyncClient, switch: str) -> None:
    async with websockets.connect(f"{sb.ws_url}/streamer/{KEY}") as ws:
        await set_faults(http, **{switch: 1})
        await ws.send(json.dumps({"functionName": "tickHistory", "pair": "BTC:USD", "date": DAY, "APIKey": KEY}))
        broken = await asyncio.wait_for(ws.recv(), 5)
        with pytest.raises(json.JSONDecodeError):
            json.loads(broken)
        history = await call(ws, {"functionName": "tickHistory", "pair": "BTC:USD", "date": DAY})
    assert len(history) == 100


async def test_duplicate_reply_fault_puts_the_socket_out_of_step(sb: SandboxRunner, http: httpx.AsyncClient) -> None:
    async with websockets.connect(f"{sb.ws_url}/streamer/{KEY}") as ws:
        await set_faults(http, duplicate_next=1)
        first = await call(ws, {"functionName": "referenceData", "securityId": "BTC"})
        stale = await call(ws, {"functionName": "referenceData", "securityId": "ETH"})
        fresh = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert first == stale and fresh["request-security-id"] == "ETH"


async def test_http_fault_bodies_are_json(sb: SandboxRunner, http: httpx.AsyncClient) -> None:
    await set_faults(http, error_next=1, rate_limit_next=1)
    limited = await http.get(f"/backend/observations/pairs?APIKey={KEY}")
    failed = await http.get(f"/backend/observations/pairs?APIKey={KEY}")
    assert limited.status_code == 429 and "error" in limited.json() and limited.headers["retry-after"]
    assert failed.status_code == 503 and "error" in failed.json()
    assert (await http.get(f"/backend/observations/pairs?APIKey={KEY}")).status_code == 200


async def test_reboot_refuses_then_recovers(sb: SandboxRunner, http: httpx.AsyncClient) -> None:
    ws = await websockets.connect(f"{sb.ws_url}/streamer/{KEY}")
    await call(ws, {"functionName": "authenticate"})
    await http.post("/_sandbox/reboot", params={"seconds": "0.5"})
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    refused, reply = False, None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            async with websockets.connect(f"{sb.ws_url}/streamer/{KEY}", open_timeout=1) as ws2:
                reply = await call(ws2, {"functionName": "authenticate"})
                if refused:
                    break
        except (TimeoutError, OSError, ConnectionClosed, websockets.InvalidStatus):
            refused = True
        await asyncio.sleep(0.05)
    assert refused and reply == {"authenticated": True}
