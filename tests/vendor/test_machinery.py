"""The vendor machinery (marketbus.vendor): Retry-After, classification and the HTTP layer against
a real HTTP server, pacing, the cursor store and the gap tracker on a real NATS, time parsing."""

from __future__ import annotations

import datetime as dt
import random
import re
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import msgspec
import nats
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from marketbus.contracts.ids import event_id
from marketbus.contracts.status import FeedStatus
from marketbus.contracts.streams import INGEST_STATE, ensure_bucket
from marketbus.runtime.backoff import Backoff
from marketbus.runtime.http import AsgiServer
from marketbus.runtime.ingest import Ingestor
from marketbus.runtime.ratelimit import RateLimiter
from marketbus.vendor.cursor import CursorStore, kv_key, kv_token, kv_token_decode
from marketbus.vendor.dedup import RecentIds, hex_key
from marketbus.vendor.frames import FrameGuard
from marketbus.vendor.gaps import GapTracker
from marketbus.vendor.http import Outcome, Refused, Unavailable, VendorHttp, classify, parse_retry_after
from marketbus.vendor.limits import DIGITEX, LimiterHold, RateWindow, window_safe_limiter
from marketbus.vendor.timeparse import epoch_ns, iso_ns, ns_iso, time_or_offset_ns
from tests.ingest_finx.bus import events_of, read_stream

NOW = dt.datetime(2026, 12, 1, 6, 0, 0, tzinfo=dt.UTC)
KV_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")


# --- Retry-After and classification --------------------------------------------------------------
@pytest.mark.parametrize(("header", "seconds"), [
    ("120", 120.0), (" 2.5 ", 2.5), ("0", 0.0), ("-3", 0.0),
    ("Tue, 01 Dec 2026 06:00:30 GMT", 30.0),  # IMF-fixdate
    ("Tuesday, 01-Dec-26 06:01:00 GMT", 60.0),  # RFC 850
    ("Tue Dec  1 06:00:05 2026", 5.0),  # asctime (no zone: GMT)
    ("Tue, 01 Dec 2026 05:00:00 GMT", 0.0),  # in the past: now
    (None, None), ("", None), ("soon", None),
])
def test_retry_after_forms(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


@pytest.mark.parametrize(("status", "outcome"), [
    (200, Outcome.OK), (204, Outcome.OK), (304, Outcome.OK), (400, Outcome.REFUSED), (401, Outcome.REFUSED),
    (404, Outcome.REFUSED), (408, Outcome.RETRY), (429, Outcome.RATE_LIMITED), (500, Outcome.RETRY),
    (503, Outcome.RETRY), (None, Outcome.RETRY),
])
def test_classification(status: int | None, outcome: Outcome) -> None:
    assert classify(status) is outcome


class Script:
    """A real HTTP server answering each path with a scripted list of (status, headers)."""

    def __init__(self) -> None:
        self.plans: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.hits: dict[str, list[float]] = {}

    async def endpoint(self, request: Request) -> Response:
        path = request.url.path
        self.hits.setdefault(path, []).append(time.monotonic())
        plan = self.plans.get(path) or [(200, {})]
        status, headers = plan.pop(0) if len(plan) > 1 else plan[0]
        return Response(f"{path} {status}".encode(), status_code=status, headers=headers)


@pytest.fixture
async def script() -> AsyncIterator[tuple[Script, str]]:
    s = Script()
    app = Starlette(routes=[Route("/{path:path}", s.endpoint, methods=["GET", "POST"])])
    async with AsgiServer(app) as server:
        yield s, server.url


async def test_http_layer_retries_waits_and_refuses(script: tuple[Script, str]) -> None:
    s, url = script
    errors: list[str] = []
    http = VendorHttp(url, RateLimiter(1000, 1000), backoff=Backoff(0.01, 0.02), max_attempts=3,
                      on_error=errors.append)
    try:
        date = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)).strftime("%a, %d %b %Y %H:%M:%S GMT")
        s.plans["/limited"] = [(429, {"Retry-After": date}), (200, {})]
        began = time.monotonic()
        assert (await http.send("GET", "/limited")).content == b"/limited 200"
        assert time.monotonic() - began >= 0.9  # the HTTP-date was waited out (second resolution)
        s.plans["/flaky"] = [(503, {"Retry-After": "0"}), (502, {}), (200, {})]
        assert (await http.send("GET", "/flaky")).status_code == 200
        s.plans["/down"] = [(503, {})]
        with pytest.raises(Unavailable):
            await http.send("GET", "/down")
        assert len(s.hits["/down"]) == 3  # max_attempts
        s.plans["/bad"] = [(400, {})]
        with pytest.raises(Refused) as refused:
            await http.send("GET", "/bad")
        assert refused.value.status == 400 and len(s.hits["/bad"]) == 1  # never retried
        assert errors.count("rate_limited") == 1 and errors.count("server_error") == 5 and errors.count("refused") == 1
    finally:
        await http.close()


async def test_http_layer_retries_transport_failures() -> None:
    from marketbus.runtime.http import free_port

    http = VendorHttp(f"http://127.0.0.1:{free_port()}", RateLimiter(1000, 1000), backoff=Backoff(0.01, 0.02),
                      max_attempts=2)
    try:
        with pytest.raises(Unavailable, match="after 2 attempts"):
            await http.send("GET", "/")
    finally:
        await http.close()


# --- pacing --------------------------------------------------------------------------------------
async def test_window_safe_limiter_never_passes_more_than_the_limit_in_any_window() -> None:
    limiter = window_safe_limiter([RateWindow(20, 1.0)])
    stamps: list[float] = []
    deadline = time.monotonic() + 1.6
    while time.monotonic() < deadline:
        await limiter.acquire()
        stamps.append(time.monotonic())
    worst = max(sum(1 for t in stamps if start <= t < start + 1.0) for start in stamps)
    assert 10 <= worst <= 20, worst  # a plain bucket of rate 20 and burst 20 passes ~40 here


async def test_the_order_router_and_the_digitex_ingestor_pace_on_one_limiter() -> None:
    from marketbus.runtime.settings import Secret
    from services.ingest_digitex.client import DigitexClient as IngestClient
    from services.order_router.client import DigitexClient as RouterClient

    base = "http://digitex.both.test:8703"
    hold = LimiterHold(DIGITEX, base + "/dapi")
    ingest = IngestClient(base + "/dapi", Secret("t"), hold.limiter)
    router = RouterClient(base, "t")  # the router's own defaults: 50/s, 500/min
    try:
        assert router.limiter is ingest.limiter
        # one sliding-window limiter: the two together never pass 50 in a second
        assert router.limiter.limits == [(50, 1.0), (500, 60.0)]
    finally:
        await ingest.close()
        await router.close()
        hold.release()


def test_holders_of_a_vendor_host_share_one_limiter_at_the_tightest_windows() -> None:
    url = "http://digitex.shared.test:8703/dapi"
    ingestor = LimiterHold(DIGITEX, url)
    router = LimiterHold(DIGITEX.with_limits(RateWindow(10, 1.0), RateWindow(500, 60.0)),
                         "http://digitex.shared.test:8703/dapi/v1/exchange/bot/")
    elsewhere = LimiterHold(DIGITEX, "http://elsewhere.test:1")
    assert router.limiter is ingestor.limiter and elsewhere.limiter is not ingestor.limiter
    assert ingestor.limiter.limits == [(10, 1.0), (500, 60.0)]
    ingestor.tighten(RateWindow(300, 60.0))  # advertised by the vendor
    assert ingestor.limiter.limits == [(10, 1.0), (300, 60.0)]
    router.release()
    router.release()  # twice is harmless
    assert ingestor.limiter.limits == [(50, 1.0), (300, 60.0)]  # the router's 10/s is gone
    ingestor.release()
    elsewhere.release()
    fresh = LimiterHold(DIGITEX, url)  # nobody held it: a new limiter with the declared windows
    assert fresh.limiter is not ingestor.limiter and fresh.limiter.limits == [(50, 1.0), (500, 60.0)]
    fresh.release()


# --- cursors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["BTC~USD", "ES 2026/H", "café", "a.b", "=", "", "plain-Symbol_1"])
def test_kv_tokens_are_valid_keys_and_reversible(text: str) -> None:
    token = kv_token(text)
    assert KV_KEY.fullmatch(token) and "." not in token
    assert kv_token_decode(token) == text
    assert kv_key("digitex", "trades", "BTCUSD-PERP") == "digitex.trades.BTCUSD-PERP"  # old keys stay


class TradeCursor(msgspec.Struct):
    trade_id: int
    ts_ns: int


async def test_cursor_store_round_trip_on_nats(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        kv = await ensure_bucket(nc.jetstream(), INGEST_STATE)
        store: CursorStore[TradeCursor] = CursorStore(kv, "ticksupply", "trades", TradeCursor, namespace="t1")
        assert await store.get("BTC~USD") is None
        await store.put("BTC~USD", TradeCursor(7, 1_767_000_000_123_456_789))
        await store.put("BTC USD", TradeCursor(8, 1))
        assert await store.get("BTC~USD") == TradeCursor(7, 1_767_000_000_123_456_789)
        assert await store.get("BTC USD") == TradeCursor(8, 1)
        assert (await kv.get("ticksupply.t1.trades.BTC=7EUSD")).value  # under <source>.>, a legal key
        await kv.put(store.key("old"), b'{"layout": "older"}')
        assert await store.get("old") is None  # unreadable: start afresh, no crash
    finally:
        await nc.drain()


# --- de-duplication ----------------------------------------------------------------------------------
def test_recent_ids_are_bounded_by_count_and_age() -> None:
    clock = [0.0]
    seen = RecentIds(max_ids=3, max_age_s=10, clock=lambda: clock[0])
    assert seen.fresh([1, 2, 2, 3], key=lambda i: i) == [1, 2, 3]
    assert not seen.add(1)
    seen.add(4)  # over the count: 1 is forgotten
    assert len(seen) == 3 and 1 not in seen
    clock[0] = 11.0
    assert 4 not in seen and len(seen) == 0  # over the age


def test_recent_ids_at_their_bound_forget_exactly_the_oldest() -> None:
    """Many evictions in a row (the state an ingestor is in after its first ``max_ids`` events):
    the newest ``max_ids`` stay, every older one is new again."""
    seen = RecentIds(max_ids=1000, max_age_s=3600)
    assert all(seen.add(i) for i in range(20_000))
    assert len(seen) == 1000
    assert not any(seen.add(i) for i in range(19_000, 20_000))
    assert seen.add(18_999) and len(seen) == 1000 and 19_000 not in seen


def test_recent_ids_remember_for_at_least_their_age_and_at_most_one_slice_more() -> None:
    clock = [0.0]
    seen = RecentIds(max_ids=100, max_age_s=256, clock=lambda: clock[0])  # slices of 1 s
    seen.add("a")
    clock[0] = 0.5
    seen.add("b")
    clock[0] = 256.4
    assert not seen.add("a") and not seen.add("b")  # 256.4 s old: within max_age_s + one slice
    clock[0] = 257.6
    assert seen.add("a") and seen.add("b")  # both beyond it: new again
    clock[0] = 300.0
    assert not seen.add("b") and "a" in seen


def test_recent_ids_discarded_then_added_again_outlive_the_old_entry() -> None:
    """``discard`` (an event not delivered) then a new ``add``: when the first entry ages out,
    the key stays remembered for the second, and goes with it."""
    clock = [0.0]
    seen = RecentIds(max_ids=10, max_age_s=256, clock=lambda: clock[0])
    seen.add("x")
    seen.discard("x")
    assert "x" not in seen
    clock[0] = 100.0
    assert seen.add("x")
    clock[0] = 258.0  # the first entry is beyond the age, the second is not
    assert "x" in seen and not seen.add("x") and len(seen) == 1
    clock[0] = 358.0
    assert "x" not in seen and len(seen) == 0 and seen.add("x")


def test_compact_hex_keys_are_the_same_ids_and_no_two_collide() -> None:
    ids = [event_id("sitagri", "market_price", "/market/sources/X/spot/A/deliveries/A", i) for i in range(1000)]
    seen = RecentIds(compact=hex_key)
    assert all(seen.add(i) for i in ids) and not any(seen.add(i) for i in ids)
    assert ids[5] in seen and event_id("sitagri", "news", "AFP", 1) not in seen
    packed = {hex_key(t) for t in ("ab", "0ab", "00ab", "AB", "aB", "a_b", "+ab", " ab", "xyz", "12", "012", "")}
    assert len(packed) == 12  # leading zeros, case, signs, underscores and spaces all stay distinct
    assert hex_key("AB") == "AB" and hex_key("xyz") == "xyz" and hex_key(7) == 7


def test_recent_ids_at_a_million_cost_under_100_bytes_an_id() -> None:
    """The bound of the Sitagri ingestor (a million event ids), measured with tracemalloc on
    100k ids that only the RecentIds holds, as in the app (a dict of id text -> time took ~145
    bytes an id)."""
    import tracemalloc

    seen = RecentIds(compact=hex_key)
    tracemalloc.start()
    try:
        for i in range(100_000):
            seen.add(event_id("sitagri", "market_price", "q", i))
        size, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(seen) == 100_000
    assert size / 100_000 < 100, f"{size / 100_000:.0f} bytes an id"


# --- gap tracking and malformed frames on a real service --------------------------------------------
class Probe(Ingestor):
    name: ClassVar[str] = "vendor_probe"
    source: ClassVar[str] = "probe"


async def test_gap_tracker_publishes_gap_then_resynced(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        async with Probe(nats_url=nats_url, heartbeat_interval_s=60) as probe:
            tracker = GapTracker(probe, "probe", venue="V", symbol="S1", kind="trade")
            assert await tracker.report(5) is None and await tracker.resynced() is None  # no outage: nothing
            tracker.interrupted(100)
            tracker.interrupted(200)  # the first moment counts
            gap = await tracker.report(50, end_ns=300, detail="outage")
            assert gap == (50, 300)
            await tracker.resynced("back-filled")
            tracker.interrupted(400)
            await tracker.lost((400, 500), "beyond the depth")
            assert await tracker.resynced() is None  # a lost gap is never resynced

            frames = FrameGuard(probe, ValueError)
            assert await frames.normalize("ch", b"12", int, "12") == 12
            assert await frames.normalize("ch", b"x", int, "x") is None
            with pytest.raises(KeyError):  # undeclared errors are bugs: they propagate
                await frames.normalize("ch", b"{}", lambda: {}["k"])
            await probe.flush()
        js = nc.jetstream()

        async def statuses() -> list[Any]:
            return [e for e in events_of(await read_stream(js, "status.vendor_probe.feed.>"))
                    if isinstance(e, FeedStatus) and e.symbol == "S1"]

        found = await statuses()
        assert [(s.state, s.gap_start, s.gap_end, s.detail) for s in found] == [
            ("gap", 50, 300, "outage"), ("resynced", 50, 300, "back-filled"), ("gap", 400, 500, "beyond the depth")]
        letters = await read_stream(js, "dlq.vendor_probe.probe")
        assert len(letters) == 1
    finally:
        await nc.drain()


# --- time parsing -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "ns"), [
    ("2026-12-01T06:00:00Z", 1_796_104_800_000_000_000),
    ("2026-12-01T06:00:00.123456789Z", 1_796_104_800_123_456_789),
    ("2026-12-01T06:00:00.1Z", 1_796_104_800_100_000_000),
    ("2026-12-01 07:00:00.000000001+01:00", 1_796_104_800_000_000_001),
    ("2026-12-01T06:00:00.5", 1_796_104_800_500_000_000),  # no zone: UTC
    ("1969-12-31T23:59:59.5Z", -500_000_000),
])
def test_iso_times_keep_sub_second_precision(text: str, ns: int) -> None:
    assert iso_ns(text) == ns


@pytest.mark.parametrize("bad", ["", "yesterday", "2026-13-01T00:00:00Z", "²⁰²⁶-12-01T00:00:00Z"])
def test_bad_iso_times_raise_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        iso_ns(bad)


# --- time formatting: the one formatter (API bookkeeping, built-in schemas, replay, CLI tables) -------
NS = 1_796_104_800_123_456_789  # 2026-12-01T06:00:00.123456789Z


@pytest.mark.parametrize(("ns", "kw", "text"), [
    (NS, {}, "2026-12-01T06:00:00.123456789Z"),  # built-in schemas' exchange/collection times
    (NS - 123_456_789, {}, "2026-12-01T06:00:00.000000000Z"),
    (NS, {"digits": 6}, "2026-12-01T06:00:00.123456Z"),  # the TickSupply API's bookkeeping times
    (NS + 999, {"digits": 6}, "2026-12-01T06:00:00.123457Z"),  # .123457788: truncated, never rounded up
    (NS, {"digits": None}, "2026-12-01T06:00:00.123456789Z"),  # replay's range bounds
    (NS - 123_456_789, {"digits": None}, "2026-12-01T06:00:00Z"),
    (NS + 500_000_000, {"digits": 6, "sep": " ", "zone": ""}, "2026-12-01 06:00:00.623456"),  # CLI tables
    (NS + 999_999_000, {"digits": 3, "sep": " "}, "2026-12-01 06:00:01.123Z"),  # CLI export jobs
    (NS + 876_543_211, {"digits": 0}, "2026-12-01T06:00:01Z"),  # CLI feed periods
    (-500_000_000, {}, "1969-12-31T23:59:59.500000000Z"),
    (0, {"digits": None}, "1970-01-01T00:00:00Z"),
])
def test_ns_times_are_written_as_iso(ns: int, kw: dict[str, Any], text: str) -> None:
    assert ns_iso(ns, **kw) == text


def test_written_times_read_back_exactly() -> None:
    rng = random.Random(7)
    for ns in [0, 1, -1, NS, *(rng.randrange(-10**18, 4 * 10**18) for _ in range(2000))]:
        assert iso_ns(ns_iso(ns)) == ns and iso_ns(ns_iso(ns, None)) == ns
        assert iso_ns(ns_iso(ns, 6)) == ns - ns % 1000


def test_api_bookkeeping_times_and_bad_digits() -> None:
    from marketbus.runtime.tsapi import iso

    assert iso(NS) == ns_iso(NS, 6) and iso(None) is None
    with pytest.raises(ValueError):
        ns_iso(NS, 10)


def test_epoch_numbers_and_offsets() -> None:
    assert epoch_ns("1796104800.123456789") == 1_796_104_800_123_456_789
    assert epoch_ns(1_796_104_800_123, "ms") == 1_796_104_800_123_000_000
    assert epoch_ns("1.5", "us") == 1500
    bad_values: list[Any] = ["nan", "x", True]
    for bad in bad_values:
        with pytest.raises(ValueError):
            epoch_ns(bad)
    assert time_or_offset_ns("", 10**12) is None
    assert time_or_offset_ns("-0.25", 10**12) == 10**12 - 250_000_000
    assert time_or_offset_ns("1970-01-01T00:00:01.000000002Z", 0) == 1_000_000_002


async def test_http_layer_keeps_a_urls_own_query(script: tuple[Script, str]) -> None:
    s, url = script
    http = VendorHttp(url, RateLimiter(1000, 1000))
    try:
        s.plans["/signed"] = [(200, {})]
        app_url = f"{url}/signed?X-Signature=abc&expires=1"
        response = await http.send("GET", app_url, paced=False)
        assert response.status_code == 200
        assert response.request.url.query == b"X-Signature=abc&expires=1"  # a presigned URL stays signed
    finally:
        await http.close()
