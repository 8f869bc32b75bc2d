"""The compiled scan of batch envelopes (``marketbus.history.batch_decode``, ``_checks.batch_columns``)
against the path it replaces (Arrow's JSON reader + vectorized checks, then the contract decoder
for what those refuse): on the same messages, the same rows in the same order and the same dead
letters with the same reasons, for envelopes as marketbus publishes them and for every other
shape (other producers' key order, whitespace, escapes, non-ASCII text) and hostile ones
(values out of their invariants, forged sources, broken JSON), alone and mixed in one flush."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import msgspec
import pyarrow as pa
import pytest

from marketbus.contracts import codec, event_id
from marketbus.contracts.market import Bar, MarketPrice, News, Quote, Trade
from marketbus.contracts.reference import Unit
from marketbus.history import batch_decode
from marketbus.history.schema import SCHEMAS, Decoded, Message, decode_messages

from .common import T0

pytestmark = pytest.mark.skipif(batch_decode._SCAN is None, reason="the C extension is not built (make venv)")

PRICES = ["100.25", "0.00000001", "1E-8", "123456789012345678", "5", "0.1", "99999.99999999999999999999"]


def trades(n: int, seed: int, source: str = "finx", symbol: str = "S") -> list[Trade]:
    rnd = random.Random(seed)
    return [Trade(id=event_id(source, "trade", symbol, seed, i), source=source, venue="CB", symbol=symbol,
                  ts_event=T0 + i, ts_recv=T0 + i + 7, price=Decimal(rnd.choice(PRICES[:6])),
                  size=Decimal(rnd.choice(["0", "0.5", "12"])), side=rnd.choice(["buy", "sell", "unknown"]),
                  trade_id=rnd.choice([None, str(i), "x-" + str(i)]))
            for i in range(n)]


def others(seed: int) -> list[list[Any]]:
    """Envelopes of the other flat kinds, nulls and defaults included."""
    base = dict(source="finx", venue="CB", symbol="S", ts_event=T0, ts_recv=T0 + 1)
    return [
        [Quote(id=f"q{seed}-{i}", **base, bid_price=Decimal("1.5") if i % 2 else None, ask_size=Decimal("0"))
         for i in range(5)],
        [Bar(id=f"b{seed}-{i}", **base, interval="1m", open=Decimal("-1.5"), high=Decimal(2), low=Decimal("-3"),
             close=Decimal("1E-7"), volume=None if i else Decimal(4)) for i in range(3)],
        [MarketPrice(id=f"m{seed}-{i}", **base, last=Decimal("-0.5"), last_ts=T0, orders=i, quality="delayed")
         for i in range(3)],
        [News(id=f"n{seed}-{i}", **base, article_id="a1", title="Wheat up", lang="en", words=12, day_tendency=-3,
              content="plain ascii text") for i in range(2)],
        [Unit(id=f"u{seed}-{i}", source="finx", venue="_", symbol="T", ts_event=T0, ts_recv=T0, code="T",
              factor=Decimal(1000)) for i in range(2)],
    ]


def envelope(events: list[Any]) -> bytes:
    return codec.encode(codec.make_batch(events))


def as_dict(data: bytes) -> dict[str, Any]:
    return msgspec.json.decode(data)  # type: ignore[no-any-return]


def event_edit(fn: Callable[[dict[str, Any]], None], which: int = 0) -> Callable[[bytes], bytes]:
    """Edit one event of the envelope (re-encoded: keys keep their order)."""
    def edit(data: bytes) -> bytes:
        d = as_dict(data)
        fn(d["events"][which])
        return msgspec.json.encode(d)
    return edit


def set_field(name: str, value: Any, which: int = 0) -> Callable[[bytes], bytes]:
    return event_edit(lambda e: e.__setitem__(name, value), which)


def replace(old: bytes, new: bytes, count: int = 1) -> Callable[[bytes], bytes]:
    return lambda data: data.replace(old, new, count)


# every hostile or foreign shape: (name, edit of a canonical trade envelope)
MUTATIONS: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("as published", lambda d: d),
    ("space after a colon", replace(b'"price":', b'"price": ')),
    ("pretty printed", lambda d: msgspec.json.format(d, indent=2)),
    ("a newline in between", replace(b',"events":', b',\n"events":')),
    ("trailing space", lambda d: d + b" "),
    ("trailing garbage", lambda d: d + b"x"),
    ("truncated", lambda d: d[:-3]),
    ("keys reversed", event_edit(lambda e: [e.__setitem__(k, e.pop(k)) for k in list(e)[::-1]])),
    ("envelope keys reordered", lambda d: msgspec.json.encode({k: v for k, v in reversed(as_dict(d).items())})),
    ("an extra event key", set_field("extra", 1)),
    ("an extra envelope key", replace(b'"replay":', b'"x":[1,{"a":2}],"replay":')),
    ("an optional key missing", event_edit(lambda e: e.pop("trade_id"))),
    ("a required key missing", event_edit(lambda e: e.pop("price"))),
    ("replay missing", event_edit(lambda e: e.pop("replay"))),
    ("a duplicate key", replace(b',"side":', b',"price":"1","side":')),
    ("an escaped symbol", replace(b'"symbol":"S"', b'"symbol":"\\u0053"')),
    ("an escaped slash in trade_id", set_field("trade_id", "a/b")),
    ("an escape in trade_id", replace(b'"trade_id":"', b'"trade_id":"\\t')),
    ("non-ascii trade_id", set_field("trade_id", "été")),
    ("a control character", replace(b'"trade_id":"', b'"trade_id":"\x01')),
    ("invalid utf-8", replace(b'"trade_id":"', b'"trade_id":"\xff')),
    ("null price", set_field("price", None)),
    ("null side", set_field("side", None)),
    ("null replay", set_field("replay", None)),
    ("null trade_id", set_field("trade_id", None)),
    ("null source", set_field("source", None)),
    ("replay true", set_field("replay", True)),
    ("replay 1", set_field("replay", 1)),
    ("price zero", set_field("price", "0")),
    ("price 0.0", set_field("price", "0.0")),
    ("price negative", set_field("price", "-1")),
    ("price as number", replace(b'"price":"', b'"price":1').__call__ if False else event_edit(
        lambda e: e.__setitem__("price", 100.25))),
    ("price NaN", set_field("price", "NaN")),
    ("price 1e5", set_field("price", "1e5")),
    ("price 1E+2", set_field("price", "1E+2")),
    ("price 1E-30", set_field("price", "1E-30")),
    ("price 1E-29", set_field("price", "1E-29")),
    ("price 1E-05", set_field("price", "1E-05")),
    ("price 22 decimals", set_field("price", "1.0000000000000000000001")),
    ("price 20 decimals", set_field("price", "1.00000000000000000001")),
    ("price 19 digits", set_field("price", "1234567890123456789")),
    ("price with a space", set_field("price", " 1")),
    ("price empty", set_field("price", "")),
    ("price .5", set_field("price", ".5")),
    ("price 5.", set_field("price", "5.")),
    ("size -0", set_field("size", "-0")),
    ("size 00", set_field("size", "00")),
    ("ts negative", set_field("ts_event", -1)),
    ("ts 2**63", set_field("ts_event", 2**63)),
    ("ts 2**63-1", set_field("ts_event", 2**63 - 1)),
    ("ts 20 digits", set_field("ts_event", 10**19)),
    ("ts a float", set_field("ts_event", 1.5)),
    ("ts 1e3", replace(b'"ts_event":', b'"ts_event":1e3,"x":')),
    ("ts -0", replace(b'"ts_recv":', b'"ts_recv":-0,"y":')),
    ("ts leading zero", replace(b'"ts_recv":', b'"ts_recv":0123,"y":')),
    ("ts as text", set_field("ts_event", "123")),
    ("side BUY", set_field("side", "BUY")),
    ("side hold", set_field("side", "hold")),
    ("id with a space", set_field("id", "a b")),
    ("id with a dot", set_field("id", "a.b")),
    ("id too long", set_field("id", "a" * 129)),
    ("id 128", set_field("id", "a" * 128)),
    ("id empty", set_field("id", "")),
    ("symbol with ~", set_field("symbol", "S~1")),
    ("trade_id 1025", set_field("trade_id", "x" * 1025)),
    ("trade_id 1024", set_field("trade_id", "x" * 1024)),
    ("envelope id bad", replace(b'"id":"', b'"id":"bad id ')),
    ("envelope id null", lambda d: msgspec.json.encode({**as_dict(d), "id": None})),
    ("envelope source bad", replace(b'"source":"finx","venue"', b'"source":"fi.nx","venue"')),
    ("envelope source other", replace(b'"source":"finx","venue"', b'"source":"digitex","venue"')),
    ("envelope kind tick", replace(b'"kind":"trade"', b'"kind":"tick"')),
    ("type not batch", replace(b'{"type":"batch"', b'{"type":"trade"')),
    ("an event of another type", replace(b'{"type":"trade"', b'{"type":"tick"')),
    ("events empty", lambda d: msgspec.json.encode({**as_dict(d), "events": []})),
    ("events null", lambda d: msgspec.json.encode({**as_dict(d), "events": None})),
    ("events an object", lambda d: msgspec.json.encode({**as_dict(d), "events": {}})),
    ("an event null", replace(b'"events":[', b'"events":[null,')),
    ("forged source", lambda d: d.replace(b'"source":"finx"', b'"source":"digitex"')),
    ("forged source of one event", set_field("source", "digitex", 1)),
    ("not json", lambda d: b"\x00\x01"),
    ("empty", lambda d: b""),
    ("deep nesting", lambda d: b"[" * 10000 + b"]" * 10000),
]


def canonical(seq: int) -> bytes:
    return envelope(trades(4, seq))


def message(seq: int, data: bytes, subject: str = "md.trade.finx.CB.S") -> Message:
    return Message("MD", seq, subject, data, "batch")


def decode_both(msgs: list[Message]) -> tuple[Decoded, Decoded]:
    try:
        batch_decode.ENABLED = False
        before = decode_messages(list(msgs), "MD")
    finally:
        batch_decode.ENABLED = True
    return before, decode_messages(list(msgs), "MD")


def assert_same(before: Decoded, after: Decoded) -> None:
    assert sorted((m.seq, r) for m, r in after.bad) == sorted((m.seq, r) for m, r in before.bad)
    assert after.events == before.events
    assert sorted(after.tables) == sorted(before.tables)
    for kind, parts in before.tables.items():
        expected = pa.concat_tables(parts).combine_chunks()
        got = pa.concat_tables(after.tables[kind]).combine_chunks()
        assert got.schema.equals(expected.schema), kind
        assert got.equals(expected), kind  # same rows, same order (bytes compared: text may not be UTF-8)


@pytest.mark.parametrize("name,edit", MUTATIONS, ids=[n for n, _ in MUTATIONS])
def test_each_shape_alone_and_among_published_envelopes(name: str, edit: Callable[[bytes], bytes]) -> None:
    odd = edit(canonical(2))
    for msgs in ([message(2, odd)], [message(1, canonical(1)), message(2, odd), message(3, canonical(3))]):
        assert_same(*decode_both(msgs))


def test_published_envelopes_of_every_flat_kind_are_scanned_with_the_same_rows() -> None:
    groups = [trades(50, 1), *others(1)]
    msgs = [message(i + 1, envelope(events), f"md.{type(events[0]).__struct_config__.tag}.finx.CB.S")
            for i, events in enumerate(groups)]
    for m in msgs:  # the scanner takes each of them itself (not the general path)
        table, rejected = batch_decode.scan_envelopes([m], SCHEMAS[m.subject.split(".")[1]])
        assert table is not None and not rejected, m.subject
    before, after = decode_both(msgs)
    assert not after.bad and after.events == sum(len(g) for g in groups)
    assert_same(before, after)


TAKEN = {"as published", "an escaped slash in trade_id", "null trade_id", "replay true", "price 1E-29",
         "price 20 decimals", "size 00", "ts 2**63-1", "id 128", "symbol with ~", "trade_id 1024",
         "envelope source other", "events empty", "forged source", "forged source of one event"}
"""The shapes the scanner takes itself: the published form with values every check accepts (the
forged sources are refused after the scan, by the subject check, for both paths alike)."""


def test_the_scanner_takes_the_published_shape_only() -> None:
    """Any other shape is left whole to the general path (never half-taken)."""
    for name, edit in MUTATIONS:
        table, rejected = batch_decode.scan_envelopes([message(2, edit(canonical(2)))], SCHEMAS["trade"])
        assert (table is not None) == (name in TAKEN), name
        assert (not rejected) == (name in TAKEN), name


def random_flushes(seed: int) -> Iterator[list[Message]]:
    rnd = random.Random(seed)
    for _ in range(40):
        msgs = []
        for seq in range(1, rnd.randint(2, 12)):
            if rnd.random() < 0.6:
                data = canonical(seq % 3 if rnd.random() < 0.3 else seq)  # repeated event ids across messages
            else:
                data = rnd.choice(MUTATIONS)[1](canonical(seq % 3 if rnd.random() < 0.5 else seq))
            msgs.append(message(seq, data, rnd.choice(["md.trade.finx.CB.S"] * 5 + ["md.trade.digitex.CB.S"])))
        rnd.shuffle(msgs)  # arrival order is not sequence order (redeliveries)
        yield msgs


@pytest.mark.parametrize("seed", range(5))
def test_random_flushes_of_mixed_shapes(seed: int) -> None:
    for msgs in random_flushes(seed):
        assert_same(*decode_both(msgs))


def test_the_same_sequence_twice_in_one_flush() -> None:
    msgs = [message(1, canonical(1)), message(2, replace(b'"price":', b'"price": ')(canonical(2))),
            message(1, canonical(1))]
    assert_same(*decode_both(msgs))


def test_every_truncation_and_random_byte_flips() -> None:
    """The scanner reads only within the message (any cut, any byte) and takes none of these but
    the intact ones, with the same outcome as the general path."""
    data = envelope(trades(2, 7))
    for cut in range(len(data)):
        assert_same(*decode_both([message(1, canonical(1)), message(2, data[:cut])]))
    rnd = random.Random(14)
    for _ in range(300):
        flipped = bytearray(data)
        for _ in range(rnd.randint(1, 3)):
            flipped[rnd.randrange(len(flipped))] = rnd.choice(b'"\\,:{}[]0-9aE.\x00\xff n')
        assert_same(*decode_both([message(2, bytes(flipped)), message(3, canonical(3))]))
