"""FinX normalizer on recorded payloads (the seed's examples and replies recorded from the sandbox)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from marketbus.contracts import codec, subjects
from marketbus.contracts.ids import event_id
from marketbus.contracts.invariants import canonical_decimal
from services.ingest_finx import normalize

PAYLOADS = Path(__file__).parent / "payloads"
TS_RECV = 1_800_000_000_000_000_000


def load(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def test_seed_snap_row_keeps_the_exact_price_and_time() -> None:
    tick = normalize.snap(load("seed_snap.json"), TS_RECV)
    assert tick is not None
    assert tick.price == Decimal("21865.010000000002")  # the vendor's float noise, kept exactly
    assert str(tick.price) == "21865.010000000002"
    assert tick.ts_event == 1_655_328_460_453_000_000  # 2022-06-15T21:27:40.453Z
    assert (tick.source, tick.venue, tick.symbol) == ("finx", "COINBASE", "BTC-USD")
    assert subjects.for_event(tick) == "md.tick.finx.COINBASE.BTC-USD"
    assert tick.id == event_id("finx", "tick", "BTC:USD", "COINBASE", tick.ts_event, "21865.010000000002")
    assert tick.replay is False and tick.ts_recv == TS_RECV
    # the JSON on the bus carries the price as the same string
    assert json.loads(codec.encode(tick))["price"] == "21865.010000000002"


def test_seed_history_is_sorted_and_the_same_tick_has_the_same_id_as_its_snap() -> None:
    ticks, bad = normalize.history(load("seed_history.json"), TS_RECV)
    assert bad == []
    assert [t.ts_event for t in ticks] == sorted(t.ts_event for t in ticks)
    assert [t.venue for t in ticks] == ["FTX", "GEMINI", "COINBASE", "COINBASE"]
    assert [str(t.price) for t in ticks] == ["20209.32", "21100.5", "20871.54", "21865.010000000002"]
    assert all(t.replay for t in ticks)
    snap = normalize.snap(load("seed_snap.json"), TS_RECV)
    assert ticks[-1].id == snap.id


def test_sandbox_history_page_matches_the_sandbox_ground_truth() -> None:
    ticks, bad = normalize.history(load("sandbox_history_2022-06-15.json"), TS_RECV)
    truth = msgspec.json.decode(load("sandbox_truth_2022-06-15.json"))["ticks"]
    assert bad == [] and len(ticks) == 100
    assert [(t.ts_event, t.venue, str(t.price)) for t in ticks] == [
        (r["ts_ns"], r["exchange"], str(canonical_decimal(Decimal(r["price"])))) for r in truth
    ]
    assert len({t.id for t in ticks}) == 100


def test_reference_data_to_currency_and_instrument() -> None:
    btc = normalize.currency(normalize.decode(load("seed_reference_btc.json")), TS_RECV)
    assert (btc.code, btc.name, btc.vendor_id) == ("BTC", "Bitcoin", "fc22a61c-3bcc-4885-a73d-f493a10e05de")
    assert btc.ts_event == 1_655_659_282_380_000_000
    assert subjects.for_event(btc) == "ref.currency.finx._.BTC"
    eth = normalize.currency(normalize.decode(load("sandbox_reference_eth.json")), TS_RECV)
    assert eth.code == "ETH" and eth.name == "Ethereum"
    inst = normalize.instrument("btc:usd", {"BTC": btc}, TS_RECV)
    assert (inst.vendor_symbol, inst.symbol, inst.base, inst.quote, inst.instrument_type) == (
        "BTC:USD",
        "BTC-USD",
        "BTC",
        "USD",
        "spot",
    )
    assert inst.attributes["base_finx_sec_id"] == btc.vendor_id
    assert subjects.for_event(inst) == "ref.instrument.finx._.BTC-USD"


def test_error_frame_is_a_vendor_error_not_a_malformed_payload() -> None:
    with pytest.raises(normalize.VendorError, match="unknown pair"):
        normalize.history(load("sandbox_error_unknown_pair.json"), TS_RECV)
    with pytest.raises(normalize.VendorError):
        normalize.snap(b'{"authenticated": false, "error": "invalid API key"}', TS_RECV)


@pytest.mark.parametrize("frame, reason", [
    (b'{"broken": {\'0\': <<not json', "not JSON"),
    (b'{"0": {"pair": "BTC:USD", "date": "2022-06-15", "ti', "not JSON"),
    (b'[1, 2, 3]', "not an object"),
    (b'{"rows": 3}', "no row keys"),
])
def test_malformed_history_frames_raise_malformed(frame: bytes, reason: str) -> None:
    with pytest.raises(normalize.Malformed, match=reason):
        normalize.history(frame, TS_RECV)


def test_one_bad_row_is_reported_and_the_others_kept() -> None:
    page = msgspec.json.decode(load("seed_history.json"))
    page["1"]["price"] = "abc"
    page["2"]["time"] = "25:99"
    page["3"] = {"pair": "BTC:USD"}
    ticks, bad = normalize.history(msgspec.json.encode(page), TS_RECV)
    assert len(ticks) == 1 and ticks[0].venue == "COINBASE"
    assert len(bad) == 3
    assert any("bad price" in reason for _, reason in bad)
    assert any("bad time" in reason for _, reason in bad)


def test_empty_snap_and_history() -> None:
    assert normalize.snap(b"{}", TS_RECV) is None
    assert normalize.history(b"{}", TS_RECV) == ([], [])


def test_time_parsing_and_request_fields_round_trip() -> None:
    assert normalize.clock_ns("00:00") == 0
    assert normalize.clock_ns("21:27:40.453Z") == ((21 * 60 + 27) * 60 + 40) * 10**9 + 453 * 10**6
    ts = 1_655_328_460_453_000_000
    date, clock = normalize.request_date_time(ts)
    assert (date, clock) == ("2022-06-15", "21:27:40.453")
    assert normalize.wire_ts(date, clock) == ts
    for bad in ("", "7", "12:3", "aa:bb", "12:00:00.", "12:00:00.12x"):
        with pytest.raises(normalize.Malformed):
            normalize.clock_ns(bad)


ROW = {"pair": "BTC:USD", "date": "2022-06-15", "time": "21:27:40.453Z", "exchange": "COINBASE", "price": "21865.01"}


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("date", "9999-12-31", "out of range"),  # beyond int64 ns: the history writer could not store it
    ("date", "1969-12-31", "out of range"),
    ("price", "-1", "bad price"), ("price", "0", "bad price"), ("price", "-0", "bad price"),
    ("price", "NaN", "bad price"), ("price", "1e30", "Tick.price"),
    ("pair", "BTC:" + "X" * 5000, "longer than"),
])
def test_what_breaks_a_contract_invariant_is_malformed(field: str, value: str, reason: str) -> None:
    frame = msgspec.json.encode({**ROW, field: value})
    with pytest.raises(normalize.Malformed, match=reason):
        normalize.snap(frame, TS_RECV)
    ticks, bad = normalize.history(msgspec.json.encode({"0": {**ROW, field: value}, "1": ROW}), TS_RECV)
    assert len(ticks) == 1 and len(bad) == 1 and reason in bad[0][1]  # the good row is kept
