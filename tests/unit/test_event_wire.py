"""``publisher.EventWire``: the subject, payload and header block the publisher sends for each
event are those of ``subjects.for_event``, ``codec.encode`` and ``header_block``, whatever mix of
kinds, sources, venues and symbols (equal texts that are not the same objects included)."""

from __future__ import annotations

from decimal import Decimal

from marketbus.contracts import codec, subjects
from marketbus.contracts.market import Tick, Trade
from marketbus.runtime.publisher import EventWire, header_block


def _events() -> list[Trade | Tick]:
    out: list[Trade | Tick] = []
    for i in range(40):
        venue = "".join(["BIN", "ANCE"]) if i % 3 else "BINANCE"  # equal texts, other objects
        symbol = ["BTC-USDT", "ETH-USDT"][i % 2]
        source = ["finx", "digitex"][i // 20]
        common = {"id": f"id{i}", "source": source, "venue": venue, "symbol": symbol, "ts_event": i, "ts_recv": i}
        out.append(Trade(**common, price=Decimal("1.5"), size=Decimal(2)) if i % 5  # type: ignore[arg-type]
                   else Tick(**common, price=Decimal("1.5")))  # type: ignore[arg-type]
    return out


def test_messages_are_what_each_event_gives() -> None:
    events = _events()
    expected = [(subjects.for_event(e), codec.encode(e), header_block(e, e.id)) for e in events]
    wire = EventWire()
    assert list(wire.messages(events)) == expected
    assert [wire.message(e) for e in events] == expected
    assert [EventWire().message(e) for e in events] == expected
