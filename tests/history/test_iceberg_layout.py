"""The table layout's conversions: exact decimals in and out (the shortest exact text), exact
nanosecond times next to the engines' timestamptz, and a decimal that does not fit refused."""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa
import pytest

from marketbus.history.lakehouse import LAYOUTS
from marketbus.history.schema import SCHEMAS

from .common import trade


@pytest.mark.parametrize("price", ["100.25", "0.0010", "0", "1E-18", "-0.0000001", "12345678901234567890.123456789012345678"])
def test_decimals_and_times_round_trip_exactly(price: str) -> None:
    event = trade("LAYOUT", 1)
    event = type(event)(**{**{f: getattr(event, f) for f in event.__struct_fields__}, "price": Decimal(price)})
    rows = SCHEMAS["trade"].rows_to_table([event], "MD", [7], [0])
    layout = LAYOUTS["trade"]
    table = layout.to_table(rows)
    assert table.schema.field("price").type == pa.decimal128(38, 18)
    assert table.column("ts_event").type == pa.timestamp("us", tz="UTC")
    back = layout.to_rows(table, rows.column_names)
    assert Decimal(back.column("price")[0].as_py()) == Decimal(price)
    assert "E" not in back.column("price")[0].as_py()
    assert back.column("ts_event").to_pylist() == [event.ts_event]
    (decoded,) = SCHEMAS["trade"].table_to_events(back)
    assert decoded == event


def test_a_decimal_beyond_18_places_is_refused_not_rounded() -> None:
    event = trade("LAYOUT", 2)
    event = type(event)(**{**{f: getattr(event, f) for f in event.__struct_fields__}, "price": Decimal("1.0000000000000000001")})
    rows = SCHEMAS["trade"].rows_to_table([event], "MD", [8], [0])
    with pytest.raises(ValueError, match="decimal"):
        LAYOUTS["trade"].to_table(rows)
