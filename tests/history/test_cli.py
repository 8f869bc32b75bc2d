"""``marketbus history query|coverage`` against a running writer."""

from __future__ import annotations

import asyncio
import uuid

import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from typer.testing import CliRunner

from marketbus.cli.history import parse_time
from marketbus.cli.main import app
from marketbus.runtime.publisher import JetStreamPublisher
from services.history_writer.app import HistoryWriter
from services.history_writer.store.base import Selector
from tests.helpers import wait_for

from .common import SEC, T0, trade, unique_symbol, writer_overrides


def test_parse_time() -> None:
    assert parse_time("2025-11-21T04:40:00Z") == T0
    assert parse_time("2025-11-21 04:40:00") == T0
    assert parse_time(str(T0)) == T0
    assert parse_time("-1h", now_ns=T0) == T0 - 3600 * SEC


async def test_history_cli_query_table_files_and_coverage(nc, js, nats_url, tmp_path) -> None:  # noqa: ANN001
    sym = unique_symbol("C")
    durable = f"c{uuid.uuid4().hex[:8]}"
    writer = HistoryWriter(**writer_overrides(nats_url, "parquet", str(tmp_path / "h"), None, durable))
    await writer.start()
    try:
        events = [trade(sym, i) for i in range(250)]
        pub = await JetStreamPublisher(nc).start()
        await pub.publish_batch(events)
        await pub.flush()
        await pub.close()

        async def stored() -> bool:
            t = await writer.store.read_table(Selector(symbol=sym), 0, 2**63 - 1, columns=["id"])
            return "trade" in t and t["trade"].num_rows == 250

        await wait_for(stored, timeout=15, what="250 trades stored")
        runner = CliRunner()
        base = ["history", "query", f"trade.finx.*.{sym}", "--start", "2025-11-21T04:40:00Z", "--nats-url", nats_url]

        def invoke(args: list[str]):  # noqa: ANN202
            return runner.invoke(app, args, env={"COLUMNS": "200"})

        res = await asyncio.to_thread(invoke, [*base, "--limit", "5"])
        assert res.exit_code == 0, res.output
        assert "(5 events)" in res.output and sym in res.output and "price=101.25" in res.output

        csv_path = tmp_path / "out.csv"
        res = await asyncio.to_thread(invoke, [*base, "--limit", "0", "--out", str(csv_path)])
        assert res.exit_code == 0, res.output
        table = pcsv.read_csv(csv_path, convert_options=pcsv.ConvertOptions(column_types={"price": "string", "size": "string"}))
        assert table.column("id").to_pylist() == [e.id for e in events]
        assert table.column("price").to_pylist()[3] == "103.25"

        pq_path = tmp_path / "out.parquet"
        res = await asyncio.to_thread(invoke, [*base, "--limit", "100", "--out", str(pq_path)])
        assert res.exit_code == 0 and pq.read_table(pq_path).num_rows == 100

        res = await asyncio.to_thread(invoke, ["history", "coverage", f"trade.*.*.{sym}", "--start", str(T0), "--nats-url", nats_url])
        assert res.exit_code == 0, res.output
        assert f"trade.finx.CB.{sym}" in res.output and "250" in res.output and "none" in res.output
    finally:
        await writer.stop()
