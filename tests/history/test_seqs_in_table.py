"""The exactly-once recheck of redelivered messages: which of their stream sequences the table
already holds, read from the table's rows (a range scan of ``_seq`` and ``pc.is_in``)."""

from __future__ import annotations

from marketbus.history.lakehouse import LakehouseSettings
from marketbus.history.schema import SCHEMAS
from marketbus.history.writer import HistoryTableWriter, _seqs_in_table

from .common import trade


def test_the_recheck_finds_exactly_the_stored_sequences_of_its_stream(tmp_path) -> None:
    writer = HistoryTableWriter(LakehouseSettings(history_dir=str(tmp_path)), "w")
    odd = list(range(1, 6001, 2))  # MD messages 1, 3, ..., 5999 in two appends (two files)
    md = [trade(f"S{i % 7}", i) for i in odd]
    for part in (slice(0, 1500), slice(1500, None)):
        rows = SCHEMAS["trade"].rows_to_table(md[part], "MD", odd[part], [0] * len(md[part]))
        assert writer.append("trade", "MD", rows)[0] == len(md[part])
    even = list(range(2, 202, 2))  # another stream's sequences 2..200: not MD's
    ref = [trade("S0", 10_000 + i) for i in even]
    writer.append("trade", "REF", SCHEMAS["trade"].rows_to_table(ref, "REF", even, [0] * len(even)))
    table = writer.tables.get("trade", refresh=True)

    assert _seqs_in_table(table, "MD", set(range(0, 8000))) == set(odd)
    assert _seqs_in_table(table, "MD", {1, 5999, 3001, 3002, 6001, 10**12}) == {1, 5999, 3001}
    assert _seqs_in_table(table, "MD", set(even)) == set()  # the same numbers, another stream
    assert _seqs_in_table(table, "REF", {2, 3, 200, 202}) == {2, 200}
    assert _seqs_in_table(table, "MD", set()) == set()
    assert _seqs_in_table(table, "STATUS", {1, 2}) == set()
