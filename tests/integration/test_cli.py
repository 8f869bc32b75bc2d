"""The `marketbus` CLI as a user runs it: a real process against a real nats-server."""

from __future__ import annotations

import asyncio
import os
import sys
from decimal import Decimal
from pathlib import Path

import nats

from marketbus.contracts import codec, subjects
from marketbus.contracts.ids import event_id
from marketbus.contracts.market import Trade
from marketbus.runtime.service import Service

MARKETBUS = str(Path(sys.executable).parent / "marketbus")


async def run_cli(*args: str, env: dict[str, str], timeout: float = 30) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        MARKETBUS, *args, env={**os.environ, "COLUMNS": "200", **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode()


async def test_tail_decodes_and_prints_what_a_publisher_sends(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    proc = await asyncio.create_subprocess_exec(
        MARKETBUS, "tail", "md.trade.test.>", "--count", "3", env={**os.environ, "NATS_URL": nats_url, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        i = 0
        while proc.returncode is None and i < 400:  # publish until tail has printed 3 events
            i += 1
            event = Trade(id=event_id("test", "trade", i), source="test", venue="TAIL", symbol="BTC-USD",
                          ts_event=i, ts_recv=i, price=Decimal("42.125"), size=Decimal("0.5"), side="sell")
            await nc.publish(subjects.for_event(event), codec.encode(event))
            await asyncio.sleep(0.05)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
        await nc.close()
    text = out.decode()
    assert proc.returncode == 0, text
    assert text.count("md.trade.test.TAIL.BTC-USD trade") == 3
    assert "price=42.125" in text and "size=0.5" in text and "side=sell" in text


async def test_tail_json_prints_raw_messages(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    proc = await asyncio.create_subprocess_exec(
        MARKETBUS, "tail", "md.tick.test.>", "--json", "-n", "1", env={**os.environ, "NATS_URL": nats_url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        for _ in range(200):
            if proc.returncode is not None:
                break
            await nc.publish("md.tick.test.V.S", b'{"type":"tick","price":"1.0"}')
            await asyncio.sleep(0.05)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
        await nc.close()
    assert '"price": "1.0"' in out.decode()


async def test_status_prints_a_row_per_feed_from_heartbeats(nats_url: str) -> None:
    class Feeder(Service):
        name = "feeder"

    service = Feeder(nats_url=nats_url, heartbeat_interval_s=0.2)
    await service.start()
    try:
        service.feeds.set_state("finx/COINBASE/BTC-USD", "connected")
        service.feeds.count("finx/COINBASE/BTC-USD", 1234)
        await asyncio.sleep(0.6)
        code, out = await run_cli("status", env={"NATS_URL": nats_url})
    finally:
        await service.stop()
    assert code == 0, out
    assert "feeder" in out and "finx/COINBASE/BTC-USD" in out and "connected" in out and "1,234" in out


async def test_cli_says_clearly_when_nats_is_unreachable() -> None:
    code, out = await run_cli("tail", "md.>", env={"NATS_URL": "nats://127.0.0.1:1"})
    assert code != 0
    assert "cannot connect to NATS at nats://127.0.0.1:1" in out


async def test_tail_last_shows_the_current_reference_values_then_exits_at_the_count(nats_url: str, js) -> None:  # noqa: ANN001
    from marketbus.contracts.reference import Unit

    for code, factor in (("TON", "1000"), ("USWSBS", "27.2155"), ("KILO", "1")):
        unit = Unit(id=event_id("test", "unit", code), source="tailtest", venue="_", symbol=code, ts_event=1, ts_recv=1,
                    code=code, factor=Decimal(factor), unit_type="MASS")
        await js.publish(subjects.for_event(unit), codec.encode(unit), headers=codec.headers_for(unit))
    # published before tail starts: only --last can show them
    code, out = await run_cli("tail", "ref.unit.tailtest.>", "--last", "-n", "2", env={"NATS_URL": nats_url})
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.startswith("ref.unit.tailtest")]
    assert len(lines) == 2, out
    assert "code=TON" in lines[0] and "factor=1000" in lines[0]
