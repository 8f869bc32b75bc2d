"""``marketbus history query|coverage`` against a running writer, as a user types them."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal

import msgspec
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from marketbus.cli.history import parse_time
from marketbus.cli.main import app
from marketbus.runtime.natsserver import NatsServer
from marketbus.runtime.publisher import JetStreamPublisher
from services.history_writer.app import HistoryWriter
from services.history_writer.store.base import Selector
from tests.helpers import wait_for

from .common import SEC, T0, trade, unique_symbol, writer_overrides

N = 1200  # more than a table shows by default (1000)


def test_parse_time() -> None:
    assert parse_time("2025-11-21T04:40:00Z") == T0
    assert parse_time("2025-11-21 04:40:00") == T0
    assert parse_time(str(T0)) == T0
    assert parse_time("-1h", now_ns=T0) == T0 - 3600 * SEC
    with pytest.raises(ValueError, match="not a time: 'yesterday'"):
        parse_time("yesterday")


def invoke(args: list[str]):
    return asyncio.to_thread(CliRunner().invoke, app, args, env={"COLUMNS": "200"})


async def test_history_cli_query_table_files_json_and_coverage(nc, js, nats_url, tmp_path) -> None:
    sym = unique_symbol("C")
    durable = f"c{uuid.uuid4().hex[:8]}"
    writer = HistoryWriter(**writer_overrides(nats_url, "iceberg", str(tmp_path / "h"), None, durable))
    await writer.start()
    try:
        events = [trade(sym, i) for i in range(N)]
        # a vendor's decimal text with trailing zeros / an exponent: printed as plain numbers
        events[-1] = msgspec.structs.replace(
            events[-1], price=Decimal("41060.000000000000000000"), size=Decimal("0E-18")
        )
        pub = await JetStreamPublisher(nc).start()
        await pub.publish_batch(events)
        await pub.flush()
        await pub.close()

        async def stored() -> bool:
            t = await writer.store.read_table(Selector(symbol=sym), 0, 2**63 - 1, columns=["id"])
            return "trade" in t and t["trade"].num_rows == N

        await wait_for(stored, timeout=15, what=f"{N} trades stored")
        base = ["history", "query", f"trade.finx.*.{sym}", "--start", "2025-11-21T04:40:00Z", "--nats-url", nats_url]

        res = await invoke([*base, "--limit", "5"])
        assert res.exit_code == 0, res.output
        assert "(5 events)" in res.output and sym in res.output and "price=101.25" in res.output

        res = await invoke(base)  # a table shows the first 1000 and says so
        assert res.exit_code == 0, res.output
        assert "(1000 events)" in res.output and "--limit 0 for more" in res.output

        csv_path = tmp_path / "out.csv"  # --out without --limit: the whole range
        res = await invoke([*base, "--out", str(csv_path)])
        assert res.exit_code == 0, res.output
        assert f"wrote {N} events" in res.output
        table = pcsv.read_csv(
            csv_path, convert_options=pcsv.ConvertOptions(column_types={"price": "string", "size": "string"})
        )
        assert table.column("id").to_pylist() == [e.id for e in events]
        assert table.column("price").to_pylist()[3] == "103.25"
        assert table.column("price").to_pylist()[-1] == "41060" and table.column("size").to_pylist()[-1] == "0"

        pq_path = tmp_path / "out.parquet"
        res = await invoke([*base, "--limit", "100", "--out", str(pq_path)])
        assert res.exit_code == 0 and pq.read_table(pq_path).num_rows == 100

        # the subject form selects the same streams; --json: one event per line with its subject
        res = await invoke(["history", "query", f"md.trade.finx.*.{sym}", "--json", "--nats-url", nats_url])
        assert res.exit_code == 0, res.output
        lines = [json.loads(line) for line in res.stdout.splitlines()]
        assert [e["id"] for e in lines] == [e.id for e in events]
        assert {e["subject"] for e in lines} == {f"md.trade.finx.CB.{sym}"}
        assert lines[-1]["price"] == "41060" and lines[-1]["size"] == "0" and lines[0]["size"] == "0.001"

        res = await invoke(["history", "query", "md.trade.finx.>", "--json", "--limit", "3", "--nats-url", nats_url])
        assert res.exit_code == 0 and len(res.stdout.splitlines()) == 3

        res = await invoke(["history", "coverage", f"trade.*.*.{sym}", "--start", str(T0), "--nats-url", nats_url])
        assert res.exit_code == 0, res.output
        assert f"trade.finx.CB.{sym}" in res.output and str(N) in res.output and "none" in res.output
        res = await invoke(["history", "coverage", f"trade.*.*.{sym}", "--json", "--nats-url", nats_url])
        assert res.exit_code == 0, res.output
        (stream,) = [json.loads(line) for line in res.stdout.splitlines()]
        assert stream["stream"] == f"trade.finx.CB.{sym}" and stream["rows"] == N and stream["gaps"] == []
    finally:
        await writer.stop()


@pytest.mark.parametrize(("args", "message"), [
    (["trdae.finx"], "error: unknown kind 'trdae'; kinds: trade, tick, quote,"),
    (["trade.finx.CB.BTC.extra"], "error: 'trade.finx.CB.BTC.extra' has 5 parts; write kind.source.venue.symbol "
                                  "or the subject form md.<kind>.<source>.<venue>.<symbol>"),
    (["md.trade.>.x"], "error: 'md.trade.>.x': '>' may only be the last part"),
    (["trade", "--start", "2025-11-21T05:00:00Z", "--end", "2025-11-21T04:00:00Z"],
     "error: --end (2025-11-21T04:00:00Z) is before --start (2025-11-21T05:00:00Z)"),
    (["trade", "--start", "yesterday"], "error: not a time: 'yesterday'"),
    (["trade", "--out", "x.xlsx"], "error: --out x.xlsx: the file name must end in .csv or .parquet"),
])
async def test_history_query_user_mistakes_are_one_line_errors_with_exit_2(args: list[str], message: str,
                                                                           nats_server: NatsServer) -> None:
    res = await invoke(["history", "query", *args, "--nats-url", nats_server.url])
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith(message) and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.output


async def test_history_without_a_writer_says_so(nats_server: NatsServer) -> None:
    res = await invoke(["history", "query", "trade", "--timeout", "2", "--nats-url", nats_server.url])
    assert res.exit_code == 2
    assert res.stderr == "error: no history writer is running (no responders on history.query)\n"
    res = await invoke(["history", "coverage", "trade", "--timeout", "2", "--nats-url", nats_server.url])
    assert res.exit_code == 2
    assert res.stderr == "error: no history writer is running (no responders on history.coverage)\n"
