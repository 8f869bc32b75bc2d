"""``marketbus export create|wait|status|download`` against a running orchestrator."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from marketbus.cli.main import app
from marketbus.runtime.natsserver import NatsServer

from .conftest import API_KEY, T0, Harness, S, make_trades, publish, read_artifact, table_rows, trade_rows


async def test_cli_create_wait_status_download(harness: Harness, tmp_path: Path) -> None:
    await harness.start_writer()
    orch = await harness.start_orchestrator()
    trades = make_trades("clisrc", "XCHG", "BTC-USD", [T0 + i * S // 10 for i in range(2500)])
    await publish(harness.nc, trades)
    await harness.wait_stored("trade.clisrc.*.*", 2500)
    runner = CliRunner()
    env = {"NATS_URL": harness.url, "MARKETBUS_EXPORT_API_URL": orch.api_url, "MARKETBUS_EXPORT_API_KEY": API_KEY,
           "COLUMNS": "200"}

    def cli(*args: str):
        return asyncio.to_thread(runner.invoke, app, ["export", *args], env=env)

    res = await cli("create", "trade.clisrc.*.*", "--start", str(T0), "--end", "2023-11-14T23:00:00Z",
                    "--format", "csv.gz", "--max-rows-per-file", "1000", "--no-fill-gaps", "--idempotency-key", "cli-1")
    assert res.exit_code == 0, res.output
    job_id = re.search(r"(exp_[0-9a-f]+)", res.output).group(1)
    res = await cli("wait", job_id, "--timeout", "30")
    assert res.exit_code == 0, res.output
    assert "succeeded" in res.output and "2,500 rows" in res.output
    res = await cli("status", job_id, "--json")
    status = json.loads(res.output)
    assert status["state"] == "succeeded" and len(status["artifacts"]) == 3
    out = tmp_path / "dl"
    res = await cli("download", job_id, "--out", str(out))
    assert res.exit_code == 0, res.output
    tables = []
    for art in status["artifacts"]:
        data = (out / art["filename"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == art["sha256"]
        tables.append(read_artifact(art["filename"], data))
    assert table_rows(tables) == trade_rows(trades)
    assert json.loads((out / "manifest.json").read_text())["rows"] == 2500
    # the same key again: the same job; an unknown job: an error, not a traceback
    res = await cli("create", "trade.clisrc.*.*", "--start", str(T0), "--end", "2023-11-14T23:00:00Z",
                    "--format", "csv.gz", "--max-rows-per-file", "1000", "--no-fill-gaps", "--idempotency-key", "cli-1")
    assert job_id in res.output
    res = await cli("status", "exp_nope")  # refused by the server: exit 1, one line
    assert res.exit_code == 1 and res.stderr == "error: export exp_nope not found\n"
    res = await cli("list", "--json")  # one job per line
    listed = [json.loads(line) for line in res.stdout.splitlines()]
    assert res.exit_code == 0 and job_id in [j["job_id"] for j in listed]
    res = await cli("create", "trade.clisrc.*.*", "--start", str(T0), "--end", "2023-11-14T23:00:00Z",
                    "--format", "csv.gz", "--max-rows-per-file", "1000", "--no-fill-gaps", "--idempotency-key", "cli-1",
                    "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["job_id"] == job_id
    # the same key for a different request: the orchestrator refuses (conflict)
    res = await cli("create", "trade.clisrc.*.*", "--start", str(T0), "--idempotency-key", "cli-1")
    assert res.exit_code == 1 and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1
    res = await cli("cancel", job_id, "--json")  # a finished job stays as it is
    assert json.loads(res.stdout)["state"] == "succeeded"
    # TickSupply's raw trade columns, over the bus too; refused for kinds that have no such layout
    res = await cli("create", "trade.clisrc.*.*", "--start", str(T0), "--end", "2023-11-14T23:00:00Z", "--format",
                    "csv.gz", "--no-fill-gaps", "--schema", "raw", "--wait", "--json")
    raw_job = json.loads(res.stdout.splitlines()[-1])
    assert res.exit_code == 0 and raw_job["state"] == "succeeded", res.output
    res = await cli("download", raw_job["job_id"], "--out", str(tmp_path / "raw"))
    data = (tmp_path / "raw" / raw_job["artifacts"][0]["filename"]).read_bytes()
    assert read_artifact("x.csv.gz", data).column_names == ["exchange_ts_ns", "collection_ts_ns", "trade_id", "price",
                                                            "quantity", "side"]
    # (quotes have them too: TickSupply's depth layout; books do not)
    res = await cli("create", "book.clisrc.*.*", "--start", str(T0), "--schema", "normalized")
    assert res.exit_code == 1 and "normalized schema is defined for trade" in res.stderr, res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "trdae.finx", "--start", "-1h"], "error: unknown kind 'trdae'; kinds: trade,"),
        (["create", "trade.a.b.c.d", "--start", "-1h"], "error: 'trade.a.b.c.d' has 5 parts"),
        (["create", "trade", "--start", "-1h", "--end", "-2h"], "error: --end (-2h) is before --start (-1h)"),
        (["create", "trade", "--start", "soon"], "error: not a time: 'soon'"),
        (["create", "trade", "--start", "-1h", "--format", "xlsx"], "error: --format xlsx: use parquet or csv.gz"),
        (
            ["create", "trade", "--start", "-1h", "--schema", "wide"],
            "error: --schema wide: use marketbus, raw or normalized",
        ),
    ],
)
async def test_export_user_mistakes_are_one_line_errors_with_exit_2(
    args: list[str], message: str, nats_server: NatsServer
) -> None:
    res = await asyncio.to_thread(CliRunner().invoke, app, ["export", *args], env={"NATS_URL": nats_server.url})
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith(message) and res.stderr.count("\n") == 1, res.stderr


async def test_export_without_an_orchestrator_says_so(nats_server: NatsServer) -> None:
    res = await asyncio.to_thread(CliRunner().invoke, app, ["export", "list"], env={"NATS_URL": nats_server.url})
    assert res.exit_code == 2
    assert res.stderr == "error: no export orchestrator is running (no responders on export.list)\n"
