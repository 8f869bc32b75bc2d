"""The table layout's conversions: exact decimals in and out (the shortest exact text), exact
nanosecond times next to the engines' timestamptz, and a decimal that does not fit refused."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from marketbus.contracts import MarketPrice, invariants
from marketbus.contracts.invariants import canonical_decimal
from marketbus.history.lakehouse import LAYOUTS
from marketbus.history.schema import SCHEMAS

from .common import T0, trade

_LARGEST = "999999999999999999.999999999999999999"  # the contract's |x| < 1e18 at the layout's 18 places


def _with(event: Any, **values: Any) -> Any:
    return type(event)(**{**{f: getattr(event, f) for f in event.__struct_fields__}, **values})


def _market_price(i: int) -> MarketPrice:
    return MarketPrice(
        id=f"layout-mp-{i}", source="sitagri", venue="MATIF", symbol="EBM", ts_event=T0 + i, ts_recv=T0 + i + 7
    )


# a trade's price is > 0; a market price's ``last`` is signed (it may be 0 or negative, e.g. a spread)
@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("trade", "price", "100.25"),
        ("trade", "price", "0.0010"),
        ("trade", "price", "1E-18"),
        ("trade", "price", _LARGEST),
        ("market_price", "last", "0"),
        ("market_price", "last", "-0.0000001"),
        ("market_price", "last", f"-{_LARGEST}"),
        ("market_price", "last", "-1E-18"),
    ],
)
def test_decimals_and_times_round_trip_exactly(kind: str, field: str, value: str) -> None:
    # a market price carries its decimals as their canonical text (the same wire, the same column)
    exact = Decimal(value) if kind == "trade" else invariants.decimal_text(Decimal(value))
    event = _with(trade("LAYOUT", 1) if kind == "trade" else _market_price(1), **{field: exact})
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


def test_an_append_writes_one_sorted_file_per_partition_with_exact_statistics(tmp_path) -> None:
    """Rows over 3 days and 40 symbols in one append: one data file per (day, symbol bucket)
    partition touched, each holding exactly that partition's rows sorted by (symbol, ts_event),
    readable by pyarrow with the table's schema, its footer statistics the real min/max, the
    low-cardinality strings dictionary-encoded and the ids not, the integer and time columns
    DELTA_BINARY_PACKED; a scan pruned to one symbol and
    one day returns exactly its rows."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, LessThan, Reference
    from pyiceberg.expressions.literals import literal
    from pyiceberg.transforms import BucketTransform, DayTransform
    from pyiceberg.types import StringType, TimestamptzType

    from marketbus.history.lakehouse import LakehouseSettings
    from marketbus.history.writer import HistoryTableWriter

    day_ns = 86_400 * 10**9
    events = [trade(f"P{i % 40}", i, ts=T0 + (i % 3) * day_ns + i * 1000) for i in range(3000)]
    rows = SCHEMAS["trade"].rows_to_table(events, "MD", list(range(1, 3001)), [0] * 3000)
    writer = HistoryTableWriter(LakehouseSettings(history_dir=str(tmp_path)), "w")
    assert writer.append("trade", "MD", rows.take(pa.array(list(reversed(range(3000)))))) == (3000, 0)
    table = writer.tables.get("trade")
    files = [task.file for task in table.scan().plan_files()]
    day = DayTransform().pyarrow_transform(TimestamptzType())
    bucket = BucketTransform(16).pyarrow_transform(StringType())
    schema = table.schema().as_arrow()
    partitions = set()
    for file in files:
        with table.io.new_input(file.file_path).open() as f:
            data = pq.read_table(f, schema=schema)
        assert data.num_rows == file.record_count
        days, buckets = set(day(data.column("ts_event")).to_pylist()), set(bucket(data.column("symbol")).to_pylist())
        assert (days, buckets) == ({file.partition[0]}, {file.partition[1]}), file.file_path  # one partition
        keys = list(zip(data.column("symbol").to_pylist(), data.column("ts_event_ns").to_pylist()))
        assert keys == sorted(keys)
        partitions.add((file.partition[0], file.partition[1]))
        with table.io.new_input(file.file_path).open() as f:
            meta = pq.ParquetFile(f).metadata
        columns = {
            meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i) for i in range(meta.num_columns)
        }
        assert "RLE_DICTIONARY" in columns["symbol"].encodings and "RLE_DICTIONARY" not in columns["id"].encodings
        for name in ("ts_event", "ts_event_ns", "ts_recv_ns", "_seq", "_idx"):  # the integers: deltas packed
            assert "DELTA_BINARY_PACKED" in columns[name].encodings, (name, columns[name].encodings)
        field_id = table.schema().find_field("ts_event_ns").field_id
        low, high = pc.min_max(data.column("ts_event_ns")).values()
        from pyiceberg.conversions import from_bytes
        from pyiceberg.types import LongType

        assert from_bytes(LongType(), file.lower_bounds[field_id]) == low.as_py()
        assert from_bytes(LongType(), file.upper_bounds[field_id]) == high.as_py()
    expected = {(d, b) for d, b in zip(day(pc.cast(pc.cast(rows.column("ts_event"), pa.timestamp("ns", tz="UTC")),
                                                    pa.timestamp("us", tz="UTC"))).to_pylist(),
                                        bucket(rows.column("symbol")).to_pylist(), strict=True)}
    assert partitions == expected and len(files) == len(expected)
    start = T0 // day_ns * day_ns + day_ns
    one = table.scan(row_filter=And(EqualTo(term=Reference("symbol"), value=literal("P7")),
                                    And(GreaterThanOrEqual(term=Reference("ts_event_ns"), value=literal(start)),
                                        LessThan(term=Reference("ts_event_ns"), value=literal(start + day_ns)))))
    assert len(list(one.plan_files())) == 1  # pruned to one file of all
    got = sorted(one.to_arrow().column("id").to_pylist())
    assert got == sorted(e.id for e in events if e.symbol == "P7" and start <= e.ts_event < start + day_ns) and got
