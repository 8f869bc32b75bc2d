"""``marketbus export create|wait|status|download`` against a running orchestrator."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path

from typer.testing import CliRunner

from marketbus.cli.main import app

from .conftest import API_KEY, S, T0, Harness, make_trades, publish, read_artifact, table_rows, trade_rows


async def test_cli_create_wait_status_download(harness: Harness, tmp_path: Path) -> None:
    await harness.start_writer()
    orch = await harness.start_orchestrator()
    trades = make_trades("clisrc", "XCHG", "BTC-USD", [T0 + i * S // 10 for i in range(2500)])
    await publish(harness.nc, trades)
    await harness.wait_stored("trade.clisrc.*.*", 2500)
    runner = CliRunner()
    env = {"NATS_URL": harness.url, "MARKETBUS_EXPORT_API_URL": orch.api_url, "MARKETBUS_EXPORT_API_KEY": API_KEY,
           "COLUMNS": "200"}

    def cli(*args: str):  # noqa: ANN202
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
    res = await cli("status", "exp_nope")
    assert res.exit_code == 2 and "not found" in res.output
