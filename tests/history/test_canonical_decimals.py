"""The canonical decimal text (issue #18): what marketbus publishes is what its history gives back.

- every contract event (built in Python or decoded) carries its decimals in canonical form, so
  the codec's text depends on the value only;
- the history's column-wise JSON (``KindSchema.table_to_json``, what every history read and every
  replay sends) gives back the published bytes of every stored kind, from the rows as published,
  from ``decimal(38, 18)`` (Iceberg) and from ``numeric``/``jsonb`` texts (PostgreSQL).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketbus.contracts import codec
from marketbus.contracts.invariants import canonical_decimal, canonical_decimal_text
from marketbus.contracts.market import BookLevel, BookSnapshot, CashDelivery, CashPrice, MarketPrice, Quote, Trade
from marketbus.history.lakehouse import LAYOUTS
from marketbus.history.schema import SCHEMAS, Message, canonical_decimal_column, decode_messages
from tests.unit.strategies import for_type

SAMPLES = ["100.50", "100", "1E+2", "1.005E+2", "0.00", "0E-8", "-0", "-0.000", "0.0000001", "1.50E-7", "0.015",
           "0.000001", "0.0000010", "5.000000000000000000", "-3.20", "1E-18", "0.000000000000000001",
           "99999999999999999.999999999999999999", "123456789012.120000", "7E-30", "-2.5E-10"]


@pytest.mark.parametrize("text", SAMPLES)
def test_one_canonical_text_per_value(text: str) -> None:
    value = Decimal(text)
    canonical = canonical_decimal(value)
    assert canonical == value
    assert str(canonical) == canonical_decimal_text(text)
    assert canonical_decimal(Decimal(str(canonical))) is not None and str(
        canonical_decimal(Decimal(str(canonical)))
    ) == str(canonical)
    assert canonical_decimal_column(pa.array([text])).to_pylist() == [str(canonical)]
    # plain notation, no trailing zeros, "0" for zero; the scientific form only below 1e-6
    out = str(canonical)
    mantissa = out.split("E")[0]
    assert "+" not in out and not (mantissa.endswith("0") and "." in mantissa) and "0E" not in out and out != "-0"
    assert ("E" in out) == (value != 0 and abs(value) < Decimal("1e-6"))


@given(st.decimals(allow_nan=False, allow_infinity=False, min_value=Decimal("-1e17"), max_value=Decimal("1e17"),
                   places=18))
def test_canonical_form_is_a_function_of_the_value(value: Decimal) -> None:
    padded = Decimal(f"{value:.18f}")  # the same value, with every trailing zero
    assert str(canonical_decimal(value)) == str(canonical_decimal(padded)) == canonical_decimal_text(str(padded))
    column = canonical_decimal_column(pa.array([padded], pa.decimal128(38, 18)))
    assert column.to_pylist() == [str(canonical_decimal(value))]


def test_built_and_decoded_events_carry_canonical_decimals() -> None:
    trade = Trade(id="t1", source="s", venue="V", symbol="X", ts_event=1, ts_recv=2, price=Decimal("100.50"),
                  size=Decimal("0E-8"))
    assert str(trade.price) == "100.5" and str(trade.size) == "0"
    assert b'"price":"100.5","size":"0"' in codec.encode(trade)
    book = BookSnapshot(id="b1", source="s", venue="V", symbol="X", ts_event=1, ts_recv=2,
                        bids=[BookLevel(price=Decimal("1.10"), size=Decimal("2.000"))], asks=[])
    assert b'"bids":[["1.1","2",null]]' in codec.encode(book)
    foreign = codec.encode(trade).replace(b'"100.5"', b'"100.50"')
    assert codec.encode(codec.decode(foreign)) == codec.encode(trade)


def _event_strategy(tp: type) -> Any:
    return for_type(tp)


STORED = [s.event_type for s in SCHEMAS.values()]


@pytest.mark.parametrize("event_type", STORED, ids=lambda t: t.__name__)
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_history_json_is_the_published_json(event_type: type, data: Any) -> None:
    events = [e for e in data.draw(st.lists(_event_strategy(event_type), min_size=1, max_size=5))]
    published = [codec.encode(e) for e in events]
    schema = SCHEMAS[schema_kind(event_type)]
    msgs = [Message("MD", i + 1, "md.x", b, schema.kind) for i, b in enumerate(published)]
    decoded = decode_messages(msgs, schema.stream)
    assert not decoded.bad
    rows = pa.concat_tables(decoded.tables[schema.kind]).sort_by("_seq")
    assert schema.table_to_json(rows) == published
    # through the Iceberg table's decimal(38, 18) columns and back
    layout = LAYOUTS[schema.kind]
    back = layout.to_rows(layout.to_table(rows), rows.column_names)
    assert schema.table_to_json(back) == published


def schema_kind(event_type: type) -> str:
    return next(k for k, s in SCHEMAS.items() if s.event_type is event_type)


def test_jsonb_reformatted_nested_values_and_numeric_texts_come_back_as_published() -> None:
    cash = CashPrice(id="c1", source="s", venue="V", symbol="X", ts_event=1, ts_recv=2, currency='EUR "x"\n',
                     deliveries=[CashDelivery(start=1, end=2, value=Decimal("-1.50"), prime=Decimal("0.10"))])
    quote = Quote(id="q1", source="s", venue="V", symbol="X", ts_event=1, ts_recv=2, bid_price=Decimal("0.0000001"),
                  ask_price=Decimal("100"))
    # a market price carries its decimals as text: the same numeric columns, the same published bytes
    price = MarketPrice(id="m1", source="s", venue="V", symbol="X", ts_event=1, ts_recv=2, last="-3.25",
                        ask_size="1E-7", bid="100", open_interest="0")
    for event in (cash, quote, price):
        published = codec.encode(event)
        schema = SCHEMAS[schema_kind(type(event))]
        rows = schema.rows_to_table([event], "MD", [1], [0])
        # what PostgreSQL gives back: numeric::text keeps the scale it was given, jsonb::text
        # reorders keys and adds spaces
        columns = {}
        for name in rows.column_names:
            col = rows.column(name)
            if name == "deliveries":
                col = pa.array(['[{"end": 2, "start": 1, "value": "-1.5", "prime": "0.1"}]'])
            elif name in schema.decimals and col.null_count == 0:
                col = pa.array([f"{Decimal(v):.20f}" for v in col.to_pylist()])
            columns[name] = col
        assert schema.table_to_json(pa.table(columns)) == [published]


def test_events_of_a_table_without_a_newer_column_get_its_default() -> None:
    trade = Trade(
        id="t1", source="s", venue="V", symbol="X", ts_event=1, ts_recv=2, price=Decimal("1"), size=Decimal("2")
    )
    rows = SCHEMAS["trade"].rows_to_table([trade], "MD", [1], [0]).drop_columns(["side", "trade_id"])
    assert SCHEMAS["trade"].table_to_json(rows) == [codec.encode(trade)]
    assert msgspec.json.decode(SCHEMAS["trade"].table_to_json(rows)[0])["side"] == "unknown"


def test_decimal_columns_render_canonically_column_wise() -> None:
    values = [Decimal(v) for v in ("1E-10", "1.5E-10", "0", "100.5", "1E-18", "0.000001", "1E-7", "-1E-10", "1E+3",
                                   "-0.000000100000")] + [None]
    column = canonical_decimal_column(pa.array(values, pa.decimal128(38, 18)))
    assert column.to_pylist() == [None if v is None else str(canonical_decimal(v)) for v in values]
