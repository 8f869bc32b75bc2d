"""The table layout's conversions: exact decimals in and out (the shortest exact text), exact
nanosecond times next to the engines' timestamptz, and a decimal that does not fit refused."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from marketbus.contracts import MarketPrice
from marketbus.contracts.invariants import canonical_decimal
from marketbus.history.lakehouse import LAYOUTS
from marketbus.history.schema import SCHEMAS

from .common import T0, trade

_LARGEST = "999999999999999999.999999999999999999"  # the contract's |x| < 1e18 at the layout's 18 places


def _with(event: Any, **values: Any) -> Any:
    return type(event)(**{**{f: getattr(event, f) for f in event.__struct_fields__}, **values})


def _market_price(i: int) -> MarketPrice:
    return MarketPrice(id=f"layout-mp-{i}", source="sitagri", venue="MATIF", symbol="EBM", ts_event=T0 + i, ts_recv=T0 + i + 7)


# a trade's price is > 0; a market price's ``last`` is signed (it may be 0 or negative, e.g. a spread)
@pytest.mark.parametrize(("kind", "field", "value"), [
    ("trade", "price", "100.25"), ("trade", "price", "0.0010"), ("trade", "price", "1E-18"), ("trade", "price", _LARGEST),
    ("market_price", "last", "0"), ("market_price", "last", "-0.0000001"), ("market_price", "last", f"-{_LARGEST}"),
    ("market_price", "last", "-1E-18"),
])
def test_decimals_and_times_round_trip_exactly(kind: str, field: str, value: str) -> None:
    event = _with(trade("LAYOUT", 1) if kind == "trade" else _market_price(1), **{field: Decimal(value)})
    rows = SCHEMAS[kind].rows_to_table([event], "MD", [7], [0])
    layout = LAYOUTS[kind]
    table = layout.to_table(rows)
    assert table.schema.field(field).type == pa.decimal128(38, 18)
    assert table.column("ts_event").type == pa.timestamp("us", tz="UTC")
    back = layout.to_rows(table, rows.column_names)
    assert Decimal(back.column(field)[0].as_py()) == Decimal(value)
    assert back.column(field)[0].as_py() == str(canonical_decimal(Decimal(value)))  # the text marketbus publishes
    assert back.column("ts_event").to_pylist() == [event.ts_event]
    (decoded,) = SCHEMAS[kind].table_to_events(back)
    assert decoded == event


def test_a_decimal_beyond_18_places_is_refused_not_rounded() -> None:
    event = _with(trade("LAYOUT", 2), price=Decimal("1.0000000000000000001"))
    rows = SCHEMAS["trade"].rows_to_table([event], "MD", [8], [0])
    with pytest.raises(ValueError, match="decimal"):
        LAYOUTS["trade"].to_table(rows)
