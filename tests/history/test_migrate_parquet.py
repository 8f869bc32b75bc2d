"""``marketbus history migrate --from-parquet``: a data dir of the former embedded Parquet store
(``kind=*/source=*/venue=*/symbol=*/date=*/*.parquet``, storage rows) comes into the history
tables: every stored event once (a flush file and the compacted file that replaced it may both be
left over), uncommitted temporary files ignored, exact decimals kept; a second run copies
nothing."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from marketbus.cli.main import app
from marketbus.contracts import codec
from marketbus.history.lakehouse import LakehouseSettings
from marketbus.history.reader import HistoryReader
from marketbus.history.schema import Message, decode_messages
from marketbus.history.selector import Selector

from .common import trade, unique_symbol


def _storage_rows(events: list, first_seq: int) -> pa.Table:
    msgs = [Message("MD", first_seq + i, f"md.trade.finx.CB.{e.symbol}", codec.encode(e), "trade")
            for i, e in enumerate(events)]
    decoded = decode_messages(msgs, "MD")
    assert not decoded.bad
    return pa.concat_tables(decoded.tables["trade"])


def test_migrate_a_parquet_store_data_dir_into_the_tables(tmp_path: Path) -> None:
    sym = unique_symbol("P")
    events = [trade(sym, i) for i in range(300)]
    part = tmp_path / "old" / "kind=trade" / "source=finx" / "venue=CB" / f"symbol={sym}" / "date=2025-11-21"
    part.mkdir(parents=True)
    rows = _storage_rows(events, 1)
    pq.write_table(rows.slice(0, 200), part / "MD-1-200-w1-1.parquet")
    pq.write_table(rows.slice(100, 200), part / "c-MD-101-300-w1-2.parquet")  # overlaps the first file
    # never committed
    pq.write_table(_storage_rows([trade(sym, 999)], 999), part / ".MD-999-999-w1-3.parquet.host.1.tmp")
    target = tmp_path / "lake"

    runner = CliRunner()
    result = runner.invoke(app, ["history", "migrate", "--from-parquet", str(tmp_path / "old"),
                                 "--history-dir", str(target)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "trade 2025-11-21: +300 rows" in result.stderr  # progress on stderr, one line a day when piped
    # a readable summary on stdout, not the repr of a report
    assert result.stdout.strip().startswith("migrated 300 rows into 1 table(s) (trade 300), 0 already there; "
                                            "read 2 Parquet files ("), result.stdout
    assert "MigrationReport" not in result.output and result.stdout.count("\n") == 1

    stored = HistoryReader(LakehouseSettings.from_env(target)).read_kind("trade", Selector(kind="trade", symbol=sym),
                                                                         0, 2**63 - 1)
    assert stored.column("id").to_pylist() == [e.id for e in events]
    assert stored.column("price").to_pylist() == [str(e.price) for e in events]
    assert stored.column("size").to_pylist() == ["0.001"] * 300  # canonical text of 0.0010
    assert stored.column("_seq").to_pylist() == list(range(1, 301))

    again = runner.invoke(app, ["history", "migrate", "--from-parquet", str(tmp_path / "old"),
                                "--history-dir", str(target)], env={"COLUMNS": "200"})
    assert again.exit_code == 0, again.output
    assert "+0 rows (300 already there)" in again.stderr
    assert again.stdout.startswith("migrated 0 rows into 0 table(s) (none), 300 already there"), again.stdout
    assert HistoryReader(LakehouseSettings.from_env(target)).read_kind(
        "trade", Selector(kind="trade", symbol=sym), 0, 2**63 - 1).num_rows == 300


def test_migrate_wants_one_source(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["history", "migrate", "--history-dir", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "give one of --from-dir and --from-parquet" in result.output
    missing = CliRunner().invoke(app, ["history", "migrate", "--from-parquet", str(tmp_path / "nope")],
                                 env={"COLUMNS": "200"})
    assert missing.exit_code == 2
    assert "not a directory" in missing.output
