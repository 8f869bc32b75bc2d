"""``marketbus order ...`` against a running router (the CLI runs in a thread: it owns its loop)."""

from __future__ import annotations

import asyncio
import json
import re

import msgspec
import pytest
from typer.testing import CliRunner

from marketbus.cli.main import app
from marketbus.clients import orders as client_orders
from marketbus.contracts import subjects
from marketbus.runtime.natsserver import NatsServer
from services.order_router import state as router_state
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

    as_json = await _cli(env, "list", "--json")  # one record per line, plain decimals
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    mine = [r for r in records if r["client_id"] == client_id]
    assert mine and mine[0]["quantity"] == "2" and mine[0]["filled_quantity"] == "0" and mine[0]["state"] == "accepted"

    refused = await _cli(env, "place", "FS-BTCUSD", "buy", "1", "--price", str(bid - 201))
    assert refused.exit_code == 1 and "tick size" in refused.output

    refused = await _cli(env, "place", "FS-BTCUSD", "buy", "1", "--price", str(bid - 201), "--json")
    ack = json.loads(refused.stdout)
    assert refused.exit_code == 1 and ack["type"] == "command_ack" and ack["accepted"] is False
    assert "tick size" in ack["reason"]

    halted = await _cli(env, "halt", "--cancel-open", "--reason", "maintenance")
    assert halted.exit_code == 0 and "halted: maintenance" in halted.output
    await wait_for(lambda: env.bus.states(client_id)[-1] == "cancelled", 5, what="cancelled by halt")
    status = await _cli(env, "status", "--json")
    assert status.exit_code == 0 and json.loads(status.stdout)["reason"].startswith("halted")
    assert (await _cli(env, "place", "FS-BTCUSD", "buy", "1", "--price", price)).exit_code == 1
    assert "running" in (await _cli(env, "resume")).output

    cancel = await _cli(env, "cancel", "--market", "FS-BTCUSD")
    assert cancel.exit_code == 0 and "accepted" in cancel.output

    # a malformed control request gets the contracts' error reply
    reply = msgspec.json.decode((await env.nc.request(subjects.ORDER_CONTROL, b'{"action":"explode"}', timeout=5)).data)
    assert reply["type"] == "error_reply" and reply["code"] == "bad_request"
    assert reply["message"].startswith("bad control message")


@pytest.mark.parametrize(("args", "message"), [
    (["place", "FS-BTCUSD", "buy", "abc"], "error: quantity 'abc' is not a number\n"),
    (["place", "FS-BTCUSD", "buy", "1", "--price", "1,5"], "error: price '1,5' is not a number\n"),
    (["place", "FS-BTCUSD", "buy", "NaN", "--price", "1"], "error: quantity 'NaN' is not a finite number\n"),
    (["place", "FS-BTCUSD", "bye", "1"], "error: side 'bye' is not one of buy, sell\n"),
    (["place", "FS-BTCUSD", "buy", "1", "--duration", "forever"],
     "error: duration 'forever' is not one of GFD, GTC, GTF, IOC, FOK\n"),
    (["cancel"], "error: give --market (optionally with --client-id) or --all\n"),
])
async def test_order_user_mistakes_are_one_line_errors_with_exit_2(args: list[str], message: str,
                                                                   nats_server: NatsServer) -> None:
    result = await asyncio.to_thread(CliRunner().invoke, app, ["order", *args, "--nats-url", nats_server.url])
    assert result.exit_code == 2, result.output
    assert result.stderr == message
    assert "Traceback" not in result.output


async def test_order_commands_without_a_router_say_so(nats_server: NatsServer,
                                                     unprovisioned_nats_server: NatsServer) -> None:
    result = await asyncio.to_thread(CliRunner().invoke, app, ["order", "status", "--nats-url", nats_server.url])
    assert result.exit_code == 2
    assert result.stderr == "error: no order router is running (no responders on orders.ctl.digitex)\n"
    # a server without the order streams (not the one the router uses): said, not a traceback
    bare = unprovisioned_nats_server.url
    result = await asyncio.to_thread(CliRunner().invoke, app, ["order", "place", "FS-BTCUSD", "buy", "1", "--price",
                                                               "20000", "--nats-url", bare])
    assert result.exit_code == 2
    assert result.stderr == ("error: no ORDERS_CMD stream takes orders.cmd.digitex.FS-BTCUSD on this server: "
                             "is it the one the order router uses?\n")
    result = await asyncio.to_thread(CliRunner().invoke, app, ["order", "list", "--nats-url", bare])
    assert result.exit_code == 2
    assert result.stderr == "error: no orders_state bucket on this server: is it the one the order router uses?\n"


def test_the_client_reads_the_routers_kv_layout() -> None:
    """The router keeps its records under the client's key scheme (one definition), and the
    client's read-only record type decodes what the router writes."""
    assert router_state.order_key is client_orders.order_key
    for market, client_id in (("FS-BTCUSD", "c1"), ("FS.X", "a.b"), ("FS-BTCUSD", "x" * 300), ("M", "ü id")):
        key = client_orders.order_key(market, client_id)
        assert all(c.isascii() and (c.isalnum() or c in "-/_=.") for c in key), key  # a legal KV key
    record = router_state.OrderRecord(client_id="c1", market="FS-BTCUSD", market_id=1, side="buy", order_type="limit",
                                      duration="GTC", quantity=client_orders.to_decimal("q", "2"), state="accepted")
    mine = msgspec.json.decode(msgspec.json.encode(record), type=client_orders.OrderRecord)
    assert (mine.client_id, mine.market, mine.state, mine.quantity, mine.terminal) == (
        "c1",
        "FS-BTCUSD",
        "accepted",
        2,
        False,
    )
