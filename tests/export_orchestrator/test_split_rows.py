"""Export files hold at most ``max_rows_per_file`` rows, also where a layout makes several rows
per event (TickSupply's depth: a quote's bid row and ask row): files then split between events,
so a file's resume position (its last event) never splits an event's rows."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from marketbus.contracts.ids import event_id
from services.export_orchestrator.layouts import quote_rows
from services.export_orchestrator.writer import FileResult, SplitWriter


def quotes(first: int, n: int) -> pa.RecordBatch:
    """``n`` quotes; every third has no ask (one row), the others a bid and an ask row."""
    seqs = list(range(first, first + n))
    return pa.RecordBatch.from_pydict({
        "ts_event": [1_000 + s for s in seqs],
        "_stream": ["MD"] * n,
        "_seq": seqs,
        "_idx": [0] * n,
        "id": [event_id("t", "quote", s) for s in seqs],
        "bid_price": [f"{100 + s}.5" for s in seqs],
        "bid_size": ["1"] * n,
        "ask_price": [None if s % 3 == 0 else f"{101 + s}.5" for s in seqs],
        "ask_size": ["2"] * n,
    })


def file_rows(path: Path, fmt: str) -> list[dict[str, str]]:
    if fmt == "parquet":
        return [{k: str(v) for k, v in row.items()} for row in pq.read_table(path).to_pylist()]
    return list(csv.DictReader(io.StringIO(gzip.decompress(path.read_bytes()).decode())))


@pytest.mark.parametrize("fmt", ["csv.gz", "parquet"])
@pytest.mark.parametrize("max_rows", [1, 2, 5, 8])
def test_files_never_hold_more_than_max_rows(tmp_path: Path, fmt: str, max_rows: int) -> None:
    writer = SplitWriter(tmp_path, fmt, "depth", "quote", None, max_rows, 1 << 30, layout=quote_rows)
    batches = [quotes(1, 7), quotes(8, 1), quotes(9, 12)]
    results: list[FileResult] = []
    for batch in batches:
        results += writer.write(batch)
    results += writer.finish()

    expected = [{k: str(v) for k, v in row.items()} for b in batches for row in quote_rows(b).to_pylist()]
    files = [file_rows(writer.path_of(r), fmt) for r in results]
    assert [r.rows for r in results] == [len(f) for f in files]
    # every row once, in order (parquet keeps types: compare the text of each value)
    got = [row for f in files for row in f]
    assert [(r["update_id"], r["side"], r["price"]) for r in got] == \
        [(r["update_id"], r["side"], r["price"]) for r in expected]
    one_event_too_many = max_rows == 1  # a quote's two rows go whole: its own rows are more
    assert all(len(f) <= max(max_rows, 2 if one_event_too_many else 0) for f in files), [len(f) for f in files]
    if max_rows > 1:
        # full files: the next event's rows would not have fitted
        assert all(len(f) > max_rows - 2 for f in files[:-1]), [len(f) for f in files]
    # no event's rows in two files, and each file's resume position is its last event
    ids_per_file = [{r["update_id"] for r in f} for f in files]
    assert sum(len(ids) for ids in ids_per_file) == len({r["update_id"] for r in expected})
    by_update = {str(row["update_id"]): key for b in batches
                 for row, key in zip(quote_rows(b).to_pylist(), _keys(quote_rows(b)), strict=True)}
    assert [r.last_key for r in results] == [by_update[f[-1]["update_id"]] for f in files]


def _keys(rows: pa.RecordBatch) -> list[tuple[int, str, int, int]]:
    cols = [rows.column(c).to_pylist() for c in ("ts_event", "_stream", "_seq", "_idx")]
    return list(zip(*cols, strict=True))


def test_one_row_per_event_splits_anywhere(tmp_path: Path) -> None:
    writer = SplitWriter(tmp_path, "csv.gz", "t", "quote", ["ts_event", "bid_price"], 3, 1 << 30)
    results = writer.write(quotes(1, 7)) + writer.write(quotes(8, 4)) + writer.finish()
    assert [r.rows for r in results] == [3, 3, 3, 2]
    assert [r.last_key for r in results] == [(1_003, "MD", 3, 0), (1_006, "MD", 6, 0), (1_009, "MD", 9, 0),
                                             (1_011, "MD", 11, 0)]
