"""The Node.js example (examples/node, `nats` npm client) consumes a durable on stream MD of a real
nats-server: single events and batch envelopes, exact nanosecond timestamps, junk survived."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import UTC, datetime, timedelta

import nats
import pytest

from marketbus.contracts import codec
from marketbus.contracts.streams import ensure_all
from tools.npm import NodeMissing, npm_ci, require

from .conftest import ROOT, trade

NODE_DIR = ROOT / "examples" / "node"


@pytest.fixture(scope="module")
def node() -> str:
    try:
        npm_ci(NODE_DIR)  # cached: reinstalled only when package-lock.json changed
        return require("node")
    except NodeMissing as exc:
        pytest.fail(str(exc))  # Node is part of the project's toolchain: missing is a failure


async def test_node_consumer_prints_every_event_with_its_subject(nats_url: str, node: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_all(js)
    symbol = f"NODE{uuid.uuid4().hex[:6].upper()}"
    subject = f"md.trade.digitex._.{symbol}"
    single = trade(1, "20001.5", "0.125", 1, symbol)
    batch = codec.make_batch([trade(2, "20002", "1", 2, symbol), trade(3, "19999.75", "2", 3, symbol)])
    try:
        for event in (single, batch):
            await js.publish(subject, codec.encode(event), headers=codec.headers_for(event))
        await js.publish(subject, b"{not json")  # logged and terminated: the consumer goes on
        await js.publish(subject, codec.encode(trade(4, "1", "1", 4, symbol)))
        since = (datetime.now(UTC) - timedelta(seconds=10)).isoformat()
        proc = await asyncio.create_subprocess_exec(
            node, "consumer.js", f"md.trade.*.*.{symbol}", cwd=NODE_DIR,
            env={**os.environ, "NATS_URL": nats_url, "MARKETBUS_DURABLE": f"node_{symbol.lower()}",
                 "REPLAY_FROM": since, "MAX_EVENTS": "4"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        info = await js.consumer_info("MD", f"node_{symbol.lower()}")
    finally:
        await nc.drain()
    assert proc.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [(e["subject"], e["id"], e["price"], e["size"]) for e in lines] == [
        (subject, f"t-{symbol}-1", "20001.5", "0.125"), (subject, f"t-{symbol}-2", "20002", "1"),
        (subject, f"t-{symbol}-3", "19999.75", "2"), (subject, f"t-{symbol}-4", "1", "1"),
    ]
    # nanoseconds beyond 2**53 survive exactly (printed as strings)
    assert lines[0]["ts_event"] == str(single.ts_event) and single.ts_event > 2**53
    assert f"undecodable message on {subject}" in err.decode()
    assert info.config.durable_name == f"node_{symbol.lower()}" and info.num_pending == 0
