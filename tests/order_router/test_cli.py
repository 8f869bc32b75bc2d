"""``marketbus order ...`` against a running router (the CLI runs in a thread: it owns its loop)."""

from __future__ import annotations

import asyncio
import re

from typer.testing import CliRunner

from marketbus.cli.main import app
from tests.helpers import wait_for


async def _cli(env, *args: str):
    result = await asyncio.to_thread(CliRunner().invoke, app, ["order", *args, "--nats-url", env.nats_url],
                                    env={"COLUMNS": "250"})
    return result


async def test_cli_place_list_cancel_halt_resume(env):
    await env.router()
    bid, _ = await env.mid(1)
    price = str(bid - 200)
    result = await _cli(env, "place", "FS-BTCUSD", "buy", "2", "--price", price)
    assert result.exit_code == 0, result.output
    assert "accepted" in result.output
    client_id = re.search(r"client_id (\S+)", result.output).group(1)
    await wait_for(lambda: "accepted" in env.bus.states(client_id), 5, what="accepted")

    listed = await _cli(env, "list")
    assert listed.exit_code == 0 and client_id[:8] in listed.output and "accepted" in listed.output

    refused = await _cli(env, "place", "FS-BTCUSD", "buy", "1", "--price", str(bid - 201))
    assert refused.exit_code == 1 and "tick size" in refused.output

    halted = await _cli(env, "halt", "--cancel-open", "--reason", "maintenance")
    assert halted.exit_code == 0 and "halted: maintenance" in halted.output
    await wait_for(lambda: env.bus.states(client_id)[-1] == "cancelled", 5, what="cancelled by halt")
    assert "halted" in (await _cli(env, "status")).output
    assert (await _cli(env, "place", "FS-BTCUSD", "buy", "1", "--price", price)).exit_code == 1
    assert "running" in (await _cli(env, "resume")).output

    cancel = await _cli(env, "cancel", "--market", "FS-BTCUSD")
    assert cancel.exit_code == 0 and "accepted" in cancel.output
