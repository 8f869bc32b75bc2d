"""Pure normalizer tests on payloads recorded from the TickSupply sandbox (fixtures/)."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from marketbus.contracts import codec, subjects
from marketbus.contracts.ids import event_id
from marketbus.contracts.invariants import canonical_decimal
from marketbus.contracts.market import Quote, Trade
from marketbus.contracts.reference import Instrument, InstrumentClass, Venue
from services.ingest_ticksupply import normalize
from services.ingest_ticksupply.normalize import ArtifactError, MalformedPayload

FIXTURES = Path(__file__).parent / "fixtures"
TS = 1_800_000_000_000_000_000


def load(name: str):
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture(scope="module")
def truth() -> dict:
    return load("trades_coinbase_BTC-USD.truth.json")


def test_exchanges_become_venues() -> None:
    venues = [normalize.venue_event(e, TS) for e in load("exchanges.json")]
    assert all(isinstance(v, Venue) for v in venues)
    assert [v.venue for v in venues] == ["binance", "coinbase", "kraken"]
    assert venues[1].name == "Coinbase" and venues[1].symbol == "coinbase"
    assert subjects.for_event(venues[0]) == subjects.ref("venue", "ticksupply", "binance", "binance")
    # deterministic, and a changed payload is a new id (so REF keeps the new value)
    again = normalize.venue_event(load("exchanges.json")[0], TS + 1)
    assert again.id == venues[0].id
    assert normalize.venue_event({"code": "binance", "display_name": "Binance.com"}, TS).id != venues[0].id
    with pytest.raises(MalformedPayload):
        normalize.venue_event({"display_name": "no code"}, TS)


def test_datastream_pages_and_instruments() -> None:
    items = load("datastreams_coinbase_page1.json")["items"] + load("datastreams_coinbase_page2.json")["items"]
    assert (
        load("datastreams_coinbase_page1.json")["next_page_token"]
        and load("datastreams_coinbase_page2.json")["next_page_token"] is None
    )
    refs = [normalize.datastream_ref(d) for d in items]
    assert len(refs) == load("datastreams_coinbase_page1.json")["total"]
    classes = [normalize.datastream_event(d, TS) for d in refs]
    btc_trade = next(c for c in classes if c.vendor_symbol == "BTC-USD:trade:json")
    assert isinstance(btc_trade, InstrumentClass) and btc_trade.class_type == "datastream"
    assert btc_trade.venue == "coinbase" and btc_trade.symbol == subjects.normalize_symbol("BTC-USD:trade:json")
    assert btc_trade.attributes["datastream_id"] == btc_trade.vendor_ref == "115"
    assert btc_trade.members == ["BTC-USD"]
    assert len({c.symbol for c in classes}) == len(classes)  # one REF subject per datastream

    by_inst: dict[str, list] = {}
    for d in refs:
        by_inst.setdefault(d.instrument, []).append(d)
    insts = [normalize.instrument_event("coinbase", i, by_inst.get(i["symbol"], []), TS)
             for i in load("instruments_coinbase.json")["items"]]
    btc = next(i for i in insts if i.vendor_symbol == "BTC-USD")
    assert isinstance(btc, Instrument)
    assert (btc.symbol, btc.base, btc.quote, btc.instrument_type) == ("BTC~2DUSD", "BTC", "USD", "spot")
    assert subjects.denormalize_symbol(btc.symbol) == "BTC-USD"
    assert btc.attributes == {"datastream.trade.json": "115", "datastream.depth.json": "116"}
    with pytest.raises(MalformedPayload):
        normalize.datastream_ref({"datastream_id": "x", "exchange": "coinbase"})


def test_trade_artifact_matches_the_sandbox_ground_truth(truth: dict) -> None:
    ds = normalize.datastream_ref(truth["datastream"])
    parsed = normalize.parse_artifact((FIXTURES / "trades_coinbase_BTC-USD.csv.gz").read_bytes())
    assert parsed.bad == [] and parsed.total_lines == len(truth["rows"]) > 20
    trades = normalize.trades(ds, parsed.rows, TS)
    for trade, (ts, _coll, trade_id, price, qty, side) in zip(trades, truth["rows"], strict=True):
        assert isinstance(trade, Trade)
        assert trade.ts_event == int(ts) and trade.ts_recv == TS
        assert trade.trade_id == trade_id and trade.side == side
        # exact: the vendor's digits and exponent (str() may print 0.00000007 as 7E-8, the same value)
        assert str(trade.price) == str(canonical_decimal(Decimal(price)))
        assert str(trade.size) == str(canonical_decimal(Decimal(qty)))
        assert trade.id == event_id("ticksupply", "trade", ds.datastream_id, trade_id)
        assert (trade.venue, trade.symbol, trade.source) == ("coinbase", "BTC~2DUSD", "ticksupply")
    # the wire form keeps the decimal strings
    wire = json.loads(codec.encode(trades[0]))
    assert wire["price"] == str(canonical_decimal(Decimal(truth["rows"][0][3])))
    assert wire["size"] == str(canonical_decimal(Decimal(truth["rows"][0][4])))


def test_bad_rows_are_reported_and_good_rows_kept(truth: dict) -> None:
    text = gzip.decompress((FIXTURES / "trades_coinbase_BTC-USD.csv.gz").read_bytes()).decode().splitlines()
    text[3] = text[3].replace(",", ",oops,", 1)  # an extra field
    text[5] = text[5].replace(text[5].split(",")[3], "12,5x")  # a bad price
    text[7] = ",".join([*text[7].split(",")[:3], "NaN", *text[7].split(",")[4:]])
    text.insert(9, "")  # a blank line is not a row
    data = gzip.compress(("\n".join(text) + "\n").encode())
    parsed = normalize.parse_artifact(data)
    assert [b.line_no for b in parsed.bad] == [4, 6, 8]
    assert parsed.bad[0].line == text[3].encode()
    assert len(parsed.rows) == len(truth["rows"]) - 3
    assert parsed.total_lines == len(truth["rows"])


def test_unreadable_artifacts_raise() -> None:
    with pytest.raises(ArtifactError):
        normalize.parse_artifact(b"not gzip at all")
    with pytest.raises(ArtifactError):
        normalize.parse_artifact((FIXTURES / "trades_coinbase_BTC-USD.csv.gz").read_bytes()[:200])  # truncated
    with pytest.raises(ArtifactError):
        normalize.parse_artifact(gzip.compress(b"a,b,c\n1,2,3\n"))  # not the trade columns
    good = gzip.compress(b"x" * 5000)
    corrupt = good[:12] + bytes(b ^ 0x5A for b in good[12:40]) + good[40:]  # a bad deflate block
    for data in (corrupt, good[:-4], good + b"trailing garbage", b"\x1f\x8b\x08"):
        with pytest.raises(ArtifactError, match="not a gzip file"):
            normalize.gunzip(data)


def test_gunzip_reads_what_gzip_reads() -> None:
    """The ISA-L inflate gives gzip's bytes, several members included (a concatenated export)."""
    text = (FIXTURES / "trades_coinbase_BTC-USD.csv.gz").read_bytes()
    two = gzip.compress(b"a,b\n1,2\n") + gzip.compress(b"3,4\n", 9)
    for data in (text, two, gzip.compress(b""), gzip.compress(bytes(range(256)) * 4000, 1)):
        assert normalize.gunzip(data) == gzip.decompress(data)


def test_columns_by_name_and_quoted_fields(truth: dict) -> None:
    row = truth["rows"][0]
    text = f'side,price,quantity,trade_id,exchange_ts_ns\n"{row[5]}","{row[3]}",{row[4]},{row[2]},{row[0]}\n'
    parsed = normalize.parse_artifact(gzip.compress(text.encode()))
    assert parsed.bad == []
    (r,) = parsed.rows
    assert (r.price, r.quantity, r.trade_id, r.exchange_ts_ns, r.side) == \
        (Decimal(row[3]), Decimal(row[4]), row[2], int(row[0]), row[5])


def test_depth_artifact_becomes_quotes() -> None:
    ds = normalize.datastream_ref(load("depth_datastream.json"))
    parsed = normalize.parse_artifact((FIXTURES / "depth_coinbase_BTC-USD.csv.gz").read_bytes(), "depth")
    lines = gzip.decompress((FIXTURES / "depth_coinbase_BTC-USD.csv.gz").read_bytes()).decode().splitlines()[1:]
    quotes = normalize.quotes(ds, parsed.rows, TS)
    assert len(quotes) == len(lines) // 2 > 5
    bid, ask = lines[0].split(","), lines[1].split(",")
    q = quotes[0]
    assert isinstance(q, Quote)
    assert (q.bid_price, q.bid_size, q.ask_price, q.ask_size) == tuple(map(Decimal, (bid[4], bid[5], ask[4], ask[5])))
    assert q.ts_event == int(bid[0]) and q.id == event_id("ticksupply", "quote", ds.datastream_id, bid[2])


def test_events_decode_back_from_a_batch(truth: dict) -> None:
    ds = normalize.datastream_ref(truth["datastream"])
    trades = normalize.trades(ds, normalize.parse_artifact(
        (FIXTURES / "trades_coinbase_BTC-USD.csv.gz").read_bytes()).rows, TS, replay=True)
    batch = codec.make_batch(trades)
    assert list(codec.decode_events(codec.encode(batch))) == trades
    assert all(t.replay for t in trades)
    assert msgspec.json.decode(codec.encode(batch))["replay"] is True


def test_an_artifact_parsed_in_slices_is_the_same_as_whole() -> None:
    data = (FIXTURES / "trades_coinbase_BTC-USD.csv.gz").read_bytes()
    lines = gzip.decompress(data).decode().splitlines()
    lines[17] = lines[17].replace(",", ";")  # one bad row, deep in the file
    data = gzip.compress(("\n".join(lines) + "\n").encode())
    whole = normalize.parse_artifact(data)
    pieces = list(normalize.iter_artifact(data, slice_bytes=300))
    assert len(pieces) > 3
    assert [r for p in pieces for r in p.rows] == whole.rows
    assert [b for p in pieces for b in p.bad] == whole.bad and [b.line_no for b in whole.bad] == [18]
    assert sum(p.total_lines for p in pieces) == whole.total_lines == len(lines) - 1


@pytest.mark.parametrize(("line", "reason"), [
    (b"1700000000000000000,1700000000000000001,7,0,1,buy", "price"),
    (b"1700000000000000000,1700000000000000001,7,-0,1,buy", "price"),
    (b"1700000000000000000,1700000000000000001,7,1e30,1,buy", "price"),
    (b"1700000000000000000,1700000000000000001,7,100,-1,buy", "quantity"),
    (b"1700000000000000000,1700000000000000001,7,100,1e-40,buy", "quantity"),
    (b"9223372036854775808,1700000000000000001,7,100,1,buy", "timestamps"),
    (b"1700000000000000000,1700000000000000001," + b"7" * 2000 + b",100,1,buy", "id longer"),
])
def test_rows_breaking_a_contract_invariant_are_bad_rows(line: bytes, reason: str) -> None:
    good = b"1700000000000000000,1700000000000000001,8,100.5,0.25,buy"
    data = gzip.compress(b",".join(c.encode() for c in normalize.TRADE_COLUMNS) + b"\n" + line + b"\n" + good + b"\n")
    parsed = normalize.parse_artifact(data, "trade")
    assert len(parsed.rows) == 1 and len(parsed.bad) == 1 and reason in parsed.bad[0].reason
    ds = normalize.datastream_ref({"datastream_id": 7, "exchange": "coinbase", "instrument": "BTC-USD",
                                   "stream_type": "trade"})
    assert [t.trade_id for t in normalize.events_of(ds, parsed.rows, 1)] == ["8"]


def test_a_datastream_that_cannot_make_valid_events_is_malformed() -> None:
    with pytest.raises(MalformedPayload):
        normalize.datastream_ref({"datastream_id": 7, "exchange": "coin+base", "instrument": "BTC-USD",
                                  "stream_type": "trade"})
    with pytest.raises(MalformedPayload):
        normalize.datastream_ref({"datastream_id": 7, "exchange": "coinbase", "instrument": "X" * 500,
                                  "stream_type": "trade"})


def test_rows_keep_the_decimals_as_written_and_the_events_are_canonical() -> None:
    """Rows are checked against the contracts as they are decoded, but keep the vendor's decimal
    text (an id-less trade's id hashes it); the Trade carries the canonical value."""
    csv_text = ",".join(normalize.TRADE_COLUMNS) + "\n1,2,,2.50,1.0,b\n3,4,t1,100.10,0.50,sell\n"
    parsed = normalize.parse_artifact(gzip.compress(csv_text.encode()))
    assert parsed.bad == [] and [str(r.price) for r in parsed.rows] == ["2.50", "100.10"]
    ds = normalize.DatastreamRef(datastream_id=7, exchange="binance", instrument="BTCUSDT", stream_type="trade")
    trades = normalize.trades(ds, parsed.rows, 1)
    assert trades[0].id == event_id("ticksupply", "trade", 7, "", 1, 2, Decimal("2.50"), Decimal("1.0"), "b")
    assert [(str(t.price), str(t.size), t.side) for t in trades] == [("2.5", "1", "buy"), ("100.1", "0.5", "sell")]
